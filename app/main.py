"""Tandem's page: Gradio 6 Blocks, declarative. ``Controller`` is the page's state; its
handlers live with their tabs (``app.chat``, ``app.models_tab``, ``app.hardware_tab``,
``app.api_tab``). Every model operation goes through ``EngineClient`` (a worker process) or,
with a server backend, ``RemoteClient``; conversations live in ``app.store``. This process
never imports ``llama_cpp``.

Not for: the HTTP API (``app.api``), the server's lock-down (``app.security``).
"""

from __future__ import annotations

import threading

import gradio as gr

from app import api_tab, chat, hardware_tab, models_tab
from app.api_keys import ApiKey
from app.store import Store
from engine.facade import EngineClient
from engine.remote import ServerSettings

ENGINE = chat.ENGINE


class Controller(chat.ChatHandlers, models_tab.ModelHandlers, hardware_tab.HardwareHandlers,
                 api_tab.ApiHandlers):
    """The page's state; loading the pair (``target`` None: none) starts at once, in the
    background."""

    def __init__(self, engine: EngineClient, store: Store, target: str | None,
                 draft: str | None, api_key: ApiKey | None = None, api_url: str = "") -> None:
        self.engine, self.store = engine, store
        self.api_key, self.api_url = api_key, api_url
        self.server = ServerSettings.saved()
        self.status = "Loading models…"
        self._download_cancel: threading.Event | None = None
        self._streams: set = set()
        self._streams_lock = threading.Lock()
        self.loaded = threading.Event()
        if target is None:  # no local pair (a server backend, or chosen later)
            self.status = "No local model loaded: pick a pair in the Models tab."
            self.loaded.set()
            return
        self._loader = threading.Thread(target=self._load, args=(target, draft), daemon=True)
        self._loader.start()

    def loaded_elsewhere(self, info) -> None:
        """The API loaded another model: the page says which pair is in use."""
        self.status = self.describe(info)


def build(ctl: Controller, target: str, draft: str | None) -> gr.Blocks:
    with gr.Blocks(title="Tandem") as demo:
        side = chat.sidebar()
        indicators = chat.tab(ctl, side)
        models_tab.tab(ctl, target, draft, indicators)
        hardware = hardware_tab.tab(ctl)
        key_box = api_tab.tab(ctl)

        demo.load(ctl.conversation_choices, None, side["conversations"])
        gr.api(ctl.conversation_titles, api_name="conversations")
        demo.load(ctl.hardware, None, hardware, **ENGINE)
        demo.load(ctl.api_key_value, None, key_box, api_visibility="private")
        timer = gr.Timer(1.0)  # shows the loading status until the models are ready
        timer.tick(ctl.loading_status, None, [indicators, timer])
        demo.load(ctl.loading_status, None, [indicators, timer])
    return demo

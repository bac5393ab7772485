"""``python -m app``: start the engine worker and serve the page and the OpenAI-compatible
API (``/v1``) on 127.0.0.1, one port for both.

``TANDEM_API_QUEUE``: how many API requests may wait for the engine before more get 429
(default 16)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from app.security import allowed_hosts, locked_app, scrub_gradio_environment

scrub_gradio_environment()  # before gradio reads its settings at import

import gradio as gr  # noqa: E402

from app.api import Api  # noqa: E402
from app.api_keys import ApiKey  # noqa: E402
from app.main import Controller, build  # noqa: E402
from app.store import Store  # noqa: E402
from engine import catalog, paths  # noqa: E402
from engine.facade import EngineClient  # noqa: E402

ASSETS = Path(__file__).resolve().parent.parent / "assets"
MAX_UPLOAD_BYTES = 64 * 1024  # the UI has no uploads: models are added by path


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m app")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--no-browser", action="store_true")
    parser.add_argument("--target", default=catalog.DEFAULT_TARGET)
    parser.add_argument("--draft", default=catalog.DEFAULT_DRAFT)
    args = parser.parse_args()
    engine = EngineClient(max_waiting=int(os.environ.get("TANDEM_API_QUEUE") or 16))
    store = Store(paths.conversations_db())
    draft = None if args.draft == "none" else args.draft
    key = ApiKey.in_data_dir()
    shown_host = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host
    api_url = f"http://{shown_host}:{args.port}/v1"
    controller = Controller(engine, store, args.target, draft, key, api_url)
    demo = build(controller, args.target, draft)
    demo.queue(default_concurrency_limit=1, max_size=64)
    # Gradio's queue polls for work every 1 ms (progress every 10 ms) on Linux: 9% of a core
    # while idle, taken from llama.cpp's threads during replies on a small CPU. A UI event
    # waits at most 20 ms longer to start.
    demo._queue.sleep_when_free = demo._queue.progress_update_sleep_when_free = 0.02
    # Host and Origin checked on every bind address, before any of Gradio's layers
    server = locked_app(allowed_hosts(args.host))
    server.include_router(Api(engine, key, controller.loaded_elsewhere).router())
    print(f"OpenAI-compatible API: {api_url} (bearer key in {key.path})", flush=True)
    try:
        demo.launch(server_name=args.host, server_port=args.port, inbrowser=not args.no_browser,
                    share=False, mcp_server=False, ssr_mode=False, strict_cors=True,
                    _app=server, max_file_size=MAX_UPLOAD_BYTES,
                    blocked_paths=[str(paths.data_dir())], enable_monitoring=False,
                    theme=gr.themes.Soft(), css=(ASSETS / "tandem.css").read_text(),
                    js=(ASSETS / "tandem.js").read_text(),
                    favicon_path=str(ASSETS / "icon.png"), show_error=True)
    finally:
        engine.close()


if __name__ == "__main__":
    main()

"""``python -m app``: start the engine worker and serve the page on 127.0.0.1."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

for _name in ("GRADIO_SHARE", "GRADIO_SERVER_NAME", "GRADIO_ALLOWED_PATHS", "GRADIO_ROOT_PATH"):
    os.environ.pop(_name, None)  # nothing in the environment may open the server up
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import gradio as gr  # noqa: E402

from app.main import Controller, build  # noqa: E402
from app.store import Store  # noqa: E402
from engine import catalog, paths  # noqa: E402
from engine.facade import EngineClient  # noqa: E402

ASSETS = Path(__file__).resolve().parent.parent / "assets"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m app")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--no-browser", action="store_true")
    parser.add_argument("--target", default=catalog.DEFAULT_TARGET)
    parser.add_argument("--draft", default=catalog.DEFAULT_DRAFT)
    args = parser.parse_args()
    engine = EngineClient()
    store = Store(paths.conversations_db())
    draft = None if args.draft == "none" else args.draft
    controller = Controller(engine, store, args.target, draft)
    demo = build(controller, args.target, draft)
    demo.queue(default_concurrency_limit=1, max_size=64)
    try:
        demo.launch(server_name=args.host, server_port=args.port, inbrowser=not args.no_browser,
                    share=False, theme=gr.themes.Soft(), css=(ASSETS / "tandem.css").read_text(),
                    show_error=True, strict_cors=True, enable_monitoring=False,
                    favicon_path=str(ASSETS / "icon.png") if (ASSETS / "icon.png").exists()
                    else None)
    finally:
        engine.close()


if __name__ == "__main__":
    main()

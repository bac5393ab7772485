"""The API tab: where the OpenAI-compatible API listens (``app.api``), its key (shown, and
replaceable: the old key stops working at once) and how to point a client at it.

Not for: serving the API (``app.api``) or keeping the key (``app.api_keys``).
"""

from __future__ import annotations

import gradio as gr

from app.api_keys import ApiKey


class ApiHandlers:
    """Needs ``self.api_key`` (None: the API is not served) and ``self.api_url``."""

    api_key: ApiKey | None
    api_url: str

    def api_key_value(self) -> str:
        return self.api_key.value() if self.api_key is not None else ""

    def replace_api_key(self) -> tuple[str, str]:
        if self.api_key is None:
            return "", "The API is not served by this process."
        return self.api_key.replace(), ("A new key is in use; the old one no longer works. "
                                        "Update your clients.")

    def api_help(self) -> str:
        if self.api_key is None:
            return "The API is not served by this process."
        return (f"**Base URL** `{self.api_url}` · the key is also in `{self.api_key.path}`  \n"
                "OpenAI-compatible: `POST /v1/chat/completions` (streaming or not), "
                "`GET /v1/models`. Every reply carries llama-server-style `timings` with "
                "Tandem's speculation statistics. See docs/api.md for Continue, Zed and "
                "open-webui.\n\n"
                "```python\nfrom openai import OpenAI\n"
                f'client = OpenAI(base_url="{self.api_url}", api_key="<the key above>")\n'
                'reply = client.chat.completions.create(model="<an id from /v1/models>",\n'
                '    messages=[{"role": "user", "content": "Hello"}])\n```')


def tab(ctl) -> gr.Textbox:
    """The API tab and its events; returns the key box (filled in when the page opens, so
    the key is not written into the page's configuration)."""
    with gr.Tab("API"):
        gr.Markdown(ctl.api_help())
        key_box = gr.Textbox(label="API key (send as Authorization: Bearer …)", interactive=False,
                             buttons=["copy"], elem_id="tdm-api-key")
        replace_button = gr.Button("Replace the key", size="sm", elem_id="tdm-api-replace")
        note = gr.Markdown()
    replace_button.click(ctl.replace_api_key, None, [key_box, note], api_visibility="private")
    return key_box

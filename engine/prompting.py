"""From chat messages to the token ids a model is prompted with, through its own template."""

from __future__ import annotations

from engine import chat_template
from engine.runtime import Model


def flatten(messages: list[dict]) -> list[dict]:
    """Messages with plain-string content (UIs may send lists of content blocks)."""
    flat = []
    for message in messages:
        content = message.get("content", "")
        if isinstance(content, list):
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        flat.append({"role": str(message.get("role", "user")), "content": str(content)})
    return flat


def prompt_text(model: Model, messages: list[dict]) -> str:
    bos = model.token_text(model.bos) if model.add_bos and model.bos >= 0 else ""
    eos = model.token_text(model.eos) if model.eos >= 0 else ""
    text = chat_template.render(model.chat_template, flatten(messages), bos_token=bos,
                                eos_token=eos)
    return text


def prompt_tokens(model: Model, messages: list[dict]) -> list[int]:
    text = prompt_text(model, messages)
    bos_in_text = bool(model.add_bos and model.bos >= 0 and
                       text.startswith(model.token_text(model.bos)))
    return model.tokenize(text, add_special=not bos_in_text, parse_special=True)


def stop_strings(model: Model) -> tuple[str, ...]:
    return () if model.chat_template else chat_template.FALLBACK_STOPS

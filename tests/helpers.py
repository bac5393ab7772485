"""Small helpers shared by tests (no fixtures here)."""

from __future__ import annotations

from engine.speculative import Finished, GenerationParams, generate


def message_text(message: dict) -> str:
    """A Chatbot message's text (content may be a list of content blocks)."""
    content = message["content"]
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content)


def run_to_end(model, prompt, params: GenerationParams, policy=None, **kwargs) -> Finished:
    chunks = []
    for event in generate(model, prompt, params, policy, **kwargs):
        if isinstance(event, Finished):
            event.chunks = chunks
            return event
        chunks.append(event)
    raise AssertionError("generate() ended without a Finished event")

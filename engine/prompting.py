"""From chat messages to the token ids a model is prompted with, through its own template.

Only the chat template's own markers become special tokens. Message text (user, assistant and
system alike, and any document pasted into it) is tokenized as plain text, so a message that
contains ``<|im_start|>system …`` stays text instead of opening a new turn (role-token
injection). How: the template is rendered once with every message's content replaced by a
unique placeholder, which tells apart the template's own text from the messages'; control
tokens are taken only from the template's text, and everything else — template text and
message text between two markers — is tokenized with special-token parsing off. For an
ordinary conversation this gives exactly the tokens of the whole rendered prompt.

Not for: rendering the template (``engine.chat_template``) or decoding.
"""

from __future__ import annotations

import re
import secrets

from engine import chat_template
from engine.runtime import Model

ROLES = ("system", "user", "assistant", "tool")  # a role is template text: no other names
# (text, is_template): the rendered prompt, cut where message text starts and ends
Piece = tuple[str, bool]


def flatten(messages: list[dict]) -> list[dict]:
    """Messages with plain-string content (UIs may send lists of content blocks) and one of
    the known roles (anything else is treated as the user's)."""
    flat = []
    for message in messages:
        content = message.get("content", "")
        if isinstance(content, list):
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        role = str(message.get("role", "user"))
        flat.append({"role": role if role in ROLES else "user", "content": str(content)})
    return flat


def _render(model: Model, messages: list[dict], template: str | None) -> str:
    bos = model.token_text(model.bos) if model.add_bos and model.bos >= 0 else ""
    eos = model.token_text(model.eos) if model.eos >= 0 else ""
    return chat_template.render(template, messages, bos_token=bos, eos_token=eos)


def _template(model: Model, template: str | None) -> str | None:
    return template if template is not None else model.chat_template


def prompt_text(model: Model, messages: list[dict], template: str | None = None) -> str:
    """The rendered prompt (``template``: instead of the model's own)."""
    return _render(model, flatten(messages), _template(model, template))


def _rendered_content(rendered: str, at: int, content: str, after: str) -> str | None:
    """The form ``content`` took in ``rendered`` at ``at``, followed by the template's
    ``after`` (templates may trim it); None if none of the usual forms fits."""
    for form in dict.fromkeys((content, content.strip(), content.rstrip(), content.lstrip())):
        if rendered.startswith(form + after, at):
            return form
    return None


def prompt_pieces(model: Model, messages: list[dict], template: str | None = None
                  ) -> list[Piece]:
    """The rendered prompt as template text and message text, in order."""
    flat = flatten(messages)
    source = _template(model, template)
    nonce = secrets.token_hex(8)  # letters and digits only: filters like tojson keep it
    marks = [{**m, "content": f"TandemMsg{nonce}N{i}E" if m["content"] else ""}
             for i, m in enumerate(flat)]
    marked = _render(model, marks, source)
    parts = re.split(f"TandemMsg{nonce}N(\\d+)E", marked)
    templates, owners = parts[0::2], [int(i) for i in parts[1::2]]
    if not owners:
        return [(marked, True)]
    contents = _match(_render(model, flat, source), templates,
                      [flat[i]["content"] for i in owners])
    pieces = [(templates[0], True)]
    for content, text in zip(contents, templates[1:]):
        pieces += [(content, False), (text, True)]
    return [piece for piece in pieces if piece[0]]


def _match(rendered: str, templates: list[str], contents: list[str]) -> list[str]:
    """Each message's text as the template rendered it (trimmed or not); where the real
    rendering cannot be lined up with the placeholder one, the messages' own text."""
    out, at = [], len(templates[0])
    if not rendered.startswith(templates[0]):
        return contents
    for content, after in zip(contents, templates[1:]):
        form = _rendered_content(rendered, at, content, after)
        if form is None:
            return contents
        out.append(form)
        at += len(form) + len(after)
    return out if at == len(rendered) else contents


def _split_markers(model: Model, text: str) -> list[int | str]:
    """Template text as plain-text runs and the control tokens (role markers) in it."""
    specials = [t for t in model.tokenize(text, parse_special=True) if model.is_control(t)]
    out: list[int | str] = []
    at = 0
    for token in specials:
        marker = model.token_bytes(token, special=True).decode("utf-8", "replace")
        found = text.find(marker, at) if marker else -1
        if found < 0:  # a marker whose text cannot be located: keep the rest as text
            break
        out += [text[at:found], token]
        at = found + len(marker)
    out.append(text[at:])
    return [part for part in out if part != ""]


def prompt_tokens(model: Model, messages: list[dict], template: str | None = None
                  ) -> list[int]:
    """Token ids of the prompt; special tokens come only from the template's own text."""
    stream: list[int | str] = []
    for text, is_template in prompt_pieces(model, messages, template):
        for part in _split_markers(model, text) if is_template else [text]:
            if isinstance(part, str) and stream and isinstance(stream[-1], str):
                stream[-1] += part  # text runs across template and message: one run
            else:
                stream.append(part)
    tokens: list[int] = []
    for part in stream:
        tokens += [part] if isinstance(part, int) else model.tokenize(part, parse_special=False)
    if model.add_bos and model.bos >= 0 and (not tokens or tokens[0] != model.bos):
        tokens.insert(0, model.bos)
    return tokens


def stop_strings(model: Model) -> tuple[str, ...]:
    return () if model.chat_template else chat_template.FALLBACK_STOPS


def system_prompt(messages: list[dict]) -> str:
    """The conversation's system prompt ("" when it has none)."""
    return "".join(m["content"] for m in flatten(messages) if m["role"] == "system")

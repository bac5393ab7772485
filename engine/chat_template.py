"""Rendering a conversation into a prompt with the model's own chat template, safely.

GGUF files carry their chat template as Jinja source. Templates are untrusted input
(CVE-2024-34359 ran code from one), so they render only in Jinja's immutable sandbox; a
template that reaches for Python internals is refused with ``TemplateRefused``.

Models without a template get ``FALLBACK_TEMPLATE``: "### System/User/Assistant:" headings,
with "\\n### User:" as a stop string.
"""

from __future__ import annotations

from datetime import datetime

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from engine.errors import TemplateRefused

FALLBACK_TEMPLATE = (
    "{% for m in messages %}### {{ m['role'] | capitalize }}:\n{{ m['content'] }}\n\n"
    "{% endfor %}{% if add_generation_prompt %}### Assistant:\n{% endif %}"
)
FALLBACK_STOPS = ("\n### User:", "\n### System:")


def _raise(message: str) -> None:
    raise TemplateError(message)


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


def render(template: str | None, messages: list[dict], bos_token: str = "",
           eos_token: str = "", add_generation_prompt: bool = True) -> str:
    """The prompt text for ``messages`` (dicts with string ``role`` and ``content``)."""
    source = template or FALLBACK_TEMPLATE
    try:
        compiled = _environment().from_string(source)
        return compiled.render(messages=messages, add_generation_prompt=add_generation_prompt,
                               bos_token=bos_token, eos_token=eos_token)
    except SecurityError as error:
        raise TemplateRefused(f"it tried an unsafe operation ({error})") from error
    except TemplateError as error:
        raise TemplateRefused(f"it could not be rendered ({error})") from error
    except Exception as error:  # a hostile template can raise anything from inside Jinja
        raise TemplateRefused(f"it failed with {type(error).__name__}: {error}") from error

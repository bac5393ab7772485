"""Rendering a conversation into a prompt with the model's own chat template, safely.

GGUF files carry their chat template as Jinja source. Templates are untrusted input
(CVE-2024-34359 ran code from one), so they render only in Jinja's immutable sandbox; a
template that reaches for Python internals is refused with ``TemplateRefused``.

The sandbox alone is unbounded: nested loops, a string doubled in a loop or ``'x' * 10**10``
would hang the engine worker or fill its memory. So rendering is bounded too:

- time: ``MAX_SECONDS`` per render. Jinja compiles templates to Python, so a trace function on
  the rendering thread checks the deadline at every line and call of the template's code
  (loops that write nothing are stopped as well as loops that write a lot);
- size: the output (counted as it is generated) and every string or list the template's code
  builds stay under ``size_limit`` (1 MiB plus eight times the messages' text);
- single operations that would allocate a huge result in one step (``*``, ``**``, ``%``,
  ``+``, padding methods and filters, format widths) are checked before they run.

A refused template raises ``TemplateRefused`` saying which bound it hit; nothing is left
behind, so the same worker serves the next request normally.

Models without a template get ``FALLBACK_TEMPLATE``: "### System/User/Assistant:" headings,
with "\\n### User:" as a stop string.

Not for: turning the rendered text into tokens (``engine.prompting``).
"""

from __future__ import annotations

import functools
import re
import sys
import threading
import time
from collections.abc import Callable, Sized
from datetime import datetime
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from jinja2.utils import _PassArg

from engine.errors import TemplateRefused

FALLBACK_TEMPLATE = (
    "{% for m in messages %}### {{ m['role'] | capitalize }}:\n{{ m['content'] }}\n\n"
    "{% endfor %}{% if add_generation_prompt %}### Assistant:\n{% endif %}"
)
FALLBACK_STOPS = ("\n### User:", "\n### System:")
MAX_SECONDS = 2.0
MAX_TEMPLATE_CHARS = 256 * 1024  # real templates are a few KiB
BASE_OUTPUT = 1 << 20
MAX_INT_BITS = 4096  # integers a template may compute with (about 10**1233)
_BIG_WIDTH = re.compile(r"\d{7,}")  # a format width of a million characters or more
_STAR_WIDTH = re.compile(r"%[-+ #0]*\*")  # printf width taken from the arguments


class _Overrun(BaseException):
    """Raised inside the template's code when a bound is hit; BaseException so that nothing
    in Jinja's runtime swallows it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _raise(message: str) -> None:
    raise TemplateError(message)


def _size(value: Any) -> int:
    return len(value) if isinstance(value, (str, bytes, list, tuple, dict)) else 0


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class _Bounds:
    """The limits of one render, checked by the environment and the trace function."""

    def __init__(self, max_chars: int) -> None:
        self.max_chars = max_chars
        self.deadline = time.monotonic() + MAX_SECONDS

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise _Overrun(f"it took longer than {MAX_SECONDS:g} s to render (a template "
                           "that loops without end?)")

    def check_size(self, n: int) -> None:
        if n > self.max_chars:
            raise _Overrun(f"its output grew past {self.max_chars / (1 << 20):.1f} MiB (a "
                           "template that floods the prompt?)")

    def check_value(self, value: Any) -> Any:
        self.check_size(_size(value))
        if _is_int(value) and value.bit_length() > MAX_INT_BITS:
            raise _Overrun("it computes with absurdly large numbers")
        return value

    def check_arguments(self, args: tuple, kwargs: dict) -> None:
        """A count or width above the size limit can only mean a huge result built in one
        step (``ljust``, ``center``, ``zfill``, ``'{:>…}'``)."""
        for value in (*args, *kwargs.values()):
            if _is_int(value):
                self.check_size(abs(value))

    def check_format(self, fmt: str, args: tuple = ()) -> None:
        if _BIG_WIDTH.search(fmt):
            self.check_size(self.max_chars + 1)
        if _STAR_WIDTH.search(fmt):
            self.check_arguments(args, {})

    def check_text_op(self, name: str, text: Any, args: tuple) -> None:
        """Results of ``replace``, ``join`` and ``indent`` can be far larger than their
        inputs; estimate them before they are built."""
        if not isinstance(text, str) and name != "join":
            return
        if name == "replace" and len(args) >= 2:
            old, new = str(args[0]), str(args[1])
            hits = len(text) + 1 if not old else text.count(old)
            self.check_size(len(text) + hits * len(new))
        elif name == "join" and args and isinstance(text, Sized):
            self.check_size(len(str(args[0])) * len(text))
        elif name == "indent" and args and isinstance(args[0], str):
            self.check_size(len(text) + len(args[0]) * (text.count("\n") + 1))

    def tracer(self) -> Callable:
        def trace(frame, event: str, arg: Any) -> Callable:
            self.check_time()
            if event == "return":
                self.check_size(_size(arg))
            return trace
        return trace


_local = threading.local()


def _bounds() -> _Bounds:
    return getattr(_local, "bounds", None) or _Bounds(BASE_OUTPUT)


class _BoundedSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, with one-step allocations checked before they happen. The
    limits in force are those of the render running on this thread."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self) -> None:
        super().__init__(trim_blocks=True, lstrip_blocks=True)
        self.globals["raise_exception"] = _raise
        self.globals["strftime_now"] = lambda fmt: datetime.now().strftime(str(fmt)[:100])
        for name, function in list(self.filters.items()):
            self.filters[name] = _guarded_filter(name, function)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        bounds = _bounds()
        if operator == "*":
            for sequence, count in ((left, right), (right, left)):
                if _is_int(count) and isinstance(sequence, (str, list, tuple)):
                    bounds.check_size(len(sequence) * max(count, 0))
        elif operator == "**":
            if _is_int(left) and _is_int(right) and abs(left) > 1 and right > 0 and \
                    right * abs(left).bit_length() > MAX_INT_BITS:
                raise _Overrun("it computes with absurdly large numbers")
        elif operator == "+":
            bounds.check_size(_size(left) + _size(right))
        elif operator == "%" and isinstance(left, str):
            bounds.check_format(left, right if isinstance(right, tuple) else (right,))
        return bounds.check_value(super().call_binop(context, operator, left, right))

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        bounds = _bounds()
        bounds.check_arguments(args, kwargs)
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str):  # a str method: 'sep'.join(items), s.replace(old, new)
            name = getattr(__obj, "__name__", "")
            if name == "join" and args:
                bounds.check_text_op(name, args[0], (owner,))
            else:
                bounds.check_text_op(name, owner, args)
        return bounds.check_value(super().call(__context, __obj, *args, **kwargs))

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        fmt = str(value.__self__)

        def checked(*args: Any, **kwargs: Any) -> str:
            bounds = _bounds()
            bounds.check_format(fmt)
            bounds.check_arguments(args, kwargs)
            return bounds.check_value(wrapped(*args, **kwargs))
        return checked


def _guarded_filter(name: str, function: Callable) -> Callable:
    skip = 2 if _PassArg.from_obj(function) is not None else 1  # context, then the value

    @functools.wraps(function)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        bounds = _bounds()
        bounds.check_arguments(args[skip:], kwargs)
        if name in ("replace", "join", "indent") and len(args) >= skip:
            value = args[skip - 1]
            options = args[skip:] or tuple(kwargs.values())
            bounds.check_text_op(name, value, options)
        elif name == "format" and len(args) >= skip and isinstance(args[skip - 1], str):
            bounds.check_format(args[skip - 1], args[skip:])
        return bounds.check_value(function(*args, **kwargs))
    return guarded


@functools.lru_cache(maxsize=16)
def _compiled(source: str) -> Any:
    """The compiled template (compiling Qwen's takes milliseconds; each prompt renders
    twice). Compiled under the first render's bounds: a failure is not cached."""
    return _BoundedSandbox().from_string(source)


def size_limit(messages: list[dict]) -> int:
    """How much text a render may produce: 1 MiB plus eight times the messages' text (a
    long pasted document must still fit, a flood must not)."""
    return BASE_OUTPUT + 8 * sum(len(str(m.get("content", ""))) for m in messages)


def _bounded(bounds: _Bounds, work: Callable[[], str]) -> str:
    previous = sys.gettrace()
    _local.bounds = bounds
    sys.settrace(bounds.tracer())
    try:
        return work()
    finally:
        sys.settrace(previous)
        _local.bounds = None


def render(template: str | None, messages: list[dict], bos_token: str = "",
           eos_token: str = "", add_generation_prompt: bool = True) -> str:
    """The prompt text for ``messages`` (dicts with string ``role`` and ``content``)."""
    source = template or FALLBACK_TEMPLATE
    if len(source) > MAX_TEMPLATE_CHARS:
        raise TemplateRefused(f"it is {len(source)} characters long (limit "
                              f"{MAX_TEMPLATE_CHARS})")
    bounds = _Bounds(size_limit(messages))

    def work() -> str:
        out, total = [], 0
        for chunk in _compiled(source).generate(
                messages=messages, add_generation_prompt=add_generation_prompt,
                bos_token=bos_token, eos_token=eos_token):
            total += len(chunk)
            bounds.check_size(total)
            out.append(chunk)
        return "".join(out)

    try:
        return _bounded(bounds, work)
    except _Overrun as overrun:
        raise TemplateRefused(overrun.reason) from None
    except SecurityError as error:
        raise TemplateRefused(f"it tried an unsafe operation ({error})") from error
    except TemplateError as error:
        raise TemplateRefused(f"it could not be rendered ({error})") from error
    except RecursionError:
        raise TemplateRefused("it recurses too deeply") from None
    except MemoryError:
        raise TemplateRefused("it ran out of memory while rendering") from None
    except Exception as error:  # a hostile template can raise anything from inside Jinja
        raise TemplateRefused(f"it failed with {type(error).__name__}: {error}") from error

"""Hostile chat templates: rendering is bounded in time and size, a template that tries to
hang or flood the engine is refused with a clear message, and the engine worker answers the
next request normally. The templates sit inside real GGUF files written here and go through
the real worker process (``EngineClient``)."""

from __future__ import annotations

import time

import pytest
from tiny_models import CHAT_TEMPLATE, write_tiny_model

from engine import chat_template
from engine import protocol as p
from engine.errors import TemplateRefused
from engine.facade import EngineClient

# name -> template; each would hang the worker, or eat its memory, if rendered unbounded
HOSTILE_TEMPLATES = {
    "nested-loops": "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}"
                    "{% endfor %}",
    "huge-output": "{% for a in range(100000) %}{% for b in range(100000) %}0123456789"
                   "{% endfor %}{% endfor %}",
    "doubling-string": "{% set ns = namespace(s='ab') %}{% for i in range(64) %}"
                       "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
    "repeat-operator": "{{ 'x' * 10000000000 }}",
    "list-repeat": "{{ (range(1000) | list) * 100000000 }}",
    "power": "{{ 7 ** 10000000000 }}",
    "pad-method": "{{ 'x'.ljust(10000000000) }}",
    "center-filter": "{{ 'x' | center(10000000000) }}",
    "format-width": "{{ '{:>10000000000}'.format(1) }}",
    "percent-width": "{{ '%10000000000d' % 1 }}",
    "deep-recursion": "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "exponential-recursion": "{% macro f(n) %}{% if n < 60 %}{{ f(n + 1) }}{{ f(n + 1) }}"
                             "{% endif %}{% endmacro %}{{ f(0) }}",
}
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("name", sorted(HOSTILE_TEMPLATES))
def test_hostile_template_is_refused_quickly(name):
    started = time.monotonic()
    with pytest.raises(TemplateRefused) as refused:
        chat_template.render(HOSTILE_TEMPLATES[name], MESSAGES)
    assert time.monotonic() - started < chat_template.MAX_SECONDS + 3, name
    assert "chat template was refused" in str(refused.value)


def test_limits_say_what_was_exceeded():
    with pytest.raises(TemplateRefused, match="longer than"):
        chat_template.render(HOSTILE_TEMPLATES["nested-loops"], MESSAGES)
    with pytest.raises(TemplateRefused, match="MiB"):
        chat_template.render(HOSTILE_TEMPLATES["huge-output"], MESSAGES)


def test_ordinary_templates_still_render_in_full():
    long_text = "word " * 200_000  # a pasted 1 MB document: the output may exceed 1 MiB
    messages = [{"role": "user", "content": long_text}]
    text = chat_template.render(CHAT_TEMPLATE, messages)
    assert text.startswith("<|im_start|>user\n" + long_text)
    loops = "{% for m in messages %}{% for i in range(20000) %}.{% endfor %}{% endfor %}"
    assert chat_template.render(loops, MESSAGES) == "." * 20000


@pytest.fixture(scope="module")
def hostile_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile-templates")
    files = {name: write_tiny_model(folder / f"{name}.gguf", chat_template=source)
             for name, source in HOSTILE_TEMPLATES.items()}
    return files, write_tiny_model(folder / "good.gguf")


def test_worker_refuses_hostile_templates_and_keeps_answering(hostile_files):
    files, good = hostile_files
    request = p.ChatRequest(tuple(p.Message(**m) for m in MESSAGES), max_tokens=8,
                            temperature=0.0, mode="off")
    engine = EngineClient()
    try:
        pid = None
        for name in ("nested-loops", "huge-output", "deep-recursion", "exponential-recursion",
                     "repeat-operator", "doubling-string"):
            engine.load(p.LoadRequest(str(files[name])))
            pid = pid or engine.worker_pid
            started = time.monotonic()
            events = list(engine.chat(request))
            assert isinstance(events[-1], p.Failed), name
            assert "chat template was refused" in events[-1].message, name
            assert not events[-1].crashed, name
            assert time.monotonic() - started < chat_template.MAX_SECONDS * 3 + 5, name
        engine.load(p.LoadRequest(str(good)))
        done = list(engine.chat(request))[-1]
        assert isinstance(done, p.Done) and done.stats.tokens > 0
        assert engine.worker_pid == pid  # the same worker throughout: it never died
    finally:
        engine.close()

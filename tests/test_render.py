"""What the page shows for a reply: draft highlighting never leaks HTML into code."""

from __future__ import annotations

from app.render import draft_spans, highlight


def test_highlight_skips_code_fences_and_inline_code():
    text = "Use `len(x)` here.\n```python\nprint(len(x))\n```\nDone now."
    spans = draft_spans([(text[:6], "draft"), (text[6:9], "draft"), (text[9:30], "target"),
                         (text[30:45], "draft"), (text[45:], "draft")])
    shown = highlight(text, spans)
    assert '<span class="tdm-draft">Use </span>' in shown
    assert "`len(x)`" in shown  # inline code untouched
    assert "print(len(x))" in shown and "<span" not in shown.split("```")[1]
    assert shown.endswith('```<span class="tdm-draft">\nDone now.</span>')


def test_draft_spans_merge_neighbours():
    assert draft_spans([("ab", "draft"), ("c", "draft"), ("d", "target"), ("e", "draft")]) == [
        [0, 3], [4, 5]]

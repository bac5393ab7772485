"""What the page shows for a reply: draft highlighting never leaks HTML into code."""

from __future__ import annotations

import re

from app.render import display_message, draft_spans, highlight


def test_highlight_skips_code_fences_and_inline_code():
    text = "Use `len(x)` here.\n```python\nprint(len(x))\n```\nDone now."
    spans = draft_spans([(text[:6], "draft-model"), (text[6:9], "draft-model"),
                         (text[9:30], "target"), (text[30:45], "draft-model"),
                         (text[45:], "draft-model")])
    shown = highlight(text, spans)
    assert '<span class="tdm-draft tdm-draft-draft-model">Use</span> ' in shown
    assert "`len(x)`" in shown  # inline code untouched
    assert "print(len(x))" in shown and "<span" not in shown.split("```")[1]
    assert shown.endswith('```\n<span class="tdm-draft tdm-draft-draft-model">Done now.</span>')


def test_draft_spans_merge_neighbours_of_one_drafter_and_keep_drafters_apart():
    pieces = [("ab", "suffix"), ("c", "suffix"), ("d", "target"), ("e", "ngram"), ("f", "suffix")]
    assert draft_spans(pieces) == [[0, 3, "suffix"], [4, 5, "ngram"], [5, 6, "suffix"]]
    shown = highlight("abcdef", draft_spans(pieces))
    assert 'class="tdm-draft tdm-draft-suffix">abc<' in shown
    assert 'class="tdm-draft tdm-draft-ngram">e<' in shown


def test_spans_stored_before_drafters_were_named_still_highlight():
    assert highlight("abc", [[0, 2]]) == '<span class="tdm-draft">ab</span>c'


def test_the_chatbot_shows_a_reply_byte_for_byte():
    # Gradio runs inspect.cleandoc over plain-string messages: tabs become spaces (a Makefile
    # or Go reply copied from the page breaks) and the common indentation of every line after
    # the first is removed, as are leading blank lines
    import gradio as gr

    reply = "\nHere it is:\n    all: build\n\tgo build ./...\n    done  "
    for message in ({"role": "assistant", "content": reply, "stats": {}},
                    {"role": "user", "content": reply}):
        shown = gr.Chatbot().postprocess([display_message(message, show_drafts=False)])
        [block] = shown.root[0].content
        assert block.text == reply


def test_highlight_keeps_every_line_start_as_markdown_reads_it():
    # a span that ran over ":\n\n" put its closing tag in front of the next line's fence, so
    # the fence did not open and everything after it (the stats too) showed as code
    text = "Here it is:\n\n```python\nx = 1\n```\n- one\n- two\n\n# Head\n1. first\n> quote"
    shown = highlight(text, draft_spans([(text, "draft-model")]))
    for line, original in zip(shown.split("\n"), text.split("\n"), strict=True):
        marker = original.split(" ")[0]
        if marker in ("```python", "```", "-", "#", "1.", ">"):
            assert line.startswith(marker), (line, original)
    assert "<span" in shown and not re.search(r"<span[^>]*>[^<]*\n", shown)  # no span over a line

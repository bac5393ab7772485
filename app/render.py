"""Turning stored replies and live engine stats into what the page shows (pure functions)."""

from __future__ import annotations

import html
import re

from engine.protocol import FitReport, NumericsInfo, ProbeInfo, Recommendation
from engine.stats import MessageStats

FENCE = "```"


def highlight(text: str, draft_spans: list[list]) -> str:
    """Wrap characters that came from accepted drafts in <span class="tdm-draft
    tdm-draft-<drafter>">, except inside code (fences and inline spans), where HTML would show
    literally. Spans are [start, end] or [start, end, drafter]."""
    if not draft_spans:
        return text
    code = code_mask(text)
    out, cursor = [], 0
    for span in draft_spans:
        start, end = span[0], span[1]
        drafter = span[2] if len(span) > 2 else ""
        classes = "tdm-draft" + (f" tdm-draft-{_css_name(drafter)}" if drafter else "")
        if start < cursor or end <= start:
            continue
        out.append(text[cursor:start])
        run_start = start
        for i in range(start, end + 1):  # split the span where code begins or ends
            if i == end or code[i] != code[run_start]:
                segment = text[run_start:i]
                if code[run_start] or not segment.strip():
                    out.append(segment)
                else:
                    at_line_start = run_start == 0 or text[run_start - 1] == "\n"
                    out.append(_wrap_lines(segment, classes, at_line_start))
                run_start = i
        cursor = end
    out.append(text[cursor:])
    return "".join(out)


# what Markdown reads at the start of a line (list item, heading, quote) stays outside a span
_LINE_MARKER = re.compile(r"[ \t]*(?:(?:[-*+]|\d+[.)]|#{1,6}|>)(?:[ \t]+|$))?")


def _wrap_lines(segment: str, classes: str, at_line_start: bool) -> str:
    """``segment`` wrapped line by line: a span never holds a line break, the whitespace
    around a line's text, nor the Markdown marker a line starts with (a closing tag in front
    of a fence or a list marker would stop Markdown from reading it)."""
    pieces = []
    for index, line in enumerate(segment.split("\n")):
        lead = _LINE_MARKER.match(line).end() if (index or at_line_start) else 0
        body = line[lead:]
        words = body.strip()
        if not words:
            pieces.append(line)
            continue
        left = lead + len(body) - len(body.lstrip())
        right = left + len(words)
        pieces.append(f'{line[:left]}<span class="{classes}">{html.escape(line[left:right])}'
                      f'</span>{line[right:]}')
    return "\n".join(pieces)


def _css_name(name: str) -> str:
    return "".join(c if c.isalnum() or c == "-" else "-" for c in name)


def code_mask(text: str) -> list[bool]:
    """Per character: inside a ``` fence or an inline `code` span (backticks included)."""
    mask = [False] * len(text)
    fenced = inline = False
    i = 0
    while i < len(text):
        if text.startswith(FENCE, i):
            fenced, inline = not fenced, False
            mask[i:i + 3] = [True] * 3
            i += 3
            continue
        if text[i] == "\n":
            inline = False  # inline code never spans lines
        if text[i] == "`" and not fenced:
            inline = not inline
            mask[i] = True
        else:
            mask[i] = fenced or inline
        i += 1
    return mask


def draft_spans(pieces: list[tuple[str, str]], offset: int = 0) -> list[list]:
    """[start, end, drafter] character spans of text that came from accepted drafts (origin
    not "target"); neighbours from the same drafter merge."""
    spans: list[list] = []
    position = offset
    for text, origin in pieces:
        end = position + len(text)
        if origin != "target" and text:
            if spans and spans[-1][1] == position and spans[-1][2] == origin:
                spans[-1][1] = end
            else:
                spans.append([position, end, origin])
        position = end
    return spans


def percent(value) -> str:
    return "–" if value is None else f"{100 * value:.0f}%"


def indicators(stats: dict | None, status: str = "") -> str:
    if not stats:
        note = html.escape(status)
        return f'<div class="tdm-indicators"><span class="tdm-note">{note}</span></div>'
    speedup = stats.get("speedup")
    first = stats.get("first_token_seconds")
    cells = [
        ("acceptance", percent(stats.get("acceptance"))),
        ("tokens/s decoding", f"{stats.get('tok_per_s', 0):.1f}"),
        ("first token", "–" if first is None else f"{first:.2f} s"),
        # an estimate against the plain rate seen lately, shown only when something was drafted
        ("vs plain (est.)", "–" if speedup is None else f"≈{speedup:.2f}×"),
        ("window", str(stats.get("window", 0))),
        ("drafter", html.escape(str(stats.get("drafter", "none")))),
    ]
    if stats.get("numerics") == "fast":
        cells.append(("near ties (fast)", str(stats.get("near_ties", 0))))
    body = "".join(f'<div class="tdm-cell"><b>{value}</b><small>{name}</small></div>'
                   for name, value in cells)
    note = stats.get("controller_note") or status
    return (f'<div class="tdm-indicators">{body}'
            f'<span class="tdm-note">{html.escape(note)}</span></div>')


def server_indicators(stats: dict | None, note: str) -> str:
    """The indicators for a reply from a server backend: what it reported (llama-server's
    timings), or a plain note that it reports nothing."""
    if not stats:
        return indicators(None, note)
    first = stats.get("first_token_seconds")
    cells = [("tokens/s (server)", f"{stats.get('tok_per_s', 0):.1f}"),
             ("tokens", str(stats.get("tokens", 0))),
             ("first token", "–" if first is None else f"{first:.2f} s")]
    if stats.get("drafted"):
        cells += [("acceptance", percent(stats.get("acceptance"))),
                  ("drafted", str(stats["drafted"]))]
    body = "".join(f'<div class="tdm-cell"><b>{value}</b><small>{name}</small></div>'
                   for name, value in cells)
    return (f'<div class="tdm-indicators">{body}'
            f'<span class="tdm-note">{html.escape(note)}</span></div>')


def stats_line(stats: dict) -> str:
    return MessageStats.from_dict(stats).summary_line()


def rate_points(points: list[tuple[int, float, int]], span: int = 8
                ) -> list[tuple[int, float, int]]:
    """(tokens, seconds, window) samples of a reply -> (tokens, decoding rate over the last
    ``span`` tokens, window): the rate as it is at each point, not the running average."""
    out = []
    for i, (tokens, seconds, window) in enumerate(points):
        j = i
        while j > 0 and tokens - points[j - 1][0] <= span:
            j -= 1
        base_tokens, base_seconds = (points[j - 1][0], points[j - 1][1]) if j else (0, 0.0)
        elapsed = seconds - base_seconds
        if elapsed > 0:
            out.append((tokens, (tokens - base_tokens) / elapsed, window))
    return out


def display_message(message: dict, show_drafts: bool, streaming: bool = False) -> dict:
    content = message["content"]
    stats = message.get("stats") or {}
    if message["role"] == "assistant":
        if show_drafts:
            content = highlight(content, stats.get("draft_spans", []))
        if stats.get("summary") and stats.get("source") == "server":
            content += f'\n\n<span class="tdm-stats">{html.escape(stats["summary"])}</span>'
        elif stats.get("tokens") is not None:
            content += f'\n\n<span class="tdm-stats">{html.escape(stats_line(stats))}</span>'
        elif not message.get("complete", True) and not streaming:
            content += '\n\n<span class="tdm-stats">(reply interrupted)</span>'
    # a text block, not a plain string: Gradio runs inspect.cleandoc over plain strings
    # (tabs to spaces, common indentation and leading blank lines removed)
    return {"role": message["role"], "content": [{"type": "text", "text": content}]}


def numerics_line(shape: NumericsInfo | None, probe: ProbeInfo | None) -> str:
    """The Hardware tab's line on numerics: the mode in use, which pass sizes compute
    bit-identical logits here, and what padding plain decoding costs when it is padded."""
    if not shape:
        return "**Numerics** not measured yet"
    line = f"**Numerics** {html.escape(shape.label)}"
    if probe:
        classes = "  ".join("{" + ",".join(map(str, c)) + "}" for c in probe.classes)
        line += (f" · bit-identical pass sizes here: {classes} · largest batched vs one-token "
                 f"logit difference {probe.max_difference:.2g}")
        seconds, rows = probe.seconds, shape.plain_rows
        if rows > 1 and seconds.get(1) and seconds.get(rows):
            line += (f" · padding plain decoding to {rows} rows costs ×"
                     f"{seconds[rows] / seconds[1]:.2f} of a one-token pass")
    return line


def fit_line(fit: FitReport) -> str:
    gib = 1024**3
    numbers = f"needs ~{fit.needed / gib:.1f} GiB, {fit.available / gib:.1f} GiB available"
    if fit.fits:
        return f"Memory: fits ({numbers})"
    return f"⚠ **Will not fit in memory** ({numbers}): loading will be refused."


def progress_bar(name: str, done: int, total: int) -> str:
    share = done / total if total else 0.0
    return (f'<div class="tdm-progress">{html.escape(name)}: '
            f'<progress value="{share:.3f}" max="1"></progress> {100 * share:.0f}% '
            f"({done / 1e6:.0f} of {total / 1e6:.0f} MB)</div>")


def recommendation(result: Recommendation) -> str:
    rows = ["| draft | compatibility | acceptance | cost vs target | window | expected | "
            "if always right |", "|---|---|---|---|---|---|---|"]
    for c in result.candidates:
        rows.append(f"| {c.draft} | {c.compatibility} | {percent(c.acceptance)} | "
                    f"{c.cost_ratio:.2f} | {c.window} | {c.expected_speedup:.2f}× | "
                    f"{c.ceiling:.2f}× |")
    return "\n".join([f"**Recommended:** {result.reason}", "", *rows])

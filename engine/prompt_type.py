"""A cheap classifier of the request: which kind of answer is coming (code, math, rewrite …).
Keyword rules over the last user message; good enough to seed acceptance estimates."""

from __future__ import annotations

import re

CATEGORIES = ("code", "math", "rewrite", "summarize", "translate", "creative", "chat")

_RULES: tuple[tuple[str, str], ...] = (
    ("rewrite", r"\b(rewrite|rephrase|fix the|fix spelling|correct|rename|convert|"
                r"change nothing|return (it|the full)|add type hints|edit|reformat|unchanged)\b"),
    ("translate", r"\b(translate|translation|in(to)? (french|german|spanish|italian|chinese|"
                  r"japanese|english|portuguese|dutch|russian))\b"),
    ("summarize", r"\b(summari[sz]e|summary|tl;?dr|extract|key points|in (one|two|three) "
                  r"sentences?)\b"),
    ("code", r"(```|\bdef |\bclass |\bfunction\b|\bpython\b|\bjavascript\b|\bsql\b|\bbash\b|"
             r"\bscript\b|\bimplement\b|\bregex\b|\bcode\b|\bquery\b|\balgorithm\b)"),
    ("math", r"(\bsolve\b|\bcalculate\b|\bequation\b|\bhow many\b|\bprobability\b|\d+\s*[-+*/^]"
             r"\s*\d+|\bmath\b|\bintegral\b|\bderivative\b)"),
    ("creative", r"\b(story|poem|haiku|limerick|lyrics|fiction|imagine|creative)\b"),
)


def classify(messages: list[dict]) -> str:
    text = ""
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content", "")
            text = content if isinstance(content, str) else str(content)
            break
    lowered = text.lower()
    for category, pattern in _RULES:
        if re.search(pattern, lowered):
            return category
    return "chat"


def copy_heavy(category: str) -> bool:
    """Answers of this kind tend to copy the prompt: try n-gram drafting first."""
    return category in ("rewrite", "summarize")

"""Prompt-lookup (n-gram) drafting: find the latest earlier occurrence of the last few tokens
in the conversation and propose what followed it. No model, almost free; it shines when the
answer copies the prompt (rewrites, edits, quotes)."""

from __future__ import annotations

from collections.abc import Sequence

from engine.drafters.base import Draft, Drafter


class NgramDrafter(Drafter):
    name = "ngram"

    def __init__(self, max_ngram: int = 4, min_ngram: int = 2) -> None:
        self.max_ngram, self.min_ngram = max_ngram, min_ngram

    def propose(self, context: Sequence[int], k: int) -> Draft:
        if k <= 0:
            return Draft()
        tokens = list(context)
        n_tokens = len(tokens)
        for n in range(min(self.max_ngram, n_tokens - 1), self.min_ngram - 1, -1):
            tail = tokens[n_tokens - n:]
            first = tail[0]
            # latest earlier match whose continuation is not the tail itself
            for start in range(n_tokens - n - 1, -1, -1):
                if tokens[start] == first and tokens[start:start + n] == tail:
                    follow = tokens[start + n:start + n + k]
                    if follow:
                        return Draft(follow)
        return Draft()

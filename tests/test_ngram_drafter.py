"""The n-gram drafter's incremental index proposes exactly what a scan of the whole context
proposes (the latest earlier occurrence of the longest matching tail), whatever the order of
calls: growing contexts, skipped calls, a new prompt, a context that is not an extension."""
import random

import pytest

from engine.drafters.ngram import NgramDrafter


def scan(context: list[int], k: int, max_ngram: int = 4, min_ngram: int = 2) -> list[int]:
    """The definition: scan backwards for the latest earlier match of the last n tokens."""
    n_tokens = len(context)
    for n in range(min(max_ngram, n_tokens - 1), min_ngram - 1, -1):
        tail = context[n_tokens - n:]
        for start in range(n_tokens - n - 1, -1, -1):
            if context[start:start + n] == tail:
                return context[start + n:start + n + k]
    return []


@pytest.mark.parametrize("seed", range(12))
def test_index_proposes_what_a_full_scan_proposes(seed):
    rng = random.Random(seed)
    vocab = rng.choice([3, 5, 20])
    drafter = NgramDrafter()
    for _ in range(3):  # three replies, each to a prompt that may or may not extend the last
        prompt = [rng.randrange(vocab) for _ in range(rng.randrange(0, 40))]
        drafter.reset(prompt, None)
        context = list(prompt)
        for _ in range(80):
            k = rng.choice([0, 1, 4, 8])
            if rng.random() < 0.8:  # the loop sometimes skips proposing (speculation off)
                assert drafter.propose(context, k).tokens == (scan(context, k) if k else [])
            context += [rng.randrange(vocab) for _ in range(rng.choice([1, 1, 2, 5]))]


def test_a_context_that_is_not_an_extension_is_indexed_afresh():
    drafter = NgramDrafter()
    assert drafter.propose([1, 2, 3, 1, 2], 4).tokens == [3, 1, 2]
    assert drafter.propose([7, 8, 9, 7, 8], 4).tokens == [9, 7, 8]  # same length, other text
    assert drafter.propose([7, 8], 4).tokens == []  # shorter

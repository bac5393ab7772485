"""Drafting with a model whose vocabulary differs from the target's (any family).

Greedy — string-level exact match (SLEM, Timor et al., ICML 2025): the draft's tokens become
text, the text is re-tokenized with the target's tokenizer together with a short look-behind of
already accepted target tokens, and the target verifies the result like any other draft. When
the look-behind re-tokenizes differently (the draft text merged into accepted tokens), the
draft text is tokenized on its own instead: the target's verification keeps it lossless.

Sampling — token-level intersection (TLI): the draft samples only tokens whose bytes exist in
the target vocabulary (renormalised), each maps to exactly one target token, and the draft
distribution is scattered into target ids for standard rejection sampling.

The draft's own context is kept in step through text: its prompt is the conversation rendered
with its own chat template, followed by the accepted reply re-tokenized with its tokenizer.
Only a short tail is re-tokenized each step and the draft KV cache rolls back to the longest
common prefix, so the conversation is never re-evaluated.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from engine.compat import vocab_map
from engine.drafters.base import Draft
from engine.drafters.model import ModelDrafter, sync_cache
from engine.errors import ContextFull
from engine.prompting import prompt_tokens
from engine.runtime import Model
from engine.sampling import SamplingParams

LOOKBEHIND_TOKENS = 4  # accepted target tokens re-tokenized with the draft text
RETOKENIZE_BYTES = 24  # reply bytes re-tokenized for the draft each step


def _char_start(data: bytes, offset: int) -> bool:
    return offset >= len(data) or (data[offset] & 0xC0) != 0x80


class UniversalDrafter(ModelDrafter):
    name = "universal"

    def __init__(self, draft: Model, target: Model, min_confidence: float = 0.0) -> None:
        super().__init__(draft, min_confidence)
        self.target = target
        self.to_target = vocab_map(target, draft)
        self.mask = np.where(self.to_target >= 0, 0.0, -np.inf)
        self.messages: list[dict] | None = None

    def prepare(self, messages: list[dict]) -> None:
        """The conversation being answered, so the draft sees it in its own chat format."""
        self.messages = messages

    def reset(self, prompt: Sequence[int], sampling: SamplingParams) -> None:
        super().reset(prompt, sampling)
        self.prompt_len = len(prompt)
        if self.messages is not None:
            self.draft_prompt = prompt_tokens(self.model, self.messages)
        else:  # no messages: carry the target's rendered prompt over as text
            text = b"".join(self.target.token_bytes(t, special=True) for t in prompt)
            self.draft_prompt = self.model.tokenize(text.decode("utf-8", "replace"))
        self.reply_target: list[int] = []  # accepted reply, target ids
        self.reply_bytes = b""
        self.reply_draft: list[int] = []  # the same reply in draft ids
        self.reply_draft_ends: list[int] = []  # byte offset after each draft token

    # ---- keeping the draft's view of the reply in step ---------------------------------
    def _sync_reply(self, reply: Sequence[int]) -> None:
        keep = 0
        while (keep < min(len(reply), len(self.reply_target))
               and reply[keep] == self.reply_target[keep]):
            keep += 1
        if keep < len(self.reply_target):  # the reply changed behind us: start over
            self.reply_target, self.reply_bytes = [], b""
            self.reply_draft, self.reply_draft_ends = [], []
            keep = 0
        new = list(reply[keep:])
        self.reply_target.extend(new)
        self.reply_bytes += b"".join(self.target.token_bytes(t) for t in new)
        # re-tokenize from a draft-token boundary a little behind the end
        limit = len(self.reply_bytes) - RETOKENIZE_BYTES
        cut = len(self.reply_draft)
        while cut > 0 and (self.reply_draft_ends[cut - 1] > limit or
                           not _char_start(self.reply_bytes, self.reply_draft_ends[cut - 1])):
            cut -= 1
        start = self.reply_draft_ends[cut - 1] if cut else 0
        tail = self.reply_bytes[start:].decode("utf-8", "ignore")
        tail_tokens = self.model.tokenize(tail, add_special=False, parse_special=False)
        del self.reply_draft[cut:], self.reply_draft_ends[cut:]
        offset = start
        for token in tail_tokens:
            offset += len(self.model.token_bytes(token))
            self.reply_draft.append(token)
            self.reply_draft_ends.append(offset)

    def _draft_context_bytes(self) -> bytes:
        return self.reply_bytes[:self.reply_draft_ends[-1]] if self.reply_draft else b""

    # ---- proposing ---------------------------------------------------------------------
    def propose(self, context: Sequence[int], k: int) -> Draft:
        self._sync_reply(context[self.prompt_len:])
        try:
            logits = sync_cache(self.model, self.draft_prompt + self.reply_draft)
        except ContextFull:
            return Draft()
        if logits is None:
            return Draft()
        if self.sampling.greedy:
            tokens, _ = self.draft_tokens(logits, k)
            return Draft(self._to_target_text(tokens, k))
        tokens, q_rows = self.draft_tokens(logits, k, self.mask)
        return Draft([int(self.to_target[t]) for t in tokens],
                     [self._q_in_target(q) for q in q_rows])

    def _to_target_text(self, draft_tokens: list[int], k: int) -> list[int]:
        """SLEM: draft tokens -> text -> target tokens after the accepted reply."""
        if not draft_tokens:
            return []
        drafted = b"".join(self.model.token_bytes(t) for t in draft_tokens)
        full = self._draft_context_bytes() + drafted
        if not full.startswith(self.reply_bytes):
            return []  # the draft did not continue the accepted text
        ahead = full[len(self.reply_bytes):]
        behind = self.reply_target[-LOOKBEHIND_TOKENS:]
        behind_bytes = b"".join(self.target.token_bytes(t) for t in behind)
        text = (behind_bytes + ahead).decode("utf-8", "ignore")
        retokenized = self.target.tokenize(text, add_special=False, parse_special=False)
        if behind and retokenized[:len(behind)] == behind:
            proposal = retokenized[len(behind):]
        else:
            proposal = self.target.tokenize(ahead.decode("utf-8", "ignore"), add_special=False,
                                            parse_special=False)
        return proposal[:k]

    def _q_in_target(self, q: np.ndarray) -> np.ndarray:
        """TLI: the draft distribution (already zero outside the intersection) in target ids."""
        out = np.zeros(self.target.n_vocab, dtype=np.float64)
        keep = np.flatnonzero(q)
        np.add.at(out, self.to_target[keep], q[keep])
        return out

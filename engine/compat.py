"""How a draft model can pair with a target: "native" (same vocabulary, llama.cpp's rules) or
"universal" (different vocabulary, bridged through text), with the measured vocabulary overlap,
and the token map between the two vocabularies (cached on disk per pair).

Not for: drafting itself (``engine.drafters``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine import paths
from engine.runtime import Model

VOCAB_MAX_SIZE_DIFFERENCE = 128  # llama.cpp's SPEC_VOCAB_MAX_SIZE_DIFFERENCE
VOCAB_CHECK_START_TOKEN_ID = 5  # llama.cpp's SPEC_VOCAB_CHECK_START_TOKEN_ID
DRAFT_MAX_SIZE_SHARE = 0.5  # a draft file larger than this share of the target cannot pay off


def small_enough_to_draft(draft_bytes: int, target_bytes: int) -> bool:
    return draft_bytes <= DRAFT_MAX_SIZE_SHARE * target_bytes


@dataclass(frozen=True)
class Compatibility:
    kind: str  # "native" or "universal"
    overlap: float  # share of the draft's (non-control) tokens whose bytes the target has
    reason: str  # why not native (empty when native)

    def label(self) -> str:
        if self.kind == "native":
            return "native (same vocabulary)"
        return f"universal ({100 * self.overlap:.0f}% vocabulary overlap)"


def native_mismatch(target: Model, draft: Model) -> str:
    """Empty when llama.cpp would accept the pair as same-vocabulary, else the first reason."""
    if target.vocab_type != draft.vocab_type:
        return "vocabulary types differ"
    if target.add_bos != draft.add_bos or (target.add_bos and target.bos != draft.bos):
        return "BOS handling differs"
    if target.eos != draft.eos:
        return "EOS tokens differ"
    if abs(target.n_vocab - draft.n_vocab) > VOCAB_MAX_SIZE_DIFFERENCE:
        return f"vocabulary sizes differ ({target.n_vocab} vs {draft.n_vocab})"
    for token in range(VOCAB_CHECK_START_TOKEN_ID, min(target.n_vocab, draft.n_vocab)):
        if target.token_text(token) != draft.token_text(token):
            return f"token {token} differs"
    return ""


def _fingerprint(model: Model) -> str:
    stat = model.path.stat()
    return f"{model.path.name}-{stat.st_size}-{stat.st_mtime_ns}"


def vocab_map(target: Model, draft: Model) -> np.ndarray:
    """``map[d]`` = the target id whose bytes equal draft token d's bytes, or -1. Control
    tokens never map. Cached per pair in the user data directory."""
    key = hashlib.sha256((_fingerprint(target) + "|" + _fingerprint(draft)).encode())
    cache = paths.cache_dir() / "vocab-maps" / f"{key.hexdigest()[:24]}.npy"
    if cache.is_file():
        cached = np.load(cache)
        if cached.shape == (draft.n_vocab,):
            return cached
    by_bytes: dict[bytes, int] = {}
    for token in range(target.n_vocab):
        if not target.is_control(token):
            piece = target.token_bytes(token)
            if piece:
                by_bytes.setdefault(piece, token)
    mapping = np.full(draft.n_vocab, -1, dtype=np.int64)
    for token in range(draft.n_vocab):
        if not draft.is_control(token):
            mapping[token] = by_bytes.get(draft.token_bytes(token), -1)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp.npy")
    np.save(tmp, mapping)
    tmp.replace(cache)
    return mapping


def analyse(target: Model, draft: Model) -> Compatibility:
    reason = native_mismatch(target, draft)
    mapping = vocab_map(target, draft)
    usable = sum(1 for t in range(draft.n_vocab) if not draft.is_control(t))
    overlap = float((mapping >= 0).sum()) / max(usable, 1)
    return Compatibility("universal" if reason else "native", overlap, reason)


def analyse_files(target_path: str | Path, draft_path: str | Path) -> Compatibility:
    """Compatibility of two GGUF files, loading only their vocabularies."""
    target = Model(target_path, vocab_only=True)
    draft = Model(draft_path, vocab_only=True)
    try:
        return analyse(target, draft)
    finally:
        target.close()
        draft.close()

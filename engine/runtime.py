"""A thin, fast layer over llama-cpp-python's low-level API: load a GGUF, tokenize, evaluate a
batch at given positions with logits only where needed, read logits as numpy views, and roll
the KV cache back to any position.

``Model.kv_tokens`` is the exact list of tokens whose keys/values sit in the cache, so callers
(the decoding loop, drafters) keep their caches in step by comparing token lists instead of
re-evaluating anything.

Not for: choosing tokens (``engine.sampling`` / ``engine.verify``) or the decoding loop
(``engine.speculative``).
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import llama_cpp
import numpy as np

from engine.errors import ContextFull, InvalidModelFile, TandemError
from engine.gguf_check import GGUFInfo, validate_gguf
from engine.numerics import PassShape
from engine.threads import attach_shared_pool

CACHE_TYPES = {"f16": 1, "bf16": 30, "q8_0": 8}  # ggml type ids (ggml.h)
_backend_lock = threading.Lock()
_backend_ready = False
_recent_log: list[str] = []


@llama_cpp.llama_log_callback
def _log_callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    # keep llama.cpp quiet, but remember its last lines for error messages
    if level >= 2 or os.environ.get("TANDEM_LLAMA_LOG"):
        line = text.decode("utf-8", errors="replace")
        _recent_log.append(line)
        del _recent_log[:-20]
        if os.environ.get("TANDEM_LLAMA_LOG"):
            print(line, end="")


def _init_backend() -> None:
    global _backend_ready
    with _backend_lock:
        if not _backend_ready:
            llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))
            llama_cpp.llama_backend_init()
            _backend_ready = True


def numpy_loaded_first() -> bool:
    """Whether this process started importing numpy before llama.cpp's libraries."""
    order = list(sys.modules)
    return "numpy" in order and order.index("numpy") < order.index("llama_cpp.llama_cpp")


def _refuse_numpy_first() -> None:
    """CUDA builds crash inside the model load of a process that imported numpy first (see
    engine/worker.py): refuse with a clear message instead."""
    if os.environ.get("TANDEM_ALLOW_NUMPY_FIRST") or not numpy_loaded_first():
        return
    if b"CUDA" in llama_cpp.llama_print_system_info():
        raise TandemError("This process imported numpy before llama.cpp, which crashes model "
                          "loading on CUDA builds. Load models through the engine worker "
                          "(engine.facade.EngineClient), or import llama_cpp before numpy.")


def requested_cache_types() -> tuple[str, str] | None:
    """``TANDEM_KV_CACHE``: the target's K and V cache types, "K,V" or one type for both (e.g.
    "f16,q8_0": exact speculation at any depth on a CPU, slower prefill; README, numerics)."""
    raw = os.environ.get("TANDEM_KV_CACHE", "").strip().lower()
    if not raw:
        return None
    parts = [part.strip() for part in raw.split(",")]
    parts = parts * 2 if len(parts) == 1 else parts
    if len(parts) != 2 or any(part not in CACHE_TYPES for part in parts):
        raise TandemError(f"TANDEM_KV_CACHE must be one or two of {', '.join(CACHE_TYPES)} "
                          f"(K,V), not {raw!r}")
    return parts[0], parts[1]


def physical_cores() -> int:
    import psutil

    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def gpu_offload_supported() -> bool:
    _init_backend()
    return bool(llama_cpp.llama_supports_gpu_offload())


@dataclass(frozen=True)
class RuntimeOptions:
    n_ctx: int = 4096
    n_batch: int = 512
    n_threads: int | None = None  # None: physical cores
    n_gpu_layers: int | None = None  # None: all when the build can offload, else 0
    flash_attn: bool | None = None  # None: llama.cpp decides
    # K and V cache types (keys of CACHE_TYPES); None: f16, llama.cpp's default. Mixed types
    # (e.g. f16 keys, q8_0 values) keep llama.cpp's CPU flash attention on one kernel for
    # one-token and batched queries at any depth, at some prefill speed (README, numerics)
    cache_types: tuple[str, str] | None = None

    def threads(self) -> int:
        return self.n_threads or physical_cores()

    def gpu_layers(self) -> int:
        if self.n_gpu_layers is not None:
            return self.n_gpu_layers
        return 999 if gpu_offload_supported() else 0

    def kv_types(self) -> tuple[str, str]:
        return self.cache_types or ("f16", "f16")

def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix (slice comparisons: the loop calls this every
    step on the whole conversation, so it stays out of per-token Python)."""
    if type(a) is not type(b):
        a, b = list(a), list(b)
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo] and a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo


@dataclass
class Evaluation:
    """What one evaluation returns: the argmax after each token, and (when asked) the logit
    rows and the gap between the two best logits."""

    choices: np.ndarray
    rows: np.ndarray | None = None
    margins: np.ndarray | None = None


class Model:
    def __init__(self, path: str | Path, options: RuntimeOptions = RuntimeOptions(),
                 vocab_only: bool = False) -> None:
        self.path = Path(path)
        self.options = options
        self.info: GGUFInfo = validate_gguf(self.path)
        _init_backend()
        if not vocab_only:
            _refuse_numpy_first()
        self._model = self._ctx = self._batch = None
        mparams = llama_cpp.llama_model_default_params()
        mparams.vocab_only = vocab_only
        mparams.n_gpu_layers = 0 if vocab_only else options.gpu_layers()
        _recent_log.clear()
        self._model = llama_cpp.llama_model_load_from_file(str(self.path).encode(), mparams)
        if not self._model:
            raise InvalidModelFile(str(self.path), "llama.cpp refused it: "
                                   + " ".join(line.strip() for line in _recent_log[-3:]))
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self.metadata = self._read_metadata()
        self.bos = llama_cpp.llama_vocab_bos(self._vocab)
        self.eos = llama_cpp.llama_vocab_eos(self._vocab)
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self._vocab))
        self.vocab_type = llama_cpp.llama_vocab_type(self._vocab)
        self._pieces: dict[int, bytes] = {}
        self.kv_tokens: list[int] = []
        self.busy_seconds = 0.0  # time spent inside llama_decode (profiling the loop)
        self.shape = PassShape()  # one token per pass until calibrated: exact, never fast
        self.cache_types = options.kv_types()
        self.n_ctx = 0
        if vocab_only:
            return
        cparams = llama_cpp.llama_context_default_params()
        n_ctx_train = llama_cpp.llama_model_n_ctx_train(self._model)
        self.n_ctx = min(options.n_ctx, n_ctx_train) if n_ctx_train > 0 else options.n_ctx
        cparams.n_ctx = self.n_ctx
        cparams.n_batch = cparams.n_ubatch = options.n_batch
        cparams.n_threads = cparams.n_threads_batch = options.threads()
        cparams.no_perf = True
        if options.flash_attn is not None:
            cparams.flash_attn_type = int(options.flash_attn)
        cparams.type_k, cparams.type_v = (CACHE_TYPES[t] for t in self.cache_types)
        self._ctx = llama_cpp.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            self.close()
            raise TandemError(f"Could not create a context of {self.n_ctx} tokens for "
                              f"'{self.path.name}' (out of memory?): "
                              + " ".join(line.strip() for line in _recent_log[-2:]))
        self.n_ctx = llama_cpp.llama_n_ctx(self._ctx)
        attach_shared_pool(self._ctx, options.threads())
        self.n_batch = llama_cpp.llama_n_batch(self._ctx)  # llama.cpp caps it at n_ctx
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        self._batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)

    # ---- metadata and vocabulary -------------------------------------------------------
    def _read_metadata(self) -> dict[str, str]:
        out: dict[str, str] = {}
        buf = ctypes.create_string_buffer(1 << 16)
        for i in range(llama_cpp.llama_model_meta_count(self._model)):
            n = llama_cpp.llama_model_meta_key_by_index(self._model, i, buf, len(buf))
            key = buf.value[:max(n, 0)].decode("utf-8", "replace")
            n = llama_cpp.llama_model_meta_val_str_by_index(self._model, i, buf, len(buf))
            if n >= len(buf):
                big = ctypes.create_string_buffer(n + 1)
                llama_cpp.llama_model_meta_val_str_by_index(self._model, i, big, len(big))
                out[key] = big.value.decode("utf-8", "replace")
            else:
                out[key] = buf.value[:max(n, 0)].decode("utf-8", "replace")
        return out

    @property
    def chat_template(self) -> str | None:
        return self.metadata.get("tokenizer.chat_template")

    @property
    def architecture(self) -> str:
        return self.metadata.get("general.architecture", "unknown")

    def tokenize(self, text: str, add_special: bool = False, parse_special: bool = True
                 ) -> list[int]:
        data = text.encode("utf-8")
        capacity = len(data) + 16
        while True:
            out = (llama_cpp.llama_token * capacity)()
            n = llama_cpp.llama_tokenize(self._vocab, data, len(data), out, capacity,
                                         add_special, parse_special)
            if n >= 0:
                return list(out[:n])
            capacity = -n

    def token_bytes(self, token: int, special: bool = False) -> bytes:
        """The bytes a token stands for (control tokens render as nothing unless
        ``special``)."""
        key = -1 - token if special else token
        piece = self._pieces.get(key)
        if piece is None:
            buf = ctypes.create_string_buffer(256)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0,
                                                   special)
            piece = self._pieces[key] = buf.raw[:n]
        return piece

    def detokenize(self, tokens: Sequence[int]) -> str:
        return b"".join(self.token_bytes(t) for t in tokens).decode("utf-8", "replace")

    def token_text(self, token: int) -> str:
        """The vocabulary entry's raw text (e.g. 'Ġthe'), as stored in the GGUF."""
        raw = llama_cpp.llama_vocab_get_text(self._vocab, token)
        return raw.decode("utf-8", "replace") if raw else ""

    def is_eog(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self._vocab, token))

    def is_control(self, token: int) -> bool:
        attr = llama_cpp.llama_vocab_get_attr(self._vocab, token)
        mask = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_UNKNOWN
        return bool(attr & mask)

    # ---- evaluation and KV cache -------------------------------------------------------
    def evaluate(self, tokens: Sequence[int], rows: bool = False, margins: bool = False
                 ) -> Evaluation:
        """Append ``tokens`` (one plain step, or ``[last token] + draft``) in this model's pass
        shape (``self.shape``, see ``engine.numerics``) and return the argmax after each of
        them; also the logit rows (copied) and the top-2 margins when asked. Padding rows are
        evaluated, then dropped from the KV cache."""
        n = len(tokens)
        choices = np.empty(n, dtype=np.int64)
        out_rows = np.empty((n, self.n_vocab), dtype=np.float32) if rows else None
        out_margins = np.empty(n, dtype=np.float32) if margins else None
        start = 0
        for real, width in self.shape.split(n, len(self.kv_tokens)):
            piece = list(tokens[start:start + real])
            piece += [piece[-1]] * (width - real)
            view = self.decode(piece, "all" if width > 1 else "last")[:real]
            choices[start:start + real] = view.argmax(axis=1)
            if out_rows is not None:
                out_rows[start:start + real] = view
            if out_margins is not None:
                top2 = np.partition(view, -2, axis=1)[:, -2:]
                out_margins[start:start + real] = top2[:, 1] - top2[:, 0]
            if width > real:
                self.truncate(len(self.kv_tokens) - (width - real))
            start += real
        return Evaluation(choices, out_rows, out_margins)

    def verify_pass(self, tokens: Sequence[int]) -> np.ndarray:
        """The logit rows after each of ``tokens``, evaluated in this model's pass shape."""
        return self.evaluate(tokens, rows=True).rows

    def decode(self, tokens: Sequence[int], logits: str = "last") -> np.ndarray | None:
        """Append ``tokens`` to the cache. ``logits``: "none", "last" or "all" (rows in order).
        The returned array is a view into llama.cpp's buffer, valid until the next decode."""
        if not tokens:
            return None
        if len(self.kv_tokens) + len(tokens) > self.n_ctx:
            raise ContextFull(self.n_ctx)
        if logits == "all" and len(tokens) > self.n_batch:
            raise ValueError("cannot return logits for more than n_batch tokens at once")
        started = time.perf_counter()
        try:
            for start in range(0, len(tokens), self.n_batch):
                self._decode_chunk(tokens[start:start + self.n_batch],
                                   start + self.n_batch >= len(tokens), logits)
        except BaseException:
            # an error or an interrupt (Ctrl-C, a timeout) may leave cells past kv_tokens
            self._drop_unrecorded()
            raise
        if logits == "none":
            self.busy_seconds += time.perf_counter() - started
            return None
        pointer = llama_cpp.llama_get_logits(self._ctx)  # waits for the backend to finish
        self.busy_seconds += time.perf_counter() - started
        rows = len(tokens) if logits == "all" else 1
        return np.ctypeslib.as_array(pointer, shape=(rows, self.n_vocab))

    def _decode_chunk(self, chunk: Sequence[int], last_chunk: bool, logits: str) -> None:
        batch = self._batch
        pos0 = len(self.kv_tokens)
        for i, token in enumerate(chunk):
            batch.token[i] = token
            batch.pos[i] = pos0 + i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = last_chunk and (logits == "all" or
                                              (logits == "last" and i == len(chunk) - 1))
        batch.n_tokens = len(chunk)
        code = llama_cpp.llama_decode(self._ctx, batch)
        if code != 0:
            raise TandemError(f"llama.cpp could not evaluate the batch (code {code}); the "
                              "context may be full or memory exhausted.")
        self.kv_tokens.extend(chunk)

    def _drop_unrecorded(self) -> None:
        """Make the cache hold exactly ``kv_tokens`` again after a pass that did not finish."""
        if not llama_cpp.llama_memory_seq_rm(self._memory, 0, len(self.kv_tokens), -1):
            llama_cpp.llama_memory_clear(self._memory, True)
            self.kv_tokens = []

    def truncate(self, n_keep: int) -> None:
        """Roll the KV cache back so it holds only the first ``n_keep`` tokens."""
        if n_keep >= len(self.kv_tokens):
            return
        if not llama_cpp.llama_memory_seq_rm(self._memory, 0, n_keep, -1):
            kept = self.kv_tokens[:n_keep]  # models whose memory cannot be cut: rebuild
            llama_cpp.llama_memory_clear(self._memory, True)
            self.kv_tokens = []
            self.decode(kept, logits="none")
            return
        del self.kv_tokens[n_keep:]

    def prefill(self, tokens: Sequence[int]) -> int:
        """Make the cache hold ``tokens[:-1]``, reusing the longest common prefix (returned);
        the last token is left for the first decoding step, which needs its logits."""
        keep = min(common_prefix(self.kv_tokens, tokens), len(tokens) - 1)
        self.truncate(keep)
        self.decode(list(tokens[keep:-1]), logits="none")
        return keep

    def reset(self) -> None:
        if self._ctx:
            llama_cpp.llama_memory_clear(self._memory, True)
        self.kv_tokens = []

    def close(self) -> None:
        if self._batch is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx:
            llama_cpp.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            llama_cpp.llama_model_free(self._model)
            self._model = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

"""Structural validation of a GGUF file before llama.cpp ever sees it.

Walks the header with bounds checks on every count, length and offset (magic, version, key/value
pairs, tensor descriptors, tensor data within the file, no overlaps) and refuses a bad file with
a precise message. Crafted GGUF files have overflowed llama.cpp's own parser many times, so
nothing is handed to llama.cpp that this walk did not accept. Beyond the layout it checks the
tokenizer that llama.cpp indexes without bounds: the vocabulary's arrays (tokens, scores, token
types) have the element types and the one length they must have (and ``<arch>.vocab_size``
agrees), no token string is empty or longer than ``MAX_TOKEN_BYTES``, and every special token
id (BOS, EOS, padding, unknown …) lies inside the vocabulary. Arrays of arrays, which
llama.cpp does not support, are refused rather than walked.

Refusals never echo the file's bytes: a key or tensor name is quoted only when it is a plain
identifier (letters, digits, ``._-``), otherwise it is referred to by its position.

Also returns the scalar metadata (architecture, layer counts …) that memory estimates need.

Not for: loading tensors or tokenizers (``engine.runtime``).
"""

from __future__ import annotations

import mmap
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import InvalidModelFile

MAGIC = b"GGUF"
MAX_COUNT = 1 << 24  # tensors or key/value pairs; real models have a few thousand at most
MAX_STRING = 1 << 26  # 64 MiB: a chat template or a token is far smaller
MAX_TOKEN_BYTES = 64 * 1024  # the longest real token is a few hundred bytes
MAX_DIMS = 4
MAX_NAME = 63  # GGML_MAX_NAME - 1: llama.cpp's limit for a tensor name
# value type -> struct format for fixed-size scalars
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q",
            12: "d"}
_INTEGERS = {0, 1, 2, 3, 4, 5, 10, 11}
_STRING, _ARRAY = 8, 9
_FLOAT32, _INT32 = 6, 5
_U64 = struct.Struct("<Q")
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,80}")
TOKENS = "tokenizer.ggml.tokens"
# the vocabulary's per-token arrays and the element type each must have
VOCAB_ARRAYS = {TOKENS: _STRING, "tokenizer.ggml.scores": _FLOAT32,
                "tokenizer.ggml.token_type": _INT32}
TOKEN_ID = re.compile(r"tokenizer\.ggml\.[a-z_]+_token_id")


@dataclass
class GGUFInfo:
    version: int
    n_tensors: int
    metadata: dict[str, object] = field(default_factory=dict)  # scalars and strings
    array_lengths: dict[str, int] = field(default_factory=dict)
    array_types: dict[str, int] = field(default_factory=dict)
    tensor_bytes: int = 0
    file_size: int = 0
    token_bytes: tuple[int, int] | None = None  # shortest and longest token string

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "unknown"))

    def arch_value(self, key: str, default: int = 0) -> int:
        value = self.metadata.get(f"{self.architecture}.{key}", default)
        return int(value) if isinstance(value, (int, float)) else default


def quoted(name: str, what: str, index: int) -> str:
    """How a refusal names a key or tensor without echoing arbitrary bytes of the file."""
    return f"{what} '{name}'" if _PLAIN_NAME.fullmatch(name) else f"{what} #{index + 1}"


class _Reader:
    def __init__(self, data: mmap.mmap | bytes, path: str) -> None:
        self.data, self.pos, self.path = data, 0, path
        self.end = len(data)

    def fail(self, reason: str) -> InvalidModelFile:
        return InvalidModelFile(self.path, reason)

    def take(self, fmt: str):
        size = struct.calcsize(fmt)
        if self.pos + size > self.end:
            raise self.fail(f"file ends early (truncated at byte {self.end})")
        (value,) = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += size
        return value

    def count(self, what: str, limit: int = MAX_COUNT) -> int:
        value = self.take("Q")
        if value > limit:
            raise self.fail(f"{what} is {value}, which is absurd (limit {limit})")
        return value

    def string(self, what: str) -> str:
        length = self.count(f"length of {what}", MAX_STRING)
        if self.pos + length > self.end:
            raise self.fail(f"{what} runs past the end of the file")
        raw = bytes(self.data[self.pos:self.pos + length])
        self.pos += length
        return raw.decode("utf-8", errors="replace")

    def value(self, vtype: int, label: str):
        if vtype in _SCALARS:
            return self.take(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string(f"the value of {label}")
        raise self.fail(f"{label} has unknown value type {vtype}")

    def skip_strings(self, n: int, label: str) -> tuple[int, int]:
        """Step over ``n`` strings (only their lengths are read: a vocabulary has hundreds of
        thousands); returns the shortest and longest length."""
        data, pos, end, unpack = self.data, self.pos, self.end, _U64.unpack_from
        shortest, longest = MAX_STRING, 0
        for _ in range(n):
            if pos + 8 > end:
                raise self.fail(f"file ends early inside array {label} (truncated at byte "
                                f"{end})")
            (length,) = unpack(data, pos)
            pos += 8 + length
            if length > MAX_STRING or pos > end:
                raise self.fail(f"an element of array {label} runs past the end of the file")
            shortest = min(shortest, length)
            longest = max(longest, length)
        self.pos = pos
        return (shortest, longest) if n else (0, 0)

    def skip_array(self, label: str) -> tuple[int, int, tuple[int, int] | None]:
        """(element type, length, string lengths) of the array at the current position."""
        etype = self.take("I")
        n = self.count(f"length of array {label}", MAX_COUNT * 4)
        if etype in _SCALARS:
            size = struct.calcsize(_SCALARS[etype]) * n
            if self.pos + size > self.end:
                raise self.fail(f"array {label} runs past the end of the file")
            self.pos += size
            return etype, n, None
        if etype == _STRING:
            return etype, n, self.skip_strings(n, label)
        if etype == _ARRAY:
            raise self.fail(f"array {label} holds arrays (nested arrays are not supported)")
        raise self.fail(f"array {label} has unknown element type {etype}")


def _block_sizes() -> dict[int, tuple[int, int]]:
    from gguf.constants import GGML_QUANT_SIZES

    return {int(kind): sizes for kind, sizes in GGML_QUANT_SIZES.items()}


def validate_gguf(path: str | Path) -> GGUFInfo:
    """Return the file's header summary, or raise ``InvalidModelFile`` saying what is wrong."""
    path = Path(path)
    name = str(path)
    if not path.exists():
        raise InvalidModelFile(name, "no such file")
    if not path.is_file():
        raise InvalidModelFile(name, "not a regular file")
    size = path.stat().st_size
    if size < 24:
        raise InvalidModelFile(name, f"only {size} bytes long; a GGUF header alone needs 24")
    with open(path, "rb") as handle:
        data = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            reader = _Reader(data, name)
            info = _walk(reader, size)
            _check_vocabulary(reader, info)
            return info
        finally:
            data.close()


def _walk(r: _Reader, size: int) -> GGUFInfo:
    if r.data[:4] != MAGIC:
        raise r.fail("wrong magic bytes (expected 'GGUF'); this is not a GGUF file")
    r.pos = 4
    version = r.take("I")
    if version not in (2, 3):
        raise r.fail(f"unsupported GGUF version {version} (supported: 2, 3)")
    n_tensors = r.count("tensor count")
    n_kv = r.count("metadata count")
    info = GGUFInfo(version=version, n_tensors=n_tensors, file_size=size)
    _read_metadata(r, info, n_kv)
    alignment = info.metadata.get("general.alignment", 32)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise r.fail("general.alignment is not a power of two")
    tensors = _read_tensor_descriptors(r, n_tensors, size, alignment)
    data_start = -(-r.pos // alignment) * alignment
    end = data_start
    for offset, nbytes, label in sorted(tensors):
        if data_start + offset < end:
            raise r.fail(f"{label} overlaps the previous tensor")
        end = data_start + offset + nbytes
        if end > size:
            raise r.fail(f"{label} lies outside the file (ends at byte {end}, file "
                         f"has {size}); the file is truncated or corrupt")
        info.tensor_bytes += nbytes
    return info


def _read_metadata(r: _Reader, info: GGUFInfo, n_kv: int) -> None:
    seen: set[str] = set()
    for index in range(n_kv):
        key = r.string("a metadata key")
        label = quoted(key, "key", index)
        if not key:
            raise r.fail(f"metadata key #{index + 1} is empty")
        if key in seen:
            raise r.fail(f"{label} appears twice")
        seen.add(key)
        vtype = r.take("I")
        if vtype == _ARRAY:
            etype, n, lengths = r.skip_array(label)
            info.array_types[key], info.array_lengths[key] = etype, n
            if key == TOKENS:
                info.token_bytes = lengths
        else:
            info.metadata[key] = r.value(vtype, label)


def _read_tensor_descriptors(r: _Reader, n_tensors: int, size: int, alignment: int
                             ) -> list[tuple[int, int, str]]:
    blocks = _block_sizes()
    tensors, names = [], set()
    for index in range(n_tensors):
        tname = r.string("a tensor name")
        label = quoted(tname, "tensor", index)
        if not tname or len(tname.encode()) > MAX_NAME:
            raise r.fail(f"tensor #{index + 1} has an empty or over-long name")
        if tname in names:
            raise r.fail(f"{label} appears twice")
        names.add(tname)
        n_dims = r.take("I")
        if n_dims == 0 or n_dims > MAX_DIMS:
            raise r.fail(f"{label} has {n_dims} dimensions (1..{MAX_DIMS} allowed)")
        dims = [r.take("Q") for _ in range(n_dims)]
        ttype = r.take("I")
        offset = r.take("Q")
        if ttype not in blocks:
            raise r.fail(f"{label} has unknown type {ttype}")
        block, type_size = blocks[ttype]
        elements = 1
        for dim in dims:
            if dim == 0 or dim > size * 8:
                raise r.fail(f"{label} has an impossible shape {dims}")
            elements *= dim
        if dims[0] % block:
            raise r.fail(f"{label} row length {dims[0]} is not a multiple of {block}")
        if offset % alignment:
            raise r.fail(f"{label} offset {offset} is not aligned to {alignment}")
        tensors.append((offset, elements // block * type_size, label))
    return tensors


def _check_vocabulary(r: _Reader, info: GGUFInfo) -> None:
    """The tokenizer's arrays agree with each other, no token string is empty or enormous,
    and every special token id is inside the vocabulary."""
    present = {key: etype for key, etype in VOCAB_ARRAYS.items() if key in info.array_types}
    for key, etype in present.items():
        if info.array_types[key] != etype:
            raise r.fail(f"the vocabulary array '{key}' has elements of type "
                         f"{info.array_types[key]} (expected {etype})")
    if "tokenizer.ggml.merges" in info.array_types and \
            info.array_types["tokenizer.ggml.merges"] != _STRING:
        raise r.fail("the vocabulary's merges are not strings")
    if TOKENS not in present:
        if present or any(TOKEN_ID.fullmatch(key) for key in info.metadata):
            raise r.fail("the tokenizer has token data but no token list")
        return
    n_tokens = info.array_lengths[TOKENS]
    if n_tokens == 0:
        raise r.fail("the vocabulary is empty")
    for key in present:
        if info.array_lengths[key] != n_tokens:
            raise r.fail(f"the vocabulary has {n_tokens} tokens but '{key}' has "
                         f"{info.array_lengths[key]} entries")
    vocab_size = info.metadata.get(f"{info.architecture}.vocab_size")
    if vocab_size is not None and vocab_size != n_tokens:
        raise r.fail(f"{info.architecture}.vocab_size says {vocab_size} tokens but the "
                     f"vocabulary has {n_tokens}")
    shortest, longest = info.token_bytes or (0, 0)
    if shortest == 0:
        raise r.fail("the vocabulary has an empty token string")
    if longest > MAX_TOKEN_BYTES:
        raise r.fail(f"the vocabulary has a token string of {longest} bytes (limit "
                     f"{MAX_TOKEN_BYTES})")
    for key, value in info.metadata.items():
        if not TOKEN_ID.fullmatch(key):
            continue
        if not isinstance(value, int) or isinstance(value, bool):
            raise r.fail(f"'{key}' is not an integer token id")
        if not 0 <= value < n_tokens:
            raise r.fail(f"'{key}' is {value}, outside the vocabulary of {n_tokens} tokens")

"""Structural validation of a GGUF file before llama.cpp ever sees it.

Walks the header with bounds checks on every count, length and offset (magic, version, key/value
pairs, tensor descriptors, tensor data within the file, no overlaps) and refuses a bad file with
a precise message. Crafted GGUF files have overflowed llama.cpp's own parser many times, so
nothing is handed to llama.cpp that this walk did not accept.

Also returns the scalar metadata (architecture, layer counts …) that memory estimates need.

Not for: loading tensors or tokenizers (``engine.runtime``).
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import InvalidModelFile

MAGIC = b"GGUF"
MAX_COUNT = 1 << 24  # tensors or key/value pairs; real models have a few thousand at most
MAX_STRING = 1 << 26  # 64 MiB: a chat template or a token is far smaller
MAX_DIMS = 4
# value type -> struct format for fixed-size scalars
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q",
            12: "d"}
_STRING, _ARRAY = 8, 9


@dataclass
class GGUFInfo:
    version: int
    n_tensors: int
    metadata: dict[str, object] = field(default_factory=dict)  # scalars and strings
    array_lengths: dict[str, int] = field(default_factory=dict)
    tensor_bytes: int = 0
    file_size: int = 0

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "unknown"))

    def arch_value(self, key: str, default: int = 0) -> int:
        value = self.metadata.get(f"{self.architecture}.{key}", default)
        return int(value) if isinstance(value, (int, float)) else default


class _Reader:
    def __init__(self, data: mmap.mmap | bytes, path: str) -> None:
        self.data, self.pos, self.path = data, 0, path

    def fail(self, reason: str) -> InvalidModelFile:
        return InvalidModelFile(self.path, reason)

    def take(self, fmt: str):
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise self.fail(f"file ends early (truncated at byte {len(self.data)})")
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
        if self.pos + length > len(self.data):
            raise self.fail(f"{what} runs past the end of the file")
        raw = bytes(self.data[self.pos:self.pos + length])
        self.pos += length
        return raw.decode("utf-8", errors="replace")

    def value(self, vtype: int, key: str):
        if vtype in _SCALARS:
            return self.take(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string(f"value of '{key}'")
        raise self.fail(f"key '{key}' has unknown value type {vtype}")

    def skip_array(self, key: str) -> int:
        etype = self.take("I")
        n = self.count(f"length of array '{key}'", MAX_COUNT * 4)
        if etype in _SCALARS:
            size = struct.calcsize(_SCALARS[etype]) * n
            if self.pos + size > len(self.data):
                raise self.fail(f"array '{key}' runs past the end of the file")
            self.pos += size
        elif etype == _STRING:
            for _ in range(n):
                self.string(f"an element of '{key}'")
        elif etype == _ARRAY:
            for _ in range(n):
                self.skip_array(key)
        else:
            raise self.fail(f"array '{key}' has unknown element type {etype}")
        return n


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
            return _walk(_Reader(data, name), size)
        finally:
            data.close()


def _walk(r: _Reader, size: int) -> GGUFInfo:
    if r.data[:4] != MAGIC:
        raise r.fail(f"wrong magic bytes {bytes(r.data[:4])!r} (expected b'GGUF'); "
                     "this is not a GGUF file")
    r.pos = 4
    version = r.take("I")
    if version not in (2, 3):
        raise r.fail(f"unsupported GGUF version {version} (supported: 2, 3)")
    n_tensors = r.count("tensor count")
    n_kv = r.count("metadata count")
    info = GGUFInfo(version=version, n_tensors=n_tensors, file_size=size)
    for _ in range(n_kv):
        key = r.string("a metadata key")
        vtype = r.take("I")
        if vtype == _ARRAY:
            info.array_lengths[key] = r.skip_array(key)
        else:
            info.metadata[key] = r.value(vtype, key)
    alignment = info.metadata.get("general.alignment", 32)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise r.fail(f"general.alignment {alignment!r} is not a power of two")
    blocks = _block_sizes()
    tensors = []
    for _ in range(n_tensors):
        tname = r.string("a tensor name")
        n_dims = r.take("I")
        if n_dims == 0 or n_dims > MAX_DIMS:
            raise r.fail(f"tensor '{tname}' has {n_dims} dimensions (1..{MAX_DIMS} allowed)")
        dims = [r.take("Q") for _ in range(n_dims)]
        ttype = r.take("I")
        offset = r.take("Q")
        if ttype not in blocks:
            raise r.fail(f"tensor '{tname}' has unknown type {ttype}")
        block, type_size = blocks[ttype]
        elements = 1
        for dim in dims:
            if dim == 0 or dim > size * 8:
                raise r.fail(f"tensor '{tname}' has an impossible shape {dims}")
            elements *= dim
        if dims[0] % block:
            raise r.fail(f"tensor '{tname}' row length {dims[0]} is not a multiple of {block}")
        nbytes = elements // block * type_size
        if offset % alignment:
            raise r.fail(f"tensor '{tname}' offset {offset} is not aligned to {alignment}")
        tensors.append((offset, nbytes, tname))
    data_start = -(-r.pos // alignment) * alignment
    end = data_start
    for offset, nbytes, tname in sorted(tensors):
        if data_start + offset < end:
            raise r.fail(f"tensor '{tname}' overlaps the previous tensor")
        end = data_start + offset + nbytes
        if end > size:
            raise r.fail(f"tensor '{tname}' lies outside the file (ends at byte {end}, file "
                         f"has {size}); the file is truncated or corrupt")
        info.tensor_bytes += nbytes
    return info

"""Bad model files get a precise error and never reach llama.cpp: a corpus of hostile GGUFs
(truncated at many offsets, bad magic, absurd counts and lengths, out-of-bounds or overlapping
tensors, non-GGUF files, zero bytes; nested arrays, special token ids outside the vocabulary,
vocabulary arrays that disagree in length or element type, empty and enormous token strings,
duplicate or empty keys and tensor names), refused with messages that never echo the file's
bytes; plus sandboxed chat templates. Files llama.cpp's writer cannot produce are written byte by
byte (``gguf_bytes``)."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from tiny_models import vocabulary

from engine import chat_template, models
from engine.errors import InvalidModelFile, ModelNotFound, TemplateRefused
from engine.gguf_check import validate_gguf
from engine.runtime import Model

PAYLOAD = "PWNED\x1b[2J<script>alert(1)</script>\u202e"  # must never reach a message

# GGUF value types
U32, I32, F32, BOOL, STR, ARR = 4, 5, 6, 7, 8, 9


def _value(vtype: int, value) -> bytes:
    if vtype == STR:
        raw = value.encode("utf-8") if isinstance(value, str) else value
        return struct.pack("<Q", len(raw)) + raw
    if vtype == ARR and isinstance(value, bytes):  # already serialized (deep nesting)
        return value
    if vtype == ARR:
        etype, items = value
        return struct.pack("<IQ", etype, len(items)) + b"".join(_value(etype, i) for i in items)
    if vtype not in (U32, I32, F32, BOOL):  # an unknown type: four bytes of something
        return struct.pack("<I", value)
    return struct.pack("<" + {U32: "I", I32: "i", F32: "f", BOOL: "?"}[vtype], value)


def gguf_bytes(kvs: list[tuple[str, int, object]],
               tensors: list[tuple[str, tuple[int, ...]]] = (("token_embd.weight", (8, 4)),)
               ) -> bytes:
    """A GGUF v3 file written byte by byte (f32 tensors, 32-byte alignment), so that tests
    can write what no well-behaved writer would."""
    out = struct.pack("<4sIQQ", b"GGUF", 3, len(tensors), len(kvs))
    for key, vtype, value in kvs:
        out += _value(STR, key) + struct.pack("<I", vtype) + _value(vtype, value)
    offset, blobs = 0, []
    for name, dims in tensors:
        out += _value(STR, name) + struct.pack("<I", len(dims))
        out += struct.pack(f"<{len(dims)}Q", *dims) + struct.pack("<IQ", 0, offset)
        nbytes = 4 * int(np.prod(dims))
        blobs.append(b"\0" * nbytes)
        offset += -(-nbytes // 32) * 32
    out += b"\0" * (-len(out) % 32)
    return out + b"".join(blob + b"\0" * (-len(blob) % 32) for blob in blobs)


def vocab_kvs(tokens: list[str] | None = None, **changes) -> list[tuple[str, int, object]]:
    """The key/values of a small llama model with tiny vocabulary "a"; ``changes`` replace
    keys (``None`` drops one), written with ``__`` for ``.``."""
    base_tokens, types, merges = vocabulary("a")
    tokens = base_tokens if tokens is None else tokens
    n = len(base_tokens)
    kvs = {"general.architecture": (STR, "llama"), "llama.block_count": (U32, 1),
           "tokenizer.ggml.model": (STR, "gpt2"),
           "tokenizer.ggml.tokens": (ARR, (STR, tokens)),
           "tokenizer.ggml.token_type": (ARR, (I32, types)),
           "tokenizer.ggml.scores": (ARR, (F32, [0.0] * n)),
           "tokenizer.ggml.merges": (ARR, (STR, merges)),
           "tokenizer.ggml.bos_token_id": (U32, 0), "tokenizer.ggml.eos_token_id": (U32, 2),
           "tokenizer.ggml.padding_token_id": (U32, 0),
           "tokenizer.ggml.unknown_token_id": (U32, 1)}
    for key, value in changes.items():
        key = key.replace("__", ".")
        if value is None:
            kvs.pop(key, None)
        else:
            kvs[key] = value
    return [(key, vtype, value) for key, (vtype, value) in kvs.items()]


def nested(depth: int) -> bytes:
    """An array of arrays ``depth`` levels deep around one string, serialized."""
    value = _value(ARR, (STR, ["x"]))
    for _ in range(depth):
        value = struct.pack("<IQ", ARR, 1) + value
    return value


def vocabulary_cases() -> dict[str, bytes]:
    """Files whose layout is sound but whose tokenizer or metadata llama.cpp would index out
    of bounds (or, for nested arrays, that the old walk recursed into until RecursionError)."""
    tokens = vocabulary("a")[0]
    n = len(tokens)
    t = "tokenizer__ggml__"
    cases = {
        "nested-array": vocab_kvs(general__tags=(ARR, nested(1))),
        "deeply-nested-array": vocab_kvs(general__tags=(ARR, nested(5000))),
        "bos-outside-vocabulary": vocab_kvs(**{t + "bos_token_id": (U32, n)}),
        "eos-outside-vocabulary": vocab_kvs(**{t + "eos_token_id": (U32, 2**32 - 1)}),
        "padding-outside-vocabulary": vocab_kvs(**{t + "padding_token_id": (U32, n + 7)}),
        "unknown-outside-vocabulary": vocab_kvs(**{t + "unknown_token_id": (U32, 10**9)}),
        "negative-token-id": vocab_kvs(**{t + "eot_token_id": (I32, -5)}),
        "token-id-not-a-number": vocab_kvs(**{t + "bos_token_id": (STR, PAYLOAD)}),
        "scores-shorter-than-tokens": vocab_kvs(**{t + "scores": (ARR, (F32, [0.0] * (n - 1)))}),
        "token-types-longer-than-tokens": vocab_kvs(**{t + "token_type": (ARR, (I32,
                                                                              [1] * (n + 5)))}),
        "vocab-size-disagrees": vocab_kvs(llama__vocab_size=(U32, n + 100)),
        "empty-vocabulary": vocab_kvs(tokens=[], **{t + "token_type": None, t + "scores": None}),
        "empty-token-string": vocab_kvs(tokens=tokens[:5] + [""] + tokens[6:]),
        "enormous-token-string": vocab_kvs(tokens=tokens[:5] + ["A" * 70_000] + tokens[6:]),
        "tokens-not-strings": vocab_kvs(**{t + "tokens": (ARR, (I32, list(range(n))))}),
        "token-types-not-integers": vocab_kvs(**{t + "token_type": (ARR, (STR, ["1"] * n))}),
        "scores-not-floats": vocab_kvs(**{t + "scores": (ARR, (U32, [0] * n))}),
        "merges-not-strings": vocab_kvs(**{t + "merges": (ARR, (U32, [1, 2, 3]))}),
        "token-ids-without-tokens": vocab_kvs(**{t + "tokens": None}),
        "duplicate-key": vocab_kvs() + [("general.architecture", STR, "llama")],
        "empty-key": vocab_kvs() + [("", U32, 1)],
        "hostile-key-name": vocab_kvs() + [(PAYLOAD, 99, 0)],
        "hostile-string-value": vocab_kvs(general__name=(STR, PAYLOAD))
        + [("general.license", 99, 0)],
    }
    out = {name: gguf_bytes(kvs) for name, kvs in cases.items()}
    out["duplicate-tensor"] = gguf_bytes(vocab_kvs(), [("output.weight", (8, 4))] * 2)
    out["hostile-tensor-name"] = gguf_bytes(vocab_kvs(), [(PAYLOAD, (8, 4, 1, 1, 1))])
    out["over-long-tensor-name"] = gguf_bytes(vocab_kvs(), [("t" * 200, (8, 4))])
    return out


def hostile_corpus(valid: bytes, folder) -> dict[str, bytes]:
    header = struct.calcsize("<4sIQQ")
    corpus = {"zero-bytes": b"", "bad-magic": b"GGUX" + valid[4:],
              "not-gguf": b"PK\x03\x04 this is a zip file renamed to .gguf" * 20,
              "version-99": valid[:4] + struct.pack("<I", 99) + valid[8:],
              "absurd-tensor-count": valid[:8] + struct.pack("<Q", 2**62) + valid[16:],
              "absurd-kv-count": valid[:16] + struct.pack("<Q", 2**40) + valid[24:]}
    # the first key's length, made enormous
    corpus["absurd-string-length"] = valid[:header] + struct.pack("<Q", 2**60) + valid[header + 8:]
    for cut in sorted({24, 100, 1000, 5000, len(valid) // 3, len(valid) // 2, len(valid) - 1}):
        corpus[f"truncated-at-{cut}"] = valid[:cut]
    corpus.update(vocabulary_cases())
    return corpus


def tensor_offset_position(data: bytes, name: str) -> int:
    """Where the data offset of tensor ``name`` is stored in its descriptor."""
    raw = name.encode()
    at = data.index(struct.pack("<Q", len(raw)) + raw) + 8 + len(raw)
    (n_dims,) = struct.unpack_from("<I", data, at)
    return at + 4 + 8 * n_dims + 4


@pytest.fixture(scope="module")
def corpus(tiny_dir):
    valid = (tiny_dir / "target.gguf").read_bytes()
    return hostile_corpus(valid, tiny_dir)


def test_valid_file_passes(tiny_dir):
    info = validate_gguf(tiny_dir / "target.gguf")
    assert info.architecture == "llama" and info.n_tensors > 0


# what each tokenizer case's refusal must say
REASONS = {"nested-array": "nested arrays", "deeply-nested-array": "nested arrays",
           "bos-outside-vocabulary": "bos_token_id' is 4", "eos-outside-vocabulary": "outside",
           "padding-outside-vocabulary": "outside", "unknown-outside-vocabulary": "outside",
           "negative-token-id": "outside", "token-id-not-a-number": "not an integer",
           "scores-shorter-than-tokens": "'tokenizer.ggml.scores' has",
           "token-types-longer-than-tokens": "'tokenizer.ggml.token_type' has",
           "vocab-size-disagrees": "vocab_size says", "empty-vocabulary": "empty",
           "empty-token-string": "empty token string", "enormous-token-string": "70000 bytes",
           "tokens-not-strings": "elements of type", "token-types-not-integers": "elements of type",
           "scores-not-floats": "elements of type", "merges-not-strings": "merges are not strings",
           "token-ids-without-tokens": "no token list", "duplicate-key": "appears twice",
           "empty-key": "is empty", "hostile-key-name": "key #12 has unknown value type",
           "hostile-string-value": "key 'general.license' has unknown",
           "duplicate-tensor": "appears twice", "hostile-tensor-name": "tensor #1 has 5 dim",
           "over-long-tensor-name": "over-long name"}


def readable(message: str) -> bool:
    return message.isprintable() and not any(bad in message for bad in (
        "PWNED", "<script>", "\x1b", "\u202e", "\ufffd"))


def test_the_hand_written_base_file_is_valid(tmp_path):
    path = tmp_path / "base.gguf"
    path.write_bytes(gguf_bytes(vocab_kvs()))
    info = validate_gguf(path)
    assert info.array_lengths["tokenizer.ggml.tokens"] == len(vocabulary("a")[0])


def test_every_hostile_file_is_refused_with_a_reason(corpus, tmp_path):
    for name, data in corpus.items():
        path = tmp_path / f"{name}.gguf"
        path.write_bytes(data)
        with pytest.raises(InvalidModelFile) as raised:
            validate_gguf(path)
        reason = raised.value.reason
        assert reason and readable(str(raised.value)), (name, reason)
        assert REASONS.get(name, "") in reason, (name, reason)
        with pytest.raises(InvalidModelFile):
            Model(path)  # refused before llama.cpp parses anything
    assert len(corpus) >= 30 and set(REASONS) <= set(corpus)


def test_tensor_outside_or_overlapping_is_refused(tiny_dir, tmp_path):
    data = (tiny_dir / "target.gguf").read_bytes()
    offset_position = tensor_offset_position(data, "blk.0.attn_q.weight")
    for label, new_offset in (("outside", 2**40), ("overlap", 0)):
        corrupt = bytearray(data)
        corrupt[offset_position:offset_position + 8] = struct.pack("<Q", new_offset)
        path = tmp_path / f"{label}.gguf"
        path.write_bytes(bytes(corrupt))
        with pytest.raises(InvalidModelFile, match="outside|overlaps"):
            validate_gguf(path)


def test_wrong_path_and_directory(tmp_path):
    with pytest.raises(ModelNotFound, match="neither a catalog id"):
        models.resolve(str(tmp_path / "nope.gguf"))
    with pytest.raises(InvalidModelFile, match="not a regular file"):
        validate_gguf(tmp_path)
    with pytest.raises(InvalidModelFile, match="no such file"):
        models.add_local(tmp_path / "missing.gguf")


def test_local_file_is_registered_after_validation(tiny_dir):
    model_id = models.add_local(tiny_dir / "target.gguf")
    assert models.resolve(model_id) == (tiny_dir / "target.gguf").resolve()
    assert any(row.id == model_id for row in models.known_models())


def test_chat_template_sandbox_refuses_python_internals():
    messages = [{"role": "user", "content": "hi"}]
    hostile = ("{{ ''.__class__.__mro__[1].__subclasses__() }}",
               "{% for c in ().__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}",
               "{{ cycler.__init__.__globals__.os.popen('id').read() }}")
    for template in hostile:
        with pytest.raises(TemplateRefused):
            chat_template.render(template, messages)


def test_chat_template_renders_and_falls_back():
    messages = [{"role": "user", "content": "hi"}]
    chatml = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>"
              "\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    assert chat_template.render(chatml, messages).endswith("<|im_start|>assistant\n")
    assert chat_template.render(None, messages) == "### User:\nhi\n\n### Assistant:\n"
    with pytest.raises(TemplateRefused, match="bad"):
        chat_template.render("{{ raise_exception('bad role') }}", messages)

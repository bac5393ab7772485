"""Bad model files get a precise error and never reach llama.cpp: a corpus of hostile GGUFs
(truncated at many offsets, bad magic, absurd counts and lengths, out-of-bounds or overlapping
tensors, non-GGUF files, zero bytes); plus sandboxed chat templates."""

from __future__ import annotations

import struct

import pytest

from engine import chat_template, models
from engine.errors import InvalidModelFile, ModelNotFound, TemplateRefused
from engine.gguf_check import validate_gguf
from engine.runtime import Model


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


def test_every_hostile_file_is_refused_with_a_reason(corpus, tmp_path):
    for name, data in corpus.items():
        path = tmp_path / f"{name}.gguf"
        path.write_bytes(data)
        with pytest.raises(InvalidModelFile) as raised:
            validate_gguf(path)
        assert raised.value.reason, name
        with pytest.raises(InvalidModelFile):
            Model(path)  # refused before llama.cpp parses anything
    assert len(corpus) >= 12


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

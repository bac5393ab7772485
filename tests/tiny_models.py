"""Tiny llama-architecture GGUF models written with the ``gguf`` package, for fast tests.

Each model has random f32 weights (seeded), a byte-level BPE vocabulary trained here on a small
corpus, ChatML-style special tokens and a chat template, so llama.cpp loads and runs it like a
real model in milliseconds. Two vocabularies ("a" and "b") share byte tokens and many merges but
number them differently, which makes cross-vocabulary drafting testable.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

CORPUS = (
    "The quick brown fox jumps over the lazy dog. def merge(a, b): return a + b\n"
    "for item in items: print(item) # loop over the list and print every item\n"
    "Speculative decoding drafts tokens with a small model and verifies them with the large "
    "model in one batched pass. The answer stays exactly the same, only faster. "
    "Hello world! café naïve 東京 日本語 🙂 emoji and accents survive byte-level tokens. "
    "if x > 0: total += x else: total -= x; while True: break; return None\n"
) * 3

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    chars = keep[:]
    extra = 0
    for byte in range(256):
        if byte not in keep:
            keep.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(keep, map(chr, chars)))


def train_bpe(text: str, n_merges: int) -> list[tuple[str, str]]:
    table = bytes_to_unicode()
    words = Counter()
    for index, word in enumerate(text.split(" ")):
        raw = (" " + word if index else word).encode("utf-8")
        words[tuple(table[b] for b in raw)] += 1
    merges: list[tuple[str, str]] = []
    for _ in range(n_merges):
        pairs = Counter()
        for word, freq in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += freq
        if not pairs:
            break
        best = max(pairs, key=lambda pair: (pairs[pair], pair))
        merges.append(best)
        merged = Counter()
        for word, freq in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += freq
        words = merged
    return merges


def vocabulary(kind: str) -> tuple[list[str], list[int], list[str]]:
    """(tokens, token types, merges) for vocabulary "a" or "b"."""
    byte_tokens = list(bytes_to_unicode().values())
    if kind == "a":
        merges = train_bpe(CORPUS, 160)
        tokens = SPECIALS + byte_tokens + [a + b for a, b in merges]
        types = [3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS))
    else:
        merges = train_bpe(CORPUS[::-1][:600] + CORPUS, 220)
        rng = np.random.default_rng(7)
        byte_tokens = [byte_tokens[i] for i in rng.permutation(len(byte_tokens))]
        body = byte_tokens + list(dict.fromkeys(a + b for a, b in merges))
        tokens = body + SPECIALS
        types = [1] * len(body) + [3] * len(SPECIALS)
    return tokens, types, [f"{a} {b}" for a, b in merges]


def write_tiny_model(path: Path, vocab: str = "a", seed: int = 0, n_embd: int = 64,
                     n_layer: int = 2, n_head: int = 4, n_head_kv: int = 2, n_ff: int = 128,
                     n_ctx: int = 4096, noise_from: int | None = None,
                     noise: float = 0.0, logit_scale: float = 6.0,
                     rows_like: str | None = None, chat_template: str = CHAT_TEMPLATE,
                     eos_like: str | None = None, extra_tokens: int = 0,
                     extra_scale: float = 1.0, weights: str = "f32") -> Path:
    """Write a tiny f32 llama GGUF. ``noise_from``/``noise``: start from the weights of
    ``seed=noise_from`` and perturb them, which makes a draft that mostly agrees.
    ``rows_like``: lay out the embedding and output rows as that vocabulary's model would
    (matched by token text), so a model with another vocabulary computes nearly the same
    function on the tokens both share — a cross-vocabulary draft that mostly agrees.
    ``chat_template``: the Jinja source stored as ``tokenizer.chat_template``.
    ``eos_like``: give the end token the output row of this token (its logit), so replies end
    with real probability instead of running to their length. ``extra_tokens``: append that
    many ordinary tokens to the vocabulary (weights from their own generator, scaled by
    ``extra_scale``; the other weights stay as without them): native pairs whose vocabulary
    sizes differ slightly, as Qwen2.5-7B (152,064) and 0.5B (151,936) do. ``weights``: "f32",
    or a block quantization of the layers' matrices ("q8_0", "q4_0") — quantized weights take
    llama.cpp's one-token kernels for passes of a few rows, as a real model's do."""
    import gguf

    tokens, types, merges = vocabulary(vocab)
    tokens = tokens + [f"<extra_{i}>" for i in range(extra_tokens)]
    types = types + [1] * extra_tokens
    n_vocab = len(tokens)
    reference = vocabulary(rows_like)[0] if rows_like else tokens[:len(tokens) - extra_tokens]
    extra_rng = np.random.default_rng(seed + 3000)

    def with_extra(rows: np.ndarray) -> np.ndarray:
        if not extra_tokens:
            return rows
        more = extra_rng.standard_normal((extra_tokens, rows.shape[1])).astype(np.float32)
        return np.concatenate([rows, more * rows.std() * extra_scale])

    def by_text(rows: np.ndarray) -> np.ndarray:
        if rows_like is None:
            return rows
        index = {text: i for i, text in enumerate(reference)}
        spare = np.random.default_rng(seed + 2000)
        return np.stack([rows[index[t]] if t in index else
                         spare.standard_normal(rows.shape[1]).astype(np.float32) * rows.std()
                         for t in tokens[:len(tokens) - extra_tokens]])
    base_rng = np.random.default_rng(seed if noise_from is None else noise_from)
    noise_rng = np.random.default_rng(seed + 1000)
    head_dim = n_embd // n_head

    def tensor(*shape: int, scale: float) -> np.ndarray:
        value = base_rng.standard_normal(shape).astype(np.float32) * scale
        if noise_from is not None and noise:
            value += noise_rng.standard_normal(shape).astype(np.float32) * scale * noise
        return value

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(f"tiny-{vocab}-{seed}")
    writer.add_context_length(n_ctx)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(0 if weights == "f32" else 7 if weights == "q8_0" else 2)
    writer.add_vocab_size(n_vocab)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokens.index("<|endoftext|>"))
    writer.add_eos_token_id(tokens.index("<|im_end|>"))
    writer.add_add_bos_token(False)
    writer.add_chat_template(chat_template)

    def matrix(name: str, value: np.ndarray) -> None:
        if weights == "f32":
            writer.add_tensor(name, value)
            return
        kind = gguf.GGMLQuantizationType[weights.upper()]
        writer.add_tensor(name, gguf.quants.quantize(value, kind), raw_dtype=kind)

    writer.add_tensor("token_embd.weight",
                      with_extra(by_text(tensor(len(reference), n_embd, scale=1.0))))
    for layer in range(n_layer):
        pre = f"blk.{layer}."
        writer.add_tensor(pre + "attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        matrix(pre + "attn_q.weight", tensor(n_embd, n_embd, scale=0.2))
        matrix(pre + "attn_k.weight", tensor(n_head_kv * head_dim, n_embd, scale=0.2))
        matrix(pre + "attn_v.weight", tensor(n_head_kv * head_dim, n_embd, scale=0.2))
        matrix(pre + "attn_output.weight", tensor(n_embd, n_embd, scale=0.2))
        writer.add_tensor(pre + "ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        matrix(pre + "ffn_gate.weight", tensor(n_ff, n_embd, scale=0.2))
        matrix(pre + "ffn_up.weight", tensor(n_ff, n_embd, scale=0.2))
        matrix(pre + "ffn_down.weight", tensor(n_embd, n_ff, scale=0.2))
    writer.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    output = with_extra(by_text(tensor(len(reference), n_embd,
                                       scale=logit_scale / n_embd**0.5)))
    for special in SPECIALS:  # special tokens never win: replies run to their length
        output[tokens.index(special)] = 0.0
    if eos_like is not None:
        output[tokens.index("<|im_end|>")] = output[tokens.index(eos_like)]
    writer.add_tensor("output.weight", output)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path

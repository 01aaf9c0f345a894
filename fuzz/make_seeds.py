"""Write the seed corpora under fuzz/corpus/<target>/ (run from the repo root with the venv's python).

Seeds are small valid inputs: libFuzzer mutates them, so it starts from the interesting parts of the
formats instead of rediscovering the magic numbers. The real SmolLM2 header is 1.8 MB, nearly all of it
the 49k-token vocabulary, which would make every mutated input that large; its seeds keep every scalar
key, the chat template and all 272 tensor infos, with the vocabulary cut to its first tokens.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from gguf_writer import (  # noqa: E402
    ARRAY,
    BOOL,
    F32,
    FLOAT32,
    INT32,
    KV,
    STRING,
    UINT32,
    GGUFFile,
    TensorInfo,
    read_gguf_header,
    tensor_nbytes,
    tiny_gguf,
)

MODELS = Path.home() / ".cache" / "modelhost" / "models"
SMOLLM2 = MODELS / "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF/SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM = MODELS / "sentence-transformers/all-MiniLM-L6-v2/model.safetensors"
CORPUS = ROOT / "fuzz" / "corpus"
KEEP_TOKENS = 600


def _put(target: str, name: str, data: bytes) -> None:
    folder = CORPUS / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"seed-{name}").write_bytes(data)


def _smollm2_small_vocab() -> tuple[GGUFFile, list[KV]]:
    g, _ = read_gguf_header(SMOLLM2)
    kvs = {kv.key: kv for kv in g.kvs}
    tokens = kvs[b"tokenizer.ggml.tokens"].value[:KEEP_TOKENS]
    vocab = set(tokens)
    merges = []
    for m in kvs[b"tokenizer.ggml.merges"].value:
        left, _, right = m.partition(b" ")
        if left in vocab and right in vocab and left + right in vocab:
            merges.append(m)
    out = []
    for kv in g.kvs:
        if kv.key == b"tokenizer.ggml.tokens":
            kv = KV(kv.key, ARRAY, tokens, STRING)
        elif kv.key == b"tokenizer.ggml.token_type":
            kv = KV(kv.key, ARRAY, kv.value[:KEEP_TOKENS], kv.item_type)
        elif kv.key == b"tokenizer.ggml.merges":
            kv = KV(kv.key, ARRAY, merges, STRING)
        elif kv.key == b"llama.vocab_size":
            kv = KV(kv.key, UINT32, KEEP_TOKENS)
        elif kv.type == ARRAY:
            kv = KV(kv.key, ARRAY, kv.value, kv.item_type)
        out.append(kv)
    return g, out


def _spm_vocab() -> list[KV]:
    """A tiny SentencePiece ("llama") vocabulary with byte fallback."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    words = ["▁", "▁H", "ello", "▁w", "orld", "▁Hello", "l", "o", "e", "H", "w", "r", "d", "!", ","]
    tokens += words
    types += [1] * len(words)
    scores = [0.0] * (3 + 256) + [-float(i) for i in range(len(words))]
    return [
        KV("tokenizer.ggml.model", STRING, "llama"),
        KV("tokenizer.ggml.tokens", ARRAY, tokens, STRING),
        KV("tokenizer.ggml.scores", ARRAY, scores, FLOAT32),
        KV("tokenizer.ggml.token_type", ARRAY, types, INT32),
        KV("tokenizer.ggml.bos_token_id", UINT32, 1),
        KV("tokenizer.ggml.eos_token_id", UINT32, 2),
        KV("tokenizer.ggml.unknown_token_id", UINT32, 0),
        KV("tokenizer.ggml.add_bos_token", BOOL, True),
    ]


def _bpe_vocab() -> list[KV]:
    """A tiny byte-level BPE ("gpt2") vocabulary: the 256 byte characters, a few merges, ChatML specials."""
    visible = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = []
    n = 0
    for b in range(256):
        chars.append(chr(b) if b in visible else chr(256 + (n := n + 1) - 1))
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    merges = ["H e", "l l", "He ll", "Hell o", "Ġ w", "o r", "Ġw or", "Ġwor l", "Ġworl d"]
    words = ["He", "ll", "Hell", "Hello", "Ġw", "or", "Ġwor", "Ġworl", "Ġworld"]
    tokens = specials + chars + words
    types = [3] * len(specials) + [1] * (len(chars) + len(words))
    return [
        KV("tokenizer.ggml.model", STRING, "gpt2"),
        KV("tokenizer.ggml.pre", STRING, "smollm"),
        KV("tokenizer.ggml.tokens", ARRAY, tokens, STRING),
        KV("tokenizer.ggml.token_type", ARRAY, types, INT32),
        KV("tokenizer.ggml.merges", ARRAY, merges, STRING),
        KV("tokenizer.ggml.bos_token_id", UINT32, 1),
        KV("tokenizer.ggml.eos_token_id", UINT32, 2),
        KV("tokenizer.ggml.add_bos_token", BOOL, False),
    ]


def _llama_dims() -> list[KV]:
    return [
        KV("general.architecture", STRING, "llama"),
        KV("llama.block_count", UINT32, 1),
        KV("llama.context_length", UINT32, 64),
        KV("llama.embedding_length", UINT32, 32),
        KV("llama.feed_forward_length", UINT32, 64),
        KV("llama.attention.head_count", UINT32, 2),
        KV("llama.attention.head_count_kv", UINT32, 1),
    ]


def gguf_seeds() -> None:
    _put("gguf_parse", "tiny.gguf", tiny_gguf().to_bytes())
    g, kvs = _smollm2_small_vocab()
    # The real header with its data section cut: the parser stops at the first tensor past the end.
    cut = GGUFFile(kvs=kvs, tensors=g.tensors)
    _put("gguf_parse", "smollm2-header-data-cut.gguf", cut.header_bytes())
    # The same header with only its three smallest tensors and their (zero) data: parses completely.
    small = sorted(g.tensors, key=lambda t: tensor_nbytes(t.dims, t.type))[:3]
    whole = GGUFFile(kvs=kvs, tensors=[TensorInfo(t.name, t.dims, t.type) for t in small])
    _put("gguf_parse", "smollm2-smallest-tensors.gguf", whole.to_bytes())
    tensors = [TensorInfo("token_embd.weight", [32, 8], F32)]
    _put("gguf_parse", "tiny-llama-spm.gguf", GGUFFile(kvs=_llama_dims() + _spm_vocab(), tensors=tensors).to_bytes())

    _put("gguf_tokenizer", "smollm2-vocab.gguf", GGUFFile(kvs=kvs).to_bytes())
    _put("gguf_tokenizer", "spm.gguf", GGUFFile(kvs=_spm_vocab()).to_bytes())
    _put("gguf_tokenizer", "bpe.gguf", GGUFFile(kvs=_bpe_vocab()).to_bytes())
    chat = kvs_by_key(kvs)[b"tokenizer.chat_template"].value
    _put("chat_template", "smollm2.jinja", chat if isinstance(chat, bytes) else chat.encode())


def kvs_by_key(kvs: list[KV]) -> dict[bytes, KV]:
    return {kv.key if isinstance(kv.key, bytes) else kv.key.encode(): kv for kv in kvs}


def safetensors_seeds() -> None:
    with open(MINILM, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = f.read(n)
    _put("safetensors_parse", "minilm-header-data-cut.safetensors", struct.pack("<Q", n) + header)
    tensors = {
        "__metadata__": {"format": "pt"},
        "a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
        "b": {"dtype": "I64", "shape": [1, 2], "data_offsets": [16, 32]},
        "c": {"dtype": "BF16", "shape": [3], "data_offsets": [32, 38]},
        "d": {"dtype": "U8", "shape": [0], "data_offsets": [38, 38]},
    }
    raw = json.dumps(tensors).encode()
    raw += b" " * (-len(raw) % 8)
    _put("safetensors_parse", "tiny.safetensors", struct.pack("<Q", len(raw)) + raw + bytes(range(38)))


CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + "
    "'\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LLAMA2 = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] | trim + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] | trim + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}"
    "{% set messages = messages[1:] %}{% endif %}{% for message in messages %}{% set role = 'model' if "
    "message['role'] == 'assistant' else message['role'] %}{{ '<start_of_turn>' + role + '\\n' + "
    "message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}{% if add_generation_prompt %}"
    "{{'<start_of_turn>model\\n'}}{% endif %}{{ messages | tojson }}{{ strftime_now('%Y-%m-%d') }}"
    "{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(3) }}{{ (messages|length) * 2 }}"
)


def template_seeds() -> None:
    for name, src in [("chatml", CHATML), ("llama2", LLAMA2), ("llama3", LLAMA3), ("gemma-ish", GEMMA)]:
        _put("chat_template", f"{name}.jinja", src.encode())


if __name__ == "__main__":
    gguf_seeds()
    safetensors_seeds()
    template_seeds()
    total = sum(p.stat().st_size for p in CORPUS.rglob("seed-*"))
    print(f"seeds written to {CORPUS}: {total} bytes")

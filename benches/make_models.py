"""The real-size benchmark models: SmolLM2-shaped llama models with seeded random weights, quantized by llama.cpp.

Speed depends on the shapes and the weight types, not on the values, so these stand in for SmolLM2-360M and -1.7B
(their real hyper-parameters, tied embeddings, and the real SmolLM2 tokenizer and chat template, copied from the
sample model). Each is written in F16 with llama.cpp's own ``gguf`` package, then quantized by llama.cpp
(``llama_model_quantize`` of llama-cpp-python 0.3.36) into Q4_K_M, Q4_0 and Q8_0 with its usual per-tensor choices;
the F16 file is deleted afterwards. Made once and cached:

    <out>/modelhost-bench/smollm2-360m-random/{Q4_K_M,Q4_0,Q8_0}.gguf
    <out>/modelhost-bench/smollm2-1.7b-random/{Q4_K_M,Q4_0,Q8_0}.gguf

Usage: .venv-bench/bin/python benches/make_models.py [--out DIR] [--sizes 360m,1.7b]
(default DIR: ~/.cache/modelhost/fixtures/bench-models, a models dir the benchmark points modelhost at).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

SIZES: dict[str, dict[str, Any]] = {
    # From the models' config.json (HuggingFaceTB/SmolLM2-360M-Instruct, -1.7B-Instruct).
    "360m": {"hidden": 960, "layers": 32, "heads": 15, "kv_heads": 5, "ffn": 2560, "rope_theta": 100000.0},
    "1.7b": {"hidden": 2048, "layers": 24, "heads": 32, "kv_heads": 32, "ffn": 8192, "rope_theta": 130000.0},
}
VOCAB = 49152
CONTEXT = 8192
# llama.cpp's LLAMA_FTYPE_MOSTLY_* numbers.
FTYPES = {"Q4_K_M": 15, "Q4_0": 2, "Q8_0": 7}
SEED = 20261129
SAMPLE = "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF/SmolLM2-135M-Instruct.Q4_1.gguf"


def repo_dir(out: Path, size: str) -> Path:
    return out / "modelhost-bench" / f"smollm2-{size}-random"


def copy_tokenizer(writer: Any, source: Path) -> None:
    """Every tokenizer.* key of the sample model, as it is."""
    import gguf

    reader = gguf.GGUFReader(str(source))
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        kind = field.types[0]
        value = field.contents()
        if kind == gguf.GGUFValueType.ARRAY:
            writer.add_key_value(key, value, kind, sub_type=field.types[1])
        else:
            writer.add_key_value(key, value, kind)


def tensors(p: dict[str, Any]) -> list[tuple[str, tuple[int, ...]]]:
    """(name, numpy shape) in llama.cpp's order; numpy shapes are (rows, cols) = ggml (cols, rows) reversed."""
    h, f, hd = p["hidden"], p["ffn"], p["hidden"] // p["heads"]
    kv = p["kv_heads"] * hd
    out = [("token_embd.weight", (VOCAB, h))]
    for i in range(p["layers"]):
        out += [
            (f"blk.{i}.attn_norm.weight", (h,)),
            (f"blk.{i}.attn_q.weight", (h, h)),
            (f"blk.{i}.attn_k.weight", (kv, h)),
            (f"blk.{i}.attn_v.weight", (kv, h)),
            (f"blk.{i}.attn_output.weight", (h, h)),
            (f"blk.{i}.ffn_norm.weight", (h,)),
            (f"blk.{i}.ffn_gate.weight", (f, h)),
            (f"blk.{i}.ffn_up.weight", (f, h)),
            (f"blk.{i}.ffn_down.weight", (h, f)),
        ]
    out.append(("output_norm.weight", (h,)))
    return out


def write_f16(path: Path, size: str, sample: Path) -> None:
    import gguf

    p = SIZES[size]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(f"SmolLM2-{size}-shaped random weights (modelhost benchmark)")
    w.add_block_count(p["layers"])
    w.add_context_length(CONTEXT)
    w.add_embedding_length(p["hidden"])
    w.add_feed_forward_length(p["ffn"])
    w.add_head_count(p["heads"])
    w.add_head_count_kv(p["kv_heads"])
    w.add_rope_freq_base(p["rope_theta"])
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(p["hidden"] // p["heads"])
    w.add_vocab_size(VOCAB)
    w.add_file_type(1)  # F16
    copy_tokenizer(w, sample)
    specs = tensors(p)
    for name, shape in specs:
        dtype = np.float32 if len(shape) == 1 else np.float16
        w.add_tensor_info(name, shape, np.dtype(dtype), int(np.prod(shape)) * np.dtype(dtype).itemsize)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    rng = np.random.default_rng(SEED + len(size))
    for _name, shape in specs:
        if len(shape) == 1:
            data = (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        else:
            data = (0.02 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float16)
        w.write_tensor_data(data)
    w.close()


def quantize(src: Path, dst: Path, ftype: int) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = 2
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize({src}, {dst}, ftype {ftype}) returned {rc}")


def make(out: Path, size: str, models_dir: Path) -> list[Path]:
    repo = repo_dir(out, size)
    wanted = [repo / f"{kind}.gguf" for kind in FTYPES]
    if all(f.exists() for f in wanted):
        return wanted
    repo.mkdir(parents=True, exist_ok=True)
    f16 = repo / "F16.gguf.tmp"
    t0 = time.perf_counter()
    write_f16(f16, size, models_dir / SAMPLE)
    print(f"[make_models] {size}: F16 written in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    for kind, ftype in FTYPES.items():
        dst = repo / f"{kind}.gguf"
        if dst.exists():
            continue
        t0 = time.perf_counter()
        tmp = dst.with_suffix(".gguf.tmp")
        quantize(f16, tmp, ftype)
        tmp.rename(dst)
        print(f"[make_models] {size}: {kind} in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    f16.unlink()
    (repo / "README.json").write_text(json.dumps({"size": size, "seed": SEED, **SIZES[size]}, indent=1) + "\n")
    return wanted


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path.home() / ".cache" / "modelhost" / "fixtures" / "bench-models")
    ap.add_argument("--sizes", default="360m,1.7b")
    ap.add_argument("--models-dir", type=Path, default=None, help="where the SmolLM2 sample model is")
    args = ap.parse_args()
    models_dir = args.models_dir or Path(
        os.environ.get("MODELHOST_MODELS_DIR", Path.home() / ".cache" / "modelhost" / "models")
    )
    for size in args.sizes.split(","):
        for f in make(args.out, size, models_dir):
            print(f)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Every tensor llama.cpp computes for one prompt, saved as f32 .npy files: to find the first op where our numerics
and llama.cpp's part (compare with our own intermediate values of the same prompt).

    python scripts/llamacpp_tensors.py MODEL.gguf OUT_DIR '[1, 2, 3]' ['[0, 1]']

The prompt (token ids) is evaluated in one batch, as the family checks' references are, with flash attention off
(llama-cpp-python's default), one thread, context 256. The optional last argument keeps only those layers'
tensors (names ending in ``-<layer>``). OUT_DIR gets ``NNNN-<name>.npy`` per tensor in graph order (a name can recur:
``Qcur-0`` is the projection, then its reshape, then RoPE's output), ``index.json`` and ``logits.npy``. It uses the
scheduler's eval callback, so it reads tensors as they are computed; f32 and f16 tensors are saved, others listed.
"""

from __future__ import annotations

import ctypes
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np


class GgmlTensor(ctypes.Structure):
    """``struct ggml_tensor`` of the ggml vendored by llama-cpp-python 0.3.36 (ggml.h)."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * 4),
        ("nb", ctypes.c_size_t * 4),
        ("op", ctypes.c_int),
        ("op_params", ctypes.c_int32 * 16),
        ("flags", ctypes.c_int32),
        ("src", ctypes.c_void_p * 10),
        ("view_src", ctypes.c_void_p),
        ("view_offs", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("name", ctypes.c_char * 64),
        ("extra", ctypes.c_void_p),
        ("padding", ctypes.c_char * 8),
    ]


def main(model: str, out: Path, ids: list[int], layers: set[int] | None) -> None:
    import llama_cpp as lc

    out.mkdir(parents=True, exist_ok=True)
    index: list[dict[str, Any]] = []

    def wanted(name: str) -> bool:
        tail = name.rsplit("-", 1)[-1]
        return layers is None or not tail.isdigit() or int(tail) in layers

    def on_tensor(ptr: int, ask: bool, _user: int) -> bool:
        t = ctypes.cast(ptr, ctypes.POINTER(GgmlTensor)).contents
        name = t.name.decode()
        if ask:
            return wanted(name)
        ne, nb = list(t.ne), list(t.nb)
        if t.type not in (0, 1):  # GGML_TYPE_F32, GGML_TYPE_F16
            index.append({"name": name, "type": t.type, "ne": ne})
            return True
        dtype = np.float32 if t.type == 0 else np.float16
        span = sum((n - 1) * s for n, s in zip(ne, nb)) + np.dtype(dtype).itemsize
        raw = np.frombuffer((ctypes.c_char * span).from_address(t.data), dtype=dtype)
        values = np.lib.stride_tricks.as_strided(raw, shape=ne[::-1], strides=nb[::-1]).astype(np.float32)
        file = f"{len(index):04d}-{name.replace('/', '_')}.npy"
        np.save(out / file, values)
        index.append({"name": name, "file": file, "ne": ne, "op": t.op, "type": t.type})
        return True

    callback = lc.ggml_backend_sched_eval_callback(on_tensor)
    quiet = lc.llama_log_callback(lambda _level, _text, _user: None)
    lc.llama_log_set(quiet, None)
    lc.llama_backend_init()
    m = lc.llama_model_load_from_file(model.encode(), lc.llama_model_default_params())
    params = lc.llama_context_default_params()
    params.n_ctx = params.n_batch = params.n_ubatch = 256
    params.n_threads = params.n_threads_batch = 1
    params.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_DISABLED
    params.cb_eval = callback
    ctx = lc.llama_init_from_model(m, params)
    batch = lc.llama_batch_init(len(ids), 0, 1)
    for i, token in enumerate(ids):
        batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, i, 1, 1
        batch.seq_id[i][0] = 0
    batch.n_tokens = len(ids)
    if lc.llama_decode(ctx, batch) != 0:
        raise RuntimeError("llama_decode failed")
    n_vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(m))
    logits = np.ctypeslib.as_array(lc.llama_get_logits(ctx), shape=(len(ids) * n_vocab,))
    np.save(out / "logits.npy", logits.reshape(len(ids), n_vocab).copy())
    (out / "index.json").write_text(json.dumps(index, indent=0))
    lc.llama_batch_free(batch)
    lc.llama_free(ctx)
    lc.llama_model_free(m)


if __name__ == "__main__":
    keep = set(json.loads(sys.argv[4])) if len(sys.argv) > 4 else None
    main(sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3]), keep)

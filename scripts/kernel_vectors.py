"""Write the reference vectors the Rust kernel tests compare against, computed by llama.cpp's own code.

For every weight type the kernels run, this calls the ggml inside llama-cpp-python (the build the reference
outputs come from) through ctypes:

- ``ggml_quantize_chunk`` quantizes random weights into the type (llama.cpp's own quantizer, so realistic blocks);
- the type's ``to_float`` dequantizes them (the token-embedding lookup must match it bit for bit);
- the CPU backend's ``from_float`` of the type's ``vec_dot_type`` converts activations (Q8_0, Q8_1, Q8_K, F16,
  BF16: our conversion must produce the same bytes);
- the CPU backend's ``vec_dot`` gives each weight row · activation row (our kernels must agree up to float
  reassociation).

The activations are generated from a seed with integer arithmetic that `kernels/vector_tests.rs` repeats, so only
the results are stored. Usage (any venv with llama-cpp-python 0.3.36 built as scripts/bench_env.sh builds it):

    .venv-bench/bin/python scripts/kernel_vectors.py rust/modelhost-core/tests/data/kernel_vectors.bin
"""

from __future__ import annotations

import ctypes
import struct
import sys
from pathlib import Path

import numpy as np

# (name, ggml id) of every type the kernels run.
TYPES = [
    ("F32", 0), ("F16", 1), ("Q4_0", 2), ("Q4_1", 3), ("Q5_0", 6), ("Q5_1", 7), ("Q8_0", 8), ("Q2_K", 10),
    ("Q3_K", 11), ("Q4_K", 12), ("Q5_K", 13), ("Q6_K", 14), ("IQ4_NL", 20), ("BF16", 30),
]  # fmt: skip
ROWS, COLS, ACT_ROWS = 4, 512, 4
MAGIC = b"MHKV0001"


def activations(m: int, cols: int, seed: int) -> np.ndarray:
    """What `vector_tests::activations` computes: 16-bit integers from an LCG, scaled by powers of two (exact in
    f32), with one row of exact .5 ties under a multiplier of 1."""
    state = seed
    out = np.zeros((m, cols), dtype=np.float32)
    scales = [1 / 64, 1 / 4, 2.0, 16.0]
    for i in range(m):
        for j in range(cols):
            state = (state * 6364136223846793005 + 1442695040888963407) % (1 << 64)
            v = ((state >> 40) & 0xFFFF) - 32768
            out[i, j] = np.float32(v / 4096.0 * scales[(j // 64) % 4])
    # The last row: values k + 0.5 under an absolute maximum of 127 (Q8_0's multiplier is then exactly 1).
    row = np.array([((j % 254) - 127) + 0.5 for j in range(cols)], dtype=np.float32)
    row[0] = 127.0
    out[m - 1] = row
    return out


def main() -> None:
    import llama_cpp

    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    base = ctypes.CDLL(str(lib_dir / "libggml-base.so"), mode=ctypes.RTLD_GLOBAL)
    cpu = ctypes.CDLL(str(lib_dir / "libggml-cpu.so"), mode=ctypes.RTLD_GLOBAL)
    cpu.ggml_cpu_init()

    class TypeTraits(ctypes.Structure):
        _fields_ = [
            ("type_name", ctypes.c_char_p),
            ("blck_size", ctypes.c_int64),
            ("blck_size_interleave", ctypes.c_int64),
            ("type_size", ctypes.c_size_t),
            ("is_quantized", ctypes.c_bool),
            ("to_float", ctypes.c_void_p),
            ("from_float_ref", ctypes.c_void_p),
        ]

    class CpuTraits(ctypes.Structure):
        _fields_ = [
            ("from_float", ctypes.c_void_p),
            ("vec_dot", ctypes.c_void_p),
            ("vec_dot_type", ctypes.c_int),
            ("nrows", ctypes.c_int64),
        ]

    base.ggml_get_type_traits.restype = ctypes.POINTER(TypeTraits)
    cpu.ggml_get_type_traits_cpu.restype = ctypes.POINTER(CpuTraits)
    base.ggml_row_size.restype = ctypes.c_size_t
    base.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    base.ggml_quantize_chunk.restype = ctypes.c_size_t
    base.ggml_quantize_chunk.argtypes = [
        ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
        ctypes.c_void_p,
    ]  # fmt: skip
    to_float_t = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)
    vec_dot_t = ctypes.CFUNCTYPE(
        None, ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p,
        ctypes.c_size_t, ctypes.c_int,
    )  # fmt: skip

    rng = np.random.default_rng(20261129)
    records = []
    for name, ty in TYPES:
        weights = (rng.standard_normal((ROWS, COLS)) * 0.05).astype(np.float32)
        weights[0, :40] *= 30.0  # a row with outliers, as real weights have
        row_size = base.ggml_row_size(ty, COLS)
        wq = ctypes.create_string_buffer(row_size * ROWS)
        written = base.ggml_quantize_chunk(ty, weights.ctypes.data, wq, 0, ROWS, COLS, None)
        assert written == row_size * ROWS, (name, written)
        deq = np.zeros((ROWS, COLS), dtype=np.float32)
        to_float_ptr = base.ggml_get_type_traits(ty).contents.to_float
        if to_float_ptr:
            to_float_t(to_float_ptr)(ctypes.addressof(wq), deq.ctypes.data, ROWS * COLS)
        else:  # F32 is stored as is
            deq = np.frombuffer(bytes(wq), dtype=np.float32).reshape(ROWS, COLS).copy()

        traits = cpu.ggml_get_type_traits_cpu(ty).contents
        act_type = traits.vec_dot_type
        x = activations(ACT_ROWS, COLS, seed=ty + 1)
        act_size = base.ggml_row_size(act_type, COLS)
        acts = ctypes.create_string_buffer(act_size * ACT_ROWS)
        act_traits = cpu.ggml_get_type_traits_cpu(act_type).contents
        from_float = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)(act_traits.from_float)
        for i in range(ACT_ROWS):
            row = np.ascontiguousarray(x[i])
            from_float(row.ctypes.data, ctypes.addressof(acts) + i * act_size, COLS)
        vec_dot = vec_dot_t(traits.vec_dot)
        dots = np.zeros((ACT_ROWS, ROWS), dtype=np.float32)
        out = ctypes.c_float()
        for i in range(ACT_ROWS):
            for r in range(ROWS):
                vec_dot(COLS, ctypes.byref(out), 0, ctypes.addressof(wq) + r * row_size, 0,
                        ctypes.addressof(acts) + i * act_size, 0, 1)  # fmt: skip
                dots[i, r] = out.value
        records.append((ty, act_type, bytes(wq), deq.tobytes(), bytes(acts), dots.tobytes()))
        print(f"{name:7} vec_dot_type {act_type:2}  row {row_size} B  activations {act_size} B/row", file=sys.stderr)

    path = Path(sys.argv[1])
    with path.open("wb") as f:
        f.write(MAGIC + struct.pack("<IIII", len(records), ROWS, COLS, ACT_ROWS))
        for ty, act_type, *blobs in records:
            f.write(struct.pack("<II", ty, act_type))
            for blob in blobs:
                f.write(struct.pack("<I", len(blob)) + blob)
    print(f"wrote {path} ({path.stat().st_size} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()

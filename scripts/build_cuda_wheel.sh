#!/usr/bin/env bash
# Build the CUDA wheel of modelhost (cargo feature `cuda`: candle's CUDA backend) on a machine with no GPU and no
# system CUDA toolkit, with NVIDIA's compiler, headers and libraries from PyPI (CUDA 13.0 line, to match the
# 580-series driver of the device machines). See docs/cuda.md.
#
# Usage: scripts/build_cuda_wheel.sh
#   CUDA_VENV=dir           venv holding the toolkit wheels and maturin (default: .venv-cuda in the repo root)
#   CUDA_COMPUTE_CAP=90     GPU architecture the kernels are compiled for (default 90: Hopper, H100/H200);
#                           candle-kernels asks nvidia-smi when this is unset, and there is none here
#   CARGO_TARGET_DIR_CUDA=dir  cargo target dir (default ~/.cache/modelhost/target-cuda), apart from the CPU
#                           build's, so neither build invalidates the other; an inherited CARGO_TARGET_DIR (the
#                           Makefile exports the CPU one) is ignored
#   CARGO_BUILD_JOBS=N      default 1 (the build machines have 2 cores shared with others)
#   OUT_DIR_WHEEL=dir       where the wheel goes (default: dist-cuda/ in the repo root)
#
# How the pieces are found:
#   * candle-kernels' build script (cudaforge) runs nvcc from $NVCC / PATH and needs CUDA_COMPUTE_CAP;
#   * cudarc (candle-core turns on `cuda-version-from-build-system` + `dynamic-linking`) reads the CUDA version
#     from `nvcc --version` (pinned here too with CUDARC_CUDA_VERSION=13000) and adds CUDA_HOME/lib64 and
#     lib64/stubs to the link search path, then links -lcuda -lnvrtc -lcurand -lcublas -lcublasLt (-lcudart
#     from candle-kernels).
#   * The PyPI wheels ship only versioned libraries (libcublas.so.13, ...) under nvidia/cu13/lib and no libcuda
#     at all (that is the driver's), so this script assembles a CUDA_HOME tree in the venv: bin/include/nvvm link
#     to the wheels, lib64/ holds unversioned links, and lib64/stubs/libcuda.so is a link-time stub (SONAME
#     libcuda.so.1, one function per driver entry point that cudarc declares). At run time the real driver's
#     libcuda.so.1 is used; the stub never ships.
#   * The extension gets RUNPATH $ORIGIN/../nvidia/cu13/lib, so it finds the CUDA 13 runtime, cuBLAS, cuRAND and
#     NVRTC when the nvidia-* wheels are installed in the same site-packages (as PyTorch's cu130 build does);
#     otherwise put their directory on LD_LIBRARY_PATH.
#   * maturin runs with --auditwheel skip: "repairing" would copy ~700 MB of cuBLAS into the wheel.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CUDA_VENV:-$ROOT/.venv-cuda}"
OUT_WHEEL_DIR="${OUT_DIR_WHEEL:-$ROOT/dist-cuda}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR_CUDA:-$HOME/.cache/modelhost/target-cuda}"
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-1}"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"

# The CUDA 13.0 line, as pinned by NVIDIA's own `cuda-toolkit==13.0.2` metapackage (its extras nvcc, crt, nvvm,
# cudart, cublas, curand, nvrtc, cccl).
CUDA_PACKAGES=(
    nvidia-cuda-nvcc==13.0.88     # nvcc, ptxas, fatbinary, nvlink, cudafe++
    nvidia-cuda-crt==13.0.88      # crt/ headers nvcc needs (host_config.h, ...)
    nvidia-nvvm==13.0.88          # cicc and libdevice
    nvidia-cuda-runtime==13.0.96  # cuda_runtime.h, cuda.h, libcudart.so.13
    nvidia-cuda-cccl==13.0.85     # libcu++/CUB headers (cuda/std/...)
    nvidia-cublas==13.1.0.3       # libcublas.so.13, libcublasLt.so.13
    nvidia-curand==10.4.0.35      # libcurand.so.10
    nvidia-cuda-nvrtc==13.0.88    # libnvrtc.so.13
)
MATURIN=maturin==1.16.0

log() { printf '[build_cuda_wheel] %s\n' "$*" >&2; }

# --- 1. the toolkit venv (idempotent) ---
if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating $VENV"
    python3 -m venv "$VENV"
fi
stamp="$VENV/.cuda-packages"
want="${CUDA_PACKAGES[*]} $MATURIN"
if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
    log "installing ${CUDA_PACKAGES[*]} $MATURIN (about 1.3 GB)"
    "$VENV/bin/python" -m pip install -q "${CUDA_PACKAGES[@]}" "$MATURIN"
    printf '%s' "$want" >"$stamp"
fi
NV="$("$VENV/bin/python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')"
[[ -x "$NV/bin/nvcc" ]] || { log "no nvcc at $NV/bin/nvcc"; exit 1; }

# --- 2. a CUDA_HOME laid out as the build scripts expect ---
CUDA_HOME_DIR="$VENV/cuda-home"
mkdir -p "$CUDA_HOME_DIR/lib64/stubs"
for d in bin include nvvm; do ln -sfn "$NV/$d" "$CUDA_HOME_DIR/$d"; done
for lib in cudart:13 cublas:13 cublasLt:13 curand:10 nvrtc:13; do
    name="${lib%%:*}" so="${lib##*:}"
    [[ -e "$NV/lib/lib$name.so.$so" ]] || { log "missing $NV/lib/lib$name.so.$so"; exit 1; }
    ln -sfn "$NV/lib/lib$name.so.$so" "$CUDA_HOME_DIR/lib64/lib$name.so"
done

# The libcuda.so link stub, from the driver entry points cudarc declares (its src/driver/sys/mod.rs).
cargo fetch --manifest-path "$ROOT/Cargo.toml" -q
CUDARC_DIR="$(cargo metadata --manifest-path "$ROOT/Cargo.toml" --format-version 1 --features modelhost-py/cuda |
    python3 -c 'import json, os, sys
d = json.load(sys.stdin)
print(next(os.path.dirname(p["manifest_path"]) for p in d["packages"] if p["name"] == "cudarc"))')"
STUB_SRC="$CUDA_HOME_DIR/lib64/stubs/libcuda_stub.c"
python3 - "$CUDARC_DIR/src/driver/sys/mod.rs" "$STUB_SRC" <<'EOF'
import re, sys
names = sorted(set(re.findall(r"^\s+fn (cu\w+)\(", open(sys.argv[1]).read(), re.M)))
assert len(names) > 300, f"only {len(names)} driver functions found in {sys.argv[1]}"
with open(sys.argv[2], "w") as f:
    f.write("/* Link-time stub of libcuda.so.1, generated by scripts/build_cuda_wheel.sh. Every entry point returns\n"
            "   CUDA_ERROR_NO_DEVICE (100). Never shipped: the driver's own libcuda.so.1 is used at run time. */\n")
    for n in names:
        f.write(f"int {n}(void) {{ return 100; }}\n")
print(f"[build_cuda_wheel] libcuda stub: {len(names)} entry points", file=sys.stderr)
EOF
gcc -shared -fPIC -O1 -Wl,-soname,libcuda.so.1 -o "$CUDA_HOME_DIR/lib64/stubs/libcuda.so" "$STUB_SRC"

# --- 3. environment for nvcc, cudaforge (candle-kernels) and cudarc ---
export CUDA_HOME="$CUDA_HOME_DIR" CUDA_PATH="$CUDA_HOME_DIR" CUDA_ROOT="$CUDA_HOME_DIR"
export CUDA_TOOLKIT_ROOT_DIR="$CUDA_HOME_DIR"
export NVCC="$CUDA_HOME_DIR/bin/nvcc"
export PATH="$CUDA_HOME_DIR/bin:$VENV/bin:$PATH"
export CUDARC_CUDA_VERSION=13000
export CUDAFORGE_THREADS="$CARGO_BUILD_JOBS"   # nvcc processes at once in candle-kernels' build script
export LIBRARY_PATH="$CUDA_HOME_DIR/lib64:$CUDA_HOME_DIR/lib64/stubs${LIBRARY_PATH:+:$LIBRARY_PATH}"
export LD_LIBRARY_PATH="$NV/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvcc_version="$(nvcc --version | sed -n 's/.*release \([0-9.]*\),.*/\1/p')"
[[ "$nvcc_version" == 13.0 ]] || { log "nvcc reports CUDA $nvcc_version, want 13.0"; exit 1; }
log "nvcc $nvcc_version at $NVCC; CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP; CARGO_TARGET_DIR=$CARGO_TARGET_DIR"

# --- 4. the wheel ---
mkdir -p "$OUT_WHEEL_DIR"
rm -f "$OUT_WHEEL_DIR"/modelhost-*.whl
start=$(date +%s)
# Rustc flags after the options go to the extension crate only (`cargo rustc -- ...`), so the workspace's
# .cargo/config.toml rustflags (target-cpu) still apply and the CPU build's flags are untouched.
(cd "$ROOT" && nice -n 15 "$VENV/bin/maturin" build --release --features cuda --auditwheel skip \
    -o "$OUT_WHEEL_DIR" -- -C 'link-arg=-Wl,-rpath,$ORIGIN/../nvidia/cu13/lib')
log "built in $(($(date +%s) - start)) s"

# --- 5. check what the extension links against ---
wheel="$(ls -t "$OUT_WHEEL_DIR"/modelhost-*.whl | head -n 1)"
check_dir="$(mktemp -d)"
trap 'rm -rf "$check_dir"' EXIT
python3 -m zipfile -e "$wheel" "$check_dir"
so="$(ls "$check_dir"/modelhost/_core*.so)"
log "wheel: $wheel ($(du -h "$wheel" | cut -f1))"
readelf -d "$so" | grep -E 'NEEDED|RUNPATH|RPATH' >&2
# Every driver entry point the extension needs must exist in CUDA 13.0's cuda.h (so in a 13.0 driver).
missing="$(nm -D --undefined-only "$so" | awk '{print $2}' | grep -E '^cu[A-Z]' | sed 's/@.*//' | while read -r s; do
    grep -qw "$s" "$NV/include/cuda.h" || echo "$s"; done)"
if [[ -n "$missing" ]]; then
    log "driver entry points not in CUDA 13.0's cuda.h: $missing"
    exit 1
fi
log "driver entry points used: $(nm -D --undefined-only "$so" | grep -cE ' cu[A-Z]'), all in CUDA 13.0's cuda.h"
echo "$wheel"

#!/usr/bin/env bash
# Device check of the CUDA wheel, run on the GPU machine through the device tool (docs/cuda.md).
#
# Prepared here with:
#   scripts/build_cuda_wheel.sh                 # the wheel, in dist-cuda/
#   python3 scripts/gpu_check.py prepare        # dist-cuda/carry-a (wheel + model part a), dist-cuda/carry-b
# then two device calls, the second straight after the first (the machine stays warm only ~30 s, and the model,
# 94 MiB, is over the 64 MiB a call may carry):
#   run  command "bash scripts/gpu_check.sh"  carry ["dist-cuda/carry-a"]   -> nvidia-smi, wheel, smoke check
#   run  command "bash scripts/gpu_check.sh"  carry ["dist-cuda/carry-b"]   -> full SmolLM2 check
# Each call stages what it carried under $MH_GPU_WORK (default /tmp/mh-gpu) and runs whatever is possible with
# what has been staged so far. Output: $OUT/gpu_check.log, nvidia-smi.txt, smoke.json, gpu_check.json.
# Exit status: 0 ok, 1 a check failed, 2 nothing usable staged (call 1 missing, or the machine went cold between
# the calls: run both again), 3 the extension cannot find its libraries.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${MH_GPU_WORK:-/tmp/mh-gpu}"
OUT="${OUT:-$WORK/out}"
mkdir -p "$WORK" "$OUT"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
export PYTHONUNBUFFERED=1
log() { printf '[gpu_check.sh] %s\n' "$*"; }

log "host $(hostname), $(nproc) cores; $(date -u +%FT%TZ)"
{ nvidia-smi; nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv; } \
    >"$OUT/nvidia-smi.txt" 2>&1
cat "$OUT/nvidia-smi.txt"

PY="${MH_GPU_PYTHON:-python3}"
log "python: $(command -v "$PY") $("$PY" -c 'import sys, numpy; print(sys.version.split()[0], "numpy", numpy.__version__)' 2>&1)"

# --- the wheel (carried in call 1), installed once per machine ---
SITE="$WORK/site"
wheel="$(ls -t "$ROOT"/dist-cuda/carry-*/modelhost-*.whl 2>/dev/null | head -n 1)"
if [[ -n "$wheel" ]]; then
    sum="$(sha256sum "$wheel" | cut -d' ' -f1)"
    if [[ "$(cat "$WORK/wheel.sha256" 2>/dev/null)" != "$sum" ]]; then
        rm -rf "$SITE"
        "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$wheel" || exit 3
        echo "$sum" >"$WORK/wheel.sha256"
        log "installed $(basename "$wheel") into $SITE"
    fi
fi
if [[ ! -d "$SITE/modelhost" ]]; then
    log "no modelhost installed under $SITE: call 1 (carry dist-cuda/carry-a) has not run on this machine, or the"
    log "machine went cold between the calls; run call 1 and then call 2 straight after it"
    exit 2
fi

# --- CUDA 13 runtime, cuBLAS, cuRAND, NVRTC (from the image's nvidia-* wheels or toolkit) and the driver ---
libdirs=()
for d in $("$PY" -c 'import nvidia, os; print(" ".join(os.path.join(p, "cu13", "lib") for p in nvidia.__path__))' \
    2>/dev/null) /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/nvidia/lib64 \
    /usr/local/nvidia/lib ${LD_LIBRARY_PATH//:/ }; do
    [[ -d "$d" ]] && libdirs+=("$d")
done
for lib in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13; do
    found=""
    for d in "${libdirs[@]}"; do [[ -e "$d/$lib" ]] && { found="$d"; break; }; done
    if [[ -z "$found" ]]; then  # another layout: look for it
        f="$(find /opt /usr/local /usr/lib -name "$lib" 2>/dev/null | head -n 1)"
        [[ -n "$f" ]] && { found="$(dirname "$f")"; libdirs+=("$found"); }
    fi
    log "$lib: ${found:-NOT FOUND}"
done
LD_LIBRARY_PATH="$(IFS=:; echo "${libdirs[*]}")"
export LD_LIBRARY_PATH
so="$(ls "$SITE"/modelhost/_core*.so)"
if ldd "$so" | grep -q 'not found'; then
    ldd "$so"
    log "the extension cannot find its libraries (LD_LIBRARY_PATH=$LD_LIBRARY_PATH)"
    exit 3
fi
ldd "$so" | grep -E 'cuda|cublas|curand|nvrtc'

# --- the checks ---
PYTHONPATH="$SITE" "$PY" "$ROOT/scripts/gpu_check.py" device --carry-dir "$ROOT/dist-cuda" --work "$WORK" --out "$OUT"
rc=$?
log "exit status $rc"
exit $rc

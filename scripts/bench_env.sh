#!/usr/bin/env bash
# Create (idempotently) the benchmark environment `.venv-bench`: the peers (llama-cpp-python built from source for
# this CPU family with AMX off, sentence-transformers + torch) and the modelhost wheel, in one venv, so that
# `benches/run.py` measures modelhost and the peers on the same files in the same run.
#
# Usage: scripts/bench_env.sh [--peers-only]
#   MODELHOST_WHEEL=path/to.whl   the modelhost wheel to install (default: newest of dist/, target/wheels/,
#                                 $CARGO_TARGET_DIR/wheels/, ~/.cache/modelhost/target/wheels/)
#   BENCH_VENV=dir                venv location (default: .venv-bench in the repo root)
#   BENCH_PYTHON=python3          interpreter that creates the venv
#
# What was installed, and with which build flags, is written to $BENCH_VENV/bench-env.json; run.py copies it into
# every result file.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${BENCH_VENV:-$ROOT/.venv-bench}"
PY="${BENCH_PYTHON:-python3}"
PEERS_ONLY=0
[[ "${1:-}" == "--peers-only" ]] && PEERS_ONLY=1

# llama-cpp-python is compiled once per machine by scripts/peer_wheels.py (version and CMake flags there: native off,
# AMX off, as the reference outputs in shared/refs were produced) into ~/.cache/modelhost/wheels, and installed from
# there, so the bench venv and the test venv run the same build.
PEER_WHEELS="$ROOT/scripts/peer_wheels.py"
# PyPI has no CPU-only torch build (the CPU wheels live on PyTorch's own index, which is not reachable here), so the
# default PyPI torch is used; torch.set_num_threads(2) keeps the comparison at 2 threads either way.
PEER_PACKAGES=(sentence-transformers torch numpy psutil)

log() { printf '[bench_env] %s\n' "$*" >&2; }

if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating $VENV"
    "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip setuptools wheel
fi
VPY="$VENV/bin/python"
STAMP_DIR="$VENV/.bench-stamps"
mkdir -p "$STAMP_DIR"

# --- llama-cpp-python, from the wheel cache (built there on first use, about 10 min on 2 cores) ---
"$VPY" "$PEER_WHEELS" install "$VPY"
LLAMA_CMAKE_ARGS="$("$VPY" "$PEER_WHEELS" cmake-args)"

# --- sentence-transformers, torch, numpy, psutil ---
peers_stamp="$STAMP_DIR/peers"
if [[ "$(cat "$peers_stamp" 2>/dev/null)" != "${PEER_PACKAGES[*]}" ]] ||
    ! "$VPY" -c 'import sentence_transformers, torch, numpy, psutil' 2>/dev/null; then
    log "installing ${PEER_PACKAGES[*]}"
    nice -n 10 "$VPY" -m pip install -q "${PEER_PACKAGES[@]}"
    printf '%s' "${PEER_PACKAGES[*]}" >"$peers_stamp"
else
    log "peers already installed"
fi

# --- the modelhost wheel ---
wheel="${MODELHOST_WHEEL:-}"
if [[ -z "$wheel" && "$PEERS_ONLY" == 0 ]]; then
    candidates=()
    for d in "$ROOT/dist" "$ROOT/target/wheels" "${CARGO_TARGET_DIR:+$CARGO_TARGET_DIR/wheels}" \
        "$HOME/.cache/modelhost/target/wheels"; do
        [[ -n "$d" && -d "$d" ]] || continue
        for f in "$d"/modelhost-*.whl; do [[ -f "$f" ]] && candidates+=("$f"); done
    done
    if ((${#candidates[@]})); then
        wheel="$(ls -t "${candidates[@]}" | head -n 1)"
    fi
fi
if [[ "$PEERS_ONLY" == 1 ]]; then
    log "--peers-only: not installing modelhost"
elif [[ -z "$wheel" ]]; then
    log "no modelhost wheel found (build one with 'maturin build --release' or set MODELHOST_WHEEL); peers only"
else
    wheel_stamp="$STAMP_DIR/modelhost"
    wheel_id="$(sha256sum "$wheel" | cut -d' ' -f1)"
    if [[ "$(cat "$wheel_stamp" 2>/dev/null)" != "$wheel_id" ]] || ! "$VPY" -c 'import modelhost' 2>/dev/null; then
        log "installing $wheel"
        "$VPY" -m pip install -q --force-reinstall --no-deps "$wheel"
        "$VPY" -m pip install -q numpy
        printf '%s' "$wheel_id" >"$wheel_stamp"
        printf '%s' "$wheel" >"$STAMP_DIR/modelhost-path"
    else
        log "modelhost wheel already installed ($wheel)"
    fi
fi

# --- record what is installed ---
LLAMA_CMAKE_ARGS="$LLAMA_CMAKE_ARGS" "$VPY" - "$VENV/bench-env.json" "$STAMP_DIR" <<'EOF'
import importlib.metadata as md, inspect, json, os, sys
from pathlib import Path

out, stamps = Path(sys.argv[1]), Path(sys.argv[2])
def version(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None
info = {
    "python": sys.version.split()[0],
    "packages": {n: version(n) for n in
                 ["llama-cpp-python", "sentence-transformers", "torch", "transformers", "numpy", "psutil", "modelhost"]},
    "llama_cpp_cmake_args": os.environ["LLAMA_CMAKE_ARGS"],
    "modelhost_wheel": (stamps / "modelhost-path").read_text() if (stamps / "modelhost-path").exists() else None,
}
try:
    import llama_cpp
    info["llama_cpp_system_info"] = llama_cpp.llama_print_system_info().decode(errors="replace").strip()
    info["llama_has_use_extra_bufts"] = "use_extra_bufts" in inspect.signature(llama_cpp.Llama.__init__).parameters
except Exception as e:  # recorded, not fatal: run.py reports the peer as missing
    info["llama_cpp_error"] = repr(e)
try:
    import torch
    info["torch_cuda_build"] = torch.version.cuda
except Exception as e:
    info["torch_error"] = repr(e)
out.write_text(json.dumps(info, indent=2) + "\n")
print(json.dumps(info, indent=2))
EOF
log "ready: $VENV"

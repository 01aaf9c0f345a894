"""Build llama-cpp-python once per version and CMake flags, cache the wheel, and install it from the cache.

PyPI ships llama-cpp-python 0.3.36 only as an sdist, and compiling it takes about ten minutes on two cores. The test
venv (`make install`) and the bench venv (`scripts/bench_env.sh`) both install the same wheel from
``~/.cache/modelhost/wheels/`` so that it is compiled once per machine, not once per venv or per CI run.

Usage:
    python scripts/peer_wheels.py install PYTHON    build if needed, then install into the venv of PYTHON
    python scripts/peer_wheels.py wheel             build if needed; print the cached wheel's path
    python scripts/peer_wheels.py sdist             download if needed; print the verified sdist's path
    python scripts/peer_wheels.py cmake-args        print the CMake flags the wheel is built with

Environment: MODELHOST_CACHE (default ~/.cache/modelhost), CMAKE_BUILD_PARALLEL_LEVEL (default 2).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
SDIST_NAME = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
SIMPLE_INDEX = "https://pypi.org/simple/llama-cpp-python/"

# llama.cpp's native build (GGML_NATIVE=ON) enables the AMX kernels, which crash on these machines' CPUs (they report
# AVX-512 but the AMX path segfaults in llama.cpp). So: native off, every ISA extension these CPUs have switched on by
# hand, AMX off. The reference outputs in shared/refs were produced with exactly these flags.
LLAMA_CMAKE_ARGS = (
    "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX_VNNI=ON "
    "-DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON "
    "-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
)


def cache_root() -> Path:
    """~/.cache/modelhost, or $MODELHOST_CACHE."""
    env = os.environ.get("MODELHOST_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "modelhost"


def build_key() -> str:
    """What the wheel depends on: the version and the flags (pip's own cache is keyed on the sdist alone)."""
    digest = hashlib.sha256(f"{LLAMA_CPP_PYTHON_VERSION}\n{LLAMA_CMAKE_ARGS}".encode()).hexdigest()[:16]
    return f"llama-cpp-python-{LLAMA_CPP_PYTHON_VERSION}-{digest}"


def log(message: str) -> None:
    print(f"[peer_wheels] {message}", file=sys.stderr, flush=True)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def ensure_sdist() -> Path:
    """The verified sdist in the cache, downloaded from PyPI's file host when missing.

    Found through PyPI's simple index (its JSON form, PEP 691) and downloaded from the file host, rather than with
    `pip download`, which prepares the package's metadata and so fetches its build requirements (and with
    `--no-binary :all:` would compile CMake itself).
    """
    path = cache_root() / "sdist" / SDIST_NAME
    if path.is_file() and sha256(path) == SDIST_SHA256:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    request = urllib.request.Request(SIMPLE_INDEX, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        index = json.load(response)
    (url,) = [f["url"] for f in index["files"] if f["filename"] == SDIST_NAME]
    log(f"downloading {url}")
    part = path.with_name(path.name + ".part")
    with urllib.request.urlopen(url, timeout=600) as response, part.open("wb") as out:
        shutil.copyfileobj(response, out, 1 << 20)
    if sha256(part) != SDIST_SHA256:
        part.unlink()
        sys.exit(f"checksum mismatch for {SDIST_NAME}: refusing to use it")
    part.replace(path)
    return path


def ensure_wheel() -> Path:
    """The cached wheel for this version and these flags, compiled from the sdist when missing."""
    wheel_dir = cache_root() / "wheels" / build_key()
    wheels = sorted(wheel_dir.glob("llama_cpp_python-*.whl"))
    if wheels:
        return wheels[-1]
    sdist = ensure_sdist()
    log(f"building llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} (about 10 min on 2 cores) into {wheel_dir}")
    env = dict(
        os.environ,
        CMAKE_ARGS=LLAMA_CMAKE_ARGS,
        FORCE_CMAKE="1",
        CMAKE_BUILD_PARALLEL_LEVEL=os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", "2"),
    )
    wheel_dir.parent.mkdir(parents=True, exist_ok=True)
    # Built in a temporary folder and renamed into place, so an interrupted build leaves no half wheel behind, and two
    # concurrent builds at worst both compile (the rename is atomic).
    with tempfile.TemporaryDirectory(dir=wheel_dir.parent) as tmp:
        out = Path(tmp) / "out"
        pip_wheel = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-cache-dir"]
        subprocess.run(
            ["nice", "-n", "10", *pip_wheel, "-w", str(out), str(sdist)],
            check=True,
            env=env,
        )
        (built,) = out.glob("llama_cpp_python-*.whl")
        (out / "build-flags.txt").write_text(f"{LLAMA_CPP_PYTHON_VERSION}\n{LLAMA_CMAKE_ARGS}\n")
        try:
            out.rename(wheel_dir)
        except OSError:
            if not any(wheel_dir.glob("llama_cpp_python-*.whl")):
                raise
    return wheel_dir / built.name


def install(python: str) -> None:
    """Install the cached wheel into the venv of ``python``."""
    wheel = ensure_wheel()
    probe = "import importlib.metadata as m, sys; sys.exit(m.version('llama_cpp_python') != sys.argv[1])"
    stamp_ok = subprocess.run([python, "-c", probe, LLAMA_CPP_PYTHON_VERSION], capture_output=True).returncode == 0
    prefix = subprocess.run([python, "-c", "import sys; print(sys.prefix)"], capture_output=True, text=True, check=True)
    recorded = Path(prefix.stdout.strip()) / ".llama-cpp-python-wheel"
    if stamp_ok and recorded.is_file() and recorded.read_text() == str(wheel):
        log(f"llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} already installed from {wheel}")
        return
    log(f"installing {wheel}")
    subprocess.run([python, "-m", "pip", "install", "-q", "--force-reinstall", "--no-deps", str(wheel)], check=True)
    # Then its runtime dependencies, where the venv lacks them (the test venv pins them in requirements-dev.txt).
    subprocess.run([python, "-m", "pip", "install", "-q", str(wheel)], check=True)
    recorded.write_text(str(wheel))


def main(argv: list[str]) -> None:
    if argv[:1] == ["install"] and len(argv) == 2:
        install(argv[1])
    elif argv == ["wheel"]:
        print(ensure_wheel())
    elif argv == ["sdist"]:
        print(ensure_sdist())
    elif argv == ["cmake-args"]:
        print(LLAMA_CMAKE_ARGS)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])

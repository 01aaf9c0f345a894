"""A load test from a second process (benches/http_load.py --quick): 64 concurrent streams over two models against a
``modelhost serve`` process, none lost or mixed up, one just-in-time load per model. Its timings are reported by the
script (and recorded in benches/results by a full run), never asserted here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(600)

SCRIPT = Path(__file__).resolve().parent.parent / "benches" / "http_load.py"


def test_64_streams_over_two_models(models_dir: Path, tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--streams", "64", "--tokens", "8", "--models-dir", str(models_dir),
         "--out-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=540, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    (result_file,) = tmp_path.glob("http-load-*.json")
    result = json.loads(result_file.read_text())
    cold = result["cold_batch"]
    assert cold["counts"] == {"lost": 0, "malformed": 0, "mixed_up": 0}
    assert cold["instances"] == sorted(
        ["HuggingFaceTB/SmolLM2-135M-Instruct-GGUF", "modelhost-bench/SmolLM2-135M-Instruct-copy-GGUF"]
    )
    assert result["failures"] == 0 and result["streams"] == 64

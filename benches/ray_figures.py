"""The figures the scale-out simulation (benches/ray_sim.py) is fed with, measured with modelhost on this machine:
per GGUF file, its size, the load time (warm page cache), the time to first token and the decode rate of a greedy
completion, on ``RAYON_NUM_THREADS`` threads (one replica's share).

Usage: python benches/ray_figures.py [--reps N] [--out benches/results/ray-figures.json] [extra.gguf ...]

Measured: SmolLM2-135M Q4_1 (the sample model) and its Q8_0 re-quantization (the Ray tests' fixture), plus any
GGUF files given (e.g. larger random-weight llama models: speed depends on size and shape, not on the values).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import modelhost

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from requantized import requantized_smollm2

PROMPT = "Here is a numbered list of the countries of Europe, one per line:\n1."
GENERATED = 64


def measure(path: Path, reps: int) -> dict[str, Any]:
    """Median (and min, max) load time, time to first token and decode rate of ``path``."""
    loads, firsts, rates = [], [], []
    with modelhost.Client(path.parent, isolated=True) as client:
        for rep in range(reps + 1):  # the first round warms the page cache and is not counted
            started = time.perf_counter()
            llm = client.llm.model(str(path), config={"contextLength": 1024})
            loaded = time.perf_counter() - started
            t0 = time.perf_counter()
            first = None
            stream = llm.complete_stream(PROMPT, config={"temperature": 0, "maxTokens": GENERATED})
            for _ in stream:
                if first is None:
                    first = time.perf_counter() - t0
            total = time.perf_counter() - t0
            result = stream.result()
            llm.unload()
            if rep == 0 or first is None:
                continue
            loads.append(loaded)
            firsts.append(first)
            rates.append((result.stats.predicted_tokens_count - 1) / max(total - first, 1e-9))

    def summary(xs: list[float]) -> dict[str, float]:
        return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}

    return {
        "file": path.name,
        "size_bytes": path.stat().st_size,
        "load_s": summary(loads),
        "first_token_s": summary(firsts),
        "decode_tok_per_s": summary(rates),
        "reps": reps,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "ray-figures.json"))
    parser.add_argument("extra", nargs="*", help="more GGUF files to measure")
    args = parser.parse_args()
    models = Path(os.environ.get("MODELHOST_MODELS_DIR", Path.home() / ".cache" / "modelhost" / "models"))
    smollm2 = models / "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF/SmolLM2-135M-Instruct.Q4_1.gguf"
    files = [smollm2, requantized_smollm2(smollm2), *map(Path, args.extra)]
    rows = []
    for path in files:
        row = measure(path, args.reps)
        rows.append(row)
        print(
            f"{row['file']:<40} {row['size_bytes'] / 1e6:7.0f} MB  load {row['load_s']['median']:.3f} s  "
            f"first token {row['first_token_s']['median']:.3f} s  {row['decode_tok_per_s']['median']:.1f} tok/s",
            flush=True,
        )
    out = {
        "what": "modelhost in-process, warm page cache, contextLength 1024, greedy, prompt of "
        f"{len(PROMPT)} characters, {GENERATED} tokens",
        "threads": os.environ.get("RAYON_NUM_THREADS", "all cores"),
        "cpu": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "modelhost": modelhost.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "models": rows,
    }
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    return 0


def cpu_model() -> str:
    """The CPU's model name, as /proc/cpuinfo gives it."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


if __name__ == "__main__":
    raise SystemExit(main())

"""Throughput of modelhost on Ray Serve on this machine: the same requests against 1 and 2 replicas (one thread
each), in interleaved rounds on one local Ray cluster.

Usage: python benches/ray_throughput.py [--rounds 2] [--requests 48] [--concurrency 8]
       [--out benches/results/ray-throughput.json]

Each round deploys the application with that many replicas, sends the requests once untimed (every replica loads
what it is routed), then once timed. The requests: greedy chat and completions of 32 tokens on SmolLM2 Q4_1 and its
Q8_0 re-quantization and MiniLM embeddings, in a seeded mix, ``--concurrency`` at a time over HTTP.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from ray_figures import cpu_model
from requantized import REQUANT_FILE, REQUANT_KEY, fixtures_dir, link_or_copy, requantized_smollm2

LLM_KEY = "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF"
LLM_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMB_KEY = "sentence-transformers/all-MiniLM-L6-v2"
TOKENS = 32
PROMPTS = ["What is the capital of France?", "Name three primary colors.", "Write a haiku about the sea."]


def models_dir() -> Path:
    source = Path(os.environ.get("MODELHOST_MODELS_DIR", Path.home() / ".cache" / "modelhost" / "models"))
    root = fixtures_dir() / "ray-models"
    link_or_copy(source / LLM_KEY / LLM_FILE, root / LLM_KEY / LLM_FILE)
    link_or_copy(source / EMB_KEY, root / EMB_KEY)
    link_or_copy(requantized_smollm2(source / LLM_KEY / LLM_FILE), root / REQUANT_KEY / REQUANT_FILE)
    return root


def requests(n: int, seed: int) -> list[tuple[str, dict[str, Any]]]:
    rng = random.Random(seed)
    out: list[tuple[str, dict[str, Any]]] = []
    for i in range(n):
        if i % 4 == 3:
            out.append(("/v1/embeddings", {"model": EMB_KEY, "input": [rng.choice(PROMPTS)] * 4}))
            continue
        model = rng.choice([LLM_KEY, REQUANT_KEY])
        body = {"model": model, "temperature": 0, "max_tokens": TOKENS, "messages": [{"role": "user"}]}
        body["messages"][0]["content"] = rng.choice(PROMPTS)
        out.append(("/v1/chat/completions", body))
    return out


def run_once(url: str, work: list[tuple[str, dict[str, Any]]], concurrency: int) -> tuple[float, int]:
    """Seconds for all requests, and the tokens generated."""

    def send(item: tuple[str, dict[str, Any]]) -> int:
        r = http.post(url + item[0], json=item[1])
        r.raise_for_status()
        usage = r.json().get("usage") or {}
        return int(usage.get("completion_tokens", 0))

    with httpx.Client(timeout=600) as http, ThreadPoolExecutor(concurrency) as pool:
        started = time.perf_counter()
        tokens = sum(pool.map(send, work))
        return time.perf_counter() - started, tokens


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "ray-throughput.json"))
    args = parser.parse_args()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import modelhost.ray as mray
        import ray
        from ray import serve

    load_before = os.getloadavg()
    directory = models_dir()
    work = requests(args.requests, seed=1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mray.init_local(num_cpus=3, temp_dir=tempfile.mkdtemp(prefix="mh-ray-bench-", dir="/tmp"))
    samples: dict[int, list[dict[str, float]]] = {1: [], 2: []}
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        url = f"http://127.0.0.1:{port}"
        for _ in range(args.rounds):
            for replicas in (1, 2):
                app = mray.app(models_dir=str(directory), replicas=replicas, threads=1, context_length=1024)
                serve.run(app, name="modelhost-bench", route_prefix="/")
                run_once(url, work, args.concurrency)  # warm-up: loads
                seconds, tokens = run_once(url, work, args.concurrency)
                samples[replicas].append(
                    {"seconds": seconds, "requests_per_s": len(work) / seconds, "tokens_per_s": tokens / seconds}
                )
                print(f"{replicas} replica(s): {seconds:.1f} s, {len(work) / seconds:.2f} req/s", flush=True)
                serve.delete("modelhost-bench")
    finally:
        serve.shutdown()
        ray.shutdown()
    summary = {
        str(k): {
            metric: {"median": statistics.median(s[metric] for s in v), "all": [s[metric] for s in v]}
            for metric in ("seconds", "requests_per_s", "tokens_per_s")
        }
        for k, v in samples.items()
    }
    # Each round's 2-replica run against the 1-replica run just before it, so load from elsewhere cancels out.
    ratios = [two["requests_per_s"] / one["requests_per_s"] for one, two in zip(samples[1], samples[2])]
    result = {
        "what": f"{len(work)} requests ({TOKENS}-token greedy chats on two SmolLM2 files, MiniLM embeddings), "
        f"{args.concurrency} at a time, 1 thread per replica, interleaved rounds",
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d"),
        "replicas": summary,
        "two_over_one": {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios), "all": ratios},
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

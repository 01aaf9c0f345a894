"""Load test of ``modelhost serve``: many concurrent streamed chat completions over two models, from this process
against a server in another.

What it checks (exit status 1 when any fails): every stream arrives whole (one id, the role first, a finish reason,
the usage chunk), none is lost, none is mixed up with another (each greedy answer equals the in-process answer to
its own prompt), and the cold batch made exactly one just-in-time load per model (no ``key:2``).

What it measures (reported, never asserted): time to first token (p50, p99) and total generated tokens per second
over HTTP, against the same requests run in-process in this process by as many threads on the same two models (the
peer: what HTTP, SSE and the server add). Rounds alternate which side goes first; the table shows the median and
the range over the rounds.

    python benches/http_load.py                  # 64 streams, 32 tokens, 3 rounds; writes benches/results/
    python benches/http_load.py --quick          # one cold batch, no rounds; writes only with --out-dir
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import modelhost as mh

ROOT = Path(__file__).resolve().parent.parent
LLM_FILE = "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF/SmolLM2-135M-Instruct.Q4_1.gguf"
# The second model: the same file under another key (a hard link in a fixtures models dir), so the server treats
# it as a model of its own, with its own just-in-time load and its own instance.
MODEL_KEYS = ("HuggingFaceTB/SmolLM2-135M-Instruct-GGUF", "modelhost-bench/SmolLM2-135M-Instruct-copy-GGUF")
FIXTURES = Path.home() / ".cache" / "modelhost" / "fixtures" / "http-load-models"


def models_dir(source: Path) -> Path:
    """The two-model fixtures dir (idempotent; hard links, so no disk cost)."""
    original = source / LLM_FILE
    for key in MODEL_KEYS:
        target = FIXTURES / key / original.name
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(original, target)
            except OSError:
                shutil.copyfile(original, target)
    return FIXTURES


def workload(streams: int) -> list[tuple[str, list[dict[str, str]]]]:
    """(model key, messages) per stream: the models alternate, every prompt differs."""
    return [
        (MODEL_KEYS[i % 2], [{"role": "user", "content": f"Write the number {i} in words, then count to ten."}])
        for i in range(streams)
    ]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summarize(ttfts: list[float], tokens: int, wall: float) -> dict[str, float]:
    return {
        "ttft_p50_s": percentile(ttfts, 50),
        "ttft_p99_s": percentile(ttfts, 99),
        "total_tokens": tokens,
        "wall_s": wall,
        "tokens_per_s": tokens / wall,
    }


class Server:
    """``modelhost serve --port 0`` in a child process."""

    def __init__(self, directory: Path, state_dir: Path) -> None:
        env = {**os.environ, "MODELHOST_STATE_DIR": str(state_dir), "LM_API_TOKEN": ""}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "modelhost", "serve", "--port", "0", "--models-dir", str(directory)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("modelhost serving on "):
            self.process.kill()
            raise SystemExit(f"the server did not start: {line!r}")
        self.url = line.split("serving on ", 1)[1].strip()

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        self.process.wait(timeout=60)


async def one_stream(
    http: httpx.AsyncClient, url: str, model: str, messages: list[dict[str, str]], max_tokens: int
) -> dict[str, Any]:
    body = {
        "model": model,
        "messages": messages,
        "temperature": 0,
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    record: dict[str, Any] = {"model": model, "ids": set(), "content": "", "finish_reason": None, "usage": None}
    started = time.perf_counter()
    first: float | None = None
    roles: list[str] = []
    async with http.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            record["error"] = f"HTTP {response.status_code}: {(await response.aread()).decode()[:200]}"
            return record
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                record["error"] = chunk["error"]
                continue
            record["ids"].add(chunk["id"])
            if chunk.get("usage"):
                record["usage"] = chunk["usage"]
            for choice in chunk["choices"]:
                delta = choice.get("delta", {})
                if delta.get("role"):
                    roles.append(delta["role"])
                if delta.get("content"):
                    first = first if first is not None else time.perf_counter()
                    record["content"] += delta["content"]
                if choice.get("finish_reason"):
                    record["finish_reason"] = choice["finish_reason"]
    ended = time.perf_counter()
    record["ttft_s"] = (first if first is not None else ended) - started
    record["roles"] = roles
    record["ids"] = sorted(record["ids"])
    return record


async def http_batch(
    url: str, work: list[tuple[str, list[dict[str, str]]]], max_tokens: int
) -> tuple[list[dict[str, Any]], float]:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=len(work))
    async with httpx.AsyncClient(timeout=httpx.Timeout(None, connect=10), limits=limits) as http:
        started = time.perf_counter()
        records = await asyncio.gather(*(one_stream(http, url, m, msgs, max_tokens) for m, msgs in work))
        return list(records), time.perf_counter() - started


def in_process_batch(
    handles: dict[str, mh.LLM], work: list[tuple[str, list[dict[str, str]]]], max_tokens: int
) -> tuple[list[dict[str, Any]], float]:
    """The same requests, one thread each, on in-process instances of the same two models."""
    records: list[dict[str, Any]] = [{} for _ in work]
    config = {"temperature": 0, "maxTokens": max_tokens}

    def run(i: int) -> None:
        model, messages = work[i]
        started = time.perf_counter()
        first: float | None = None
        stream = handles[model].respond_stream(messages, config)
        for fragment in stream:
            if fragment.content and first is None:
                first = time.perf_counter()
        result = stream.result()
        records[i] = {
            "content": result.content,
            "tokens": result.stats.predicted_tokens_count,
            "ttft_s": (first if first is not None else time.perf_counter()) - started,
        }

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(work))]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return records, time.perf_counter() - started


def check(records: list[dict[str, Any]], expected: list[dict[str, Any]]) -> dict[str, int]:
    """Counts of streams that were lost (no finish, an error, no usage), malformed, or mixed up."""
    lost = malformed = mixed = 0
    for got, want in zip(records, expected):
        if got.get("error") or got["finish_reason"] is None or got["usage"] is None:
            lost += 1
        elif len(got["ids"]) != 1 or got["roles"][:1] != ["assistant"]:
            malformed += 1
        elif got["content"] != want["content"] or got["usage"]["completion_tokens"] != want["tokens"]:
            mixed += 1
    return {"lost": lost, "malformed": malformed, "mixed_up": mixed}


def loaded_identifiers(url: str) -> list[str]:
    answer = httpx.get(f"{url}/api/modelhost/v1/models/loaded", timeout=30).json()
    return sorted(info["identifier"] for info in answer["instances"])


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"# HTTP load test, {result['date']}",
        "",
        f"{result['streams']} concurrent streamed chat completions over two models ({', '.join(MODEL_KEYS)}: "
        f"SmolLM2-135M-Instruct, GGUF Q4_1, 135M parameters, the same file under two keys), "
        f"{result['max_tokens']} greedy tokens each; `modelhost serve` in one process, the client in another, "
        f"loopback. Peer: the same requests in-process, one thread each. CPU: {m['cpu']} ({m['cores']} cores), "
        f"RAYON_NUM_THREADS={m['rayon_threads']}. {result['rounds']} rounds, alternating which side goes first; "
        "median (min-max).",
        "",
        "| metric | HTTP | in-process | HTTP ÷ in-process |",
        "|---|---|---|---|",
    ]
    for key, label in (("ttft_p50_s", "time to first token, p50 (s)"), ("ttft_p99_s", "time to first token, p99 (s)"),
                       ("tokens_per_s", "total generated tokens/s")):  # fmt: skip
        h, p = result["http"][key], result["in_process"][key]
        lines.append(
            f"| {label} | {h['median']:.3g} ({h['min']:.3g}-{h['max']:.3g}) | {p['median']:.3g} "
            f"({p['min']:.3g}-{p['max']:.3g}) | {h['median'] / p['median']:.2f} |"
        )
    cold = result["cold_batch"]
    lines += [
        "",
        f"Cold batch (the server had nothing loaded): {cold['counts']}, instances after it: "
        f"{cold['instances']}; p50/p99 time to first token {cold['summary']['ttft_p50_s']:.2f}/"
        f"{cold['summary']['ttft_p99_s']:.2f} s (includes the just-in-time loads).",
        "",
    ]
    return "\n".join(lines)


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=32, help="max tokens per stream")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="the cold batch and its checks only")
    parser.add_argument("--models-dir", type=Path, default=mh.default_models_dir())
    parser.add_argument("--out-dir", type=Path, help="where results go (default benches/results, not with --quick)")
    args = parser.parse_args()
    directory = models_dir(args.models_dir)
    work = workload(args.streams)
    sys.path.insert(0, str(ROOT / "benches"))
    from run import machine_info

    with mh.Client(directory, isolated=True) as client, tempfile.TemporaryDirectory() as state:
        handles = {key: client.llm.model(key, ttl=None) for key in MODEL_KEYS}
        expected, _ = in_process_batch(handles, work, args.tokens)
        server = Server(directory, Path(state))
        try:
            # Cold: every stream arrives while nothing is loaded; each model must load once.
            records, wall = asyncio.run(http_batch(server.url, work, args.tokens))
            counts = check(records, expected)
            instances = loaded_identifiers(server.url)
            cold = {
                "counts": counts,
                "instances": instances,
                "summary": summarize([r.get("ttft_s", 0.0) for r in records], sum(e["tokens"] for e in expected), wall),
            }
            failures = sum(counts.values()) + (instances != sorted(MODEL_KEYS))
            rounds: dict[str, list[dict[str, float]]] = {"http": [], "in_process": []}
            for r in range(0 if args.quick else args.rounds):
                for side in ("http", "in_process") if r % 2 == 0 else ("in_process", "http"):
                    if side == "http":
                        records, wall = asyncio.run(http_batch(server.url, work, args.tokens))
                        counts = check(records, expected)
                        failures += sum(counts.values())
                        tokens = sum(rec["usage"]["completion_tokens"] for rec in records if rec.get("usage"))
                    else:
                        records, wall = in_process_batch(handles, work, args.tokens)
                        tokens = sum(rec["tokens"] for rec in records)
                    rounds[side].append(summarize([rec["ttft_s"] for rec in records], tokens, wall))
            failures += loaded_identifiers(server.url) != sorted(MODEL_KEYS)
        finally:
            server.stop()
    machine = {**machine_info(), "rayon_threads": os.environ.get("RAYON_NUM_THREADS")}
    result: dict[str, Any] = {
        "date": date.today().isoformat(),
        "streams": args.streams,
        "max_tokens": args.tokens,
        "rounds": len(rounds["http"]),
        "cold_batch": cold,
        "failures": failures,
        "machine": machine,
        "samples": rounds,
    }
    if rounds["http"]:
        for side in ("http", "in_process"):
            result[side] = {
                k: spread([s[k] for s in rounds[side]]) for k in ("ttft_p50_s", "ttft_p99_s", "tokens_per_s")
            }
    print(json.dumps({k: v for k, v in result.items() if k not in ("samples", "machine")}, indent=2, default=str))
    out_dir = args.out_dir or (None if args.quick else ROOT / "benches" / "results")
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        stem = f"http-load-{result['date']}-{machine['host']}"
        (out_dir / f"{stem}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
        if rounds["http"]:
            (out_dir / f"{stem}.md").write_text(markdown(result))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

"""Real-size LLM benchmark: modelhost against llama-cpp-python on the SmolLM2-shaped 360M and 1.7B models
(benches/make_models.py) and Gemma 3 270M, in interleaved rounds.

    .venv-bench/bin/python benches/real_sizes.py [--rounds 3] [--gen 32] [--only 360m-Q4_K_M,...]

Per round and model, modelhost's worker then the peer's, each in its own process with 2 threads, on the same file:

- load: wall time of the load call, warm page cache (the file was read by the previous worker);
- second instance: modelhost's `load_new_instance` while the model is loaded (weights shared, a KV cache reserved);
  the peer has no sharing, so its number is constructing a second `Llama` on the same file;
- RSS growth after load and after the inference below, over the settled RSS before the load;
- prompt: a ~128-token prompt on a fresh context, cut from the same text by each system's tokenizer. modelhost:
  `complete(text, maxTokens 1)` of the longest prefix of the text with at most 126 tokens (the count used is the
  one its stats report); the peer: `reset(); eval(ids)` of the first 128 ids. Tok/s = prompt tokens ÷ wall time;
- generation: greedy decoding. modelhost: `complete_stream`, rate = (predicted - 1) ÷ (end - first fragment); the
  peer's pure decode: `eval([token])` one token at a time with the argmax of its logits, no Python streaming loop.

Writes benches/results/<date>-<host>-real-sizes.json and .md. A ratio is modelhost ÷ peer: the median of the
per-round ratios of the two workers' medians, with their range.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import _common as C  # noqa: E402

CACHE = Path.home() / ".cache" / "modelhost"
BENCH = CACHE / "fixtures" / "bench-models" / "modelhost-bench"
MODELS = {  # label: (file, title)
    "360m-Q4_K_M": (BENCH / "smollm2-360m-random" / "Q4_K_M.gguf", "SmolLM2-shaped 360M, Q4_K_M"),
    "360m-Q4_0": (BENCH / "smollm2-360m-random" / "Q4_0.gguf", "SmolLM2-shaped 360M, Q4_0"),
    "360m-Q8_0": (BENCH / "smollm2-360m-random" / "Q8_0.gguf", "SmolLM2-shaped 360M, Q8_0"),
    "1.7b-Q4_K_M": (BENCH / "smollm2-1.7b-random" / "Q4_K_M.gguf", "SmolLM2-shaped 1.7B, Q4_K_M"),
    "1.7b-Q4_0": (BENCH / "smollm2-1.7b-random" / "Q4_0.gguf", "SmolLM2-shaped 1.7B, Q4_0"),
    "1.7b-Q8_0": (BENCH / "smollm2-1.7b-random" / "Q8_0.gguf", "SmolLM2-shaped 1.7B, Q8_0"),
    "gemma3-270m-Q4_K_M": (
        CACHE / "models" / "google" / "gemma-3-270m-GGUF" / "gemma-3-270m-q4_k_m.gguf",
        "Gemma 3 270M, Q4_K_M (its published file)",
    ),
}
PROMPT_TOKENS = 128
CONTEXT = 2048
QUIET_WAIT_S = 5.0
# A ratio needs this many rounds (as in run.py).
MIN_ROUNDS = 3
METRICS = [  # key, label, unit, better
    ("prompt_tps", "prompt processing, 128 tokens", "tok/s", "higher"),
    ("gen_tps", "generation (decode rate)", "tok/s", "higher"),
    ("load_s", "load, warm page cache", "s", "lower"),
    ("second_s", "second instance (modelhost shares weights; the peer loads again)", "ms", "lower"),
    ("rss_load_mib", "RSS growth after load", "MiB", "lower"),
    ("rss_infer_mib", "RSS growth after inference", "MiB", "lower"),
]


def prompt_source() -> str:
    """Text of well over 128 tokens for either tokenizer; each system cuts its first 128 ids."""
    return " ".join(C.prompt_text(i) for i in range(3))


def mib(b: int) -> float:
    return b / 2**20


# ----------------------------------------------------------------------------------------------------------------
# Workers (one process per system, model and round).
# ----------------------------------------------------------------------------------------------------------------


def modelhost_worker(path: Path, gen: int, reps: int) -> dict[str, Any]:
    import modelhost as mh

    out: dict[str, Any] = {"prompt_tps": [], "gen_tps": [], "prompt_counts": [], "gen_counts": []}
    client = mh.Client(str(path.parent))
    config = {"contextLength": CONTEXT, "evalBatchSize": 512}
    base = C.settle()
    t0 = time.perf_counter()
    h = client.llm.model(str(path), config=config)
    out["load_s"] = [time.perf_counter() - t0]
    out["rss_load_mib"] = [mib(C.settle() - base)]
    t0 = time.perf_counter()
    second = client.llm.load_new_instance(str(path), "second", config=config)
    out["second_s"] = [(time.perf_counter() - t0) * 1000]
    second.unload()
    # The longest prefix of the text with at most 128 tokens (the handle tokenizes, it does not detokenize).
    source = prompt_source()
    lo, hi = 0, len(source)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if len(h.tokenize(source[:mid])) <= PROMPT_TOKENS - 2 else (lo, mid - 1)
    text = source[:lo]
    h.complete("Warm up.", config={"maxTokens": 2, "temperature": 0})
    for r in range(reps):
        t0 = time.perf_counter()
        res = h.complete(f"{r} {text}", config={"maxTokens": 1, "temperature": 0})
        dt_s = time.perf_counter() - t0
        n = int(res.stats.prompt_tokens_count)
        out["prompt_counts"].append(n)
        out["prompt_tps"].append(n / dt_s)
    for r in range(reps):
        stream = h.complete_stream(f"{r}. {text}", config={"maxTokens": gen, "temperature": 0})
        first = None
        for _ in stream:
            if first is None:
                first = time.perf_counter()
        end = time.perf_counter()
        n = int(stream.result().stats.predicted_tokens_count)
        out["gen_counts"].append(n)
        if first is not None and n > 1:
            out["gen_tps"].append((n - 1) / (end - first))
    out["rss_infer_mib"] = [mib(C.settle() - base)]
    h.unload()
    client.close()
    return out


def llama_worker(path: Path, gen: int, reps: int) -> dict[str, Any]:
    import llama_cpp
    import numpy as np

    out: dict[str, Any] = {"prompt_tps": [], "gen_tps": [], "prompt_counts": [], "gen_counts": []}
    kwargs: dict[str, Any] = dict(
        n_ctx=CONTEXT, n_threads=C.THREADS, n_threads_batch=C.THREADS, n_batch=512, use_mmap=True, verbose=False
    )
    out["system_info"] = llama_cpp.llama_print_system_info().decode(errors="replace").strip()
    out["llama_cpp_version"] = llama_cpp.__version__
    base = C.settle()
    t0 = time.perf_counter()
    h = llama_cpp.Llama(model_path=str(path), **kwargs)
    out["load_s"] = [time.perf_counter() - t0]
    out["rss_load_mib"] = [mib(C.settle() - base)]
    t0 = time.perf_counter()
    second = llama_cpp.Llama(model_path=str(path), **kwargs)
    out["second_s"] = [(time.perf_counter() - t0) * 1000]
    second.close()
    del second
    ids = list(h.tokenize(prompt_source().encode(), add_bos=True, special=True))[:PROMPT_TOKENS]
    h.reset()
    h.eval(ids[:4])
    for r in range(reps):
        prompt = [ids[0], *h.tokenize(f"{r}".encode(), add_bos=False), *ids[1:]][:PROMPT_TOKENS]
        h.reset()
        t0 = time.perf_counter()
        h.eval(prompt)
        out["prompt_tps"].append(len(prompt) / (time.perf_counter() - t0))
        out["prompt_counts"].append(len(prompt))
    for r in range(reps):
        prompt = [ids[0], *h.tokenize(f"{r}.".encode(), add_bos=False), *ids[1:]][:PROMPT_TOKENS]
        h.reset()
        h.eval(prompt)
        token = int(np.argmax(h.scores[h.n_tokens - 1]))
        t0 = time.perf_counter()
        for _ in range(gen - 1):
            h.eval([token])
            token = int(np.argmax(h.scores[h.n_tokens - 1]))
        out["gen_tps"].append((gen - 1) / (time.perf_counter() - t0))
        out["gen_counts"].append(gen)
    out["rss_infer_mib"] = [mib(C.settle() - base)]
    h.close()
    return out


# ----------------------------------------------------------------------------------------------------------------
# The run.
# ----------------------------------------------------------------------------------------------------------------


def run_worker(py: str, system: str, label: str, gen: int, reps: int, timeout: float) -> dict[str, Any]:
    cmd = [py, str(Path(__file__).resolve()), "--worker", system, "--model", label, "--gen", str(gen)]
    cmd += ["--reps", str(reps)]
    env = {**os.environ, **C.thread_env()}
    # Other sessions share these cores: wait a little for a quiet moment, and record how busy it was.
    waited, other = C.wait_quiet(QUIET_WAIT_S, window=1.0)
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        return {"error": (p.stderr or p.stdout).strip()[-2000:]}
    res: dict[str, Any] = json.loads(p.stdout.strip().splitlines()[-1])
    res["wall_s"] = wall
    res["quiet"] = {"waited_s": round(waited, 1), "other_cores_at_start": round(other, 2)}
    return res


def cpu_info() -> dict[str, Any]:
    name, flags = None, []
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name") and name is None:
            name = line.split(":", 1)[1].strip()
        if line.startswith("flags") and not flags:
            flags = line.split(":", 1)[1].split()
    wanted = ["avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16"]
    return {"cpu": name, "cores": os.cpu_count(), "isa": [f for f in wanted if f in flags]}


def cell(values: list[float]) -> str:
    if not values:
        return "—"
    return f"{statistics.median(values):.3g} [{min(values):.3g} to {max(values):.3g}]"


def markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = [
        f"# Real-size LLM benchmark: {res['date']} on {m['host']}",
        "",
        f"- CPU: {m['cpu']}, {m['cores']} cores; instruction sets present: {', '.join(m['isa'])}.",
        f"- modelhost (commit {res['commit']}): kernels at run time on this CPU: {res['modelhost_kernels']}.",
        f"- llama-cpp-python {res.get('llama_cpp_version')}: `{res.get('llama_system_info', '')}`.",
        f"- {res['rounds']} interleaved rounds per model (each: modelhost's worker, then the "
        f"peer's, each its own process, 2 threads), {res['reps']} repetitions per worker; context {CONTEXT}, "
        f"batch 512; generation {res['gen']} "
        "greedy tokens (the peer: `eval` of one token at a time). Cells: median [min to max] over every sample of "
        "every round. Ratio: modelhost ÷ peer, median of the per-round ratios [their range]. Load average at start "
        f"{res['loadavg_start']}.",
        "",
    ]
    for models in res["models"].values():
        if not models["rounds"]:
            continue
        lines += [f"## {models['title']} ({len(models['rounds'])} rounds)", ""]
        lines += ["| metric | unit | better | modelhost | llama-cpp-python | ratio |", "|---|---|---|---:|---:|---:|"]
        for key, name, unit, better in METRICS:
            ours = [v for r in models["rounds"] for v in r.get("modelhost", {}).get(key, [])]
            theirs = [v for r in models["rounds"] for v in r.get("llama", {}).get(key, [])]
            ratios = models["ratios"].get(key, [])
            ratio = (
                "—"
                if len(ratios) < MIN_ROUNDS
                else f"{statistics.median(ratios):.2f} [{min(ratios):.2f} to {max(ratios):.2f}]"
            )
            lines.append(f"| {name} | {unit} | {better} | {cell(ours)} | {cell(theirs)} | {ratio} |")
        errors = [f"{s}: {r[s]['error']}" for r in models["rounds"] for s in r if "error" in r[s]]
        if errors:
            lines += ["", "Errors: " + "; ".join(e.replace("\n", " ")[:300] for e in errors)]
        busy = [r[s]["quiet"]["other_cores_at_start"] for r in models["rounds"] for s in r if "quiet" in r[s]]
        if busy:
            lines += ["", f"Cores used by other processes when each worker started: {', '.join(map(str, busy))}."]
        lines.append("")
    return "\n".join(lines)


def write(res: dict[str, Any], out_dir: Path) -> str:
    """Write the JSON and the table; returns the table."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"{res['date']}-{res['machine']['host']}-real-sizes"
    stem.with_suffix(".json").write_text(json.dumps(res, indent=1))
    table = markdown(res)
    stem.with_suffix(".md").write_text(table)
    (out_dir / "latest-real-sizes.md").write_text(table)
    return table


def kernels_note(isa: list[str]) -> str:
    if all(f in isa for f in ("avx512f", "avx512bw", "avx512vl", "avx512_vnni")):
        vec = "AVX-VNNI (VEX) row kernels" if "avx_vnni" in isa else "AVX-512 VNNI 256-bit row kernels"
        return f"{vec} for decoding, the AVX-512 VNNI blocked GEMM for prompts (quantized types)"
    if "avx_vnni" in isa:
        return "AVX-VNNI row kernels"
    return "AVX2 row kernels"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", choices=["modelhost", "llama"], help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=2, help="repetitions of prompt and generation per worker")
    ap.add_argument("--gen", type=int, default=32, help="generated tokens per repetition")
    ap.add_argument("--only", default=None, help=f"comma-separated labels of {', '.join(MODELS)}")
    ap.add_argument("--python", default=str(ROOT / ".venv-bench" / "bin" / "python"))
    ap.add_argument("--modelhost-python", default=None, help="interpreter for modelhost's workers (default --python)")
    ap.add_argument("--out-dir", type=Path, default=HERE / "results")
    ap.add_argument("--timeout", type=float, default=600)
    args = ap.parse_args()

    if args.worker:
        path = MODELS[args.model][0]
        fn = modelhost_worker if args.worker == "modelhost" else llama_worker
        print(json.dumps(fn(path, args.gen, args.reps)))
        return 0

    labels = args.only.split(",") if args.only else list(MODELS)
    missing = [str(MODELS[lb][0]) for lb in labels if not MODELS[lb][0].exists()]
    if missing:
        print(f"missing {missing}: run benches/make_models.py / scripts/fetch_models.py", file=sys.stderr)
        return 2
    machine = {"host": socket.gethostname(), **cpu_info()}
    res: dict[str, Any] = {
        "date": dt.date.today().isoformat(),
        "machine": machine,
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip(),
        "modelhost_kernels": kernels_note(machine["isa"]),
        "rounds": args.rounds,
        "reps": args.reps,
        "gen": args.gen,
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "models": {lb: {"title": MODELS[lb][1], "rounds": [], "ratios": {}} for lb in labels},
    }
    pys = {"modelhost": args.modelhost_python or args.python, "llama": args.python}
    # Models outer, rounds inner: a run cut short keeps whole models (each round is still modelhost's worker then
    # the peer's, back to back).
    for lb in labels:
        for rnd in range(args.rounds):
            write(res, args.out_dir)  # what is done so far, should the run be cut short
            entry: dict[str, Any] = {}
            for system in ("modelhost", "llama"):
                r = run_worker(pys[system], system, lb, args.gen, args.reps, args.timeout)
                entry[system] = r
                if "system_info" in r:
                    res["llama_system_info"] = r["system_info"]
                    res["llama_cpp_version"] = r.get("llama_cpp_version")
                brief = {
                    k: round(statistics.median(v), 3)
                    for k, v in r.items()
                    if k in dict.fromkeys(m[0] for m in METRICS) and v
                }
                print(f"round {rnd + 1} {lb} {system}: {r.get('error', brief)}", file=sys.stderr, flush=True)
            res["models"][lb]["rounds"].append(entry)
            for key, *_ in METRICS:
                a, b = entry["modelhost"].get(key), entry["llama"].get(key)
                if a and b and statistics.median(b) > 0:
                    res["models"][lb]["ratios"].setdefault(key, []).append(statistics.median(a) / statistics.median(b))
    print(write(res, args.out_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

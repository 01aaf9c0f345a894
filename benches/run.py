"""Benchmark harness: modelhost against llama-cpp-python and sentence-transformers, in one run, as ratios.

    python benches/run.py            # full run (peers + modelhost), needs scripts/bench_env.sh first
    python benches/run.py --quick    # seconds-long smoke run of modelhost alone (CI): exits 1 only on errors

Each system runs in its own subprocess (benches/workers.py) with every thread pool pinned to 2 threads, on the
same model files, in interleaved rounds: every round runs modelhost's worker and then the peer's for each task
(ours, theirs, ours, theirs, ...), and a ratio is the median of the per-round ratios, shown with their range. The full
run writes benches/results/<date>-<host>.json and .md, benches/results/latest.md, and the table in
benches/README.md. See benches/README.md for what is measured and how.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import _common as C  # noqa: E402

FULL_JOBS = [("modelhost", "llm"), ("llama", "llm"), ("modelhost", "embed"), ("st", "embed"), ("modelhost", "catalog")]
QUICK_JOBS = [("modelhost", "llm"), ("modelhost", "embed"), ("modelhost", "catalog")]
PEER_NAMES = {"llama": "llama-cpp-python", "st": "sentence-transformers", "modelhost": "modelhost"}
COMPARISONS = [  # (title: model, size and weight type; task; peer system)
    ("LLM: SmolLM2-135M-Instruct, 135M parameters, Q4_1 GGUF, modelhost vs llama-cpp-python", "llm", "llama"),
    ("Embedding: all-MiniLM-L6-v2, 23M parameters, f32 safetensors, modelhost vs sentence-transformers", "embed", "st"),
]
# A ratio needs this many interleaved rounds (each a modelhost worker and a peer worker back to back).
MIN_ROUNDS = 3
LABELS = {
    "import_s": "import time",
    "load_cold_s": "load, cold page cache",
    "cold_first_token_s": "cold load → first token (load + 1-token completion)",
    "cold_first_embed_s": "cold load → first embedding",
    "load_warm_s": "load, warm page cache",
    "second_instance_s": "second instance of a loaded model (modelhost shares its weights; the peer loads again)",
    "model_hit_us": "`model(key)` hit (already loaded)",
    "prompt_tps": "prompt processing (~128-token prompt)",
    "ttft_s": "time to first token (~128-token prompt)",
    "gen_tps": "generation, 128 greedy tokens (decode rate)",
    "gen_total_s": "128-token completion, end to end",
    "gen_tps_one_core_busy": "generation with one core taken by a busy loop (32 tokens)",
    "evaluate_all_tps": "logits at every position (`evaluate` / `logits_all`)",
    "self_reported_gen_tps": "generation as reported by modelhost's stats",
    "self_reported_ttft_s": "time to first token as reported by modelhost's stats",
    "emb_sps": "throughput, 1000 sentences in batches of 32",
    "emb_sps_one_call": "throughput, 1000 sentences in one `embed` call",
    "emb_latency_ms": "single-sentence latency",
    "rss_load_mib": "RSS growth after load",
    "rss_infer_mib": "RSS growth after inference",
    "rss_unload_mib": "RSS left after unload",
    "list_models_first_ms": "`list_downloaded_models()`, 200 entries, fresh client",
    "list_models_repeat_ms": "`list_downloaded_models()`, 200 entries, repeated",
}
# Where a metric means something else for one task.
TASK_LABELS = {
    ("embed", "load_cold_s"): "load call, cold page cache (modelhost maps the weights; the first embedding reads them)",
    ("embed", "load_warm_s"): "load call, warm page cache (modelhost maps the weights; the first embedding reads them)",
}
ORDER = list(LABELS)


def label(task: str, metric: str) -> str:
    return TASK_LABELS.get((task, metric), LABELS.get(metric, metric))


NOISY_CORES = C.NOISY_CORES


def default_models_dir() -> Path:
    env = os.environ.get("MODELHOST_MODELS_DIR")
    return Path(env) if env else Path.home() / ".cache" / "modelhost" / "models"


def git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def machine_info() -> dict[str, Any]:
    cpu = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    rustflags = None
    cfg = ROOT / ".cargo" / "config.toml"
    if cfg.exists():
        m = re.search(r"rustflags\s*=\s*(\[.*?\])", cfg.read_text(), re.S)
        rustflags = m.group(1) if m else None
    mem = None
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal"):
                mem = round(int(line.split()[1]) / 2**20, 1)
    return {
        "host": socket.gethostname(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "mem_gib": mem,
        "kernel": platform.release(),
        "loadavg_start": os.getloadavg(),
        "git_commit": git("rev-parse", "--short", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain")),
        "modelhost_rustflags": rustflags,
    }


def wait_quiet(max_wait: float) -> dict[str, float]:
    waited, other = C.wait_quiet(max_wait, window=2.0)
    if other >= NOISY_CORES:
        print(f"   machine still busy after {waited:.0f} s ({other:.2f} cores used by others)", file=sys.stderr)
    return {"waited_s": round(waited, 1), "other_cores_at_start": other}


def run_job(
    py: str,
    system: str,
    task: str,
    models_dir: Path,
    reps: int,
    quick: bool,
    tmp: Path,
    timeout: float,
    max_wait: float,
) -> dict[str, Any]:
    out = tmp / f"{system}-{task}.json"
    cmd = [
        py,
        str(HERE / "workers.py"),
        system,
        task,
        "--models-dir",
        str(models_dir),
        "--out",
        str(out),
        "--reps",
        str(reps),
        "--wait-quiet",
        str(max_wait / 4),
    ] + (["--quick"] if quick else [])
    env = {**os.environ, **C.thread_env()}
    print(f"== {PEER_NAMES[system]} / {task}", file=sys.stderr, flush=True)
    quiet = wait_quiet(max_wait) if max_wait > 0 else None
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, env=env, timeout=timeout)
        rc: int | str = p.returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    wall = time.perf_counter() - t0
    if out.exists():
        res = json.loads(out.read_text())
    else:
        res = {"system": system, "task": task, "metrics": {}, "info": {}, "errors": [], "check": {}}
    if rc != 0:
        res["errors"].append(f"worker exited with {rc}")
    res["info"]["worker_wall_s"] = wall
    res["info"]["wait_quiet"] = quiet
    return res


def merge_rounds(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Fold a later round's worker result into an earlier one: samples pooled, medians recomputed; each round's own
    metrics kept (in ``rounds``) for the per-round ratios."""
    a.setdefault("rounds", [a["metrics"]]).append(b["metrics"])
    a["metrics"] = dict(a["metrics"])
    for k, m in b["metrics"].items():
        if k not in a["metrics"]:
            a["metrics"][k] = m
            continue
        old = a["metrics"][k]
        extra = {x: old[x] + m[x] for x in old if isinstance(old.get(x), list) and x != "samples" and x in m}
        a["metrics"][k] = C.summarize(old["samples"] + m["samples"], old["unit"], old["better"], **extra)
    a["errors"] += b["errors"]
    a["info"].setdefault("later_rounds", []).append(b["info"])
    return a


# ------------------------------------------------------------------------------------------------------------------
# Comparison and the markdown report
# ------------------------------------------------------------------------------------------------------------------


def round_ratios(mh_run: dict[str, Any], peer_run: dict[str, Any], metric: str) -> list[float]:
    """modelhost ÷ peer of the medians of each interleaved round (the two workers of a round ran back to back)."""
    out = []
    for a, b in zip(
        mh_run.get("rounds", [mh_run.get("metrics", {})]), peer_run.get("rounds", [peer_run.get("metrics", {})])
    ):
        x, y = a.get(metric, {}).get("median"), b.get(metric, {}).get("median")
        if x is not None and y:
            out.append(x / y)
    return out


def reading(r: float | None, better: str, metric: str) -> str:
    """Plain words for a ratio modelhost ÷ peer."""
    if r is None or not math.isfinite(r) or r <= 0:
        return ""
    if metric.startswith("rss"):
        return f"{r:.2f}x the memory"
    good = r > 1 if better == "higher" else r < 1
    factor = r if better == "higher" else 1 / r
    if factor < 1:
        factor = 1 / factor
    if abs(factor - 1) < 0.03:
        return "same"
    return f"modelhost {factor:.2f}x {'faster' if good else 'slower'}"


def fmt(x: float | None) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    ax = abs(x)
    if ax >= 100:
        return f"{x:,.0f}"
    if ax >= 10:
        return f"{x:.1f}"
    if ax >= 1:
        return f"{x:.2f}"
    if ax == 0:
        return "0"
    return f"{x:.3g}"


def cell(m: dict[str, Any] | None) -> str:
    """Median [min-max] of every sample."""
    if not m or "median" not in m:
        return "—"
    if len(m["samples"]) == 1:
        return fmt(m["median"])
    return f"{fmt(m['median'])} [{fmt(min(m['samples']))} to {fmt(max(m['samples']))}]"


def ratio_cell(r: dict[str, Any]) -> str:
    if r["ratio_median"] is None:
        return "—"
    lo, hi = r["ratio_range"]
    return f"{fmt(r['ratio_median'])} [{fmt(lo)} to {fmt(hi)}]"


def compare(runs: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for title, task, peer in COMPARISONS:
        mh_run, peer_run = runs.get(f"modelhost/{task}", {}), runs.get(f"{peer}/{task}", {})
        mh, pr = mh_run.get("metrics", {}), peer_run.get("metrics", {})
        for k in [k for k in ORDER if k in mh or k in pr] + sorted((set(mh) | set(pr)) - set(ORDER)):
            m, p = mh.get(k), pr.get(k)
            meta = m or p
            per_round = round_ratios(mh_run, peer_run, k) if m and p else []
            # Fewer rounds than MIN_ROUNDS give no ratio: one pair of workers is not a comparison on a noisy machine.
            r_med = statistics.median(per_round) if len(per_round) >= MIN_ROUNDS else None
            rows.append(
                {
                    "section": title,
                    "task": task,
                    "peer": PEER_NAMES[peer],
                    "metric": k,
                    "unit": meta["unit"],
                    "better": meta["better"],
                    "modelhost": m,
                    "peer_value": p,
                    "ratio_median": r_med,
                    "ratio_range": [min(per_round), max(per_round)] if r_med is not None else None,
                    "round_ratios": per_round,
                    "reading": reading(r_med, meta["better"], k),
                }
            )
    return rows


def checks(runs: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    a, b = runs.get("modelhost/llm", {}).get("check", {}), runs.get("llama/llm", {}).get("check", {})
    if "prompt_ids_0" in a and "prompt_ids_0" in b:
        out["prompt_tokens_identical"] = a["prompt_ids_0"] == b["prompt_ids_0"]
        out["prompt_tokens"] = [len(a["prompt_ids_0"]), len(b["prompt_ids_0"])]
    if "generated_text" in a and "generated_text" in b:
        ta, tb = a["generated_text"], b["generated_text"]
        n = next((i for i, (x, y) in enumerate(zip(ta, tb, strict=False)) if x != y), min(len(ta), len(tb)))
        out["greedy_text_common_prefix_chars"] = n
        out["greedy_text_lengths"] = [len(ta), len(tb)]
    a, b = runs.get("modelhost/embed", {}).get("check", {}), runs.get("st/embed", {}).get("check", {})
    if "vectors" in a and "vectors" in b:
        diff, cos = 0.0, 1.0
        for u, v in zip(a["vectors"], b["vectors"], strict=False):
            diff = max(diff, max(abs(x - y) for x, y in zip(u, v, strict=False)))
            nu, nv = math.sqrt(sum(x * x for x in u)), math.sqrt(sum(y * y for y in v))
            cos = min(cos, sum(x * y for x, y in zip(u, v, strict=False)) / (nu * nv) if nu and nv else 0.0)
        out["embedding_max_abs_diff"] = diff
        out["embedding_min_cosine"] = cos
    return out


def markdown(res: dict[str, Any]) -> str:
    m, env, runs = res["machine"], res.get("bench_env") or {}, res["runs"]
    pk = env.get("packages", {})
    L: list[str] = []
    L.append(f"# modelhost benchmarks: {res['date']} on {m['host']}")
    L.append("")
    L.append(
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['mem_gib']} GiB, Linux {m['kernel']}; "
        f"load average at start {', '.join(f'{x:.2f}' for x in m['loadavg_start'])}."
    )
    L.append(
        f"- Settings: {C.THREADS} threads for every system, context length {C.CONTEXT_LENGTH}, batch "
        f"{C.EVAL_BATCH}; {res['rounds']} interleaved round(s) (per task: modelhost's worker, then the peer's, each "
        f"in its own process), {res['reps']} repetitions per worker after a warm-up that is not counted. Cells are "
        "**median [min-max]** over every sample."
    )
    mh_ver = next(
        (r["info"].get("modelhost_version") for r in runs.values() if r["info"].get("modelhost_version")), None
    )
    mh_core = next((r["info"].get("modelhost_core") for r in runs.values() if r["info"].get("modelhost_core")), None)
    if mh_core and mh_core.startswith(str(ROOT) + "/"):
        mh_core = mh_core[len(str(ROOT)) + 1 :]
    L.append(
        f"- modelhost {mh_ver or pk.get('modelhost') or '?'} (commit {m['git_commit']}"
        f"{', dirty tree' if m['git_dirty'] else ''}), built with rustflags {m['modelhost_rustflags']}"
        f"{'; extension ' + '`' + mh_core + '`' if mh_core else ''}."
    )
    if pk.get("llama-cpp-python"):
        lk = runs.get("llama/llm", {}).get("info", {}).get("llama_kwargs", {})
        extra = (
            "`use_extra_bufts=False` passed"
            if "use_extra_bufts" in lk
            else "`use_extra_bufts` not in this version, not passed"
        )
        L.append(
            f"- llama-cpp-python {pk['llama-cpp-python']} built from source with "
            f"`CMAKE_ARGS='{env.get('llama_cpp_cmake_args', '')}'`; {extra}."
        )
    if pk.get("sentence-transformers"):
        L.append(
            f"- sentence-transformers {pk['sentence-transformers']}, torch {pk.get('torch')} "
            f"(CUDA build {env.get('torch_cuda_build')}, run on the CPU), transformers {pk.get('transformers')}."
        )
    if res["quick"]:
        L.append(
            "- **Quick smoke run**: 16 generated tokens instead of 128, 64 sentences instead of 1000, 20 catalog "
            "entries instead of 200; the labels below name the full run's sizes. Not for comparisons."
        )
    L.append("")
    L.append(
        "A ratio is modelhost ÷ peer: the median over the rounds of each round's ratio of medians, with the range of "
        f"those per-round ratios in brackets (none with fewer than {MIN_ROUNDS} rounds); the *better* column says "
        "which direction wins."
    )
    rows = compare(runs)
    for title, task, peer in COMPARISONS:
        sect = [r for r in rows if r["task"] == task]
        if not sect:
            continue
        if f"{peer}/{task}" in runs:
            L += [
                "",
                f"## {title}",
                "",
                f"| metric | unit | better | modelhost | {PEER_NAMES[peer]} | ratio | reading |",
                "|---|---|---|---:|---:|---:|---|",
            ]
            for r in sect:
                L.append(
                    f"| {label(task, r['metric'])} | {r['unit']} | {r['better']} | "
                    f"{cell(r['modelhost'])} | {cell(r['peer_value'])} | {ratio_cell(r)} | "
                    f"{r['reading']} |"
                )
        else:
            L += [
                "",
                f"## {title.split(',')[0]}: modelhost alone",
                "",
                "| metric | unit | better | modelhost |",
                "|---|---|---|---:|",
            ]
            for r in sect:
                L.append(f"| {label(task, r['metric'])} | {r['unit']} | {r['better']} | {cell(r['modelhost'])} |")
    cat = runs.get("modelhost/catalog", {}).get("metrics", {})
    if cat:
        L += ["", "## modelhost only: catalog", "", "| metric | unit | modelhost |", "|---|---|---:|"]
        for k, v in cat.items():
            L.append(f"| {LABELS.get(k, k)} | {v['unit']} | {cell(v)} |")
    ck = res.get("checks", {})
    if ck:
        L += ["", "## Same work?", ""]
        if "prompt_tokens_identical" in ck:
            L.append(
                f"- Prompt token ids identical: {'yes' if ck['prompt_tokens_identical'] else 'NO'} "
                f"({ck['prompt_tokens'][0]} / {ck['prompt_tokens'][1]} tokens)."
            )
        if "greedy_text_common_prefix_chars" in ck:
            L.append(
                f"- Greedy continuations agree on their first {ck['greedy_text_common_prefix_chars']} characters "
                f"(lengths {ck['greedy_text_lengths'][0]} / {ck['greedy_text_lengths'][1]}); near-ties may "
                "legitimately flip between kernels (SPEC §6)."
            )
        if "embedding_max_abs_diff" in ck:
            L.append(
                f"- Embeddings: max abs difference {ck['embedding_max_abs_diff']:.2e}, min cosine "
                f"{ck['embedding_min_cosine']:.7f}."
            )
        for key in ("modelhost/llm", "llama/llm"):
            g = runs.get(key, {}).get("metrics", {}).get("gen_tps", {})
            if g.get("predicted"):
                L.append(
                    f"- {PEER_NAMES[key.split('/')[0]]} generated {sorted(set(g['predicted']))} tokens per "
                    "128-token request."
                )
    L += [
        "",
        "## Noise",
        "",
        "Cores used by other processes (and stolen by the hypervisor) while each worker ran; the machine is "
        "shared, so a round with more than ~0.2 is suspect; the per-round ratios show how far it moved them.",
        "",
    ]
    for key, r in runs.items():
        for i, info in enumerate([r["info"], *r["info"].get("later_rounds", [])]):
            cpu = info.get("cpu_while_running")
            if not cpu:
                continue
            # the section that loads a core on purpose is not noise
            secs = [v for k, v in info.get("sections", {}).items() if "busy" not in k]
            busy = max((v.get("other_processes_cores", 0) for v in secs if v["wall_s"] >= 1), default=0)
            wall = sum(v["wall_s"] for v in secs)
            if wall > 0:
                cpu = {
                    x: sum(v.get(x, 0) * v["wall_s"] for v in secs) / wall
                    for x in ("other_processes_cores", "steal_cores")
                }
            flag = " **(busy)**" if cpu["other_processes_cores"] + cpu["steal_cores"] > NOISY_CORES else ""
            rnd = f" round {i + 1}" if r["info"].get("later_rounds") else ""
            q = info.get("quiet")
            qs = (
                f"; waited {q['waited_s']:.0f} s for quiet, {q['reps_started_busy']} of {q['reps']} timed "
                "repetitions still started busy"
                if q
                else ""
            )
            L.append(
                f"- {key}{rnd}: other processes {cpu['other_processes_cores']:.2f} cores on average (worst "
                f"section {busy:.2f}), steal {cpu['steal_cores']:.2f}; worker wall "
                f"{info.get('worker_wall_s', 0):.0f} s{qs}{flag}."
            )
    errs = [f"{k}: {e}" for k, r in runs.items() for e in r.get("errors", [])]
    if errs:
        L += ["", "## Errors", ""] + [f"- {e}" for e in errs]
    return "\n".join(L) + "\n"


def update_readme(table: str) -> None:
    readme = HERE / "README.md"
    if not readme.exists():
        return
    text = readme.read_text()
    start, end = "<!-- bench:latest -->", "<!-- /bench:latest -->"
    if start not in text or end not in text:
        return
    body = table.replace("\n# ", "\n### ").replace("\n## ", "\n#### ")
    body = re.sub(r"^# ", "### ", body)
    new = text[: text.index(start) + len(start)] + "\n" + body + text[text.index(end) :]
    readme.write_text(new)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="modelhost alone, 1 repetition, small workloads (CI)")
    ap.add_argument("--reps", type=int, default=None, help="repetitions per metric (default 5; 1 with --quick)")
    ap.add_argument(
        "--python",
        default=None,
        help="interpreter for the workers (default: .venv-bench/bin/python; with --quick this one)",
    )
    ap.add_argument(
        "--modelhost-python",
        default=None,
        help="interpreter for the modelhost workers only (e.g. .venv/bin/python with a `maturin develop --release` "
        "build); default: the same as --python",
    )
    ap.add_argument("--models-dir", type=Path, default=default_models_dir())
    ap.add_argument(
        "--out-dir",
        type=Path,
        default=None,
        help="where results go (default benches/results; with --quick a temp dir, nothing kept)",
    )
    ap.add_argument("--only", choices=["modelhost", "peers"], default=None, help="run one side only")
    ap.add_argument(
        "--tasks",
        default=None,
        help="comma-separated tasks to run (llm, embed, catalog; default all), e.g. where only one peer is installed",
    )
    ap.add_argument("--report", type=Path, default=None, help="re-render the markdown of a results JSON, run nothing")
    ap.add_argument(
        "--rounds",
        type=int,
        default=None,
        help=f"interleaved rounds: each runs, per task, modelhost's worker then the peer's (default {MIN_ROUNDS}, "
        f"the fewest that give a ratio; 1 with --quick)",
    )
    ap.add_argument("--timeout", type=float, default=1800, help="per-worker timeout in seconds")
    ap.add_argument(
        "--wait-quiet",
        type=float,
        default=None,
        metavar="S",
        help="before each worker, wait up to S seconds for other processes to go quiet, and up to S/4 "
        "before each timed repetition (default 120; 0 with --quick)",
    )
    args = ap.parse_args()

    if args.report:
        res = json.loads(args.report.read_text())
        table = markdown(res)
        print(table)
        if args.report.resolve().parent == (HERE / "results").resolve() and not res["quick"]:
            args.report.with_suffix(".md").write_text(table)
            (HERE / "results" / "latest.md").write_text(table)
            update_readme(table)
        return 0
    reps = args.reps or (1 if args.quick else 3)
    rounds = args.rounds or (1 if args.quick else MIN_ROUNDS)
    if args.python:
        py = args.python
    elif args.quick:
        py = sys.executable
    else:
        py = str(ROOT / ".venv-bench" / "bin" / "python")
        if not Path(py).exists():
            print("no .venv-bench: run scripts/bench_env.sh first (or pass --python)", file=sys.stderr)
            return 2
    for rel in (C.LLM_FILE, C.EMB_DIR):
        if not (args.models_dir / rel).exists():
            print(f"missing {args.models_dir / rel}: run python scripts/fetch_models.py", file=sys.stderr)
            return 2

    max_wait = args.wait_quiet if args.wait_quiet is not None else (0.0 if args.quick else 120.0)
    jobs = QUICK_JOBS if args.quick else FULL_JOBS
    if args.only == "modelhost":
        jobs = [j for j in jobs if j[0] == "modelhost"]
    elif args.only == "peers":
        jobs = [j for j in jobs if j[0] != "modelhost"]
    if args.tasks:
        wanted = set(args.tasks.split(","))
        jobs = [j for j in jobs if j[1] in wanted]

    env_file = Path(py).resolve().parent.parent / "bench-env.json"
    if not env_file.exists():
        env_file = ROOT / ".venv-bench" / "bench-env.json"
    bench_env = json.loads(env_file.read_text()) if env_file.exists() and not args.quick else None
    res: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d"),
        "time_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "quick": args.quick,
        "reps": reps,
        "rounds": rounds,
        "threads": C.THREADS,
        "context_length": C.CONTEXT_LENGTH,
        "models_dir": str(args.models_dir),
        "modelhost_python": args.modelhost_python or py,
        "worker_python": py,
        "machine": machine_info(),
        "bench_env": bench_env,
        "runs": {},
    }
    partial = None
    if not (args.quick and args.out_dir is None):
        (args.out_dir or HERE / "results").mkdir(parents=True, exist_ok=True)
        partial = (args.out_dir or HERE / "results") / f"{res['date']}-{res['machine']['host']}.json.tmp"
    with tempfile.TemporaryDirectory(prefix="modelhost-bench-") as tmp:
        for _ in range(rounds):
            # Interleaved: the jobs list each task's modelhost worker before its peer's, so every round measures the
            # pair back to back (ours, theirs, ours, theirs, ...) and a ratio compares like moments of the machine.
            for system, task in jobs:
                job_py = args.modelhost_python if system == "modelhost" and args.modelhost_python else py
                r = run_job(job_py, system, task, args.models_dir, reps, args.quick, Path(tmp), args.timeout, max_wait)
                key = f"{system}/{task}"
                res["runs"][key] = merge_rounds(res["runs"][key], r) if key in res["runs"] else r
                if partial:  # what is done so far survives an interrupted run
                    partial.write_text(json.dumps(res, indent=1) + "\n")
    res["machine"]["loadavg_end"] = os.getloadavg()
    res["comparisons"] = compare(res["runs"])
    res["checks"] = checks(res["runs"])
    table = markdown(res)
    print(table)

    if args.quick and args.out_dir is None:
        pass
    else:
        out_dir = args.out_dir or HERE / "results"
        out_dir.mkdir(parents=True, exist_ok=True)
        stem = f"{res['date']}-{res['machine']['host']}" + ("-quick" if args.quick else "")
        (out_dir / f"{stem}.json").write_text(json.dumps(res, indent=1) + "\n")
        (out_dir / f"{stem}.md").write_text(table)
        if not args.quick and args.only is None and args.tasks is None:
            (out_dir / "latest.md").write_text(table)
            if out_dir.resolve() == (HERE / "results").resolve():
                update_readme(table)
        print(f"wrote {out_dir / stem}.json and .md", file=sys.stderr)
    if partial:
        partial.unlink(missing_ok=True)

    errors = [e for r in res["runs"].values() for e in r.get("errors", [])]
    if errors:
        print(f"{len(errors)} error(s):", *errors, sep="\n  ", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

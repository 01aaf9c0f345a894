"""Long-running reliability checks on the real models: load/unload cycles (leaks), a TTL storm (eviction in flight)
and a concurrency soak (8 threads of mixed operations with invariants checked after every step).

The test suite runs short modes of the same functions (tests/test_resources.py, tests/test_soak.py); this script
runs the long ones and prints a JSON report:

    python scripts/soak.py --cycles 1000 --storm-seconds 60 --soak-seconds 300

Exit status 1 if an invariant broke or a figure is out of bounds (RSS growth over 5 MB, descriptors or threads
above baseline, a request evicted in flight).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import modelhost as mh
from modelhost import _core

LLM_KEY = "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF"
LLM_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMB_KEY = "sentence-transformers/all-MiniLM-L6-v2"
EMB_DIR = "all-MiniLM-L6-v2"
RSS_SLACK = 5 * 1024 * 1024
# Small contexts keep 100 instances' KV caches small; evalBatchSize must not exceed the context.
SMALL = {"contextLength": 64, "evalBatchSize": 64}


def default_models_dir() -> Path:
    env = os.environ.get("MODELHOST_MODELS_DIR")
    return Path(env) if env else Path.home() / ".cache" / "modelhost" / "models"


def _status(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def rss() -> int:
    """Resident set size after a garbage collection (and glibc's trim, so freed arenas are not counted)."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    return _status("VmRSS") * 1024


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def threads() -> int:
    return _status("Threads")


def _wait_unloaded(handle: mh.ModelHandle, timeout: float = 10) -> None:
    end = time.monotonic() + timeout
    while handle.is_loaded():
        if time.monotonic() > end:
            raise AssertionError(f"{handle.identifier} still loaded {timeout} s after unload()")
        time.sleep(0.005)


# --- load/unload cycles -------------------------------------------------------------------------------------------


def cycles(models_dir: Path, n: int, *, every_request: int = 10, verbose: bool = False) -> dict[str, Any]:
    """``n`` load/unload cycles of SmolLM2 (a 2-token request every ``every_request`` cycles), after one warm-up
    cycle. Returns RSS, descriptor, thread and mapping counts at the start and the end."""
    with mh.Client(models_dir) as client:
        warm = client.llm.load_new_instance(LLM_KEY, ttl=None, config=SMALL)
        warm.complete("Hello", {"maxTokens": 2})
        warm.unload()
        _wait_unloaded(warm)
        start = {"rss": rss(), "fds": fds(), "threads": threads(), "mapped": _core.mapped_file_count()}
        peak_rss = start["rss"]
        t0 = time.monotonic()
        for i in range(n):
            llm = client.llm.load_new_instance(LLM_KEY, ttl=None, config=SMALL)
            assert llm.tokenize("Hello world") == [19556, 905]
            if i % every_request == 0:
                assert llm.complete("Hello", {"maxTokens": 2}).stats.predicted_tokens_count == 2
            llm.unload()
            _wait_unloaded(llm)
            if i % 100 == 99:
                now = rss()
                peak_rss = max(peak_rss, now)
                if verbose:
                    print(f"cycle {i + 1}: rss {now / 2**20:.1f} MiB, fds {fds()}, threads {threads()}", flush=True)
        elapsed = time.monotonic() - t0
        assert client.llm.list_loaded() == []
        end = {"rss": rss(), "fds": fds(), "threads": threads(), "mapped": _core.mapped_file_count()}
    return {
        "cycles": n,
        "seconds": round(elapsed, 1),
        "rss_start_mib": round(start["rss"] / 2**20, 2),
        "rss_end_mib": round(end["rss"] / 2**20, 2),
        "rss_peak_mib": round(max(peak_rss, end["rss"]) / 2**20, 2),
        "rss_growth": end["rss"] - start["rss"],
        "fds_start": start["fds"],
        "fds_end": end["fds"],
        "threads_start": start["threads"],
        "threads_end": end["threads"],
        "mapped_start": start["mapped"],
        "mapped_end": end["mapped"],
    }


# --- TTL storm ----------------------------------------------------------------------------------------------------


def ttl_storm(models_dir: Path, *, instances: int, seconds: float, threads: int, seed: int) -> dict[str, Any]:
    """Load ``instances`` instances with random TTLs (0.05 to 0.5 s) and keep reloading evicted ones, while
    ``threads`` threads run short requests on random instances. A request whose stream started must finish; only
    the start may be refused (the instance was already evicted)."""
    rng = random.Random(seed)
    lock = threading.Lock()
    handles: list[mh.LLM] = []
    stop = threading.Event()
    stats: Counter[str] = Counter()
    in_flight_failures: list[str] = []

    with mh.Client(models_dir) as client:

        def load_one() -> None:
            with lock:
                ttl = rng.uniform(0.05, 0.5)
            h = client.llm.load_new_instance(LLM_KEY, ttl=ttl, config=SMALL)
            with lock:
                handles.append(h)
                stats["loaded"] += 1

        def requester(worker_seed: int) -> None:
            wrng = random.Random(worker_seed)
            while not stop.is_set():
                with lock:
                    h = wrng.choice(handles) if handles else None
                if h is None:
                    time.sleep(0.01)
                    continue
                try:
                    stream = h.complete_stream("1, 2, 3,", {"maxTokens": wrng.randint(1, 4), "temperature": 0})
                except mh.ModelUnloadedError:
                    with lock:
                        stats["refused_at_start"] += 1
                    continue
                try:
                    result = stream.result()
                    assert result.stats.predicted_tokens_count is not None
                    with lock:
                        stats["completed"] += 1
                except mh.ModelUnloadedError as e:
                    with lock:
                        in_flight_failures.append(f"{h.identifier}: {e}")
                except BaseException as e:
                    with lock:
                        in_flight_failures.append(f"{h.identifier}: {e!r}")

        for _ in range(instances):
            load_one()
        workers = [threading.Thread(target=requester, args=(seed * 100 + i,)) for i in range(threads)]
        for w in workers:
            w.start()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            with lock:
                gone = [h for h in handles if not h.is_loaded()]
                for h in gone:
                    handles.remove(h)
                stats["evicted"] += len(gone)
            for _ in range(min(len(gone), 10)):
                load_one()
            time.sleep(0.05)
        stop.set()
        for w in workers:
            w.join(60)
        hung = sum(w.is_alive() for w in workers)
    return {
        "instances": instances,
        "seconds": seconds,
        "loaded": stats["loaded"],
        "evicted": stats["evicted"],
        "completed": stats["completed"],
        "refused_at_start": stats["refused_at_start"],
        "in_flight_failures": in_flight_failures + (["a requester hung"] if hung else []),
    }


# --- concurrency soak ---------------------------------------------------------------------------------------------

OPS = ("model", "load_new_instance", "respond", "embed", "unload", "list_loaded")
MAX_INSTANCES = 12


class Soak:
    """Shared state of the soak: the handles alive, what each identifier was loaded as, the violations found."""

    def __init__(self, client: mh.Client, models_dir: Path, seed: int) -> None:
        self.client = client
        self.paths = {
            LLM_KEY: os.path.realpath(models_dir / LLM_KEY / LLM_FILE),
            EMB_KEY: os.path.realpath(models_dir / EMB_KEY),
        }
        self.lock = threading.Lock()
        self.handles: list[mh.ModelHandle] = []
        self.loaded_as: dict[str, str] = {}  # identifier → model key, over the whole run
        self.ops: Counter[str] = Counter()
        self.outcomes: Counter[str] = Counter()
        self.violations: list[str] = []
        self.seed = seed

    def violation(self, message: str) -> None:
        with self.lock:
            self.violations.append(message)

    def remember(self, handle: mh.ModelHandle, key: str) -> None:
        if handle.model_key != key:
            self.violation(f"{handle.identifier}: loaded as {key} but its model_key is {handle.model_key}")
        with self.lock:
            previous = self.loaded_as.setdefault(handle.identifier, key)
            if previous != key:
                self.violations.append(f"identifier {handle.identifier} was {previous}, now {key}")
            if handle not in self.handles:
                self.handles.append(handle)

    def check_handle(self, handle: mh.ModelHandle, key: str) -> None:
        """The handle still is what it was loaded as (or is unloaded)."""
        if handle.model_key != key:
            self.violation(f"{handle.identifier}: model_key changed to {handle.model_key}")
        try:
            info = handle.get_info()
        except mh.ModelUnloadedError:
            return
        if os.path.realpath(info.path) != self.paths[key]:
            self.violation(f"{handle.identifier}: path {info.path}, expected {self.paths[key]}")
        if info.identifier != handle.identifier:
            self.violation(f"{handle.identifier}: get_info() says identifier {info.identifier}")

    def check_listing(self) -> None:
        listed = self.client.list_loaded_models()
        ids = [h.identifier for h in listed]
        if len(ids) != len(set(ids)):
            self.violation(f"duplicate identifiers in list_loaded: {sorted(ids)}")
        for h in listed:
            key = h.model_key
            if key not in self.paths:
                self.violation(f"{h.identifier}: unknown model key {key}")
                continue
            with self.lock:
                known = self.loaded_as.get(h.identifier)
            if known is not None and known != key:
                self.violation(f"list_loaded: {h.identifier} is {key}, was loaded as {known}")
            self.check_handle(h, key)

    def pick(self, rng: random.Random, kind: type[mh.ModelHandle] | None = None) -> mh.ModelHandle | None:
        with self.lock:
            candidates = [h for h in self.handles if kind is None or isinstance(h, kind)]
        return rng.choice(candidates) if candidates else None

    def step(self, rng: random.Random) -> None:
        op = rng.choice(OPS)
        self.ops[op] += 1
        ns = rng.choice(("llm", "embedding"))
        key = LLM_KEY if ns == "llm" else EMB_KEY
        namespace = self.client.llm if ns == "llm" else self.client.embedding
        try:
            if op == "model":
                h = namespace.model(key, ttl=rng.choice([None, 0.2, 2.0]), config=SMALL if ns == "llm" else None)
                self.remember(h, key)
                self.check_handle(h, key)
            elif op == "load_new_instance":
                if len(self.client.list_loaded_models()) >= MAX_INSTANCES:
                    self.outcomes["load_skipped_full"] += 1
                    return
                h = namespace.load_new_instance(
                    key, ttl=rng.choice([None, 0.3, 3.0]), config=SMALL if ns == "llm" else None
                )
                self.remember(h, key)
                self.check_handle(h, key)
            elif op == "respond":
                llm = self.pick(rng, mh.LLM)
                if llm is None:
                    return
                assert isinstance(llm, mh.LLM)
                result = llm.respond("Say hi", {"maxTokens": rng.randint(1, 4)})
                if not 1 <= (result.stats.predicted_tokens_count or 0) <= 4:
                    self.violation(f"{llm.identifier}: {result.stats.predicted_tokens_count} tokens for maxTokens<=4")
                self.check_handle(llm, LLM_KEY)
            elif op == "embed":
                emb = self.pick(rng, mh.EmbeddingModel)
                if emb is None:
                    return
                assert isinstance(emb, mh.EmbeddingModel)
                vectors = emb.embed(["soak test", "another sentence"])
                if vectors.shape != (2, 384):
                    self.violation(f"{emb.identifier}: embed gave shape {vectors.shape}")
                self.check_handle(emb, EMB_KEY)
            elif op == "unload":
                h = self.pick(rng)
                if h is None:
                    return
                h.unload()
                with self.lock:
                    if h in self.handles:
                        self.handles.remove(h)
            elif op == "list_loaded":
                pass  # checked below, as after every step
            self.outcomes[f"{op}_ok"] += 1
        except mh.ModelUnloadedError:
            # Another thread (or a TTL) unloaded it first: allowed, and the handle is dropped.
            self.outcomes[f"{op}_unloaded"] += 1
        except mh.NoModelLoadedError:
            self.outcomes[f"{op}_none"] += 1
        except Exception as e:
            self.violation(f"{op} on {ns}: {e!r}")
        self.check_listing()


def concurrency_soak(models_dir: Path, *, seconds: float, threads: int = 8, seed: int = 0) -> dict[str, Any]:
    """``threads`` threads of random operations for ``seconds``; returns operation counts and violations."""
    with mh.Client(models_dir) as client:
        soak = Soak(client, models_dir, seed)
        stop = time.monotonic() + seconds
        steps = Counter[int]()

        def worker(i: int) -> None:
            rng = random.Random(seed * 1000 + i)
            while time.monotonic() < stop:
                soak.step(rng)
                steps[i] += 1

        workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(seconds + 120)
        if any(w.is_alive() for w in workers):
            soak.violation("a worker hung")
        peak_identifiers = len(soak.loaded_as)
        for h in client.list_loaded_models():
            h.unload()
        if client.list_loaded_models():
            soak.violation("instances left after unloading all")
    if _core.mapped_file_count() != 0:
        soak.violation(f"{_core.mapped_file_count()} files still mapped after close")
    return {
        "seconds": seconds,
        "threads": threads,
        "steps": sum(steps.values()),
        "ops": dict(soak.ops),
        "outcomes": dict(sorted(soak.outcomes.items())),
        "identifiers_seen": peak_identifiers,
        "violations": soak.violations,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, default=default_models_dir())
    parser.add_argument("--cycles", type=int, default=1000, help="load/unload cycles (0: skip)")
    parser.add_argument("--storm-seconds", type=float, default=60.0, help="TTL storm duration (0: skip)")
    parser.add_argument("--storm-instances", type=int, default=100)
    parser.add_argument("--soak-seconds", type=float, default=300.0, help="concurrency soak duration (0: skip)")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)

    report: dict[str, Any] = {}
    ok = True
    if args.cycles:
        r = report["cycles"] = cycles(args.models_dir, args.cycles, verbose=True)
        ok &= r["rss_growth"] < RSS_SLACK and r["fds_end"] <= r["fds_start"] and r["threads_end"] <= r["threads_start"]
        print(json.dumps({"cycles": r}), flush=True)
    if args.storm_seconds:
        r = report["ttl_storm"] = ttl_storm(
            args.models_dir, instances=args.storm_instances, seconds=args.storm_seconds, threads=4, seed=args.seed
        )
        ok &= not r["in_flight_failures"]
        print(json.dumps({"ttl_storm": r}), flush=True)
    if args.soak_seconds:
        r = report["soak"] = concurrency_soak(
            args.models_dir, seconds=args.soak_seconds, threads=args.threads, seed=args.seed
        )
        ok &= not r["violations"]
        print(json.dumps({"soak": r}), flush=True)
    report["ok"] = ok
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

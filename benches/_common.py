"""Helpers shared by the benchmark workers: clocks, statistics, RSS, the page cache, and the workloads.

Everything here is deterministic (fixed texts, fixed seeds) so that every system sees the same inputs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import mmap
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# Model files, relative to the models dir (the layout scripts/fetch_models.py produces).
LLM_KEY = "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF"
LLM_FILE = "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF/SmolLM2-135M-Instruct.Q4_1.gguf"
EMB_KEY = "sentence-transformers/all-MiniLM-L6-v2"
EMB_DIR = "sentence-transformers/all-MiniLM-L6-v2"

THREADS = 2
CONTEXT_LENGTH = 2048
EVAL_BATCH = 512
GEN_TOKENS = 128
N_SENTENCES = 1000
EMB_BATCH = 32
CATALOG_ENTRIES = 200

# ~128 tokens of plain prose (SmolLM2's tokenizer), ending in an open numbered list: greedy decoding keeps
# writing list items instead of stopping at an end-of-generation token, so 128 tokens are really generated.
PROMPT_BODY = (
    "The lighthouse keeper kept a careful log of every ship that passed the headland. Each morning he climbed "
    "the spiral stairs, cleaned the great lens, trimmed the wick and wrote down the weather, the direction of "
    "the wind and the height of the waves. In the evenings he read old almanacs by the light of a small oil "
    "lamp and listened to the sea. Over forty years he filled more than a hundred notebooks. When he retired, "
    "the harbour master asked him to write down the most important lessons he had learned. He wrote the "
    "following list of rules for keepers:\n\n1."
)
# A different first word per call: no system can answer a repeated prompt from a cached KV prefix.
PROMPT_OPENERS = [
    "Story",
    "Once",
    "Today",
    "Here",
    "Note",
    "Long",
    "After",
    "Then",
    "Later",
    "First",
    "Last",
    "Also",
    "Again",
    "Still",
    "So",
    "Now",
    "Yes",
    "Well",
    "Soon",
    "Thus",
]


def prompt_text(i: int) -> str:
    """The i-th benchmark prompt (distinct first word, same body)."""
    return f"{PROMPT_OPENERS[i % len(PROMPT_OPENERS)]}: {PROMPT_BODY}"


def sentences(n: int = N_SENTENCES, seed: int = 0) -> list[str]:
    """n short English sentences (~10-16 MiniLM tokens each), deterministic."""
    rng = random.Random(seed)
    subjects = [
        "The old fisherman",
        "A young engineer",
        "My neighbour",
        "The quiet student",
        "Our team lead",
        "The city council",
        "A hungry fox",
        "The night nurse",
        "Her little brother",
        "The tour guide",
    ]
    verbs = [
        "repaired",
        "described",
        "painted",
        "ignored",
        "carried",
        "photographed",
        "measured",
        "sold",
        "borrowed",
        "cleaned",
    ]
    objects = [
        "the broken bicycle",
        "a wooden boat",
        "the red umbrella",
        "an ancient map",
        "the coffee machine",
        "a box of apples",
        "the garden fence",
        "a strange letter",
        "the school bus",
        "the kitchen table",
    ]
    tails = [
        "before sunrise.",
        "near the river.",
        "after the long meeting.",
        "in the pouring rain.",
        "without saying a word.",
        "for the third time this week.",
        "at the edge of town.",
        "during the holidays.",
        "with great care.",
        "on a cold Tuesday.",
    ]
    return [f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)} {rng.choice(tails)}" for _ in range(n)]


def now() -> float:
    return time.perf_counter()


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def rss_bytes() -> int:
    """Resident set size of this process (psutil if present, else /proc)."""
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def settle() -> int:
    """Collect garbage, give background threads a moment, and return RSS."""
    gc.collect()
    time.sleep(0.2)
    gc.collect()
    return rss_bytes()


def files_of(path: Path) -> list[Path]:
    return [p for p in sorted(path.rglob("*")) if p.is_file()] if path.is_dir() else [path]


def drop_page_cache(path: Path) -> None:
    """Ask the kernel to drop a file's (or a folder's files') clean pages: posix_fadvise(DONTNEED).

    Pages still mapped by some process stay; callers unload first.
    """
    for p in files_of(path):
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]


def resident_fraction(path: Path) -> float:
    """Fraction of a file's (or folder's) bytes that are in the page cache now (mincore), to check a cold start."""
    total = resident = 0
    page = mmap.PAGESIZE
    for p in files_of(path):
        size = p.stat().st_size
        if size == 0:
            continue
        fd = os.open(p, os.O_RDONLY)
        try:
            addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
            if addr in (None, ctypes.c_void_p(-1).value):
                raise OSError(ctypes.get_errno(), f"mmap {p}")
            try:
                pages = (size + page - 1) // page
                vec = (ctypes.c_ubyte * pages)()
                if _libc.mincore(addr, size, vec) != 0:
                    raise OSError(ctypes.get_errno(), f"mincore {p}")
                resident += sum(b & 1 for b in vec) * page
            finally:
                _libc.munmap(addr, size)
        finally:
            os.close(fd)
        total += size
    return min(1.0, resident / total) if total else 0.0


def summarize(samples: Iterable[float], unit: str, better: str, **extra: Any) -> dict[str, Any]:
    """A metric: raw samples, median, and best (min for lower-is-better, max for higher-is-better)."""
    xs = [float(x) for x in samples]
    out: dict[str, Any] = {"unit": unit, "better": better, "samples": xs}
    if xs:
        out["median"] = statistics.median(xs)
        out["best"] = min(xs) if better == "lower" else max(xs)
    out.update(extra)
    return out


def thread_env() -> dict[str, str]:
    """Environment that pins every thread pool we know of to THREADS."""
    n = str(THREADS)
    return {
        "RAYON_NUM_THREADS": n,
        "OMP_NUM_THREADS": n,
        "MKL_NUM_THREADS": n,
        "OPENBLAS_NUM_THREADS": n,
        "TOKENIZERS_PARALLELISM": "true",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "TRANSFORMERS_VERBOSITY": "error",
        "TQDM_DISABLE": "1",
    }


def cpu_counters() -> tuple[float, float, float, float]:
    """(wall s, whole-machine busy CPU s, steal CPU s, this process's CPU s), for CpuNoise."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    # user nice system idle iowait irq softirq steal ...
    busy = sum(fields[i] for i in (0, 1, 2, 5, 6) if i < len(fields)) / tick
    steal = (fields[7] if len(fields) > 7 else 0) / tick
    t = os.times()
    return time.perf_counter(), busy, steal, t.user + t.system


def other_load(start: tuple[float, float, float, float]) -> dict[str, float]:
    """How many cores other processes (and the hypervisor, as steal) used while we ran: the noise level."""
    end = cpu_counters()
    wall = max(end[0] - start[0], 1e-9)
    return {
        "other_processes_cores": round(max(0.0, (end[1] - start[1]) - (end[3] - start[3])) / wall, 3),
        "steal_cores": round((end[2] - start[2]) / wall, 3),
        "self_cores": round((end[3] - start[3]) / wall, 3),
    }


NOISY_CORES = 0.2  # other processes' CPU use (in cores) above which the machine counts as busy


def wait_quiet(max_wait: float, window: float = 0.5) -> tuple[float, float]:
    """Wait up to max_wait s until other processes use under NOISY_CORES cores over a `window`-second sample.

    Returns (seconds waited, other processes' cores in the last sample).
    """
    t0 = time.perf_counter()
    while True:
        start = cpu_counters()
        time.sleep(window)
        load = other_load(start)
        other = load["other_processes_cores"] + load["steal_cores"]
        waited = time.perf_counter() - t0
        if other < NOISY_CORES or waited >= max_wait:
            return waited, other


@contextmanager
def busy_core() -> Iterator[None]:
    """A pure-Python busy loop in another process (one core's worth of competing load) while the block runs."""
    p = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.2)
        yield
    finally:
        p.kill()
        p.wait()

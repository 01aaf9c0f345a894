"""Shared constants and process probes for the tests (RSS, memory maps, threads, child processes, signals)."""

from __future__ import annotations

import gc
import json
import os
import shutil
import signal
import subprocess
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import modelhost
import pytest

LLM_KEY = "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF"
LLM_ALIAS = "smollm2-135m-instruct"
LLM_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA_KEY = "google/gemma-3-270m-GGUF"  # the third sample model (scripts/fetch_models.py)
EMB_KEY = "sentence-transformers/all-MiniLM-L6-v2"
EMB_ALIAS = "all-minilm-l6-v2"
EMB_WEIGHTS = "model.safetensors"

REFS = Path(__file__).parent / "refs"
EOG_IDS = {0, 2, 4}  # SmolLM2's end-of-generation ids, as llama.cpp defines them
# The family checks' summary (tests/test_families.py), printed at the end of the run by conftest.py.
FAMILY_REPORT = pytest.StashKey[str]()
MAX_TOKENS = 12
"""What the LM Studio examples' predictions are capped at (fixture ``capped``), to keep the suite fast."""
STOP_REASONS = {"eosFound", "maxPredictedTokensReached", "stopStringFound", "contextLengthReached", "userStopped"}


def assert_ran(result: modelhost.PredictionResult, max_tokens: int | None) -> None:
    """A prediction that really ran to a natural end: ``max_tokens`` tokens, an end-of-generation token before that,
    or (no ``max_tokens``) the end of the context; its tokens, count and stop reason agree."""
    stats = result.stats
    assert stats.predicted_tokens_count == len(result.tokens), (stats, result.tokens)
    if max_tokens is None:
        assert stats.stop_reason in ("eosFound", "contextLengthReached"), stats
    elif stats.stop_reason == "maxPredictedTokensReached":
        assert len(result.tokens) == max_tokens, (stats, result.tokens)
    else:
        assert stats.stop_reason == "eosFound" and len(result.tokens) < max_tokens, (stats, result.tokens)
    assert stats.prompt_tokens_count is not None and stats.prompt_tokens_count > 0


def default_models_dir() -> Path:
    """The models dir the tests use: $MODELHOST_MODELS_DIR or ~/.cache/modelhost/models."""
    env = os.environ.get("MODELHOST_MODELS_DIR")
    return Path(env) if env else Path.home() / ".cache" / "modelhost" / "models"


def llm_path(models_dir: Path) -> Path:
    """The SmolLM2 GGUF file."""
    return models_dir / LLM_KEY / LLM_FILE


def emb_path(models_dir: Path) -> Path:
    """The MiniLM folder."""
    return models_dir / EMB_KEY


def load_ref(name: str) -> dict[str, Any]:
    """A reference-output file from tests/refs."""
    with open(REFS / name, encoding="utf-8") as f:
        data: dict[str, Any] = json.load(f)
    return data


def _status_kb(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def rss_bytes() -> int:
    """Resident set size now (VmRSS), after a garbage collection."""
    gc.collect()
    return _status_kb("VmRSS") * 1024


def peak_rss_bytes() -> int:
    """Peak resident set size so far (VmHWM)."""
    return _status_kb("VmHWM") * 1024


def thread_count() -> int:
    """Threads of this process."""
    return len(os.listdir("/proc/self/task"))


def mapping_lines(path: str | Path) -> list[str]:
    """Lines of /proc/self/maps that map ``path`` (by its real path)."""
    target = os.path.realpath(path)
    with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
        return [line.rstrip("\n") for line in f if line.rstrip("\n").endswith(" " + target)]


def mapped_ranges(path: str | Path) -> set[tuple[str, str]]:
    """The distinct (inode, address range) mappings of ``path``: one file mapped once gives one entry per segment."""
    result = set()
    for line in mapping_lines(path):
        fields = line.split()
        result.add((fields[4], fields[0]))
    return result


def mapped_inode_count(path: str | Path) -> int:
    """How many separate mappings of ``path`` exist (contiguous segments of one mapping count once)."""
    lines = mapping_lines(path)
    segments = sorted(tuple(int(x, 16) for x in line.split()[0].split("-")) for line in lines)
    count = 0
    end = -1
    for start, stop in segments:
        if start != end:
            count += 1
        end = stop
    return count


def link_or_copy(src: Path, dst: Path) -> Path:
    """Hard-link ``src`` to ``dst`` (same inode, no disk cost), or copy it across filesystems."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
    return dst


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> float:
    """Poll until ``predicate()`` holds; returns the seconds waited, or raises AssertionError at the timeout."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)
    return time.monotonic() - start


@contextmanager
def placement_warnings_allowed() -> Iterator[list[warnings.WarningMessage]]:
    """Record PlacementWarnings (a GPU ratio on a machine without a GPU); other warnings still fail the test."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", modelhost.PlacementWarning)
        yield caught


class ServerProcess:
    """A ``modelhost serve --port 0`` child process: its URL (from its first line), stopped by :meth:`stop`."""

    def __init__(self, models_dir: Path, log_dir: Path, *args: str, env: dict[str, str] | None = None) -> None:
        import subprocess
        import sys

        environment = {**os.environ, "MODELHOST_STATE_DIR": str(log_dir), "LM_API_TOKEN": "", **(env or {})}
        self.log_path = log_dir / "server.stderr"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "modelhost", "serve", "--port", "0", "--models-dir", str(models_dir), *args],
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env=environment,
            )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        prefix = "modelhost serving on "
        if not line.startswith(prefix):
            self.process.kill()
            raise AssertionError(f"the server did not start: {line!r}\n{self.log_path.read_text()}")
        self.url = line[len(prefix) :].strip()
        self.address = self.url.removeprefix("http://")

    def stop(self) -> int:
        """Ctrl-C (it drains, then exits); its exit status."""
        import signal

        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(timeout=60)
        finally:
            if self.process.stdout is not None:
                self.process.stdout.close()


def processes_naming(path: str) -> list[int]:
    """Pids of the processes whose command line names ``path`` (a Ray cluster's temp dir: raylet, GCS, workers...)."""
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True, check=True).stdout
    return [int(line.split(None, 1)[0]) for line in out.splitlines() if path in line]


def reap_processes_naming(path: str, timeout: float = 30) -> list[int]:
    """Wait up to ``timeout`` s for the processes naming ``path`` to exit; SIGKILL those left, and return them."""
    deadline = time.monotonic() + timeout
    while processes_naming(path) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = processes_naming(path)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    return left


@contextmanager
def sigint_handler(handler: Any) -> Iterator[None]:
    """SIGINT's disposition set to ``handler`` for the block (Python's own, or ``SIG_IGN`` as a script's background
    job inherits it), then restored."""
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)

"""Concurrency soak, short mode (issue 7): 8 threads of mixed operations on the real models for 15 s, invariants
checked after every step. ``python scripts/soak.py --soak-seconds 300`` runs the long mode.

Operations: ``model`` and ``load_new_instance`` (both kinds, random TTLs from 0.2 s to never), ``respond`` with
maxTokens <= 4, ``embed``, ``unload`` of a random handle, ``list_loaded``. After every step: identifiers in
``list_loaded`` are unique; every listed instance's key is one of the two models and matches what its identifier was
loaded as; every handle's ``model_key`` and ``get_info().path`` still match the model it was loaded as (no handle
silently points at a different model); only ModelUnloadedError (another thread or a TTL got there first) may
interrupt an operation. At the end nothing is loaded or mapped.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from helpers import thread_count, wait_until

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

import soak

SHORT_SECONDS = 15.0


@pytest.mark.timeout(180)
def test_concurrency_soak_short(models_dir: Path) -> None:
    threads = thread_count()
    report = soak.concurrency_soak(models_dir, seconds=SHORT_SECONDS, threads=8, seed=7)
    assert report["violations"] == [], report
    assert report["steps"] > 50, report
    # Every kind of operation ran and succeeded at least once.
    for op in soak.OPS:
        assert report["outcomes"].get(f"{op}_ok", 0) > 0, (op, report)
    wait_until(lambda: thread_count() <= threads, timeout=5)

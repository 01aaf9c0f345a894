"""``python -m modelhost``: ls, chat, embed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import EMB_ALIAS, EMB_KEY, LLM_ALIAS, LLM_KEY

pytestmark = pytest.mark.timeout(120)


def run(models_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MODELHOST_MODELS_DIR": str(models_dir)}
    return subprocess.run(
        [sys.executable, "-m", "modelhost", *args], capture_output=True, text=True, env=env, timeout=100, check=False
    )


def test_ls(models_dir: Path) -> None:
    out = run(models_dir, "ls")
    assert out.returncode == 0, out.stderr
    assert LLM_KEY in out.stdout and EMB_KEY in out.stdout
    only = run(models_dir, "ls", "embedding", "--json")
    rows = [json.loads(line) for line in only.stdout.splitlines()]
    assert EMB_KEY in [r["model_key"] for r in rows] and LLM_KEY not in [r["model_key"] for r in rows]
    assert {r["type"] for r in rows} == {"embedding"}


def test_chat_streams_a_reply(models_dir: Path) -> None:
    out = run(models_dir, "chat", LLM_ALIAS, "Say hello.", "--max-tokens", "4")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip()
    assert "tokens" in out.stderr


def test_load_shows_info(models_dir: Path) -> None:
    out = run(models_dir, "load", LLM_ALIAS)
    assert out.returncode == 0, out.stderr
    assert LLM_KEY in out.stdout


def test_embed(models_dir: Path) -> None:
    out = run(models_dir, "embed", EMB_ALIAS, "hello", "world")
    assert out.returncode == 0, out.stderr
    vectors = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(vectors) == 2 and all(len(v) == 384 for v in vectors)


def test_errors_exit_1(models_dir: Path) -> None:
    out = run(models_dir, "chat", "no-such-model", "Hi")
    assert out.returncode == 1
    assert out.stderr.startswith("error: ")
    assert run(models_dir, "bogus").returncode == 2

"""``modelhost ray serve`` as a user runs it: a subprocess that starts its own local Ray cluster, serves the models
dir over HTTP until it gets SIGTERM, then deletes the application, stops Serve and Ray, and leaves no process behind.

Runs after ``test_ray.py`` (whose cluster is gone by then); the command's Ray temp dir is its own (``RAY_TMPDIR``),
so it cannot attach to another cluster on the machine, and its processes are found by that path.
"""

from __future__ import annotations

import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import modelhost
import numpy as np
import pytest
from helpers import EMB_KEY, LLM_KEY, reap_processes_naming

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]

CONTEXT_LENGTH = 1024
STARTUP_S = 240
SERVING = re.compile(r"serving on (http://\S+)")


def _wait_for_url(proc: subprocess.Popen[str], stderr: Path) -> str:
    """The URL the command prints once the application is up; fails with its output if it exits or stalls."""
    assert proc.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + STARTUP_S
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not sel.select(timeout=1.0):
                if proc.poll() is not None:
                    break
                continue
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line)
            match = SERVING.search(line)
            if match:
                return match.group(1)
    proc.kill()
    proc.wait(timeout=60)
    err = stderr.read_text()[-4000:]
    pytest.fail(f"`modelhost ray serve` did not come up (exit {proc.returncode}):\n{''.join(seen)}\n{err}")


def test_ray_serve_command_serves_until_sigterm(models_dir: Path, tmp_path: Path) -> None:
    temp_root = tempfile.mkdtemp(prefix="mh-raycli-", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_TMPDIR"] = temp_root
    command = [
        sys.executable,
        "-m",
        "modelhost",
        "ray",
        "serve",
        "--port",
        "0",
        "--models-dir",
        str(models_dir),
        "--context-length",
        str(CONTEXT_LENGTH),
    ]
    stderr = tmp_path / "stderr.log"  # a file, not a pipe nobody reads while the command runs
    with stderr.open("w") as err_file:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err_file, text=True, env=env)
    try:
        url = _wait_for_url(proc, stderr)
        with modelhost.Client(models_dir, isolated=True) as local, httpx.Client(base_url=url, timeout=300) as http:
            ids = {m["id"] for m in http.get("/v1/models").json()["data"]}
            assert {LLM_KEY, EMB_KEY} <= ids

            messages = [{"role": "user", "content": "Who wrote Hamlet?"}]
            reply = http.post(
                "/v1/chat/completions",
                json={"model": LLM_KEY, "messages": messages, "temperature": 0, "max_tokens": 12},
            )
            assert reply.status_code == 200, reply.text
            expected = local.llm.model(LLM_KEY, config={"contextLength": CONTEXT_LENGTH}).respond(
                messages, config={"temperature": 0, "maxTokens": 12}
            )
            assert reply.json()["choices"][0]["message"]["content"] == expected.content

            sentences = ["a sentence", "Ray Serve routes requests"]
            vectors = http.post("/v1/embeddings", json={"model": EMB_KEY, "input": sentences})
            assert vectors.status_code == 200, vectors.text
            got = np.array([d["embedding"] for d in vectors.json()["data"]], dtype=np.float32)
            np.testing.assert_array_equal(got, local.embedding.model(EMB_KEY).embed(sentences))

        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=120)
        err = stderr.read_text()
        assert proc.returncode == 0, err[-4000:]
        assert "modelhost on Ray Serve stopped" in err
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/v1/models", timeout=5)
        left = reap_processes_naming(temp_root)
        assert not left, f"Ray processes outlived `modelhost ray serve`: {left}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=60)
        reap_processes_naming(temp_root, timeout=0)
        shutil.rmtree(temp_root, ignore_errors=True)

"""The ``modelhost`` CLI, run as subprocesses: in-process (no server) and against a server it starts and stops;
the ``--json`` shapes documented in docs/cli.md."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import EMB_ALIAS, EMB_KEY, LLM_ALIAS, LLM_KEY, sigint_handler

pytestmark = pytest.mark.timeout(180)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def env(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An environment of its own: a state dir and a default port nobody else uses, no token, no host."""
    environment = {
        **os.environ,
        "MODELHOST_MODELS_DIR": str(models_dir),
        "MODELHOST_STATE_DIR": str(tmp_path_factory.mktemp("state")),
        "MODELHOST_PORT": str(free_port()),
    }
    for name in ("LM_API_TOKEN", "LMSTUDIO_API_TOKEN", "MODELHOST_API_HOST"):
        environment.pop(name, None)
    return environment


def cli(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelhost", *args],
        capture_output=True,
        text=True,
        env=env,
        input=stdin,
        timeout=150,
        check=False,
    )


def ok(env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    out = cli(env, *args, stdin=stdin)
    assert out.returncode == 0, (args, out.stdout, out.stderr)
    return out.stdout


def ok_json(env: dict[str, str], *args: str) -> Any:
    return json.loads(ok(env, *args, "--json"))


# --- In-process (no server answers) ----------------------------------------------------------------------------


def test_ls_in_process(env: dict[str, str]) -> None:
    out = ok(env, "ls")
    assert LLM_KEY in out and EMB_KEY in out and out.startswith("KEY")
    rows = ok_json(env, "ls", "--embedding")
    assert [r["model_key"] for r in rows] == [EMB_KEY]
    assert set(rows[0]) == {
        "model_key", "type", "format", "path", "size_bytes", "architecture", "params_string", "quantization",
        "max_context_length", "display_name", "vision", "loaded_instances",
    }  # fmt: skip
    assert (rows[0]["type"], rows[0]["loaded_instances"]) == ("embedding", [])
    llms = ok_json(env, "ls", "--llm")
    assert LLM_KEY in [r["model_key"] for r in llms] and {r["type"] for r in llms} == {"llm"}


def test_chat_in_process(env: dict[str, str]) -> None:
    out = cli(env, "chat", LLM_ALIAS, "-p", "Say hello.", "--max-tokens", "4", "--stats")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip()
    assert "tokens" in out.stderr and "tok/s" in out.stderr
    piped = cli(env, "chat", LLM_ALIAS, "-s", "Answer in one word.", "--max-tokens", "3", stdin="What is 2+2?")
    assert piped.returncode == 0 and piped.stdout.strip(), piped.stderr
    positional = cli(env, "chat", LLM_ALIAS, "Say", "hi.", "--max-tokens", "2")
    assert positional.returncode == 0 and positional.stdout.strip()


def test_embed_in_process(env: dict[str, str]) -> None:
    vectors = [json.loads(line) for line in ok(env, "embed", EMB_ALIAS, "hello", "world").splitlines()]
    assert len(vectors) == 2 and all(len(v) == 384 for v in vectors)


def test_load_and_ps_in_process(env: dict[str, str]) -> None:
    out = cli(env, "load", LLM_ALIAS, "--context-length", "1024")
    assert out.returncode == 0, out.stderr
    assert LLM_KEY in out.stdout and "context 1024" in out.stdout
    assert "no server is running" in out.stderr
    estimate = ok_json(env, "load", EMB_ALIAS, "--estimate-only")
    assert set(estimate) == {"weights_bytes", "kv_cache_bytes", "scratch_bytes", "total_bytes", "per_device"}
    assert ok_json(env, "ps") == []


def test_errors(env: dict[str, str]) -> None:
    out = cli(env, "chat", "no-such-model", "-p", "Hi")
    assert out.returncode == 1 and out.stderr.startswith("error: ")
    assert cli(env, "bogus").returncode == 2
    assert cli(env, "unload").returncode == 2  # an identifier or --all
    assert cli(env, "load", LLM_ALIAS, "--gpu", "lots").returncode == 2
    out = cli(env, "ls", "--host", "127.0.0.1:1")
    assert out.returncode == 1 and "no answer" in out.stderr
    status = cli(env, "server", "status", "--json")
    assert status.returncode == 3 and json.loads(status.stdout) == {"running": False}
    assert "no modelhost server is running" in ok(env, "server", "stop")


# --- Against a server -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(env: dict[str, str]) -> Iterator[dict[str, Any]]:
    """``modelhost server start`` on the default port of ``env``; ``server stop`` afterwards."""
    state = ok_json(env, "server", "start")
    yield state
    stopped = ok_json(env, "server", "stop")
    assert stopped["stopped"] is True
    assert cli(env, "server", "status").returncode == 3


def test_server_start_status(env: dict[str, str], server: dict[str, Any]) -> None:
    assert server["running"] is True and server["url"] == f"http://127.0.0.1:{env['MODELHOST_PORT']}"
    assert set(server) == {"running", "url", "pid", "version", "models_dir", "authorized"}
    assert ok_json(env, "server", "status") == server
    again = ok(env, "server", "start")
    assert "already running" in again


def test_commands_use_the_running_server(env: dict[str, str], server: dict[str, Any]) -> None:
    loaded = ok_json(env, "load", LLM_ALIAS, "--identifier", "cli-llm", "--ttl", "300", "--context-length", "2048")
    assert loaded["identifier"] == "cli-llm" and loaded["load_time_seconds"] > 0
    ok(env, "load", EMB_ALIAS)
    instances = ok_json(env, "ps")
    assert [i["identifier"] for i in instances] == ["cli-llm", EMB_KEY]
    llm = instances[0]
    assert set(llm) == {
        "identifier", "model_key", "type", "status", "in_flight", "ttl", "expires_in", "context_length",
        "memory_bytes", "device", "loaded_by", "last_used",
    }  # fmt: skip
    assert (llm["model_key"], llm["ttl"], llm["context_length"], llm["status"]) == (LLM_KEY, 300, 2048, "idle")
    assert 0 < llm["expires_in"] <= 300 and llm["memory_bytes"] > 0 and llm["loaded_by"] == "server"
    assert instances[1]["ttl"] is None
    table = ok(env, "ps")
    assert "cli-llm" in table and "300s (" in table
    by_key = {r["model_key"]: r["loaded_instances"] for r in ok_json(env, "ls")}
    assert (by_key[LLM_KEY], by_key[EMB_KEY]) == (["cli-llm"], [EMB_KEY])
    # The server's instances serve the CLI's chat and embed (no load in the CLI's process).
    out = cli(env, "chat", "cli-llm", "-p", "Say hello.", "--max-tokens", "4")
    assert out.returncode == 0 and out.stdout.strip() and "no server" not in out.stderr
    assert len(json.loads(ok(env, "embed", EMB_ALIAS, "hi").splitlines()[0])) == 384
    assert ok_json(env, "unload", "cli-llm") == {"unloaded": ["cli-llm"]}
    assert ok_json(env, "unload", "--all") == {"unloaded": [EMB_KEY]}
    assert ok_json(env, "ps") == []
    out = cli(env, "unload", "cli-llm")
    assert out.returncode == 1 and "error:" in out.stderr
    # --local ignores the server.
    assert ok_json(env, "ps", "--local") == []


def test_serve_in_the_foreground_with_a_token(env: dict[str, str], tmp_path: Path) -> None:
    token_env = {**env, "MODELHOST_STATE_DIR": str(tmp_path), "LM_API_TOKEN": "s3cret"}
    with subprocess.Popen(
        [sys.executable, "-m", "modelhost", "serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=token_env,
    ) as process:
        try:
            assert process.stdout is not None
            first = process.stdout.readline()
            assert first.startswith("modelhost serving on http://127.0.0.1:")
            address = first.split("http://")[1].strip()
            state = json.loads((tmp_path / "server.json").read_text())
            assert state["url"] == f"http://{address}" and state["pid"] == process.pid and state["api_token_required"]
            no_token = {k: v for k, v in env.items() if k != "LM_API_TOKEN"}
            out = cli(no_token, "ps", "--host", address)
            assert out.returncode == 1 and "token" in out.stderr.lower()
            assert ok_json(token_env, "ps") == []  # found by its state file, token from the environment
            assert ok_json(no_token, "ps", "--host", address, "--api-token", "s3cret") == []
            stopped = ok_json(token_env, "server", "stop")
            assert stopped["stopped"] is True
            assert process.wait(timeout=60) == 0
            assert not (tmp_path / "server.json").exists()
        finally:
            if process.poll() is None:
                process.kill()


@pytest.mark.parametrize("stop_signal", ["SIGINT", "SIGTERM"])
def test_serve_stops_on_signals_even_with_sigint_ignored(env: dict[str, str], tmp_path: Path, stop_signal: str) -> None:
    """A server started as a background job of a script inherits SIGINT ignored; Ctrl-C (and SIGTERM) still drain
    and stop it, with the state file removed."""
    state_env = {**env, "MODELHOST_STATE_DIR": str(tmp_path)}
    with sigint_handler(signal.SIG_IGN):  # inherited through exec, as a shell's `&` leaves it
        process = subprocess.Popen(
            [sys.executable, "-m", "modelhost", "serve", "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=state_env,
        )
    with process:
        try:
            assert process.stdout is not None
            assert process.stdout.readline().startswith("modelhost serving on http://")
            process.send_signal(getattr(signal, stop_signal))
            _, err = process.communicate(timeout=60)
            assert process.returncode == 0, err
            assert "modelhost server stopped" in err
            assert not (tmp_path / "server.json").exists()
        finally:
            if process.poll() is None:
                process.kill()

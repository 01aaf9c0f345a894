"""Resources over time (SPEC §4, issue 7): load/unload cycles leak nothing, short TTLs never evict a request in
flight, unload and Ctrl-C in the middle of things, closing and exiting with work running, and a model file changed on
disk while it is mapped.

The short modes run here; ``scripts/soak.py`` runs the long ones (1000 cycles, minutes of storm).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import modelhost as mh
import pytest
from helpers import EMB_KEY, LLM_FILE, LLM_KEY, link_or_copy, llm_path, mapping_lines, sigint_handler
from modelhost import _core

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import soak  # noqa: E402

SHORT_CYCLES = 100
RSS_SLACK = 5 * 1024 * 1024


def test_load_unload_cycles_leak_nothing(models_dir: Path) -> None:
    """100 load/unload cycles of SmolLM2 (1000 in ``scripts/soak.py --cycles 1000``): RSS within 5 MB of where it
    was after a warm-up cycle, open file descriptors and threads back to their baseline."""
    report = soak.cycles(models_dir, SHORT_CYCLES)
    assert report["rss_growth"] < RSS_SLACK, report
    assert report["fds_end"] <= report["fds_start"], report
    assert report["threads_end"] <= report["threads_start"], report
    assert report["mapped_end"] == report["mapped_start"], report


def test_ttl_storm_never_evicts_in_flight(models_dir: Path) -> None:
    """100 instances with random TTLs of 0.05 to 0.5 s while 4 threads run requests on random ones: a request that
    started never fails with ModelUnloadedError; instances evicted before a request starts are simply refused."""
    report = soak.ttl_storm(models_dir, instances=100, seconds=8.0, threads=4, seed=1)
    assert report["in_flight_failures"] == [], report
    assert report["completed"] > 0, report
    assert report["evicted"] > 0, "no TTL fired: the storm tested nothing"


def test_unload_from_another_thread_mid_stream(client: mh.Client) -> None:
    """``unload()`` while a stream is being read: the stream completes (requests in flight finish first) or ends
    with a clear reason; never a crash; the handle is unloaded afterwards."""
    for attempt in range(3):
        llm = client.llm.load_new_instance(LLM_KEY, f"victim-{attempt}", config={"contextLength": 512})
        stream = llm.complete_stream("Once upon a time", {"maxTokens": 20, "temperature": 0})
        fragments = []
        unloader = threading.Thread(target=llm.unload)
        for i, fragment in enumerate(stream):
            fragments.append(fragment)
            if i == attempt * 4:
                unloader.start()
        result = stream.result()
        unloader.join(30)
        assert not unloader.is_alive(), "unload hung"
        assert result.stats.stop_reason in {"maxPredictedTokensReached", "eosFound", "userStopped"}
        assert result.stats.predicted_tokens_count == len(fragments) or result.stats.stop_reason == "userStopped"
        assert not llm.is_loaded()
        with pytest.raises(mh.ModelUnloadedError):
            llm.complete("again", {"maxTokens": 1})
    assert client.llm.list_loaded() == []


def test_sigint_during_a_load_leaves_nothing_loaded(client: mh.Client, models_dir: Path) -> None:
    """A real SIGINT (from a timer thread, as Ctrl-C would arrive) while the weights are being read: the load is
    cancelled with KeyboardInterrupt and nothing stays loaded or mapped."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals are delivered to the main thread only")
    before_mapped = _core.mapped_file_count()
    calls: list[float] = []
    timer = threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGINT))

    def on_progress(value: float) -> None:
        calls.append(value)
        if len(calls) == 1:
            timer.start()
        time.sleep(0.02)  # a slow disk: the load outlives the timer

    with sigint_handler(signal.default_int_handler):
        try:
            with pytest.raises(KeyboardInterrupt):
                client.llm.load_new_instance(LLM_KEY, config={"tryMmap": False}, on_load_progress=on_progress)
        finally:
            timer.cancel()
    assert 0 < len(calls) < 101, calls
    assert client.llm.list_loaded() == []
    assert _core.mapped_file_count() == before_mapped
    assert mapping_lines(llm_path(models_dir)) == []
    # And the model still loads afterwards.
    llm = client.llm.model(LLM_KEY)
    assert llm.complete("Hi", {"maxTokens": 1}).stats.predicted_tokens_count == 1


def test_keyboard_interrupt_raised_in_the_callback_of_a_second_instance(client: mh.Client) -> None:
    """Ctrl-C while a second instance of an already-loaded file is loading (the shared-weights path): the first
    instance stays, the second is not left half-registered."""
    first = client.llm.load_new_instance(LLM_KEY, "first")

    def on_progress(value: float) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        client.llm.load_new_instance(LLM_KEY, "second", on_load_progress=on_progress)
    assert [h.identifier for h in client.llm.list_loaded()] == ["first"]
    assert first.complete("Hi", {"maxTokens": 1}).stats.predicted_tokens_count == 1
    # The identifier was not taken by the cancelled load.
    client.llm.load_new_instance(LLM_KEY, "second").unload()


def _run(script: str, models_dir: Path, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, MODELS_DIR=str(models_dir), PYTHONFAULTHANDLER="1")
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


_WORKLOAD = """
    import os, sys, threading, time
    import modelhost as mh

    client = mh.Client(os.environ["MODELS_DIR"])
    llm = client.llm.model("{llm}", config={{"contextLength": 512}})
    emb = client.embedding.model("{emb}")
    started = threading.Barrier(5)
    errors = []

    def generate(handle):
        started.wait()
        while True:
            try:
                handle.complete("Tell me a story", {{"maxTokens": 64}})
            except (mh.ModelUnloadedError, mh.ClientClosedError):
                return
            except BaseException as e:
                errors.append(repr(e))
                return

    def embed():
        started.wait()
        while True:
            try:
                emb.embed(["some text to embed"] * 8)
            except (mh.ModelUnloadedError, mh.ClientClosedError):
                return
            except BaseException as e:
                errors.append(repr(e))
                return

    second = client.llm.load_new_instance("{llm}", config={{"contextLength": 512}})
    threads = [threading.Thread(target=generate, args=(h,), daemon={daemon}) for h in (llm, llm, second)]
    threads.append(threading.Thread(target=embed, daemon={daemon}))
    for t in threads:
        t.start()
    started.wait()
    time.sleep(0.5)
"""


def test_close_with_requests_running_exits_cleanly(models_dir: Path) -> None:
    """``Client.close()`` while 3 generations and an embedding loop run: every worker ends with ModelUnloadedError /
    ClientClosedError (or finishes), close returns, and the interpreter exits 0 without hanging."""
    script = _WORKLOAD.format(llm=LLM_KEY, emb=EMB_KEY, daemon=False) + textwrap.indent(
        textwrap.dedent("""
        t0 = time.monotonic()
        client.close()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads), "a worker hung after close()"
        assert not errors, errors
        assert client.list_loaded_models() == [] if hasattr(client, "list_loaded_models") else True
        print("closed in", round(time.monotonic() - t0, 2))
        """),
        "    ",
    )
    proc = _run(script, models_dir)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "closed in" in proc.stdout


@pytest.mark.parametrize("how", ["return", "sys.exit", "os._exit-free-fall"])
def test_interpreter_exit_with_models_loaded_and_requests_running(models_dir: Path, how: str) -> None:
    """The interpreter exits (end of script, ``sys.exit(0)``, or an exception-free fall off the end with no close)
    while daemon threads are inside requests: exit code 0, no hang, no crash at teardown."""
    ending = {"return": "", "sys.exit": "sys.exit(0)", "os._exit-free-fall": "del client"}[how]
    script = _WORKLOAD.format(llm=LLM_KEY, emb=EMB_KEY, daemon=True) + "    " + ending + "\n"
    proc = _run(script, models_dir)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-4000:])
    assert "Fatal Python error" not in proc.stderr
    assert "panicked" not in proc.stderr


# --- a model file changed on disk while mapped ---------------------------------------------------------------------

_TRUNCATE_WHILE_LOADED = """
    import os, subprocess, sys
    import modelhost as mh
    from modelhost import _core

    models, try_mmap = sys.argv[1], sys.argv[2] == "True"
    path = os.path.join(models, "{key}", "{file}")
    client = mh.Client(models)
    llm = client.llm.model("{key}", ttl=None, config={{"contextLength": 512, "tryMmap": try_mmap}})
    before = llm.complete("Hello", {{"maxTokens": 4, "temperature": 0}}).content
    # Another process truncates the file under us (the mapping stays).
    subprocess.run([sys.executable, "-c", "import os, sys; os.truncate(sys.argv[1], 1024)", path], check=True)
    assert os.path.getsize(path) == 1024
    if try_mmap:
        # The quantized weights are read in place: the lost pages read as zeros, and every request says so.
        for _ in range(2):
            try:
                llm.complete("Hello", {{"maxTokens": 4, "temperature": 0}})
            except mh.ModelLoadError as e:
                assert "{file}" in str(e) and "truncated" in str(e), e
            else:
                raise AssertionError("a request on truncated weights returned a result")
    else:
        # Owned weights: nothing reads the file any more.
        after = llm.complete("Hello", {{"maxTokens": 4, "temperature": 0}}).content
        assert after == before, (before, after)
        llm.respond("Hi", {{"maxTokens": 2}})
    assert llm.tokenize("Hello world") == [19556, 905]
    # A second instance: served from the shared weights, or refused cleanly; never SIGBUS.
    try:
        second = client.llm.load_new_instance("{key}", config={{"contextLength": 512, "tryMmap": try_mmap}})
    except mh.ModelLoadError as e:
        assert "{file}" in str(e), e
        print("second: ModelLoadError:", e)
    else:
        try:
            assert second.complete("Hello", {{"maxTokens": 2}}).stats.predicted_tokens_count == 2
        except mh.ModelLoadError:
            assert try_mmap
        print("second: loaded")
        second.unload()
    # model() by key: the loaded instance, or (the catalog re-reads the changed file) a clean ModelLoadError.
    try:
        assert client.llm.model("{key}").identifier == llm.identifier
    except mh.ModelLoadError as e:
        assert "{file}" in str(e), e
    assert [h.identifier for h in client.llm.list_loaded()] == [llm.identifier]
    with mh.Client(models) as fresh:
        try:
            fresh.llm.model("{key}")
        except (mh.ModelLoadError, mh.ModelNotFoundError) as e:
            print("fresh client:", type(e).__name__)
        else:
            raise AssertionError("a 1 kB file loaded")
    llm.unload()
    assert _core.mapped_file_count() == 0, _core.mapped_file_count()
    client.close()
    print("ok")
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("try_mmap", [True, False])
def test_gguf_truncated_while_mapped(models_dir: Path, tmp_path: Path, try_mmap: bool) -> None:
    """SmolLM2, copied into a tmp models dir, loaded, then truncated to 1 kB by another process. Mapped (weights used
    in place): every request fails with ModelLoadError instead of SIGBUS. Owned (tryMmap false): requests keep
    working. Either way a second load is refused cleanly or served, and unload is clean. In a subprocess, so that a
    SIGBUS fails this test instead of killing pytest."""
    copy = tmp_path / "models" / LLM_KEY / LLM_FILE
    copy.parent.mkdir(parents=True)
    copy.write_bytes(llm_path(models_dir).read_bytes())  # a real copy: truncating a hard link would hit the original
    script = _TRUNCATE_WHILE_LOADED.format(key=LLM_KEY, file=LLM_FILE)
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), str(tmp_path / "models"), str(try_mmap)],
        capture_output=True,
        text=True,
        timeout=100,
        env=dict(os.environ, PYTHONFAULTHANDLER="1"),
    )
    assert proc.returncode != -signal.SIGBUS, "SIGBUS: the truncated file's pages were touched\n" + proc.stderr[-3000:]
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr[-3000:])
    assert proc.stdout.strip().endswith("ok")


_EMBED_TRUNCATED = """
    import os, subprocess, sys
    import modelhost as mh

    models = sys.argv[1]
    weights = os.path.join(models, "{key}", "model.safetensors")
    client = mh.Client(models)
    emb = client.embedding.model("{key}", config={{"tryMmap": {try_mmap}}})
    before = emb.embed("hello world")
    subprocess.run([sys.executable, "-c", "import os, sys; os.truncate(sys.argv[1], 1024)", weights], check=True)
    after = emb.embed("hello world")
    assert (before == after).all()
    emb.unload()
    client.close()
    print("ok")
"""


def _minilm_copy(models_dir: Path, tmp_path: Path) -> Path:
    src = models_dir / EMB_KEY
    dst = tmp_path / "models" / EMB_KEY
    for path in src.rglob("*"):
        if path.is_file():
            target = dst / path.relative_to(src)
            if path.name == "model.safetensors":
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(path.read_bytes())
            else:
                link_or_copy(path, target)
    return tmp_path / "models"


@pytest.mark.timeout(120)
def test_safetensors_truncated_while_loaded_with_try_mmap_false(models_dir: Path, tmp_path: Path) -> None:
    """With ``tryMmap: false`` the embedding weights are owned: truncating the file changes nothing."""
    models = _minilm_copy(models_dir, tmp_path)
    script = _EMBED_TRUNCATED.format(key=EMB_KEY, try_mmap=False)
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), str(models)], capture_output=True, text=True, timeout=100
    )
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-3000:])


_EMBED_TRUNCATED_MAPPED = """
    import os, subprocess, sys
    import modelhost as mh

    models = sys.argv[1]
    weights = os.path.join(models, "{key}", "model.safetensors")
    client = mh.Client(models)
    emb = client.embedding.model("{key}")
    llm = client.llm.model("{llm_key}")
    emb.embed("hello world")
    subprocess.run([sys.executable, "-c", "import os, sys; os.truncate(sys.argv[1], 1024)", weights], check=True)
    for _ in range(2):  # the lost pages now read as zeros: every request fails cleanly, none returns garbage
        try:
            emb.embed(["hello world", "a second sentence"])
        except mh.ModelLoadError as e:
            assert "model.safetensors" in str(e) and "truncated" in str(e), e
        else:
            raise AssertionError("embed() on a truncated mapping returned a result")
    assert llm.complete("The capital of France is", config={{"maxTokens": 3, "temperature": 0}}).content
    emb.unload()
    try:
        client.embedding.load_new_instance("{key}")
    except mh.ModelLoadError:
        pass
    else:
        raise AssertionError("a 1 kB model.safetensors loaded")
    assert client.embedding.list_loaded() == [] and [h.identifier for h in client.llm.list_loaded()] == [llm.identifier]
    client.close()
    print("ok")
"""


@pytest.mark.timeout(120)
def test_safetensors_truncated_while_mapped(models_dir: Path, tmp_path: Path) -> None:
    """MiniLM's weights are used in place from the mapping. Truncating the file under a loaded instance must not
    kill the process with SIGBUS: the guard turns the lost pages into zeros and the request into ModelLoadError;
    other instances keep working; unload and a fresh load behave. In a subprocess, so a SIGBUS fails the test."""
    models = _minilm_copy(models_dir, tmp_path)
    (models / LLM_KEY).mkdir(parents=True)
    link_or_copy(llm_path(models_dir), models / LLM_KEY / LLM_FILE)
    script = _EMBED_TRUNCATED_MAPPED.format(key=EMB_KEY, llm_key=LLM_KEY)
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), str(models)],
        capture_output=True,
        text=True,
        timeout=100,
        env=dict(os.environ, PYTHONFAULTHANDLER="1"),  # installed before ours: foreign faults still reach it
    )
    assert proc.returncode != -signal.SIGBUS, "SIGBUS\n" + proc.stderr[-3000:]
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr[-3000:])
    assert proc.stdout.strip().endswith("ok")


def test_gguf_rewritten_in_place_is_not_mixed_in(models_dir: Path, tmp_path: Path) -> None:
    """A GGUF replaced on disk (a new file renamed over the old, as a re-download does) while an instance of the old
    one is loaded: a new instance must not silently share the old weights under the new file's name, nor crash."""
    models = tmp_path / "models"
    copy = models / LLM_KEY / LLM_FILE
    copy.parent.mkdir(parents=True)
    copy.write_bytes(llm_path(models_dir).read_bytes())
    rng = random.Random(0)
    with mh.Client(models) as client:
        old = client.llm.model(LLM_KEY, ttl=None, config={"contextLength": 512})
        assert old.complete("Hi", {"maxTokens": 1}).stats.predicted_tokens_count == 1
        replacement = copy.with_suffix(".tmp")
        replacement.write_bytes(b"GGUF" + bytes(rng.getrandbits(8) for _ in range(4096)))
        os.replace(replacement, copy)
        with pytest.raises(mh.ModelLoadError) as info:
            client.llm.load_new_instance(LLM_KEY, config={"contextLength": 512})
        assert LLM_FILE in str(info.value)
        assert old.complete("Hi", {"maxTokens": 1}).stats.predicted_tokens_count == 1
        assert [h.identifier for h in client.llm.list_loaded()] == [old.identifier]
    assert _core.mapped_file_count() == 0, "the replaced file's mapping outlived the client"

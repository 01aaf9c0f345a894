"""One benchmark worker: one system, one task, in its own process (thread pools and RSS isolated).

    python benches/workers.py SYSTEM TASK --models-dir DIR --out FILE [--reps N] [--quick]

SYSTEM/TASK: modelhost llm | llama llm | modelhost embed | st embed | modelhost catalog.
Writes {"system", "task", "metrics": {name: summary}, "info": {...}, "errors": [...]} to FILE. A failing section
is recorded in "errors" and the worker goes on with the next one.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import inspect
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C


class Worker:
    def __init__(self, system: str, task: str, models_dir: Path, reps: int, quick: bool, max_wait: float = 0) -> None:
        self.system, self.task, self.models_dir, self.reps, self.quick = system, task, models_dir, reps, quick
        self.max_wait = max_wait
        self.metrics: dict[str, Any] = {}
        self.info: dict[str, Any] = {"pid": os.getpid(), "loadavg_start": os.getloadavg()}
        self.errors: list[str] = []
        self.check: dict[str, Any] = {}
        self.cpu_start = C.cpu_counters()

    @contextlib.contextmanager
    def section(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        cpu0 = C.cpu_counters()
        try:
            yield
        except Exception as e:  # recorded, the worker goes on: partial results beat none
            self.errors.append(f"{name}: {type(e).__name__}: {e}")
            print(f"[{self.system}/{self.task}] {name} failed:\n{traceback.format_exc()}", file=sys.stderr)
        finally:
            wall = time.perf_counter() - t0
            self.info.setdefault("sections", {})[name] = {"wall_s": round(wall, 3), **C.other_load(cpu0)}
            print(f"[{self.system}/{self.task}] {name}: {wall:.1f}s", file=sys.stderr, flush=True)

    def quiet(self) -> None:
        """Before a timed repetition: wait (up to --wait-quiet s) for the shared machine to go quiet."""
        if self.max_wait <= 0:
            return
        waited, other = C.wait_quiet(self.max_wait)
        q = self.info.setdefault("quiet", {"waited_s": 0.0, "reps_started_busy": 0, "reps": 0})
        q["waited_s"] = round(q["waited_s"] + waited, 2)
        q["reps"] += 1
        q["reps_started_busy"] += other >= C.NOISY_CORES

    def put(self, name: str, samples: list[float], unit: str, better: str, **extra: Any) -> None:
        self.metrics[name] = C.summarize(samples, unit, better, **extra)

    def result(self) -> dict[str, Any]:
        self.info["loadavg_end"] = os.getloadavg()
        self.info["cpu_while_running"] = C.other_load(self.cpu_start)
        return {
            "system": self.system,
            "task": self.task,
            "metrics": self.metrics,
            "info": self.info,
            "errors": self.errors,
            "check": self.check,
        }


# --------------------------------------------------------------------------------------------------------------
# LLM adapters: same operations, each system's idiomatic API.
# --------------------------------------------------------------------------------------------------------------


class ModelhostLlm:
    name = "modelhost"

    def __init__(self, w: Worker) -> None:
        t0 = time.perf_counter()
        import modelhost as mh

        w.info["import_s"] = time.perf_counter() - t0
        w.info["modelhost_version"] = getattr(mh, "__version__", None)
        w.info["modelhost_core"] = getattr(getattr(mh, "_core", None), "__file__", None)
        self.mh = mh
        self.client = mh.Client(str(w.models_dir))
        self.config: dict[str, Any] = {"contextLength": C.CONTEXT_LENGTH, "evalBatchSize": C.EVAL_BATCH}
        try:  # evalBatchSize is optional in the contract's defaults; fall back if this build rejects it
            h = self.client.llm.model(C.LLM_KEY, config=self.config)
        except mh.InvalidConfigError:
            self.config = {"contextLength": C.CONTEXT_LENGTH}
            h = self.client.llm.model(C.LLM_KEY, config=self.config)
        w.info["load_config_requested"] = self.config
        with contextlib.suppress(Exception):
            w.info["load_config_applied"] = _plain(h.get_load_config())
        with contextlib.suppress(Exception):
            w.info["instance_info"] = _plain(h.get_info())
        h.unload()

    def load(self) -> Any:
        return self.client.llm.model(C.LLM_KEY, config=self.config)

    def unload(self, h: Any) -> None:
        h.unload()

    def second(self, h: Any, ident: str) -> Any:
        return self.client.llm.load_new_instance(C.LLM_KEY, ident, config=self.config)

    def hit(self) -> Any:
        return self.client.llm.model(C.LLM_KEY)

    def tokenize(self, h: Any, text: str) -> list[int]:
        return list(h.tokenize(text))

    def prompt_eval(self, h: Any, text: str, ids: list[int]) -> None:
        # The public path that processes a prompt and stops: a 1-token completion (prompt + one sample).
        h.complete(text, config={"maxTokens": 1, "temperature": 0})

    def complete(self, h: Any, text: str, ids: list[int], n: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        first = None
        stream = h.complete_stream(text, config={"maxTokens": n, "temperature": 0})
        for _ in stream:
            if first is None:
                first = time.perf_counter()
        r = stream.result()
        end = time.perf_counter()
        s = r.stats
        return {
            "ttft": (first or end) - t0,
            "total": end - t0,
            "predicted": int(s.predicted_tokens_count),
            "prompt": int(s.prompt_tokens_count),
            "text": str(r.content),
            "self_tps": _f(getattr(s, "tokens_per_second", None)),
            "self_ttft": _f(getattr(s, "time_to_first_token_sec", None)),
            "stop_reason": str(getattr(s, "stop_reason", "")),
        }

    def evaluate_all(self, h: Any, ids: list[int]) -> Any:
        return h.evaluate(ids)

    def close(self) -> None:
        self.client.close()


class LlamaCppLlm:
    name = "llama-cpp-python"

    def __init__(self, w: Worker) -> None:
        t0 = time.perf_counter()
        import llama_cpp

        w.info["import_s"] = time.perf_counter() - t0
        self.llama_cpp = llama_cpp
        self.path = str(w.models_dir / C.LLM_FILE)
        self.kwargs: dict[str, Any] = dict(
            n_ctx=C.CONTEXT_LENGTH,
            n_threads=C.THREADS,
            n_threads_batch=C.THREADS,
            n_batch=C.EVAL_BATCH,
            use_mmap=True,
            verbose=False,
        )
        # The AMX kernels crash on these CPUs; the bench env builds llama.cpp with AMX off, and where the
        # installed version has the switch we also turn the extra buffer types off (the same results here).
        if "use_extra_bufts" in inspect.signature(llama_cpp.Llama.__init__).parameters:
            self.kwargs["use_extra_bufts"] = False
        w.info["llama_cpp_python_version"] = llama_cpp.__version__
        w.info["llama_kwargs"] = self.kwargs
        with contextlib.suppress(Exception):
            w.info["llama_system_info"] = llama_cpp.llama_print_system_info().decode(errors="replace").strip()
        self.loaded: list[Any] = []

    def load(self, **extra: Any) -> Any:
        return self.llama_cpp.Llama(model_path=self.path, **self.kwargs, **extra)

    def unload(self, h: Any) -> None:
        h.close()
        del h
        gc.collect()

    def second(self, h: Any, ident: str) -> Any:
        return self.load()

    def tokenize(self, h: Any, text: str) -> list[int]:
        return list(h.tokenize(text.encode(), add_bos=True, special=True))

    def prompt_eval(self, h: Any, text: str, ids: list[int]) -> None:
        h.reset()
        h.eval(ids)

    def complete(self, h: Any, text: str, ids: list[int], n: int) -> dict[str, Any]:
        h.reset()  # no KV-prefix reuse across calls
        t0 = time.perf_counter()
        first = None
        parts, finish = [], None
        for chunk in h.create_completion(ids, max_tokens=n, temperature=0.0, stream=True):
            if first is None:
                first = time.perf_counter()
            parts.append(chunk["choices"][0]["text"])
            finish = chunk["choices"][0].get("finish_reason") or finish
        end = time.perf_counter()
        # The stream has no usage block. generate() evaluates every token it yields except the last one when it
        # stops at max_tokens; at an end-of-generation token it has evaluated all it yielded.
        predicted = h.n_tokens - len(ids) + (1 if finish == "length" else 0)
        return {
            "ttft": (first or end) - t0,
            "total": end - t0,
            "predicted": int(predicted),
            "prompt": len(ids),
            "text": "".join(parts),
            "stop_reason": str(finish),
        }

    def close(self) -> None:
        pass


def _f(x: Any) -> float | None:
    return None if x is None else float(x)


def _plain(x: Any) -> Any:
    """A JSON-able view of a dataclass / dict / object."""
    import dataclasses

    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return _plain(dataclasses.asdict(x))
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return str(x)


def run_llm(w: Worker, adapter_cls: type) -> None:
    a = None
    with w.section("setup"):
        a = adapter_cls(w)
    if a is None:
        return
    path = w.models_dir / C.LLM_FILE
    reps = w.reps
    gen_tokens = 16 if w.quick else C.GEN_TOKENS
    rss0 = C.settle()
    w.info["rss_baseline_mib"] = rss0 / 2**20

    with w.section("warm-up load"):
        a.unload(a.load())
        gc.collect()

    with w.section("cold load"):
        cold, first, resident = [], [], []
        for _ in range(reps):
            w.quiet()
            C.drop_page_cache(path)
            resident.append(C.resident_fraction(path))
            t0 = time.perf_counter()
            h = a.load()
            t1 = time.perf_counter()
            a.prompt_eval(h, "Hello", a.tokenize(h, "Hello"))
            t2 = time.perf_counter()
            a.unload(h)
            del h
            gc.collect()
            cold.append(t1 - t0)
            first.append(t2 - t0)
        w.put("load_cold_s", cold, "s", "lower", resident_before=resident)
        w.put("cold_first_token_s", first, "s", "lower")

    with w.section("warm load"):
        warm = []
        for _ in range(reps):
            w.quiet()
            t0 = time.perf_counter()
            h = a.load()
            warm.append(time.perf_counter() - t0)
            a.unload(h)
            del h
        w.put("load_warm_s", warm, "s", "lower")

    rss_before = C.settle()
    h = None
    with w.section("main load"):
        h = a.load()
        w.info["rss_before_main_load_mib"] = rss_before / 2**20
        rss_load = C.settle()
        w.put("rss_load_mib", [(rss_load - rss_before) / 2**20], "MiB", "lower")
    if h is None:
        a.close()
        return

    prompts = [C.prompt_text(i) for i in range(2 * reps + 2)]
    ids = [a.tokenize(h, p) for p in prompts]
    w.info["prompt_tokens"] = sorted({len(x) for x in ids})
    w.check["prompt_ids_0"] = ids[0]

    with w.section("warm-up inference"):
        a.complete(h, prompts[-1], ids[-1], 8)
        a.prompt_eval(h, prompts[-2], ids[-2])

    with w.section("prompt processing"):
        tps = []
        for i in range(reps):
            w.quiet()
            t0 = time.perf_counter()
            a.prompt_eval(h, prompts[2 * i], ids[2 * i])
            dt = time.perf_counter() - t0
            tps.append(len(ids[2 * i]) / dt)
        w.put("prompt_tps", tps, "tok/s", "higher")

    with w.section("generation"):
        ttft, gen, total, predicted, self_tps, self_ttft = [], [], [], [], [], []
        for i in range(reps):
            w.quiet()
            # streamed, so that time to first token and the decode rate come from the same request
            rn = a.complete(h, prompts[2 * i + 1], ids[2 * i + 1], gen_tokens)
            ttft.append(rn["ttft"])
            total.append(rn["total"])
            predicted.append(rn["predicted"])
            # decode rate: the tokens after the first, over the time after the first token
            gen.append((rn["predicted"] - 1) / max(rn["total"] - rn["ttft"], 1e-9))
            if rn.get("self_tps") is not None:
                self_tps.append(rn["self_tps"])
            if rn.get("self_ttft") is not None:
                self_ttft.append(rn["self_ttft"])
            if i == 0:
                w.check["generated_text"] = rn["text"]
                w.info["stop_reason"] = rn.get("stop_reason")
        w.put("ttft_s", ttft, "s", "lower")
        w.put("gen_tps", gen, "tok/s", "higher", predicted=predicted)
        w.put("gen_total_s", total, "s", "lower", predicted=predicted)
        if self_tps:
            w.put("self_reported_gen_tps", self_tps, "tok/s", "higher")
        if self_ttft:
            w.put("self_reported_ttft_s", self_ttft, "s", "lower")
    w.put("rss_infer_mib", [(C.settle() - rss_before) / 2**20], "MiB", "lower")

    if not w.quick:
        with w.section("generation, one core busy"):
            # A user's machine is rarely idle. With one of the 2 cores taken by a busy loop, thread pools that
            # synchronise at spinning barriers (OpenMP, candle's BarrierPool) can lose far more than half.
            gen = []
            with C.busy_core():
                for i in range(min(reps, 3)):
                    rn = a.complete(h, prompts[2 * i + 1], ids[2 * i + 1], C.GEN_TOKENS // 4)
                    gen.append((rn["predicted"] - 1) / max(rn["total"] - rn["ttft"], 1e-9))
            w.put("gen_tps_one_core_busy", gen, "tok/s", "higher")

    with w.section("second instance"):
        sec = []
        for i in range(reps):
            t0 = time.perf_counter()
            h2 = a.second(h, f"bench-second-{i}")
            sec.append(time.perf_counter() - t0)
            a.unload(h2)
        w.put("second_instance_s", sec, "s", "lower")

    if hasattr(a, "hit"):
        with w.section("model(key) hit"):
            n = 200 if w.quick else 2000
            a.hit()
            ns = []
            for _ in range(n):
                t0 = time.perf_counter_ns()
                a.hit()
                ns.append((time.perf_counter_ns() - t0) / 1000)
            w.put("model_hit_us", ns, "µs", "lower")

    with w.section("evaluate (all-position logits)"):
        if isinstance(a, LlamaCppLlm):
            # llama.cpp computes logits for every position only in a context made with logits_all=True
            he = a.load(logits_all=True)

            def ev(x: list[int]) -> None:
                he.reset()
                he.eval(x)
        else:
            he, ev = h, functools.partial(a.evaluate_all, h)
        ev(ids[-1])
        tps = []
        for i in range(reps):
            w.quiet()
            t0 = time.perf_counter()
            ev(ids[2 * i])
            dt = time.perf_counter() - t0
            tps.append(len(ids[2 * i]) / dt)
        w.put("evaluate_all_tps", tps, "tok/s", "higher")
        if he is not h:
            a.unload(he)

    with w.section("unload"):
        a.unload(h)
        del h
        w.put("rss_unload_mib", [(C.settle() - rss_before) / 2**20], "MiB", "lower")
    with w.section("close"):
        a.close()


# --------------------------------------------------------------------------------------------------------------
# Embedding
# --------------------------------------------------------------------------------------------------------------


class ModelhostEmb:
    def __init__(self, w: Worker) -> None:
        t0 = time.perf_counter()
        import modelhost as mh

        w.info["import_s"] = time.perf_counter() - t0
        w.info["modelhost_version"] = getattr(mh, "__version__", None)
        w.info["modelhost_core"] = getattr(getattr(mh, "_core", None), "__file__", None)
        self.client = mh.Client(str(w.models_dir))

    def load(self) -> Any:
        return self.client.embedding.model(C.EMB_KEY)

    def unload(self, h: Any) -> None:
        h.unload()

    def second(self, h: Any, ident: str) -> Any:
        return self.client.embedding.load_new_instance(C.EMB_KEY, ident)

    def hit(self) -> Any:
        return self.client.embedding.model(C.EMB_KEY)

    def embed_batched(self, h: Any, texts: list[str], batch: int) -> Any:
        import numpy as np

        return np.concatenate([h.embed(texts[i : i + batch]) for i in range(0, len(texts), batch)])

    def embed_all(self, h: Any, texts: list[str]) -> Any:
        return h.embed(texts)

    def embed_one(self, h: Any, text: str) -> Any:
        return h.embed([text])

    def close(self) -> None:
        self.client.close()


class SentenceTransformersEmb:
    def __init__(self, w: Worker) -> None:
        t0 = time.perf_counter()
        import sentence_transformers
        import torch

        w.info["import_s"] = time.perf_counter() - t0
        torch.set_num_threads(C.THREADS)
        self.st = sentence_transformers
        self.path = str(w.models_dir / C.EMB_DIR)
        w.info["sentence_transformers_version"] = sentence_transformers.__version__
        w.info["torch_version"] = torch.__version__
        w.info["torch_threads"] = torch.get_num_threads()

    def load(self) -> Any:
        return self.st.SentenceTransformer(self.path, device="cpu")

    def unload(self, h: Any) -> None:
        del h
        gc.collect()

    def second(self, h: Any, ident: str) -> Any:
        return self.load()

    def embed_batched(self, h: Any, texts: list[str], batch: int) -> Any:
        return h.encode(texts, batch_size=batch, show_progress_bar=False)

    def embed_one(self, h: Any, text: str) -> Any:
        return h.encode([text], show_progress_bar=False)

    def close(self) -> None:
        pass


def run_embed(w: Worker, adapter_cls: type) -> None:
    a = None
    with w.section("setup"):
        a = adapter_cls(w)
    if a is None:
        return
    path = w.models_dir / C.EMB_DIR
    reps = w.reps
    sents = C.sentences(64 if w.quick else C.N_SENTENCES)
    rss0 = C.settle()
    w.info["rss_baseline_mib"] = rss0 / 2**20

    with w.section("warm-up load"):
        a.unload(a.load())
        gc.collect()

    with w.section("cold load"):
        cold, first, resident = [], [], []
        for _ in range(reps):
            w.quiet()
            C.drop_page_cache(path)
            resident.append(C.resident_fraction(path))
            t0 = time.perf_counter()
            h = a.load()
            t1 = time.perf_counter()
            a.embed_one(h, "hello world")
            t2 = time.perf_counter()
            a.unload(h)
            del h
            gc.collect()
            cold.append(t1 - t0)
            first.append(t2 - t0)
        w.put("load_cold_s", cold, "s", "lower", resident_before=resident)
        w.put("cold_first_embed_s", first, "s", "lower")

    with w.section("warm load"):
        warm = []
        for _ in range(reps):
            w.quiet()
            t0 = time.perf_counter()
            h = a.load()
            warm.append(time.perf_counter() - t0)
            a.unload(h)
            del h
        w.put("load_warm_s", warm, "s", "lower")

    rss_before = C.settle()
    h = None
    with w.section("main load"):
        h = a.load()
        w.put("rss_load_mib", [(C.settle() - rss_before) / 2**20], "MiB", "lower")
    if h is None:
        a.close()
        return

    with w.section("warm-up inference"):
        a.embed_batched(h, sents[:64], C.EMB_BATCH)
        a.embed_one(h, sents[0])
        w.check["vectors"] = [[float(v) for v in row] for row in a.embed_batched(h, sents[:4], C.EMB_BATCH)]

    with w.section("throughput"):
        sps = []
        for _ in range(reps):
            w.quiet()
            t0 = time.perf_counter()
            out = a.embed_batched(h, sents, C.EMB_BATCH)
            dt = time.perf_counter() - t0
            sps.append(len(sents) / dt)
        w.info["embedding_shape"] = list(out.shape)
        w.put("emb_sps", sps, "sent/s", "higher")
    if hasattr(a, "embed_all"):
        with w.section("throughput, one call"):
            sps = []
            for _ in range(reps):
                w.quiet()
                t0 = time.perf_counter()
                a.embed_all(h, sents)
                dt = time.perf_counter() - t0
                sps.append(len(sents) / dt)
            w.put("emb_sps_one_call", sps, "sent/s", "higher")

    with w.section("single-sentence latency"):
        n = 20 if w.quick else 200
        ms = []
        for i in range(n):
            s = sents[i % len(sents)]
            t0 = time.perf_counter()
            a.embed_one(h, s)
            dt = time.perf_counter() - t0
            ms.append(dt * 1000)
        w.put("emb_latency_ms", ms, "ms", "lower")
    w.put("rss_infer_mib", [(C.settle() - rss_before) / 2**20], "MiB", "lower")

    with w.section("second instance"):
        sec = []
        for i in range(reps):
            t0 = time.perf_counter()
            h2 = a.second(h, f"bench-second-{i}")
            sec.append(time.perf_counter() - t0)
            a.unload(h2)
            del h2
        w.put("second_instance_s", sec, "s", "lower")

    if hasattr(a, "hit"):
        with w.section("model(key) hit"):
            n = 200 if w.quick else 2000
            a.hit()
            us = []
            for _ in range(n):
                t0 = time.perf_counter_ns()
                a.hit()
                us.append((time.perf_counter_ns() - t0) / 1000)
            w.put("model_hit_us", us, "µs", "lower")

    with w.section("unload"):
        a.unload(h)
        del h
        w.put("rss_unload_mib", [(C.settle() - rss_before) / 2**20], "MiB", "lower")
    with w.section("close"):
        a.close()


# --------------------------------------------------------------------------------------------------------------
# Catalog
# --------------------------------------------------------------------------------------------------------------


def make_catalog(src_models: Path, dest: Path, n: int) -> str:
    """n model entries under dest: 3/4 GGUF files, 1/4 embedding folders, hard links to the real sample models
    (symlinks where a hard link is impossible). Returns "hardlink" or "symlink"."""
    gguf = src_models / C.LLM_FILE
    emb = src_models / C.EMB_DIR
    emb_files = [p for p in C.files_of(emb) if not p.name.startswith(".")]
    how = "hardlink"

    def link(src: Path, dst: Path) -> None:
        nonlocal how
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, dst)
        except OSError:
            how = "symlink"
            os.symlink(src, dst)

    n_gguf = n * 3 // 4
    for i in range(n):
        pub = dest / f"bench-publisher-{i // 20:02d}"
        if i < n_gguf:
            link(gguf, pub / f"SmolLM2-copy-{i:03d}-GGUF" / f"SmolLM2-copy-{i:03d}.Q4_1.gguf")
        else:
            for f in emb_files:
                link(f, pub / f"MiniLM-copy-{i:03d}" / f.relative_to(emb))
    return how


def run_catalog(w: Worker) -> None:
    import modelhost as mh

    n = 20 if w.quick else C.CATALOG_ENTRIES
    tmp = Path(tempfile.mkdtemp(prefix="modelhost-bench-catalog-"))
    try:
        w.info["catalog_links"] = make_catalog(w.models_dir, tmp, n)
        w.info["catalog_entries_made"] = n
        with w.section("list_downloaded_models"):
            first, repeat = [], []
            count = None
            for i in range(w.reps + 1):
                with mh.Client(str(tmp)) as c:
                    dt, models = C.timed(c.list_downloaded_models)
                    count = len(models)
                    if i > 0:  # the first round is the warm-up (page cache, lazy imports)
                        first.append(dt * 1000)
                        for _ in range(5):
                            repeat.append(C.timed(c.list_downloaded_models)[0] * 1000)
            w.info["catalog_entries_listed"] = count
            if count != n:
                w.errors.append(f"list_downloaded_models: listed {count} entries, made {n}")
            w.put("list_models_first_ms", first, "ms", "lower", entries=n)
            w.put("list_models_repeat_ms", repeat, "ms", "lower", entries=n)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("system", choices=["modelhost", "llama", "st"])
    ap.add_argument("task", choices=["llm", "embed", "catalog"])
    ap.add_argument("--models-dir", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        help="before each timed repetition, wait up to this many seconds for other processes to idle",
    )
    args = ap.parse_args()
    w = Worker(args.system, args.task, args.models_dir, args.reps, args.quick, args.wait_quiet)
    try:
        if args.task == "llm":
            run_llm(w, {"modelhost": ModelhostLlm, "llama": LlamaCppLlm}[args.system])
        elif args.task == "embed":
            run_embed(w, {"modelhost": ModelhostEmb, "st": SentenceTransformersEmb}[args.system])
        else:
            run_catalog(w)
    except Exception as e:
        w.errors.append(f"{type(e).__name__}: {e}")
        traceback.print_exc()
    args.out.write_text(json.dumps(w.result(), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

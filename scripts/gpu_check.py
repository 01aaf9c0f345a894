"""Device check of the CUDA wheel (docs/cuda.md): SmolLM2 on the GPU against llama.cpp's reference tokens.

Run through scripts/gpu_check.sh, which installs the wheel and sets up the CUDA libraries. Two subcommands:

``prepare`` (here, after scripts/build_cuda_wheel.sh): the device tool carries at most 64 MiB a call, and SmolLM2
is 94 MiB, so the model travels in two parts: ``dist-cuda/carry-a`` (the wheel, the file's first part, its
output_norm tensor, a manifest) and ``dist-cuda/carry-b`` (the rest, the manifest).

``device`` (on the GPU machine): gathers the parts carried so far into ``--work`` (which outlives a call while the
machine stays warm), then
  * once the first part is there: a smoke check on a 2-block model cut from it (the real token embedding and
    Q4_1 blocks, so the real kernels): logits and greedy tokens at ``gpu.ratio`` 1.0 and 0.5 against the CPU;
  * once every part is there (sha256 checked): the full check. SmolLM2 at ``gpu.ratio`` 1.0 (loaded twice: cold,
    with CUDA's start-up, then warm), 0.5, and 0.0 as the CPU baseline; each raw_completion case of
    tests/refs/smollm2.json greedy, whose tokens must equal llama.cpp's up to its first step with a lead under
    1.0 (as tests/test_reference_smollm2.py); prompt-end top-5 logits against llama.cpp's (reported, tolerance
    0.5); load time, GB/s from file to device, prompt and generation tokens/s.
Writes ``smoke.json`` / ``gpu_check.json`` to ``--out``; exit status 0 only if what ran passed.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import platform
import shutil
import struct
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MODEL_KEY = "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
REFS = ROOT / "tests" / "refs" / "smollm2.json"
CLEAR_LEAD = 1.0
LOGIT_TOLERANCE = 0.5
CONTEXT = 2048
CARRY_LIMIT = 64 << 20
# What travels besides the carried folders (tracked and untracked-not-ignored files), with room to spare.
REPO_ALLOWANCE = 4 << 20
SMOKE_BLOCKS = 2


# --- a minimal GGUF header reader/writer (for cutting the smoke model) -------------------------------------------

_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
GGML_F32, GGML_Q4_1, GGML_Q8_0 = 0, 3, 8
_BLOCK = {GGML_F32: (1, 4), 1: (1, 2), 2: (32, 18), GGML_Q4_1: (32, 20), GGML_Q8_0: (32, 34)}


class _Buf:
    def __init__(self, raw: bytes) -> None:
        self.raw, self.pos = raw, 0

    def take(self, fmt: str) -> Any:
        (v,) = struct.unpack_from(fmt, self.raw, self.pos)
        self.pos += struct.calcsize(fmt)
        return v

    def string(self) -> bytes:
        n = self.take("<Q")
        s = self.raw[self.pos : self.pos + n]
        self.pos += n
        return s

    def skip_value(self, vtype: int) -> Any:
        if vtype == 8:
            return self.string()
        if vtype == 9:
            item, n = self.take("<I"), self.take("<Q")
            for _ in range(n):
                self.skip_value(item)
            return None
        return self.take(_SCALAR[vtype])


def read_header(raw: bytes) -> dict[str, Any]:
    """KVs (raw bytes each, with the values of scalars), tensor infos and where the data starts."""
    b = _Buf(raw)
    if raw[:4] != b"GGUF":
        raise ValueError("not a GGUF file")
    b.pos = 4
    version, n_tensors, n_kvs = b.take("<I"), b.take("<Q"), b.take("<Q")
    kvs, alignment = [], 32
    for _ in range(n_kvs):
        start = b.pos
        key = b.string().decode()
        vtype = b.take("<I")
        value = b.skip_value(vtype)
        kvs.append({"key": key, "type": vtype, "value": value, "raw": raw[start : b.pos]})
        if key == "general.alignment":
            alignment = int(value)
    tensors = []
    for _ in range(n_tensors):
        name = b.string().decode()
        dims = [b.take("<Q") for _ in range(b.take("<I"))]
        ggml_type, offset = b.take("<I"), b.take("<Q")
        numel = 1
        for d in dims:
            numel *= d
        block, size = _BLOCK[ggml_type]
        tensors.append(
            {"name": name, "dims": dims, "type": ggml_type, "offset": offset, "nbytes": numel // block * size}
        )
    data_start = (b.pos + alignment - 1) // alignment * alignment
    return {"version": version, "kvs": kvs, "tensors": tensors, "alignment": alignment, "data_start": data_start}


def cut_smoke_model(prefix: bytes, output_norm: bytes, n_blocks: int, out: Path) -> dict[str, Any]:
    """A llama GGUF of the first ``n_blocks`` whole blocks found in ``prefix`` (the start of the real file), with its
    token embedding and tokenizer, renumbered from 0, and the real output_norm."""
    h = read_header(prefix)
    data = prefix[h["data_start"] :]
    blocks: dict[int, list[dict[str, Any]]] = {}
    for t in h["tensors"]:
        if t["name"].startswith("blk."):
            blocks.setdefault(int(t["name"].split(".")[1]), []).append(t)
    whole = [i for i, ts in blocks.items() if all(t["offset"] + t["nbytes"] <= len(data) for t in ts)]
    if len(whole) < n_blocks:
        raise ValueError(f"only {len(whole)} whole blocks in the first part; need {n_blocks}")
    keep = sorted(whole, key=lambda i: min(t["offset"] for t in blocks[i]))[:n_blocks]
    chosen = [t for t in h["tensors"] if t["name"] == "token_embd.weight"]
    chosen += [dict(t, name=f"blk.{keep.index(i)}." + t["name"].split(".", 2)[2]) for i in keep for t in blocks[i]]
    norm = {"name": "output_norm.weight", "dims": [len(output_norm) // 4], "type": GGML_F32, "nbytes": len(output_norm)}
    chosen.append(dict(norm, payload=output_norm))
    kv_raw = b""
    for kv in h["kvs"]:
        if kv["key"] == "llama.block_count":
            kv_raw += struct.pack("<Q", len(kv["key"])) + kv["key"].encode() + struct.pack("<I", 4)
            kv_raw += struct.pack("<I", n_blocks)
        else:
            kv_raw += kv["raw"]
    align = h["alignment"]
    infos, body = b"", bytearray()
    for t in chosen:
        off = len(body)
        infos += struct.pack("<Q", len(t["name"])) + t["name"].encode() + struct.pack("<I", len(t["dims"]))
        infos += b"".join(struct.pack("<Q", d) for d in t["dims"]) + struct.pack("<IQ", t["type"], off)
        body += t.get("payload") or data[t["offset"] : t["offset"] + t["nbytes"]]
        body += b"\0" * ((-len(body)) % align)
    head = b"GGUF" + struct.pack("<IQQ", h["version"], len(chosen), len(h["kvs"])) + kv_raw + infos
    head += b"\0" * ((-len(head)) % align)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(head + bytes(body))
    return {"blocks_from_file": keep, "bytes": out.stat().st_size}


# --- helpers ----------------------------------------------------------------------------------------------------


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def log(msg: str) -> None:
    print(f"[gpu_check] {msg}", flush=True)


def nvidia_smi(*args: str) -> str | None:
    try:
        return subprocess.run(["nvidia-smi", *args], capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError) as e:
        return f"nvidia-smi failed: {e!r}"


def gpu_memory_used_mib() -> int | None:
    out = nvidia_smi("--query-gpu=memory.used", "--format=csv,noheader,nounits")
    try:
        return int(out.splitlines()[0]) if out else None
    except ValueError:
        return None


def clear_prefix(case: dict[str, Any]) -> int:
    """How many leading greedy steps llama.cpp took with a clear lead (as tests/test_reference_smollm2.py)."""
    n = 0
    for s in case["steps_[chosen id, its logit, margin to 2nd best]"]:
        if s["margin_to_2nd"] < CLEAR_LEAD:
            break
        n += 1
    return n


def load(client: Any, key: str, ratio: float) -> tuple[Any, float, list[str]]:
    """Load a fresh instance; returns it, the load's seconds and any PlacementWarning."""
    import modelhost as mh

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        llm = client.llm.load_new_instance(key, ttl=None, config={"gpu": {"ratio": ratio}, "contextLength": CONTEXT})
        seconds = time.perf_counter() - t0
    placement_warnings = [str(w.message) for w in caught if issubclass(w.category, mh.PlacementWarning)]
    return llm, seconds, placement_warnings


def info_of(llm: Any) -> dict[str, Any]:
    info = llm.get_info()
    return {"device": info.device, "placement": info.placement, "placement_warning": info.placement_warning}


def gpu_used(info: dict[str, Any], ratio: float) -> bool:
    """Whether the placement puts blocks on a CUDA device, as a ratio > 0 asks."""
    text = json.dumps(info["placement"], default=str)
    return ("cuda" in text) if ratio > 0 else ("cuda" not in text)


# --- prepare (here) ---------------------------------------------------------------------------------------------


def prepare(args: argparse.Namespace) -> int:
    model = Path(args.model).resolve()
    wheels = sorted(Path(args.wheel_dir).glob("modelhost-*.whl"), key=lambda p: p.stat().st_mtime)
    if not wheels:
        log(f"no wheel in {args.wheel_dir}: run scripts/build_cuda_wheel.sh first")
        return 1
    wheel = wheels[-1]
    raw = model.read_bytes()
    h = read_header(raw)
    norm = next(t for t in h["tensors"] if t["name"] == "output_norm.weight")
    norm_bytes = raw[h["data_start"] + norm["offset"] : h["data_start"] + norm["offset"] + norm["nbytes"]]
    # Part a: the header, the token embedding and a few whole blocks (for the smoke model), travelling with the
    # wheel; part b: the rest. The cut evens out the two calls' sizes.
    budget = CARRY_LIMIT - REPO_ALLOWANCE - 4096
    size_a = (len(raw) - wheel.stat().st_size) // 2
    embd = next(t for t in h["tensors"] if t["name"] == "token_embd.weight")
    need_a = h["data_start"] + embd["offset"] + embd["nbytes"] + (SMOKE_BLOCKS + 1) * 2_400_000
    size_a = max(size_a, need_a)
    size_b = len(raw) - size_a
    if wheel.stat().st_size + size_a + len(norm_bytes) > budget or size_b > budget:
        log(f"does not fit two calls: wheel {wheel.stat().st_size} B, model {len(raw)} B, part a {size_a} B")
        return 1
    out = Path(args.carry_dir)
    carry_a, carry_b = out / "carry-a", out / "carry-b"
    for d in (carry_a, carry_b):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    (carry_a / "model.part-a").write_bytes(raw[:size_a])
    (carry_b / "model.part-b").write_bytes(raw[size_a:])
    (carry_a / "output_norm.f32").write_bytes(norm_bytes)
    shutil.copy2(wheel, carry_a / wheel.name)
    manifest = {
        "model_key": MODEL_KEY,
        "model_file": MODEL_FILE,
        "size": len(raw),
        "sha256": hashlib.sha256(raw).hexdigest(),
        "parts": [
            {"name": "model.part-a", "size": size_a, "sha256": hashlib.sha256(raw[:size_a]).hexdigest()},
            {"name": "model.part-b", "size": size_b, "sha256": hashlib.sha256(raw[size_a:]).hexdigest()},
        ],
        "wheel": wheel.name,
        "wheel_sha256": sha256(wheel),
    }
    for d in (carry_a, carry_b):
        (d / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    repo = travelling_repo_bytes()
    status = 0
    for d in (carry_a, carry_b):
        total = sum(f.stat().st_size for f in d.iterdir())
        log(f"{d}: {total / 2**20:.1f} MiB ({', '.join(sorted(f.name for f in d.iterdir()))})")
        if repo is not None:
            fits = repo + total <= CARRY_LIMIT
            log(
                f"  with the working tree ({repo / 2**20:.1f} MiB): {(repo + total) / 2**20:.1f} MiB of 64 MiB"
                + ("" if fits else ": TOO LARGE")
            )
            status |= 0 if fits else 1
    return status


def travelling_repo_bytes() -> int | None:
    """Bytes of the tracked and untracked-not-ignored files (what the device tool sends besides the carry)."""
    try:
        names = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout.split(b"\0")
    except (OSError, subprocess.CalledProcessError):
        return None
    return sum((ROOT / n.decode()).stat().st_size for n in names if n and (ROOT / n.decode()).is_file())


# --- device -----------------------------------------------------------------------------------------------------


def gather(carry_dir: Path, work: Path) -> dict[str, Any] | None:
    """Copy what this call carried into ``work``; returns the manifest (None: nothing carried, ever)."""
    parts = work / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    for d in sorted(carry_dir.glob("carry-*")):
        for f in d.iterdir():
            wanted = f.name.startswith("model.part-") or f.name in ("manifest.json", "output_norm.f32")
            dst = parts / f.name
            if wanted and (not dst.exists() or dst.stat().st_size != f.stat().st_size):
                shutil.copyfile(f, dst)
                log(f"staged {f.name} ({f.stat().st_size} B)")
    path = parts / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else None


def smoke(work: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """The 2-block model cut from part a: GPU (ratios 1.0, 0.5) against the CPU."""
    import modelhost as mh
    import numpy as np

    parts = work / "parts"
    path = work / "smoke" / "smollm2-2-blocks.gguf"
    cut = cut_smoke_model(
        (parts / "model.part-a").read_bytes(), (parts / "output_norm.f32").read_bytes(), SMOKE_BLOCKS, path
    )
    result: dict[str, Any] = {"model": str(path), **cut, "runs": {}}
    prompt = "The capital of France is"
    ok = True
    with mh.Client(work / "empty-models-dir") as client:
        ref_logits = ref_tokens = None
        for ratio in (0.0, 1.0, 0.5):
            try:
                llm, seconds, warns = load(client, str(path), ratio)
            except Exception as e:  # a CUDA error is a finding: record it, go on with the next ratio
                result["runs"][str(ratio)] = {"error": repr(e)}
                ok = False
                log(f"smoke ratio {ratio}: load failed: {e!r}")
                continue
            try:
                ids = llm.tokenize(prompt)
                t0 = time.perf_counter()
                logits = llm.evaluate(ids)
                eval_s = time.perf_counter() - t0
                tokens = llm.complete(prompt, config={"maxTokens": 16, "temperature": 0}).tokens
                run = {
                    "load_s": seconds,
                    "placement_warnings": warns,
                    **info_of(llm),
                    "evaluate_s": eval_s,
                    "tokens": tokens,
                    "gpu_used": gpu_used(info_of(llm), ratio),
                }
                if ref_logits is None:
                    ref_logits, ref_tokens = logits, tokens
                else:
                    diff = float(np.max(np.abs(logits - ref_logits)))
                    top = int(np.argmax(ref_logits[-1]))
                    run |= {
                        "max_abs_logit_diff_vs_cpu": diff,
                        "argmax_equal": int(np.argmax(logits[-1])) == top,
                        "tokens_equal_cpu": tokens == ref_tokens,
                    }
                    ok &= run["gpu_used"] and not warns and run["argmax_equal"] and diff < LOGIT_TOLERANCE
                result["runs"][str(ratio)] = run
                log(
                    f"smoke ratio {ratio}: load {seconds:.2f} s, device {run['device']}, tokens {tokens[:8]}..., "
                    + (f"max |logit - cpu| {run.get('max_abs_logit_diff_vs_cpu', 0):.4f}" if ratio else "cpu")
                )
            except Exception as e:
                result["runs"][str(ratio)] = {"error": repr(e)}
                ok = False
                log(f"smoke ratio {ratio}: failed: {e!r}")
            finally:
                llm.unload()
    result["ok"] = ok
    return result


def assemble(work: Path, manifest: dict[str, Any]) -> Path | None:
    parts = work / "parts"
    target = work / "models" / manifest["model_key"] / manifest["model_file"]
    if target.exists() and target.stat().st_size == manifest["size"]:
        return target
    missing = [p["name"] for p in manifest["parts"] if not (parts / p["name"]).exists()]
    if missing:
        log(f"not yet here: {', '.join(missing)} (the full check runs once every part has been carried)")
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as out:
        for p in manifest["parts"]:
            out.write((parts / p["name"]).read_bytes())
    digest = sha256(target)
    if digest != manifest["sha256"]:
        target.unlink()
        raise SystemExit(f"reassembled model has sha256 {digest}, want {manifest['sha256']}")
    log(f"reassembled {target} ({manifest['size']} B, sha256 ok)")
    return target


def full_check(work: Path, manifest: dict[str, Any], env: dict[str, Any], out: Path) -> dict[str, Any]:
    import modelhost as mh
    import numpy as np

    refs = json.loads(REFS.read_text())
    cases = refs["raw_completion"]["cases"]
    key = manifest["model_key"]
    long_text = " ".join(
        f"Paragraph {i}: the quick brown fox jumps over the lazy dog while the river runs to the sea."
        for i in range(60)
    )
    result: dict[str, Any] = {"env": env, "ok": False, "complete": False, "runs": {}}

    def write(res: dict[str, Any]) -> None:  # after every run, so that a crash or a timeout still leaves figures
        (out / "gpu_check.json").write_text(json.dumps(res, indent=2, default=str) + "\n")

    ok = True
    with mh.Client(work / "models") as client:
        estimates = {
            r: client.llm.estimate(key, {"gpu": {"ratio": r}, "contextLength": CONTEXT}) for r in (1.0, 0.5, 0.0)
        }
        # (label, ratio): 1.0 twice, the first with CUDA's start-up in it (when no smoke check ran before it in this
        # process); then 0.5; then 0.0, the CPU baseline.
        for label, ratio in (("1.0-cold", 1.0), ("1.0", 1.0), ("0.5", 0.5), ("0.0-cpu", 0.0)):
            mem_before = gpu_memory_used_mib()
            try:
                llm, load_s, warns = load(client, key, ratio)
            except Exception as e:  # a CUDA error is a finding: record it, go on with the next run
                result["runs"][label] = {"ratio": ratio, "error": repr(e)}
                ok = False
                write(result)
                log(f"{label}: load failed: {e!r}")
                continue
            try:
                info = info_of(llm)
                mem_loaded = gpu_memory_used_mib()
                est = estimates[ratio]
                device_bytes = sum(v for k, v in est.per_device.items() if k.startswith("cuda"))
                mem_delta = None if None in (mem_before, mem_loaded) else mem_loaded - mem_before
                run: dict[str, Any] = {
                    "ratio": ratio,
                    "load_s": load_s,
                    "placement_warnings": warns,
                    **info,
                    "gpu_used": gpu_used(info, ratio),
                    "file_bytes": manifest["size"],
                    "file_GB_per_s": manifest["size"] / load_s / 1e9,
                    "weights_bytes": est.weights_bytes,
                    "weights_GB_per_s": est.weights_bytes / load_s / 1e9,
                    "device_bytes_estimate": device_bytes,
                    "device_GB_per_s_estimate": device_bytes / load_s / 1e9 if device_bytes else None,
                    "gpu_memory_used_mib_before_after_load": [mem_before, mem_loaded],
                    "device_GB_per_s_measured": mem_delta * 2**20 / load_s / 1e9 if mem_delta else None,
                    "estimate": dataclasses.asdict(est),
                }
                if label == "1.0-cold":  # only the load is timed here; the warm run below does the rest
                    result["runs"][label] = run
                    write(result)
                    log(f"{label}: load {load_s:.3f} s (includes CUDA start-up), device {info['device']}")
                    continue
                t0 = time.perf_counter()
                llm.complete("Hello", config={"maxTokens": 4, "temperature": 0})  # first kernels (PTX JIT) loaded
                run["first_request_s"] = time.perf_counter() - t0
                checks = []
                for case in cases if ratio > 0 else []:  # the CPU run is the speed baseline only
                    gen = case["generated_ids"]
                    r = llm.complete(case["prompt"], config={"maxTokens": len(gen), "temperature": 0})
                    n = clear_prefix(case)
                    agreed = next(
                        (i for i, (a, b) in enumerate(zip(r.tokens, gen)) if a != b), min(len(r.tokens), len(gen))
                    )
                    logits = llm.evaluate(case["prompt_ids"])[-1]
                    top5 = case["top5_next_token_logits_[id,logit]"]
                    logit_diff = max(abs(float(logits[t]) - ref) for t, ref in top5)
                    checks.append(
                        {
                            "prompt": case["prompt"],
                            "required": n,
                            "agreed": agreed,
                            "of": len(gen),
                            "greedy_ok": list(r.tokens[:n]) == gen[:n],
                            "top5_max_abs_logit_diff": logit_diff,
                            "top5_logits_ok": logit_diff <= LOGIT_TOLERANCE,
                            "argmax_equal": int(np.argmax(logits)) == top5[0][0],
                        }
                    )
                run["reference_cases"] = checks
                prompt_ids = llm.tokenize(long_text)
                r = llm.complete(long_text, config={"maxTokens": 1, "temperature": 0})
                run["prompt_tokens"] = len(prompt_ids)
                run["prompt_time_to_first_token_s"] = r.stats.time_to_first_token_sec
                run["prompt_tokens_per_s"] = len(prompt_ids) / r.stats.time_to_first_token_sec
                r = llm.complete("Once upon a time, in a small village,", config={"maxTokens": 128, "temperature": 0})
                run["generated_tokens"] = r.stats.predicted_tokens_count
                run["generation_tokens_per_s"] = r.stats.tokens_per_second
                run["generation_time_to_first_token_s"] = r.stats.time_to_first_token_sec
                run["ok"] = run["gpu_used"] and not warns and all(c["greedy_ok"] for c in checks)
                ok &= run["ok"]
                result["runs"][label] = run
                write(result)
                refs_line = (
                    f", greedy {sum(c['greedy_ok'] for c in checks)}/{len(checks)} ok (agreed "
                    f"{[c['agreed'] for c in checks]} of {[c['of'] for c in checks]}, required "
                    f"{[c['required'] for c in checks]}), top-5 logits max |diff| "
                    f"{max(c['top5_max_abs_logit_diff'] for c in checks):.3f}"
                    if checks
                    else ""
                )
                measured = run["device_GB_per_s_measured"]
                log(
                    f"{label}: load {load_s:.3f} s ({run['weights_GB_per_s']:.2f} GB/s of weights from file"
                    + (f", {measured:.2f} GB/s by GPU memory growth" if measured else "")
                    + f"), device {info['device']}{refs_line}, prompt {run['prompt_tokens_per_s']:.0f} tok/s "
                    f"({len(prompt_ids)} tokens), generation {run['generation_tokens_per_s']:.1f} tok/s "
                    f"({run['generated_tokens']} tokens)"
                )
            except Exception as e:
                result["runs"][label] = {"ratio": ratio, "error": repr(e), **result["runs"].get(label, {})}
                ok = False
                write(result)
                log(f"{label}: failed: {e!r}")
            finally:
                llm.unload()
    result["ok"], result["complete"] = ok, True
    write(result)
    return result


def device(args: argparse.Namespace) -> int:
    import modelhost as mh

    work, out = Path(args.work), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = gather(Path(args.carry_dir), work)
    if manifest is None:
        log("nothing carried: call with carry dist-cuda/carry-a first (see docs/cuda.md)")
        return 2
    env = {
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "platform": platform.platform(),
        "modelhost": getattr(mh, "__version__", None),
        "modelhost_path": mh.__file__,
        "wheel": manifest["wheel"],
        "cpu_count": os.cpu_count(),
        "gpu": nvidia_smi("--query-gpu=name,memory.total,driver_version,compute_cap", "--format=csv,noheader"),
    }
    status = 0
    # The smoke check runs once per machine (marked before it starts, so a crash in it does not block call 2).
    if not (work / "smoke.started").exists() and (work / "parts" / "model.part-a").exists():
        (work / "smoke.started").touch()
        res = {"env": env, **smoke(work, manifest)}
        (out / "smoke.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
        log(f"smoke: {'ok' if res['ok'] else 'FAILED'} (written to {out / 'smoke.json'})")
        status |= 0 if res["ok"] else 1
    if assemble(work, manifest) is not None:
        res = full_check(work, manifest, env, out)
        log(f"full check: {'ok' if res['ok'] else 'FAILED'} (written to {out / 'gpu_check.json'})")
        status |= 0 if res["ok"] else 1
    return status


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    pp = sub.add_parser("prepare", help="split the model and stage the wheel for the device tool's carry")
    pp.add_argument("--model", default=str(Path.home() / ".cache/modelhost/models" / MODEL_KEY / MODEL_FILE))
    pp.add_argument("--wheel-dir", default=str(ROOT / "dist-cuda"))
    pp.add_argument("--carry-dir", default=str(ROOT / "dist-cuda"))
    pd = sub.add_parser("device", help="run on the GPU machine (through scripts/gpu_check.sh)")
    pd.add_argument("--carry-dir", default=str(ROOT / "dist-cuda"))
    pd.add_argument("--work", default="/tmp/mh-gpu")
    pd.add_argument("--out", default=os.environ.get("OUT", "/tmp/mh-gpu/out"))
    args = p.parse_args()
    return prepare(args) if args.cmd == "prepare" else device(args)


if __name__ == "__main__":
    sys.exit(main())

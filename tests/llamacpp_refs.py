"""llama.cpp's outputs on a model file, computed by llama-cpp-python in a subprocess of its own.

The family checks (tests/test_families.py) compare modelhost against what this script records. It runs as a separate
process (``python tests/llamacpp_refs.py JOBS.json OUT.json``) so that llama.cpp's shared libraries never share a
process with modelhost, and nothing in it is computed by our own code. A job file is a list of jobs; the output is a
list of results in the same order:

- ``{"op": "quantize", "src", "dst", "ftype", "pure", "token_embedding_type"?}``: ``llama_model_quantize`` with
  ``allow_requantize``.
- ``{"op": "vocab", "path", "texts", "conversations", "builtin_template"}``: token ids of each text (special-token
  parsing on and off, BOS/EOS as the vocabulary adds them), the chat renders (jinja2 as llama-cpp-python's
  ``Jinja2ChatFormatter`` renders a GGUF's template, or llama.cpp's built-in template of that name when the file has
  none), the end-of-generation ids (``llama_vocab_is_eog`` over the whole vocabulary) and control tokens.
- ``{"op": "numerics", "path", "cases", "greedy_tokens", "rows_path"?}``: per case (prompt ids), the top-5 next-token
  logits at the prompt's end, a greedy continuation with each step's id, logit and lead over the second best, and the
  argmax and its lead at every position of prompt + continuation (``logits_all``: the prompt in one batch, then each
  token on the KV cache); with ``rows_path``, the whole prompt-end logit rows saved there (numpy).
- ``{"op": "first_tokens", "path", "prompt", "n"}``: the first greedy tokens after a prompt (for the end-of-generation
  probes).
"""

from __future__ import annotations

import ctypes
import json
import sys
import time
from pathlib import Path
from typing import Any

N_CTX = 256
# One thread: results do not depend on it, and two OpenMP threads spin-waiting on a busy 2-core machine made
# single-token decodes 100x slower.
THREADS = 1
TOP_K = 5
GGML_TYPES = {"F16": 1, "Q8_0": 8}  # ggml_type numbers of the types a job may ask for by name


def load(path: str, *, vocab_only: bool = False) -> Any:
    from llama_cpp import Llama

    # use_extra_bufts=False is what the project asks of every Llama (AMX crashed here); llama-cpp-python 0.3.36 takes
    # it through **kwargs and ignores it, and the wheel is built with AMX off, so it is the build that keeps AMX away.
    return Llama(
        model_path=path,
        n_ctx=N_CTX,
        n_batch=N_CTX,
        n_ubatch=N_CTX,
        n_threads=THREADS,
        n_threads_batch=THREADS,
        logits_all=True,
        vocab_only=vocab_only,
        use_extra_bufts=False,
        seed=0,
        verbose=False,
    )


def quantize(job: dict[str, Any]) -> dict[str, Any]:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = 2  # plain worker threads, no spin-waiting
    params.ftype = job["ftype"]
    params.allow_requantize = True
    params.pure = bool(job.get("pure", False))
    if job.get("token_embedding_type"):
        params.token_embedding_type = GGML_TYPES[job["token_embedding_type"]]
    rc = llama_cpp.llama_model_quantize(job["src"].encode(), job["dst"].encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize({job['src']} -> {job['dst']}, ftype {job['ftype']}) returned {rc}")
    return {"dst": job["dst"]}


def token_text(vocab: Any, token: int) -> str:
    import llama_cpp

    raw: bytes = llama_cpp.llama_vocab_get_text(vocab, token)
    return raw.decode("utf-8", errors="replace")


def render_builtin(name: str, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    """llama.cpp's built-in (C++) chat template ``name``, as llama_chat_apply_template renders it."""
    import llama_cpp

    keep = [(m["role"].encode(), m["content"].encode()) for m in messages]
    chat = (llama_cpp.llama_chat_message * len(keep))(*[llama_cpp.llama_chat_message(r, c) for r, c in keep])
    size = 4096
    while True:
        buf = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_chat_apply_template(name.encode(), chat, len(keep), add_generation_prompt, buf, size)
        if n < 0:
            raise RuntimeError(f"llama.cpp has no built-in chat template {name!r}")
        if n <= size:
            return buf.raw[:n].decode("utf-8")
        size = n


def render_jinja(template: str, bos: str, eos: str, messages: list[dict[str, str]], add_gen: bool) -> dict[str, Any]:
    """The template rendered by llama-cpp-python's Jinja2ChatFormatter, and by a bare jinja2 sandbox as
    tests/refs/smollm2.json was rendered; an exception raised by the template is recorded as an error."""
    import jinja2.sandbox
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    def raise_exception(message: str) -> None:
        raise ValueError(message)

    try:
        formatter = Jinja2ChatFormatter(template, eos_token=eos, bos_token=bos, add_generation_prompt=add_gen)
        rendered = formatter(messages=messages).prompt
    except ValueError as e:  # the template's own raise_exception
        return {"error": str(e)}
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    bare = env.from_string(template).render(
        messages=messages,
        add_generation_prompt=add_gen,
        bos_token=bos,
        eos_token=eos,
        raise_exception=raise_exception,
    )
    return {"rendered": rendered, "bare_jinja2_matches": bare == rendered}


def vocab(job: dict[str, Any]) -> dict[str, Any]:
    import llama_cpp

    llm = load(job["path"], vocab_only=True)
    v = llama_cpp.llama_model_get_vocab(llm._model.model)
    n_vocab = llama_cpp.llama_vocab_n_tokens(v)
    bos_id, eos_id = llama_cpp.llama_vocab_bos(v), llama_cpp.llama_vocab_eos(v)
    bos = token_text(v, bos_id) if bos_id >= 0 else ""
    eos = token_text(v, eos_id) if eos_id >= 0 else ""
    eog = [t for t in range(n_vocab) if llama_cpp.llama_vocab_is_eog(v, t)]
    control = [
        t
        for t in range(n_vocab)
        if llama_cpp.llama_vocab_get_attr(v, t) & llama_cpp.LLAMA_TOKEN_ATTR_CONTROL and t not in eog
    ]
    tokenization = []
    for text in job["texts"]:
        raw = text.encode("utf-8")
        tokenization.append(
            {
                "text": text,
                "ids": llm.tokenize(raw, add_bos=True, special=True),
                "ids_no_special": llm.tokenize(raw, add_bos=True, special=False),
            }
        )
    template = llm.metadata.get("tokenizer.chat_template")
    chats = []
    for messages in job["conversations"]:
        case: dict[str, Any] = {"messages": messages}
        for add_gen in (True, False):
            suffix = "" if add_gen else "_add_generation_prompt_false"
            if template is not None:
                out = render_jinja(template, bos, eos, messages, add_gen)
            else:
                out = {"rendered": render_builtin(job["builtin_template"], messages, add_gen)}
            case.update({k + suffix: value for k, value in out.items()})
        if "rendered" in case:
            # One BOS, as llama-server tokenizes a rendered chat: the vocabulary's own BOS unless the template
            # already wrote it (llama-cpp-python's chat path never adds one; both agree whenever the template has
            # {{ bos_token }}).
            text = case["rendered"]
            starts_with_bos = bool(bos) and text.startswith(bos)
            case["prompt_ids"] = llm.tokenize(text.encode("utf-8"), add_bos=not starts_with_bos, special=True)
        chats.append(case)
    return {
        "n_vocab": n_vocab,
        "bos": [bos_id, bos],
        "eos": [eos_id, eos],
        "eog_ids": eog,
        "eog_texts": [token_text(v, t) for t in eog],
        "control_ids": control[:64],
        "control_texts": [token_text(v, t) for t in control[:64]],
        "chat_template": template,
        "chat_template_source": "gguf tokenizer.chat_template" if template is not None else job["builtin_template"],
        "tokenization": tokenization,
        "chats": chats,
    }


def top_two(row: Any) -> tuple[int, float, float]:
    """Argmax, its logit and its lead over the second best."""
    import numpy as np

    second, first = np.argpartition(row, -2)[-2:]
    if row[second] > row[first]:
        first, second = second, first
    return int(first), float(row[first]), float(row[first] - row[second])


def numerics(job: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    llm = load(job["path"])
    cases = []
    rows = []
    for case in job["cases"]:
        prompt = list(case["prompt_ids"])
        llm.reset()
        llm.eval(prompt)  # one batch; logits_all keeps every position's row
        end = np.array(llm.scores[len(prompt) - 1], dtype=np.float32)
        rows.append(end)
        order = np.argsort(-end, kind="stable")[:TOP_K]
        top5 = [[int(t), float(end[t])] for t in order]
        steps = []
        for _ in range(job["greedy_tokens"]):
            chosen, logit, lead = top_two(np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32))
            steps.append({"id": chosen, "logit": logit, "lead": lead})
            llm.eval([chosen])  # one token at a time, on the KV cache
        # The logits at every position of prompt + continuation, as llama.cpp computed them on the way (the prompt in
        # one batch, then each token on the cache): what a teacher-forced evaluate of that sequence must reproduce.
        forced = [top_two(np.array(llm.scores[i], dtype=np.float32)) for i in range(llm.n_tokens)]
        cases.append(
            {
                **case,
                "top5": top5,
                "generated_ids": [s["id"] for s in steps],
                "steps": steps,
                "forced_argmax": [f[0] for f in forced],
                "forced_lead": [f[2] for f in forced],
            }
        )
    if job.get("rows_path"):  # the whole prompt-end rows, for comparing two of llama.cpp's own runs
        np.save(job["rows_path"], np.stack(rows))
    return {"cases": cases}


def first_tokens(job: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    llm = load(job["path"])
    prompt = llm.tokenize(job["prompt"].encode("utf-8"), add_bos=True, special=True)
    llm.eval(prompt)
    out = []
    for _ in range(job["n"]):
        chosen, logit, lead = top_two(np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32))
        out.append({"id": chosen, "logit": logit, "lead": lead})
        llm.eval([chosen])
    return {"prompt_ids": prompt, "steps": out}


OPS = {"quantize": quantize, "vocab": vocab, "numerics": numerics, "first_tokens": first_tokens}


def main(jobs_path: str, out_path: str) -> None:
    jobs = json.loads(Path(jobs_path).read_text())
    results = []
    for job in jobs:
        started = time.monotonic()
        result = OPS[job["op"]](job)
        result["seconds"] = round(time.monotonic() - started, 2)
        results.append(result)
    Path(out_path).write_text(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

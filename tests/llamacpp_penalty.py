"""llama.cpp's greedy output with a repeat penalty, computed by llama-cpp-python in a process of its own.

``python tests/llamacpp_penalty.py JOB.json OUT.json``: the job is ``{"path", "cases": [{"ids", "penalty", "n"}]}``;
for each case the output has the greedy tokens and, per step, the chosen logit's lead over the second best after the
penalty. The penalty is llama.cpp's penalty sampler (``llama_sampler_penalties`` in ``src/llama-sampling.cpp``),
applied here with numpy to llama.cpp's raw logits: each *distinct* token of the last 64 (prompt and output, as the
server feeds the prompt to the sampler) once, ``logit / penalty`` if the logit is positive, else
``logit * penalty``. Nothing in it is computed by modelhost, and llama.cpp's libraries never share a process with it.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np

PENALTY_LAST_N = 64  # llama.cpp's penalty_last_n default (repeat_last_n)
N_CTX = 256
# One thread: results do not depend on it, and OpenMP workers spin-waiting on a busy 2-core machine are slow.
THREADS = 1


def penalise(logits: np.ndarray, window: list[int], penalty: float) -> None:
    """llama.cpp's penalty sampler, in place."""
    for token in set(window):
        value = logits[token]
        logits[token] = value * penalty if value <= 0 else value / penalty


def greedy(llm: Any, vocab: Any, ids: list[int], penalty: float, n: int) -> dict[str, Any]:
    import llama_cpp

    llm.reset()
    llm.eval(ids)
    out: list[int] = []
    leads: list[float] = []
    for _ in range(n):
        logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
        penalise(logits, (ids + out)[-PENALTY_LAST_N:], penalty)
        second, first = np.argsort(logits, kind="stable")[-2:]
        token = int(np.argmax(logits))  # the first of equal maxima, as llama.cpp's greedy pick
        leads.append(float(logits[first] - logits[second]))
        out.append(token)
        if llama_cpp.llama_vocab_is_eog(vocab, token):
            break
        llm.eval([token])
    return {"tokens": out, "leads": leads}


def main(job_path: str, out_path: str) -> None:
    import llama_cpp
    from llama_cpp import Llama

    with open(job_path, encoding="utf-8") as f:
        job = json.load(f)
    llm = Llama(
        model_path=job["path"],
        n_ctx=N_CTX,
        n_batch=N_CTX,
        n_ubatch=N_CTX,
        n_threads=THREADS,
        n_threads_batch=THREADS,
        logits_all=True,
        use_extra_bufts=False,  # llama.cpp's AMX buffers crash on these CPUs (SPEC §8)
        seed=0,
        verbose=False,
    )
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    results = [greedy(llm, vocab, c["ids"], c["penalty"], c["n"]) for c in job["cases"]]
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

"""llama.cpp against itself: the prompt evaluated one token at a time instead of in one batch.

Run by tests/test_families.py in a fresh interpreter: ``python llamacpp_sequential.py MODEL CASES OUT``. CASES is a
JSON list of numeric cases (``prompt_ids`` and llama.cpp's batched ``top5``); OUT gets, per case, the logits that
token-by-token evaluation gives at those top-5 ids. llama.cpp's batched and per-token paths use different matmul
kernels (tiled GEMMs, repacked weights) and so round differently; how far its own two answers lie apart is the
precision any other implementation can be held to on that file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def main(model: str, cases_path: str, out_path: str) -> None:
    from llama_cpp import Llama

    cases = json.loads(Path(cases_path).read_text())
    n_ctx = max(len(c["prompt_ids"]) for c in cases) + 8
    llm = Llama(
        model_path=model,
        n_ctx=n_ctx,
        n_batch=1,
        n_ubatch=1,
        n_threads=2,
        n_threads_batch=2,
        logits_all=True,
        seed=0,
        verbose=False,
    )
    out = []
    for case in cases:
        llm.reset()
        llm.eval(case["prompt_ids"])
        row = np.array(llm.scores[len(case["prompt_ids"]) - 1], dtype=np.float32)
        out.append([[token, float(row[token])] for token, _ in case["top5"]])
    Path(out_path).write_text(json.dumps(out))


if __name__ == "__main__":
    main(*sys.argv[1:4])

"""Greedy output with a repeat penalty equals llama.cpp's (SPEC §6, issue 12).

llama.cpp (and so LM Studio) penalises each distinct token of the last 64 (prompt and output) once; the reference is
llama.cpp's raw logits with that penalty applied by tests/llamacpp_penalty.py, in a process of its own, never our own
sampler. Compared token by token for as long as both runs produced the same tokens; they may part only at a step where
llama.cpp's best leads the second by less than 1.0 after the penalty (near-ties flip legitimately between kernels),
and each penalty must compare a number of steps where llama.cpp's choice was clear.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import modelhost
import pytest
from helpers import EOG_IDS, llm_path

PENALTIES = (1.1, 1.3, 1.8)
PROMPTS = (
    "1, 1, 1, 1, 1, 1, 1, 1, 1, 1,",
    "the cat sat on the mat, the cat sat on the mat, the cat sat on the",
    "Hello! Hello! Hello! Hello! Hello!",
    "<|im_start|>user\nRepeat after me: yes yes yes yes yes<|im_end|>\n<|im_start|>assistant\n",
)
MAX_TOKENS = 24
CLEAR_LEAD = 1.0
CASES = [(prompt, penalty) for prompt in PROMPTS for penalty in PENALTIES]


@pytest.fixture(scope="module")
def llama_cpp_greedy(llm: modelhost.LLM, models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Any]:
    """llama.cpp's penalised greedy tokens and leads for every case, from one subprocess."""
    work = tmp_path_factory.mktemp("penalty")
    job = {
        "path": str(llm_path(models_dir)),
        "cases": [{"ids": llm.tokenize(prompt), "penalty": p, "n": MAX_TOKENS} for prompt, p in CASES],
    }
    (work / "job.json").write_text(json.dumps(job))
    script = Path(__file__).parent / "llamacpp_penalty.py"
    proc = subprocess.run(
        [sys.executable, str(script), str(work / "job.json"), str(work / "out.json")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results: list[Any] = json.loads((work / "out.json").read_text())
    return results


@pytest.mark.parametrize("penalty", PENALTIES)
def test_greedy_with_repeat_penalty_matches_llama_cpp(
    llm: modelhost.LLM, llama_cpp_greedy: list[Any], penalty: float
) -> None:
    """Every prompt at this penalty: our greedy tokens equal llama.cpp's for as long as the two runs have produced
    the same tokens, except that a different choice where llama.cpp's lead is under 1.0 ends that prompt's
    comparison (a legitimate flip). Steps compared with a clear lead must cover every prompt that has one."""
    clear_steps = 0
    for case, (prompt, case_penalty) in enumerate(CASES):
        if case_penalty != penalty:
            continue
        ref = llama_cpp_greedy[case]
        result = llm.complete(prompt, config={"temperature": 0, "repeatPenalty": penalty, "maxTokens": MAX_TOKENS})
        ours = list(result.tokens)
        agreed = 0
        for step, (want, lead) in enumerate(zip(ref["tokens"], ref["leads"])):
            got = ours[step] if step < len(ours) else None  # None: we stopped (end of generation) here
            if want in EOG_IDS:
                got = want if got is None and result.stats.stop_reason == "eosFound" else got
            if got != want:
                assert lead < CLEAR_LEAD, f"{prompt!r} @ {penalty}, step {step}: ours {ours}, llama.cpp {ref['tokens']}"
                break
            agreed += 1
            clear_steps += lead >= CLEAR_LEAD
        print(f"{prompt[:24]!r} @ {penalty}: agreed on {agreed} of {len(ref['tokens'])} tokens")
    assert clear_steps >= 5, f"only {clear_steps} steps with a clear lead compared at penalty {penalty}"

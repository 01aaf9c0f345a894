"""Where modelhost's time goes: perf samples of prompt processing, generation and embedding, each on its own.

    python benches/perf_profile.py [--python .venv-bench/bin/python] [--seconds 10] [--phases prompt,generate,embed]

Needs `perf` (Debian's linux-perf). This VM has no hardware counters, so it samples the `cpu-clock` software
event. Loading and warm-up are not sampled: perf starts disabled and the workload switches it on through perf's
control fifo once the model is loaded and warm. Prints, per phase, the share of samples by shared object and
the top symbols by self time, and writes the same to benches/results/profile-<date>-<host>.txt.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import _common as C  # noqa: E402

PHASES = ("prompt", "generate", "embed")


def inner(phase: str, seconds: float, ctl: str | None, ack: str | None, models_dir: Path) -> None:
    """The profiled workload; runs under perf, enables sampling only around the measured loop."""
    import modelhost as mh

    client = mh.Client(str(models_dir))
    if phase == "embed":
        h = client.embedding.model(C.EMB_KEY)
        sents = C.sentences()

        def step(i: int) -> None:
            for j in range(0, len(sents), C.EMB_BATCH):
                h.embed(sents[j : j + C.EMB_BATCH])
    else:
        key = os.environ.get("MODELHOST_PROFILE_LLM", C.LLM_KEY)
        h = client.llm.model(key, config={"contextLength": C.CONTEXT_LENGTH})
        if phase == "prompt":

            def step(i: int) -> None:
                h.complete(C.prompt_text(i), config={"maxTokens": 1, "temperature": 0})
        else:
            # a 2-token prompt, so nearly all the time is decoding
            def step(i: int) -> None:
                h.complete(
                    f"{C.PROMPT_OPENERS[i % len(C.PROMPT_OPENERS)]}:", config={"maxTokens": 128, "temperature": 0}
                )

    step(0)  # warm-up, not sampled
    if not ctl or not ack:  # callgrind: a fixed number of iterations, counted whole
        for n in range(1, int(seconds) + 1):
            step(n)
        client.close()
        return
    with open(ctl, "w") as c, open(ack) as a:
        c.write("enable\n")
        c.flush()
        a.readline()
        t0, n = time.perf_counter(), 0
        while time.perf_counter() - t0 < seconds:
            n += 1
            step(n)
        c.write("disable\n")
        c.flush()
        a.readline()
    print(f"{phase}: {n} iterations in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    client.close()


def report(data: Path, sort: str, limit: float) -> str:
    out = subprocess.run(
        [
            "perf",
            "report",
            "-i",
            str(data),
            "--no-children",
            "--sort",
            sort,
            "--stdio",
            "--percent-limit",
            str(limit),
            "-g",
            "none",
        ],
        capture_output=True,
        text=True,
    ).stdout
    return "\n".join(line for line in out.splitlines() if line.strip() and not line.startswith("#"))


def shorten(line: str) -> str:
    """Trim Rust hashes, perf's empty trailing columns and long generic arguments from a perf symbol line."""
    line = re.sub(r"::h[0-9a-f]{16}", "", line)
    line = re.sub(r"(\s+-)+\s*$", "", line).rstrip()
    line = re.sub(r"\s{3,}", "  ", line)
    # closures' and generic arguments' paths are long; the innermost brackets carry the least information
    while len(line) > 160 and re.search(r"<[^<>]{20,}>", line):
        line = re.sub(r"<[^<>]{20,}>", "<…>", line, count=1)
    return line


def callgrind(args: argparse.Namespace, phase: str, tmp: str) -> str:
    """Instruction counts (valgrind --tool=callgrind) with ONE thread: repeatable whatever else the machine is
    doing, and free of the barrier spinning that makes 2-thread samples on a busy machine meaningless."""
    out = Path(tmp, f"{phase}.callgrind")
    env = {**os.environ, **C.thread_env(), "RAYON_NUM_THREADS": "1"}
    cmd = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        args.python,
        __file__,
        "--inner",
        phase,
        "--seconds",
        str(args.iterations),
        "--models-dir",
        str(args.models_dir),
    ]
    subprocess.run(cmd, env=env, check=True, stderr=subprocess.DEVNULL)
    ann = subprocess.run(["callgrind_annotate", "--inclusive=no", str(out)], capture_output=True, text=True).stdout
    lines, total = [], None
    for line in ann.splitlines():
        m = re.match(r"\s*([\d,]+)\s+(?:\(\s*([\d.]+)%\)\s+)?(.*)", line)
        if not m:
            continue
        if "PROGRAM TOTALS" in line:
            total = m.group(1)
        elif m.group(2) and float(m.group(2)) >= 0.7:
            lines.append(shorten(f"  {float(m.group(2)):6.2f}%  {m.group(3)}"))
    return f"total instructions: {total}\n\n" + "\n".join(lines[:30])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--python", default=str(ROOT / ".venv-bench" / "bin" / "python"))
    ap.add_argument("--seconds", type=float, default=10.0, help="sampled time per phase")
    ap.add_argument("--phases", default=",".join(PHASES))
    ap.add_argument(
        "--models-dir",
        type=Path,
        default=Path(os.environ.get("MODELHOST_MODELS_DIR", Path.home() / ".cache/modelhost/models")),
    )
    ap.add_argument(
        "--callgrind",
        action="store_true",
        help="count instructions with valgrind's callgrind (1 thread) instead of sampling with perf",
    )
    ap.add_argument("--iterations", type=int, default=2, help="workload iterations per phase with --callgrind")
    ap.add_argument("--llm", default=None, help="the LLM to profile: a model key or a GGUF's absolute path")
    ap.add_argument("--inner", choices=PHASES, help=argparse.SUPPRESS)
    ap.add_argument("--ctl", help=argparse.SUPPRESS)
    ap.add_argument("--ack", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inner:
        inner(args.inner, args.seconds, args.ctl, args.ack, args.models_dir)
        return 0

    env = {**os.environ, **C.thread_env()}
    if args.llm:
        env["MODELHOST_PROFILE_LLM"] = args.llm
    sections = [
        f"# modelhost profile, {dt.date.today()} on {socket.gethostname()}: {args.llm or C.LLM_KEY}",
        "valgrind --tool=callgrind, 1 thread"
        if args.callgrind
        else f"perf record -e cpu-clock -F 999, {C.THREADS} threads, {args.seconds:.0f} s sampled per phase",
        "",
    ]
    with tempfile.TemporaryDirectory(prefix="modelhost-profile-") as tmp:
        for phase in args.phases.split(","):
            if args.callgrind:
                sections += [
                    f"## {phase} (callgrind, 1 thread, {args.iterations} iterations after a warm-up; whole process, "
                    "load included)",
                    "",
                    "### top functions (self instructions)",
                    "",
                    callgrind(args, phase, tmp),
                    "",
                ]
                continue
            ctl, ack, data = Path(tmp, f"{phase}.ctl"), Path(tmp, f"{phase}.ack"), Path(tmp, f"{phase}.data")
            os.mkfifo(ctl)
            os.mkfifo(ack)
            cmd = [
                "perf",
                "record",
                "-e",
                "cpu-clock",
                "-F",
                "999",
                "-g",
                "-D",
                "-1",
                "--control",
                f"fifo:{ctl},{ack}",
                "-o",
                str(data),
                "--",
                args.python,
                __file__,
                "--inner",
                phase,
                "--seconds",
                str(args.seconds),
                "--ctl",
                str(ctl),
                "--ack",
                str(ack),
                "--models-dir",
                str(args.models_dir),
            ]
            subprocess.run(cmd, env=env, check=True)
            by_dso = "\n".join(shorten(x) for x in report(data, "dso", 0.5).splitlines())
            by_sym = "\n".join(shorten(x) for x in report(data, "dso,symbol", 0.7).splitlines())
            sections += [
                f"## {phase}",
                "",
                "### by shared object (self time)",
                "",
                by_dso,
                "",
                "### top symbols (self time)",
                "",
                by_sym,
                "",
            ]
    text = "\n".join(sections) + "\n"
    print(text)
    kind = "callgrind" if args.callgrind else "perf"
    model = f"-{Path(args.llm).parent.name}-{Path(args.llm).stem}" if args.llm else ""
    out = HERE / "results" / f"profile-{kind}-{dt.date.today()}-{socket.gethostname()}{model}.txt"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text)
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

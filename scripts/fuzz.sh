#!/usr/bin/env bash
# Run every cargo-fuzz target of fuzz/ for SECONDS each (default 600), one after the other, in one process (no
# -jobs/-workers: those fork and send the output to fuzz-N.log) and
# niced (the machines have 2 cores shared with builds and benches). Needs `cargo install cargo-fuzz --version
# 0.13.1`. Only the stable toolchain is assumed: RUSTC_BOOTSTRAP=1 lets it take cargo-fuzz's -Z flags.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# The committed seeds (fuzz/corpus/<target>/seed-*) are read only; what libFuzzer finds goes to a working corpus
# under $FUZZ_WORK (default ~/.cache/modelhost/fuzz), so it accumulates between runs without touching the repo.
# A crash leaves its input in fuzz/artifacts/<target>/ and makes this script fail; turn it into a case in
# rust/modelhost-core/tests/hostile_regressions.rs. A summary line per target (executions, crash or not) is
# appended to $FUZZ_WORK/summary.txt.
set -euo pipefail

SECONDS_PER_TARGET=${1:-600}
shift || true
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
    TARGETS=(gguf_parse safetensors_parse gguf_tokenizer chat_template)
fi
ROOT=$(cd "$(dirname "$0")/.." && pwd)
FUZZ_WORK=${FUZZ_WORK:-$HOME/.cache/modelhost/fuzz}
# Its own target dir: the sanitizer flags would otherwise invalidate the main build's fingerprints.
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-$HOME/.cache/modelhost/target-fuzz}
export RUSTC_BOOTSTRAP=1
# Address sanitizer by default; FUZZ_SANITIZER=none if the toolchain refuses it.
SANITIZER=${FUZZ_SANITIZER:-address}
# GGUF seeds reach 31 kB; allow mutations somewhat past that, keep chat templates and headers shorter.
declare -A MAX_LEN=([gguf_parse]=65536 [gguf_tokenizer]=65536 [safetensors_parse]=32768 [chat_template]=8192)

mkdir -p "$FUZZ_WORK"
cd "$ROOT/fuzz"
nice -n 15 cargo fuzz build --release -s "$SANITIZER"
status=0
for target in "${TARGETS[@]}"; do
    work="$FUZZ_WORK/corpus/$target"
    mkdir -p "$work" "artifacts/$target"
    log="$FUZZ_WORK/$target.log"
    : >"$log"
    before=$(ls "artifacts/$target" | wc -l)
    echo "== $target: ${SECONDS_PER_TARGET}s (log: $log)"
    # libFuzzer stops at the first crash, leak, OOM or timeout; the artifact is kept and fuzzing resumes from the
    # grown corpus until the time is used up, so one finding does not end the run.
    deadline=$(($(date +%s) + SECONDS_PER_TARGET))
    execs=0
    runs=0
    while [ $(($(date +%s) + 5)) -lt "$deadline" ] && [ "$runs" -lt 50 ]; do
        left=$((deadline - $(date +%s)))
        runs=$((runs + 1))
        set +e
        # -rss_limit_mb / -malloc_limit_mb: allocating in proportion to a lying header is a finding too.
        nice -n 15 cargo fuzz run --release -s "$SANITIZER" "$target" "$work" "corpus/$target" -- \
            -max_total_time="$left" -max_len="${MAX_LEN[$target]}" \
            -rss_limit_mb=2048 -malloc_limit_mb=1024 -timeout=10 -print_final_stats=1 >>"$log" 2>&1
        rc=$?
        set -e
        n=$(grep -E '^stat::number_of_executed_units' "$log" | tail -1 | awk '{print $2}')
        execs=$((execs + ${n:-0}))
        sed -i 's/^stat::number_of_executed_units/counted::number_of_executed_units/' "$log"
        [ "$rc" -eq 0 ] && break
    done
    found=$(($(ls "artifacts/$target" | wc -l) - before))
    line="$(date -u +%FT%TZ) $target seconds=$SECONDS_PER_TARGET execs=$execs runs=$runs new_artifacts=$found"
    echo "$line" | tee -a "$FUZZ_WORK/summary.txt"
    if [ "$found" -ne 0 ]; then
        status=1
        ls -la "artifacts/$target" | tail -n "$found"
        grep -E 'ERROR: libFuzzer|panicked at|SUMMARY' "$log" | sort | uniq -c | head -20
    fi
done
exit $status

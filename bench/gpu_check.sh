#!/usr/bin/env bash
# Checks and measures every GPU path on one CUDA machine, in about 5 minutes (8 at most), writing everything
# under $OUT (default ./gpu-check-out): device and versions, the tests marked `gpu`, the loader at a few
# hardware-decoder shares and thread counts, `bench train` eager and with torch.compile, and a short
# `--gpus 1` training run with 10-crop evaluation (each step is cut short rather than run past $BUDGET, 470 s).
# Run it from the repository root:
#
#   bash bench/gpu_check.sh                      # with the project installed (`make test` does it)
#
# A machine without DALI/webdataset/simplejpeg and no package index: run `bench/pack_gpu.sh` where there is
# one, copy build/gpu-pack/part-* over, then
#   cat part-* | python3 -c "import sys,tarfile; tarfile.open(fileobj=sys.stdin.buffer, mode='r|xz').extractall('/tmp/site')"
#   PYTHONPATH=/tmp/site bash bench/gpu_check.sh
#
# REHEARSAL=1 runs every step on a CPU machine in a few minutes, as tests/bench/test_gpu_check.py does in
# `make test`: the GPU runs become their CPU twins on a tiny sample (--device cpu, --gpus 0, a few batches and
# steps, torch.compile turned off by TORCHDYNAMO_DISABLE), and the pytest steps only collect their tests. So a
# test, file or flag this script names and that no longer exists fails there, not on the GPU machine.
#
# Each step prints its name; a failed one prints `FAIL [its name]: the cause`, and a step that needs what a
# failed one makes says so instead of running. Exits 1 at once when no GPU is visible or DALI's "mixed" decoder
# is not really decoding on the GPU (it falls back to the CPU silently when nvJPEG cannot be loaded); exits 1 at
# the end when any step failed.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-$PWD/gpu-check-out}
WORK=${WORK:-$(mktemp -d)}
mkdir -p "$OUT"
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
BUDGET=${BUDGET:-470}  # seconds for the whole script: every step is cut to what is left of it
REHEARSAL=${REHEARSAL:-}
if [ -n "$REHEARSAL" ]; then
  DEVICE=cpu GPUS=0 COLLECT=--collect-only TRAIN_PER_CLASS=1 VAL_PER_CLASS=1 BATCH=1 BATCHES=1 STEPS=1 EPOCHS=1
  TRAIN_BATCH=4 LOADER_SETTINGS=("1.0 2")  # the loop's one command, once
  export TORCHDYNAMO_DISABLE=1
else
  DEVICE=cuda GPUS=1 COLLECT= TRAIN_PER_CLASS=250 VAL_PER_CLASS=25 BATCH=256 BATCHES=40 STEPS=50 EPOCHS=2
  TRAIN_BATCH=128 LOADER_SETTINGS=("0.0 4" "0.65 4" "1.0 4" "0.65 8" "1.0 8")  # hardware-decoder share, threads
fi

STEP= FAILED=()
step() { STEP=$1; echo; echo "=== $STEP  (${SECONDS}s)"; }
fail() { echo "FAIL [$STEP]: $*"; FAILED+=("$STEP"); }
limit() {  # limit CAP CMD...: run CMD for at most CAP seconds (the GPU's timings) and never past the budget
  local cap=$1 left=$(( BUDGET - SECONDS )); shift
  if [ -n "$REHEARSAL" ]; then "$@"; return; fi  # a rehearsal checks what runs, not how fast the CPU is
  [ "$left" -lt "$cap" ] && cap=$left
  if [ "$cap" -le 5 ]; then echo "skipped, time budget spent: $*"; return 124; fi
  timeout "$cap" "$@"
}
cause() {  # cause STATUS [pytest]: what an exit status says
  case $1 in
    124) echo "cut short by its time limit (or the budget was spent)" ;;
    *) if [ -n "${2:-}" ]; then
         case $1 in
           1) echo "tests failed" ;;
           2) echo "interrupted, or a test file could not be imported" ;;
           4) echo "pytest usage error: a test path that does not exist, or a bad option" ;;
           5) echo "no test matches the selection" ;;
           *) echo "pytest exited $1" ;;
         esac
       else echo "exited $1"; fi ;;
  esac
}
run() {  # run LOG CAP CMD...: CMD under the budget, its output appended to LOG; a failure is this step's
  local log=$1 cap=$2 rc; shift 2
  limit "$cap" "$@" >> "$log" 2>&1; rc=$?
  if [ "$rc" -ne 0 ]; then
    fail "$(cause "$rc" "$([ "$2" = -m ] && [ "$3" = pytest ] && echo pytest)"): $* (see $log)"
    tail -5 "$log" | sed 's/^/    /'
  fi
  return "$rc"
}
needs() {  # needs FILE WHAT: true when FILE exists, else this step says which earlier step did not make it
  [ -e "$1" ] && return 0
  echo "skipped [$STEP]: needs $2, which an earlier step did not make"
  return 1
}

step "device and versions -> $OUT/device.txt"
: > "$OUT/device.txt"
[ -z "$REHEARSAL" ] && run "$OUT/device.txt" 20 nvidia-smi
run "$OUT/device.txt" 60 $PY -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda,
  torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU', flush=True)
import nvidia.dali as d; print('DALI', d.__version__)"
tail -2 "$OUT/device.txt"
if [ -z "$REHEARSAL" ] && ! $PY -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  fail "no CUDA GPU visible to torch"; exit 1
fi

step "is the JPEG decoder really on the GPU? -> $OUT/decoder_check.txt"
: > "$OUT/decoder_check.txt"
run "$OUT/decoder_check.txt" 120 $PY -m pytest -q $COLLECT -m gpu tests/pipelines -k decoder_really_runs_on_the_gpu
case $? in
  0) tail -1 "$OUT/decoder_check.txt" ;;
  1) echo "DALI's mixed decoder is not running on the GPU (see $OUT/decoder_check.txt); nothing else was run"; exit 1 ;;
  *) echo "nothing else was run"; exit 1 ;;
esac

step "tests marked gpu -> $OUT/gpu_tests.txt"
: > "$OUT/gpu_tests.txt"
run "$OUT/gpu_tests.txt" 150 $PY -m pytest -q -ra $COLLECT -m gpu tests/ && tail -8 "$OUT/gpu_tests.txt"

step "sample: 8 classes x ($TRAIN_PER_CLASS train + $VAL_PER_CLASS val) ImageNet-like images, sharded -> $OUT/shard.txt"
: > "$OUT/shard.txt"
run "$OUT/shard.txt" 60 $PY -c "from shards.demo_data import make_sample_tree
make_sample_tree('$WORK/src', train_per_class=$TRAIN_PER_CLASS, val_per_class=$VAL_PER_CLASS)" &&
  run "$OUT/shard.txt" 60 $PY cli.py shard --src "$WORK/src" --out "$WORK/wds" &&
  tail -2 "$OUT/shard.txt" && cat "$WORK"/wds/train/*.tar > /dev/null  # in page cache: the loader is measured

step "bench loader on $DEVICE: hardware-decoder share x threads -> $OUT/loader.txt, loader_*.json"
: > "$OUT/loader.txt"
if needs "$WORK/wds/dataset.json" "the shards of the sample step"; then
  for setting in "${LOADER_SETTINGS[@]}"; do
    set -- $setting
    run "$OUT/loader.txt" 30 $PY cli.py bench loader --shards "$WORK/wds" --device $DEVICE --batch-size $BATCH \
      --batches $BATCHES --hw-decoder-load "$1" --workers "$2" --no-baseline --json "$OUT/loader_hw$1_t$2.json"
  done
  run "$OUT/loader.txt" 45 $PY cli.py bench loader --shards "$WORK/wds" --device $DEVICE --batch-size $BATCH \
    --batches $BATCHES --workers 8 --mean channel --json "$OUT/loader_channel_baseline.json"
  grep -E "^bench|DALI|reference|speedup|error" "$OUT/loader.txt"
fi

step "bench train on $DEVICE: eager, then torch.compile -> $OUT/train_bench.txt"
: > "$OUT/train_bench.txt"
if needs "$WORK/wds/dataset.json" "the shards of the sample step"; then
  run "$OUT/train_bench.txt" 45 $PY cli.py bench train --shards "$WORK/wds" --device $DEVICE --batch-size $BATCH \
    --steps $STEPS --json "$OUT/train_bench_eager.json"
  run "$OUT/train_bench.txt" 150 $PY cli.py bench train --shards "$WORK/wds" --device $DEVICE --batch-size $BATCH \
    --steps $STEPS --compile --json "$OUT/train_bench_compile.json"
  grep -v "^  *$" "$OUT/train_bench.txt"
fi

step "a short run with --gpus $GPUS ($EPOCHS epochs), then 10-crop evaluation -> $OUT/train.txt"
: > "$OUT/train.txt"
if needs "$WORK/wds/dataset.json" "the shards of the sample step"; then
  run "$OUT/train.txt" 90 $PY cli.py train --shards "$WORK/wds" --out "$WORK/run" --gpus $GPUS --epochs $EPOCHS \
    --batch-size $TRAIN_BATCH --lr 0.001 --log-every 5 &&
    run "$OUT/train.txt" 45 $PY cli.py eval --shards "$WORK/wds" --checkpoint "$WORK/run/checkpoint.pt" \
      --gpus $GPUS --batch-size $TRAIN_BATCH --ten-crop --json &&
    cp "$WORK/run/metrics.jsonl" "$WORK/run/config.json" "$OUT/"
  tail -4 "$OUT/train.txt"
fi

step "done: results in $OUT"
if [ "${#FAILED[@]}" -gt 0 ]; then
  echo "FAILED: ${#FAILED[@]} check(s):"
  printf '  %s\n' "${FAILED[@]}"
  exit 1
fi
echo "every step passed"

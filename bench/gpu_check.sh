#!/usr/bin/env bash
# Checks and measures every GPU path on one CUDA machine, in about 5 minutes (8 at most), writing everything
# under $OUT (default ./gpu-check-out): device and versions, the tests marked `gpu`, the loader at a few
# hardware-decoder shares and thread counts, `bench train` eager and with torch.compile, and a short
# `--gpus 1` training run with 10-crop evaluation (each step is cut short rather than run past $BUDGET, 470 s).
# Run it from the repository root:
#
#   bash bench/gpu_check.sh                      # with the packages of requirements.txt installed
#
# A machine without DALI/webdataset/simplejpeg and no package index: run `bench/pack_gpu.sh` where there is
# one, copy build/gpu-pack/part-* over, then
#   cat part-* | python3 -c "import sys,tarfile; tarfile.open(fileobj=sys.stdin.buffer, mode='r|xz').extractall('/tmp/site')"
#   PYTHONPATH=/tmp/site bash bench/gpu_check.sh
#
# Exits 1 at once when no GPU is visible or DALI's "mixed" decoder is not really decoding on the GPU (it falls
# back to the CPU silently when nvJPEG cannot be loaded); exits 1 at the end when a GPU test failed.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-$PWD/gpu-check-out}
WORK=${WORK:-$(mktemp -d)}
mkdir -p "$OUT"
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
BUDGET=${BUDGET:-470}  # seconds for the whole script: every step is cut to what is left of it
step() { echo; echo "=== $*  (${SECONDS}s)"; }
limit() {  # limit CAP CMD...: run CMD for at most CAP seconds and never past the budget
  local cap=$1 left=$(( BUDGET - SECONDS )); shift
  [ "$left" -lt "$cap" ] && cap=$left
  if [ "$cap" -le 5 ]; then echo "skipped, time budget spent: $*"; return 124; fi
  timeout "$cap" "$@"
}

step "device and versions -> $OUT/device.txt"
{
  nvidia-smi
  $PY -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name(0))"
  $PY -c "import nvidia.dali as d; print('DALI', d.__version__)"
} > "$OUT/device.txt" 2>&1
tail -3 "$OUT/device.txt"
$PY -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" || { echo "FAIL: no CUDA GPU visible to torch"; exit 1; }

step "is the JPEG decoder really on the GPU? -> $OUT/decoder_check.txt"
if ! limit 120 $PY -m pytest -q -m gpu tests/test_pipelines_loader.py -k decoder_really_runs_on_the_gpu \
    > "$OUT/decoder_check.txt" 2>&1; then
  tail -20 "$OUT/decoder_check.txt"
  echo "FAIL: DALI's mixed decoder is not running on the GPU (see $OUT/decoder_check.txt); nothing else was run"
  exit 1
fi
tail -1 "$OUT/decoder_check.txt"

step "tests marked gpu -> $OUT/gpu_tests.txt"
limit 150 $PY -m pytest -q -ra -m gpu tests/ > "$OUT/gpu_tests.txt" 2>&1
tests_rc=$?
tail -8 "$OUT/gpu_tests.txt"

step "sample: 8 classes x (250 train + 25 val) ImageNet-like images, sharded -> $OUT/shard.txt"
limit 60 $PY -c "from shards.demo_data import make_sample_tree; make_sample_tree('$WORK/src', train_per_class=250, val_per_class=25)"
limit 60 $PY cli.py shard --src "$WORK/src" --out "$WORK/wds" > "$OUT/shard.txt" 2>&1
tail -2 "$OUT/shard.txt"
cat "$WORK"/wds/train/*.tar > /dev/null  # in page cache: the loader is measured, not the disk

step "bench loader on the GPU: hardware-decoder share x threads -> $OUT/loader.txt, loader_*.json"
: > "$OUT/loader.txt"
for setting in "0.0 4" "0.65 4" "1.0 4" "0.65 8" "1.0 8"; do
  set -- $setting
  limit 30 $PY cli.py bench loader --shards "$WORK/wds" --device cuda --batch-size 256 --batches 40 \
    --hw-decoder-load "$1" --workers "$2" --no-baseline --json "$OUT/loader_hw$1_t$2.json" >> "$OUT/loader.txt" 2>&1
done
limit 45 $PY cli.py bench loader --shards "$WORK/wds" --device cuda --batch-size 256 --batches 40 --workers 8 \
  --mean channel --json "$OUT/loader_channel_baseline.json" >> "$OUT/loader.txt" 2>&1
grep -E "^bench|DALI|reference|speedup|error" "$OUT/loader.txt"

step "bench train: eager, then torch.compile -> $OUT/train_bench.txt"
limit 45 $PY cli.py bench train --shards "$WORK/wds" --device cuda --batch-size 256 --steps 50 \
  --json "$OUT/train_bench_eager.json" > "$OUT/train_bench.txt" 2>&1
limit 150 $PY cli.py bench train --shards "$WORK/wds" --device cuda --batch-size 256 --steps 50 --compile \
  --json "$OUT/train_bench_compile.json" >> "$OUT/train_bench.txt" 2>&1
cat "$OUT/train_bench.txt" | grep -v "^  *$"

step "a short run on one GPU (2 epochs), then 10-crop evaluation -> $OUT/train.txt"
limit 90 $PY cli.py train --shards "$WORK/wds" --out "$WORK/run" --gpus 1 --epochs 2 --lr 0.001 --log-every 5 \
  > "$OUT/train.txt" 2>&1
limit 45 $PY cli.py eval --shards "$WORK/wds" --checkpoint "$WORK/run/checkpoint.pt" --gpus 1 --ten-crop --json \
  >> "$OUT/train.txt" 2>&1
cp "$WORK/run/metrics.jsonl" "$WORK/run/config.json" "$OUT/" 2>/dev/null
tail -4 "$OUT/train.txt"

step "done: results in $OUT"
[ "$tests_rc" -eq 0 ] || { echo "FAIL: gpu tests failed (rc $tests_rc), see $OUT/gpu_tests.txt"; exit 1; }

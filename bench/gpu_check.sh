#!/usr/bin/env bash
# GPU checks for a session lent a GPU machine (../shared/gpu/GPU.md). Not yet run on a GPU: no session so far had one.
#
# Here, once:  DALI_PKGS="nvidia-dali-cuda120==2.4.0 webdataset braceexpand simplejpeg scikit-image matplotlib click tqdm" \
#                ../shared/gpu/pack-dali.sh
# There, after carrying every .gpucarry/part-* to /tmp/parts (GPU.md), in one call:
#   mkdir -p /tmp/site && cat /tmp/parts/part-* | python3 -c "import sys,tarfile; tarfile.open(fileobj=sys.stdin.buffer, mode='r|xz').extractall('/tmp/site')" \
#     && export PYTHONPATH=/tmp/site:$PWD && bash bench/gpu_check.sh
# Results land in $OUT (the device tool brings them back): device, GPU tests, loader/train benchmarks, a short run.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}
WORK=${WORK:-/tmp/gpu-work}
mkdir -p "$OUT" "$WORK"
export PYTHONPATH=${PYTHONPATH:-}:$PWD

python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))" 2>&1 | tee "$OUT/device.txt"

# 1. the gpu-marked tests (DALI mixed decode, GPU vs CPU pixels, resume on GPU, a --gpus 1 run with 10-crop eval)
timeout 300 python3 -m pytest -q -ra -m gpu tests/ > "$OUT/gpu_tests.txt" 2>&1
tail -5 "$OUT/gpu_tests.txt"

# 2. ~8,000 ImageNet-like 256x256 images in page cache: loader and training throughput (targets: 25k and 20k img/s)
python3 -c "from shards.sample import make_sample_tree; make_sample_tree('$WORK/src', train_per_class=1000, val_per_class=50)"
python3 cli.py shard --src "$WORK/src" --out "$WORK/wds" > "$OUT/shard.txt" 2>&1
cat "$WORK"/wds/train/*.tar > /dev/null
python3 cli.py bench loader --shards "$WORK/wds" --device cuda --batch-size 256 --batches 200 --mean channel \
  --json "$OUT/loader_channel.json" > "$OUT/loader.txt" 2>&1
python3 cli.py bench loader --shards "$WORK/wds" --device cuda --batch-size 256 --batches 200 --mean image \
  --json "$OUT/loader_image.json" >> "$OUT/loader.txt" 2>&1
python3 cli.py bench train --shards "$WORK/wds" --device cuda --batch-size 256 --steps 100 \
  --json "$OUT/train_bench.json" > "$OUT/train_bench.txt" 2>&1
cat "$OUT/loader.txt" "$OUT/train_bench.txt"

# 3. a short real run on one GPU, then 10-crop evaluation
python3 cli.py train --shards "$WORK/wds" --out "$WORK/run" --gpus 1 --epochs 2 --lr 0.001 --log-every 10 \
  > "$OUT/train.txt" 2>&1
python3 cli.py eval --shards "$WORK/wds" --checkpoint "$WORK/run/checkpoint.pt" --ten-crop --json >> "$OUT/train.txt" 2>&1
tail -5 "$OUT/train.txt"

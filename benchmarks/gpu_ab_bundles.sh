#!/usr/bin/env bash
# Time two bundled Caffe builds (tools/bundle_caffe_cli.sh) against each other
# on a GPU machine, on one timing plan, interleaved (benchmarks/ab_caffe_builds.py).
# Used to measure the CUDA patch's cuDNN algorithm cache (before/after).
#
#   benchmarks/gpu_ab_bundles.sh BUNDLES PLAN_DIR OUT_DIR [DEADLINE_S] [ROUNDS]
#
# BUNDLES holds before.tar.xz and after.tar.xz. The GPU machine provides CUDA
# 13 (runtime, cuBLAS, cuRAND) and cuDNN 9 itself, e.g. in its PyTorch wheels:
# they are looked up under /opt, /usr/local and /usr/lib (or name their folders
# in CUDA_LIB_DIRS, colon-separated). Needs python3 with
# numpy. Writes OUT_DIR/gpu.txt, ab.json (rewritten after every round) and ab.log.
set -uo pipefail

BUNDLES=${1:?usage: gpu_ab_bundles.sh BUNDLES PLAN_DIR OUT_DIR [DEADLINE_S] [ROUNDS]}
PLAN=${2:?usage: gpu_ab_bundles.sh BUNDLES PLAN_DIR OUT_DIR [DEADLINE_S] [ROUNDS]}
OUT=${3:?usage: gpu_ab_bundles.sh BUNDLES PLAN_DIR OUT_DIR [DEADLINE_S] [ROUNDS]}
DEADLINE=${4:-300}
ROUNDS=${5:-8}
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT"

for name in before after; do
    mkdir -p "$WORK/$name" && tar -xJf "$BUNDLES/$name.tar.xz" -C "$WORK/$name" || exit 1
done
LIBS=${CUDA_LIB_DIRS:-}
if [[ -z "$LIBS" ]]; then
    for lib in libcudart.so.13 libcublas.so.13 libcurand.so.10 libcudnn.so.9; do
        path=$(find /opt /usr/local /usr/lib -name "$lib" 2>/dev/null | head -n1)
        [[ -n "$path" ]] || { echo "gpu_ab: no $lib on this machine (set CUDA_LIB_DIRS)" >&2; exit 1; }
        dir=$(dirname "$path")
        [[ ":$LIBS:" == *":$dir:"* ]] || LIBS=${LIBS:+$LIBS:}$dir
    done
fi
export LD_LIBRARY_PATH=$LIBS
echo "gpu_ab: CUDA/cuDNN libraries from $LIBS"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"

# both builds start and see the GPU; then one untimed run to raise the clocks
for name in before after; do
    LD_LIBRARY_PATH="$WORK/$name/lib:$LIBS" "$WORK/$name/bin/caffe" device_query -gpu 0 2>&1 \
        | grep -E "Name:|Major revision" || { echo "gpu_ab: $name build cannot use the GPU" >&2; exit 1; }
done
start=$(date +%s)
LD_LIBRARY_PATH="$WORK/after/lib:$LIBS" GLOG_minloglevel=2 "$WORK/after/bin/caffe" time -gpu 0 \
    -phase TEST -iterations 50 -model "$PLAN/original_b256.prototxt" > /dev/null 2>&1
echo "gpu_ab: warm-up took $(( $(date +%s) - start )) s"
nvidia-smi --query-gpu=clocks.sm --format=csv,noheader | sed 's/^/gpu_ab: SM clock after warm-up: /' | tee -a "$OUT/gpu.txt"

PYTHONUNBUFFERED=1 python3 "$HERE/ab_caffe_builds.py" "$PLAN/plan.json" "$OUT/ab.json" \
    --build "before=$WORK/before/bin/caffe" --build "after=$WORK/after/bin/caffe" \
    --repeats "$ROUNDS" --deadline-s "$DEADLINE" 2> "$OUT/ab.log"
status=$?
tail -n 3 "$OUT/ab.log"
exit $status

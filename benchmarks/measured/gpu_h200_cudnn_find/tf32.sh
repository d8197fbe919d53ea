#!/usr/bin/env bash
# TF32: the same binary with NVIDIA_TF32_OVERRIDE=0 (no TF32 tensor-core math in cuDNN/cuBLAS)
set -u
OUT=${OUT:-/tmp/tf32_out}; mkdir -p "$OUT"; W=$(mktemp -d)
tar -xJf .gpu/find/find.tar.xz -C "$W" || exit 1
LIBS=
for lib in libcudart.so.13 libcublas.so.13 libcurand.so.10 libcudnn.so.9; do
    path=$(find /opt /usr/local /usr/lib -name "$lib" 2>/dev/null | head -n1); dir=$(dirname "$path")
    [[ ":$LIBS:" == *":$dir:"* ]] || LIBS=${LIBS:+$LIBS:}$dir
done
export LD_LIBRARY_PATH=$W/lib:$LIBS
CAFFE=$W/bin/caffe
NVIDIA_TF32_OVERRIDE=0 "$CAFFE" test -model prototxt/lenet_fashion_train_test.prototxt \
  -weights runs/lenet_fashion/baseline.caffemodel -iterations 100 -gpu 0 > "$OUT/lenet_gpu_notf32.log" 2>&1
grep -E '\] (accuracy|loss) =' "$OUT/lenet_gpu_notf32.log" | tail -n2
GLOG_minloglevel=2 "$CAFFE" time -gpu 0 -phase TEST -iterations 50 -model .gpu/find/plan256/original_b256.prototxt > /dev/null 2>&1
nvidia-smi --query-gpu=clocks.sm --format=csv,noheader | sed 's/^/SM clock after warm-up: /'
PYTHONUNBUFFERED=1 python3 benchmarks/ab_caffe_builds.py .gpu/find/plan256/plan.json "$OUT/ab_tf32.json" \
    --build heur1g="$CAFFE" --build heur1g_notf32="$CAFFE" --build find1g_notf32="$CAFFE" --build heur8_notf32="$CAFFE" \
    --env heur1g:CAFFE_CUDNN_WORKSPACE_MB=1024 \
    --env heur1g_notf32:CAFFE_CUDNN_WORKSPACE_MB=1024 --env heur1g_notf32:NVIDIA_TF32_OVERRIDE=0 \
    --env find1g_notf32:CAFFE_CUDNN_WORKSPACE_MB=1024 --env find1g_notf32:NVIDIA_TF32_OVERRIDE=0 --env find1g_notf32:CAFFE_CUDNN_FIND=1 \
    --env heur8_notf32:NVIDIA_TF32_OVERRIDE=0 \
    --repeats 5 --deadline-s 90 > "$OUT/ab_tf32.log" 2> "$OUT/ab_tf32.processes.log"
echo "ab rc $?"; cat "$OUT/ab_tf32.log"
python3 - "$OUT/ab_tf32.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
for name in d["order"]:
    for batch, b in d["results"][name]["batches"].items():
        print(name, batch, "; ".join("%s %s/%s" % (layer, r["original"].get("cudnn_forward"), r["compact"].get("cudnn_forward"))
                                     for layer, r in b["layers"].items() if layer.startswith("conv")))
PY

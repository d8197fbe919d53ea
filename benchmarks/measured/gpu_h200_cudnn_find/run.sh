#!/usr/bin/env bash
# On a GPU machine: the CUDA build with tools/patches/caffe-cudnn-find.patch.
# 1. LeNet / Fashion-MNIST test accuracy (10k images): GPU with cuDNN's heuristic choice,
#    GPU with CAFFE_CUDNN_FIND=1, and the CPU path of the same build.
# 2. AlexNet plan, four settings of one binary interleaved (ab_caffe_builds.py):
#    heuristic / timed choice x 8 MB / 1 GB workspace.
set -u
OUT=${OUT:-/tmp/find_out}; DEADLINE=${DEADLINE:-200}; ROUNDS=${ROUNDS:-5}
mkdir -p "$OUT"; W=$(mktemp -d)
tar -xJf .gpu/find/find.tar.xz -C "$W" || exit 1
LIBS=
for lib in libcudart.so.13 libcublas.so.13 libcurand.so.10 libcudnn.so.9; do
    path=$(find /opt /usr/local /usr/lib -name "$lib" 2>/dev/null | head -n1)
    [[ -n "$path" ]] || { echo "no $lib on this machine" >&2; exit 1; }
    dir=$(dirname "$path")
    [[ ":$LIBS:" == *":$dir:"* ]] || LIBS=${LIBS:+$LIBS:}$dir
done
export LD_LIBRARY_PATH=$W/lib:$LIBS
echo "libs: $LIBS" | tee "$OUT/gpu.txt"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv | tee -a "$OUT/gpu.txt"
CAFFE=$W/bin/caffe
LENET=(test -model prototxt/lenet_fashion_train_test.prototxt
       -weights runs/lenet_fashion/baseline.caffemodel -iterations 100)
t0=$(date +%s)
"$CAFFE" "${LENET[@]}" -gpu 0 > "$OUT/lenet_gpu_heuristic.log" 2>&1; echo "rc $?"
CAFFE_CUDNN_FIND=1 "$CAFFE" "${LENET[@]}" -gpu 0 > "$OUT/lenet_gpu_find.log" 2>&1; echo "rc $?"
"$CAFFE" "${LENET[@]}" > "$OUT/lenet_cpu.log" 2>&1; echo "rc $?"
for f in "$OUT"/lenet_*.log; do
    echo "$(basename "$f"): $(grep -E '\] (accuracy|loss) =' "$f" | tail -n2 | sed 's/.*\] //' | tr '\n' ' ')"
    grep -m3 '\] cuDNN ' "$f" | sed 's/.*\] /  /'
done
echo "lenet checks: $(( $(date +%s) - t0 )) s"
# untimed warm-up to raise the clocks
GLOG_minloglevel=2 "$CAFFE" time -gpu 0 -phase TEST -iterations 50 \
    -model .gpu/find/plan/original_b256.prototxt > /dev/null 2>&1; echo "warm-up rc $?"
nvidia-smi --query-gpu=clocks.sm --format=csv,noheader | sed 's/^/SM clock after warm-up: /' | tee -a "$OUT/gpu.txt"
PYTHONUNBUFFERED=1 python3 benchmarks/ab_caffe_builds.py .gpu/find/plan/plan.json "$OUT/ab.json" \
    --build heur8="$CAFFE" --build find8="$CAFFE" --build heur1g="$CAFFE" --build find1g="$CAFFE" \
    --env find8:CAFFE_CUDNN_FIND=1 --env heur1g:CAFFE_CUDNN_WORKSPACE_MB=1024 \
    --env find1g:CAFFE_CUDNN_FIND=1 --env find1g:CAFFE_CUDNN_WORKSPACE_MB=1024 \
    --repeats "$ROUNDS" --deadline-s "$DEADLINE" > "$OUT/ab.log" 2> "$OUT/ab.processes.log"
echo "ab rc $?"
cat "$OUT/ab.log"
python3 - "$OUT/ab.json" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
for name in d["order"]:
    for batch, b in d["results"][name]["batches"].items():
        print(name, batch, "; ".join("%s %s/%s" % (layer, r["original"].get("cudnn_forward"),
                                                   r["compact"].get("cudnn_forward"))
                                     for layer, r in b["layers"].items() if layer.startswith("conv")))
EOF

#!/usr/bin/env bash
# Training-iteration time (caffe time, TRAIN: forward + backward, weight gradients included)
# of dense AlexNet (batch 32) and LeNet (batch 64) on the device's CPU, three thread settings.
set -u
OUT=${OUT:-/tmp/train_out}; T=${T:-8}; ROUNDS=${ROUNDS:-3}
mkdir -p "$OUT"; W=$(mktemp -d); mkdir -p "$W/omp"
tar -xJf .gpu/train/cpu.tar.xz -C "$W" && tar -xJf .gpu/cpu_ab/ompblas.tar.xz -C "$W/omp" || exit 1
{ lscpu; echo "nproc $(nproc)"; uptime; } > "$OUT/cpu.txt"; grep -E 'Model name|^CPU\(s\)|Thread|nproc|load' "$OUT/cpu.txt"
export LD_LIBRARY_PATH=$W/lib
# deploy nets made trainable for timing: force_backward (weight and input gradients), batch set
mk() { { echo "force_backward: true"; sed -E "0,/dim: [0-9]+/s//dim: $2/" "$1"; } > "$3"; }
mk prototxt/alexnet_deploy.prototxt 32 "$OUT/alexnet_b32_train.prototxt"
mk prototxt/lenet_deploy.prototxt 64 "$OUT/lenet_b64_train.prototxt"
for net in alexnet_b32:4 lenet_b64:100; do
  name=${net%%:*}; iters=${net##*:}
  PYTHONUNBUFFERED=1 python3 benchmarks/bench_train_threads.py --caffe "$W/bin/caffe" \
    --model "$OUT/${name}_train.prototxt" --rounds "$ROUNDS" --iterations "$iters" \
    --setting "blas$T:OPENBLAS_NUM_THREADS=$T" \
    --setting "conv$T:CAFFE_CPU_CONV_THREADS=$T,OPENBLAS_NUM_THREADS=1" \
    --setting "conv${T}omp:CAFFE_CPU_CONV_THREADS=$T,OPENBLAS_NUM_THREADS=$T,LD_LIBRARY_PATH=$W/omp:$W/lib" \
    --out "$OUT/$name.json" 2> "$OUT/$name.rounds.log" | tee "$OUT/$name.txt"
  echo "$name rc ${PIPESTATUS[0]}"
done

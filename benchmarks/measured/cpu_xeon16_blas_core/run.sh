#!/usr/bin/env bash
# Xeon CPU, session 9: the previous session's build (68c3a80: row + run path) against the
# current one (cda11c1: + phase path, run path fixed for -O3), 1 thread, batch 1 and 8;
# then the current build at 8 threads, batch 8: serial loop / CAFFE_CPU_CONV_THREADS with 1 OpenBLAS
# thread / with the OpenMP OpenBLAS at 8 / with the bundle's pthreads OpenBLAS at 8 (what the
# earlier "batchomp" ran, ab_caffe_builds having put the bundle's lib/ first).
set -u
OUT=${OUT:-/tmp/s9_out}; D1=${D1:-180}; D8=${D8:-120}
mkdir -p "$OUT"; W=$(mktemp -d)
for b in prev cur; do mkdir -p "$W/$b"; tar -xJf .gpu/s9/$b.tar.xz -C "$W/$b" || exit 1; done
mkdir -p "$W/omp"; tar -xJf .gpu/s9/ompblas.tar.xz -C "$W/omp" || exit 1
{ lscpu; echo "nproc $(nproc)"; uptime; } > "$OUT/cpu.txt"; grep -E 'Model name|nproc|load' "$OUT/cpu.txt"
for d in $W/cur/lib $W/omp; do  # 0 sequential, 1 pthreads, 2 OpenMP
  python3 -c "import ctypes, sys; ctypes.CDLL('$W/cur/lib/libgomp.so.1', mode=ctypes.RTLD_GLOBAL); print(sys.argv[1], 'openblas_get_parallel', ctypes.CDLL(sys.argv[1]).openblas_get_parallel())" $d/libopenblas.so.0 | tee -a "$OUT/cpu.txt"
done
OPENBLAS_NUM_THREADS=1 PYTHONUNBUFFERED=1 python3 benchmarks/ab_caffe_builds.py .gpu/s9/plan/plan.json \
  "$OUT/ab_t1.json" --build prev=$W/prev/bin/caffe --build cur=$W/cur/bin/caffe --cpu \
  --repeats 12 --deadline-s "$D1" > "$OUT/ab_t1.log" 2>&1
echo "t1 rc $?"; tail -n 23 "$OUT/ab_t1.log"
C=$W/cur/bin/caffe
OPENBLAS_NUM_THREADS=8 PYTHONUNBUFFERED=1 python3 benchmarks/ab_caffe_builds.py .gpu/s9/plan8/plan.json \
  "$OUT/ab_t8.json" --build serial=$C --build batch=$C --build batchomp=$C \
  --env batch:CAFFE_CPU_CONV_THREADS=8 --env batch:OPENBLAS_NUM_THREADS=1 \
  --env batchomp:CAFFE_CPU_CONV_THREADS=8 --env batchomp:LD_LIBRARY_PATH=$W/omp \
  --build batchpt=$C --env batchpt:CAFFE_CPU_CONV_THREADS=8 --cpu --repeats 12 --deadline-s "$D8" > "$OUT/ab_t8.log" 2>&1
echo "t8 rc $?"; tail -n 23 "$OUT/ab_t8.log"
uptime >> "$OUT/cpu.txt"

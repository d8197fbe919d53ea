#!/usr/bin/env bash
# Which OpenBLAS kernel the Xeon gets, and the conv GEMMs' rate under it and under forced core types;
# then the AlexNet plan, 1 thread, batch 8: default kernel against OPENBLAS_CORETYPE=SKYLAKEX.
set -u
OUT=${OUT:-/tmp/s9_out2}; D=${D:-100}
mkdir -p "$OUT"; W=$(mktemp -d); mkdir -p "$W/cur"; tar -xJf .gpu/s9/cur.tar.xz -C "$W/cur" || exit 1
export LD_LIBRARY_PATH=$W/cur/lib OPENBLAS_NUM_THREADS=1
python3 -c "import ctypes; b=ctypes.CDLL('$W/cur/lib/libopenblas.so.0'); b.openblas_get_corename.restype=ctypes.c_char_p; b.openblas_get_config.restype=ctypes.c_char_p; print('default core', b.openblas_get_corename(), b.openblas_get_config())" | tee "$OUT/gemm.txt"
for core in default SKYLAKEX HASWELL; do
  echo "== OPENBLAS_CORETYPE=$core" | tee -a "$OUT/gemm.txt"
  if [ $core = default ]; then .gpu/s9/gemm_rate; else OPENBLAS_CORETYPE=$core .gpu/s9/gemm_rate; fi 2>&1 | tee -a "$OUT/gemm.txt"
done
C=$W/cur/bin/caffe
PYTHONUNBUFFERED=1 python3 benchmarks/ab_caffe_builds.py .gpu/s9/plan8/plan.json "$OUT/ab_core.json" \
  --build default=$C --build skylakex=$C --env skylakex:OPENBLAS_CORETYPE=SKYLAKEX --cpu \
  --repeats 12 --deadline-s "$D" > "$OUT/ab_core.log" 2>&1
echo "ab rc $?"; tail -n 11 "$OUT/ab_core.log"

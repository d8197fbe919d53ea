#!/usr/bin/env bash
# caffetime.blas_info on the Xeon: the kernel the bundle's OpenBLAS picks, and the warning.
set -u
W=$(mktemp -d); tar -xJf .gpu/s9b/cur.tar.xz -C "$W" || exit 1
export LD_LIBRARY_PATH=$W/lib
python3 - "$W/bin/caffe" <<'PY' | tee "$OUT/blas_info.txt"
import json, os, sys
sys.path.insert(0, ".")
from caffe_admm import caffetime
print(json.dumps(caffetime.blas_info(sys.argv[1]), indent=1))
print(json.dumps(caffetime.blas_info(sys.argv[1], dict(os.environ, OPENBLAS_CORETYPE="SKYLAKEX")), indent=1))
print(sorted(f for f in caffetime.cpu_flags() if f.startswith(("avx", "fma"))))
PY

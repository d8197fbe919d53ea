#!/bin/bash
# One layer of a plan looped under `perf record` with one Caffe build, then
# the shares of its samples in OpenBLAS's GEMM and in im2col (its memcpy and
# memset calls included: nothing else in the loop calls them). Run from the
# repository root; prints one line of perf_shares.txt:
#   shares.sh NAME CAFFE_PREFIX PLAN_DIR original|compact LAYER ITERATIONS
name=$1 prefix=$2 plan=$3 net=$4 layer=$5 n=$6
here=$(dirname "$0")
out=$(mktemp /tmp/perf_XXXXXX.data)
res=$(OPENBLAS_NUM_THREADS=1 LD_LIBRARY_PATH=$prefix/lib PYTHONPATH=$prefix/lib/python3/dist-packages \
  perf record -q -o "$out" -- .venv/bin/python "$here/prof.py" "$plan/${net}_b8.prototxt" "$layer" "$n" hot \
  2>/dev/null | tail -1)
perf report -i "$out" --stdio --sort sym 2>/dev/null | grep -v '^#' | awk -v r="$name $net $res" '
  /sgemm_/ {g+=$1} /im2col|split_phases|memmove|memset|memcpy/ {i+=$1}
  END {printf "%s; GEMM %.1f%%, im2col %.1f%%: im2col/GEMM %.3f\n", r, g, i, i/g}'
rm -f "$out"

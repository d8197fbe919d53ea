#!/usr/bin/env bash
# Pack a built Caffe's command-line tool for another x86-64 Linux machine:
# bin/caffe, lib/libcaffe.so* and the shared libraries they load from this
# machine (Boost, glog, protobuf, HDF5, OpenBLAS, ...), but not the C library,
# libstdc++ or CUDA/cuDNN, which the target machine's own (newer) ones provide.
#
#   tools/bundle_caffe_cli.sh PREFIX OUT.tar.xz
#
# On the target: tar -xJf OUT.tar.xz -C DIR, then
#   LD_LIBRARY_PATH=DIR/lib:<CUDA and cuDNN lib dirs> DIR/bin/caffe time ...
# (the timing plans of `caffe-admm time --plan-only` are measured this way).
set -euo pipefail

PREFIX=${1:?usage: bundle_caffe_cli.sh PREFIX OUT.tar.xz}
OUT=${2:?usage: bundle_caffe_cli.sh PREFIX OUT.tar.xz}
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE/bin" "$STAGE/lib"
cp -L "$PREFIX/bin/caffe" "$STAGE/bin/"
cp -a "$PREFIX"/lib/libcaffe.so* "$STAGE/lib/"
SKIP='^(linux-vdso|ld-linux|libc|libm|libdl|libpthread|librt|libstdc\+\+|libgcc_s|libcuda|libcudart|libcublas|libcublasLt|libcurand|libcudnn.*|libnvrtc|libnvJitLink)\.so'
# ldd resolves libcaffe's own dependencies too; unresolved CUDA libraries are fine
LD_LIBRARY_PATH="$PREFIX/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ldd "$PREFIX/bin/caffe" \
    | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}' | while read -r name path; do
        [[ "$name" =~ $SKIP ]] || cp -L "$path" "$STAGE/lib/$name"
    done
tar -cJf "$OUT" -C "$STAGE" .
echo "bundle: $(ls "$STAGE/lib" | wc -l) libraries, $(du -h "$OUT" | cut -f1) -> $OUT"

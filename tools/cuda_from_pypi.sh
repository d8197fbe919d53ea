#!/usr/bin/env bash
# A CUDA 13.0 toolkit with cuDNN 9, for building Caffe, from NVIDIA's PyPI
# wheels (nvcc, runtime, cuBLAS, cuRAND, cuDNN): for machines with no CUDA
# package, e.g. to build here and run the binaries on a GPU machine whose
# driver supports CUDA 13.0 (driver >= 580).
#
#   tools/cuda_from_pypi.sh DIR
#   CUDA_HOME=DIR make setup        # or: CUDA_HOME=DIR tools/install_caffe.sh ...
#
# DIR gets bin/nvcc, include/, lib64/ and cudnn's include/ and lib/ in the
# layout CMake's FindCUDA and tools/install_caffe.sh expect. Idempotent.
set -euo pipefail

DIR=${1:?usage: cuda_from_pypi.sh DIR}
WHEELS=(nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88
        nvidia-cuda-cccl==13.0.85 nvidia-cuda-runtime==13.0.96 nvidia-cublas==13.0.2.14
        nvidia-curand==10.4.0.35 nvidia-cudnn-cu13==9.13.0.50)
KEY=$(echo "${WHEELS[*]}" | sha256sum | cut -c1-16)
if [[ -f "$DIR/.stamp" && "$(cat "$DIR/.stamp")" == "$KEY" ]]; then
    echo "cuda: cached toolkit in $DIR"
    exit 0
fi
rm -rf "$DIR"
mkdir -p "$DIR/lib64" "$DIR/lib"
echo "cuda: installing ${#WHEELS[@]} NVIDIA wheels into $DIR/wheels (about 1.4 GB)"
python3 -m pip install -q --no-deps --disable-pip-version-check --target "$DIR/wheels" "${WHEELS[@]}"
N="$DIR/wheels/nvidia"
ln -s "$N/cu13/bin" "$DIR/bin"
ln -s "$N/cu13/nvvm" "$DIR/nvvm"
ln -s "$N/cu13/include" "$DIR/include"
for lib in "$N"/cu13/lib/*.so* "$N"/cu13/lib/*.a; do ln -s "$lib" "$DIR/lib64/"; done
for lib in "$N"/cudnn/lib/*.so*; do ln -s "$lib" "$DIR/lib/"; done
# the unversioned names the linker looks for
(cd "$DIR/lib64" && ln -s libcudart.so.13 libcudart.so && ln -s libcublas.so.13 libcublas.so \
    && ln -s libcublasLt.so.13 libcublasLt.so && ln -s libcurand.so.10 libcurand.so)
(cd "$DIR/lib" && ln -s libcudnn.so.9 libcudnn.so)
# install_caffe.sh looks for cuDNN's header in CUDNN_HOME/include: share the toolkit's
for h in "$N"/cudnn/include/*.h; do ln -s "$h" "$N/cu13/include/"; done
"$DIR/bin/nvcc" --version | tail -n 2
echo "$KEY" > "$DIR/.stamp"
echo "cuda: toolkit in $DIR (CUDA_HOME=$DIR)"

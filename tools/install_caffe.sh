#!/usr/bin/env bash
# Build genuine BVLC Caffe (pycaffe, Python layers) from Debian's bullseye
# source package and install it into a cached prefix: CPU-only by default,
# CUDA + cuDNN when CUDA_HOME names a CUDA toolkit.
#
#   tools/install_caffe.sh PREFIX PYTHON
#   CUDA_HOME=/usr/local/cuda [CUDNN_HOME=DIR] [CUDA_ARCH_BIN="80 90"] \
#       tools/install_caffe.sh PREFIX PYTHON
#
# PREFIX gets bin/caffe, lib/libcaffe.so* and lib/python3/dist-packages/caffe.
# A stamp file makes a second run a no-op; delete PREFIX to rebuild.
# Only Debian's archive is contacted (through a private apt state, so the
# machine's own apt configuration is not touched).
# Every build applies tools/patches/caffe-im2col-cpu.patch (a faster CPU
# im2col and col2im, bit-equal output), tools/patches/caffe-cpu-conv-threads.patch
# (CAFFE_CPU_CONV_THREADS; CPU-only builds link OpenMP for it, CUDA builds
# do not and ignore it), tools/patches/caffe-ip-cpu.patch (InnerProduct
# forward at 1-2 rows as matrix-vector products, at 3-32 rows as GEMMs on
# blocks of its weights) and
# tools/patches/caffe-pooling-cpu.patch (CPU pooling with each window's
# result in a register, bit-equal output) and
# tools/patches/caffe-conv-onednn.patch (the CPU convolution forward pass
# through oneDNN's direct convolution, Debian's libdnnl-dev; CPU-only builds
# link it and OpenBLAS's OpenMP build, CUDA builds neither); README "The
# Caffe build". CUDA
# builds also apply tools/patches/caffe-cuda13-cudnn9.patch
# (cuDNN 8/9 and CUDA 13 API changes) and tools/patches/caffe-cudnn-find.patch
# (CAFFE_CUDNN_FIND: algorithms chosen by timing; the choices logged) and
# compile for CUDA_ARCH_BIN (default 90: H100/H200) plus PTX of its last
# entry; cuDNN is looked up in CUDNN_HOME (include/, lib/), else in the
# toolkit. tools/cuda_from_pypi.sh makes such a toolkit from NVIDIA's PyPI
# wheels where no CUDA package is at hand.
set -euo pipefail

PREFIX=${1:?usage: install_caffe.sh PREFIX PYTHON}
PYTHON=${2:?usage: install_caffe.sh PREFIX PYTHON}
VERSION=1.0.0+git20180821.99bd997-8
UPSTREAM=1.0.0+git20180821.99bd997
# sha256 of the source package files (upstream BVLC commit 99bd997).
SHA_ORIG=e0eb3f06794f7402c77b7dec8e8480273ee1a1bb192e9122b621a69d4147ad0c
SHA_DEBIAN=07cf073227494a6b07234e40cb5df91db566616593eef9baafdc4d06ad159f21
SHA_DSC=c492f4893fc1ba1fb514b2d9b4763bc78dc93571ea24adc6e604eccbb93cdd64
HERE=$(cd "$(dirname "$0")" && pwd)
CUDA_PATCHES=("$HERE/patches/caffe-cuda13-cudnn9.patch" "$HERE/patches/caffe-cudnn-find.patch")
CPU_PATCHES=("$HERE/patches/caffe-im2col-cpu.patch" "$HERE/patches/caffe-cpu-conv-threads.patch"
             "$HERE/patches/caffe-ip-cpu.patch" "$HERE/patches/caffe-pooling-cpu.patch"
             "$HERE/patches/caffe-conv-onednn.patch")
CUDA_HOME=${CUDA_HOME:-}
CUDA_ARCH_BIN=${CUDA_ARCH_BIN:-90}
CUDNN_HOME=${CUDNN_HOME:-$CUDA_HOME}
OPENBLAS_OMP=
if [[ -n "$CUDA_HOME" ]]; then
    [[ -x "$CUDA_HOME/bin/nvcc" ]] || { echo "caffe: CUDA_HOME=$CUDA_HOME has no bin/nvcc" >&2; exit 1; }
    CUDNN_INC="$CUDNN_HOME/include"
    CUDNN_LIB=$( (ls "$CUDNN_HOME"/lib*/libcudnn.so 2>/dev/null || true) | head -n1)
    [[ -f "$CUDNN_INC/cudnn.h" && -n "$CUDNN_LIB" ]] \
        || { echo "caffe: no cuDNN (include/cudnn.h, lib/libcudnn.so) under CUDNN_HOME=$CUDNN_HOME" >&2; exit 1; }
    BUILD_KIND="CUDA $CUDA_HOME, cuDNN $CUDNN_HOME, sm $CUDA_ARCH_BIN"
else
    BUILD_KIND="CPU only, oneDNN, OpenMP OpenBLAS"
    [[ -f /usr/include/oneapi/dnnl/dnnl.hpp ]] \
        || { echo "caffe: no oneDNN (apt-get install libdnnl-dev; tools/install_deps.sh does)" >&2; exit 1; }
    # OpenBLAS's OpenMP build, so that its threads and oneDNN's are one OpenMP
    # pool: with the pthreads build the two pools spin against each other
    # (README, "The oneDNN convolution")
    OPENBLAS_OMP="/usr/lib/$(gcc -print-multiarch)/openblas-openmp/libopenblas.so.0"
    [[ -f "$OPENBLAS_OMP" ]] \
        || { echo "caffe: no $OPENBLAS_OMP (apt-get install libopenblas0-openmp; tools/install_deps.sh does)" >&2; exit 1; }
fi
STAMP_KEY=$( (cat "$0" "${CPU_PATCHES[@]}"; [[ -z "$CUDA_HOME" ]] || cat "${CUDA_PATCHES[@]}"; echo "$BUILD_KIND") \
    | sha256sum | cut -c1-16)

if [[ -f "$PREFIX/.stamp" && "$(cat "$PREFIX/.stamp")" == "$STAMP_KEY" ]]; then
    echo "caffe: cached build in $PREFIX"
    exit 0
fi

WORK="$PREFIX.work"
rm -rf "$WORK" "$PREFIX"
mkdir -p "$WORK/lists/partial" "$WORK/cache/archives/partial" "$WORK/etc"

# Debian's mirror, as the machine's own apt sources name it.
MIRROR=$(sed -n 's/^URIs: *\(http[^ ]*\/debian\)\/*$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)
MIRROR=${MIRROR:-http://deb.debian.org/debian}
echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR bullseye main" \
    > "$WORK/etc/sources.list"
APT_OPTS=(-o "Dir::Etc::SourceList=$WORK/etc/sources.list" -o Dir::Etc::SourceParts=/dev/null
          -o "Dir::State::Lists=$WORK/lists" -o "Dir::Cache=$WORK/cache"
          -o APT::Sandbox::User=root -q)

echo "caffe: fetching Debian source package caffe=$VERSION"
apt-get "${APT_OPTS[@]}" update >/dev/null
(cd "$WORK" && apt-get "${APT_OPTS[@]}" source --download-only "caffe=$VERSION" >/dev/null)
(cd "$WORK" && sha256sum -c --quiet - <<SUMS
$SHA_ORIG  caffe_$UPSTREAM.orig.tar.gz
$SHA_DEBIAN  caffe_$VERSION.debian.tar.xz
$SHA_DSC  caffe_$VERSION.dsc
SUMS
)

# dpkg-source applies Debian's patch series (python lib naming, install dirs).
(cd "$WORK" && dpkg-source --no-check -q -x "caffe_$VERSION.dsc" src >/dev/null)
SRC="$WORK/src"
# protobuf >= 3.21 dropped the two-argument SetTotalBytesLimit.
sed -i 's/SetTotalBytesLimit(kProtoReadBytesLimit, 536870912)/SetTotalBytesLimit(kProtoReadBytesLimit)/' \
    "$SRC/src/caffe/util/io.cpp"
grep -q 'SetTotalBytesLimit(kProtoReadBytesLimit)' "$SRC/src/caffe/util/io.cpp"
# the CPU convolution: im2col and col2im without a per-element bounds test
# (same output) and CAFFE_CPU_CONV_THREADS (several images of a batch at
# once; off unless set); the CPU InnerProduct: one row through gemv; the CPU
# pooling: each window's result in a register (same output); the CPU
# convolution forward through oneDNN (CAFFE_CPU_CONV_ENGINE=caffe: Caffe's)
for cpu_patch in "${CPU_PATCHES[@]}"; do
    patch -d "$SRC" -p1 -s < "$cpu_patch"
done
# linked by its full path: its folder goes into the RUNPATH
DEVICE_OPTS=(-DCPU_ONLY=ON -DUSE_OPENMP=ON -DUSE_DNNL=ON -DOpenBLAS_LIB="$OPENBLAS_OMP")
CUDA_RPATH=
if [[ -n "$CUDA_HOME" ]]; then
    for cuda_patch in "${CUDA_PATCHES[@]}"; do
        patch -d "$SRC" -p1 -s < "$cuda_patch"
    done
    # find the toolkit's and cuDNN's libraries without LD_LIBRARY_PATH
    CUDA_RPATH=";$CUDA_HOME/lib64;$CUDA_HOME/lib;$(dirname "$CUDNN_LIB")"
    DEVICE_OPTS=(-DCPU_ONLY=OFF -DUSE_CUDNN=ON -DCUDA_TOOLKIT_ROOT_DIR="$CUDA_HOME"
                 -DCUDNN_INCLUDE="$CUDNN_INC" -DCUDNN_LIBRARY="$CUDNN_LIB"
                 -DCUDA_ARCH_NAME=Manual -DCUDA_ARCH_BIN="$CUDA_ARCH_BIN"
                 -DCUDA_ARCH_PTX="${CUDA_ARCH_BIN##* }")
    # CUDA 13 keeps thrust in include/cccl, which nvcc finds but g++ does not
    [[ ! -d "$CUDA_HOME/include/cccl" ]] \
        || DEVICE_OPTS+=(-DCMAKE_CXX_FLAGS="-isystem $CUDA_HOME/include/cccl")
fi

PY_VER=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
PY_INC=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
PY_LIB=$("$PYTHON" -c 'import sysconfig, os; print(os.path.join(sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("LDLIBRARY")))')
NP_INC=$("$PYTHON" -c 'import numpy; print(numpy.get_include())')
JOBS=${JOBS:-$(nproc)}

echo "caffe: configuring ($BUILD_KIND; python $PY_VER, numpy $("$PYTHON" -c 'import numpy; print(numpy.__version__)'))"
cmake -S "$SRC" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_INSTALL_PREFIX="$PREFIX" \
    -DCMAKE_INSTALL_RPATH="\$ORIGIN/../lib;\$ORIGIN/../../..$CUDA_RPATH" \
    "${DEVICE_OPTS[@]}" -DUSE_OPENCV=OFF -DUSE_LMDB=ON -DUSE_LEVELDB=ON -DUSE_NCCL=OFF \
    -DBUILD_python=ON -DBUILD_python_layer=ON -DBUILD_matlab=OFF -DBUILD_docs=OFF \
    -DBLAS=Open -Dpython_version="$PY_VER" \
    -DPYTHON_EXECUTABLE="$PYTHON" -DPYTHON_INCLUDE_DIR="$PY_INC" -DPYTHON_LIBRARY="$PY_LIB" \
    -DNUMPY_INCLUDE_DIR="$NP_INC" > "$WORK/cmake.log" 2>&1 \
    || { tail -n 40 "$WORK/cmake.log"; exit 1; }

echo "caffe: building with $JOBS jobs (on 2 cores: CPU only about 3-7 minutes, CUDA sm_90 8-16; log: $WORK/build.log)"
cmake --build "$WORK/build" -j "$JOBS" > "$WORK/build.log" 2>&1 \
    || { tail -n 40 "$WORK/build.log"; exit 1; }
cmake --install "$WORK/build" > "$WORK/install.log" 2>&1 \
    || { tail -n 40 "$WORK/install.log"; exit 1; }

echo "$STAMP_KEY" > "$PREFIX/.stamp"
rm -rf "$WORK"
echo "caffe: installed into $PREFIX"

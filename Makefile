# caffe-admm: `make demo` and `make test` do all setup first (apt packages,
# the Caffe build, the Python venv, the data), each step cached.
SHELL := /bin/bash
.DELETE_ON_ERROR:

PYTHON ?= /usr/bin/python3
VENV := .venv
PY := $(VENV)/bin/python
CACHE ?= $(HOME)/.cache/caffe-admm
# CUDA_HOME=/path/to/cuda-toolkit (with cuDNN, or CUDNN_HOME) builds Caffe with
# CUDA + cuDNN for CUDA_ARCH_BIN (default 90) into its own prefix.
ifdef CUDA_HOME
CAFFE_PREFIX := $(CACHE)/caffe-cuda-py3.11
else
CAFFE_PREFIX := $(CACHE)/caffe-py3.11
endif
# named after the whole prefix: another CACHE links .venv to its build, and
# coming back links the first one again
CAFFE_STAMP := $(VENV)/.caffe$(subst /,-,$(abspath $(CAFFE_PREFIX)))
CLI := $(VENV)/bin/caffe-admm

export GLOG_minloglevel ?= 2
export OPENBLAS_NUM_THREADS ?= 2
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export PYTHONUNBUFFERED := 1

.PHONY: setup deps data demo test bench clean

setup: deps $(CAFFE_STAMP) caffe_admm/proto/admm_pb2.py $(VENV)/.installed

deps:
	@tools/install_deps.sh

$(VENV)/.requirements: requirements.txt | deps
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip setuptools wheel
	@$(PY) -m pip install -q -r requirements.txt
	@touch $@

$(CAFFE_STAMP): $(VENV)/.requirements tools/install_caffe.sh tools/link_caffe.sh \
    $(wildcard tools/patches/*.patch)
	@tools/install_caffe.sh $(CAFFE_PREFIX) $(abspath $(PY))
	@tools/link_caffe.sh $(CAFFE_PREFIX) $(VENV)
	@rm -f $(VENV)/.caffe*
	@touch $@

caffe_admm/proto/admm_pb2.py: caffe_admm/proto/admm.proto | deps
	protoc -Icaffe_admm/proto --python_out=caffe_admm/proto $<

$(VENV)/.installed: pyproject.toml $(VENV)/.requirements
	@$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	@touch $@

data: setup data/mnist_train_lmdb data/fashion_mnist_train_lmdb

data/%_train_lmdb:
	$(CLI) data $* --out data

# The LeNet baselines are trained once and reused (delete runs/ to retrain).
runs/lenet_mnist/baseline.caffemodel: | data
	$(CLI) train --solver solvers/lenet_solver.prototxt --out runs/lenet_mnist

runs/lenet_fashion/baseline.caffemodel: | data
	$(CLI) train --solver solvers/lenet_fashion_solver.prototxt --out runs/lenet_fashion

# The main job on the bundled default: LeNet/MNIST, StructADMM filter+shape
# pruning (resumable: interrupt and run again), compaction, timing.
PRUNED := runs/lenet_mnist_fs_mild
PRUNE_CONFIG := prototxt/lenet_admm_filter_shape_mild.prototxt

$(PRUNED)/pruned.caffemodel: runs/lenet_mnist/baseline.caffemodel $(PRUNE_CONFIG) solvers/lenet_finetune_solver.prototxt
	$(CLI) prune --check --solver solvers/lenet_solver.prototxt \
	    --weights runs/lenet_mnist/baseline.caffemodel --config $(PRUNE_CONFIG)
	$(CLI) prune --solver solvers/lenet_solver.prototxt \
	    --weights runs/lenet_mnist/baseline.caffemodel \
	    --config $(PRUNE_CONFIG) --out $(PRUNED)

demo: setup data runs/lenet_mnist/baseline.caffemodel $(PRUNED)/pruned.caffemodel
	$(CLI) test --model prototxt/lenet_train_test.prototxt \
	    --weights runs/lenet_mnist/baseline.caffemodel
	$(CLI) compact --model prototxt/lenet_train_test.prototxt \
	    --weights $(PRUNED)/pruned.caffemodel --out $(PRUNED)/compact
	$(CLI) test --model $(PRUNED)/compact/compact.prototxt \
	    --weights $(PRUNED)/compact/compact.caffemodel
	$(CLI) compact --model prototxt/lenet_deploy.prototxt \
	    --weights $(PRUNED)/pruned.caffemodel --out $(PRUNED)/compact_deploy
	$(CLI) time --model prototxt/lenet_deploy.prototxt --weights $(PRUNED)/pruned.caffemodel \
	    --compact $(PRUNED)/compact_deploy/compact.prototxt \
	    --compact-weights $(PRUNED)/compact_deploy/compact.caffemodel \
	    --batch 1 64 --json $(PRUNED)/timing.json

test: setup
	$(PY) -m pytest -q tests

bench: setup data runs/lenet_mnist/baseline.caffemodel
	$(PY) benchmarks/bench_admm_overhead.py
	$(PY) benchmarks/bench_alexnet_compaction.py
	OPENBLAS_NUM_THREADS=1 $(PY) benchmarks/bench_alexnet_compaction.py \
	    --out benchmarks/results/alexnet_compaction_1thread.json
	CAFFE_CPU_CONV_THREADS=$(shell nproc) OPENBLAS_NUM_THREADS=1 \
	    $(PY) benchmarks/bench_alexnet_compaction.py \
	    --out benchmarks/results/alexnet_compaction_conv_threads.json
	$(PY) benchmarks/bench_train_threads.py \
	    --setting blas:OPENBLAS_NUM_THREADS=$(shell nproc) \
	    --setting conv:CAFFE_CPU_CONV_THREADS=$(shell nproc),OPENBLAS_NUM_THREADS=1

clean:
	rm -rf $(VENV) runs data/*_lmdb caffe_admm/proto/admm_pb2.py

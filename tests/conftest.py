"""Shared fixtures: a tiny learnable task written as real Caffe LMDBs, and a
small conv net + solver over it, so tests of Caffe behaviour take seconds."""

import os
import textwrap

import numpy as np
import pytest

os.environ.setdefault("GLOG_minloglevel", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _cpu_mode():
    from caffe_admm.backend import set_mode
    set_mode(None)


def make_task(n, seed, size=8, classes=4):
    """Images whose label is the quadrant holding a bright blob, plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    images = rng.integers(0, 60, (n, 1, size, size)).astype(np.uint8)
    h = size // 2
    for i, c in enumerate(labels):
        y, x = divmod(int(c), 2)
        images[i, 0, y * h:(y + 1) * h, x * h:(x + 1) * h] += 150
    return images, labels


TINY_NET = """
name: "Tiny"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
  transform_param { scale: 0.00390625 }
  data_param { source: "%(train)s" batch_size: 16 backend: LMDB } }
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TEST }
  transform_param { scale: 0.00390625 }
  data_param { source: "%(test)s" batch_size: 32 backend: LMDB } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 1 } param { lr_mult: 2 }
  convolution_param { num_output: 8 kernel_size: 3 pad: 1
    weight_filler { type: "xavier" } bias_filler { type: "constant" } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1
    weight_filler { type: "xavier" } bias_filler { type: "constant" } } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "ip1" type: "InnerProduct" bottom: "conv2" top: "ip1"
  inner_product_param { num_output: 4 weight_filler { type: "xavier" }
    bias_filler { type: "constant" } } }
layer { name: "accuracy" type: "Accuracy" bottom: "ip1" bottom: "label" top: "accuracy"
  include { phase: TEST } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip1" bottom: "label" top: "loss" }
"""

TINY_SOLVER = """
net: "%(net)s"
test_iter: 4
test_interval: 100
base_lr: %(lr)s
momentum: 0.9
weight_decay: 0.0005
lr_policy: "fixed"
max_iter: %(max_iter)d
display: 0
snapshot_prefix: "%(dir)s/unused"
random_seed: 7
type: "%(type)s"
"""


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """Train/test LMDBs of the tiny task: {"train": path, "test": path}."""
    from caffe_admm.data import write_lmdb
    root = tmp_path_factory.mktemp("tiny_data")
    paths = {}
    for split, (n, seed) in {"train": (320, 0), "test": (128, 1)}.items():
        images, labels = make_task(n, seed)
        paths[split] = write_lmdb(str(root / split), images, labels)
    return paths


def write_tiny(dir_path, tiny_data, lr=0.05, max_iter=200, solver_type="SGD", net=TINY_NET):
    """Write the tiny net and its solver into ``dir_path``; returns (solver, net) paths."""
    dir_path = str(dir_path)
    net_path = os.path.join(dir_path, "tiny_train_test.prototxt")
    with open(net_path, "w") as f:
        f.write(net % tiny_data)
    solver_path = os.path.join(dir_path, "tiny_solver.prototxt")
    with open(solver_path, "w") as f:
        f.write(TINY_SOLVER % {"net": net_path, "lr": lr, "max_iter": max_iter,
                               "dir": dir_path, "type": solver_type})
    return solver_path, net_path


@pytest.fixture(scope="session")
def tiny_trained(tmp_path_factory, tiny_data):
    """A trained tiny net: dict with solver, net and weights paths."""
    from caffe_admm import solver
    d = tmp_path_factory.mktemp("tiny_trained")
    solver_path, net_path = write_tiny(d, tiny_data)
    result = solver.train(solver_path, str(d / "run"), progress=False)
    return {"solver": solver_path, "net": net_path, "weights": result["weights"],
            "accuracy": result["test"]["accuracy"], "dir": str(d)}


def load_benchmark(name):
    """The script ``benchmarks/NAME.py`` imported as a module."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(ROOT, "benchmarks", name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def interrupt_on_call(monkeypatch, owner, name, n):
    """Replace ``owner.name`` with a wrapper that records each call's
    positional arguments and raises KeyboardInterrupt (a Ctrl-C) at the n-th
    call; returns the list of calls."""
    real, calls = getattr(owner, name), []

    def wrapper(*args, **kwargs):
        calls.append(args)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(owner, name, wrapper)
    return calls


def write(path, text):
    with open(path, "w") as f:
        f.write(textwrap.dedent(text))
    return str(path)


# prototxt/lenet_deploy.prototxt in Caffe's old format: V1 `layers`, `input` fields
V1_LENET = """
name: "LeNet"
input: "data"
input_dim: 64 input_dim: 1 input_dim: 28 input_dim: 28
layers { name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1" blobs_lr: 1 blobs_lr: 2
         weight_decay: 1 weight_decay: 0 convolution_param { num_output: 20 kernel_size: 5 } }
layers { name: "pool1" type: POOLING bottom: "conv1" top: "pool1"
         pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layers { name: "conv2" type: CONVOLUTION bottom: "pool1" top: "conv2"
         convolution_param { num_output: 50 kernel_size: 5 } }
layers { name: "pool2" type: POOLING bottom: "conv2" top: "pool2"
         pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layers { name: "ip1" type: INNER_PRODUCT bottom: "pool2" top: "ip1"
         inner_product_param { num_output: 500 } }
layers { name: "relu1" type: RELU bottom: "ip1" top: "ip1" }
layers { name: "ip2" type: INNER_PRODUCT bottom: "ip1" top: "ip2"
         inner_product_param { num_output: 10 } }
layers { name: "prob" type: SOFTMAX bottom: "ip2" top: "prob" }
"""

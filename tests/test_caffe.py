"""The real Caffe build: pycaffe, Python layers (in pycaffe and the caffe CLI),
training, glog aborts, and the README's commands being what CI runs."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from caffe_admm.backend import caffe

from conftest import ROOT, write, write_tiny

CAFFE_CLI = os.path.join(ROOT, ".venv", "bin", "caffe")

DOUBLER = '''
import caffe


class Doubler(caffe.Layer):
    """top = 2 * bottom; counts its calls."""
    calls = {"forward": 0, "backward": 0}

    def setup(self, bottom, top):
        self.factor = float(self.param_str or 2)

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        Doubler.calls["forward"] += 1
        top[0].data[...] = self.factor * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        Doubler.calls["backward"] += 1
        bottom[0].diff[...] = self.factor * top[0].diff
'''

PY_NET = """
name: "py"
force_backward: true
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "double" type: "Python" bottom: "x" top: "y"
        python_param { module: "doubler" layer: "Doubler" param_str: "2" } }
layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "x" top: "loss" }
"""


def test_pycaffe_is_the_bvlc_build_with_python_layers():
    assert caffe.__version__ == "1.0.0"
    types = caffe.layer_type_list()
    assert "Python" in types and "Convolution" in types
    assert ".cache/caffe-admm" in caffe.__file__ or "caffe-py" in caffe.__file__


def test_python_layer_forward_and_backward(tmp_path, monkeypatch):
    write(tmp_path / "doubler.py", DOUBLER)
    monkeypatch.syspath_prepend(str(tmp_path))
    net = caffe.Net(write(tmp_path / "net.prototxt", PY_NET), caffe.TRAIN)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    net.blobs["x"].data[...] = x
    out = net.forward()
    np.testing.assert_allclose(net.blobs["y"].data, 2 * x)
    # EuclideanLoss = sum((y - x)^2) / (2N) with y = 2x
    assert out["loss"].item() == pytest.approx(np.sum(x ** 2) / 4)
    net.backward()
    # d loss / d x through the Python layer: 2 * (y - x) / N, plus the direct path
    np.testing.assert_allclose(net.blobs["x"].diff, 2 * (x / 2) - x / 2, rtol=1e-6)
    import doubler
    assert doubler.Doubler.calls == {"forward": 1, "backward": 1}


def test_short_training_lowers_the_loss(tmp_path, tiny_data):
    solver_path, _ = write_tiny(tmp_path, tiny_data)
    solver = caffe.get_solver(solver_path)
    solver.step(1)
    first = solver.net.blobs["loss"].data.item()
    losses = []
    for _ in range(10):
        solver.step(10)
        losses.append(solver.net.blobs["loss"].data.item())
    assert np.mean(losses[-3:]) < 0.5 * first


def test_caffe_cli_runs_python_layers_and_trains(tmp_path, tiny_data):
    write(tmp_path / "doubler.py", DOUBLER)
    net = write(tmp_path / "net.prototxt", PY_NET)
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    res = subprocess.run([CAFFE_CLI, "time", "-model", net, "-iterations", "2"],
                         capture_output=True, text=True, env=env, cwd=str(tmp_path))
    assert res.returncode == 0, res.stderr[-2000:]
    solver_path, _ = write_tiny(tmp_path, tiny_data, max_iter=20)
    res = subprocess.run([CAFFE_CLI, "train", "-solver", solver_path],
                         capture_output=True, text=True, cwd=str(tmp_path),
                         env=dict(os.environ, GLOG_minloglevel="0"))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "Optimization Done" in res.stderr
    assert os.path.exists(str(tmp_path / "unused_iter_20.caffemodel"))


def test_glog_check_failure_aborts_and_the_tool_checks_first(tmp_path):
    bad = write(tmp_path / "bad.prototxt", """
        name: "bad"
        layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 } } }
        layer { name: "r" type: "ReLU" bottom: "nope" top: "r" }
    """)
    code = "import caffe; caffe.Net(%r, caffe.TEST)" % bad
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == -6 or res.returncode == 134  # SIGABRT from glog CHECK
    assert "Unknown bottom blob 'nope'" in res.stderr
    # caffe-admm checks the weights file in Python and exits with a message instead
    res = subprocess.run([os.path.join(ROOT, ".venv", "bin", "caffe-admm"), "test",
                          "--model", bad, "--weights", str(tmp_path / "missing.caffemodel")],
                         capture_output=True, text=True)
    assert res.returncode == 2, res.stderr
    assert "layer 'r' reads bottom 'nope'" in res.stderr


def test_readme_quick_start_is_what_ci_runs():
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    block = re.search(r"## Quick start.*?```(?:sh|bash)?\n(.*?)```", readme, re.S)
    assert block, "README has no quick start block"
    commands = [l.strip() for l in block.group(1).splitlines()
                if l.strip() and not l.strip().startswith("#")]
    assert commands == ["make demo", "make test"]
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        ci = [l.strip() for l in f if l.strip() and not l.startswith("#")]
    assert ci[-1] == "make test"

"""CAFFE_CPU_CONV_THREADS (tools/patches/caffe-cpu-conv-threads.patch): Caffe's
CPU convolution runs several images of a batch at once and gives the same
outputs and input gradients as one after another, and the same weight
gradients up to float rounding. Caffe reads the variable once per process,
so each setting runs in its own process."""

import os
import subprocess
import sys

import numpy as np

from conftest import ROOT, write, write_tiny

# 1x1 (no im2col), stride 4 with no bias (8x8 out: im2col through the
# stride's phases, a scratch buffer per thread), pad + group, on a batch of 5
NET = """
force_backward: true
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 5 dim: 4 dim: 35 dim: 35 } } }
layer { name: "c1" type: "Convolution" bottom: "x" top: "c1"
        convolution_param { num_output: 6 kernel_size: 1 } }
layer { name: "c2" type: "Convolution" bottom: "c1" top: "c2"
        convolution_param { num_output: 8 kernel_size: 7 stride: 4 bias_term: false } }
layer { name: "c3" type: "Convolution" bottom: "c2" top: "c3"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 group: 2 } }
"""

FORWARD = """
import sys
import numpy as np
from caffe_admm.backend import caffe
net = caffe.Net(sys.argv[1], caffe.TEST)
rng = np.random.default_rng(0)
for blobs in net.params.values():
    for blob in blobs:
        blob.data[...] = rng.standard_normal(blob.data.shape)
net.blobs["x"].data[...] = rng.standard_normal(net.blobs["x"].data.shape)
net.forward()
out = {name: net.blobs[name].data.copy() for name in ("c1", "c2", "c3")}
net.blobs["c3"].diff[...] = rng.standard_normal(net.blobs["c3"].diff.shape)
net.backward()
out.update({"d_" + name: net.blobs[name].diff for name in ("x", "c1", "c2")})
for name, blobs in net.params.items():
    out.update({"d_%s_%d" % (name, i): blob.diff for i, blob in enumerate(blobs)})
np.savez(sys.argv[2], **out)
"""
WEIGHTS = ("d_c1_0", "d_c2_0", "d_c3_0")  # weight gradients; the rest must be bit-equal


def run_python(script, args, out, **env_vars):
    """``script`` in a new Python with the project on its path, a single-threaded
    OpenBLAS, Caffe's INFO log and ``env_vars`` (None: unset); returns (the arrays
    it saved in ``out``, or None if it failed; its log)."""
    env = dict(os.environ, PYTHONPATH=ROOT, OPENBLAS_NUM_THREADS="1", GLOG_minloglevel="0")
    for key, value in env_vars.items():
        env.pop(key, None)
        if value is not None:
            env[key] = value
    res = subprocess.run([sys.executable, "-c", script] + args + [out], env=env,
                         capture_output=True, text=True)
    return (dict(np.load(out)) if res.returncode == 0 else None), res.stderr


def run_script(script, args, out, threads):
    """``script`` through :func:`run_python` with CAFFE_CPU_CONV_THREADS=``threads``
    (None: unset) and Caffe's own forward pass (not oneDNN's,
    tests/test_conv_onednn.py); returns (arrays it saved in ``out``, log)."""
    arrays, log = run_python(script, args, out, CAFFE_CPU_CONV_ENGINE="caffe",
                             CAFFE_CPU_CONV_THREADS=str(threads) if threads else None)
    assert arrays is not None, log[-2000:]
    return arrays, log


def forward(tmp_path, threads):
    model = write(tmp_path / "net.prototxt", NET)
    return run_script(FORWARD, [model], str(tmp_path / ("out_%s.npz" % threads)), threads)


def test_images_at_once_give_the_same_outputs_and_input_gradients(tmp_path):
    serial, log = forward(tmp_path, None)
    assert "CAFFE_CPU_CONV_THREADS" not in log
    assert set(serial) == {"c1", "c2", "c3", "d_x", "d_c1", "d_c2", "d_c1_0", "d_c1_1",
                           "d_c2_0", "d_c3_0", "d_c3_1"}
    for threads in (2, 3):
        parallel, log = forward(tmp_path, threads)
        # the build honours the variable (an OpenMP build), so the loops ran in threads
        assert "CAFFE_CPU_CONV_THREADS: up to %d images" % threads in log
        for name in set(serial) - set(WEIGHTS):
            np.testing.assert_array_equal(parallel[name], serial[name], err_msg=name)
    assert all(np.abs(serial[name]).max() > 0 for name in serial)


def test_weight_gradients_equal_caffes_up_to_rounding_and_repeat_exactly(tmp_path):
    serial, _ = forward(tmp_path, None)
    first, _ = forward(tmp_path, 3)
    again, _ = forward(tmp_path, 3)
    for name in WEIGHTS:
        scale = np.abs(serial[name]).max()
        np.testing.assert_allclose(first[name], serial[name], rtol=0, atol=1e-5 * scale,
                                   err_msg=name)
        np.testing.assert_array_equal(again[name], first[name], err_msg=name)
    # batch 5 in 3 runs of images, (0, 1), (2, 3), (4): the sums go in another order than
    # Caffe's, which shows in the last bits of some weight (the threaded path ran)
    assert any((first[name] != serial[name]).any() for name in WEIGHTS)


def test_values_other_than_a_count_above_one_leave_caffes_loop(tmp_path):
    serial, _ = forward(tmp_path, None)
    for value in ("1", "0", "-4", "many"):
        out, log = forward(tmp_path, value)
        assert "CAFFE_CPU_CONV_THREADS" not in log, value
        for name in serial:
            np.testing.assert_array_equal(out[name], serial[name], err_msg=name)


TRAIN = """
import sys
import numpy as np
from caffe_admm.backend import caffe
solver = caffe.get_solver(sys.argv[1])
solver.step(40)
np.savez(sys.argv[2], loss=solver.net.blobs["loss"].data,
         **{"%s_%d" % (name, i): blob.data for name, blobs in solver.net.params.items()
            for i, blob in enumerate(blobs)})
"""


def train(tmp_path, tiny_data, threads):
    solver, _ = write_tiny(tmp_path, tiny_data, lr=0.05, max_iter=40)
    return run_script(TRAIN, [solver], str(tmp_path / ("trained_%s.npz" % threads)), threads)[0]


def test_training_with_images_at_once_learns_the_same_weights(tmp_path, tiny_data):
    """40 SGD steps of the tiny net (batch 16): the weights differ from Caffe's loop by
    the rounding of the weight gradients' other summation order, and no more."""
    serial = train(tmp_path, tiny_data, None)
    threaded = train(tmp_path, tiny_data, 3)
    assert set(serial) == {"loss", "conv1_0", "conv1_1", "conv2_0", "conv2_1", "ip1_0", "ip1_1"}
    for name in serial:
        np.testing.assert_allclose(threaded[name], serial[name], rtol=0,
                                   atol=1e-5 * max(np.abs(serial[name]).max(), 1e-3),
                                   err_msg=name)
    assert float(serial["loss"]) < 1.0  # it learned (4 classes: chance is log 4 = 1.39)

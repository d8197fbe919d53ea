"""CAFFE_CPU_CONV_THREADS (tools/patches/caffe-cpu-conv-threads.patch): Caffe's
CPU convolution runs several images of a batch at once and gives the same
outputs as one after another. Caffe reads the variable once per process, so
each setting runs in its own process."""

import os
import subprocess
import sys

import numpy as np

from conftest import ROOT, write

# 1x1 (no im2col), stride 4 with no bias, pad + group, on a batch of 5
NET = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 5 dim: 4 dim: 23 dim: 23 } } }
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
np.savez(sys.argv[2], **{name: net.blobs[name].data for name in ("c1", "c2", "c3")})
"""


def forward(tmp_path, threads):
    model = write(tmp_path / "net.prototxt", NET)
    out = str(tmp_path / ("out_%s.npz" % threads))
    env = dict(os.environ, PYTHONPATH=ROOT, OPENBLAS_NUM_THREADS="1", GLOG_minloglevel="0")
    env.pop("CAFFE_CPU_CONV_THREADS", None)
    if threads:
        env["CAFFE_CPU_CONV_THREADS"] = str(threads)
    res = subprocess.run([sys.executable, "-c", FORWARD, model, out], env=env,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    return dict(np.load(out)), res.stderr


def test_images_at_once_give_the_same_outputs(tmp_path):
    serial, log = forward(tmp_path, None)
    assert "CAFFE_CPU_CONV_THREADS" not in log
    for threads in (2, 3):
        parallel, log = forward(tmp_path, threads)
        # the build honours the variable (an OpenMP build), so the loop ran in threads
        assert "CAFFE_CPU_CONV_THREADS: up to %d images" % threads in log
        for name in ("c1", "c2", "c3"):
            np.testing.assert_array_equal(parallel[name], serial[name], err_msg=name)
    assert np.abs(serial["c3"]).max() > 0


def test_values_other_than_a_count_above_one_leave_caffes_loop(tmp_path):
    serial, _ = forward(tmp_path, None)
    for value in ("1", "0", "-4", "many"):
        out, log = forward(tmp_path, value)
        assert "CAFFE_CPU_CONV_THREADS" not in log, value
        for name in ("c1", "c2", "c3"):
            np.testing.assert_array_equal(out[name], serial[name], err_msg=name)

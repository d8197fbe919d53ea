"""The CPU convolution forward pass through oneDNN
(tools/patches/caffe-conv-onednn.patch): the same outputs as the definition
(float64 numpy) and as Caffe's im2col + GEMM up to float rounding, for every
2-D shape Caffe allows; the current weights on every pass; a new primitive
when the batch changes; Caffe's own path with CAFFE_CPU_CONV_ENGINE=caffe and
a clear error for any other value. Caffe reads the variable once per process,
so each setting runs in its own process."""

import os
import subprocess
import sys

import numpy as np
import pytest

from caffe_admm.backend import caffe

from conftest import ROOT, write
from test_cpu_conv_threads import FORWARD as RUN  # forward, backward; saves tops, diffs
from test_cpu_conv_threads import run_python
from test_im2col import conv_param, reference_conv

SHAPES = [
    # (C, H, W), num_output, kernel, pad, stride, dilation, group, bias
    ((3, 31, 43), 5, (11, 11), (0, 0), (4, 4), (1, 1), 1, True),  # AlexNet conv1
    ((6, 9, 9), 4, (5, 5), (2, 2), (1, 1), (1, 1), 2, True),      # conv2: pad, group
    ((4, 13, 13), 6, (3, 3), (1, 1), (1, 1), (1, 1), 2, False),   # conv3-5, no bias
    ((4, 10, 7), 3, (3, 2), (1, 0), (2, 3), (2, 1), 1, True),     # uneven, dilated
    ((5, 6, 6), 7, (1, 1), (0, 0), (1, 1), (1, 1), 1, True),      # 1x1
    ((16, 8, 8), 16, (3, 3), (1, 1), (1, 1), (1, 1), 16, True),   # depthwise
]


def conv_net(shape, num_output, kernel, pad, stride, dilation, group, bias, batch=2):
    return """
        force_backward: true
        layer { name: "x" type: "Input" top: "x"
                input_param { shape { dim: %d dim: %d dim: %d dim: %d } } }
        layer { name: "conv" type: "Convolution" bottom: "x" top: "y"
                convolution_param { num_output: %d group: %d bias_term: %s %s } }
        """ % ((batch,) + shape + (num_output, group, "true" if bias else "false",
                                   conv_param(kernel, pad, stride, dilation)))


def fill(net, rng):
    for blob in net.params["conv"]:
        blob.data[...] = rng.standard_normal(blob.data.shape)
    net.blobs["x"].data[...] = rng.standard_normal(net.blobs["x"].data.shape)


def expected(net, config):
    shape, num_output, kernel, pad, stride, dilation, group, bias = config
    blobs = net.params["conv"]
    return reference_conv(net.blobs["x"].data.astype(np.float64),
                          blobs[0].data.astype(np.float64),
                          blobs[1].data.astype(np.float64) if bias else None,
                          kernel, pad, stride, dilation, group)


@pytest.mark.parametrize("config", SHAPES)
def test_forward_equals_the_definition(tmp_path, config):
    net = caffe.Net(write(tmp_path / "conv.prototxt", conv_net(*config)), caffe.TEST)
    fill(net, np.random.default_rng(3))
    net.forward()
    want = expected(net, config)
    assert net.blobs["y"].data.shape == want.shape
    np.testing.assert_allclose(net.blobs["y"].data, want, rtol=1e-4, atol=1e-4)


def test_new_weights_and_a_new_batch_size_are_used(tmp_path):
    """The weights are reordered again whenever they changed, also when written
    through a numpy view taken before the last pass, and a reshape to another
    batch makes a primitive for it."""
    config = SHAPES[1]
    net = caffe.Net(write(tmp_path / "conv.prototxt", conv_net(*config)), caffe.TEST)
    rng = np.random.default_rng(4)
    fill(net, rng)
    weights = net.params["conv"][0].data  # held across passes
    net.forward()
    first = net.blobs["y"].data.copy()
    net.forward()
    np.testing.assert_array_equal(net.blobs["y"].data, first)
    for change in (lambda w: w.__setitem__((1, 0, 2, 2), w[1, 0, 2, 2] + 1),  # one weight
                   lambda w: w.__setitem__(Ellipsis, rng.standard_normal(w.shape))):
        change(weights)
        net.forward()
        assert not np.allclose(net.blobs["y"].data, first)
        np.testing.assert_allclose(net.blobs["y"].data, expected(net, config),
                                   rtol=1e-4, atol=1e-4)
        first = net.blobs["y"].data.copy()
    for batch in (5, 1):
        net.blobs["x"].reshape(batch, *config[0])
        net.reshape()
        net.blobs["x"].data[...] = rng.standard_normal(net.blobs["x"].data.shape)
        net.forward()
        assert net.blobs["y"].data.shape[0] == batch
        np.testing.assert_allclose(net.blobs["y"].data, expected(net, config),
                                   rtol=1e-4, atol=1e-4)


NET = """
force_backward: true
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 3 dim: 4 dim: 35 dim: 35 } } }
layer { name: "c1" type: "Convolution" bottom: "x" top: "c1"
        convolution_param { num_output: 16 kernel_size: 7 stride: 4 } }
layer { name: "c2" type: "Convolution" bottom: "c1" top: "c2"
        convolution_param { num_output: 24 kernel_size: 3 pad: 1 group: 2 bias_term: false } }
layer { name: "c3" type: "Convolution" bottom: "c2" top: "c3"
        convolution_param { num_output: 8 kernel_size: 1 } }
"""


def run(tmp_path, name, **env_vars):
    """RUN on NET through :func:`run_python` with ``env_vars`` (None: unset);
    returns (arrays, log) or, if it failed, (None, log)."""
    return run_python(RUN, [write(tmp_path / "net.prototxt", NET)],
                      str(tmp_path / (name + ".npz")), **env_vars)


def test_onednn_is_the_default_and_caffe_s_path_is_one_variable_away(tmp_path):
    onednn, log = run(tmp_path, "default", CAFFE_CPU_CONV_ENGINE=None)
    assert onednn is not None, log[-2000:]
    assert "CPU convolution forward: oneDNN" in log
    for layer in ("c1", "c2", "c3"):
        assert "%s: oneDNN " % layer in log
    caffes, log = run(tmp_path, "caffe", CAFFE_CPU_CONV_ENGINE="caffe")
    assert caffes is not None, log[-2000:]
    assert "CPU convolution forward: Caffe (im2col + GEMM)" in log
    assert ": oneDNN " not in log
    for name in ("c1", "c2", "c3"):
        scale = np.abs(caffes[name]).max()
        np.testing.assert_allclose(onednn[name], caffes[name], rtol=0, atol=1e-5 * scale,
                                   err_msg=name)
    # another summation order shows in the last bits: two different paths ran
    assert any((onednn[name] != caffes[name]).any() for name in ("c1", "c2", "c3"))
    # the backward pass is Caffe's in both: the input gradients read only the
    # weights and the top gradients, the same in both runs
    for name in ("d_x", "d_c1", "d_c2"):
        np.testing.assert_array_equal(onednn[name], caffes[name], err_msg=name)


@pytest.mark.parametrize("settings, threads", [
    ({}, 1),                                               # OPENBLAS_NUM_THREADS=1 (run's)
    ({"CAFFE_CPU_CONV_THREADS": "2"}, 2),
    ({"OPENBLAS_NUM_THREADS": "2"}, 2),
    ({"OMP_NUM_THREADS": "2"}, 2),                         # OpenMP's own variable wins
    ({"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "2"}, 1),
])
def test_threads_follow_the_variables_and_give_the_same_outputs(tmp_path, settings, threads):
    """oneDNN runs max(CAFFE_CPU_CONV_THREADS, OpenMP's threads) threads; OpenMP's
    are OMP_NUM_THREADS, else OPENBLAS_NUM_THREADS (which the OpenMP OpenBLAS
    would otherwise ignore)."""
    one, _ = run(tmp_path, "one", CAFFE_CPU_CONV_THREADS=None, OMP_NUM_THREADS=None)
    settings = dict({"CAFFE_CPU_CONV_THREADS": None, "OMP_NUM_THREADS": None}, **settings)
    out, log = run(tmp_path, "set", **settings)
    assert out is not None, log[-2000:]
    assert "c1: oneDNN " in log
    assert "batch 3, %d thread%s" % (threads, "s" if threads > 1 else "") in log
    for name in ("c1", "c2", "c3"):
        np.testing.assert_allclose(out[name], one[name], rtol=0,
                                   atol=1e-6 * np.abs(one[name]).max(), err_msg=name)


IN_A_THREAD = """
import sys, threading
import numpy as np
from caffe_admm.backend import caffe
caffe.set_mode_cpu()
model, out = sys.argv[1:]
tops = {}
def forward(where):
    net = caffe.Net(model, caffe.TEST)
    net.params["c1"][0].data[...] = 0.01
    net.blobs["x"].data[...] = 1
    net.forward()
    tops[where] = net.blobs["c3"].data.copy()
forward("loading")
worker = threading.Thread(target=forward, args=("other",))
worker.start()
worker.join()
np.savez(out, **tops)
"""


@pytest.mark.skipif((os.cpu_count() or 1) < 2,
                    reason="OpenMP's default is the core count: one core cannot tell")
@pytest.mark.parametrize("settings", [{"OPENBLAS_NUM_THREADS": "1"},
                                      {"OPENBLAS_NUM_THREADS": "2", "OMP_NUM_THREADS": "1"}])
def test_a_thread_other_than_the_loading_one_runs_as_many_threads(tmp_path, settings):
    """OpenMP keeps its thread count per thread: the count set from
    OPENBLAS_NUM_THREADS as Caffe loads holds in other threads too (before,
    a net run from another thread ran the core count)."""
    settings = dict({"CAFFE_CPU_CONV_THREADS": None, "OMP_NUM_THREADS": None}, **settings)
    out, log = run_python(IN_A_THREAD, [write(tmp_path / "net.prototxt", NET)],
                          str(tmp_path / "tops.npz"), **settings)
    assert out is not None, log[-2000:]
    lines = [line for line in log.splitlines() if "c1: oneDNN " in line]
    assert len(lines) == 2, log[-2000:]  # one net per thread
    assert all(line.endswith("batch 3, 1 thread") for line in lines), lines
    np.testing.assert_array_equal(out["other"], out["loading"])


BLAS_THREADS = """
import ctypes, sys
from caffe_admm.backend import caffe
from caffe_admm.caffetime import loaded_blas_info
blas = ctypes.CDLL(loaded_blas_info()["library"])
print(blas.openblas_get_num_threads())
"""


@pytest.mark.parametrize("settings, threads", [
    ({"OPENBLAS_NUM_THREADS": "1"}, 1), ({"OPENBLAS_NUM_THREADS": "2"}, 2),
    ({"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "2"}, 2),
])
def test_openblas_threads_follow_the_variables(settings, threads):
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("OMP_NUM_THREADS", None)
    env.update(settings)
    res = subprocess.run([sys.executable, "-c", BLAS_THREADS], env=env, capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert int(res.stdout.split()[-1]) == threads


def test_an_unknown_engine_is_refused(tmp_path):
    out, log = run(tmp_path, "bad", CAFFE_CPU_CONV_ENGINE="fast")
    assert out is None
    assert "CAFFE_CPU_CONV_ENGINE=fast: expected onednn or caffe" in log

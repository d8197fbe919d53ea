"""WeightHook: a Python layer sharing a conv weight injects the ADMM gradient."""

import numpy as np
import pytest
from google.protobuf import text_format

from caffe_admm.backend import caffe, caffe_pb2
from caffe_admm.layers import HOOK_PREFIX
from caffe_admm.solver import _hook_layers, add_hooks
from caffe_admm import protoio

NET = """
name: "hooked"
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 5 dim: 5 } } }
layer { name: "conv" type: "Convolution" bottom: "x" top: "y"
        param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
        convolution_param { num_output: 4 kernel_size: 3
          weight_filler { type: "gaussian" std: 0.5 } } }
"""
SHAPE = (4, 3, 3, 3)


@pytest.fixture
def hooked_net(tmp_path):
    net_param = text_format.Parse(NET, caffe_pb2.NetParameter())
    hooked = add_hooks(net_param, {"conv": [SHAPE, (4,)]})
    path = str(tmp_path / "hooked.prototxt")
    protoio.write_text(path, hooked)
    net = caffe.Net(path, caffe.TRAIN)
    return net, _hook_layers(net)["conv"], hooked


def test_hook_comes_first_and_shares_the_weight(hooked_net):
    net, hook, hooked = hooked_net
    assert hooked.layer[0].name == HOOK_PREFIX + "conv"
    assert hooked.layer[0].param[0].name == hooked.layer[2].param[0].name == "admm/conv/weight"
    assert hooked.layer[0].param[0].lr_mult == 1 and hooked.layer[0].param[0].decay_mult == 1
    assert hooked.layer[0].param[1].name == hooked.layer[2].param[1].name == "admm/conv/bias"
    assert hooked.layer[0].param[1].lr_mult == 2 and hooked.layer[0].param[1].decay_mult == 0
    w = net.params["conv"][0].data
    w[...] = 3.0
    np.testing.assert_array_equal(hook.blobs[0].data, 3.0)  # same memory


@pytest.mark.parametrize("restricted", [False, True])  # a term limited to some weights
def test_injected_gradient_is_the_penalty_derivative(hooked_net, restricted):
    net, hook, _ = hooked_net
    rng = np.random.default_rng(0)
    w = net.params["conv"][0].data
    w[...] = rng.standard_normal(SHAPE)
    z1, u1 = rng.standard_normal(SHAPE).astype(np.float32), rng.standard_normal(SHAPE).astype(np.float32)
    z2, u2 = rng.standard_normal(SHAPE).astype(np.float32), rng.standard_normal(SHAPE).astype(np.float32)
    where = (rng.random(SHAPE) < 0.5) if restricted else np.ones(SHAPE, dtype=bool)
    hook.penalty = [(0.3, z1, u1, where) if restricted else (0.3, z1, u1), (0.05, z2, u2)]
    top = HOOK_PREFIX + "conv"
    out = net.forward()
    expected = 0.15 * np.sum(where * (w - z1 + u1) ** 2) + 0.025 * np.sum((w - z2 + u2) ** 2)
    assert out[top].item() == pytest.approx(expected, rel=1e-5)
    net.params["conv"][0].diff[...] = 0
    net.backward()
    grad = net.params["conv"][0].diff.copy()
    # the conv output feeds no loss, so the diff is the hook's term alone
    np.testing.assert_allclose(grad, 0.3 * where * (w - z1 + u1) + 0.05 * (w - z2 + u2),
                               rtol=1e-5)
    # and it matches a central finite difference of the hook's loss, through Caffe
    eps = 1e-2
    for idx in [(0, 0, 0, 0), (3, 2, 1, 2), (1, 1, 2, 0)]:
        old = w[idx]
        w[idx] = old + eps
        plus = net.forward()[top].item()
        w[idx] = old - eps
        minus = net.forward()[top].item()
        w[idx] = old
        assert grad[idx] == pytest.approx((plus - minus) / (2 * eps), rel=1e-3, abs=1e-4)


def test_mask_zeroes_weights_in_forward_and_gradient_in_backward(hooked_net):
    net, hook, _ = hooked_net
    w = net.params["conv"][0].data
    w[...] = 1.0
    mask = np.zeros(SHAPE, bool)
    mask[:2] = True
    hook.set_mask(mask)
    np.testing.assert_array_equal(hook.bias_mask, [1, 1, 0, 0])
    net.params["conv"][1].data[...] = 2.0
    net.forward()
    assert np.all(w[2:] == 0) and np.all(w[:2] == 1)
    np.testing.assert_array_equal(net.params["conv"][1].data, [2, 2, 0, 0])
    net.params["conv"][0].diff[...] = 5.0
    net.params["conv"][1].diff[...] = 5.0
    net.backward()
    assert np.all(net.params["conv"][0].diff[2:] == 0)
    assert np.all(net.params["conv"][0].diff[:2] == 5.0)
    np.testing.assert_array_equal(net.params["conv"][1].diff, [5, 5, 0, 0])


def test_a_mask_on_a_layer_without_bias_masks_the_weights_alone(tmp_path):
    """bias_term: false (ResNets' convolutions): the hook holds one blob."""
    net_param = text_format.Parse(NET.replace("kernel_size: 3", "kernel_size: 3 bias_term: false")
                                  .replace(" param { lr_mult: 2 decay_mult: 0 }", ""),
                                  caffe_pb2.NetParameter())
    path = str(tmp_path / "hooked.prototxt")
    protoio.write_text(path, add_hooks(net_param, {"conv": [SHAPE]}))
    net = caffe.Net(path, caffe.TRAIN)
    hook = _hook_layers(net)["conv"]
    assert len(hook.blobs) == 1 and len(net.params["conv"]) == 1
    mask = np.zeros(SHAPE, bool)
    mask[1] = True
    hook.set_mask(mask)
    assert hook.bias_mask is None
    net.params["conv"][0].data[...] = 1.0
    net.forward()
    net.params["conv"][0].diff[...] = 5.0
    net.backward()
    np.testing.assert_array_equal(net.params["conv"][0].data, mask)
    np.testing.assert_array_equal(net.params["conv"][0].diff, 5.0 * mask)
    hook.set_mask(None)
    assert hook.mask is None and hook.bias_mask is None


def test_bad_param_str_is_a_clear_error(tmp_path):
    net = text_format.Parse(NET, caffe_pb2.NetParameter())
    hooked = add_hooks(net, {"conv": [SHAPE, (4,)]})
    hooked.layer[0].python_param.param_str = "not json"
    path = str(tmp_path / "bad.prototxt")
    protoio.write_text(path, hooked)
    import subprocess
    import sys
    res = subprocess.run([sys.executable, "-c",
                          "import caffe_admm.backend as b; b.caffe.Net(%r, b.caffe.TRAIN)" % path],
                         capture_output=True, text=True)
    assert res.returncode != 0
    assert "WeightHook param_str must be JSON" in res.stderr

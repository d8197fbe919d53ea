"""Compaction: compacted nets reproduce the reference outputs and load in plain Caffe."""

import json
import os
import re
import subprocess

import numpy as np
import pytest

from caffe_admm import compact, protoio, timing
from caffe_admm.backend import caffe

from conftest import ROOT, V1_LENET, write

NETS = os.path.join(ROOT, "prototxt")


def sparse_weights(model, path, seed=0, keep_last=("ip2", "fc", "fc8"), filters=0.5, channels=0.25):
    """Random weights with random whole filters and input channels zeroed."""
    rng = np.random.default_rng(seed)
    net = caffe.Net(model, caffe.TEST)
    types = dict(zip(net._layer_names, [l.type for l in net.layers]))
    for name, blobs in net.params.items():
        for b in blobs:
            b.data[...] = rng.standard_normal(b.data.shape) * 0.1
        if types[name] == "BatchNorm":
            blobs[1].data[...] = np.abs(blobs[1].data) + 0.5
            blobs[2].data[...] = 1
        if types[name] in ("Convolution", "InnerProduct") and name not in keep_last:
            w = blobs[0].data
            dead = rng.permutation(w.shape[0])[:int(filters * w.shape[0])]
            w[dead] = 0
            if len(blobs) > 1:
                blobs[1].data[dead] = 0  # as pruning leaves them
            if w.ndim == 4 and w.shape[1] > 3:
                w[:, rng.permutation(w.shape[1])[:int(channels * w.shape[1])]] = 0
    net.save(path)
    return net


def random_params(net, seed=0):
    """Standard-normal parameters; BatchNorm variances positive, scale factor 1.
    ``seed``: an int, or a numpy Generator to draw from."""
    rng = np.random.default_rng(seed)
    types = dict(zip(net._layer_names, [l.type for l in net.layers]))
    for name, blobs in net.params.items():
        for b in blobs:
            b.data[...] = rng.standard_normal(b.data.shape)
        if types[name] == "BatchNorm":
            blobs[1].data[...] = np.abs(blobs[1].data) + 0.5
            blobs[2].data[...] = 1


def kill_filters(net, name, filters, offsets=()):
    """Zero ``filters`` of layer ``name`` as `caffe-admm prune` does (weights and
    bias), and the channels' constants in ``offsets`` (BatchNorm means, Scale
    biases after it), so that the channels are exactly zero."""
    for b in net.params[name][:2]:
        b.data[filters] = 0
    for layer in offsets:
        blobs = net.params[layer]
        blobs[0 if len(blobs) == 3 else 1].data[filters] = 0  # BatchNorm mean, Scale bias


def run_compact(tmp_path, model, **kwargs):
    weights = str(tmp_path / "sparse.caffemodel")
    sparse_weights(model, weights, **kwargs)
    out = str(tmp_path / "out")
    return compact.compact(model, weights, out), weights, out


def test_compacting_into_the_inputs_folder_never_writes_over_them(tmp_path):
    """Compacting a compacted net again into its own folder would replace
    the caffemodel it reads: refused, the files as they were."""
    model = os.path.join(NETS, "lenet_deploy.prototxt")
    _, _, out = run_compact(tmp_path, model)
    again = [os.path.join(out, n) for n in ("compact.prototxt", "compact.caffemodel")]
    before = [open(p, "rb").read() for p in again]
    with pytest.raises(protoio.ProtoError, match=r"out/compact.prototxt would be written over "
                                                 r".*out/compact.prototxt, the input net: give "
                                                 r"another output directory"):
        compact.compact(again[0], again[1], out)
    with pytest.raises(protoio.ProtoError, match="compact.caffemodel, the input weights"):
        compact.compact(model, again[1], out)
    assert [open(p, "rb").read() for p in again] == before
    compact.compact(again[0], again[1], str(tmp_path / "again"))  # elsewhere: written


@pytest.mark.parametrize("name", ["lenet_deploy", "resnet_mini_deploy", "se_resnet_mini_deploy",
                                  "mobilenet_v2_mini_deploy", "concat_deploy"])
def test_compacted_outputs_equal_reference(tmp_path, name):
    model = os.path.join(NETS, name + ".prototxt")
    report, weights, out = run_compact(tmp_path, model)
    # reload from disk: the reference follows plan.json, the compacted net is plain Caffe
    with open(os.path.join(out, "plan.json")) as f:
        plan = json.load(f)["plan"]
    reference = caffe.Net(model, caffe.TEST)
    compact._set_params(reference, compact.reference_params(
        caffe.Net(model, caffe.TEST, weights=weights), plan))
    small = caffe.Net(os.path.join(out, "compact.prototxt"), caffe.TEST,
                      weights=os.path.join(out, "compact.caffemodel"))
    x = np.random.default_rng(5).standard_normal(reference.blobs["data"].data.shape)
    reference.blobs["data"].data[...] = x
    small.blobs["data"].data[...] = x
    np.testing.assert_allclose(small.forward()["prob"], reference.forward()["prob"],
                               rtol=1e-4, atol=1e-6)
    assert report["equivalence"]["passed"]
    assert report["total"]["compact_params"] < report["total"]["params"]


def test_lenet_plan_removes_filters_and_their_consumers(tmp_path):
    model = os.path.join(NETS, "lenet_deploy.prototxt")
    weights = str(tmp_path / "w.caffemodel")
    net = sparse_weights(model, weights, filters=0.0, channels=0.0)
    kill_filters(net, "conv1", [1, 3])               # two dead conv1 filters
    kill_filters(net, "conv2", [0, 7, 9])            # three dead conv2 filters
    net.params["ip1"][0].data[:, 16 * 4:16 * 5] = 0  # conv2 channel 4 unread by ip1
    net.save(weights)
    report = compact.compact(model, weights, str(tmp_path / "out"))
    layers = report["layers"]
    assert layers["conv1"]["compact_shape"] == [18, 1, 5, 5]
    assert layers["conv2"]["compact_shape"] == [46, 18, 5, 5]
    assert layers["conv2"]["kept_out"] == [c for c in range(50) if c not in (0, 4, 7, 9)]
    assert layers["ip1"]["compact_shape"] == [500, 46 * 16]
    assert layers["ip2"]["compact_shape"] == [10, 500]
    with open(tmp_path / "out" / "plan.json") as f:
        assert json.load(f)["layers"]["conv1"]["kept_out"] == [0, 2] + list(range(4, 20))


def test_eltwise_partners_must_agree(tmp_path):
    model = os.path.join(NETS, "resnet_mini_deploy.prototxt")
    weights = str(tmp_path / "w.caffemodel")
    net = sparse_weights(model, weights, filters=0.0, channels=0.0)
    for conv, offsets in (("conv1", ("bn1", "scale1")), ("a_conv2", ("a_bn2", "a_scale2")),
                          ("b_conv2", ("b_bn2", "b_scale2"))):
        kill_filters(net, conv, [2, 5], offsets)
    net.params["b_conv2"][0].data[5] = 1.0             # one partner still writes channel 5
    net.save(weights)
    report = compact.compact(model, weights, str(tmp_path / "out"))
    assert report["layers"]["conv1"]["kept_out"] == [c for c in range(16) if c != 2]
    assert report["layers"]["fc"]["compact_shape"] == [10, 15]
    assert report["layers"]["a_conv1"]["compact_shape"] == [16, 15, 3, 3]


GROUPED = """
name: "grouped"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 4 dim: 8 dim: 8 } } }
layer { name: "c1" type: "Convolution" bottom: "data" top: "c1"
        convolution_param { num_output: 8 kernel_size: 3 pad: 1 } }
layer { name: "r1" type: "ReLU" bottom: "c1" top: "c1" }
layer { name: "c2" type: "Convolution" bottom: "c1" top: "c2"
        convolution_param { num_output: 6 kernel_size: 3 pad: 1 group: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "c2" top: "fc" inner_product_param { num_output: 3 } }
"""


def test_grouped_convolution_stays_balanced(tmp_path):
    model = write(tmp_path / "g.prototxt", GROUPED)
    net = caffe.Net(model, caffe.TEST)
    rng = np.random.default_rng(1)
    for blobs in net.params.values():
        for b in blobs:
            b.data[...] = rng.standard_normal(b.data.shape)
    kill_filters(net, "c1", [0, 1, 5])        # group 0 loses 2 inputs, group 1 loses 1
    kill_filters(net, "c2", [3])              # one filter of group 1 (filters 3..5)
    weights = str(tmp_path / "g.caffemodel")
    net.save(weights)
    report = compact.compact(model, weights, str(tmp_path / "out"))
    # one channel removed per group (the lowest-index dead ones), so c1 keeps 6 filters;
    # c2's filter 3 cannot go alone: groups keep 3 filters each
    assert report["layers"]["c1"]["kept_out"] == [1, 2, 3, 4, 6, 7]
    assert report["layers"]["c2"]["compact_shape"] == [6, 3, 3, 3]
    assert report["equivalence"]["passed"]
    assert report["warnings"] == [
        "1 zero filter of c1 kept: every group of the grouped convolutions c2 keeps the same "
        "number of channels",
        "1 zero filter of c2 kept: every group of the grouped convolutions c2 keeps the same "
        "number of channels"]


TILE_NET = """
    name: "t"
    layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 dim: 4 dim: 4 } } }
    layer { name: "c1" type: "Convolution" bottom: "data" top: "c1"
            convolution_param { num_output: 4 kernel_size: 1 } }
    layer { name: "tile" type: "Tile" bottom: "c1" top: "t" tile_param { tiles: 2 } }
"""


def test_every_layer_type_of_the_build_is_followed_and_others_are_named(tmp_path, monkeypatch):
    assert set(caffe.layer_type_list()) <= compact.KNOWN_TYPES
    # a type the planner does not know (a custom build's): here Tile, forgotten
    monkeypatch.setattr(compact, "BARRIERS", compact.BARRIERS - {"Tile"})
    model = write(tmp_path / "t.prototxt", TILE_NET)
    weights = str(tmp_path / "t.caffemodel")
    caffe.Net(model, caffe.TEST).save(weights)
    with pytest.raises(compact.CompactionError, match=r"layer 'tile': type Tile is not supported"):
        compact.compact(model, weights, str(tmp_path / "out"))


SMALL_HEAD = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 6 kernel_size: 3 pad: 1 } }
"""


def small_net(tmp_path, tail, zero_filters=(1, 3), zero_inputs=()):
    """SMALL_HEAD + ``tail``, random weights with conv1's ``zero_filters`` and
    conv2's ``zero_inputs`` channels zero; returns compact()'s report."""
    os.makedirs(str(tmp_path), exist_ok=True)
    model = write(tmp_path / "n.prototxt", SMALL_HEAD + tail)
    net = caffe.Net(model, caffe.TEST)
    random_params(net)
    for i in zero_filters:
        net.params["conv1"][0].data[i] = net.params["conv1"][1].data[i] = 0
    if zero_inputs:
        net.params["conv2"][0].data[:, list(zero_inputs)] = 0
    weights = str(tmp_path / "n.caffemodel")
    net.save(weights)
    return compact.compact(model, weights, str(tmp_path / "out"))


CONV2 = """layer { name: "conv2" type: "Convolution" bottom: "%s" top: "conv2"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }"""


def constant_net(tmp_path, tail, bias=0.5, mean=0.25):
    """SMALL_HEAD, bn1 and ReLU on conv1, then ``tail``; conv1 filters 1, 3
    and 4 zero, but filter 1's bias and bn1's mean on channel 3 are not:
    channels 1 and 3 are constants (4 is zero). Returns (model, weights, net)."""
    os.makedirs(str(tmp_path), exist_ok=True)
    model = write(tmp_path / "n.prototxt", SMALL_HEAD + """
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
""" + tail)
    net = caffe.Net(model, caffe.TEST)
    random_params(net)
    kill_filters(net, "conv1", [1, 3, 4], ("bn1",))
    net.params["conv1"][1].data[1] = bias
    net.params["bn1"][0].data[3] = -mean  # (0 - mean) / std > 0: through the ReLU
    weights = str(tmp_path / "n.caffemodel")
    net.save(weights)
    return model, weights, net


def assert_same_outputs(model, weights, out, blob):
    """The masked net and the compacted one, loaded from disk, on one random input."""
    a = caffe.Net(model, caffe.TEST, weights=weights)
    b = caffe.Net(os.path.join(out, "compact.prototxt"), caffe.TEST,
                  weights=os.path.join(out, "compact.caffemodel"))
    x = np.random.default_rng(7).standard_normal(a.blobs["data"].data.shape)
    a.blobs["data"].data[...] = b.blobs["data"].data[...] = x
    want = a.forward()[blob]
    # float32 sums in another order: to 1e-6 of the outputs' scale
    np.testing.assert_allclose(b.forward()[blob], want, rtol=1e-5,
                               atol=1e-6 * max(1.0, float(np.abs(want).max())))


def test_constants_of_zero_filters_are_folded_into_the_readers_biases(tmp_path):
    """conv2 (no padding, no bias term) takes conv1's constant channels 1 and 3
    into a bias; its filter 0 reads only those, so its channel is a constant too,
    which fc takes into its bias (a block of 6 x 6 columns)."""
    model, weights, net = constant_net(tmp_path, """
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
        convolution_param { num_output: 4 kernel_size: 3 bias_term: false } }
layer { name: "fc" type: "InnerProduct" bottom: "conv2" top: "fc"
        inner_product_param { num_output: 3 } }
""")
    w2 = net.params["conv2"][0].data
    w2[0, [0, 2, 4, 5]] = 0
    w2[2] = 0
    net.save(weights)
    x = net.forward(data=np.zeros(net.blobs["data"].data.shape, np.float32))
    c1 = net.blobs["conv1"].data[0, :, 0, 0].copy()  # the constants, the same everywhere
    c2 = net.blobs["conv2"].data[0, 0, 0, 0]
    out = str(tmp_path / "out")
    report = compact.compact(model, weights, out)
    layers = report["plan"]["layers"]
    assert layers["conv1"]["out"] == [0, 2, 5] and layers["conv1"]["folded"] == [1, 3]
    assert layers["bn1"]["out"] == [0, 2, 5] and layers["bn1"]["folded"] == [1, 3]
    assert layers["conv2"]["in"] == [0, 2, 5] and layers["conv2"]["out"] == [1, 3]
    assert layers["conv2"]["fold"]["inputs"] == [1, 3]
    np.testing.assert_allclose(layers["conv2"]["fold"]["bias"],
                               w2[:, [1, 3]].sum(axis=(2, 3)) @ c1[[1, 3]], rtol=1e-5)
    assert layers["fc"]["in"] == [1, 3] and layers["fc"]["fold"]["inputs"] == [0]
    np.testing.assert_allclose(layers["fc"]["fold"]["bias"],
                               c2 * net.params["fc"][0].data[:, :36].sum(axis=1), rtol=1e-5)
    assert report["warnings"] == []
    assert report["notes"] == ["conv2 takes the constants of 2 removed input channels into its "
                               "biases", "fc takes the constants of 1 removed input channel "
                               "into its biases"]
    small = protoio.read_net(os.path.join(out, "compact.prototxt"))
    assert [l.convolution_param.bias_term for l in small.layer if l.name == "conv2"] == [True]
    assert report["equivalence"]["against"] == "masked" and report["equivalence"]["passed"]
    assert_same_outputs(model, weights, out, "fc")


def test_a_padded_reader_takes_constants_through_one_kept_channel(tmp_path):
    """Padding makes a constant's sum differ at the borders, so conv2 keeps the
    larger of the two constant channels and reads both through it."""
    model, weights, net = constant_net(tmp_path, CONV2 % "conv1", bias=2.0, mean=0.25)
    out = str(tmp_path / "out")
    report = compact.compact(model, weights, out)
    layers = report["plan"]["layers"]
    assert layers["conv1"]["out"] == [0, 1, 2, 5] and layers["conv1"]["folded"] == [3]
    fold = layers["conv2"]["fold"]
    assert fold["inputs"] == [3] and fold["carriers"] == [1] and layers["conv2"]["in"] == [0, 1, 2, 5]
    assert report["warnings"] == []
    assert report["notes"] == ["conv2 takes the constants of 1 removed input channel through "
                               "input channel 1, kept for them (its padding spreads a constant "
                               "unevenly over its outputs)"]
    assert report["equivalence"]["passed"]
    assert_same_outputs(model, weights, out, "conv2")


def test_constants_no_reader_can_take_stay_unless_dropped(tmp_path):
    """An average pooling with padding makes the constants smaller at the
    borders, which neither a bias nor a carrier channel reproduces: channels 1
    and 3 stay, unless dropped (4 is zero throughout and goes)."""
    model, weights, net = constant_net(tmp_path, """
layer { name: "pool" type: "Pooling" bottom: "conv1" top: "pool"
        pooling_param { pool: AVE kernel_size: 3 stride: 1 pad: 1 } }
""" + CONV2 % "pool")
    kept = compact.compact(model, weights, str(tmp_path / "kept"))
    assert kept["plan"]["layers"]["conv1"]["out"] == [0, 1, 2, 3, 5]
    assert kept["warnings"] == [
        "2 zero filters of conv1 kept: their channels carry constants ('conv1' bias, 'bn1' "
        "mean); conv2 sees them differ from position to position; pass --drop-constants to "
        "cut them anyway"]
    assert kept["equivalence"]["against"] == "masked" and kept["equivalence"]["passed"]
    # cut all the same: checked against the masked net without those constants
    cut = compact.compact(model, weights, str(tmp_path / "cut"), drop_constants=True)
    assert cut["plan"]["layers"]["conv1"]["out"] == [0, 2, 5]
    assert "fold" not in cut["plan"]["layers"]["conv2"]
    assert cut["equivalence"]["against"] == "reference" and cut["equivalence"]["passed"]
    assert cut["dropped_constants"] == ["'conv1' bias of 1 removed filters",
                                        "'bn1' mean of 1 removed channels"]
    assert cut["reference_vs_original"]["max_abs_diff"] > 0.1


def test_a_grouped_padded_reader_after_a_concat_cannot_take_constants(tmp_path):
    """Each group of conv2 reads a part of the Concat, so one carrier per
    group of conv1's channels would not do: the constants stay, and the
    warning says why, once."""
    model, weights, net = constant_net(tmp_path, """
layer { name: "cat" type: "Concat" bottom: "conv1" bottom: "conv1" top: "cat" }
layer { name: "conv2" type: "Convolution" bottom: "cat" top: "conv2"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 group: 2 } }
""")
    report = compact.compact(model, weights, str(tmp_path / "out"))
    assert report["warnings"][0] == (
        "2 zero filters of conv1 kept: their channels carry constants ('conv1' bias, 'bn1' "
        "mean); conv2 spreads them unevenly over its outputs, and they are channels of the "
        "grouped convolutions conv2, read after a Concat; pass --drop-constants to cut them "
        "anyway")
    assert report["equivalence"]["passed"]


def test_a_grouped_padded_reader_keeps_a_carrier_in_each_group(tmp_path):
    """conv2 (group 2) reads channels 0-2 and 3-5 apart: constants in both
    halves (0 and 1; 3 and 4) need a carrier in each, the largest."""
    model, weights, net = constant_net(tmp_path, CONV2.replace("pad: 1", "pad: 1 group: 2")
                                       % "conv1")
    kill_filters(net, "conv1", [0], ("bn1",))  # filter 0 zero too, with the largest bias
    net.params["conv1"][1].data[0] = 3.0
    net.params["bn1"][0].data[4] = -1.0
    net.save(weights)
    out = str(tmp_path / "out")
    report = compact.compact(model, weights, out)
    layers = report["plan"]["layers"]
    assert layers["conv1"]["out"] == [0, 2, 4, 5]
    assert layers["conv2"]["fold"]["carriers"] == [0, 4]
    assert layers["conv2"]["fold"]["inputs"] == [1, 3]
    assert report["warnings"] == [] and report["equivalence"]["passed"]
    assert_same_outputs(model, weights, out, "conv2")


def test_a_constant_channel_that_stays_carries_the_removed_ones(tmp_path):
    """Group balance keeps constant channel 1 (the half 3-5 loses only the zero
    channel 4): conv2 reads constant channel 0 through it."""
    model, weights, net = constant_net(tmp_path, CONV2.replace("pad: 1", "pad: 1 group: 2")
                                       % "conv1")
    net.params["conv1"][0].data[3] = 1.0  # channel 3 live
    kill_filters(net, "conv1", [0], ("bn1",))
    net.params["conv1"][1].data[0] = 3.0
    net.save(weights)
    out = str(tmp_path / "out")
    report = compact.compact(model, weights, out)
    layers = report["plan"]["layers"]
    assert layers["conv1"]["out"] == [1, 2, 3, 5]
    fold = layers["conv2"]["fold"]
    assert (fold["inputs"], fold["carriers"], len(fold["carrier_weights"][0])) == ([0], [1], 2 * 9)
    assert report["warnings"] == ["1 zero filter of conv1 kept: every group of the grouped "
                                  "convolutions conv2 keeps the same number of channels"]
    assert report["equivalence"]["passed"]
    assert_same_outputs(model, weights, out, "conv2")


@pytest.mark.parametrize("layer", ['type: "Sigmoid"', 'type: "Exp"', 'type: "BNLL"',
                                   'type: "Clip" clip_param { min: 0.5 max: 6 }',
                                   'type: "Threshold" threshold_param { threshold: -1 }',
                                   'type: "Power" power_param { shift: 1 }',
                                   'type: "Log" log_param { shift: 2 }'])
def test_a_layer_mapping_zero_to_a_constant_has_it_folded(tmp_path, layer):
    tail = 'layer { name: "f" %s bottom: "conv1" top: "f" }\n' % layer
    report = small_net(tmp_path / "fold", tail + CONV2.replace("pad: 1", "pad: 0") % "f")
    assert report["plan"]["layers"]["conv1"]["out"] == [0, 2, 4, 5]
    assert report["plan"]["layers"]["conv2"]["fold"]["inputs"] == [1, 3]
    assert report["warnings"] == [] and report["equivalence"]["passed"]
    # conv2 reads no channel 1, 3 or 4 (4: a non-zero filter of conv1): those go, unfolded
    report = small_net(tmp_path / "unread", tail + CONV2 % "f", zero_inputs=(1, 3, 4))
    assert report["plan"]["layers"]["conv1"]["out"] == [0, 2, 5]
    assert report["plan"]["layers"]["conv2"]["in"] == [0, 2, 5]
    assert "fold" not in report["plan"]["layers"]["conv2"]
    assert report["equivalence"]["passed"] and report["equivalence"]["max_abs_diff"] == 0


@pytest.mark.parametrize("layer", [
    'type: "Clip" clip_param { min: 0 max: 6 }',  # ReLU6
    'type: "Threshold" threshold_param { threshold: 0.5 }',
    'type: "Power" power_param { power: 2 scale: 3 }',
    'type: "Log" log_param { shift: 1 scale: 0.5 }',
    'type: "Swish" swish_param { beta: 2 }',
])
def test_element_wise_layers_that_map_zero_to_zero_pass_channels(tmp_path, layer):
    """On |conv1| (a Log's input stays positive); conv2 is padded, so a
    constant on conv1's zero channels would keep them. Planned without the
    forward passes too (what pruning's reports use), and a BatchNorm before
    the layer gets its entries on pruned channels zeroed by pruning."""
    tail = ('layer { name: "abs" type: "AbsVal" bottom: "conv1" top: "abs" }\n'
            'layer { name: "f" %s bottom: "abs" top: "f" }\n' % layer + CONV2 % "f")
    report = small_net(tmp_path, tail)
    assert report["plan"]["layers"]["conv1"]["out"] == [0, 2, 4, 5]
    assert report["plan"]["layers"]["conv2"]["in"] == [0, 2, 4, 5]
    assert "fold" not in report["plan"]["layers"]["conv2"]
    assert report["warnings"] == [] and report["equivalence"]["passed"]
    model = str(tmp_path / "n.prototxt")
    net = caffe.Net(model, caffe.TEST, weights=str(tmp_path / "n.caffemodel"))
    assert compact.plan_compaction(net, protoio.read_net(model))["layers"]["conv1"]["out"] == [
        0, 2, 4, 5]
    model = write(tmp_path / "bn.prototxt", SMALL_HEAD + 'layer { name: "bn1" type: "BatchNorm" '
                  'bottom: "conv1" top: "conv1" }\n' + tail)
    mask = np.ones((6, 3, 3, 3), bool)
    mask[[1, 3]] = False
    dead = compact.dead_channel_constants(caffe.Net(model, caffe.TEST), protoio.read_net(model),
                                          {"conv1": mask})
    assert [(name, index, list(channels)) for name, index, channels in dead] == [
        ("bn1", 0, [1, 3])]


@pytest.mark.parametrize("tail,reader", [
    ("", "output conv1"),  # conv1 is the net's output
    ('layer { name: "prob" type: "Softmax" bottom: "conv1" top: "prob" }', "prob"),
    ('layer { name: "r" type: "Reshape" bottom: "conv1" top: "r" '
     'reshape_param { shape { dim: 0 dim: 3 dim: -1 } } }', "r"),  # moves channels
    ('layer { name: "t" type: "Tile" bottom: "conv1" top: "t" tile_param { tiles: 2 } }', "t"),
    ('layer { name: "n" type: "MVN" bottom: "conv1" top: "n" mvn_param { across_channels: true } }',
     "n"),
])
def test_channels_read_whole_keep_their_zero_filters(tmp_path, tail, reader):
    report = small_net(tmp_path, tail)
    assert report["plan"]["layers"]["conv1"]["out"] == list(range(6))
    assert report["warnings"] == ["2 zero filters of conv1 kept: their channels are read whole, "
                                  "every channel at its place, by %s" % reader]
    assert report["equivalence"]["passed"] and report["equivalence"]["max_abs_diff"] == 0


def test_pruning_zeroes_the_constants_before_a_sigmoid_so_its_channels_fold(tmp_path):
    """conv1 -> BatchNorm -> a padded depthwise conv with biases -> Sigmoid ->
    conv2: with the BatchNorm means and depthwise biases of the pruned
    channels zeroed, each is sigmoid(0) everywhere, which conv2's biases take;
    left as they are, the padding makes them differ by position."""
    tail = ('layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }\n'
            'layer { name: "dw" type: "Convolution" bottom: "conv1" top: "dw" '
            'convolution_param { num_output: 6 group: 6 kernel_size: 3 pad: 1 } }\n'
            'layer { name: "sig" type: "Sigmoid" bottom: "dw" top: "dw" }\n'
            + CONV2.replace("kernel_size: 3 pad: 1", "kernel_size: 1") % "dw")
    model = write(tmp_path / "n.prototxt", SMALL_HEAD + tail)
    mask = np.ones((6, 3, 3, 3), bool)
    mask[[1, 3]] = False
    net = caffe.Net(model, caffe.TEST)
    dead = compact.dead_channel_constants(net, protoio.read_net(model), {"conv1": mask})
    assert [(name, index, list(channels)) for name, index, channels in dead] == [
        ("bn1", 0, [1, 3]), ("dw", 1, [1, 3])]
    report = small_net(tmp_path, tail)
    assert report["plan"]["layers"]["conv1"]["out"] == list(range(6))  # constants kept
    net = caffe.Net(model, caffe.TEST, weights=str(tmp_path / "n.caffemodel"))
    for name, index, channels in dead:
        net.params[name][index].data[channels] = 0
    net.save(str(tmp_path / "n.caffemodel"))
    report = compact.compact(model, str(tmp_path / "n.caffemodel"), str(tmp_path / "out2"))
    assert report["plan"]["layers"]["conv1"]["out"] == [0, 2, 4, 5]
    assert report["plan"]["layers"]["conv2"]["fold"]["inputs"] == [1, 3]
    assert report["warnings"] == [] and report["equivalence"]["passed"]


def test_a_slice_part_with_only_zero_filters_keeps_one_and_says_why(tmp_path):
    """conv1's filters 3-5 are zero: its Slice's second part would be empty."""
    tail = ('layer { name: "sl" type: "Slice" bottom: "conv1" top: "a" top: "b" '
            'slice_param { slice_point: 3 } }\n'
            'layer { name: "cat" type: "Concat" bottom: "b" bottom: "a" top: "cat" }\n'
            + CONV2 % "cat")
    report = small_net(tmp_path, tail, zero_filters=(3, 4, 5))
    assert report["plan"]["layers"]["conv1"]["out"] == [0, 1, 2, 3]
    assert report["warnings"] == [
        "1 zero filter of conv1 kept: all the channels of a blob (a Slice's part, say) would go, "
        "and each keeps one: Caffe aborts on a layer with no inputs"]
    assert report["equivalence"]["passed"] and report["equivalence"]["max_abs_diff"] == 0


def test_per_channel_normalisation_and_spatial_tiles_pass_channels(tmp_path):
    """MVN without across_channels normalises each channel alone (a zero one
    stays zero), a Tile along an axis after the channels repeats each in place;
    a ContrastiveLoss (siamese nets) reads its features whole."""
    tail = ('layer { name: "n" type: "MVN" bottom: "conv1" top: "n" }\n'
            'layer { name: "t" type: "Tile" bottom: "n" top: "t" tile_param { axis: 3 tiles: 2 } }\n'
            + CONV2 % "t" + """
layer { name: "fa" type: "InnerProduct" bottom: "conv2" top: "fa" inner_product_param { num_output: 3 } }
layer { name: "fb" type: "InnerProduct" bottom: "conv2" top: "fb" inner_product_param { num_output: 3 } }
layer { name: "sim" type: "Input" top: "sim" input_param { shape { dim: 2 } } }
layer { name: "loss" type: "ContrastiveLoss" bottom: "fa" bottom: "fb" bottom: "sim" top: "loss" }
""")
    report = small_net(tmp_path, tail)
    assert report["plan"]["layers"]["conv1"]["out"] == report["plan"]["layers"]["conv2"]["in"] == [
        0, 2, 4, 5]
    assert report["warnings"] == [] and report["equivalence"]["passed"]


def test_a_silenced_blob_reads_nothing(tmp_path):
    tail = ('layer { name: "split" type: "Split" bottom: "conv1" top: "a" top: "b" }\n'
            'layer { name: "mute" type: "Silence" bottom: "b" }\n' + CONV2 % "a")
    report = small_net(tmp_path, tail)
    assert report["plan"]["layers"]["conv1"]["out"] == [0, 2, 4, 5]
    assert report["warnings"] == []


def dense_unit(i, bottom):
    """A DenseNet layer: BN, Scale, ReLU, conv, then Concat with its input."""
    return """
layer { name: "bn%(i)d" type: "BatchNorm" bottom: "%(b)s" top: "bn%(i)d" }
layer { name: "sc%(i)d" type: "Scale" bottom: "bn%(i)d" top: "bn%(i)d" scale_param { bias_term: true } }
layer { name: "relu%(i)d" type: "ReLU" bottom: "bn%(i)d" top: "bn%(i)d" }
layer { name: "c%(i)d" type: "Convolution" bottom: "bn%(i)d" top: "c%(i)d"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "cat%(i)d" type: "Concat" bottom: "%(b)s" bottom: "c%(i)d" top: "cat%(i)d" }
""" % {"i": i, "b": bottom}


def test_a_dense_block_compacts_through_its_concats_and_their_batchnorms(tmp_path):
    """Per-channel layers on a Concat's output, and Concats of Concats."""
    model = write(tmp_path / "dense.prototxt", SMALL_HEAD.replace('"conv1"', '"c0"')
                  + dense_unit(1, "c0") + dense_unit(2, "cat1") + """
layer { name: "bnf" type: "BatchNorm" bottom: "cat2" top: "cat2" }
layer { name: "pool" type: "Pooling" bottom: "cat2" top: "pool"
        pooling_param { pool: AVE global_pooling: true } }
layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc"
        inner_product_param { num_output: 3 } }
""")
    net = caffe.Net(model, caffe.TEST)
    random_params(net)
    for name, blobs in net.params.items():  # no constants: dead channels stay zero throughout
        if name.startswith("bn"):
            blobs[0].data[...] = 0
        if name.startswith("sc"):
            blobs[1].data[...] = 0
    for name, dead in (("c0", [1, 3]), ("c1", [0]), ("c2", [2, 3])):
        kill_filters(net, name, dead)
    weights = str(tmp_path / "dense.caffemodel")
    net.save(weights)
    report = compact.compact(model, weights, str(tmp_path / "out"))
    layers = report["plan"]["layers"]
    # cat2 = [c0 (6) | c1 (4) | c2 (4)]: c0 keeps 0 2 4 5, c1 1 2 3, c2 0 1
    assert layers["bnf"]["out"] == layers["fc"]["in"] == [0, 2, 4, 5, 7, 8, 9, 10, 11]
    assert layers["bn2"]["out"] == layers["c2"]["in"] == [0, 2, 4, 5, 7, 8, 9]
    assert layers["sc1"]["out"] == layers["c1"]["in"] == [0, 2, 4, 5]
    assert report["layers"]["c2"]["compact_shape"] == [2, 7, 3, 3]
    assert report["equivalence"]["passed"] and report["warnings"] == []


def test_a_depthwise_convolution_passes_its_channels_through(tmp_path):
    """MobileNet: pointwise conv, BN, depthwise conv (group = channels), pointwise."""
    tail = """
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "dw" type: "Convolution" bottom: "conv1" top: "dw"
        convolution_param { num_output: 6 group: 6 kernel_size: 3 pad: 1 } }
layer { name: "relu2" type: "ReLU" bottom: "dw" top: "dw" }
""" + CONV2 % "dw"
    model = write(tmp_path / "n.prototxt", SMALL_HEAD + tail)
    net = caffe.Net(model, caffe.TEST)
    random_params(net)
    kill_filters(net, "conv1", [1, 3], ("bn1",))
    net.params["dw"][1].data[[1, 3]] = 0
    net.params["conv2"][0].data[:, 5] = 0  # conv2 reads no channel 5 through dw
    weights = str(tmp_path / "n.caffemodel")
    net.save(weights)
    report = compact.compact(model, weights, str(tmp_path / "out"))
    layers = report["plan"]["layers"]
    assert layers["conv1"]["out"] == layers["bn1"]["out"] == layers["dw"]["out"] == [0, 2, 4]
    assert layers["conv2"]["in"] == [0, 2, 4]
    assert report["layers"]["dw"]["compact_shape"] == [3, 1, 3, 3]
    small = protoio.read_net(str(tmp_path / "out" / "compact.prototxt"))
    dw = [l for l in small.layer if l.name == "dw"][0]
    assert (dw.convolution_param.num_output, dw.convolution_param.group) == (3, 3)
    assert report["equivalence"]["passed"] and report["warnings"] == []


def save_and_compact(net, model, tmp_path):
    """Save ``net``'s weights and compact ``model`` with them: (weights, out, report)."""
    weights = str(tmp_path / "w.caffemodel")
    net.save(weights)
    out = str(tmp_path / "out")
    return weights, out, compact.compact(model, weights, out)


def test_a_layer_keeps_one_channel_where_all_would_go(tmp_path):
    """conv2's filters are all zero, fc reads none of conv1's channel 2-5:
    Caffe aborts on a layer with no outputs, so each keeps one channel."""
    model = write(tmp_path / "n.prototxt", SMALL_HEAD + CONV2.replace("pad: 1", "pad: 0")
                  % "conv1" + """
layer { name: "fc" type: "InnerProduct" bottom: "conv2" top: "fc"
        inner_product_param { num_output: 3 } }
""")
    net = caffe.Net(model, caffe.TEST)
    random_params(net)
    kill_filters(net, "conv2", list(range(4)))
    weights, out, report = save_and_compact(net, model, tmp_path)
    layers = report["plan"]["layers"]
    assert layers["conv2"]["out"] == layers["fc"]["in"] == [0]
    assert layers["conv1"]["out"] == layers["conv2"]["in"] == [0]
    assert report["equivalence"]["passed"]
    assert_same_outputs(model, weights, out, "fc")


UNET_TAIL = """
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool" type: "Pooling" bottom: "conv1" top: "pool"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool" top: "conv2"
        convolution_param { num_output: 8 kernel_size: 3 pad: 1 } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "up" type: "Deconvolution" bottom: "conv2" top: "up"
        convolution_param { num_output: 4 kernel_size: 2 stride: 2 } }
layer { name: "crop" type: "Crop" bottom: "conv1" bottom: "up" top: "crop" }
layer { name: "upd" type: "Deconvolution" bottom: "pool" top: "upd"
        convolution_param { num_output: 6 group: 6 kernel_size: 2 stride: 2 } }
layer { name: "cat" type: "Concat" bottom: "crop" bottom: "up" bottom: "upd" top: "cat" }
layer { name: "conv3" type: "Convolution" bottom: "cat" top: "conv3"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
"""


def test_a_unet_block_compacts_through_its_deconvolutions_and_crop(tmp_path):
    """U-Net's decoder: an up-convolution (Deconvolution: weight inputs x
    outputs), a Crop of the skip path, a depthwise Deconvolution. conv2's zero
    filters 0 and 5 carry constant biases: up reads them through channel 0."""
    model = write(tmp_path / "unet.prototxt", SMALL_HEAD + UNET_TAIL)
    net = caffe.Net(model, caffe.TEST)
    random_params(net)
    kill_filters(net, "conv1", [1, 3])
    kill_filters(net, "conv2", [0, 5])
    net.params["conv2"][1].data[[0, 5]] = [0.7, 0.3]
    net.params["up"][0].data[:, 2] = 0  # up's filter 2 (a column of its weight)
    net.params["up"][1].data[2] = 0
    net.params["upd"][1].data[[1, 3]] = 0
    weights, out, report = save_and_compact(net, model, tmp_path)
    layers = report["plan"]["layers"]
    assert layers["conv1"]["out"] == layers["upd"]["out"] == [0, 2, 4, 5]
    assert layers["conv2"]["out"] == layers["up"]["in"] == [0, 1, 2, 3, 4, 6, 7]
    assert layers["up"]["out"] == [0, 1, 3]
    assert layers["up"]["fold"]["inputs"] == [5] and layers["up"]["fold"]["carriers"] == [0]
    # cat = [crop: conv1 (6) | up (4) | upd: conv1 again (6)]
    assert layers["conv3"]["in"] == [0, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15]
    assert report["layers"]["up"]["compact_shape"] == [7, 3, 2, 2]
    # a Deconvolution multiplies each of its 4 x 4 input positions by its whole weight
    assert (report["layers"]["up"]["flops"], report["layers"]["up"]["compact_flops"]) == (
        2 * 8 * 4 * 2 * 2 * 16, 2 * 7 * 3 * 2 * 2 * 16)
    assert report["layers"]["upd"]["compact_shape"] == [4, 1, 2, 2]
    small = protoio.read_net(os.path.join(out, "compact.prototxt"))
    upd = [l for l in small.layer if l.name == "upd"][0]
    assert (upd.convolution_param.num_output, upd.convolution_param.group) == (4, 4)
    assert report["warnings"] == [] and report["equivalence"]["passed"]
    assert_same_outputs(model, weights, out, "conv3")


def test_a_grouped_deconvolution_reads_constants_through_a_carrier_per_group(tmp_path):
    """up with group 2 reads conv2's channels 0-3 and 4-7 apart (its weight
    rows); each half has two constant channels: one carries, one goes. Its
    outputs 1 and 3 (a column of each group's block) are zero."""
    model = write(tmp_path / "unet.prototxt", SMALL_HEAD + UNET_TAIL.replace(
        "num_output: 4 kernel_size: 2 stride: 2", "num_output: 4 group: 2 kernel_size: 2 stride: 2"))
    net = caffe.Net(model, caffe.TEST)
    random_params(net)
    kill_filters(net, "conv2", [0, 1, 4, 5])
    net.params["conv2"][1].data[[0, 1, 4, 5]] = [0.7, 0.3, 0.2, 0.6]
    net.params["up"][0].data[:, 1] = 0
    net.params["up"][1].data[[1, 3]] = 0
    weights, out, report = save_and_compact(net, model, tmp_path)
    layers = report["plan"]["layers"]
    assert layers["conv2"]["out"] == layers["up"]["in"] == [0, 2, 3, 5, 6, 7]
    assert layers["up"]["out"] == [0, 2]
    assert layers["up"]["fold"]["inputs"] == [1, 4] and layers["up"]["fold"]["carriers"] == [0, 5]
    assert report["layers"]["up"]["compact_shape"] == [6, 1, 2, 2]
    assert report["warnings"] == [] and report["equivalence"]["passed"]
    assert_same_outputs(model, weights, out, "conv3")


def se_gate(blob, channels):
    """An SE block on ``blob``: global pooling, a 1x1 ``down`` (3) and ``up``
    (``channels``), a Sigmoid, flattened; ``gate`` scales ``blob`` by it into
    ``gated``."""
    return """
layer { name: "squeeze" type: "Pooling" bottom: "%(b)s" top: "squeeze"
        pooling_param { pool: AVE global_pooling: true } }
layer { name: "down" type: "Convolution" bottom: "squeeze" top: "down"
        convolution_param { num_output: 3 kernel_size: 1 } }
layer { name: "relu_d" type: "ReLU" bottom: "down" top: "down" }
layer { name: "up" type: "Convolution" bottom: "down" top: "up"
        convolution_param { num_output: %(c)d kernel_size: 1 } }
layer { name: "prob" type: "Sigmoid" bottom: "up" top: "up" }
layer { name: "flat" type: "Flatten" bottom: "up" top: "flat" }
layer { name: "gate" type: "Scale" bottom: "%(b)s" bottom: "flat" top: "gated"
        scale_param { axis: 0 } }
""" % {"b": blob, "c": channels}


SE_TAIL = """
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
""" + se_gate("conv1", 6)


def test_a_squeeze_and_excitation_gate_goes_with_its_channels(tmp_path):
    """SE: conv1 scaled per sample and channel by up's Sigmoid. conv1's zero
    channels 1 and 3 go, and with them up's filters for them, which are not
    zero; up's zero filter 2 does not make channel 2 go (its factor is
    sigmoid(bias)). Channel 4 is a constant (bias and BatchNorm mean) that
    the gate scales differently for every input: it stays."""
    model = write(tmp_path / "se.prototxt", SMALL_HEAD + SE_TAIL + CONV2 % "gated")
    net = caffe.Net(model, caffe.TEST)
    random_params(net)
    kill_filters(net, "conv1", [1, 3], ("bn1",))
    kill_filters(net, "conv1", [4])
    net.params["conv1"][1].data[4] = 0.8
    net.params["bn1"][0].data[4] = -1.0  # (0.8 + 1) / std > 0: through the ReLU
    kill_filters(net, "up", [2])
    weights, out, report = save_and_compact(net, model, tmp_path)
    layers = report["plan"]["layers"]
    assert layers["conv1"]["out"] == layers["bn1"]["out"] == layers["up"]["out"] == [0, 2, 4, 5]
    assert layers["down"]["in"] == layers["conv2"]["in"] == [0, 2, 4, 5]
    assert report["warnings"] == [
        "1 zero filter of conv1 kept: their channels carry constants ('conv1' bias, 'bn1' mean); "
        "conv2 sees them change with the input; pass --drop-constants to cut them anyway"]
    assert report["layers"]["up"]["compact_shape"] == [4, 3, 1, 1]
    assert report["equivalence"]["passed"]
    assert_same_outputs(model, weights, out, "conv2")
    # without the forward passes (what pruning's reports use): the Sigmoid on the
    # factor does not keep conv1's zero channels
    plan = compact.plan_compaction(caffe.Net(model, caffe.TEST, weights=weights),
                                   protoio.read_net(model))
    assert plan["layers"]["conv1"]["out"] == plan["layers"]["up"]["out"] == [0, 2, 4, 5]


def test_reshapes_that_keep_channels_in_place_pass_them_and_are_resized(tmp_path):
    """An SE block of InnerProducts whose factor is reshaped to (N, 6, 1, 1) and
    back to (N, 6), a residual sum, and a Reshape to (N, 384) as a Flatten:
    the sizes given in their ``shape`` follow the kept channels."""
    tail = (SE_TAIL.replace('"Convolution"', '"InnerProduct"')
            .replace("convolution_param", "inner_product_param").replace(" kernel_size: 1", "")
            .replace('layer { name: "flat" type: "Flatten" bottom: "up" top: "flat" }', """
layer { name: "r" type: "Reshape" bottom: "up" top: "r"
        reshape_param { shape { dim: -1 dim: 6 dim: 1 dim: 1 } } }
layer { name: "flat" type: "Reshape" bottom: "r" top: "flat" reshape_param { shape { dim: 0 dim: 6 } } }
""") + """
layer { name: "sum" type: "Eltwise" bottom: "gated" bottom: "conv1" top: "sum" }
layer { name: "rows" type: "Reshape" bottom: "sum" top: "rows"
        reshape_param { shape { dim: 0 dim: 384 } } }
layer { name: "fc" type: "InnerProduct" bottom: "rows" top: "fc" inner_product_param { num_output: 5 } }
""")
    model = write(tmp_path / "se.prototxt", SMALL_HEAD + tail)
    net = caffe.Net(model, caffe.TEST)
    random_params(net)
    kill_filters(net, "conv1", [1, 3], ("bn1",))
    weights, out, report = save_and_compact(net, model, tmp_path)
    layers = report["plan"]["layers"]
    assert layers["conv1"]["out"] == layers["up"]["out"] == layers["down"]["in"] == [0, 2, 4, 5]
    assert layers["fc"]["in"] == [0, 2, 4, 5] and layers["fc"]["in_block"] == 64
    small = protoio.read_net(os.path.join(out, "compact.prototxt"))
    dims = {l.name: list(l.reshape_param.shape.dim) for l in small.layer if l.type == "Reshape"}
    assert dims == {"r": [-1, 4, 1, 1], "flat": [0, 4], "rows": [0, 256]}
    assert report["warnings"] == [] and report["equivalence"]["passed"]
    assert_same_outputs(model, weights, out, "fc")


def conv(name, bottom, out, k=1, extra=""):
    pad = " pad: %d" % (k // 2) if k > 1 else ""
    return ('layer { name: "%s" type: "Convolution" bottom: "%s" top: "%s" convolution_param '
            '{ num_output: %d kernel_size: %d%s%s } }\n' % (name, bottom, name, out, k, pad, extra))


def test_an_eltwise_over_a_concat_cuts_its_partner_into_the_concat_parts(tmp_path):
    """sum = [a | b] + c: c's channels 0-3 pair with a's, 4-7 with b's, and a
    channel goes where both partners' filters are zero (1: a and c; 4 and 7:
    b and c), not where only one's is (2: a's)."""
    model = write(tmp_path / "n.prototxt", SMALL_HEAD + conv("a", "conv1", 4) + conv(
        "b", "conv1", 4) + """
layer { name: "cat" type: "Concat" bottom: "a" bottom: "b" top: "cat" }
layer { name: "bn" type: "BatchNorm" bottom: "cat" top: "cat" }
""" + conv("c", "conv1", 8, k=3) + """
layer { name: "sum" type: "Eltwise" bottom: "cat" bottom: "c" top: "sum" }
""" + conv("conv2", "sum", 4, k=3))
    net = caffe.Net(model, caffe.TEST)
    random_params(net)
    kill_filters(net, "a", [1, 2])
    kill_filters(net, "b", [0, 3])
    kill_filters(net, "c", [1, 4, 7])
    net.params["bn"][0].data[[1, 2, 4, 7]] = 0  # no constants (channel 2 a's zero filter)
    weights, out, report = save_and_compact(net, model, tmp_path)
    layers = report["plan"]["layers"]
    assert layers["a"]["out"] == [0, 2, 3] and layers["b"]["out"] == [1, 2]
    assert layers["c"]["out"] == layers["bn"]["out"] == layers["conv2"]["in"] == [0, 2, 3, 5, 6]
    assert report["warnings"] == [] and report["equivalence"]["passed"]
    assert_same_outputs(model, weights, out, "conv2")


def test_a_slice_of_channels_cuts_its_bottom_at_the_slice_points(tmp_path):
    """LightCNN's max-feature-map: conv1's halves, elementwise MAX. Channel 1
    goes where conv1's filters 1 and 4 are both zero; the slice point follows."""
    model = write(tmp_path / "n.prototxt", SMALL_HEAD + """
layer { name: "slice" type: "Slice" bottom: "conv1" top: "s1" top: "s2"
        slice_param { slice_point: 3 } }
layer { name: "mfm" type: "Eltwise" bottom: "s1" bottom: "s2" top: "mfm"
        eltwise_param { operation: MAX } }
""" + conv("conv2", "mfm", 4, k=3))
    net = caffe.Net(model, caffe.TEST)
    random_params(net)
    kill_filters(net, "conv1", [1, 4, 2])
    weights, out, report = save_and_compact(net, model, tmp_path)
    layers = report["plan"]["layers"]
    assert layers["conv1"]["out"] == [0, 2, 3, 5] and layers["conv2"]["in"] == [0, 2]
    assert report["plan"]["slices"] == {"slice": [2, 2]}
    small = protoio.read_net(os.path.join(out, "compact.prototxt"))
    assert [list(l.slice_param.slice_point) for l in small.layer if l.type == "Slice"] == [[2]]
    assert report["warnings"] == [] and report["equivalence"]["passed"]
    assert_same_outputs(model, weights, out, "conv2")


def test_a_slice_of_a_grouped_convolution_keeps_its_channels(tmp_path):
    """g's groups must keep as many channels each; its halves, sliced apart,
    are balanced alone, so its zero filter 1 stays (and says why)."""
    model = write(tmp_path / "n.prototxt", SMALL_HEAD + conv("g", "conv1", 4, extra=" group: 2")
                  + """
layer { name: "slice" type: "Slice" bottom: "g" top: "s1" top: "s2" slice_param { slice_point: 1 } }
layer { name: "cat" type: "Concat" bottom: "s2" bottom: "s1" top: "cat" }
""" + conv("conv2", "cat", 4, k=3))
    net = caffe.Net(model, caffe.TEST)
    random_params(net)
    kill_filters(net, "g", [1])
    weights, out, report = save_and_compact(net, model, tmp_path)
    assert report["plan"]["layers"]["g"]["out"] == [0, 1, 2, 3]
    assert report["warnings"] == ["1 zero filter of g kept: every group of the grouped "
                                  "convolutions g keeps the same number of channels"]
    assert report["equivalence"]["passed"]


def test_a_gate_over_a_concat_cuts_its_factor_into_the_concat_parts(tmp_path):
    """An SE gate on an Inception-style Concat (SE-BN-Inception): up's
    filters follow the Concat's channels; a's zero filter 1 and b's 2 go with
    up's filters 1 and 6."""
    model = write(tmp_path / "n.prototxt", SMALL_HEAD + conv("a", "conv1", 4) + conv(
        "b", "conv1", 4) + """
layer { name: "cat" type: "Concat" bottom: "a" bottom: "b" top: "cat" }
""" + se_gate("cat", 8) + conv("conv2", "gated", 4, k=3))
    net = caffe.Net(model, caffe.TEST)
    random_params(net)
    kill_filters(net, "a", [1])
    kill_filters(net, "b", [2])
    weights, out, report = save_and_compact(net, model, tmp_path)
    layers = report["plan"]["layers"]
    assert layers["a"]["out"] == [0, 2, 3] and layers["b"]["out"] == [0, 1, 3]
    assert layers["up"]["out"] == layers["down"]["in"] == layers["conv2"]["in"] == [
        0, 2, 3, 4, 5, 7]
    assert report["warnings"] == [] and report["equivalence"]["passed"]
    assert_same_outputs(model, weights, out, "conv2")


@pytest.mark.parametrize("tail, message", [
    ("""layer { name: "flat" type: "Flatten" bottom: "conv1" top: "flat" }
layer { name: "cat" type: "Concat" bottom: "flat" bottom: "flat" top: "cat" }""",
     r"layer 'cat': Concat of 'flat\w*', a flattened blob, is not supported"),
    (SE_TAIL.replace("axis: 0", "axis: 0 bias_term: true"),
     r"layer 'gate': Scale with two bottoms and bias_term: true is not supported"),
    (SE_TAIL + 'layer { name: "fc" type: "InnerProduct" bottom: "flat" top: "fc" '
     'inner_product_param { num_output: 2 } }',
     r"layer 'gate': its factor is read by fc as well \(supported: a factor read only by the "
     r"Scale\)"),
    ("""layer { name: "s" type: "Input" top: "s" input_param { shape { dim: 6 } } }
layer { name: "gate" type: "Scale" bottom: "conv1" bottom: "s" top: "gated" }""",
     r"layer 'gate': Scale with two bottoms is supported from axis 0 only \(a factor per sample "
     r"and channel, as in SE blocks\), not axis 1")])
def test_layouts_it_cannot_cut_are_named(tmp_path, tail, message):
    model = write(tmp_path / "n.prototxt", SMALL_HEAD + tail)
    weights = str(tmp_path / "n.caffemodel")
    caffe.Net(model, caffe.TEST).save(weights)
    with pytest.raises(compact.CompactionError, match=message):
        compact.compact(model, weights, str(tmp_path / "out"))


@pytest.mark.parametrize("param, message", [
    ("transpose: true", r"layer 'fc': InnerProduct with transpose: true .* is not supported"),
    ("axis: 2", r"layer 'fc': InnerProduct with axis 2 is not supported")])
def test_inner_product_layouts_it_cannot_cut_are_named(tmp_path, param, message):
    """Caught from the prototxt, before any weight is read the wrong way round;
    transpose: true with as many inputs as outputs would fit the shape check."""
    model = write(tmp_path / "t.prototxt", """
        layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 4 dim: 2 dim: 2 } } }
        layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
                convolution_param { num_output: 4 kernel_size: 1 } }
        layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc"
                inner_product_param { num_output: 16 %s } }
        """ % param)
    net = caffe.Net(model, caffe.TEST)
    net.params["conv"][0].data[1] = 0
    weights = str(tmp_path / "t.caffemodel")
    net.save(weights)
    with pytest.raises(compact.CompactionError, match=message):
        compact.compact(model, weights, str(tmp_path / "out"))


def test_lrn_across_channels_deviation_is_reported_and_refused(tmp_path):
    model = write(tmp_path / "lrn.prototxt", """
        name: "lrn"
        layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
        layer { name: "c1" type: "Convolution" bottom: "data" top: "c1"
                convolution_param { num_output: 8 kernel_size: 3 } }
        layer { name: "norm" type: "LRN" bottom: "c1" top: "n1" lrn_param { local_size: 3 alpha: 1 beta: 0.75 } }
        layer { name: "fc" type: "InnerProduct" bottom: "n1" top: "fc" inner_product_param { num_output: 3 } }
    """)
    net = caffe.Net(model, caffe.TEST)
    rng = np.random.default_rng(2)
    for blobs in net.params.values():
        for b in blobs:
            b.data[...] = rng.standard_normal(b.data.shape)
    net.params["c1"][0].data[[2, 5]] = 0
    net.params["c1"][1].data[[2, 5]] = 0
    weights = str(tmp_path / "lrn.caffemodel")
    net.save(weights)
    out = str(tmp_path / "out")
    with pytest.raises(compact.CompactionError, match=r"LRN across channels \(norm\).*--force"):
        compact.compact(model, weights, out)
    assert not os.path.exists(os.path.join(out, "compact.caffemodel"))
    report = compact.compact(model, weights, out, force=True)
    assert report["equivalence"]["max_abs_diff"] > 1e-3 and not report["equivalence"]["passed"]
    assert os.path.exists(os.path.join(out, "compact.caffemodel"))


def test_an_old_format_net_compacts_as_the_bundled_lenet_does(tmp_path):
    # V1 `layers` and `input` fields; the same net as prototxt/lenet_deploy.prototxt
    old = write(tmp_path / "old.prototxt", V1_LENET)
    weights = str(tmp_path / "sparse.caffemodel")
    sparse_weights(old, weights)
    new = os.path.join(NETS, "lenet_deploy.prototxt")
    old_report = compact.compact(old, weights, str(tmp_path / "old_out"))
    new_report = compact.compact(new, weights, str(tmp_path / "new_out"))
    assert old_report["plan"] == new_report["plan"]
    assert old_report["equivalence"]["passed"]
    text = open(str(tmp_path / "old_out" / "compact.prototxt")).read()
    assert "layers {" not in text and 'type: "Input"' in text
    nets = [caffe.Net(str(tmp_path / d / "compact.prototxt"), caffe.TEST,
                      weights=str(tmp_path / d / "compact.caffemodel"))
            for d in ("old_out", "new_out")]
    x = np.random.default_rng(1).standard_normal(nets[0].blobs["data"].data.shape)
    for net in nets:
        net.blobs["data"].data[...] = x
    np.testing.assert_array_equal(nets[0].forward()["prob"], nets[1].forward()["prob"])


def test_compacted_files_load_in_the_caffe_cli(tmp_path):
    model = os.path.join(NETS, "concat_deploy.prototxt")
    _, _, out = run_compact(tmp_path, model)
    res = subprocess.run([os.path.join(ROOT, ".venv", "bin", "caffe"), "test",
                          "-model", os.path.join(out, "compact.prototxt"),
                          "-weights", os.path.join(out, "compact.caffemodel"),
                          "-iterations", "1"], capture_output=True, text=True,
                         env=dict(os.environ, GLOG_minloglevel="0"))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "Loss: 0" in res.stderr or "prob" in res.stderr


def test_timing_reports_every_layer_with_exact_flop_reduction(tmp_path):
    model = os.path.join(NETS, "lenet_deploy.prototxt")
    report, weights, out = run_compact(tmp_path, model)
    result = timing.compare(model, weights, os.path.join(out, "compact.prototxt"),
                            os.path.join(out, "compact.caffemodel"), batches=(1, 4), repeats=2)
    for batch in (1, 4):
        rows = result["batches"][batch]["layers"]
        assert set(rows) == {"conv1", "conv2", "ip1", "ip2"}
        for name, row in rows.items():
            assert row["original"]["median_ms"] > 0 and row["compact"]["median_ms"] > 0
            assert row["flop_reduction"] == pytest.approx(report["layers"][name]["flop_reduction"])
            rounds = row["speedup_rounds"]  # the two repeats, each one's nets back to back
            assert rounds["min"] <= rounds["median"] <= rounds["max"]
            assert rounds["min"] == pytest.approx(min(
                a / b for a, b in zip(row["original"]["samples_ms"], row["compact"]["samples_ms"])))
            assert len(row["original"]["samples_ms"]) == 2
    assert "whole net" in timing.format_table(result)
    assert result["cpu_threads"]["OPENBLAS_NUM_THREADS"] == os.environ.get("OPENBLAS_NUM_THREADS")


def shape_compacted_lenet(tmp_path, ip1_columns=0):
    """LeNet with 350 of conv2's 500 GEMM columns (and ``ip1_columns`` of
    ip1's 800) zero, compacted with ``shape=True``: (model, weights, out, report)."""
    model = os.path.join(NETS, "lenet_deploy.prototxt")
    weights = str(tmp_path / "w.caffemodel")
    net = sparse_weights(model, weights, filters=0.0, channels=0.0)
    cols = np.random.default_rng(3).permutation(500)[:350]
    net.params["conv2"][0].data.reshape(50, -1)[:, cols] = 0
    ip_cols = np.random.default_rng(6).permutation(800)[:ip1_columns]  # inside kept channels
    net.params["ip1"][0].data[:, ip_cols] = 0
    net.save(weights)
    out = str(tmp_path / "out")
    return model, weights, out, compact.compact(model, weights, out, shape=True)


def test_shape_compaction_with_stock_layers_is_exact(tmp_path):
    model, weights, out, report = shape_compacted_lenet(tmp_path, ip1_columns=300)
    assert report["shape_compaction"]["conv2"]["kept_columns"] == 150
    assert report["layers"]["conv2"]["compact_shape"] == [50, 150, 1, 1]
    assert report["layers"]["conv2"]["flop_reduction"] == pytest.approx(500 / 150)
    assert report["shape_compaction"]["ip1"]["kept_columns"] == 500
    assert report["layers"]["ip1"]["compact_shape"] == [500, 500]
    assert report["equivalence"]["passed"]
    small = caffe.Net(os.path.join(out, "compact.prototxt"), caffe.TEST,
                      weights=os.path.join(out, "compact.caffemodel"))
    names = list(small._layer_names)
    assert [small.layers[names.index(n)].type for n in ("conv2/im2col", "conv2/slice",
                                                        "conv2/concat", "conv2")] == \
        ["Im2col", "Slice", "Concat", "Convolution"]
    assert [small.layers[names.index(n)].type for n in ("ip1/flatten", "ip1/slice",
                                                        "ip1/concat", "ip1")] == \
        ["Flatten", "Slice", "Concat", "InnerProduct"]
    assert timing.layer_range(names, "conv2") == (names.index("conv2/im2col"),
                                                  names.index("conv2"))
    full = caffe.Net(model, caffe.TEST, weights=weights)
    x = np.random.default_rng(4).standard_normal(full.blobs["data"].data.shape)
    full.blobs["data"].data[...] = x
    small.blobs["data"].data[...] = x
    np.testing.assert_allclose(small.forward()["prob"], full.forward()["prob"], rtol=1e-4,
                               atol=1e-6)


class _Recording:
    """A real caffe.Net whose ``_forward`` calls are logged as (tag, start, end)."""

    def __init__(self, net, tag, log):
        self._net, self._tag, self._log = net, tag, log

    def __getattr__(self, name):
        return getattr(self._net, name)

    def _forward(self, start, end):
        self._log.append((self._tag, start, end))
        return self._net._forward(start, end)


def test_timing_interleaves_the_nets_and_rotates_their_order(tmp_path):
    model = os.path.join(NETS, "lenet_deploy.prototxt")
    _, weights, out = run_compact(tmp_path, model)
    log = []
    a = _Recording(caffe.Net(model, caffe.TEST, weights=weights), "a", log)
    b = _Recording(caffe.Net(os.path.join(out, "compact.prototxt"), caffe.TEST,
                             weights=os.path.join(out, "compact.caffemodel")), "b", log)
    lines = []
    results = timing.time_nets([a, b], batch=2, repeats=3, warmup=1, layers=["conv1", "ip1"],
                               progress=lines.append)
    assert [line.split(":")[0] for line in lines] == ["batch 2 repeat %d/3" % r for r in (1, 2, 3)]
    for r, line in enumerate(lines):  # each repeat's whole-net times, in the nets' order
        whole = [result["net"]["samples_ms"][r] for result in results]
        assert line.endswith("forward %.3f / %.3f ms" % tuple(whole))
    last = len(a._layer_names) - 1
    warm, timed = log[:2], log[2:]
    assert [t for t, s, e in warm] == ["a", "b"] and all(s == 0 for _, s, _ in warm)
    # per repeat and net: the whole net, then conv1, then ip1; a first, then b first, ...
    per_net = 3
    tags = [timed[i][0] for i in range(0, len(timed), per_net)]
    assert tags == ["a", "b", "b", "a", "a", "b"]
    for i in range(0, len(timed), per_net):
        whole, conv1, ip1 = timed[i:i + per_net]
        assert whole[1:] == (0, last if whole[0] == "a" else len(b._layer_names) - 1)
        assert conv1[2] - conv1[1] == 0 and ip1[2] - ip1[1] == 0
    for result in results:
        assert set(result["layers"]) == {"conv1", "ip1"}
        assert result["net"]["min_ms"] <= result["net"]["median_ms"] <= result["net"]["max_ms"]


def test_layer_contexts_time_each_layer_in_net_order_and_alone(tmp_path):
    model, weights, out, report = shape_compacted_lenet(tmp_path)
    assert report["shape_compaction"]["conv2"]["kept_columns"] == 150  # helpers before conv2
    log = []
    a = _Recording(caffe.Net(model, caffe.TEST, weights=weights), "a", log)
    b = _Recording(caffe.Net(os.path.join(out, "compact.prototxt"), caffe.TEST,
                             weights=os.path.join(out, "compact.caffemodel")), "b", log)
    results = timing.time_layer_contexts([a, b], batch=2, rounds=2, iterations=3, warmup=1,
                                         layers=["conv2", "ip1"])
    assert [(t, s) for t, s, _ in log[:2]] == [("a", 0), ("b", 0)]
    calls = log[2:]
    for tag in ("a", "b"):
        net = a if tag == "a" else b
        names = list(net._layer_names)
        conv2, ip1 = (timing.layer_range(names, n) for n in ("conv2", "ip1"))
        if tag == "b":
            assert conv2[0] == names.index("conv2/im2col") < conv2[1]
        mine = [(s, e) for t, s, e in calls if t == tag]
        per_round = len(mine) // 2
        for r in range(2):
            rnd = mine[r * per_round:(r + 1) * per_round]
            passes, alone = rnd[:-8], rnd[-8:]
            # three passes, each every layer once, in order, timed layers as whole ranges
            flat = [i for s, e in passes for i in range(s, e + 1)]
            assert flat == list(range(len(names))) * 3
            assert conv2 in passes and ip1 in passes
            assert alone == [conv2] * 4 + [ip1] * 4  # one untimed call, then three
    runs = [t for i, (t, _, _) in enumerate(calls) if i == 0 or calls[i - 1][0] != t]
    assert runs == ["a", "b", "a"]  # round 0: a, b; round 1: b, a
    for result in results:
        for context in ("in_net", "alone"):
            assert set(result[context]) == {"conv2", "ip1"}
            for row in result[context].values():
                assert 0 < row["min_ms"] <= row["median_ms"] <= row["max_ms"]


def test_the_readmes_python_block_runs(tmp_path, monkeypatch, capsys):
    """README, "From Python": on a LeNet like the one `make demo` prunes (here
    random weights, half the filters zero)."""
    with open(os.path.join(ROOT, "README.md")) as f:
        block = re.search(r"### From Python.*?```python\n(.*?)```", f.read(), re.S).group(1)
    monkeypatch.chdir(tmp_path)
    os.symlink(NETS, "prototxt")
    os.makedirs("runs/lenet_mnist_fs_mild")
    sparse_weights(os.path.join(NETS, "lenet_deploy.prototxt"),
                   "runs/lenet_mnist_fs_mild/pruned.caffemodel")
    exec(compile(block, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "'passed': True" in out and "conv1" in out and "batch 64" in out
    with open("runs/lenet_mnist_fs_mild/compact_py/plan.json") as f:
        kept = len(json.load(f)["plan"]["layers"]["conv1"]["out"])
    assert kept <= 10  # of 20, half zero
    small = caffe.Net("runs/lenet_mnist_fs_mild/compact_py/compact.prototxt", caffe.TEST,
                      weights="runs/lenet_mnist_fs_mild/compact_py/compact.caffemodel")
    assert small.params["conv1"][0].data.shape[0] == kept

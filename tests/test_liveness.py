"""live_inputs_only: no kept column or channel reads a pruned producer filter."""

import itertools

import numpy as np
import pytest
from google.protobuf import text_format

from caffe_admm import compact, liveness, projections, solver
from caffe_admm.admm import ADMMState
from caffe_admm.backend import caffe_pb2
from caffe_admm.config import load_config

from conftest import TINY_NET, write
from test_methods import CONFIG

SHAPES = {"conv1": (8, 1, 3, 3), "conv2": (8, 8, 3, 3), "ip1": (4, 128)}


def _net(text=TINY_NET):
    return text_format.Parse(text % {"train": "t", "test": "t"}, caffe_pb2.NetParameter())


def test_feeds_follow_zero_preserving_layers():
    feeds = liveness.input_feeds(_net(), SHAPES)
    assert feeds.order == ["conv1", "conv2", "ip1"]
    # conv2 reads pool1 <- relu1 (in place) <- conv1; ip1 reads conv2's 8 x 4 x 4 outputs
    assert feeds.feeds == {"conv2": ((("conv1", 8),), 1), "ip1": ((("conv2", 8),), 16)}
    assert feeds.describe() == "conv2 <- conv1, ip1 <- conv2 (16 inputs per channel)"


BN_SCALE = TINY_NET.replace(
    'layer { name: "conv2"',
    'layer { name: "bn" type: "BatchNorm" bottom: "pool1" top: "pool1" }\n'
    'layer { name: "scale" type: "Scale" bottom: "pool1" top: "pool1" '
    'scale_param { bias_term: true } }\n'
    'layer { name: "conv2"')


def test_feeds_follow_batchnorm_and_scale():
    """A pruned channel's BatchNorm mean and Scale bias are held at zero, but
    not where an Eltwise partner still writes the channel."""
    assert liveness.input_feeds(_net(BN_SCALE), SHAPES).feeds == {
        "conv2": ((("conv1", 8),), 1), "ip1": ((("conv2", 8),), 16)}
    summed = BN_SCALE.replace('layer { name: "conv2"', 'layer { name: "sum" type: "Eltwise" '
                              'bottom: "pool1" bottom: "pool1" top: "sum" }\nlayer { name: "conv2"')
    assert liveness.input_feeds(_net(summed), SHAPES).feeds == {"ip1": ((("conv2", 8),), 16)}


@pytest.mark.parametrize("layer", ['type: "Clip" clip_param { min: 0 max: 6 }',  # ReLU6
                                   'type: "Swish"', 'type: "Power" power_param { power: 2 }'])
def test_feeds_follow_element_wise_layers_that_map_zero_to_zero(layer):
    net = TINY_NET.replace('layer { name: "conv2"', 'layer { name: "f" %s bottom: "pool1" '
                           'top: "pool1" }\nlayer { name: "conv2"' % layer)
    assert liveness.input_feeds(_net(net), SHAPES).feeds["conv2"] == ((("conv1", 8),), 1)


def test_feeds_follow_a_squeeze_and_excitation_gate_along_its_input():
    """conv2 reads conv1's channels scaled by a gate: a zero channel stays zero."""
    from test_solver import SE_NET
    assert liveness.input_feeds(_net(SE_NET), SHAPES).feeds["conv2"] == ((("conv1", 8),), 1)


def test_no_feed_through_layers_that_add_a_constant_or_mix_channels():
    for layer in ('layer { name: "sig" type: "Sigmoid" bottom: "pool1" top: "pool1" }',
                  'layer { name: "c" type: "Clip" bottom: "pool1" top: "pool1" '
                  'clip_param { min: 0.5 max: 6 } }',
                  'layer { name: "sum" type: "Eltwise" bottom: "pool1" bottom: "pool1" '
                  'top: "pool1" }'):
        net = TINY_NET.replace('layer { name: "conv2"', layer + '\nlayer { name: "conv2"')
        assert liveness.input_feeds(_net(net), SHAPES).feeds == {"ip1": ((("conv2", 8),), 16)}
    assert liveness.input_feeds(_net(), {"conv2": (8, 8, 3, 3)}).feeds == {}  # conv1 unpruned


GROUPED = TINY_NET.replace("num_output: 8 kernel_size: 3 pad: 1\n    weight_filler { type: "
                           '"xavier" } bias_filler { type: "constant" } } }\nlayer { name: "relu2"',
                           "num_output: 8 kernel_size: 3 pad: 1 group: 2\n    weight_filler { "
                           'type: "xavier" } bias_filler { type: "constant" } } }\nlayer { name: '
                           '"relu2"')


def test_a_grouped_consumer_reads_the_inputs_of_its_group():
    shapes = dict(SHAPES, conv2=(8, 4, 3, 3))
    feeds = liveness.input_feeds(_net(GROUPED), shapes, {"conv2": 2})
    assert feeds.feeds["conv2"] == ((("conv1", 8),), 1)
    assert feeds.describe().startswith("conv2 <- conv1 (group 2)")
    conv1 = np.ones(SHAPES["conv1"], dtype=bool)
    conv1[[1, 6]] = False
    dead = np.zeros((8, 4), dtype=bool)
    dead[:4, 1] = True   # filters 0-3 read channels 0-3: 1 is dead
    dead[4:, 2] = True   # filters 4-7 read channels 4-7: 6 is dead
    np.testing.assert_array_equal(feeds.allowed("conv2", {"conv1": conv1}),
                                  np.broadcast_to(~dead[:, :, None, None], (8, 4, 3, 3)))


def test_a_pruned_grouped_net_keeps_no_dead_inputs(tmp_path, tiny_data, capsys):
    from conftest import write_tiny
    assert GROUPED != TINY_NET
    solver_path, net_path = write_tiny(tmp_path, tiny_data, net=GROUPED, max_iter=60)
    base = solver.train(solver_path, str(tmp_path / "base"), progress=False)
    config = write(tmp_path / "c.prototxt", (CONFIG % {
        "method": "ADMM", "extra": "live_inputs_only: true"}).replace(
        "kind: FILTER_SHAPE filter_keep_ratio: 0.5 shape_keep_ratio: 0.25",
        "kind: FILTER keep_ratio: 0.5"))
    report = solver.prune(solver_path, base["weights"], config, str(tmp_path / "run"),
                          progress=False)
    assert report["layers"]["conv1"]["equal_in_groups"] == {"filter": 2}
    assert report["layers"]["conv2"]["equal_in_groups"] == {"filter": 2}  # its own
    assert report["layers"]["ip1"]["equal_in_groups"] == {}
    masks = np.load(str(tmp_path / "run" / "masks.npz"))
    conv1_alive = masks["conv1"].reshape(8, -1).any(axis=1)
    assert conv1_alive.sum() == 4
    reads = masks["conv2"].any(axis=(2, 3))                       # (8 filters, 4 inputs)
    for g in range(2):
        assert not reads[4 * g:4 * (g + 1), ~conv1_alive[4 * g:4 * (g + 1)]].any()
    # conv1 keeps as many filters in each of conv2's groups, so every pruned one goes
    assert conv1_alive[:4].sum() == conv1_alive[4:].sum() == 2
    assert "conv1 keeps the same number of filters in each of 2 groups" in capsys.readouterr().out
    result = compact.compact(net_path, str(tmp_path / "run" / "pruned.caffemodel"),
                             str(tmp_path / "compact"))
    assert result["plan"]["layers"]["conv1"]["out"] == np.flatnonzero(conv1_alive).tolist()
    assert result["warnings"] == [] and result["equivalence"]["passed"]


def test_channel_pruning_after_a_grouped_convolution_keeps_equal_channels_per_group(
        tmp_path, tiny_data, capsys):
    """conv3 (1x1) reads the two groups of conv2: channel pruning keeps 2 and
    2 of its 8 inputs, and compaction cuts conv2's filters for the other 4."""
    from conftest import write_tiny
    net = GROUPED.replace('layer { name: "ip1" type: "InnerProduct" bottom: "conv2"', """
layer { name: "conv3" type: "Convolution" bottom: "conv2" top: "conv3"
  convolution_param { num_output: 8 kernel_size: 1 weight_filler { type: "xavier" } } }
layer { name: "ip1" type: "InnerProduct" bottom: "conv3\"""")
    assert liveness.group_neighbours(_net(net)) == ({"conv1": 2}, {"conv3": 2})
    solver_path, net_path = write_tiny(tmp_path, tiny_data, net=net, max_iter=60)
    base = solver.train(solver_path, str(tmp_path / "base"), progress=False)
    config = write(tmp_path / "c.prototxt", """
        admm_steps: 4 iters_per_step: 40 retrain_iters: 40 snapshot_interval: 20
        layer { name: "conv3" kind: CHANNEL keep_ratio: 0.5 }""")
    solver.prune(solver_path, base["weights"], config, str(tmp_path / "run"), progress=False)
    assert ("conv3 keeps the same number of input channels in each of the 2 groups"
            in capsys.readouterr().out)
    read = np.load(str(tmp_path / "run" / "masks.npz"))["conv3"].any(axis=(0, 2, 3))
    assert read[:4].sum() == read[4:].sum() == 2
    result = compact.compact(net_path, str(tmp_path / "run" / "pruned.caffemodel"),
                             str(tmp_path / "compact"))
    assert result["plan"]["layers"]["conv2"]["out"] == np.flatnonzero(read).tolist()
    assert result["warnings"] == [] and result["equivalence"]["passed"]


def test_group_neighbours_are_those_of_grouped_convolutions_with_several_inputs_per_group():
    """conv1 is read (through ReLU and pooling) by conv2, two groups of 4
    inputs; conv2 by a depthwise conv3 (one input per group), which asks for
    nothing."""
    net = GROUPED.replace('layer { name: "ip1" type: "InnerProduct" bottom: "conv2"', """
layer { name: "conv3" type: "Convolution" bottom: "conv2" top: "conv3"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 group: 8 } }
layer { name: "ip1" type: "InnerProduct" bottom: "conv3\"""")
    assert "conv3" in net
    assert liveness.group_neighbours(_net(net)) == ({"conv1": 2}, {})
    assert liveness.group_neighbours(_net()) == ({}, {})


CONCAT = TINY_NET.replace('layer { name: "conv2" type: "Convolution" bottom: "pool1"', """
layer { name: "conv1b" type: "Convolution" bottom: "data" top: "conv1b"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "pool1b" type: "Pooling" bottom: "conv1b" top: "pool1b"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "cat" type: "Concat" bottom: "pool1" bottom: "pool1b" top: "cat" }
layer { name: "conv2" type: "Convolution" bottom: "cat\"""")


def test_a_consumer_of_a_concat_reads_each_part_from_its_producer():
    """Inception, DenseNet: conv2 reads conv1's 8 channels, then 4 of conv1b,
    which is not pruned (all live)."""
    shapes = dict(SHAPES, conv2=(8, 12, 3, 3))
    feeds = liveness.input_feeds(_net(CONCAT), shapes)
    assert feeds.feeds["conv2"] == ((("conv1", 8), (None, 4)), 1)
    assert feeds.describe().startswith("conv2 <- conv1 + 4 channels not pruned, ")
    conv1 = np.ones(SHAPES["conv1"], dtype=bool)
    conv1[[1, 6]] = False
    live = np.ones(12, dtype=bool)
    live[[1, 6]] = False
    np.testing.assert_array_equal(feeds.allowed("conv2", {"conv1": conv1}),
                                  np.broadcast_to(live[None, :, None, None], (8, 12, 3, 3)))
    assert feeds.allowed("conv2", {}) is None  # no producer decided yet
    # a Concat along another axis is not followed
    other = CONCAT.replace('top: "cat" }', 'top: "cat" concat_param { axis: 2 } }')
    assert "conv2" not in liveness.input_feeds(_net(other), shapes).feeds


def test_allowed_marks_the_inputs_of_dead_producer_filters():
    feeds = liveness.InputFeeds(["conv2", "ip1"], {"ip1": ((("conv2", 8),), 16)},
                                {"ip1": SHAPES["ip1"]})
    conv2 = np.ones(SHAPES["conv2"], dtype=bool)
    conv2[[1, 6]] = False
    allowed = feeds.allowed("ip1", {"conv2": conv2})
    dead = np.zeros(128, dtype=bool)
    dead[16:32] = dead[96:112] = True
    np.testing.assert_array_equal(allowed, np.broadcast_to(~dead, (4, 128)))
    assert feeds.allowed("ip1", {}) is None      # producer not decided yet
    assert feeds.allowed("conv2", {"conv2": conv2}) is None


def test_ssl_threshold_keeps_no_dead_inputs(tmp_path):
    """SSL's hard prune by threshold: conv1 keeps the 4 filters of large
    norm; with live_inputs_only conv2 and ip1 keep nothing on the channels
    they no longer get (norms taken on the live inputs), without it they do."""
    rng = np.random.default_rng(4)
    weights = {n: rng.standard_normal(s).astype(np.float32) for n, s in SHAPES.items()}
    weights["conv1"][:4] *= 10
    masks = {}
    for extra in ("", "live_inputs_only: true"):
        cfg = load_config(write(tmp_path / "c.prototxt", CONFIG % {
            "method": "SSL", "extra": extra + " ssl_threshold: 0.3"}), _net())
        feeds = liveness.input_feeds(_net(), SHAPES) if cfg.live_inputs_only else None
        masks[extra] = solver.make_method(cfg, feeds=feeds).final_masks(weights)
    for m in masks.values():
        np.testing.assert_array_equal(m["conv1"].reshape(8, -1).any(axis=1), [True] * 4 + [False] * 4)
    live = masks["live_inputs_only: true"]
    assert not live["conv2"][:, 4:].any() and live["conv2"][:, :4].any()
    assert masks[""]["conv2"][:, 4:].any()
    conv2_alive = live["conv2"].reshape(8, -1).any(axis=1)
    assert not live["ip1"][:, np.repeat(~conv2_alive, 16)].any()


@pytest.mark.parametrize("kind", ["filter", "channel", "shape"])
def test_restricted_projection_is_exact(kind):
    rng = np.random.default_rng(3)
    w = rng.standard_normal((3, 3, 1, 2))
    allowed = np.ones(w.shape, dtype=bool)
    allowed[:, 1] = False                    # input channel 1 is dead
    k = 2
    z = projections.project(w, kind, k, allowed=allowed)
    assert not z[~allowed].any()
    n = projections.num_groups(w.shape, kind)
    best = min(
        np.sum((w - np.where(allowed & projections.expand(np.isin(np.arange(n), keep), w.shape,
                                                          kind), w, 0)) ** 2)
        for keep in itertools.combinations(range(n), k))
    assert np.sum((w - z) ** 2) == pytest.approx(best)


def test_admm_z_never_keeps_dead_columns(tmp_path):
    rng = np.random.default_rng(0)
    config = write(tmp_path / "c.prototxt",
                   CONFIG % {"method": "ADMM", "extra": "live_inputs_only: true"})
    cfg = load_config(config, _net())
    assert cfg.live_inputs_only
    weights = {n: rng.standard_normal(s).astype(np.float32) for n, s in SHAPES.items()}
    weights["conv1"][:4] *= 10                # the filters the projection keeps
    feeds = liveness.input_feeds(_net(), SHAPES)
    state = ADMMState.initial(cfg.layers, weights, feeds=feeds)
    for _ in range(2):
        state.update(weights, feeds=feeds)
    conv1_alive = np.abs(state.constraints["conv1"][0].z).reshape(8, -1).any(axis=1)
    assert conv1_alive.tolist() == [True] * 4 + [False] * 4
    for c in state.constraints["conv2"]:
        assert not c.z[:, ~conv1_alive].any()
    masks = state.hard_prune_masks(weights, feeds)
    assert not masks["conv2"][:, ~conv1_alive].any()
    # the column budget is spent in full on live inputs: 25% of 72 columns
    assert masks["conv2"].reshape(8, -1).any(axis=0).sum() == 18
    plain = ADMMState.initial(cfg.layers, weights).hard_prune_masks(weights)
    assert plain["conv2"][:, ~conv1_alive].any()   # without the option, budget goes to dead ones


@pytest.mark.parametrize("net", ["BN_SCALE", "CONCAT"])
def test_a_pruned_net_keeps_no_dead_inputs_through_batchnorm_or_a_concat(tmp_path, tiny_data, net):
    """conv2 reads none of conv1's pruned channels (through BatchNorm + Scale,
    or a Concat with an unpruned conv1b), so compaction cuts none of its kept
    weights (with the Concat it may cut a conv1b filter conv2 no longer reads)."""
    from conftest import write_tiny
    solver_path, _ = write_tiny(tmp_path, tiny_data, net=globals()[net], max_iter=60)
    base = solver.train(solver_path, str(tmp_path / "base"), progress=False)
    config = write(tmp_path / "c.prototxt",
                   CONFIG % {"method": "ADMM", "extra": "live_inputs_only: true"})
    report = solver.prune(solver_path, base["weights"], config, str(tmp_path / "run"),
                          progress=False)
    masks = np.load(str(tmp_path / "run" / "masks.npz"))
    conv1_alive = masks["conv1"].reshape(8, -1).any(axis=1)
    assert conv1_alive.sum() == 4 and not masks["conv2"][:, :8][:, ~conv1_alive].any()
    if net == "BN_SCALE":
        assert report["pruned_layers_total"]["dead_input_weights"] == 0


@pytest.mark.parametrize("method", ["ADMM", "MAGNITUDE", "SSL"])
def test_pruned_runs_keep_no_dead_inputs(tmp_path, tiny_trained, method):
    config = write(tmp_path / "c.prototxt",
                   CONFIG % {"method": method, "extra": "live_inputs_only: true"})
    report = solver.prune(tiny_trained["solver"], tiny_trained["weights"], config,
                          str(tmp_path / "run"), progress=False)
    masks = np.load(str(tmp_path / "run" / "masks.npz"))
    conv1_alive = masks["conv1"].reshape(8, -1).any(axis=1)
    assert conv1_alive.sum() == 4
    assert not masks["conv2"][:, ~conv1_alive].any()
    conv2_alive = masks["conv2"].reshape(8, -1).any(axis=1)
    ip1_dead = np.repeat(~conv2_alive, 16)
    assert not masks["ip1"][:, ip1_dead].any()
    assert report["layers"]["conv2"]["filters_kept"] <= 4
    assert masks["conv2"].reshape(8, -1).any(axis=0).sum() == 18


@pytest.mark.parametrize("extra", ["", "live_inputs_only: true"])
def test_report_counts_the_weights_compaction_keeps(tmp_path, tiny_trained, extra, capsys):
    from caffe_admm import compact, protoio
    config = write(tmp_path / "c.prototxt", CONFIG % {"method": "ADMM", "extra": extra})
    run = tmp_path / "run"
    report = solver.prune(tiny_trained["solver"], tiny_trained["weights"], config, str(run),
                          progress=False)
    total = report["pruned_layers_total"]
    dead = total["nonzero"] - total["compacted_nonzero"]
    assert total["dead_input_weights"] == dead
    noted = "note: compaction cuts" in capsys.readouterr().out
    assert noted == (not extra and dead > 0.01 * total["nonzero"])
    out = compact.compact(str(run / "train_test.prototxt"), str(run / "pruned.caffemodel"),
                          str(tmp_path / "compact"))
    stored = {l.name: np.array(l.blobs[0].data) for l in
              protoio.read_caffemodel(str(tmp_path / "compact" / "compact.caffemodel")).layer
              if l.name in SHAPES}
    assert total["compacted_nonzero"] == sum(int(np.count_nonzero(w)) for w in stored.values())
    assert total["compacted_nonzero"] <= total["nonzero"]
    assert total["compacted_compression"] == pytest.approx(
        total["params"] / total["compacted_nonzero"])
    assert out["total"]["params"] == total["params"]


@pytest.mark.parametrize("live, compacted, noted", [
    (False, 900, True),      # 100 of 1000 kept weights read pruned channels
    (False, 995, False),     # 0.5%: under the 1% threshold
    (True, 900, False),      # the run asked for live inputs already
])
def test_runs_that_spend_budget_on_dead_inputs_say_so(capsys, live, compacted, noted):
    totals = {"params": 10000, "nonzero": 1000, "compression": 10.0,
              "compacted_nonzero": compacted, "compacted_compression": 10000 / compacted}
    solver._note_dead_inputs(totals, live)
    assert totals["dead_input_weights"] == 1000 - compacted
    out = capsys.readouterr().out
    assert ("compaction cuts 100 of the 1000 kept weights (10.0%)" in out) == noted
    assert ("live_inputs_only: true" in out) == noted
    # filters alone: their budget is filters, so nothing to say
    solver._note_dead_inputs(totals, live, input_kinds=False)
    assert totals["dead_input_weights"] == 1000 - compacted and capsys.readouterr().out == ""


def test_no_compacted_size_no_dead_input_count(capsys):
    totals = {"nonzero": 10, "compacted_nonzero": None, "compacted_compression": None}
    solver._note_dead_inputs(totals, False)
    assert totals["dead_input_weights"] is None and capsys.readouterr().out == ""


STREAMS = """
name: "Streams"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 4 dim: 8 dim: 8 } } }
layer { name: "conv_a" type: "Convolution" bottom: "data" top: "conv_a"
  convolution_param { num_output: 4 kernel_size: 1 } }
layer { name: "sum1" type: "Eltwise" bottom: "data" bottom: "conv_a" top: "sum1" }
layer { name: "proj" type: "Convolution" bottom: "sum1" top: "proj"
  convolution_param { num_output: 6 kernel_size: 1 } }
layer { name: "bn" type: "BatchNorm" bottom: "proj" top: "proj" }
layer { name: "c1" type: "Convolution" bottom: "sum1" top: "c1"
  convolution_param { num_output: 6 kernel_size: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "c1" top: "c1" }
layer { name: "c2" type: "Convolution" bottom: "c1" top: "c2"
  convolution_param { num_output: 6 kernel_size: 3 pad: 1 } }
layer { name: "sum2" type: "Eltwise" bottom: "proj" bottom: "c2" top: "sum2" }
layer { name: "relu2" type: "ReLU" bottom: "sum2" top: "sum2" }
layer { name: "c3" type: "Convolution" bottom: "sum2" top: "c3"
  convolution_param { num_output: 6 kernel_size: 1 } }
layer { name: "clip" type: "Clip" bottom: "c3" top: "c3" clip_param { min: 0 max: 6 } }
layer { name: "sum3" type: "Eltwise" bottom: "sum2" bottom: "c3" top: "sum3" }
layer { name: "sig" type: "Sigmoid" bottom: "sum3" top: "sig" }
layer { name: "c4" type: "Convolution" bottom: "sig" top: "c4"
  convolution_param { num_output: 6 kernel_size: 1 } }
layer { name: "sum4" type: "Eltwise" bottom: "sig" bottom: "c4" top: "sum4" }
"""


def test_sum_writers_are_the_streams_writers_through_zero_preserving_layers_and_sums():
    """sum2 and sum3 make one stream (sum3 adds to sum2's output), written by
    proj (through BatchNorm), c2 and c3 (through a ReLU6); the other two
    streams have channels pruning cannot zero: the net input, a Sigmoid's."""
    assert liveness.sum_writers(_net(STREAMS)) == [
        (("conv_a",), "the net input 'data'"), (("proj", "c2", "c3"), None),
        (("c4",), "Sigmoid 'sig'")]
    assert liveness.sum_writers(_net()) == []
    import os
    from caffe_admm.protoio import read_net
    from conftest import ROOT
    for name in ("resnet_mini", "se_resnet_mini"):  # the stem's conv1 and each block's conv2
        net = read_net(os.path.join(ROOT, "prototxt", name + "_deploy.prototxt"))
        assert liveness.sum_writers(net) == [(("conv1", "a_conv2", "b_conv2"), None)]


def test_a_stream_of_a_thousand_sums_is_one_stream():
    """Deeper than Python's recursion limit (a pre-activation ResNet-1001 has
    333 blocks to a stage): each sum's walk stops at the sum before it."""
    blocks = 1200
    text = STREAMS.split('layer { name: "conv_a"')[0] + "".join(
        'layer { name: "c%d" type: "Convolution" bottom: "s%d" top: "c%d" '
        'convolution_param { num_output: 4 kernel_size: 1 } }\n'
        'layer { name: "s%d" type: "Eltwise" bottom: "s%d" bottom: "c%d" top: "s%d" }\n'
        % (i, i - 1, i, i, i - 1, i, i) for i in range(1, blocks + 1))
    text = text.replace('"s0"', '"c0"').replace(
        'layer { name: "c1"', 'layer { name: "c0" type: "Convolution" bottom: "data" top: "c0" '
        'convolution_param { num_output: 4 kernel_size: 1 } }\nlayer { name: "c1"', 1)
    [(writers, other)] = liveness.sum_writers(_net(text))
    assert writers == tuple("c%d" % i for i in range(blocks + 1)) and other is None


def test_coupled_writers_are_decided_together_at_the_first_of_them():
    """masks_in_net_order: conv1 and ip1 coupled, conv2 between them; the
    pair's choice is made at conv1, before conv2 (which reads conv1) and ip1,
    and each gets it at its own turn."""
    feeds = liveness.input_feeds(_net(), SHAPES)
    calls = []

    def choose(writers, alloweds):
        calls.append(("choose", writers, [a is None for a in alloweds]))
        return "chosen"

    def mask_of(name, allowed, chosen):
        calls.append((name, chosen, allowed is None))
        return np.ones(SHAPES[name], bool)
    masks = liveness.masks_in_net_order(["ip1", "conv2", "conv1"], feeds, mask_of,
                                        [("conv1", "ip1")], choose)
    assert list(masks) == ["ip1", "conv2", "conv1"]
    # conv1 reads the data (no pruned producer); conv2 reads conv1, ip1 conv2
    assert calls == [("choose", ("conv1", "ip1"), [True, True]), ("conv1", "chosen", True),
                     ("conv2", None, False), ("ip1", "chosen", False)]


C5 = """layer { name: "c5" type: "Convolution" bottom: "proj" top: "c5"
  convolution_param { num_output: 6 kernel_size: 1 } }
"""
C6 = """layer { name: "c6" type: "Convolution" bottom: "%s" top: "c6"
  convolution_param { num_output: 6 kernel_size: 1 } }
"""
STREAM_READERS = STREAMS.split('layer { name: "sig"')[0] + C5 + C6 % "sum3"
STREAM_SHAPES = {"proj": (6, 4, 1, 1), "c1": (6, 4, 1, 1), "c2": (6, 6, 3, 3),
                 "c3": (6, 6, 1, 1), "c5": (6, 6, 1, 1)}


def test_the_readers_of_a_coupled_stream_have_it_as_producer():
    """c3 reads sum2 (through a ReLU), c5 proj's output through a BatchNorm
    on a summed blob: with proj, c2, c3 coupled, their channels are dead
    where the stream's filters are dropped; uncoupled, nothing is known
    (c6 reads sum3, so that no layer reads the stream's space whole)."""
    stream = ("proj", "c2", "c3")
    feeds = liveness.input_feeds(_net(STREAM_READERS), STREAM_SHAPES, coupled=[stream])
    assert feeds.feeds == {"c2": ((("c1", 6),), 1), "c3": (((stream, 6),), 1),
                           "c5": ((("proj", 6),), 1)}
    assert feeds.describe() == "c2 <- c1, c3 <- the stream of proj and 2 more, c5 <- proj"
    assert liveness.input_feeds(_net(STREAM_READERS), STREAM_SHAPES).feeds == {
        "c2": ((("c1", 6),), 1)}
    # the run zeroes the constants on a channel only where all that writes
    # its space drops it: not where sum3 is a net output (read whole), nor
    # where a Sigmoid joins the space to sum4, which c4 writes too (STREAMS)
    for text in (STREAMS.split('layer { name: "sig"')[0] + C5, STREAMS + C5 + C6 % "sum4"):
        assert liveness.input_feeds(_net(text), STREAM_SHAPES, coupled=[stream]).feeds == {
            "c2": ((("c1", 6),), 1)}
    chosen = np.array([True, False, True, True, False, False])
    allowed = {}

    def mask_of(name, a, chosen_filters):
        allowed[name] = a
        mask = np.ones(STREAM_SHAPES[name], bool)
        return mask if chosen_filters is None else projections.expand(
            chosen_filters, mask.shape, "filter")
    liveness.masks_in_net_order(list(STREAM_SHAPES), feeds, mask_of, [stream],
                                lambda writers, alloweds: chosen)
    assert allowed["proj"] is None and allowed["c1"] is None and allowed["c2"].all()
    for name in ("c3", "c5"):
        np.testing.assert_array_equal(allowed[name].reshape(6, 6), np.tile(chosen, (6, 1)))


@pytest.mark.parametrize("method", ["ADMM", "MAGNITUDE", "SSL"])
def test_a_pruned_residual_net_keeps_no_weights_on_the_dropped_channels_of_its_stream(
        tmp_path, tiny_data, method):
    """test_solver.RESIDUAL_NET: conv1 and conv2 write one sum, which ip1
    reads. Coupled, they keep the same 4 filters, and ip1's whole budget (a
    fifth of its weights) goes to the stream's 4 live channels: compaction
    cuts none of the kept weights."""
    from conftest import write_tiny
    from test_solver import RESIDUAL_NET
    solver_path, net_path = write_tiny(tmp_path, tiny_data, net=RESIDUAL_NET, max_iter=60)
    base = solver.train(solver_path, str(tmp_path / "base"), progress=False)
    config = write(tmp_path / "c.prototxt", """
        method: %s live_inputs_only: true
        rho { initial: 0.05 growth: 2.0 max: 5 }
        admm_steps: 2 iters_per_step: 20 retrain_iters: 40 snapshot_interval: 20
        default { lasso_lambda: 0.01 }
        layer { name: "conv1" kind: FILTER keep_ratio: 0.5 }
        layer { name: "conv2" kind: FILTER keep_ratio: 0.5 }
        layer { name: "ip1" kind: NON_STRUCTURED keep_ratio: 0.2 }""" % method)
    report = solver.prune(solver_path, base["weights"], config, str(tmp_path / "run"),
                          progress=False)
    assert report["coupled"] == [["conv1", "conv2"]]
    masks = np.load(str(tmp_path / "run" / "masks.npz"))
    alive = masks["conv1"].reshape(8, -1).any(axis=1)
    assert alive.sum() == 4
    np.testing.assert_array_equal(masks["conv2"].reshape(8, -1).any(axis=1), alive)
    assert not masks["ip1"][:, np.repeat(~alive, 16)].any()
    assert masks["ip1"].sum() == round(0.2 * masks["ip1"].size)
    assert report["pruned_layers_total"]["dead_input_weights"] == 0


def _with_depthwise(output=8):
    """TINY_NET with a 3x3 depthwise convolution (group 8) between pool1 and conv2."""
    return TINY_NET.replace(
        'layer { name: "conv2" type: "Convolution" bottom: "pool1"',
        'layer { name: "dw" type: "Convolution" bottom: "pool1" top: "dw"\n'
        '  convolution_param { num_output: %d group: 8 kernel_size: 3 pad: 1\n'
        '    weight_filler { type: "xavier" } bias_filler { type: "constant" value: 0.1 } } }\n'
        'layer { name: "conv2" type: "Convolution" bottom: "dw"' % output)


def test_feeds_follow_a_depthwise_convolution_left_unpruned():
    """Channel c of the depthwise output reads conv1's channel c alone (its
    bias held at zero there): conv2 reads conv1. Pruned itself, dw is conv2's
    producer; with two filters per group it mixes nothing but is no longer
    one to one, so nothing is known."""
    assert liveness.input_feeds(_net(_with_depthwise()), SHAPES).feeds["conv2"] == (
        (("conv1", 8),), 1)
    shapes = dict(SHAPES, dw=(8, 1, 3, 3))
    assert liveness.input_feeds(_net(_with_depthwise()), shapes).feeds["conv2"] == (
        (("dw", 8),), 1)
    assert "conv2" not in liveness.input_feeds(_net(_with_depthwise(16)),
                                               dict(SHAPES, conv2=(8, 16, 3, 3))).feeds


def test_a_pruned_net_keeps_no_dead_inputs_through_a_depthwise_convolution(tmp_path, tiny_data):
    """MobileNet's pattern: conv1 pruned, the depthwise dw left out by
    global_keep_ratio (its bias on conv1's pruned channels held at zero),
    conv2's columns chosen among the live channels: compaction cuts no kept
    weight."""
    from conftest import write_tiny
    solver_path, _ = write_tiny(tmp_path, tiny_data, net=_with_depthwise(), max_iter=60)
    base = solver.train(solver_path, str(tmp_path / "base"), progress=False)
    config = write(tmp_path / "c.prototxt", """
        method: ADMM live_inputs_only: true
        rho { initial: 0.05 growth: 2.0 max: 5 }
        admm_steps: 2 iters_per_step: 20 retrain_iters: 40 snapshot_interval: 20
        default { kind: FILTER_SHAPE } global_keep_ratio: 0.5""")
    report = solver.prune(solver_path, base["weights"], config, str(tmp_path / "run"),
                          progress=False)
    assert report["left_out"] == {"dw": "kind FILTER_SHAPE does not fit a grouped convolution "
                                        "(group=8); its channels go with the filters of the "
                                        "layer that feeds it"}
    masks = np.load(str(tmp_path / "run" / "masks.npz"))
    alive = masks["conv1"].reshape(8, -1).any(axis=1)
    assert alive.sum() == 4 and not masks["conv2"][:, ~alive].any()
    assert report["pruned_layers_total"]["dead_input_weights"] == 0

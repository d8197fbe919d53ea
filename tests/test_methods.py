"""SSL group Lasso and iterative magnitude pruning, through the same loop as ADMM."""

import json
import os

import numpy as np
import pytest

from caffe_admm import layers, methods, projections, solver
from caffe_admm.backend import caffe

from conftest import write
from test_solver import _InterruptAt


@pytest.mark.parametrize("kind", projections.KINDS)
def test_group_lasso_gradient_matches_finite_difference(kind):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 2, 2))
    w[1] = 0              # a zero filter
    w[:, 2] = 0           # a zero channel
    value, grad = methods.lasso_penalty(w, kind, 0.3)
    norms = projections.group_norms(w, kind)
    assert value == pytest.approx(0.3 * norms.sum())
    zero_groups = projections.expand(norms == 0, w.shape, kind)
    assert np.all(grad[zero_groups] == 0)    # the subgradient chosen at W_g = 0
    eps = 1e-6
    for idx in zip(*np.nonzero(~zero_groups)):
        wp, wm = w.copy(), w.copy()
        wp[idx] += eps
        wm[idx] -= eps
        numeric = (methods.lasso_penalty(wp, kind, 0.3)[0]
                   - methods.lasso_penalty(wm, kind, 0.3)[0]) / (2 * eps)
        assert grad[idx] == pytest.approx(numeric, rel=1e-5, abs=1e-7)


def test_joint_group_lasso_gradient_matches_finite_difference():
    """The filters of a conv and an InnerProduct weight in one Lasso group
    each, with different lambdas; filter 1 zero in both."""
    rng = np.random.default_rng(2)
    ws = [rng.standard_normal((4, 3, 2, 2)), rng.standard_normal((4, 5))]
    ws[0][1] = ws[1][1] = 0
    lams = [0.3, 0.7]
    scaled = np.sqrt(sum((lam * projections.group_norms(w, "filter")) ** 2
                         for lam, w in zip(lams, ws)))
    eps = 1e-6
    for own in (0, 1):
        value, grad = methods.joint_lasso_penalty(ws, lams, own)
        assert value == pytest.approx(scaled.sum())
        assert grad.shape == ws[own].shape and not grad[1].any()
        for idx in zip(*np.nonzero(ws[own])):
            wp, wm = [w.copy() for w in ws], [w.copy() for w in ws]
            wp[own][idx] += eps
            wm[own][idx] -= eps
            numeric = (methods.joint_lasso_penalty(wp, lams)[0]
                       - methods.joint_lasso_penalty(wm, lams)[0]) / (2 * eps)
            assert grad[idx] == pytest.approx(numeric, rel=1e-5, abs=1e-7)
    # equal lambdas: lambda times the joint norms; one weight: the layer's own Lasso
    value, _ = methods.joint_lasso_penalty(ws, [0.3, 0.3], 1)
    assert value == pytest.approx(0.3 * projections.joint_group_norms(ws, "filter").sum())
    value, grad = methods.joint_lasso_penalty(ws[:1], [0.3])
    alone = methods.lasso_penalty(ws[0], "filter", 0.3)
    assert value == pytest.approx(alone[0])
    np.testing.assert_allclose(grad, alone[1])


SUM_NET = """
name: "stream"
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 5 dim: 5 } } }
layer { name: "a" type: "Convolution" bottom: "x" top: "a"
        convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "b" type: "Convolution" bottom: "x" top: "b"
        convolution_param { num_output: 4 kernel_size: 1 stride: 2 bias_term: false
          weight_filler { type: "xavier" } } }
layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "b" top: "sum" }
"""


def test_ssl_hooks_of_a_coupled_streams_writers_share_their_filter_groups(tmp_path):
    """a and b write one sum: SSL's hooks add the joint Lasso's subgradient
    to each (computed from both weights) and half its value each; with
    ``couple_sums: false``, each its own."""
    from google.protobuf import text_format
    from caffe_admm import protoio
    from caffe_admm.backend import caffe_pb2
    from caffe_admm.config import load_config
    net_param = text_format.Parse(SUM_NET, caffe_pb2.NetParameter())
    path = str(tmp_path / "h.prototxt")
    protoio.write_text(path, solver.add_hooks(net_param, {"a": [(4, 3, 3, 3), (4,)],
                                                          "b": [(4, 3, 1, 1)]}))
    net = caffe.Net(path, caffe.TRAIN)
    hooks = solver._hook_layers(net)
    rng = np.random.default_rng(3)
    for name in "ab":
        net.params[name][0].data[...] = rng.standard_normal(net.params[name][0].data.shape)
    w = {n: net.params[n][0].data.copy() for n in "ab"}
    for couple, lam_b in ((True, 0.25), (True, 0.0625), (False, 0.0625)):
        config = load_config(write(tmp_path / "c.prototxt", """
            method: SSL admm_steps: 1
            default { kind: FILTER keep_ratio: 0.5 lasso_lambda: 0.25 }
            layer { name: "a" } layer { name: "b" lasso_lambda: %g } %s""" % (
            lam_b, "" if couple else "couple_sums: false")), net_param)
        assert config.coupled == ((("a", "b"),) if couple else ())
        method = methods.make_method(config)
        assert method.hook_terms("a")["lasso"] == [(0.25, "filter", (("b", lam_b),) if couple
                                                    else ())]
        solver._set_hooks(hooks, method)
        out = net.forward()
        for name in "ab":
            net.params[name][0].diff[...] = 0
        net.backward()
        lams = {"a": 0.25, "b": lam_b}
        for own, other in ("ab", "ba"):
            if couple:
                value, grad = methods.joint_lasso_penalty([w[own], w[other]],
                                                          [lams[own], lams[other]])
                value /= 2
            else:
                value, grad = methods.lasso_penalty(w[own], "filter", lams[own])
            assert out[layers.HOOK_PREFIX + own].item() == pytest.approx(value, rel=1e-5)
            np.testing.assert_allclose(net.params[own][0].diff, grad, rtol=1e-5, atol=1e-7)
    # the joint gradient differs from each layer's own
    assert not np.allclose(methods.joint_lasso_penalty([w["a"], w["b"]], [0.25, 0.25])[1],
                           methods.lasso_penalty(w["a"], "filter", 0.25)[1])


def test_hook_injects_the_group_lasso_subgradient(tmp_path):
    from test_layers import NET, SHAPE
    from google.protobuf import text_format
    from caffe_admm.backend import caffe_pb2
    from caffe_admm import protoio
    hooked = solver.add_hooks(text_format.Parse(NET, caffe_pb2.NetParameter()),
                              {"conv": [SHAPE, (4,)]})
    path = str(tmp_path / "h.prototxt")
    protoio.write_text(path, hooked)
    net = caffe.Net(path, caffe.TRAIN)
    hook = solver._hook_layers(net)["conv"]
    w = net.params["conv"][0].data
    w[...] = np.random.default_rng(1).standard_normal(SHAPE)
    w[2] = 0
    hook.lasso = [(0.2, "filter", ()), (0.05, "shape", ())]
    out = net.forward()
    net.params["conv"][0].diff[...] = 0
    net.backward()
    v1, g1 = methods.lasso_penalty(w, "filter", 0.2)
    v2, g2 = methods.lasso_penalty(w, "shape", 0.05)
    assert out[layers.HOOK_PREFIX + "conv"].item() == pytest.approx(v1 + v2, rel=1e-5)
    np.testing.assert_allclose(net.params["conv"][0].diff, g1 + g2, rtol=1e-5, atol=1e-7)


CONFIG = """
method: %(method)s
admm_steps: 4
iters_per_step: 40
retrain_iters: 40
snapshot_interval: 20
default { lasso_lambda: 0.01 }
%(extra)s
layer { name: "conv1" kind: FILTER keep_ratio: 0.5 }
layer { name: "conv2" kind: FILTER_SHAPE filter_keep_ratio: 0.5 shape_keep_ratio: 0.25 }
layer { name: "ip1" kind: NON_STRUCTURED keep_ratio: 0.2 }
"""


def cfg(tmp_path, method, extra=""):
    return write(tmp_path / ("%s.prototxt" % method), CONFIG % {"method": method, "extra": extra})


@pytest.mark.parametrize("method, extra", [
    ("SSL", ""), ("MAGNITUDE", ""), ("ADMM", "prune_stages: 2"),
    ("ADMM", "prune_stages: 2 penalty_pruned_only: false")])
def test_matched_sparsity_is_exact(tmp_path, tiny_trained, method, extra):
    report = solver.prune(tiny_trained["solver"], tiny_trained["weights"],
                          cfg(tmp_path, method, extra), str(tmp_path / "run"), progress=False)
    lay = report["layers"]
    assert report["method"] == method.lower()
    assert lay["conv1"]["filters_kept"] == 4
    assert lay["conv2"]["filters_kept"] <= 4 and lay["conv2"]["shapes_kept"] <= 18
    assert lay["conv2"]["nonzero"] <= 4 * 18
    assert lay["ip1"]["nonzero"] == round(0.2 * lay["ip1"]["params"])
    assert set(report["accuracy"]) == {"baseline", "after_" + method.lower(),
                                       "after_hard_prune", "after_retrain"}
    assert len(report["steps"]) == 4
    if method == "MAGNITUDE":
        kept = [s["kept"]["conv1"] for s in report["steps"]]
        assert kept == sorted(kept, reverse=True) and kept[-1] == pytest.approx(0.5)
    if method == "ADMM":  # stage 1 of 2 ends after step 2 with a hard prune halfway: 6 of 8
        assert report["schedule"]["penalty_pruned_only"] == ("penalty" not in extra)
        assert [set(s) >= {"kept"} for s in report["steps"]] == [False, True, False, False]
        assert report["steps"][1]["kept"]["conv1"] == pytest.approx(0.75)


@pytest.mark.parametrize("method, extra", [
    ("ADMM", ""), ("ADMM", "prune_stages: 2"), ("SSL", ""),
    ("ADMM", "live_inputs_only: true")])
def test_target_masks_are_the_hard_prune_of_unchanged_weights(tmp_path, tiny_trained, method,
                                                              extra):
    """What ``prune --check`` shows: the hard prune of a run whose weights
    did not move, mask for mask (ADMM's from Z, SSL's by group norm)."""
    from caffe_admm import liveness
    from caffe_admm.config import load_config
    from caffe_admm.protoio import read_net
    net_param = read_net(tiny_trained["net"])
    config = load_config(cfg(tmp_path, method, extra), net_param)
    net = caffe.Net(tiny_trained["net"], caffe.TEST, weights=tiny_trained["weights"])
    weights = {s.name: net.params[s.name][0].data.copy() for s in config.layers}
    feeds = None
    if config.live_inputs_only:
        feeds = liveness.input_feeds(net_param, {n: w.shape for n, w in weights.items()},
                                     {s.name: s.group for s in config.layers}, config.coupled)
    run = methods.make_method(config, feeds=feeds)
    run.start(weights)
    expected, got = run.final_masks(weights), methods.target_masks(config, weights, feeds)
    assert sorted(got) == sorted(expected) == ["conv1", "conv2", "ip1"]
    for name in got:
        assert np.array_equal(got[name], expected[name]), name
    assert got["ip1"].sum() == round(0.2 * got["ip1"].size)
    if feeds is not None:  # ip1 keeps nothing on conv2's pruned channels
        dead = ~got["conv2"].reshape(8, -1).any(axis=1)
        assert not got["ip1"].reshape(4, 8, -1)[:, dead].any()


def test_ssl_threshold_zeroes_small_groups_exactly(tmp_path, tiny_trained):
    config = cfg(tmp_path, "SSL", "ssl_threshold: 0.3")
    solver.prune(tiny_trained["solver"], tiny_trained["weights"], config,
                 str(tmp_path / "run"), progress=False)
    run = str(tmp_path / "run")
    before = caffe.Net(tiny_trained["net"], caffe.TEST, weights=os.path.join(run, "ssl.caffemodel"))
    w = before.params["conv1"][0].data
    norms = projections.group_norms(w, "filter")
    assert np.all(norms[norms < 0.3 * norms.max()] == 0)  # only zeros below the threshold
    with open(os.path.join(run, "report.json")) as f:
        assert json.load(f)["schedule"]["ssl_threshold"] == pytest.approx(0.3)


@pytest.mark.parametrize("method, extra", [("MAGNITUDE", ""), ("ADMM", "prune_stages: 2")])
def test_run_with_masks_in_its_first_phase_resumes_to_the_same_weights(
        tmp_path, tiny_trained, monkeypatch, method, extra):
    config = cfg(tmp_path, method, extra)
    args = (tiny_trained["solver"], tiny_trained["weights"], config)
    solver.prune(*args, str(tmp_path / "a"), progress=False)
    with monkeypatch.context() as m:
        _InterruptAt(m, 95)
        with pytest.raises(KeyboardInterrupt):
            solver.prune(*args, str(tmp_path / "b"), progress=False)
    with open(tmp_path / "b" / "checkpoints" / "meta.json") as f:
        meta = json.load(f)
    assert meta["phase"] == method.lower()  # interrupted after the first masks
    assert "masks/conv1" in np.load(meta["method_state"])
    solver.prune(*args, str(tmp_path / "b"), progress=False)
    a = caffe.Net(tiny_trained["net"], caffe.TEST, weights=str(tmp_path / "a" / "pruned.caffemodel"))
    b = caffe.Net(tiny_trained["net"], caffe.TEST, weights=str(tmp_path / "b" / "pruned.caffemodel"))
    for name in a.params:
        for x, y in zip(a.params[name], b.params[name]):
            np.testing.assert_array_equal(x.data, y.data)


@pytest.mark.parametrize("method, extra", [("MAGNITUDE", ""), ("SSL", ""),
                                           ("SSL", "ssl_threshold: 0.5"), ("ADMM", "")])
def test_every_method_prunes_a_streams_writers_to_the_same_filters(tmp_path, method, extra):
    """test_liveness.STREAMS' proj, c2 and c3 keep the same 3 of their 6
    filters, those of largest joint norm (SSL's threshold: joint norms over
    0.5 x the largest), though each alone would keep others."""
    from google.protobuf import text_format
    from caffe_admm.backend import caffe_pb2
    from caffe_admm.config import load_config
    from test_liveness import STREAMS
    net = text_format.Parse(STREAMS, caffe_pb2.NetParameter())
    config = load_config(write(tmp_path / "c.prototxt", "method: %s admm_steps: 1 %s\n"
                               "default { kind: FILTER } global_keep_ratio: 0.5" % (method, extra)),
                         net)
    rng = np.random.default_rng(6)
    shapes = {"conv_a": (4, 4, 1, 1), "proj": (6, 4, 1, 1), "c1": (6, 4, 1, 1),
              "c2": (6, 6, 3, 3), "c3": (6, 6, 1, 1), "c4": (6, 6, 1, 1)}
    weights = {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
    for name, big in (("proj", [0, 1]), ("c2", [2, 3]), ("c3", [4, 5])):
        weights[name][big] *= 3  # alone, each would keep its own two and one more
    method = methods.make_method(config)
    method.start(weights)
    masks = method.final_masks(weights)
    kept = {n: masks[n].reshape(6, -1).any(axis=1) for n in ("proj", "c2", "c3")}
    norms = np.sqrt(sum(projections.group_norms(weights[n], "filter") ** 2 for n in kept))
    expected = (norms >= 0.5 * norms.max() if "threshold" in extra
                else np.isin(np.arange(6), np.argsort(-norms)[:3]))
    for k in kept.values():
        np.testing.assert_array_equal(k, expected)
    assert 0 < expected.sum() < 6


def test_slimming_puts_the_lasso_on_the_batchnorm_scale_and_ranks_filters_by_it(tmp_path,
                                                                               tiny_data):
    """Network Slimming on BN_NET's conv1 (conv1 -> bn1 -> scale1): the
    Lasso goes on scale1's gamma (conv1's hook adds nothing), which it
    shrinks; the hard prune keeps the 4 filters of largest |gamma|, as
    `prune --check` predicts from the starting weights."""
    from caffe_admm.config import ConfigError, load_config
    from caffe_admm.protoio import read_net
    from conftest import TINY_NET, write_tiny
    from test_solver import BN_NET
    solver_path, net_path = write_tiny(tmp_path, tiny_data, net=BN_NET, max_iter=60)
    base = solver.train(solver_path, str(tmp_path / "base"), progress=False)["weights"]
    config = write(tmp_path / "c.prototxt", """
        method: SLIMMING admm_steps: 2 iters_per_step: 20 retrain_iters: 20
        snapshot_interval: 20
        layer { name: "conv1" kind: FILTER keep_ratio: 0.5 lasso_lambda: 1 }""")
    cfg_ = load_config(config, read_net(net_path))
    assert cfg_.scales == (("conv1", "scale1"),)
    method = methods.make_method(cfg_)
    assert method.hook_terms("conv1") == {}
    assert method.hook_terms("scale1") == {"lasso": [(1.0, "filter", ())]}
    start = caffe.Net(net_path, caffe.TEST, weights=base)
    gamma0 = start.params["scale1"][0].data.copy()
    checked = solver.check(solver_path, base, config)
    assert checked["layers"]["conv1"]["kept_out"] == sorted(np.argsort(-np.abs(gamma0))[:4])
    report = solver.prune(solver_path, base, config, str(tmp_path / "run"), progress=False)
    assert report["method"] == "slimming" and report["layers"]["conv1"]["lasso_on"] == "scale1"
    assert report["layers"]["conv1"]["filters_kept"] == 4
    hard = caffe.Net(net_path, caffe.TEST, weights=str(tmp_path / "run" / "slimming.caffemodel"))
    gamma = np.abs(hard.params["scale1"][0].data)
    assert gamma.mean() < 0.5 * np.abs(gamma0).mean()  # the Lasso's pull
    kept = np.abs(hard.params["conv1"][0].data).reshape(8, -1).any(axis=1)
    assert np.flatnonzero(kept).tolist() == sorted(np.argsort(-gamma)[:4])
    # a layer without BatchNorm + Scale after it, and a kind with other groups, are refused
    (tmp_path / "p").mkdir()
    _, plain = write_tiny(tmp_path / "p", tiny_data, net=TINY_NET)
    with pytest.raises(ConfigError, match=r"method SLIMMING puts the Lasso on the scale of the "
                       r"BatchNorm and Scale that follow the layer; after 'conv1' come 'relu1' "
                       r"\(ReLU\)"):
        load_config(config, read_net(plain))
    with pytest.raises(ConfigError, match="kind FILTER_SHAPE has other groups"):
        load_config(write(tmp_path / "c2.prototxt", "method: SLIMMING layer { name: 'conv1' "
                          "kind: FILTER_SHAPE keep_ratio: 0.5 }"), read_net(net_path))


def test_slimming_couples_a_streams_writers_by_their_joint_scales(tmp_path, tiny_data):
    """RESIDUAL_NET: conv1 and conv2 (each through BatchNorm and Scale) write
    one sum; SLIMMING at half their filters keeps the same 4 in both, those
    of largest sqrt(gamma_1^2 + gamma_2^2) at the end of the first phase. ip1
    (no BatchNorm after it) is kept whole, so it needs none."""
    from test_solver import RESIDUAL_NET
    from conftest import write_tiny
    solver_path, net_path = write_tiny(tmp_path, tiny_data, net=RESIDUAL_NET, max_iter=60)
    base = solver.train(solver_path, str(tmp_path / "base"), progress=False)["weights"]
    config = write(tmp_path / "c.prototxt", """
        method: SLIMMING admm_steps: 2 iters_per_step: 20 retrain_iters: 20
        snapshot_interval: 20 default { lasso_lambda: 0.01 } global_keep_ratio: 0.5
        layer { name: "ip1" keep_ratio: 1 }""")
    report = solver.prune(solver_path, base, config, str(tmp_path / "run"), progress=False)
    assert report["coupled"] == [["conv1", "conv2"]]
    assert report["layers"]["ip1"]["lasso_on"] is None
    hard = caffe.Net(net_path, caffe.TEST, weights=str(tmp_path / "run" / "slimming.caffemodel"))
    kept = {n: np.abs(hard.params[n][0].data).reshape(8, -1).any(axis=1).nonzero()[0].tolist()
            for n in ("conv1", "conv2")}
    joint = np.hypot(hard.params["scale1"][0].data, hard.params["scale2"][0].data)
    assert kept["conv1"] == kept["conv2"] == sorted(np.argsort(-joint)[:4])


def test_the_lasso_of_a_per_channel_scale_is_l1_and_joint_over_a_stream():
    gamma = np.array([0.5, -2.0, 0.0, 1.5])
    value, grad = methods.lasso_penalty(gamma, "filter", 0.1)
    assert value == pytest.approx(0.1 * 4.0) and grad.shape == (4,)
    assert np.allclose(grad, 0.1 * np.sign(gamma))
    other = np.array([1.2, 0.0, 0.0, 2.0])
    value, grad = methods.joint_lasso_penalty([gamma, other], [0.1, 0.1])
    assert value == pytest.approx(0.1 * np.hypot(gamma, other).sum())
    assert np.allclose(grad, 0.01 * gamma / np.where(np.hypot(gamma, other) > 0,
                                                      0.1 * np.hypot(gamma, other), 1))


def _three_scaled_net():
    """RESIDUAL_NET with conv3 (6 filters, BatchNorm, Scale) after the sum:
    a stream of two writers (conv1, conv2) and a layer of its own."""
    from test_solver import RESIDUAL_NET
    old = 'layer { name: "ip1" type: "InnerProduct" bottom: "sum"'
    assert old in RESIDUAL_NET
    return RESIDUAL_NET.replace(old, (
        'layer { name: "conv3" type: "Convolution" bottom: "sum" top: "conv3"\n'
        '  convolution_param { num_output: 6 kernel_size: 3 pad: 1\n'
        '    weight_filler { type: "xavier" } bias_filler { type: "constant" } } }\n'
        'layer { name: "bn3" type: "BatchNorm" bottom: "conv3" top: "conv3" }\n'
        'layer { name: "scale3" type: "Scale" bottom: "conv3" top: "conv3" '
        'scale_param { bias_term: true } }\n'
        'layer { name: "ip1" type: "InnerProduct" bottom: "conv3"'))


def test_slimming_global_ranks_all_the_layers_scales_together_at_the_same_total(tmp_path):
    """Half of each layer's filters: 8 of the stream's (4 per writer) and 3
    of conv3's, 11 in all. Ranked together, each keeps its largest channel;
    then conv3's 1.0, the stream's 0.8 (two filters), conv3's 0.5 and 0.4,
    the stream's 0.15 (two), and with one filter left, conv3's 0.02, which
    fits where the stream's 0.14 does not: the stream keeps 3 channels,
    conv3 5."""
    from google.protobuf import text_format
    from caffe_admm.backend import caffe_pb2
    from caffe_admm.config import ConfigError, load_config

    def parse_net(text):
        return text_format.Parse(text, caffe_pb2.NetParameter())
    net = parse_net(_three_scaled_net() % {"train": "t", "test": "t"})
    text = ("method: SLIMMING default { kind: FILTER } global_keep_ratio: 0.5 %s "
            'layer { name: "ip1" keep_ratio: 1 }')
    cfg = load_config(write(tmp_path / "g.prototxt", text % "slimming_global: true"), net)
    assert cfg.slimming_global and cfg.coupled == (("conv1", "conv2"),)
    rng = np.random.default_rng(3)
    shapes = {"conv1": (8, 1, 3, 3), "conv2": (8, 8, 3, 3), "conv3": (6, 8, 3, 3),
              "ip1": (4, 6 * 14 * 14)}
    weights = {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
    stream = np.array([0.9, 0.8, 0.15, 0.14, 0.13, 0.12, 0.11, 0.05])
    weights.update(scale1=stream * [1, -1, 1, 1, -1, 1, 1, 1], scale2=stream,
                   scale3=np.array([2.0, 1.0, 0.5, -0.4, 0.01, 0.02]))

    def kept(masks):
        return {n: np.flatnonzero(masks[n].reshape(len(masks[n]), -1).any(axis=1)).tolist()
                for n in ("conv1", "conv2", "conv3")}
    assert kept(methods.target_masks(cfg, weights)) == {
        "conv1": [0, 1, 2], "conv2": [0, 1, 2], "conv3": [0, 1, 2, 3, 5]}
    method = methods.make_method(cfg)
    assert kept(method.final_masks(weights)) == kept(methods.target_masks(cfg, weights))
    # each layer on its own: 4 and 3
    alone = load_config(write(tmp_path / "a.prototxt", text % ""), net)
    assert kept(methods.target_masks(alone, weights)) == {
        "conv1": [0, 1, 2, 3], "conv2": [0, 1, 2, 3], "conv3": [0, 1, 2]}
    # a layer whose scales all fall below the others' still keeps its largest
    weights["scale3"] = np.array([0.001, 0.004, 0.002, 0.003, 0.0, 0.0])
    assert kept(methods.target_masks(cfg, weights)) == {
        "conv1": [0, 1, 2, 3, 4], "conv2": [0, 1, 2, 3, 4], "conv3": [1]}

    with pytest.raises(ConfigError, match="slimming_global applies to method SLIMMING only"):
        load_config(write(tmp_path / "s.prototxt", (text % "slimming_global: true").replace(
            "method: SLIMMING", "method: SSL")), net)
    with pytest.raises(ConfigError, match="slimming_global and ssl_threshold each decide"):
        load_config(write(tmp_path / "t.prototxt", text % "slimming_global: true "
                          "ssl_threshold: 0.1"), net)
    grouped = parse_net(_three_scaled_net().replace(
        "num_output: 6 kernel_size: 3 pad: 1", "num_output: 6 kernel_size: 3 pad: 1 group: 2")
        % {"train": "t", "test": "t"})
    with pytest.raises(ConfigError, match=r"layer 'conv3', field name: slimming_global ranks "
                                          r"single channels across layers, and this layer must "
                                          r"keep the same number of filters in each of its 2 "
                                          r"groups"):
        load_config(str(tmp_path / "g.prototxt"), grouped)


def test_slimming_min_keep_ratio_is_a_floor_under_the_global_ranking(tmp_path):
    """The net and budget of the test above, with conv3's scales all below
    the stream's: alone, the ranking leaves conv3 one filter. With a floor
    of 0.25 each writer first keeps 2 of 8 and conv3 2 of 6 (rounded as keep
    ratios are); the 5 filters left go to the stream's 0.15 and 0.14 (two
    each) and, where the 0.13 no longer fits, conv3's 0.002."""
    from google.protobuf import text_format
    from caffe_admm.backend import caffe_pb2
    from caffe_admm.config import ConfigError, load_config
    net = text_format.Parse(_three_scaled_net() % {"train": "t", "test": "t"},
                            caffe_pb2.NetParameter())
    text = ("method: SLIMMING default { kind: FILTER } global_keep_ratio: 0.5 %s "
            'layer { name: "ip1" keep_ratio: 1 }')
    cfg = load_config(write(tmp_path / "f.prototxt", text % "slimming_global: true "
                            "slimming_min_keep_ratio: 0.25"), net)
    assert cfg.slimming_min_keep == 0.25
    rng = np.random.default_rng(3)
    shapes = {"conv1": (8, 1, 3, 3), "conv2": (8, 8, 3, 3), "conv3": (6, 8, 3, 3),
              "ip1": (4, 6 * 14 * 14)}
    weights = {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
    stream = np.array([0.9, 0.8, 0.15, 0.14, 0.13, 0.12, 0.11, 0.05])
    weights.update(scale1=stream, scale2=stream,
                   scale3=np.array([0.001, 0.004, 0.002, 0.003, 0.0, 0.0]))
    masks = methods.target_masks(cfg, weights)
    assert {n: np.flatnonzero(masks[n].reshape(len(masks[n]), -1).any(axis=1)).tolist()
            for n in ("conv1", "conv2", "conv3")} == {
        "conv1": [0, 1, 2, 3], "conv2": [0, 1, 2, 3], "conv3": [1, 2, 3]}

    with pytest.raises(ConfigError, match="slimming_min_keep_ratio is the floor of "
                                          "slimming_global's ranking"):
        load_config(write(tmp_path / "n.prototxt", text % "slimming_min_keep_ratio: 0.25"), net)
    with pytest.raises(ConfigError, match=r"layer 'conv1', field keep_ratio: "
                                          r"slimming_min_keep_ratio 0.6 is above this layer's "
                                          r"keep ratio 0.5"):
        load_config(write(tmp_path / "o.prototxt", text % "slimming_global: true "
                          "slimming_min_keep_ratio: 0.6"), net)


def test_a_slimming_global_run_keeps_the_total_and_says_how_it_shared_it(tmp_path, tiny_data,
                                                                         capsys):
    from conftest import write_tiny
    solver_path, net_path = write_tiny(tmp_path, tiny_data, net=_three_scaled_net(),
                                       max_iter=40)
    base = solver.train(solver_path, str(tmp_path / "base"), progress=False)["weights"]
    config = write(tmp_path / "c.prototxt", """
        method: SLIMMING slimming_global: true admm_steps: 2 iters_per_step: 10
        retrain_iters: 10 snapshot_interval: 10 default { kind: FILTER lasso_lambda: 0.01 }
        global_keep_ratio: 0.5 layer { name: "ip1" keep_ratio: 1 }
        layer { name: "conv3" keep_ratio: 0.5 lasso_lambda: 2 }""")
    checked = solver.check(solver_path, base, config)
    assert any(c.startswith("slimming_global: how many filters each layer keeps, not only "
                            "which, comes from the run's trained scales") for c in checked["caveats"])
    capsys.readouterr()
    report = solver.prune(solver_path, base, config, str(tmp_path / "run"), progress=False)
    kept = {n: report["layers"][n]["filters_kept"] for n in ("conv1", "conv2", "conv3")}
    assert report["schedule"]["slimming_global"]
    assert sum(kept.values()) == 11 and kept["conv1"] == kept["conv2"] and min(kept.values()) >= 1
    line = next(l for l in capsys.readouterr().out.splitlines() if "slimming_global:" in l)
    assert line.endswith("slimming_global: filters kept, the scales of all the layers ranked "
                         "together (keep_ratio alone): conv3 %d/6 (3), conv1 %d/8 (4), "
                         "conv2 %d/8 (4)" % (kept["conv3"], kept["conv1"], kept["conv2"]))
    # the counts of one ranking of the scales at the end of the first phase
    # (conv3's, pulled harder, mostly below the stream's)
    from caffe_admm.config import load_config
    from caffe_admm.protoio import read_net
    end = caffe.Net(net_path, caffe.TEST, weights=str(
        tmp_path / "run" / "checkpoints" / "slimming_iter_20.caffemodel"))
    masks = methods.target_masks(load_config(config, read_net(net_path)), {
        n: end.params[n][0].data for n in ("conv1", "conv2", "conv3", "ip1", "scale1",
                                           "scale2", "scale3")})
    assert kept == {n: masks[n].reshape(len(masks[n]), -1).any(axis=1).sum()
                    for n in ("conv1", "conv2", "conv3")}
    assert kept["conv3"] < 3
    hard = caffe.Net(net_path, caffe.TEST, weights=str(tmp_path / "run" / "slimming.caffemodel"))
    kept3 = np.abs(hard.params["conv3"][0].data).reshape(6, -1).any(axis=1)
    assert kept3.sum() == kept["conv3"]

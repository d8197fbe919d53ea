"""The loop around the Caffe solver: ADMM pruning, masked retraining, resume."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from google.protobuf import text_format

from caffe_admm import layers, solver
from caffe_admm.backend import caffe, caffe_pb2
from caffe_admm.masks import load_masks
from caffe_admm.protoio import ProtoError

from conftest import ROOT, TINY_NET, write, write_tiny

CONFIG = """
rho { initial: 0.05 growth: 2.0 max: 5 }
admm_steps: %(steps)d
iters_per_step: 40
retrain_iters: %(retrain)d
snapshot_interval: 20
layer { name: "conv1" kind: FILTER_SHAPE filter_keep_ratio: 0.5 shape_keep_ratio: 0.5 }
layer { name: "conv2" kind: CHANNEL keep_ratio: 0.5 }
layer { name: "ip1" kind: NON_STRUCTURED keep_ratio: 0.25 }
"""


def config(tmp_path, steps=20, retrain=60):
    return write(tmp_path / "admm.prototxt", CONFIG % {"steps": steps, "retrain": retrain})


@pytest.fixture(scope="module")
def pruned(tmp_path_factory, tiny_trained):
    d = tmp_path_factory.mktemp("pruned")
    report = solver.prune(tiny_trained["solver"], tiny_trained["weights"], config(d),
                          str(d / "run"), progress=False)
    return report, str(d / "run")


def test_residual_falls_under_1e_3(pruned):
    report, _ = pruned
    for name, layer in report["layers"].items():
        history = layer["residual_history"]
        assert len(history) == 20
        assert max(history[-1]) < 1e-3, (name, history)
        assert max(history[-1]) < max(history[0])


def test_exact_structured_sparsity_after_retraining(pruned):
    report, run = pruned
    net = caffe.Net(os.path.join(run, "train_test.prototxt"),
                    caffe.TEST, weights=os.path.join(run, "pruned.caffemodel"))
    conv1 = net.params["conv1"][0].data  # (8, 1, 3, 3)
    assert (np.abs(conv1).sum(axis=(1, 2, 3)) > 0).sum() == 4          # filters kept
    assert (np.abs(conv1).sum(axis=0).ravel() > 0).sum() == 4           # 9 columns -> 4 (round(4.5))
    conv2 = net.params["conv2"][0].data  # (8, 8, 3, 3)
    assert (np.abs(conv2).sum(axis=(0, 2, 3)) > 0).sum() == 4           # channels kept
    ip1 = net.params["ip1"][0].data      # (4, 512)
    assert (ip1 != 0).sum() == round(0.25 * ip1.size)
    assert report["layers"]["ip1"]["nonzero"] == round(0.25 * ip1.size)
    masks = load_masks(os.path.join(run, "masks.npz"))
    for name, mask in masks.items():
        assert np.all(net.params[name][0].data[~mask] == 0)
        dead = ~mask.reshape(mask.shape[0], -1).any(axis=1)
        assert np.all(net.params[name][1].data[dead] == 0)  # biases go with their filters
    assert (net.params["conv1"][1].data == 0).sum() == 4
    acc = report["accuracy"]
    assert set(acc) == {"baseline", "after_admm", "after_hard_prune", "after_retrain"}
    assert acc["after_retrain"]["accuracy"] >= 0.9


def test_outputs_and_report_are_complete(pruned):
    report, run = pruned
    for name in ("pruned.caffemodel", "train_test.prototxt", "masks.npz", "admm.caffemodel",
                 "report.json"):
        assert os.path.exists(os.path.join(run, name)), name
    with open(os.path.join(run, "report.json")) as f:
        on_disk = json.load(f)
    layer = on_disk["layers"]["conv1"]
    assert layer["kind"] == "filter_shape"
    assert layer["target_groups_kept"] == {"filter": 4, "shape": 4}
    assert layer["filters_kept"] == 4 and layer["shapes_kept"] == 4
    assert on_disk["pruned_layers_total"]["compression"] > 1
    # the pruned model's prototxt has no hook layers: plain Caffe loads it
    with open(os.path.join(run, "train_test.prototxt")) as f:
        assert layers.HOOK_PREFIX not in f.read()


@pytest.mark.parametrize("solver_type", ["SGD", "Nesterov", "Adam"])
def test_pruned_weights_stay_exactly_zero_in_retraining(tmp_path, tiny_data, tiny_trained,
                                                        solver_type):
    # weight decay and momentum (or Adam's moments) would revive them without the mask
    solver_path, net_path = write_tiny(tmp_path, tiny_data, lr=0.01, solver_type=solver_type)
    net = caffe.Net(net_path, caffe.TEST, weights=tiny_trained["weights"])
    w = net.params["conv2"][0].data
    w[:, ::2] = 0
    net.params["ip1"][0].data[:, :100] = 0
    start = str(tmp_path / "zeroed.caffemodel")
    net.save(start)
    report = solver.retrain(solver_path, start, str(tmp_path / "run"), iters=60,
                            progress=False)
    out = caffe.Net(net_path, caffe.TEST,
                    weights=str(tmp_path / "run" / "pruned.caffemodel"))
    assert np.all(out.params["conv2"][0].data[:, ::2] == 0)
    assert np.all(out.params["ip1"][0].data[:, :100] == 0)
    assert np.any(out.params["conv2"][0].data[:, 1::2] != w[:, 1::2])  # the rest trained
    assert report["layers"]["conv2"]["channels_kept"] == 4


class _InterruptAt:
    """Raise KeyboardInterrupt from inside Caffe's step, on the n-th hook forward."""

    def __init__(self, monkeypatch, n):
        self.count, self.n = 0, n
        original = layers.WeightHook.forward

        def forward(hook, bottom, top):
            if hook.target == "conv1":
                self.count += 1
                if self.count == self.n:
                    raise KeyboardInterrupt("simulated Ctrl-C")
            original(hook, bottom, top)

        monkeypatch.setattr(layers.WeightHook, "forward", forward)


@pytest.mark.parametrize("interrupt_at", [75, 205])  # ADMM phase (4 x 40), retraining
def test_resume_gives_the_same_weights(tmp_path, tiny_trained, monkeypatch, interrupt_at,
                                       capsys):
    cfg = config(tmp_path, steps=4, retrain=80)
    args = (tiny_trained["solver"], tiny_trained["weights"], cfg)
    straight = solver.prune(*args, str(tmp_path / "straight"), progress=False)
    with monkeypatch.context() as m:
        _InterruptAt(m, interrupt_at)
        with pytest.raises(KeyboardInterrupt):
            solver.prune(*args, str(tmp_path / "resumed"), progress=False)
    with open(tmp_path / "resumed" / "checkpoints" / "meta.json") as f:
        meta = json.load(f)
    assert meta["phase"] == ("admm" if interrupt_at < 160 else "retrain")
    resumed = solver.prune(*args, str(tmp_path / "resumed"), progress=False)
    a = caffe.Net(tiny_trained["net"], caffe.TEST,
                  weights=str(tmp_path / "straight" / "pruned.caffemodel"))
    b = caffe.Net(tiny_trained["net"], caffe.TEST,
                  weights=str(tmp_path / "resumed" / "pruned.caffemodel"))
    for name in a.params:
        for x, y in zip(a.params[name], b.params[name]):
            np.testing.assert_array_equal(x.data, y.data)
    assert resumed["steps"] == straight["steps"]
    assert resumed["accuracy"] == straight["accuracy"]
    out = capsys.readouterr().out
    assert "resuming" in out and "other caffe-admm code" not in out
    assert meta["code"] == resumed["code"] == solver.code_digest()


def test_a_run_resumed_under_other_code_says_so(tmp_path, tiny_trained, monkeypatch, capsys):
    cfg = config(tmp_path, steps=4, retrain=80)
    args = (tiny_trained["solver"], tiny_trained["weights"], cfg, str(tmp_path / "run"))
    with monkeypatch.context() as m:
        _InterruptAt(m, 75)
        with pytest.raises(KeyboardInterrupt):
            solver.prune(*args, progress=False)
    meta_path = tmp_path / "run" / "checkpoints" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["code"] = "0123456789ab"
    meta_path.write_text(json.dumps(meta))
    capsys.readouterr()
    report = solver.prune(*args, progress=False)
    assert ("warning: resuming a run that other caffe-admm code began (sources 0123456789ab, "
            "now %s)" % solver.code_digest()) in capsys.readouterr().out
    assert report["code"] == solver.code_digest()
    solver.prune(*args, progress=False)  # done: no warning
    assert "warning" not in capsys.readouterr().out


def test_an_interrupted_baseline_training_resumes_to_the_same_weights(tmp_path, tiny_data,
                                                                      monkeypatch):
    from caffe_admm.progress import Progress
    solver_path, net_path = write_tiny(tmp_path, tiny_data, max_iter=120)
    with open(solver_path, "a") as f:
        f.write("snapshot: 40\ndisplay: 20\n")  # checkpoints at 40 and 80, steps of 20
    straight = solver.train(solver_path, str(tmp_path / "straight"), progress=False)
    update = Progress.update

    def interrupt_at_100(bar, done, info=""):
        if done == 100:
            raise KeyboardInterrupt("simulated Ctrl-C")
        update(bar, done, info)

    with monkeypatch.context() as m:
        m.setattr(Progress, "update", interrupt_at_100)
        with pytest.raises(KeyboardInterrupt):
            solver.train(solver_path, str(tmp_path / "resumed"), progress=False)
    with open(tmp_path / "resumed" / "checkpoints" / "meta.json") as f:
        assert json.load(f)["iter"] == 80
    resumed = solver.train(solver_path, str(tmp_path / "resumed"), progress=False)
    a, b = (caffe.Net(net_path, caffe.TEST, weights=r["weights"]) for r in (straight, resumed))
    for name in a.params:
        for x, y in zip(a.params[name], b.params[name]):
            np.testing.assert_array_equal(x.data, y.data)
    assert resumed["test"] == straight["test"]
    assert [it for it, _ in resumed["loss"]] == [20, 40, 60, 80, 100, 120]
    assert resumed["loss"] == straight["loss"]
    # done: the same command returns the finished run; --restart trains again
    assert solver.train(solver_path, str(tmp_path / "resumed"), progress=False) == resumed
    with pytest.raises(solver.RunError, match="holds a run with other inputs"):
        solver.train(solver_path, str(tmp_path / "resumed"), iters=60, progress=False)
    again = solver.train(solver_path, str(tmp_path / "resumed"), iters=60, progress=False,
                         restart=True)
    assert again["iterations"] == 60


BN_NET = TINY_NET.replace(
    'layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }',
    'layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }\n'
    'layer { name: "scale1" type: "Scale" bottom: "conv1" top: "conv1" '
    'scale_param { bias_term: true } }\n'
    'layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }')


def prune_conv1_to_half(tmp_path, tiny_data, net):
    """Train ``net`` (TINY_NET's data) briefly, prune conv1 to 4 of its 8
    filters: (net path, pruned caffemodel path)."""
    solver_path, net_path = write_tiny(tmp_path, tiny_data, net=net, max_iter=60)
    base = solver.train(solver_path, str(tmp_path / "base"), progress=False)
    cfg = write(tmp_path / "admm.prototxt", """
        rho { initial: 0.05 growth: 2.0 max: 5 }
        admm_steps: 2
        iters_per_step: 20
        retrain_iters: 40
        snapshot_interval: 20
        layer { name: "conv1" kind: FILTER keep_ratio: 0.5 }
    """)
    report = solver.prune(solver_path, base["weights"], cfg, str(tmp_path / "run"),
                          progress=False)
    assert report["layers"]["conv1"]["filters_kept"] == 4
    return net_path, str(tmp_path / "run" / "pruned.caffemodel")


@pytest.mark.parametrize("relu", ['type: "ReLU"', 'type: "Clip" clip_param { min: 0 max: 6 }'])
def test_pruned_channels_through_batchnorm_stay_zero_and_compact(tmp_path, tiny_data, capsys, relu):
    """With a ReLU or a ReLU6 (Clip) after the BatchNorm and Scale."""
    net = BN_NET.replace('name: "relu1" type: "ReLU"', 'name: "relu1" ' + relu)
    net_path, pruned = prune_conv1_to_half(tmp_path, tiny_data, net)
    # the pruned filters' own biases are the hooks' to hold, not the callback's
    out = capsys.readouterr().out
    assert ("held at zero in retraining: bn1[0] of 4 pruned channels, scale1[1] of 4 pruned "
            "channels\n") in out
    # before and after the hard prune, and after retraining (config
    # bn_recalibration_batches), each before the accuracy is measured
    line = "BatchNorm statistics recomputed over 100 training batches (1 layer)\n"
    assert out.count(line) == 3
    assert out.index(line) < out.index("after admm: ")
    net = caffe.Net(net_path, caffe.TEST, weights=pruned)
    assert net.params["bn1"][2].data[0] == 1
    dead = ~np.abs(net.params["conv1"][0].data).reshape(8, -1).any(axis=1)
    assert dead.sum() == 4
    assert not net.params["conv1"][1].data[dead].any()
    assert not net.params["bn1"][0].data[dead].any()        # mean
    assert not net.params["scale1"][1].data[dead].any()     # bias
    assert net.params["scale1"][1].data[~dead].all()        # the others trained on
    # so compaction cuts them, matching the pruned net exactly
    from caffe_admm import compact
    result = compact.compact(net_path, pruned, str(tmp_path / "compact"))
    assert result["plan"]["layers"]["conv1"]["out"] == np.flatnonzero(~dead).tolist()
    assert result["equivalence"]["against"] == "masked" and result["equivalence"]["passed"]
    assert result["warnings"] == []


def test_the_baseline_of_a_batchnorm_net_is_also_scored_as_the_pruned_nets_are(tmp_path,
                                                                               tiny_data):
    """After 60 iterations Caffe's moving averages (fraction 0.999) still
    weigh the first batches: the run scores the baseline as the caffemodel
    holds it, and also with the statistics recomputed over 100 training
    batches, as it scores the pruned nets (the number to compare them with);
    `train` reports both. A net without BatchNorm gets no second score."""
    net_path, _ = prune_conv1_to_half(tmp_path, tiny_data, BN_NET)
    with open(tmp_path / "run" / "report.json") as f:
        accuracy = json.load(f)["accuracy"]
    assert list(accuracy) == ["baseline", "baseline_recalibrated", "after_admm",
                              "after_hard_prune", "after_retrain"]
    weights = str(tmp_path / "base" / "baseline.caffemodel")
    train = caffe.Net(net_path, caffe.TRAIN, weights=weights)
    test = caffe.Net(net_path, caffe.TEST, weights=weights)
    assert solver.evaluate_net(test, 4) == pytest.approx(accuracy["baseline"], rel=1e-6)
    solver.recalibrate_batchnorm(train, ["bn1"], 100)
    for mine, theirs in zip(test.params["bn1"], train.params["bn1"]):
        mine.data[...] = theirs.data
    recalibrated = solver.evaluate_net(test, 4)
    assert recalibrated == pytest.approx(accuracy["baseline_recalibrated"], rel=1e-6)
    assert recalibrated["loss"] != pytest.approx(accuracy["baseline"]["loss"], rel=1e-3)
    assert not os.path.exists(tmp_path / "run" / ".recalibration.prototxt")
    # `train` gives both scores too (its caffemodel as Caffe keeps it)
    with open(tmp_path / "base" / "train.json") as f:
        trained = json.load(f)
    assert trained["test"] == pytest.approx(accuracy["baseline"], rel=1e-6)
    assert trained["test_recalibrated"] == pytest.approx(accuracy["baseline_recalibrated"],
                                                         rel=1e-6)


SE_NET = BN_NET.replace(
    'layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"',
    """layer { name: "squeeze" type: "Pooling" bottom: "conv1" top: "squeeze"
  pooling_param { pool: AVE global_pooling: true } }
layer { name: "down" type: "Convolution" bottom: "squeeze" top: "down"
  convolution_param { num_output: 2 kernel_size: 1 weight_filler { type: "xavier" } } }
layer { name: "relu_d" type: "ReLU" bottom: "down" top: "down" }
layer { name: "up" type: "Convolution" bottom: "down" top: "up"
  convolution_param { num_output: 8 kernel_size: 1 weight_filler { type: "xavier" } } }
layer { name: "prob" type: "Sigmoid" bottom: "up" top: "up" }
layer { name: "factor" type: "Flatten" bottom: "up" top: "factor" }
layer { name: "gate" type: "Scale" bottom: "conv1" bottom: "factor" top: "gated"
  scale_param { axis: 0 } }
layer { name: "pool1" type: "Pooling" bottom: "gated" top: "pool1\"""")


def test_a_pruned_squeeze_and_excitation_net_compacts_its_gates_too(tmp_path, tiny_data):
    """conv1 pruned to half its filters, behind an SE gate: compaction cuts
    its channels, the SE block's up filters and down inputs for them, from
    the pruned train/test net itself."""
    net_path, pruned = prune_conv1_to_half(tmp_path, tiny_data, SE_NET)
    net = caffe.Net(net_path, caffe.TEST, weights=pruned)
    kept = np.flatnonzero(np.abs(net.params["conv1"][0].data).reshape(8, -1).any(axis=1))
    assert net.params["up"][0].data.reshape(8, -1).any(axis=1).all()  # the gates: not pruned
    from caffe_admm import compact
    result = compact.compact(net_path, pruned, str(tmp_path / "compact"))
    layers = result["plan"]["layers"]
    assert layers["conv1"]["out"] == layers["up"]["out"] == layers["down"]["in"] == kept.tolist()
    assert layers["conv2"]["in"] == kept.tolist()
    assert result["equivalence"]["passed"] and result["warnings"] == []


def prune_globally_to_half(tmp_path, tiny_data, net, extra=""):
    """Train ``net`` (TINY_NET's data) briefly, prune every Convolution to half
    its filters (``global_keep_ratio``, ip1 kept; config lines ``extra``):
    (report, net path, pruned caffemodel path)."""
    solver_path, net_path = write_tiny(tmp_path, tiny_data, net=net, max_iter=60)
    base = solver.train(solver_path, str(tmp_path / "base"), progress=False)
    cfg = write(tmp_path / "admm.prototxt", """
        rho { initial: 0.05 growth: 2.0 max: 5 }
        admm_steps: 2 iters_per_step: 20 retrain_iters: 40 snapshot_interval: 20
        global_keep_ratio: 0.5
        layer { name: "ip1" keep_ratio: 1 }
    """ + extra)
    report = solver.prune(solver_path, base["weights"], cfg, str(tmp_path / "run"),
                          progress=False)
    return report, net_path, str(tmp_path / "run" / "pruned.caffemodel")


def test_global_filter_pruning_leaves_a_depthwise_convolution_to_follow(tmp_path, tiny_data,
                                                                         capsys):
    """conv2 made depthwise: global_keep_ratio prunes conv1 and leaves conv2
    out (named in the log and the report); compaction cuts conv2's filters
    and biases with conv1's channels."""
    net = TINY_NET.replace("num_output: 8 kernel_size: 3 pad: 1\n    weight_filler { type: "
                           '"xavier" } bias_filler { type: "constant" } } }\nlayer { name: "relu2"',
                           "num_output: 8 kernel_size: 3 pad: 1 group: 8\n    weight_filler { "
                           'type: "xavier" } bias_filler { type: "constant" } } }\nlayer { '
                           'name: "relu2"')
    assert "group: 8" in net
    report, net_path, pruned = prune_globally_to_half(tmp_path, tiny_data, net)
    assert sorted(report["layers"]) == ["conv1", "ip1"] and list(report["left_out"]) == ["conv2"]
    assert "global_keep_ratio leaves conv2 unpruned: one filter per group" in capsys.readouterr().out
    from caffe_admm import compact
    result = compact.compact(net_path, pruned, str(tmp_path / "compact"))
    layers = result["plan"]["layers"]
    assert len(layers["conv1"]["out"]) == 4
    assert layers["conv2"]["out"] == layers["conv1"]["out"]
    assert result["equivalence"]["passed"] and result["warnings"] == []


def test_global_filter_shape_pruning_prunes_a_grouped_convolutions_filters(tmp_path, tiny_data,
                                                                           capsys):
    """conv2 made grouped (group 2), the default kind FILTER_SHAPE, which it
    does not take: global_keep_ratio prunes its filters, 2 in each group,
    and says so; compaction cuts them. A run begun when such a layer was
    left out does not resume under this (its hint says why)."""
    net = TINY_NET.replace("num_output: 8 kernel_size: 3 pad: 1\n    weight_filler { type: "
                           '"xavier" } bias_filler { type: "constant" } } }\nlayer { name: "relu2"',
                           "num_output: 8 kernel_size: 3 pad: 1 group: 2\n    weight_filler { "
                           'type: "xavier" } bias_filler { type: "constant" } } }\nlayer { '
                           'name: "relu2"')
    assert "group: 2" in net
    solver_path, net_path = write_tiny(tmp_path, tiny_data, net=net, max_iter=60)
    base = solver.train(solver_path, str(tmp_path / "base"), progress=False)
    cfg = write(tmp_path / "admm.prototxt", """
        rho { initial: 0.05 growth: 2.0 max: 5 }
        admm_steps: 2 iters_per_step: 20 retrain_iters: 40 snapshot_interval: 20
        default { kind: FILTER_SHAPE } global_keep_ratio: 0.5
        layer { name: "ip1" keep_ratio: 1 }
    """)
    run = tmp_path / "run"
    report = solver.prune(solver_path, base["weights"], cfg, str(run), progress=False)
    assert report["left_out"] == {} and list(report["filters_only"]) == ["conv2"]
    assert report["layers"]["conv2"]["kind"] == "filter"
    assert report["layers"]["conv1"]["kind"] == "filter_shape"
    # counted per group: 8 input channels (4 a group), 72 columns
    assert (report["layers"]["conv2"]["filters_kept"], report["layers"]["conv2"]["channels"],
            report["layers"]["conv2"]["shapes"]) == (4, 8, 72)
    assert ("global_keep_ratio prunes conv2 by filter: kind FILTER_SHAPE does not fit a grouped "
            "convolution (group=2)") in capsys.readouterr().out
    pruned = caffe.Net(net_path, caffe.TEST, weights=str(run / "pruned.caffemodel"))
    kept = np.abs(pruned.params["conv2"][0].data).reshape(2, 4, -1).any(axis=2)
    assert kept.sum(axis=1).tolist() == [2, 2]
    from caffe_admm import compact
    result = compact.compact(net_path, str(run / "pruned.caffemodel"), str(tmp_path / "compact"))
    assert result["layers"]["conv2"]["compact_shape"][0] == 4
    assert result["equivalence"]["passed"]
    # what versions that left conv2 out fingerprinted
    meta_path = run / "checkpoints" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["fingerprint"] = solver.fingerprint(solver_path, net_path, base["weights"], cfg,
                                              extra="penalty_pruned_only")
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(solver.RunError, match="when global_keep_ratio left out the grouped "
                                              "convolutions that FILTER_SHAPE does not fit"):
        solver.prune(solver_path, base["weights"], cfg, str(run), progress=False)


def test_divergence_stops_with_a_clear_message(tmp_path, tiny_data, tiny_trained):
    solver_path, _ = write_tiny(tmp_path, tiny_data, lr=1e6)
    with pytest.raises(solver.DivergenceError, match=r"ADMM step 1/20 diverged at iteration \d+: (the weights of layer .* are not finite|.*=nan)"):
        solver.prune(solver_path, tiny_trained["weights"], config(tmp_path),
                     str(tmp_path / "run"), progress=False)


def test_bad_inputs_fail_before_caffe(tmp_path, tiny_data, tiny_trained):
    other = write(tmp_path / "other.prototxt", """
        name: "other"
        layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 1 dim: 8 dim: 8 } } }
        layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
                convolution_param { num_output: 3 kernel_size: 3 } }
    """)
    wrong = str(tmp_path / "wrong.caffemodel")
    caffe.Net(other, caffe.TEST).save(wrong)
    with pytest.raises(solver.RunError, match=r"layer 'conv1' has blobs of shapes"):
        solver.prune(tiny_trained["solver"], wrong, config(tmp_path), str(tmp_path / "r1"),
                     progress=False)
    with pytest.raises(solver.RunError, match="weights file .* not found"):
        solver.prune(tiny_trained["solver"], str(tmp_path / "none.caffemodel"),
                     config(tmp_path), str(tmp_path / "r2"), progress=False)
    with pytest.raises(solver.RunError, match="weights file .* is not a file"):
        solver.prune(tiny_trained["solver"], str(tmp_path), config(tmp_path),
                     str(tmp_path / "r2"), progress=False)
    # an out dir holding another run is not silently mixed with a new one
    solver.prune(tiny_trained["solver"], tiny_trained["weights"], config(tmp_path, 1, 0),
                 str(tmp_path / "r3"), progress=False)
    with pytest.raises(solver.RunError, match="holds a run with other inputs"):
        solver.prune(tiny_trained["solver"], tiny_trained["weights"], config(tmp_path, 2, 0),
                     str(tmp_path / "r3"), progress=False)


WEIGHTS_NET = """
name: "w"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 6 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 4 } }
layer { name: "relu" type: "ReLU" bottom: "ip" top: "ip" }
"""


def _blob(shape, legacy=False, values=None):
    blob = caffe_pb2.BlobProto()
    if legacy:
        blob.num, blob.channels, blob.height, blob.width = (1,) * (4 - len(shape)) + shape
    else:
        blob.shape.dim.extend(shape)
    blob.data.extend([0.5] * (int(np.prod(shape)) if values is None else values))
    return blob


@pytest.mark.parametrize("case, blobs, fits", [
    ("as saved", {"ip": [_blob((4, 6)), _blob((4,))]}, True),
    ("legacy 4-D fields, as old caffemodels hold them",
     {"ip": [_blob((4, 6), legacy=True), _blob((4,), legacy=True)]}, True),
    ("a layer the net lacks", {"ip": [_blob((4, 6)), _blob((4,))], "gone": [_blob((3,))]},
     True),
    ("transposed: as many values", {"ip": [_blob((6, 4)), _blob((4,))]}, False),
    ("a 4-D shape field is not a legacy one", {"ip": [_blob((1, 1, 4, 6)), _blob((4,))]},
     False),
    ("no bias blob", {"ip": [_blob((4, 6))]}, False),
    ("too few values", {"ip": [_blob((4, 6), values=23), _blob((4,))]}, False),
    ("blobs for a layer without parameters",
     {"ip": [_blob((4, 6)), _blob((4,))], "relu": [_blob((4,))]}, False),
])
def test_the_weights_check_refuses_what_caffe_aborts_on(tmp_path, case, blobs, fits):
    """check_weights agrees with Caffe's own copy of the weights (run in a
    child process, where a mismatch aborts it)."""
    net = write(tmp_path / "w.prototxt", WEIGHTS_NET)
    model = caffe_pb2.NetParameter(name="w")
    for name, layer_blobs in blobs.items():
        model.layer.add(name=name, type="InnerProduct").blobs.extend(layer_blobs)
    weights = str(tmp_path / "w.caffemodel")
    with open(weights, "wb") as f:
        f.write(model.SerializeToString())
    code = ("from caffe_admm.backend import caffe; "
            "caffe.Net(%r, caffe.TEST, weights=%r); print('loaded')" % (net, weights))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert ("loaded" in res.stdout) == fits, res.stderr[-500:]
    if fits:
        assert solver.check_weights(weights, net, None) == {"ip": [(4, 6), (4,)]}
    else:
        assert res.returncode in (-6, 134)  # glog's abort
        with pytest.raises(solver.RunError, match="w.caffemodel: layer '(ip|relu)' has blobs"):
            solver.check_weights(weights, net, None)


def test_a_run_never_writes_over_its_inputs(tmp_path, pruned, tiny_trained):
    """Retraining a run's weights into its own directory would replace them
    (and --restart would discard its checkpoints first): refused before
    anything is touched; so is training from a solver a run directory holds."""
    _, run = pruned
    weights = os.path.join(run, "pruned.caffemodel")
    before = open(weights, "rb").read()
    with pytest.raises(ProtoError, match=r"run/pruned.caffemodel would be written over .*, the "
                                         r"input weights: give another output directory"):
        solver.retrain(tiny_trained["solver"], weights, run, restart=True, progress=False)
    assert open(weights, "rb").read() == before
    assert os.path.isfile(os.path.join(run, "checkpoints", "meta.json"))
    with pytest.raises(ProtoError, match="the input masks"):
        solver.retrain(tiny_trained["solver"], tiny_trained["weights"], run,
                       masks_path=os.path.join(run, "masks.npz"), progress=False)
    # a second round of pruning from the first's net, into the same directory
    second = str(tmp_path / "second_solver.prototxt")
    with open(tiny_trained["solver"]) as f:
        text = f.read()
    with open(second, "w") as f:
        f.write(text.replace(tiny_trained["net"], os.path.join(run, "train_test.prototxt")))
    with pytest.raises(ProtoError, match="train_test.prototxt, the input net"):
        solver.prune(second, tiny_trained["weights"], config(tmp_path), run, progress=False)
    d = str(tmp_path / "trained")
    os.makedirs(d)
    own = os.path.join(d, "train_solver.prototxt")
    shutil.copy(tiny_trained["solver"], own)
    with pytest.raises(ProtoError, match="train_solver.prototxt, the input solver"):
        solver.train(own, d, iters=1, progress=False)


def test_a_second_run_into_a_directory_being_written_is_refused(tmp_path, tiny_trained):
    """A job submitted twice: the second stops before it reads or deletes
    anything (--restart would discard the first one's checkpoints)."""
    import fcntl
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoints").mkdir()
    with open(str(out / ".lock"), "a+") as held:  # as the first run holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("4242\n")
        held.flush()
        for call in (lambda: solver.train(tiny_trained["solver"], str(out), iters=1,
                                          restart=True, progress=False),
                     lambda: solver.retrain(tiny_trained["solver"], tiny_trained["weights"],
                                            str(out), iters=0, restart=True, progress=False)):
            with pytest.raises(solver.RunError, match=r"another caffe-admm run is writing "
                                                      r".*run \(process 4242\); wait for it"):
                call()
            assert (out / "checkpoints").is_dir()
    # released: the run goes ahead, and releases it in turn (the same process twice)
    solver.train(tiny_trained["solver"], str(out), iters=1, restart=True, progress=False)
    solver.train(tiny_trained["solver"], str(out), iters=1, progress=False)
    assert (out / ".lock").read_text() == "%d\n" % os.getpid()


def test_a_net_layer_the_weights_lack_is_named(tmp_path, capsys):
    """Caffe leaves such a layer at its fillers without a word (a renamed
    layer, say); the check says so, and goes on."""
    net = write(tmp_path / "w.prototxt", WEIGHTS_NET)
    model = caffe_pb2.NetParameter(name="w")
    model.layer.add(name="ip_renamed", type="InnerProduct").blobs.extend(
        [_blob((4, 6)), _blob((4,))])
    model.layer.add(name="relu", type="ReLU")
    weights = str(tmp_path / "w.caffemodel")
    with open(weights, "wb") as f:
        f.write(model.SerializeToString())
    with pytest.raises(solver.RunError, match="holds no weights for any layer"):
        solver.check_weights(weights, net, None)
    two = write(tmp_path / "two.prototxt", WEIGHTS_NET + """
        layer { name: "ip_renamed" type: "InnerProduct" bottom: "data" top: "ip2"
                inner_product_param { num_output: 4 } }
        layer { name: "ip3" type: "InnerProduct" bottom: "ip2" top: "ip3"
                inner_product_param { num_output: 2 } }
    """)
    capsys.readouterr()
    solver.check_weights(weights, two, None)
    assert capsys.readouterr().err == (
        "warning: %s holds no weights for layers ip, ip3 of %s: Caffe leaves them at their "
        "fillers (a layer renamed?)\n" % (weights, two))


def test_a_missing_training_source_and_a_net_with_nothing_to_score_are_refused(
        tmp_path, tiny_data, tiny_trained):
    tiny = dict(tiny_data, train=str(tmp_path / "moved_lmdb"))
    solver_path, net_path = write_tiny(tmp_path, tiny)
    with pytest.raises(ProtoError, match=r"tiny_train_test\.prototxt:3: layer 'data' \(Data\) "
                                         r"reads '.*moved_lmdb' \(source\), which does not exist"):
        solver.train(solver_path, str(tmp_path / "run"), iters=1, progress=False)
    assert not os.path.exists(str(tmp_path / "run"))
    deploy = write(tmp_path / "deploy.prototxt", """
        layer { name: "data" type: "Input" top: "data"
                input_param { shape { dim: 1 dim: 1 dim: 16 dim: 16 } } }
        layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
                convolution_param { num_output: 8 kernel_size: 3 pad: 1 } }
    """)
    with pytest.raises(solver.RunError, match=r"its TEST phase has no scalar output \(an "
                                              r"Accuracy or loss layer\) to report; outputs: conv1"):
        solver.evaluate(deploy, tiny_trained["weights"], iters=1)


def test_a_solver_caffe_would_abort_on_is_refused_by_every_verb(tmp_path, tiny_data,
                                                                tiny_trained):
    solver_path, _ = write_tiny(tmp_path, tiny_data)
    with open(solver_path) as f:
        text = f.read().replace('lr_policy: "fixed"', 'lr_policy: "stepp"')
    with open(solver_path, "w") as f:
        f.write(text)
    message = r"tiny_solver\.prototxt:\d+: lr_policy 'stepp' is not one Caffe knows"
    with pytest.raises(ProtoError, match=message):
        solver.train(solver_path, str(tmp_path / "a"), iters=1, progress=False)
    with pytest.raises(ProtoError, match=message):
        solver.prune(solver_path, tiny_trained["weights"], config(tmp_path),
                     str(tmp_path / "b"), progress=False)
    with pytest.raises(ProtoError, match=message):
        solver.retrain(solver_path, tiny_trained["weights"], str(tmp_path / "c"), iters=1,
                       progress=False)
    assert not any(os.path.exists(str(tmp_path / d)) for d in "abc")  # nothing begun


def test_a_solver_with_a_test_state_per_test_net_trains(tmp_path, tiny_data):
    # Caffe's mnist_autoencoder solver: two test nets by stage; a run builds the first
    solver_path, _ = write_tiny(tmp_path, tiny_data)
    with open(solver_path, "a") as f:
        f.write('test_iter: 4\ntest_state { stage: "a" }\ntest_state { stage: "b" }\n')
    code = ("import sys; from caffe_admm import solver; "
            "print(solver.train(%r, %r, iters=2, progress=False)['test'])"
            % (solver_path, str(tmp_path / "run")))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT)  # in a process of its own: Caffe aborts on a mismatch
    assert res.returncode == 0, res.stderr[-2000:]
    assert "accuracy" in res.stdout


def test_a_run_begun_under_the_old_penalty_default_does_not_resume_under_the_new(
        tmp_path, tiny_trained):
    from caffe_admm import protoio
    cfg = config(tmp_path, 1, 0)                  # ADMM, penalty_pruned_only unset
    run = tmp_path / "run"
    solver.prune(tiny_trained["solver"], tiny_trained["weights"], cfg, str(run), progress=False)
    # what versions before the default changed wrote: the inputs' bytes only
    net = protoio.resolve_solver_net(tiny_trained["solver"],
                                     protoio.read_solver(tiny_trained["solver"]))
    meta_path = run / "checkpoints" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["fingerprint"] = solver.fingerprint(tiny_trained["solver"], net,
                                              tiny_trained["weights"], cfg)
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(solver.RunError, match="before the default of penalty_pruned_only "
                                              "changed .*the config leaves it unset"):
        solver.prune(tiny_trained["solver"], tiny_trained["weights"], cfg, str(run),
                     progress=False)
    # a config that sets the field means the same in every version: its fingerprint
    # is the bytes alone, as before, so such a run resumes (here: is found complete)
    with open(cfg, "a") as f:
        f.write("penalty_pruned_only: true\n")
    meta["fingerprint"] = solver.fingerprint(tiny_trained["solver"], net,
                                              tiny_trained["weights"], cfg)
    meta_path.write_text(json.dumps(meta))
    report = solver.prune(tiny_trained["solver"], tiny_trained["weights"], cfg, str(run),
                          progress=False)
    assert report["schedule"]["penalty_pruned_only"] is True


def test_retrain_solver_sets_the_retraining_schedule(tmp_path, tiny_data, tiny_trained):
    ft_dir = tmp_path / "ft"
    ft_dir.mkdir()
    ft_solver, _ = write_tiny(ft_dir, tiny_data, lr=0.00125, solver_type="Adam")
    cfg = config(tmp_path, steps=1, retrain=20)
    with open(cfg, "a") as f:
        f.write('retrain_solver: "ft/tiny_solver.prototxt"\n')  # relative to the config
    report = solver.prune(tiny_trained["solver"], tiny_trained["weights"], cfg,
                          str(tmp_path / "run"), progress=False)
    assert report["schedule"]["retrain_solver"] == ft_solver
    from caffe_admm.protoio import read_solver
    used = read_solver(str(tmp_path / "run" / "retrain_solver.prototxt"))
    assert used.type == "Adam" and abs(used.base_lr - 0.00125) < 1e-9
    first = read_solver(str(tmp_path / "run" / "admm_solver.prototxt"))
    assert first.type == "SGD" and abs(first.base_lr - 0.05) < 1e-9


RESIDUAL_NET = BN_NET.replace(
    'layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }\n'
    'layer { name: "ip1" type: "InnerProduct" bottom: "conv2" top: "ip1"',
    'layer { name: "bn2" type: "BatchNorm" bottom: "conv2" top: "conv2" }\n'
    'layer { name: "scale2" type: "Scale" bottom: "conv2" top: "conv2" '
    'scale_param { bias_term: true } }\n'
    'layer { name: "sum" type: "Eltwise" bottom: "pool1" bottom: "conv2" top: "sum" }\n'
    'layer { name: "relu2" type: "ReLU" bottom: "sum" top: "sum" }\n'
    'layer { name: "ip1" type: "InnerProduct" bottom: "sum" top: "ip1"')


@pytest.mark.parametrize("couple", [True, False])
def test_a_residual_streams_writers_keep_the_same_filters_and_compaction_cuts_the_stream(
        tmp_path, tiny_data, capsys, couple):
    """conv1 (through BatchNorm, ReLU, pooling) and conv2 (through BatchNorm)
    write one sum. Pruned to half their filters with ``couple_sums`` (the
    default), both keep the same 4 and compaction cuts the other 4 channels
    of the stream; each on its own, they differ and the stream keeps more."""
    assert 'name: "sum"' in RESIDUAL_NET
    report, net_path, pruned = prune_globally_to_half(tmp_path, tiny_data, RESIDUAL_NET,
                                                      "" if couple else "couple_sums: false")
    out = capsys.readouterr().out
    assert report["coupled"] == ([["conv1", "conv2"]] if couple else [])
    assert report["uncoupled"] == []
    assert ("residual stream of conv1, conv2: the same filters kept in all" in out) == couple
    net = caffe.Net(net_path, caffe.TEST, weights=pruned)
    kept = {n: np.abs(net.params[n][0].data).reshape(8, -1).any(axis=1) for n in ("conv1", "conv2")}
    assert kept["conv1"].sum() == kept["conv2"].sum() == 4
    assert np.array_equal(kept["conv1"], kept["conv2"]) == couple
    from caffe_admm import compact
    result = compact.compact(net_path, pruned, str(tmp_path / "compact"))
    layers = result["plan"]["layers"]
    assert layers["conv1"]["out"] == layers["conv2"]["out"]  # one space
    either = np.flatnonzero(kept["conv1"] | kept["conv2"]).tolist()
    assert layers["conv1"]["out"] == either and (len(either) == 4) == couple
    assert result["equivalence"]["passed"] and result["warnings"] == []


def test_check_predicts_a_streams_cut_from_the_starting_weights_and_writes_nothing(
        tmp_path, tiny_data, capsys):
    """``prune --check`` on RESIDUAL_NET, conv1 and conv2 at half their
    filters, with weights whose filter norms the test sets: coupled, the
    stream keeps the 4 filters of largest joint norm; each on its own, the
    union of each writer's 4 largest; ip1 reads what the stream keeps."""
    solver_path, net_path = write_tiny(tmp_path, tiny_data, net=RESIDUAL_NET)
    net = caffe.Net(net_path, caffe.TEST)
    rng = np.random.default_rng(3)
    scales = {"conv1": np.array([8, 7, 6, 5, 1, 1, 1, 1.]),
              "conv2": np.array([1, 1, 1, 1, 8, 7, 6, 5.5])}
    for name, scale in scales.items():
        w = net.params[name][0].data
        w[...] = rng.standard_normal(w.shape)
        w *= (scale / np.sqrt((w ** 2).sum(axis=(1, 2, 3))))[:, None, None, None]
    weights = str(tmp_path / "start.caffemodel")
    net.save(weights)
    joint = np.sort(np.argsort(-np.hypot(scales["conv1"], scales["conv2"]))[:4])
    assert joint.tolist() == [0, 1, 4, 5]
    for extra, kept in (("", 4), ("couple_sums: false", 8)):
        config = write(tmp_path / "c.prototxt", "global_keep_ratio: 0.5\n"
                       'layer { name: "ip1" keep_ratio: 1 }\n' + extra)
        report = solver.check(solver_path, weights, config)
        layers = report["layers"]
        assert report["coupled"] == ([["conv1", "conv2"]] if not extra else [])
        assert layers["conv1"]["filters_kept"] == layers["conv2"]["filters_kept"] == 4
        assert layers["conv1"]["compact_shape"] == [kept, 1, 3, 3]
        assert layers["conv2"]["compact_shape"] == [kept, kept, 3, 3]  # reads conv1's too
        assert layers["ip1"]["compact_shape"] == [4, kept * 16]
        assert layers["ip1"]["target_keep"] == {"filter": 1}
        assert layers["ip1"]["flop_reduction"] == 8 / kept
        assert report["total"]["compact_params"] == kept * 9 + kept * kept * 9 + 4 * kept * 16
        assert report["compaction_error"] is None and report["warnings"] == []
        # kept by the masks, cut by compaction: conv2's weights on conv1's
        # cut channels and ip1's on the stream's (none where nothing is cut)
        assert report["total"]["pruned_nonzero"] == 36 + 288 + 512
        assert report["total"]["dead_input_weights"] == (144 + 256 if not extra else 0)
        if not extra:  # which 4: those of largest joint norm
            assert layers["conv1"]["kept_out"] == layers["conv2"]["kept_out"] == joint.tolist()
    out = capsys.readouterr().out
    assert "residual stream of conv1, conv2: the same filters kept in all" in out
    assert sorted(os.listdir(tmp_path)) == ["c.prototxt", "start.caffemodel",
                                            "tiny_solver.prototxt", "tiny_train_test.prototxt"]
    # an SSL threshold is not predictable from the starting weights: said so
    config = write(tmp_path / "c.prototxt", "method: SSL ssl_threshold: 0.3\n"
                   'layer { name: "conv1" kind: FILTER keep_ratio: 0.5 }\n')
    assert any("ssl_threshold" in c for c in solver.check(solver_path, weights, config)["caveats"])


def test_recalibrated_batchnorm_statistics_are_the_mean_of_the_batch_statistics(tmp_path,
                                                                                 tiny_data):
    """Over 3 training batches: the mean of each batch's channel means and
    variances (times m / (m - 1), as Caffe keeps them) of bn1's input."""
    _, net_path = write_tiny(tmp_path, tiny_data, net=BN_NET)
    recalibrated = caffe.Net(net_path, caffe.TRAIN)
    fresh = caffe.Net(net_path, caffe.TRAIN)
    for name in recalibrated.params:
        for a, b in zip(recalibrated.params[name], fresh.params[name]):
            b.data[...] = a.data
    recalibrated.params["bn1"][0].data[...] = 7  # stale statistics, replaced
    solver.recalibrate_batchnorm(recalibrated, ["bn1"], 3)
    means, variances = [], []
    for _ in range(3):
        x = fresh.forward(end="conv1")["conv1"].astype(np.float64)  # before bn1 (in place)
        m = x.size // x.shape[1]
        means.append(x.mean(axis=(0, 2, 3)))
        variances.append(x.var(axis=(0, 2, 3)) * m / (m - 1))
    bn = recalibrated.params["bn1"]
    np.testing.assert_allclose(bn[0].data, np.mean(means, axis=0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(bn[1].data, np.mean(variances, axis=0), rtol=1e-4, atol=1e-6)
    assert bn[2].data[0] == 1
    frozen = text_format.Parse(BN_NET.replace(
        'type: "BatchNorm" bottom: "conv1" top: "conv1" }',
        'type: "BatchNorm" bottom: "conv1" top: "conv1" '
        'batch_norm_param { use_global_stats: true } }') % tiny_data, caffe_pb2.NetParameter())
    assert solver.batchnorms(frozen) == []  # frozen statistics: left as they are
    assert solver.batchnorms(text_format.Parse(BN_NET % tiny_data,
                                                caffe_pb2.NetParameter())) == ["bn1"]


def test_a_negative_batchnorm_recalibration_is_refused(tmp_path):
    with pytest.raises(solver.RunError, match="0 or more batches, got -1"):
        solver.retrain(str(tmp_path / "s.prototxt"), str(tmp_path / "w"), str(tmp_path / "o"),
                       bn_batches=-1)


def test_progress_lines_give_the_runs_time_left_and_no_zero_penalties(tmp_path, tiny_trained,
                                                                       capsys):
    solver.prune(tiny_trained["solver"], tiny_trained["weights"], config(tmp_path, 2, 40),
                 str(tmp_path / "run"), progress=True)
    lines = capsys.readouterr().err.splitlines()
    admm = [l for l in lines if l.startswith("ADMM step ") and " 40/40 " in l]
    retrain = [l for l in lines if l.startswith("retrain ") and " 40/40 " in l]
    # the last line of each bar (40 of 40) always prints
    assert [l.split(" (")[0] for l in admm] == ["ADMM step 1/2 40/40", "ADMM step 2/2 40/40"]
    # step 2 and retraining follow step 1, retraining step 2 (the tiny net runs them in no time)
    assert all(" 0:00 left (run: 0:00) " in l for l in admm)
    assert all(layers.HOOK_PREFIX + "conv1=" in l for l in admm)  # the penalties, non-zero
    assert [l.split(" (")[0] for l in retrain] == ["retrain 40/40"]
    # the run's last evaluation follows retraining
    assert " 0:00 left (run: 0:00) " in retrain[0] and layers.HOOK_PREFIX not in retrain[0]
    assert "loss=" in retrain[0]
    # evaluations show no bar where they take under QUIET_S (the tiny net's: no time)
    assert not [l for l in lines if l.startswith("test")]
    with open(str(tmp_path / "run" / "checkpoints" / "meta.json")) as f:
        timed = json.load(f)["history"]["eval_seconds"]
    assert list(timed) == ["test"] and 0 < timed["test"] < solver.QUIET_S  # no BatchNorm


def test_the_run_s_time_left_counts_its_evaluations_as_long_as_the_first():
    history = {"eval_seconds": {"test": 2.0, "recalibration": 3.0}}
    assert solver._evaluations_s(history, 3) == 15.0
    assert solver._evaluations_s({"eval_seconds": {"test": 2.0}}, 3) == 6.0
    assert solver._evaluations_s({}, 3) == 0.0  # resumed from a checkpoint without them


def test_a_long_evaluation_and_recalibration_show_a_bar(tiny_trained, monkeypatch, capsys):
    monkeypatch.setattr(solver, "QUIET_S", 0.0)
    net = caffe.Net(tiny_trained["net"], caffe.TEST, weights=tiny_trained["weights"])
    quiet = solver.evaluate_net(net, 3)
    assert capsys.readouterr().err == ""
    assert set(solver.evaluate_net(net, 3, progress=True, label="test: baseline")) == set(quiet)
    lines = capsys.readouterr().err.splitlines()
    assert lines[-1].startswith("test: baseline 3/3 (100%) ")
    train = caffe.Net(tiny_trained["net"], caffe.TRAIN, weights=tiny_trained["weights"])
    solver.recalibrate_batchnorm(train, [], 2, progress=True)
    assert capsys.readouterr().err.splitlines()[-1].startswith("BatchNorm statistics 2/2 ")


def test_reports_record_what_changes_caffes_summation_order(pruned, tiny_trained):
    """Threads, the BLAS and the convolution engine: the last digits of a run."""
    from caffe_admm import caffetime
    report, _ = pruned
    with open(os.path.join(tiny_trained["dir"], "run", "train.json")) as f:
        trained = json.load(f)
    for env in (report["environment"], trained["environment"]):
        assert env["cpu_threads"]["OPENBLAS_NUM_THREADS"] == os.environ.get("OPENBLAS_NUM_THREADS")
        assert os.path.basename(env["blas"]["library"]).startswith("libopenblas")
        assert env["cpu_conv_engine"] == "onednn" and env["blas"]["onednn"]
        assert env["cpu"] == caffetime.cpu_model()

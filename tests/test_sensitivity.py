"""caffe-admm sensitivity: each layer pruned alone, the same TEST batches every time."""

import json
import os

import numpy as np
import pytest

from caffe_admm import projections, sensitivity, solver
from caffe_admm.backend import caffe

from conftest import TINY_NET, interrupt_on_call, write_tiny
from test_cli import run


def test_each_score_is_the_net_with_that_layer_pruned_on_the_same_batches(tiny_trained):
    """2 of the TEST LMDB's 4 batches per score: a fresh net each time, so
    keep 1 gives the baseline to the bit; conv1 at keep 0.5 is the net with
    its 4 filters of least norm (and their biases) zeroed, scored here."""
    result = sensitivity.scan(tiny_trained["net"], tiny_trained["weights"], keeps=(1.0, 0.5),
                              iters=2)
    assert list(result["layers"]) == ["conv1", "conv2", "ip1"] and result["iters"] == 2
    for entry in result["layers"].values():
        assert entry["results"][0]["scores"] == result["baseline"]
    conv1 = result["layers"]["conv1"]
    assert [(r["groups_kept"], r["groups"]) for r in conv1["results"]] == [(8, 8), (4, 8)]
    assert conv1["params_share"] == pytest.approx(72 / (72 + 576 + 512))
    net = caffe.Net(tiny_trained["net"], caffe.TEST, weights=tiny_trained["weights"])
    w = net.params["conv1"][0].data
    dropped = ~projections.group_mask(w, "filter", 4)
    assert dropped.sum() == 4
    w[dropped] = 0
    net.params["conv1"][1].data[dropped] = 0
    assert solver.evaluate_net(net, 2) == conv1["results"][1]["scores"]
    assert result["layers"]["ip1"]["results"][1]["groups_kept"] == 2
    # the compacted size: conv1's 4 filters (36 weights) and conv2's columns on
    # them (4 x 8 x 9) go; ip1's filters are the classes, which the loss reads
    # whole, so compaction keeps them
    assert result["params"] == 72 + 576 + 512
    assert [r["compact_params"] for r in conv1["results"]] == [1160, 1160 - 36 - 288]
    assert [r["compact_params"] for r in result["layers"]["ip1"]["results"]] == [1160, 1160]
    assert sensitivity.format_table(result).splitlines()[-1] == (
        "no smaller net: compaction keeps the filters pruning ip1 zeroes, at every ratio (a "
        "loss or the net's outputs read them whole, or a residual stream's other writers keep "
        "their channels)")


def test_kinds_a_layer_does_not_take_are_skipped_with_the_reason(tmp_path, tiny_data):
    net = TINY_NET.replace("num_output: 8 kernel_size: 3 pad: 1\n    weight_filler { type: "
                           '"xavier" } bias_filler { type: "constant" } } }\nlayer { name: "relu2"',
                           "num_output: 8 kernel_size: 3 pad: 1 group: 8\n    weight_filler { "
                           'type: "xavier" } bias_filler { type: "constant" } } }\nlayer { '
                           'name: "relu2"')
    _, net_path = write_tiny(tmp_path, tiny_data, net=net)
    weights = str(tmp_path / "w.caffemodel")
    caffe.Net(net_path, caffe.TEST).save(weights)
    result = sensitivity.scan(net_path, weights, keeps=(0.5,), iters=1)
    assert result["layers"]["conv2"]["skipped"].startswith("one filter per group (depthwise)")
    assert "results" in result["layers"]["conv1"]
    result = sensitivity.scan(net_path, weights, keeps=(0.5,), kind="SHAPE", iters=1,
                              layers=["conv2", "ip1"])
    assert list(result["layers"]) == ["conv2", "ip1"]
    assert result["layers"]["conv2"]["skipped"] == ("kind SHAPE does not fit a grouped "
                                                    "convolution (group=8)")
    assert result["layers"]["ip1"]["results"][0]["groups"] == 128  # its columns
    with pytest.raises(ValueError, match=r"no Convolution or InnerProduct layer named 'relu1'"):
        sensitivity.scan(net_path, weights, layers=["relu1"], iters=1)
    with pytest.raises(ValueError, match=r"keep ratio 0 is outside \(0, 1\]"):
        sensitivity.scan(net_path, weights, keeps=(0,), iters=1)


def test_the_command_prints_a_table_and_writes_json(tmp_path, tiny_trained):
    out = str(tmp_path / "s.json")
    res = run("sensitivity", "--model", tiny_trained["net"], "--weights",
              tiny_trained["weights"], "--keep", "0.5", "0.25", "--iters", "2", "--json", out)
    assert res.returncode == 0, res.stderr
    with open(out) as f:
        result = json.load(f)
    lines = res.stdout.splitlines()
    assert lines[0].endswith("accuracy of the unpruned net: %.4f (2 TEST batches); kind FILTER, "
                             "one layer at a time, no retraining"
                             % result["baseline"]["accuracy"])
    assert lines[1].split() == ["layer", "type", "params", "FLOPs", "keep", "0.5", "keep", "0.25"]
    conv2 = result["layers"]["conv2"]
    assert lines[3].startswith("conv2        Convolution     49.7%") and \
        ("%.4f" % conv2["results"][1]["scores"]["accuracy"]) in lines[3]
    assert "[1/6] conv1 keep 0.5: accuracy " in res.stderr  # progress, a line per score
    assert not os.path.exists(tmp_path / "nothing_else")
    res = run("sensitivity", "--model", tiny_trained["net"], "--weights",
              tiny_trained["weights"], "--kind", "ROWS")
    assert res.returncode == 2 and "invalid choice: 'ROWS'" in res.stderr
    assert np.isfinite(result["baseline"]["loss"])


def test_on_a_batchnorm_net_every_score_has_its_statistics_recomputed(tmp_path, tiny_data,
                                                                      capsys):
    """As a run scores its hard prune: the unpruned net and each pruned one
    with the BatchNorm statistics recomputed at their weights over the same
    first 100 training batches; --bn-batches 0 keeps the caffemodel's."""
    from test_solver import BN_NET
    solver_path, net_path = write_tiny(tmp_path, tiny_data, net=BN_NET, max_iter=60)
    weights = solver.train(solver_path, str(tmp_path / "base"), progress=False)["weights"]
    result = sensitivity.scan(net_path, weights, keeps=(1.0, 0.5), layers=["conv1"], iters=2)
    assert result["bn_batches"] == 100

    def recalibrated(prune=None):
        from caffe_admm import protoio
        test = caffe.Net(net_path, caffe.TEST, weights=weights)
        if prune is not None:
            solver.hard_prune(test, protoio.read_net(net_path), prune)
        solver.recalibrate_test_net(test, caffe.Net(net_path, caffe.TRAIN, weights=weights),
                                    ["bn1"], 100)
        return solver.evaluate_net(test, 2)
    assert result["baseline"] == recalibrated()
    conv1 = result["layers"]["conv1"]["results"]
    assert conv1[0]["scores"] == result["baseline"]
    net = caffe.Net(net_path, caffe.TEST, weights=weights)
    mask = projections.support(net.params["conv1"][0].data, "filter", 4)
    assert conv1[1]["scores"] == recalibrated({"conv1": mask})
    plain = sensitivity.scan(net_path, weights, keeps=(0.5,), layers=["conv1"], iters=2,
                             bn_batches=0)
    assert plain["bn_batches"] == 0 and plain["baseline"] == solver.evaluate_net(net, 2)
    assert plain["baseline"] != result["baseline"]
    assert "BatchNorm statistics recomputed over 100 training batches for each score" in \
        sensitivity.format_table(result).splitlines()[0]
    assert "recomputed" not in sensitivity.format_table(plain).splitlines()[0]


def test_a_long_score_shows_its_evaluation_and_recalibration(tmp_path, tiny_data, monkeypatch,
                                                             capsys):
    """On a large TEST set a single score takes minutes: its evaluation (and
    BatchNorm recalibration) shows a bar from QUIET_S on, named by the score."""
    from test_solver import BN_NET
    solver_path, net_path = write_tiny(tmp_path, tiny_data, net=BN_NET, max_iter=20)
    weights = solver.train(solver_path, str(tmp_path / "base"), progress=False)["weights"]
    monkeypatch.setattr(solver, "QUIET_S", 0.0)
    lines = []
    sensitivity.scan(net_path, weights, keeps=(0.5,), layers=["conv1"], iters=2, bn_batches=3,
                     progress=lines.append)
    err = capsys.readouterr().err.splitlines()
    for label in ("baseline", "conv1 keep 0.5"):
        assert any(l.startswith("test: %s 2/2 (100%%) " % label) for l in err)
    assert sum(l.startswith("BatchNorm statistics 3/3 ") for l in err) == 2
    assert lines[0].startswith("[1/1] conv1 keep 0.5: ")
    # without progress, none
    sensitivity.scan(net_path, weights, keeps=(0.5,), layers=["conv1"], iters=2, bn_batches=3)
    assert capsys.readouterr().err == ""


def test_a_config_from_a_scan_takes_each_layers_smallest_keep_within_the_drop(tmp_path,
                                                                             tiny_trained):
    from caffe_admm.config import Constraint, load_config
    from caffe_admm.protoio import read_net
    result = sensitivity.scan(tiny_trained["net"], tiny_trained["weights"],
                              keeps=(1.0, 0.5, 0.25), iters=2)
    base = result["baseline"]["accuracy"]
    drops = {n: {r["keep"]: 100 * (base - r["scores"]["accuracy"]) for r in e["results"]}
             for n, e in result["layers"].items()}
    max_drop = sorted(d[0.25] for d in drops.values())[1]  # one layer at 0.25 at least
    expected = {n: min(k for k, d in ds.items() if d <= max_drop) for n, ds in drops.items()}
    assert 0.25 in expected.values()
    expected = {n: k for n, k in expected.items() if k < 1}  # keep 1 prunes nothing: left out
    path = tmp_path / "c.prototxt"
    path.write_text(sensitivity.config_text(result, max_drop))
    cfg = load_config(str(path), read_net(tiny_trained["net"]))
    assert {s.name: s.constraints for s in cfg.layers} == {
        n: (Constraint("filter", k),) for n, k in expected.items()}
    with pytest.raises(ValueError, match="no layer stays within -1 points"):
        sensitivity.config_text(result, -1)
    # a layer over the drop at every ratio is left out, and named
    text = sensitivity.config_text(dict(result, keeps=[0.25], layers={
        n: dict(e, results=e["results"][2:]) for n, e in result["layers"].items()}),
        max_drop)
    over = sorted(n for n, d in drops.items() if d[0.25] > max_drop)
    assert over and all("# left out: %s (more than %g points at every keep ratio below 1)"
                        % (n, max_drop) in text for n in over)
    res = run("sensitivity", "--model", tiny_trained["net"], "--weights",
              tiny_trained["weights"], "--iters", "1", "--config-out", str(path))
    assert res.returncode == 2 and "exists; --config-out writes a new file" in res.stderr


def test_an_interrupted_scan_goes_on_from_its_json(tmp_path, tiny_trained, monkeypatch):
    path = str(tmp_path / "s.json")
    args = (tiny_trained["net"], tiny_trained["weights"], (1.0, 0.5), "FILTER", None, 2)
    straight = sensitivity.scan(*args)
    scored = sensitivity._scored
    interrupt_on_call(monkeypatch, sensitivity, "_scored", 3)  # conv2's first score
    with pytest.raises(KeyboardInterrupt):
        sensitivity.scan_saved(path, *args)
    with open(path) as f:
        assert list(json.load(f)["layers"]) == ["conv1"]
    monkeypatch.setattr(sensitivity, "_scored", scored)
    lines = []
    result = sensitivity.scan_saved(path, *args, progress=lines.append)
    assert lines[0] == "conv1: from the earlier scan" and len(lines) == 5
    assert lines[1].startswith("[1/4] conv2 keep 1: accuracy ") and lines[1].endswith(" left)")
    assert lines[-1].startswith("[4/4] ") and lines[-1].endswith(" (0:00 left)")
    assert result["layers"] == straight["layers"] and result["inputs"] == straight["inputs"]
    with open(path) as f:
        assert json.load(f) == result
    with pytest.raises(ValueError, match="s.json: the earlier scan was made from other files "
                                         "or settings"):
        sensitivity.scan_saved(path, tiny_trained["net"], tiny_trained["weights"], (0.5,),
                               "FILTER", None, 2)
    (tmp_path / "other.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="other.json is not a sensitivity scan's JSON"):
        sensitivity.scan_saved(str(tmp_path / "other.json"), *args)
    with pytest.raises(ValueError, match="bn_batches must be >= 0, got -1"):
        sensitivity.scan(*args, bn_batches=-1)


def test_a_deconvolution_is_counted_in_the_shares_but_not_scanned(tmp_path, tiny_data):
    net = TINY_NET.replace(
        'layer { name: "ip1" type: "InnerProduct" bottom: "conv2"',
        'layer { name: "up" type: "Deconvolution" bottom: "conv2" top: "up"\n'
        '  convolution_param { num_output: 4 kernel_size: 1 weight_filler { type: "xavier" } } }'
        '\nlayer { name: "ip1" type: "InnerProduct" bottom: "up"')
    assert 'name: "up"' in net
    _, net_path = write_tiny(tmp_path, tiny_data, net=net)
    weights = str(tmp_path / "w.caffemodel")
    caffe.Net(net_path, caffe.TEST).save(weights)
    result = sensitivity.scan(net_path, weights, keeps=(0.5,), iters=1)
    assert list(result["layers"]) == ["conv1", "conv2", "ip1"]
    assert sum(e["params_share"] for e in result["layers"].values()) < 1  # up's 32 weights
    with pytest.raises(ValueError, match="no Convolution or InnerProduct layer named 'up'"):
        sensitivity.scan(net_path, weights, layers=["up"], iters=1)


def _loads_coupled_at(tmp_path, text, net_path, keep):
    """``text`` loads as a config that prunes conv1 and conv2 at ``keep``,
    coupled, and nothing else."""
    from caffe_admm.config import load_config
    from caffe_admm.protoio import read_net
    path = tmp_path / "c.prototxt"
    path.write_text(text)
    cfg = load_config(str(path), read_net(net_path))
    assert [(s.name, s.constraints[0].keep_ratio) for s in cfg.layers] == [("conv1", keep),
                                                                          ("conv2", keep)]
    assert cfg.coupled == (("conv1", "conv2"),)


def test_a_config_from_a_scan_gives_a_streams_writers_one_ratio(tmp_path, tiny_data):
    """RESIDUAL_NET: conv1 and conv2 write one sum. The scan (made up here)
    lets conv1 go to 0.25 and conv2 to 0.5: both get 0.5, so the run couples
    them; with conv2 over the drop everywhere, the stream is named as left
    uncoupled."""
    from test_solver import RESIDUAL_NET
    _, net_path = write_tiny(tmp_path, tiny_data, net=RESIDUAL_NET)

    def scan_of(accuracies):
        return {"model": net_path, "weights": "w", "kind": "FILTER", "keeps": [0.5, 0.25],
                "iters": 4, "baseline": {"accuracy": 0.9},
                "layers": {n: {"type": "Convolution", "params_share": 0.3, "flops_share": 0.3,
                               "results": [{"keep": k, "scores": {"accuracy": a}}
                                           for k, a in zip((0.5, 0.25), accs)]}
                           for n, accs in accuracies.items()}}
    text = sensitivity.config_text(scan_of({"conv1": (0.9, 0.895), "conv2": (0.895, 0.5),
                                            "ip1": (0.5, 0.5)}), 1.0)
    assert "# the stream of conv1, conv2: one keep ratio, 0.5, the largest of theirs" in text
    _loads_coupled_at(tmp_path, text, net_path, 0.5)
    text = sensitivity.config_text(scan_of({"conv1": (0.9, 0.895), "conv2": (0.5, 0.5)}), 1.0)
    assert "# the stream of conv1, conv2: conv2 left out, so the run leaves it uncoupled" in text
    assert 'layer { name: "conv1" kind: FILTER keep_ratio: 0.25 }' in text


def _residual_weights(tmp_path, tiny_data):
    """RESIDUAL_NET (conv1 and conv2 write one sum), briefly trained, its
    filters rescaled so that each writer alone keeps other filters than the
    two together: conv1's 4 largest are 0-3, conv2's 4-7, and the joint
    norms' 0, 1, 5, 6."""
    from test_solver import RESIDUAL_NET
    solver_path, net_path = write_tiny(tmp_path, tiny_data, net=RESIDUAL_NET, max_iter=30)
    weights = solver.train(solver_path, str(tmp_path / "base"), progress=False)["weights"]
    net = caffe.Net(net_path, caffe.TEST, weights=weights)
    for name, norms in (("conv1", [4, 4, 3, 3, 1, 1, 0.5, 0.5]),
                        ("conv2", [1, 0.5, 0.5, 1, 3, 3.5, 3.6, 2])):
        w = net.params[name][0].data
        w *= (np.array(norms) / np.sqrt((w.reshape(8, -1) ** 2).sum(axis=1)))[:, None, None, None]
    path = str(tmp_path / "rescaled.caffemodel")
    net.save(path)
    return net_path, path


def test_a_residual_streams_writers_are_also_scanned_pruned_together_by_joint_norm(
        tmp_path, tiny_data):
    """Beside each writer alone, a row with both pruned to the filters of
    largest joint norm, as a coupled run prunes them: here 0, 1, 5 and 6,
    which neither writer alone keeps."""
    from caffe_admm import protoio
    net_path, weights = _residual_weights(tmp_path, tiny_data)
    result = sensitivity.scan(net_path, weights, keeps=(0.5,), iters=2, bn_batches=0)
    assert list(result["layers"]) == ["conv1", "conv2", "ip1"]
    [stream] = result["streams"]
    layers = result["layers"]
    assert stream["writers"] == ["conv1", "conv2"] and stream["type"] == "stream"
    assert stream["params"] == layers["conv1"]["params"] + layers["conv2"]["params"]
    assert stream["flops_share"] == pytest.approx(layers["conv1"]["flops_share"] +
                                                  layers["conv2"]["flops_share"])
    assert [(r["keep"], r["groups_kept"], r["groups"]) for r in stream["results"]] == [
        (0.5, 4, 8)]

    def pruned_to(kept_of):
        net = caffe.Net(net_path, caffe.TEST, weights=weights)
        masks = {n: np.broadcast_to(np.isin(np.arange(8), kept)[:, None, None, None],
                                    net.params[n][0].data.shape).copy()
                 for n, kept in kept_of.items()}
        solver.hard_prune(net, protoio.read_net(net_path), masks)
        return solver.evaluate_net(net, 2)
    assert stream["results"][0]["scores"] == pruned_to({"conv1": [0, 1, 5, 6],
                                                        "conv2": [0, 1, 5, 6]})
    assert layers["conv1"]["results"][0]["scores"] == pruned_to({"conv1": [0, 1, 2, 3]})
    assert layers["conv2"]["results"][0]["scores"] == pruned_to({"conv2": [4, 5, 6, 7]})
    assert stream["results"][0]["scores"] not in (layers["conv1"]["results"][0]["scores"],
                                                  layers["conv2"]["results"][0]["scores"])
    table = sensitivity.format_table(result).splitlines()
    assert table[5].startswith("stream 1     2 writers") and \
        ("%.4f" % stream["results"][0]["scores"]["accuracy"]) in table[5]
    assert table[6] == ("stream 1: conv1, conv2, pruned together to the filters of largest "
                        "joint norm, as a coupled run prunes them")

    # an interrupted scan goes on with the stream; a finished one takes it as it is
    lines = []
    again = sensitivity.scan(net_path, weights, keeps=(0.5,), iters=2, bn_batches=0,
                             previous=dict(result, streams=[]), progress=lines.append)
    assert again == result and lines == [
        "conv1: from the earlier scan", "conv2: from the earlier scan",
        "ip1: from the earlier scan",
        "[1/1] stream of conv1, conv2 keep 0.5: %s (0:00 left)"
        % sensitivity._fmt(stream["results"][0]["scores"])]
    lines = []
    sensitivity.scan(net_path, weights, keeps=(0.5,), iters=2, bn_batches=0, previous=result,
                     progress=lines.append)
    assert lines[-1] == "stream of conv1, conv2: from the earlier scan"

    # no row where a writer is not scanned, or under a kind that does not cut the stream
    part = sensitivity.scan(net_path, weights, keeps=(0.5,), layers=["conv2"], iters=2,
                            bn_batches=0)
    assert part["streams"] == [] and part["notes"] == [
        "the stream of conv1, conv2: conv1 not scanned, so not pruned together"]
    shape = sensitivity.scan(net_path, weights, keeps=(0.5,), kind="SHAPE", layers=["conv2"],
                             iters=2, bn_batches=0)
    assert shape["streams"] == [] and shape["notes"] == []


def test_a_config_from_a_scan_takes_a_streams_ratio_from_its_writers_pruned_together(
        tmp_path, tiny_data):
    """Alone, conv1 and conv2 stay within the drop at 0.25; together only at
    0.5, so both get 0.5. Where together they lose too much at every ratio,
    both are left out, named, though each alone would have done."""
    from test_solver import RESIDUAL_NET
    _, net_path = write_tiny(tmp_path, tiny_data, net=RESIDUAL_NET)

    def scan_of(stream):
        row = {"type": "Convolution", "params_share": 0.3, "flops_share": 0.3,
               "results": [{"keep": k, "scores": {"accuracy": 0.9}} for k in (0.5, 0.25)]}
        return {"model": net_path, "weights": "w", "kind": "FILTER", "keeps": [0.5, 0.25],
                "iters": 4, "baseline": {"accuracy": 0.9},
                "layers": {"conv1": row, "conv2": row,
                           "ip1": dict(row, results=[{"keep": k, "scores": {"accuracy": 0.5}}
                                                     for k in (0.5, 0.25)])},
                "streams": [dict(row, type="stream", writers=["conv1", "conv2"], results=[
                    {"keep": k, "scores": {"accuracy": a}} for k, a in zip((0.5, 0.25), stream)])]}
    text = sensitivity.config_text(scan_of((0.895, 0.8)), 1.0)
    assert ('layer { name: "conv1" kind: FILTER keep_ratio: 0.5 }  # -0.50 points with the '
            'stream of conv1, conv2 pruned together, 30.0% of the weights') in text
    assert "# pruning them together did." in text and "the largest of theirs" not in text
    _loads_coupled_at(tmp_path, text, net_path, 0.5)
    with pytest.raises(ValueError, match=r"no layer stays within 1 points .* allow a larger "
                                         r"drop \(the least: 10.00 points, the stream of conv1, "
                                         r"conv2 at 0.25\)"):
        sensitivity.config_text(scan_of((0.8, 0.8)), 1.0)
    text = sensitivity.config_text(dict(scan_of((0.8, 0.8)), layers=dict(
        scan_of((0.8, 0.8))["layers"], ip1=scan_of(())["layers"]["conv1"])), 1.0)
    assert "# left out: conv1 (the stream of conv1, conv2: more than 1 points at every keep " \
           "ratio below 1, pruned together)" in text
    assert 'name: "conv1"' not in text and 'name: "ip1" kind: FILTER keep_ratio: 0.25' in text


def test_a_config_from_a_scan_leaves_out_a_layer_whose_pruning_compaction_keeps(tmp_path,
                                                                              tiny_trained):
    """ip1 (the classes) stays within the drop here, but compaction keeps
    its pruned filters: it is left out, and why is said."""
    row = {"type": "InnerProduct", "params_share": 0.4, "flops_share": 0.1,
           "results": [{"keep": 0.5, "scores": {"accuracy": 0.9}, "compact_params": 1160}]}
    scan = {"model": tiny_trained["net"], "weights": "w", "kind": "FILTER", "keeps": [0.5],
            "iters": 2, "baseline": {"accuracy": 0.9}, "params": 1160,
            "layers": {"conv1": dict(row, type="Convolution", results=[
                dict(row["results"][0], compact_params=836)]), "ip1": row}}
    text = sensitivity.config_text(scan, 1.0)
    assert 'layer { name: "conv1" kind: FILTER keep_ratio: 0.5 }' in text
    assert "# left out: ip1 (compaction keeps its pruned filters, so pruning it saves " \
           "nothing (a loss or the net's outputs read them whole" in text
    assert 'name: "ip1"' not in text
    # a scan from before the field: taken as it is
    del row["results"][0]["compact_params"]
    assert 'layer { name: "ip1" kind: FILTER keep_ratio: 0.5 }' in sensitivity.config_text(
        scan, 1.0)

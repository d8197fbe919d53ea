"""A caffemodel's structured sparsity, and what compaction makes of it (real Caffe)."""

import json
import subprocess

import numpy as np
import pytest

from caffe_admm import compact, sparsity
from caffe_admm.backend import caffe

from conftest import ROOT, write

@pytest.fixture
def pruned(tmp_path):
    """test_compact's GROUPED net without its group: c1 (8 filters, 4 x 3 x 3),
    c2 (6 filters, 8 x 3 x 3), fc (3 rows, 6 x 8 x 8 inputs). c1: filter 1
    zero (and its bias), column (channel 0, 0, 0) zero in all filters; c2
    dense; fc: its first 64 inputs (c2's channel 0) zero."""
    from test_compact import GROUPED
    assert " group: 2" in GROUPED
    model = write(tmp_path / "s.prototxt", GROUPED.replace(" group: 2", ""))
    net = caffe.Net(model, caffe.TEST)
    rng = np.random.default_rng(0)
    for name in ("c1", "c2", "fc"):
        for blob in net.params[name]:
            blob.data[...] = rng.uniform(0.5, 1.0, blob.data.shape)
    net.params["c1"][0].data[1] = 0
    net.params["c1"][1].data[1] = 0
    net.params["c1"][0].data[:, 0, 0, 0] = 0
    net.params["fc"][0].data[:, :64] = 0
    weights = str(tmp_path / "s.caffemodel")
    net.save(weights)
    return model, weights


def test_counts_and_compacted_shapes_are_exact(pruned):
    result = sparsity.measure(*pruned)
    c1, c2, fc = (result["layers"][n] for n in ("c1", "c2", "fc"))
    assert (c1["type"], c2["type"], fc["type"]) == ("Convolution", "Convolution", "InnerProduct")
    # c1: 8 x 36 weights, less filter 1 (36) and the column in the other 7
    assert (c1["params"], c1["nonzero"]) == (288, 288 - 36 - 7)
    assert (c1["filters_kept"], c1["channels_kept"], c1["shapes_kept"]) == (7, 4, 35)
    assert c1["compact_shape"] == [7, 4, 3, 3] and c1["compact_nonzero"] == 245
    # c2: dense, but compaction cuts its channel 1 (c1's filter 1 is gone)
    # and its filter 0, which fc no longer reads: 5 x 7 x 9 weights stay
    assert (c2["nonzero"], c2["channels_kept"], c2["filters_kept"]) == (432, 8, 6)
    assert c2["compact_shape"] == [5, 7, 3, 3] and c2["compact_nonzero"] == 315
    # fc: c2's channel 0 (64 of 384 inputs) zero in all rows; shape columns = inputs
    assert (fc["nonzero"], fc["shapes_kept"], fc["channels_kept"]) == (960, 320, 320)
    assert fc["compact_shape"] == [3, 320] and fc["compact_nonzero"] == 960
    t = result["total"]
    assert (t["params"], t["nonzero"]) == (288 + 432 + 1152, 245 + 432 + 960)
    assert (t["compact_params"], t["compact_nonzero"]) == (252 + 315 + 960, 245 + 315 + 960)
    assert result["compaction_error"] is None
    lines = sparsity.format_table(result).splitlines()
    assert lines[1].split() == ["c1", "Convolution", "8x4x3x3", "85.07%", "7/8", "4/4", "35/36",
                                "7x4x3x3"]
    assert lines[-1].startswith("compacted: params 1872 -> 1527 (1.23x)")
    assert lines[-1].endswith("it cuts 117 non-zero weights (on inputs no kept filter feeds, or "
                              "in filters no kept weight reads) and keeps 7 zeros inside the "
                              "kept shapes")


def test_the_counts_stand_where_compaction_refuses_the_net(tmp_path, monkeypatch):
    from test_compact import TILE_NET
    monkeypatch.setattr(compact, "BARRIERS", compact.BARRIERS - {"Tile"})
    model = write(tmp_path / "t.prototxt", TILE_NET)
    net = caffe.Net(model, caffe.TEST)
    net.params["c1"][0].data[...] = 1
    net.params["c1"][0].data[2] = 0
    weights = str(tmp_path / "t.caffemodel")
    net.save(weights)
    result = sparsity.measure(model, weights)
    assert "layer 'tile': type Tile is not supported" in result["compaction_error"]
    assert result["layers"]["c1"]["filters_kept"] == 3
    assert "compact_shape" not in result["layers"]["c1"]
    assert set(result["total"]) == {"params", "nonzero", "flops"}
    assert sparsity.format_table(result).splitlines()[-1].startswith(
        "compaction refuses this net: ")
    from caffe_admm import cli
    assert cli.main(["sparsity", "--model", model, "--weights", weights]) == 1


def test_cli_prints_the_table_and_writes_json(pruned, tmp_path):
    out = tmp_path / "s.json"
    res = subprocess.run([ROOT + "/.venv/bin/caffe-admm", "sparsity", "--model", pruned[0],
                          "--weights", pruned[1], "--json", str(out)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[-1].startswith("compacted: params 1872 -> 1527")
    with open(out) as f:
        assert json.load(f)["layers"]["c1"]["filters_kept"] == 7
    res = subprocess.run([ROOT + "/.venv/bin/caffe-admm", "sparsity", "--model", pruned[0],
                          "--weights", str(tmp_path / "none.caffemodel")],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "weights file" in res.stderr and "not found" in res.stderr


def test_grouped_convolutions_and_deconvolutions_count_their_own_filters_and_channels(tmp_path):
    """c2 of test_compact's GROUPED net (6 filters, group 2, 4 channels a
    group): a Deconvolution after it stores its weight inputs x outputs."""
    from test_compact import GROUPED
    model = write(tmp_path / "g.prototxt", GROUPED.replace(
        'layer { name: "fc"', 'layer { name: "up" type: "Deconvolution" bottom: "c2" top: "up"\n'
        '        convolution_param { num_output: 3 kernel_size: 2 stride: 2 } }\n'
        'layer { name: "fc"').replace('bottom: "c2" top: "fc"', 'bottom: "up" top: "fc"'))
    net = caffe.Net(model, caffe.TEST)
    for name in ("c1", "c2", "up", "fc"):
        net.params[name][0].data[...] = 1
    net.params["c2"][0].data[3] = 0          # a filter of group 1
    net.params["c2"][0].data[:3, 1] = 0      # group 0 no longer reads input channel 1
    net.params["up"][0].data[:, 1] = 0       # the Deconvolution's output 1
    weights = str(tmp_path / "g.caffemodel")
    net.save(weights)
    result = sparsity.measure(model, weights)
    c2, up = result["layers"]["c2"], result["layers"]["up"]
    assert (c2["group"], c2["filters_kept"], c2["channels"], c2["channels_kept"]) == (2, 5, 8, 7)
    assert (c2["shapes"], c2["shapes_kept"]) == (72, 63)
    assert (up["type"], up["shape"], up["filters"], up["filters_kept"]) == (
        "Deconvolution", [6, 3, 2, 2], 3, 2)
    assert (up["channels"], up["channels_kept"]) == (6, 6)

"""A caffemodel's structured sparsity, and what compaction makes of it (real Caffe)."""

import json
import subprocess

import numpy as np
import pytest

from caffe_admm import compact, sparsity
from caffe_admm.backend import caffe

from conftest import ROOT, write

NET = """
    name: "s"
    layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 dim: 6 dim: 6 } } }
    layer { name: "c1" type: "Convolution" bottom: "data" top: "c1"
            convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
    layer { name: "r1" type: "ReLU" bottom: "c1" top: "c1" }
    layer { name: "c2" type: "Convolution" bottom: "c1" top: "c2"
            convolution_param { num_output: 3 kernel_size: 3 } }
    layer { name: "ip" type: "InnerProduct" bottom: "c2" top: "ip"
            inner_product_param { num_output: 2 } }
"""


@pytest.fixture
def pruned(tmp_path):
    """c1: filter 1 zero (and its bias), column (channel 0, 0, 0) zero in all
    filters; c2 dense; ip: its first 16 inputs (c2's channel 0) zero."""
    model = write(tmp_path / "s.prototxt", NET)
    net = caffe.Net(model, caffe.TEST)
    rng = np.random.default_rng(0)
    for name in ("c1", "c2", "ip"):
        for blob in net.params[name]:
            blob.data[...] = rng.uniform(0.5, 1.0, blob.data.shape)
    net.params["c1"][0].data[1] = 0
    net.params["c1"][1].data[1] = 0
    net.params["c1"][0].data[:, 0, 0, 0] = 0
    net.params["ip"][0].data[:, :16] = 0
    weights = str(tmp_path / "s.caffemodel")
    net.save(weights)
    return model, weights


def test_counts_and_compacted_shapes_are_exact(pruned):
    result = sparsity.measure(*pruned)
    c1, c2, ip = (result["layers"][n] for n in ("c1", "c2", "ip"))
    assert (c1["type"], c2["type"], ip["type"]) == ("Convolution", "Convolution", "InnerProduct")
    # c1: 4 x 18 weights, less filter 1 (18) and the column in the other 3
    assert (c1["params"], c1["nonzero"]) == (72, 72 - 18 - 3)
    assert (c1["filters_kept"], c1["channels_kept"], c1["shapes_kept"]) == (3, 2, 17)
    assert c1["compact_shape"] == [3, 2, 3, 3] and c1["compact_nonzero"] == 51
    # c2: dense, but compaction cuts its channel 1 (c1's filter 1 is gone)
    # and its filter 0, which ip no longer reads: 2 x 3 x 9 weights stay
    assert (c2["nonzero"], c2["channels_kept"], c2["filters_kept"]) == (108, 4, 3)
    assert c2["compact_shape"] == [2, 3, 3, 3] and c2["compact_nonzero"] == 54
    # ip: c2's channel 0 (16 of 48 inputs) zero in both rows; shape columns = inputs
    assert (ip["nonzero"], ip["shapes_kept"], ip["channels_kept"]) == (64, 32, 32)
    assert ip["compact_shape"] == [2, 32] and ip["compact_nonzero"] == 64
    t = result["total"]
    assert (t["params"], t["nonzero"]) == (72 + 108 + 96, 51 + 108 + 64)
    assert (t["compact_params"], t["compact_nonzero"]) == (54 + 54 + 64, 51 + 54 + 64)
    assert result["compaction_error"] is None
    lines = sparsity.format_table(result).splitlines()
    assert lines[1].split() == ["c1", "Convolution", "4x2x3x3", "70.83%", "3/4", "2/2", "17/18",
                                "3x2x3x3"]
    assert lines[-1].startswith("compacted: params 276 -> 172 (1.60x)")
    assert lines[-1].endswith("it cuts 54 non-zero weights (on inputs no kept filter feeds, or "
                              "in filters no kept weight reads) and keeps 3 zeros inside the "
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
    assert res.stdout.splitlines()[-1].startswith("compacted: params 276 -> 172")
    with open(out) as f:
        assert json.load(f)["layers"]["c1"]["filters_kept"] == 3
    res = subprocess.run([ROOT + "/.venv/bin/caffe-admm", "sparsity", "--model", pruned[0],
                          "--weights", str(tmp_path / "none.caffemodel")],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "weights file" in res.stderr and "not found" in res.stderr

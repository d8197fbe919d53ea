"""benchmarks/live_inputs_at_scale.py: with live_inputs_only, compaction cuts
no kept weight of the generated full-size nets; without it, a large share."""

import json

from conftest import load_benchmark


def test_live_inputs_only_leaves_compaction_nothing_to_cut(tmp_path, capsys):
    bench = load_benchmark("live_inputs_at_scale")
    out = tmp_path / "live.json"
    rows = bench.main(["--nets", "mobilenet_v2", "resnext50", "--size", "32",
                       "--out", str(out)])
    assert json.load(open(str(out))) == rows
    for r in rows:
        # the residual streams' readers, the grouped 3x3s (FILTER) and the
        # projections after the depthwise convolutions (left out) all see
        # which channels are dead
        assert r["live"]["compacted"] == r["live"]["kept"] > 0
        assert r["plain"]["cut_fraction"] > 0.3
    assert "resnext50" in capsys.readouterr().out


def test_the_config_prunes_grouped_convolutions_by_filter_and_leaves_the_classifier(tmp_path):
    bench = load_benchmark("live_inputs_at_scale")
    from caffe_admm import protoio
    from caffe_admm.config import Constraint, load_config
    path = tmp_path / "n.prototxt"
    path.write_text(bench.NETS["resnext50"](32))
    net_param = protoio.read_net(str(path))
    text = bench.config_text(net_param, 0.5, True)
    assert "live_inputs_only: true" in text and "default { kind: FILTER_SHAPE }" in text
    assert 'layer { name: "fc" keep_ratio: 1 }' in text
    config = tmp_path / "c.prototxt"
    config.write_text(text)
    cfg = load_config(str(config), net_param)
    # global_keep_ratio's own choice for the grouped 3x3s
    assert cfg.layer("res2_1/3x3").constraints == (Constraint("filter", 0.5),)
    assert "res2_1/3x3" in dict(cfg.filters_only) and cfg.left_out == ()
    assert cfg.layer("res2_1/reduce").constraints == (Constraint("filter", 0.5),
                                                      Constraint("shape", 0.5))

"""benchmarks/compact_at_scale.py: generated full-size nets, pruned as pruning
leaves them, compact exactly and keep no zero filter."""

import json

from conftest import load_benchmark


def test_generated_nets_compact_exactly_with_no_zero_filter_kept(tmp_path, capsys):
    bench = load_benchmark("compact_at_scale")
    out = tmp_path / "scale.json"
    bench.main(["--nets", "mobilenet_v2", "resnext50", "--size", "32", "--out", str(out)])
    rows = {r["net"]: r for r in json.load(open(str(out)))}
    assert "timing" not in rows["mobilenet_v2"]
    # ResNeXt's reductions keep as many filters in each group of their grouped
    # readers, so compaction cuts them all; MobileNetV2's depthwise layers follow
    assert all(r["passed"] and r["warnings"] == [] for r in rows.values())
    assert all(r["couple_sums"] for r in rows.values())
    # conv and fc weights: torchvision's 3,504,872 parameters less BatchNorm's 34,112 and
    # the fc bias
    assert rows["mobilenet_v2"]["params"] == 3469760
    # the residual streams' writers keep the same filters, so compaction cuts half
    # the streams' channels too: 3.70x (1.81x pruned each on its own, --no-couple)
    assert rows["resnext50"]["params"] / rows["resnext50"]["compact_params"] > 3.5
    assert rows["mobilenet_v2"]["flops"] / rows["mobilenet_v2"]["compact_flops"] > 3.0
    assert "resnext50" in capsys.readouterr().out


def test_timing_counts_the_pruned_conv_and_fc_layers_against_the_target(tmp_path, capsys):
    bench = load_benchmark("compact_at_scale")
    out = tmp_path / "timed.json"
    bench.main(["--nets", "mobilenet_v2", "--size", "32", "--time", "2", "--repeats", "1",
                "--out", str(out)])
    [row] = json.load(open(str(out)))
    summary = row["timing_summary"]["2"]
    # 52 convolutions (17 depthwise ones among them, whose FLOPs fall with their
    # producers' filters) and the classifier, whose inputs halve
    assert summary["layers"] == 53 and 0 <= summary["met"] <= 53
    low, ratio = summary["lowest"]
    layer = row["timing"]["batches"]["2"]["layers"][low]
    assert ratio == layer["speedup"] / layer["flop_reduction"] <= summary["median_of_flop"]
    assert "batch 2: whole net" in capsys.readouterr().out

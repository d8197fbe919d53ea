"""benchmarks/couple_sums_accuracy.py: a small ResNet pruned with and without
couple_sums, compacted and scored."""

import json

from conftest import load_benchmark


def test_coupled_runs_compact_further_and_every_run_is_exact(tmp_path, tiny_data, capsys):
    """The net's convolutions have no biases (bias_term: false), as in ResNets:
    pruning them end to end once failed in the hooks (test_layers)."""
    bench = load_benchmark("couple_sums_accuracy")
    out = tmp_path / "c.json"
    rows = bench.main(["--train", tiny_data["train"], "--test", tiny_data["test"],
                       "--test-iter", "1", "--keep", "0.5", "--methods", "MAGNITUDE",
                       "--baseline-iters", "40", "--steps", "2", "--iters", "10",
                       "--retrain", "20", "--work", str(tmp_path / "work"), "--out", str(out)])
    assert json.load(open(str(out)))["rows"] == rows
    coupled, each = rows
    assert (coupled["run"], each["run"]) == ("magnitude_keep0.5_coupled", "magnitude_keep0.5_each")
    assert coupled["coupled"] == [["conv1", "a2"], ["b2", "b_proj"]] and each["coupled"] == []
    # the same keep ratio; coupled, compaction also cuts half of each stream
    assert coupled["params"] == each["params"]
    assert coupled["compact_params"] < each["compact_params"]
    assert coupled["compact_flops"] < each["compact_flops"]
    assert all(r["passed"] and r["warnings"] == [] for r in rows)
    assert all(0 <= r["accuracy"] <= 1 for r in rows)
    assert "baseline accuracy" in capsys.readouterr().out


def test_with_live_inputs_only_a_coupled_run_keeps_no_weight_on_a_dead_input(tmp_path, tiny_data):
    """FILTER_SHAPE: b1 and b_proj read the first stream, a1 the stem's
    output (through a BatchNorm on a summed blob); with the streams coupled
    their columns are chosen among the live channels, so compaction cuts no
    kept weight."""
    bench = load_benchmark("couple_sums_accuracy")
    rows = bench.main(["--train", tiny_data["train"], "--test", tiny_data["test"],
                       "--test-iter", "1", "--keep", "0.5", "--methods", "MAGNITUDE",
                       "--baseline-iters", "40", "--steps", "2", "--iters", "10",
                       "--retrain", "20", "--kind", "FILTER_SHAPE", "--live-inputs",
                       "--couple", "coupled",
                       "--work", str(tmp_path / "work"), "--out", str(tmp_path / "c.json")])
    coupled, = rows  # --couple coupled: no run with couple_sums: false
    assert coupled["run"] == "magnitude_keep0.5_coupled_fs_live"
    assert coupled["kind"] == "FILTER_SHAPE" and coupled["live_inputs_only"]
    assert coupled["dead_input_weights"] == 0 and coupled["kept_weights"] > 0
    assert coupled["passed"] and coupled["warnings"] == []


def test_slimming_runs_on_the_benchmarks_resnet(tmp_path, tiny_data):
    """Every convolution there has a BatchNorm and Scale after it, so each
    gets SLIMMING's Lasso on its scale; the classifier is kept whole."""
    bench = load_benchmark("couple_sums_accuracy")
    rows = bench.main(["--train", tiny_data["train"], "--test", tiny_data["test"],
                       "--test-iter", "1", "--keep", "0.5", "--methods", "SLIMMING",
                       "--baseline-iters", "40", "--steps", "2", "--iters", "10",
                       "--retrain", "20", "--couple", "coupled", "--lasso-lambda", "0.05",
                       "--work", str(tmp_path / "work"), "--out", str(tmp_path / "c.json")])
    [row] = rows
    assert row["run"] == "slimming_keep0.5_coupled_l0.05" and row["passed"]
    assert row["compact_params"] < row["params"]
    with open(tmp_path / "work" / "seed1" / row["run"] / "report.json") as f:
        report = json.load(f)
    assert report["method"] == "slimming" and report["layers"]["a1"]["lasso_on"] == "a1/scale"
    # one ranking of all the scales: the same total of kept filters, shared as they fall
    args = ["--train", tiny_data["train"], "--test", tiny_data["test"], "--test-iter", "1",
            "--keep", "0.5", "--methods", "SLIMMING", "--baseline-iters", "40", "--steps", "2",
            "--iters", "10", "--retrain", "20", "--couple", "coupled", "--lasso-lambda", "0.05",
            "--work", str(tmp_path / "work"), "--out", str(tmp_path / "g.json")]
    [shared] = bench.main(args + ["--slimming-global"])
    assert shared["run"] == "slimming_keep0.5_coupled_l0.05_global" and shared["slimming_global"]
    assert shared["passed"] and not row["slimming_global"]
    assert sum(shared["filters_kept"].values()) == sum(row["filters_kept"].values())
    with open(tmp_path / "work" / "seed1" / shared["run"] / "config.prototxt") as f:
        assert "slimming_global: true" in f.read()
    # a floor at the keep ratio leaves the ranking nothing to share: the per-layer counts
    [floored] = bench.main(args + ["--slimming-global", "--slimming-min-keep", "0.5"])
    assert floored["run"] == "slimming_keep0.5_coupled_l0.05_global_floor0.5"
    assert floored["filters_kept"] == row["filters_kept"]
    with open(tmp_path / "work" / "seed1" / floored["run"] / "config.prototxt") as f:
        assert "slimming_min_keep_ratio: 0.5" in f.read()
    import pytest
    with pytest.raises(SystemExit):
        bench.main(args[:9] + ["ADMM"] + args[10:] + ["--slimming-global"])
    with pytest.raises(SystemExit):
        bench.main(args + ["--slimming-min-keep", "0.5"])


def test_missing_data_is_a_clear_error(tmp_path, capsys):
    bench = load_benchmark("couple_sums_accuracy")
    import pytest
    with pytest.raises(SystemExit):
        bench.main(["--train", str(tmp_path / "none"), "--out", str(tmp_path / "c.json")])
    assert "run `make data`" in capsys.readouterr().err

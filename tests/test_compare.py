"""benchmarks/compare_methods.py: seeded baselines and the over-seeds aggregate."""

import json
import os

import numpy as np
import pytest

from caffe_admm import protoio

from conftest import load_benchmark, write_tiny


@pytest.fixture(scope="module")
def compare():
    return load_benchmark("compare_methods")


def _weights(model):
    return [np.array(b.data) for layer in protoio.read_caffemodel(model).layer
            for b in layer.blobs]


def test_seeded_baseline_repeats_and_differs_by_seed(tmp_path, tiny_data, compare):
    solver_path, _ = write_tiny(tmp_path, tiny_data, max_iter=20)
    runs = {}
    for tag, seed in (("a", 2), ("b", 2), ("c", 3)):
        seeded, model = compare.seeded_baseline(solver_path, seed, str(tmp_path / tag))
        assert protoio.read_solver(seeded).random_seed == seed
        assert os.path.isabs(protoio.read_solver(seeded).net)
        runs[tag] = _weights(model)
    assert all(np.array_equal(x, y) for x, y in zip(runs["a"], runs["b"]))
    assert not all(np.array_equal(x, y) for x, y in zip(runs["a"], runs["c"]))
    mtime = os.path.getmtime(model)
    compare.seeded_baseline(solver_path, 3, str(tmp_path / "c"))   # reused, not retrained
    assert os.path.getmtime(model) == mtime


def _row(level, method, seed, acc, compacted=None):
    return {"dataset": "mnist", "level": level, "method": method, "seed": seed,
            "accuracy": acc, "compression": 4.8, "compacted_compression": compacted,
            "baseline": 0.98 if seed is None else 1.0}


def test_aggregate_means_and_paired_differences(compare):
    rows = [_row("mild", "admm", None, 0.90), _row("mild", "ssl", None, 0.80),
            _row("mild", "magnitude", None, 0.91),
            _row("mild", "admm", 2, 0.94, 5.0), _row("mild", "ssl", 2, 0.85),
            _row("mild", "magnitude", 2, 0.92)]
    (cell,) = compare.aggregate(rows)
    assert cell["seeds"] == [1, 2]
    assert cell["baseline"] == pytest.approx(0.99)
    assert cell["methods"]["admm"]["mean"] == pytest.approx(0.92)
    assert cell["methods"]["admm"]["sd"] == pytest.approx(np.std([0.90, 0.94], ddof=1))
    mag = cell["admm_minus"]["magnitude"]
    assert mag["diffs"] == pytest.approx([-0.01, 0.02])
    assert mag["mean"] == pytest.approx(0.005)
    assert mag["admm_ahead_or_level"] == 1
    assert cell["admm_minus"]["ssl"]["admm_ahead_or_level"] == 2
    assert cell["methods"]["admm"]["compacted_compression"] is None   # one seed lacks it


def test_aggregate_averages_compacted_compression(compare):
    (cell,) = compare.aggregate([_row("mild", "admm", 1, 0.9, 5.0),
                                 _row("mild", "admm", 2, 0.9, 6.0)])
    assert cell["methods"]["admm"]["compacted_compression"] == pytest.approx(5.5)
    assert compare._cell(cell["methods"]["admm"]) == "90.00 ± 0.00 (5.5x)"


def test_aggregate_counts_float_rounding_as_level(compare):
    (cell,) = compare.aggregate([_row("mild", "admm", 1, 0.9845 - 1e-9),
                                 _row("mild", "magnitude", 1, 0.9845),
                                 _row("mild", "admm", 2, 0.9844),
                                 _row("mild", "magnitude", 2, 0.9845)])
    assert cell["admm_minus"]["magnitude"]["admm_ahead_or_level"] == 1


def test_aggregate_single_seed_has_no_spread(compare):
    (cell,) = compare.aggregate([_row("mild", "admm", 1, 0.9), _row("mild", "ssl", 1, 0.8)])
    assert cell["methods"]["admm"]["sd"] is None
    assert "magnitude" not in cell["admm_minus"]


def test_write_aggregate_fails_clearly_on_unfinished_run(tmp_path, compare):
    good = tmp_path / "good"
    good.mkdir()
    (good / "compare.json").write_text(json.dumps(
        {"results": [_row("mild", "admm", 2, 0.9), _row("mild", "magnitude", 2, 0.9)]}))
    compare.write_aggregate([str(good)], str(tmp_path / "out"))
    saved = json.loads((tmp_path / "out" / "compare_seeds.json").read_text())
    assert saved["cells"][0]["admm_minus"]["magnitude"]["diffs"] == [0.0]
    with pytest.raises(SystemExit, match="missing.*not a finished comparison"):
        compare.write_aggregate([str(good), str(tmp_path / "missing")], str(tmp_path / "o2"))


def test_admm_settings_replace_the_admm_lines_only(compare):
    settings = "rho { initial: 0.05 growth: 1.0 rescale_dual: true }"
    admm = compare.config_text("ADMM", "strong", 5, 600, 2000, admm_settings=settings)
    assert settings in admm.splitlines()
    assert compare.METHOD_LINES["ADMM"] not in admm
    ssl = compare.config_text("SSL", "strong", 5, 600, 2000, admm_settings=settings)
    assert ssl == compare.config_text("SSL", "strong", 5, 600, 2000)
    assert compare.METHOD_LINES["ADMM"] in compare.config_text("ADMM", "strong", 5, 600, 2000)


@pytest.mark.parametrize("method", ["ADMM", "SSL", "MAGNITUDE"])
def test_default_configs_load_and_only_admm_restricts_its_penalty(tmp_path, compare, method):
    from caffe_admm.config import load_config
    path = tmp_path / "config.prototxt"
    path.write_text(compare.config_text(method, "strong", 5, 600, 2000, live_inputs_only=True))
    net = protoio.read_net(os.path.join(compare.ROOT, "prototxt", "lenet_train_test.prototxt"))
    cfg = load_config(str(path), net)
    assert cfg.penalty_pruned_only is (method == "ADMM")
    assert cfg.live_inputs_only
    assert [spec.name for spec in cfg.layers] == ["conv1", "conv2", "ip1", "ip2"]


def test_aggregate_refuses_two_runs_of_one_seed_and_method(compare):
    rows = [_row("mild", "admm", 2, 0.90), _row("mild", "admm", 2, 0.91)]
    rows[0]["run"], rows[1]["run"] = "a/mild_admm", "b/mild_admm"
    with pytest.raises(ValueError, match="seed 2 admm: two runs .a/mild_admm and b/mild_admm"):
        compare.aggregate(rows)


def _finished(tmp_path, name, rows, admm_lines, retrain=2000):
    d = tmp_path / name
    d.mkdir()
    (d / "compare.json").write_text(json.dumps(
        {"results": rows, "budget": {"steps": 5, "iters_per_step": 600, "retrain_iters": retrain},
         "method_settings": {"ADMM": admm_lines, "SSL": "default { lasso_lambda: 0.005 }",
                             "MAGNITUDE": ""}}))
    return str(d)


def test_write_aggregate_refuses_runs_of_different_settings(tmp_path, compare):
    po = "rho { initial: 0.01 growth: 2 max: 1 } penalty_pruned_only: true"
    a = _finished(tmp_path, "a", [_row("mild", "admm", 1, 0.9)], po)
    # the same setting written differently, and a directory without ADMM rows: accepted
    b = _finished(tmp_path, "b", [_row("mild", "admm", 2, 0.9)],
                  "penalty_pruned_only: true rho { initial: 0.01 growth: 2.0 max: 1.0 }")
    c = _finished(tmp_path, "c", [_row("mild", "ssl", 2, 0.8)], "rho { initial: 0.5 }")
    compare.write_aggregate([a, b, c], str(tmp_path / "out"))
    plain = _finished(tmp_path, "plain", [_row("mild", "admm", 3, 0.9)],
                      "rho { initial: 0.01 growth: 2 max: 1 }")
    with pytest.raises(SystemExit, match="ran admm with different config lines"):
        compare.write_aggregate([a, plain], str(tmp_path / "o2"))
    longer = _finished(tmp_path, "longer", [_row("mild", "admm", 3, 0.9)], po, retrain=4000)
    with pytest.raises(SystemExit, match="ran admm with different budget"):
        compare.write_aggregate([a, longer], str(tmp_path / "o3"))


def test_write_aggregate_plots_each_data_set(tmp_path, compare):
    import matplotlib.image
    rows = [_row(level, method, seed, acc + 0.01 * seed)
            for seed in (1, 2) for level, acc in (("mild", 0.95), ("strong", 0.9))
            for method in ("admm", "ssl", "magnitude")]
    fashion = [dict(r, dataset="fashion_mnist") for r in rows if r["method"] != "ssl"]
    d = _finished(tmp_path, "runs", rows + fashion, "rho { initial: 0.01 }")
    compare.write_aggregate([d], str(tmp_path / "out"))
    for name in ("compare_mnist.png", "compare_fashion_mnist.png"):
        image = matplotlib.image.imread(str(tmp_path / "out" / name))   # a real PNG
        assert image.shape[0] > 200 and image.shape[1] > 500
        assert np.std(image[..., :3]) > 0.05                             # not blank
    assert sorted(os.listdir(tmp_path / "out")) == [
        "compare_fashion_mnist.png", "compare_mnist.png", "compare_seeds.json"]


def test_write_aggregate_orders_levels_by_compression(tmp_path, compare, capsys):
    rows = [dict(_row(level, "admm", 1, 0.9), compression=c)
            for level, c in (("strong", 38.6), ("mild", 4.8), ("medium", 15.0))]
    compare.write_aggregate([_finished(tmp_path, "r", rows, "")], str(tmp_path / "out"))
    saved = json.loads((tmp_path / "out" / "compare_seeds.json").read_text())
    assert [c["level"] for c in saved["cells"]] == ["mild", "medium", "strong"]
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| mnist")]
    assert [line.split(" | ")[1] for line in table] == ["mild", "medium", "strong"]


def test_aggregate_compression_is_the_levels_not_ssls_extra_zeros(compare):
    rows = [_row("mild", "admm", 1, 0.9), dict(_row("mild", "ssl", 1, 0.8), compression=4.9),
            _row("mild", "magnitude", 1, 0.9)]
    for order in (rows, rows[::-1]):
        (cell,) = compare.aggregate(order)
        assert cell["compression"] == 4.8

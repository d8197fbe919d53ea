"""caffe-admm report: parses run outputs, writes tables and plots, fails clearly."""

import json
import os
import re

import numpy as np
import pytest

from caffe_admm import report, solver

from conftest import write
from test_methods import cfg


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_trained):
    d = tmp_path_factory.mktemp("report_runs")
    out = []
    for method in ("ADMM", "SSL", "MAGNITUDE"):
        run = str(d / method.lower())
        solver.prune(tiny_trained["solver"], tiny_trained["weights"], cfg(d, method), run,
                     progress=False)
        out.append(run)
    return out


def test_report_tables_and_plots(tmp_path, runs):
    import matplotlib.image
    result = report.write_report(runs, str(tmp_path / "rep"))
    assert [r["method"] for r in result["rows"]] == ["admm", "ssl", "magnitude"]
    for r in result["rows"]:
        assert r["compression"] > 1 and 0 <= r["accuracy"] <= 1
        assert r["compacted_compression"] >= r["compression"] * (1 - 1e-12)
    md = result["markdown"]
    assert "| conv1 | filter | 72 | 36 | 50.00% | 50.00% (4/8)" in md
    assert md.count("### ") == 3
    # each run's environment under its heading: here OPENBLAS_NUM_THREADS, as the tests set it
    threads = os.environ["OPENBLAS_NUM_THREADS"]
    assert md.count("- CPU threads: OPENBLAS_NUM_THREADS=%s, " % threads) == 3
    assert len(re.findall(r"^- BLAS: /\S*/libopenblas\S*\.so", md, re.M)) == 3
    assert md.count("- CPU convolution forward: oneDNN (direct convolution)") == 3
    names = sorted(os.path.basename(p) for p in result["plots"])
    assert names == ["accuracy_vs_compression.png", "admm_residuals.png", "kept_fractions.png",
                     "training_loss.png"]
    for path in result["plots"]:
        image = matplotlib.image.imread(path)       # opens as a real PNG
        assert image.shape[0] > 100 and image.shape[1] > 100
        assert np.std(image[..., :3]) > 0.05          # not a blank canvas
    with open(tmp_path / "rep" / "summary.json") as f:
        assert len(json.load(f)) == 3


def test_a_recalibrated_baseline_is_the_one_the_table_compares_with(tmp_path, runs):
    import shutil
    run = str(tmp_path / "bn_run")
    shutil.copytree(runs[0], run)
    with open(os.path.join(run, "report.json")) as f:
        data = json.load(f)
    data["accuracy"]["baseline"] = {"accuracy": 0.5}
    data["accuracy"]["baseline_recalibrated"] = {"accuracy": 0.75}
    with open(os.path.join(run, "report.json"), "w") as f:
        json.dump(data, f)
    rows = report.summarize([report.load_run(p) for p in (runs[0], run)])
    assert [r["baseline_recalibrated"] for r in rows] == [False, True]
    assert rows[1]["baseline_accuracy"] == 0.75
    md = report.markdown([], rows)
    assert "| bn_run | admm | 75.00% * |" in md
    assert "\\* with the BatchNorm statistics recomputed" in md


def test_a_slimming_global_run_is_named_apart_from_per_layer_slimming(tmp_path, runs):
    import shutil
    paths = []
    for name, shared, floor in (("each", False, None), ("shared", True, None),
                                ("floored", True, 0.25)):
        paths.append(str(tmp_path / name))
        shutil.copytree(runs[1], paths[-1])
        with open(os.path.join(paths[-1], "report.json")) as f:
            data = json.load(f)
        data["method"] = "slimming"
        data["schedule"]["slimming_global"] = shared
        data["schedule"]["slimming_min_keep_ratio"] = floor
        with open(os.path.join(paths[-1], "report.json"), "w") as f:
            json.dump(data, f)
    loaded = [report.load_run(p) for p in paths + runs[:1]]
    rows = report.summarize(loaded)
    assert [r["method"] for r in rows] == ["slimming", "slimming global",
                                           "slimming global floor 0.25", "admm"]
    md = report.markdown(loaded, rows)
    assert "### each (slimming)" in md and "### shared (slimming global)" in md
    assert "### floored (slimming global floor 0.25)" in md


def test_missing_unfinished_and_corrupt_runs_fail_clearly(tmp_path, runs):
    with pytest.raises(report.ReportError, match="not a directory"):
        report.load_run(str(tmp_path / "nope"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(report.ReportError, match="no report.json .not a caffe-admm prune"):
        report.load_run(str(empty))
    (empty / "checkpoints").mkdir()
    with pytest.raises(report.ReportError, match="has not finished"):
        report.load_run(str(empty))
    write(empty / "report.json", '{"layers": {')
    with pytest.raises(report.ReportError, match="corrupt report.json"):
        report.load_run(str(empty))
    write(empty / "report.json", '{"layers": {}}')
    with pytest.raises(report.ReportError, match="has no 'accuracy'"):
        report.load_run(str(empty))
    with pytest.raises(report.ReportError, match="no run directory"):
        report.write_report([], str(tmp_path / "x"))

"""benchmarks/compact_kept_biases.py: compaction of nets whose zero filters
keep their biases, with and without folding, on real pycaffe."""

import json
import os

from conftest import ROOT, load_benchmark

LENET = os.path.join(ROOT, "prototxt", "lenet_deploy.prototxt")


def test_folding_compacts_what_the_exact_zero_rule_keeps(tmp_path, capsys):
    bench = load_benchmark("compact_kept_biases")
    out = tmp_path / "kept.json"
    bench.main([LENET, "--out", str(out)])
    [row] = json.load(open(str(out)))
    # every zero filter keeps a random bias: without folding nothing goes
    assert row["no_folding"]["params"] == row["params"] == 430500
    folded, zeroed = row["folded"], row["biases_zeroed"]
    assert folded["passed"] and folded["max_abs_diff"] < 1e-6 and folded["folds"] == 3
    # LeNet has no padding: every constant goes into a bias, none needs a carrier
    assert folded["carriers"] == 0 and folded["params"] == zeroed["params"] < row["params"] / 3
    assert "lenet_deploy.prototxt" in capsys.readouterr().out

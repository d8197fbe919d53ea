"""benchmarks/compact_kept_biases.py: compaction of nets whose zero filters
keep their biases, with and without folding, on real pycaffe."""

import json
import os

import pytest

from conftest import ROOT, interrupt_on_call, load_benchmark

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


def test_an_interrupted_run_keeps_the_nets_it_measured(tmp_path, monkeypatch, capsys):
    """The rows are written after each net (``_common.rows_of``, shared with
    compact_at_scale and live_inputs_at_scale): a Ctrl-C in the second net
    leaves the first one's row in the file and exits with 130."""
    bench = load_benchmark("compact_kept_biases")
    calls = interrupt_on_call(monkeypatch, bench, "measure", 2)
    out = tmp_path / "kept.json"
    with pytest.raises(SystemExit) as exc:
        bench.main([LENET, LENET, LENET, "--out", str(out)])
    assert exc.value.code == 130 and len(calls) == 2
    [row] = json.load(open(str(out)))
    assert row["net"] == "lenet_deploy.prototxt" and row["folded"]["passed"]
    assert "interrupted in %s; %s holds the 1 measured before it" % (LENET, out) \
        in capsys.readouterr().err


def test_an_interrupted_first_net_writes_nothing(tmp_path, monkeypatch, capsys):
    bench = load_benchmark("compact_kept_biases")
    interrupt_on_call(monkeypatch, bench, "measure", 1)
    out = tmp_path / "kept.json"
    with pytest.raises(SystemExit) as exc:
        bench.main([LENET, "--out", str(out)])
    assert exc.value.code == 130 and not out.exists()
    assert "nothing written to %s" % out in capsys.readouterr().err

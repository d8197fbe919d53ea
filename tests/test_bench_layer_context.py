"""benchmarks/bench_layer_context.py: per-layer times in the net and alone, for
both nets of a timing plan, from real pycaffe runs."""

import json
import os

import pytest

from caffe_admm import caffetime, timing

from conftest import ROOT, interrupt_on_call, load_benchmark
from test_compact import run_compact

LENET = os.path.join(ROOT, "prototxt", "lenet_deploy.prototxt")


def plan_dir(tmp_path):
    _, _, out = run_compact(tmp_path, LENET)
    plan = str(tmp_path / "plan")
    timing.write_plan(LENET, os.path.join(out, "compact.prototxt"), plan, batches=(1, 2))
    return plan


def test_reports_both_contexts_against_the_flop_reduction(tmp_path, capsys):
    bench = load_benchmark("bench_layer_context")
    plan = plan_dir(tmp_path)
    out = tmp_path / "ctx.json"
    assert bench.main([plan, "--batch", "2", "--rounds", "2", "--iterations", "2",
                       "--out", str(out)]) == 0
    result = json.load(open(str(out)))
    costs = json.load(open(os.path.join(plan, "plan.json")))["costs"]
    assert list(result["batches"]) == ["2"]
    rows = result["batches"]["2"]
    assert set(rows) == {"conv1", "conv2", "ip1", "ip2"}
    for name, row in rows.items():
        assert row["flop_reduction"] == pytest.approx(
            costs["original"][name]["flops"] / costs["compact"][name]["flops"])
        for context in ("in_net", "alone"):
            r = row[context]
            assert r["speedup"] == pytest.approx(r["original"]["median_ms"] /
                                                 r["compact"]["median_ms"])
            assert r["of_flops"] == pytest.approx(r["speedup"] / row["flop_reduction"])
            assert len(r["original"]["samples_ms"]) == 2  # the two rounds
            assert r["speedup_rounds"]["min"] <= r["speedup_rounds"]["max"]
    assert rows["conv1"]["flop_reduction"] > 1
    text = capsys.readouterr().out
    assert "in the net" in text and "alone" in text and "conv2" in text
    assert caffetime.cpu_threads_line(result["cpu_threads"]) in text.splitlines()
    assert result["partial"] is False


def test_refuses_a_batch_size_the_plan_lacks(tmp_path):
    bench = load_benchmark("bench_layer_context")
    with pytest.raises(ValueError, match="no nets for batch size 4 .*it has 1, 2"):
        bench.measure(plan_dir(tmp_path), batches=[4])


def test_an_interrupted_run_keeps_the_batch_sizes_it_timed(tmp_path, monkeypatch, capsys):
    bench = load_benchmark("bench_layer_context")
    plan = plan_dir(tmp_path)
    calls = interrupt_on_call(monkeypatch, timing, "time_layer_contexts", 2)
    out = tmp_path / "ctx.json"
    with pytest.raises(SystemExit) as exc:
        bench.main([plan, "--rounds", "1", "--iterations", "1", "--out", str(out)])
    assert exc.value.code == 130 and [args[1] for args in calls] == [1, 2]
    result = json.load(open(str(out)))
    assert result["partial"] is True and list(result["batches"]) == ["1"]
    assert set(result["batches"]["1"]) == {"conv1", "conv2", "ip1", "ip2"}
    assert "interrupted after batch size 1; %s holds batch size 1" % out \
        in capsys.readouterr().err

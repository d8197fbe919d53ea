"""The ``caffe time`` engine: real Caffe CLI runs, plans, parsing and errors."""

import json
import os
import subprocess
import sys

import pytest

from caffe_admm import caffetime, timing
from caffe_admm.backend import caffe
from caffe_admm.protoio import read_net

from conftest import ROOT, interrupt_on_call, write
from test_compact import NETS, run_compact

CAFFE = os.path.join(ROOT, ".venv", "bin", "caffe")
LENET = os.path.join(NETS, "lenet_deploy.prototxt")


@pytest.fixture(scope="module")
def compacted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compacted")
    report, weights, out = run_compact(tmp, LENET)
    return report, os.path.join(out, "compact.prototxt")


def test_parse_log_reads_every_layer_of_a_real_caffe_time_run():
    res = caffetime.run(CAFFE, LENET, iterations=2)
    names = [l.name for l in read_net(LENET).layer]
    assert list(res["layers"]) == names
    assert res["forward_ms"] > 0 and all(v >= 0 for v in res["layers"].values())
    # the whole pass is the layers plus Caffe's per-layer timer overhead
    assert res["forward_ms"] >= 0.9 * sum(res["layers"].values())


def test_parse_log_refuses_output_without_a_benchmark():
    with pytest.raises(ValueError, match="no 'caffe time' benchmark"):
        caffetime.parse_log("I1124 caffe.cpp:1] Use CPU.\nF1124 net.cpp:1] Check failed\n")


def one_layer_plan(layer, repeats=1, gpu=None):
    """A timing plan of one layer, nets ``o.prototxt`` and ``c.prototxt``, for
    :func:`caffetime.measure` with a stand-in for ``run``."""
    costs = {layer: {"flops": 50, "params": 5}}
    return {"costs": {"original": costs, "compact": costs}, "iterations": 1, "repeats": repeats,
            "layers": [layer], "gpu": gpu,
            "models": {"1": {"original": "o.prototxt", "compact": "c.prototxt"}}}


# `caffe time`'s report, after which parse_log() looks for cuDNN choices too
TIME_LINES = """\
I1126 06:10:02.000000  4242 caffe.cpp:1] conv1\tforward: 0.5 ms.
I1126 06:10:02.000000  4242 caffe.cpp:1] conv2\tforward: 0.25 ms.
I1126 06:10:02.000000  4242 caffe.cpp:1] Average Forward pass: 1.0 ms.
"""
MEASURED = os.path.join(ROOT, "benchmarks", "measured", "gpu_h200_cudnn_find")


def test_parse_log_reads_the_cudnn_choices_the_patched_build_logged():
    # `caffe test -gpu 0` of the CUDA build with tools/patches/caffe-cudnn-find.patch on an
    # H200, once with cuDNN's heuristics and once with CAFFE_CUDNN_FIND=1
    with open(os.path.join(MEASURED, "lenet_gpu_heuristic.log")) as f:
        res = caffetime.parse_log(f.read() + TIME_LINES)
    assert res["layers"] == {"conv1": 0.5, "conv2": 0.25}
    assert res["cudnn"] == {
        "conv1": {"forward": "IMPLICIT_PRECOMP_GEMM", "forward_workspace_bytes": 1024,
                  "backward_filter": "ALGO_0", "backward_data": "ALGO_1",
                  "chosen_by": "heuristic", "workspace_limit_mb": 8},
        "conv2": {"forward": "IMPLICIT_PRECOMP_GEMM", "forward_workspace_bytes": 2587440,
                  "backward_filter": "ALGO_1", "backward_data": "ALGO_1",
                  "chosen_by": "heuristic", "workspace_limit_mb": 8}}
    with open(os.path.join(MEASURED, "lenet_gpu_find.log")) as f:
        res = caffetime.parse_log(f.read() + TIME_LINES)
    assert res["cudnn"]["conv1"] == {
        "forward": "IMPLICIT_GEMM", "forward_workspace_bytes": 0, "backward_filter": "ALGO_3",
        "backward_data": "ALGO_0", "chosen_by": "timed", "workspace_limit_mb": 8}
    # a build without the patch logs no choices, and the key is absent
    assert "cudnn" not in caffetime.parse_log(TIME_LINES)


def test_parse_log_keeps_the_first_input_and_names_every_algorithm():
    line = ("I1126 06:10:01.000001  4242 cudnn_conv_layer.cpp:168] cuDNN %s input %d: forward "
            "algo %d (5 B), backward filter algo %d (0 B), backward data algo %d (0 B); "
            "heuristic, workspace limit 1024 MB\n")
    text = "".join(line % ("conv1", 0, f, min(f, 6), min(f, 5)) for f in range(8))
    res = caffetime.parse_log(text + line % ("conv2", 0, 7, 6, 5) + line % ("conv2", 1, 3, 0, 0)
                              + TIME_LINES)
    assert res["cudnn"]["conv1"]["forward"] == "WINOGRAD_NONFUSED"  # the last choice logged
    assert res["cudnn"]["conv2"] == {
        "forward": "WINOGRAD_NONFUSED", "forward_workspace_bytes": 5,
        "backward_filter": "FFT_TILING", "backward_data": "WINOGRAD_NONFUSED",
        "chosen_by": "heuristic", "workspace_limit_mb": 1024}  # input 1 is not recorded
    assert len(caffetime.FORWARD_ALGOS) == 8 and len(caffetime.BACKWARD_FILTER_ALGOS) == 7
    assert len(caffetime.BACKWARD_DATA_ALGOS) == 6


def test_gpu_results_count_the_forward_algorithms_per_layer(monkeypatch):
    """summarise()'s bookkeeping on given `caffe time` results (no Caffe run here)."""
    chosen = iter(["FFT", "GEMM", "FFT", "DIRECT", "DIRECT", "DIRECT"])
    monkeypatch.setattr(caffetime, "run", lambda caffe, model, iterations, gpu: {
        "layers": {"conv1": 1.0}, "forward_ms": 2.0,
        "cudnn": {"conv1": {"forward": next(chosen)}}})
    plan = one_layer_plan("conv1", repeats=3, gpu=0)
    monkeypatch.setenv("CAFFE_CUDNN_FIND", "1")
    result = caffetime.measure(plan, caffe=sys.executable)
    row = result["batches"]["1"]["layers"]["conv1"]
    # order o, c | c, o | o, c: original FFT, DIRECT, DIRECT; compact GEMM, FFT, DIRECT
    assert row["original"]["cudnn_forward"] == {"DIRECT": 2, "FFT": 1}
    assert row["compact"]["cudnn_forward"] == {"DIRECT": 1, "FFT": 1, "GEMM": 1}
    assert result["cudnn_find"] is True
    table = timing.format_table(result)
    assert "cuDNN workspace 8 MB, algorithms timed" in table
    assert "DIRECT x2, FFT x1 / DIRECT x1, FFT x1, GEMM x1" in table


@pytest.mark.parametrize("value,find", [(None, False), ("1", True), (" 2x", True), ("0", False),
                                        ("-1", False), ("yes", False)])
def test_cudnn_find_is_read_as_the_patched_caffe_reads_it(value, find):
    environ = {} if value is None else {"CAFFE_CUDNN_FIND": value}
    assert caffetime.cudnn_find(environ) is find


def test_run_names_the_command_when_caffe_fails(tmp_path):
    bad = tmp_path / "bad.prototxt"
    bad.write_text('layer { name: "x" type: "NoSuchLayer" top: "x" }')
    with pytest.raises(RuntimeError, match="NoSuchLayer"):
        caffetime.run(CAFFE, str(bad), iterations=1)


def test_find_caffe_prefers_the_loaded_build_then_errors_clearly(monkeypatch):
    from caffe_admm.backend import caffe
    monkeypatch.delenv("CAFFE_BIN", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    prefix = os.path.dirname(os.path.dirname(os.path.realpath(caffetime.find_caffe())))
    assert os.path.realpath(caffe.__file__).startswith(prefix + os.sep)
    monkeypatch.delitem(sys.modules, "caffe")
    with pytest.raises(FileNotFoundError, match="no executable caffe binary"):
        caffetime.find_caffe()


def test_plan_resizes_inputs_and_carries_exact_costs(tmp_path, compacted):
    report, compact_model = compacted
    plan, path = timing.write_plan(LENET, compact_model, str(tmp_path / "plan"), batches=(1, 5),
                                   repeats=2, iterations=3, gpu=0)
    assert json.load(open(path)) == plan and plan["gpu"] == 0
    for batch in ("1", "5"):
        for which in ("original", "compact"):
            net = read_net(os.path.join(str(tmp_path / "plan"), plan["models"][batch][which]))
            inputs = [l for l in net.layer if l.type == "Input"]
            assert [s.dim[0] for l in inputs for s in l.input_param.shape] == [int(batch)]
    for name in plan["layers"]:
        ratio = plan["costs"]["original"][name]["flops"] / plan["costs"]["compact"][name]["flops"]
        assert ratio == pytest.approx(report["layers"][name]["flop_reduction"])


def test_plan_can_force_the_convolution_engine(tmp_path, compacted):
    _, compact_model = compacted
    plan, _ = timing.write_plan(LENET, compact_model, str(tmp_path), batches=(1,),
                                conv_engine="CAFFE")
    net = read_net(os.path.join(str(tmp_path), plan["models"]["1"]["compact"]))
    convs = [l for l in net.layer if l.type == "Convolution"]
    assert convs and all(l.convolution_param.engine == l.convolution_param.CAFFE for l in convs)
    # no learnable blobs: caffe time's backward pass computes no weight gradients
    assert all([p.lr_mult for p in l.param] == [0, 0] for l in net.layer
               if l.type in ("Convolution", "InnerProduct"))
    with pytest.raises(ValueError, match="conv engine 'FAST'"):
        timing.write_plan(LENET, compact_model, str(tmp_path), conv_engine="FAST")


def test_measure_runs_the_plan_in_a_separate_python_without_pycaffe(tmp_path, compacted):
    """The measuring side needs the standard library and a caffe binary only."""
    _, compact_model = compacted
    _, path = timing.write_plan(LENET, compact_model, str(tmp_path / "plan"), batches=(2,),
                                repeats=2, iterations=2)
    out = str(tmp_path / "result.json")
    env = dict(os.environ, PYTHONPATH=ROOT, CAFFE_BIN=CAFFE)
    code = ("import sys, builtins; real = builtins.__import__\n"
            "def guard(name, *a, **k):\n"
            "    assert name != 'caffe' and not name.startswith('caffe.'), name\n"
            "    return real(name, *a, **k)\n"
            "builtins.__import__ = guard\n"
            "from caffe_admm import caffetime; sys.exit(caffetime.main(sys.argv[1:]))")
    res = subprocess.run([sys.executable, "-c", code, path, out], capture_output=True, text=True,
                         env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    result = json.load(open(out))
    assert result["engine"] == "caffe time" and result["gpu"] is None
    rows = result["batches"]["2"]["layers"]
    assert set(rows) == {"conv1", "conv2", "ip1", "ip2"}
    for row in rows.values():
        assert row["original"]["min_ms"] <= row["original"]["median_ms"] <= row["original"]["max_ms"]
        assert row["speedup"] == pytest.approx(row["original"]["median_ms"]
                                               / row["compact"]["median_ms"])
    assert "whole net" in res.stdout and "caffe time (CPU)" in res.stdout


def test_cli_time_with_the_caffe_time_engine(tmp_path, compacted):
    _, compact_model = compacted
    out = str(tmp_path / "t.json")
    res = subprocess.run([os.path.join(ROOT, ".venv", "bin", "caffe-admm"), "time",
                          "--engine", "caffe-time", "--model", LENET, "--compact", compact_model,
                          "--compact-weights", "unused", "--batch", "1", "--repeats", "1",
                          "--iterations", "2", "--json", out], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.load(open(out))["batches"]["1"]["net"]["speedup"] > 0
    assert "batch 1 compact 1/1" in res.stderr
    assert "--weights and --compact-weights are not read" in res.stderr


def test_cli_plan_only_needs_the_caffe_time_engine(tmp_path, compacted):
    _, compact_model = compacted
    cli = os.path.join(ROOT, ".venv", "bin", "caffe-admm")
    args = ["time", "--model", LENET, "--compact", compact_model, "--compact-weights", "x",
            "--plan-only", str(tmp_path / "p")]
    res = subprocess.run([cli] + args, capture_output=True, text=True)
    assert res.returncode == 2 and "--engine caffe-time" in res.stderr
    # a plan for a GPU machine can be written on a CPU-only one
    res = subprocess.run([cli, "--gpu", "0"] + args, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert json.load(open(str(tmp_path / "p" / "plan.json")))["gpu"] == 0


def test_cli_refuses_gpu_timing_with_a_cpu_only_caffe(tmp_path, compacted):
    _, compact_model = compacted
    res = subprocess.run([os.path.join(ROOT, ".venv", "bin", "caffe-admm"), "--gpu", "0", "time",
                          "--model", LENET, "--compact", compact_model, "--compact-weights", "x",
                          "--batch", "1", "--repeats", "1"], capture_output=True, text=True)
    assert res.returncode == 1
    assert "-gpu 0 exited" in res.stderr and "Cannot use GPU in CPU-only Caffe" in res.stderr


def test_a_shape_compacted_layer_is_timed_with_its_helpers(monkeypatch):
    """measure()'s arithmetic on given `caffe time` results (no Caffe run here)."""
    logs = {"o.prototxt": {"conv2": 8.0, "ip1": 1.0},
            "c.prototxt": {"conv1": 0.5, "conv2/im2col": 0.25, "conv2/slice": 0.125,
                           "conv2/concat": 0.125, "conv2": 1.5, "ip1": 0.5}}
    monkeypatch.setattr(caffetime, "run", lambda caffe, model, iterations, gpu: {
        "layers": logs[os.path.basename(model)], "forward_ms": 10.0})
    costs = {"conv2": {"flops": 100, "params": 10}, "ip1": {"flops": 50, "params": 5}}
    plan = {"costs": {"original": costs, "compact": costs}, "iterations": 1, "repeats": 3,
            "layers": ["conv2", "ip1"],
            "models": {"1": {"original": "o.prototxt", "compact": "c.prototxt"}}}
    rows = caffetime.measure(plan, caffe=sys.executable)["batches"]["1"]["layers"]
    assert rows["conv2"]["compact"]["median_ms"] == 2.0  # 0.25 + 0.125 + 0.125 + 1.5
    assert rows["conv2"]["speedup"] == 4.0 and rows["ip1"]["speedup"] == 2.0


def test_measure_alternates_the_nets_and_swaps_which_goes_first(monkeypatch):
    """measure()'s order of `caffe time` processes (no Caffe run here)."""
    calls = []

    def fake_run(caffe, model, iterations, gpu):
        calls.append(model)
        return {"layers": {"ip1": 1.0}, "forward_ms": 2.0}

    monkeypatch.setattr(caffetime, "run", fake_run)
    plan = one_layer_plan("ip1", repeats=3)
    caffetime.measure(plan, base_dir="d", caffe=sys.executable)
    assert [os.path.basename(m) for m in calls] == ["o.prototxt", "c.prototxt", "c.prototxt",
                                                    "o.prototxt", "o.prototxt", "c.prototxt"]
    assert caffetime.rotate([1, 2, 3], 4) == [2, 3, 1]


AB = os.path.join(ROOT, "benchmarks", "ab_caffe_builds.py")


def test_ab_script_interleaves_two_real_builds_and_rotates_their_order(tmp_path, compacted):
    _, compact_model = compacted
    _, path = timing.write_plan(LENET, compact_model, str(tmp_path / "plan"), batches=(1,),
                                repeats=2, iterations=1, gpu=0)
    out = str(tmp_path / "ab.json")
    res = subprocess.run([sys.executable, AB, path, out, "--build", "a=" + CAFFE,
                          "--build", "b=" + CAFFE, "--cpu"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    order = [line.rstrip(":").split(":")[0].split()[4:6] for line in res.stderr.splitlines() if line.startswith("round ")]
    assert order == [["a", "original"], ["a", "compact"], ["b", "original"], ["b", "compact"],
                     ["b", "compact"], ["b", "original"], ["a", "compact"], ["a", "original"]]
    result = json.load(open(out))
    assert result["rounds"] == 2 and not result["stopped_early"]
    for name in ("a", "b"):
        rows = result["results"][name]["batches"]["1"]["layers"]
        assert set(rows) == {"conv1", "conv2", "ip1", "ip2"}
        assert result["results"][name]["repeats"] == 2
    rel = result["relative_to_first"]["1"]
    a, b = (result["results"][n]["batches"]["1"]["net"]["compact"]["median_ms"] for n in "ab")
    assert rel["net"]["b/a compact"] == pytest.approx(b / a)
    blas = caffetime.blas_info(CAFFE)
    assert result["results"]["a"]["blas"] == result["results"]["b"]["blas"] == blas
    assert "a: BLAS: %s, kernel %s" % (blas["library"], blas["core"]) in res.stdout


def test_ab_script_keeps_whole_rounds_at_its_deadline(tmp_path, compacted):
    _, compact_model = compacted
    _, path = timing.write_plan(LENET, compact_model, str(tmp_path / "plan"), batches=(1, 2),
                                repeats=3, iterations=1)
    out = str(tmp_path / "ab.json")
    res = subprocess.run([sys.executable, AB, path, out, "--build", "a=" + CAFFE,
                          "--build", "b=" + CAFFE, "--deadline-s", "0"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    result = json.load(open(out))
    assert result["rounds"] == 1 and result["rounds_planned"] == 3
    assert result["stopped_early"] == "deadline reached"
    assert set(result["results"]["b"]["batches"]) == {"1", "2"}
    assert all(result["results"][n]["repeats"] == 1 for n in "ab")
    assert "1 of 3 rounds" in res.stdout


def test_ab_script_keeps_whole_rounds_when_a_build_fails(tmp_path, compacted):
    _, compact_model = compacted
    _, path = timing.write_plan(LENET, compact_model, str(tmp_path / "plan"), batches=(1,),
                                repeats=3, iterations=1)
    flaky = tmp_path / "flaky" / "bin" / "caffe"   # the real caffe twice, then a failure
    flaky.parent.mkdir(parents=True)
    flaky.write_text('#!/bin/bash\nn=$(cat "%s" 2>/dev/null || echo 0); echo $((n + 1)) > "%s"\n'
                     '[ "$n" -lt 2 ] || { echo "F0000 broken build"; exit 1; }\nexec "%s" "$@"\n'
                     % (tmp_path / "count", tmp_path / "count", CAFFE))
    flaky.chmod(0o755)
    out = str(tmp_path / "ab.json")
    res = subprocess.run([sys.executable, AB, path, out, "--build", "a=" + CAFFE,
                          "--build", "b=" + str(flaky)], capture_output=True, text=True)
    assert res.returncode == 1
    assert "stopped in round 2: RuntimeError" in res.stderr
    result = json.load(open(out))
    assert result["rounds"] == 1 and "broken build" in result["stopped_early"]
    assert all(result["results"][n]["repeats"] == 1 for n in "ab")


def test_ab_script_needs_a_readable_plan(tmp_path):
    res = subprocess.run([sys.executable, AB, str(tmp_path / "none.json"), str(tmp_path / "o"),
                          "--build", "a=" + CAFFE, "--build", "b=" + CAFFE],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "cannot read the plan" in res.stderr


@pytest.mark.parametrize("builds, message", [
    (["--build", "a=" + CAFFE], "two or more builds"),
    (["--build", "a=" + CAFFE, "--build", "a=" + CAFFE], "distinct names"),
    (["--build", "a=" + CAFFE, "--build", "b=/nonexistent/caffe"], "not an executable"),
    (["--build", "a=" + CAFFE, "--build", "nopath"], "NAME=PATH"),
    (["--build", "a=" + CAFFE, "--build", "b=" + CAFFE, "--env", "c:X=1"], "no build named c"),
    (["--build", "a=" + CAFFE, "--build", "b=" + CAFFE, "--env", "a=1"], "NAME:VAR=VALUE"),
])
def test_ab_script_rejects_bad_builds(tmp_path, builds, message):
    res = subprocess.run([sys.executable, AB, "plan.json", str(tmp_path / "o.json")] + builds,
                         capture_output=True, text=True)
    assert res.returncode == 2 and message in res.stderr


def test_ab_script_gives_each_bundle_its_own_libraries(tmp_path, monkeypatch):
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import ab_caffe_builds
    finally:
        sys.path.pop(0)
    (tmp_path / "b1" / "bin").mkdir(parents=True)
    (tmp_path / "b1" / "lib").mkdir()
    (tmp_path / "b1" / "lib" / "libcaffe.so.1.0.0").write_text("")
    (tmp_path / "b2" / "bin").mkdir(parents=True)
    (tmp_path / "b2" / "lib").mkdir()  # no libcaffe here: not a bundle
    monkeypatch.setenv("LD_LIBRARY_PATH", "/cuda/lib")
    env = ab_caffe_builds.build_env(str(tmp_path / "b1" / "bin" / "caffe"))
    assert env["LD_LIBRARY_PATH"] == str(tmp_path / "b1" / "lib") + ":/cuda/lib"
    env = ab_caffe_builds.build_env(str(tmp_path / "b2" / "bin" / "caffe"),
                                    {"CAFFE_CUDNN_WORKSPACE_MB": "64"})
    assert env["LD_LIBRARY_PATH"] == "/cuda/lib" and env["CAFFE_CUDNN_WORKSPACE_MB"] == "64"
    # a library swapped in through --env (another OpenBLAS) goes before the bundle's own
    env = ab_caffe_builds.build_env(str(tmp_path / "b1" / "bin" / "caffe"),
                                    {"LD_LIBRARY_PATH": "/omp:/cuda/lib"})
    assert env["LD_LIBRARY_PATH"] == "/omp:/cuda/lib:" + str(tmp_path / "b1" / "lib")
    assert ab_caffe_builds.parse_env("ws:A=b=c") == ("ws", "A", "b=c")


def test_summarise_refuses_an_empty_cell():
    plan = {"layers": [], "costs": {}, "iterations": 1}
    with pytest.raises(ValueError, match="no caffe time results"):
        caffetime.summarise(plan, {"1": {"original": [], "compact": []}})


@pytest.mark.parametrize("value, mb", [(None, 8), ("", 8), ("64", 64), (" 1024", 1024),
                                       ("64MB", 64), ("0", 8), ("-5", 8), ("lots", 8)])
def test_cudnn_workspace_is_read_as_the_patched_caffe_reads_it(value, mb):
    environ = {} if value is None else {"CAFFE_CUDNN_WORKSPACE_MB": value}
    assert caffetime.cudnn_workspace_mb(environ) == mb


def test_gpu_results_record_the_cudnn_workspace(monkeypatch):
    """measure()'s bookkeeping on given `caffe time` results (no Caffe run here)."""
    monkeypatch.setattr(caffetime, "run", lambda caffe, model, iterations, gpu: {
        "layers": {"ip1": 1.0}, "forward_ms": 2.0})
    plan = one_layer_plan("ip1", gpu=0)
    monkeypatch.setenv("CAFFE_CUDNN_WORKSPACE_MB", "64")
    result = caffetime.measure(plan, caffe=sys.executable)
    assert result["cudnn_workspace_mb"] == 64
    assert "(GPU 0), cuDNN workspace 64 MB" in timing.format_table(result)
    monkeypatch.delenv("CAFFE_CUDNN_WORKSPACE_MB")
    assert caffetime.measure(plan, caffe=sys.executable)["cudnn_workspace_mb"] == 8
    plan["gpu"] = None  # CPU timing: no cuDNN, nothing to record
    assert "cudnn_workspace_mb" not in caffetime.measure(plan, caffe=sys.executable)


def test_table_reads_each_speed_up_against_the_flop_reduction(monkeypatch):
    """The "of FLOP" column: measured speed-up / FLOP reduction (the issue's
    target reads it: >= 0.8), and its range over the rounds, each round's
    speed-up from that round's two processes."""
    ms = {"o.prototxt": iter([6.0, 8.0, 7.0]), "c.prototxt": iter([1.0, 2.0, 1.0])}
    monkeypatch.setattr(caffetime, "run", lambda caffe, model, iterations, gpu: {
        "layers": {"conv1": next(ms[os.path.basename(model)])}, "forward_ms": 2.0})
    plan = one_layer_plan("conv1", repeats=3)
    plan["costs"]["compact"] = {"conv1": {"flops": 5, "params": 1}}  # 10x fewer FLOPs
    result = caffetime.measure(plan, caffe=sys.executable)
    row = result["batches"]["1"]["layers"]["conv1"]
    assert row["speedup"] == 7.0  # median 7 / median 1
    assert row["speedup_rounds"] == {"median": 6.0, "min": 4.0, "max": 7.0}  # 6/1, 8/2, 7/1
    assert row["original"]["samples_ms"] == [6.0, 8.0, 7.0]
    table = timing.format_table(result)
    header, row = [line.split() for line in table.splitlines()[-4:-2]]
    assert header[:7] == ["layer", "orig", "ms", "compact", "ms", "speedup", "FLOP"]
    assert row == ["conv1", "7.000", "1.000", "7.00x", "10.00x", "0.70", "0.40-0.70", "5.00x"]
    assert table.splitlines()[-1].startswith("of FLOP: speed-up (ratio of the medians)")


def test_cpu_results_record_the_thread_settings(monkeypatch):
    """measure()'s bookkeeping on given `caffe time` results (no Caffe run here)."""
    monkeypatch.setattr(caffetime, "run", lambda caffe, model, iterations, gpu: {
        "layers": {"ip1": 1.0}, "forward_ms": 2.0})
    plan = one_layer_plan("ip1")
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    monkeypatch.setenv("CAFFE_CPU_CONV_THREADS", "4")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    result = caffetime.measure(plan, caffe=sys.executable)
    assert result["cpu_threads"] == {"OPENBLAS_NUM_THREADS": "1", "CAFFE_CPU_CONV_THREADS": "4",
                                     "OMP_NUM_THREADS": None}
    assert "CPU threads: OPENBLAS_NUM_THREADS=1, CAFFE_CPU_CONV_THREADS=4" in \
        timing.format_table(result)
    monkeypatch.delenv("CAFFE_CPU_CONV_THREADS")
    assert "CAFFE_CPU_CONV_THREADS=unset" in timing.format_table(
        caffetime.measure(plan, caffe=sys.executable))
    plan["gpu"] = 0
    assert "cpu_threads" not in caffetime.measure(plan, caffe=sys.executable)


@pytest.mark.parametrize("core, flags, kernel", [
    ("Prescott", {"sse3", "avx2", "fma"}, "HASWELL"),
    ("Nehalem", {"avx2", "avx512f"}, "SKYLAKEX"),
    ("Zen", {"avx2", "fma"}, None),            # a kernel made for the CPU
    ("Prescott", {"sse3", "avx"}, None),       # no AVX2: nothing better to pick
    (None, {"avx2"}, None),                    # not OpenBLAS
])
def test_blas_warning_names_a_generic_kernel_on_a_cpu_with_avx2(core, flags, kernel):
    warning = caffetime.blas_warning(core, flags)
    if kernel is None:
        assert warning is None
    else:
        assert "generic %s kernel" % core in warning
        assert "OPENBLAS_CORETYPE=%s" % kernel in warning


def test_blas_info_asks_the_openblas_that_caffe_loads():
    """The real build: ldd finds Debian's OpenBLAS through the .venv wrapper as
    through the binary, and a kernel forced by OPENBLAS_CORETYPE in the given
    environment is the one reported (Prescott runs on any x86-64)."""
    binary = caffetime._executable(CAFFE)
    assert binary != CAFFE and open(binary, "rb").read(4) == b"\x7fELF"
    info = caffetime.blas_info(CAFFE)
    assert "libopenblas" in os.path.basename(info["library"]) and info["core"]
    assert info["config"].startswith("OpenBLAS ") and info["core"] in info["config"]
    # this project's CPU build links oneDNN, and OpenBLAS's OpenMP build (one
    # OpenMP thread pool for both) through its RUNPATH
    assert info["onednn"] is True
    assert os.path.basename(os.path.dirname(info["library"])) == "openblas-openmp"
    assert caffetime.blas_info(binary) == info
    forced = caffetime.blas_info(CAFFE, dict(os.environ, OPENBLAS_CORETYPE="PRESCOTT"))
    assert forced["library"] == info["library"] and forced["core"] == "Prescott"
    assert (forced["warning"] is not None) == ("avx2" in caffetime.cpu_flags())
    missing = caffetime.blas_info(sys.executable)  # links no BLAS
    assert missing == {"library": None, "core": None, "config": None, "warning": None,
                       "onednn": False}


def test_pycaffe_results_record_the_loaded_blas(tmp_path, compacted):
    """The pycaffe engine reports the OpenBLAS loaded in its own process: the
    same file and kernel as the caffe binary's, and oneDNN linked there too;
    the table prints them and the convolution engine."""
    _, compact_model = compacted
    result = timing.compare(LENET, None, compact_model, compact_model.replace(
        ".prototxt", ".caffemodel"), batches=(1,), repeats=1, warmup=0)
    assert result["blas"] == caffetime.blas_info(CAFFE)
    assert "BLAS: %s, kernel %s" % (result["blas"]["library"], result["blas"]["core"]) \
        in timing.format_table(result)
    engine = caffetime.cpu_conv_engine(True)  # oneDNN unless this run set the variable
    assert result["cpu_conv_engine"] == engine
    assert caffetime.cpu_conv_line(engine) in timing.format_table(result).splitlines()


@pytest.mark.parametrize("onednn, value, engine", [
    (True, None, "onednn"), (True, "", "onednn"), (True, "onednn", "onednn"),
    (True, "caffe", "caffe"), (False, None, "caffe"), (False, "onednn", "caffe"),
])
def test_cpu_conv_engine_follows_the_build_and_the_variable(onednn, value, engine):
    environ = {} if value is None else {"CAFFE_CPU_CONV_ENGINE": value}
    assert caffetime.cpu_conv_engine(onednn, environ) == engine
    with pytest.raises(ValueError, match="CAFFE_CPU_CONV_ENGINE=fast: expected onednn or caffe"):
        caffetime.cpu_conv_engine(onednn, {"CAFFE_CPU_CONV_ENGINE": "fast"})


def test_table_warns_of_a_generic_blas_kernel():
    result = {"engine": "caffe time", "repeats": 1, "batches": {},
              "blas": {"library": "/x/libopenblas.so.0", "core": "Prescott", "config": "",
                       "warning": caffetime.blas_warning("Prescott", {"avx2"})}}
    lines = timing.format_table(result).splitlines()
    assert lines[1] == "BLAS: /x/libopenblas.so.0, kernel Prescott"
    assert lines[2].startswith("WARNING: OpenBLAS runs its generic Prescott kernel")


def test_an_interrupted_timing_keeps_the_batch_sizes_it_timed(tmp_path, monkeypatch, capsys):
    """pycaffe engine: interrupted in batch 2's timing, the JSON holds batch 1
    (as a full run's would), the table of it is printed, and the exit is 130."""
    from caffe_admm import cli
    _, weights, out = run_compact(tmp_path, LENET)
    calls = interrupt_on_call(monkeypatch, timing, "time_nets", 2)
    path = str(tmp_path / "t.json")
    code = cli.main(["time", "--model", LENET, "--weights", weights, "--compact",
                     os.path.join(out, "compact.prototxt"), "--compact-weights",
                     os.path.join(out, "compact.caffemodel"), "--batch", "1", "2",
                     "--repeats", "1", "--json", path])
    assert code == 130 and [args[1] for args in calls] == [1, 2]  # the batch sizes
    with open(path) as f:
        assert list(json.load(f)["batches"]) == ["1"]
    captured = capsys.readouterr()
    assert "batch 1" in captured.out and "whole net" in captured.out
    assert "interrupted after batch size 1; %s holds them" % path in captured.err


def test_a_plan_cut_short_keeps_the_batch_sizes_it_measured(tmp_path, compacted, monkeypatch):
    """``python3 -m caffe_admm.caffetime`` writes OUT after each batch size, so
    a run stopped in batch 2 (a GPU machine's time running out) keeps batch 1."""
    _, compact_model = compacted
    _, path = timing.write_plan(LENET, compact_model, str(tmp_path / "plan"), batches=(1, 2),
                                repeats=1, iterations=2)
    calls = interrupt_on_call(monkeypatch, caffetime, "run", 3)  # batch 2's first process
    out = str(tmp_path / "result.json")
    with pytest.raises(KeyboardInterrupt):
        caffetime.main([path, out, "--caffe", CAFFE])
    assert len(calls) == 3
    with open(out) as f:
        result = json.load(f)
    assert list(result["batches"]) == ["1"] and result["repeats"] == 1
    assert not os.path.exists(out + ".partial")


def test_cpu_model_reads_the_first_model_name(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t: avx2\n"
                    "processor\t: 1\nmodel name\t: other\n")
    assert caffetime.cpu_model(str(info)) == "AMD EPYC 7B13"
    info.write_text("processor\t: 0\nBogoMIPS\t: 50.00\n")  # an ARM machine's
    assert caffetime.cpu_model(str(info)) is None
    assert caffetime.cpu_model(str(tmp_path / "none")) is None


def test_time_refuses_weights_that_do_not_fit_before_caffe_aborts(tmp_path, capsys):
    """pycaffe's load of a caffemodel that does not fit aborts the process;
    ``time`` checks both first, and names swapped files as such."""
    from caffe_admm import cli
    _, weights, out = run_compact(tmp_path, LENET)
    compact_model = os.path.join(out, "compact.prototxt")
    compact_weights = os.path.join(out, "compact.caffemodel")
    base = ["time", "--model", LENET, "--compact", compact_model, "--batch", "1",
            "--repeats", "1"]
    assert cli.main(base + ["--weights", compact_weights, "--compact-weights", weights]) == 2
    err = capsys.readouterr().err
    assert "compact.caffemodel: layer 'conv1' has blobs of shapes" in err
    assert "They are weights of %s: are the original's and the compacted net's weights " \
        "swapped?" % compact_model in err
    # weights of another net: no swap to suggest
    other = write(tmp_path / "other.prototxt", """
        layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 1 dim: 8 dim: 8 } } }
        layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
                convolution_param { num_output: 3 kernel_size: 3 } }
    """)
    other_weights = str(tmp_path / "other.caffemodel")
    caffe.Net(other, caffe.TEST).save(other_weights)
    assert cli.main(base + ["--compact-weights", other_weights]) == 2
    err = capsys.readouterr().err
    assert "other.caffemodel: layer 'conv1' has blobs of shapes [(3, 1, 3, 3), (3,)]" in err
    assert "swapped" not in err

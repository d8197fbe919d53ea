"""benchmarks/bench_train_threads.py: training-iteration times of real `caffe time`
(TRAIN phase) runs under several thread settings."""

import json

import pytest

from conftest import TINY_NET, interrupt_on_call, load_benchmark


def load():
    return load_benchmark("bench_train_threads")


def test_times_every_setting_each_round_and_reports_medians(tmp_path, tiny_data, capsys):
    bench = load()
    model = tmp_path / "tiny_train_test.prototxt"
    model.write_text(TINY_NET % tiny_data)
    out = tmp_path / "t.json"
    assert bench.main(["--model", str(model), "--rounds", "2", "--iterations", "2",
                       "--setting", "serial:OPENBLAS_NUM_THREADS=1",
                       "--setting", "conv2:CAFFE_CPU_CONV_THREADS=2,OPENBLAS_NUM_THREADS=1",
                       "--out", str(out)]) == 0
    result = json.load(open(str(out)))
    assert result["settings"] == {"serial": {"OPENBLAS_NUM_THREADS": "1"},
                                  "conv2": {"CAFFE_CPU_CONV_THREADS": "2",
                                            "OPENBLAS_NUM_THREADS": "1"}}
    assert [len(result["runs"][n]) for n in ("serial", "conv2")] == [2, 2]
    summary = result["summary"]
    assert summary["serial"]["speedup"] == 1.0
    assert list(summary["conv2"]["layers"]) == ["data", "conv1", "relu1", "pool1", "conv2",
                                                "relu2", "ip1", "loss"]
    for name in ("serial", "conv2"):
        s = summary[name]
        assert s["min_ms"] <= s["forward_backward_ms"] <= s["max_ms"]
        assert s["layers"]["conv1"]["backward"] > 0
    assert "speed-up" in capsys.readouterr().out


def test_refuses_malformed_settings():
    bench = load()
    assert bench.parse_setting("a:X=1,Y=") == ("a", {"X": "1", "Y": ""})
    for bad in ("noname", ":X=1", "a:X"):
        with pytest.raises(Exception, match="NAME:VAR=VALUE"):
            bench.parse_setting(bad)
    with pytest.raises(ValueError, match="no 'caffe time' benchmark"):
        bench.parse_train_log("I1126 caffe.cpp:1] Use CPU.\n")


def test_an_iteration_is_the_forward_plus_the_backward_pass():
    # caffe time's own "Forward-Backward" line counts whole milliseconds: 0 here
    log = ("I1126 caffe.cpp:1] conv1\tforward: 0.125 ms.\n"
           "I1126 caffe.cpp:1] conv1\tbackward: 0.25 ms.\n"
           "I1126 caffe.cpp:1] Average Forward pass: 0.2 ms.\n"
           "I1126 caffe.cpp:1] Average Backward pass: 0.3 ms.\n"
           "I1126 caffe.cpp:1] Average Forward-Backward: 0 ms.\n")
    res = load().parse_train_log(log)
    assert res == {"layers": {"conv1": {"forward": 0.125, "backward": 0.25}},
                   "forward_backward_ms": 0.5}


def test_an_interrupted_run_keeps_its_whole_rounds(tmp_path, tiny_data, monkeypatch, capsys):
    """The JSON is written after each round: a Ctrl-C in round 2 (its
    second setting) leaves round 1's times, summarised and marked partial;
    round 2's first setting, timed already, is not in it."""
    bench = load()
    model = tmp_path / "tiny_train_test.prototxt"
    model.write_text(TINY_NET % tiny_data)
    calls = interrupt_on_call(monkeypatch, bench, "time_log", 4)
    out = tmp_path / "t.json"
    with pytest.raises(SystemExit) as exc:
        bench.main(["--model", str(model), "--rounds", "3", "--iterations", "2",
                    "--setting", "a:OPENBLAS_NUM_THREADS=1",
                    "--setting", "b:OPENBLAS_NUM_THREADS=1", "--out", str(out)])
    assert exc.value.code == 130 and len(calls) == 4
    result = json.load(open(str(out)))
    assert result["partial"] is True and (result["rounds_done"], result["rounds"]) == (1, 3)
    assert [len(result["runs"][n]) for n in ("a", "b")] == [1, 1]
    assert result["summary"]["a"]["forward_backward_ms"] == \
        result["runs"]["a"][0]["forward_backward_ms"]
    captured = capsys.readouterr()
    assert "speed-up" not in captured.out  # no table of a partial run
    assert "interrupted in round 2; %s holds the 1 whole round before it" % out in captured.err

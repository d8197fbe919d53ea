"""Progress lines: rate, the bar's time left and the whole run's."""

import io

from caffe_admm import progress


def _lines(monkeypatch, after):
    # created at t=0, started at t=1 with 0 done, 50 done at t=11: 5 it/s
    clock = iter([0.0, 1.0, 11.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    out = io.StringIO()
    bar = progress.Progress(100, "ADMM 1/4", stream=out, every=0.0, after=after)
    bar.update(0)
    bar.update(50, "loss=0.1")
    return out.getvalue().splitlines()


def test_time_left_for_the_bar_and_for_the_run(monkeypatch):
    lines = _lines(monkeypatch, 300)
    assert lines == ["ADMM 1/4 50/100 (50%) 5.0 it/s, 0:10 left (run: 1:10) loss=0.1"]


def test_no_run_estimate_when_nothing_follows(monkeypatch):
    lines = _lines(monkeypatch, 0)
    assert lines == ["ADMM 1/4 50/100 (50%) 5.0 it/s, 0:10 left loss=0.1"]

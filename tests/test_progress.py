"""Progress lines: rate, the bar's time left and the whole run's."""

import io

from caffe_admm import progress


def _lines(monkeypatch, after, after_s=0.0, quiet_s=0.0):
    # created at t=0, started at t=1 with 0 done, 50 done at t=11: 5 it/s
    clock = iter([0.0, 1.0, 11.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    out = io.StringIO()
    bar = progress.Progress(100, "ADMM 1/4", stream=out, every=0.0, after=after,
                            after_s=after_s, quiet_s=quiet_s)
    bar.update(0)
    bar.update(50, "loss=0.1")
    return out.getvalue().splitlines()


def test_time_left_for_the_bar_and_for_the_run(monkeypatch):
    lines = _lines(monkeypatch, 300)
    assert lines == ["ADMM 1/4 50/100 (50%) 5.0 it/s, 0:10 left (run: 1:10) loss=0.1"]


def test_no_run_estimate_when_nothing_follows(monkeypatch):
    lines = _lines(monkeypatch, 0)
    assert lines == ["ADMM 1/4 50/100 (50%) 5.0 it/s, 0:10 left loss=0.1"]


def test_the_run_s_other_work_is_added_to_its_time_left(monkeypatch):
    # 300 iterations at 5 it/s and 25 s of evaluations after these 50
    assert _lines(monkeypatch, 300, after_s=25.0) == [
        "ADMM 1/4 50/100 (50%) 5.0 it/s, 0:10 left (run: 1:35) loss=0.1"]
    # evaluations alone follow (retraining's last bar)
    assert _lines(monkeypatch, 0, after_s=25.0) == [
        "ADMM 1/4 50/100 (50%) 5.0 it/s, 0:10 left (run: 0:35) loss=0.1"]


def test_nothing_is_shown_before_quiet_s(monkeypatch):
    assert _lines(monkeypatch, 0, quiet_s=11.5) == []
    assert _lines(monkeypatch, 0, quiet_s=11.0) == [
        "ADMM 1/4 50/100 (50%) 5.0 it/s, 0:10 left loss=0.1"]


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_terminal_bar_never_shown_leaves_no_line(monkeypatch):
    clock = iter([0.0, 1.0, 2.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    out = _Terminal()
    bar = progress.Progress(10, "test", stream=out, quiet_s=10.0)
    bar.update(0)
    bar.update(10)
    bar.close()
    assert out.getvalue() == ""

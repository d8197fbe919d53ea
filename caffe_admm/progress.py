"""Progress of long solver runs: a one-line bar on a terminal, periodic lines otherwise."""

import sys
import time

__all__ = ["Progress", "format_seconds"]


class Progress:
    """Reports ``done`` of ``total`` iterations with rate and time left.

    Parameters
    ----------
    total : int
    label : str
    stream : file, default sys.stderr
    enabled : bool
    every : float
        Seconds between lines when the stream is not a terminal.
    after : int
        Iterations of the whole run that follow these ``total`` (later
        ADMM steps, retraining). Where above 0 (or ``after_s``), each line
        also gives the run's time left at the current rate.
    after_s : float
        Seconds of the run's other work after these (its evaluations, as
        long as the ones measured so far), added to the run's time left.
    quiet_s : float
        Nothing is shown before this many seconds have passed (for work that
        is often short, as evaluations are).
    """

    def __init__(self, total, label, stream=None, enabled=True, every=10.0, after=0,
                 after_s=0.0, quiet_s=0.0):
        self.total = int(total)
        self.after = int(after)
        self.after_s = float(after_s)
        self.quiet_s = quiet_s
        self.shown = False
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.every = every
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = self.created = time.monotonic()
        self.last = 0.0
        self.first_done = None

    def update(self, done, info=""):
        if not self.enabled:
            return
        now = time.monotonic()
        if self.first_done is None:
            self.first_done, self.start = done, now
            return
        if now - self.created < self.quiet_s or (
                not self.tty and now - self.last < self.every and done < self.total):
            return
        self.last, self.shown = now, True
        rate = (done - self.first_done) / max(now - self.start, 1e-9)
        left = format_seconds(_seconds(self.total - done, rate)) + " left"
        if self.after > 0 or self.after_s > 0:
            left += " (run: %s)" % format_seconds(
                _seconds(self.total - done + self.after, rate) + self.after_s)
        frac = done / max(self.total, 1)
        if self.tty:
            bar = "#" * int(30 * frac)
            self.stream.write("\r%s [%-30s] %d/%d %.1f it/s, %s %s\x1b[K"
                              % (self.label, bar, done, self.total, rate, left, info))
        else:
            self.stream.write("%s %d/%d (%.0f%%) %.1f it/s, %s %s\n"
                              % (self.label, done, self.total, 100 * frac, rate, left, info))
        self.stream.flush()

    def close(self):
        if self.tty and self.shown:
            self.stream.write("\n")
            self.stream.flush()


def _seconds(iters, rate):
    return iters / rate if rate > 0 else float("nan")


def format_seconds(seconds):
    """M:SS, or H:MM:SS from an hour; "?" for NaN."""
    if seconds != seconds:  # NaN
        return "?"
    seconds = int(seconds)
    return "%d:%02d" % (seconds // 60, seconds % 60) if seconds < 3600 else \
        "%d:%02d:%02d" % (seconds // 3600, seconds // 60 % 60, seconds % 60)

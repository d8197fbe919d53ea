"""Training-iteration time of a Caffe net under several CPU thread settings.

Times ``caffe time`` (TRAIN phase: the net's own data layer, forward and
backward) once per setting per round, the settings' order rotated each
round, and reports the median of the rounds per setting: whole
forward-backward and per layer, and each setting's speed-up over the first.
Written to measure ``CAFFE_CPU_CONV_THREADS`` (this project's Caffe patch:
images of a batch at once in the convolutions, forward and backward)
against Caffe's own loops with a threaded OpenBLAS. Prints a table and
writes JSON::

    .venv/bin/python benchmarks/bench_train_threads.py \\
        --setting blas2:OPENBLAS_NUM_THREADS=2 \\
        --setting conv2:CAFFE_CPU_CONV_THREADS=2,OPENBLAS_NUM_THREADS=1 [--rounds 5]

A setting is ``NAME:VAR=VALUE[,VAR=VALUE...]``; every process also gets the
environment of this one. Run from the repository root (LeNet's prototxt
reads ``data/``; ``make data`` makes it). The JSON is written after each
round too (``"partial": true`` until the last), so that a run stopped by
Ctrl-C keeps its whole rounds.
"""

import argparse
import os
import re
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from caffe_admm.caffetime import find_caffe, rotate, time_log  # noqa: E402

from benchmarks._common import interrupted, write_json  # noqa: E402

_PASS = re.compile(r"\]\s+(\S+)\s+(forward|backward): ([0-9.eE+-]+) ms\.")
# caffe time times the passes in microseconds, but its "Average Forward-Backward"
# line divides a whole number of milliseconds (0 for a small net over a few
# iterations): an iteration is the forward plus the backward pass instead
_PASSES = re.compile(r"Average (Forward|Backward) pass: ([0-9.eE+-]+) ms\.")


def parse_setting(text):
    """``NAME:VAR=VALUE[,VAR=VALUE...]`` -> (name, {var: value})."""
    name, sep, rest = text.partition(":")
    env = {}
    for item in rest.split(",") if rest else []:
        var, eq, value = item.partition("=")
        if not eq or not var:
            raise argparse.ArgumentTypeError("--setting takes NAME:VAR=VALUE[,VAR=VALUE...], "
                                             "got %r" % text)
        env[var] = value
    if not sep or not name:
        raise argparse.ArgumentTypeError("--setting takes NAME:VAR=VALUE[,VAR=VALUE...], "
                                         "got %r" % text)
    return name, env


def parse_train_log(text):
    """Per-layer forward and backward ms and the whole forward-backward ms of
    one ``caffe time`` (TRAIN) run."""
    layers = {}
    for name, direction, ms in _PASS.findall(text):
        layers.setdefault(name, {})[direction] = float(ms)
    passes = dict(_PASSES.findall(text))
    if set(passes) != {"Forward", "Backward"} or not layers:
        raise ValueError("no 'caffe time' benchmark in this output (last lines: %s)"
                         % " | ".join(text.strip().splitlines()[-3:]))
    return {"layers": layers,
            "forward_backward_ms": float(passes["Forward"]) + float(passes["Backward"])}


def summarise(runs, names):
    """Medians per setting (whole and per layer) and speed-ups over names[0]."""
    out = {}
    for name in names:
        results = runs[name]
        layers = {}
        for layer in results[0]["layers"]:
            layers[layer] = {d: statistics.median(r["layers"][layer].get(d, 0.0) for r in results)
                             for d in ("forward", "backward")}
        whole = [r["forward_backward_ms"] for r in results]
        out[name] = {"forward_backward_ms": statistics.median(whole),
                     "min_ms": min(whole), "max_ms": max(whole), "layers": layers}
    first = out[names[0]]["forward_backward_ms"]
    for name in names:
        out[name]["speedup"] = first / out[name]["forward_backward_ms"]
    return out


def format_table(summary, names):
    lines = ["median ms per training iteration (forward + backward)",
             "%-12s %14s %10s %10s %9s" % ("setting", "fwd+bwd ms", "min", "max", "speed-up")]
    for name in names:
        s = summary[name]
        lines.append("%-12s %14.3f %10.3f %10.3f %8.2fx" % (
            name, s["forward_backward_ms"], s["min_ms"], s["max_ms"], s["speedup"]))
    layers = list(summary[names[0]]["layers"])
    lines.append("per layer, forward / backward ms")
    lines.append("%-12s" % "layer" + "".join(" %20s" % n for n in names))
    for layer in layers:
        lines.append("%-12s" % layer + "".join(
            " %9.3f / %8.3f" % (summary[n]["layers"][layer]["forward"],
                                summary[n]["layers"][layer]["backward"]) for n in names))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=os.path.join("prototxt", "lenet_train_test.prototxt"),
                        help="a train/test prototxt with its data layer")
    parser.add_argument("--setting", type=parse_setting, action="append", required=True,
                        metavar="NAME:VAR=VALUE[,...]", help="two or more")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=50,
                        help="forward-backward passes per caffe time process")
    parser.add_argument("--caffe", help="caffe binary (default: $CAFFE_BIN, the loaded "
                                        "pycaffe's build, or PATH)")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results",
                                                      "train_threads.json"))
    args = parser.parse_args(argv)
    names = [name for name, _ in args.setting]
    if len(names) < 2 or len(set(names)) != len(names):
        parser.error("--setting: give two or more settings with distinct names")
    if args.rounds < 1 or args.iterations < 1:
        parser.error("--rounds and --iterations must be at least 1")
    caffe = find_caffe(args.caffe or (os.path.join(ROOT, ".venv", "bin", "caffe")
                                      if os.path.exists(os.path.join(ROOT, ".venv", "bin",
                                                                     "caffe")) else None))
    envs = dict(args.setting)
    runs = {name: [] for name in names}
    start = time.time()

    def write(done):
        """The whole rounds so far to ``args.out``: ``partial`` before the last."""
        whole = {name: results[:done] for name, results in runs.items()}
        summary = summarise(whole, names)
        write_json(args.out, {"model": args.model, "caffe": caffe, "settings": envs,
                              "order": names, "rounds": args.rounds, "rounds_done": done,
                              "partial": done < args.rounds, "iterations": args.iterations,
                              "nproc": os.cpu_count(), "elapsed_s": time.time() - start,
                              "runs": whole, "summary": summary}, quiet=done < args.rounds)
        return summary

    for r in range(args.rounds):
        try:
            for name in rotate(names, r):
                res = parse_train_log(time_log(caffe, args.model, args.iterations,
                                               phase="TRAIN", env=dict(os.environ, **envs[name])))
                runs[name].append(res)
                print("round %d/%d %s: %.3f ms" % (r + 1, args.rounds, name,
                                                   res["forward_backward_ms"]),
                      file=sys.stderr, flush=True)
        except KeyboardInterrupt:
            interrupted("in round %d" % (r + 1), args.out,
                        "the %d whole round%s before it" % (r, "s" * (r > 1)) if r else None)
        summary = write(r + 1)  # after each round: an interrupted run keeps the whole ones
    print(format_table(summary, names))
    return 0


if __name__ == "__main__":
    sys.exit(main())

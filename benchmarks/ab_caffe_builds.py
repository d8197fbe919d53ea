"""Two or more Caffe builds timed on one plan, interleaved, in one run.

Written to measure a change to Caffe itself (e.g. the CUDA patch's cuDNN
algorithm cache) where only a run that alternates the builds on the same
machine is a fair comparison. The plan is one written by ``caffe-admm time
--plan-only DIR`` or ``bench_alexnet_compaction.py --plan-only DIR``; like
``python3 -m caffe_admm.caffetime`` this needs the standard library, numpy and
the caffe binaries only (no pycaffe), so it runs on a GPU machine::

    python3 benchmarks/ab_caffe_builds.py DIR/plan.json OUT.json \\
        --build before=A/bin/caffe --build after=B/bin/caffe [--deadline-s 300]

Order: round r times every batch size, and within it every build, original
and compact net alternately, the builds' order rotated each round, so drift
(GPU clocks, other load) falls on all of them alike. Each build's processes
get ``BIN/../lib`` first on ``LD_LIBRARY_PATH`` (a bundle from
``tools/bundle_caffe_cli.sh`` finds its own ``libcaffe.so``, not the other
build's); ``--env NAME:VAR=VALUE`` sets a variable for one build's
processes, so one binary can run under two names with two settings (e.g. a
Caffe knob read from the environment). ``--env NAME:LD_LIBRARY_PATH=DIRS``
replaces the inherited path and puts DIRS before ``BIN/../lib``, so a
library there (the OpenMP OpenBLAS, say) wins over the bundle's. OUT.json
is rewritten after every round and holds whole rounds only: with
``--deadline-s`` no round starts after that many seconds, and a failed
``caffe`` process or Ctrl-C stops the run with the rounds done so far kept
and the reason in ``stopped_early`` (exit status 1; 0 at the deadline).
"""

import argparse
import glob
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from caffe_admm import caffetime  # noqa: E402  (stdlib + numpy: no pycaffe)
from caffe_admm.caffetime import rotate  # noqa: E402


def parse_build(text):
    """``NAME=PATH`` -> (name, absolute path of an executable caffe binary)."""
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError("--build takes NAME=PATH/TO/caffe, got %r" % text)
    path = os.path.abspath(path)
    if not os.access(path, os.X_OK):
        raise argparse.ArgumentTypeError("--build %s: %s is not an executable caffe binary"
                                         % (name, path))
    return name, path


def parse_env(text):
    """``NAME:VAR=VALUE`` -> (name, var, value)."""
    name, sep, assignment = text.partition(":")
    var, eq, value = assignment.partition("=")
    if not sep or not name or not eq or not var:
        raise argparse.ArgumentTypeError("--env takes NAME:VAR=VALUE, got %r" % text)
    return name, var, value


def build_env(binary, extra=None):
    """os.environ with the ``extra`` variables set and the build's own lib/
    (BIN/../lib, where it holds a libcaffe.so) on LD_LIBRARY_PATH: first, or
    right after the folders of an ``extra`` LD_LIBRARY_PATH. A bundle's lib/
    holds its own OpenBLAS, so a library swapped in through ``--env`` (the
    OpenMP OpenBLAS, say) must come before it to be the one loaded."""
    extra = dict(extra or {})
    env = dict(os.environ, **extra)
    lib = os.path.normpath(os.path.join(os.path.dirname(binary), "..", "lib"))
    if glob.glob(os.path.join(lib, "libcaffe.so*")):
        path = [extra.get("LD_LIBRARY_PATH"), lib,
                None if "LD_LIBRARY_PATH" in extra else os.environ.get("LD_LIBRARY_PATH")]
        env["LD_LIBRARY_PATH"] = ":".join(p for p in path if p)
    return env


def _row(batch_result, key):
    """One batch's row for a layer, or for the whole net where ``key`` is "net"."""
    return batch_result["net"] if key == "net" else batch_result["layers"][key]


def compare_builds(result, names):
    """Per batch: each layer's and the whole net's median time of every build
    relative to the first build's (< 1: faster than the first)."""
    first = names[0]
    out = {}
    for batch in result[first]["batches"]:
        rows = {}
        base = result[first]["batches"][batch]
        keys = ["net"] + list(base["layers"])
        for key in keys:
            row = {}
            for which in ("original", "compact"):
                ref = _row(base, key)[which]["median_ms"]
                for name in names[1:]:
                    ms = _row(result[name]["batches"][batch], key)[which]["median_ms"]
                    row["%s/%s %s" % (name, first, which)] = ms / ref if ref > 0 else None
            rows[key] = row
        out[batch] = rows
    return out


def format_builds(result, names):
    lines = []
    for batch in result[names[0]]["batches"]:
        lines.append("batch %s: median ms, original -> compact (speed-up), per build" % batch)
        header = "%-10s %8s" % ("layer", "FLOPred")
        for name in names:
            header += "  %-26s" % name
        lines.append(header)
        first = result[names[0]]["batches"][batch]
        for key in list(first["layers"]) + ["net"]:
            red = first["layers"][key]["flop_reduction"] if key != "net" else None
            line = "%-10s %8s" % ("whole net" if key == "net" else key,
                                  "" if red is None else "%.2fx" % red)
            for name in names:
                row = _row(result[name]["batches"][batch], key)
                line += "  %8.3f -> %8.3f (%5.2fx)" % (row["original"]["median_ms"],
                                                      row["compact"]["median_ms"],
                                                      row["speedup"])
            lines.append(line)
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("plan", help="plan.json (caffe-admm time --plan-only DIR)")
    parser.add_argument("out", help="result JSON, rewritten after every round")
    parser.add_argument("--build", type=parse_build, action="append", required=True,
                        metavar="NAME=BIN", help="a caffe binary to time (two or more)")
    parser.add_argument("--env", type=parse_env, action="append", default=[],
                        metavar="NAME:VAR=VALUE",
                        help="set VAR for build NAME's processes (one build binary can "
                             "then run under several names and settings)")
    parser.add_argument("--repeats", type=int, help="rounds (default: the plan's repeats)")
    parser.add_argument("--iterations", type=int, help="default: the plan's iterations")
    parser.add_argument("--cpu", action="store_true",
                        help="time on the CPU, whatever GPU the plan names")
    parser.add_argument("--deadline-s", type=float,
                        help="start no round after this many seconds")
    args = parser.parse_args(argv)
    names = [name for name, _ in args.build]
    if len(names) < 2 or len(set(names)) != len(names):
        parser.error("--build: give two or more builds with distinct names")
    extra = {name: {} for name in names}
    for name, var, value in args.env:
        if name not in extra:
            parser.error("--env %s:%s: no build named %s" % (name, var, name))
        extra[name][var] = value
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.iterations is not None and args.iterations < 1:
        parser.error("--iterations must be at least 1")
    try:
        with open(args.plan) as f:
            plan = json.load(f)
    except (OSError, ValueError) as exc:
        parser.error("cannot read the plan %s: %s" % (args.plan, exc))
    base_dir = os.path.dirname(os.path.abspath(args.plan))
    repeats = args.repeats or plan["repeats"]
    iterations = args.iterations or plan["iterations"]
    plan = dict(plan, iterations=iterations, gpu=None if args.cpu else plan.get("gpu"))
    binaries = dict(args.build)
    envs = {name: build_env(path, extra[name]) for name, path in binaries.items()}
    blas = {}
    if plan.get("gpu") is None:
        for name in names:
            blas[name] = caffetime.blas_info(binaries[name], envs[name])
            for line in caffetime.blas_lines(blas[name]):
                print("%s: %s" % (name, line))
    runs = {name: {batch: {"original": [], "compact": []} for batch in plan["models"]}
            for name in names}
    walls = {name: [] for name in names}
    start = time.time()
    summary = None
    stopped = None

    def write(rounds):
        result = {name: caffetime.summarise(plan, {b: {w: cell[w][:rounds] for w in cell}
                                                   for b, cell in runs[name].items()},
                                            envs[name], blas.get(name))
                  for name in names}
        out = {"plan": os.path.abspath(args.plan), "builds": binaries, "env": extra,
               "order": names, "rounds": rounds, "rounds_planned": repeats,
               "iterations": iterations, "stopped_early": stopped,
               "elapsed_s": time.time() - start,
               "process_wall_s": {n: sorted(w)[len(w) // 2] for n, w in walls.items()},
               "results": result, "relative_to_first": compare_builds(result, names)}
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
        return out

    rounds = 0
    try:
        for r in range(repeats):
            if args.deadline_s is not None and r > 0 and time.time() - start > args.deadline_s:
                stopped = "deadline reached"
                break
            for batch, models in plan["models"].items():
                for name in rotate(names, r):
                    for which in rotate(["original", "compact"], r):
                        t0 = time.time()
                        res = caffetime.run(binaries[name],
                                            os.path.join(base_dir, models[which]),
                                            iterations, plan.get("gpu"), env=envs[name])
                        walls[name].append(time.time() - t0)
                        runs[name][batch][which].append(res)
                        print("round %d/%d batch %s %s %s: forward %.3f ms (process %.1f s)"
                              % (r + 1, repeats, batch, name, which, res["forward_ms"],
                                 walls[name][-1]), file=sys.stderr, flush=True)
            rounds = r + 1
            summary = write(rounds)
    except (RuntimeError, OSError, KeyboardInterrupt) as exc:
        stopped = "%s: %s" % (type(exc).__name__, exc)
        print("stopped in round %d: %s" % (rounds + 1, stopped), file=sys.stderr)
    if rounds == 0:
        print("no whole round to report; %s not written" % args.out, file=sys.stderr)
        return 1
    if stopped:
        summary = write(rounds)  # records why; only whole rounds are in it
    print("%d of %d rounds, %.0f s%s" % (rounds, repeats, time.time() - start,
                                         " (%s)" % stopped if stopped else ""))
    print(format_builds(summary["results"], names))
    return 1 if stopped and stopped != "deadline reached" else 0


if __name__ == "__main__":
    sys.exit(main())

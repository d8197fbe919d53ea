"""Per-layer forward time of an original and a compacted net, inside the net
and alone, in one process.

``caffe time`` and ``caffe-admm time`` time a layer inside the net's forward
pass, where its weights and buffers come back from memory that the layers
between two of its passes have filled (AlexNet's fc layers stream 38-150 MB
through the caches). Called over and over on its own, the same layer runs
from cache: what is left is its kernel. This bench times every Convolution
and InnerProduct of both nets of a timing plan both ways
(:func:`caffe_admm.timing.time_layer_contexts`, the nets interleaved) and
prints, per layer, the FLOP reduction and speed-up / FLOP reduction in each
context, so that a compacted layer's shortfall can be split into its kernel's
part and the part that comes from running inside the net. Prints a table and
writes JSON::

    .venv/bin/python benchmarks/bench_alexnet_compaction.py --engine caffe-time \\
        --batch 1 8 --plan-only /tmp/plan
    .venv/bin/python benchmarks/bench_layer_context.py /tmp/plan [--rounds 15]

The plan's nets take their weights from the prototxt fillers (random, the
same distribution for both nets), which is enough for timing. The thread
settings are this process's (``OPENBLAS_NUM_THREADS``, which also sets the
oneDNN convolution's threads, ``CAFFE_CPU_CONV_THREADS``). The JSON is
written after each batch size too (``"partial": true`` until the last), so
that a run stopped by Ctrl-C keeps the batch sizes it timed.
"""

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from caffe_admm import timing  # noqa: E402
from caffe_admm.caffetime import (blas_lines, cpu_conv_engine, cpu_conv_line,  # noqa: E402
                                  cpu_threads, cpu_threads_line, loaded_blas_info)

from benchmarks._common import timed_by_batch, write_json  # noqa: E402

CONTEXTS = (("in_net", "in the net"), ("alone", "alone"))


def measure(plan_dir, batches=None, rounds=15, iterations=20, on_batch=None):
    """Both nets of the timing plan in ``plan_dir``, both contexts, per batch size.

    ``on_batch(result)``, if given, is called with the result so far after
    each batch size.

    Returns
    -------
    dict: environment, and per batch size and layer the FLOP reduction and, per
    context, both timings (``summary`` dicts), the speed-up (ratio of medians),
    its median, min and max over the rounds (``speedup_rounds``) and
    speed-up / FLOP reduction (``of_flops``).
    """
    from caffe_admm.backend import caffe
    with open(os.path.join(plan_dir, "plan.json")) as f:
        plan = json.load(f)
    batches = [str(b) for b in batches] if batches else list(plan["models"])
    missing = [b for b in batches if b not in plan["models"]]
    if missing:
        raise ValueError("%s has no nets for batch size %s (it has %s)"
                         % (plan_dir, ", ".join(missing), ", ".join(plan["models"])))
    blas = loaded_blas_info()
    out = {"plan": os.path.abspath(plan_dir), "rounds": rounds, "iterations": iterations,
           "cpu_threads": cpu_threads(), "blas": blas,
           "cpu_conv_engine": cpu_conv_engine(blas["onednn"]), "batches": {}}
    costs = plan["costs"]
    for batch in batches:
        nets = [caffe.Net(os.path.join(plan_dir, plan["models"][batch][which]), caffe.TEST)
                for which in ("original", "compact")]
        original, compact = timing.time_layer_contexts(nets, int(batch), rounds, iterations,
                                                       layers=plan["layers"])
        rows = {}
        for name in plan["layers"]:
            flop_reduction = costs["original"][name]["flops"] / costs["compact"][name]["flops"]
            row = {"flop_reduction": flop_reduction}
            for context, _ in CONTEXTS:
                a, b = original[context][name], compact[context][name]
                speedup = a["median_ms"] / b["median_ms"]
                row[context] = {"original": a, "compact": b, "speedup": speedup,
                                "speedup_rounds": timing.round_speedups(a, b),
                                "of_flops": speedup / flop_reduction}
            rows[name] = row
        out["batches"][batch] = rows
        if on_batch is not None:
            on_batch(out)
    return out


def format_table(result):
    lines = ["pycaffe, %d rounds of %d iterations" % (result["rounds"], result["iterations"]),
             cpu_threads_line(result["cpu_threads"]), cpu_conv_line(result["cpu_conv_engine"])]
    lines.extend(blas_lines(result["blas"]))
    for batch, rows in result["batches"].items():
        lines.append("batch %s" % batch)
        lines.append("  %-8s %8s  %s" % ("layer", "FLOP red", "  ".join(
            "%-34s" % ("%s: orig ms, compact ms, of FLOP" % label) for _, label in CONTEXTS)))
        for name, row in rows.items():
            lines.append(("  %-8s %7.2fx  %s" % (name, row["flop_reduction"], "  ".join(
                "%-34s" % ("%9.3f %9.3f %6.2f" % (row[c]["original"]["median_ms"],
                                                  row[c]["compact"]["median_ms"],
                                                  row[c]["of_flops"]))
                for c, _ in CONTEXTS))).rstrip())
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("plan_dir", help="directory with plan.json (--plan-only DIR)")
    parser.add_argument("--batch", type=int, nargs="+", help="default: the plan's")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--iterations", type=int, default=20,
                        help="forward passes (in the net) and calls (alone) per round")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results",
                                                      "layer_context.json"))
    args = parser.parse_args(argv)
    result = timed_by_batch(
        args.out, lambda on_batch: measure(args.plan_dir, args.batch, args.rounds,
                                           args.iterations, on_batch=on_batch),
        lambda so_far: write_json(args.out, dict(so_far, partial=True), quiet=True))
    print(format_table(result))
    write_json(args.out, dict(result, partial=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())

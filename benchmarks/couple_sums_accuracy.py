"""Accuracy and compacted size of a small ResNet pruned with and without ``couple_sums``.

A residual net for 28x28 grey images (MNIST by default, from ``make data``):
a stem convolution and two blocks of two 3x3 convolutions with BatchNorm,
the second block with a strided 1x1 shortcut projection, then global average
pooling and a classifier. Two residual streams: the stem's and the first
block's (16 channels), the projection's and the second block's (32).

The script trains a baseline once (``solver.train``), then prunes it with
every method and keep ratio asked for, twice each: the config's default
(each stream's writers keep the same filters, ``couple_sums``) and
``couple_sums: false`` (each layer on its own). Every Convolution loses
``1 - keep`` of its filters (``global_keep_ratio``; the classifier is kept);
the same budget for all (``--steps`` x ``--iters``, then ``--retrain``
masked iterations, then the BatchNorm statistics recomputed over
``--bn-batches`` training batches: the config's default, 100; 0 keeps
Caffe's moving averages; runs with another count than 100 are named
``..._bnN``). SSL's Lasso (SLIMMING's, on the BatchNorm scales) has
``--lasso-lambda`` (runs with another than 0.005 named ``..._lL``; 0.005 as in
``compare_methods.py``). ``--kind FILTER_SHAPE`` prunes shape columns
too, at the same ratio (runs named ``..._fs``); ``--live-inputs`` sets
``live_inputs_only`` (``..._live``), where the budget of a layer reading
a coupled stream goes to its live channels; ``--slimming-global`` sets
SLIMMING's ``slimming_global`` (``..._global``), one ranking of all the
layers' scales at the same total of kept filters, and
``--slimming-min-keep R`` its floor, ``slimming_min_keep_ratio``
(``..._floorR``). Each pruned net is compacted (``compact.compact``, its
equivalence check included) and its test accuracy measured over the
whole test set. The table gives, per run, the accuracy after retraining, the
weights and FLOPs of the compacted net against the dense one, the kept
weights compaction cut (on dead inputs: ``dead``), and the zero filters
compaction kept::

    .venv/bin/python benchmarks/couple_sums_accuracy.py [--keep 0.5 0.25] \\
        [--methods ADMM MAGNITUDE] [--seed 1] [--bn-batches 100] \\
        [--kind FILTER] [--live-inputs] [--couple both] \\
        [--out benchmarks/results/couple_sums.json]

One seed per invocation; a run's accuracy differs from seed to seed by
about as much as the methods do (docs/results.md), so compare within a
seed and across several.
"""

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks._common import write_json  # noqa: E402
from caffe_admm import compact, solver  # noqa: E402
from caffe_admm.protoio import atomic_write  # noqa: E402


def _conv(name, bottom, out, k, stride=1, relu=True):
    """A Convolution without bias, its BatchNorm and Scale, and a ReLU.

    The BatchNorm's running statistics average over about 10 batches
    (Caffe's default, 0.999, over about 1,000): the baseline's training is
    short, at a fixed learning rate, and with the default its TEST phase
    scored 0.72 where the batch statistics gave 0.97. (The pruning runs
    recompute the statistics; the baseline is plain Caffe training.)"""
    text = """layer { name: "%(n)s" type: "Convolution" bottom: "%(b)s" top: "%(n)s"
  convolution_param { num_output: %(o)d kernel_size: %(k)d pad: %(p)d stride: %(s)d
    bias_term: false weight_filler { type: "msra" } } }
layer { name: "%(n)s/bn" type: "BatchNorm" bottom: "%(n)s" top: "%(n)s"
  batch_norm_param { moving_average_fraction: 0.9 } }
layer { name: "%(n)s/scale" type: "Scale" bottom: "%(n)s" top: "%(n)s"
  scale_param { bias_term: true } }
""" % {"n": name, "b": bottom, "o": out, "k": k, "p": k // 2, "s": stride}
    if relu:
        text += 'layer { name: "%s/relu" type: "ReLU" bottom: "%s" top: "%s" }\n' % (
            name, name, name)
    return text


def _sum(name, a, b):
    """An Eltwise sum of ``a`` and ``b`` and a ReLU on it."""
    return ('layer { name: "%s" type: "Eltwise" bottom: "%s" bottom: "%s" top: "%s" }\n'
            'layer { name: "%s/relu" type: "ReLU" bottom: "%s" top: "%s" }\n'
            % (name, a, b, name, name, name, name))


def net_text(train, test):
    """The train/test prototxt, reading the LMDBs ``train`` and ``test`` (as
    given: ``prototxt/resnet_mnist_train_test.prototxt`` is this with the
    repository's relative paths)."""
    data = "".join(
        'layer { name: "data" type: "Data" top: "data" top: "label" include { phase: %s }\n'
        '  transform_param { scale: 0.00390625 }\n'
        '  data_param { source: "%s" batch_size: %d backend: LMDB } }\n'
        % (phase, source, batch)
        for phase, source, batch in (("TRAIN", train, 64), ("TEST", test, 100)))
    return ('name: "ResNetMNIST"\n' + data
            + _conv("conv1", "data", 16, 3)
            + _conv("a1", "conv1", 16, 3) + _conv("a2", "a1", 16, 3, relu=False)
            + _sum("a_sum", "conv1", "a2")
            + _conv("b1", "a_sum", 32, 3, 2) + _conv("b2", "b1", 32, 3, relu=False)
            + _conv("b_proj", "a_sum", 32, 1, 2, relu=False)
            + _sum("b_sum", "b_proj", "b2") + """\
layer { name: "pool" type: "Pooling" bottom: "b_sum" top: "pool"
  pooling_param { pool: AVE global_pooling: true } }
layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc"
  inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
layer { name: "accuracy" type: "Accuracy" bottom: "fc" bottom: "label" top: "accuracy"
  include { phase: TEST } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
""")


SOLVER = """net: "%(net)s"
test_iter: %(test_iter)d
test_interval: 100000
base_lr: %(lr)g
momentum: 0.9
weight_decay: 0.0005
lr_policy: "fixed"
max_iter: %(iters)d
display: 0
snapshot: 100000
snapshot_prefix: "%(dir)s/unused"
random_seed: %(seed)d
"""

CONFIG = """method: %(method)s
default { kind: %(kind)s lasso_lambda: %(lasso)g }
global_keep_ratio: %(keep)r
layer { name: "fc" keep_ratio: 1 }
rho { initial: 0.01 growth: 2.0 max: 1 }
admm_steps: %(steps)d
iters_per_step: %(iters)d
retrain_iters: %(retrain)d
snapshot_interval: 100000
bn_recalibration_batches: %(bn_batches)d
%(extra)s
"""


def _write(path, text):
    with atomic_write(path, "w") as f:  # whole: a run with another --bn-batches may read it
        f.write(text)
    return path


def prepare(out, train, test, seed, baseline_iters, lr, test_iter):
    """The net and solvers in ``out``, and the baseline trained there
    (resumed, or returned, if done). Returns (solver path, net path,
    baseline weights)."""
    os.makedirs(out, exist_ok=True)
    net = _write(os.path.join(out, "resnet_mnist_train_test.prototxt"),
                 net_text(os.path.abspath(train), os.path.abspath(test)))
    sp = _write(os.path.join(out, "solver.prototxt"),
                SOLVER % {"net": net, "test_iter": test_iter, "lr": lr, "iters": baseline_iters,
                          "dir": out, "seed": seed})
    base = solver.train(sp, os.path.join(out, "baseline"), progress=False)
    return sp, net, base["weights"]


def run(sp, net, weights, out, method, keep, couple, steps, iters, retrain, test_iter,
        bn_batches=100, kind="FILTER", live=False, lasso=0.005, slimming_global=False,
        slimming_min_keep=None):
    """One pruning run and its compaction: a row of the table."""
    name = "%s_keep%g_%s%s%s%s%s%s%s" % (
        method.lower(), keep, "coupled" if couple else "each",
        "" if bn_batches == 100 else "_bn%d" % bn_batches,
        "" if kind == "FILTER" else "_fs", "_live" if live else "",
        "_l%g" % lasso if method in ("SSL", "SLIMMING") and lasso != 0.005 else "",
        "_global" if slimming_global else "",
        "_floor%g" % slimming_min_keep if slimming_min_keep else "")
    extra = [] if couple else ["couple_sums: false"]
    if live:
        extra.append("live_inputs_only: true")
    if slimming_global:
        extra.append("slimming_global: true")
    if slimming_min_keep:
        extra.append("slimming_min_keep_ratio: %g" % slimming_min_keep)
    run_dir = os.path.join(out, name)
    os.makedirs(run_dir, exist_ok=True)
    config = _write(os.path.join(run_dir, "config.prototxt"), CONFIG % {
        "method": method, "keep": keep, "steps": steps, "iters": iters, "retrain": retrain,
        "bn_batches": bn_batches, "kind": kind, "lasso": lasso, "extra": "\n".join(extra)})
    report = solver.prune(sp, weights, config, run_dir, progress=False)
    pruned = os.path.join(run_dir, "pruned.caffemodel")
    result = compact.compact(net, pruned, os.path.join(run_dir, "compact"))
    total, eq = result["total"], result["equivalence"]
    scores, _ = solver.evaluate(net, pruned, test_iter)
    totals = report["pruned_layers_total"]
    return {"run": name, "method": method, "keep": keep, "couple_sums": couple,
            "bn_recalibration_batches": bn_batches, "kind": kind, "live_inputs_only": live,
            "slimming_global": slimming_global, "slimming_min_keep_ratio": slimming_min_keep,
            "filters_kept": {n: e["filters_kept"] for n, e in report["layers"].items()},
            "kept_weights": totals["nonzero"], "dead_input_weights": totals["dead_input_weights"],
            "coupled": report["coupled"], "accuracy": scores["accuracy"],
            "accuracy_after_hard_prune": report["accuracy"]["after_hard_prune"]["accuracy"],
            "params": total["params"], "compact_params": total["compact_params"],
            "flops": total["flops"], "compact_flops": total["compact_flops"],
            "max_abs_diff": eq["max_abs_diff"], "passed": eq["passed"],
            "warnings": result["warnings"]}


def format_table(baseline, rows):
    lines = ["baseline accuracy %.4f" % baseline,
             "%-36s %9s %10s %10s %8s %12s %6s %8s %9s" % (
                 "run", "accuracy", "params", "compacted", "ratio", "FLOPs ratio", "dead",
                 "passed", "warnings")]
    for r in rows:
        lines.append("%-36s %9.4f %10d %10d %7.2fx %11.2fx %6s %8s %9d" % (
            r["run"], r["accuracy"], r["params"], r["compact_params"],
            r["params"] / r["compact_params"], r["flops"] / r["compact_flops"],
            r["dead_input_weights"], r["passed"], len(r["warnings"])))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", default=os.path.join(ROOT, "data", "mnist_train_lmdb"))
    parser.add_argument("--test", default=os.path.join(ROOT, "data", "mnist_test_lmdb"))
    parser.add_argument("--test-iter", type=int, default=100,
                        help="TEST batches of 100 (100: MNIST's 10,000 images once)")
    parser.add_argument("--keep", type=float, nargs="+", default=[0.5, 0.25],
                        help="filters kept per convolution (global_keep_ratio)")
    parser.add_argument("--methods", nargs="+", default=["ADMM", "MAGNITUDE"],
                        choices=["ADMM", "SSL", "SLIMMING", "MAGNITUDE"])
    parser.add_argument("--seed", type=int, default=1, help="the solvers' random_seed")
    parser.add_argument("--baseline-iters", type=int, default=1500)
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--iters", type=int, default=150)
    parser.add_argument("--retrain", type=int, default=600)
    parser.add_argument("--bn-batches", type=int, default=100,
                        help="config bn_recalibration_batches (0: Caffe's moving averages)")
    parser.add_argument("--kind", default="FILTER", choices=["FILTER", "FILTER_SHAPE"],
                        help="the convolutions' kind; FILTER_SHAPE keeps the same ratio of "
                             "shape columns as of filters")
    parser.add_argument("--lasso-lambda", type=float, default=0.005,
                        help="SSL's and SLIMMING's lasso_lambda (benchmarks/compare_methods.py's)")
    parser.add_argument("--live-inputs", action="store_true",
                        help="config live_inputs_only: true")
    parser.add_argument("--slimming-global", action="store_true",
                        help="config slimming_global: true (SLIMMING only)")
    parser.add_argument("--slimming-min-keep", type=float, metavar="R",
                        help="config slimming_min_keep_ratio: R, the floor of each layer's "
                             "share under --slimming-global")
    parser.add_argument("--couple", default="both", choices=["both", "coupled", "each"],
                        help="run the config's default (coupled), couple_sums: false "
                             "(each), or both")
    parser.add_argument("--work", default=os.path.join(ROOT, "runs", "couple_sums"),
                        help="where the nets, the baseline and the runs go (resumable)")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results",
                                                      "couple_sums.json"))
    args = parser.parse_args(argv)
    if args.slimming_global and args.methods != ["SLIMMING"]:
        parser.error("--slimming-global applies to --methods SLIMMING alone")
    if args.slimming_min_keep is not None and not args.slimming_global:
        parser.error("--slimming-min-keep is a floor under --slimming-global")
    for path in (args.train, args.test):
        if not os.path.isdir(path):
            parser.error("no LMDB %s; run `make data` (MNIST) or pass --train/--test" % path)
    work = os.path.abspath(os.path.join(args.work, "seed%d" % args.seed))
    sp, net, weights = prepare(work, args.train, args.test, args.seed,
                                     args.baseline_iters, args.lr, args.test_iter)
    baseline = solver.evaluate(net, weights, args.test_iter)[0]["accuracy"]
    print("baseline accuracy %.4f" % baseline, flush=True)
    rows = []
    for method in args.methods:
        for keep in args.keep:
            for couple in {"both": (True, False), "coupled": (True,),
                           "each": (False,)}[args.couple]:
                rows.append(run(sp, net, weights, work, method, keep, couple, args.steps,
                                args.iters, args.retrain, args.test_iter, args.bn_batches,
                                args.kind, args.live_inputs, args.lasso_lambda,
                                args.slimming_global, args.slimming_min_keep))
                print(format_table(baseline, rows[-1:]).splitlines()[-1], flush=True)
    print(format_table(baseline, rows))
    write_json(args.out, {"seed": args.seed, "baseline_accuracy": baseline,
                          "settings": {k: getattr(args, k) for k in (
                              "baseline_iters", "lr", "steps", "iters", "retrain",
                              "bn_batches", "test_iter", "kind", "live_inputs",
                              "lasso_lambda", "slimming_global", "slimming_min_keep",
                              "couple")},
                          "rows": rows})
    return rows


if __name__ == "__main__":
    main()

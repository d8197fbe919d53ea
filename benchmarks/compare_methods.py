"""ADMM vs SSL vs magnitude pruning at matched structured sparsity, same budget.

For each data set (LeNet on MNIST, LeNet on Fashion-MNIST) and each of three
filter+shape sparsity levels, the three methods start from the same trained
baseline, use the same Caffe solver, the same first-phase budget
(steps x iters_per_step) and the same masked retraining, and are hard-pruned
to exactly the same per-layer group counts (SSL keeps the groups of largest
norm at the target ratio). Writes a table and JSON, and report plots.

    .venv/bin/python benchmarks/compare_methods.py [--steps 5 --iters 600 --retrain 2000]

The baselines come from `make runs/lenet_mnist/baseline.caffemodel
runs/lenet_fashion/baseline.caffemodel`.
"""

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from caffe_admm import report, solver  # noqa: E402
from caffe_admm.backend import caffe  # noqa: E402

# keep ratios per layer: (filter, shape) for conv1, conv2, ip1; shape for ip2
LEVELS = {
    "mild": {"conv1": (0.7, 0.8), "conv2": (0.6, 0.5), "ip1": (0.5, 0.4), "ip2": 0.5},
    "medium": {"conv1": (0.5, 0.6), "conv2": (0.4, 0.3), "ip1": (0.3, 0.2), "ip2": 0.3},
    "strong": {"conv1": (0.5, 0.6), "conv2": (0.4, 0.2), "ip1": (0.2, 0.1), "ip2": 0.2},
}
DATASETS = {"mnist": ("solvers/lenet_solver.prototxt", "runs/lenet_mnist/baseline.caffemodel"),
            "fashion_mnist": ("solvers/lenet_fashion_solver.prototxt",
                              "runs/lenet_fashion/baseline.caffemodel")}
METHOD_LINES = {
    "ADMM": "rho { initial: 0.01 growth: 2.0 max: 1 }",
    "SSL": "default { lasso_lambda: 0.005 }",
    "MAGNITUDE": "",
}


def config_text(method, level, steps, iters, retrain, retrain_solver=None, progressive=False):
    lines = ["method: %s" % method, METHOD_LINES[method],
             "admm_steps: %d" % steps, "iters_per_step: %d" % iters,
             "retrain_iters: %d" % retrain, "snapshot_interval: %d" % max(iters, 1000)]
    if retrain_solver:
        lines.append('retrain_solver: "%s"' % os.path.abspath(retrain_solver))
    if progressive and method == "ADMM":
        lines.append("progressive: true progressive_steps: %d" % progressive)
    for name, keep in LEVELS[level].items():
        if isinstance(keep, tuple):
            lines.append('layer { name: "%s" kind: FILTER_SHAPE filter_keep_ratio: %g '
                         'shape_keep_ratio: %g }' % (name, keep[0], keep[1]))
        else:
            lines.append('layer { name: "%s" kind: SHAPE keep_ratio: %g }' % (name, keep))
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--iters", type=int, default=600)
    parser.add_argument("--retrain", type=int, default=2000)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument("--levels", nargs="+", default=list(LEVELS))
    parser.add_argument("--methods", nargs="+", default=list(METHOD_LINES),
                        choices=list(METHOD_LINES))
    parser.add_argument("--solver", help="first-phase solver for every method (default: the "
                                         "data set's baseline solver; one data set only)")
    parser.add_argument("--retrain-solver", help="masked-retraining solver for every method "
                                                 "(default: the first-phase one)")
    parser.add_argument("--progressive", type=int, metavar="STEPS", default=0,
                        help="ADMM projects onto a support that shrinks to the target over "
                             "STEPS steps (config `progressive`, `progressive_steps`)")
    parser.add_argument("--out", default=os.path.join(ROOT, "runs", "compare"))
    args = parser.parse_args()
    if args.solver and len(args.datasets) != 1:
        parser.error("--solver applies to one data set: name it with --datasets")
    os.chdir(ROOT)  # the bundled prototxts name their LMDBs relative to the repository
    caffe.set_mode_cpu()
    results = []
    for dataset in args.datasets:
        solver_path, weights = DATASETS[dataset]
        solver_path = args.solver or solver_path
        for level in args.levels:
            for method in args.methods:
                run = os.path.join(args.out, dataset, "%s_%s" % (level, method.lower()))
                os.makedirs(run, exist_ok=True)
                config = os.path.join(run, "config.prototxt")
                text = config_text(method, level, args.steps, args.iters, args.retrain,
                                   args.retrain_solver, args.progressive)
                if not os.path.exists(config) or open(config).read() != text:
                    with open(config, "w") as f:
                        f.write(text)
                rep = solver.prune(solver_path, weights, config, run, progress=False)
                acc = rep["accuracy"]
                row = {"dataset": dataset, "level": level, "method": method.lower(),
                       "baseline": acc["baseline"]["accuracy"],
                       "after_hard_prune": acc["after_hard_prune"]["accuracy"],
                       "accuracy": acc["after_retrain"]["accuracy"],
                       "compression": rep["pruned_layers_total"]["compression"],
                       "run": run}
                results.append(row)
                print("%-13s %-7s %-10s compression %5.1fx  hard-pruned %.4f  retrained %.4f "
                      "(baseline %.4f)" % (dataset, level, row["method"], row["compression"],
                                           row["after_hard_prune"], row["accuracy"],
                                           row["baseline"]), flush=True)
        report.write_report([r["run"] for r in results if r["dataset"] == dataset],
                            os.path.join(args.out, dataset, "report"))
    summary = {"budget": {"steps": args.steps, "iters_per_step": args.iters,
                          "retrain_iters": args.retrain}, "levels": LEVELS,
               "solver": args.solver, "retrain_solver": args.retrain_solver,
               "progressive": args.progressive,
               "method_settings": METHOD_LINES, "results": results}
    with open(os.path.join(args.out, "compare.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print("\n| data set | level | compression | ADMM | SSL | magnitude |\n|---|---|---|---|---|---|")
    for dataset in args.datasets:
        for level in args.levels:
            rows = {r["method"]: r for r in results if r["dataset"] == dataset and r["level"] == level}
            cells = ["%.2f%%" % (100 * rows[m]["accuracy"]) if m in rows else "-"
                     for m in ("admm", "ssl", "magnitude")]
            print("| %s | %s | %.1fx | %s |" % (dataset, level,
                                               next(iter(rows.values()))["compression"],
                                               " | ".join(cells)))
    print("wrote", os.path.join(args.out, "compare.json"))


if __name__ == "__main__":
    main()

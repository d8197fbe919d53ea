"""ADMM vs SSL vs magnitude pruning at matched structured sparsity, same budget.

For each data set (LeNet on MNIST, LeNet on Fashion-MNIST) and each of three
filter+shape sparsity levels, the three methods start from the same trained
baseline, use the same Caffe solver, the same first-phase budget
(steps x iters_per_step) and the same masked retraining, and are hard-pruned
to exactly the same per-layer group counts (SSL keeps the groups of largest
norm at the target ratio). Every method runs with `live_inputs_only` (no kept
column or channel reads a pruned filter's output), so the compacted nets
match in size too; `--dead-inputs` turns it off. Writes a table and JSON,
and report plots.

    .venv/bin/python benchmarks/compare_methods.py [--steps 5 --iters 600 --retrain 2000]

The baselines come from `make runs/lenet_mnist/baseline.caffemodel
runs/lenet_fashion/baseline.caffemodel` (the solvers' random_seed 1). With
`--seed S` each data set gets its own baseline, trained here with the
solver's random_seed set to S (weight initialisation; the LMDB is read in
order either way), and the pruning runs use that seed too:

    compare_methods.py --seed 2 --out runs/compare_seed2
    compare_methods.py --aggregate runs/compare runs/compare_seed2 ... --out runs/compare_seeds

ADMM runs with `penalty_pruned_only: true` (each constraint's penalty on the
weights its Z prunes only; the tool's default, written out here): plain ADMM,
the StructADMM paper's penalty on every weight, lags magnitude pruning here
(docs/results.md). `--admm-settings TEXT` replaces the ADMM config lines (rho
schedule and penalty), for trying ADMM variants against the same baselines;
plain ADMM is `--admm-settings "rho { initial: 0.01 growth: 2.0 max: 1 }
penalty_pruned_only: false"`.

`--aggregate` reads the compare.json of finished runs and prints the mean,
the standard deviation and the paired differences (ADMM minus each other
method, same seed) per data set and level. It refuses two runs of one data
set, level, seed and method, and runs of one method with different budgets,
flags or config lines (so plain and pruned-only ADMM never mix).
"""

import argparse
import json
import os
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from caffe_admm import compact, protoio, report, solver  # noqa: E402
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
    "ADMM": "rho { initial: 0.01 growth: 2.0 max: 1 } penalty_pruned_only: true",
    "SSL": "default { lasso_lambda: 0.005 }",
    "MAGNITUDE": "",
}


def config_text(method, level, steps, iters, retrain, retrain_solver=None, progressive=False,
                live_inputs_only=False, admm_settings=None):
    """The pruning config of one run; ``admm_settings`` replaces ADMM's METHOD_LINES entry."""
    settings = admm_settings if method == "ADMM" and admm_settings else METHOD_LINES[method]
    lines = ["method: %s" % method, settings,
             "admm_steps: %d" % steps, "iters_per_step: %d" % iters,
             "retrain_iters: %d" % retrain, "snapshot_interval: %d" % max(iters, 1000)]
    if retrain_solver:
        lines.append('retrain_solver: "%s"' % os.path.abspath(retrain_solver))
    if progressive and method == "ADMM":
        lines.append("progressive: true progressive_steps: %d" % progressive)
    if live_inputs_only:
        lines.append("live_inputs_only: true")
    for name, keep in LEVELS[level].items():
        if isinstance(keep, tuple):
            lines.append('layer { name: "%s" kind: FILTER_SHAPE filter_keep_ratio: %g '
                         'shape_keep_ratio: %g }' % (name, keep[0], keep[1]))
        else:
            lines.append('layer { name: "%s" kind: SHAPE keep_ratio: %g }' % (name, keep))
    return "\n".join(lines) + "\n"


LEVEL_TOLERANCE = 1e-6  # accuracy difference counted as level (a test image is 1e-4 of 10,000)


def seeded_baseline(solver_path, seed, out_dir):
    """A copy of the solver with ``random_seed: seed``, and a baseline trained with it.

    The baseline is trained once into ``out_dir/baseline/`` and reused.

    Returns
    -------
    (solver copy path, baseline caffemodel path)
    """
    sp = protoio.read_solver(solver_path)
    sp.net = os.path.abspath(protoio.resolve_solver_net(solver_path, sp))
    sp.random_seed = seed
    os.makedirs(out_dir, exist_ok=True)
    seeded = os.path.join(out_dir, "solver_seed%d.prototxt" % seed)
    protoio.write_text(seeded, sp)
    base_dir = os.path.join(out_dir, "baseline")
    model = os.path.join(base_dir, "baseline.caffemodel")
    if not os.path.exists(model):
        print("training the baseline for seed %d into %s" % (seed, base_dir), flush=True)
        solver.train(seeded, base_dir, progress=False)
    return seeded, model


def compacted_compression(run, rep):
    """Compression counting only the weights compaction keeps: from the run's
    report, or measured on its outputs for runs older than that field."""
    total = rep["pruned_layers_total"]
    if total.get("compacted_compression") is not None:
        return total["compacted_compression"]
    names = list(rep["layers"])
    model = os.path.join(run, "train_test.prototxt")
    net = caffe.Net(model, caffe.TEST, weights=os.path.join(run, "pruned.caffemodel"))
    kept = sum(compact.surviving_weights(net, protoio.read_net(model), names).values())
    return total["params"] / max(kept, 1)


def aggregate(results):
    """Per (data set, level, method): mean and spread over seeds; paired ADMM differences.

    ``results`` are the rows of several compare.json files. Returns a list of
    dicts, one per (data set, level), in first-seen order.
    """
    cells = {}
    for row in results:
        key = (row["dataset"], row["level"])
        cell = cells.setdefault(key, {"dataset": key[0], "level": key[1], "by_seed": {}})
        seed = row.get("seed")
        seed = 1 if seed is None else seed  # runs without --seed: the solvers' random_seed 1
        rows = cell["by_seed"].setdefault(seed, {})
        if row["method"] in rows:
            raise ValueError("%s %s seed %d %s: two runs (%s and %s); aggregate one per seed"
                             % (key + (seed, row["method"], rows[row["method"]].get("run"),
                                       row.get("run"))))
        rows[row["method"]] = row
    out = []
    for cell in cells.values():
        seeds = sorted(cell.pop("by_seed").items())
        methods = {}
        for _, rows in seeds:
            for method, row in rows.items():
                methods.setdefault(method, []).append(row)
                # the level's group counts; SSL's rows count the weights inside kept
                # groups that ended training at exactly zero as pruned too
                cell["compression"] = min(cell.get("compression", float("inf")),
                                          row["compression"])
        cell["seeds"] = [seed for seed, _ in seeds]
        bases = [next(iter(rows.values())).get("baseline") for _, rows in seeds]
        cell["baseline"] = statistics.mean(bases) if None not in bases else None
        cell["methods"] = {}
        for m, rows in methods.items():
            accs = [r["accuracy"] for r in rows]
            compacted = [r.get("compacted_compression") for r in rows]
            cell["methods"][m] = {
                "accuracy": accs, "mean": statistics.mean(accs),
                "sd": statistics.stdev(accs) if len(accs) > 1 else None,
                "compacted_compression": (statistics.mean(compacted)
                                          if None not in compacted else None)}
        cell["admm_minus"] = {}
        for other in ("ssl", "magnitude"):
            diffs = [rows["admm"]["accuracy"] - rows[other]["accuracy"] for _, rows in seeds
                     if "admm" in rows and other in rows]
            if diffs:
                cell["admm_minus"][other] = {
                    "diffs": diffs, "mean": statistics.mean(diffs),
                    "sd": statistics.stdev(diffs) if len(diffs) > 1 else None,
                    # equal accuracies can differ by float rounding of the batch means
                    "admm_ahead_or_level": sum(d >= -LEVEL_TOLERANCE for d in diffs)}
        out.append(cell)
    return out


def _pm(mean, sd):
    return "%.2f" % (100 * mean) + ("" if sd is None else " ± %.2f" % (100 * sd))


def _cell(entry):
    text = _pm(entry["mean"], entry["sd"])
    if entry.get("compacted_compression") is not None:
        text += " (%.1fx)" % entry["compacted_compression"]
    return text


def _settings(summary, method):
    """What must be equal between the runs of one method in an aggregate: the
    budget, the flags and the method's config lines (compared parsed, so
    ``growth: 2`` and ``growth: 2.0`` agree). Summaries older than a field lack it."""
    from caffe_admm.config import parse_settings
    lines = summary.get("method_settings", {}).get(method.upper())
    parsed = None
    if lines is not None:
        parsed = parse_settings(lines).SerializeToString(deterministic=True)
    return {"budget": summary.get("budget"), "progressive": summary.get("progressive"),
            "live_inputs_only": summary.get("live_inputs_only"),
            "solver": summary.get("solver"), "retrain_solver": summary.get("retrain_solver"),
            "config lines": parsed}


METHOD_ORDER = ("admm", "ssl", "magnitude")


def plot_aggregate(cells, out):
    """One PNG per data set: accuracy against compacted compression per method
    (mean, error bars one standard deviation over the seeds), and the paired
    differences ADMM minus each other method per level. ``cells`` come sorted
    by compression within each data set (:func:`write_aggregate`). Returns the
    paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for dataset in dict.fromkeys(c["dataset"] for c in cells):
        mine = [c for c in cells if c["dataset"] == dataset]
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
        for i, method in enumerate(METHOD_ORDER):
            pts = [(c["methods"][method].get("compacted_compression") or c["compression"],
                    c["methods"][method]) for c in mine if method in c["methods"]]
            if pts:
                left.errorbar([x for x, _ in pts], [100 * m["mean"] for _, m in pts],
                              yerr=[100 * (m["sd"] or 0) for _, m in pts], fmt="o-",
                              capsize=3, color="C%d" % i, label=method)
        bases = [c["baseline"] for c in mine if c["baseline"] is not None]
        if bases:
            left.axhline(100 * statistics.mean(bases), color="gray", ls="--", lw=1,
                         label="baseline")
        left.set_xscale("log")
        left.set_xticks([c["compression"] for c in mine])
        left.set_xticklabels(["%.1fx" % c["compression"] for c in mine])
        left.minorticks_off()
        left.set_xlabel("compacted compression of the pruned layers (x, log scale)")
        left.set_ylabel("test accuracy (%), mean ± sd over seeds")
        left.set_title("%s: accuracy vs compression" % dataset)
        for i, other in enumerate(METHOD_ORDER[1:]):
            pts = [(j, c["admm_minus"][other]) for j, c in enumerate(mine)
                   if other in c["admm_minus"]]
            if pts:
                right.errorbar([j + (i - 0.5) * 0.1 for j, _ in pts],
                               [100 * d["mean"] for _, d in pts],
                               yerr=[100 * (d["sd"] or 0) for _, d in pts], fmt="o",
                               capsize=3, color="C%d" % (i + 1), label="ADMM - %s" % other)
        right.axhline(0, color="black", lw=1)
        right.set_xticks(range(len(mine)))
        right.set_xticklabels(["%s\n%.1fx" % (c["level"], c["compression"]) for c in mine])
        right.set_ylabel("paired difference (points), mean ± sd")
        right.set_title("%s: ADMM minus the others, same seed" % dataset)
        for ax in (left, right):
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:   # no pairs: one method only
                ax.legend(fontsize=8)
        paths.append(report.save_png(fig, out, "compare_%s.png" % dataset))
    return paths


def write_aggregate(dirs, out):
    results, seen = [], {}
    for d in dirs:
        path = os.path.join(d, "compare.json")
        try:
            with open(path) as f:
                summary = json.load(f)
            rows = summary["results"]
        except (OSError, ValueError, KeyError) as exc:
            raise SystemExit("%s: not a finished comparison (%s)" % (path, exc))
        for method in sorted({row["method"] for row in rows}):
            mine = _settings(summary, method)
            first = seen.setdefault(method, (path, mine))
            for field, value in mine.items():
                other = first[1][field]
                if value is not None and other is not None and value != other:
                    raise SystemExit("%s and %s ran %s with different %s; aggregate runs "
                                     "of one setting" % (first[0], path, method, field))
        results.extend(rows)
    try:
        cells = aggregate(results)
    except ValueError as exc:
        raise SystemExit(str(exc))
    datasets = list(dict.fromkeys(c["dataset"] for c in cells))
    cells.sort(key=lambda c: (datasets.index(c["dataset"]), c["compression"]))
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "compare_seeds.json"), "w") as f:
        json.dump({"runs": [os.path.abspath(d) for d in dirs], "cells": cells}, f, indent=1)
    print("| data set | level | compression | seeds | baseline | ADMM | SSL | magnitude "
          "| ADMM - SSL | ADMM - magnitude |\n|---|---|---|---|---|---|---|---|---|---|")
    for c in cells:
        accs = [_cell(c["methods"][m]) if m in c["methods"] else "-"
                for m in METHOD_ORDER]
        diffs = []
        for other in ("ssl", "magnitude"):
            d = c["admm_minus"].get(other)
            diffs.append("-" if d is None else "%s (%d of %d >= 0)" % (
                _pm(d["mean"], d["sd"]), d["admm_ahead_or_level"], len(d["diffs"])))
        print("| %s | %s | %.1fx | %s | %s | %s | %s |" % (
            c["dataset"], c["level"], c["compression"], ",".join(map(str, c["seeds"])),
            "-" if c["baseline"] is None else "%.2f" % (100 * c["baseline"]),
            " | ".join(accs), " | ".join(diffs)))
    print("wrote", os.path.join(out, "compare_seeds.json"), *plot_aggregate(cells, out))


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
    parser.add_argument("--live-inputs-only", dest="live_inputs_only", action="store_true",
                        default=True,
                        help="(default) config `live_inputs_only` for every method: no kept "
                             "column or channel reads a pruned producer filter, so the methods' "
                             "compacted nets match in size too")
    parser.add_argument("--dead-inputs", dest="live_inputs_only", action="store_false",
                        help="without `live_inputs_only` (the comparison before it existed: "
                             "group counts match, compacted sizes do not)")
    parser.add_argument("--admm-settings", metavar="TEXT", default=METHOD_LINES["ADMM"],
                        help="the ADMM config lines (prototxt text) in place of %r, e.g. "
                             "'rho { initial: 0.05 growth: 1 }'" % METHOD_LINES["ADMM"])
    parser.add_argument("--seed", type=int,
                        help="train each data set's baseline with this solver random_seed "
                             "(under OUT) and prune with it, instead of the Makefile's baselines")
    parser.add_argument("--aggregate", nargs="+", metavar="DIR",
                        help="no training: mean, spread and paired differences over the "
                             "compare.json of these finished runs (one per seed), into OUT")
    parser.add_argument("--out", default=os.path.join(ROOT, "runs", "compare"))
    args = parser.parse_args()
    if args.aggregate:
        return write_aggregate(args.aggregate, args.out)
    if args.solver and len(args.datasets) != 1:
        parser.error("--solver applies to one data set: name it with --datasets")
    os.chdir(ROOT)  # the bundled prototxts name their LMDBs relative to the repository
    caffe.set_mode_cpu()
    results = []
    for dataset in args.datasets:
        solver_path, weights = DATASETS[dataset]
        solver_path = args.solver or solver_path
        if args.seed is not None:
            solver_path, weights = seeded_baseline(solver_path, args.seed,
                                                   os.path.join(args.out, dataset))
        for level in args.levels:
            for method in args.methods:
                run = os.path.join(args.out, dataset, "%s_%s" % (level, method.lower()))
                os.makedirs(run, exist_ok=True)
                config = os.path.join(run, "config.prototxt")
                text = config_text(method, level, args.steps, args.iters, args.retrain,
                                   args.retrain_solver, args.progressive,
                                   args.live_inputs_only, args.admm_settings)
                if not os.path.exists(config) or open(config).read() != text:
                    if os.path.exists(os.path.join(run, "checkpoints", "meta.json")):
                        raise SystemExit("%s holds a run with another config (other flags); "
                                         "use another --out" % run)
                    with open(config, "w") as f:
                        f.write(text)
                rep = solver.prune(solver_path, weights, config, run, progress=False)
                acc = rep["accuracy"]
                row = {"dataset": dataset, "level": level, "method": method.lower(),
                       "seed": args.seed,
                       "baseline": acc["baseline"]["accuracy"],
                       "after_hard_prune": acc["after_hard_prune"]["accuracy"],
                       "accuracy": acc["after_retrain"]["accuracy"],
                       "compression": rep["pruned_layers_total"]["compression"],
                       "compacted_compression": compacted_compression(run, rep),
                       "run": run}
                results.append(row)
                print("%-13s %-7s %-10s compression %5.1fx (compacted %5.1fx)  hard-pruned %.4f  "
                      "retrained %.4f (baseline %.4f)"
                      % (dataset, level, row["method"], row["compression"],
                         row["compacted_compression"], row["after_hard_prune"], row["accuracy"],
                         row["baseline"]), flush=True)
        report.write_report([r["run"] for r in results if r["dataset"] == dataset],
                            os.path.join(args.out, dataset, "report"))
    summary = {"budget": {"steps": args.steps, "iters_per_step": args.iters,
                          "retrain_iters": args.retrain}, "levels": LEVELS,
               "solver": args.solver, "retrain_solver": args.retrain_solver,
               "progressive": args.progressive, "seed": args.seed,
               "live_inputs_only": args.live_inputs_only,
               "method_settings": dict(METHOD_LINES, ADMM=args.admm_settings),
               "results": results}
    with open(os.path.join(args.out, "compare.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print("\n| data set | level | compression | ADMM | SSL | magnitude |\n|---|---|---|---|---|---|")
    for dataset in args.datasets:
        for level in args.levels:
            rows = {r["method"]: r for r in results if r["dataset"] == dataset and r["level"] == level}
            cells = ["%.2f%%" % (100 * rows[m]["accuracy"]) if m in rows else "-"
                     for m in METHOD_ORDER]
            print("| %s | %s | %.1fx | %s |" % (dataset, level,
                                               min(r["compression"] for r in rows.values()),
                                               " | ".join(cells)))
    print("wrote", os.path.join(args.out, "compare.json"))


if __name__ == "__main__":
    main()

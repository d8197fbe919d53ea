"""Reports over pruning runs: sparsity tables, accuracy, reductions, plots.

Reads the ``report.json`` of one or more ``caffe-admm prune`` run directories
(and, where present, ``compact/plan.json`` or ``compact_deploy/plan.json``
for FLOP reductions and ``timing.json`` for measured speed-ups), and writes a
Markdown table, a JSON summary and PNG plots: accuracy against compression
per method, per-layer kept fractions, the ADMM primal residuals over steps,
and the training loss.
"""

import json
import os

__all__ = ["ReportError", "load_run", "summarize", "write_report"]


class ReportError(ValueError):
    """A run directory that is missing, unfinished or corrupt."""


def _read_json(path, what):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise ReportError("%s: no %s" % (path, what)) from None
    except json.JSONDecodeError as exc:
        raise ReportError("%s: corrupt %s (%s)" % (path, what, exc)) from None


def load_run(run_dir):
    """The report of one prune run directory, with optional compaction/timing.

    Raises
    ------
    ReportError
        if the directory, its report.json, or a field the report needs is missing.
    """
    if not os.path.isdir(run_dir):
        raise ReportError("%s: not a directory" % run_dir)
    path = os.path.join(run_dir, "report.json")
    if not os.path.exists(path):
        hint = (" (the run has not finished: run the same prune command again to resume)"
                if os.path.exists(os.path.join(run_dir, "checkpoints")) else
                " (not a caffe-admm prune output directory)")
        raise ReportError("%s: no report.json%s" % (run_dir, hint))
    run = _read_json(path, "report.json")
    for key in ("layers", "accuracy", "pruned_layers_total"):
        if key not in run:
            raise ReportError("%s: report.json has no %r; is it a caffe-admm prune report?"
                              % (run_dir, key))
    run["dir"] = os.path.abspath(run_dir)
    run["name"] = os.path.basename(os.path.normpath(run_dir))
    for sub in ("compact_deploy", "compact"):
        plan = os.path.join(run_dir, sub, "plan.json")
        if os.path.exists(plan):
            run["compaction"] = _read_json(plan, "compaction plan")
            break
    timing = os.path.join(run_dir, "timing.json")
    if os.path.exists(timing):
        run["timing"] = _read_json(timing, "timing.json")
    return run


def _final_accuracy(run):
    acc = run["accuracy"]
    for key in ("after_retrain", "after_hard_prune"):
        if key in acc and "accuracy" in acc[key]:
            return acc[key]["accuracy"]
    return None


def _method_label(run):
    """A run's method as the tables and plots name it: SLIMMING with one
    ranking of all the layers' scales (``slimming_global``) apart, and with
    its floor (``slimming_min_keep_ratio``) apart again."""
    method = run.get("method", "admm")
    schedule = run.get("schedule", {})
    if not schedule.get("slimming_global"):
        return method
    floor = schedule.get("slimming_min_keep_ratio")
    return method + " global" + (" floor %g" % floor if floor else "")


def summarize(runs):
    """One row per run: method, accuracy, compression, FLOP reduction, speed-up."""
    rows = []
    for run in runs:
        # the baseline as the pruned net is scored: with its BatchNorm
        # statistics recomputed where the run recomputed them
        recalibrated = run["accuracy"].get("baseline_recalibrated", {}).get("accuracy")
        base = (recalibrated if recalibrated is not None
                else run["accuracy"].get("baseline", {}).get("accuracy"))
        row = {"run": run["name"], "method": _method_label(run),
               "baseline_accuracy": base, "baseline_recalibrated": recalibrated is not None,
               "accuracy": _final_accuracy(run),
               "compression": run["pruned_layers_total"]["compression"],
               "kept_weights": run["pruned_layers_total"]["nonzero"],
               "weights": run["pruned_layers_total"]["params"],
               # weights that survive compaction (None in runs older than the field)
               "compacted_compression": run["pruned_layers_total"].get(
                   "compacted_compression")}
        comp = run.get("compaction")
        if comp:
            t = comp["total"]
            row["flop_reduction"] = t["flops"] / max(t["compact_flops"], 1)
            row["param_reduction"] = t["params"] / max(t["compact_params"], 1)
        timing = run.get("timing")
        if timing:
            batches = sorted(timing["batches"], key=lambda b: int(b))
            row["speedup"] = {b: timing["batches"][b]["net"]["speedup"] for b in batches}
        rows.append(row)
    return rows


def _pct(x):
    return "-" if x is None else "%.2f%%" % (100 * x)


def markdown(runs, rows):
    """Markdown text: summary table, then a per-layer sparsity table per run."""
    out = ["| run | method | baseline | accuracy | compression | compacted | FLOP red. "
           "| speed-up |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        speed = ", ".join("b%s %.2fx" % kv for kv in r.get("speedup", {}).items()) or "-"
        flop = "%.2fx" % r["flop_reduction"] if "flop_reduction" in r else "-"
        compacted = r["compacted_compression"]
        out.append("| %s | %s | %s%s | %s | %.1fx | %s | %s | %s |" % (
            r["run"], r["method"], _pct(r["baseline_accuracy"]),
            " *" if r["baseline_recalibrated"] else "", _pct(r["accuracy"]),
            r["compression"], "-" if compacted is None else "%.1fx" % compacted, flop, speed))
    if any(r["baseline_recalibrated"] for r in rows):
        out += ["", "\\* with the BatchNorm statistics recomputed over training batches, as "
                "the pruned nets are scored (`baseline_recalibrated` in report.json; "
                "`baseline` scores the caffemodel as it is)"]
    for run in runs:
        out += ["", "### %s (%s)" % (run["name"], _method_label(run)), ""]
        if run.get("environment"):
            out += _environment_lines(run["environment"]) + [""]
        out += ["| layer | kind | weights | kept | element sp. | filter sp. | channel sp. "
                "| column sp. |", "|---|---|---|---|---|---|---|---|"]
        for name, l in run["layers"].items():
            out.append("| %s | %s | %d | %d | %.2f%% | %.2f%% (%d/%d) | %.2f%% (%d/%d) "
                       "| %.2f%% (%d/%d) |" % (
                           name, l["kind"], l["params"], l["nonzero"],
                           100 * l["element_sparsity"],
                           100 * l["filter_sparsity"], l["filters_kept"], l["filters"],
                           100 * l["channel_sparsity"], l["channels_kept"], l["channels"],
                           100 * l["shape_sparsity"], l["shapes_kept"], l["shapes"]))
    return "\n".join(out) + "\n"


def _environment_lines(env):
    """A run's ``environment`` (what changes the order of Caffe's sums), in
    the lines ``caffe-admm time``'s table gives it, as a Markdown list."""
    from caffe_admm import caffetime  # standard library only
    return ["- CPU: %s" % (env["cpu"] or "unnamed"),
            "- " + caffetime.cpu_threads_line(env["cpu_threads"])] + [
        "- " + line for line in caffetime.blas_lines(env["blas"])] + [
        "- " + caffetime.cpu_conv_line(env["cpu_conv_engine"])]


def plot(runs, rows, out_dir):
    """Write the PNG plots; returns their paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    paths = []
    # accuracy vs compression, one line per method
    fig, ax = plt.subplots(figsize=(6, 4))
    by_method = {}
    # the size compaction keeps, when every run reports it (older runs do not)
    key = ("compacted_compression" if all(r["compacted_compression"] is not None for r in rows)
           else "compression")
    for r in rows:
        if r["accuracy"] is not None:
            by_method.setdefault(r["method"], []).append((r[key], r["accuracy"]))
    for method, pts in sorted(by_method.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], "o-", label=method)
    bases = [r["baseline_accuracy"] for r in rows if r["baseline_accuracy"] is not None]
    if bases:
        ax.axhline(100 * max(bases), color="gray", ls="--", lw=1, label="baseline")
    ax.set_xscale("log")
    paths.append(_finish(fig, ax, out_dir, "accuracy_vs_compression.png", "Accuracy vs compression",
                         "%s of the pruned layers (x, log scale)"
                         % ("compacted compression" if key == "compacted_compression"
                            else "compression (non-zero weights)"), "test accuracy (%)"))

    # per-layer kept fractions
    fig, ax = plt.subplots(figsize=(7, 4))
    layer_names = list(runs[0]["layers"])
    width = 0.8 / len(runs)
    for i, run in enumerate(runs):
        vals = [run["layers"][n]["nonzero"] / run["layers"][n]["params"]
                if n in run["layers"] else 0 for n in layer_names]
        ax.bar([j + i * width for j in range(len(layer_names))], [100 * v for v in vals],
               width, label="%s (%s)" % (run["name"], _method_label(run)))
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(layer_names))])
    ax.set_xticklabels(layer_names)
    paths.append(_finish(fig, ax, out_dir, "kept_fractions.png", "Kept weights per layer",
                         None, "weights kept (%)", grid=False))

    # ADMM residuals
    admm = [run for run in runs if run.get("method", "admm") == "admm" and run.get("steps")]
    if admm:
        fig, ax = plt.subplots(figsize=(6, 4))
        names = sorted({name for run in admm for name in run["layers"]})
        colors = {name: "C%d" % (i % 10) for i, name in enumerate(names)}  # a color per layer
        styles = ["-", "--", ":", "-."]                                     # a line style per run
        for r, run in enumerate(admm):
            for name in run["layers"]:
                ys = [max(s["residuals"][name]) for s in run["steps"]]
                ax.plot(range(1, len(ys) + 1), ys, marker="o", ms=3, color=colors[name],
                        linestyle=styles[r % len(styles)],
                        label="%s/%s" % (run["name"], name) if len(admm) > 1 else name)
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        paths.append(_finish(fig, ax, out_dir, "admm_residuals.png", "ADMM residuals",
                             "ADMM step", "primal residual ||W - Z|| / ||W||"))

    # training loss: first phase, then retraining after it
    fig, ax = plt.subplots(figsize=(7, 4))
    for run in runs:
        phases = run.get("loss", {})
        offset, xs, ys = 0, [], []
        for phase in [p for p in phases if p != "retrain"] + ["retrain"]:
            pts = [(it, v) for it, v in phases.get(phase, []) if v is not None]
            xs += [offset + it for it, _ in pts]
            ys += [v for _, v in pts]
            offset = xs[-1] if xs else offset
        if xs:
            k = min(10, len(ys))  # running mean over k samples: single batches are noisy
            smooth = [sum(ys[max(0, i - k + 1):i + 1]) / len(ys[max(0, i - k + 1):i + 1])
                      for i in range(len(ys))]
            ax.plot(xs, smooth, lw=1, label="%s (%s)" % (run["name"], _method_label(run)))
    ax.set_yscale("log")
    paths.append(_finish(fig, ax, out_dir, "training_loss.png", "Training loss",
                         "iteration (pruning phase, then retraining); running mean of 10 samples",
                         "training loss"))
    return paths


def _finish(fig, ax, out_dir, name, title, xlabel, ylabel, grid=True):
    """Label, title and legend ``ax``, then save ``fig`` as ``out_dir/name``."""
    if xlabel:
        ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7)
    if grid:
        ax.grid(alpha=0.3)
    return save_png(fig, out_dir, name)


def save_png(fig, out_dir, name):
    """Write ``fig`` as ``out_dir/name`` (atomically), close it, return the path."""
    from caffe_admm.protoio import atomic_write
    path = os.path.join(out_dir, name)
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt
    plt.close(fig)
    return path


def write_report(run_dirs, out_dir):
    """Load the runs, write report.md, summary.json and the plots into ``out_dir``.

    Returns
    -------
    dict with ``rows``, ``markdown`` and ``plots`` (paths)
    """
    if not run_dirs:
        raise ReportError("no run directory given")
    runs = [load_run(d) for d in run_dirs]
    rows = summarize(runs)
    os.makedirs(out_dir, exist_ok=True)
    text = markdown(runs, rows)
    from caffe_admm.protoio import atomic_write
    with atomic_write(os.path.join(out_dir, "report.md"), "w") as f:
        f.write(text)
    with atomic_write(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(rows, f, indent=1)
    return {"rows": rows, "markdown": text, "plots": plot(runs, rows, out_dir)}

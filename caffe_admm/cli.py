"""caffe-admm: StructADMM structured pruning for Caffe models.

Verbs:
  data     write MNIST or Fashion-MNIST as Caffe LMDBs
  lmdb     write any images + labels (IDX files or .npy arrays) as a Caffe LMDB
  train    train a net with its Caffe solver (baseline)
  test     evaluate a net's TEST phase with given weights
  sensitivity
           each layer pruned alone to several keep ratios (a residual stream's
           writers also together), the net scored
  prune    ADMM structured pruning, hard prune and masked retraining
  retrain  masked retraining alone (pruned weights stay exactly zero)
  compact  cut pruned filters/channels out: a smaller prototxt + caffemodel
  sparsity any caffemodel's zero filters, channels and columns, and what
           compaction makes of them (nothing written)
  time     per-layer and whole-net forward time, original vs compacted
  report   tables and plots over one or more prune runs
  clean    a copy of a prototxt without a Caffe fork's fields (the SSL fork's) and
           layers (SENet's Axpy, MobileNet ports' ReLU6 and depthwise: into stock ones)
"""

import argparse
import json
import os
import sys

__all__ = ["main", "build_parser"]


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: ...)" where an option has a default its help does not
    already give; not after a required option, an unset one or a flag."""

    def _get_help_string(self, action):
        if action.default in (None, False) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _at_least(low, number=int):
    """An argparse type: a ``number`` of at least ``low``, refused with the
    option's name (Caffe aborts on a negative batch size; a count below 1
    would otherwise time, train or test nothing and say nothing)."""
    def parse(text):
        try:
            value = number(text)
        except ValueError:
            raise argparse.ArgumentTypeError("%r is not a%s" % (
                text, "n integer" if number is int else " number")) from None
        if not value >= low:  # NaN too
            raise argparse.ArgumentTypeError("%s: give %g or more" % (text, low))
        return value
    parse.__name__ = number.__name__
    return parse


COUNT, NON_NEGATIVE, NON_NEGATIVE_FLOAT = _at_least(1), _at_least(0), _at_least(0, float)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="caffe-admm", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version",
                        version="%(prog)s " + __import__("caffe_admm").__version__)
    parser.add_argument("--gpu", type=NON_NEGATIVE, default=None,
                        help="GPU id (Caffe must be built with CUDA); default: CPU")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    fmt = _DefaultsFormatter

    p = verbs.add_parser("data", help="write a data set as Caffe LMDBs", formatter_class=fmt)
    p.add_argument("dataset", choices=("mnist", "fashion_mnist"))
    p.add_argument("--out", default="data", help="directory for <dataset>_{train,test}_lmdb")
    p.add_argument("--overwrite", action="store_true", help="replace existing LMDBs")

    p = verbs.add_parser("lmdb", help="convert IDX or .npy images and labels to a Caffe LMDB",
                         formatter_class=fmt)
    p.add_argument("--images", required=True,
                   help="IDX file (.gz ok) or .npy, uint8, shape (N, H, W) or (N, C, H, W)")
    p.add_argument("--labels", required=True, help="IDX file or .npy, shape (N,)")
    p.add_argument("--out", required=True, help="LMDB directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing LMDB")

    p = verbs.add_parser("train", help="train with a Caffe solver", formatter_class=fmt)
    p.add_argument("--solver", required=True, help="solver prototxt")
    p.add_argument("--out", required=True, help="run directory (resumed if it holds a checkpoint)")
    p.add_argument("--weights", help="initial caffemodel (fine-tuning)")
    p.add_argument("--iters", type=COUNT, help="iterations (default: the solver's max_iter)")
    p.add_argument("--restart", action="store_true", help="discard checkpoints in --out")
    p.add_argument("--quiet", action="store_true", help="no progress output")

    p = verbs.add_parser("test", help="evaluate the TEST phase of a net", formatter_class=fmt)
    p.add_argument("--model", required=True, help="net prototxt with a TEST-phase data layer")
    p.add_argument("--weights", required=True, help="caffemodel")
    p.add_argument("--iters", type=COUNT, help="batches (default: one pass over the test LMDB)")

    p = verbs.add_parser("sensitivity", help="each layer pruned alone (and under FILTER, a "
                         "residual stream's writers together), in one shot, the net scored: "
                         "which layers take pruning", formatter_class=fmt)
    p.add_argument("--model", required=True, help="net prototxt with a TEST-phase data layer")
    p.add_argument("--weights", required=True, help="trained caffemodel")
    p.add_argument("--kind", default="FILTER",
                   choices=("FILTER", "CHANNEL", "SHAPE", "NON_STRUCTURED"),
                   help="the groups pruned, as in a pruning config")
    p.add_argument("--keep", type=float, nargs="+", default=[0.9, 0.75, 0.5, 0.25, 0.1],
                   help="keep ratios")
    p.add_argument("--layers", nargs="+", help="default: every Convolution and InnerProduct")
    p.add_argument("--iters", type=COUNT, help="TEST batches per score (default: one pass over "
                                             "the test LMDB)")
    p.add_argument("--bn-batches", type=NON_NEGATIVE, default=100,
                   help="on a net with BatchNorm: its statistics recomputed over this many "
                        "training batches for every score, as a run's hard prune is scored "
                        "(0: the caffemodel's)")
    p.add_argument("--json", help="also write the scan here, after each layer; a scan "
                                  "interrupted goes on from it when run again")
    p.add_argument("--config-out", metavar="FILE",
                   help="also write a pruning config: each layer at the smallest keep ratio "
                        "that lost at most --max-drop points alone (a residual stream's "
                        "writers: pruned together)")
    p.add_argument("--max-drop", type=NON_NEGATIVE_FLOAT, default=1.0,
                   help="with --config-out: points of accuracy a layer may lose alone "
                        "(a stream's writers: together)")

    p = verbs.add_parser("prune", help="StructADMM pruning + masked retraining",
                         formatter_class=fmt)
    p.add_argument("--solver", required=True, help="solver prototxt (its net is pruned)")
    p.add_argument("--weights", required=True, help="trained caffemodel to prune")
    p.add_argument("--config", required=True, help="pruning config (caffe_admm/proto/admm.proto)")
    p.add_argument("--out", help="run directory (resumed if it holds a checkpoint); required "
                                 "unless --check")
    p.add_argument("--restart", action="store_true", help="discard checkpoints in --out")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--check", action="store_true",
                   help="train nothing, write nothing: check the inputs, prune the weights "
                        "once to the config's targets and show what compaction would make "
                        "of them (seconds)")
    p.add_argument("--json", help="with --check: also write its report here")

    p = verbs.add_parser("retrain", help="masked retraining alone", formatter_class=fmt)
    p.add_argument("--solver", required=True, help="solver prototxt")
    p.add_argument("--weights", required=True, help="pruned caffemodel")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--masks", help="masks.npz (default: keep the non-zero weights of every "
                                   "Convolution/InnerProduct layer)")
    p.add_argument("--iters", type=NON_NEGATIVE,
                   help="iterations (default: the solver's max_iter; 0: none, the masks "
                        "applied and the net scored)")
    p.add_argument("--bn-batches", type=NON_NEGATIVE, default=100,
                   help="then recompute the BatchNorm statistics over this many training "
                        "batches (0: keep Caffe's moving averages)")
    p.add_argument("--restart", action="store_true", help="discard checkpoints in --out")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p = verbs.add_parser("compact", help="write a smaller net without the pruned channels",
                         formatter_class=fmt)
    p.add_argument("--model", required=True, help="net prototxt (deploy, or train/test)")
    p.add_argument("--weights", required=True, help="structured-sparse caffemodel")
    p.add_argument("--out", required=True, help="directory for compact.prototxt, "
                                                "compact.caffemodel and plan.json")
    p.add_argument("--tolerance", type=NON_NEGATIVE_FLOAT, default=1e-4,
                   help="largest |masked - compacted| output difference, relative to the "
                        "outputs' scale (--drop-constants: |reference - compacted|)")
    p.add_argument("--force", action="store_true", help="write even above the tolerance")
    p.add_argument("--drop-constants", action="store_true",
                   help="also cut zero filters whose channels carry a constant (bias, BatchNorm "
                        "mean, Scale/Bias offset) that no reader can take into its biases, "
                        "dropping it; checked against the masked net with those constants "
                        "zeroed")
    p.add_argument("--shape", action="store_true",
                   help="also cut zero GEMM columns (conv: Im2col + Slice/Concat + 1x1 conv; "
                        "InnerProduct: Flatten + Slice/Concat); time it: it pays only "
                        "when the GEMM saving beats the copies")

    p = verbs.add_parser("sparsity", help="a caffemodel's zero filters, channels and columns "
                         "per layer, and its compacted shapes (nothing written; exit 1 where "
                         "compaction would refuse the net, its counts printed still)",
                         formatter_class=fmt)
    p.add_argument("--model", required=True, help="net prototxt (deploy, or train/test)")
    p.add_argument("--weights", required=True, help="caffemodel")
    p.add_argument("--json", metavar="FILE", help="also write the table's figures as JSON")

    p = verbs.add_parser(
        "time", help="forward time, original vs compacted", formatter_class=fmt,
        epilog="CPU threads come from the environment and are recorded in the result: "
               "OPENBLAS_NUM_THREADS (in this project's Caffe build also OpenMP's and so "
               "oneDNN's, unless OMP_NUM_THREADS is set), and CAFFE_CPU_CONV_THREADS=N "
               "(N images of a batch per convolution at once; run it with "
               "OPENBLAS_NUM_THREADS=1). The CPU convolutions' forward pass runs oneDNN, "
               "or Caffe's im2col + GEMM with CAFFE_CPU_CONV_ENGINE=caffe; recorded too. "
               "On a GPU, this project's CUDA build reads "
               "CAFFE_CUDNN_WORKSPACE_MB=N (cuDNN scratch memory per convolution, default 8) "
               "and CAFFE_CUDNN_FIND=1 (algorithms chosen by timing them, not by cuDNN's "
               "heuristics); both are recorded, and so are the algorithms chosen.")
    p.add_argument("--model", required=True, help="original deploy prototxt (Input layers)")
    p.add_argument("--weights", help="original caffemodel (default: random fillers)")
    p.add_argument("--compact", required=True, help="compacted deploy prototxt")
    p.add_argument("--compact-weights", required=True, help="compacted caffemodel")
    p.add_argument("--batch", type=COUNT, nargs="+", default=[1, 8, 32], help="batch sizes")
    p.add_argument("--repeats", type=COUNT, default=10,
                   help="timed runs after warm-up (caffe time: processes per net)")
    p.add_argument("--json", help="also write the result here")
    p.add_argument("--engine", choices=("pycaffe", "caffe-time"), default="pycaffe",
                   help="pycaffe: wall clock in this process (CPU); caffe-time: Caffe's "
                        "`caffe time` per-layer timer (CPU or GPU; the one --gpu uses)")
    p.add_argument("--iterations", type=COUNT, default=20,
                   help="caffe-time: forward passes averaged in each process")
    p.add_argument("--caffe", help="caffe-time: the caffe binary (default: $CAFFE_BIN, PATH)")
    p.add_argument("--conv-engine", choices=("CAFFE", "CUDNN"),
                   help="caffe-time: force every Convolution's engine (CAFFE: im2col + GEMM)")
    p.add_argument("--plan-only", metavar="DIR",
                   help="caffe-time: write the plan (resized prototxts, FLOPs) to DIR and "
                        "stop; measure it elsewhere with `python3 -m caffe_admm.caffetime "
                        "DIR/plan.json OUT.json`")

    p = verbs.add_parser("report", help="sparsity tables and plots over prune runs",
                         formatter_class=fmt)
    p.add_argument("runs", nargs="+", help="prune run directories (--out of caffe-admm prune)")
    p.add_argument("--out", required=True, help="directory for report.md, summary.json, PNGs")

    p = verbs.add_parser("clean", help="copy a prototxt without the fields BVLC Caffe lacks, "
                         "a fork's layers (SENet's Axpy, ReLU6, depthwise) rewritten into "
                         "stock ones",
                         formatter_class=fmt)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="net prototxt (an old format is upgraded too)")
    which.add_argument("--solver", help="solver prototxt")
    p.add_argument("--out", required=True, help="prototxt to write")
    return parser


def _write_json(path, obj):
    """``obj`` as JSON in ``path``, written whole, then renamed into place."""
    from caffe_admm.protoio import atomic_write
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=1)


def _print_json(obj):
    print(json.dumps(obj, indent=1, sort_keys=True))


def _run(args):
    if args.verb == "data":
        from caffe_admm import data
        targets = [os.path.join(args.out, "%s_%s_lmdb" % (args.dataset, s)) for s in ("train", "test")]
        existing = [t for t in targets if os.path.exists(t)]
        if existing and not args.overwrite:
            raise FileExistsError("%s already exist(s); pass --overwrite to replace"
                                  % ", ".join(existing))
        paths = data.prepare(args.dataset, args.out, overwrite=args.overwrite)
        for split, path in paths.items():
            print("%s %s -> %s" % (args.dataset, split, path))
        return 0

    if args.verb == "report":
        from caffe_admm import report
        result = report.write_report(args.runs, args.out)
        print(result["markdown"])
        print("plots:", ", ".join(result["plots"]))
        return 0

    if args.verb == "clean":
        from caffe_admm import protoio
        path = args.model or args.solver
        if os.path.abspath(path) == os.path.abspath(args.out):
            raise ValueError("--out is the input file; write the copy elsewhere")
        dropped, rewritten = protoio.clean(path, args.out, solver=args.solver is not None)
        for line, message, field in dropped:
            print("%s:%d: left out %s.%s" % (path, line, message, field))
        for line, name, kind, into in rewritten:
            print("%s:%d: rewrote layer %r (%s) into %s" % (path, line, name, kind, into))
        print("wrote %s (%d field%s left out%s)" % (
            args.out, len(dropped), "" if len(dropped) == 1 else "s",
            ", %d layer%s rewritten" % (len(rewritten), "" if len(rewritten) == 1 else "s")
            if rewritten else ""))
        return 0

    if args.verb == "lmdb":
        from caffe_admm import data
        arrays = [data.read_array(p) for p in (args.images, args.labels)]
        path = data.write_lmdb(args.out, arrays[0], arrays[1], overwrite=args.overwrite)
        print("%d records (%s) -> %s" % (arrays[0].shape[0], "x".join(map(str, arrays[0].shape[1:])),
                                          path))
        return 0

    if args.verb == "time":
        return _time(args)

    if args.verb == "sensitivity":
        from caffe_admm import backend, sensitivity
        from caffe_admm.protoio import atomic_write
        backend.set_mode(args.gpu)
        if args.config_out and os.path.exists(args.config_out):
            raise FileExistsError("%s exists; --config-out writes a new file"
                                  % args.config_out)
        progress = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
        scan_args = (args.model, args.weights, args.keep, args.kind, args.layers, args.iters,
                     args.bn_batches)
        result = (sensitivity.scan_saved(args.json, *scan_args, progress=progress) if args.json
                  else sensitivity.scan(*scan_args, progress=progress))
        print(sensitivity.format_table(result))
        if args.config_out:
            text = sensitivity.config_text(result, args.max_drop)
            with atomic_write(args.config_out, "w") as f:
                f.write(text)
            print("wrote %s:\n%s" % (args.config_out, text), end="")
        return 0

    from caffe_admm import backend, solver
    backend.set_mode(args.gpu)
    if args.verb == "train":
        result = solver.train(args.solver, args.out, weights=args.weights, iters=args.iters,
                              progress=not args.quiet, restart=args.restart)
        print("trained %d iterations in %.0f s; test: %s%s; weights: %s" % (
            result["iterations"], result["seconds"],
            ", ".join("%s %.4f" % kv for kv in sorted(result["test"].items())),
            "" if "test_recalibrated" not in result else
            " (BatchNorm statistics recomputed: %s)" % ", ".join(
                "%s %.4f" % kv for kv in sorted(result["test_recalibrated"].items())),
            result["weights"]))
    elif args.verb == "test":
        scores, iters = solver.evaluate(args.model, args.weights, args.iters, progress=True)
        print("%s over %d batches: %s" % (args.weights, iters,
                                          ", ".join("%s %.4f" % kv for kv in sorted(scores.items()))))
    elif args.verb == "prune" and args.check:
        report = solver.check(args.solver, args.weights, args.config)
        _print_check(report)
        if args.json:
            _write_json(args.json, report)
        return 1 if report["compaction_error"] else 0
    elif args.verb == "prune":
        if not args.out:
            raise ValueError("prune needs --out (the run directory), unless --check")
        if args.json:
            raise ValueError("--json goes with --check (a run writes report.json in --out)")
        report = solver.prune(args.solver, args.weights, args.config, args.out,
                              progress=not args.quiet, restart=args.restart)
        _print_summary(report)
    elif args.verb == "compact":
        from caffe_admm import compact
        report = compact.compact(args.model, args.weights, args.out, tolerance=args.tolerance,
                                 force=args.force, shape=args.shape,
                                 drop_constants=args.drop_constants)
        for w in report["warnings"]:
            print("warning:", w)
        for note in report["notes"]:
            print("note:", note)
        t, eq = report["total"], report["equivalence"]
        print("%-10s %-18s %-18s %9s" % ("layer", "weight", "compacted", "FLOP red"))
        for name, l in report["layers"].items():
            print("%-10s %-18s %-18s %8.2fx" % (name, "x".join(map(str, l["weight_shape"])),
                                               "x".join(map(str, l["compact_shape"])),
                                               l["flop_reduction"]))
        print("params %d -> %d (%.2fx), FLOPs/image %d -> %d (%.2fx); max |%s - "
              "compacted| = %.3g%s" % (t["params"], t["compact_params"],
                                       t["params"] / max(t["compact_params"], 1), t["flops"],
                                       t["compact_flops"], t["flops"] / max(t["compact_flops"], 1),
                                       eq["against"], eq["max_abs_diff"],
                                       "" if eq["passed"] else " (FORCED)"))
        if eq["against"] == "reference":
            print("--drop-constants: the masked net differs from the reference by %.3g (%s)"
                  % (report["reference_vs_original"]["max_abs_diff"],
                     "; ".join(report["dropped_constants"]) or "no constant dropped"))
        print("wrote %s/compact.prototxt, compact.caffemodel, plan.json" % args.out)
    elif args.verb == "sparsity":
        from caffe_admm import sparsity
        result = sparsity.measure(args.model, args.weights)
        print(sparsity.format_table(result))
        if args.json:
            _write_json(args.json, result)
        return 1 if result["compaction_error"] else 0
    elif args.verb == "retrain":
        report = solver.retrain(args.solver, args.weights, args.out, masks_path=args.masks,
                                iters=args.iters, progress=not args.quiet, restart=args.restart,
                                bn_batches=args.bn_batches)
        print("accuracy: %s" % report["accuracy"])
    return 0


def _time(args):
    from caffe_admm import timing
    engine = "caffe time" if args.gpu is not None or args.engine == "caffe-time" else "pycaffe"
    if args.conv_engine and engine != "caffe time":
        raise ValueError("--conv-engine applies to the caffe-time engine: add --engine "
                         "caffe-time (or --gpu N)")
    if args.plan_only:
        if engine != "caffe time":
            raise ValueError("--plan-only writes a plan for the caffe-time engine: add "
                             "--engine caffe-time (or --gpu N)")
        _, path = timing.write_plan(args.model, args.compact, args.plan_only, args.batch,
                                    args.repeats, args.iterations, args.gpu, args.conv_engine)
        print("wrote %s; measure it with: python3 -m caffe_admm.caffetime %s OUT.json"
              % (path, path))
        return 0
    progress = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    if engine == "caffe time":
        print("note: `caffe time` fills every weight from the prototxts' fillers; --weights "
              "and --compact-weights are not read", file=sys.stderr)
        from caffe_admm import caffetime
        from caffe_admm.backend import caffe  # noqa: F401 - find_caffe prefers its build
        caffe_bin = caffetime.find_caffe(args.caffe)
    else:
        from caffe_admm import backend
        backend.set_mode(None)
        caffe_bin = None
    timed = []  # the result so far, after each batch size

    def save(so_far):
        timed[:] = [so_far]
        if args.json:
            _write_json(args.json, so_far)
    try:
        result = timing.compare(args.model, args.weights, args.compact, args.compact_weights,
                                batches=args.batch, repeats=args.repeats, engine=engine,
                                gpu=args.gpu, iterations=args.iterations, progress=progress,
                                conv_engine=args.conv_engine, caffe_bin=caffe_bin,
                                on_batch=save)
    except KeyboardInterrupt:
        if timed:
            print(timing.format_table(timed[0]))
            print("caffe-admm time: interrupted after batch size%s %s%s" % (
                "s" if len(timed[0]["batches"]) > 1 else "",
                ", ".join(map(str, timed[0]["batches"])),
                "; %s holds them" % args.json if args.json else ""), file=sys.stderr)
        raise
    print(timing.format_table(result))
    return 0


def _print_summary(report):
    print("%-10s %-14s %10s %10s %8s %8s %8s" % ("layer", "kind", "params", "nonzero", "filters",
                                                 "columns", "kept%"))
    for name, e in report["layers"].items():
        print("%-10s %-14s %10d %10d %4d/%-4d %4d/%-4d %7.2f%%" % (
            name, e["kind"], e["params"], e["nonzero"], e["filters_kept"], e["filters"],
            e["shapes_kept"], e["shapes"], 100.0 * e["nonzero"] / e["params"]))
    t = report["pruned_layers_total"]
    print("pruned layers: %d of %d weights kept (%.1fx)" % (t["nonzero"], t["params"],
                                                            t["compression"]))
    for phase, scores in report["accuracy"].items():
        print("%-18s %s" % (phase, ", ".join("%s %.4f" % kv for kv in sorted(scores.items()))))


def _print_check(report):
    print("%-12s %-14s %9s %9s %-16s %-16s %8s" % ("layer", "kind", "filters", "columns",
                                                   "weight", "compacted", "FLOP red"))
    for name, e in report["layers"].items():
        counts = ("%d/%d" % (e["filters_kept"], e["filters"]),
                  "%d/%d" % (e["shapes_kept"], e["shapes"])) if "filters" in e else ("-", "-")
        print("%-12s %-14s %9s %9s %-16s %-16s %8s" % (
            name, e["kind"] or "-", counts[0], counts[1], "x".join(map(str, e["weight_shape"])),
            "x".join(map(str, e["compact_shape"])) if "compact_shape" in e else "?",
            "%.2fx" % e["flop_reduction"] if "flop_reduction" in e else "?"))
    t = report["total"]
    print("pruned layers: %d of %d weights kept (%.1fx)" % (
        t["pruned_nonzero"], t["pruned_params"], t["pruned_params"] / max(t["pruned_nonzero"], 1)))
    if report["compaction_error"]:
        print("compaction would refuse this net: %s" % report["compaction_error"])
    else:
        print("compacted: params %d -> %d (%.2fx), FLOPs/image %d -> %d (%.2fx)" % (
            t["params"], t["compact_params"], t["params"] / max(t["compact_params"], 1),
            t["flops"], t["compact_flops"], t["flops"] / max(t["compact_flops"], 1)))
    for w in report["warnings"]:
        print("warning:", w)
    for c in report["caveats"]:
        print("estimate:", c)


def main(argv=None):
    args = build_parser().parse_args(argv)
    from caffe_admm.protoio import ProtoError
    try:
        return _run(args)
    except KeyboardInterrupt:
        if args.verb in ("train", "prune", "retrain") and not getattr(args, "check", False):
            what = ("the run resumes from its last checkpoint when started again with the "
                    "same --out")
        elif args.verb == "sensitivity" and args.json:
            what = ("%s holds the layers scanned so far; the same command goes on from there"
                    % args.json)
        else:
            what = "nothing was left half-written (every output is written whole, then renamed)"
        print("caffe-admm: interrupted; %s" % what, file=sys.stderr)
        return 130
    except (FileExistsError, NotADirectoryError) as exc:
        if not exc.filename:  # ours, with its own message
            print("caffe-admm: error: %s" % exc, file=sys.stderr)
        else:  # from makedirs: a file where a directory goes
            print("caffe-admm: error: cannot make the directory %s: a file is in the way "
                  "(%s)" % (exc.filename, exc.strerror), file=sys.stderr)
        return 2
    except (ProtoError, FileNotFoundError, ValueError) as exc:  # bad input
        print("caffe-admm: error: %s" % exc, file=sys.stderr)
        return 2
    except RuntimeError as exc:  # DivergenceError
        print("caffe-admm: error: %s" % exc, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""How many kept weights compaction cuts, with and without ``live_inputs_only``, at full size.

The nets of ``compact_at_scale.py`` (ResNet-50, SE-ResNet-50, ResNeXt-50,
MobileNetV2, DenseNet-121; generated deploy prototxt, random weights), pruned
as ``caffe-admm prune`` prunes them in one magnitude round: FILTER_SHAPE at
``--keep`` for filters and shape columns alike (FILTER for the grouped
convolutions, which take no shape pruning; the depthwise ones, the
classifier and the SE gates' layers left out), the residual streams' writers
coupled (the default). A kept weight on an input channel whose producer
filters are all pruned carries no signal, and compaction cuts it: the
compacted net is then smaller than the keep ratios say, and the budget
went to nothing. With ``live_inputs_only`` every projection chooses among
live inputs only (through BatchNorm, Concats, grouped convolutions and the
sums of a coupled residual stream). The table gives, per net and setting,
the weights the masks keep in the pruned layers, those compaction keeps and
the share it cuts::

    .venv/bin/python benchmarks/live_inputs_at_scale.py [--nets resnet50 ...] \\
        [--size 224] [--keep 0.5] [--out benchmarks/results/live_inputs_at_scale.json]

Masks only: no training, no accuracy, no timing. The classifier is not
pruned, but with ``live_inputs_only`` its weights on dead channels are
masked too (they read the last stream), so its weights are counted in both
settings.
"""

import argparse
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks._common import random_weights, rows_of  # noqa: E402
from benchmarks.compact_at_scale import NETS, net_arguments, prune_as_the_run_does  # noqa: E402
from caffe_admm import compact, liveness, methods, protoio  # noqa: E402
from caffe_admm.backend import caffe  # noqa: E402
from caffe_admm.config import load_config  # noqa: E402


def config_text(net_param, keep, live):
    """The pruning config: FILTER_SHAPE by default (``global_keep_ratio``
    prunes the grouped convolutions by filter and leaves the depthwise ones
    out), the classifier and the SE gates' layers kept."""
    lines = ["method: MAGNITUDE admm_steps: 1 live_inputs_only: %s" % str(live).lower(),
             "default { kind: FILTER_SHAPE } global_keep_ratio: %r" % keep]
    for layer in net_param.layer:
        if layer.type in ("Convolution", "InnerProduct") and (
                layer.name == "fc" or "/se_" in layer.name):
            lines.append('layer { name: "%s" keep_ratio: 1 }' % layer.name)
    return "\n".join(lines) + "\n"


def kept_weights(model, tmp, keep, live, seed=0):
    """(weights the masks keep, weights compaction keeps) in the layers the
    masks touch, after one magnitude round at ``keep``."""
    net_param = protoio.read_net(model)
    net = caffe.Net(model, caffe.TEST)
    random_weights(net, np.random.default_rng(seed), 0.05)
    config = os.path.join(tmp, "prune_%s.prototxt" % ("live" if live else "plain"))
    with open(config, "w") as f:
        f.write(config_text(net_param, keep, live))
    cfg = load_config(config, net_param)
    weights = {spec.name: net.params[spec.name][0].data for spec in cfg.layers}
    feeds = None
    if live:  # as the run builds them (solver.prune)
        feeds = liveness.input_feeds(net_param, {n: w.shape for n, w in weights.items()},
                                     {spec.name: spec.group for spec in cfg.layers},
                                     cfg.coupled)
    method = methods.make_method(cfg, feeds=feeds)
    method.start(weights)
    masks = prune_as_the_run_does(net, net_param, method.final_masks(weights))
    names = sorted(set(masks) | {"fc"} & set(weights))
    kept = sum(int(np.count_nonzero(weights[n])) for n in names)
    return kept, sum(compact.surviving_weights(net, net_param, names).values())


def measure(name, size, keep, tmp):
    model = os.path.join(tmp, name + ".prototxt")
    with open(model, "w") as f:
        f.write(NETS[name](size))
    row = {"net": name, "size": size, "keep": keep}
    for live in (False, True):
        kept, compacted = kept_weights(model, tmp, keep, live)
        row["live" if live else "plain"] = {"kept": kept, "compacted": compacted,
                                            "cut_fraction": (kept - compacted) / kept}
    return row


def format_table(rows):
    lines = ["%-13s %12s %12s %7s   %12s %12s %7s" % (
        "net", "kept", "compacted", "cut", "kept (live)", "compacted", "cut")]
    for r in rows:
        p, q = r["plain"], r["live"]
        lines.append("%-13s %12d %12d %6.1f%%   %12d %12d %6.1f%%" % (
            r["net"], p["kept"], p["compacted"], 100 * p["cut_fraction"],
            q["kept"], q["compacted"], 100 * q["cut_fraction"]))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    net_arguments(parser)
    parser.add_argument("--keep", type=float, default=0.5,
                        help="filters and shape columns kept per pruned layer")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results",
                                                      "live_inputs_at_scale.json"))
    args = parser.parse_args(argv)
    caffe.set_mode_cpu()
    return rows_of(args.nets, lambda name, tmp: measure(name, args.size, args.keep, tmp),
                   format_table, args.out)


if __name__ == "__main__":
    main()

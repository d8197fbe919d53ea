"""How far compaction shrinks nets whose pruned filters keep their biases.

A net pruned by group Lasso (the SSL fork) or by another tool zeroes whole
filters but usually not their biases, nor the BatchNorm and Scale entries
of their channels: each such channel is a constant. ``caffe-admm compact``
folds those constants into the readers (biases, or one kept channel per
padded convolution); without that, the channels stay. For each net given
this script makes random weights with half the filters of every Convolution
and InnerProduct (but the last) zero, and compacts it three ways:

* ``no folding``: the planner without the readers' inputs (the rule before
  folding: a channel goes only when it is exactly zero), biases kept;
* ``folded``: ``compact.compact`` as the command runs it, biases kept;
* ``biases zeroed``: the same, the zero filters' biases zeroed too (as
  ``caffe-admm prune`` leaves them; BatchNorm and Scale entries stay).

It prints a table of the conv/fc weights each way and the compacted net's
largest difference from the masked net, and writes JSON::

    .venv/bin/python benchmarks/compact_kept_biases.py NET.prototxt [...] \\
        [--out benchmarks/results/compact_kept_biases.json]

Deploy nets (Input layers) only. Random weights: sizes and equivalence
only, no accuracy.
"""

import argparse
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from caffe_admm import compact, protoio  # noqa: E402
from caffe_admm.backend import caffe  # noqa: E402

from benchmarks._common import random_weights, rows_of  # noqa: E402


def sparse_weights(model, path, zero_biases, seed=0, dead=0.5):
    """Random weights, ``dead`` of the filters of each conv/fc layer (but the
    last fc) zero; their biases too where ``zero_biases``."""
    rng = np.random.default_rng(seed)
    net = caffe.Net(model, caffe.TEST)
    types = dict(zip(net._layer_names, [l.type for l in net.layers]))
    last_fc = [n for n in net.params if types[n] == "InnerProduct"][-1:]

    def prune(name, kind, blobs):
        if kind in ("Convolution", "InnerProduct") and name not in last_fc:
            gone = rng.random(blobs[0].data.shape[0]) < dead
            blobs[0].data[gone] = 0
            if zero_biases and len(blobs) > 1:
                blobs[1].data[gone] = 0

    random_weights(net, rng, 0.05, then=prune)
    net.save(path)


def unfolded_weights(model, weights):
    """Conv/fc weights left by the planner without folding."""
    net_param = protoio.read_checked_net(model)
    net = caffe.Net(model, caffe.TEST, weights=weights)
    plan = compact.plan_compaction(net, net_param)
    _, params = compact.apply_plan(net_param, compact.reference_params(net, plan), plan,
                                   compact.conv_groups(net))
    types = {l.name: l.type for l in net_param.layer}
    return sum(int(blobs[0].size) for name, blobs in params.items()
               if types[name] in ("Convolution", "InnerProduct"))


def measure(model, tmp):
    row = {"net": os.path.basename(model)}
    for zero_biases in (False, True):
        weights = os.path.join(tmp, "w.caffemodel")
        sparse_weights(model, weights, zero_biases)
        report = compact.compact(model, weights, os.path.join(tmp, "out"), force=True)
        key = "biases_zeroed" if zero_biases else "folded"
        row["params"] = report["total"]["params"]
        row[key] = {"params": report["total"]["compact_params"],
                    "max_abs_diff": report["equivalence"]["max_abs_diff"],
                    "output_scale": report["equivalence"]["output_scale"],
                    "passed": report["equivalence"]["passed"],
                    "folds": len(report["notes"]),
                    "carriers": sum(len(f.get("carriers", []))
                                    for f in (e.get("fold", {}) for e in
                                              report["plan"]["layers"].values())),
                    "warnings": report["warnings"]}
        if not zero_biases:
            row["no_folding"] = {"params": unfolded_weights(model, weights)}
    return row


def format_table(rows):
    lines = ["%-44s %12s %12s %12s %12s %10s" % ("net", "weights", "no folding", "folded",
                                                 "bias zeroed", "max|diff|")]
    for r in rows:
        f, z = r["folded"], r["biases_zeroed"]
        lines.append("%-44s %12d %12d %12d %12d %10.2g%s" % (
            r["net"], r["params"], r["no_folding"]["params"], f["params"], z["params"],
            f["max_abs_diff"], "" if f["passed"] else " (over the tolerance)"))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="deploy prototxt files")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results",
                                                      "compact_kept_biases.json"))
    args = parser.parse_args(argv)
    caffe.set_mode_cpu()
    rows_of(args.models, measure, format_table, args.out)


if __name__ == "__main__":
    main()

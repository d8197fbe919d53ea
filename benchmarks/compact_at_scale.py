"""Compaction of full-size ImageNet architectures, pruned as ``caffe-admm prune`` leaves them.

The nets are generated here as deploy prototxt (no downloads): ResNet-50,
SE-ResNet-50 (Scale gates), ResNeXt-50 (32x4d), MobileNetV2 (ReLU6 as Clip)
and DenseNet-121, at 1x3xSxS. Random weights (standard normal x 0.05;
BatchNorm variances positive), then every Convolution and InnerProduct but
the classifier and the SE gates' own layers loses ``1 - keep`` of its
filters as pruning does it: a config with ``global_keep_ratio`` (which
leaves the depthwise convolutions out), its filter projection (the same
number in every group of the layer and of the grouped convolutions reading
it; the writers of each residual stream the same filters, unless
``--no-couple``), the pruned filters' biases and the constants on their
channels zeroed (``compact.dead_channel_constants``). Then ``compact.compact`` runs as the
command does, its equivalence check included. The table gives parameters
and FLOPs before and after, the compaction's seconds, its largest
difference from the masked net and the zero filters it kept (warnings)::

    .venv/bin/python benchmarks/compact_at_scale.py [--nets resnet50 ...] \\
        [--size 224] [--keep 0.5] [--no-couple] [--out benchmarks/results/compact_at_scale.json]

Sizes, time and equivalence only; no accuracy.
"""

import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from caffe_admm import compact, methods, protoio, solver, timing  # noqa: E402
from caffe_admm.backend import caffe  # noqa: E402
from caffe_admm.config import load_config  # noqa: E402

from benchmarks._common import random_weights, rows_of  # noqa: E402


class _Proto:
    """Deploy prototxt text, layer by layer."""

    def __init__(self, name, size):
        self.lines = ['name: "%s"' % name,
                      'layer { name: "data" type: "Input" top: "data" input_param { shape { '
                      'dim: 1 dim: 3 dim: %d dim: %d } } }' % (size, size)]

    def add(self, text):
        self.lines.append("layer { %s }" % text)

    def conv(self, name, bottom, out, k=1, stride=1, group=1, bias=False):
        self.add('name: "%s" type: "Convolution" bottom: "%s" top: "%s" convolution_param { '
                 'num_output: %d kernel_size: %d pad: %d stride: %d group: %d bias_term: %s }'
                 % (name, bottom, name, out, k, k // 2, stride, group, str(bias).lower()))
        return name

    def bn(self, blob, act="ReLU", top=None):
        """BatchNorm + Scale (+ ReLU, or ReLU6 as a Clip), in place unless ``top``."""
        top = top or blob
        self.add('name: "%s/bn" type: "BatchNorm" bottom: "%s" top: "%s"' % (top, blob, top))
        self.add('name: "%s/scale" type: "Scale" bottom: "%s" top: "%s" scale_param { '
                 'bias_term: true }' % (top, top, top))
        if act == "ReLU":
            self.relu(top)
        elif act == "ReLU6":
            self.add('name: "%s/relu6" type: "Clip" bottom: "%s" top: "%s" clip_param { '
                     'min: 0 max: 6 }' % (top, top, top))
        return top

    def relu(self, blob):
        self.add('name: "%s/relu" type: "ReLU" bottom: "%s" top: "%s"' % (blob, blob, blob))

    def pool(self, name, bottom, kind="MAX", k=3, stride=2, pad=0, whole=False):
        param = ("global_pooling: true" if whole else
                 "kernel_size: %d stride: %d pad: %d" % (k, stride, pad))
        self.add('name: "%s" type: "Pooling" bottom: "%s" top: "%s" pooling_param { pool: %s '
                 '%s }' % (name, bottom, name, kind, param))
        return name

    def join(self, kind, name, bottoms):
        self.add('name: "%s" type: "%s" %s top: "%s"' % (
            name, kind, " ".join('bottom: "%s"' % b for b in bottoms), name))
        return name

    def head(self, bottom):
        self.pool("pool_final", bottom, "AVE", whole=True)
        self.add('name: "fc" type: "InnerProduct" bottom: "pool_final" top: "fc" '
                 'inner_product_param { num_output: 1000 }')
        self.add('name: "prob" type: "Softmax" bottom: "fc" top: "prob"')
        return "\n".join(self.lines) + "\n"


def resnet50(size, se=False, cardinality=1):
    """ResNet-50 bottlenecks; ``se``: a squeeze-and-excitation gate per block
    (SENet's layout, a Scale from axis 0); ``cardinality`` 32: ResNeXt-50
    (32x4d: grouped 3x3 convolutions, twice the width)."""
    p = _Proto("SE-ResNet-50" if se else "ResNeXt-50" if cardinality > 1 else "ResNet-50", size)
    x = p.bn(p.conv("conv1", "data", 64, 7, 2))
    x = p.pool("pool1", x, pad=1)
    for stage, (blocks, width) in enumerate([(3, 64), (4, 128), (6, 256), (3, 512)], start=2):
        inner = width * 2 if cardinality > 1 else width
        for i in range(1, blocks + 1):
            b, stride = "res%d_%d" % (stage, i), 2 if i == 1 and stage > 2 else 1
            r = p.bn(p.conv(b + "/reduce", x, inner))
            r = p.bn(p.conv(b + "/3x3", r, inner, 3, stride, cardinality))
            r = p.bn(p.conv(b + "/increase", r, width * 4), act=None)
            if se:
                s = p.pool(b + "/se_squeeze", r, "AVE", whole=True)
                s = p.conv(b + "/se_down", s, width // 4, bias=True)
                p.relu(s)
                s = p.conv(b + "/se_up", s, width * 4, bias=True)
                p.add('name: "%s/se_prob" type: "Sigmoid" bottom: "%s" top: "%s"' % (b, s, s))
                p.add('name: "%s/se_flat" type: "Flatten" bottom: "%s" top: "%s/se_flat"'
                      % (b, s, b))
                p.add('name: "%s/se_gate" type: "Scale" bottom: "%s" bottom: "%s/se_flat" '
                      'top: "%s/gated" scale_param { axis: 0 }' % (b, r, b, b))
                r = b + "/gated"
            shortcut = x if i > 1 else p.bn(p.conv(b + "/proj", x, width * 4, 1, stride),
                                            act=None)
            x = p.join("Eltwise", b, [shortcut, r])
            p.relu(x)
    return p.head(x)


def mobilenet_v2(size):
    """MobileNetV2 (width 1.0): inverted residuals, ReLU6 as Clip."""
    p = _Proto("MobileNetV2", size)
    x, c, n = p.bn(p.conv("conv1", "data", 32, 3, 2), "ReLU6"), 32, 0
    for t, out, repeat, stride in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                                   (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]:
        for i in range(repeat):
            n += 1
            b, s = "block%d" % n, stride if i == 0 else 1
            h = x if t == 1 else p.bn(p.conv(b + "/expand", x, c * t), "ReLU6")
            h = p.bn(p.conv(b + "/dw", h, c * t, 3, s, c * t), "ReLU6")
            h = p.bn(p.conv(b + "/project", h, out), act=None)
            x = p.join("Eltwise", b + "/sum", [x, h]) if s == 1 and c == out else h
            c = out
    return p.head(p.bn(p.conv("conv_last", x, 1280), "ReLU6"))


def densenet121(size):
    """DenseNet-121 (growth 32): BN-ReLU-conv bottlenecks, Concats, transitions."""
    p = _Proto("DenseNet-121", size)
    x = p.pool("pool1", p.bn(p.conv("conv1", "data", 64, 7, 2)), pad=1)
    c = 64
    for block, layers in enumerate([6, 12, 24, 16], start=1):
        for i in range(1, layers + 1):
            b = "dense%d_%d" % (block, i)
            h = p.bn(x, top=b + "/in")
            h = p.bn(p.conv(b + "/x1", h, 128))
            x = p.join("Concat", b, [x, p.conv(b + "/x2", h, 32, 3)])
            c += 32
        if block < 4:
            t = "transition%d" % block
            c //= 2
            x = p.pool(t + "/pool", p.conv(t, p.bn(x, top=t + "/in"), c), "AVE", 2, 2)
    return p.head(p.bn(x, top="final"))


NETS = {"resnet50": resnet50, "se_resnet50": lambda size: resnet50(size, se=True),
        "resnext50": lambda size: resnet50(size, cardinality=32),
        "mobilenet_v2": mobilenet_v2, "densenet121": densenet121}


def prune_weights(model, path, keep, seed=0, couple=True):
    """Random weights, filter-pruned to ``keep`` as ``caffe-admm prune``
    leaves them: the config's own projections (method MAGNITUDE in one
    round: the filters of largest norm, here random; with ``couple``, the
    config's default ``couple_sums``, a residual stream's writers by their
    joint norm), then the pruned filters' biases and the constants on their
    channels zeroed. Returns the pruned layer count."""
    net_param = protoio.read_net(model)
    net = caffe.Net(model, caffe.TEST)
    random_weights(net, np.random.default_rng(seed), 0.05)
    config = os.path.join(os.path.dirname(path), "prune.prototxt")
    with open(config, "w") as f:  # the classifier and the SE gates' layers unpruned
        f.write("method: MAGNITUDE admm_steps: 1 global_keep_ratio: %r couple_sums: %s\n"
                % (keep, str(couple).lower()) + "".join(
            'layer { name: "%s" keep_ratio: 1 }\n' % n for n in net.params
            if n == "fc" or "/se_" in n))
    cfg = load_config(config, net_param)
    weights = {spec.name: net.params[spec.name][0].data for spec in cfg.layers}
    method = methods.make_method(cfg)
    method.start(weights)
    masks = prune_as_the_run_does(net, net_param, method.final_masks(weights))
    net.save(path)
    return len(masks)


def prune_as_the_run_does(net, net_param, masks):
    """Zero what ``masks`` prune in ``net``, the pruned filters' biases and
    the constants on their channels, as the hard prune does; returns the
    masks that prune something."""
    masks = {n: m for n, m in masks.items() if not m.all()}
    solver.hard_prune(net, net_param, masks)
    return masks


def net_arguments(parser):
    """The --nets and --size arguments of the scripts on these nets."""
    parser.add_argument("--nets", nargs="+", choices=sorted(NETS), default=list(NETS))
    parser.add_argument("--size", type=int, default=224, help="input height and width")


def timing_summary(result, types, target=0.8):
    """Per batch size of :func:`caffe_admm.timing.compare`'s result: the whole
    net's speed-up, and over the Convolution and InnerProduct layers whose
    FLOPs fell, how many reach ``target`` x their FLOP reduction (issue #4's
    target, ratio of the medians), the lowest ratio and which layer.
    ``types``: layer name -> type."""
    out = {}
    for batch, data in result["batches"].items():
        ratios = {name: r["speedup"] / r["flop_reduction"] for name, r in data["layers"].items()
                  if r["flop_reduction"] > 1.01 and types[name] in ("Convolution", "InnerProduct")}
        low = min(ratios, key=ratios.get)
        out[int(batch)] = {"net_speedup": data["net"]["speedup"], "layers": len(ratios),
                           "met": sum(v >= target for v in ratios.values()),
                           "median_of_flop": float(np.median(list(ratios.values()))),
                           "lowest": [low, ratios[low]]}
    return out


def measure(name, size, keep, tmp, batches=(), repeats=5, couple=True):
    model = os.path.join(tmp, name + ".prototxt")
    with open(model, "w") as f:
        f.write(NETS[name](size))
    weights = os.path.join(tmp, name + ".caffemodel")
    pruned = prune_weights(model, weights, keep, couple=couple)
    out = os.path.join(tmp, "out")
    start = time.time()
    report = compact.compact(model, weights, out)
    seconds = time.time() - start
    total, eq = report["total"], report["equivalence"]
    row = {"net": name, "size": size, "keep": keep, "couple_sums": couple,
           "pruned_layers": pruned,
           "params": total["params"], "compact_params": total["compact_params"],
           "flops": total["flops"], "compact_flops": total["compact_flops"],
           "seconds": seconds, "max_abs_diff": eq["max_abs_diff"],
           "output_scale": eq["output_scale"], "passed": eq["passed"],
           "warnings": report["warnings"]}
    if batches:
        result = timing.compare(model, weights, os.path.join(out, "compact.prototxt"),
                                os.path.join(out, "compact.caffemodel"), batches, repeats)
        types = {l.name: l.type for l in protoio.read_net(model).layer}
        row.update(timing=result, timing_summary=timing_summary(result, types))
    return row


def format_table(rows):
    lines = ["%-13s %12s %12s %8s %14s %14s %8s %9s %10s %8s" % (
        "net", "params", "compacted", "ratio", "FLOPs", "compacted", "ratio", "seconds",
        "max|diff|", "warnings")]
    for r in rows:
        lines.append("%-13s %12d %12d %7.2fx %14d %14d %7.2fx %9.1f %10.2g %8d%s" % (
            r["net"], r["params"], r["compact_params"], r["params"] / r["compact_params"],
            r["flops"], r["compact_flops"], r["flops"] / r["compact_flops"], r["seconds"],
            r["max_abs_diff"], len(r["warnings"]), "" if r["passed"] else " (over the tolerance)"))
        for batch, t in sorted(r.get("timing_summary", {}).items()):
            lines.append("  batch %d: whole net %.2fx faster; %d of %d pruned conv/fc layers at "
                         ">= 0.8 of their FLOP reduction (median %.2f, lowest %s %.2f)" % (
                             batch, t["net_speedup"], t["met"], t["layers"],
                             t["median_of_flop"], *t["lowest"]))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    net_arguments(parser)
    parser.add_argument("--keep", type=float, default=0.5, help="filters kept per pruned layer")
    parser.add_argument("--time", type=int, nargs="+", default=(), metavar="BATCH",
                        help="also time both nets (pycaffe, per layer) at these batch sizes")
    parser.add_argument("--repeats", type=int, default=5, help="timing repeats")
    parser.add_argument("--no-couple", dest="couple", action="store_false",
                        help="prune each residual stream's writers on its own "
                             "(config couple_sums: false)")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results",
                                                      "compact_at_scale.json"))
    args = parser.parse_args(argv)
    caffe.set_mode_cpu()
    rows_of(args.nets, lambda name, tmp: measure(name, args.size, args.keep, tmp, args.time,
                                                 args.repeats, args.couple),
            format_table, args.out)


if __name__ == "__main__":
    main()

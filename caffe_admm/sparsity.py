"""The structured sparsity of a caffemodel, and what compaction makes of it.

For every Convolution, Deconvolution and InnerProduct layer of a net: its
non-zero weights and its all-zero filters (rows of the GEMM matrix, SSL's
"row sparsity"), input channels and shape columns (SSL's "column
sparsity": one per (channel, ky, kx), an InnerProduct's inputs), as
:func:`caffe_admm.masks.sparsity_stats` counts them for a run's
``report.json``; and beside them, the shape each weight compacts to
(:func:`caffe_admm.compact.compacted_costs`, nothing written). Any
caffemodel: a ``caffe-admm prune`` run's, one from the SSL fork (its
prototxt first through ``caffe-admm clean``), or one pruned by hand. Wen et
al., "Learning Structured Sparsity in Deep Neural Networks" (NIPS 2016),
report row and column sparsity this way.
"""

from caffe_admm import compact, protoio
from caffe_admm.backend import caffe
from caffe_admm.masks import sparsity_stats
from caffe_admm.timing import layer_costs

__all__ = ["measure", "format_table"]


def measure(model, weights):
    """Sparsity of each weighted layer of ``model`` (TEST phase) with ``weights``.

    Returns
    -------
    result : dict
        ``layers``: per layer name, ``type``, ``group`` and
        :func:`masks.sparsity_stats` of its weight (a Deconvolution's taken
        as filters, outputs x inputs per group; ``shape`` is the blob's),
        ``flops``, and ``compact_shape``, ``compact_params``,
        ``compact_nonzero`` and ``compact_flops`` where compaction plans the
        net; ``total``: ``params``, ``nonzero`` and, where it
        plans it, ``compact_params``, ``compact_nonzero``, ``flops``,
        ``compact_flops``; ``compaction_error``: why compaction refuses the
        net, else None; ``warnings`` and ``notes`` of its plan.
    """
    from caffe_admm.solver import check_weights

    net_param = protoio.read_checked_net(model)
    check_weights(weights, model, net_param)
    net = caffe.Net(model, caffe.TEST, weights=weights)
    types = {info.name: info.type for info in net_param.layer}
    result = {"model": model, "weights": weights, "compaction_error": None,
              "warnings": [], "notes": []}
    groups = compact.conv_groups(net)
    layers = {}
    for name, cost in layer_costs(net).items():
        group = groups.get(name, 1)
        w = compact.as_filters(net.params[name][0].data, types.get(name), group)
        layers[name] = dict(sparsity_stats(w, group), type=types.get(name), group=group,
                            shape=cost["weight_shape"], flops=cost["flops"])
    try:
        costs, plan = compact.compacted_costs(net, net_param, compact.layer_inputs(net))
    except compact.CompactionError as exc:
        result["compaction_error"] = str(exc)
    else:
        result["warnings"], result["notes"] = plan["warnings"], plan["notes"]
        for name, cost in costs.items():
            layers[name].update({k: cost[k] for k in ("compact_shape", "compact_params",
                                                      "compact_nonzero", "compact_flops")})
    result["layers"] = layers
    keys = ["params", "nonzero", "flops"]
    if result["compaction_error"] is None:
        keys += ["compact_params", "compact_nonzero", "compact_flops"]
    result["total"] = {k: int(sum(l[k] for l in layers.values())) for k in keys}
    return result


def format_table(result):
    """The table ``caffe-admm sparsity`` prints."""
    lines = ["%-12s %-13s %-16s %9s %10s %10s %10s  %s" % (
        "layer", "type", "weight", "nonzero", "filters", "channels", "columns", "compacted")]
    for name, l in result["layers"].items():
        lines.append("%-12s %-13s %-16s %8.2f%% %10s %10s %10s  %s" % (
            name, l["type"], "x".join(map(str, l["shape"])),
            100.0 * l["nonzero"] / max(l["params"], 1),
            "%d/%d" % (l["filters_kept"], l["filters"]),
            "%d/%d" % (l["channels_kept"], l["channels"]),
            "%d/%d" % (l["shapes_kept"], l["shapes"]),
            "x".join(map(str, l["compact_shape"])) if "compact_shape" in l else "-"))
    t = result["total"]
    lines.append("non-zero weights: %d of %d (%.2fx fewer)"
                 % (t["nonzero"], t["params"], t["params"] / max(t["nonzero"], 1)))
    if result["compaction_error"] is not None:
        lines.append("compaction refuses this net: %s" % result["compaction_error"])
    else:
        lines.append("compacted: params %d -> %d (%.2fx), FLOPs/image %d -> %d (%.2fx); it "
                     "cuts %d non-zero weights (on inputs no kept filter feeds, or in filters "
                     "no kept weight reads) and keeps %d zeros inside the kept shapes"
                     % (t["params"], t["compact_params"],
                        t["params"] / max(t["compact_params"], 1), t["flops"],
                        t["compact_flops"], t["flops"] / max(t["compact_flops"], 1),
                        t["nonzero"] - t["compact_nonzero"],
                        t["compact_params"] - t["compact_nonzero"]))
        lines += ["warning: " + w for w in result["warnings"]]
        lines += ["note: " + n for n in result["notes"]]
    return "\n".join(lines)

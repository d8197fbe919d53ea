"""Per-layer pruning sensitivity: which layers take pruning, and how much.

Each Convolution and InnerProduct layer is pruned alone, in one shot, to
each of several keep ratios by the projection a run's hard prune uses (the
groups of largest norm, :func:`projections.support`; for filters, their
biases and the constants on their channels zeroed as the run zeroes them),
with every other layer as it is, and the net is scored on its TEST phase.
No retraining: the drop is what pruning that layer costs before retraining
wins some back, and the ranking of the layers is what one reads off it (Han et al., NIPS
2015, Sec. 4; Distiller's sensitivity analysis). Next to each layer stand
its share of the weights and FLOPs, so a pruning config can go after the
layers that cost much and mind little.

Under FILTER, the writers of each residual stream (:func:`liveness.sum_writers`)
are also pruned together, to the filters of largest joint norm, as a run
with ``couple_sums`` prunes them: one writer pruned alone leaves the
stream's channels for compaction to keep, so only the joint row says what
cutting the stream costs.

Every score is taken on the same first ``iters`` TEST batches: the net is
built afresh for each (a Data layer has no way back to its first record).
On a net with BatchNorm every score, the unpruned net's too, is taken with
the statistics recomputed at its weights (over the same first training
batches each time), as a run scores its hard prune: with the caffemodel's
moving averages a pruned net scores far lower than the run would see.
"""

import json
import os
import time

from caffe_admm import compact, liveness, projections, protoio
from caffe_admm.backend import caffe, caffe_pb2
from caffe_admm.config import grouped_misfit
from caffe_admm.progress import format_seconds
from caffe_admm.solver import (batchnorms, evaluate_net, fingerprint, hard_prune,
                               open_test_net, recalibrate_test_net)
from caffe_admm.timing import layer_costs

__all__ = ["scan", "scan_saved", "format_table", "config_text", "KINDS"]

# the config's kind names (caffe_admm/proto/admm.proto) -> projection kinds
KINDS = {"FILTER": "filter", "CHANNEL": "channel", "SHAPE": "shape",
         "NON_STRUCTURED": "non_structured"}


def _streams(net_param, names, skipped):
    """The residual streams to scan as one, each a tuple of its writers:
    those whose writers are all among ``names`` and none ``skipped``, and
    whose channels no other layer writes; and notes on the others that
    have a writer among ``names``."""
    streams, notes = [], []
    for writers, other in liveness.sum_writers(net_param):
        if not any(w in names for w in writers):
            continue
        if other is not None:
            notes.append("the stream of %s also carries %s's channels, which compaction keeps: "
                         "not pruned together" % (", ".join(writers), other))
        elif not all(w in names for w in writers):
            notes.append("the stream of %s: %s not scanned, so not pruned together" % (
                ", ".join(writers), ", ".join(w for w in writers if w not in names)))
        elif any(w in skipped for w in writers):
            notes.append("the stream of %s: %s skipped, so not pruned together" % (
                ", ".join(writers), ", ".join(w for w in writers if w in skipped)))
        else:
            streams.append(tuple(writers))
    return streams, notes


def _scored(model, weights, net_param, iters, bns, bn_batches, masks=None, label=None):
    """The TEST scores of a fresh net with ``weights``, the layers of
    ``masks`` pruned to them as the hard prune leaves them, and the
    BatchNorm layers ``bns`` recalibrated over ``bn_batches`` training
    batches as a run does after its hard prune: (scores, the weights of the
    net's Convolution, Deconvolution and InnerProduct layers that
    compaction would keep or None where it cannot compact the net, note or
    None). With a ``label``, a recalibration or evaluation that takes long
    shows a progress bar (:data:`caffe_admm.solver.QUIET_S`)."""
    net, note, kept = caffe.Net(model, caffe.TEST, weights=weights), None, None
    if masks:
        try:
            hard_prune(net, net_param, masks)
        except compact.CompactionError as exc:
            note = "constants on the pruned channels left as they are (%s)" % exc
    if bns and bn_batches:
        recalibrate_test_net(net, caffe.Net(model, caffe.TRAIN, weights=weights), bns, bn_batches,
                             progress=label is not None)
    scores = evaluate_net(net, iters, progress=label is not None, label="test: %s" % label)
    if masks and note is None:  # after scoring: the plan reads the net's next batches
        try:
            costs, _ = compact.compacted_costs(net, net_param, compact.layer_inputs(net))
            kept = sum(c["compact_params"] for c in costs.values())
        except compact.CompactionError as exc:
            note = "no compacted sizes (%s)" % exc
    return scores, kept, note


def scan(model, weights, keeps=(0.9, 0.75, 0.5, 0.25, 0.1), kind="FILTER", layers=None,
         iters=None, bn_batches=100, progress=None, previous=None, on_layer=None):
    """Score ``model``'s TEST phase with each layer pruned alone to each keep ratio.

    Parameters
    ----------
    model : str
        Net prototxt with a TEST-phase data layer and a scalar output (an
        Accuracy or a loss layer).
    weights : str
        Trained caffemodel.
    keeps : sequence of float in (0, 1]
    kind : str
        FILTER, CHANNEL, SHAPE or NON_STRUCTURED (as in a pruning config).
    layers : list of str, optional
        The layers to scan (default: every Convolution and InnerProduct).
    iters : int, optional
        TEST batches per score (default: one pass over the TEST LMDB).
    bn_batches : int
        On a net with BatchNorm, every score (the baseline's too) is taken
        with the statistics recomputed at its weights over this many
        training batches (the same first ones each time), as a run scores
        its hard prune; 0 keeps the caffemodel's. The prototxt then needs
        its TRAIN-phase data layer.
    progress : callable, optional
        Called with a line per score.
    previous : dict, optional
        An earlier scan's result, complete or not, made from the same files
        and settings (``inputs``; else ValueError): its layers are taken as
        they are, and its streams, so an interrupted scan goes on where it
        stopped.
    on_layer : callable, optional
        Called with the result so far after each layer and stream (to save it).

    Returns
    -------
    dict with ``baseline`` (the scores of the unpruned net), ``iters``,
    ``kind``, ``keeps`` and per layer (net order) ``type``, ``params``,
    ``flops``, their shares of the scanned net's, and ``results`` (per keep
    ratio: ``keep``, ``groups_kept``, ``groups``, ``scores``, and
    ``compact_params``, the weights of the compacted net, to set against
    ``params``, the dense net's: None where compaction does not take the
    net) or ``skipped`` (why); ``streams``: under FILTER, per residual
    stream whose writers are all scanned, the same with ``writers``
    (pruned together to the filters of largest joint norm, as a coupled
    run prunes them; ``params`` and ``flops`` theirs summed); ``notes``.
    """
    if kind not in KINDS:
        raise ValueError("kind %r: choose one of %s" % (kind, ", ".join(KINDS)))
    for keep in keeps:
        if not 0.0 < keep <= 1.0:
            raise ValueError("keep ratio %r is outside (0, 1]" % keep)
    if bn_batches < 0:
        raise ValueError("bn_batches must be >= 0, got %d" % bn_batches)
    net, net_param, iters = open_test_net(model, weights, iters)
    types = dict(zip(net._layer_names, [l.type for l in net.layers]))
    costs = layer_costs(net)
    prunable = [n for n in costs if types[n] in ("Convolution", "InnerProduct")]
    names = prunable if layers is None else list(layers)
    unknown = [n for n in names if n not in prunable]
    if unknown:
        raise ValueError("%s: no Convolution or InnerProduct layer named %s (those: %s)"
                         % (model, ", ".join(map(repr, unknown)), ", ".join(prunable)))
    bns = batchnorms(net_param) if bn_batches else []
    if bns:
        protoio.check_net(net_param, model, protoio.net_state(net_param, caffe_pb2.TRAIN))
        baseline, _, _ = _scored(model, weights, net_param, iters, bns, bn_batches,
                                 label="baseline" if progress else None)
    else:
        baseline = evaluate_net(net, iters, progress=bool(progress), label="test: baseline")
    total_params = sum(c["params"] for c in costs.values())
    total_flops = sum(c["flops"] for c in costs.values())
    groups_of = compact.conv_groups(net)
    pkind = KINDS[kind]
    out = {"model": model, "weights": weights, "kind": kind, "keeps": list(keeps),
           "iters": iters, "bn_batches": bn_batches if bns else 0, "baseline": baseline,
           "params": total_params,
           "layers": {}, "notes": []}
    out["inputs"] = fingerprint(model, weights, extra=json.dumps(
        [kind, out["keeps"], iters, out["bn_batches"], baseline], sort_keys=True))
    skipped = {n: grouped_misfit(pkind, groups_of.get(n, 1),
                                 net.params[n][0].data.shape[0] == groups_of.get(n, 1) > 1)
               for n in names}
    skipped = {n: why for n, why in skipped.items() if why}
    streams, stream_notes = _streams(net_param, names, skipped) if pkind == "filter" else ([], [])
    out["streams"] = []
    done, done_streams = {}, {}
    if previous is not None:
        if previous.get("inputs") != out["inputs"]:
            raise ValueError("the earlier scan was made from other files or settings (model, "
                             "weights, kind, keep ratios, iters, bn_batches)")
        done = previous["layers"]
        done_streams = {tuple(e["writers"]): e for e in previous.get("streams", [])}
        out["notes"] = list(previous.get("notes", []))
    out["notes"] += [n for n in stream_notes if n not in out["notes"]]
    cells = len(keeps) * (sum(n not in done and n not in skipped for n in names)
                          + sum(w not in done_streams for w in streams))
    count, start = 0, time.monotonic()

    def entry_of(names_, kind_name):
        c = [costs[n] for n in names_]
        return {"type": kind_name, "params": sum(x["params"] for x in c),
                "flops": sum(x["flops"] for x in c),
                "params_share": sum(x["params"] for x in c) / total_params,
                "flops_share": sum(x["flops"] for x in c) / max(total_flops, 1)}

    def results(label, n, group, masks_of):
        nonlocal count
        rows = []
        for keep in keeps:
            k = projections.keep_count(n, keep, group)
            scores, kept, note = _scored(model, weights, net_param, iters, bns, bn_batches,
                                         masks_of(k), "%s keep %g" % (label, keep)
                                         if progress else None)
            if note and note not in out["notes"]:
                out["notes"].append(note)
            rows.append({"keep": keep, "groups_kept": k, "groups": n, "scores": scores,
                         "compact_params": kept})
            count += 1
            if progress:
                left = (cells - count) * (time.monotonic() - start) / count
                progress("[%d/%d] %s keep %g: %s (%s left)" % (count, cells, label, keep,
                                                             _fmt(scores), format_seconds(left)))
        return rows

    for name in names:
        if name in done:
            out["layers"][name] = done[name]
            if progress:
                progress("%s: from the earlier scan" % name)
            continue
        w = net.params[name][0].data
        entry = entry_of([name], types[name])
        if name in skipped:
            entry["skipped"] = skipped[name]
            if progress:
                progress("%s: skipped, %s" % (name, skipped[name]))
        else:
            g = groups_of.get(name, 1) if pkind == "filter" else 1
            entry["results"] = results(name, projections.num_groups(w.shape, pkind), g,
                                       lambda k: {name: projections.support(w, pkind, k, g)})
        out["layers"][name] = entry
        if on_layer:
            on_layer(out)
    for writers in streams:
        label = "stream of " + ", ".join(writers)
        if writers in done_streams:
            out["streams"].append(done_streams[writers])
            if progress:
                progress("%s: from the earlier scan" % label)
            continue
        ws = [net.params[n][0].data for n in writers]
        group = groups_of.get(writers[0], 1)  # as the run's joint choice takes it

        def joint(k):
            kept = projections.joint_group_mask(ws, "filter", k, group)
            return {n: projections.expand(kept, w.shape, "filter").copy()
                    for n, w in zip(writers, ws)}
        entry = dict(entry_of(writers, "stream"), writers=list(writers),
                     results=results(label, ws[0].shape[0], group, joint))
        out["streams"].append(entry)
        if on_layer:
            on_layer(out)
    return out


def scan_saved(path, *args, **kwargs):
    """:func:`scan`, its result written to the JSON file ``path`` after each
    layer (whole, then renamed); where ``path`` holds an earlier scan of the
    same files and settings, complete or interrupted, it goes on from there.

    Raises
    ------
    ValueError
        if ``path`` holds something else: another scan, or not a scan.
    """
    previous = None
    if os.path.exists(path):
        with open(path) as f:
            try:
                previous = json.load(f)
            except ValueError:
                previous = None
        if not isinstance(previous, dict) or "inputs" not in previous:
            raise ValueError("%s is not a sensitivity scan's JSON; pass another file" % path)

    def save(result):
        with protoio.atomic_write(path, "w") as f:
            json.dump(result, f, indent=1)
    try:
        result = scan(*args, previous=previous, on_layer=save, **kwargs)
    except ValueError as exc:
        if previous is None or "earlier scan" not in str(exc):
            raise
        raise ValueError("%s: %s; pass another file, or delete it to scan anew" % (path, exc))
    save(result)
    return result


def _score_key(scores):
    return "accuracy" if "accuracy" in scores else sorted(scores)[0]


def _fmt(scores):
    key = _score_key(scores)
    return "%s %.4f" % (key, scores[key])


def format_table(result):
    """The scan as a text table: a row per layer, a column per keep ratio,
    the score (``accuracy`` where the net has one) and its change from the
    baseline."""
    key = _score_key(result["baseline"])
    base = result["baseline"][key]
    scale = 100 if key == "accuracy" else 1  # points of accuracy
    head = "%-12s %-13s %7s %7s" % ("layer", "type", "params", "FLOPs")
    head += "".join(" %15s" % ("keep %g" % k) for k in result["keeps"])
    lines = ["%s %s of the unpruned net: %.4f (%d TEST batches%s); kind %s, one layer at a "
             "time, no retraining" % (
                 result["model"], key, base, result["iters"],
                 ", BatchNorm statistics recomputed over %d training batches for each score"
                 % result["bn_batches"] if result["bn_batches"] else "", result["kind"]), head]
    streams = result.get("streams", [])
    rows = list(result["layers"].items())
    rows += [("stream %d" % (i + 1), dict(e, type="%d writers" % len(e["writers"])))
             for i, e in enumerate(streams)]
    for name, e in rows:
        row = "%-12s %-13s %6.1f%% %6.1f%%" % (name, e["type"], 100 * e["params_share"],
                                               100 * e["flops_share"])
        if "skipped" in e:
            row += "  skipped: " + e["skipped"]
        else:
            row += "".join(" %7.4f (%+5.1f)" % (r["scores"][key],
                                                scale * (r["scores"][key] - base))
                           for r in e["results"])
        lines.append(row)
    lines += ["stream %d: %s, pruned together to the filters of largest joint norm, as a "
              "coupled run prunes them" % (i + 1, ", ".join(e["writers"]))
              for i, e in enumerate(streams)]
    idle = [name for name, e in rows if _saves_nothing(result, e)]
    if idle:
        lines.append("no smaller net: compaction keeps the filters pruning %s zeroes, at "
                     "every ratio (%s)" % (", ".join(idle), _KEPT_WHY))
    lines += ["note: " + n for n in result["notes"]]
    return "\n".join(lines)


# why compaction keeps a pruned layer's zero filters, in the cases a scan meets
_KEPT_WHY = ("a loss or the net's outputs read them whole, or a residual stream's other "
             "writers keep their channels")


def _saves_nothing(result, e, keep=None):
    """Whether compaction keeps every weight of the net with ``e``'s pruning
    at ``keep`` (default: at every ratio below 1); False for scans without
    compacted sizes, and for rows whose net compaction does not take."""
    rows = [r for r in e.get("results", []) if (r["keep"] == keep if keep is not None
                                                else r["keep"] < 1)]
    return bool(rows) and all(r.get("compact_params") is not None
                              and r["compact_params"] >= result["params"] for r in rows)


def config_text(result, max_drop, net_param=None):
    """A pruning config (caffe_admm/proto/admm.proto) from a scan: each layer
    at the smallest scanned keep ratio whose score, that layer pruned alone,
    fell at most ``max_drop`` points of accuracy below the unpruned net's;
    layers that fell further at every ratio below 1 are left out. The
    writers of a residual stream (:func:`liveness.sum_writers`, from
    ``net_param``, by default the scan's model) get one ratio, so that the
    run prunes them coupled (config ``couple_sums``) and compaction can cut
    the stream: where the scan pruned them together (its ``streams``), the
    smallest ratio at which that fell at most ``max_drop`` (none of them
    where none did); else the largest of theirs alone. A layer or stream
    whose pruning compaction would keep whole at that ratio (the scan's
    ``compact_params``: the classifier, whose filters a loss reads whole)
    is left out, and why is said. Layers pruned
    together lose more than each alone, and retraining wins some back: the
    text says so, a starting point to edit.

    Raises
    ------
    ValueError
        if the net has no ``accuracy`` output, or no layer stays within
        ``max_drop``.
    """
    if "accuracy" not in result["baseline"]:
        raise ValueError("the scan has no accuracy score to hold a drop to (outputs: %s)"
                         % ", ".join(sorted(result["baseline"])))
    base = result["baseline"]["accuracy"]
    layers = result["layers"]

    def lost(r):  # points of accuracy
        return 100 * (base - r["scores"]["accuracy"])

    def row(e, keep):
        return next(r for r in e["results"] if r["keep"] == keep)

    def rows_within(e):  # {keep: points lost} of the rows below 1 within the drop
        return {r["keep"]: lost(r) for r in e.get("results", [])
                if r["keep"] < 1 and lost(r) <= max_drop}

    nothing = ("compaction keeps its pruned filters, so pruning it saves nothing (%s; "
               "`prune --check` says which)" % _KEPT_WHY)
    chosen, out = {}, {}  # name -> (keep, comment); name -> why left out
    for name, e in layers.items():
        fine = rows_within(e)
        if fine:
            keep = min(fine)
            chosen[name] = (keep, "%+.2f points alone" % -fine[keep])
        else:
            out[name] = (e["skipped"] if "skipped" in e else
                         "more than %g points at every keep ratio below 1" % max_drop)
    joint = {tuple(e["writers"]): e for e in result.get("streams", [])}
    for name in list(chosen):
        if not any(name in writers for writers in joint) and _saves_nothing(
                result, layers[name], chosen[name][0]):
            del chosen[name]
            out[name] = nothing
    notes = []
    if net_param is None:
        net_param = protoio.read_net(result["model"])
    for writers, other in liveness.sum_writers(net_param):
        if other is not None or not any(w in layers for w in writers):
            continue
        listed = ", ".join(writers)
        if writers in joint:
            fine = rows_within(joint[writers])
            for w in writers:
                chosen.pop(w, None)
                out.pop(w, None)
            if fine and _saves_nothing(result, joint[writers], min(fine)):
                out.update((w, nothing) for w in writers)
            elif fine:
                keep = min(fine)
                chosen.update((w, (keep, "%+.2f points with the stream of %s pruned together"
                                   % (-fine[keep], listed))) for w in writers)
            else:
                out.update((w, "the stream of %s: more than %g points at every keep ratio "
                               "below 1, pruned together" % (listed, max_drop))
                           for w in writers)
        elif not any(w in chosen for w in writers):
            continue
        elif all(w in chosen for w in writers):
            keep = max(chosen[w][0] for w in writers)
            if any(chosen[w][0] != keep for w in writers):
                notes.append("the stream of %s: one keep ratio, %g, the largest of theirs, so "
                             "the run prunes it coupled" % (listed, keep))
                chosen.update((w, (keep, "%+.2f points alone" % -lost(row(layers[w], keep))))
                              for w in writers)
        else:
            notes.append("the stream of %s: %s left out, so the run leaves it uncoupled and "
                         "compaction keeps most of its channels" % (listed, ", ".join(
                             w for w in writers if w not in chosen)))
    if not chosen:
        # the least drop that would let something through: a layer alone, or
        # a stream's writers together (those not alone)
        rows = [(name, e) for name, e in layers.items()
                if not any(name in writers for writers in joint)]
        rows += [("the stream of " + ", ".join(writers), e) for writers, e in joint.items()]
        least = min(((lost(r), r["keep"], name) for name, e in rows
                     for r in e.get("results", []) if r["keep"] < 1), default=None)
        raise ValueError("no layer stays within %g points of %.4f at any scanned keep ratio; "
                         "scan larger ones (--keep) or allow a larger drop%s" % (
                             max_drop, base, "" if least is None else
                             " (the least: %.2f points, %s at %g)"
                             % (least[0], least[2], least[1])))
    lines = []
    for name, e in layers.items():
        if name in chosen:
            keep, comment = chosen[name]
            lines.append('layer { name: "%s" kind: %s keep_ratio: %g }  # %s, %.1f%% of the '
                         'weights, %.1f%% of the FLOPs' % (
                             name, result["kind"], keep, comment, 100 * e["params_share"],
                             100 * e["flops_share"]))
    head = ["# From caffe-admm sensitivity: %s, %s" % (result["model"], result["weights"]),
            "# (accuracy %.4f unpruned, %d TEST batches). Each layer at the smallest keep ratio"
            % (base, result["iters"]),
            "# scanned (%s) whose score, that layer alone pruned in one shot,"
            % ", ".join("%g" % k for k in result["keeps"]),
            "# fell at most %g points%s. Pruned together, all the layers lose more than each"
            % (max_drop, "; a residual stream's writers at the smallest one at which\n# "
               "pruning them together did" if joint else ""),
            "# alone, and retraining wins some back: a starting point. Method, schedule: the",
            "# defaults."]
    head += ["# left out: %s (%s)" % o for o in out.items()] + ["# " + n for n in notes]
    return "\n".join(head + lines) + "\n"

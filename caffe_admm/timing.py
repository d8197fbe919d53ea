"""Forward time of Caffe nets, per layer and whole, at several batch sizes.

Two engines, both Caffe's own layer implementations (im2col included):

- ``pycaffe`` (CPU): ``Net::ForwardFromTo`` through pycaffe, wall clock, in
  one process: a warm-up, then ``repeats`` rounds, each timing the original
  and the compacted net once (whole net, then layer by layer), the order
  alternating (:func:`time_nets`).
- ``caffe time`` (CPU or GPU/cuDNN): Caffe's benchmark tool, whose per-layer
  timer waits for the GPU; see :mod:`caffe_admm.caffetime`. GPU timing always
  uses it. :func:`write_plan` writes what it needs (batch-resized prototxts,
  FLOPs and parameters per layer) so the measuring can also happen on another
  machine.

The median and the spread (min, max) are reported, next to each layer's FLOPs
and parameters, so a measured speed-up can be read against the ideal one, and
the speed-up of each repeat (both nets are timed in every repeat, back to
back), whose range shows how far one repeat can be trusted.
"""

import json
import os
import statistics
import time

import numpy as np

from caffe_admm.caffetime import (blas_lines, cpu_conv_engine, cpu_conv_line, cpu_threads,
                                  cpu_threads_line, loaded_blas_info, rotate)

__all__ = ["layer_costs", "time_net", "time_nets", "time_layer_contexts", "layer_range",
           "compare", "speedups", "summary", "round_speedups", "rotate", "write_plan",
           "format_table"]


# the layers timed and costed one by one
WEIGHTED_TYPES = ("Convolution", "Deconvolution", "InnerProduct")


def layer_costs(net):
    """FLOPs (multiply + add) per image and parameter count of each conv/deconv/fc layer.

    Returns
    -------
    dict[str, dict] with ``flops``, ``params`` and ``weight_shape``
    """
    names = list(net._layer_names)
    costs = {}
    for name, blobs in net.params.items():
        layer = net.layers[names.index(name)]
        if layer.type not in WEIGHTED_TYPES:
            continue
        w = blobs[0].data
        # the weight meets every output position; a Deconvolution's, every input position
        at = net.blobs[net.top_names[name][0] if layer.type != "Deconvolution"
                       else net.bottom_names[name][0]].data.shape
        spatial = int(np.prod(at[2:])) if len(at) > 2 else 1
        costs[name] = {"flops": 2 * int(w.size) * spatial, "params": int(w.size),
                       "weight_shape": list(w.shape)}
    return costs


def _reshape(net, batch):
    for name in net.inputs:
        shape = list(net.blobs[name].data.shape)
        shape[0] = batch
        net.blobs[name].reshape(*shape)
    net.reshape()


def summary(times_ms):
    """Median, min and max of repeated timings (ms), as every result reports them,
    and the timings themselves in the order of the rounds (``samples_ms``)."""
    return {"median_ms": statistics.median(times_ms), "min_ms": min(times_ms),
            "max_ms": max(times_ms), "samples_ms": [float(t) for t in times_ms]}


def round_speedups(a, b):
    """Median, min and max over the rounds of each round's speed-up a / b.

    ``a`` and ``b`` are :func:`summary` results of two nets timed in the same
    rounds (the interleaved timing runs both in every round, back to back), so
    a round's ratio cancels what drifts slower than a round. None where either
    lacks ``samples_ms`` (results written before they were kept).
    """
    pairs = list(zip(a.get("samples_ms") or (), b.get("samples_ms") or ()))
    if not pairs:
        return None
    ratios = [x / max(y, 1e-9) for x, y in pairs]
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}


WHOLE = None  # the whole-net key of _passes: no layer name can be None


def time_net(net, batch, repeats=10, warmup=2, layers=None):
    """Whole-net and per-layer forward times of an Input-layer net.

    Parameters
    ----------
    net : caffe.Net
    batch : int
    layers : list of str or None
        Layers to time one by one (default: every Convolution and InnerProduct);
        a layer's time includes the ``name/...`` helpers before it.

    Returns
    -------
    dict with ``net`` and ``layers`` ({name: {median_ms, min_ms, max_ms}})
    """
    return time_nets([net], batch, repeats, warmup, layers)[0]


def time_nets(nets, batch, repeats=10, warmup=2, layers=None, progress=None):
    """:func:`time_net` for several nets, interleaved.

    Each repeat times every net once (the whole net, then each layer), in an
    order rotated from one repeat to the next, so that a shared machine's
    drift (another process, the clock) falls on all the nets alike instead of
    on whichever was timed during it. Their ratios are what gets reported.
    ``progress``, a callable, gets a line after each repeat (as
    :func:`caffe_admm.caffetime.measure` gives one per process).

    Returns
    -------
    list of dicts as :func:`time_net` returns, in the order of ``nets``
    """
    passes = [_passes(net, batch, layers) for net in nets]
    for _ in range(warmup):
        for fns in passes:
            fns[WHOLE]()
    times = [{key: [] for key in fns} for fns in passes]
    for r in range(repeats):
        for i in rotate(list(range(len(nets))), r):
            for key, fn in passes[i].items():
                t0 = time.perf_counter()
                fn()
                times[i][key].append((time.perf_counter() - t0) * 1e3)
        if progress:
            progress("batch %s repeat %d/%d: forward %s ms" % (
                batch, r + 1, repeats, " / ".join("%.3f" % t[WHOLE][-1] for t in times)))
    return [{"net": summary(t.pop(WHOLE)), "layers": {name: summary(v) for name, v in t.items()}}
            for t in times]


def time_layer_contexts(nets, batch, rounds=15, iterations=20, warmup=2, layers=None):
    """Each timed layer's forward time inside the net's forward pass and alone.

    *In the net*: ``iterations`` forward passes, layer by layer in the net's
    order, each timed layer (with its ``name/...`` helpers) timed on its own,
    as ``caffe time``'s per-layer timer does: what inference pays, the layers
    run since a layer's previous pass (in AlexNet the fc layers, which stream
    38-150 MB of weights) having filled the caches with their data.
    *Alone*: the layer called ``iterations`` times in a row after one
    untimed call, its data in cache, so what is left is its kernel's time.
    Each round times every net both ways, the nets' order rotated per round.

    Parameters
    ----------
    nets : list of caffe.Net
        Deploy nets with Input layers, each holding every layer of ``layers``.
    layers : list of str or None
        Default: every Convolution and InnerProduct (of each net).

    Returns
    -------
    list (one per net) of {"in_net": {name: summary}, "alone": {name: summary}};
    a round contributes the mean over its iterations (ms), summarised by
    :func:`summary` over the rounds.
    """
    plans = []
    for net in nets:
        fns = _passes(net, batch, layers)
        timed = [name for name in fns if name is not WHOLE]
        plans.append((net, fns, _segments(list(net._layer_names), timed)))
    for _ in range(warmup):
        for _, fns, _ in plans:
            fns[WHOLE]()
    times = [{context: {name: [] for name in fns if name is not WHOLE}
              for context in ("in_net", "alone")} for _, fns, _ in plans]
    clock = time.perf_counter
    for r in range(rounds):
        for i in rotate(list(range(len(nets))), r):
            net, fns, segments = plans[i]
            total = dict.fromkeys(times[i]["in_net"], 0.0)
            for _ in range(iterations):
                for name, start, end in segments:
                    t0 = clock()
                    net._forward(start, end)
                    if name is not None:
                        total[name] += clock() - t0
            for name, seconds in total.items():
                times[i]["in_net"][name].append(seconds / iterations * 1e3)
            for name, samples in times[i]["alone"].items():
                fn = fns[name]
                fn()
                t0 = clock()
                for _ in range(iterations):
                    fn()
                samples.append((clock() - t0) / iterations * 1e3)
    return [{context: {name: summary(v) for name, v in by_name.items()}
             for context, by_name in t.items()} for t in times]


def _segments(names, timed):
    """The net's layers as consecutive index ranges [(name, start, end)]: each
    layer of ``timed`` with its helpers, and (name None) the layers between."""
    ranges = sorted(layer_range(names, name) + (name,) for name in timed)
    segments, nxt = [], 0
    for start, end, name in ranges:
        if start > nxt:
            segments.append((None, nxt, start - 1))
        segments.append((name, start, end))
        nxt = end + 1
    if nxt < len(names):
        segments.append((None, nxt, len(names) - 1))
    return segments


def _passes(net, batch, layers):
    """{WHOLE: the whole forward pass, layer name: that layer's (with its helpers)}."""
    if not net.inputs:
        raise ValueError("timing needs a deploy net with Input layers (no Data layers)")
    _reshape(net, batch)
    rng = np.random.default_rng(0)
    for name in net.inputs:
        net.blobs[name].data[...] = rng.standard_normal(net.blobs[name].data.shape)
    names = list(net._layer_names)
    if layers is None:
        layers = [n for n, l in zip(names, net.layers) if l.type in WEIGHTED_TYPES]
    last = len(names) - 1
    fns = {WHOLE: lambda: net._forward(0, last)}
    for name in layers:
        start, end = layer_range(names, name)
        fns[name] = lambda s=start, e=end: net._forward(s, e)
    return fns


def layer_range(names, name):
    """Indices [start, end] of layer ``name`` and the helper layers ``name/...``
    that shape-wise compaction puts before it (Im2col, Slice, Concat, Silence)."""
    end = names.index(name)
    start = end
    while start > 0 and names[start - 1].startswith(name + "/"):
        start -= 1
    return start, end


def _costs(model):
    from caffe_admm.backend import caffe
    return layer_costs(caffe.Net(model, caffe.TEST))


CONV_ENGINES = ("CAFFE", "CUDNN")


def _check_counts(batches, repeats, iterations):
    """ValueError unless every batch size, the repeats and the iterations
    are 1 or more (Caffe aborts on a negative batch size; 0 times nothing)."""
    bad = ["batch size %s" % b for b in batches if b < 1] + ["repeats %s" % repeats] * (
        repeats < 1) + ["iterations %s" % iterations] * (iterations < 1)
    if bad:
        raise ValueError("%s: give 1 or more" % ", ".join(bad))


def write_plan(model, compact_model, out_dir, batches=(1, 8, 32), repeats=5, iterations=20,
               gpu=None, conv_engine=None):
    """Write a ``caffe time`` timing plan: ``out_dir/plan.json`` and, per batch
    size, both deploy prototxts with the Input layers resized to it.

    ``conv_engine`` ("CAFFE": im2col + GEMM, "CUDNN") sets every Convolution's
    engine; None keeps the prototxt's (Caffe's default: cuDNN where built with it).

    Returns
    -------
    (plan dict, path of plan.json); measure it with :func:`caffe_admm.caffetime.measure`
    or ``python3 -m caffe_admm.caffetime PLAN OUT``.
    """
    from caffe_admm import protoio
    _check_counts(batches, repeats, iterations)
    if conv_engine not in (None,) + CONV_ENGINES:
        raise ValueError("conv engine %r: use one of %s" % (conv_engine, ", ".join(CONV_ENGINES)))
    nets = {path: protoio.read_checked_net(path) for path in (model, compact_model)}
    for path, net in nets.items():
        if not any(layer.type == "Input" for layer in net.layer):
            raise ValueError("%s: timing needs a deploy net with Input layers (no Data "
                             "layers)" % path)
    costs = {"original": _costs(model), "compact": _costs(compact_model)}
    layers = [n for n in costs["original"] if n in costs["compact"]]
    plan = {"model": model, "compact_model": compact_model, "gpu": gpu, "repeats": int(repeats),
            "iterations": int(iterations), "conv_engine": conv_engine, "layers": layers,
            "costs": costs, "models": {}}
    os.makedirs(out_dir, exist_ok=True)
    for which, path in (("original", model), ("compact", compact_model)):
        net = nets[path]
        inputs = [l for l in net.layer if l.type == "Input"]
        for layer in net.layer:  # the same random weights for both nets
            param = {"Convolution": layer.convolution_param,
                     "Deconvolution": layer.convolution_param,
                     "InnerProduct": layer.inner_product_param}.get(layer.type)
            if param is not None:
                param.weight_filler.Clear()
                param.weight_filler.type = "gaussian"
                param.weight_filler.std = 0.01
                # caffe time also runs Backward: with no learnable blobs it has
                # little to do (forward times are unaffected)
                del layer.param[:]
                for _ in range(2 if param.bias_term else 1):
                    layer.param.add().lr_mult = 0
            if layer.type == "Convolution" and conv_engine:
                layer.convolution_param.engine = getattr(layer.convolution_param, conv_engine)
        for batch in batches:
            for layer in inputs:
                for shape in layer.input_param.shape:
                    shape.dim[0] = int(batch)
            name = "%s_b%s.prototxt" % (which, batch)
            protoio.write_text(os.path.join(out_dir, name), net)
            plan["models"].setdefault(str(batch), {})[which] = name
    path = os.path.join(out_dir, "plan.json")
    with protoio.atomic_write(path, "w") as f:
        json.dump(plan, f, indent=1)
    return plan, path


def compare(model, weights, compact_model, compact_weights, batches=(1, 8, 32), repeats=10,
            warmup=2, engine="pycaffe", gpu=None, iterations=20, plan_dir=None, progress=None,
            conv_engine=None, caffe_bin=None, on_batch=None):
    """Time the original and the compacted net alternately; speed-ups per layer.

    ``engine="caffe time"`` (forced by ``gpu``) runs Caffe's benchmark tool on
    a plan written to ``plan_dir`` (a temporary directory if None) with the
    ``caffe_bin`` binary (default: :func:`caffe_admm.caffetime.find_caffe`); its
    processes fill weights from the prototxt fillers, so ``weights`` and
    ``compact_weights`` are not used there. ``progress``, a callable, gets a
    line per repeat (pycaffe: both nets' whole forward times, original first)
    or per ``caffe time`` process. ``on_batch``, a callable, gets the result
    so far after each batch size (an interrupted run keeps what it timed).

    Returns
    -------
    dict: per batch size, per layer: original and compacted timings, the
    measured speed-up (ratio of medians), the FLOP and parameter reductions.
    CPU results also record the thread settings (``cpu_threads``), the BLAS
    with the kernel it runs (``blas``, with a ``warning`` where that kernel is
    a generic one on a CPU with AVX2) and the engine of the convolutions'
    forward pass (``cpu_conv_engine``: "onednn" or "caffe").
    """
    _check_counts(batches, repeats, iterations)
    if gpu is not None or engine == "caffe time":
        import tempfile
        from caffe_admm import caffetime
        with tempfile.TemporaryDirectory() as tmp:
            plan, path = write_plan(model, compact_model, plan_dir or tmp, batches, repeats,
                                    iterations, gpu, conv_engine)
            return caffetime.measure(plan, os.path.dirname(path), caffe_bin, progress,
                                     on_batch)
    if engine != "pycaffe":
        raise ValueError("unknown timing engine %r (pycaffe or 'caffe time')" % engine)
    from caffe_admm.backend import caffe
    from caffe_admm import protoio
    protoio.read_checked_net(model)
    protoio.read_checked_net(compact_model)
    if weights:
        _check_weights(weights, model, compact_model)
    _check_weights(compact_weights, compact_model, model)
    a = caffe.Net(model, caffe.TEST, weights=weights) if weights else caffe.Net(model, caffe.TEST)
    b = caffe.Net(compact_model, caffe.TEST, weights=compact_weights)
    costs_a, costs_b = layer_costs(a), layer_costs(b)
    layers = [n for n in costs_a if n in costs_b]
    blas = loaded_blas_info()
    out = {"engine": "pycaffe", "model": model, "compact_model": compact_model,
           "repeats": repeats, "cpu_threads": cpu_threads(), "blas": blas,
           "cpu_conv_engine": cpu_conv_engine(blas["onednn"]), "batches": {}}
    for batch in batches:
        out["batches"][batch] = speedups(*time_nets([a, b], batch, repeats, warmup, layers,
                                                    progress),
                                         costs_a, costs_b)
        if on_batch:
            on_batch(out)
    return out


def _check_weights(weights, model, other):
    """:func:`caffe_admm.solver.check_weights` (RunError where Caffe would
    abort on ``weights``), saying so where they fit the ``other`` net."""
    from caffe_admm.solver import RunError, check_weights
    try:
        check_weights(weights, model, None)
    except RunError as exc:
        try:
            check_weights(weights, other, None)
        except RunError:
            raise exc from None
        raise RunError("%s. They are weights of %s: are the original's and the compacted "
                       "net's weights swapped?" % (exc, other)) from None


def speedups(original, compact, costs_a, costs_b):
    """One batch size's rows: both timings, measured speed-up (ratio of medians)
    and its median, min and max over the repeats (:func:`round_speedups`), FLOP
    and parameter reductions, per layer of ``original["layers"]`` and whole net.

    Parameters
    ----------
    original, compact : dict
        ``net`` and ``layers`` ({name: {median_ms, min_ms, max_ms}}), as
        :func:`time_net` returns them.
    costs_a, costs_b : dict
        :func:`layer_costs` of the original and the compacted net.
    """
    def ratio(a, b):
        return a["median_ms"] / max(b["median_ms"], 1e-9)
    rows = {}
    for name, a in original["layers"].items():
        b = compact["layers"][name]
        rows[name] = {"original": a, "compact": b, "speedup": ratio(a, b),
                      "speedup_rounds": round_speedups(a, b),
                      "flop_reduction": costs_a[name]["flops"] / max(costs_b[name]["flops"], 1),
                      "param_reduction": (costs_a[name]["params"]
                                          / max(costs_b[name]["params"], 1))}
    return {"layers": rows, "net": {"original": original["net"], "compact": compact["net"],
                                    "speedup": ratio(original["net"], compact["net"]),
                                    "speedup_rounds": round_speedups(original["net"],
                                                                     compact["net"])}}


def _algo_counts(row):
    """``cudnn_forward`` of a timing row as text: "GEMM", or "FFT x3, GEMM x2"
    where the processes chose differently; "-" where none was logged."""
    counts = row.get("cudnn_forward")
    if not counts:
        return "-"
    if len(counts) == 1:
        return next(iter(counts))
    return ", ".join("%s x%d" % item for item in counts.items())


def format_table(result):
    """Plain-text table of :func:`compare`'s result."""
    lines = ["engine: %s%s%s%s, %s repeats" % (
        result.get("engine", "pycaffe"),
        " (GPU %s)" % result["gpu"] if result.get("gpu") is not None else " (CPU)",
        ", conv engine %s" % result["conv_engine"] if result.get("conv_engine") else "",
        ", cuDNN workspace %d MB%s" % (result["cudnn_workspace_mb"],
                                       ", algorithms timed" if result.get("cudnn_find") else "")
        if result.get("cudnn_workspace_mb") else "",
        result["repeats"])]
    if result.get("cpu_threads"):
        lines.append(cpu_threads_line(result["cpu_threads"]))
    if result.get("cpu_conv_engine"):
        lines.append(cpu_conv_line(result["cpu_conv_engine"]))
    if result.get("blas"):
        lines.extend(blas_lines(result["blas"]))
    for batch, data in result["batches"].items():
        algos = any("cudnn_forward" in r[w] for r in data["layers"].values()
                    for w in ("original", "compact"))
        lines.append("batch %s" % batch)
        lines.append("  %-10s %12s %12s %9s %9s %8s %10s %9s%s" % (
            "layer", "orig ms", "compact ms", "speedup", "FLOP red", "of FLOP", "per repeat",
            "param red", "  cuDNN forward algorithm, orig / compact" if algos else ""))
        for name, r in data["layers"].items():
            rounds = r.get("speedup_rounds")  # absent from results of older versions
            lines.append("  %-10s %12.3f %12.3f %8.2fx %8.2fx %8.2f %10s %8.2fx%s" % (
                name, r["original"]["median_ms"], r["compact"]["median_ms"], r["speedup"],
                r["flop_reduction"], r["speedup"] / r["flop_reduction"],
                "%.2f-%.2f" % (rounds["min"] / r["flop_reduction"],
                               rounds["max"] / r["flop_reduction"]) if rounds else "-",
                r["param_reduction"],
                "  %s / %s" % (_algo_counts(r["original"]), _algo_counts(r["compact"]))
                if algos else ""))
        n = data["net"]
        lines.append("  %-10s %12.3f %12.3f %8.2fx" % ("whole net", n["original"]["median_ms"],
                                                       n["compact"]["median_ms"], n["speedup"]))
    lines.append("of FLOP: speed-up (ratio of the medians) / FLOP reduction; per repeat: its "
                 "lowest and highest over the repeats, each one's nets timed back to back")
    return "\n".join(lines)

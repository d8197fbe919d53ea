"""Compaction ("thinning"): cut pruned filters and channels out of a Caffe net.

Plan, then apply (Distiller's thinning recipe). The plan is pure data: for
every *channel space* (the channels shared by a chain of blobs: a conv
output, the ReLU/Pooling/BatchNorm/Scale... that pass it on, the partners of
an Eltwise) the channel indices that survive. A channel goes when

* every layer that writes it has an all-zero filter for it. Then it is the
  same for every input: zero, or a constant that the filters' biases, a
  BatchNorm mean, a Scale/Bias offset or a depthwise bias on it make. Its
  readers take a constant into their biases (an InnerProduct, a Convolution
  without padding) or, a padded Convolution or a Deconvolution, through one
  constant channel kept for all of them, whose weights then sum theirs:
  exact, since padding (a stride) makes the sum differ from position to
  position as it does the kept channel's.
  Where no reader can take it (a value that differs from position to
  position, an LRN across channels mixing it with others) the channel stays;
  ``drop_constants`` cuts it all the same, and the reference then has those
  constants zeroed; or
* no layer reads it: all consumers' weights for it are zero (Convolution
  input channels; InnerProduct columns, a block of H*W per channel after a
  flatten).

Removing a filter can leave other channels unread, so the decision is
iterated to a fixed point. Eltwise partners share one space, so a channel of
a residual sum goes only where all partners agree. Concat composes the
spaces of its inputs with offsets; an Eltwise over a Concat's output, or a
Slice along channels, cuts a space into parts at offsets (``_split``), its
producers then writing each part from an offset of their outputs (a grouped
convolution's parts keep their channels: its groups balance only together).
A depthwise convolution (group = channels = outputs) passes its channels
through like a Scale with a kernel; other grouped convolutions keep the same
number of channels in every group. A
Deconvolution is planned as the Convolution it is the transpose of (its
weight, inputs x outputs / group, regrouped into filters), a spatial
Crop passes the channels of its first bottom, and so does a Reshape that
keeps each sample's channels in place (its ``shape`` rewritten). A
two-bottom Scale from axis 0 (a squeeze-and-excitation gate) multiplies a
space by a factor per sample and channel: the factor's producers are the
space's *gates*, cut with its channels, but a zero filter of theirs does not
make a channel go (the factor is sigmoid(0), say).
Softmax, losses, Accuracy, the other barriers and the net's outputs read
every channel at its place, so a space they read keeps all its channels,
zero or not. Elementwise layers that do not map 0 to 0 (Sigmoid, Exp,
Power, ...) pass the channels on but turn a zero channel into a constant,
which the readers take as above. Layer types the planner does not know stop
it with an error naming the layer.

The appliers then write a NetParameter with smaller ``num_output`` and a
caffemodel with sliced blobs; stock Caffe loads both. :func:`compact` runs
the masked net and the compacted one on the same inputs and refuses to
write above a tolerance; with ``drop_constants``, against the *reference*
(the masked net with the removed channels' biases, BatchNorm means and
Scale/Bias offsets zeroed), whose distance from the masked net it reports.
"""

import json
import os

import numpy as np

from caffe_admm import protoio
from caffe_admm.backend import caffe, caffe_pb2
from caffe_admm.timing import layer_costs

__all__ = ["CompactionError", "plan_compaction", "apply_plan", "reference_params",
           "compact_shapes", "check_equivalence", "compact", "dropped_constants",
           "dead_channel_constants", "surviving_weights", "compacted_costs", "layer_inputs",
           "conv_groups", "as_filters", "KNOWN_TYPES"]

# Layers with filters: weights (outputs, inputs / group, ...), a Deconvolution's
# (inputs, outputs / group, ...)
CONV_TYPES = ("Convolution", "Deconvolution")
# Layers that pass channels through unchanged and map 0 to 0.
PASS_THROUGH = {"ReLU", "PReLU", "TanH", "AbsVal", "ELU", "Swish", "Dropout", "Pooling", "LRN",
                "BatchNorm", "Scale", "Bias", "Split"}
ELEMENTWISE = protoio.ELEMENTWISE  # each value alone, 0 maybe to a constant
# Layers with one blob entry per channel, sliced with their channels.
PER_CHANNEL = {"BatchNorm": (0, 1), "Scale": (0, 1), "Bias": (0,), "PReLU": (0,)}
# Layers that read every channel of their bottoms and start new spaces.
BARRIERS = {"Softmax", "SoftmaxWithLoss", "Accuracy", "EuclideanLoss", "SigmoidCrossEntropyLoss",
            "HingeLoss", "InfogainLoss", "MultinomialLogisticLoss", "ContrastiveLoss", "ArgMax",
            "Reshape", "Slice", "Crop", "Tile", "MVN", "Embed", "Reduction", "SPP", "Im2col",
            "BatchReindex", "Filter", "LSTM", "LSTMUnit", "RNN", "Parameter", "HDF5Output",
            "Python"}
# Every type the planner follows (any other stops it, named)
KNOWN_TYPES = (PASS_THROUGH | ELEMENTWISE | BARRIERS | set(CONV_TYPES) | set(protoio.DATA_TYPES)
               | {"InnerProduct", "Eltwise", "Concat", "Flatten", "Silence"})


class CompactionError(ValueError):
    """The net cannot be compacted as asked; the message names the layer."""


class _Space:
    """A set of channels shared by several blobs (union-find node). A root
    that an Eltwise, a Slice or a gate over a Concat's parts cut apart is
    ``split`` into spaces at offsets, which stand for it from then on."""

    def __init__(self, size, fixed=False):
        self.size = int(size)
        self.parent = None
        self.split = None         # [(space, offset)] it was cut into
        self.fixed = fixed        # written by a data layer or a barrier, or read whole by
                                  # one (or as a net output): never shrinks
        self.zero_kept = []       # layers on it that map 0 to non-zero (Sigmoid...)
        self.producers = []       # (layer, group, offset) writing these channels, from
                                  # that output channel on (a Slice's part: > 0)
        self.readers = []         # (layer, kind, detail, offset, total) reading them
        self.per_channel = []     # (layer, offset): BatchNorm/Scale/Bias/PReLU on it, at
                                  # that offset of their blobs (after a Concat: > 0)
        self.lrn_across = []      # LRN ACROSS_CHANNELS layers on it
        self.gates = []           # (layer, group, offset) writing factors that a
                                  # two-bottom Scale multiplies these channels by (SE
                                  # blocks): cut with them, but a zero filter of theirs
                                  # keeps a channel
        self.factor_of = None     # that Scale, where these channels are such a factor
        self.grouped_part = False # a part of a grouped convolution's output: its groups
                                  # balance only with the other parts' (none is cut)

    def root(self):
        s = self
        while s.parent is not None:
            s = s.parent
        return s


class _Composite:
    """A blob made of parts (space, offset): a Concat's top, a Slice's."""

    def __init__(self, parts):
        self.parts = parts
        self.size = sum(p.size for p, _ in parts)


def _parts(space, offset=0):
    """The root spaces a blob's channels are, [(space, offset)] in order."""
    if isinstance(space, _Composite):
        return [p for part, o in space.parts for p in _parts(part, offset + o)]
    root = space.root()
    if root.split is not None:
        return [p for part, o in root.split for p in _parts(part, offset + o)]
    return [(root, offset)]


def _space_of(parts):
    """A blob's space from its parts: the root itself where there is one."""
    return parts[0][0] if len(parts) == 1 and parts[0][1] == 0 else _Composite(parts)


def _split(space, cuts, where):
    """Cut root ``space`` at the channel offsets ``cuts`` into new roots: each
    takes what was said of its channels, at its offset."""
    bounds = [0] + sorted(cuts) + [space.size]
    grouped = space.grouped_part or any(g > 1 for _, g, _ in _writers(space))
    space.split = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        part = _Space(hi - lo, space.fixed)
        part.zero_kept = list(space.zero_kept)
        part.lrn_across = list(space.lrn_across)
        part.factor_of = space.factor_of
        part.grouped_part = grouped
        part.producers = [(p, g, o + lo) for p, g, o in space.producers]
        part.gates = [(p, g, o + lo) for p, g, o in space.gates]
        part.readers = [(r, k, d, o + lo, t) for r, k, d, o, t in space.readers]
        part.per_channel = [(n, o + lo) for n, o in space.per_channel]
        space.split.append((part, lo))


def _aligned(a, b, where):
    """The parts of blobs ``a`` and ``b`` (spaces or Composites of the same
    size), cut until they pair up channel for channel."""
    if a.size != b.size:
        raise CompactionError("layer %r joins blobs of %d and %d channels" % (where, a.size, b.size))
    while True:
        pa, pb = _parts(a), _parts(b)
        cuts = {o for _, o in pa} | {o for _, o in pb}
        for part, offset in pa + pb:
            inner = [c - offset for c in cuts if offset < c < offset + part.size]
            if inner:
                _split(part, inner, where)
                break
        else:
            return list(zip(pa, pb))


def _factor_of(space):
    """The two-bottom Scale whose factor ``space`` (a blob's) is, or None."""
    if isinstance(space, _Composite):
        return next((g for g in (_factor_of(p) for p, _ in space.parts) if g), None)
    while True:
        if space.factor_of:
            return space.factor_of
        if space.parent is None:
            return next((g for g in (_factor_of(p) for p, _ in space.split or []) if g), None)
        space = space.parent


def _union(a, b, where):
    """Join blobs ``a`` and ``b`` channel for channel (Eltwise partners)."""
    for s in (a, b):
        if _factor_of(s):
            _factor_read(_factor_of(s), where)
    for (x, _), (y, _) in _aligned(a, b, where):
        x, y = x.root(), y.root()  # an earlier pair may have joined them
        if x is y:
            continue
        y.parent = x
        x.fixed = x.fixed or y.fixed
        x.grouped_part = x.grouped_part or y.grouped_part
        for field in ("producers", "readers", "per_channel", "lrn_across", "zero_kept", "gates"):
            getattr(x, field).extend(getattr(y, field))


def _gate(space, factor, where):
    """Join ``factor`` to ``space`` channel for channel (a two-bottom Scale):
    the factor's producers are ``space``'s gates, which go with its
    channels; what makes the factor non-zero (a Sigmoid) does not keep them."""
    if _factor_of(factor):
        _factor_read(_factor_of(factor), where)
    roots = {id(p) for p, _ in _parts(space)}
    readers = sorted(set(r[0] for p, _ in _parts(factor) for r in p.readers))
    if any(id(p) in roots for p, _ in _parts(factor)):
        raise CompactionError("layer %r multiplies a blob by itself" % where)
    if readers:
        _factor_read(where, ", ".join(readers))
    for p, _ in _parts(factor):
        p.factor_of = where
    for (x, _), (y, _) in _aligned(space, factor, where):
        x, y = x.root(), y.root()
        y.parent = x
        x.fixed = x.fixed or y.fixed
        x.grouped_part = x.grouped_part or y.grouped_part
        x.gates += y.producers + y.gates
        x.per_channel += y.per_channel
        x.lrn_across += y.lrn_across


def _factor_read(gate, reader):
    raise CompactionError("layer %r: its factor is read by %s as well (supported: a factor "
                          "read only by the Scale)" % (gate, reader.strip("<>")))


def _writers(space):
    """Every layer writing ``space``'s channels, (layer, group, offset):
    producers and gates."""
    return space.producers + space.gates


def _layer_options(net_param):
    """Per layer name: whether an LRN or an MVN works across channels; the
    element-wise layers that map 0 to 0 by their parameters (a set); a
    Concat's, an InnerProduct's, a Crop's, a Tile's, a Slice's or a
    two-bottom Scale's or Bias's axis."""
    lrn = {l.name: l.lrn_param.norm_region == caffe_pb2.LRNParameter.ACROSS_CHANNELS
           for l in net_param.layer if l.type == "LRN"}
    mvn = {l.name: l.mvn_param.across_channels for l in net_param.layer if l.type == "MVN"}
    zero_to_zero = {l.name for l in net_param.layer if protoio.maps_zero_to_zero(l)}
    axis = {}
    for l in net_param.layer:
        if l.type == "Concat":
            p = l.concat_param
            axis[l.name] = p.axis if p.HasField("axis") else (
                p.concat_dim if p.HasField("concat_dim") else 1)
        elif l.type == "InnerProduct":
            if l.inner_product_param.transpose:
                raise CompactionError(
                    "layer %r: InnerProduct with transpose: true (weights stored inputs x "
                    "outputs) is not supported" % l.name)
            axis[l.name] = l.inner_product_param.axis
        elif l.type == "Crop":
            axis[l.name] = l.crop_param.axis
        elif l.type == "Tile":
            axis[l.name] = l.tile_param.axis
        elif l.type == "Slice":
            p = l.slice_param
            axis[l.name] = p.axis if p.HasField("axis") else (
                p.slice_dim if p.HasField("slice_dim") else 1)
        elif l.type == "Scale" and len(l.bottom) > 1:
            if l.scale_param.bias_term:
                raise CompactionError("layer %r: Scale with two bottoms and bias_term: true is "
                                      "not supported" % l.name)
            axis[l.name] = l.scale_param.axis
        elif l.type == "Bias" and len(l.bottom) > 1:
            axis[l.name] = l.bias_param.axis
    return lrn, mvn, zero_to_zero, axis


def _build_graph(net, net_param):
    """Channel spaces of a live TEST-phase ``caffe.Net``."""
    lrn_across, mvn_across, zero_to_zero, layer_axis = _layer_options(net_param)
    blob_space = {}   # blob -> (_Space or _Composite, block)
    layers = []
    for name, layer in zip(net._layer_names, net.layers):
        kind = layer.type
        bottoms, tops = list(net.bottom_names[name]), list(net.top_names[name])
        info = {"name": name, "type": kind, "bottoms": bottoms, "tops": tops}
        layers.append(info)

        def new_space(blob, fixed=False, producer=None, group=1):
            shape = net.blobs[blob].data.shape
            space = _Space(shape[1] if len(shape) > 1 else 1, fixed)
            if producer:
                space.producers.append((producer, group, 0))
            blob_space[blob] = (space, 1)
            return space

        if kind in protoio.DATA_TYPES:  # a Python data layer: a barrier without bottoms
            for t in tops:
                new_space(t, fixed=True)
        elif kind in CONV_TYPES:
            # Caffe's weight is (F, C / group, kh, kw); a Deconvolution's (C, F / group, kh, kw)
            channels = net.blobs[bottoms[0]].data.shape[1]
            group = _group(net, name)
            if 1 < group == channels == net.blobs[tops[0]].data.shape[1]:
                # depthwise (MobileNet): channel c in, channel c out, a filter and bias per
                # channel; it passes the channels through like a Scale with a kernel
                _per_channel(blob_space[bottoms[0]][0], name)
                for t in tops:
                    blob_space[t] = blob_space[bottoms[0]]
            else:
                _read(blob_space, bottoms[0], (name, "conv", group))
                new_space(tops[0], producer=name, group=group)
        elif (kind in ("Crop", "Tile")
              and layer_axis.get(name, 2 if kind == "Crop" else 1)
              % net.blobs[tops[0]].data.ndim >= 2):
            # spatial: the channels of the first bottom pass (a Crop's second gives the size)
            blob_space[tops[0]] = blob_space[bottoms[0]]
        elif kind == "InnerProduct":
            shape = net.blobs[bottoms[0]].data.shape
            space, block = blob_space[bottoms[0]]
            block = block * int(np.prod(shape[2:])) if len(shape) > 2 else block
            w = layer.blobs[0].data
            axis = layer_axis.get(name, 1)
            if axis % len(shape) != 1 or w.shape[1] != space.size * block:
                raise CompactionError("layer %r: InnerProduct with axis %d is not supported "
                                      "(only axis 1: each sample's whole input)" % (name, axis))
            _read(blob_space, bottoms[0], (name, "ip", block))
            new_space(tops[0], producer=name)
        elif kind in ("Scale", "Bias") and len(bottoms) > 1:
            # x * s or x + b, s or b (N, C) or (N, C, H, W) from axis 0: a squeeze-and-
            # excitation gate (SE block), a per-sample shift
            space, block = blob_space[bottoms[0]]
            factor, factor_block = blob_space[bottoms[1]]
            shape = net.blobs[bottoms[1]].data.shape
            if layer_axis.get(name, 1) % net.blobs[bottoms[0]].data.ndim != 0 or len(shape) < 2:
                raise CompactionError(
                    "layer %r: %s with two bottoms is supported from axis 0 only (a factor "
                    "per sample and channel, as in SE blocks), not axis %d" % (
                        name, kind, layer_axis.get(name, 1)))
            for b, k in zip(bottoms, (block, factor_block)):
                if k != 1:
                    raise CompactionError("layer %r: %s of %r, a flattened blob, is not "
                                          "supported" % (name, kind, b))
            (_gate if kind == "Scale" else _union)(space, factor, name)
            for t in tops:
                blob_space[t] = (space, 1)
        elif (kind in PASS_THROUGH or kind == "MVN" and not mvn_across.get(name, True)
              or name in zero_to_zero):
            space, block = blob_space[bottoms[0]]
            if kind in PER_CHANNEL:
                _per_channel(space, name)
            for part, _ in _parts(space):
                if kind == "LRN" and lrn_across.get(name, True):
                    part.lrn_across.append(name)
            for t in tops:
                blob_space[t] = (space, block)
        elif kind in ELEMENTWISE:
            space, block = blob_space[bottoms[0]]
            for part, _ in _parts(space):
                part.zero_kept.append(name)
            for t in tops:
                blob_space[t] = (space, block)
        elif kind == "Silence":
            continue  # discards its bottoms: reads nothing
        elif kind == "Reshape" and (widen := _reshape_block(net.blobs[bottoms[0]].data.shape,
                                                             net.blobs[tops[0]].data.shape)):
            # keeps each sample's channels in place: (N, C, ...) to (N, C, ...), or
            # (N, C, H, W) to (N, C * H * W) as a Flatten
            space, block = blob_space[bottoms[0]]
            blob_space[tops[0]] = (space, block * widen)
            info["reshape"] = (space, net.blobs[bottoms[0]].data.ndim)
        elif kind == "Flatten":
            space, block = blob_space[bottoms[0]]
            shape = net.blobs[bottoms[0]].data.shape
            blob_space[tops[0]] = (space, block * int(np.prod(shape[2:])))
        elif kind == "Eltwise":
            for b in bottoms[1:]:
                _union(blob_space[bottoms[0]][0], blob_space[b][0], name)
            blob_space[tops[0]] = blob_space[bottoms[0]]
        elif (kind == "Slice" and layer_axis.get(name, 1) % net.blobs[bottoms[0]].data.ndim == 1
              and blob_space[bottoms[0]][1] == 1):
            # channels [a, b) to each top: the parts of the bottom cut at the slice points
            space = blob_space[bottoms[0]][0]
            if _factor_of(space):
                _factor_read(_factor_of(space), name)
            bounds = np.cumsum([0] + [net.blobs[t].data.shape[1] for t in tops]).tolist()
            _aligned(space, _Composite([(_Space(hi - lo), lo) for lo, hi in
                                        zip(bounds[:-1], bounds[1:])]), name)
            info["slice"] = []
            for t, lo, hi in zip(tops, bounds[:-1], bounds[1:]):
                blob_space[t] = (_space_of([(p, o - lo) for p, o in _parts(space)
                                            if lo <= o < hi]), 1)
                info["slice"].append(blob_space[t][0])
        elif kind == "Concat":
            if net.blobs[tops[0]].data.ndim < 2 or layer_axis.get(name, 1) != 1:
                raise CompactionError("layer %r: Concat along an axis other than channels is "
                                      "not supported" % name)
            parts, offset = [], 0
            for b in bottoms:
                space, block = blob_space[b]
                if _factor_of(space):
                    _factor_read(_factor_of(space), name)
                if block != 1:
                    raise CompactionError("layer %r: Concat of %r, a flattened blob, is not "
                                          "supported" % (name, b))
                # a Concat of Concats (DenseNet) lists the inner parts
                parts += [(part, offset + inner) for part, inner in _parts(space)]
                offset += space.size
            blob_space[tops[0]] = (_Composite(parts), 1)
        elif kind in BARRIERS:
            for b in bottoms:
                _read(blob_space, b, (name, "all", None))
            for t in tops:
                new_space(t, fixed=True)
        else:
            raise CompactionError("layer %r: type %s is not supported by compaction (supported: "
                                  "Convolution, Deconvolution, InnerProduct, Eltwise, Concat, "
                                  "Flatten, Crop, Silence, MVN, %s; read whole: %s)"
                                  % (name, kind, ", ".join(sorted(PASS_THROUGH | ELEMENTWISE)),
                                     ", ".join(sorted(BARRIERS))))
    for blob in net.outputs:
        _read(blob_space, blob, ("<output %s>" % blob, "all", None))
    return blob_space, layers


def _reshape_block(bottom, top):
    """How a Reshape from shape ``bottom`` to ``top`` widens a channel's block
    along axis 1: 1 where it keeps the first two axes, H*W... where it
    flattens each sample; 0 where it moves channels (a barrier)."""
    if len(bottom) < 2 or len(top) < 2 or bottom[0] != top[0]:
        return 0
    if bottom[1] == top[1]:
        return 1
    inner = int(np.prod(bottom[2:]))
    return inner if len(top) == 2 and top[1] == bottom[1] * inner else 0


def _reshape_dims(layer, entry):
    """Rewrite a Reshape's ``shape`` for the ``kept`` of its bottom's
    ``channels``: the dimension that becomes the top's axis 1, where it is
    given (not 0, copied, or -1, inferred)."""
    p = layer.reshape_param
    start = p.axis if p.axis >= 0 else entry["bottom_axes"] + p.axis + 1  # Caffe's rule
    index = 1 - start
    if 0 <= index < len(p.shape.dim) and p.shape.dim[index] > 0:
        p.shape.dim[index] = p.shape.dim[index] * entry["kept"] // entry["channels"]


def _per_channel(space, name):
    """Layer ``name`` has a blob entry per channel of ``space`` (parts at offsets)."""
    for part, offset in _parts(space):
        part.per_channel.append((name, offset))


def _read(blob_space, blob, reader):
    space, block = blob_space[blob]
    if _factor_of(space):
        _factor_read(_factor_of(space), reader[0])
    for part, offset in _parts(space):
        part.readers.append((reader[0], reader[1], reader[2], offset, space.size))
        if reader[1] == "all":  # every channel at its place: none may go
            part.fixed = True


def _keep_one(cut, removed, group):
    """``cut`` with a channel left in every group it would empty (the first not
    ``removed`` yet): Caffe aborts on a layer with no outputs or inputs.
    ``group``: of the grouped convolutions on the space (None: they differ,
    and then nothing is cut once a group would empty)."""
    n = cut.size // (group or 1)
    cut = cut.copy()
    for g in range(group or 1):
        segment = slice(g * n, (g + 1) * n)
        if cut[segment].all():
            if group is None:
                return removed
            cut[g * n + np.flatnonzero(~removed[segment])[0]] = False
    return cut


def _balance(removable, groups):
    """Keep removals equal across ``groups`` equal slices (lowest indices first)."""
    if groups <= 1:
        return removable
    n = removable.size // groups
    per = [np.flatnonzero(removable[i * n:(i + 1) * n]) for i in range(groups)]
    k = min(len(p) for p in per)
    out = np.zeros_like(removable)
    for i, p in enumerate(per):
        out[i * n + p[:k]] = True
    return out


def plan_compaction(net, net_param, drop_constants=False, inputs=None):
    """Compute the compaction plan of a live TEST-phase net with its weights.

    ``net_param`` is the net's prototxt (for LRN regions, Concat and Crop
    axes, and convolutions' padding). Without ``inputs``, a zero filter's channel goes
    only when nothing makes it non-zero: its bias, and the BatchNorm mean,
    Scale/Bias offset or depthwise bias of its channel, are zero too, and no
    Sigmoid-like layer is on it. With ``inputs`` (:func:`layer_inputs`: what
    each (De)Convolution and InnerProduct reads in the masked net), such a
    channel goes too: its value is the same for every input, and its readers
    take it (``fold``: into a bias per output, or, a padded Convolution or a
    Deconvolution, through a constant channel kept for them; see the module
    docstring). Not across an
    LRN that mixes channels. ``drop_constants`` cuts the zero filters that
    stay all the same, and the reference (:func:`reference_params`) then has
    their constants zeroed.

    Returns
    -------
    plan : dict
        ``layers``: per Convolution/InnerProduct/per-channel layer, the kept
        output channels (``out``), kept input channels (``in``), the removed
        channels whose value later layers take (``folded``) and, for their
        readers, what they take (``fold``: ``inputs``, and ``bias``, or
        ``carriers`` with ``carrier_weights``);
        ``spaces``: per channel space, its blobs' size and kept channels;
        ``reshapes``: per Reshape that keeps channels in place, how many of
        its bottom's ``channels`` are ``kept`` (its ``shape`` is rewritten);
        ``slices``: per Slice along channels, the channels kept in each top
        (its ``slice_point`` is rewritten);
        ``warnings``: e.g. LRN across channels over a shrunk space;
        ``notes``: the folds, a line per reader.
    """
    blob_space, layers = _build_graph(net, net_param)
    types = {info["name"]: info["type"] for info in layers}
    filters = {name: as_filters(net.params[name][0].data, types[name], _group(net, name))
               if types[name] in CONV_TYPES else net.params[name][0].data
               for name in net.params if types[name] in CONV_TYPES + ("InnerProduct",)}
    weights = {name: w.copy() for name, w in filters.items()}
    spaces = _roots(blob_space)
    removed = {id(s): np.zeros(s.size, bool) for s in spaces}
    params = {name: [b.data for b in blobs] for name, blobs in net.params.items()}
    padded = _padded(net_param)
    # channels a zero filter may not leave: those a constant makes non-zero,
    # unless its readers can take the constant
    stays = {}
    for s in spaces:
        if inputs is not None and not s.lrn_across:
            stays[id(s)] = ~_foldable(s, inputs, padded)
        elif s.zero_kept:
            stays[id(s)] = np.ones(s.size, bool)
        else:
            stays[id(s)] = _constant_channels(s, params, types)

    while True:
        changed = False
        for s in spaces:
            if s.fixed:
                continue
            zero = _zero_channels(s, weights)
            if not drop_constants:
                zero &= ~stays[id(s)]
            unread = np.ones(s.size, bool)
            for reader, kind, detail, offset, total in s.readers:
                unread &= ~_reads(kind, detail, weights.get(reader), offset, s.size, total)
            cut = zero | unread
            for producer, group, offset in _writers(s):
                cut = _balance_part(cut, group, offset, weights[producer].shape[0])
            for reader, kind, detail, offset, total in s.readers:
                if kind == "conv":
                    cut = _balance_part(cut, detail, offset, total)
            cut = _keep_one(cut | removed[id(s)], removed[id(s)], _space_group(s))
            if np.any(cut & ~removed[id(s)]):
                removed[id(s)] |= cut
                changed = True
                for producer, _, offset in _writers(s):
                    weights[producer][offset + np.flatnonzero(removed[id(s)])] = 0
                for reader, kind, detail, offset, total in s.readers:
                    _zero_reader(weights.get(reader), kind, detail, offset, removed[id(s)], total)
        if not changed:
            break

    folds, carriers = {}, {id(s): np.zeros(s.size, bool) for s in spaces}
    if inputs is not None:
        # zero filters only: what a live filter writes the same on these inputs
        # (a saturated Clip, say) may differ on others
        foldable = {id(s): ~stays[id(s)] & _zero_channels(s, weights) for s in spaces}
        carriers = _carriers(spaces, removed, foldable, inputs, filters, padded)
        for s in spaces:
            removed[id(s)] &= ~carriers[id(s)]
        folds = _folds(spaces, removed, foldable, inputs, filters, padded, types)
    plan = {"layers": {}, "spaces": [], "reshapes": {}, "slices": {}, "warnings": [],
            "notes": []}
    blobs_of = {}  # a space's blobs: those that are it whole
    for blob, (space, _) in blob_space.items():
        parts = _parts(space)
        if len(parts) == 1 and parts[0][1] == 0:
            blobs_of.setdefault(id(parts[0][0]), []).append(blob)
    for s in spaces:
        keep = np.flatnonzero(~removed[id(s)]).tolist()
        # the removed channels whose value the readers take: they keep their constants
        taken = np.zeros(s.size, bool)
        for reader, kind, detail, offset, total in s.readers:
            for c in folds.get(reader, {}).get("inputs", []):
                if offset <= c < offset + s.size:
                    taken[c - offset] = True
        plan["spaces"].append({"blobs": sorted(blobs_of.get(id(s), [])), "channels": s.size,
                               "kept": keep})
        for name, offset in ([(p, o) for p, _, o in _writers(s)]
                             + [(n, o) for n, o in s.per_channel]):
            entry = plan["layers"].setdefault(name, {})
            if (name, offset) in s.per_channel and types[name] in CONV_TYPES:
                entry["depthwise"] = True
            entry.setdefault("out_parts", []).append((offset, keep))
            entry.setdefault("folded_parts", []).append((offset, np.flatnonzero(taken)))
        for reader, kind, detail, offset, total in s.readers:
            if kind in ("conv", "ip"):
                entry = plan["layers"].setdefault(reader, {})
                entry.setdefault("in_parts", []).append((offset, s.size, keep, detail))
        kept_zero = _zero_channels(s, weights) & ~removed[id(s)] & ~carriers[id(s)]
        if kept_zero.any():
            constant = np.zeros(s.size, bool) if drop_constants else stays[id(s)]
            why = (_unfoldable(s, inputs, padded, kept_zero & constant)
                   if inputs is not None else None)
            plan["warnings"] += _kept_zero_warnings(s, kept_zero, constant, params, types, why)
        if s.lrn_across and removed[id(s)].any():
            plan["warnings"].append(
                "LRN across channels (%s) reads a space from which %d channels are removed: "
                "its normalisation changes; the equivalence check measures the deviation"
                % (", ".join(s.lrn_across), int(removed[id(s)].sum())))
    for name, entry in plan["layers"].items():
        parts = sorted(entry.pop("out_parts", []))
        if parts:  # its channels, part by part (after a Concat, a Slice)
            entry["out"] = [offset + c for offset, keep in parts for c in keep]
        folded = [int(offset + c) for offset, cs in entry.pop("folded_parts", []) for c in cs]
        if folded:
            entry["folded"] = sorted(folded)
        parts = sorted(entry.pop("in_parts", []))
        if parts:
            entry["in"] = [offset + c for offset, _, keep, _ in parts for c in keep]
            entry["in_block"] = parts[0][3] if types[name] == "InnerProduct" else 1
    for info in layers:
        if "reshape" in info:
            space, axes = info["reshape"]
            plan["reshapes"][info["name"]] = {
                "kept": sum(int(np.count_nonzero(~removed[id(p)])) for p, _ in _parts(space)),
                "channels": space.size, "bottom_axes": axes}
        if "slice" in info:
            plan["slices"][info["name"]] = [
                sum(int(np.count_nonzero(~removed[id(p)])) for p, _ in _parts(top))
                for top in info["slice"]]
    for reader, fold in folds.items():
        plan["layers"][reader]["fold"] = fold
        n = len(fold["inputs"])
        plan["notes"].append(
            "%s takes the constants of %d removed input channel%s %s" % (
                reader, n, "" if n == 1 else "s",
                "into its biases" if "bias" in fold else
                "through input channel%s %s, kept for them (%s spreads a constant unevenly "
                "over its outputs)" % ("" if len(fold["carriers"]) == 1 else "s",
                                      ", ".join(map(str, fold["carriers"])),
                                      "its stride" if types[reader] == "Deconvolution"
                                      else "its padding")))
    return plan


def layer_inputs(net, passes=2, seed=0):
    """What each (De)Convolution and InnerProduct layer reads, over ``passes`` forward passes.

    Input nets get seeded random normal inputs; Data nets read their next
    batches.

    Returns
    -------
    dict[str, (ndarray, ndarray)]
        Per layer: its bottom in the first sample of the first pass, flat,
        shape (C * H * W,), and where every sample of every pass had that
        same value, up to float32 rounding (bool, same shape).
    """
    rng = np.random.default_rng(seed)
    names = list(net._layer_names)
    readers = {i: name for i, (name, layer) in enumerate(zip(names, net.layers))
               if layer.type in CONV_TYPES + ("InnerProduct",)}
    first, same = {}, {}
    for p in range(passes):
        for name in net.inputs:
            blob = net.blobs[name].data
            blob[...] = rng.standard_normal(blob.shape)
        for i in range(len(names)):
            if i in readers:
                name = readers[i]
                x = net.blobs[net.bottom_names[name][0]].data
                x = x.reshape(x.shape[0], -1)
                if p == 0:
                    first[name] = x[0].copy()
                    same[name] = np.ones(x.shape[1], bool)
                same[name] &= np.all(_close(x, first[name]), axis=0)
            net._forward(i, i)
    return {name: (first[name], same[name]) for name in first}


def _at_reader(inputs, reader, index, offset, size, total):
    """``inputs[reader][index]`` over a space's channels: shape (size, positions)."""
    return inputs[reader][index].reshape(total, -1)[offset:offset + size]


def _close(a, b):
    """Equal up to float32 rounding (an average pooling's sums, a GEMM's order)."""
    return np.abs(a - b) <= 1e-5 * np.maximum(np.abs(a), np.abs(b))


def _space_group(space):
    """The ``group`` of the grouped convolutions writing or reading ``space``:
    1 where there are none, None where they differ or where ``space`` is a
    part of a grouped convolution's output."""
    if space.grouped_part:
        return None
    groups = ({g for _, g, _ in _writers(space) if g > 1}
              | {d for _, kind, d, _, _ in space.readers if kind == "conv" and d > 1})
    return 1 if not groups else (groups.pop() if len(groups) == 1 else None)


def _fold_blockers(space, inputs, padded):
    """What keeps the conv/fc readers of ``space`` from taking a channel's
    constant: a reader that sees it change with the input, a Convolution
    that sees it differ from position to position, a padded one (which
    sums it differently at the borders, so reads it through a kept carrier
    channel, one per group) where the grouped convolutions on the space do
    not share one ``group`` or do not read the whole space.

    Returns
    -------
    blockers : list of (reader, why, ndarray of bool, shape (space.size,))
        The channels each reason blocks.
    zero : ndarray of bool, shape (space.size,)
        The channels every reader sees as zero: those go in any case.
    """
    zero = np.ones(space.size, bool)
    blockers = []
    group = _space_group(space)
    for reader, kind, detail, offset, total in space.readers:
        if kind not in ("conv", "ip"):
            continue
        same = np.all(_at_reader(inputs, reader, 1, offset, space.size, total), axis=1)
        values = _at_reader(inputs, reader, 0, offset, space.size, total)
        zero &= same & np.all(values == 0, axis=1)
        blockers.append((reader, "sees them change with the input", ~same))
        if kind != "conv":
            continue
        blockers.append((reader, "sees them differ from position to position",
                         same & ~np.all(_close(values, values[:, :1]), axis=1)))
        if padded.get(reader) and group != 1 and (group is None or offset
                                                  or total != space.size):
            grouped = sorted(set([p for p, g, _ in _writers(space) if g > 1] + [
                r for r, k, d, _, _ in space.readers if k == "conv" and d > 1]))
            blockers.append((reader, "spreads them unevenly over its outputs, and they are "
                             "channels of the grouped convolutions %s, %s" % (
                                 ", ".join(grouped), "of different groups" if group is None
                                 else "read after a Concat"), np.ones(space.size, bool)))
    return blockers, zero


def _foldable(space, inputs, padded):
    """Channels of ``space`` that may go though not zero: no reader is kept
    from taking their constant (:func:`_fold_blockers`), or every reader
    sees them as zero."""
    blockers, zero = _fold_blockers(space, inputs, padded)
    blocked = np.zeros(space.size, bool)
    for _, _, channels in blockers:
        blocked |= channels
    return ~blocked | zero


def _unfoldable(space, inputs, padded, channels):
    """Why no reader could take the constants of ``channels`` (see :func:`_foldable`)."""
    if space.lrn_across:
        return "LRN across channels (%s) mixes them into the other channels" % (
            ", ".join(space.lrn_across))
    blockers, _ = _fold_blockers(space, inputs, padded)
    why = ["%s %s" % (reader, text) for reader, text, blocked in blockers
           if np.any(blocked & channels)]
    return "; ".join(dict.fromkeys(why)) or "no reader takes them"  # a part read twice: once


def _padded(net_param):
    """Per Convolution: whether a constant input reaches its outputs unevenly:
    it pads its input (``pad``, ``pad_h``, ``pad_w``); a Deconvolution always
    does (its stride interleaves the taps)."""
    return {l.name: l.type == "Deconvolution" or any(l.convolution_param.pad)
            or bool(l.convolution_param.pad_h or l.convolution_param.pad_w)
            for l in net_param.layer if l.type in CONV_TYPES}


def _read_by(kind, detail, w, offset, size, total, values):
    """Channels of a space (over [offset, offset + size) of the reader's input)
    whose value ``reader`` sees non-zero and weighs non-zero."""
    return _reads(kind, detail, w, offset, size, total) & np.any(values != 0, axis=1)


def _reader_parts(spaces):
    """Per conv/fc reader: the parts of its input, (space, kind, detail, offset, total)."""
    parts = {}
    for s in spaces:
        for reader, kind, detail, offset, total in s.readers:
            if kind in ("conv", "ip"):
                parts.setdefault(reader, []).append((s, kind, detail, offset, total))
    return parts


def _carriers(spaces, removed, foldable, inputs, filters, padded):
    """Per space, the removed channels kept as carriers: for each padded
    Convolution (or Deconvolution) reading removed constants, in each of its
    groups, a constant
    channel it reads, its weights for it then standing for all of them
    (exact: all are the same at every position). A constant channel that
    stays, or a carrier another reader chose, serves; else the removed one
    the reader sees largest is kept. Where grouped convolutions write or
    read the space, every group of it keeps as many."""
    carriers = {id(s): np.zeros(s.size, bool) for s in spaces}
    for reader, parts in _reader_parts(spaces).items():
        if not padded.get(reader):
            continue
        group = parts[0][2]
        per_group = parts[0][4] // group
        candidates = [[] for _ in range(group)]
        served = [False] * group
        for s, _, _, offset, total in parts:
            values = _at_reader(inputs, reader, 0, offset, s.size, total)
            read = _read_by("conv", group, filters[reader], offset, s.size, total, values)
            kept = ~removed[id(s)] | carriers[id(s)]  # a kept constant serves as well
            for c in np.flatnonzero(read & kept & foldable[id(s)]):
                served[(offset + c) // per_group] = True
            for c in np.flatnonzero(read & removed[id(s)] & foldable[id(s)]):
                candidates[(offset + c) // per_group].append(
                    (abs(float(values[c].mean())), -(offset + int(c)), int(c), s))
        for g in range(group):
            if candidates[g] and not served[g]:
                _, _, c, s = max(candidates[g], key=lambda t: t[:2])
                carriers[id(s)][c] = True
    for s in spaces:  # keep the groups balanced
        group = _space_group(s)
        if group in (None, 1) or not carriers[id(s)].any():
            continue
        n = s.size // group
        most = max(int(carriers[id(s)][g * n:(g + 1) * n].sum()) for g in range(group))
        for g in range(group):
            segment = slice(g * n, (g + 1) * n)
            more = most - int(carriers[id(s)][segment].sum())
            spare = np.flatnonzero(removed[id(s)][segment] & ~carriers[id(s)][segment])
            if more > spare.size:
                raise CompactionError("internal: group %d of %s has no channel to keep"
                                      % (g, ", ".join(p for p, _, _ in s.producers)))
            carriers[id(s)][g * n + spare[:more]] = True
    return carriers


def _folds(spaces, removed, foldable, inputs, filters, padded, types):
    """Per reader of removed channels it can take: ``{"inputs": [its input
    channels], "bias": [per output]}``, or for a padded Convolution or a
    Deconvolution ``{"inputs", "carriers": [an input channel per group],
    "carrier_weights": [per carrier, shape (outputs of its group, kh, kw),
    flat]}`` (a Deconvolution's: its weight's row for the carrier)."""
    folds = {}
    for reader, reader_parts in _reader_parts(spaces).items():
        channels, usable = [], []
        for s, kind, detail, offset, total in reader_parts:
            values = _at_reader(inputs, reader, 0, offset, s.size, total)
            read = _read_by(kind, detail, filters[reader], offset, s.size, total, values)
            channels += (offset + np.flatnonzero(read & removed[id(s)] & foldable[id(s)])).tolist()
            usable += (offset + np.flatnonzero(read & ~removed[id(s)] & foldable[id(s)])).tolist()
        if not channels:
            continue
        channels = sorted(channels)
        total = reader_parts[0][4]
        x = inputs[reader][0].astype(np.float64).reshape(total, -1)
        if types[reader] == "InnerProduct":  # only the columns taken, in float64
            block = reader_parts[0][2]
            cols = (np.asarray(channels)[:, None] * block + np.arange(block)).ravel()
            w = filters[reader][:, cols].astype(np.float64)
            folds[reader] = {"inputs": channels, "bias": (w @ x[channels].ravel()).tolist()}
            continue
        w = filters[reader].astype(np.float64)
        value = x.mean(axis=1)  # the same at every position (_foldable)
        group = total // w.shape[1]
        fg, cg = w.shape[0] // group, w.shape[1]
        if not padded.get(reader):  # every position sums all the taps
            bias = np.zeros(w.shape[0])
            for c in channels:
                g = c // cg
                bias[g * fg:(g + 1) * fg] += value[c] * w[g * fg:(g + 1) * fg, c % cg].sum(axis=(1, 2))
            folds[reader] = {"inputs": channels, "bias": bias.tolist()}
            continue
        fold = {"inputs": channels, "carriers": [], "carrier_weights": []}
        for g in range(group):
            mine = [c for c in channels if c // cg == g]
            if not mine:
                continue
            carrier = min((c for c in usable if c // cg == g), default=None)
            if carrier is None:
                raise CompactionError("internal: %s has no carrier for its constant inputs "
                                      "in group %d" % (reader, g))
            rows = w[g * fg:(g + 1) * fg]
            k = value[carrier] * rows[:, carrier % cg] + np.einsum(
                "c,fcij->fij", value[mine], rows[:, [c % cg for c in mine]])
            fold["carriers"].append(carrier)
            fold["carrier_weights"].append((k / value[carrier]).ravel().tolist())
        folds[reader] = fold
    return folds


# where a layer adds a per-channel constant: (blob index, what it is)
_CONSTANTS = {"Convolution": (1, "bias"), "Deconvolution": (1, "bias"),
              "InnerProduct": (1, "bias"), "BatchNorm": (0, "mean"), "Scale": (1, "bias"),
              "Bias": (0, "bias")}


def _constant_blobs(space, params, types, producers=True):
    """(layer, blob index, offset, what, values over ``space``'s channels) of
    every per-channel constant on ``space``: its producers' biases (unless
    ``producers`` is False), the BatchNorm means (as Caffe scales them),
    Scale/Bias offsets and depthwise biases on it."""
    out = []
    for name, offset in [(p, o) for p, _, o in space.producers if producers] + space.per_channel:
        index, what = _CONSTANTS.get(types[name], (None, None))
        blobs = params[name]
        if index is None or index >= len(blobs) or blobs[index].ndim != 1:
            continue
        values = blobs[index][offset:offset + space.size]
        if types[name] == "BatchNorm" and blobs[2].size and blobs[2].ravel()[0] == 0:
            values = values * 0  # Caffe reads a zero scale factor as no mean at all
        out.append((name, index, offset, what, values))
    return out


def _constant_channels(space, params, types):
    """Channels of ``space`` that some layer's constant makes non-zero."""
    carries = np.zeros(space.size, bool)
    for *_, values in _constant_blobs(space, params, types):
        carries |= values != 0
    return carries


def _roots(blob_space):
    """Every channel space of the graph once (the Concat parts included)."""
    spaces = {}
    for space, _ in blob_space.values():
        for root, _ in _parts(space):
            spaces.setdefault(id(root), root)
    return list(spaces.values())


def dead_channel_constants(net, net_param, masks):
    """Where the channels of fully pruned filters pick up a constant.

    A channel every producer of which is a pruned filter (its weights and
    bias held at zero) is zero up to the per-channel layers on it: a
    BatchNorm mean, a Scale/Bias offset, a depthwise bias make it a constant
    that compaction cannot cut. Pruning zeroes these entries and holds them
    at zero in retraining, as it does the filters' biases. Where a Sigmoid
    (or another layer that maps 0 to a constant) is on the channel too, it
    is then that layer's one constant, which readers can take (folding),
    not one that a padded depthwise convolution makes differ by position.

    Parameters
    ----------
    net : caffe.Net
        The net, live (its TEST phase: the channel graph is the same).
    masks : dict[str, ndarray of bool]
        Weight masks of the pruned layers (True = kept).

    Returns
    -------
    list of (layer name, blob index, ndarray of channel indices)
    """
    from caffe_admm.masks import filter_mask
    blob_space, layers = _build_graph(net, net_param)
    types = {info["name"]: info["type"] for info in layers}
    params = {name: [b.data for b in blobs] for name, blobs in net.params.items()}
    out = []
    for s in _roots(blob_space):
        if s.fixed or not s.producers:
            continue  # read whole: stays
        dead = np.ones(s.size, bool)
        for producer, _, offset in s.producers:
            if producer not in masks:
                dead[:] = False  # an unpruned layer writes these channels
            else:
                dead &= ~filter_mask(masks[producer])[offset:offset + s.size]
        # the pruned filters' own biases: held by the hooks with their weights
        for name, index, offset, _, _ in (_constant_blobs(s, params, types, producers=False)
                                          if dead.any() else []):
            out.append((name, index, offset + np.flatnonzero(dead)))
    return out


def _zero_channels(space, weights):
    """Channels of ``space`` that every producer writes with an all-zero filter."""
    zero = np.ones(space.size, bool) if space.producers else np.zeros(space.size, bool)
    for producer, _, offset in space.producers:
        w = weights[producer][offset:offset + space.size]
        zero &= ~np.any(w.reshape(w.shape[0], -1) != 0, axis=1)
    return zero


def _kept_zero_warnings(space, kept, constant, params, types, folding):
    """Why the zero filters ``kept`` (over ``space``'s channels) stay in the
    compacted net; ``constant``: the channels that may not go for a constant
    on them; ``folding``: why their readers could not take it (None: no
    reader takes constants)."""
    warnings = []
    producers = ", ".join(p for p, _, _ in space.producers)
    if not (space.fixed or space.zero_kept and folding is None):  # else not the constant
        constant = kept & constant
        kept = kept & ~constant
        if constant.any():
            sources = ["%r %s" % (name, what) for name, _, _, what, values
                       in _constant_blobs(space, params, types) if np.any(values[constant] != 0)]
            why = "zero those for the pruned channels, or" if folding is None else folding + ";"
            warnings.append(
                "%d zero filter%s of %s kept: their channels carry constants (%s); %s pass "
                "--drop-constants to cut them anyway" % (
                    constant.sum(), "" if constant.sum() == 1 else "s", producers,
                    ", ".join(sources) or "through %s" % ", ".join(space.zero_kept), why))
    if kept.any():
        warnings.append(_kept_zero_reason(space, int(kept.sum()), producers, folding))
    return warnings


def _kept_zero_reason(space, count, producers, folding):
    whole = sorted(set(r.strip("<>") for r, kind, _, _, _ in space.readers if kind == "all"))
    if whole:
        why = "their channels are read whole, every channel at its place, by %s" % ", ".join(whole)
    elif space.zero_kept and folding is None:
        why = ("%s map their zero channels to constants that later layers read; prune those "
               "layers' inputs on them too to remove them" % ", ".join(space.zero_kept))
    else:  # _balance, or _keep_one
        grouped = sorted(set([p for p, group, _ in _writers(space) if group > 1]
                             + [r for r, kind, detail, _, _ in space.readers
                                if kind == "conv" and detail > 1]))
        why = ("every group of the grouped convolutions %s keeps the same number of channels"
               % ", ".join(grouped) if grouped else
               "all the channels of a blob (a Slice's part, say) would go, and each keeps one: "
               "Caffe aborts on a layer with no inputs")
    return "%d zero filter%s of %s kept: %s" % (count, "" if count == 1 else "s", producers, why)


def _reads(kind, detail, w, offset, size, total):
    """Which channels [offset, offset+size) of a reader's input it uses."""
    if kind == "all":
        return np.ones(size, bool)
    if kind == "conv":
        group = detail
        f, cg = w.shape[:2]
        used = np.zeros(total, bool)
        fg = f // group
        for g in range(group):
            block = w[g * fg:(g + 1) * fg]
            used[g * cg:(g + 1) * cg] = np.any(block.reshape(fg, cg, -1) != 0, axis=(0, 2))
        return used[offset:offset + size]
    if kind == "ip":
        block = detail
        cols = np.any(w != 0, axis=0).reshape(total, block)
        return np.any(cols, axis=1)[offset:offset + size]
    raise ValueError(kind)


def _balance_part(cut, group, offset, total):
    """``cut`` over channels [offset, offset + cut.size) of a grouped
    convolution's ``total`` outputs or inputs, balanced as if the rest were
    not cut (a part of them after a Concat or a Slice: then none is)."""
    if group <= 1:
        return cut
    full = np.zeros(total, bool)
    full[offset:offset + cut.size] = cut
    return _balance(full, group)[offset:offset + cut.size]


def _zero_reader(w, kind, detail, offset, removed, total):
    if w is None or kind == "all":
        return
    idx = offset + np.flatnonzero(removed)
    if kind == "conv":
        cg = w.shape[1]
        group = detail
        fg = w.shape[0] // group
        for c in idx:
            g, local = divmod(int(c), cg)
            w[g * fg:(g + 1) * fg, local] = 0
    else:
        block = detail
        cols = w.reshape(w.shape[0], total, block)
        cols[:, idx] = 0


def reference_params(net, plan):
    """Parameters of the *reference* net: removed channels made exactly zero.

    Channels whose value later layers take into their biases (``folded``)
    keep theirs: the compacted net computes them.

    Returns
    -------
    dict[str, list of ndarray] : copies of all parameter blobs, with the
    weights and biases of removed filters, the BatchNorm means and Scale/Bias
    offsets of removed channels, and readers' weights of removed inputs zeroed.
    """
    names = list(net._layer_names)
    params = {name: [b.data.copy() for b in blobs] for name, blobs in net.params.items()}
    for name, entry in plan["layers"].items():
        kind = net.layers[names.index(name)].type
        blobs = params[name]
        if kind in CONV_TYPES:
            group = _group(net, name)
            blobs[0] = as_filters(blobs[0], kind, group).copy()
        if "out" in entry:
            gone = np.setdiff1d(np.arange(blobs[0].shape[0]),
                                list(entry["out"]) + entry.get("folded", []))
            if kind in CONV_TYPES + ("InnerProduct",):
                for b in blobs:
                    b[gone] = 0
            elif kind == "BatchNorm":
                blobs[0][gone] = 0   # mean: 0 -> 0
            elif kind == "Scale" and len(blobs) > 1:
                blobs[1][gone] = 0   # beta
            elif kind == "Bias":
                blobs[0][gone] = 0
        if "in" in entry:
            w = blobs[0]
            kept = list(entry["in"]) + entry.get("fold", {}).get("inputs", [])
            if kind in CONV_TYPES:
                total = w.shape[1] * group
                _zero_reader(w, "conv", group, 0, np.isin(np.arange(total), kept, invert=True),
                             total)
            else:
                block = entry["in_block"]
                total = w.shape[1] // block
                _zero_reader(w, "ip", block, 0, np.isin(np.arange(total), kept, invert=True),
                             total)
        if kind in CONV_TYPES:
            blobs[0] = as_filters(blobs[0], kind, group)
    return params


def _params_of(net):
    return {name: [b.data.copy() for b in blobs] for name, blobs in net.params.items()}


def dropped_constants(params, plan, types):
    """The non-zero constants of removed channels, which the reference zeroes.

    Without ``drop_constants`` only unread channels can carry one (their
    value reaches nothing); with it, zero filters' channels too, and then
    the compacted net lacks what those constants added. Channels whose value
    the readers take into their biases (``folded``) keep theirs.

    Returns
    -------
    list of str, e.g. ``"'conv1' bias of 2 removed filters"``
    """
    what = {"Convolution": (1, "bias of %d removed filters"),
            "Deconvolution": (1, "bias of %d removed filters"),
            "InnerProduct": (1, "bias of %d removed outputs"),
            "BatchNorm": (0, "mean of %d removed channels"),
            "Scale": (1, "bias of %d removed channels"),
            "Bias": (0, "bias of %d removed channels")}
    out = []
    for name, entry in plan["layers"].items():
        if "out" not in entry or types.get(name) not in what:
            continue
        index, text = what[types[name]]
        blobs = params[name]
        if index >= len(blobs) or blobs[index].size < 2:
            continue
        gone = np.setdiff1d(np.arange(blobs[index].shape[0]),
                            list(entry["out"]) + entry.get("folded", []))
        count = int(np.count_nonzero(blobs[index][gone]))
        if count:
            out.append("%r %s" % (name, text % count))
    return out


def surviving_weights(net, net_param, names):
    """Per layer in ``names``, its non-zero weights that compaction keeps.

    Weights on inputs whose producer filters are pruned, and filters no
    consumer reads, are cut out by compaction; what is left is what the
    compacted net stores.

    Raises
    ------
    CompactionError
        if the net holds a layer compaction does not support.
    """
    ref = reference_params(net, plan_compaction(net, net_param))
    return {name: int(np.count_nonzero(ref[name][0])) for name in names}


def compacted_costs(net, net_param, inputs=None):
    """What compaction would make of each Convolution, Deconvolution and
    InnerProduct layer of a masked live TEST-phase net, without writing or
    building the compacted net: the plan and blobs of :func:`compact`
    (``inputs`` as :func:`plan_compaction` takes them), with each layer's
    FLOPs scaled by its weight's shrinkage (compaction changes channels, not
    positions).

    Returns
    -------
    layers : dict[str, dict]
        ``weight_shape``, ``compact_shape``, ``params``, ``compact_params``,
        ``compact_nonzero`` (the weights the masks keep that compaction keeps
        too), ``flops``, ``compact_flops`` (per image), ``flop_reduction``,
        ``kept_out`` and ``kept_in``, as :func:`compact`'s report has them.
    plan : dict
        :func:`plan_compaction`'s.

    Raises
    ------
    CompactionError
        if the net holds a layer compaction does not support.
    """
    plan = plan_compaction(net, net_param, inputs=inputs)
    _, params = apply_plan(net_param, reference_params(net, plan), plan, conv_groups(net))
    layers = {}
    for name, s in layer_costs(net).items():
        w = params[name][0]
        flops = s["flops"] * w.size // max(s["params"], 1)
        layers[name] = {"weight_shape": s["weight_shape"], "compact_shape": list(w.shape),
                        "params": s["params"], "compact_params": int(w.size),
                        "compact_nonzero": int(np.count_nonzero(w)),
                        "flops": s["flops"], "compact_flops": int(flops),
                        "flop_reduction": s["flops"] / max(flops, 1),
                        "kept_out": plan["layers"].get(name, {}).get("out"),
                        "kept_in": plan["layers"].get(name, {}).get("in")}
    return layers, plan


def _group(net, name):
    """``group`` of a Convolution or Deconvolution, from its blobs' shapes."""
    w = net.params[name][0].data
    if net.layers[list(net._layer_names).index(name)].type == "Deconvolution":
        return net.blobs[net.top_names[name][0]].data.shape[1] // w.shape[1]
    return net.blobs[net.bottom_names[name][0]].data.shape[1] // w.shape[1]


def conv_groups(net):
    """``group`` of every Convolution and Deconvolution of a live net (for :func:`apply_plan`)."""
    types = dict(zip(net._layer_names, [l.type for l in net.layers]))
    return {name: _group(net, name) for name in net.params if types[name] in CONV_TYPES}


def as_filters(w, kind, group):
    """A (De)Convolution weight as filters, shape (outputs, inputs / group, kh, kw).

    A Deconvolution stores (inputs, outputs / group, kh, kw): each group's
    block is transposed. Regrouping twice gives the weight back.
    """
    if kind != "Deconvolution":
        return w
    rows = w.shape[0] // group
    return np.concatenate([w[g * rows:(g + 1) * rows].swapaxes(0, 1) for g in range(group)])


def apply_plan(net_param, params, plan, group_of):
    """Write the compacted NetParameter and blobs.

    Parameters
    ----------
    net_param : caffe_pb2.NetParameter
        The original prototxt (all phases); layers are rewritten by name.
    params : dict[str, list of ndarray]
        Reference parameters (see :func:`reference_params`).
    plan : dict
    group_of : dict[str, int]
        ``group`` of each Convolution and Deconvolution.

    Returns
    -------
    (caffe_pb2.NetParameter, dict[str, list of ndarray])
    """
    new_net = caffe_pb2.NetParameter()
    new_net.CopyFrom(net_param)
    new_params = {name: [b.copy() for b in blobs] for name, blobs in params.items()}
    for layer in new_net.layer:
        if layer.type == "Reshape" and layer.name in plan.get("reshapes", {}):
            _reshape_dims(layer, plan["reshapes"][layer.name])
        if layer.type == "Slice" and layer.name in plan.get("slices", {}):
            layer.slice_param.slice_point[:] = np.cumsum(plan["slices"][layer.name])[:-1].tolist()
        entry = plan["layers"].get(layer.name)
        if not entry or layer.name not in new_params:
            continue
        blobs = new_params[layer.name]
        if layer.type in CONV_TYPES:  # filters first; a Deconvolution's back at the end
            blobs[0] = as_filters(blobs[0], layer.type, group_of[layer.name])
        out = np.asarray(entry.get("out", np.arange(blobs[0].shape[0])), dtype=np.int64)
        fold = entry.get("fold")
        if fold and "bias" in fold:
            if len(blobs) == 1:  # bias_term: false
                blobs.append(np.zeros(blobs[0].shape[0], np.float32))
                (layer.convolution_param if layer.type in CONV_TYPES
                 else layer.inner_product_param).bias_term = True
            blobs[1] = (blobs[1] + np.asarray(fold["bias"])).astype(np.float32)
        elif fold:  # a padded convolution: its weights for the carriers take the rest
            w = blobs[0] = blobs[0].copy()
            fg, cg = w.shape[0] // group_of[layer.name], w.shape[1]
            for c, k in zip(fold["carriers"], fold["carrier_weights"]):
                g = c // cg
                w[g * fg:(g + 1) * fg, c % cg] = np.reshape(k, (fg,) + w.shape[2:])
        if layer.type in CONV_TYPES:
            group = group_of[layer.name]
            w = blobs[0]
            if "in" in entry:
                cg = w.shape[1]
                fg = w.shape[0] // group
                keep_in = np.asarray(entry["in"], dtype=np.int64)
                per_group = [keep_in[(keep_in >= g * cg) & (keep_in < (g + 1) * cg)] - g * cg
                             for g in range(group)]
                w = np.concatenate([w[g * fg:(g + 1) * fg][:, per_group[g]] for g in range(group)])
            blobs[0] = w[out]
            if len(blobs) > 1:
                blobs[1] = blobs[1][out]
            layer.convolution_param.num_output = len(out)
            if entry.get("depthwise"):
                layer.convolution_param.group = group = len(out)
            blobs[0] = as_filters(blobs[0], layer.type, group)
        elif layer.type == "InnerProduct":
            w = blobs[0]
            if "in" in entry:
                block = entry["in_block"]
                cols = (np.asarray(entry["in"], dtype=np.int64)[:, None] * block
                        + np.arange(block)).ravel()
                w = w[:, cols]
            blobs[0] = w[out]
            if len(blobs) > 1:
                blobs[1] = blobs[1][out]
            layer.inner_product_param.num_output = len(out)
        elif layer.type in PER_CHANNEL:
            for i in PER_CHANNEL[layer.type]:
                if i < len(blobs) and blobs[i].size > 1:
                    blobs[i] = blobs[i][out]
    return new_net, new_params


def _runs(keep):
    """Contiguous runs [(start, stop, kept)] covering a boolean vector."""
    runs, start = [], 0
    for i in range(1, keep.size + 1):
        if i == keep.size or keep[i] != keep[start]:
            runs.append((start, i, bool(keep[start])))
            start = i
    return runs


def compact_shapes(net_param, params, group_of, min_saving=0.0):
    """Shape-wise (GEMM column) compaction with stock layers.

    Each Convolution (group 1) whose weight has all-zero columns is replaced
    by ``L/im2col`` (Caffe's Im2col with the same kernel, stride, pad and
    dilation), ``L/slice`` (Slice on the channel axis into runs of kept and
    dropped columns), ``L/concat`` of the kept runs, ``L/silence`` for the
    dropped ones, and ``L`` itself as a 1x1 Convolution with weight
    (F, kept columns, 1, 1). An InnerProduct (axis 1, not transposed) with
    all-zero columns gets ``L/flatten`` (Flatten) in place of Im2col and stays
    an InnerProduct over the kept columns. Im2col still lowers every column,
    and the slices are copied, so this pays only where the GEMM saving
    outweighs the copies: measure it with :mod:`caffe_admm.timing`.

    Returns
    -------
    (caffe_pb2.NetParameter, dict[str, list of ndarray], dict[str, dict])
        The rewritten net and blobs, and per rewritten layer its kept columns.
    """
    new_net = caffe_pb2.NetParameter()
    new_net.CopyFrom(net_param)
    del new_net.layer[:]
    new_params = dict(params)
    rewritten = {}
    for layer in net_param.layer:
        w = params.get(layer.name, [None])[0]
        conv = (layer.type == "Convolution" and w is not None and w.ndim == 4
                and group_of.get(layer.name, 1) == 1)
        ip = (layer.type == "InnerProduct" and w is not None and w.ndim == 2
              and layer.inner_product_param.axis == 1
              and not layer.inner_product_param.transpose)
        if not (conv or ip):
            new_net.layer.add().CopyFrom(layer)
            continue
        cols = np.any(w.reshape(w.shape[0], -1) != 0, axis=0)
        if cols.all() or not cols.any() or 1.0 - cols.mean() <= min_saving:
            new_net.layer.add().CopyFrom(layer)
            continue
        name = layer.name
        if conv:
            im2col = new_net.layer.add(name=name + "/im2col", type="Im2col",
                                       bottom=list(layer.bottom), top=[name + "/cols"])
            im2col.convolution_param.CopyFrom(layer.convolution_param)
            im2col.convolution_param.ClearField("weight_filler")
            im2col.convolution_param.ClearField("bias_filler")
        else:
            new_net.layer.add(name=name + "/flatten", type="Flatten",
                              bottom=list(layer.bottom), top=[name + "/cols"])
        runs = _runs(cols)
        kept_tops, dropped_tops = [], []
        if len(runs) > 1:
            sl = new_net.layer.add(name=name + "/slice", type="Slice", bottom=[name + "/cols"])
            sl.slice_param.axis = 1
            for i, (start, stop, keep) in enumerate(runs):
                if start:
                    sl.slice_param.slice_point.append(start)
                top = "%s/cols%d" % (name, i)
                sl.top.append(top)
                (kept_tops if keep else dropped_tops).append(top)
            if dropped_tops:
                new_net.layer.add(name=name + "/silence", type="Silence", bottom=dropped_tops)
            if len(kept_tops) > 1:
                new_net.layer.add(name=name + "/concat", type="Concat", bottom=kept_tops,
                                  top=[name + "/kept"]).concat_param.axis = 1
                src = name + "/kept"
            else:
                src = kept_tops[0]
        else:
            src = name + "/cols"
        small = new_net.layer.add()
        small.CopyFrom(layer)
        small.ClearField("bottom")
        small.bottom.append(src)
        blobs = list(params[name])
        blobs[0] = w.reshape(w.shape[0], -1)[:, cols]
        if conv:
            for field in ("kernel_size", "stride", "pad", "dilation", "kernel_h", "kernel_w",
                          "stride_h", "stride_w", "pad_h", "pad_w"):
                small.convolution_param.ClearField(field)
            small.convolution_param.kernel_size.append(1)
            blobs[0] = blobs[0].reshape(w.shape[0], -1, 1, 1)
        new_params[name] = blobs
        rewritten[name] = {"columns": int(cols.size), "kept_columns": int(cols.sum()),
                           "runs": sum(1 for r in runs if r[2])}
    return new_net, new_params, rewritten


def _set_params(net, params):
    for name, blobs in params.items():
        if len(net.params[name]) != len(blobs):
            raise CompactionError("internal: %s has %d blobs, given %d"
                                  % (name, len(net.params[name]), len(blobs)))
        for dst, src in zip(net.params[name], blobs):
            if dst.data.shape != src.shape:
                raise CompactionError("internal: %s blob %s vs %s" % (name, dst.data.shape, src.shape))
            dst.data[...] = src


def _forward_outputs(net, inputs, seed_batches):
    outs = []
    for batch in range(seed_batches):
        if inputs is not None:
            for name, arr in inputs[batch].items():
                net.blobs[name].data[...] = arr
        out = net.forward()
        outs.append({k: v.copy() for k, v in out.items()})
    return outs


def check_equivalence(ref_net, compact_net, batches=2, seed=0):
    """Max abs difference of every output, reference vs compacted, same inputs.

    Input-layer nets get seeded random normal inputs; Data-layer nets read the
    same first ``batches`` batches of their TEST source.
    """
    rng = np.random.default_rng(seed)
    inputs = None
    if ref_net.inputs:
        inputs = [{name: rng.standard_normal(ref_net.blobs[name].data.shape).astype(np.float32)
                   for name in ref_net.inputs} for _ in range(batches)]
    a = _forward_outputs(ref_net, inputs, batches)
    b = _forward_outputs(compact_net, inputs, batches)
    diff, scale = 0.0, 0.0
    per_output = {}
    for x, y in zip(a, b):
        for k in x:
            d = float(np.max(np.abs(x[k] - y[k]))) if x[k].size else 0.0
            per_output[k] = max(per_output.get(k, 0.0), d)
            diff = max(diff, d)
            scale = max(scale, float(np.max(np.abs(x[k]))) if x[k].size else 0.0)
    return {"max_abs_diff": diff, "output_scale": scale, "per_output": per_output}


def compact(model, weights, out_dir, tolerance=1e-4, force=False, batches=2, shape=False,
            drop_constants=False):
    """Compact a net and write ``compact.prototxt``, ``compact.caffemodel``, ``plan.json``.

    Parameters
    ----------
    model : str
        Net prototxt (deploy with Input layers, or train/test with TEST data).
    weights : str
        Masked / structured-sparse caffemodel.
    tolerance : float
        Largest allowed |reference - compacted| relative to the outputs' scale.
    force : bool
        Write the outputs even above the tolerance.
    shape : bool
        Also compact shape-wise (column) sparsity with :func:`compact_shapes`.
    drop_constants : bool
        Also cut zero filters whose channels carry a constant (a bias, a
        BatchNorm mean, a Scale/Bias offset) that no reader can take; the
        compacted net is then checked against the masked net with those
        constants zeroed, and the report says how far that is from the
        masked net.

    Returns
    -------
    report : dict (also in ``plan.json``)
    """
    from caffe_admm.solver import check_weights

    protoio.check_outputs(out_dir, ("compact.prototxt", "compact.caffemodel", "plan.json"),
                          {"net": model, "weights": weights})
    net_param = protoio.read_checked_net(model)
    check_weights(weights, model, net_param)
    net = caffe.Net(model, caffe.TEST, weights=weights)
    plan = plan_compaction(net, net_param, drop_constants, layer_inputs(net))
    ref = reference_params(net, plan)
    group_of = conv_groups(net)
    new_net_param, new_params = apply_plan(net_param, ref, plan, group_of)
    shapes_rewritten = {}
    if shape:
        new_net_param, new_params, shapes_rewritten = compact_shapes(new_net_param, new_params,
                                                                     group_of)

    os.makedirs(out_dir, exist_ok=True)
    tmp_proto = os.path.join(out_dir, ".compact.check.prototxt")
    protoio.write_text(tmp_proto, new_net_param)
    try:
        compact_net = caffe.Net(tmp_proto, caffe.TEST)
    finally:
        os.unlink(tmp_proto)
    _set_params(compact_net, new_params)
    # Fresh nets each time, so Data layers read the same first batches. The
    # verdict: the masked net (the user's weights) against the compacted one;
    # with drop_constants, the reference (those weights with the removed
    # channels' constants zeroed) against it, and the masked net against the
    # reference says what dropping the constants changed.
    masked = _params_of(net)
    original_outputs = (check_equivalence(_with_params(model, masked), _with_params(model, ref),
                                          batches) if drop_constants else None)
    against = _with_params(model, ref if drop_constants else masked)
    eq = check_equivalence(against, compact_net, batches)
    eq["against"] = "reference" if drop_constants else "masked"
    eq["tolerance"] = tolerance
    eq["passed"] = eq["max_abs_diff"] <= tolerance * max(1.0, eq["output_scale"])
    dropped = dropped_constants(masked, plan, {info.name: info.type for info in net_param.layer})

    before, after = layer_costs(net), layer_costs(compact_net)
    layers = {}
    for name, s in before.items():
        a = after[name]
        layers[name] = {"weight_shape": s["weight_shape"], "compact_shape": a["weight_shape"],
                        "params": s["params"], "compact_params": a["params"],
                        "flops": s["flops"], "compact_flops": a["flops"],
                        "flop_reduction": s["flops"] / max(a["flops"], 1),
                        "kept_out": plan["layers"].get(name, {}).get("out"),
                        "kept_in": plan["layers"].get(name, {}).get("in")}
    total = {k: sum(l[k] for l in layers.values())
             for k in ("params", "compact_params", "flops", "compact_flops")}
    report = {"model": os.path.abspath(model), "weights": os.path.abspath(weights),
              "layers": layers, "total": total, "equivalence": eq,
              "reference_vs_original": original_outputs, "dropped_constants": dropped,
              "warnings": plan["warnings"], "notes": plan["notes"],
              "shape_compaction": shapes_rewritten,
              "plan": {"layers": plan["layers"], "spaces": plan["spaces"],
                       "reshapes": plan["reshapes"], "slices": plan["slices"]}}
    if not eq["passed"] and not force:
        raise CompactionError(
            "the compacted net differs from the %s net by %.3g (outputs up to %.3g; tolerance "
            "%.1g relative)%s; nothing written (pass --force to write anyway)"
            % ("masked" if not drop_constants else "reference", eq["max_abs_diff"],
               eq["output_scale"], tolerance,
               "; " + "; ".join(plan["warnings"]) if plan["warnings"] else ""))
    protoio.write_text(os.path.join(out_dir, "compact.prototxt"), new_net_param)
    types = {l.name: l.type for l in new_net_param.layer}
    protoio.write_binary(os.path.join(out_dir, "compact.caffemodel"),
                         protoio.make_caffemodel(new_net_param.name, new_params, types))
    with protoio.atomic_write(os.path.join(out_dir, "plan.json"), "w") as f:
        json.dump(report, f, indent=1)
    return report


def _with_params(model, params):
    net = caffe.Net(model, caffe.TEST)
    _set_params(net, params)
    return net

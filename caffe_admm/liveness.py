"""Which inputs of a pruned layer still carry signal (config ``live_inputs_only``).

When layer P loses a filter (and, at the hard prune, its bias), the matching
output channel is exactly zero, and stays zero through ReLU, pooling and the
other layers in :data:`ZERO_PRESERVING`: BatchNorm, Scale and Bias too, whose
entries for that channel the run zeroes and holds at zero with the bias
(``compact.dead_channel_constants``), and a depthwise convolution left
unpruned (its bias too). The run zeroes those constants only where the
channel is dead in its whole channel space (compaction's): not where an
Eltwise partner still writes it, nor where some layer reads the space
whole; there a walk through them knows nothing (:class:`_Spaces`). A
pruned consumer L that reads it
(the next Convolution, or an InnerProduct after a flatten: a block of H*W
columns per channel) gains nothing from weights on that channel, and
compaction cuts them out anyway. Yet a column or channel projection that
ignores this can spend its keep budget on them: seen in ADMM runs on LeNet,
where up to a quarter of a layer's kept columns read dead channels.

With ``live_inputs_only``, every projection and support of L is taken onto
"at most k groups AND zero on the dead inputs": the dead inputs are zeroed and
the k groups of largest norm are chosen among the rest. That is still the
exact Euclidean projection (onto the smaller set), and the budget goes to
inputs that can carry signal. Layers are handled in net order, so P's new
support is known when L is projected. L may read a Concat (Inception,
DenseNet): then each part's channels are those of its own producer, live
where that one is pruned, all live where it is not pruned.

A coupled residual stream (config ``couple_sums``) is a producer too: its
writers keep the same filters, so a channel of each of its sums is dead
where their joint choice drops the filter. The choice is made at the
stream's first writer, before any layer reads the stream, from the live
inputs of its writers known then.

The same walks through the zero-preserving layers find the groups that
pruning keeps equal beside grouped convolutions (:func:`group_neighbours`)
and the writers of each residual stream, which keep the same filters
(:func:`sum_writers`, config ``couple_sums``).
"""

import math

import numpy as np

from caffe_admm import projections
from caffe_admm.protoio import ELEMENTWISE, maps_zero_to_zero

__all__ = ["ZERO_PRESERVING", "InputFeeds", "input_feeds", "masks_in_net_order",
           "group_neighbours", "sum_writers"]

# Single-input layers that map an all-zero channel to an all-zero channel in the
# same place (no added constant; LRN scales a channel by its neighbours' energy,
# which leaves zero at zero; a pruned channel's BatchNorm mean and Scale/Bias
# offset are held at zero where its channel space is dead: see _sources);
# also a Clip, Threshold, Power or Log whose parameters map 0 to 0
# (protoio.maps_zero_to_zero: ReLU6, say), and an SE gate's Scale along x.
ZERO_PRESERVING = {"ReLU", "PReLU", "TanH", "AbsVal", "ELU", "Swish", "Dropout", "Pooling", "LRN",
                   "Flatten", "Split", "BatchNorm", "Scale", "Bias"}
CONSTANTS = {"BatchNorm", "Scale", "Bias"}  # zero-preserving for pruned channels only


def _width(layer):
    return (layer.convolution_param if layer.type == "Convolution"
            else layer.inner_product_param).num_output


def _sources(layers, index, blob, pruned, spaces=None, streams=None, constants=False):
    """Where the channels of ``blob``, read by ``layers[index]``, come from:
    ((pruned layer, a coupled stream's writers (tuple), or None for another,
    channels), ...) in channel order, walking back through zero-preserving
    layers and into Concats; None where that is not known.

    ``spaces`` (:class:`_Spaces`): the run zeroes the constants on a pruned
    channel (a BatchNorm's, a Scale's, a depthwise bias) only where its
    channel space is dead, so where the walk passes one (``constants``) in a
    space that an Eltwise partner also writes (unless the walk ends at a
    coupled stream, whose writers all drop the channel) or that a layer
    reads whole, the producer's pruned channels may carry them: it counts
    as not pruned (a coupled stream in a space read whole: unknown).
    ``streams``: per Eltwise index whose writers are all a coupled
    stream's, (the stream's writers, its width)."""
    streams = streams or {}
    stream_of = {n: writers for writers, _ in streams.values() for n in writers}
    whole = spaces is not None and spaces.whole(blob)
    sole = None if spaces is None else spaces.stream(blob)
    while True:
        writer = next((i for i in range(index - 1, -1, -1) if blob in layers[i].top), None)
        if writer is None:
            return None
        layer = layers[writer]
        if _depthwise(layer) and layer.name not in pruned:
            # channel c from input channel c alone, plus its bias
            inner = _sources(layers, writer, layer.bottom[0], pruned, spaces, streams,
                             constants or layer.convolution_param.bias_term)
            if inner is not None and sum(n for _, n in inner) == _width(layer):
                return inner
        if layer.type in ("Convolution", "InnerProduct"):
            name = layer.name if layer.name in pruned else None
            if name and constants and (whole or spaces is not None and spaces.summed(blob)
                                       and stream_of.get(name, ()) != sole):
                name = None
            return ((name, _width(layer)),)
        if layer.type == "Eltwise":
            # the constants on the writers' side of the sum are not on this
            # walk: the stream must be all that writes the space
            ok = writer in streams and not whole and streams[writer][0] == sole
            return (streams[writer],) if ok else None
        if layer.type == "Concat" and _channel_concat(layer):
            parts = [_sources(layers, writer, b, pruned, spaces, streams, constants)
                     for b in layer.bottom]
            return None if None in parts else tuple(p for part in parts for p in part)
        if _gate(layer):  # x times a factor per sample and channel: a zero x stays zero
            index, blob = writer, layer.bottom[0]
            continue
        if (layer.type not in ZERO_PRESERVING and not maps_zero_to_zero(layer)
                or len(layer.bottom) != 1):
            return None
        constants = constants or layer.type in CONSTANTS
        index, blob = writer, layer.bottom[0]


# Layers that keep each channel in place (mapping 0 to a constant, some):
# compaction's spaces run through them
_ALONG = ZERO_PRESERVING | ELEMENTWISE


class _Spaces:
    """The channel spaces of a net's blobs, coarsely as compaction builds them
    (``compact._build_graph``): blobs joined through the layers that keep
    channels in place, depthwise convolutions, SE gates along their input,
    Eltwise layers and Concats. Per space: whether an Eltwise adds into it,
    the coupled stream whose sums are all its sums (``stream_of_sum``: per
    coupled sum's top, its writers), and whether a layer reads it whole (a
    Softmax, a Reshape, a Slice, a net output...), where compaction keeps
    every channel and zeroes no constant."""

    def __init__(self, layers, stream_of_sum=None):
        self.parent = {}
        sums, wholes, read = [], [], set()
        for layer in layers:
            read.update(layer.bottom)
            if not layer.bottom:
                continue
            if layer.type in ("Convolution", "Deconvolution", "InnerProduct"):
                if _depthwise(layer):
                    self._join(layer.bottom[0], *layer.top)
                continue
            if _gate(layer):
                self._join(layer.bottom[0], *layer.top)
            elif layer.type == "Eltwise":
                self._join(*layer.bottom, *layer.top)
                sums.append(layer.top[0])
            elif layer.type == "Concat" and _channel_concat(layer):
                self._join(*layer.bottom, *layer.top)
            elif layer.type in _ALONG and len(layer.bottom) == 1:
                self._join(layer.bottom[0], *layer.top)
            else:
                wholes.extend(layer.bottom)
        wholes.extend(t for layer in layers for t in layer.top if t not in read)  # outputs
        found = {}
        for top in sums:
            found.setdefault(self._root(top), set()).add((stream_of_sum or {}).get(top))
        self._sole = {root: s.pop() if len(s) == 1 else None for root, s in found.items()}
        self._whole = {self._root(b) for b in wholes}

    def _root(self, blob):
        while self.parent.get(blob, blob) != blob:
            blob = self.parent[blob]
        return blob

    def _join(self, *blobs):
        roots = [self._root(b) for b in blobs]
        for r in roots[1:]:
            if r != roots[0]:
                self.parent[r] = roots[0]

    def summed(self, blob):
        return self._root(blob) in self._sole

    def stream(self, blob):
        """The coupled stream (writers) whose sums are all the sums in
        ``blob``'s space, or None."""
        return self._sole.get(self._root(blob))

    def whole(self, blob):
        return self._root(blob) in self._whole


def _depthwise(layer):
    """A Convolution with one filter per group, reading one bottom."""
    p = layer.convolution_param
    return (layer.type == "Convolution" and p.group > 1 and p.num_output == p.group
            and len(layer.bottom) == 1)


def _gate(layer):
    """A squeeze-and-excitation gate: a Scale of its first bottom by its second
    from axis 0, with no bias."""
    return (layer.type == "Scale" and len(layer.bottom) == 2 and layer.scale_param.axis == 0
            and not layer.scale_param.bias_term)


def _channel_concat(layer):
    """Whether a Concat joins its bottoms along channels (axis, or the old
    concat_dim, 1)."""
    p = layer.concat_param
    return (p.axis if p.HasField("axis") else p.concat_dim if p.HasField("concat_dim") else 1) == 1


class InputFeeds:
    """Per pruned layer, its pruned producers and how many inputs each channel feeds.

    Parameters
    ----------
    order : list of str
        The pruned layers in net order.
    feeds : dict[str, (tuple, int)]
        Consumer -> (sources, inputs per channel). ``sources``: ((producer, or
        None for a layer not pruned, its channels), ...) in order, one unless
        the consumer reads a Concat; a producer is a pruned layer's name or
        a coupled stream's writers (tuple of names). In the (F, C, kh, kw)
        view of the consumer's weight, input c reads channel c // per of
        them all.
    shapes : dict[str, tuple]
        Weight shape of every consumer.
    groups : dict[str, int], optional
        ``group`` of the grouped consumers: filter f of such a one reads the
        inputs of its group, ``f // (F / group)``, the weight's axis 1 the
        channels within it.
    """

    def __init__(self, order, feeds, shapes, groups=None):
        self.order = list(order)
        self.feeds = dict(feeds)
        self.shapes = dict(shapes)
        self.groups = {name: g for name, g in (groups or {}).items() if name in self.feeds}

    def allowed(self, name, supports, chosen=None):
        """Boolean mask, shaped like the weight of ``name``, of its live inputs.

        ``supports`` holds the masks already decided for producers;
        ``chosen``, the filters kept by the coupled streams decided (per
        writers tuple, one bool per filter). None when ``name`` has no
        pruned producer (or none is decided yet).
        """
        chosen = chosen or {}

        def alive_of(p, n):
            if isinstance(p, tuple):
                return chosen.get(p)
            if p in supports:
                return projections.as_4d(supports[p]).reshape(n, -1).any(axis=1)
            return None
        if name not in self.feeds:
            return None
        sources, per = self.feeds[name]
        parts = [alive_of(p, n) for p, n in sources]
        if all(a is None for a in parts):
            return None
        alive = np.concatenate([np.ones(n, dtype=bool) if a is None else np.asarray(a, bool)
                                for a, (_, n) in zip(parts, sources)])
        shape = self.shapes[name]
        f, c, kh, kw = projections.as_4d(np.empty(shape, dtype=np.bool_)).shape
        group = self.groups.get(name, 1)
        live = np.repeat(alive, per).reshape(group, c)[np.arange(f) // (f // group)]
        return np.broadcast_to(live[:, :, None, None], (f, c, kh, kw)).reshape(shape)

    def describe(self):
        def label(p, n):
            if isinstance(p, tuple):
                return "the stream of %s%s" % (p[0], " and %d more" % (len(p) - 1)
                                               if len(p) > 1 else "")
            return p or "%d channels not pruned" % n
        return ", ".join("%s <- %s%s%s" % (
            name, " + ".join(label(p, n) for p, n in sources),
            " (%d inputs per channel)" % per if per > 1 else "",
            " (group %d)" % self.groups[name] if name in self.groups else "")
            for name, (sources, per) in self.feeds.items()) or "none"


def masks_in_net_order(names, feeds, mask_of, coupled=(), choose=None):
    """``mask_of(name, allowed, chosen)`` for every layer in ``names``, producers first.

    ``allowed`` is the layer's live-input mask from ``feeds`` and the masks of
    its producer (None without ``feeds``, or for a layer without a pruned
    producer). The layers of each tuple in ``coupled`` (a residual stream's
    writers) keep the same filters, chosen at the first of them, before any
    layer reads the stream: ``choose(writers, alloweds)`` gives the joint
    selection (one bool per filter) from the live-input masks known then,
    and each writer's ``mask_of`` gets it as ``chosen``, at its own turn and
    with its own live inputs then (None for the other layers). The stream's
    readers take its dropped filters as dead inputs. Returns the masks as a
    dict in the order of ``names``.
    """
    names = list(names)
    order = names if feeds is None else (
        [n for n in feeds.order if n in names] + [n for n in names if n not in feeds.order])
    stream_of = {n: writers for writers in coupled for n in writers}
    masks, chosen = {}, {}

    def allowed(name):
        return None if feeds is None else feeds.allowed(name, masks, chosen)
    for name in order:
        writers = stream_of.get(name)
        if writers is not None and writers not in chosen:
            chosen[writers] = choose(writers, [allowed(n) for n in writers])
        masks[name] = mask_of(name, allowed(name), None if writers is None else chosen[writers])
    return {name: masks[name] for name in names}


def input_feeds(net_param, shapes, groups=None, coupled=()):
    """The producer links between the pruned layers of a net.

    Parameters
    ----------
    net_param : caffe_pb2.NetParameter
    shapes : dict[str, tuple]
        Weight shape of every pruned layer, in any order.
    groups : dict[str, int], optional
        ``convolution_param.group`` per layer: a grouped consumer's filters
        read their group's channels.
    coupled : sequence of tuple of str
        The writers of the coupled residual streams (``sum_writers``' order):
        the layers that read their sums get them as producers.

    Returns
    -------
    InputFeeds
    """
    from caffe_admm.backend import caffe_pb2
    from caffe_admm.protoio import layer_included, net_state
    groups = groups or {}
    test = net_state(net_param, caffe_pb2.TEST)
    layers = [l for l in net_param.layer if layer_included(l, test)]
    order = [l.name for l in layers if l.name in shapes]
    feeds = {}
    by_name = {l.name: l for l in layers}
    streams = {}
    for index, (names, other) in _sums(layers)[0].items():
        stream = next((w for w in coupled if names <= set(w)), None)
        if other is None and stream is not None:
            streams[index] = (tuple(stream), _width(by_name[stream[0]]))
    spaces = _Spaces(layers, {layers[i].top[0]: w for i, (w, _) in streams.items()})
    for index, layer in enumerate(layers):
        if layer.name not in shapes or len(layer.bottom) != 1:
            continue
        sources = _sources(layers, index, layer.bottom[0], shapes, spaces, streams)
        if sources is None or all(p is None for p, _ in sources):
            continue
        channels = sum(n for _, n in sources)
        n_inputs = (projections.as_4d(np.empty(shapes[layer.name], dtype=np.bool_)).shape[1]
                    * groups.get(layer.name, 1))
        if n_inputs % channels == 0 and (len(shapes[layer.name]) == 2 or n_inputs == channels):
            feeds[layer.name] = (sources, n_inputs // channels)
    return InputFeeds(order, feeds, {name: shapes[name] for name in feeds},
                      {name: g for name, g in groups.items() if g > 1})


def _links(net_param):
    """(consumer, producer, channels): each single-bottom Convolution of the
    TEST net whose input channels all come from one producer, through the
    single-input layers of :data:`ZERO_PRESERVING` (which keep each channel
    in place; BatchNorm and Scale whatever their constants)."""
    from caffe_admm.backend import caffe_pb2
    from caffe_admm.protoio import layer_included, net_state
    test = net_state(net_param, caffe_pb2.TEST)
    layers = [l for l in net_param.layer if layer_included(l, test)]
    by_name = {l.name: l for l in layers}
    for index, layer in enumerate(layers):
        if layer.type != "Convolution" or len(layer.bottom) != 1:
            continue
        sources = _sources(layers, index, layer.bottom[0], by_name)
        if sources is not None and len(sources) == 1:
            yield layer, by_name[sources[0][0]], sources[0][1]


def group_neighbours(net_param):
    """The groups that pruning keeps equal counts in, beside grouped
    Convolutions (through ReLU, BatchNorm, pooling and the other
    :data:`ZERO_PRESERVING` layers), so that compaction can cut every pruned
    channel and the grouped convolution keeps equal groups.

    Returns
    -------
    readers : dict[str, int]
        Per layer whose output channels grouped Convolutions read with more
        than one channel per group, their ``group`` (several: the least
        common multiple); its filter pruning keeps the same count in each
        (ResNeXt's 1x1 reduction before its grouped 3x3).
    producers : dict[str, int]
        Per ungrouped Convolution reading the output of a grouped
        Convolution with more than one filter per group, that one's
        ``group``; its channel
        pruning keeps the same count of input channels in each (ResNeXt's
        1x1 expansion after the grouped 3x3).

    A depthwise convolution (one channel per group) passes channels through
    and asks for nothing either way.
    """
    readers, producers = {}, {}
    for reader, producer, channels in _links(net_param):
        group = reader.convolution_param.group
        if group > 1 and channels % group == 0 and channels // group > 1:
            readers[producer.name] = math.lcm(readers.get(producer.name, 1), group)
        p = producer.convolution_param
        if (group == 1 and producer.type == "Convolution" and p.group > 1
                and p.num_output // p.group > 1):
            producers[reader.name] = p.group
    return readers, producers


def _writers_of(layers, index, blob, sums):
    """The layers that write the channels of ``blob`` (read by
    ``layers[index]``): Convolutions and InnerProducts found walking back
    through the single-input layers of :data:`ZERO_PRESERVING` (BatchNorm and
    Scale whatever their constants) and SE gates along their input; at an
    Eltwise, the writers of all its bottoms, from ``sums`` (per Eltwise index,
    already walked: the net's sums are walked in order). Returns (names,
    other): ``other`` is the first layer met that writes the channels
    otherwise (a Concat, a Sigmoid, the net's input), or None."""
    while True:
        writer = next((i for i in range(index - 1, -1, -1) if blob in layers[i].top), None)
        if writer is None or not layers[writer].bottom:
            return set(), "the net input %r" % blob
        layer = layers[writer]
        if layer.type in ("Convolution", "InnerProduct"):
            return {layer.name}, None
        if layer.type == "Eltwise":
            return sums[writer]
        if not (_gate(layer) or (layer.type in ZERO_PRESERVING or maps_zero_to_zero(layer))
                and len(layer.bottom) == 1):
            return set(), "%s %r" % (layer.type, layer.name)
        index, blob = writer, layer.bottom[0]


def sum_writers(net_param):
    """The residual streams of a net: the layers whose outputs Eltwise layers
    add (multiply, take the maximum of) channel by channel.

    A channel of a stream is zero for every input only where every writer's
    filter for it is zero, so compaction cuts it only then. Streams that
    share a writer (the sums of one ResNet stage, whose output the next sum
    reads) are one.

    Returns
    -------
    list of (tuple of str, str or None)
        Per stream, its writers in net order and, where some of its channels
        come from another layer (the net input, a Concat, a Sigmoid: which
        pruning cannot zero), the first such layer; None otherwise.
    """
    from caffe_admm.backend import caffe_pb2
    from caffe_admm.protoio import layer_included, net_state
    test = net_state(net_param, caffe_pb2.TEST)
    layers = [l for l in net_param.layer if layer_included(l, test)]
    streams = _sums(layers)[1]
    order = {l.name: i for i, l in enumerate(layers)}
    return [(tuple(sorted(names, key=order.get)), other) for names, other in streams]


def _sums(layers):
    """Per Eltwise index, (the writers of all its bottoms, the first other
    layer writing its channels or None); and the streams: (writers, other),
    merged where they share a writer."""
    streams = []
    sums = {}
    for index, layer in enumerate(layers):
        if layer.type != "Eltwise":
            continue
        names, other = set(), None
        for b in layer.bottom:
            found, why = _writers_of(layers, index, b, sums)
            names, other = names | found, other or why
        sums[index] = names, other
        for stream in [s for s in streams if s[0] & names]:
            streams.remove(stream)
            names, other = names | stream[0], other or stream[1]
        streams.append((names, other))
    return sums, streams

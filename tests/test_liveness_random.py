"""Random small nets pruned with live_inputs_only: a pruned layer's live
inputs hold every channel that carries signal into it, and its mask reads
no channel that compaction finds dead.

The nets are test_compact_random's (residual sums, Concats, depthwise and
grouped convolutions, BatchNorm, ReLU6, Sigmoids, SE gates, Slices,
Deconvolutions). Each is pruned as the run prunes it: FILTER_SHAPE at half
(global_keep_ratio; the grouped and depthwise convolutions left out), one
magnitude round, residual streams coupled, then the hard prune's zeroing
(pruned filters' biases, the constants on their channels). For every
ungrouped pruned layer with a pruned producer:

* every input channel that is non-zero somewhere over two forward passes
  of random inputs is one liveness allows (no live input lost);
* every input channel from a pruned producer (or a coupled stream) that
  its mask keeps a weight on, where compaction keeps the producer's filter,
  is one compaction keeps in the layer's input, or folds into it: the
  sources' channels line up. (Channels liveness counts as not pruned,
  where it cannot tell, may be dead, and compaction also cuts kept filters
  whose output is a constant or that nothing reads: only budget is lost
  there.) (Where compaction cuts some of
  the layer's kept filters, which nothing reads, such as an SE gate's on
  dead channels, their inputs go with them: liveness has no such "live
  outputs" direction, so those layers are not checked.)
"""

import numpy as np
import pytest

from caffe_admm import compact, liveness, protoio, solver
from caffe_admm.backend import caffe
from caffe_admm.config import load_config

from conftest import write
from test_compact import random_params
from test_compact_random import _Net

CONFIG = """method: MAGNITUDE admm_steps: 1 live_inputs_only: true
default { kind: FILTER_SHAPE } global_keep_ratio: 0.5
"""


def _read_channels(net, name, mask):
    """The input channels of layer ``name`` that ``mask`` keeps a weight on."""
    if mask.ndim == 4:
        return set(np.flatnonzero(mask.any(axis=(0, 2, 3))))
    channels = net.blobs[net.bottom_names[name][0]].data.shape[1]
    return set(np.flatnonzero(mask.reshape(mask.shape[0], channels, -1).any(axis=(0, 2))))


def _known_channels(feeds, name, plan):
    """The input channels of ``name`` that come from a pruned producer (or a
    coupled stream) whose filter for them compaction keeps: liveness counts
    them live, and so does compaction unless the reader's input is wrong.
    (Compaction also cuts kept filters whose output is a constant or that
    nothing reads; liveness does not look that far.)"""
    known = []
    for p, n in feeds.feeds[name][0]:
        writers = () if p is None else p if isinstance(p, tuple) else (p,)
        out = set().union(*(plan["layers"][w]["out"] for w in writers)) if writers else set()
        known.append(np.isin(np.arange(n), sorted(out)))
    return set(np.flatnonzero(np.concatenate(known)))


def _allowed_channels(feeds, name, masks):
    """The input channels of ``name`` that liveness counts as live: those of
    each source's kept filters (a coupled stream's: its writers')."""
    sources, _ = feeds.feeds[name]
    alive = [np.ones(n, bool) if p is None else
             masks[p[0] if isinstance(p, tuple) else p].reshape(n, -1).any(axis=1)
             for p, n in sources]
    return set(np.flatnonzero(np.concatenate(alive)))


def _nonzero_channels(net, names, passes=2, seed=0):
    """Per layer in ``names``, the channels of its input that are non-zero
    somewhere over ``passes`` forward passes of random inputs (read before
    the layer runs: in-place layers may change the blob later)."""
    rng = np.random.default_rng(seed)
    layers = list(net._layer_names)
    out = {name: set() for name in names}
    for _ in range(passes):
        for blob in net.inputs:
            net.blobs[blob].data[...] = rng.standard_normal(net.blobs[blob].data.shape)
        for i, name in enumerate(layers):
            if name in out:
                x = net.blobs[net.bottom_names[name][0]].data
                nonzero = (x.reshape(x.shape[0], x.shape[1], -1) != 0).any(axis=(0, 2))
                out[name] |= set(np.flatnonzero(nonzero))
            net._forward(i, i)
    return out


@pytest.mark.parametrize("seed", range(100))
def test_live_inputs_hold_every_live_channel_and_masks_read_no_dead_one(tmp_path, seed):
    rng = np.random.default_rng(seed)
    model = write(tmp_path / "n.prototxt", _Net(rng).text())
    net_param = protoio.read_net(model)
    net = caffe.Net(model, caffe.TEST)
    random_params(net, rng)
    cfg = load_config(write(tmp_path / "c.prototxt", CONFIG), net_param)
    shapes = {spec.name: net.params[spec.name][0].data.shape for spec in cfg.layers}
    feeds = liveness.input_feeds(net_param, shapes, {s.name: s.group for s in cfg.layers},
                                 cfg.coupled)
    method = solver.make_method(cfg, feeds=feeds)
    weights = {name: net.params[name][0].data for name in shapes}
    method.start(weights)
    masks = method.final_masks(weights)
    solver._apply_masks(net, masks)
    solver._zero_constants(net, compact.dead_channel_constants(net, net_param, masks))
    checked = [s.name for s in cfg.layers if s.group == 1 and s.name in feeds.feeds]
    nonzero = _nonzero_channels(net, checked)
    for name in checked:
        assert nonzero[name] <= _allowed_channels(feeds, name, masks), (name, feeds.describe())
    try:
        plan = compact.plan_compaction(net, net_param, inputs=compact.layer_inputs(net))
    except compact.CompactionError as exc:
        assert "is not supported" in str(exc)
        return
    for name in checked:
        entry = plan["layers"][name]
        filters = set(np.flatnonzero(masks[name].reshape(len(masks[name]), -1).any(axis=1)))
        if not filters <= set(entry["out"]):
            continue  # kept filters nothing reads (an SE gate's on dead channels): not an input
        kept = set(entry["in"]) | set((entry.get("fold") or {}).get("inputs", ()))
        read = _read_channels(net, name, masks[name]) & _known_channels(feeds, name, plan)
        assert read <= kept, (name, feeds.describe())

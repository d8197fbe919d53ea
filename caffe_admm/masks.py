"""Pruning masks and the sparsity statistics read off weights.

A mask set is ``dict[str, ndarray of bool]`` keyed by Caffe layer name, each
mask shaped like that layer's weight blob (``params[name][0]``); True keeps a
weight. Statistics count the all-zero groups of each kind (see
:mod:`caffe_admm.projections` for the groups), as in SSL's and Distiller's
sparsity summaries.
"""

import numpy as np

from caffe_admm.projections import as_4d

__all__ = ["masks_from_zeros", "apply_masks", "filter_mask", "sparsity_stats", "save_masks", "load_masks"]


def masks_from_zeros(weights):
    """Masks that keep exactly the non-zero weights.

    Parameters
    ----------
    weights : dict[str, ndarray]

    Returns
    -------
    dict[str, ndarray of bool]
    """
    return {name: np.asarray(w) != 0 for name, w in weights.items()}


def filter_mask(mask):
    """Which filters (rows) of a weight mask keep any weight.

    Parameters
    ----------
    mask : ndarray of bool, shape (F, C, kh, kw) or (N, K)

    Returns
    -------
    ndarray of bool, shape (F,)
    """
    return np.asarray(mask).reshape(np.shape(mask)[0], -1).any(axis=1)


def apply_masks(weights, masks):
    """Zero, in place, every weight whose mask entry is False."""
    for name, mask in masks.items():
        w = weights[name]
        if w.shape != mask.shape:
            raise ValueError("mask of layer %r has shape %s, weight has %s"
                             % (name, mask.shape, w.shape))
        np.multiply(w, mask, out=w)


def sparsity_stats(w, group=1):
    """Element and group sparsity of one weight.

    Parameters
    ----------
    w : ndarray, shape (F, C / group, kh, kw) or (N, K)
    group : int
        A grouped convolution's ``group``: filter f of group g reads input
        channels g * C / group ... (g + 1) * C / group - 1, so a channel (a
        shape column) is kept where a filter of its own group reads it, and
        there are C (C x kh x kw) of them.

    Returns
    -------
    dict with ``params``, ``nonzero``, ``element_sparsity``, and for each of
    filter / channel / shape the number of groups, the number kept (not all
    zero) and the sparsity (fraction of all-zero groups).
    """
    w4 = as_4d(np.asarray(w))
    nz = w4 != 0
    out = {"shape": list(np.shape(w)), "params": int(w4.size), "nonzero": int(nz.sum())}
    out["element_sparsity"] = 1.0 - out["nonzero"] / max(out["params"], 1)
    by_group = nz.reshape((group, nz.shape[0] // group) + nz.shape[1:])
    kept = {"filter": nz.any(axis=(1, 2, 3)),
            "channel": by_group.any(axis=(1, 3, 4)).ravel(),
            "shape": by_group.any(axis=1).ravel()}
    for kind, k in kept.items():
        out[kind + "s"] = int(k.size)
        out[kind + "s_kept"] = int(k.sum())
        out[kind + "_sparsity"] = 1.0 - k.sum() / max(k.size, 1)
    return out


def save_masks(path, masks):
    """Save masks as an ``.npz`` file (keys are layer names)."""
    from caffe_admm.protoio import atomic_write
    with atomic_write(path) as f:
        np.savez_compressed(f, **masks)


def load_masks(path):
    """Load masks saved by :func:`save_masks`."""
    with np.load(path) as data:
        return {name: data[name].astype(np.bool_) for name in data.files}

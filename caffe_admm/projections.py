"""Euclidean projections onto structured-sparse sets (StructADMM's Z-step).

A Convolution weight of shape (F, C, kh, kw) is viewed as the GEMM matrix of
shape (F, C*kh*kw) that Caffe multiplies with the im2col buffer; an
InnerProduct weight (N, K) is the same with kh = kw = 1. The sparsity kinds
and their groups (Zhang et al., StructADMM, arXiv 1807.11091, Sec. 3):

========== ===================================== =======================
kind       group                                  number of groups
========== ===================================== =======================
filter     one row of the GEMM matrix (a filter)  F
channel    the kh*kw columns of one input channel C
shape      one column of the GEMM matrix          C*kh*kw
non_struct one weight                             F*C*kh*kw
========== ===================================== =======================

Keeping the ``k`` groups of largest L2 norm and zeroing the rest is the exact
Euclidean projection onto "at most k non-zero groups", because the groups do
not overlap. Ties are broken deterministically: among equal norms the group
with the lower index is kept.

For a grouped convolution (``group`` = g > 1) the filter-wise projection keeps
the same number of filters in every one of the g groups (the exact projection
onto that set), so the pruned layer stays a valid grouped convolution. The
same holds for the filters read by, and the channels written by, another
grouped convolution (``group`` of :func:`group_mask`).

Layers whose outputs an Eltwise sums (a residual stream's writers) can be
pruned *coupled*: one set of k filter indices for all of them, so that
compaction can cut the stream's channels. The exact projection of the tuple
(W_1, ..., W_m) onto "every W_j zero outside the same k rows" keeps the k rows
of largest joint norm sqrt(sum_j ||row of W_j||^2) (:func:`joint_group_mask`):
the distance is the sum over the layers of what each loses.
"""

import numpy as np

__all__ = ["KINDS", "as_4d", "num_groups", "keep_count", "group_norms",
           "group_mask", "joint_group_norms", "joint_group_mask", "expand", "support",
           "project"]

KINDS = ("filter", "channel", "shape", "non_structured")


def as_4d(w):
    """View a weight as (F, C, kh, kw); InnerProduct (N, K) becomes (N, K, 1, 1),
    a per-channel blob (C,) (a Scale's, for SLIMMING's Lasso) (C, 1, 1, 1)."""
    w = np.asarray(w)
    if w.ndim == 1:
        return w.reshape(w.shape[0], 1, 1, 1)
    if w.ndim == 2:
        return w.reshape(w.shape[0], w.shape[1], 1, 1)
    if w.ndim == 4:
        return w
    raise ValueError("expected a 2-D InnerProduct or 4-D Convolution weight (or a 1-D "
                     "per-channel blob), got shape %s"
                     % (w.shape,))


def _check_kind(kind):
    if kind not in KINDS:
        raise ValueError("unknown sparsity kind %r; choose one of %s" % (kind, ", ".join(KINDS)))


def num_groups(shape, kind):
    """Number of groups of ``kind`` in a weight of ``shape``."""
    _check_kind(kind)
    f, c, kh, kw = as_4d(np.empty(shape, dtype=np.bool_)).shape
    return {"filter": f, "channel": c, "shape": c * kh * kw,
            "non_structured": f * c * kh * kw}[kind]


def keep_count(n, keep_ratio, group=1):
    """How many of ``n`` groups a keep ratio in (0, 1] keeps: at least one.

    With ``group`` > 1 the count is a multiple of ``group`` (at least one per group).
    """
    if not 0.0 < keep_ratio <= 1.0:
        raise ValueError("keep ratio must be in (0, 1], got %r" % keep_ratio)
    per_group = n // group
    return group * min(per_group, max(1, int(round(keep_ratio * per_group))))


def group_norms(w, kind):
    """L2 norm of every group of ``kind``.

    Parameters
    ----------
    w : ndarray, shape (F, C, kh, kw) or (N, K)
    kind : str, one of :data:`KINDS`

    Returns
    -------
    norms : ndarray, shape (num_groups(w.shape, kind),), float64
    """
    _check_kind(kind)
    w4 = as_4d(w).astype(np.float64)
    sq = w4 * w4
    if kind == "filter":
        return np.sqrt(sq.sum(axis=(1, 2, 3)))
    if kind == "channel":
        return np.sqrt(sq.sum(axis=(0, 2, 3)))
    if kind == "shape":
        return np.sqrt(sq.sum(axis=0).ravel())
    return np.abs(w4).ravel()


def _top_k(norms, k):
    """Boolean selection of the k largest norms; ties keep the lower index."""
    order = np.argsort(-norms, kind="stable")
    keep = np.zeros(norms.shape[0], dtype=np.bool_)
    keep[order[:k]] = True
    return keep


def group_mask(w, kind, k, group=1):
    """Which groups of ``kind`` the projection keeps.

    Parameters
    ----------
    w : ndarray, shape (F, C, kh, kw) or (N, K)
    kind : str
    k : int
        Number of groups to keep, 1 <= k <= num_groups; a multiple of ``group``
        for filter- or channel-wise pruning in groups.
    group : int
        Filter- or channel-wise: keep k / group of them in each of ``group``
        equal runs (a grouped convolution's filters, Caffe's
        ``convolution_param.group``; or the groups of a grouped convolution
        that reads the filters' outputs or writes the channels).

    Returns
    -------
    keep : ndarray of bool, shape (num_groups(w.shape, kind),)
    """
    return _grouped_top_k(group_norms(w, kind), kind, k, group)


def _grouped_top_k(norms, kind, k, group):
    """:func:`group_mask` from the groups' norms."""
    n = norms.shape[0]
    if kind == "non_structured":
        group = 1  # element-wise sets ignore grouping
    if not 1 <= k <= n:
        raise ValueError("cannot keep %d of %d %s groups" % (k, n, kind))
    if group == 1:
        return _top_k(norms, k)
    if kind not in ("filter", "channel"):
        raise ValueError("%s-wise sparsity is not supported on grouped convolutions "
                         "(group=%d); use filter-wise or non_structured" % (kind, group))
    if n % group or k % group:
        raise ValueError("%s-wise pruning in %d groups needs the %d %ss and k=%d to be "
                         "multiples of %d" % (kind, group, n, kind, k, group))
    per = n // group
    return np.concatenate([_top_k(norms[i * per:(i + 1) * per], k // group)
                           for i in range(group)])


def joint_group_norms(ws, kind, alloweds=None):
    """The joint norm of every group of ``kind`` over several weights: the
    square root of the sum of its squared norms in each.

    Parameters
    ----------
    ws : sequence of ndarray, each (F, C_j, kh_j, kw_j) or (F, K_j)
        For ``kind`` "filter", the same F; the other sizes may differ.
    alloweds : sequence of (ndarray of bool or None), optional
        Per weight, as ``allowed`` in :func:`support`: the norms are taken
        inside it.

    Returns
    -------
    norms : ndarray, shape (num_groups(ws[0].shape, kind),), float64
    """
    alloweds = alloweds or [None] * len(ws)
    squared = None
    for w, allowed in zip(ws, alloweds):
        if allowed is not None:
            w = np.where(allowed, w, np.zeros((), dtype=np.asarray(w).dtype))
        norms = group_norms(w, kind) ** 2
        if squared is not None and norms.shape != squared.shape:
            raise ValueError("joint %s-wise pruning needs the same number of %ss in every "
                             "weight, got %d and %d" % (kind, kind, squared.shape[0],
                                                        norms.shape[0]))
        squared = norms if squared is None else squared + norms
    return np.sqrt(squared)


def joint_group_mask(ws, kind, k, group=1, alloweds=None):
    """Which groups of ``kind`` the joint projection of several weights keeps:
    the same k for all of them, those of largest :func:`joint_group_norms`.

    ``kind``, ``k`` and ``group`` are as in :func:`group_mask`; ``ws`` and
    ``alloweds`` as in :func:`joint_group_norms`.

    Returns
    -------
    keep : ndarray of bool, shape (num_groups(ws[0].shape, kind),)
    """
    return _grouped_top_k(joint_group_norms(ws, kind, alloweds), kind, k, group)


def expand(values, shape, kind):
    """Broadcast one value per group of ``kind`` to every weight of ``shape``.

    Parameters
    ----------
    values : ndarray, shape (num_groups(shape, kind),)
    shape : tuple, (F, C, kh, kw) or (N, K)

    Returns
    -------
    ndarray, shape ``shape``
    """
    f, c, kh, kw = as_4d(np.empty(shape, dtype=np.bool_)).shape
    values = np.asarray(values)
    if kind == "filter":
        full = np.broadcast_to(values[:, None, None, None], (f, c, kh, kw))
    elif kind == "channel":
        full = np.broadcast_to(values[None, :, None, None], (f, c, kh, kw))
    elif kind == "shape":
        full = np.broadcast_to(values.reshape(1, c, kh, kw), (f, c, kh, kw))
    else:
        full = values.reshape(f, c, kh, kw)
    return np.array(full).reshape(shape)


def support(w, kind, k, group=1, allowed=None, chosen=None):
    """Boolean mask, shaped like ``w``, of the weights the projection keeps.

    ``allowed`` (bool, shaped like ``w``) restricts the set to weights that are
    zero outside it: the groups are ranked by their norm inside ``allowed``.
    ``chosen`` (bool, one per group of ``kind``) gives the kept groups instead
    of ranking them: a joint projection's (:func:`joint_group_mask`).
    """
    if chosen is not None:
        full = expand(chosen, np.shape(w), kind)
        return full if allowed is None else full & allowed
    if allowed is None:
        return expand(group_mask(w, kind, k, group), np.shape(w), kind)
    w = np.where(allowed, w, np.zeros((), dtype=np.asarray(w).dtype))
    return expand(group_mask(w, kind, k, group), np.shape(w), kind) & allowed


def project(w, kind, k, group=1, allowed=None, chosen=None):
    """Euclidean projection of ``w`` onto "at most k non-zero groups of ``kind``"
    (and zero outside ``allowed``, when given); onto the groups ``chosen``
    (as in :func:`support`), when given.

    Returns
    -------
    z : ndarray, same shape and dtype as ``w``
    """
    w = np.asarray(w)
    return np.where(support(w, kind, k, group, allowed, chosen), w,
                    np.zeros((), dtype=w.dtype))

"""Projections onto structured-sparse sets: optimal, idempotent, exact sparsity."""

import itertools

import numpy as np
import pytest

from caffe_admm import projections as P


def brute_force(w, kind, k):
    """Best (closest) member of "at most k non-zero groups", by enumeration."""
    n = P.num_groups(w.shape, kind)
    best, best_d = None, np.inf
    for kept in itertools.combinations(range(n), k):
        keep = np.zeros(n, bool)
        keep[list(kept)] = True
        z = _apply(w, kind, keep)
        d = np.sum((w - z) ** 2)
        if d < best_d - 1e-12:
            best, best_d = z, d
    return best, best_d


def _apply(w, kind, keep):
    f, c, kh, kw = P.as_4d(w).shape
    m = {"filter": lambda: keep[:, None, None, None] * np.ones((f, c, kh, kw), bool),
         "channel": lambda: keep[None, :, None, None] * np.ones((f, c, kh, kw), bool),
         "shape": lambda: np.broadcast_to(keep.reshape(1, c, kh, kw), (f, c, kh, kw)),
         "non_structured": lambda: keep.reshape(f, c, kh, kw)}[kind]()
    return np.where(m.reshape(w.shape), w, 0)


@pytest.mark.parametrize("kind", P.KINDS)
@pytest.mark.parametrize("shape", [(4, 2, 2, 1), (5, 3)])
def test_projection_is_optimal_against_brute_force(kind, shape):
    rng = np.random.default_rng(0)
    w = rng.standard_normal(shape).astype(np.float32)
    n = P.num_groups(shape, kind)
    for k in sorted({1, n // 2, n - 1, n} - {0}):
        if kind == "non_structured" and n > 12 and k not in (1, n):
            continue  # keep the enumeration small
        z = P.project(w, kind, k)
        _, best_d = brute_force(w, kind, k)
        assert np.sum((w - z) ** 2) == pytest.approx(best_d, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("kind", P.KINDS)
def test_projection_is_idempotent_with_exact_group_count(kind):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((6, 4, 3, 3)).astype(np.float32)
    n = P.num_groups(w.shape, kind)
    k = P.keep_count(n, 0.3)
    z = P.project(w, kind, k)
    np.testing.assert_array_equal(P.project(z, kind, k), z)
    nonzero_groups = int((P.group_norms(z, kind) > 0).sum())
    assert nonzero_groups == k
    # kept entries are untouched, the rest exactly zero
    kept = P.support(w, kind, k)
    np.testing.assert_array_equal(z[kept], w[kept])
    assert np.all(z[~kept] == 0)


def test_group_counts_and_norms():
    w = np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2)
    assert [P.num_groups(w.shape, k) for k in P.KINDS] == [2, 3, 12, 24]
    np.testing.assert_allclose(P.group_norms(w, "filter")[0], np.linalg.norm(w[0]))
    np.testing.assert_allclose(P.group_norms(w, "channel")[1], np.linalg.norm(w[:, 1]))
    np.testing.assert_allclose(P.group_norms(w, "shape")[5], np.linalg.norm(w[:, 1, 0, 1]))


def test_ties_keep_the_lower_index():
    w = np.ones((4, 2), dtype=np.float32)
    np.testing.assert_array_equal(P.group_mask(w, "filter", 2), [True, True, False, False])
    np.testing.assert_array_equal(P.group_mask(w, "channel", 1), [True, False])
    # and again: deterministic, not dependent on call history
    np.testing.assert_array_equal(P.project(w, "filter", 2), P.project(w.copy(), "filter", 2))


def test_grouped_convolution_keeps_equal_filters_per_group():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    w[:4] *= 10  # all large filters in group 0
    keep = P.group_mask(w, "filter", 4, group=2)
    assert keep[:4].sum() == 2 and keep[4:].sum() == 2
    w = rng.standard_normal((3, 8, 3, 3)).astype(np.float32)
    w[:, 4:] *= 10  # all large channels in group 1
    keep = P.group_mask(w, "channel", 4, group=2)
    assert keep[:4].sum() == 2 and keep[4:].sum() == 2
    with pytest.raises(ValueError, match="not supported on grouped convolutions"):
        P.group_mask(w, "shape", 4, group=2)
    with pytest.raises(ValueError, match="multiples of 2"):
        P.group_mask(w, "filter", 3, group=2)


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_joint_projection_keeps_the_same_filters_and_is_optimal_against_brute_force(k):
    """Two weights with the same 5 filters and other inputs: the joint
    projection onto "the same k filters in both" is the pair's closest point."""
    rng = np.random.default_rng(3)
    ws = [rng.standard_normal((5, 2, 3, 3)), rng.standard_normal((5, 7))]
    ws[1][0] *= 6  # filter 0 is small in the first, large in the second
    keep = P.joint_group_mask(ws, "filter", k)
    assert keep.sum() == k
    best = min(sum(np.sum((w - _apply(w, "filter", np.isin(np.arange(5), kept))) ** 2)
                   for w in ws) for kept in itertools.combinations(range(5), k))
    got = sum(np.sum((w - P.project(w, "filter", k, chosen=keep)) ** 2) for w in ws)
    assert got == pytest.approx(best, rel=1e-12)
    np.testing.assert_array_equal(P.joint_group_mask(ws[:1], "filter", k),
                                  P.group_mask(ws[0], "filter", k))


def test_joint_projection_in_groups_inside_allowed_and_errors():
    rng = np.random.default_rng(4)
    ws = [rng.standard_normal((8, 3)), rng.standard_normal((8, 2, 1, 1))]
    ws[0][:4] *= 10  # the large filters all in group 0
    keep = P.joint_group_mask(ws, "filter", 4, group=2)
    assert keep[:4].sum() == keep[4:].sum() == 2
    allowed = np.ones((8, 3), bool)
    allowed[:, 0] = False  # the first weight's norms taken without its input 0
    ws[0][7, 0] = 1e3
    assert not P.joint_group_mask(ws, "filter", 1, alloweds=[allowed, None])[7]
    assert P.joint_group_mask(ws, "filter", 1)[7]
    with pytest.raises(ValueError, match="same number of filters in every weight, got 8 and 6"):
        P.joint_group_mask([ws[0], ws[1][:6]], "filter", 2)
    with pytest.raises(ValueError, match="cannot keep 9 of 8 filter groups"):
        P.joint_group_mask(ws, "filter", 9)


def test_keep_count_bounds_and_errors():
    assert P.keep_count(10, 1.0) == 10
    assert P.keep_count(10, 0.01) == 1
    assert P.keep_count(10, 0.26) == 3
    assert P.keep_count(8, 0.5, group=2) == 4
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="keep ratio"):
            P.keep_count(10, bad)
    with pytest.raises(ValueError, match="cannot keep"):
        P.project(np.ones((3, 3)), "filter", 4)
    with pytest.raises(ValueError, match="unknown sparsity kind"):
        P.project(np.ones((3, 3)), "rows", 1)
    with pytest.raises(ValueError, match="2-D InnerProduct or 4-D"):
        P.project(np.ones((3, 3, 3)), "filter", 1)
    # a per-channel blob (a Scale's gamma, SLIMMING's Lasso) is one value per filter
    assert P.project(np.array([1.0, -3.0, 2.0]), "filter", 2).tolist() == [0.0, -3.0, 2.0]

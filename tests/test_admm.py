"""ADMM state: penalty gradient, Z/U updates, hard prune, serialisation."""

import numpy as np
import pytest

from caffe_admm.admm import ADMMState
from caffe_admm.config import Constraint, LayerSpec


def spec(name, kinds, keep=0.5, rho=0.1, group=1):
    return LayerSpec(name=name, layer_type="Convolution", group=group, rho=rho,
                     constraints=tuple(Constraint(k, keep) for k in kinds))


@pytest.fixture
def state_and_weights():
    rng = np.random.default_rng(0)
    weights = {"conv": rng.standard_normal((6, 4, 3, 3)).astype(np.float32),
               "ip": rng.standard_normal((5, 12)).astype(np.float32)}
    state = ADMMState.initial([spec("conv", ["filter", "shape"]), spec("ip", ["channel"], 0.25)],
                              weights)
    for cs in state.constraints.values():
        for c in cs:
            c.u = rng.standard_normal(c.u.shape).astype(np.float32) * 0.1
    return state, weights


def test_penalty_gradient_matches_finite_difference(state_and_weights):
    state, weights = state_and_weights
    w = weights["conv"].astype(np.float64)
    for c in state.constraints["conv"]:
        c.z, c.u = c.z.astype(np.float64), c.u.astype(np.float64)
    _, grad = state.penalty("conv", w)
    eps = 1e-6
    rng = np.random.default_rng(3)
    for idx in [tuple(rng.integers(0, s) for s in w.shape) for _ in range(10)]:
        wp, wm = w.copy(), w.copy()
        wp[idx] += eps
        wm[idx] -= eps
        numeric = (state.penalty("conv", wp)[0] - state.penalty("conv", wm)[0]) / (2 * eps)
        assert grad[idx] == pytest.approx(numeric, rel=1e-6, abs=1e-8)


def test_update_is_z_projection_then_u_step(state_and_weights):
    state, weights = state_and_weights
    c = state.constraints["ip"][0]
    u_before = c.u.copy()
    w = weights["ip"]
    state.update(weights)
    expected_z = c.project(w + u_before)
    np.testing.assert_array_equal(c.z, expected_z)
    np.testing.assert_allclose(c.u, u_before + w - expected_z, rtol=1e-6)
    assert state.step == 1


def test_rho_grows_up_to_the_cap(state_and_weights):
    state, weights = state_and_weights
    for _ in range(5):
        state.update(weights, growth=2.0, rho_max=0.5)
    assert all(c.rho == 0.5 for cs in state.constraints.values() for c in cs)


def test_residual_falls_to_zero_when_w_follows_z():
    rng = np.random.default_rng(1)
    weights = {"conv": rng.standard_normal((6, 4, 3, 3)).astype(np.float32)}
    state = ADMMState.initial([spec("conv", ["filter"], 0.5)], weights)
    first = state.update(weights)["conv"][0]
    assert first > 0.1
    # W moving to Z - U (what the penalty pulls it towards) drives the residual to 0
    c = state.constraints["conv"][0]
    weights["conv"] = c.z - c.u
    for _ in range(3):
        res = state.update(weights)["conv"][0]
        weights["conv"] = c.z - c.u
    assert res < 1e-6


def test_hard_prune_keeps_intersection_of_supports(state_and_weights):
    state, weights = state_and_weights
    masks = state.hard_prune_masks(weights)
    fmask = state.constraints["conv"][0].support(weights["conv"])
    smask = state.constraints["conv"][1].support(weights["conv"])
    np.testing.assert_array_equal(masks["conv"], fmask & smask)
    kept_filters = masks["conv"].any(axis=(1, 2, 3)).sum()
    kept_columns = masks["conv"].any(axis=0).sum()
    assert kept_filters == 3 and kept_columns == 18
    assert masks["conv"].sum() == 3 * 18


def test_arrays_round_trip_exactly(state_and_weights):
    state, _ = state_and_weights
    state.step = 4
    back = ADMMState.from_arrays(state.to_arrays())
    assert back.step == 4 and set(back.constraints) == set(state.constraints)
    for name, cs in state.constraints.items():
        for a, b in zip(cs, back.constraints[name]):
            assert (a.kind, a.keep, a.rho, a.group) == (b.kind, b.keep, b.rho, b.group)
            np.testing.assert_array_equal(a.z, b.z)
            np.testing.assert_array_equal(a.u, b.u)


def test_count_at_goes_from_every_group_to_the_target(state_and_weights):
    state, _ = state_and_weights
    conv_filter = state.constraints["conv"][0]  # 6 filters, keep 3
    counts = [conv_filter.count_at(f) for f in (1 / 3.0, 2 / 3.0, 1.0)]
    assert counts == [5, 4, 3]
    ip_channel = state.constraints["ip"][0]  # 12 inputs, keep 3
    assert [ip_channel.count_at(f) for f in (0.25, 0.5, 1.0)] == [10, 8, 3]


def test_progressive_admm_projects_onto_a_shrinking_then_the_target_support():
    import types
    from caffe_admm.methods import ADMMMethod
    from caffe_admm.projections import group_norms
    rng = np.random.default_rng(1)
    weights = {"conv": rng.standard_normal((8, 4, 3, 3)).astype(np.float32)}
    cfg = types.SimpleNamespace(layers=[spec("conv", ["filter"], keep=0.25)], progressive=True,
                                admm_steps=4, progressive_steps=3, rho_growth=1.0, rho_max=1.0,
                                rescale_dual=False, prune_stages=1,
                                penalty_pruned_only=False, coupled=())
    method = ADMMMethod(cfg)
    method.start(weights)

    def z_filters(m):
        return int((group_norms(m.state.constraints["conv"][0].z, "filter") > 0).sum())
    assert z_filters(method) == 6  # block 1 of 3: a third of the way from 8 to 2
    logs = [method.end_round(weights) for _ in range(4)]  # then the target until step 4
    assert [log["z_groups"]["conv"] for log in logs] == [[4], [2], [2], [2]]
    assert z_filters(method) == 2
    assert int(method.final_masks(weights)["conv"].any(axis=(1, 2, 3)).sum()) == 2
    cfg.progressive = False
    plain = ADMMMethod(cfg)
    plain.start(weights)
    assert z_filters(plain) == 2
    assert "z_groups" not in plain.end_round(weights)


def test_prune_stages_hard_prune_between_stages_and_restart_admm():
    import types
    from caffe_admm.methods import ADMMMethod
    from caffe_admm.projections import group_norms
    rng = np.random.default_rng(2)
    weights = {"conv": rng.standard_normal((8, 4, 3, 3)).astype(np.float32)}
    cfg = types.SimpleNamespace(layers=[spec("conv", ["filter"], keep=0.25, rho=0.1)],
                                progressive=False, admm_steps=4, progressive_steps=4,
                                rho_growth=2.0, rho_max=1.0, rescale_dual=False, prune_stages=2,
                                penalty_pruned_only=False, coupled=())
    method = ADMMMethod(cfg)
    method.start(weights)  # blocks 0-1: stage 0, onto 5 of 8 filters; blocks 2-3: the target, 2
    c = method.state.constraints["conv"][0]
    assert int((group_norms(c.z, "filter") > 0).sum()) == 5
    assert method.hook_terms("conv")["mask"] is None
    log = method.end_round(weights)  # block 0 ends: still stage 0, a plain Z/U update
    assert "kept" not in log and np.any(c.u != 0)
    norms = group_norms(weights["conv"], "filter")
    log = method.end_round(weights)  # block 1 ends stage 0: hard prune to its 5 filters
    mask = method.hook_terms("conv")["mask"]
    kept = mask.any(axis=(1, 2, 3))
    np.testing.assert_array_equal(kept, norms >= np.sort(norms)[-5])
    assert log["kept"]["conv"] == pytest.approx(5 / 8.0) and log["z_groups"]["conv"] == [2]
    c = method.state.constraints["conv"][0]
    assert np.all(c.u == 0) and c.rho == pytest.approx(0.4)  # fresh U; rho keeps growing
    z_kept = group_norms(c.z, "filter") > 0
    assert z_kept.sum() == 2 and not np.any(z_kept & ~kept)  # Z within the pruned support
    # the masks survive a checkpoint, and the final masks stay inside them
    restored = ADMMMethod.from_arrays(cfg, method.to_arrays())
    np.testing.assert_array_equal(restored.masks["conv"], mask)
    grown = {"conv": weights["conv"] * 10 * ~mask + weights["conv"]}  # pruned weights grow back
    for _ in range(2):
        assert "kept" not in restored.end_round(grown)
    final = restored.final_masks(grown)["conv"]
    assert final.any(axis=(1, 2, 3)).sum() == 2 and not np.any(final & ~mask)


def test_penalty_pruned_only_limits_each_term_to_its_zeroed_groups():
    import types
    from caffe_admm.methods import ADMMMethod
    rng = np.random.default_rng(4)
    weights = {"conv": rng.standard_normal((6, 4, 3, 3)).astype(np.float32)}
    cfg = types.SimpleNamespace(layers=[spec("conv", ["filter", "shape"])], progressive=False,
                                admm_steps=2, rho_growth=1.0, rho_max=1.0, rescale_dual=False,
                                prune_stages=1, penalty_pruned_only=True, coupled=())
    method = ADMMMethod(cfg)
    method.start(weights)
    terms = method.hook_terms("conv")["penalty"]
    for (rho, z, u, where), c in zip(terms, method.state.constraints["conv"]):
        assert rho == c.rho and z is c.z and u is c.u
        np.testing.assert_array_equal(where, ~c.support(weights["conv"]))
    cfg.penalty_pruned_only = False
    assert [len(t) for t in ADMMMethod(cfg, method.state).hook_terms("conv")["penalty"]] == [3, 3]


def test_restart_gives_every_constraint_the_joint_support(state_and_weights):
    state, weights = state_and_weights
    state.update(weights, growth=2.0)
    rho = [c.rho for c in state.constraints["conv"]]
    state.restart(weights, growth=2.0, frac=0.5)
    first, second = state.constraints["conv"]
    joint = first.support(weights["conv"], frac=0.5) & second.support(weights["conv"], frac=0.5)
    for c, r in zip((first, second), rho):
        np.testing.assert_array_equal(c.z, np.where(joint, weights["conv"], 0))
        assert np.all(c.u == 0) and c.rho == pytest.approx(2 * r)
    assert state.step == 2
    # so the penalty's minimiser is the jointly pruned W, not halfway to it
    _, grad = state.penalty("conv", first.z)
    assert np.all(grad == 0)


def test_rescale_dual_keeps_rho_times_u_when_rho_grows(state_and_weights):
    state, weights = state_and_weights
    c = state.constraints["ip"][0]
    u0 = c.u.copy()
    state.update(weights, growth=2.0, rho_max=0.15, rescale_dual=True)
    assert c.rho == pytest.approx(0.15)                  # 0.1 * 2, capped at 0.15
    # U-step, then U * rho_old / rho_new: the unscaled dual rho * U is kept
    np.testing.assert_allclose(c.rho * c.u, 0.1 * (u0 + weights["ip"] - c.z), rtol=1e-5)
    u1 = c.u.copy()
    state.update(weights, growth=2.0, rho_max=0.15, rescale_dual=True)
    # rho stays at the cap: the plain U-step, no rescaling
    np.testing.assert_allclose(c.u, u1 + weights["ip"] - c.z, rtol=1e-6)


def test_without_rescale_dual_u_is_not_scaled(state_and_weights):
    state, weights = state_and_weights
    c = state.constraints["ip"][0]
    u_before = c.u.copy()
    state.update(weights, growth=4.0)
    assert c.rho == pytest.approx(0.4)
    np.testing.assert_allclose(c.u, u_before + weights["ip"] - c.z, rtol=1e-6)


def test_coupled_writers_z_steps_and_hard_prune_keep_the_same_filters():
    """a and b write one stream (6 filters, keep 3); a FILTER_SHAPE, b FILTER.
    Their filter Zs keep the 3 filters of largest joint norm, in the Z-step,
    after an update, at the hard prune and after a checkpoint; a's shape
    constraint is its own."""
    from caffe_admm import projections
    rng = np.random.default_rng(5)
    weights = {"a": rng.standard_normal((6, 4, 3, 3)).astype(np.float32),
               "b": rng.standard_normal((6, 10)).astype(np.float32)}
    weights["a"][[0, 1]] *= 4  # large in a alone; b's filters 4 and 5 large in b alone
    weights["b"][[4, 5]] *= 9
    specs = [spec("a", ["filter", "shape"]), spec("b", ["filter"])]
    state = ADMMState.initial(specs, weights, coupled=[("a", "b")])

    def filters(name, where):
        return projections.group_norms(where, "filter") > 0
    joint = projections.joint_group_mask([weights["a"], weights["b"]], "filter", 3)
    for name in ("a", "b"):
        np.testing.assert_array_equal(filters(name, state.constraints[name][0].z), joint)
    alone = ADMMState.initial(specs, weights)  # uncoupled: each its own 3
    assert not np.array_equal(filters("a", alone.constraints["a"][0].z),
                              filters("b", alone.constraints["b"][0].z))
    shape = state.constraints["a"][1]
    np.testing.assert_array_equal(shape.z, projections.project(weights["a"], "shape", 18))
    moved = {n: w + 0.5 * rng.standard_normal(w.shape).astype(np.float32)
             for n, w in weights.items()}
    state.update(moved)
    zs = [filters(n, state.constraints[n][0].z) for n in ("a", "b")]
    assert np.array_equal(*zs) and zs[0].sum() == 3
    masks = ADMMState.from_arrays(state.to_arrays(), [("a", "b")]).hard_prune_masks(moved)
    kept = [m.reshape(6, -1).any(axis=1) for m in masks.values()]
    np.testing.assert_array_equal(kept[0], kept[1])
    np.testing.assert_array_equal(kept[0], projections.joint_group_mask(
        [moved["a"], moved["b"]], "filter", 3))

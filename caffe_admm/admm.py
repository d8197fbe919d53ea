"""ADMM state and updates for structured pruning (StructADMM, arXiv 1807.11091).

For every pruned layer i and every constraint j on it (FILTER_SHAPE has two),
the state holds the copy Z_ij, the scaled dual U_ij and the penalty rho_ij.
Between blocks of ordinary SGD on

    f(W) + sum_ij rho_ij / 2 * ||W_i - Z_ij + U_ij||^2

the state is updated by

    Z_ij <- Proj_Sij(W_i + U_ij)        (Z-step, exact projection)
    U_ij <- U_ij + W_i - Z_ij            (U-step)
    rho_ij <- min(rho_ij * growth, max)  (schedule)
    U_ij <- U_ij * rho_old / rho_new     (only with rescale_dual)

and the primal residual ||W_i - Z_ij|| / ||W_i|| is recorded. The writers of a
residual stream (config ``couple_sums``) take their filter Z-steps jointly:
one set of filters for all of them, the exact projection of the tuple
(:func:`caffe_admm.projections.joint_group_mask`);
:meth:`ADMMState.restart` begins a new problem (a stage of ``prune_stages``)
with U = 0 and every Z_ij = W_i on the joint support. This module is
pure numpy: weights go in and out as ``dict[str, ndarray]`` keyed by layer name.
"""

import numpy as np

from caffe_admm import projections
from caffe_admm.liveness import masks_in_net_order

__all__ = ["ConstraintState", "ADMMState"]


class ConstraintState:
    """Z, U and rho of one constraint "W has at most ``keep`` ``kind`` groups".

    Parameters
    ----------
    kind : str
        One of :data:`caffe_admm.projections.KINDS`.
    keep : int
        Number of groups kept.
    rho : float
    group : int
        Caffe's ``convolution_param.group`` of the layer.
    z, u : ndarray, shape of the layer's weight
    """

    def __init__(self, kind, keep, rho, group, z, u):
        self.kind = kind
        self.keep = int(keep)
        self.rho = float(rho)
        self.group = int(group)
        self.z = z
        self.u = u

    def project(self, w, keep=None):
        """Proj(w) onto at most ``keep`` groups (default: the target ``self.keep``)."""
        return projections.project(w, self.kind, self.keep if keep is None else keep,
                                   self.group)

    def count_at(self, frac):
        """Groups kept ``frac`` (in (0, 1]) of the way from all of them to ``keep``."""
        n = projections.num_groups(self.u.shape, self.kind)
        return projections.keep_count(n, (n - (n - self.keep) * frac) / float(n), self.group)

    def support(self, w, allowed=None, frac=None, chosen=None):
        """Where Proj(w) onto :meth:`count_at` ``(frac)`` groups (None: the
        target ``keep``) is non-zero; the groups ``chosen``, where given (a
        joint projection's)."""
        return projections.support(w, self.kind, self.count(frac), self.group, allowed, chosen)

    def count(self, frac=None):
        """:meth:`count_at` ``(frac)``; None: the target ``keep``."""
        return self.keep if frac is None else self.count_at(frac)


class ADMMState:
    """ADMM variables of every pruned layer; no I/O in the constructor.

    Parameters
    ----------
    constraints : dict[str, list[ConstraintState]]
        Per layer name, its constraints.
    step : int
        Number of completed Z/U updates.
    coupled : tuple of tuple of str
        The residual streams' writers whose filter constraints are projected
        jointly (:attr:`caffe_admm.config.PruneConfig.coupled`).
    """

    def __init__(self, constraints, step=0, coupled=()):
        self.constraints = constraints
        self.step = int(step)
        self.coupled = tuple(coupled)

    @classmethod
    def initial(cls, specs, weights, frac=1.0, feeds=None, coupled=()):
        """Z = Proj(W), U = 0 for every constraint of every spec.

        Parameters
        ----------
        specs : iterable of caffe_admm.config.LayerSpec
        weights : dict[str, ndarray]
        frac : float
            Project onto :meth:`ConstraintState.count_at` ``(frac)`` groups (1: the target).
        feeds : caffe_admm.liveness.InputFeeds, optional
            Project every layer onto its live inputs only (config ``live_inputs_only``).
        coupled : tuple of tuple of str
            Writers whose filters are projected jointly.
        """
        targets = {spec.name: np.asarray(weights[spec.name], dtype=np.float32) for spec in specs}
        constraints = {}
        for spec in specs:
            w = targets[spec.name]
            states = []
            for c in spec.constraints:
                n = projections.num_groups(w.shape, c.kind)
                group = spec.group_of(c.kind)
                keep = projections.keep_count(n, c.keep_ratio, group)
                states.append(ConstraintState(c.kind, keep, spec.rho, group, np.zeros_like(w),
                                              np.zeros_like(w)))
            constraints[spec.name] = states
        state = cls(constraints, coupled=coupled)
        state._z_step(targets, frac, feeds)
        return state

    def _supports(self, value, frac, feeds, set_z=False):
        """Per layer, in net order, the intersection of the supports of its
        constraints' projections of ``value(name, c)``; a coupled stream's
        filters chosen jointly. With ``set_z``, each Z_j becomes its projection."""
        def filter_state(name):
            return next(c for c in self.constraints[name] if c.kind == "filter")

        def choose(writers, alloweds):
            states = [filter_state(n) for n in writers]
            return projections.joint_group_mask(
                [value(n, c) for n, c in zip(writers, states)], "filter",
                states[0].count(frac), states[0].group, alloweds)

        def mask_of(name, allowed, chosen):
            mask = np.ones(self.constraints[name][0].u.shape, dtype=np.bool_)
            for c in self.constraints[name]:
                v = value(name, c)
                keep = c.support(v, allowed, frac, chosen if c.kind == "filter" else None)
                if set_z:
                    c.z = np.where(keep, v, np.zeros((), dtype=v.dtype))
                mask &= keep
            return mask
        return masks_in_net_order(self.constraints, feeds, mask_of, self.coupled, choose)

    def _z_step(self, targets, frac, feeds):
        """Z_j <- Proj_j(targets[layer] + U_j), layers in net order; returns
        the supports, intersected over each layer's constraints."""
        return self._supports(lambda name, c: targets[name] + c.u, frac, feeds, set_z=True)

    def penalty(self, name, w):
        """Value and gradient of sum_j rho_j/2 ||W - Z_j + U_j||^2 for one layer.

        Returns
        -------
        value : float
        grad : ndarray, shape of ``w``: sum_j rho_j (W - Z_j + U_j)
        """
        value = 0.0
        grad = np.zeros_like(w)
        for c in self.constraints[name]:
            d = w - c.z + c.u
            value += 0.5 * c.rho * float(np.dot(d.ravel(), d.ravel()))
            grad += c.rho * d
        return value, grad

    def update(self, weights, growth=1.0, rho_max=float("inf"), frac=1.0, feeds=None,
               rescale_dual=False):
        """One Z-step (onto ``count_at(frac)`` groups; live inputs only with
        ``feeds``), U-step and rho growth; returns the primal residuals.

        With ``rescale_dual`` a change of rho rescales U so that rho * U, the
        unscaled dual, stays what it was (Boyd et al. 2011, section 3.4.1).

        Returns
        -------
        residuals : dict[str, list[float]]
            ||W - Z_j|| / ||W|| per layer and constraint, after the Z-step.
        """
        weights = {n: np.asarray(weights[n], dtype=np.float32) for n in self.constraints}
        self._z_step(weights, frac, feeds)
        residuals = {}
        for name, states in self.constraints.items():
            w = weights[name]
            norm = float(np.linalg.norm(w)) or 1.0
            res = []
            for c in states:
                c.u = c.u + w - c.z
                res.append(float(np.linalg.norm(w - c.z)) / norm)
                rho = min(c.rho * growth, rho_max)
                if rescale_dual and rho != c.rho:
                    c.u = c.u * np.float32(c.rho / rho)
                c.rho = rho
            residuals[name] = res
        self.step += 1
        return residuals

    def restart(self, weights, growth=1.0, rho_max=float("inf"), frac=1.0, feeds=None):
        """Begin a new ADMM problem at ``weights`` (the next of ``prune_stages``):
        U = 0, rho follows its schedule as in :meth:`update`, and every Z_j
        of a layer is W on the intersection of the supports of Proj_j(W)
        (onto ``count_at(frac)`` groups), a point of every constraint set.
        With one Z per constraint instead, a FILTER_SHAPE layer's penalty
        would pull W to (Z_filter + Z_shape) / 2, halfway, until the duals
        catch up; a stage of one or two steps has no time for that.
        """
        weights = {n: np.asarray(weights[n], dtype=np.float32) for n in self.constraints}
        for states in self.constraints.values():
            for c in states:
                c.u = np.zeros_like(c.u)
                c.rho = min(c.rho * growth, rho_max)
        supports = self._z_step(weights, frac, feeds)
        for name, states in self.constraints.items():
            z = np.where(supports[name], weights[name], np.zeros((), dtype=np.float32))
            for c in states:
                c.z = z.copy()
        self.step += 1

    def residuals(self, weights):
        """||W - Z_j|| / ||W|| per layer and constraint, without updating."""
        out = {}
        for name, states in self.constraints.items():
            w = np.asarray(weights[name], dtype=np.float32)
            norm = float(np.linalg.norm(w)) or 1.0
            out[name] = [float(np.linalg.norm(w - c.z)) / norm for c in states]
        return out

    def hard_prune_masks(self, weights, feeds=None, frac=None):
        """Masks of the weights kept by the hard prune.

        The support of Proj(W) for every constraint (onto ``count_at(frac)``
        groups; None: the target), intersected across the constraints of a layer
        (FILTER_SHAPE keeps kept filters x kept columns); with ``feeds``, on
        live inputs only; a coupled stream's filters chosen jointly.

        Returns
        -------
        masks : dict[str, ndarray of bool], shapes of the weights
        """
        return self._supports(lambda name, c: np.asarray(weights[name]), frac, feeds)

    def to_arrays(self):
        """Flatten into a dict of arrays for ``np.savez``."""
        out = {"step": np.array(self.step)}
        for name, states in self.constraints.items():
            out["layers/%s/count" % name] = np.array(len(states))
            for j, c in enumerate(states):
                key = "layers/%s/%d/" % (name, j)
                out[key + "kind"] = np.array(c.kind)
                out[key + "keep"] = np.array(c.keep)
                out[key + "rho"] = np.array(c.rho)
                out[key + "group"] = np.array(c.group)
                out[key + "z"] = c.z
                out[key + "u"] = c.u
        return out

    @classmethod
    def from_arrays(cls, arrays, coupled=()):
        """Inverse of :meth:`to_arrays` (``coupled`` comes from the config)."""
        constraints = {}
        names = [k[len("layers/"):-len("/count")] for k in arrays
                 if k.startswith("layers/") and k.endswith("/count")]
        for name in names:
            states = []
            for j in range(int(arrays["layers/%s/count" % name])):
                key = "layers/%s/%d/" % (name, j)
                states.append(ConstraintState(
                    str(arrays[key + "kind"]), int(arrays[key + "keep"]),
                    float(arrays[key + "rho"]), int(arrays[key + "group"]),
                    np.array(arrays[key + "z"]), np.array(arrays[key + "u"])))
            constraints[name] = states
        return cls(constraints, step=int(arrays["step"]), coupled=coupled)

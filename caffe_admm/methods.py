"""The three ways of finding the groups to prune, behind one interface.

Every method runs ``rounds`` blocks of solver iterations (ADMM steps, SSL
rounds, magnitude-pruning rounds: the same budget for all), then gives the
masks of the hard prune; masked retraining follows for all alike.

* :class:`ADMMMethod`: StructADMM (Zhang et al., arXiv 1807.11091): the hooks
  add rho (W - Z + U); Z and U are updated after every block.
* :class:`SSLMethod`: SSL (Wen et al., NIPS 2016): the hooks add the
  group-Lasso subgradient lambda W_g / ||W_g|| (0 where W_g = 0); the hard
  prune keeps the groups of largest norm at the config's keep ratio (matched
  sparsity), or drops the groups under ``ssl_threshold`` x the largest norm.
  A coupled stream's writers (config ``couple_sums``) keep the same
  filters, so their filters' Lasso groups are joint (one group per stream
  channel, across all the writers: :func:`joint_lasso_penalty`) and the
  hard prune ranks them by joint norm.
* :class:`MagnitudeMethod`: iterative pruning (Han et al., NIPS 2015): before
  each block the weights are pruned to a keep ratio that falls linearly from
  1 to the target, by group norm (structured) or magnitude; the block trains
  with the mask.

Each method tells the hook layers what to do (:meth:`hook_terms`), reacts to
the end of a block (:meth:`end_round`, which returns what is logged), and
gives its final masks and its state for checkpoints, as numpy arrays.
"""

import numpy as np

from caffe_admm import projections
from caffe_admm.admm import ADMMState
from caffe_admm.liveness import masks_in_net_order

__all__ = ["ADMMMethod", "SSLMethod", "SlimmingMethod", "MagnitudeMethod", "make_method",
           "target_masks", "lasso_penalty", "joint_lasso_penalty"]


def lasso_penalty(w, kind, lam):
    """Group Lasso lam * sum_g ||W_g||_2 and its subgradient (0 at W_g = 0).

    Returns
    -------
    value : float
    grad : ndarray, shape of ``w``
    """
    norms = projections.group_norms(w, kind)
    safe = np.where(norms > 0, norms, 1.0)
    scale = np.where(norms > 0, lam / safe, 0.0)
    return lam * float(norms.sum()), (projections.expand(scale, np.shape(w), kind) * w)


def joint_lasso_penalty(ws, lams, own=0):
    """The group Lasso of the filters of several weights taken together (the
    writers of a coupled stream), one group per filter index f:

        sum_f ||(lam_1 W_1,f, ..., lam_n W_n,f)||_2

    (for equal lambdas, lam times the joint filter norms), and its subgradient
    with respect to ``ws[own]``: lam_own^2 W_own,f / that norm (0 where it is 0).

    Returns
    -------
    value : float
    grad : ndarray, shape of ``ws[own]``
    """
    norms = projections.joint_group_norms([lam * w for lam, w in zip(lams, ws)], "filter")
    safe = np.where(norms > 0, norms, 1.0)
    scale = np.where(norms > 0, lams[own] ** 2 / safe, 0.0)
    w = ws[own]
    return float(norms.sum()), projections.expand(scale, np.shape(w), "filter") * w


def _keep_counts(spec, shape, ratio_of=None):
    out = []
    for c in spec.constraints:
        group = spec.group_of(c.kind)
        ratio = c.keep_ratio if ratio_of is None else ratio_of(c.keep_ratio)
        out.append((c.kind, projections.keep_count(projections.num_groups(shape, c.kind),
                                                   ratio, group), group))
    return out


def _support(w, counts, allowed=None, chosen=None):
    mask = np.ones(np.shape(w), dtype=np.bool_)
    for kind, k, group in counts:
        mask &= projections.support(w, kind, k, group, allowed,
                                    chosen if kind == "filter" else None)
    return mask


def _supports(cfg, weights, feeds, counts_of):
    """Per layer, the intersection of its constraints' supports, in net order;
    on live inputs only when ``feeds`` (config ``live_inputs_only``) is given;
    the filters of a coupled stream's writers (config ``couple_sums``) chosen
    by their joint norm."""
    specs = {spec.name: spec for spec in cfg.layers}

    def counts(name):
        return counts_of(specs[name], np.shape(weights[name]))

    def choose(writers, alloweds):
        _, k, group = next(t for t in counts(writers[0]) if t[0] == "filter")
        return projections.joint_group_mask([weights[n] for n in writers], "filter", k, group,
                                            alloweds)
    return masks_in_net_order(specs, feeds, lambda name, allowed, chosen: _support(
        weights[name], counts(name), allowed, chosen), cfg.coupled, choose)


class ADMMMethod:
    """StructADMM: the penalty rho (W - Z + U) and the Z/U updates.

    With config ``prune_stages`` S > 1 (progressive ADMM with hard prunes, Ye
    et al., arXiv 1810.07378) the blocks fall into S stages; stage s projects
    onto s/S of the way to the target, ends with a hard prune to that support
    (kept in :attr:`masks`, applied from then on) and the next stage starts
    from the pruned weights with U = 0. With ``penalty_pruned_only`` each
    penalty term covers only the weights its Z zeroes.
    """
    name = "admm"

    def __init__(self, cfg, state=None, feeds=None, masks=None):
        self.cfg = cfg
        self.state = state
        self.feeds = feeds
        self.masks = masks or {}

    @property
    def round(self):
        return self.state.step

    def _stage(self, block):
        """The stage (0-based) that block ``block`` (0-based) belongs to."""
        return block * self.cfg.prune_stages // self.cfg.admm_steps

    def _frac(self, block):
        """How far block ``block``'s Z goes towards the target (config
        ``progressive`` or ``prune_stages``)."""
        if self.cfg.prune_stages > 1:
            return min(1.0, (self._stage(block) + 1) / float(self.cfg.prune_stages))
        if not self.cfg.progressive:
            return 1.0
        return min(1.0, (block + 1) / float(self.cfg.progressive_steps))

    def start(self, weights):
        self.masks = {}
        self.state = ADMMState.initial(self.cfg.layers, weights, self._frac(0), self.feeds,
                                       self.cfg.coupled)

    def hook_terms(self, name):
        states = self.state.constraints[name]
        if self.cfg.penalty_pruned_only:
            penalty = [(c.rho, c.z, c.u, c.z == 0) for c in states]
        else:
            penalty = [(c.rho, c.z, c.u) for c in states]
        return {"penalty": penalty, "mask": self.masks.get(name)}

    def _within_masks(self, weights):
        """The weights with those pruned by earlier stages set to 0."""
        return {n: np.where(self.masks[n], w, np.zeros((), dtype=np.float32))
                if n in self.masks else w for n, w in weights.items()}

    def _hard_prune(self, weights, frac=None):
        """Hard-prune masks at ``frac`` of the way, within the masks so far."""
        masks = self.state.hard_prune_masks(self._within_masks(weights), self.feeds, frac)
        return {n: m & self.masks[n] if n in self.masks else m for n, m in masks.items()}

    def end_round(self, weights):
        block = self.state.step
        frac = self._frac(block + 1)
        log = {}
        if block + 1 < self.cfg.admm_steps and self._stage(block + 1) != self._stage(block):
            residuals = self.state.residuals(weights)  # of the stage that ends
            self.masks = self._hard_prune(weights, self._frac(block))
            self.state.restart(self._within_masks(weights), self.cfg.rho_growth,
                               self.cfg.rho_max, frac, self.feeds)
            log["kept"] = {n: float(m.mean()) for n, m in self.masks.items()}
        else:
            residuals = self.state.update(weights, self.cfg.rho_growth, self.cfg.rho_max, frac,
                                          self.feeds, rescale_dual=self.cfg.rescale_dual)
        log.update({"residuals": residuals,
                    "rho": {n: [c.rho for c in cs] for n, cs in self.state.constraints.items()}})
        if self.cfg.progressive or self.cfg.prune_stages > 1:
            log["z_groups"] = {n: [c.count_at(frac) for c in cs]
                               for n, cs in self.state.constraints.items()}
        return log

    def describe(self, log):
        text = "residual " + " ".join("%s=%s" % (n, "/".join("%.2e" % r for r in rs))
                                      for n, rs in log["residuals"].items())
        if "kept" in log:
            text += "; hard prune, kept " + " ".join("%s=%.3f" % kv for kv in log["kept"].items())
        return text

    def final_masks(self, weights):
        return self._hard_prune(weights)

    def target_groups(self, name):
        return {c.kind: c.keep for c in self.state.constraints[name]}

    def to_arrays(self):
        out = self.state.to_arrays()
        out.update({"masks/" + n: m for n, m in self.masks.items()})
        return out

    @classmethod
    def from_arrays(cls, cfg, arrays, feeds=None):
        return cls(cfg, ADMMState.from_arrays(arrays, cfg.coupled), feeds,
                   _masks_from_arrays(arrays))


def _masks_from_arrays(arrays):
    return {k[len("masks/"):]: np.asarray(v, dtype=np.bool_) for k, v in arrays.items()
            if k.startswith("masks/")}


class SSLMethod:
    """Group Lasso on the config's groups, then the smallest groups are zeroed."""
    name = "ssl"

    def __init__(self, cfg, round_=0, feeds=None):
        self.cfg = cfg
        self._round = int(round_)
        self.feeds = feeds
        self._stream = {n: writers for writers in cfg.coupled for n in writers}

    @property
    def round(self):
        return self._round

    def start(self, weights):
        self._round = 0

    def hook_terms(self, name):
        """Per constraint (lambda, kind, partners): ``partners``, the (layer,
        lambda) of the other writers of a coupled stream whose filters share
        this layer's Lasso groups (:func:`joint_lasso_penalty`); else empty."""
        spec = self.cfg.layer(name)
        partners = tuple((n, self.cfg.layer(n).lasso_lambda)
                         for n in self._stream.get(name, ()) if n != name)
        return {"lasso": [(spec.lasso_lambda, c.kind, partners if c.kind == "filter" else ())
                          for c in spec.constraints]}

    def _norms(self, weights, name, kind):
        """The group norms of ``kind`` in layer ``name``: for the filters of a
        coupled stream's writer, their joint norms over the stream."""
        if kind == "filter" and name in self._stream:
            return projections.joint_group_norms([weights[n] for n in self._stream[name]],
                                                 "filter")
        return projections.group_norms(weights[name], kind)

    def end_round(self, weights):
        self._round += 1
        log = {}
        for spec in self.cfg.layers:
            entry = {}
            for c in spec.constraints:
                norms = self._norms(weights, spec.name, c.kind)
                entry[c.kind] = float((norms < 1e-3 * max(norms.max(), 1e-12)).mean())
            log[spec.name] = entry
        return {"small_group_fraction": log}

    def describe(self, log):
        return "groups under 1e-3 of max norm: " + " ".join(
            "%s=%s" % (n, "/".join("%.2f" % v for v in e.values()))
            for n, e in log["small_group_fraction"].items())

    def final_masks(self, weights):
        if self.cfg.ssl_threshold is None:
            return _supports(self.cfg, weights, self.feeds, _keep_counts)

        def over(norms):
            return norms >= self.cfg.ssl_threshold * norms.max()

        def mask_of(name, allowed, chosen):
            """The groups over the threshold, norms taken on the live inputs."""
            w = weights[name]
            if allowed is not None:
                w = np.where(allowed, w, np.zeros((), dtype=w.dtype))
            mask = np.ones(w.shape, dtype=np.bool_) if allowed is None else allowed.copy()
            for c in self.cfg.layer(name).constraints:
                keep = (chosen if c.kind == "filter" and chosen is not None
                        else over(projections.group_norms(w, c.kind)))
                mask &= projections.expand(keep, w.shape, c.kind)
            return mask

        def choose(writers, alloweds):
            return over(projections.joint_group_norms([weights[n] for n in writers], "filter",
                                                      alloweds))
        return masks_in_net_order([spec.name for spec in self.cfg.layers], self.feeds, mask_of,
                                  self.cfg.coupled, choose)

    def target_groups(self, name):
        return None

    def to_arrays(self):
        return {"round": np.array(self._round)}

    @classmethod
    def from_arrays(cls, cfg, arrays, feeds=None):
        return cls(cfg, int(arrays["round"]), feeds)


def _scale_proxies(cfg, weights):
    """SLIMMING: per pruned layer, a stand-in of its weight's shape whose
    filter norms are the |gamma| of its channels (``weights`` holds the
    Scale layers' gammas too): what SSL's ranking, joint norms and
    threshold then read."""
    out, scales = {}, dict(cfg.scales)
    for spec in cfg.layers:
        if spec.name not in scales:  # kept whole: its own norms, any ranking
            out[spec.name] = weights[spec.name]
            continue
        w = np.shape(weights[spec.name])
        gamma = np.abs(np.asarray(weights[scales[spec.name]], dtype=np.float64))
        per_filter = np.sqrt(float(np.prod(w[1:])))
        out[spec.name] = np.broadcast_to(
            (gamma / per_filter).reshape((-1,) + (1,) * (len(w) - 1)), w)
    return out


class SlimmingMethod(SSLMethod):
    """Network Slimming (Liu et al., ICCV 2017), SSL's baseline for nets with
    BatchNorm: the Lasso goes on the scale gamma of each pruned layer's
    output channels (the Scale after its BatchNorm, ``cfg.scales``), an L1
    penalty lambda |gamma_c| (a coupled stream's writers: the joint
    sqrt(sum_j gamma_j,c^2) per channel), and the hard prune keeps the
    filters of largest |gamma| (joint over a stream), each layer at its keep
    ratio or, with ``slimming_global``, at counts from one ranking of all
    the layers' scales (:func:`_global_counts`). A Lasso on the filters
    themselves has little hold there: the BatchNorm undoes their scale.
    The hooks of the pruned layers add nothing in the first phase; those of
    the Scale layers add the Lasso. ``weights`` given to it hold the Scale
    layers' gammas too, by layer name."""
    name = "slimming"

    def __init__(self, cfg, round_=0, feeds=None):
        super().__init__(cfg, round_, feeds)
        self._owner = {scale: name for name, scale in cfg.scales}

    def hook_terms(self, name):
        if name not in self._owner:
            return {}
        owner = self.cfg.layer(self._owner[name])
        scales = dict(self.cfg.scales)
        partners = tuple((scales[n], self.cfg.layer(n).lasso_lambda)
                         for n in self._stream.get(owner.name, ()) if n != owner.name)
        return {"lasso": [(owner.lasso_lambda, "filter", partners)]}

    def end_round(self, weights):
        return super().end_round(_scale_proxies(self.cfg, weights))

    def describe(self, log):
        return "scales under 1e-3 of max: " + " ".join(
            "%s=%.2f" % (n, e["filter"]) for n, e in log["small_group_fraction"].items())

    def final_masks(self, weights):
        if self.cfg.ssl_threshold is None:
            return target_masks(self.cfg, weights, self.feeds)
        return super().final_masks(_scale_proxies(self.cfg, weights))


class MagnitudeMethod:
    """Iterative pruning: keep ratio falls linearly to the target over the rounds."""
    name = "magnitude"

    def __init__(self, cfg, round_=0, masks=None, feeds=None):
        self.cfg = cfg
        self._round = int(round_)
        self.masks = masks or {}
        self.feeds = feeds

    @property
    def round(self):
        return self._round

    def _ratio(self, target):
        frac = (self._round + 1) / float(self.cfg.admm_steps)
        return 1.0 - (1.0 - target) * frac

    def start(self, weights):
        self._round = 0
        self.prune(weights)

    def prune(self, weights):
        """Masks for this round's keep ratio, from the current weights."""
        self.masks.update(_supports(self.cfg, weights, self.feeds,
                                    lambda spec, shape: _keep_counts(spec, shape, self._ratio)))

    def hook_terms(self, name):
        return {"mask": self.masks[name]}

    def end_round(self, weights):
        self._round += 1
        log = {"kept": {n: float(m.mean()) for n, m in self.masks.items()}}
        if self._round < self.cfg.admm_steps:
            self.prune(weights)
        return log

    def describe(self, log):
        return "kept " + " ".join("%s=%.3f" % kv for kv in log["kept"].items())

    def final_masks(self, weights):
        return {n: m.copy() for n, m in self.masks.items()}

    def target_groups(self, name):
        return None

    def to_arrays(self):
        out = {"round": np.array(self._round)}
        out.update({"masks/" + n: m for n, m in self.masks.items()})
        return out

    @classmethod
    def from_arrays(cls, cfg, arrays, feeds=None):
        return cls(cfg, int(arrays["round"]), _masks_from_arrays(arrays), feeds)


def _global_counts(cfg, weights):
    """SLIMMING with ``slimming_global``: a :func:`_keep_counts` whose counts
    come from one ranking of all the pruned layers' channels by |gamma|
    (``weights`` holds the Scale layers' gammas by layer name).

    The filters kept in all are those the keep ratios keep, layer by layer.
    Each layer (a coupled stream: its writers together) first keeps its
    channels of largest |gamma| up to its floor (``slimming_min_keep`` of
    them, else one); the rest go to the channels of largest |gamma| over all
    the layers, while they fit. A stream's channel ranks by the root mean
    square of its writers' gammas and takes one filter per writer. Layers at
    keep 1 keep their counts."""
    scales = dict(cfg.scales)
    stream = {n: writers for writers in cfg.coupled for n in writers}
    owners, counts, spare = [], [], 0  # per owner (a layer, or a stream's writers)
    channels = []  # (-score, owner, channel, filters it takes)
    for spec in cfg.layers:
        writers = stream.get(spec.name, (spec.name,))
        if spec.name not in scales or writers in owners:
            continue
        gammas = np.array([np.abs(np.asarray(weights[scales[w]], dtype=np.float64))
                           for w in writers])
        score = np.sqrt((gammas ** 2).mean(axis=0))
        floor = (projections.keep_count(len(score), cfg.slimming_min_keep)
                 if cfg.slimming_min_keep else 1)
        top = set(np.argsort(-score, kind="stable")[:floor].tolist())
        spare += len(writers) * (projections.keep_count(len(score),
                                                        spec.constraints[0].keep_ratio) - floor)
        channels += [(-score[c], len(owners), c, len(writers)) for c in range(len(score))
                     if c not in top]
        owners.append(writers)
        counts.append(floor)
    for _, owner, _, size in sorted(channels):
        if size <= spare:
            spare -= size
            counts[owner] += 1
    kept = {n: k for writers, k in zip(owners, counts) for n in writers}

    def counts_of(spec, shape):
        if spec.name not in kept:
            return _keep_counts(spec, shape)
        return [("filter", kept[spec.name], 1)]
    return counts_of


def target_masks(cfg, weights, feeds=None):
    """The masks at the config's keep ratios, chosen by ``weights``: what a
    hard prune at the target keeps (ADMM's, magnitude pruning's last round,
    SSL's without ``ssl_threshold``; SLIMMING's by the scales, which
    ``weights`` then holds too), in net order, live inputs only where
    ``feeds`` is given, a coupled stream by joint norm.

    Returns
    -------
    dict[str, ndarray of bool], each the shape of ``weights[name]``
    """
    counts_of = _keep_counts
    if cfg.method == "slimming":  # ranked by the scales (``weights`` holds them)
        if cfg.slimming_global:
            counts_of = _global_counts(cfg, weights)
        weights = _scale_proxies(cfg, weights)
    return _supports(cfg, weights, feeds, counts_of)


def make_method(cfg, arrays=None, feeds=None):
    """The method a config names, fresh or restored from checkpoint arrays.

    ``feeds`` (:class:`caffe_admm.liveness.InputFeeds`) makes every support
    keep live inputs only (config ``live_inputs_only``).
    """
    cls = {"admm": ADMMMethod, "ssl": SSLMethod, "magnitude": MagnitudeMethod,
           "slimming": SlimmingMethod}[cfg.method]
    return cls(cfg, feeds=feeds) if arrays is None else cls.from_arrays(cfg, arrays, feeds)

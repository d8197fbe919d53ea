"""Caffe Python layers that inject the ADMM terms into a layer's weight gradient.

A :class:`WeightHook` layer declares one parameter blob whose ``param.name``
equals the name given to the pruned layer's weight, so Caffe shares both the
data and the diff of the two blobs (``Net::ShareWeights``). The hook has no
bottoms and one scalar top with ``loss_weight: 1``, which makes Caffe call its
``backward``; there it adds

    rho_j * (W - Z_j + U_j)        summed over the layer's constraints j

to the shared weight diff, which is the gradient of its top,
``sum_j rho_j / 2 * ||W - Z_j + U_j||^2``: the augmented-Lagrangian term of
StructADMM (arXiv 1807.11091, eq. 5) appears in the solver's loss.

With a mask set (masked retraining), ``forward`` zeroes the pruned weights
before they are used and ``backward`` zeroes their gradient. The hooks are put
before every other layer, so their ``backward`` runs after all the others have
accumulated their gradients, and the update of a pruned weight is exactly 0
for every Caffe solver type once its history starts at zero.

Because the hooks run before every other layer, ``forward`` also refuses
non-finite weights (raising :class:`NonFiniteWeights` out of ``solver.step``)
before Caffe computes with them: NaN activations make Caffe's MAX pooling
write outside its buffers in backward (its argmax stays -1), which corrupts
the process's memory.

The driver (:mod:`caffe_admm.solver`) sets ``penalty`` and ``mask`` on the
layer objects it finds in ``solver.net.layers``.
"""

import json

import numpy as np

from caffe_admm.backend import caffe
from caffe_admm.masks import filter_mask
from caffe_admm.methods import joint_lasso_penalty, lasso_penalty

__all__ = ["WeightHook", "NonFiniteWeights", "HOOK_PREFIX"]

HOOK_PREFIX = "admm_hook/"


class NonFiniteWeights(FloatingPointError):
    """A hooked weight blob holds NaN or inf (the run diverged)."""


class WeightHook(caffe.Layer):
    """Adds the ADMM penalty gradient to, and masks, a shared weight blob.

    ``param_str`` (JSON): ``{"layer": "conv1", "shapes": [[20, 1, 5, 5], [20]]}``,
    the shapes of the weight and (if the layer has one) the bias it shares.

    Attributes set by the driver
    ----------------------------
    penalty : list of (rho, z, u) or (rho, z, u, where), or empty
        z, u : ndarray, shape of the weight; ``where`` (same shape, 0/1)
        limits the term to some weights: rho/2 ||where * (W - Z + U)||^2
    lasso : list of (lambda, kind, partners) or empty
        SSL's group Lasso, lambda * sum_g ||W_g||, groups of ``kind``
        (see :mod:`caffe_admm.projections`). ``partners``: empty, or the
        (WeightHook, lambda) of the other writers of a coupled stream, whose
        filters join this layer's in each group
        (:func:`caffe_admm.methods.joint_lasso_penalty`); each writer's top
        carries an equal share of the joint term's value.
    mask : ndarray, shape of the weight, 1 = kept, or None
    bias_mask : ndarray, shape of the bias, or None (always, for a layer
        without a bias: ``bias_term: false``)

    Set both with :meth:`set_mask`.
    """

    def setup(self, bottom, top):
        try:
            params = json.loads(self.param_str)
            self.target = str(params["layer"])
            shapes = [[int(d) for d in shape] for shape in params["shapes"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError("WeightHook param_str must be JSON with 'layer' and 'shapes', "
                             "got %r (%s)" % (self.param_str, exc)) from exc
        if bottom or len(top) != 1:
            raise ValueError("WeightHook for %r takes no bottom and one top" % self.target)
        if not self.blobs:
            for shape in shapes:
                self.blobs.add_blob(*shape)
        self.penalty = []
        self.lasso = []
        self.mask = None
        self.bias_mask = None
        self._lasso_grad = None

    def set_mask(self, mask):
        """Mask the weights with ``mask`` (bool or 0/1, shape of the weight;
        None: no mask) and the biases of its fully pruned filters, if the
        layer has biases."""
        self.mask = None if mask is None else np.asarray(mask, dtype=np.float32)
        self.bias_mask = (None if mask is None or len(self.blobs) < 2
                          else filter_mask(mask).astype(np.float32))

    @property
    def penalty(self):
        """The terms (rho_j, Z_j, U_j); setting them precomputes what the passes need.

        With R = sum_j rho_j, B = sum_j rho_j (Z_j - U_j) and
        K = sum_j rho_j / 2 ||Z_j - U_j||^2, the gradient is R W - B and the value
        R/2 ||W||^2 - W.B + K: one pass over W each, whatever the number of terms.
        With a term's ``where``, its rho_j is rho_j * where, and R an array.
        """
        return self._terms

    @penalty.setter
    def penalty(self, terms):
        self._terms = list(terms)
        self._rho_sum, self._b, self._k = 0.0, None, 0.0
        for term in self._terms:
            rho, z, u = term[:3]
            c = np.asarray(z, dtype=np.float64) - u
            if len(term) > 3:
                rho = float(rho) * np.asarray(term[3], dtype=np.float64)
            self._rho_sum = self._rho_sum + rho
            self._b = rho * c if self._b is None else self._b + rho * c
            self._k += 0.5 * float(np.sum(rho * c * c))
        if self._b is not None:
            self._b = self._b.astype(np.float32)
        if not np.isscalar(self._rho_sum):
            self._rho_sum = self._rho_sum.astype(np.float32)

    def reshape(self, bottom, top):
        top[0].reshape(1)

    def forward(self, bottom, top):
        w = self.blobs[0].data
        if self.mask is not None:
            np.multiply(w, self.mask, out=w)
        if self.bias_mask is not None:
            np.multiply(self.blobs[1].data, self.bias_mask, out=self.blobs[1].data)
        flat = w.ravel()
        ww = float(np.dot(flat, flat))  # NaN/inf in w make this non-finite
        if not np.isfinite(ww):
            raise NonFiniteWeights("the weights of layer %r are not finite" % self.target)
        value = 0.0
        if self._b is not None:
            if np.isscalar(self._rho_sum):
                quad = self._rho_sum * ww
            else:
                quad = float(np.dot(flat * self._rho_sum.ravel(), flat))
            value = max(0.5 * quad - float(np.dot(flat, self._b.ravel())) + self._k, 0.0)
        self._lasso_grad = None
        for lam, kind, partners in self.lasso:
            if partners:
                v, g = joint_lasso_penalty([w] + [h.blobs[0].data for h, _ in partners],
                                           [lam] + [l for _, l in partners])
                v /= 1 + len(partners)
            else:
                v, g = lasso_penalty(w, kind, lam)
            value += v
            self._lasso_grad = g if self._lasso_grad is None else self._lasso_grad + g
        top[0].data[...] = value

    def backward(self, top, propagate_down, bottom):
        diff = self.blobs[0].diff
        if self._b is not None:
            scale = float(top[0].diff[0])
            diff += (scale * self._rho_sum) * self.blobs[0].data
            if scale == 1.0:
                diff -= self._b
            else:
                diff -= scale * self._b
        if self._lasso_grad is not None:
            diff += float(top[0].diff[0]) * self._lasso_grad
        if self.mask is not None:
            np.multiply(diff, self.mask, out=diff)
        if self.bias_mask is not None:
            np.multiply(self.blobs[1].diff, self.bias_mask, out=self.blobs[1].diff)

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

__all__ = ["WeightHook", "NonFiniteWeights", "HOOK_PREFIX"]

HOOK_PREFIX = "admm_hook/"


class NonFiniteWeights(FloatingPointError):
    """A hooked weight blob holds NaN or inf (the run diverged)."""


class WeightHook(caffe.Layer):
    """Adds the ADMM penalty gradient to, and masks, a shared weight blob.

    ``param_str`` (JSON): ``{"layer": "conv1", "shape": [20, 1, 5, 5]}``.

    Attributes set by the driver
    ----------------------------
    penalty : list of (rho, z, u) or empty
        z, u : ndarray, shape ``shape``
    mask : ndarray of bool, shape ``shape``, or None
    """

    def setup(self, bottom, top):
        try:
            params = json.loads(self.param_str)
            self.target = str(params["layer"])
            shape = [int(s) for s in params["shape"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError("WeightHook param_str must be JSON with 'layer' and 'shape', "
                             "got %r (%s)" % (self.param_str, exc)) from exc
        if bottom or len(top) != 1:
            raise ValueError("WeightHook for %r takes no bottom and one top" % self.target)
        if not self.blobs:
            self.blobs.add_blob(*shape)
        self.penalty = []
        self.mask = None
        self._grad = None

    def reshape(self, bottom, top):
        top[0].reshape(1)

    def forward(self, bottom, top):
        w = self.blobs[0].data
        if self.mask is not None:
            np.multiply(w, self.mask, out=w)
        value = 0.0
        grad = None
        for rho, z, u in self.penalty:
            d = w - z
            d += u
            value += 0.5 * rho * float(np.dot(d.ravel(), d.ravel()))
            d *= rho
            grad = d if grad is None else grad + d
        if not self.penalty:
            value = float(np.dot(w.ravel(), w.ravel())) * 0.0  # NaN/inf survive the product
        if not np.isfinite(value):
            raise NonFiniteWeights("the weights of layer %r are not finite" % self.target)
        self._grad = grad
        top[0].data[...] = value

    def backward(self, top, propagate_down, bottom):
        diff = self.blobs[0].diff
        if self._grad is not None:
            diff += top[0].diff[0] * self._grad
        if self.mask is not None:
            np.multiply(diff, self.mask, out=diff)

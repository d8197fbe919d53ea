"""Random small nets through compaction: each compacts to a net whose outputs
equal the masked net's, or is refused with an error naming the layer.

The nets chain random blocks (convolutions with and without padding or
groups, BatchNorm + Scale, ReLU, ReLU6, Sigmoid, padded max and average
pooling, residual sums, Concats of two branches, depthwise convolutions, a
pooling followed by a Deconvolution, squeeze-and-excitation gates, a Slice
into halves, then their maximum or their Concat swapped) and end in an
InnerProduct. Their weights are random with 40% of the filters zero, half of
those keeping their biases (constants to fold), and some input channels zero.
"""

import os

import numpy as np
import pytest

from caffe_admm import compact
from caffe_admm.backend import caffe

from conftest import write
from test_compact import random_params


class _Net:
    """Prototxt text of a random net, block by block."""

    def __init__(self, rng):
        self.rng = rng
        self.lines = ['layer { name: "data" type: "Input" top: "data" '
                      'input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }']
        self.count = 0

    def name(self, prefix):
        self.count += 1
        return "%s%d" % (prefix, self.count)

    def add(self, text, **fields):
        self.lines.append("layer { " + text % fields + " }")
        return fields.get("top")

    def conv(self, bottom, out, pad=None, group=1):
        pad = int(self.rng.integers(0, 2)) if pad is None else pad
        bias = "" if self.rng.random() < 0.8 else " bias_term: false"
        return self.add('name: "%(top)s" type: "Convolution" bottom: "%(bottom)s" top: "%(top)s" '
                        'convolution_param { num_output: %(out)d kernel_size: %(k)d pad: %(pad)d '
                        'group: %(group)d%(bias)s }', top=self.name("c"), bottom=bottom, out=out,
                        k=3 if pad else 1, pad=pad, group=group, bias=bias)

    def after(self, blob):
        """Optional BatchNorm + Scale, then a ReLU, a ReLU6 (Clip), a Sigmoid, a padded
        pooling or nothing."""
        if self.rng.random() < 0.4:
            self.add('name: "%(b)s_bn" type: "BatchNorm" bottom: "%(b)s" top: "%(b)s"', b=blob)
            self.add('name: "%(b)s_sc" type: "Scale" bottom: "%(b)s" top: "%(b)s" '
                     'scale_param { bias_term: true }', b=blob)
        r = self.rng.random()
        if r < 0.5:
            self.add('name: "%(b)s_relu" type: "ReLU" bottom: "%(b)s" top: "%(b)s"', b=blob)
        elif r < 0.6:  # ReLU6
            self.add('name: "%(b)s_relu6" type: "Clip" bottom: "%(b)s" top: "%(b)s" '
                     'clip_param { min: 0 max: 6 }', b=blob)
        elif r < 0.7:
            return self.add('name: "%(top)s" type: "Sigmoid" bottom: "%(b)s" top: "%(top)s"',
                            top=self.name("s"), b=blob)
        elif r < 0.8:
            return self.add('name: "%(top)s" type: "Pooling" bottom: "%(b)s" top: "%(top)s" '
                            'pooling_param { pool: %(pool)s kernel_size: 3 stride: 1 pad: 1 }',
                            top=self.name("p"), b=blob,
                            pool=("MAX", "AVE")[int(self.rng.integers(0, 2))])
        return blob

    def squeeze_excite(self, blob, channels):
        """An SE block: global pooling, a 1x1 down and up, a Sigmoid, the
        factor flattened (Flatten, or Reshape with given or inferred sizes),
        and a Scale of ``blob`` by it."""
        squeeze = self.add('name: "%(top)s" type: "Pooling" bottom: "%(b)s" top: "%(top)s" '
                           'pooling_param { pool: AVE global_pooling: true }',
                           top=self.name("g"), b=blob)
        down = self.conv(squeeze, 2, pad=0)
        self.add('name: "%(b)s_relu" type: "ReLU" bottom: "%(b)s" top: "%(b)s"', b=down)
        up = self.conv(down, channels, pad=0)
        self.add('name: "%(b)s_sig" type: "Sigmoid" bottom: "%(b)s" top: "%(b)s"', b=up)
        flat = ("type: \"Flatten\"", "type: \"Reshape\" reshape_param { shape { dim: 0 dim: -1 } }",
                "type: \"Reshape\" reshape_param { shape { dim: -1 dim: %d } }" % channels)[
                    int(self.rng.integers(0, 3))]
        factor = self.add('name: "%(top)s" %(flat)s bottom: "%(b)s" top: "%(top)s"',
                          top=self.name("f"), flat=flat, b=up)
        return self.add('name: "%(top)s" type: "Scale" bottom: "%(b)s" bottom: "%(f)s" '
                        'top: "%(top)s" scale_param { axis: 0 }', top=self.name("x"), b=blob,
                        f=factor)

    def text(self):
        blob, channels = "data", 3
        for _ in range(int(self.rng.integers(2, 6))):
            r = self.rng.random()
            if r < 0.45 or channels == 3:
                out = int(self.rng.choice([4, 6, 8]))
                group = 2 if channels % 2 == 0 and out % 2 == 0 and self.rng.random() < 0.2 else 1
                blob, channels = self.after(self.conv(blob, out, group=group)), out
            elif r < 0.6:  # residual
                branch = self.after(self.conv(blob, channels, pad=1))
                blob = self.add('name: "%(top)s" type: "Eltwise" bottom: "%(a)s" bottom: "%(b)s" '
                                'top: "%(top)s"', top=self.name("e"), a=blob, b=branch)
            elif r < 0.75:  # two branches, concatenated
                a, b = (self.after(self.conv(blob, 4)) for _ in range(2))
                blob = self.add('name: "%(top)s" type: "Concat" bottom: "%(a)s" bottom: "%(b)s" '
                                'top: "%(top)s"', top=self.name("k"), a=a, b=b)
                channels = 8
            elif r < 0.85:  # depthwise
                blob = self.after(self.add(
                    'name: "%(top)s" type: "Convolution" bottom: "%(b)s" top: "%(top)s" '
                    'convolution_param { num_output: %(c)d group: %(c)d kernel_size: 3 pad: 1 }',
                    top=self.name("dw"), b=blob, c=channels))
            elif r < 0.9:  # down, and up again through a Deconvolution
                down = self.add('name: "%(top)s" type: "Pooling" bottom: "%(b)s" top: "%(top)s" '
                                'pooling_param { pool: MAX kernel_size: 2 stride: 2 }',
                                top=self.name("d"), b=blob)
                channels = int(self.rng.choice([4, 6]))
                blob = self.after(self.add(
                    'name: "%(top)s" type: "Deconvolution" bottom: "%(b)s" top: "%(top)s" '
                    'convolution_param { num_output: %(c)d kernel_size: 2 stride: 2 }',
                    top=self.name("u"), b=down, c=channels))
            elif r < 0.95 and channels % 2 == 0:  # halves: their maximum, or swapped
                a, b = self.name("h"), self.name("h")
                self.add('name: "%(top)s" type: "Slice" bottom: "%(b)s" top: "%(a)s" top: "%(c)s"',
                         top=self.name("sl"), b=blob, a=a, c=b)
                if self.rng.random() < 0.5:
                    blob = self.add('name: "%(top)s" type: "Eltwise" bottom: "%(a)s" bottom: '
                                    '"%(b)s" top: "%(top)s" eltwise_param { operation: MAX }',
                                    top=self.name("m"), a=a, b=b)
                    channels //= 2
                else:
                    blob = self.add('name: "%(top)s" type: "Concat" bottom: "%(b)s" bottom: '
                                    '"%(a)s" top: "%(top)s"', top=self.name("k"), a=a, b=b)
            else:
                blob = self.squeeze_excite(blob, channels)
        self.add('name: "fc" type: "InnerProduct" bottom: "%(b)s" top: "fc" '
                 'inner_product_param { num_output: 3 }', b=blob)
        return "\n".join(self.lines)


def sparse_random_weights(net, rng):
    random_params(net, rng)
    types = dict(zip(net._layer_names, [l.type for l in net.layers]))
    for name, blobs in net.params.items():
        w = blobs[0].data
        if types[name] not in ("Convolution", "Deconvolution") or 1 in w.shape[:2]:
            continue  # the fc, and depthwise layers
        axis = 1 if types[name] == "Deconvolution" else 0  # a filter: its weight's column
        dead = rng.random(w.shape[axis]) < 0.4
        w[(slice(None),) * axis + (dead,)] = 0
        if len(blobs) > 1 and rng.random() < 0.5:
            blobs[1].data[dead] = 0
        if rng.random() < 0.3 and w.shape[1] > 1:
            w[:, rng.random(w.shape[1]) < 0.3] = 0


@pytest.mark.parametrize("seed", range(25))
def test_a_random_net_compacts_exactly_or_is_refused_by_name(tmp_path, seed):
    rng = np.random.default_rng(seed)
    model = write(tmp_path / "n.prototxt", _Net(rng).text())
    net = caffe.Net(model, caffe.TEST)
    sparse_random_weights(net, rng)
    weights = str(tmp_path / "n.caffemodel")
    net.save(weights)
    try:
        report = compact.compact(model, weights, str(tmp_path / "out"))
    except compact.CompactionError as exc:
        assert "is not supported" in str(exc) and "layer '" in str(exc)
        return
    assert report["equivalence"]["passed"], report["equivalence"]
    small = caffe.Net(os.path.join(str(tmp_path / "out"), "compact.prototxt"), caffe.TEST,
                      weights=os.path.join(str(tmp_path / "out"), "compact.caffemodel"))
    assert small.blobs["fc"].data.shape == net.blobs["fc"].data.shape

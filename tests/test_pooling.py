"""Caffe's CPU pooling, as patched by tools/patches/caffe-pooling-cpu.patch
(each window's maximum or sum kept in a register), gives exactly what
Caffe's own definition gives: checked through the Pooling layer, forward
(outputs and the max mask) and backward, bit for bit, against a float32
numpy reference that follows Caffe's order of comparisons and additions."""

import math

import numpy as np
import pytest

from caffe_admm.backend import caffe

from conftest import write

LOWEST = np.float32(-np.finfo(np.float32).max)  # Caffe's -FLT_MAX


def pooled_size(size, kernel, pad, stride, ceil_mode, padded):
    """Caffe's pooled extent; ``padded``: either axis has padding (Caffe then
    drops a last window that would start in the padding, on both axes)."""
    ratio = (size + 2 * pad - kernel) / stride
    out = int(math.ceil(ratio) if ceil_mode else math.floor(ratio)) + 1
    if padded and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def windows(size, out, kernel, pad, stride):
    """Per output position: (start, end) clipped to the image, and the
    extent that average pooling divides by (clipped to the padded image)."""
    spans = []
    for o in range(out):
        start = o * stride - pad
        end = min(start + kernel, size + pad)
        spans.append((max(start, 0), min(end, size), end - start))
    return spans


def reference(x, top_diff, method, kernel, pad, stride, ceil_mode):
    """Forward output, max mask (None for AVE) and input gradient of one
    image (C, H, W), float32 with Caffe's loop order."""
    c, h, w = x.shape
    padded = pad[0] > 0 or pad[1] > 0
    out = [pooled_size(s, k, p, st, ceil_mode, padded)
           for s, k, p, st in zip((h, w), kernel, pad, stride)]
    rows = windows(h, out[0], kernel[0], pad[0], stride[0])
    cols = windows(w, out[1], kernel[1], pad[1], stride[1])
    top = np.empty((c, out[0], out[1]), np.float32)
    mask = np.full(top.shape, -1, np.int64) if method == "MAX" else None
    grad = np.zeros(x.shape, np.float32)
    for ch in range(c):
        for i, (h0, h1, hsize) in enumerate(rows):
            for j, (w0, w1, wsize) in enumerate(cols):
                if method == "MAX":
                    best = LOWEST
                    for y in range(h0, h1):
                        for z in range(w0, w1):
                            if x[ch, y, z] > best:
                                best, mask[ch, i, j] = x[ch, y, z], y * w + z
                    top[ch, i, j] = best
                    if mask[ch, i, j] >= 0:
                        flat = grad[ch].reshape(-1)
                        flat[mask[ch, i, j]] = np.float32(flat[mask[ch, i, j]]
                                                          + top_diff[ch, i, j])
                else:
                    total = np.float32(0)
                    for y in range(h0, h1):
                        for z in range(w0, w1):
                            total = np.float32(total + x[ch, y, z])
                    size = np.float32(hsize * wsize)
                    top[ch, i, j] = total / size
                    share = np.float32(top_diff[ch, i, j] / size)
                    for y in range(h0, h1):
                        for z in range(w0, w1):
                            grad[ch, y, z] = np.float32(grad[ch, y, z] + share)
    return top, mask, grad


def pooling_configs(n, seed):
    """Kernels 1-5 (non-square too), strides 1-4, padding below the kernel,
    both rounding modes, global pooling; none with a window that starts past
    the image (Caffe reads outside its buffer there)."""
    rng = np.random.default_rng(seed)
    configs = []
    while len(configs) < n:
        shape = (int(rng.integers(1, 4)),) + tuple(int(v) for v in rng.integers(1, 13, 2))
        method = ("MAX", "AVE")[int(rng.integers(0, 2))]
        if rng.random() < 0.1:
            configs.append((shape, method, shape[1:], (0, 0), (1, 1), True, True, False))
            continue
        kernel = tuple(int(v) for v in rng.integers(1, 6, 2))
        pad = tuple(int(rng.integers(0, k)) for k in kernel)
        stride = tuple(int(v) for v in rng.integers(1, 5, 2))
        ceil_mode = bool(rng.integers(0, 2))
        padded = pad[0] > 0 or pad[1] > 0
        out = [pooled_size(s, k, p, st, ceil_mode, padded)
               for s, k, p, st in zip(shape[1:], kernel, pad, stride)]
        if min(out) < 1 or any((o - 1) * st - p >= s
                               for o, st, p, s in zip(out, stride, pad, shape[1:])):
            continue
        top_mask = method == "MAX" and bool(rng.integers(0, 2))
        configs.append((shape, method, kernel, pad, stride, ceil_mode, False, top_mask))
    return configs


def pooling_param(method, kernel, pad, stride, ceil_mode, global_pooling):
    if global_pooling:
        return "pool: %s global_pooling: true" % method
    return ("pool: %s kernel_h: %d kernel_w: %d pad_h: %d pad_w: %d stride_h: %d stride_w: %d "
            "round_mode: %s" % ((method,) + kernel + pad + stride
                                + ("CEIL" if ceil_mode else "FLOOR",)))


def pooling_net(path, shape, param, top_mask=False, batch=2):
    """A TRAIN net: input (batch,) + shape, one Pooling layer ``y`` (and its
    mask as a second top), backward forced."""
    return caffe.Net(write(path, """
        force_backward: true
        layer { name: "x" type: "Input" top: "x"
                input_param { shape { dim: %d dim: %d dim: %d dim: %d } } }
        layer { name: "pool" type: "Pooling" bottom: "x" top: "y" %s
                pooling_param { %s } }
        """ % ((batch,) + shape + ('top: "mask"' if top_mask else "", param))), caffe.TRAIN)


def forward_backward(net, x, rng):
    """Runs ``net`` on ``x`` and back from a random output gradient; returns it."""
    net.blobs["x"].data[...] = x
    net.forward()
    top_diff = rng.standard_normal(net.blobs["y"].data.shape).astype(np.float32)
    net.blobs["y"].diff[...] = top_diff
    net.backward()
    return top_diff


def test_pooling_matches_caffes_definition_bit_for_bit(tmp_path):
    configs = pooling_configs(150, 5)
    assert {c[1] for c in configs} == {"MAX", "AVE"}
    assert any(c[6] for c in configs) and any(c[7] for c in configs)  # global, top mask
    assert any(c[3] != (0, 0) and not c[5] for c in configs)  # padding, FLOOR
    rng = np.random.default_rng(6)
    for index, config in enumerate(configs):
        shape, method, kernel, pad, stride, ceil_mode, global_pooling, top_mask = config
        net = pooling_net(tmp_path / ("pool%d.prototxt" % index), shape,
                          pooling_param(method, kernel, pad, stride, ceil_mode, global_pooling),
                          top_mask)
        # few distinct values, so windows hold ties (the first maximum wins)
        x = (rng.integers(-3, 4, (2,) + shape).astype(np.float32) if method == "MAX"
             else rng.standard_normal((2,) + shape).astype(np.float32))
        top_diff = forward_backward(net, x, rng)
        for n in range(2):
            top, mask, grad = reference(x[n], top_diff[n], method, kernel, pad, stride,
                                        ceil_mode)
            np.testing.assert_array_equal(net.blobs["y"].data[n], top, err_msg=str(config))
            if top_mask:
                np.testing.assert_array_equal(net.blobs["mask"].data[n], mask,
                                              err_msg=str(config))
            np.testing.assert_array_equal(net.blobs["x"].diff[n], grad, err_msg=str(config))


@pytest.mark.parametrize("method", ["MAX", "AVE"])
def test_lenet_and_alexnet_pooling_shapes(tmp_path, method):
    """The shapes the bundled nets pool: 2x2 stride 2 (LeNet), 3x3 stride 2
    (AlexNet, overlapping windows), on larger maps than the random ones."""
    rng = np.random.default_rng(7)
    for index, (shape, kernel, stride) in enumerate([((4, 24, 24), 2, 2), ((3, 27, 27), 3, 2)]):
        net = pooling_net(tmp_path / ("pool%d.prototxt" % index), shape,
                          "pool: %s kernel_size: %d stride: %d" % (method, kernel, stride))
        x = rng.integers(-5, 6, (2,) + shape).astype(np.float32)
        top_diff = forward_backward(net, x, rng)
        for n in range(2):
            top, _, grad = reference(x[n], top_diff[n], method, (kernel, kernel), (0, 0),
                                     (stride, stride), True)
            np.testing.assert_array_equal(net.blobs["y"].data[n], top)
            np.testing.assert_array_equal(net.blobs["x"].diff[n], grad)


def test_max_pooling_backward_stays_inside_the_image_for_nan_windows(tmp_path):
    """A window of NaNs has no maximum (mask -1, output -FLT_MAX, as in stock
    Caffe); stock Caffe's backward then added that output's gradient to the
    element before the channel (the last one of the channel before). The
    patch skips it: the other channel's gradient stays exact."""
    net = pooling_net(tmp_path / "pool.prototxt", (2, 4, 4), "pool: MAX kernel_size: 2 stride: 2",
                      top_mask=True, batch=1)
    x = np.arange(32, dtype=np.float32).reshape(1, 2, 4, 4)
    x[0, 1, :2, :2] = np.nan  # channel 1's first window
    net.blobs["x"].data[...] = x
    net.forward()
    assert net.blobs["y"].data[0, 1, 0, 0] == LOWEST and net.blobs["mask"].data[0, 1, 0, 0] == -1
    net.blobs["y"].diff[...] = 1
    net.backward()
    expected = np.zeros((2, 4, 4), np.float32)
    expected[:, 1::2, 1::2] = 1  # each window's maximum is its last element
    expected[1, 1, 1] = 0        # ... except in the NaN window
    np.testing.assert_array_equal(net.blobs["x"].diff[0], expected)

"""Caffe's CPU im2col, as patched by tools/patches/caffe-im2col-cpu.patch, writes
exactly what the textbook definition gives: checked through Caffe's own
Im2col layer and through Convolution forward and backward (both call it).
Its col2im (Im2col's backward, a convolution's input gradient), patched to
add a row's columns at once, gives exactly the definition's float32 sums.

The patch has three paths: one row at a time; at stride 1 with "same"
padding and rows of at most 32 floats, one run of rows per kernel offset; at
a column stride below the kernel's width with output rows of 8 floats or
more, each image row split into its stride's phases first."""

import numpy as np
import pytest

from caffe_admm.backend import caffe

from conftest import write


def output_size(shape, kernel, pad, stride, dilation):
    """(C, H, W) -> Caffe's (out_h, out_w)."""
    return tuple((size + 2 * p - (d * (k - 1) + 1)) // s + 1
                 for size, k, p, s, d in zip(shape[1:], kernel, pad, stride, dilation))


def reference_im2col(image, kernel, pad, stride, dilation):
    """(C, H, W) -> (C * kh * kw, out_h, out_w), zeros where the kernel reads padding."""
    (kh, kw), (ph, pw), (sh, sw), (dh, dw) = kernel, pad, stride, dilation
    c, h, w = image.shape
    out_h, out_w = output_size(image.shape, kernel, pad, stride, dilation)
    padded = np.zeros((c, h + 2 * ph, w + 2 * pw), image.dtype)
    padded[:, ph:ph + h, pw:pw + w] = image
    cols = np.empty((c, kh, kw, out_h, out_w), image.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, i, j] = padded[:, i * dh:i * dh + sh * (out_h - 1) + 1:sh,
                                   j * dw:j * dw + sw * (out_w - 1) + 1:sw]
    return cols.reshape(c * kh * kw, out_h, out_w)


def reference_col2im(cols, shape, kernel, pad, stride, dilation):
    """(C * kh * kw, out_h, out_w) -> (C, H, W): each column added back where
    im2col read it, padding dropped; float32 sums in Caffe's order (kernel
    rows, then kernel columns), so the result is exact, not approximate."""
    (kh, kw), (ph, pw), (sh, sw), (dh, dw) = kernel, pad, stride, dilation
    c, h, w = shape
    out_h, out_w = cols.shape[1:]
    padded = np.zeros((c, h + 2 * ph, w + 2 * pw), cols.dtype)
    cols = cols.reshape(c, kh, kw, out_h, out_w)
    for i in range(kh):
        for j in range(kw):
            padded[:, i * dh:i * dh + sh * (out_h - 1) + 1:sh,
                   j * dw:j * dw + sw * (out_w - 1) + 1:sw] += cols[:, i, j]
    return padded[:, ph:ph + h, pw:pw + w]


def reference_conv(x, w, b, kernel, pad, stride, dilation, group):
    """(N, C, H, W) float64 convolution by the definition."""
    out_ch, per_group_in = w.shape[0], w.shape[1]
    per_group_out = out_ch // group
    ys = []
    for image in x:
        parts = []
        for g in range(group):
            cols = reference_im2col(image[g * per_group_in:(g + 1) * per_group_in],
                                    kernel, pad, stride, dilation)
            out = slice(g * per_group_out, (g + 1) * per_group_out)
            parts.append(np.tensordot(w[out].reshape(per_group_out, -1), cols, axes=1))
        ys.append(np.concatenate(parts))
    y = np.stack(ys)
    return y if b is None else y + b[None, :, None, None]


def conv_param(kernel, pad, stride, dilation):
    return ("kernel_h: %d kernel_w: %d pad_h: %d pad_w: %d stride_h: %d stride_w: %d "
            "dilation: %d dilation: %d" % (kernel + pad + stride + dilation))


def random_configs(n, seed):
    """Shapes that reach every branch: padding wider than the kernel's reach,
    kernel columns that read nothing but padding, strides 1, 2, 4 (the
    specialised copies) and 3, 5 (the generic one), dilation."""
    rng = np.random.default_rng(seed)
    configs = []
    while len(configs) < n:
        h, w = (int(v) for v in rng.integers(1, 14, 2))
        kernel = tuple(int(v) for v in rng.integers(1, 6, 2))
        pad = tuple(int(v) for v in rng.integers(0, 5, 2))
        stride = tuple(int(v) for v in rng.integers(1, 6, 2))
        dilation = tuple(int(v) for v in rng.integers(1, 4, 2))
        if min(output_size((1, h, w), kernel, pad, stride, dilation)) < 1:
            continue
        configs.append(((int(rng.integers(1, 4)), h, w), kernel, pad, stride, dilation))
    return configs


def same_padding_configs(n, seed):
    """Stride 1, output rows as wide as the input's (2 * pad_w equal to the
    kernel's reach), rows of 1 to 40 floats, so both sides of the 32-float
    limit: padding rows above and below, kernel rows that read nothing but
    padding, padding columns wider than 4 (past the unrolled zeroing)."""
    rng = np.random.default_rng(seed)
    configs = []
    while len(configs) < n:
        h, w = int(rng.integers(1, 9)), int(rng.integers(1, 41))
        kernel = tuple(int(v) for v in rng.integers(1, 12, 2))
        dilation = tuple(int(v) for v in rng.integers(1, 4, 2))
        reach_w = dilation[1] * (kernel[1] - 1)
        if reach_w % 2:
            continue
        pad = (int(rng.integers(0, 8)), reach_w // 2)
        if output_size((1, h, w), kernel, pad, (1, 1), dilation)[0] < 1:
            continue
        configs.append(((int(rng.integers(1, 4)), h, w), kernel, pad, (1, 1), dilation))
    return configs


def strided_configs(n, seed):
    """Column strides 2 and 4 (the specialised splits) and 3 (the generic
    one), kernels as wide as the stride up to three times wider, output rows
    of 5 to 30 floats (both sides of the 8-float limit), padding on every
    side, padding rows, dilation."""
    rng = np.random.default_rng(seed)
    configs = []
    while len(configs) < n:
        stride = (int(rng.integers(1, 5)), int(rng.integers(2, 5)))
        kernel = (int(rng.integers(1, 8)), int(rng.integers(stride[1], 3 * stride[1] + 1)))
        dilation = tuple(int(v) for v in rng.integers(1, 3, 2))
        pad = tuple(int(v) for v in rng.integers(0, 4, 2))
        out_w = int(rng.integers(5, 31))
        reach_w = dilation[1] * (kernel[1] - 1) + 1
        w = (out_w - 1) * stride[1] + reach_w - 2 * pad[1] + int(rng.integers(0, stride[1]))
        h = int(rng.integers(1, 12))
        if w < 1 or output_size((1, h, w), kernel, pad, stride, dilation)[0] < 1:
            continue
        configs.append(((int(rng.integers(1, 4)), h, w), kernel, pad, stride, dilation))
    return configs


def check_im2col_layer(tmp_path, configs):
    """Forward (im2col) against the definition, and backward (col2im, the
    input gradient) against the definition's adjoint, both bit for bit."""
    rng = np.random.default_rng(0)
    for index, (shape, kernel, pad, stride, dilation) in enumerate(configs):
        model = write(tmp_path / ("im2col%d.prototxt" % index), """
            force_backward: true
            layer { name: "x" type: "Input" top: "x"
                    input_param { shape { dim: 2 dim: %d dim: %d dim: %d } } }
            layer { name: "cols" type: "Im2col" bottom: "x" top: "cols"
                    convolution_param { %s } }
            """ % (shape + (conv_param(kernel, pad, stride, dilation),)))
        net = caffe.Net(model, caffe.TEST)
        x = rng.standard_normal((2,) + shape).astype(np.float32)
        net.blobs["x"].data[...] = x
        net.forward()
        config = str((shape, kernel, pad, stride, dilation))
        for n in range(2):
            expected = reference_im2col(x[n], kernel, pad, stride, dilation)
            np.testing.assert_array_equal(net.blobs["cols"].data[n], expected, err_msg=config)
        cols_diff = rng.standard_normal(net.blobs["cols"].diff.shape).astype(np.float32)
        net.blobs["cols"].diff[...] = cols_diff
        net.backward()
        for n in range(2):
            expected = reference_col2im(cols_diff[n], shape, kernel, pad, stride, dilation)
            np.testing.assert_array_equal(net.blobs["x"].diff[n], expected, err_msg=config)


def test_im2col_layer_matches_the_definition(tmp_path):
    configs = random_configs(300, 1)
    check_im2col_layer(tmp_path, configs)
    assert any((kernel[1] - 1) * dilation[1] - pad[1] >= shape[2]
               for shape, kernel, pad, stride, dilation in configs)


def test_im2col_layer_same_padding_runs(tmp_path):
    configs = same_padding_configs(200, 3)
    check_im2col_layer(tmp_path, configs)
    widths = [shape[2] for shape, *_ in configs]
    assert min(widths) == 1 and max(widths) > 32
    assert any(pad[1] > 4 for _, _, pad, _, _ in configs)
    assert any(kernel[0] > 1 and (kernel[0] - 1) * dilation[0] - pad[0] >= shape[1]
               for shape, kernel, pad, _, dilation in configs)


def test_im2col_layer_strided_phases(tmp_path):
    configs = strided_configs(200, 4)
    check_im2col_layer(tmp_path, configs)
    phases = [c for c in configs if c[3][1] < c[1][1] and output_size(*c)[1] >= 8]
    assert {stride[1] for _, _, _, stride, _ in phases} == {2, 3, 4}
    assert any(pad[1] > 0 and dilation[1] > 1 for _, _, pad, _, dilation in phases)
    assert any(pad[0] > 0 for _, _, pad, _, _ in phases)
    assert any(output_size(*c)[1] < 8 for c in configs)


@pytest.mark.parametrize("shape, num_output, kernel, pad, stride, dilation, group", [
    ((3, 31, 43), 5, (11, 11), (0, 0), (4, 4), (1, 1), 1),  # AlexNet conv1: phases
    ((6, 9, 9), 4, (5, 5), (2, 2), (1, 1), (1, 1), 2),      # conv2: pad, group
    ((4, 13, 13), 6, (3, 3), (1, 1), (1, 1), (1, 1), 2),    # conv3-5: rows as runs
    ((4, 10, 7), 3, (3, 2), (1, 0), (2, 3), (2, 1), 1),
])
def test_convolution_forward_and_weight_gradient(tmp_path, shape, num_output, kernel, pad,
                                                 stride, dilation, group):
    """Both passes run im2col: forward on the input, backward for the weight
    gradient; the input gradient runs col2im. Compared with the same products
    done in numpy (float64)."""
    model = write(tmp_path / "conv.prototxt", """
        force_backward: true
        layer { name: "x" type: "Input" top: "x"
                input_param { shape { dim: 2 dim: %d dim: %d dim: %d } } }
        layer { name: "conv" type: "Convolution" bottom: "x" top: "y"
                convolution_param { num_output: %d group: %d %s } }
        """ % (shape + (num_output, group, conv_param(kernel, pad, stride, dilation))))
    net = caffe.Net(model, caffe.TRAIN)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2,) + shape).astype(np.float32)
    weights, bias = net.params["conv"]
    weights.data[...] = rng.standard_normal(weights.data.shape)
    bias.data[...] = rng.standard_normal(bias.data.shape)
    net.blobs["x"].data[...] = x
    net.forward()
    top_diff = rng.standard_normal(net.blobs["y"].data.shape).astype(np.float32)
    net.blobs["y"].diff[...] = top_diff
    weights.diff[...] = 0
    net.backward()

    w = weights.data.astype(np.float64)
    per_group_out, per_group_in = num_output // group, shape[0] // group
    expected_y = reference_conv(x.astype(np.float64), w, bias.data.astype(np.float64),
                                kernel, pad, stride, dilation, group)
    expected_dw = np.zeros(w.shape)
    expected_dx = np.empty(x.shape)
    for n in range(2):
        for g in range(group):
            cols = reference_im2col(x[n, g * per_group_in:(g + 1) * per_group_in].astype(np.float64),
                                    kernel, pad, stride, dilation)
            cols = cols.reshape(cols.shape[0], -1)
            out = slice(g * per_group_out, (g + 1) * per_group_out)
            expected_dw[out] += (top_diff[n, out].reshape(per_group_out, -1) @ cols.T).reshape(
                w[out].shape)
            dcols = w[out].reshape(per_group_out, -1).T @ top_diff[n, out].reshape(
                per_group_out, -1)
            expected_dx[n, g * per_group_in:(g + 1) * per_group_in] = reference_col2im(
                dcols.reshape((-1,) + top_diff.shape[2:]), (per_group_in,) + shape[1:],
                kernel, pad, stride, dilation)
    np.testing.assert_allclose(net.blobs["y"].data, expected_y, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(weights.diff, expected_dw, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(net.blobs["x"].diff, expected_dx, rtol=1e-4, atol=1e-4)

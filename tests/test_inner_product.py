"""Caffe's CPU InnerProduct, as patched by tools/patches/caffe-ip-gemv.patch:
at batch 1 the forward product and the input gradient are matrix-vector
products (BLAS gemv), at larger batches GEMMs as before; both against numpy,
in both weight layouts (``transpose``)."""

import ctypes

import numpy as np
import pytest

from caffe_admm.backend import caffe

from conftest import write


def ip_net(tmp_path, batch, num_output, transpose):
    model = write(tmp_path / "ip.prototxt", """
        force_backward: true
        layer { name: "x" type: "Input" top: "x"
                input_param { shape { dim: %d dim: 3 dim: 5 dim: 7 } } }
        layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y"
                inner_product_param { num_output: %d transpose: %s } }
        """ % (batch, num_output, "true" if transpose else "false"))
    return caffe.Net(model, caffe.TRAIN)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("transpose", [False, True])
def test_forward_and_gradients_match_numpy(tmp_path, batch, transpose):
    net = ip_net(tmp_path, batch, 11, transpose)
    rng = np.random.default_rng(batch + 2 * transpose)
    weights, bias = net.params["ip"]
    assert weights.data.shape == ((105, 11) if transpose else (11, 105))
    weights.data[...] = rng.standard_normal(weights.data.shape)
    bias.data[...] = rng.standard_normal(bias.data.shape)
    x = rng.standard_normal(net.blobs["x"].data.shape).astype(np.float32)
    net.blobs["x"].data[...] = x
    net.forward()
    top_diff = rng.standard_normal((batch, 11)).astype(np.float32)
    net.blobs["y"].diff[...] = top_diff
    weights.diff[...] = 0
    bias.diff[...] = 0
    net.backward()

    w = weights.data.astype(np.float64)
    w = w.T if transpose else w                      # (outputs, inputs)
    flat = x.reshape(batch, -1).astype(np.float64)
    np.testing.assert_allclose(net.blobs["y"].data, flat @ w.T + bias.data, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(net.blobs["x"].diff, (top_diff @ w).reshape(x.shape),
                               rtol=1e-5, atol=1e-5)
    dw = top_diff.T.astype(np.float64) @ flat
    np.testing.assert_allclose(weights.diff, dw.T if transpose else dw, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(bias.diff, top_diff.sum(0), rtol=1e-5, atol=1e-5)


def test_batch_one_is_blas_gemv(tmp_path):
    """Bit for bit what OpenBLAS's sgemv gives on the same operands (one
    thread, as conftest sets), and not what the one-row sgemm of stock Caffe
    gives: the operands are chosen so that the two differ."""
    inputs, outputs = 3 * 5 * 7, 301
    net = ip_net(tmp_path, 1, outputs, False)
    rng = np.random.default_rng(0)
    weights, bias = net.params["ip"]
    weights.data[...] = rng.standard_normal(weights.data.shape)
    bias.data[...] = 0
    x = rng.standard_normal(net.blobs["x"].data.shape).astype(np.float32)
    net.blobs["x"].data[...] = x
    net.forward()

    blas = ctypes.CDLL("libopenblas.so.0")  # the library Caffe is linked with

    def ptr(array):
        return array.ctypes.data_as(ctypes.c_void_p)

    one, zero = ctypes.c_float(1), ctypes.c_float(0)
    w = np.ascontiguousarray(weights.data)
    flat = np.ascontiguousarray(x.reshape(1, -1))
    gemv = np.zeros(outputs, np.float32)
    gemm = np.zeros((1, outputs), np.float32)
    row_major, no_trans, trans = 101, 111, 112
    blas.cblas_sgemv(row_major, no_trans, outputs, inputs, one, ptr(w), inputs, ptr(flat), 1,
                     zero, ptr(gemv), 1)
    blas.cblas_sgemm(row_major, no_trans, trans, 1, outputs, inputs, one, ptr(flat), inputs,
                     ptr(w), inputs, zero, ptr(gemm), outputs)
    assert not np.array_equal(gemv, gemm[0])
    np.testing.assert_array_equal(net.blobs["y"].data[0], gemv)

"""The GEMMs alone of each Convolution and InnerProduct of a dense and a
compacted deploy net (the shapes read from the nets through pycaffe), timed
with OpenBLAS and with BLIS loaded side by side; minimum of interleaved
repeats, times the calls per forward pass.

    python layer_gemms.py ORIGINAL.prototxt COMPACT.prototxt ROUNDS BLIS_SO
"""

import sys
import time

import numpy as np

from caffe_admm.backend import caffe
from cblas import NO_TRANS, ROW_MAJOR, TRANS, load


def gemm_shapes(model):
    """(layer, trans B, M, N, K, calls per forward pass) of each Convolution
    (one GEMM per image and group) and InnerProduct (one GEMM)."""
    net = caffe.Net(model, caffe.TEST)
    shapes = []
    for name, layer in zip(net._layer_names, net.layers):
        if layer.type not in ("Convolution", "InnerProduct"):
            continue
        w = net.params[name][0].data
        bottom = net.blobs[net.bottom_names[name][0]].data
        if layer.type == "Convolution":
            top = net.blobs[net.top_names[name][0]].data
            groups = bottom.shape[1] // w.shape[1]
            shapes.append((name, NO_TRANS, w.shape[0] // groups, top.shape[2] * top.shape[3],
                           w[0].size, bottom.shape[0] * groups))
        else:
            shapes.append((name, TRANS, bottom.shape[0], w.shape[0], w.shape[1], 1))
    return shapes


def gemm_seconds(lib, trans_b, m, n, k, calls, repeats=3):
    """Seconds per call, one list entry per repeat of `calls` calls."""
    a = np.random.rand(m * k).astype(np.float32)
    b = np.random.rand(k * n).astype(np.float32)
    c = np.zeros(m * n, np.float32)
    args = (ROW_MAJOR, NO_TRANS, trans_b, m, n, k, 1.0, a.ctypes.data, k, b.ctypes.data,
            n if trans_b == NO_TRANS else k, 0.0, c.ctypes.data, n)
    lib.cblas_sgemm(*args)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            lib.cblas_sgemm(*args)
        seconds.append((time.perf_counter() - start) / calls)
    return seconds


def main(original, compact, rounds, blis):
    libs = {"openblas": load(), "blis": load(blis)}
    libs["openblas"].openblas_set_num_threads(1)
    print("%-6s %-22s %-22s %9s %9s %9s %9s | %7s %7s %7s" % (
        "layer", "dense MxNxK", "compact MxNxK", "ob dense", "ob comp", "bl dense", "bl comp",
        "FLOPred", "ob r", "best r"))
    for dense, small in zip(gemm_shapes(original), gemm_shapes(compact)):
        name, trans_b = dense[:2]
        shapes = {"dense": dense[2:], "compact": small[2:]}
        seconds = {}
        for round_ in range(rounds):
            for lib in (list(libs) if round_ % 2 == 0 else list(libs)[::-1]):
                for net, shape in shapes.items():
                    seconds.setdefault((lib, net), []).extend(
                        gemm_seconds(libs[lib], trans_b, *shape))
        # ms per forward pass: the best call times the calls
        best = {key: min(s) * shapes[key[1]][3] * 1e3 for key, s in seconds.items()}
        flops = {net: m * n * k * calls for net, (m, n, k, calls) in shapes.items()}
        reduction = flops["dense"] / flops["compact"]
        print("%-6s %-22s %-22s %9.3f %9.3f %9.3f %9.3f | %6.2fx %7.2f %7.2f" % (
            name, *("%dx%dx%d x%d" % shapes[net] for net in ("dense", "compact")),
            best["openblas", "dense"], best["openblas", "compact"], best["blis", "dense"],
            best["blis", "compact"], reduction,
            best["openblas", "dense"] / best["openblas", "compact"] / reduction,
            min(best["openblas", "dense"], best["blis", "dense"])
            / min(best["openblas", "compact"], best["blis", "compact"]) / reduction), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])

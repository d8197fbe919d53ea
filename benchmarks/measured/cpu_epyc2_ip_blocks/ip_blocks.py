"""An InnerProduct's forward GEMM, top (rows x outputs) = x (rows x inputs)
times the weights (outputs x inputs) transposed, as one OpenBLAS sgemm call
(stock Caffe), as sgemm calls on blocks of weight rows, and as one sgemv per
row; minimum of interleaved repeats. Prints a table, writes JSON.

    python ip_blocks.py OUT.json [--threads T] [--repeats R]
"""

import argparse
import ctypes
import json
import time

import numpy as np

from cblas import NO_TRANS, ROW_MAJOR, TRANS, load

BLAS = load()
BLAS.openblas_get_corename.restype = ctypes.c_char_p
SHAPES = [(rows, 4096, inputs) for rows in (2, 3, 4, 8, 16, 32, 64, 128)
          for inputs in (4096,)] + [(8, 4096, 9216), (8, 4096, 2304), (8, 1000, 4096),
                                    (64, 500, 800)]
BLOCKS = [128, 256, 64]


def sgemm_blocks(x, w, top, block, transpose):
    rows, inputs = x.shape
    outputs = top.shape[1]
    for first in range(0, outputs, block):
        n = min(block, outputs - first)
        if transpose:   # weights (inputs x outputs): a block of columns
            BLAS.cblas_sgemm(ROW_MAJOR, NO_TRANS, NO_TRANS, rows, n, inputs,
                             1, x.ctypes.data, inputs, w[:, first:].ctypes.data,
                             outputs, 0, top[:, first:].ctypes.data, outputs)
        else:
            BLAS.cblas_sgemm(ROW_MAJOR, NO_TRANS, TRANS, rows, n, inputs, 1,
                             x.ctypes.data, inputs, w[first:].ctypes.data, inputs,
                             0, top[:, first:].ctypes.data, outputs)


def sgemv_rows(x, w, top):
    rows, inputs = x.shape
    for row in range(rows):
        BLAS.cblas_sgemv(ROW_MAJOR, NO_TRANS, top.shape[1], inputs, 1,
                         w.ctypes.data, inputs, x[row].ctypes.data, 1, 0,
                         top[row].ctypes.data, 1)


def time_shape(rows, outputs, inputs, repeats):
    rng = np.random.default_rng(0)
    x = rng.random((rows, inputs), np.float32)
    w = rng.random((outputs, inputs), np.float32)
    wt = np.ascontiguousarray(w.T)
    top = np.zeros((rows, outputs), np.float32)
    ways = {"one sgemm": lambda: sgemm_blocks(x, w, top, outputs, False)}
    for block in BLOCKS:
        ways["blocks of %d" % block] = lambda b=block: sgemm_blocks(x, w, top, b, False)
    ways["gemv per row"] = lambda: sgemv_rows(x, w, top)
    ways["transpose: one sgemm"] = lambda: sgemm_blocks(x, wt, top, outputs, True)
    ways["transpose: blocks of 128"] = lambda: sgemm_blocks(x, wt, top, 128, True)
    best = {}
    for _ in range(repeats):
        for name, way in ways.items():
            start = time.perf_counter()
            way()
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - start)
    return {name: seconds * 1e3 for name, seconds in best.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    BLAS.openblas_set_num_threads(args.threads)
    results = []
    header = None
    for rows, outputs, inputs in SHAPES:
        ms = time_shape(rows, outputs, inputs, args.repeats)
        if header is None:
            header = list(ms)
            print("%-18s" % "rows x out x in" + "".join("%17s" % h.replace("transpose: ", "T: ")
                                                       for h in header))
        print("%-18s" % ("%d x %d x %d" % (rows, outputs, inputs))
              + "".join("%17.2f" % ms[h] for h in header), flush=True)
        results.append({"rows": rows, "outputs": outputs, "inputs": inputs, "ms": ms})
    with open(args.out, "w") as f:
        json.dump({"threads": args.threads, "repeats": args.repeats,
                   "openblas_core": BLAS.openblas_get_corename().decode(),
                   "statistic": "minimum ms", "results": results}, f, indent=1)


if __name__ == "__main__":
    main()

"""A conv layer's GEMM (weights x column buffer) as one OpenBLAS sgemm and as
sgemm calls on blocks of the column buffer's columns; minimum of 15
interleaved rounds, ms per image and group.

    python conv_blocks.py
"""

import time

import numpy as np

from cblas import NO_TRANS, ROW_MAJOR, load

BLAS = load()
BLAS.openblas_set_num_threads(1)
# filters x output positions x (input channels x kernel), per image and group
SHAPES = [(32, 3025, 363), (96, 3025, 363), (32, 729, 400), (128, 729, 1200), (96, 169, 576),
          (384, 169, 2304), (32, 169, 432), (128, 169, 1728)]


def gemm_blocks(a, b, c, cols):
    (m, k), n = a.shape, b.shape[1]
    for first in range(0, n, cols):
        BLAS.cblas_sgemm(ROW_MAJOR, NO_TRANS, NO_TRANS, m, min(cols, n - first), k, 1,
                         a.ctypes.data, k, b[:, first:].ctypes.data, n, 0,
                         c[:, first:].ctypes.data, n)


def main():
    for m, n, k in SHAPES:
        a = np.random.rand(m, k).astype(np.float32)
        b = np.random.rand(k, n).astype(np.float32)
        c = np.zeros((m, n), np.float32)
        widths = [n, 1024, 512, 256, 128, 64]
        best = {}
        for _ in range(15):
            for cols in widths:
                start = time.perf_counter()
                gemm_blocks(a, b, c, cols)
                best[cols] = min(best.get(cols, float("inf")), time.perf_counter() - start)
        print("M=%d N=%d K=%d: " % (m, n, k)
              + "  ".join("%s %.3f" % (cols, best[cols] * 1e3) for cols in widths), flush=True)


if __name__ == "__main__":
    main()

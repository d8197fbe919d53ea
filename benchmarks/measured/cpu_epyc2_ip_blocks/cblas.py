"""A CBLAS library through ctypes, with the argument types of cblas_sgemm and
cblas_sgemv (without them ctypes passes pointers as C ints), for the scripts
of this folder."""

import ctypes

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112
_POINTER, _INT, _FLOAT = ctypes.c_void_p, ctypes.c_int, ctypes.c_float


def load(name="libopenblas.so.0"):
    lib = ctypes.CDLL(name)
    # order, trans A, trans B, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc
    lib.cblas_sgemm.argtypes = [_INT] * 6 + [_FLOAT, _POINTER, _INT, _POINTER, _INT, _FLOAT,
                                             _POINTER, _INT]
    # order, trans, M, N, alpha, A, lda, x, incx, beta, y, incy
    lib.cblas_sgemv.argtypes = [_INT] * 4 + [_FLOAT, _POINTER, _INT, _POINTER, _INT, _FLOAT,
                                             _POINTER, _INT]
    return lib

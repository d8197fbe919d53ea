"""A conv layer's GEMM (weights x column buffer) as one OpenBLAS sgemm and as
sgemm calls on blocks of the column buffer's columns; minimum of 15
interleaved rounds, ms per image and group. python conv_blocks.py"""
import ctypes, sys, time, numpy as np
ob = ctypes.CDLL('libopenblas.so.0'); ob.openblas_set_num_threads(1)
ob.cblas_sgemm.argtypes = [ctypes.c_int]*6 + [ctypes.c_float, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_float, ctypes.c_void_p, ctypes.c_int]
R, N_, T_ = 101, 111, 112
for M, N, K in [(32, 3025, 363), (96, 3025, 363), (32, 729, 400), (128, 729, 1200), (96, 169, 576), (384, 169, 2304), (32, 169, 432), (128, 169, 1728)]:
    a = np.random.rand(M, K).astype(np.float32); b = np.random.rand(K, N).astype(np.float32)
    def run(cols):
        c = np.zeros((M, N), np.float32)
        for n0 in range(0, N, cols):
            n = min(cols, N - n0)
            ob.cblas_sgemm(R, N_, N_, M, n, K, 1, a.ctypes.data, K, b[:, n0:].ctypes.data, N, 0, c[:, n0:].ctypes.data, N)
        return c
    sizes = [N, 1024, 512, 256, 128, 64]
    base = run(N); best = {}
    for r in range(15):
        for s in sizes:
            t = time.perf_counter(); o = run(s); d = time.perf_counter() - t
            best[s] = min(best.get(s, 9), d)
    print('M=%d N=%d K=%d: ' % (M, N, K) + '  '.join('%s %.3f' % (s, best[s] * 1e3) for s in sizes), flush=True)

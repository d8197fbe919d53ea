"""The GEMMs alone of each Convolution and InnerProduct of a dense and a
compacted deploy net (the shapes read from the nets through pycaffe), timed
with OpenBLAS and with BLIS loaded side by side; minimum of interleaved
repeats, times the calls per forward pass.

    python layer_gemms.py ORIGINAL.prototxt COMPACT.prototxt ROUNDS BLIS_SO
"""
import ctypes, sys, time, numpy as np
from caffe_admm.backend import caffe
caffe.set_mode_cpu()
libs = {'openblas': ctypes.CDLL('libopenblas.so.0'), 'blis': ctypes.CDLL(sys.argv[4])}
for l in libs.values():
    l.cblas_sgemm.argtypes = [ctypes.c_int]*6 + [ctypes.c_float, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_float, ctypes.c_void_p, ctypes.c_int]
libs['openblas'].openblas_set_num_threads(1)
RowMajor, NoTrans, Trans = 101, 111, 112
def shapes(proto):
    net = caffe.Net(proto, caffe.TEST)
    out = []
    for name, layer in zip(net._layer_names, net.layers):
        if layer.type == 'Convolution':
            w = net.params[name][0].data
            top = net.blobs[net.top_names[name][0]].data
            bot = net.blobs[net.bottom_names[name][0]].data
            g = bot.shape[1] // w.shape[1]
            M, K, N = w.shape[0] // g, w.shape[1]*w.shape[2]*w.shape[3], top.shape[2]*top.shape[3]
            out.append((name, NoTrans, NoTrans, M, N, K, bot.shape[0]*g))
        elif layer.type == 'InnerProduct':
            w = net.params[name][0].data
            out.append((name, NoTrans, Trans, net.blobs[net.bottom_names[name][0]].data.shape[0], w.shape[0], w.shape[1], 1))
    return out
def timer(lib, ta, tb, M, N, K, calls, reps):
    a = np.random.rand(M*K).astype(np.float32); b = np.random.rand(K*N).astype(np.float32); c = np.zeros(M*N, np.float32)
    lda = K; ldb = N if tb == NoTrans else K
    f = lib.cblas_sgemm
    args = (RowMajor, ta, tb, M, N, K, 1.0, a.ctypes.data, lda, b.ctypes.data, ldb, 0.0, c.ctypes.data, N)
    f(*args)
    best = []
    for r in range(reps):
        t = time.perf_counter()
        for i in range(calls): f(*args)
        best.append((time.perf_counter() - t) / calls)
    return c, best
def main(orig, comp, rounds):
    so, sc = shapes(orig), shapes(comp)
    print('%-6s %-22s %-22s %9s %9s %9s %9s | %7s %7s %7s' % ('layer', 'dense MxNxK', 'compact MxNxK', 'ob dense', 'ob comp', 'bl dense', 'bl comp', 'FLOPred', 'ob r', 'best r'))
    for (name, ta, tb, M, N, K, calls), (_, _, _, m, n, k, calls2) in zip(so, sc):
        res = {}
        for rnd in range(rounds):
            for lib in (libs if rnd % 2 == 0 else list(libs)[::-1]):
                for tag, (MM, NN, KK, cc) in (('d', (M, N, K, calls)), ('c', (m, n, k, calls2))):
                    _, t = timer(libs[lib], ta, tb, MM, NN, KK, cc, 3)
                    res.setdefault((lib, tag), []).extend(t)
        med = {key: min(v) * {'d': calls, 'c': calls2}[key[1]] * 1e3 for key, v in res.items()}
        fr = (M*N*K*calls) / (m*n*k*calls2)
        print('%-6s %-22s %-22s %9.3f %9.3f %9.3f %9.3f | %6.2fx %7.2f %7.2f' % (name, '%dx%dx%d x%d' % (M, N, K, calls), '%dx%dx%d x%d' % (m, n, k, calls2),
              med['openblas', 'd'], med['openblas', 'c'], med['blis', 'd'], med['blis', 'c'], fr,
              med['openblas', 'd'] / med['openblas', 'c'] / fr,
              min(med['openblas', 'd'], med['blis', 'd']) / min(med['openblas', 'c'], med['blis', 'c']) / fr))
        sys.stdout.flush()
main(sys.argv[1], sys.argv[2], int(sys.argv[3]))

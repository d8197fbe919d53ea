"""Caffe's Im2col layer alone (the patched im2col) on AlexNet's conv shapes at
batch 8, dense and compacted; 30 forward passes, ms. python im2col_alone.py"""
import tempfile, time
import numpy as np
from caffe_admm.backend import caffe
caffe.set_mode_cpu()
def net(shape, k, s, p):
    txt = 'input: "x" input_shape { %s }\nlayer { name: "i" type: "Im2col" bottom: "x" top: "y" convolution_param { kernel_size: %d stride: %d pad: %d } }\n' % (' '.join('dim: %d' % d for d in shape), k, s, p)
    f = tempfile.NamedTemporaryFile('w', suffix='.prototxt', delete=False); f.write(txt); f.close()
    return caffe.Net(f.name, caffe.TEST)
for name, shape, k, s, p in [('conv1', (8, 3, 227, 227), 11, 4, 0), ('conv2 dense', (8, 96, 27, 27), 5, 1, 2), ('conv2 comp', (8, 32, 27, 27), 5, 1, 2),
                             ('conv3 dense', (8, 256, 13, 13), 3, 1, 1), ('conv3 comp', (8, 64, 13, 13), 3, 1, 1)]:
    n = net(shape, k, s, p); n.blobs['x'].data[...] = np.random.rand(*shape)
    n.forward(); ts = []
    for r in range(30):
        t = time.perf_counter(); n.forward(); ts.append(time.perf_counter() - t)
    print('%-12s min %.3f ms  median %.3f ms  out %s' % (name, min(ts)*1e3, np.median(ts)*1e3, n.blobs['y'].data.shape))

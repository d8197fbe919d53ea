"""Loops one layer of a deploy prototxt (random weights and input) and prints
the median and minimum time of a forward pass through it:
    prof.py PROTOTXT LAYER ITERATIONS [hot|net]
hot: the layer alone, its input left in cache; net: the layers before it
run first each time. Run from the repository root."""
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.getcwd())
from caffe_admm.backend import caffe  # noqa: E402
from caffe_admm import timing  # noqa: E402

proto, layer, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
mode = sys.argv[4] if len(sys.argv) > 4 else "hot"
net = caffe.Net(proto, caffe.TEST)
names = list(net._layer_names)
for blobs in net.params.values():
    for blob in blobs:
        blob.data[...] = np.random.standard_normal(blob.data.shape) * 0.01
net.blobs["data"].data[...] = np.random.standard_normal(net.blobs["data"].data.shape)
net._forward(0, len(names) - 1)
start, end = timing.layer_range(names, layer)
times = []
for _ in range(n):
    if mode == "net" and start > 0:
        net._forward(0, start - 1)
    t0 = time.perf_counter()
    net._forward(start, end)
    times.append(time.perf_counter() - t0)
print(layer, mode, "median %.3f ms min %.3f" % (1e3 * np.median(times), 1e3 * min(times)))

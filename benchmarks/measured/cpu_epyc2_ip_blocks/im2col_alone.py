"""Caffe's Im2col layer alone (the patched im2col) on AlexNet's conv shapes at
batch 8, dense and compacted; 30 forward passes, ms.

    python im2col_alone.py
"""

import os
import tempfile
import time

import numpy as np

from caffe_admm.backend import caffe

SHAPES = [("conv1", (8, 3, 227, 227), 11, 4, 0), ("conv2 dense", (8, 96, 27, 27), 5, 1, 2),
          ("conv2 comp", (8, 32, 27, 27), 5, 1, 2), ("conv3 dense", (8, 256, 13, 13), 3, 1, 1),
          ("conv3 comp", (8, 64, 13, 13), 3, 1, 1)]


def im2col_net(folder, shape, kernel, stride, pad):
    path = os.path.join(folder, "im2col.prototxt")
    with open(path, "w") as f:
        f.write('input: "x" input_shape { %s }\n'
                'layer { name: "i" type: "Im2col" bottom: "x" top: "y"\n'
                '        convolution_param { kernel_size: %d stride: %d pad: %d } }\n'
                % (" ".join("dim: %d" % d for d in shape), kernel, stride, pad))
    return caffe.Net(path, caffe.TEST)


def main():
    caffe.set_mode_cpu()
    with tempfile.TemporaryDirectory() as folder:
        for name, shape, kernel, stride, pad in SHAPES:
            net = im2col_net(folder, shape, kernel, stride, pad)
            net.blobs["x"].data[...] = np.random.rand(*shape)
            net.forward()
            seconds = []
            for _ in range(30):
                start = time.perf_counter()
                net.forward()
                seconds.append(time.perf_counter() - start)
            print("%-12s min %.3f ms  median %.3f ms  out %s" % (
                name, min(seconds) * 1e3, np.median(seconds) * 1e3, net.blobs["y"].data.shape))


if __name__ == "__main__":
    main()

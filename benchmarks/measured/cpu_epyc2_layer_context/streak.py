"""One layer of both nets (batch 1 of a timing plan) called 20 times in a
row right after a whole forward pass, each call timed; 30 rounds, the
median per position in the streak (ms).

    OPENBLAS_NUM_THREADS=2 python3 streak.py PLAN_DIR conv4
"""
import os, sys, time, json
os.environ.setdefault("GLOG_minloglevel", "2")
import numpy as np
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))
from caffe_admm.backend import caffe
plan = sys.argv[1]; p = json.load(open(plan + "/plan.json"))
nets = [caffe.Net(os.path.join(plan, p["models"]["1"][w]), caffe.TEST) for w in ("original", "compact")]
pc = time.perf_counter
for net in nets:
    net.blobs["data"].data[...] = 1
    net._forward(0, len(net._layer_names) - 1)
n = sys.argv[2]
t = [np.zeros((30, 20)), np.zeros((30, 20))]
for r in range(30):
    for k, net in enumerate(nets):
        net._forward(0, len(net._layer_names) - 1)
        i = list(net._layer_names).index(n)
        for j in range(20):
            t0 = pc(); net._forward(i, i); t[k][r, j] = pc() - t0
print(n)
for k in range(2):
    print(["dense", "compact"][k], " ".join("%.3f" % x for x in np.median(t[k], axis=0) * 1e3))

"""The weight-check and buffer variants of variants.diff, timed in one process.

Each mode is a set of environment variables the scratch build reads on every
pass; the modes take turns (order rotated per round), each round one
time_layer_contexts round of 20 passes in net order, medians over rounds.

    LD_LIBRARY_PATH=SCRATCH/lib PYTHONPATH=SCRATCH/lib/python3/dist-packages \
        OPENBLAS_NUM_THREADS=2 python3 variants.py PLAN_DIR 1 12 \
        '{"as_is": {}, "no_check": {"X_NOCHECK": "1"}}'
"""
import os, sys, json
os.environ.setdefault("GLOG_minloglevel", "2")
import numpy as np
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))
from caffe_admm import timing
from caffe_admm.backend import caffe
plan = sys.argv[1]; batch = sys.argv[2]
p = json.load(open(plan + "/plan.json"))
nets = [caffe.Net(os.path.join(plan, p["models"][batch][w]), caffe.TEST) for w in ("original", "compact")]
layers = ["conv1", "conv2", "conv3", "conv4", "conv5"]
modes = json.loads(sys.argv[4])
res = {m: [[], []] for m in modes}
for r in range(int(sys.argv[3])):
    for m in timing.rotate(list(modes), r):
        for k in ("X_PARCHECK", "X_NOCHECK", "X_ARENA", "X_HASH", "X_PHASH"):
            os.environ.pop(k, None)
        os.environ.update(modes[m])
        out = timing.time_layer_contexts(nets, int(batch), rounds=1, iterations=20, layers=layers)
        for k in range(2):
            res[m][k].append([out[k]["in_net"][n]["median_ms"] for n in layers])
fl = [3, 12, 16, 16, 16]
for m in modes:
    a = np.median(res[m][0], axis=0); b = np.median(res[m][1], axis=0)
    print("%-9s dense %s | compact %s | of FLOP %s" % (m, " ".join("%.3f" % x for x in a), " ".join("%.3f" % x for x in b),
          " ".join("%.2f" % (x / y / f) for x, y, f in zip(a, b, fl))))

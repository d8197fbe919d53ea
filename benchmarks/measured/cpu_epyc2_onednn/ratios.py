"""Speed-up / FLOP reduction per conv layer, conv1-5 summed and the whole net,
per build and batch, from ab_caffe_builds.py results.

    python3 ratios.py ab_*.json
"""
import json
import sys

CONVS = ["conv1", "conv2", "conv3", "conv4", "conv5"]

for path in sys.argv[1:]:
    data = json.load(open(path))
    print("%s (%d rounds)" % (path, data["rounds"]))
    for build, result in data["results"].items():
        for batch, rows in result["batches"].items():
            layers = rows["layers"]
            ratios = " ".join("%.2f" % (layers[n]["speedup"] / layers[n]["flop_reduction"])
                              for n in CONVS)
            dense = sum(layers[n]["original"]["median_ms"] for n in CONVS)
            compact = sum(layers[n]["compact"]["median_ms"] for n in CONVS)
            print("  %-14s batch %-2s conv1-5 ratios %s | conv1-5 %.1f -> %.1f ms | net %.1f -> %.1f ms"
                  % (build, batch, ratios, dense, compact, rows["net"]["original"]["median_ms"],
                     rows["net"]["compact"]["median_ms"]))

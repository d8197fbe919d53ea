"""Time per solver iteration: ADMM training vs plain Caffe training of LeNet.

Both solvers are built in the same process over the same net and data; they
are timed in alternating blocks in ABBA order (warm-up first), so machine
noise and any first/second-in-a-pair effect hit both alike; the ratio is
taken per pair of adjacent blocks. The ADMM net carries one WeightHook per pruned layer with live Z/U
(the config's kinds: FILTER_SHAPE has two constraints). Prints a table and
writes JSON.

    .venv/bin/python benchmarks/bench_admm_overhead.py [--blocks 7 --iters 50]
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from caffe_admm import protoio  # noqa: E402
from caffe_admm.methods import make_method  # noqa: E402
from caffe_admm.backend import caffe  # noqa: E402
from caffe_admm.config import load_config  # noqa: E402
from caffe_admm.solver import _hook_layers, _set_hooks, _write_solver, add_hooks  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--solver", default="solvers/lenet_solver.prototxt")
    parser.add_argument("--config", default="prototxt/lenet_admm_filter_shape.prototxt")
    parser.add_argument("--blocks", type=int, default=10, help="timed blocks per variant (even)")
    parser.add_argument("--iters", type=int, default=50, help="iterations per block")
    parser.add_argument("--out", default="benchmarks/results/admm_overhead.json")
    args = parser.parse_args()
    caffe.set_mode_cpu()

    solver_param = protoio.read_solver(args.solver)
    net_path = protoio.resolve_solver_net(args.solver, solver_param)
    net_param = protoio.read_net(net_path)
    cfg = load_config(args.config, net_param)
    tmp = tempfile.mkdtemp(prefix="bench_admm_")
    plain = caffe.get_solver(_write_solver(solver_param, net_path, tmp, "plain", 1))
    shapes = {s.name: [b.data.shape for b in plain.net.params[s.name]] for s in cfg.layers}
    hooked_path = os.path.join(tmp, "hooked.prototxt")
    protoio.write_text(hooked_path, add_hooks(net_param, shapes))
    admm = caffe.get_solver(_write_solver(solver_param, hooked_path, tmp, "admm", 1))
    method = make_method(cfg)
    method.start({n: admm.net.params[n][0].data for n in shapes})
    _set_hooks(_hook_layers(admm.net), method)

    variants = {"plain": plain, "admm": admm}
    for s in variants.values():  # warm-up
        s.step(args.iters)
    times = {name: [] for name in variants}
    for block in range(args.blocks):
        order = ["plain", "admm"] if block % 2 == 0 else ["admm", "plain"]
        for name in order:
            s = variants[name]
            t0 = time.perf_counter()
            s.step(args.iters)
            times[name].append((time.perf_counter() - t0) / args.iters * 1e3)
    ratios = [a / p for a, p in zip(times["admm"], times["plain"])]
    result = {
        "net": net_path, "config": args.config, "blocks": args.blocks, "iters": args.iters,
        "batch": net_param.layer[0].data_param.batch_size,
        "openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
        "ms_per_iter": {n: {"median": statistics.median(t), "min": min(t), "max": max(t)}
                        for n, t in times.items()},
        "overhead_ratio": {"median": statistics.median(ratios), "min": min(ratios),
                           "max": max(ratios)},
        "hooked_layers": {s.name: s.kind for s in cfg.layers},
    }
    print("%-8s %12s %10s %10s" % ("variant", "median ms", "min", "max"))
    for name, t in result["ms_per_iter"].items():
        print("%-8s %12.2f %10.2f %10.2f" % (name, t["median"], t["min"], t["max"]))
    r = result["overhead_ratio"]
    print("ADMM / plain time per iteration: median %.3f (min %.3f, max %.3f); target <= 1.10"
          % (r["median"], r["min"], r["max"]))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print("wrote", args.out)


if __name__ == "__main__":
    main()

"""Time per solver iteration: ADMM training vs plain Caffe training of LeNet.

Both solvers are built in the same process over the same net and data; they
are timed in alternating blocks in ABBA order (warm-up first), so machine
noise and any first/second-in-a-pair effect hit both alike; the ratio is
taken per pair of adjacent blocks, in wall time and in this process's CPU
time. The ADMM net carries one WeightHook per pruned layer with live Z/U
(the config's kinds: FILTER_SHAPE has two constraints). Both start from the
trained baseline when it exists. Whole iterations also differ by the weights
they compute with (see hook_share), so the hook layers' own share of an ADMM
iteration is timed too: that is the work ADMM adds. Prints a table and
writes JSON.

    .venv/bin/python benchmarks/bench_admm_overhead.py [--blocks 20 --iters 50]
"""

import argparse
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
from caffe_admm.layers import HOOK_PREFIX  # noqa: E402
from caffe_admm.solver import _hook_layers, _set_hooks, _write_solver, add_hooks  # noqa: E402

from benchmarks._common import write_json  # noqa: E402


def hook_share(net, iters):
    """Time each layer's forward and backward; the hook layers' share of it.

    The ratio of whole iterations above also moves with the weights: MAX
    pooling and ReLU are branchy, and ADMM's pull towards sparse weights
    changes their inputs. The hooks' own time is what ADMM adds.
    """
    names = list(net._layer_names)
    spent = [0.0] * len(names)
    for _ in range(iters):
        for i in range(len(names)):
            t0 = time.perf_counter()
            net._forward(i, i)
            spent[i] += time.perf_counter() - t0
        for i in reversed(range(len(names))):
            t0 = time.perf_counter()
            net._backward(i, i)
            spent[i] += time.perf_counter() - t0
    hooks = sum(t for n, t in zip(names, spent) if n.startswith(HOOK_PREFIX)) / iters * 1e3
    total = sum(spent) / iters * 1e3
    return {"hook_ms": hooks, "total_ms": total, "share": hooks / total,
            "ratio": total / (total - hooks),
            "per_layer_ms": {n: t / iters * 1e3 for n, t in zip(names, spent)}}


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--solver", default="solvers/lenet_solver.prototxt")
    parser.add_argument("--config", default="prototxt/lenet_admm_filter_shape.prototxt")
    parser.add_argument("--blocks", type=int, default=20, help="timed blocks per variant (even)")
    parser.add_argument("--iters", type=int, default=50, help="iterations per block")
    parser.add_argument("--weights", default="runs/lenet_mnist/baseline.caffemodel",
                        help="start both from these weights (random fillers if absent)")
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
    if args.weights and os.path.exists(args.weights):  # pruning starts from a trained net
        plain.net.copy_from(args.weights)
        admm.net.copy_from(args.weights)
    else:
        args.weights = None
    method = make_method(cfg)
    method.start({n: admm.net.params[n][0].data for n in shapes})
    _set_hooks(_hook_layers(admm.net), method)

    variants = {"plain": plain, "admm": admm}
    for s in variants.values():  # warm-up
        s.step(args.iters)
    # wall time, and this process's CPU time (all its threads): the CPU time
    # does not count the time other tenants of a shared machine take from it
    clocks = {"wall": time.perf_counter, "cpu": time.process_time}
    times = {clock: {name: [] for name in variants} for clock in clocks}
    for block in range(args.blocks):
        order = ["plain", "admm"] if block % 2 == 0 else ["admm", "plain"]
        for name in order:
            s = variants[name]
            t0 = {clock: f() for clock, f in clocks.items()}
            s.step(args.iters)
            for clock, f in clocks.items():
                times[clock][name].append((f() - t0[clock]) / args.iters * 1e3)
    result = {
        "net": net_path, "config": args.config, "weights": args.weights,
        "blocks": args.blocks, "iters": args.iters,
        "batch": net_param.layer[0].data_param.batch_size,
        "openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
        "hooked_layers": {s.name: s.kind for s in cfg.layers},
    }
    print("%-6s %-8s %12s %10s %10s" % ("clock", "variant", "median ms", "min", "max"))
    for clock, by_name in times.items():
        ratios = [a / p for a, p in zip(by_name["admm"], by_name["plain"])]
        result[clock] = {
            "ms_per_iter": {n: {"median": statistics.median(t), "min": min(t), "max": max(t)}
                            for n, t in by_name.items()},
            "overhead_ratio": {"median": statistics.median(ratios), "min": min(ratios),
                               "max": max(ratios)}}
        for name, t in result[clock]["ms_per_iter"].items():
            print("%-6s %-8s %12.2f %10.2f %10.2f" % (clock, name, t["median"], t["min"],
                                                       t["max"]))
    for clock in clocks:
        r = result[clock]["overhead_ratio"]
        print("ADMM / plain %s time per iteration: median %.3f (min %.3f, max %.3f); "
              "target <= 1.10" % (clock, r["median"], r["min"], r["max"]))
    result["hook_layers"] = hook_share(admm.net, args.iters)
    h = result["hook_layers"]
    print("direct: the hook layers take %.3f of %.3f ms of an ADMM forward+backward "
          "(%.1f%%): ADMM / plain = %.3f" % (h["hook_ms"], h["total_ms"], 100 * h["share"],
                                            h["ratio"]))
    write_json(args.out, result)


if __name__ == "__main__":
    main()

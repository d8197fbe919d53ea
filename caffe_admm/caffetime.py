"""Per-layer forward times from Caffe's own benchmark, ``caffe time``.

This is the timing engine for GPU (cuDNN) builds: ``caffe time`` brackets each
layer with Caffe's ``Timer``, which on the GPU records CUDA events and waits
for them, so asynchronous kernels are timed where they run. (pycaffe has no
synchronisation call, so wall-clock timing from Python would measure kernel
launches.) It also runs on CPU builds, which is how the tests check it.

The module needs the Python standard library and numpy (no pycaffe), so a
timing *plan* written by :func:`caffe_admm.timing.write_plan` (batch-resized
prototxts and each layer's FLOPs and parameters) can be measured on another
machine that has nothing but a Caffe build and numpy::

    python3 -m caffe_admm.caffetime PLAN_DIR/plan.json OUT.json

Each repeat is one ``caffe time -phase TEST`` process per net
(``iterations`` forward+backward passes after Caffe's own warm-up pass);
original and compacted nets alternate, each repeat starting with the other
one, and median, min and max over the repeats are reported. ``caffe time``
fills weights from the prototxt's fillers (zeros where none are given):
dense kernels take the same time whatever the values.
"""

import json
import os
import re
import shutil
import subprocess
import sys

__all__ = ["parse_log", "time_log", "run", "rotate", "measure", "summarise", "cudnn_workspace_mb",
           "cudnn_find", "cpu_threads", "cpu_threads_line", "cpu_conv_engine", "cpu_conv_line",
           "blas_info", "loaded_blas_info", "blas_warning", "blas_lines", "build_tool", "find_caffe",
           "cpu_model", "run_environment", "main"]

_LAYER = re.compile(r"\]\s+(\S+)\s+forward: ([0-9.eE+-]+) ms\.")
_FORWARD = re.compile(r"Average Forward pass: ([0-9.eE+-]+) ms\.")
# the line this project's CUDA build logs per cuDNN convolution input when it
# chooses algorithms (tools/patches/caffe-cudnn-find.patch)
_CUDNN = re.compile(r"\] cuDNN (\S+) input (\d+): forward algo (\d+) \((\d+) B\), "
                    r"backward filter algo (\d+) \((\d+) B\), "
                    r"backward data algo (\d+) \((\d+) B\); (timed|heuristic), "
                    r"workspace limit (\d+) MB")
# cuDNN's enums (cudnn_ops.h, cuDNN 7-9), by value
FORWARD_ALGOS = ("IMPLICIT_GEMM", "IMPLICIT_PRECOMP_GEMM", "GEMM", "DIRECT", "FFT",
                 "FFT_TILING", "WINOGRAD", "WINOGRAD_NONFUSED")
BACKWARD_FILTER_ALGOS = ("ALGO_0", "ALGO_1", "FFT", "ALGO_3", "WINOGRAD", "WINOGRAD_NONFUSED",
                         "FFT_TILING")
BACKWARD_DATA_ALGOS = ("ALGO_0", "ALGO_1", "FFT", "FFT_TILING", "WINOGRAD", "WINOGRAD_NONFUSED")


def _algo(names, value):
    value = int(value)
    return names[value] if value < len(names) else str(value)


def parse_log(text):
    """Per-layer and whole-net average forward times (ms) from ``caffe time`` output.

    Returns
    -------
    dict with ``layers`` ({name: ms}, in net order) and ``forward_ms``; and
    ``cudnn`` ({name: choice}) where the build logged its cuDNN algorithm
    choices: per convolution (its first input), ``forward``,
    ``backward_filter`` and ``backward_data`` (cuDNN's algorithm names),
    ``forward_workspace_bytes``, ``chosen_by`` ("timed" or "heuristic") and
    ``workspace_limit_mb``; the last choice logged for a layer counts.
    """
    layers = {}
    for match in _LAYER.finditer(text):
        layers[match.group(1)] = float(match.group(2))
    total = _FORWARD.search(text)
    if total is None or not layers:
        raise ValueError("no 'caffe time' benchmark in this output (last lines: %s)"
                         % " | ".join(text.strip().splitlines()[-3:]))
    out = {"layers": layers, "forward_ms": float(total.group(1))}
    cudnn = {}
    for m in _CUDNN.finditer(text):
        if m.group(2) == "0":
            cudnn[m.group(1)] = {
                "forward": _algo(FORWARD_ALGOS, m.group(3)),
                "forward_workspace_bytes": int(m.group(4)),
                "backward_filter": _algo(BACKWARD_FILTER_ALGOS, m.group(5)),
                "backward_data": _algo(BACKWARD_DATA_ALGOS, m.group(7)),
                "chosen_by": m.group(9), "workspace_limit_mb": int(m.group(10))}
    if cudnn:
        out["cudnn"] = cudnn
    return out


def build_tool(name):
    """bin/``name`` of the build whose pycaffe this process has loaded (e.g.
    ``caffe``, ``upgrade_net_proto_text``); None if none is loaded or it lacks it."""
    module = sys.modules.get("caffe")
    if module is None or not getattr(module, "__file__", None):
        return None
    # PREFIX/lib/python3/dist-packages/caffe/__init__.py -> PREFIX/bin/NAME
    path = os.path.join(os.path.dirname(module.__file__), *[".."] * 4 + ["bin", name])
    return os.path.normpath(path) if os.path.exists(path) else None


def find_caffe(caffe=None):
    """The ``caffe`` binary: ``caffe`` if given, else $CAFFE_BIN, else the one of
    the build whose pycaffe is loaded, else ``caffe`` on PATH."""
    path = (caffe or os.environ.get("CAFFE_BIN") or build_tool("caffe")
            or shutil.which("caffe"))
    if not path or not os.access(path, os.X_OK):
        raise FileNotFoundError("no executable caffe binary (%r): pass its path, set CAFFE_BIN "
                                "or put it on PATH" % (path,))
    return path


def time_log(caffe, model, iterations=20, gpu=None, timeout=None, env=None, phase="TEST"):
    """The log of one ``caffe time`` process on ``model`` in ``phase``.

    ``env`` (a dict) replaces ``os.environ`` for the process, e.g. to give two
    Caffe builds their own ``LD_LIBRARY_PATH``. A failed process raises
    RuntimeError with the command and the end of its log.
    """
    cmd = [caffe, "time", "-model", model, "-iterations", str(int(iterations)),
           "-phase", phase]
    if gpu is not None:
        cmd += ["-gpu", str(int(gpu))]
    env = dict(os.environ if env is None else env, GLOG_minloglevel="0", GLOG_logtostderr="1")
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                          timeout=timeout, universal_newlines=True)
    if proc.returncode != 0:
        raise RuntimeError("%s exited %d:\n%s" % (" ".join(cmd), proc.returncode,
                                                  "\n".join(proc.stdout.splitlines()[-15:])))
    return proc.stdout


def run(caffe, model, iterations=20, gpu=None, timeout=None, env=None):
    """One ``caffe time`` process on ``model`` (TEST phase; see :func:`time_log`),
    parsed by :func:`parse_log`."""
    return parse_log(time_log(caffe, model, iterations, gpu, timeout, env))


def rotate(items, k):
    """``items`` started at index ``k`` (mod its length): the order of round ``k``
    when each round of interleaved timing starts one later."""
    k %= len(items)
    return items[k:] + items[:k]


def measure(plan, base_dir=".", caffe=None, progress=None, on_batch=None):
    """Run a timing plan: original and compacted nets alternately, per batch size,
    the one that goes first swapped from one repeat to the next.

    Parameters
    ----------
    plan : dict
        As written by :func:`caffe_admm.timing.write_plan`: ``models`` (per batch
        size, ``original`` and ``compact`` prototxt paths relative to
        ``base_dir``), ``layers``, ``costs``, ``iterations``, ``repeats``, ``gpu``.
    caffe : str or None
        The caffe binary (default: :func:`find_caffe`).
    progress : callable or None
        Called with one line of text after each ``caffe time`` process.
    on_batch : callable or None
        Called after each batch size with the result so far (the batch
        sizes done), shaped as the return value.

    Returns
    -------
    dict shaped like :func:`caffe_admm.timing.compare`'s result.
    """
    caffe = find_caffe(caffe)
    blas = None if plan.get("gpu") is not None else blas_info(caffe)
    runs = {}
    for batch, models in plan["models"].items():
        runs[batch] = {"original": [], "compact": []}
        for r in range(plan["repeats"]):
            for which in rotate(["original", "compact"], r):
                res = run(caffe, os.path.join(base_dir, models[which]), plan["iterations"],
                          plan.get("gpu"))
                runs[batch][which].append(res)
                if progress:
                    progress("batch %s %s %d/%d: forward %.3f ms"
                             % (batch, which, r + 1, plan["repeats"], res["forward_ms"]))
        if on_batch:
            on_batch(summarise(plan, runs, blas=blas))
    return summarise(plan, runs, blas=blas)


def cudnn_workspace_mb(environ=None):
    """The cuDNN workspace limit (MB per convolution) that this project's CUDA
    build of Caffe applies: ``CAFFE_CUDNN_WORKSPACE_MB`` read as C's ``atoi``
    reads it, 8 (Caffe's own) where unset or not positive. GPU speed depends on
    it a lot, so GPU results record it."""
    value = (os.environ if environ is None else environ).get("CAFFE_CUDNN_WORKSPACE_MB", "")
    match = re.match(r"\s*([+-]?\d+)", value)
    number = int(match.group(1)) if match else 0
    return number if number > 0 else 8


def cudnn_find(environ=None):
    """Whether this project's CUDA build chooses cuDNN algorithms by timing them:
    ``CAFFE_CUDNN_FIND`` read as C's ``atoi`` reads it, a positive number."""
    value = (os.environ if environ is None else environ).get("CAFFE_CUDNN_FIND", "")
    match = re.match(r"\s*([+-]?\d+)", value)
    return bool(match) and int(match.group(1)) > 0


CPU_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "CAFFE_CPU_CONV_THREADS", "OMP_NUM_THREADS")


def cpu_threads(environ=None):
    """The variables that set CPU threads for Caffe (OpenBLAS's, this
    project's patch's images at once, and OpenMP's: oneDNN's, and OpenBLAS's
    in its OpenMP build), as set, None where unset. CPU speed depends on
    them, so CPU results record them."""
    environ = os.environ if environ is None else environ
    return {name: environ.get(name) for name in CPU_THREAD_VARIABLES}


def cpu_threads_line(threads):
    """The table line naming a :func:`cpu_threads` result."""
    return "CPU threads: " + ", ".join("%s=%s" % (name, "unset" if value is None else value)
                                       for name, value in threads.items())


CPU_CONV_ENGINES = ("onednn", "caffe")


def cpu_conv_engine(onednn, environ=None):
    """Which engine runs the CPU convolution forward pass of this project's
    Caffe (tools/patches/caffe-conv-onednn.patch): "onednn" where that Caffe
    links oneDNN (``onednn``) and ``CAFFE_CPU_CONV_ENGINE`` is unset, empty or
    "onednn"; "caffe" (im2col + GEMM) otherwise. Any other value raises
    ValueError, as Caffe refuses it."""
    value = (os.environ if environ is None else environ).get("CAFFE_CPU_CONV_ENGINE") or "onednn"
    if value not in CPU_CONV_ENGINES:
        raise ValueError("CAFFE_CPU_CONV_ENGINE=%s: expected onednn or caffe" % value)
    return "onednn" if onednn and value == "onednn" else "caffe"


def cpu_conv_line(engine):
    """The table line naming a :func:`cpu_conv_engine` result."""
    return "CPU convolution forward: " + (
        "oneDNN (direct convolution)" if engine == "onednn" else "Caffe (im2col + GEMM)")


# BLAS libraries, by the start of their file name
_BLAS_FILES = ("libopenblas", "libblas", "libcblas", "libmkl_rt", "libblis", "libatlas")
# OpenBLAS kernels without AVX2 and FMA: what its DYNAMIC_ARCH falls back to on
# a CPU it does not recognise (Debian's 0.3.21 runs Prescott on a Sapphire
# Rapids: benchmarks/measured/cpu_xeon16_blas_core/)
GENERIC_KERNELS = frozenset(("prescott", "core2", "penryn", "dunnington", "nehalem", "atom",
                             "sandybridge", "barcelona", "bobcat", "opteron", "opteron_sse3",
                             "katmai", "coppermine", "northwood", "banias", "generic"))


def openblas_names(path):
    """``core`` (the kernel chosen at load time) and ``config`` of the OpenBLAS
    at ``path``, through its own ``openblas_get_corename``/``_config``; {} for
    another library. Loading it in a process where it is loaded already
    returns that instance."""
    import ctypes
    lib = ctypes.CDLL(path)
    names = {}
    for key in ("corename", "config"):
        function = getattr(lib, "openblas_get_" + key, None)
        if function is not None:
            function.restype = ctypes.c_char_p
            names["core" if key == "corename" else key] = function().decode()
    return names


def cpu_flags(path="/proc/cpuinfo"):
    """The CPU's feature flags (the first ``flags`` line), empty where unreadable."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_model(path="/proc/cpuinfo"):
    """The CPU's name (the first ``model name`` line), None where unreadable."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def run_environment():
    """What this process's Caffe computes with, beyond its inputs: the CPU,
    the thread settings (:func:`cpu_threads`), the BLAS it loaded and the
    engine of its convolutions' forward pass. Threads, BLAS and engine change
    the order of Caffe's sums, and so the last digits of a trained net: a
    run's report records them."""
    blas = loaded_blas_info()
    return {"cpu": cpu_model(), "cpu_threads": cpu_threads(), "blas": blas,
            "cpu_conv_engine": cpu_conv_engine(blas["onednn"])}


def blas_warning(core, flags):
    """A warning where OpenBLAS runs a generic kernel on a CPU with AVX2, else None."""
    if not core or core.lower() not in GENERIC_KERNELS or "avx2" not in flags:
        return None
    wide = "avx512f" in flags
    return ("OpenBLAS runs its generic %s kernel on a CPU with AVX2%s: GEMMs may run several "
            "times slower than they can, which also flatters speed-up / FLOP reduction; set "
            "OPENBLAS_CORETYPE=%s (or another kernel this CPU runs) and time again"
            % (core, " and AVX-512" if wide else "", "SKYLAKEX" if wide else "HASWELL"))


def blas_lines(blas):
    """The ``BLAS:`` line of a :func:`blas_info` record for a table or a log,
    and a ``WARNING:`` line where the record has a warning."""
    lines = ["BLAS: %s%s" % (blas["library"] or "not found",
                             ", kernel %s" % blas["core"] if blas.get("core") else "")]
    if blas.get("warning"):
        lines.append("WARNING: " + blas["warning"])
    return lines


def _is_openblas(path):
    return bool(path) and os.path.basename(path).startswith("libopenblas")


def _blas_record(path, names, onednn):
    names = names or {}
    return {"library": os.path.realpath(path) if path else None, "core": names.get("core"),
            "config": names.get("config"), "warning": blas_warning(names.get("core"), cpu_flags()),
            "onednn": onednn}


def _links_onednn(paths):
    return any(os.path.basename(p).startswith("libdnnl.so") for p in paths)


def _executable(path):
    """``path``, or the binary that a shell wrapper such as ``.venv/bin/caffe``
    ends in (its ``exec "BINARY"`` line)."""
    try:
        with open(path, "rb") as f:
            if f.read(4) == b"\x7fELF":
                return path
            match = re.search(rb'^exec "([^"]+)"', f.read(65536), re.M)
    except OSError:
        return path
    return match.group(1).decode() if match else path


def blas_info(caffe, environ=None):
    """The BLAS that ``caffe`` (a binary) loads under ``environ`` (default
    ``os.environ``): its file (through ``ldd``), and for OpenBLAS the kernel it
    picks there (asked in a child process with that environment, since
    ``OPENBLAS_CORETYPE`` and ``LD_LIBRARY_PATH`` decide it) and a warning from
    :func:`blas_warning`. ``library`` is None where ``ldd`` finds no BLAS.
    ``onednn``: whether that Caffe links oneDNN (:func:`cpu_conv_engine`)."""
    env = dict(os.environ if environ is None else environ)
    try:
        text = subprocess.run(["ldd", _executable(caffe)], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, env=env, universal_newlines=True,
                              timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        text = ""
    linked = [fields for fields in (line.split() for line in text.splitlines())
              if len(fields) > 2 and fields[1] == "=>"]
    path = next((fields[2] for fields in linked
                 if fields[0].startswith(_BLAS_FILES) and fields[2].startswith("/")), None)
    names = {}
    if _is_openblas(path):
        code = ("import json, sys; sys.path.insert(0, sys.argv[1]); "
                "from caffe_admm.caffetime import openblas_names; "
                "print(json.dumps(openblas_names(sys.argv[2])))")
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        try:
            names = json.loads(subprocess.run(
                [sys.executable, "-c", code, root, path], stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL, env=env, universal_newlines=True, timeout=60,
                check=True).stdout)
        except (OSError, subprocess.SubprocessError, ValueError):
            pass  # recorded without a kernel
    return _blas_record(path, names, _links_onednn(fields[0] for fields in linked))


def loaded_blas_info(maps="/proc/self/maps"):
    """:func:`blas_info` of the BLAS loaded in this process (pycaffe's), read
    from the process's memory map; ``library`` None where none is loaded.
    numpy's own OpenBLAS, whose symbols carry a suffix (``cblas_sgemm64_``),
    is not the one Caffe calls and is passed over."""
    import ctypes
    path = None
    try:
        with open(maps) as f:
            mapped = [fields[5] for fields in (line.split() for line in f) if len(fields) > 5]
    except OSError:
        mapped = []
    candidates = [p for p in mapped if os.path.basename(p).startswith(_BLAS_FILES)]
    for candidate in dict.fromkeys(candidates):
        if hasattr(ctypes.CDLL(candidate), "cblas_sgemm"):
            path = candidate
            break
    names = openblas_names(path) if _is_openblas(path) else {}
    return _blas_record(path, names, _links_onednn(mapped))


def summarise(plan, runs, environ=None, blas=None):
    """Median, min and max per layer and for the whole net, and the speed-ups.

    Parameters
    ----------
    plan : dict
        The timing plan (``layers``, ``costs``, ``iterations``, ...).
    runs : dict
        Per batch size (a key of ``plan["models"]``), ``original`` and
        ``compact`` lists of :func:`run` results, one per ``caffe time`` process.
    environ : dict or None
        The environment the processes ran in (default ``os.environ``): GPU
        results record its cuDNN workspace limit (:func:`cudnn_workspace_mb`)
        and whether algorithms were timed (:func:`cudnn_find`), CPU results
        its thread settings (:func:`cpu_threads`).
    blas : dict or None
        :func:`blas_info` of the processes' Caffe, recorded as ``blas`` in CPU
        results, with the engine of its convolutions (``cpu_conv_engine``).

    Returns
    -------
    dict shaped like :func:`caffe_admm.timing.compare`'s result; ``repeats``
    is the number of processes actually summarised (the fewest of any cell).
    Where the build logged its cuDNN choices, each layer's ``original`` and
    ``compact`` entries get ``cudnn_forward``: {forward algorithm: number of
    processes that chose it}.
    """
    from caffe_admm.timing import layer_range, speedups, summary  # numpy only, no pycaffe
    counts = [len(results) for cells in runs.values() for results in cells.values()]
    if not counts or min(counts) == 0:
        raise ValueError("no caffe time results to summarise")
    out = {"engine": "caffe time", "gpu": plan.get("gpu"), "iterations": plan["iterations"],
           "repeats": min(counts), "conv_engine": plan.get("conv_engine"),
           "model": plan.get("model"),
           "compact_model": plan.get("compact_model"), "batches": {}}
    if plan.get("gpu") is not None:
        out["cudnn_workspace_mb"] = cudnn_workspace_mb(environ)
        out["cudnn_find"] = cudnn_find(environ)
    else:
        out["cpu_threads"] = cpu_threads(environ)
        if blas is not None:
            out["blas"] = blas
            out["cpu_conv_engine"] = cpu_conv_engine(blas.get("onednn"), environ)
    for batch, cells in runs.items():
        timed = {}
        for which, results in cells.items():
            names = list(results[0]["layers"])
            spans = {name: names[slice(*layer_range(names, name))] + [name]
                     for name in plan["layers"]}  # a layer's time includes its helpers
            timed[which] = {
                "net": summary([res["forward_ms"] for res in results]),
                "layers": {name: summary([sum(res["layers"][n] for n in span) for res in results])
                           for name, span in spans.items()}}
        out["batches"][batch] = speedups(timed["original"], timed["compact"],
                                         plan["costs"]["original"], plan["costs"]["compact"])
        for which, results in cells.items():
            for name, row in out["batches"][batch]["layers"].items():
                algos = [res["cudnn"][name]["forward"] for res in results
                         if name in res.get("cudnn", {})]
                if algos:
                    row[which]["cudnn_forward"] = {a: algos.count(a) for a in sorted(set(algos))}
    return out


def main(argv=None):
    """``python3 -m caffe_admm.caffetime PLAN.json OUT.json [--caffe BIN]``."""
    import argparse
    parser = argparse.ArgumentParser(prog="python3 -m caffe_admm.caffetime",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("plan", help="plan.json written by `caffe-admm time --plan-only DIR`")
    parser.add_argument("out", help="result JSON (same layout as `caffe-admm time --json`), "
                        "written after each batch size")
    parser.add_argument("--caffe", help="caffe binary (default: $CAFFE_BIN or PATH)")
    args = parser.parse_args(argv)
    with open(args.plan) as f:
        plan = json.load(f)

    def save(result):  # after each batch size: a run cut short keeps what it timed
        with open(args.out + ".partial", "w") as f:
            json.dump(result, f, indent=1)
        os.replace(args.out + ".partial", args.out)
    result = measure(plan, os.path.dirname(os.path.abspath(args.plan)), args.caffe,
                     progress=lambda line: print(line, file=sys.stderr, flush=True),
                     on_batch=save)
    from caffe_admm.timing import format_table  # numpy only: no pycaffe needed
    print(format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

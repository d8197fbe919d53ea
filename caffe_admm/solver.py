"""The Python loop around the user's own Caffe solver.

Three jobs share it: plain training (:func:`train`), StructADMM pruning
(:func:`prune`: ADMM phase, hard prune, masked retraining) and masked
retraining alone (:func:`retrain`). The user's solver prototxt is used as is
(SGD, Nesterov, Adam, ... whatever Caffe supports), except that the net is
replaced by a copy with :class:`caffe_admm.layers.WeightHook` layers and that
snapshots and testing are driven from here.

Runs are resumable: a checkpoint is Caffe's own snapshot (weights and solver
state) plus the ADMM state and the run's history, recorded in
``checkpoints/meta.json`` only after all its files are complete. On resume
the training data are advanced by the batches already consumed, so a resumed
run gives the same weights as an uninterrupted one for nets whose training
has no randomness besides the data order (no Dropout or random crops: Caffe
does not save its random generator's state).
"""

import collections
import contextvars
import fcntl
import functools
import glob
import hashlib
import json
import math
import os
import shutil
import signal
import sys
import time

import numpy as np

from caffe_admm import caffetime, compact, liveness, projections, protoio
from caffe_admm.backend import caffe, caffe_pb2
from caffe_admm.config import GROUPED_FILTERS_ONLY, PRUNABLE_TYPES, load_config
from caffe_admm.layers import HOOK_PREFIX, NonFiniteWeights
from caffe_admm.methods import make_method, target_masks
from caffe_admm.masks import (apply_masks, filter_mask, load_masks, masks_from_zeros, save_masks,
                              sparsity_stats)
from caffe_admm.progress import Progress

__all__ = ["DivergenceError", "RunError", "train", "prune", "check", "retrain", "evaluate",
           "evaluate_net", "open_test_net", "hard_prune", "recalibrate_batchnorm",
           "recalibrate_test_net", "batchnorms", "code_digest", "fingerprint"]

SOURCE_TYPES = protoio.DATA_TYPES + ("Python",)  # a Python layer may read data too
BN_BATCHES = 100  # the config's bn_recalibration_batches default, for `train`'s second score


class RunError(ValueError):
    """Bad input to a run, found before Caffe sees it."""


class DivergenceError(RuntimeError):
    """The loss or the weights became NaN or infinite."""


# --------------------------------------------------------------------------- nets


def _layers_named(net_param, name):
    return [layer for layer in net_param.layer if layer.name == name]


def add_hooks(net_param, shapes):
    """Copy of ``net_param`` with a WeightHook layer for each layer in ``shapes``.

    Parameters
    ----------
    net_param : caffe_pb2.NetParameter
    shapes : dict[str, list of tuple]
        Blob shapes of each hooked layer: the weight, and the bias if it has one
        (the hook shares both, so it can hold the biases of pruned filters at 0).

    Returns
    -------
    caffe_pb2.NetParameter
    """
    net = caffe_pb2.NetParameter()
    net.CopyFrom(net_param)
    owners = {}
    hooks = []
    for name, blob_shapes in shapes.items():
        blob_shapes = [list(s) for s in blob_shapes[:2]]
        layers = _layers_named(net, name)
        if not layers:
            raise RunError("layer %r is not in net %r" % (name, net.name))
        for layer in layers:
            while len(layer.param) < len(blob_shapes):
                layer.param.add()
            for i, role in enumerate(("weight", "bias")[:len(blob_shapes)]):
                if not layer.param[i].name:
                    layer.param[i].name = "admm/%s/%s" % (name, role)
        specs = layers[0].param[:len(blob_shapes)]
        if specs[0].name in owners:
            raise RunError("layers %r and %r share the weight %r; pruning shared weights is "
                           "not supported" % (owners[specs[0].name], name, specs[0].name))
        owners[specs[0].name] = name
        if specs[0].HasField("lr_mult") and specs[0].lr_mult == 0:
            raise RunError("layer %r has lr_mult: 0 on its weight; a frozen layer cannot be "
                           "pruned by ADMM" % name)
        hook = caffe_pb2.LayerParameter(name=HOOK_PREFIX + name, type="Python",
                                        top=[HOOK_PREFIX + name], loss_weight=[1.0])
        hook.include.add(phase=caffe_pb2.TRAIN)
        hook.python_param.module = "caffe_admm.layers"
        hook.python_param.layer = "WeightHook"
        hook.python_param.param_str = json.dumps({"layer": name, "shapes": blob_shapes})
        for spec in specs:
            hook_spec = hook.param.add(name=spec.name)
            for field in ("lr_mult", "decay_mult"):
                if spec.HasField(field):
                    setattr(hook_spec, field, getattr(spec, field))
        hooks.append(hook)
    rest = list(net.layer)
    del net.layer[:]
    net.layer.extend(hooks + rest)
    return net


def _hook_layers(net):
    """``{pruned layer name: WeightHook object}`` of a live train net."""
    hooks = {}
    for name, layer in zip(net._layer_names, net.layers):
        if name.startswith(HOOK_PREFIX):
            hooks[name[len(HOOK_PREFIX):]] = layer
    return hooks


def _weights(net, names):
    """Live views of the weight blobs of ``names``."""
    return {name: net.params[name][0].data for name in names}


def _net_arrays(net, net_param):
    """Copies of all parameter blobs of the layers of ``net_param`` present in ``net``."""
    params, types = {}, {}
    for layer in net_param.layer:
        if layer.name in net.params and layer.name not in params:
            params[layer.name] = [b.data.copy() for b in net.params[layer.name]]
            types[layer.name] = layer.type
    return params, types


def save_weights(path, net, net_param):
    """Write the weights of ``net`` for the layers of ``net_param`` as a caffemodel."""
    params, types = _net_arrays(net, net_param)
    protoio.write_binary(path, protoio.make_caffemodel(net_param.name, params, types))


# what a run writes into its directory, besides checkpoints/ (``%s``: the method)
RUN_OUTPUTS = {
    "train": ("baseline.caffemodel", "train.json", "train_solver.prototxt"),
    "prune": ("pruned.caffemodel", "train_test.prototxt", "masks.npz", "%s.caffemodel",
              "report.json", "hooked_train_test.prototxt", "%s_solver.prototxt",
              "retrain_solver.prototxt"),
    "retrain": ("pruned.caffemodel", "masks.npz", "report.json", "retrain_train_test.prototxt",
                "retrain_solver.prototxt"),
}


def _check_run_outputs(verb, out_dir, inputs, method=None):
    """:func:`protoio.check_outputs` for what ``verb`` writes into ``out_dir``."""
    names = [n % method if "%s" in n else n for n in RUN_OUTPUTS[verb]]
    protoio.check_outputs(out_dir, names, inputs)


def check_weights(weights_path, net_path, net_param):
    """Check a caffemodel against a net in Python, before Caffe would abort on it.

    Returns
    -------
    shapes : dict[str, list of tuple]
        Parameter shapes of the net (TEST phase) by layer name.
    """
    if not os.path.isfile(weights_path):
        raise RunError("weights file %s %s" % (weights_path, "is not a file (a caffemodel)"
                                               if os.path.exists(weights_path) else "not found"))
    model = protoio.read_caffemodel(weights_path)
    have = protoio.caffemodel_shapes(model)
    net = caffe.Net(net_path, caffe.TEST)
    want = {name: [tuple(b.data.shape) for b in blobs] for name, blobs in net.params.items()}
    names = set(net._layer_names)
    # as Net::CopyTrainedLayersFrom: each source layer named as one of the
    # net's, whatever its blobs, and each blob as Blob::ShapeEquals sees it
    for layer in list(model.layer) or list(model.layers):
        shapes = want.get(layer.name, [])
        if layer.name not in names or len(layer.blobs) == len(shapes) and all(
                protoio.blob_fits(s, b) for s, b in zip(shapes, layer.blobs)):
            continue
        got = have.get(layer.name, [])
        if [tuple(s) for s in got] == shapes:  # the shapes fit; the values do not
            raise RunError("%s: layer %r has blobs of the shapes net %s expects, %s, but not "
                           "as many values (a damaged caffemodel?)"
                           % (weights_path, layer.name, net_path, shapes))
        raise RunError("%s: layer %r has blobs of shapes %s but net %s expects %s"
                       % (weights_path, layer.name, got, net_path, shapes))
    if not set(want) & set(have):
        raise RunError("%s holds no weights for any layer of %s (layers with weights: %s)"
                       % (weights_path, net_path, ", ".join(sorted(have)) or "none"))
    missing = [name for name in want if name not in have]
    if missing:  # Caffe leaves them as the prototxt's fillers make them, and says nothing
        print("warning: %s holds no weights for layer%s %s of %s: Caffe leaves %s at %s "
              "fillers (a layer renamed?)" % (
                  weights_path, "s" * (len(missing) > 1), ", ".join(missing), net_path,
                  "them" if len(missing) > 1 else "it", "their" if len(missing) > 1 else "its"),
              file=sys.stderr, flush=True)
    return want


def _check_test_phase(net_param, path, solver_param=None, pycaffe=True):
    """Raise where Caffe would abort on the nets a run builds, and where the
    TEST net that scores it has no data layer.

    The nets: with ``pycaffe``, ``caffe.Net(path, TEST)`` (weights checks,
    evaluation); with ``solver_param``, the solver's TRAIN and first TEST net,
    built with its ``train_state`` / ``test_state``, which then scores the run.
    """
    states = [protoio.net_state(net_param, caffe_pb2.TEST)] if pycaffe else []
    if solver_param is not None:
        test_state = solver_param.test_state[0] if solver_param.test_state else None
        states += [protoio.net_state(net_param, caffe_pb2.TRAIN, solver_param.train_state),
                   protoio.net_state(net_param, caffe_pb2.TEST,
                                     test_state or caffe_pb2.NetState())]
    for state in states:
        protoio.check_net(net_param, path, state)
    if not any(layer.type in SOURCE_TYPES and protoio.layer_included(layer, states[-1], path)
               for layer in net_param.layer):
        raise RunError("%s has no TEST-phase data layer; accuracy cannot be measured" % path)


# ----------------------------------------------------------------------- solving


def _write_solver(solver_param, net_path, out_dir, tag, test_iter):
    """Write the solver copy a run uses; returns its path."""
    sp = caffe_pb2.SolverParameter()
    sp.CopyFrom(solver_param)
    for field in ("net", "net_param", "train_net", "train_net_param"):
        sp.ClearField(field)
    del sp.test_net[:]
    del sp.test_net_param[:]
    del sp.test_state[1:]  # the one test net a run builds, with test_iter below
    sp.net = os.path.abspath(net_path)
    sp.snapshot_prefix = os.path.join(os.path.abspath(out_dir), "checkpoints", tag)
    sp.snapshot = 0
    sp.snapshot_after_train = False
    sp.test_interval = 2 ** 31 - 1  # Caffe needs > 0; testing is driven from here
    sp.test_initialization = False
    del sp.test_iter[:]
    sp.test_iter.append(test_iter)
    path = os.path.join(out_dir, "%s_solver.prototxt" % tag)
    protoio.write_text(path, sp)
    return path


# evaluations and recalibrations show a progress bar from this many seconds on
QUIET_S = 10.0


def evaluate_net(net, iters, progress=False, label="test"):
    """Mean of every scalar output of a TEST net over ``iters`` forward passes.
    With ``progress``, a bar (``label``) where it takes over :data:`QUIET_S`."""
    sums = {}
    bar = Progress(iters, label, enabled=progress, quiet_s=QUIET_S)
    bar.update(0)
    for i in range(iters):
        out = net.forward()
        for key, value in out.items():
            if value.size == 1:
                sums[key] = sums.get(key, 0.0) + float(value.ravel()[0])
        bar.update(i + 1)
    bar.close()
    return {key: total / iters for key, total in sums.items()}


def _test_net(solver):
    """The solver's TEST net, holding the train net's current weights."""
    test_net = solver.test_nets[0]
    test_net.share_with(solver.net)
    return test_net


def _evaluate(solver, iters, progress=False, label="test"):
    return evaluate_net(_test_net(solver), iters, progress, label)


def _record_seconds(history, what, since):
    """Record the seconds from ``since`` (``time.monotonic()``) as
    ``history["eval_seconds"][what]``: the run's time left counts its later
    evaluations ("test") and BatchNorm recalibrations ("recalibration") at
    these."""
    history.setdefault("eval_seconds", {})[what] = time.monotonic() - since


def _evaluations_s(history, evaluations):
    """Seconds of ``evaluations`` TEST passes, each with its BatchNorm
    recalibration where the run has one, as long as the run's first ones
    took (:func:`_record_seconds`; 0 where not measured, as in a run
    resumed from a checkpoint written before they were recorded)."""
    timed = history.get("eval_seconds", {})
    return evaluations * (timed.get("test", 0.0) + timed.get("recalibration", 0.0))


def _train_outputs(net):
    return {name: float(net.blobs[name].data.ravel()[0]) for name in net.outputs
            if net.blobs[name].data.size == 1}


def _skip_batches(net, count):
    """Advance the train net's data layers by ``count`` batches (for resume)."""
    names = list(net._layer_names)
    sources = [i for i, layer in enumerate(net.layers)
               if layer.type in SOURCE_TYPES and not names[i].startswith(HOOK_PREFIX)]
    if not sources or count <= 0:
        return
    start, end = names[sources[0]], names[sources[-1]]
    for _ in range(count):
        net.forward(start=start, end=end)


_RUN_LOCKS = contextvars.ContextVar("run_locks")


def _holds_run_dir(func):
    """Release the run directory's lock (:func:`_open_run_dir`) when ``func``
    returns or raises."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        token = _RUN_LOCKS.set([])
        try:
            return func(*args, **kwargs)
        finally:
            for f in _RUN_LOCKS.get():
                f.close()
            _RUN_LOCKS.reset(token)
    return wrapper


def _open_run_dir(out_dir, restart):
    """Make ``out_dir``, lock it against a second run writing it at the same
    time (an flock on ``out_dir/.lock``, released when the run ends, killed
    too), and with ``restart`` discard its checkpoints."""
    os.makedirs(out_dir, exist_ok=True)
    f = open(os.path.join(out_dir, ".lock"), "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        owner = f.read().strip()
        f.close()
        raise RunError("another caffe-admm run is writing %s%s; wait for it to end, or use "
                       "another --out" % (out_dir, " (process %s)" % owner if owner else ""))
    except OSError as exc:  # a file system without locks: run unguarded, and say so
        _log("note: %s cannot be locked against a second run (%s)" % (out_dir, exc.strerror))
    f.seek(0)
    f.truncate()
    f.write("%d\n" % os.getpid())
    f.flush()
    _RUN_LOCKS.get().append(f)
    if restart and os.path.isdir(os.path.join(out_dir, "checkpoints")):
        shutil.rmtree(os.path.join(out_dir, "checkpoints"))


class _Interrupt:
    """Turn SIGTERM into KeyboardInterrupt so kill stops a run like Ctrl-C does."""

    def __enter__(self):
        try:
            self.old = signal.signal(signal.SIGTERM, self._raise)
        except ValueError:  # not the main thread
            self.old = None
        return self

    @staticmethod
    def _raise(signum, frame):
        raise KeyboardInterrupt("terminated by signal %d" % signum)

    def __exit__(self, *exc):
        if self.old is not None:
            signal.signal(signal.SIGTERM, self.old)
        return False


class _Checkpoints:
    """Snapshots of one run directory, recorded in ``checkpoints/meta.json``."""

    def __init__(self, out_dir, fingerprint, hint=""):
        self.dir = os.path.join(out_dir, "checkpoints")
        self.meta_path = os.path.join(self.dir, "meta.json")
        self.fingerprint = fingerprint
        self.hint = hint   # appended to the error on a fingerprint mismatch

    def load(self):
        if not os.path.exists(self.meta_path):
            return None
        with open(self.meta_path) as f:
            meta = json.load(f)
        if meta.get("fingerprint") != self.fingerprint:
            raise RunError("%s holds a run with other inputs (solver, net, weights or config); "
                           "use another --out, or --restart to discard it%s"
                           % (self.meta_path, self.hint))
        if meta["phase"] != "done" and meta.get("code", code_digest()) != code_digest():
            _log("warning: resuming a run that other caffe-admm code began (sources %s, now "
                 "%s): what it computes after the interruption may differ from before it; "
                 "--restart runs it whole under this code" % (meta["code"], code_digest()))
        return meta

    def save(self, solver, phase, history, state=None, extra=None):
        os.makedirs(self.dir, exist_ok=True)
        it = solver.iter
        solver.snapshot()  # Caffe writes <prefix>_iter_<it>.caffemodel/.solverstate
        prefix = "%s_iter_%d" % (os.path.join(self.dir, phase), it)
        meta = {"fingerprint": self.fingerprint, "phase": phase, "iter": it,
                "solverstate": prefix + ".solverstate", "history": history,
                "code": code_digest()}
        meta.update(extra or {})
        if state is not None:
            meta["method_state"] = prefix + ".state.npz"
            with protoio.atomic_write(meta["method_state"]) as f:
                np.savez(f, **state.to_arrays())
        old = self.load_raw()
        with protoio.atomic_write(self.meta_path, "w") as f:
            json.dump(meta, f, indent=1)
        if old and old.get("solverstate") != meta["solverstate"]:
            self._remove(old)
        return meta

    def load_raw(self):
        if not os.path.exists(self.meta_path):
            return None
        with open(self.meta_path) as f:
            return json.load(f)

    @staticmethod
    def _remove(meta):
        base = meta["solverstate"][:-len(".solverstate")]
        for suffix in (".solverstate", ".caffemodel", ".state.npz"):
            if os.path.exists(base + suffix):
                os.unlink(base + suffix)


def _mark_done(ckpt):
    """Record in ``ckpt``'s meta.json that its run finished."""
    meta = ckpt.load_raw() or {}
    meta.update({"fingerprint": ckpt.fingerprint, "phase": "done"})
    os.makedirs(ckpt.dir, exist_ok=True)
    with protoio.atomic_write(ckpt.meta_path, "w") as f:
        json.dump(meta, f, indent=1)


@functools.lru_cache(maxsize=None)
def code_digest():
    """A digest of this package's sources (its modules and ``admm.proto``),
    kept in checkpoints: a run resumed under other code says so."""
    root = os.path.dirname(os.path.abspath(__file__))
    names = sorted(glob.glob("*.py", root_dir=root) + ["proto/admm.proto"])
    return fingerprint(*(os.path.join(root, n) for n in names), extra=" ".join(names))[:12]


def fingerprint(*paths, extra=""):
    """A short digest of the files' bytes and ``extra``: what a run's
    checkpoints (and a sensitivity scan's partial results) were made from."""
    h = hashlib.sha256(extra.encode())
    for path in paths:
        with open(path, "rb") as f:
            h.update(hashlib.sha256(f.read()).digest())
    return h.hexdigest()[:16]


def _run_iters(solver, until, label, progress, chunk=None,
               checkpoint_every=None, checkpoint=None, samples=None, after=0, after_s=0.0):
    """Step ``solver`` up to iteration ``until``, checking for divergence.

    Returns the sampled training outputs: list of (iteration, {name: value});
    ``samples``, a list, gets them as they come (for ``checkpoint``).
    ``after`` and ``after_s``: the run's iterations after these, and the
    seconds of its evaluations, for its time left.
    """
    samples = [] if samples is None else samples
    start = solver.iter
    bar = Progress(until - start, label, enabled=progress, after=after, after_s=after_s)
    chunk = chunk or max(1, min(50, until - start))
    bar.update(0)
    while solver.iter < until:
        n = min(chunk, until - solver.iter)
        if checkpoint_every:
            n = min(n, checkpoint_every - solver.iter % checkpoint_every)
        try:
            solver.step(n)
        except NonFiniteWeights as exc:
            bad = [str(exc)]
        else:
            outputs = _train_outputs(solver.net)
            bad = ["%s=%s" % (k, v) for k, v in outputs.items() if not math.isfinite(v)]
        if bad:
            bar.close()
            raise DivergenceError(
                "%s diverged at iteration %d: %s. Nothing after the last checkpoint was "
                "kept; lower base_lr (or rho) and run again with the same --out to resume"
                % (label, solver.iter, ", ".join(bad)))
        samples.append((solver.iter, outputs))
        # a hook's output is its penalty: zero in retraining and for magnitude pruning
        bar.update(solver.iter - start, " ".join(
            "%s=%.4g" % (k, v) for k, v in outputs.items()
            if v != 0 or not k.startswith(HOOK_PREFIX)))
        if checkpoint_every and checkpoint and solver.iter % checkpoint_every == 0 \
                and solver.iter < until:
            checkpoint()
    bar.close()
    return samples


def _log(msg):
    print(msg, flush=True)


# ---------------------------------------------------------------------- training


def _test_iters(solver_param, override=0):
    if override:
        return int(override)
    if solver_param.test_iter:
        return int(solver_param.test_iter[0])
    raise RunError("the solver has no test_iter; set test_iter in the solver or the config")


@_holds_run_dir
def train(solver_path, out_dir, weights=None, iters=None, progress=True, restart=False):
    """Plain training with the user's solver; writes ``baseline.caffemodel``.

    Checkpoints every ``snapshot`` iterations of the solver (1000 if unset)
    into ``out_dir/checkpoints``; called again with the same inputs it resumes
    from the last one (``restart`` discards them), and once done it returns
    the finished run's result.

    Returns
    -------
    dict, also written to ``out_dir/train.json``
    """
    if iters is not None and iters < 1:
        raise RunError("%d training iterations: give 1 or more (or none: the solver's "
                       "max_iter)" % iters)
    solver_param = protoio.read_solver(solver_path)
    protoio.check_solver(solver_param, solver_path)
    net_path = protoio.resolve_solver_net(solver_path, solver_param)
    net_param = protoio.read_net(net_path)
    _check_test_phase(net_param, net_path, solver_param, pycaffe=bool(weights))
    if weights:
        check_weights(weights, net_path, net_param)
    iters = int(iters or solver_param.max_iter)
    test_iter = _test_iters(solver_param)
    out_dir = os.path.abspath(out_dir)
    _check_run_outputs("train", out_dir, {"solver": solver_path, "net": net_path,
                                          "weights": weights})
    _open_run_dir(out_dir, restart)
    ckpt = _Checkpoints(out_dir, fingerprint(solver_path, net_path,
                                              *([weights] if weights else []),
                                              extra="train:%d" % iters))
    meta = ckpt.load()
    if meta and meta["phase"] == "done":
        _log("%s: run already complete" % out_dir)
        with open(os.path.join(out_dir, "train.json")) as f:
            return json.load(f)
    sp_path = _write_solver(solver_param, net_path, out_dir, "train", test_iter)
    solver = caffe.get_solver(sp_path)
    history = meta["history"] if meta else {"loss": [], "seconds": 0.0}
    if meta is None:
        if weights:
            solver.net.copy_from(weights)
    else:
        solver.restore(meta["solverstate"])
        _log("resuming training at iteration %d of %d" % (solver.iter, iters))
        _skip_batches(solver.net, solver.iter * max(1, solver_param.iter_size))
    samples = []
    t0 = time.time()

    def so_far():
        return {"loss": history["loss"] + [[it, out.get("loss")] for it, out in samples],
                "seconds": history["seconds"] + time.time() - t0}

    with _Interrupt():
        _run_iters(solver, iters, "train", progress, chunk=max(1, solver_param.display or 100),
                   checkpoint_every=max(1, solver_param.snapshot or 1000),
                   checkpoint=lambda: ckpt.save(solver, "train", so_far()), samples=samples)
    history = so_far()
    scores = _evaluate(solver, test_iter, progress)
    model = os.path.join(out_dir, "baseline.caffemodel")
    save_weights(model, solver.net, net_param)
    result = {"solver": os.path.abspath(solver_path), "net": os.path.abspath(net_path),
              "iterations": iters, "seconds": history["seconds"], "test": scores,
              "test_iter": test_iter, "weights": os.path.abspath(model),
              "loss": history["loss"], "environment": caffetime.run_environment()}
    recalibrated = _recalibrated_baseline(net_path, out_dir, model, BN_BATCHES, test_iter,
                                          progress)
    if recalibrated is not None:
        result["test_recalibrated"] = recalibrated
        _log("with its BatchNorm statistics recomputed over %d training batches (as "
             "`caffe-admm prune` scores nets; the caffemodel keeps Caffe's moving averages): "
             "%s" % (BN_BATCHES, _fmt_scores(recalibrated)))
    with protoio.atomic_write(os.path.join(out_dir, "train.json"), "w") as f:
        json.dump(result, f, indent=1)
    _mark_done(ckpt)
    return result


def open_test_net(net_path, weights, iters=None):
    """The TEST net of ``net_path`` with ``weights``, checked as every verb
    checks it (a TEST data layer, weights that fit, a scalar output to
    score): (net, net_param, iters). ``iters`` defaults to enough batches to
    cover the first TEST data layer's LMDB once (MNIST: 10000 / 100)."""
    if iters is not None and iters < 0:
        raise RunError("%d TEST batches: give 1 or more (or none: one pass)" % iters)
    net_param = protoio.read_net(net_path)
    _check_test_phase(net_param, net_path)
    check_weights(weights, net_path, net_param)
    if not iters:
        iters = _full_pass_iters(net_param, net_path)
    net = caffe.Net(net_path, caffe.TEST, weights=weights)
    if not any(net.blobs[name].data.size == 1 for name in net.outputs):
        raise RunError("%s: its TEST phase has no scalar output (an Accuracy or loss layer) "
                       "to report; outputs: %s" % (net_path, ", ".join(net.outputs)))
    return net, net_param, iters


def evaluate(net_path, weights, iters=None, progress=False):
    """Scores of the TEST phase of ``net_path`` with ``weights``, over
    ``iters`` batches (:func:`open_test_net`): (scores, iters)."""
    net, _, iters = open_test_net(net_path, weights, iters)
    return evaluate_net(net, iters, progress), iters


def _full_pass_iters(net_param, path):
    import lmdb
    test = protoio.net_state(net_param, caffe_pb2.TEST)
    for layer in net_param.layer:
        if (layer.type == "Data" and layer.data_param.backend == caffe_pb2.DataParameter.LMDB
                and protoio.layer_included(layer, test, path)):
            env = lmdb.open(layer.data_param.source, readonly=True, lock=False)
            try:
                n = env.stat()["entries"]
            finally:
                env.close()
            return int(math.ceil(n / float(layer.data_param.batch_size)))
    raise RunError("cannot tell the test set size (no TEST-phase LMDB Data layer); pass --iters")


# ----------------------------------------------------------------- ADMM pruning


def _layer_report(spec, method, w):
    stats = sparsity_stats(w, spec.group)
    out = {"kind": spec.kind, "method": method.name,
           "target_keep": {c.kind: c.keep_ratio for c in spec.constraints},
           "target_groups_kept": method.target_groups(spec.name),
           # the groups each kind keeps the same count in (its own, or its grouped
           # readers' or producer's), where there are several
           "equal_in_groups": {c.kind: spec.group_of(c.kind) for c in spec.constraints
                               if spec.group_of(c.kind) > 1}}
    if method.name == "admm":
        out["rho_initial"] = spec.rho
        out["rho_final"] = [c.rho for c in method.state.constraints[spec.name]]
    if method.name in ("ssl", "slimming"):
        out["lasso_lambda"] = spec.lasso_lambda
    if method.name == "slimming":
        out["lasso_on"] = dict(method.cfg.scales).get(spec.name)  # None: kept whole
    out.update(stats)
    return out


class _Inputs(collections.namedtuple("_Inputs", "solver_param net_path net_param cfg shapes "
                                                 "names test_iter retrain_param files")):
    """What a prune run reads, checked (:func:`_read_inputs`)."""


def _read_inputs(solver_path, weights, config_path):
    """Read and check what ``prune`` takes, before anything is written: the
    solver (and the config's retrain solver), its net, the config against the
    net, the weights against the net. Raises RunError / ProtoError /
    FileNotFoundError naming what is wrong."""
    solver_param = protoio.read_solver(solver_path)
    protoio.check_solver(solver_param, solver_path)
    net_path = protoio.resolve_solver_net(solver_path, solver_param)
    net_param = protoio.read_net(net_path)
    cfg = load_config(config_path, net_param)
    _check_test_phase(net_param, net_path, solver_param)
    shapes = check_weights(weights, net_path, net_param)
    names = [spec.name for spec in cfg.layers]
    missing = [n for n in names if n not in shapes]
    if missing:
        raise RunError("layers %s have no weights in the TEST-phase net" % missing)
    test_iter = _test_iters(solver_param, cfg.test_iter)
    files, retrain_param = [solver_path, net_path, weights, config_path], solver_param
    if cfg.retrain_solver:
        retrain_param = protoio.read_solver(cfg.retrain_solver)
        protoio.check_solver(retrain_param, cfg.retrain_solver)
        files.append(cfg.retrain_solver)
    return _Inputs(solver_param, net_path, net_param, cfg, shapes, names, test_iter,
                   retrain_param, files)


def _announce(run):
    """Log what the config makes of the net (layers left out, groups, coupled
    streams, live inputs); returns the :class:`liveness.InputFeeds` of
    ``live_inputs_only``, or None."""
    cfg = run.cfg
    for name, why in cfg.left_out:
        _log("global_keep_ratio leaves %s unpruned: %s" % (name, why))
    for name, why in cfg.filters_only:
        _log("global_keep_ratio prunes %s by filter: %s" % (name, why))
    for spec in cfg.layers:
        if spec.filter_group > spec.group and "filter" in spec.kind:
            _log("%s keeps the same number of filters in each of %d groups, as the grouped "
                 "convolutions reading it need" % (spec.name, spec.filter_group))
        if spec.channel_group > 1 and "channel" in spec.kind:
            _log("%s keeps the same number of input channels in each of the %d groups of the "
                 "grouped convolution writing them" % (spec.name, spec.channel_group))
    for writers in cfg.coupled:
        _log("residual stream of %s: the same filters kept in all (couple_sums)"
             % ", ".join(writers))
    for writers, why in cfg.uncoupled:
        _log("residual stream of %s: not coupled, so compaction keeps most of its channels: "
             "%s" % (", ".join(writers), why))
    if not cfg.live_inputs_only:
        return None
    feeds = liveness.input_feeds(run.net_param, {n: run.shapes[n][0] for n in run.names},
                                 {spec.name: spec.group for spec in cfg.layers}, cfg.coupled)
    _log("live inputs only: %s" % feeds.describe())
    return feeds


def _changed_hint(entry):
    """What a refused resume says of one of ``PruneConfig.changed_defaults``."""
    if entry == GROUPED_FILTERS_ONLY:
        return (". If the run began when global_keep_ratio left out the grouped convolutions "
                "that FILTER_SHAPE does not fit (README, The pruning config), that is the "
                "difference: it now prunes their filters")
    return (". If the run began before the default of %s changed (README, The pruning "
            "config), that is the difference: the config leaves it unset" % entry)


@_holds_run_dir
def prune(solver_path, weights, config_path, out_dir, progress=True, restart=False):
    """StructADMM: ADMM training, hard prune, masked retraining.

    Writes into ``out_dir``: ``pruned.caffemodel`` with the net it goes with
    (``train_test.prototxt``), ``masks.npz``, ``admm.caffemodel`` (hard-pruned
    before retraining) and ``report.json``; checkpoints in ``checkpoints/``.

    Returns
    -------
    report : dict
    """
    run = _read_inputs(solver_path, weights, config_path)
    solver_param, net_path, net_param, cfg = run.solver_param, run.net_path, run.net_param, run.cfg
    shapes, names, test_iter = run.shapes, run.names, run.test_iter

    out_dir = os.path.abspath(out_dir)
    _check_run_outputs("prune", out_dir, dict(zip(
        ("solver", "net", "weights", "config", "retraining solver"), run.files)), cfg.method)
    _open_run_dir(out_dir, restart)
    ckpt = _Checkpoints(
        out_dir, fingerprint(*run.files, extra=" ".join(cfg.changed_defaults)),
        hint="".join(_changed_hint(f) for f in cfg.changed_defaults))
    meta = ckpt.load()
    if meta and meta["phase"] == "done":
        _log("%s: run already complete" % out_dir)
        with open(os.path.join(out_dir, "report.json")) as f:
            return json.load(f)

    hooked = add_hooks(net_param, {n: shapes[n] for n in _method_layers(cfg)})
    hooked_path = os.path.join(out_dir, "hooked_train_test.prototxt")
    protoio.write_text(hooked_path, hooked)
    history = meta["history"] if meta else {"steps": [], "loss": {cfg.method: [], "retrain": []},
                                            "accuracy": {}}
    t0 = time.time()
    feeds = _announce(run)
    with _Interrupt():
        if meta is None or meta["phase"] == cfg.method:
            method, masks = _first_phase(cfg, solver_param, hooked_path, out_dir, weights,
                                         test_iter, ckpt, meta, history, progress, feeds)
            meta = None
        else:
            method = make_method(cfg, dict(np.load(meta["method_state"])), feeds)
            masks = load_masks(os.path.join(out_dir, "masks.npz"))
        hard = os.path.join(out_dir, "%s.caffemodel" % cfg.method)
        solver = _retrain_phase(run.retrain_param, hooked_path, out_dir, hard, masks,
                                cfg.retrain_iters, cfg.snapshot_interval, test_iter, ckpt, meta,
                                history, progress, state=method, net_param=net_param,
                                bn_batches=cfg.bn_batches)
    weights_now = _weights(solver.net, names)
    report = {
        "method": cfg.method,
        "solver": os.path.abspath(solver_path), "net": os.path.abspath(net_path),
        "weights": os.path.abspath(weights), "config": cfg.path,
        "schedule": {"steps": cfg.admm_steps, "iters_per_step": cfg.iters_per_step,
                     "retrain_iters": cfg.retrain_iters, "rho_growth": cfg.rho_growth,
                     "rho_max": cfg.rho_max if math.isfinite(cfg.rho_max) else None,
                     "rescale_dual": cfg.rescale_dual,
                     "progressive_steps": cfg.progressive_steps if cfg.progressive else None,
                     "prune_stages": cfg.prune_stages,
                     "penalty_pruned_only": cfg.penalty_pruned_only,
                     "ssl_threshold": cfg.ssl_threshold,
                     "slimming_global": cfg.slimming_global,
                     "slimming_min_keep_ratio": cfg.slimming_min_keep,
                     "retrain_solver": cfg.retrain_solver,
                     "bn_recalibration_batches": cfg.bn_batches},
        "test_iter": test_iter, "accuracy": history["accuracy"],
        "layers": {spec.name: _layer_report(spec, method, weights_now[spec.name])
                   for spec in cfg.layers},
        "left_out": dict(cfg.left_out), "filters_only": dict(cfg.filters_only),
        "coupled": [list(writers) for writers in cfg.coupled],
        "uncoupled": [{"writers": list(writers), "why": why} for writers, why in cfg.uncoupled],
        "steps": history["steps"], "loss": history["loss"],
        "seconds_this_session": time.time() - t0, "code": code_digest(),
        "environment": caffetime.run_environment(),
    }
    if cfg.method == "admm":
        for name, entry in report["layers"].items():
            entry["residual_history"] = [step["residuals"][name] for step in history["steps"]]
    total = sum(e["params"] for e in report["layers"].values())
    kept = sum(e["nonzero"] for e in report["layers"].values())
    report["pruned_layers_total"] = {"params": total, "nonzero": kept,
                                     "compression": total / max(kept, 1)}
    report["pruned_layers_total"].update(_compacted_total(solver, net_param, names, total))
    _note_dead_inputs(report["pruned_layers_total"], cfg.live_inputs_only, _counts_inputs(cfg))
    all_params, _ = _net_arrays(solver.net, net_param)
    n_all = sum(b[0].size for b in all_params.values())
    n_zero = sum(int((b[0] == 0).sum()) for b in all_params.values())
    report["all_weights"] = {"params": n_all, "nonzero": n_all - n_zero,
                             "compression": n_all / max(n_all - n_zero, 1)}
    with protoio.atomic_write(os.path.join(out_dir, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    _mark_done(ckpt)
    return report


def check(solver_path, weights, config_path):
    """What ``prune`` would make of these inputs, in seconds, without training
    and without writing anything.

    Reads and checks the inputs as a run does (and logs what the config makes
    of the net), then prunes ``weights`` once to the config's targets, the
    hard prune a run ends its first phase with (:func:`methods.target_masks`),
    and plans the compaction of the result as ``caffe-admm compact`` would.
    The counts of kept filters, columns and channels in the pruned layers are
    the config's; which ones are kept, and so what compaction cuts beyond them
    (residual channels where the writers' choices differ, inputs of pruned
    producers), the run decides by its trained weights, so the compacted size
    is an estimate.

    Returns
    -------
    report : dict
        ``layers``: per Convolution/Deconvolution/InnerProduct layer, its
        ``kind`` (None where unpruned), ``target_keep``, the mask's
        :func:`masks.sparsity_stats`, and the compacted ``compact_shape``,
        ``compact_params``, ``compact_flops`` and ``flop_reduction`` (as
        ``caffe-admm compact`` reports them); ``total``; ``compaction_error``
        (None, or why compaction would refuse the net); ``warnings`` and
        ``notes`` of the plan; ``left_out``, ``filters_only``, ``coupled``,
        ``uncoupled``;
        ``caveats``: what the estimate does not know.
    """
    run = _read_inputs(solver_path, weights, config_path)
    cfg, net_param = run.cfg, run.net_param
    add_hooks(net_param, {n: run.shapes[n] for n in _method_layers(cfg)})  # its refusals too
    feeds = _announce(run)
    net = caffe.Net(run.net_path, caffe.TEST, weights=weights)
    masks = target_masks(cfg, {n: w.copy() for n, w in _weights(net, _method_layers(cfg)).items()},
                         feeds)
    caveats = ["which filters, columns or channels are kept is chosen here by the starting "
               "weights; the run chooses by its trained ones, so what compaction cuts beyond "
               "the config's counts can differ"]
    if cfg.method in ("ssl", "slimming") and cfg.ssl_threshold is not None:
        caveats.append("ssl_threshold: the run's hard prune keeps the groups over %g of each "
                       "layer's largest norm after the Lasso, however many; shown here are the "
                       "keep ratios" % cfg.ssl_threshold)
    if cfg.slimming_global:
        caveats.append("slimming_global: how many filters each layer keeps, not only which, "
                       "comes from the run's trained scales; here from the starting ones. "
                       + _global_note(cfg, masks))
    specs = {spec.name: spec for spec in cfg.layers}
    report = {"method": cfg.method, "solver": os.path.abspath(solver_path),
              "net": os.path.abspath(run.net_path), "weights": os.path.abspath(weights),
              "config": cfg.path, "left_out": dict(cfg.left_out),
              "filters_only": dict(cfg.filters_only),
              "coupled": [list(writers) for writers in cfg.coupled],
              "uncoupled": [{"writers": list(writers), "why": why}
                            for writers, why in cfg.uncoupled],
              "caveats": caveats, "compaction_error": None, "warnings": [], "notes": []}
    try:
        hard_prune(net, net_param, masks)
        costs, plan = compact.compacted_costs(net, net_param, compact.layer_inputs(net))
    except compact.CompactionError as exc:
        report["compaction_error"] = str(exc)
        costs = {name: {"weight_shape": list(shape[0]), "params": int(np.prod(shape[0]))}
                 for name, shape in run.shapes.items() if name in specs}
    else:
        report["warnings"], report["notes"] = plan["warnings"], plan["notes"]
    layers = {}
    for name, cost in costs.items():
        spec = specs.get(name)
        entry = {"kind": spec.kind if spec else None,
                 "target_keep": {c.kind: c.keep_ratio for c in spec.constraints} if spec else None}
        entry.update(sparsity_stats(masks[name], spec.group if spec else 1)
                     if name in masks else {})
        entry.update(cost)
        layers[name] = entry
    report["layers"] = layers
    pruned = [layers[n] for n in run.names]
    report["total"] = {"pruned_params": sum(e["params"] for e in pruned),
                       "pruned_nonzero": sum(e["nonzero"] for e in pruned)}
    if report["compaction_error"] is None:
        report["total"].update({k: sum(e[k] for e in layers.values())
                                for k in ("params", "compact_params", "flops", "compact_flops")})
        totals = {"params": report["total"]["pruned_params"],
                  "nonzero": report["total"]["pruned_nonzero"],
                  "compacted_nonzero": sum(e["compact_nonzero"] for e in pruned)}
        totals["compression"] = totals["params"] / max(totals["nonzero"], 1)
        totals["compacted_compression"] = totals["params"] / max(totals["compacted_nonzero"], 1)
        _note_dead_inputs(totals, cfg.live_inputs_only, _counts_inputs(cfg))
        report["total"]["pruned_compacted_nonzero"] = totals["compacted_nonzero"]
        report["total"]["dead_input_weights"] = totals["dead_input_weights"]
    return report


LABELS = {"admm": "ADMM step", "ssl": "SSL round", "slimming": "slimming round",
          "magnitude": "pruning round"}


def _method_layers(cfg):
    """The layers whose weights the method reads and hooks: the pruned ones,
    and for SLIMMING the Scale layers after them."""
    return [spec.name for spec in cfg.layers] + [scale for _, scale in cfg.scales]


def _set_hooks(hooks, method):
    for name, hook in hooks.items():
        terms = method.hook_terms(name)
        hook.penalty = terms.get("penalty", [])
        hook.lasso = [(lam, kind, tuple((hooks[n], l) for n, l in partners))
                      for lam, kind, partners in terms.get("lasso", [])]
        hook.set_mask(terms.get("mask"))


def _first_phase(cfg, solver_param, hooked_path, out_dir, weights, test_iter, ckpt, meta,
                 history, progress, feeds=None):
    """ADMM steps, SSL rounds or pruning rounds, then the hard prune."""
    sp_path = _write_solver(solver_param, hooked_path, out_dir, cfg.method, test_iter)
    solver = caffe.get_solver(sp_path)
    names = _method_layers(cfg)
    label = LABELS[cfg.method]
    if meta is None:
        solver.net.copy_from(weights)
        method = make_method(cfg, feeds=feeds)
        method.start(_weights(solver.net, names))
        t0 = time.monotonic()
        history["accuracy"]["baseline"] = _evaluate(solver, test_iter, progress,
                                                    "test: baseline")
        _record_seconds(history, "test", t0)
        _log("baseline: %s" % _fmt_scores(history["accuracy"]["baseline"]))
        scores = _recalibrated_baseline(hooked_path, out_dir, weights, cfg.bn_batches, test_iter,
                                        progress, history)
        if scores is not None:
            history["accuracy"]["baseline_recalibrated"] = scores
            _log("baseline with its BatchNorm statistics recomputed over %d training batches, "
                 "as the pruned nets are measured: %s" % (cfg.bn_batches, _fmt_scores(scores)))
    else:
        solver.restore(meta["solverstate"])
        method = make_method(cfg, dict(np.load(meta["method_state"])), feeds)
        _log("resuming at iteration %d (%s %d of %d)"
             % (solver.iter, label, method.round + 1, cfg.admm_steps))
        _skip_batches(solver.net, solver.iter * max(1, solver_param.iter_size))
    hooks = _hook_layers(solver.net)
    _set_hooks(hooks, method)
    ips = cfg.iters_per_step

    def checkpoint():
        ckpt.save(solver, cfg.method, history, method)

    while method.round < cfg.admm_steps:
        end = (method.round + 1) * ips
        samples = _run_iters(solver, end, "%s %d/%d" % (label, method.round + 1, cfg.admm_steps),
                             progress, checkpoint_every=cfg.snapshot_interval,
                             checkpoint=checkpoint,
                             after=(cfg.admm_steps - method.round - 1) * ips + cfg.retrain_iters,
                             # after this phase, after the hard prune, after retraining
                             after_s=_evaluations_s(history, 3))
        history["loss"][cfg.method].extend((it, out.get("loss")) for it, out in samples)
        log = method.end_round(_weights(solver.net, names))
        _set_hooks(hooks, method)
        history["steps"].append(dict(log, step=method.round, iter=solver.iter))
        _log("%s %d/%d: %s" % (label, method.round, cfg.admm_steps, method.describe(log)))
        checkpoint()
    # the moving averages lag the weights that ADMM/SSL/pruning changed: the
    # accuracy before the hard prune too is measured with recomputed ones
    net_param = protoio.read_net(hooked_path)
    _recalibrate(solver, net_param, cfg.bn_batches, progress=progress)
    history["accuracy"]["after_" + cfg.method] = _evaluate(solver, test_iter, progress,
                                                           "test: after " + cfg.method)
    masks = method.final_masks(_weights(solver.net, names))
    if cfg.slimming_global:
        _log("slimming_global: %s" % _global_note(cfg, masks))
    constants = _hard_prune_solver(solver, net_param, masks)
    _recalibrate(solver, net_param, cfg.bn_batches, constants, progress)
    history["accuracy"]["after_hard_prune"] = _evaluate(solver, test_iter, progress,
                                                        "test: after the hard prune")
    _log("after %s: %s; after hard prune: %s" % (
        cfg.method, _fmt_scores(history["accuracy"]["after_" + cfg.method]),
        _fmt_scores(history["accuracy"]["after_hard_prune"])))
    save_weights(os.path.join(out_dir, "%s.caffemodel" % cfg.method), solver.net,
                 _strip_hooks(net_param))
    save_masks(os.path.join(out_dir, "masks.npz"), masks)
    return method, masks


def _global_note(cfg, masks):
    """Per layer ranked together (SLIMMING's ``slimming_global``), the
    filters its masks keep against what its keep ratio alone would keep."""
    return "filters kept, the scales of all the layers ranked together (keep_ratio alone): " \
        + ", ".join("%s %d/%d (%d)" % (
            name, filter_mask(masks[name]).sum(), len(masks[name]),
            projections.keep_count(len(masks[name]), cfg.layer(name).constraints[0].keep_ratio))
            for name, _ in cfg.scales)


def _compacted_total(solver, net_param, names, total):
    """The pruned layers' weights that survive compaction, and their compression.

    Masks count the weights on inputs that a pruned producer no longer feeds;
    compaction cuts those out, so the compacted net can be smaller than the
    masks say (see config ``live_inputs_only``).
    """
    try:
        kept = sum(compact.surviving_weights(_test_net(solver), net_param, names).values())
    except compact.CompactionError as exc:
        _log("compacted size not measured: %s" % exc)
        return {"compacted_nonzero": None, "compacted_compression": None}
    return {"compacted_nonzero": kept, "compacted_compression": total / max(kept, 1)}


def _counts_inputs(cfg):
    """Whether some layer's kind spends its budget on inputs (channel, shape
    or single weights), not on filters alone."""
    return any(c.kind != "filter" for spec in cfg.layers for c in spec.constraints)


def _note_dead_inputs(totals, live_inputs_only, input_kinds=True, threshold=0.01):
    """Record the kept weights that compaction cuts (``dead_input_weights``: on
    inputs whose producer filters are pruned, or in filters no consumer reads)
    and, where they are more than ``threshold`` of the kept ones, the run did
    not use ``live_inputs_only`` and some layer's kind counts its budget in
    inputs (``input_kinds``: channel, shape or single weights), say so: the
    keep budget went partly to weights that carry no signal, and the
    compacted net is smaller than asked. (A filter's budget is its filters:
    that its readers keep weights on its pruned channels costs none.)"""
    if totals.get("compacted_nonzero") is None:
        totals["dead_input_weights"] = None
        return
    dead = totals["nonzero"] - totals["compacted_nonzero"]
    totals["dead_input_weights"] = dead
    if input_kinds and not live_inputs_only and dead > threshold * totals["nonzero"]:
        _log("note: compaction cuts %d of the %d kept weights (%.1f%%), the ones on channels "
             "whose producer filters are pruned and in filters that no kept weight reads: the "
             "pruned layers keep 1 in %.1f of their weights, not 1 in %.1f as the masks say. "
             "With `live_inputs_only: true` in the config the budget goes to inputs that "
             "carry signal."
             % (dead, totals["nonzero"], 100.0 * dead / totals["nonzero"],
                totals["compacted_compression"], totals["compression"]))


def hard_prune(net, net_param, masks):
    """Zero what ``masks`` prune in a live TEST-phase ``net`` as a run's hard
    prune does: the weights, the biases of fully pruned filters, and the
    constants on their channels (:func:`compact.dead_channel_constants`).

    Returns
    -------
    constants : list of (layer, blob index, channels), those zeroed

    Raises
    ------
    compact.CompactionError
        where compaction's graph does not take the net; the weights and
        biases are zeroed before, the constants not.
    """
    _apply_masks(net, masks)
    constants = compact.dead_channel_constants(net, net_param, masks)
    _zero_constants(net, constants)
    return constants


def _apply_masks(net, masks):
    """Zero the pruned weights and the biases of fully pruned filters."""
    apply_masks(_weights(net, list(masks)), masks)
    for name, mask in masks.items():
        if len(net.params[name]) > 1:
            net.params[name][1].data[~filter_mask(mask)] = 0


def _hard_prune_solver(solver, net_param, masks):
    """:func:`hard_prune` of the solver's nets (its TEST net shares the
    train net's blobs); where compaction's graph does not take the net, the
    constants are left as they are, and the log says so. Returns the
    constants zeroed: (layer, blob, channels)."""
    try:
        return hard_prune(_test_net(solver), net_param, masks)
    except compact.CompactionError as exc:
        _log("constants of pruned channels left as they are (%s)" % exc)
        return []


def _zero_constants(net, constants, diff=False):
    """Zero the entries ``constants`` names in ``net``'s blobs (or their diffs)."""
    for name, index, channels in constants:
        blob = net.params[name][index]
        (blob.diff if diff else blob.data)[channels] = 0


def _strip_hooks(net_param):
    net = caffe_pb2.NetParameter()
    net.CopyFrom(net_param)
    keep = [l for l in net.layer if not l.name.startswith(HOOK_PREFIX)]
    del net.layer[:]
    net.layer.extend(keep)
    return net


def recalibrate_batchnorm(net, names, batches, progress=False):
    """Recompute the running statistics of the BatchNorm layers ``names`` of
    a TRAIN-phase ``net`` at its current weights.

    Each of ``batches`` forward passes (no backward) normalises by the
    batch's own statistics and, with the layers' blobs zeroed before it,
    leaves them in the blobs as Caffe accumulates them (the variance times
    m / (m - 1)); the blobs end as their mean, with the scale factor 1.
    Layers that share these blobs (the TEST net's) see the new statistics.
    With ``progress``, a bar where it takes over :data:`QUIET_S`.
    """
    sums = {n: [np.zeros(net.params[n][i].data.shape) for i in (0, 1)] for n in names}
    bar = Progress(batches, "BatchNorm statistics", enabled=progress, quiet_s=QUIET_S)
    bar.update(0)
    for b in range(batches):
        for n in names:
            for blob in net.params[n]:
                blob.data[...] = 0
        net.forward()
        for n in names:
            for i in (0, 1):
                sums[n][i] += net.params[n][i].data / net.params[n][2].data[0]
        bar.update(b + 1)
    bar.close()
    for n in names:
        for i in (0, 1):
            net.params[n][i].data[...] = sums[n][i] / batches
        net.params[n][2].data[...] = 1


def batchnorms(net_param):
    """The BatchNorm layers of the TRAIN net that update their statistics
    (not ``use_global_stats: true``): the ones a run recalibrates."""
    train = protoio.net_state(net_param, caffe_pb2.TRAIN)
    return [l.name for l in net_param.layer if l.type == "BatchNorm"
            and protoio.layer_included(l, train) and not (
                l.batch_norm_param.HasField("use_global_stats")
                and l.batch_norm_param.use_global_stats)]


def _recalibrate(solver, net_param, batches, constants=(), progress=False):
    """:func:`recalibrate_batchnorm` on the solver's net, logged; the
    constants held at zero (``constants``) zeroed again."""
    names = batchnorms(net_param)
    if not names or not batches:
        return
    _log("BatchNorm statistics recomputed over %d training batches (%d layer%s)"
         % (batches, len(names), "s" if len(names) > 1 else ""))
    recalibrate_batchnorm(solver.net, names, batches, progress)
    _zero_constants(solver.net, constants)


def _recalibrated_baseline(net_path, out_dir, weights, batches, test_iter, progress=False,
                           history=None):
    """The TEST scores of ``weights`` with the BatchNorm statistics recomputed
    over ``batches`` training batches (:func:`recalibrate_batchnorm`), as a
    run measures its pruned nets; None where the net has no BatchNorm that
    Caffe updates, or ``batches`` is 0. On nets of their own (``net_path``,
    its hooks left out): the run's solver, its data and the weights it
    starts from stay as they are. The recalibration's seconds go into
    ``history`` (:func:`_record_seconds`), if given."""
    net_param = _strip_hooks(protoio.read_net(net_path))
    names = batchnorms(net_param)
    if not names or not batches:
        return None
    path = os.path.join(out_dir, ".recalibration.prototxt")
    protoio.write_text(path, net_param)
    try:
        train = caffe.Net(path, caffe.TRAIN, weights=weights)
        test = caffe.Net(path, caffe.TEST, weights=weights)
    finally:
        os.unlink(path)
    t0 = time.monotonic()
    recalibrate_test_net(test, train, names, batches, progress)
    if history is not None:
        _record_seconds(history, "recalibration", t0)
    return evaluate_net(test, test_iter, progress, "test: BatchNorm statistics recomputed")


def recalibrate_test_net(test, train, names, batches, progress=False):
    """Give a TEST net the BatchNorm statistics of its own weights: every
    blob of ``test`` copied into the TRAIN net ``train`` of the same
    prototxt, the statistics of the BatchNorm layers ``names`` recomputed
    there over ``batches`` training batches (:func:`recalibrate_batchnorm`),
    and copied back."""
    for name, blobs in test.params.items():
        if name in train.params:
            for theirs, mine in zip(train.params[name], blobs):
                theirs.data[...] = mine.data
    recalibrate_batchnorm(train, names, batches, progress)
    for name in names:
        if name in test.params:
            for mine, theirs in zip(test.params[name], train.params[name]):
                mine.data[...] = theirs.data


def _retrain_phase(solver_param, hooked_path, out_dir, weights, masks, iters, snapshot_interval,
                   test_iter, ckpt, meta, history, progress, state=None, net_param=None,
                   bn_batches=0):
    sp_path = _write_solver(solver_param, hooked_path, out_dir, "retrain", test_iter)
    solver = caffe.get_solver(sp_path)
    if meta is None:
        solver.net.copy_from(weights)
    else:
        solver.restore(meta["solverstate"])
        _log("resuming masked retraining at iteration %d of %d" % (solver.iter, iters))
        _skip_batches(solver.net, solver.iter * max(1, solver_param.iter_size))
    hooks = _hook_layers(solver.net)
    for name, hook in hooks.items():
        hook.penalty = []
        hook.lasso = []
        hook.set_mask(masks.get(name))  # SLIMMING's Scale layers: none
    # BatchNorm means, Scale/Bias offsets on pruned channels: zero, and held
    # there (their gradients zeroed before every update), so the channels
    # stay exactly zero and compaction cuts them
    hooked = protoio.read_net(hooked_path)
    constants = _hard_prune_solver(solver, hooked, masks)
    if constants:
        solver.add_callback(lambda: None,
                            lambda: _zero_constants(solver.net, constants, diff=True))
        _log("held at zero in retraining: %s" % ", ".join(
            "%s[%d] of %d pruned channels" % (n, i, len(c)) for n, i, c in constants))

    def checkpoint():
        ckpt.save(solver, "retrain", history, state)

    if iters:
        samples = _run_iters(solver, iters, "retrain", progress,
                             checkpoint_every=snapshot_interval, checkpoint=checkpoint,
                             after_s=_evaluations_s(history, 1))
        history["loss"]["retrain"].extend((it, out.get("loss")) for it, out in samples)
    _apply_masks(solver.net, masks)
    _zero_constants(solver.net, constants)
    _recalibrate(solver, hooked, bn_batches, constants, progress)
    history["accuracy"]["after_retrain"] = _evaluate(solver, test_iter, progress,
                                                     "test: after retraining")
    _log("after masked retraining: %s" % _fmt_scores(history["accuracy"]["after_retrain"]))
    net_param = net_param or _strip_hooks(hooked)
    save_weights(os.path.join(out_dir, "pruned.caffemodel"), solver.net, net_param)
    protoio.write_text(os.path.join(out_dir, "train_test.prototxt"), net_param)
    return solver


@_holds_run_dir
def retrain(solver_path, weights, out_dir, masks_path=None, iters=None, progress=True,
            restart=False, bn_batches=100):
    """Masked retraining alone: pruned weights (zeros, or ``masks_path``) stay 0.

    Without ``masks_path`` every Convolution and InnerProduct weight that is
    exactly zero in ``weights`` is held at zero. After it, the BatchNorm
    statistics are recomputed over ``bn_batches`` training batches (config
    ``bn_recalibration_batches``; 0: not).
    """
    if bn_batches < 0:
        raise RunError("the BatchNorm recalibration needs 0 or more batches, got %d"
                       % bn_batches)
    if iters is not None and iters < 0:
        raise RunError("%d retraining iterations: give 0 or more" % iters)
    solver_param = protoio.read_solver(solver_path)
    protoio.check_solver(solver_param, solver_path)
    net_path = protoio.resolve_solver_net(solver_path, solver_param)
    net_param = protoio.read_net(net_path)
    _check_test_phase(net_param, net_path, solver_param)
    shapes = check_weights(weights, net_path, net_param)
    test_iter = _test_iters(solver_param)
    iters = int(iters if iters is not None else solver_param.max_iter)
    if masks_path:
        masks = load_masks(masks_path)
        unknown = [n for n in masks if n not in shapes]
        if unknown:
            raise RunError("%s: masks for layers not in the net: %s" % (masks_path, unknown))
    else:
        net = caffe.Net(net_path, caffe.TEST, weights=weights)
        prunable = [l.name for l in net_param.layer if l.type in PRUNABLE_TYPES]
        masks = masks_from_zeros({n: net.params[n][0].data for n in prunable if n in net.params})
    out_dir = os.path.abspath(out_dir)
    _check_run_outputs("retrain", out_dir, {"solver": solver_path, "net": net_path,
                                            "weights": weights, "masks": masks_path})
    _open_run_dir(out_dir, restart)
    ckpt = _Checkpoints(out_dir, fingerprint(solver_path, net_path, weights,
                                              *([masks_path] if masks_path else []),
                                              extra="retrain:%d" % iters))
    meta = ckpt.load()
    hooked = add_hooks(net_param, {n: shapes[n] for n in masks})
    hooked_path = os.path.join(out_dir, "retrain_train_test.prototxt")
    protoio.write_text(hooked_path, hooked)
    history = meta["history"] if meta else {"loss": {"retrain": []}, "accuracy": {}}
    if meta is None:
        t0 = time.monotonic()
        history["accuracy"]["before"] = evaluate_net(
            caffe.Net(net_path, caffe.TEST, weights=weights), test_iter, progress, "test: before")
        _record_seconds(history, "test", t0)
    with _Interrupt():
        solver = _retrain_phase(solver_param, hooked_path, out_dir, weights, masks, iters,
                                max(1, solver_param.snapshot or 1000), test_iter, ckpt, meta,
                                history, progress, net_param=net_param, bn_batches=bn_batches)
    save_masks(os.path.join(out_dir, "masks.npz"), masks)
    groups = compact.conv_groups(solver.net)
    layers = {n: sparsity_stats(solver.net.params[n][0].data, groups.get(n, 1)) for n in masks}
    report = {"accuracy": history["accuracy"], "layers": layers, "loss": history["loss"],
              "iterations": iters, "bn_recalibration_batches": bn_batches,
              "environment": caffetime.run_environment()}
    with protoio.atomic_write(os.path.join(out_dir, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    return report


def _fmt_scores(scores):
    return ", ".join("%s %.4f" % kv for kv in sorted(scores.items()))

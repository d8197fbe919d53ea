"""Reading and writing Caffe's protobuf files: prototxt, solver, caffemodel.

Everything goes through ``caffe_pb2`` messages and ``text_format``; nothing
edits prototxt as strings. Writes are atomic (temporary file, then rename),
so an interrupted run never leaves a truncated file behind.
"""

import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile

from google.protobuf import text_format

__all__ = ["ProtoError", "parse_text", "unknown_fields", "read_without_unknown", "clean",
           "FORK_LAYERS", "stock_layers",
           "read_net", "read_solver", "read_caffemodel",
           "DATA_TYPES", "SOLVER_TYPES", "LR_POLICIES", "ELEMENTWISE", "maps_zero_to_zero", "field_line",
           "check_solver", "write_text", "write_binary", "atomic_write", "resolve_solver_net",
           "layer_line", "net_state", "layer_included", "check_bottoms", "check_sources",
           "check_layer_types", "check_net", "read_checked_net", "blob_shape",
           "blob_fits", "caffemodel_shapes", "check_outputs", "make_caffemodel"]


class ProtoError(ValueError):
    """A prototxt that does not parse or does not make sense; names file and line."""


@contextlib.contextmanager
def atomic_write(path, mode="wb"):
    """Open a temporary file beside ``path``; rename it over ``path`` on success.

    The file gets the permissions ``open`` would give it (0666 less the
    umask), not the temporary file's 0600.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", dir=directory)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def check_outputs(out_dir, names, inputs):
    """Refuse (ProtoError) where writing ``names`` into ``out_dir`` would
    replace one of the ``inputs`` (``{what: path}``, None where not given):
    a caffemodel compacted again into its own folder, a run's weights
    retrained into its own run directory."""
    for name in names:
        out = os.path.join(out_dir, name)
        for what, path in inputs.items():
            if path and os.path.isfile(out) and os.path.isfile(path) \
                    and os.path.samefile(out, path):
                raise ProtoError("%s would be written over %s, the input %s: give another "
                                 "output directory" % (out, path, what))


def _umask():
    """The process's umask, read from /proc (Linux 4.7 on); elsewhere set and
    set back, os.umask's only way to read it."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o22)
    os.umask(mask)
    return mask


def _read_text(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError as exc:
        raise ProtoError("%s: cannot read: %s" % (path, exc.strerror)) from exc


def parse_text(path, message):
    """Parse the protobuf text file ``path`` into ``message`` (returned).

    Raises
    ------
    ProtoError
        naming the file, line and column of the first error.
    """
    text = _read_text(path)
    try:
        text_format.Merge(text, message)
    except text_format.ParseError as exc:
        # ParseError's text starts with "line:column : "; prefix the file name.
        hint = ""
        if "has no field named" in str(exc) and message.DESCRIPTOR.full_name.startswith("caffe."):
            hint = (" (not in BVLC Caffe's caffe.proto, which this build reads: a field of a "
                    "Caffe fork, such as the SSL fork's group Lasso settings, has to go; "
                    "`caffe-admm clean --%s %s --out NEW` writes a copy without them; "
                    "caffe-admm runs SSL itself: method: SSL in the pruning config)"
                    % ("solver" if message.DESCRIPTOR.name == "SolverParameter" else "model",
                       path))
        raise ProtoError("%s:%s%s" % (path, exc, hint)) from exc
    return message


def unknown_fields(text, descriptor):
    """The fields of protobuf ``text`` that message type ``descriptor`` and
    the messages in it do not have (a Caffe fork's, say).

    Returns
    -------
    list of (line, message type, field name); lines count from 1
    """
    tok = text_format.Tokenizer(text.splitlines())
    stack, out = [descriptor], []
    while not tok.AtEnd():
        if tok.TryConsume("}") or tok.TryConsume(">"):
            stack.pop()
            continue
        line = tok.ParseError("").GetLine()  # the current token's, from 1 (public API)
        name = tok.ConsumeIdentifierOrNumber()
        field = stack[-1].fields_by_name.get(name)
        if field is None:
            out.append((line, stack[-1].full_name, name))
            _skip_value(tok)
        elif field.message_type is not None:
            tok.TryConsume(":")
            if not (tok.TryConsume("{") or tok.TryConsume("<")):
                raise text_format.ParseError("%d : %s: a list of messages ([...]) is not read "
                                             "here; write one %s { ... } per entry"
                                             % (line, name, name))
            stack.append(field.message_type)
        else:
            _skip_value(tok)
    return out


def _skip_value(tok):
    """Step over one field's value: a scalar (adjacent strings joined), a
    [list], or a { message }."""
    tok.TryConsume(":")
    if tok.token in ("{", "<"):
        depth = 0
        while True:
            depth += tok.token in ("{", "<")
            depth -= tok.token in ("}", ">")
            tok.NextToken()
            if not depth:
                return
    if tok.TryConsume("["):
        while not tok.TryConsume("]"):
            tok.NextToken()
        return
    tok.NextToken()
    while tok.token[:1] in ("'", '"'):
        tok.NextToken()


def read_without_unknown(path, message):
    """Parse ``path`` into ``message`` leaving out the fields its type lacks.

    Returns
    -------
    (message, list of (line, message type, field name)) : what was left out
    """
    text = _read_text(path)
    try:
        dropped = unknown_fields(text, message.DESCRIPTOR)
        text_format.Merge(text, message, allow_unknown_field=True)
    except text_format.ParseError as exc:
        raise ProtoError("%s:%s" % (path, exc)) from exc
    return message, dropped


def read_net(path):
    """Read a net prototxt as ``caffe_pb2.NetParameter``, upgraded as Caffe reads it.

    A net in an old format (V0/V1 ``layers``, or ``input``/``input_dim``
    fields) comes back as Caffe's ``upgrade_net_proto_text`` writes it (with
    ``layer`` and an Input layer), the form ``caffe.Net`` builds from it.
    """
    from caffe_admm.backend import caffe_pb2
    net = parse_text(path, caffe_pb2.NetParameter())
    if len(net.layers) or len(net.input):
        net = _caffe_upgrade(path)
    return net


def _caffe_upgrade(path):
    from caffe_admm.backend import caffe_pb2
    from caffe_admm.caffetime import build_tool
    tool = build_tool("upgrade_net_proto_text") or shutil.which("upgrade_net_proto_text")
    if not tool:
        raise ProtoError("%s is in an old format (V1 `layers`, or `input` fields), which Caffe "
                         "upgrades when it reads it; Caffe's upgrade_net_proto_text, which "
                         "writes the upgrade, is neither in this build nor on PATH: upgrade "
                         "the file with it and pass the result" % path)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "upgraded.prototxt")
        proc = subprocess.run([tool, path, out], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, universal_newlines=True)
        if proc.returncode != 0 or not os.path.isfile(out):
            raise ProtoError("%s: Caffe's upgrade_net_proto_text failed (exit %d):\n%s"
                             % (path, proc.returncode, "\n".join(proc.stdout.splitlines()[-10:])))
        return parse_text(out, caffe_pb2.NetParameter())


def clean(path, out, solver=False):
    """Write ``path`` as BVLC Caffe reads it: the fields its caffe.proto lacks
    (a fork's) left out, a net in an old format upgraded, a fork's layers
    that stock layers compute (:data:`FORK_LAYERS`) rewritten into those.

    Parameters
    ----------
    path, out : str
        A net prototxt (a solver prototxt with ``solver``), and where to write.

    Returns
    -------
    dropped : list of (line, message type, field name)
        The fields left out.
    rewritten : list of (line, layer name, type, str)
        The layers rewritten, and into what.
    """
    from caffe_admm.backend import caffe_pb2
    message, dropped = read_without_unknown(
        path, caffe_pb2.SolverParameter() if solver else caffe_pb2.NetParameter())
    rewritten = []
    if not solver:  # read back as Caffe reads it: upgraded if old
        with tempfile.TemporaryDirectory() as tmp:
            stripped = os.path.join(tmp, os.path.basename(path))
            write_text(stripped, message)
            message = read_net(stripped)
        rewritten = [(layer_line(path, r[0]),) + r for r in stock_layers(message, path)]
    write_text(out, message)
    return dropped, rewritten


# Layers of Caffe forks that stock layers compute: type -> what they become
_DEPTHWISE = "Convolution with group (MobileNet ports; group = num_output where it is unset)"
FORK_LAYERS = {"Axpy": "Flatten + Scale + Eltwise (SENet's a * X + Y)",
               "ReLU6": "Clip from 0 to 6 (MobileNetV2 ports)",
               "DepthwiseConvolution": _DEPTHWISE, "ConvolutionDepthwise": _DEPTHWISE}


def stock_layers(net_param, path=None):
    """Rewrite, in place, the layers of ``net_param`` of a type in
    :data:`FORK_LAYERS` into the stock layers that compute the same.

    SENet's ``Axpy`` (bottoms a, shape (N, C, 1, 1), X and Y, (N, C, H, W);
    top a * X + Y) becomes ``NAME/factor`` (Flatten of a to (N, C)),
    ``NAME/scale`` (Scale of X by it from axis 0) and ``NAME`` (Eltwise SUM
    with Y), with the Axpy's top and rules. ``ReLU6`` becomes a Clip from 0
    to 6, a depthwise convolution layer a Convolution (one filter per input
    channel, ``group = num_output``, where its ``group`` is unset), each
    with its name, bottoms, tops, rules and parameters. The weights keep
    their names and shapes, so the caffemodel stays as it is. ``path``,
    the file it was read from, is named in errors.

    Returns
    -------
    list of (layer name, type, str) : what each rewritten layer became
    """
    names = {l.name for l in net_param.layer} | {t for l in net_param.layer for t in l.top}

    def fresh(name):
        while name in names:
            name += "_"
        names.add(name)
        return name

    rewritten, layers = [], []
    for layer in net_param.layer:
        if layer.type not in FORK_LAYERS:
            layers.append(layer)
            continue
        where = _where(path, layer)
        new = (_axpy(layer, fresh, where) if layer.type == "Axpy" else
               _relu6(layer, where) if layer.type == "ReLU6" else _depthwise(layer))
        layers += new
        rewritten.append((layer.name, layer.type, ", ".join("%r (%s)" % (n.name, n.type)
                                                            for n in new)))
    del net_param.layer[:]
    net_param.layer.extend(layers)
    return rewritten


def _axpy(layer, fresh, where):
    from caffe_admm.backend import caffe_pb2
    if len(layer.bottom) != 3 or len(layer.top) != 1:
        raise ProtoError("%s (Axpy) has %d bottoms and %d tops; SENet's has 3 (a, X, Y) and "
                         "1" % (where, len(layer.bottom), len(layer.top)))
    a, x, y = layer.bottom
    factor, scaled = fresh(layer.name + "/factor"), fresh(layer.name + "/scaled")
    new = [caffe_pb2.LayerParameter(name=factor, type="Flatten", bottom=[a], top=[factor]),
           caffe_pb2.LayerParameter(name=fresh(layer.name + "/scale"), type="Scale",
                                    bottom=[x, factor], top=[scaled]),
           caffe_pb2.LayerParameter(name=layer.name, type="Eltwise", bottom=[scaled, y],
                                    top=list(layer.top))]
    new[1].scale_param.axis = 0
    for n in new:
        n.include.extend(layer.include)
        n.exclude.extend(layer.exclude)
    return new


def _relu6(layer, where):
    from caffe_admm.backend import caffe_pb2
    if layer.relu_param.negative_slope:
        raise ProtoError("%s (ReLU6) has negative_slope %g; a Clip from 0 to 6 computes ReLU6 "
                         "only without it" % (where, layer.relu_param.negative_slope))
    new = caffe_pb2.LayerParameter()
    new.CopyFrom(layer)
    new.type = "Clip"
    new.ClearField("relu_param")
    new.clip_param.min, new.clip_param.max = 0, 6
    return [new]


def _depthwise(layer):
    from caffe_admm.backend import caffe_pb2
    new = caffe_pb2.LayerParameter()
    new.CopyFrom(layer)
    new.type = "Convolution"
    if not new.convolution_param.HasField("group"):
        new.convolution_param.group = new.convolution_param.num_output
    return [new]


def read_solver(path):
    """Read a solver prototxt as ``caffe_pb2.SolverParameter``."""
    from caffe_admm.backend import caffe_pb2
    return parse_text(path, caffe_pb2.SolverParameter())


def read_caffemodel(path):
    """Read a binary ``.caffemodel`` as ``caffe_pb2.NetParameter``."""
    from caffe_admm.backend import caffe_pb2
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ProtoError("%s: cannot read: %s" % (path, exc.strerror)) from exc
    net = caffe_pb2.NetParameter()
    try:
        net.ParseFromString(data)
    except Exception as exc:  # protobuf raises DecodeError or RuntimeError
        raise ProtoError("%s: not a binary caffemodel (%s)" % (path, exc)) from exc
    return net


def write_text(path, message):
    """Write ``message`` as protobuf text, atomically."""
    with atomic_write(path, "w") as f:
        f.write(text_format.MessageToString(message))


def write_binary(path, message):
    """Write ``message`` in protobuf binary form (e.g. a caffemodel), atomically."""
    with atomic_write(path, "wb") as f:
        f.write(message.SerializeToString())


# Caffe's data layers: no bottoms, a new blob of their own
DATA_TYPES = ("Input", "Data", "ImageData", "HDF5Data", "MemoryData", "DummyData", "WindowData")
SOLVER_TYPES = ("SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam")
LR_POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")
# Layers that work on each value alone but may map 0 to a non-zero constant
# (0 to 0 where their parameters say so: maps_zero_to_zero)
ELEMENTWISE = frozenset({"Sigmoid", "Power", "Exp", "Log", "BNLL", "Threshold", "Clip"})


def maps_zero_to_zero(layer):
    """Whether an element-wise layer whose parameters decide it maps 0 to 0:
    a Clip around 0 (ReLU6 is Clip from 0 to 6), a Threshold at 0 or above,
    a Power (shift + scale * x)^power with no shift and a positive power, a
    Log of shift + scale * x with shift 1. False for any other layer."""
    if layer.type == "Clip":
        return layer.clip_param.min <= 0 <= layer.clip_param.max
    if layer.type == "Threshold":
        return layer.threshold_param.threshold >= 0
    if layer.type == "Power":
        return layer.power_param.shift == 0 and layer.power_param.power > 0
    if layer.type == "Log":
        return layer.log_param.shift == 1
    return False


def _first_line(path, test):
    """Best-effort 1-based number of the first line of a text file whose text
    before any ``#`` comment passes ``test``; None if none does or it is unreadable."""
    try:
        with open(path) as f:
            for number, line in enumerate(f, 1):
                if test(line.split("#", 1)[0]):
                    return number
    except OSError:
        pass
    return None


def field_line(path, field):
    """Best-effort 1-based line number of the first ``field:`` in a text file."""
    return _first_line(path, lambda text: text.strip().startswith(field + ":"))


def check_solver(solver, path):
    """Raise ProtoError where Caffe would abort on a solver's settings.

    Caffe checks these only when it builds the solver or at its first
    update (an unknown ``type`` or ``lr_policy``, an unknown
    ``regularization_type`` with a ``weight_decay``, a step policy without
    ``stepsize``, a negative ``gamma``, ``average_loss`` < 1).
    """
    def fail(field, message):
        line = field_line(path, field)
        raise ProtoError("%s%s: %s" % (path, ":%d" % line if line else "", message))

    if solver.HasField("solver_type") and solver.HasField("type"):
        fail("solver_type", "both solver_type (old) and type are set; keep type")
    if not solver.HasField("solver_type") and solver.type not in SOLVER_TYPES:
        fail("type", "type %r is not a Caffe solver (%s)" % (solver.type, ", ".join(SOLVER_TYPES)))
    policy = solver.lr_policy
    if policy not in LR_POLICIES:
        fail("lr_policy", "lr_policy %r is not one Caffe knows (%s)%s"
             % (policy, ", ".join(LR_POLICIES),
                "; Caffe has no default: set it (\"fixed\" for a constant rate)"
                if not policy else ""))
    if policy in ("step", "sigmoid") and solver.stepsize <= 0:
        fail("lr_policy", "lr_policy %r needs stepsize > 0 (it is %d)" % (policy, solver.stepsize))
    if policy in ("step", "exp", "inv", "multistep", "sigmoid") and solver.gamma < 0:
        fail("gamma", "lr_policy %r needs gamma >= 0 (it is %g)" % (policy, solver.gamma))
    if solver.regularization_type not in ("L1", "L2") and solver.weight_decay:
        fail("regularization_type", "regularization_type %r: Caffe takes L1 or L2"
             % solver.regularization_type)
    if solver.average_loss < 1:
        fail("average_loss", "average_loss must be >= 1 (it is %d)" % solver.average_loss)


def resolve_solver_net(solver_path, solver):
    """Return the path of the train/test net a solver names.

    Like Caffe, relative paths are taken from the current directory; a path
    relative to the solver file's directory is accepted too.

    Raises
    ------
    ProtoError
        if the solver names no single net file, or the file is missing.
    """
    if solver.HasField("net_param") or solver.HasField("train_net_param"):
        raise ProtoError("%s: inline net_param is not supported; put the net in a "
                         "file and name it with `net:`" % solver_path)
    if not solver.HasField("net"):
        raise ProtoError("%s: the solver must name its net with `net: \"file.prototxt\"` "
                         "(train_net/test_net pairs are not supported)" % solver_path)
    candidates = [solver.net, os.path.join(os.path.dirname(solver_path), solver.net)]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
    raise ProtoError("%s: net file %r not found (relative paths are taken from the "
                     "current directory, %s, as Caffe does)" % (solver_path, solver.net, os.getcwd()))


def layer_line(path, layer_name):
    """Best-effort 1-based line number of ``name: "layer_name"`` in a text file."""
    return _first_line(path, lambda text: "name" in text and (
        '"%s"' % layer_name in text or "'%s'" % layer_name in text))


def blob_shape(blob):
    """Shape of a ``caffe_pb2.BlobProto`` (new ``shape`` or legacy 4-D fields)."""
    if blob.HasField("shape"):
        return tuple(int(d) for d in blob.shape.dim)
    return tuple(int(d) for d in (blob.num, blob.channels, blob.height, blob.width))


_LEGACY_DIMS = ("num", "channels", "height", "width")


def blob_fits(shape, blob):
    """Whether Caffe copies the ``caffe_pb2.BlobProto`` ``blob`` into a blob
    of ``shape`` (``Net::CopyTrainedLayersFrom``), as ``Blob::ShapeEquals``
    decides and ``Blob::FromProto`` checks: a legacy 4-D blob fits a shape of
    at most 4 axes that, padded with 1s on the left, equals it (an
    InnerProduct's 1 x 1 x M x N); a ``shape`` fits only itself. Its values
    must be as many as the shape's, and its diffs too where it holds any."""
    shape = tuple(int(d) for d in shape)
    if any(blob.HasField(f) for f in _LEGACY_DIMS):
        fits = len(shape) <= 4 and (1,) * (4 - len(shape)) + shape == blob_shape(blob)
    else:
        fits = shape == blob_shape(blob)
    count = 1
    for d in shape:
        count *= d
    diffs = len(blob.double_diff) or len(blob.diff)
    return fits and (len(blob.double_data) or len(blob.data)) == count and diffs in (0, count)


def caffemodel_shapes(model):
    """``{layer name: [blob shapes]}`` of a caffemodel ``NetParameter``."""
    layers = list(model.layer) or list(model.layers)  # V2, else V1 layers
    return {layer.name: [blob_shape(b) for b in layer.blobs] for layer in layers if layer.blobs}


def make_caffemodel(name, params, types):
    """Build a caffemodel ``NetParameter`` from arrays.

    Parameters
    ----------
    name : str
        Net name.
    params : dict[str, list of ndarray]
        Per layer name, its blobs in Caffe's order (weight, bias, ...).
    types : dict[str, str]
        Per layer name, its Caffe type.
    """
    from caffe_admm.backend import caffe_pb2
    import numpy as np

    net = caffe_pb2.NetParameter(name=name)
    for layer_name, blobs in params.items():
        layer = net.layer.add(name=layer_name, type=types[layer_name])
        for array in blobs:
            array = np.ascontiguousarray(array, dtype=np.float32)
            blob = layer.blobs.add()
            blob.shape.dim.extend(array.shape)
            blob.data.extend(array.ravel())
    return net


def _meets_rule(rule, phase, level, stages):
    """Caffe's ``Net::StateMeetsRule`` for one NetStateRule."""
    if rule.HasField("phase") and rule.phase != phase:
        return False
    if rule.HasField("min_level") and level < rule.min_level:
        return False
    if rule.HasField("max_level") and level > rule.max_level:
        return False
    return (all(stage in stages for stage in rule.stage)
            and not any(stage in stages for stage in rule.not_stage))


def net_state(net_param, phase, solver_state=None):
    """``(phase, level, stages)`` of a net as Caffe builds it.

    ``caffe.Net(file, phase)`` keeps the prototxt's ``state`` stages and sets
    the level to 0; a solver's net takes the prototxt's ``state`` merged with
    the solver's ``train_state`` or ``test_state`` (``solver_state``), as
    ``Solver::InitTrainNet`` / ``InitTestNets`` do.
    """
    if solver_state is None:
        return phase, 0, tuple(net_param.state.stage)
    state = type(net_param.state)(phase=phase)
    state.MergeFrom(net_param.state)  # a phase set there wins, as in Caffe
    state.MergeFrom(solver_state)
    return state.phase, state.level, tuple(state.stage)


def layer_included(layer, state, path=None):
    """Whether Caffe's ``FilterNet`` keeps ``layer`` in ``state`` (:func:`net_state`).

    Raises
    ------
    ProtoError
        if the layer has both include and exclude rules (Caffe aborts on it).
    """
    if layer.include and layer.exclude:
        raise ProtoError("%s has both include and exclude rules; Caffe takes one or the "
                         "other" % _where(path, layer))
    if layer.include:
        return any(_meets_rule(rule, *state) for rule in layer.include)
    return not any(_meets_rule(rule, *state) for rule in layer.exclude)


def _where(path, layer):
    """``file:line: layer 'name'`` (``layer 'name'`` without a file)."""
    if path is None:
        return "layer %r" % layer.name
    line = layer_line(path, layer.name)
    return "%s%s: layer %r" % (path, ":%d" % line if line else "", layer.name)


def _rules(layer):
    """A layer's include/exclude rules as prototxt text on one line."""
    return " ".join("%s { %s }" % (kind, text_format.MessageToString(rule, as_one_line=True))
                    for kind, rules in (("include", layer.include), ("exclude", layer.exclude))
                    for rule in rules)


def check_bottoms(net_param, path, state):
    """Raise ProtoError if a layer of ``state`` reads a blob no earlier layer writes.

    Caffe would abort the process (glog CHECK) on such a net. ``state`` is
    :func:`net_state`'s ``(phase, level, stages)``.
    """
    from caffe_admm.backend import caffe_pb2
    produced = set(net_param.input)
    left_out = {}  # blob -> the layers writing it that this state leaves out
    for layer in net_param.layer:
        if not layer_included(layer, state, path):
            for top in layer.top:
                left_out.setdefault(top, []).append(layer)
            continue
        for bottom in layer.bottom:
            if bottom not in produced:
                phase = caffe_pb2.Phase.Name(state[0])
                hint = ""
                if bottom in left_out:
                    hint = ("; it is written only under rules the net built here (%s, level "
                            "%d, %s) does not meet: %s"
                            % (phase, state[1], "stages " + ", ".join(state[2]) if state[2]
                               else "no stages",
                               "; ".join("layer %r %s" % (other.name, _rules(other))
                                         for other in left_out[bottom])))
                raise ProtoError("%s reads bottom %r, which no earlier layer of the %s phase "
                                 "produces%s" % (_where(path, layer), bottom, phase, hint))
        produced.update(layer.top)


def _not_there(path, field=""):
    """``'path' (field), which does not exist (relative to ...)``."""
    return "%r%s, which does not exist%s" % (
        path, " (%s)" % field if field else "", "" if os.path.isabs(path) else
        " (relative to the current directory, %s, as Caffe reads it: fix the path or run from "
        "the directory it is relative to)" % os.getcwd())


def _source_problems(layer):
    """What Caffe would abort on in the files a data layer reads, as phrases."""
    from caffe_admm.backend import caffe_pb2
    problems = []
    if layer.type == "Data":
        source = layer.data_param.source
        # both are directories: an LMDB holds data.mdb, a LevelDB a CURRENT file
        lmdb = os.path.isfile(os.path.join(source, "data.mdb"))
        leveldb = os.path.isfile(os.path.join(source, "CURRENT"))
        wants_lmdb = layer.data_param.backend == caffe_pb2.DataParameter.LMDB
        if not os.path.isdir(source):
            problems.append("reads " + _not_there(source, "source"))
        elif wants_lmdb and not lmdb or not wants_lmdb and not leveldb:
            problems.append("reads %r (source) as %s, but it is %s" % (
                source, "an LMDB" if wants_lmdb else "a LevelDB (Caffe's default backend)",
                "an LMDB: set backend: LMDB in data_param" if lmdb else
                "a LevelDB: set backend: LEVELDB in data_param" if leveldb else
                "neither (no data.mdb, no CURRENT file in it)"))
    param = {"ImageData": layer.image_data_param, "HDF5Data": layer.hdf5_data_param,
             "WindowData": layer.window_data_param}.get(layer.type)
    if param is not None and not os.path.isfile(param.source):
        problems.append("reads " + _not_there(param.source, "source"))
    elif layer.type == "HDF5Data":
        with open(param.source) as f:
            names = f.read().split()  # Caffe reads whitespace-separated names
        if not names:
            problems.append("reads %r (source), which lists no HDF5 file" % param.source)
        missing = [name for name in names if not os.path.isfile(name)]
        if missing:
            problems.append("reads %r (source), which names %s" % (param.source,
                                                                   _not_there(missing[0])))
    mean_file = layer.transform_param.mean_file
    if mean_file and not os.path.isfile(mean_file):
        problems.append("reads " + _not_there(mean_file, "transform_param.mean_file"))
    return problems


def check_sources(net_param, path, state):
    """Raise ProtoError if a data layer of ``state`` reads a file that is not there.

    Covers Data (LMDB, LevelDB), HDF5Data (its list and every file in it),
    ImageData and WindowData sources, and ``transform_param.mean_file``:
    Caffe would abort the process on them. Relative paths are taken from the
    current directory, as Caffe takes them.
    """
    for layer in net_param.layer:
        if not layer_included(layer, state, path):
            continue
        for problem in _source_problems(layer):
            raise ProtoError("%s (%s) %s" % (_where(path, layer), layer.type, problem))


OPENCV_TYPES = ("ImageData", "WindowData")  # Caffe builds them only with OpenCV


def check_layer_types(net_param, path, state):
    """Raise ProtoError for a layer of ``state`` whose type this Caffe build lacks,
    or a Python layer whose module does not import or lacks its class.

    Caffe would abort the process on the first and fail with a bare SystemError
    on the second. A Python layer's module is imported here, as Caffe would
    import it next.
    """
    import difflib
    import importlib
    from caffe_admm.backend import caffe
    known = sorted(caffe.layer_type_list())
    for layer in net_param.layer:
        if not layer_included(layer, state, path):
            continue
        if layer.type in OPENCV_TYPES and layer.type not in known:
            raise ProtoError("%s has type %r, which needs OpenCV; this build leaves OpenCV out "
                             "(Debian's OpenCV brings about 95 more libraries, GDAL's among "
                             "them): write the images into an LMDB (caffe-admm lmdb takes .npy "
                             "arrays) and read it with a Data layer" % (_where(path, layer),
                                                                        layer.type))
        if layer.type in FORK_LAYERS and layer.type not in known:
            raise ProtoError("%s has type %r, a Caffe fork's, which this Caffe build does not "
                             "have; stock layers compute it: `caffe-admm clean --model %s --out "
                             "NEW` rewrites it into %s" % (_where(path, layer), layer.type, path,
                                                           FORK_LAYERS[layer.type]))
        if layer.type not in known:
            by_lower = {t.lower(): t for t in known}
            close = [by_lower[t] for t in
                     difflib.get_close_matches(layer.type.lower(), list(by_lower), n=3)]
            raise ProtoError("%s has type %r, which this Caffe build does not have%s (its "
                             "types: %s)" % (_where(path, layer), layer.type,
                                             "; did you mean %s?" % " or ".join(close)
                                             if close else "", ", ".join(known)))
        if layer.type == "Python":
            module, name = layer.python_param.module, layer.python_param.layer
            try:
                found = hasattr(importlib.import_module(module), name)
            except Exception as exc:
                raise ProtoError("%s (Python) names module %r, which does not import: %s: %s "
                                 "(Caffe imports it from sys.path: the current directory "
                                 "and PYTHONPATH)" % (_where(path, layer), module,
                                                      type(exc).__name__, exc)) from exc
            if not found:
                raise ProtoError("%s (Python): module %r has no class %r"
                                 % (_where(path, layer), module, name))


def read_checked_net(path):
    """:func:`read_net`, refused (ProtoError) where ``caffe.Net(path, TEST)``
    would abort (:func:`check_net` in pycaffe's TEST state)."""
    from caffe_admm.backend import caffe_pb2
    net_param = read_net(path)
    check_net(net_param, path, net_state(net_param, caffe_pb2.TEST))
    return net_param


def check_net(net_param, path, state):
    """:func:`check_bottoms`, :func:`check_sources` and :func:`check_layer_types`:
    what makes Caffe abort (or fail without a message) when it builds the net,
    named as such; then :func:`check_builds` for whatever else it aborts on."""
    check_layer_types(net_param, path, state)
    check_bottoms(net_param, path, state)
    check_sources(net_param, path, state)
    check_builds(net_param, path, state)


_BUILT = set()  # digests of the nets (text, state, directory) built by check_builds
_FATAL = re.compile(r"^F\d+ [\d:.]+ +\d+ (\S+:\d+)\] (.*)$", re.M)
_CREATING = re.compile(r"\] Creating [Ll]ayer (\S+)$", re.M)
# the child loads pycaffe's extension alone (the caffe package imports
# scikit-image, a second of the child's time); a Python layer's module that
# imports caffe then finds it loaded
_PROBE = ("import importlib.util, sys\n"
          "spec = importlib.util.spec_from_file_location('caffe._caffe', sys.argv[4])\n"
          "module = sys.modules['caffe._caffe'] = importlib.util.module_from_spec(spec)\n"
          "spec.loader.exec_module(module)\n"
          "module.Net(sys.argv[1], int(sys.argv[2]), level=int(sys.argv[3]))\n")


def check_builds(net_param, path, state):
    """Build the net in ``state`` (:func:`net_state`) in a child process, so
    that a net Caffe aborts on (a glog check: shapes that do not match, a
    parameter it needs, ...) is refused with ProtoError naming the layer
    Caffe was setting up and its message, instead of ending this process
    with a stack trace. Each net (its text, state and the current directory,
    from which Caffe reads relative paths) is built once per process."""
    phase, level, stages = state
    probe = type(net_param)()
    probe.CopyFrom(net_param)
    probe.state.Clear()
    probe.state.stage.extend(stages)
    text = text_format.MessageToString(probe)
    key = hashlib.sha256(("%s\0%d\0%d\0%s" % (text, phase, level, os.getcwd())).encode())
    key = key.hexdigest()
    if key in _BUILT:
        return
    with tempfile.TemporaryDirectory() as tmp:
        probe_path = os.path.join(tmp, "net.prototxt")
        with open(probe_path, "w") as f:
            f.write(text)
        from caffe_admm.backend import caffe
        # this process's sys.path, where Python layers' modules are imported from
        env = dict(os.environ, GLOG_minloglevel="0", GLOG_logtostderr="1",
                   PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        proc = subprocess.run([sys.executable, "-c", _PROBE, probe_path, str(phase), str(level),
                               caffe._caffe.__file__],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                              universal_newlines=True, errors="replace")
    if proc.returncode == 0:
        _BUILT.add(key)
        return
    fatal = _FATAL.search(proc.stderr)
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    why = "%s] %s" % fatal.groups() if fatal else (lines[-1] if lines else
                                                  "exit %d" % proc.returncode)
    creating = _CREATING.findall(proc.stderr[:fatal.start()] if fatal else proc.stderr)
    layer = next((l for l in net_param.layer if creating and l.name == creating[-1]), None)
    where = "%s (%s)" % (_where(path, layer), layer.type) if layer is not None else path
    raise ProtoError("%s: Caffe aborts building the %s net: %s" % (
        where, {0: "TRAIN", 1: "TEST"}.get(phase, str(phase)), why))

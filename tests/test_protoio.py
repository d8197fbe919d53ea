"""protoio: what Caffe would abort on, found first (the layers a state keeps,
missing bottoms, data sources, layer types, solver settings), old formats
read as Caffe upgrades them, and parse errors naming where a field comes from.
Where a check stands in for a Caffe abort, the test runs real Caffe on the
same file too."""

import os
import subprocess
import sys

import numpy as np
import pytest

from caffe_admm import protoio
from caffe_admm.backend import caffe, caffe_pb2
from caffe_admm.data import write_lmdb

from conftest import ROOT, V1_LENET, write
from test_compact import random_params

# one Input layer per rule set: the layers a state keeps are the tops Caffe builds
RULES = {
    "always": "",
    "train": "include { phase: TRAIN }",
    "test": "include { phase: TEST }",
    "not_test": "exclude { phase: TEST }",
    "stage_a": "include { phase: TEST stage: 'a' }",
    "stages_ab": "include { stage: 'a' stage: 'b' }",
    "not_a": "include { not_stage: 'a' }",
    "a_or_b": "include { stage: 'a' } include { stage: 'b' }",
    "level_1_2": "include { min_level: 1 max_level: 2 }",
    "below_1": "exclude { min_level: 1 }",
    "file_stage": "include { stage: 'f' }",
}


@pytest.fixture
def rules_net(tmp_path):
    layers = "\n".join(
        "layer { name: '%s' type: 'Input' top: '%s' input_param { shape { dim: 1 } } %s }"
        % (name, name, rule) for name, rule in RULES.items())
    return write(tmp_path / "rules.prototxt", "name: 'rules'\nstate { stage: 'f' }\n" + layers)


@pytest.mark.parametrize("phase,level,stages", [
    (caffe.TRAIN, 0, []), (caffe.TEST, 0, []), (caffe.TEST, 0, ["a"]),
    (caffe.TRAIN, 0, ["a", "b"]), (caffe.TEST, 1, ["b"]), (caffe.TEST, 3, ["a", "b"]),
    (caffe.TEST, -1, []),
])
def test_the_layers_kept_are_those_caffe_builds(rules_net, phase, level, stages):
    net = caffe.Net(rules_net, phase, level=level, stages=stages)
    net_param = protoio.read_net(rules_net)
    # pycaffe adds its stages to the prototxt's state ones
    state = (phase, level, tuple(net_param.state.stage) + tuple(stages))
    kept = [l.name for l in net_param.layer if protoio.layer_included(l, state, rules_net)]
    assert kept == list(net._layer_names)


def test_net_state_is_pycaffe_s_and_the_solver_s(rules_net):
    net_param = protoio.read_net(rules_net)
    assert protoio.net_state(net_param, caffe_pb2.TEST) == (caffe_pb2.TEST, 0, ("f",))
    solver_state = caffe_pb2.NetState(level=2, stage=["a"])
    assert protoio.net_state(net_param, caffe_pb2.TRAIN, solver_state) == (
        caffe_pb2.TRAIN, 2, ("f", "a"))
    # the solver's train net as Caffe builds it with that train_state
    solver_path = write(os.path.join(os.path.dirname(rules_net), "solver.prototxt"), """
        net: "%s"
        base_lr: 0.01
        train_state { level: 2 stage: "a" }
        solver_mode: CPU
    """ % rules_net)
    built = list(caffe.get_solver(solver_path).net._layer_names)
    state = protoio.net_state(net_param, caffe_pb2.TRAIN, solver_state)
    assert [l.name for l in net_param.layer if protoio.layer_included(l, state)] == built


def test_include_and_exclude_together_are_refused(tmp_path):
    path = write(tmp_path / "both.prototxt", """
        layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 } }
                include { phase: TEST } exclude { stage: "a" } }
    """)
    net_param = protoio.read_net(path)
    with pytest.raises(protoio.ProtoError, match=r"both\.prototxt:2: layer 'x' has both "
                                                 r"include and exclude rules"):
        protoio.layer_included(net_param.layer[0], (caffe_pb2.TEST, 0, ()), path)


def test_a_bottom_written_only_in_another_state_names_the_rules(tmp_path):
    path = write(tmp_path / "staged.prototxt", """
        layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 } }
                include { phase: TEST stage: "on-train" } }
        layer { name: "relu" type: "ReLU" bottom: "data" top: "relu" }
    """)
    net_param = protoio.read_net(path)
    with pytest.raises(protoio.ProtoError) as info:
        protoio.check_bottoms(net_param, path, protoio.net_state(net_param, caffe_pb2.TEST))
    assert str(info.value) == (
        "%s:4: layer 'relu' reads bottom 'data', which no earlier layer of the TEST phase "
        "produces; it is written only under rules the net built here (TEST, level 0, no "
        "stages) does not meet: layer 'data' include { phase: TEST stage: \"on-train\" }" % path)
    protoio.check_bottoms(net_param, path, (caffe_pb2.TEST, 0, ("on-train",)))


DATA_NET = """
layer { name: "train_data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
        data_param { source: "%(train)s" batch_size: 1 backend: LMDB } }
layer { name: "test_data" type: "Data" top: "data" top: "label" include { phase: TEST }
        data_param { source: "%(test)s" batch_size: 1 backend: %(backend)s } }
layer { name: "relu" type: "ReLU" bottom: "data" top: "relu" }
"""


@pytest.fixture
def lmdb_dir(tmp_path):
    path = str(tmp_path / "lmdb")
    write_lmdb(path, np.zeros((2, 1, 2, 2), np.uint8), np.zeros(2, np.int64))
    return path


def test_a_missing_data_source_is_named_with_its_layer(tmp_path, lmdb_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path / "net.prototxt", DATA_NET % {
        "train": lmdb_dir, "test": "nope_lmdb", "backend": "LMDB"})
    net_param = protoio.read_net(path)
    protoio.check_sources(net_param, path, (caffe_pb2.TRAIN, 0, ()))
    with pytest.raises(protoio.ProtoError) as info:
        protoio.check_sources(net_param, path, (caffe_pb2.TEST, 0, ()))
    assert str(info.value) == (
        "%s:4: layer 'test_data' (Data) reads 'nope_lmdb' (source), which does not exist "
        "(relative to the current directory, %s, as Caffe reads it: fix the path or run from "
        "the directory it is relative to)" % (path, tmp_path))
    # a directory that is neither an LMDB (data.mdb) nor a LevelDB (CURRENT)
    os.mkdir(str(tmp_path / "nope_lmdb"))
    with pytest.raises(protoio.ProtoError, match=r"'test_data' \(Data\) reads 'nope_lmdb' "
                                                 r"\(source\) as an LMDB, but it is neither"):
        protoio.check_sources(net_param, path, (caffe_pb2.TEST, 0, ()))
    write(tmp_path / "nope_lmdb" / "CURRENT", "")
    with pytest.raises(protoio.ProtoError, match=r"but it is a LevelDB: set backend: LEVELDB"):
        protoio.check_sources(net_param, path, (caffe_pb2.TEST, 0, ()))
    leveldb = protoio.read_net(write(tmp_path / "leveldb.prototxt", DATA_NET % {
        "train": lmdb_dir, "test": "nope_lmdb", "backend": "LEVELDB"}))
    protoio.check_sources(leveldb, path, (caffe_pb2.TEST, 0, ()))


def test_an_lmdb_read_with_caffe_s_default_backend_is_named(tmp_path, lmdb_dir):
    """data_param's backend defaults to LEVELDB: an LMDB without backend: LMDB
    makes Caffe abort; the check says what to set."""
    path = write(tmp_path / "net.prototxt", "layer { name: 'd' type: 'Data' top: 'data' "
                                            "data_param { source: '%s' batch_size: 1 } }"
                 % lmdb_dir)
    code = "import caffe; caffe.Net(%r, caffe.TEST)" % path
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode in (-6, 134) and "Failed to open leveldb" in res.stderr
    with pytest.raises(protoio.ProtoError, match=r"reads '%s' \(source\) as a LevelDB "
                                                 r"\(Caffe's default backend\), but it is an "
                                                 r"LMDB: set backend: LMDB" % lmdb_dir):
        protoio.check_sources(protoio.read_net(path), path, (caffe_pb2.TEST, 0, ()))


@pytest.mark.parametrize("kind,param", [("ImageData", "image_data_param"),
                                        ("HDF5Data", "hdf5_data_param"),
                                        ("WindowData", "window_data_param")])
def test_a_missing_list_file_is_named(tmp_path, kind, param):
    path = write(tmp_path / "net.prototxt", """
        layer { name: "d" type: "%s" top: "data" top: "label"
                %s { source: "%s" batch_size: 1 } }
    """ % (kind, param, tmp_path / "list.txt"))
    net_param = protoio.read_net(path)
    with pytest.raises(protoio.ProtoError, match=r"layer 'd' \(%s\) reads '%s' \(source\), "
                                                 r"which does not exist$"
                                                 % (kind, tmp_path / "list.txt")):
        protoio.check_sources(net_param, path, (caffe_pb2.TEST, 0, ()))
    listed = write(tmp_path / "listed", "")
    write(tmp_path / "list.txt", {"ImageData": "%s 0\n", "HDF5Data": "%s\n",
                                  "WindowData": "# %s"}[kind] % listed)
    protoio.check_sources(net_param, path, (caffe_pb2.TEST, 0, ()))


def test_an_hdf5_list_caffe_would_abort_on_is_named(tmp_path):
    """An HDF5Data list naming no file, or a file not there: Caffe aborts on both."""
    for text, message, caffe_says in [
            ("\n", r"which lists no HDF5 file", "Must have at least 1 HDF5 filename"),
            ("%s/x.h5\n" % tmp_path, r"which names '%s/x\.h5', which does not exist$" % tmp_path,
             "Failed opening HDF5 file")]:
        listing = write(tmp_path / "list.txt", text)
        path = write(tmp_path / "net.prototxt", "layer { name: 'd' type: 'HDF5Data' top: 'data' "
                                                "hdf5_data_param { source: '%s' batch_size: 1 } }"
                                                % listing)
        code = "import caffe; caffe.Net(%r, caffe.TEST)" % path
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert res.returncode in (-6, 134), res.stderr[-500:]
        assert caffe_says in res.stderr, res.stderr[-500:]
        with pytest.raises(protoio.ProtoError, match=r"layer 'd' \(HDF5Data\) reads '%s' "
                                                     r"\(source\), %s" % (listing, message)):
            protoio.check_sources(protoio.read_net(path), path, (caffe_pb2.TEST, 0, ()))


def test_an_opencv_layer_is_named_with_what_to_use_instead(tmp_path):
    path = write(tmp_path / "net.prototxt", """
        layer { name: "d" type: "ImageData" top: "data" top: "label"
                image_data_param { source: "list.txt" batch_size: 1 } }
    """)
    with pytest.raises(protoio.ProtoError, match=r"net\.prototxt:2: layer 'd' has type "
                                                 r"'ImageData', which needs OpenCV; .* write the "
                                                 r"images into an LMDB"):
        protoio.check_layer_types(protoio.read_net(path), path, (caffe_pb2.TEST, 0, ()))


def test_a_missing_mean_file_is_named(tmp_path, lmdb_dir):
    path = write(tmp_path / "net.prototxt", """
        layer { name: "d" type: "Data" top: "data" top: "label"
                transform_param { mean_file: "%s" }
                data_param { source: "%s" batch_size: 1 backend: LMDB } }
    """ % (tmp_path / "mean.binaryproto", lmdb_dir))
    net_param = protoio.read_net(path)
    with pytest.raises(protoio.ProtoError, match=r"layer 'd' \(Data\) reads '%s' "
                                                 r"\(transform_param.mean_file\), which does "
                                                 r"not exist" % (tmp_path / "mean.binaryproto")):
        protoio.check_sources(net_param, path, (caffe_pb2.TEST, 0, ()))


def test_the_verbs_refuse_a_missing_source_where_caffe_aborts(tmp_path, lmdb_dir):
    path = write(tmp_path / "net.prototxt", DATA_NET % {
        "train": lmdb_dir, "test": str(tmp_path / "nope_lmdb"), "backend": "LMDB"})
    code = "import caffe; caffe.Net(%r, caffe.TEST)" % path
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode in (-6, 134), res.stderr  # SIGABRT from glog CHECK
    weights = str(tmp_path / "w.caffemodel")
    caffe.Net(path, caffe.TRAIN).save(weights)
    tool = os.path.join(ROOT, ".venv", "bin", "caffe-admm")
    for verb in (["compact", "--weights", weights, "--out", str(tmp_path / "out")],
                 ["test", "--weights", weights, "--iters", "1"],
                 ["time", "--compact", path, "--compact-weights", weights]):
        res = subprocess.run([tool, verb[0], "--model", path] + verb[1:],
                             capture_output=True, text=True)
        assert res.returncode == 2, res.stderr
        assert "layer 'test_data' (Data) reads '%s' (source), which does not exist" % (
            tmp_path / "nope_lmdb") in res.stderr




def test_an_old_format_net_reads_as_caffe_builds_it(tmp_path):
    path = write(tmp_path / "old.prototxt", V1_LENET)
    net_param = protoio.read_net(path)
    assert not net_param.layers and not net_param.input
    net = caffe.Net(path, caffe.TEST)
    assert [(l.name, l.type) for l in net_param.layer] == list(
        zip(net._layer_names, [l.type for l in net.layers]))
    assert [l.name for l in net_param.layer] == ["input", "conv1", "pool1", "conv2", "pool2",
                                                 "ip1", "relu1", "ip2", "prob"]
    assert list(net_param.layer[0].input_param.shape[0].dim) == [64, 1, 28, 28]
    conv1 = net_param.layer[1]
    assert [(p.lr_mult, p.decay_mult) for p in conv1.param] == [(1, 1), (2, 0)]


def test_an_old_format_net_without_caffe_s_upgrade_tool_is_refused(tmp_path, monkeypatch):
    from caffe_admm import caffetime
    path = write(tmp_path / "old.prototxt", V1_LENET)
    monkeypatch.setattr(caffetime, "build_tool", lambda name: None)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(protoio.ProtoError, match=r"old\.prototxt is in an old format \(V1 "
                                                 r"`layers`, or `input` fields\)"):
        protoio.read_net(path)



def test_a_layer_type_caffe_lacks_is_named_with_the_closest(tmp_path):
    path = write(tmp_path / "net.prototxt", """
        layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 } } }
        layer { name: "act" type: "Relu" bottom: "data" top: "act" }
    """)
    code = "import caffe; caffe.Net(%r, caffe.TEST)" % path
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode in (-6, 134) and "Unknown layer type: Relu" in res.stderr
    net_param = protoio.read_net(path)
    with pytest.raises(protoio.ProtoError, match=r"net\.prototxt:3: layer 'act' has type "
                                                 r"'Relu', which this Caffe build does not "
                                                 r"have; did you mean ReLU or PReLU"):
        protoio.check_layer_types(net_param, path, (caffe_pb2.TEST, 0, ()))


@pytest.mark.parametrize("module,name,message", [
    ("no_such_module_here", "L", r"names module 'no_such_module_here', which does not import: "
                                 r"ModuleNotFoundError"),
    ("caffe_admm.layers", "NoSuchLayer", r"module 'caffe_admm\.layers' has no class "
                                         r"'NoSuchLayer'"),
    ("caffe_admm.layers", "WeightHook", None),
])
def test_a_python_layer_s_module_and_class_are_checked(tmp_path, module, name, message):
    path = write(tmp_path / "net.prototxt", """
        layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 } } }
        layer { name: "py" type: "Python" bottom: "data" top: "py"
                python_param { module: "%s" layer: "%s" } }
    """ % (module, name))
    net_param = protoio.read_net(path)
    state = (caffe_pb2.TEST, 0, ())
    if message is None:
        protoio.check_layer_types(net_param, path, state)
    else:
        with pytest.raises(protoio.ProtoError, match=r"net\.prototxt:3: layer 'py' \(Python\)"
                                                     r".*" + message):
            protoio.check_layer_types(net_param, path, state)


SOLVER_NET = """
layer { name: "x" type: "DummyData" top: "x" top: "y"
        dummy_data_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 1 }
                           data_filler { type: "gaussian" } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip"
        inner_product_param { num_output: 1 weight_filler { type: "gaussian" } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "y" top: "loss" }
"""


@pytest.mark.parametrize("settings,message", [
    (['lr_policy: "fixed"', 'regularization_type: "l2"'], None),  # no weight decay: unread
    (['lr_policy: "fixed"', 'type: "Adam"'], None),
    (['lr_policy: "fixed"', "solver_type: ADAM"], None),
    ([], r": lr_policy '' is not one Caffe knows .*Caffe has no default"),
    (['lr_policy: "stepp"'], r":6: lr_policy 'stepp' is not one Caffe knows \(fixed, step, "),
    (['lr_policy: "fixed"', 'type: "Adamm"'], r":7: type 'Adamm' is not a Caffe solver \(SGD, "),
    (['lr_policy: "step"', "gamma: 0.1"], r":6: lr_policy 'step' needs stepsize > 0 \(it is 0\)"),
    (['lr_policy: "exp"', "gamma: -0.5"], r":7: lr_policy 'exp' needs gamma >= 0 \(it is -0.5\)"),
    (['lr_policy: "fixed"', "weight_decay: 0.1", 'regularization_type: "l2"'],
     r":8: regularization_type 'l2': Caffe takes L1 or L2"),
    (['lr_policy: "fixed"', "average_loss: 0"], r":7: average_loss must be >= 1 \(it is 0\)"),
    (['lr_policy: "fixed"', "solver_type: ADAM", 'type: "SGD"'],
     r":7: both solver_type \(old\) and type are set"),
])
def test_solver_settings_caffe_aborts_on_are_refused(tmp_path, settings, message):
    net = write(tmp_path / "net.prototxt", SOLVER_NET)
    path = write(tmp_path / "solver.prototxt", "\n".join(
        ['net: "%s"' % net, "max_iter: 2", "base_lr: 0.01", "solver_mode: CPU",
         'snapshot_prefix: "%s/s"' % tmp_path] + settings) + "\n")  # settings from line 6
    caffe_bin = os.path.join(ROOT, ".venv", "bin", "caffe")
    res = subprocess.run([caffe_bin, "train", "-solver", path], capture_output=True, text=True,
                         env=dict(os.environ, GLOG_logtostderr="1", GLOG_minloglevel="0"))
    solver = protoio.read_solver(path)
    if message is None:
        assert res.returncode == 0, res.stderr[-1000:]
        protoio.check_solver(solver, path)
    else:
        assert res.returncode in (-6, 134), res.stderr[-1000:]  # Caffe aborts on it
        with pytest.raises(protoio.ProtoError, match=r"solver\.prototxt" + message):
            protoio.check_solver(solver, path)


def test_a_field_caffe_lacks_is_named_with_where_forks_come_in(tmp_path):
    path = write(tmp_path / "ssl.prototxt", """
        layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 } } }
        layer { name: "c" type: "Convolution" bottom: "x" top: "c"
                param { lr_mult: 1 kernel_shape_decay_mult: 1 }
                convolution_param { num_output: 1 kernel_size: 1 } }
    """)
    with pytest.raises(protoio.ProtoError) as info:
        protoio.read_net(path)
    assert str(info.value).startswith(
        '%s:4:28 : Message type "caffe.ParamSpec" has no field named "kernel_shape_decay_mult". '
        "(not in BVLC Caffe's caffe.proto, which this build reads: a field of a Caffe fork, "
        "such as the SSL fork's group Lasso settings, has to go; `caffe-admm clean --model %s "
        "--out NEW` writes a copy without them" % (path, path))
    # the pruning config is ours: no such hint there
    from caffe_admm.proto import admm_pb2
    config = write(tmp_path / "admm.prototxt", "admm_steps: 1\nno_such_field: 1\n")
    with pytest.raises(protoio.ProtoError) as info:
        protoio.parse_text(config, admm_pb2.PruneParameter())
    assert "no field named" in str(info.value) and "fork" not in str(info.value)


FORK_NET = """name: "ssl"
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2 dim: 3 dim: 3 } } }
layer { name: "c" type: "Convolution" bottom: "x" top: "c"
        param { lr_mult: 1 kernel_shape_decay_mult: 1.0 breadth_decay_mult: 0 }
        connectivity_mode: DISCONNECTED_GRPWISE
        group_sparsity { axis: [1, 2] note: "a" 'b' }
        convolution_param { num_output: 4 kernel_size: 3 } }
"""


def test_unknown_fields_are_listed_with_their_lines_and_skipped_whole():
    assert protoio.unknown_fields(FORK_NET, caffe_pb2.NetParameter.DESCRIPTOR) == [
        (4, "caffe.ParamSpec", "kernel_shape_decay_mult"),
        (4, "caffe.ParamSpec", "breadth_decay_mult"),
        (5, "caffe.LayerParameter", "connectivity_mode"),
        (6, "caffe.LayerParameter", "group_sparsity")]
    assert protoio.unknown_fields(V1_LENET, caffe_pb2.NetParameter.DESCRIPTOR) == []


def test_clean_writes_what_caffe_reads_and_upgrades_an_old_format(tmp_path):
    path = write(tmp_path / "fork.prototxt", FORK_NET)
    out = str(tmp_path / "clean.prototxt")
    dropped, rewritten = protoio.clean(path, out)
    assert [f for _, _, f in dropped] == [
        "kernel_shape_decay_mult", "breadth_decay_mult", "connectivity_mode", "group_sparsity"]
    assert rewritten == []
    net = caffe.Net(out, caffe.TEST)
    assert net.params["c"][0].data.shape == (4, 2, 3, 3)
    assert protoio.read_net(out).layer[1].param[0].lr_mult == 1
    # an old-format net of the fork: its fields out, then upgraded as Caffe reads it
    old = write(tmp_path / "old.prototxt", V1_LENET.replace(
        "blobs_lr: 1 blobs_lr: 2", "blobs_lr: 1 blobs_lr: 2 kernel_shape_decay: 1", 1))
    assert protoio.clean(old, out) == ([(5, "caffe.V1LayerParameter", "kernel_shape_decay")], [])
    assert protoio.read_net(out) == protoio.read_net(write(tmp_path / "v1.prototxt", V1_LENET))
    # a solver
    solver = write(tmp_path / "s.prototxt", 'net: "n.prototxt"\nbase_lr: 0.01\n'
                   'kernel_shape_decay: 0.0001\nlr_policy: "fixed"\n')
    assert protoio.clean(solver, out, solver=True) == (
        [(3, "caffe.SolverParameter", "kernel_shape_decay")], [])
    assert protoio.read_solver(out).lr_policy == "fixed"


SE_AXPY_NET = """name: "se"
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 5 dim: 5 } } }
layer { name: "proj" type: "Convolution" bottom: "x" top: "proj"
        convolution_param { num_output: 4 kernel_size: 1 } }
layer { name: "c" type: "Convolution" bottom: "x" top: "c"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "squeeze" type: "Pooling" bottom: "c" top: "squeeze"
        pooling_param { pool: AVE global_pooling: true } }
layer { name: "down" type: "Convolution" bottom: "squeeze" top: "down"
        convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "up" type: "Convolution" bottom: "down" top: "up"
        convolution_param { num_output: 4 kernel_size: 1 } }
layer { name: "prob" type: "Sigmoid" bottom: "up" top: "up" }
layer { name: "sum" type: "Axpy" bottom: "up" bottom: "c" bottom: "proj" top: "sum"
        include { phase: TEST } }
layer { name: "head" type: "Convolution" bottom: "sum" top: "head"
        convolution_param { num_output: 2 kernel_size: 1 } }
"""


def refused_then_cleaned(path, refusal, rewritten):
    """The net check refuses ``path`` (message matching ``refusal``); `clean`
    rewrites the layers ``rewritten`` lists, and leaves out no field.
    Returns the cleaned prototxt's path."""
    with pytest.raises(protoio.ProtoError, match=refusal):
        protoio.read_checked_net(path)
    out = os.path.join(os.path.dirname(path), "stock.prototxt")
    assert protoio.clean(path, out) == ([], rewritten)
    return out


def test_senets_axpy_is_refused_by_name_and_cleaned_into_stock_layers(tmp_path):
    """SENet's Axpy (a * X + Y): Caffe aborts on it; `clean` writes Flatten,
    Scale and Eltwise, which compute it, with its rules."""
    out = refused_then_cleaned(
        write(tmp_path / "se.prototxt", SE_AXPY_NET),
        r"se.prototxt:14: layer 'sum' has type 'Axpy', a Caffe fork's, .*`caffe-admm clean "
        r"--model .*se.prototxt --out NEW` rewrites it into Flatten \+ Scale \+ Eltwise",
        [(14, "sum", "Axpy", "'sum/factor' (Flatten), 'sum/scale' (Scale), 'sum' (Eltwise)")])
    stock = protoio.read_net(out)
    assert [(l.name, l.include[0].phase) for l in stock.layer if l.include] == [
        ("sum/factor", caffe_pb2.TEST), ("sum/scale", caffe_pb2.TEST), ("sum", caffe_pb2.TEST)]
    net = caffe.Net(out, caffe.TEST)
    rng = np.random.default_rng(0)
    random_params(net, rng)
    net.blobs["x"].data[...] = rng.standard_normal(net.blobs["x"].data.shape)
    net.forward()
    a, x, y = (net.blobs[b].data for b in ("up", "c", "proj"))
    assert a.shape == (2, 4, 1, 1)
    np.testing.assert_allclose(net.blobs["sum"].data, a * x + y, rtol=1e-6)


MOBILENET_FORK_NET = """name: "mobilenet"
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 4 dim: 5 dim: 5 } } }
layer { name: "dw" type: "DepthwiseConvolution" bottom: "x" top: "dw"
        convolution_param { num_output: 4 group: 4 kernel_size: 3 pad: 1 } }
layer { name: "relu6" type: "ReLU6" bottom: "dw" top: "dw" }
layer { name: "dw2" type: "ConvolutionDepthwise" bottom: "dw" top: "dw2"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 bias_term: false } }
layer { name: "pw" type: "Convolution" bottom: "dw2" top: "pw"
        convolution_param { num_output: 3 kernel_size: 1 } }
"""


def _depthwise(x, w, b=None):
    """float64 depthwise 3x3 convolution, padding 1: x (N, C, H, W), w (C, 1, 3, 3)."""
    h, wd = x.shape[2:]
    pad = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = sum(w[None, :, 0, ky, kx, None, None] * pad[:, :, ky:ky + h, kx:kx + wd]
              for ky in range(3) for kx in range(3))
    return out if b is None else out + b[None, :, None, None]


def test_mobilenet_ports_layers_are_cleaned_into_stock_layers(tmp_path):
    """ReLU6 into a Clip from 0 to 6; a fork's depthwise convolution layer into
    a Convolution, one filter per input channel where its group is unset."""
    out = refused_then_cleaned(
        write(tmp_path / "mobilenet.prototxt", MOBILENET_FORK_NET),
        r"mobilenet.prototxt:3: layer 'dw' has type 'DepthwiseConvolution', a Caffe fork's, .* "
        r"rewrites it into Convolution with group \(MobileNet ports; group = num_output where "
        r"it is unset\)",
        [(3, "dw", "DepthwiseConvolution", "'dw' (Convolution)"),
         (5, "relu6", "ReLU6", "'relu6' (Clip)"),
         (6, "dw2", "ConvolutionDepthwise", "'dw2' (Convolution)")])
    stock = protoio.read_net(out)
    assert [(l.name, l.type, l.convolution_param.group, tuple(l.bottom), tuple(l.top))
            for l in stock.layer[1:4]] == [("dw", "Convolution", 4, ("x",), ("dw",)),
                                           ("relu6", "Clip", 1, ("dw",), ("dw",)),
                                           ("dw2", "Convolution", 4, ("dw",), ("dw2",))]
    net = caffe.Net(out, caffe.TEST)
    rng = np.random.default_rng(0)
    random_params(net, rng)
    net.params["dw"][0].data[...] *= 8  # past 6 and below 0: both ends of the clip
    x = net.blobs["x"].data[...] = rng.standard_normal(net.blobs["x"].data.shape)
    net.forward()
    dw = _depthwise(x, net.params["dw"][0].data, net.params["dw"][1].data)
    assert dw.max() > 6 and dw.min() < 0
    relu6 = np.clip(dw, 0, 6)
    assert net.params["dw2"][0].data.shape == (4, 1, 3, 3)
    np.testing.assert_allclose(net.blobs["dw2"].data, _depthwise(relu6, net.params["dw2"][0].data),
                               rtol=1e-5, atol=1e-5)


def test_a_leaky_relu6_is_not_rewritten(tmp_path):
    path = write(tmp_path / "leaky.prototxt", MOBILENET_FORK_NET.replace(
        'type: "ReLU6" bottom: "dw" top: "dw"',
        'type: "ReLU6" bottom: "dw" top: "dw" relu_param { negative_slope: 0.1 }'))
    with pytest.raises(protoio.ProtoError, match=r"leaky.prototxt:5: layer 'relu6' \(ReLU6\) has "
                       r"negative_slope "
                       r"0.1; a Clip from 0 to 6 computes ReLU6 only without it"):
        protoio.clean(path, str(tmp_path / "stock.prototxt"))


@pytest.mark.parametrize("umask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_get_the_permissions_open_gives(tmp_path, umask, expected):
    """Not the temporary file's 0600: a caffemodel another user (a Caffe
    server, a colleague) reads, as `caffe` and `open` would write it."""
    old = os.umask(umask)
    try:
        path = str(tmp_path / "out.prototxt")
        with protoio.atomic_write(path, "w") as f:
            f.write("name: 'x'\n")
        assert os.stat(path).st_mode & 0o777 == expected
        assert os.umask(umask) == umask  # left as it was
    finally:
        os.umask(old)
    failed = str(tmp_path / "failed")
    with pytest.raises(RuntimeError):
        with protoio.atomic_write(failed) as f:
            raise RuntimeError
    assert os.listdir(str(tmp_path)) == ["out.prototxt"]  # nothing half-written left


_INPUT = 'layer { name: "data" type: "Input" top: "data" ' \
         'input_param { shape { dim: 1 dim: 1 dim: 8 dim: 8 } } }\n'


@pytest.mark.parametrize("body, layer, message", [
    ('layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" '
     'convolution_param { num_output: 4 } }',
     "conv1' (Convolution)", "kernel_size must be specified once"),
    ('layer { name: "a" type: "Convolution" bottom: "data" top: "a" '
     'convolution_param { num_output: 4 kernel_size: 3 } }\n'
     'layer { name: "b" type: "Convolution" bottom: "data" top: "b" '
     'convolution_param { num_output: 4 kernel_size: 5 } }\n'
     'layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "b" top: "sum" }',
     "sum' (Eltwise)", "bottom[0]: 1 4 6 6 (144), bottom[1]: 1 4 4 4 (64)"),
    ('layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" '
     'inner_product_param { num_output: 2 weight_filler { type: "xavierr" } } }',
     "ip' (InnerProduct)", "Unknown filler name: xavierr"),
])
def test_a_net_caffe_aborts_on_is_refused_naming_the_layer(tmp_path, body, layer, message):
    """Whatever Caffe checks when it builds a net (here what the named
    checks do not cover) ends pycaffe's process; the verbs build it in a
    child first and stop with the layer and Caffe's message."""
    net = write(tmp_path / "bad.prototxt", 'name: "bad"\n' + _INPUT + body + "\n")
    code = "from caffe_admm.backend import caffe; caffe.Net(%r, caffe.TEST)" % net
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode in (-6, 134) and message in res.stderr  # Caffe's abort
    with pytest.raises(protoio.ProtoError) as exc:
        protoio.read_checked_net(net)
    line = 3 if "sum" not in layer else 5
    assert str(exc.value).startswith("%s:%d: layer '%s: Caffe aborts building the TEST net: "
                                     % (net, line, layer))
    assert message in str(exc.value)


def test_a_net_that_builds_is_built_once(tmp_path, monkeypatch):
    net = write(tmp_path / "ok.prototxt", 'name: "ok"\n' + _INPUT +
                'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" '
                'inner_product_param { num_output: 2 } }\n')
    runs = []
    real = subprocess.run
    monkeypatch.setattr(protoio.subprocess, "run",
                        lambda *a, **k: runs.append(a) or real(*a, **k))
    protoio.read_checked_net(net)
    protoio.read_checked_net(net)
    assert len(runs) == 1
    # from another directory, whose relative paths Caffe reads, it is built again
    monkeypatch.chdir(tmp_path)
    protoio.read_checked_net(net)
    assert len(runs) == 2


def test_the_verbs_stop_on_it_before_caffe_aborts(tmp_path):
    net = write(tmp_path / "bad.prototxt", 'name: "bad"\n' + _INPUT +
                'layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" '
                'convolution_param { num_output: 4 } }\n')
    res = subprocess.run([os.path.join(ROOT, ".venv", "bin", "caffe-admm"), "time", "--model",
                          net, "--compact", net, "--compact-weights", net, "--batch", "1"],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "Check failure stack trace" not in res.stderr
    assert "bad.prototxt:3: layer 'conv1' (Convolution): Caffe aborts" in res.stderr


def test_a_python_layer_on_this_process_s_sys_path_builds(tmp_path, monkeypatch):
    """A script that puts its layers' folder on sys.path (not PYTHONPATH):
    the child that builds the net imports them from there too."""
    layers = tmp_path / "mylayers"
    layers.mkdir()
    (layers / "my_identity.py").write_text(
        "import caffe\n"
        "class Identity(caffe.Layer):\n"
        "    def setup(self, bottom, top): pass\n"
        "    def reshape(self, bottom, top): top[0].reshape(*bottom[0].data.shape)\n"
        "    def forward(self, bottom, top): top[0].data[...] = bottom[0].data\n"
        "    def backward(self, top, propagate_down, bottom): pass\n")
    monkeypatch.syspath_prepend(str(layers))
    net = write(tmp_path / "py.prototxt", 'name: "py"\n' + _INPUT +
                'layer { name: "same" type: "Python" bottom: "data" top: "same" '
                'python_param { module: "my_identity" layer: "Identity" } }\n')
    protoio.read_checked_net(net)
    assert caffe.Net(net, caffe.TEST).blobs["same"].data.shape == (1, 1, 8, 8)

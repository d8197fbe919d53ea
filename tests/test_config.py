"""Pruning configs: parsing, defaults, and errors that name file, line and field."""

import pytest
from google.protobuf import text_format

from caffe_admm.backend import caffe_pb2
from caffe_admm.config import Constraint, ConfigError, load_config, parse_settings
from caffe_admm.protoio import ProtoError

from conftest import write

NET = text_format.Parse("""
name: "N"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 4 dim: 8 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 8 kernel_size: 3 } }
layer { name: "gconv" type: "Convolution" bottom: "conv1" top: "gconv"
        convolution_param { num_output: 8 kernel_size: 3 group: 2 } }
layer { name: "relu" type: "ReLU" bottom: "gconv" top: "gconv" }
layer { name: "ip1" type: "InnerProduct" bottom: "gconv" top: "ip1"
        inner_product_param { num_output: 10 } }
""", caffe_pb2.NetParameter())


def test_defaults_merge_into_layers(tmp_path):
    path = write(tmp_path / "c.prototxt", """
        default { kind: FILTER_SHAPE keep_ratio: 0.5 }
        rho { initial: 0.01 growth: 1.5 max: 1 }
        layer { name: "conv1" shape_keep_ratio: 0.25 }
        layer { name: "ip1" kind: NON_STRUCTURED prune_ratio: 0.9 rho: 0.003 }
        admm_steps: 3 iters_per_step: 20 retrain_iters: 7
        method: SSL
    """)
    cfg = load_config(path, NET)
    assert cfg.method == "ssl" and cfg.ssl_threshold is None
    conv1, ip1 = cfg.layers
    assert conv1.kind == "filter_shape"
    assert [(c.kind, c.keep_ratio) for c in conv1.constraints] == [("filter", 0.5),
                                                                   ("shape", 0.25)]
    assert conv1.rho == pytest.approx(0.01)
    assert ip1.kind == "non_structured" and ip1.rho == pytest.approx(0.003)
    assert ip1.constraints[0].keep_ratio == pytest.approx(0.1)
    assert (cfg.admm_steps, cfg.iters_per_step, cfg.retrain_iters) == (3, 20, 7)
    assert cfg.rho_growth == 1.5 and cfg.rho_max == 1.0


def test_global_keep_ratio_covers_unlisted_layers(tmp_path):
    path = write(tmp_path / "c.prototxt", """
        default { kind: FILTER }
        global_keep_ratio: 0.5
        layer { name: "ip1" keep_ratio: 0.1 }
    """)
    cfg = load_config(path, NET)
    ratios = {s.name: s.constraints[0].keep_ratio for s in cfg.layers}
    assert ratios == pytest.approx({"ip1": 0.1, "conv1": 0.5, "gconv": 0.5})
    # conv1's filters feed gconv's two groups: its filter pruning keeps as many in each
    assert {s.name: (s.group, s.filter_group) for s in cfg.layers} == {
        "ip1": (1, 1), "conv1": (1, 2), "gconv": (2, 2)}


def depthwise():
    """NET with gconv made depthwise (group 8: one filter per group)."""
    net = caffe_pb2.NetParameter()
    net.CopyFrom(NET)
    net.layer[2].convolution_param.group = 8
    return net


def test_filter_pruning_of_a_depthwise_convolution_is_refused_or_left_out(tmp_path):
    """One filter per group: FILTER keeps one in each, so it would prune
    nothing. Listed, that is an error; reached by global_keep_ratio, the layer
    is left out and named."""
    net = depthwise()
    path = write(tmp_path / "c.prototxt", 'layer { name: "conv1" keep_ratio: 0.5 }\n'
                 'layer { name: "gconv" keep_ratio: 0.5 }')
    with pytest.raises(ConfigError, match=r"c\.prototxt:2: layer 'gconv', field kind: convolution "
                       r"'gconv' has one filter per group \(group = num_output = 8: depthwise\)"):
        load_config(path, net)
    for body in ('layer { name: "gconv" keep_ratio: 1 }', 'layer { name: "gconv" kind: '
                 'NON_STRUCTURED keep_ratio: 0.5 }'):
        assert [s.name for s in load_config(write(tmp_path / "c.prototxt", body),
                                            net).layers] == ["gconv"]
    cfg = load_config(write(tmp_path / "c.prototxt", "global_keep_ratio: 0.5"), net)
    assert [s.name for s in cfg.layers] == ["conv1", "ip1"]
    assert [name for name, _ in cfg.left_out] == ["gconv"]
    cfg = load_config(write(tmp_path / "c.prototxt", "default { kind: NON_STRUCTURED }\n"
                            "global_keep_ratio: 0.5"), net)
    assert [s.name for s in cfg.layers] == ["conv1", "gconv", "ip1"] and cfg.left_out == ()


@pytest.mark.parametrize("group", [2, 8])
def test_global_keep_ratio_prunes_grouped_convolutions_by_filter_where_the_kind_does_not_fit(
        tmp_path, group):
    """FILTER_SHAPE, listed for a grouped convolution, is an error. Reached by
    global_keep_ratio, a grouped convolution (ResNeXt's 3x3s) is pruned by
    filter at the others' filter ratio, and named; a depthwise one
    (MobileNetV2's) is left out, its channels going with its producer's
    filters. SHAPE has no filter part: both are left out."""
    net = depthwise()
    net.layer[2].convolution_param.group = group
    with pytest.raises(ConfigError, match="kind FILTER_SHAPE does not fit convolution 'gconv'"):
        load_config(write(tmp_path / "c.prototxt", 'layer { name: "gconv" kind: FILTER_SHAPE '
                          'keep_ratio: 0.5 }'), net)
    cfg = load_config(write(tmp_path / "c.prototxt", "default { kind: FILTER_SHAPE "
                            "filter_keep_ratio: 0.25 shape_keep_ratio: 0.75 }\n"
                            "global_keep_ratio: 0.5"), net)
    if group == 2:
        assert [s.name for s in cfg.layers] == ["conv1", "gconv", "ip1"] and cfg.left_out == ()
        gconv = cfg.layer("gconv")
        assert gconv.constraints == (Constraint("filter", 0.25),) and gconv.filter_group == 2
        assert cfg.layer("conv1").constraints == (Constraint("filter", 0.25),
                                                  Constraint("shape", 0.75))
        assert cfg.filters_only == (("gconv", "kind FILTER_SHAPE does not fit a grouped "
                                     "convolution (group=2): its filters pruned (FILTER), not "
                                     "its columns"),)
        assert cfg.changed_defaults[-1] == "global_keep_ratio on grouped convolutions"
    else:
        assert [s.name for s in cfg.layers] == ["conv1", "ip1"] and cfg.filters_only == ()
        [(name, why)] = cfg.left_out
        assert name == "gconv" and why.startswith(
            "kind FILTER_SHAPE does not fit a grouped convolution (group=8); its channels go "
            "with the filters of the layer that feeds it")
        assert "global_keep_ratio on grouped convolutions" not in cfg.changed_defaults
    cfg = load_config(write(tmp_path / "c.prototxt", "default { kind: SHAPE }\n"
                            "global_keep_ratio: 0.5"), net)
    assert [name for name, _ in cfg.left_out] == ["gconv"] and cfg.filters_only == ()
    # a layer entry of its own is the user's
    cfg = load_config(write(tmp_path / "c.prototxt", "default { kind: FILTER_SHAPE }\n"
                            "global_keep_ratio: 0.5\n"
                            'layer { name: "gconv" kind: NON_STRUCTURED keep_ratio: 0.5 }'), net)
    assert cfg.layers[0].constraints == (Constraint("non_structured", 0.5),)
    assert cfg.left_out == cfg.filters_only == ()


def test_syntax_error_names_file_line_and_field(tmp_path):
    path = write(tmp_path / "c.prototxt", """
        default { kind: FILTER }
        layer { name: "conv1" keep_ratoi: 0.5 }
    """)
    with pytest.raises(ProtoError, match=r"c\.prototxt:3:.*keep_ratoi"):
        load_config(path, NET)


@pytest.mark.parametrize("body, message", [
    ('layer { name: "conv9" keep_ratio: 0.5 }',
     r"c\.prototxt:2: layer 'conv9', field name: no layer 'conv9' in net 'N' "
     r"\(prunable layers: conv1, gconv, ip1\)"),
    ('layer { name: "relu" keep_ratio: 0.5 }', r":2: layer 'relu'.*is a ReLU"),
    ('layer { name: "conv1" keep_ratio: 1.5 }', r":2: layer 'conv1', field keep_ratio: 1.5 is outside"),
    ('layer { name: "conv1" keep_ratio: 0 }', r"field keep_ratio: 0 is outside \(0, 1\]"),
    ('layer { name: "conv1" prune_ratio: 1 }', r"field prune_ratio: 1 is outside \[0, 1\)"),
    ('layer { name: "gconv" kind: SHAPE keep_ratio: 0.5 }',
     r"field kind: kind SHAPE does not fit convolution 'gconv' with group=2"),
    ('layer { name: "conv1" }', r"field keep_ratio: no keep_ratio or prune_ratio"),
    ('layer { name: "conv1" keep_ratio: 0.5 prune_ratio: 0.5 }', "not both"),
    ('layer { name: "ip1" keep_ratio: 0.5 }\nlayer { name: "ip1" keep_ratio: 0.2 }',
     "listed twice"),
    ('', "no layer to prune"),
    ('ssl_threshold: 1.5\nlayer { name: "conv1" keep_ratio: 0.5 }', "ssl_threshold must be in"),
    ('retrain_solver: "no_such_solver.prototxt"\nlayer { name: "conv1" keep_ratio: 0.5 }',
     r"c\.prototxt: retrain_solver: no file .*no_such_solver\.prototxt"),
    ('layer { name: "conv1" keep_ratio: 0.5 lasso_lambda: -1 }',
     r"field lasso_lambda: must be >= 0"),
    ('method: MAGNITUDE progressive: true\nlayer { name: "conv1" keep_ratio: 0.5 }',
     "progressive applies to method ADMM"),
    ('method: SSL rho { rescale_dual: true }\nlayer { name: "conv1" keep_ratio: 0.5 }',
     "rescale_dual applies to method ADMM only"),
    ('admm_steps: 4 progressive: true progressive_steps: 5\nlayer { name: "conv1" '
     'keep_ratio: 0.5 }', r"progressive_steps needs .* 1\.\.admm_steps \(4\), got 5"),
    ('admm_steps: 4 prune_stages: 5\nlayer { name: "conv1" keep_ratio: 0.5 }',
     r"prune_stages needs .* 1\.\.admm_steps \(4\), got 5"),
    ('prune_stages: 0\nlayer { name: "conv1" keep_ratio: 0.5 }', r"prune_stages needs .*got 0"),
    ('method: SSL prune_stages: 2\nlayer { name: "conv1" keep_ratio: 0.5 }',
     "prune_stages needs method ADMM"),
    ('progressive: true prune_stages: 2\nlayer { name: "conv1" keep_ratio: 0.5 }',
     "prune_stages needs method ADMM, no progressive"),
    ('method: MAGNITUDE penalty_pruned_only: true\nlayer { name: "conv1" keep_ratio: 0.5 }',
     "penalty_pruned_only applies to method ADMM only"),
    ('method: SSL penalty_pruned_only: false\nlayer { name: "conv1" keep_ratio: 0.5 }',
     "penalty_pruned_only applies to method ADMM only"),
])
def test_semantic_errors_are_clear(tmp_path, body, message):
    path = write(tmp_path / "c.prototxt", "\n" + body + "\n")
    with pytest.raises(ConfigError, match=message):
        load_config(path, NET)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ProtoError, match="cannot read"):
        load_config(str(tmp_path / "nope.prototxt"), NET)


def test_bundled_configs_fit_lenet():
    import glob
    import os

    from caffe_admm.protoio import read_net
    from conftest import ROOT
    net = read_net(os.path.join(ROOT, "prototxt", "lenet_train_test.prototxt"))
    configs = glob.glob(os.path.join(ROOT, "prototxt", "lenet_admm*.prototxt"))
    assert configs
    for path in configs:
        cfg = load_config(path, net)
        assert {s.name for s in cfg.layers} <= {"conv1", "conv2", "ip1", "ip2"}


def test_the_bundled_resnet_its_deploy_net_solver_and_config_agree():
    """prototxt/resnet_mnist_*: the train/test net is the benchmark's
    (couple_sums_accuracy.net_text) with relative data paths, the deploy net
    has its layers, the solver names it, and the config prunes every
    convolution to half with both residual streams coupled."""
    import os

    from caffe_admm.protoio import read_net, read_solver
    from conftest import ROOT, load_benchmark
    path = os.path.join(ROOT, "prototxt", "resnet_mnist_train_test.prototxt")
    with open(path) as f:
        text = f.read()
    bench = load_benchmark("couple_sums_accuracy")
    assert text.endswith(bench.net_text("data/mnist_train_lmdb", "data/mnist_test_lmdb"))
    net = read_net(path)
    deploy = read_net(os.path.join(ROOT, "prototxt", "resnet_mnist_deploy.prototxt"))
    body = [l for l in net.layer if l.type not in ("Data", "Accuracy", "SoftmaxWithLoss")]
    assert [l.type for l in deploy.layer] == ["Input"] + [l.type for l in body] + ["Softmax"]
    assert list(deploy.layer[1:-1]) == body
    solver = read_solver(os.path.join(ROOT, "solvers", "resnet_mnist_solver.prototxt"))
    assert solver.net == "prototxt/resnet_mnist_train_test.prototxt"
    cfg = load_config(os.path.join(ROOT, "prototxt", "resnet_mnist_admm_filter.prototxt"), net)
    assert {s.name: s.constraints[0].keep_ratio for s in cfg.layers} == {
        "conv1": 0.5, "a1": 0.5, "a2": 0.5, "b1": 0.5, "b2": 0.5, "b_proj": 0.5, "fc": 1.0}
    assert sorted(cfg.coupled) == [("b2", "b_proj"), ("conv1", "a2")]


@pytest.mark.parametrize("body, expected", [
    ("", True),                                   # ADMM's default
    ("penalty_pruned_only: false", False),        # the StructADMM paper's penalty
    ("method: SSL", False), ("method: MAGNITUDE", False)])
def test_penalty_pruned_only_is_admms_default(tmp_path, body, expected):
    path = write(tmp_path / "c.prototxt", body + '\nlayer { name: "conv1" keep_ratio: 0.5 }\n')
    assert load_config(path, NET).penalty_pruned_only is expected


def test_parse_settings_compares_configs_by_value_and_rejects_unknown_fields():
    a = parse_settings("rho { initial: 0.01 growth: 2 max: 1 } penalty_pruned_only: true")
    b = parse_settings("penalty_pruned_only: true rho { max: 1.0 growth: 2.0 initial: 0.01 }")
    assert a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)
    assert a != parse_settings("rho { initial: 0.01 growth: 2 max: 1 }")
    with pytest.raises(text_format.ParseError, match="no_such_field"):
        parse_settings("no_such_field: 1")


def test_a_transposed_inner_product_is_refused_by_name(tmp_path):
    """Its weight is (inputs, outputs): FILTER would prune inputs. Listed or
    reached by global_keep_ratio, the error names it."""
    net = caffe_pb2.NetParameter()
    net.CopyFrom(NET)
    net.layer[-1].inner_product_param.transpose = True
    for body in ('layer { name: "ip1" keep_ratio: 0.5 }', "global_keep_ratio: 0.5"):
        path = write(tmp_path / "c.prototxt", body)
        with pytest.raises(ConfigError, match="InnerProduct 'ip1' has transpose: true"):
            load_config(path, net)
    net.layer[-1].inner_product_param.transpose = False
    assert [s.name for s in load_config(path, net).layers] == ["conv1", "gconv", "ip1"]


def test_the_writers_of_a_residual_stream_are_coupled_where_they_can_be(tmp_path):
    """test_liveness.STREAMS: proj, c2 and c3 write one stream; conv_a's
    stream has the net input in it, c4's a Sigmoid's output."""
    from test_liveness import STREAMS
    net = text_format.Parse(STREAMS, caffe_pb2.NetParameter())

    def cfg(body):
        return load_config(write(tmp_path / "c.prototxt", "global_keep_ratio: 0.5\n" + body), net)
    full = cfg("")
    assert full.coupled == (("proj", "c2", "c3"),)
    assert full.uncoupled == (
        (("conv_a",), "some of its channels come from the net input 'data', which pruning "
                      "cannot zero"),
        (("c4",), "some of its channels come from Sigmoid 'sig', which pruning cannot zero"))
    # a new default: a run begun before it does not resume under it
    assert full.changed_defaults == ("penalty_pruned_only", "couple_sums")
    off = cfg("couple_sums: false")
    assert off.coupled == off.uncoupled == () and off.changed_defaults == ("penalty_pruned_only",)
    assert cfg("couple_sums: true").changed_defaults == ("penalty_pruned_only",)
    assert cfg('layer { name: "c3" keep_ratio: 0.25 }').uncoupled[1] == (
        ("proj", "c2", "c3"), "the filter keep ratios differ (proj 0.5, c2 0.5, c3 0.25)")
    assert cfg('layer { name: "c2" kind: CHANNEL keep_ratio: 0.5 }').uncoupled[1] == (
        ("proj", "c2", "c3"), "c2 is not filter-pruned")
    listed = load_config(write(tmp_path / "c.prototxt", 'layer { name: "c1" keep_ratio: 0.5 }'),
                         net)
    assert listed.coupled == listed.uncoupled == ()  # no writer pruned: nothing to say
    # a grouped writer: the others keep the same count in each of its groups too
    next(l for l in net.layer if l.name == "c3").convolution_param.group = 2
    grouped = cfg("")
    assert {s.name: s.filter_group for s in grouped.layers if s.name in ("proj", "c2", "c3")} == {
        "proj": 2, "c2": 2, "c3": 2}


def test_batchnorm_recalibration_defaults_to_100_batches(tmp_path):
    body = 'layer { name: "conv1" keep_ratio: 0.5 }\n'
    assert load_config(write(tmp_path / "c.prototxt", body), NET).bn_batches == 100
    off = load_config(write(tmp_path / "c.prototxt", body + "bn_recalibration_batches: 0"), NET)
    assert off.bn_batches == 0

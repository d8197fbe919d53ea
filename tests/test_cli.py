"""The caffe-admm command line: verbs wired to the library, exit codes, messages."""

import json
import os
import subprocess

import pytest

from caffe_admm.backend import caffe

from conftest import ROOT, write
from test_compact import TILE_NET, sparse_weights

CLI = os.path.join(ROOT, ".venv", "bin", "caffe-admm")


def run(*args, cwd=None):
    return subprocess.run([CLI, *args], capture_output=True, text=True, cwd=cwd)


def test_help_lists_every_verb():
    res = run("--help")
    assert res.returncode == 0
    for verb in ("data", "lmdb", "train", "test", "sensitivity", "prune", "retrain", "compact",
                 "sparsity", "time", "report", "clean"):
        assert verb in res.stdout


def test_prune_compact_report_from_the_command_line(tmp_path, tiny_trained):
    config = write(tmp_path / "c.prototxt", """
        admm_steps: 2 iters_per_step: 20 retrain_iters: 20
        layer { name: "conv1" kind: FILTER keep_ratio: 0.5 }
        layer { name: "conv2" kind: FILTER keep_ratio: 0.5 }
    """)
    out = str(tmp_path / "run")
    # --check first: in seconds, nothing written but its --json, the compacted
    # net the run then gets (filter counts fix the shapes here)
    res = run("prune", "--check", "--solver", tiny_trained["solver"], "--weights",
              tiny_trained["weights"], "--config", config, "--json", str(tmp_path / "check.json"))
    assert res.returncode == 0, res.stderr
    assert "conv1        filter               4/8       9/9 8x1x3x3          4x1x3x3" in res.stdout
    assert "compacted: params 1160 -> 436 (2.66x)" in res.stdout
    assert sorted(os.listdir(tmp_path)) == ["c.prototxt", "check.json"]
    res = run("prune", "--solver", tiny_trained["solver"], "--weights", tiny_trained["weights"],
              "--config", config, "--out", out, "--quiet")
    assert res.returncode == 0, res.stderr
    assert "conv1      filter" in res.stdout and "after_retrain" in res.stdout
    res = run("compact", "--model", tiny_trained["net"], "--weights",
              os.path.join(out, "pruned.caffemodel"), "--out", os.path.join(out, "compact"))
    assert res.returncode == 0, res.stderr
    assert "conv1      8x1x3x3            4x1x3x3" in res.stdout
    with open(tmp_path / "check.json") as f:
        check = json.load(f)
    with open(os.path.join(out, "compact", "plan.json")) as f:
        plan = json.load(f)
    for key in ("compact_shape", "compact_params", "compact_flops"):
        assert {n: l[key] for n, l in check["layers"].items()} == \
            {n: l[key] for n, l in plan["layers"].items()}
    res = run("test", "--model", os.path.join(out, "compact", "compact.prototxt"),
              "--weights", os.path.join(out, "compact", "compact.caffemodel"))
    assert res.returncode == 0 and "accuracy" in res.stdout, res.stderr
    res = run("report", out, "--out", str(tmp_path / "rep"))
    assert res.returncode == 0, res.stderr
    assert os.path.exists(tmp_path / "rep" / "accuracy_vs_compression.png")


def test_bad_config_exits_2_naming_file_and_line(tmp_path, tiny_trained):
    config = write(tmp_path / "bad.prototxt", """
        admm_steps: 2
        layer { name: "conv7" keep_ratio: 0.5 }
    """)
    res = run("prune", "--solver", tiny_trained["solver"], "--weights", tiny_trained["weights"],
              "--config", config, "--out", str(tmp_path / "run"))
    assert res.returncode == 2
    assert "bad.prototxt:3: layer 'conv7', field name: no layer 'conv7'" in res.stderr
    assert not os.path.exists(tmp_path / "run")   # nothing started


def test_prune_check_names_a_net_compaction_refuses_and_exits_1(tmp_path, tiny_data):
    from conftest import TINY_NET, write_tiny
    solver_path, net_path = write_tiny(tmp_path, tiny_data, net=TINY_NET.replace(
        "inner_product_param { num_output: 4",
        "inner_product_param { num_output: 4 transpose: true"))
    weights = str(tmp_path / "w.caffemodel")
    caffe.Net(net_path, caffe.TEST).save(weights)
    config = write(tmp_path / "c.prototxt", 'layer { name: "conv1" kind: FILTER keep_ratio: 0.5 }')
    res = run("prune", "--check", "--solver", solver_path, "--weights", weights,
              "--config", config)
    assert res.returncode == 1, res.stderr
    assert ("compaction would refuse this net: layer 'ip1': InnerProduct with transpose: true"
            in res.stdout)
    assert "conv1        filter               4/8       9/9 8x1x3x3          ?" in res.stdout
    # and the run's own arguments are still required without --check
    res = run("prune", "--solver", solver_path, "--weights", weights, "--config", config)
    assert res.returncode == 2 and "prune needs --out (the run directory), unless --check" \
        in res.stderr
    res = run("prune", "--solver", solver_path, "--weights", weights, "--config", config,
              "--out", str(tmp_path / "r"), "--json", str(tmp_path / "j.json"))
    assert res.returncode == 2 and "--json goes with --check" in res.stderr
    assert not os.path.exists(tmp_path / "r") and not os.path.exists(tmp_path / "j.json")


def test_compact_refusal_exits_2(tmp_path):
    model = write(tmp_path / "t.prototxt", TILE_NET.replace(
        'type: "Tile" bottom: "c1" top: "t" tile_param { tiles: 2 }',
        'type: "InnerProduct" bottom: "c1" top: "t" inner_product_param { num_output: 32 '
        'transpose: true }'))
    weights = str(tmp_path / "w.caffemodel")
    caffe.Net(model, caffe.TEST).save(weights)
    res = run("compact", "--model", model, "--weights", weights, "--out", str(tmp_path / "o"))
    assert res.returncode == 2
    assert "layer 'tile': InnerProduct with transpose: true" in res.stderr


def test_an_out_directory_blocked_by_a_file_is_named(tmp_path):
    model = os.path.join(ROOT, "prototxt", "lenet_deploy.prototxt")
    weights = str(tmp_path / "w.caffemodel")
    sparse_weights(model, weights)
    write(tmp_path / "afile", "")
    for out, why in (("afile", "File exists"), ("afile/sub", "Not a directory")):
        res = run("compact", "--model", model, "--weights", weights,
                  "--out", str(tmp_path / out))
        assert res.returncode == 2
        assert res.stderr == ("caffe-admm: error: cannot make the directory %s: a file is in "
                              "the way (%s)\n" % (tmp_path / out, why))


def test_ctrl_c_says_what_happens_next(monkeypatch, capsys):
    from caffe_admm import cli, compact, solver

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(compact, "compact", interrupted)
    monkeypatch.setattr(solver, "train", interrupted)
    assert cli.main(["compact", "--model", "m", "--weights", "w", "--out", "o"]) == 130
    assert "nothing was left half-written" in capsys.readouterr().err
    assert cli.main(["train", "--solver", "s", "--out", "o"]) == 130
    assert "resumes from its last checkpoint" in capsys.readouterr().err
    from caffe_admm import sensitivity
    monkeypatch.setattr(sensitivity, "scan_saved", interrupted)
    assert cli.main(["sensitivity", "--model", "m", "--weights", "w", "--json", "s.json"]) == 130
    assert "s.json holds the layers scanned so far" in capsys.readouterr().err
    monkeypatch.setattr(solver, "check", interrupted)  # writes nothing: nothing to resume
    assert cli.main(["prune", "--check", "--solver", "s", "--weights", "w",
                     "--config", "c"]) == 130
    assert "nothing was left half-written" in capsys.readouterr().err


def test_data_refuses_to_overwrite(tmp_path):
    (tmp_path / "mnist_train_lmdb").mkdir()
    res = run("data", "mnist", "--out", str(tmp_path))
    assert res.returncode == 2 and "--overwrite" in res.stderr


def test_lmdb_converts_npy_and_idx(tmp_path):
    import numpy as np
    from caffe_admm.data import read_lmdb
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    np.save(tmp_path / "x.npy", images)
    np.save(tmp_path / "y.npy", np.array([7, 9]))
    res = run("lmdb", "--images", str(tmp_path / "x.npy"), "--labels", str(tmp_path / "y.npy"),
              "--out", str(tmp_path / "db"))
    assert res.returncode == 0, res.stderr
    back, labels = read_lmdb(str(tmp_path / "db"))
    np.testing.assert_array_equal(back[:, 0], images)
    assert labels.tolist() == [7, 9]
    res = run("lmdb", "--images", "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz",
              "--labels", "/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz",
              "--out", str(tmp_path / "fashion"))
    assert res.returncode == 0 and "10000 records (28x28)" in res.stdout, res.stderr


def test_gpu_on_a_cpu_only_build_is_refused_before_caffe_aborts(tmp_path):
    res = run("--gpu", "0", "test", "--model", "x.prototxt", "--weights", "x.caffemodel")
    assert res.returncode == 2
    assert "CPU-only" in res.stderr


def test_clean_makes_a_fork_net_readable_and_names_what_it_left_out(tmp_path):
    from test_protoio import FORK_NET
    fork = write(tmp_path / "fork.prototxt", FORK_NET)
    res = run("compact", "--model", fork, "--weights", "w.caffemodel", "--out", str(tmp_path))
    assert res.returncode == 2 and "caffe-admm clean --model %s --out NEW" % fork in res.stderr
    res = run("clean", "--model", fork, "--out", fork)
    assert res.returncode == 2 and "--out is the input file" in res.stderr
    clean = str(tmp_path / "clean.prototxt")
    res = run("clean", "--model", fork, "--out", clean)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [
        "%s:4: left out caffe.ParamSpec.kernel_shape_decay_mult" % fork,
        "%s:4: left out caffe.ParamSpec.breadth_decay_mult" % fork,
        "%s:5: left out caffe.LayerParameter.connectivity_mode" % fork,
        "%s:6: left out caffe.LayerParameter.group_sparsity" % fork,
        "wrote %s (4 fields left out)" % clean]


def test_an_senet_with_axpy_is_cleaned_then_compacted(tmp_path):
    """SENet's Axpy (a * X + Y) into stock layers; then the residual channel 1,
    whose filters c and proj both zero, goes with up's gate filter for it."""
    import numpy as np
    from test_compact import random_params
    from test_protoio import SE_AXPY_NET
    fork = write(tmp_path / "se.prototxt", SE_AXPY_NET)
    stock = str(tmp_path / "stock.prototxt")
    res = run("clean", "--model", fork, "--out", stock)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [
        "%s:14: rewrote layer 'sum' (Axpy) into 'sum/factor' (Flatten), 'sum/scale' (Scale), "
        "'sum' (Eltwise)" % fork, "wrote %s (0 fields left out, 1 layer rewritten)" % stock]
    net = caffe.Net(stock, caffe.TEST)
    random_params(net)
    for layer in ("c", "proj"):
        for b in net.params[layer]:
            b.data[1] = 0
    weights = str(tmp_path / "w.caffemodel")
    net.save(weights)
    res = run("compact", "--model", stock, "--weights", weights, "--out", str(tmp_path / "out"))
    assert res.returncode == 0, res.stderr
    small = caffe.Net(str(tmp_path / "out" / "compact.prototxt"), caffe.TEST)
    assert [small.params[n][0].data.shape[0] for n in ("c", "proj", "up")] == [3, 3, 3]
    assert np.all(small.params["down"][0].data.shape == (2, 3, 1, 1))


@pytest.mark.parametrize("args, message", [
    (["time", "--batch", "1", "-2"], "argument --batch: -2: give 1 or more"),  # Caffe aborts
    (["time", "--batch", "0"], "argument --batch: 0: give 1 or more"),
    (["time", "--batch", "x"], "argument --batch: 'x' is not an integer"),
    (["time", "--repeats", "0"], "argument --repeats: 0: give 1 or more"),
    (["time", "--iterations", "0"], "argument --iterations: 0: give 1 or more"),
    (["train", "--iters", "-1"], "argument --iters: -1: give 1 or more"),
    (["test", "--iters", "0"], "argument --iters: 0: give 1 or more"),
    (["sensitivity", "--bn-batches", "-1"], "argument --bn-batches: -1: give 0 or more"),
    (["sensitivity", "--max-drop", "nan"], "argument --max-drop: nan: give 0 or more"),
    (["retrain", "--iters", "-5"], "argument --iters: -5: give 0 or more"),
    (["compact", "--tolerance", "-0.001"], "argument --tolerance: -0.001: give 0 or more"),
    (["--gpu", "-1", "test"], "argument --gpu: -1: give 0 or more"),
])
def test_counts_out_of_range_are_refused_naming_the_option(args, message, capsys):
    """Before anything is read: a negative batch size aborts Caffe, and a
    count of 0 trained, tested or timed nothing and said nothing."""
    from caffe_admm import cli
    with pytest.raises(SystemExit) as exc:
        cli.main(args)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_the_library_refuses_the_same_counts(tmp_path):
    from caffe_admm import solver, timing
    lenet = os.path.join(ROOT, "prototxt", "lenet_deploy.prototxt")
    with pytest.raises(ValueError, match="batch size 0, repeats 0: give 1 or more"):
        timing.compare(lenet, None, lenet, "w", batches=(1, 0), repeats=0)
    with pytest.raises(ValueError, match="iterations 0: give 1 or more"):
        timing.write_plan(lenet, lenet, str(tmp_path / "plan"), iterations=0)
    with pytest.raises(solver.RunError, match="0 training iterations: give 1 or more"):
        solver.train("s", str(tmp_path / "t"), iters=0)
    with pytest.raises(solver.RunError, match="-1 retraining iterations: give 0 or more"):
        solver.retrain("s", "w", str(tmp_path / "r"), iters=-1)
    with pytest.raises(solver.RunError, match="-1 TEST batches: give 1 or more"):
        solver.evaluate("n", "w", iters=-1)

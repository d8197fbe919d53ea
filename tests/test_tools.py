"""The build tools' own checks, and the caffe CLI bundle run from its unpacked copy."""

import os
import subprocess
import sys
import tarfile

from conftest import ROOT

TOOLS = os.path.join(ROOT, "tools")


def install(tmp_path, **env):
    return subprocess.run(["bash", os.path.join(TOOLS, "install_caffe.sh"), str(tmp_path / "p"),
                           sys.executable], capture_output=True, text=True,
                          env=dict(os.environ, **env))


def test_cuda_build_refuses_a_toolkit_without_nvcc(tmp_path):
    res = install(tmp_path, CUDA_HOME=str(tmp_path / "nothing"))
    assert res.returncode == 1 and "has no bin/nvcc" in res.stderr
    assert not (tmp_path / "p").exists()


def test_cuda_build_refuses_a_toolkit_without_cudnn(tmp_path):
    nvcc = tmp_path / "cuda" / "bin" / "nvcc"
    nvcc.parent.mkdir(parents=True)
    nvcc.write_text("#!/bin/sh\n")
    nvcc.chmod(0o755)
    res = install(tmp_path, CUDA_HOME=str(tmp_path / "cuda"))
    assert res.returncode == 1 and "no cuDNN" in res.stderr


def test_cuda_patch_touches_only_cuda_code():
    with open(os.path.join(TOOLS, "patches", "caffe-cuda13-cudnn9.patch")) as f:
        files = [l.split()[1] for l in f if l.startswith("+++ ")]
    assert files == ["b/include/caffe/util/cudnn.hpp",
                     "b/include/caffe/layers/cudnn_conv_layer.hpp", "b/src/caffe/common.cpp",
                     "b/src/caffe/layers/cudnn_conv_layer.cpp",
                     "b/src/caffe/layers/cudnn_deconv_layer.cpp", "b/cmake/Cuda.cmake"]
    with open(os.path.join(TOOLS, "patches", "caffe-cudnn-find.patch")) as f:
        files = [l.split()[1] for l in f if l.startswith("+++ ")]
    assert files == ["b/include/caffe/util/cudnn.hpp", "b/src/caffe/layers/cudnn_conv_layer.cpp"]


def test_bundled_caffe_cli_runs_from_its_own_directory(tmp_path):
    from caffe_admm.backend import caffe  # the prefix pycaffe (and bin/caffe) came from
    prefix = os.path.normpath(os.path.join(os.path.dirname(caffe.__file__), "..", "..", "..", ".."))
    out = tmp_path / "caffe.tar.xz"
    res = subprocess.run(["bash", os.path.join(TOOLS, "bundle_caffe_cli.sh"), prefix, str(out)],
                         capture_output=True, text=True, env=dict(os.environ, XZ_OPT="-0"))
    assert res.returncode == 0, res.stderr
    with tarfile.open(str(out)) as tar:
        names = set(tar.getnames())
        tar.extractall(str(tmp_path / "x"))
    assert {"./bin/caffe", "./lib/libcaffe.so.1.0.0", "./lib/libglog.so.1"} <= names
    assert not {n for n in names if "/libc.so" in n or "libstdc++" in n}
    model = os.path.join(ROOT, "prototxt", "lenet_deploy.prototxt")
    res = subprocess.run([str(tmp_path / "x" / "bin" / "caffe"), "time", "-model", model,
                          "-iterations", "1", "-phase", "TEST"], capture_output=True, text=True,
                         env=dict(os.environ, LD_LIBRARY_PATH=str(tmp_path / "x" / "lib"),
                                  GLOG_minloglevel="0"))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "Average Forward pass" in res.stderr


def test_setup_with_another_cache_builds_and_links_that_one(tmp_path):
    # `make -n` prints the recipes it would run without running them; the
    # project's own build is current (make test set it up)
    def planned(*args):
        res = subprocess.run(["make", "-n", "setup"] + list(args), cwd=ROOT,
                             capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        return [line for line in res.stdout.splitlines()
                if "install_caffe.sh" in line or "link_caffe.sh" in line]
    assert planned() == []
    other = planned("CACHE=%s" % tmp_path)
    assert len(other) == 2
    assert all(line.split()[1].startswith(str(tmp_path) + "/caffe") for line in other)
    assert os.listdir(str(tmp_path)) == []  # nothing built or written by -n

"""The one place that imports pycaffe.

Sets Caffe's log level (``GLOG_minloglevel``, default 2: errors only) before
libcaffe is loaded, and selects CPU or GPU mode. Every module that needs Caffe
does ``from caffe_admm.backend import caffe``.
"""

import os

os.environ.setdefault("GLOG_minloglevel", "2")

try:
    import caffe  # noqa: E402
    from caffe.proto import caffe_pb2  # noqa: E402
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "pycaffe is not importable (%s). Run `make setup` to build Caffe into "
        "the project's virtual environment, and use .venv/bin/python." % exc) from exc

__all__ = ["caffe", "caffe_pb2", "set_mode", "has_gpu_build"]


def has_gpu_build():
    """Whether the loaded libcaffe was built with CUDA (it then maps libcudart)."""
    try:
        with open("/proc/self/maps") as f:
            return "libcudart" in f.read()
    except OSError:  # pragma: no cover - non-Linux
        return False


def set_mode(gpu=None):
    """Select Caffe's compute mode.

    Parameters
    ----------
    gpu : int or None
        GPU device id, or None for CPU mode.
    """
    if gpu is None:
        caffe.set_mode_cpu()
    elif not has_gpu_build():
        raise ValueError("--gpu %s: this Caffe build is CPU-only (tools/install_caffe.sh builds "
                         "with CPU_ONLY=ON, as no CUDA toolkit comes from Debian's archive "
                         "here); run without --gpu" % gpu)
    else:
        caffe.set_device(int(gpu))
        caffe.set_mode_gpu()

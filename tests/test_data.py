"""Data sets from packages and Caffe LMDB conversion."""

import gzip
import os
import struct

import numpy as np
import pytest

from caffe_admm import data


def test_lmdb_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (37, 3, 5, 4), dtype=np.uint8)
    labels = rng.integers(0, 1000, 37)
    path = data.write_lmdb(str(tmp_path / "new" / "dir" / "db"), images, labels)  # parents made
    back_images, back_labels = data.read_lmdb(path)
    np.testing.assert_array_equal(back_images, images)
    np.testing.assert_array_equal(back_labels, labels)


def test_lmdb_keys_follow_convert_mnist_data(tmp_path):
    import lmdb
    path = data.write_lmdb(str(tmp_path / "db"), np.zeros((3, 2, 2), np.uint8), [0, 1, 2])
    env = lmdb.open(path, readonly=True, lock=False)
    with env.begin() as txn:
        assert [k for k, _ in txn.cursor()] == [b"00000000", b"00000001", b"00000002"]
    env.close()


def test_lmdb_refuses_to_overwrite_unless_told(tmp_path):
    path = str(tmp_path / "db")
    data.write_lmdb(path, np.zeros((2, 2, 2), np.uint8), [0, 1])
    with pytest.raises(FileExistsError, match="overwrite"):
        data.write_lmdb(path, np.ones((2, 2, 2), np.uint8), [1, 0])
    data.write_lmdb(path, np.ones((4, 2, 2), np.uint8), [1, 0, 1, 0], overwrite=True)
    images, labels = data.read_lmdb(path)
    assert images.shape == (4, 1, 2, 2) and labels.tolist() == [1, 0, 1, 0]
    assert sorted(os.listdir(tmp_path)) == ["db"]


def test_interrupted_write_leaves_nothing_behind(tmp_path, monkeypatch):
    images = np.zeros((3, 1, 2, 2), np.uint8)

    class Interrupting:
        """Images whose third item raises, like a Ctrl-C midway through a write."""
        shape = images.shape

        def __getitem__(self, i):
            if i == 2:
                raise KeyboardInterrupt("simulated Ctrl-C")
            return images[i]

    monkeypatch.setattr(data, "_as_nchw", lambda _: Interrupting())
    with pytest.raises(KeyboardInterrupt):
        data.write_lmdb(str(tmp_path / "db"), images, [0, 1, 2])
    assert os.listdir(tmp_path) == []


def test_bad_shapes_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        data.write_lmdb(str(tmp_path / "a"), np.zeros((2, 2, 2), np.float32), [0, 1])
    with pytest.raises(ValueError, match=r"labels must have shape \(2,\)"):
        data.write_lmdb(str(tmp_path / "b"), np.zeros((2, 2, 2), np.uint8), [0, 1, 2])


def test_read_idx_gz_and_errors(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    raw = struct.pack(">BBBB3I", 0, 0, 0x08, 3, 2, 3, 4) + arr.tobytes()
    path = str(tmp_path / "x-idx3-ubyte.gz")
    with gzip.open(path, "wb") as f:
        f.write(raw)
    np.testing.assert_array_equal(data.read_idx(path), arr)
    bad = str(tmp_path / "bad")
    with open(bad, "wb") as f:
        f.write(raw[:-1])
    with pytest.raises(ValueError, match="bytes follow"):
        data.read_idx(bad)


def test_packaged_mnist_and_fashion_mnist_are_complete():
    for name in data.DATASETS:
        arrays = data.load_dataset(name)
        assert arrays["train_images"].shape == (60000, 28, 28)
        assert arrays["test_images"].shape == (10000, 28, 28)
        assert arrays["train_labels"].shape == (60000,)
        assert sorted(np.unique(arrays["test_labels"]).tolist()) == list(range(10))
        assert arrays["train_images"].dtype == np.uint8
    # MNIST's first training labels, as in every copy of the data set
    assert data.load_mnist()["train_labels"][:5].tolist() == [5, 0, 4, 1, 9]
    with pytest.raises(ValueError, match="unknown data set"):
        data.load_dataset("cifar")

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from lmc import data
from lmc.data.idx import read_idx
from lmc.errors import UserError

FASHION = Path("/usr/share/datasets/fashion-mnist")


def test_batch_is_pure_function_of_seed_and_step():
    a = data.batch_indices(3, 17, 32, 1000)
    b = data.batch_indices(3, 17, 32, 1000)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, data.batch_indices(4, 17, 32, 1000))
    assert not np.array_equal(a, data.batch_indices(3, 18, 32, 1000))


def test_every_epoch_is_a_permutation():
    n, bs = 100, 10
    for epoch in range(3):
        seen = np.concatenate([data.batch_indices(0, epoch * 10 + i, bs, n) for i in range(10)])
        np.testing.assert_array_equal(np.sort(seen), np.arange(n))
    e0 = data.epoch_permutation(0, 0, n)
    e1 = data.epoch_permutation(0, 1, n)
    assert not np.array_equal(e0, e1)


def test_process_shares_tile_the_global_batch():
    full = data.batch_indices(1, 5, 16, 200)
    shares = [data.process_batch_indices(1, 5, 16, 200, p, 4) for p in range(4)]
    np.testing.assert_array_equal(np.concatenate(shares), full)
    with pytest.raises(UserError, match="divisible"):
        data.process_batch_indices(1, 5, 18, 200, 0, 4)


def test_digits_fixed_split():
    ds = data.load("digits")
    assert ds.train_x.shape == (1500, 8, 8, 1) and ds.test_x.shape == (297, 8, 8, 1)
    assert ds.num_classes == 10 and ds.train_x.dtype == np.float32
    np.testing.assert_array_equal(ds.train_y, data.load("digits").train_y)


def test_synthetic_deterministic():
    a, b = data.load("synthetic"), data.load("synthetic")
    np.testing.assert_array_equal(a.train_x, b.train_x)


def _write_idx(path: Path, array: np.ndarray, magic_type=0x08, truncate=0):
    header = bytes([0, 0, magic_type, array.ndim]) + struct.pack(
        ">" + "I" * array.ndim, *array.shape
    )
    raw = header + array.astype(np.uint8).tobytes()
    with gzip.open(path, "wb") as f:
        f.write(raw[: len(raw) - truncate])


def _fake_mnist(directory: Path, n_train=20, n_test=10, label_count=None):
    rng = np.random.default_rng(0)
    _write_idx(directory / "train-images-idx3-ubyte.gz", rng.integers(0, 255, (n_train, 28, 28)))
    _write_idx(
        directory / "train-labels-idx1-ubyte.gz", rng.integers(0, 10, (label_count or n_train,))
    )
    _write_idx(directory / "t10k-images-idx3-ubyte.gz", rng.integers(0, 255, (n_test, 28, 28)))
    _write_idx(directory / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, (n_test,)))


def test_idx_reader_on_generated_files(tmp_path):
    _fake_mnist(tmp_path)
    ds = data.load("mnist", str(tmp_path))
    assert ds.train_x.shape == (20, 28, 28, 1) and ds.test_y.shape == (10,)


@pytest.mark.parametrize(
    "damage, message",
    [
        ("truncate", "truncated"),
        ("magic", "magic"),
        ("labels", "labels"),
        ("empty_dir", "no train-images"),
    ],
)
def test_idx_bad_files_give_clear_errors(tmp_path, damage, message):
    if damage == "empty_dir":
        pass
    elif damage == "labels":
        _fake_mnist(tmp_path, label_count=19)
    else:
        _fake_mnist(tmp_path)
        path = tmp_path / "train-images-idx3-ubyte.gz"
        arr = np.zeros((20, 28, 28))
        if damage == "truncate":
            _write_idx(path, arr, truncate=100)
        else:
            _write_idx(path, arr, magic_type=0x42)
    with pytest.raises(UserError, match=message):
        data.load("kmnist", str(tmp_path))


def test_missing_directory_says_how_to_get_it(tmp_path):
    with pytest.raises(UserError, match="apt-get install dataset-fashion-mnist"):
        data.load("fashion_mnist", str(tmp_path / "nope"))


def test_unknown_dataset_lists_valid_ones():
    with pytest.raises(UserError, match="valid datasets: digits"):
        data.load("imagenet")


def test_read_idx_raw(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "x.gz", arr)
    np.testing.assert_array_equal(read_idx(tmp_path / "x.gz"), arr)


@pytest.mark.skipif(
    not FASHION.is_dir(), reason="Debian package dataset-fashion-mnist not installed"
)
def test_fashion_mnist_from_debian_package():
    ds = data.load("fashion_mnist")
    assert ds.train_x.shape == (60000, 28, 28, 1) and ds.test_x.shape == (10000, 28, 28, 1)
    assert set(np.unique(ds.train_y)) == set(range(10))


def _fake_cifar(directory: Path, per_batch=8):
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            b"data": rng.integers(0, 255, (per_batch, 3072), dtype=np.uint8),
            b"labels": list(rng.integers(0, 10, per_batch)),
        }
        with open(directory / name, "wb") as f:
            pickle.dump(batch, f)


def test_cifar_pickle_batches(tmp_path):
    _fake_cifar(tmp_path)
    ds = data.load("cifar10", str(tmp_path))
    assert ds.train_x.shape == (40, 32, 32, 3) and ds.test_x.shape == (8, 32, 32, 3)
    assert ds.augmentable


def test_cifar_channel_layout(tmp_path):
    # The pickle stores R plane, G plane, B plane; NHWC must put them on the last axis.
    data_row = np.concatenate([np.full(1024, 10), np.full(1024, 20), np.full(1024, 30)])
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(tmp_path / name, "wb") as f:
            pickle.dump(
                {b"data": np.stack([data_row, data_row * 2]).astype(np.uint8), b"labels": [0, 1]}, f
            )
    from lmc.data.cifar import _read

    x, _ = _read(tmp_path / "test_batch", b"labels")
    np.testing.assert_array_equal(x[0, 5, 7], [10, 20, 30])


def test_cifar_missing_files(tmp_path):
    with pytest.raises(UserError, match="data_batch_1"):
        data.load("cifar10", str(tmp_path))


def test_augmentation_is_keyed_and_shape_preserving():
    import jax

    x = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype(np.float32)
    a = data.crop_and_flip(jax.random.key(0), x)
    b = data.crop_and_flip(jax.random.key(0), x)
    c = data.crop_and_flip(jax.random.key(1), x)
    assert a.shape == x.shape
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_tfds_source_reads_prepared_dataset_without_tensorflow():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=12):
        ds = data.load("tfds:mnist")
    assert ds.train_x.shape == (12, 28, 28, 1) and ds.num_classes == 10


def test_tfds_unprepared_dataset_explains_preparation(tmp_path):
    with pytest.raises(UserError, match="download_and_prepare"):
        data.load("tfds:mnist", str(tmp_path))

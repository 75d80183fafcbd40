"""Loaders on the embedded digits and on small files the tests write themselves."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from gainsearch.batteries.data import DataError, TensorData, load_dataset, read_idx

MNIST5K = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist5k"


def write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    magic = 2051 if array.ndim == 3 else 2049
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    if compress:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)


def write_mnist(folder: Path, n_train: int = 30, n_test: int = 10, compress: bool = True) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    write_idx(folder / "train-images-idx3-ubyte", rng.integers(0, 256, (n_train, 28, 28)), compress)
    write_idx(folder / "train-labels-idx1-ubyte", np.arange(n_train) % 10, compress)
    write_idx(folder / "t10k-images-idx3-ubyte", rng.integers(0, 256, (n_test, 28, 28)), compress)
    write_idx(folder / "t10k-labels-idx1-ubyte", np.arange(n_test) % 10, compress)


def test_digits_is_merged_and_normalised_on_train(digits: TensorData) -> None:
    assert digits.x_train.shape == (1437, 1, 8, 8) and digits.x_test.shape == (360, 1, 8, 8)
    assert digits.x_train.dtype == torch.float32 and digits.y_train.dtype == torch.int64
    assert digits.num_classes == 10 and digits.in_shape == (1, 8, 8)
    assert digits.x_train.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert digits.x_train.std().item() == pytest.approx(1.0, abs=1e-3)
    # the test split uses the training statistics, so it is not exactly standardised
    assert digits.x_test.mean().item() != pytest.approx(0.0, abs=1e-5)
    assert torch.bincount(digits.y_test).min() >= 35  # stratified


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize("sub", ["", "MNIST/raw", "raw"])
def test_mnist_idx_layouts(tmp_path: Path, compress: bool, sub: str) -> None:
    write_mnist(tmp_path / sub if sub else tmp_path, compress=compress)
    data = load_dataset("mnist", tmp_path)
    assert data.x_train.shape == (30, 1, 28, 28) and data.x_test.shape == (10, 1, 28, 28)
    assert data.y_train.tolist() == [i % 10 for i in range(30)]
    assert data.x_train.mean(dim=(0, 2, 3)).abs().max().item() < 1e-4
    assert data.summary()["train"] == 30


def test_fashion_mnist_uses_the_same_layout(tmp_path: Path) -> None:
    write_mnist(tmp_path / "FashionMNIST" / "raw")
    assert load_dataset("fashion_mnist", tmp_path).name == "fashion_mnist"


def test_missing_folder_says_where_and_how(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no MNIST IDX files in .*empty.*train-images-idx3-ubyte"):
        load_dataset("mnist", tmp_path / "empty")
    with pytest.raises(DataError, match=r"--download"):
        load_dataset("mnist", tmp_path / "empty")
    with pytest.raises(DataError, match=r"mnist is read from disk: pass its folder as root="):
        load_dataset("mnist")


def test_unknown_dataset_lists_the_known() -> None:
    with pytest.raises(ValueError, match=r"Unknown dataset 'imagenet'.*'cifar10'.*'digits'"):
        load_dataset("imagenet")


def test_truncated_and_wrong_idx_files(tmp_path: Path) -> None:
    write_mnist(tmp_path, compress=False)
    images = tmp_path / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"truncated or corrupt"):
        load_dataset("mnist", tmp_path)
    images.write_bytes(b"\x00\x00\x0d\x03" + b"\x00" * 20)
    with pytest.raises(DataError, match=r"not an MNIST IDX file of unsigned bytes"):
        read_idx(images)
    bad_gz = tmp_path / "x.gz"
    bad_gz.write_bytes(b"not gzip")
    with pytest.raises(DataError, match=r"cannot read IDX file"):
        read_idx(bad_gz)


def test_mismatched_image_and_label_counts(tmp_path: Path) -> None:
    write_mnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.arange(7) % 10, True)
    with pytest.raises(DataError, match=r"train images and labels do not match"):
        load_dataset("mnist", tmp_path)


def write_cifar(folder: Path, per_batch: int = 4) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            b"data": rng.integers(0, 256, (per_batch, 3 * 32 * 32), dtype=np.uint8),
            b"labels": [int(v) for v in rng.integers(0, 10, per_batch)],
        }
        (folder / name).write_bytes(pickle.dumps(batch))


def test_cifar10_layout(tmp_path: Path) -> None:
    write_cifar(tmp_path / "cifar-10-batches-py")
    data = load_dataset("cifar10", tmp_path)
    assert data.x_train.shape == (20, 3, 32, 32) and data.x_test.shape == (4, 3, 32, 32)
    assert len(data.mean) == 3


class _Evil:
    def __reduce__(self) -> tuple:
        # eval, not print: a process that has run Ray has builtins.print replaced by Ray's own
        return (eval, ("print('pwned')",))


def test_cifar10_refuses_pickles_that_run_code(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar(folder)
    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": _Evil(), b"labels": []}))
    with pytest.raises(DataError, match=r"refusing to load builtins.eval"):
        load_dataset("cifar10", tmp_path)


def test_cifar10_missing(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no CIFAR-10 python batches.*data_batch_1"):
        load_dataset("cifar10", tmp_path)


def test_download_without_torchvision_is_a_clear_error(tmp_path: Path) -> None:
    try:
        import torchvision  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        with pytest.raises(DataError, match=r"download=True needs torchvision"):
            load_dataset("mnist", tmp_path, download=True)
    else:  # pragma: no cover - only where torchvision is installed
        pytest.skip("torchvision is installed; downloading would need the network")


@pytest.mark.skipif(not MNIST5K.is_dir(), reason="../shared/data/mnist5k not present")
def test_shared_mnist5k() -> None:
    data = load_dataset("mnist", MNIST5K)
    assert data.x_train.shape == (4000, 1, 28, 28) and data.x_test.shape == (1000, 1, 28, 28)
    assert torch.bincount(data.y_train).tolist() == [400] * 10

"""Data sets as in-memory tensors, validation merged into training.

gainsearch needs no hold-out validation data: every loader returns the *whole* training set
(the usual validation split merged back in) and a separate test split that is only ever used
for reporting, never for a decision. Images are ``float32 (N, C, H, W)`` normalised per channel
with the mean and standard deviation of the training split.

=================  =========================================================================
name               source
=================  =========================================================================
``digits``         ``sklearn.datasets.load_digits`` (8x8, ships with scikit-learn); a fixed
                   stratified 80/20 train/test split (``random_state=0``). The default.
``mnist``          MNIST IDX files (``train-images-idx3-ubyte[.gz]`` ...) in ``root``,
                   ``root/MNIST/raw`` or ``root/raw``. ``../shared/data/mnist5k`` is one.
``fashion_mnist``  the same IDX layout (``root/FashionMNIST/raw`` also searched).
``cifar10``        ``root/cifar-10-batches-py`` (or ``root`` itself): ``data_batch_1..5``,
                   ``test_batch``.
``npz``            your own data: ``root`` is a ``.npz`` file with ``x_train``, ``y_train``,
                   ``x_test``, ``y_test`` (images ``(N, C, H, W)`` or ``(N, H, W)``, integer
                   labels ``0..K-1``).
``image_folder``   your own images: ``root/train/<class>/*`` and ``root/test/<class>/*``,
                   read with Pillow, resized to ``image_size`` when given.
=================  =========================================================================

``download=True`` fetches MNIST, Fashion-MNIST or CIFAR-10 into ``root`` with torchvision
(``pip install gainsearch[vision]``); nothing is ever downloaded unless asked.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

__all__ = ["DATASETS", "DataError", "TensorData", "load_dataset", "read_idx"]


class DataError(ValueError):
    """A data set cannot be found or read; the message says where and how to get it."""


@dataclass(frozen=True)
class TensorData:
    """A data set held in memory.

    Attributes:
        name: Data set name.
        x_train: ``(N, C, H, W)`` float32, normalised; the full training set (validation merged).
        y_train: ``(N,)`` int64 labels.
        x_test: ``(M, C, H, W)`` float32, normalised with the training statistics. Reporting only.
        y_test: ``(M,)`` int64.
        num_classes: Number of classes ``K``.
        mean: Per-channel mean of the raw training images (the normalisation), length ``C``.
        std: Per-channel standard deviation of the raw training images, length ``C``.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def in_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        c, h, w = self.x_train.shape[1:]
        return int(c), int(h), int(w)

    def summary(self) -> dict[str, Any]:
        """Sizes and normalisation, for the resolved configuration."""
        return {
            "name": self.name,
            "train": int(self.x_train.shape[0]),
            "test": int(self.x_test.shape[0]),
            "in_shape": list(self.in_shape),
            "num_classes": self.num_classes,
            "mean": list(self.mean),
            "std": list(self.std),
        }


def load_dataset(
    name: str,
    root: str | Path | None = None,
    *,
    download: bool = False,
    image_size: int | None = None,
) -> TensorData:
    """Load a data set by name (see the module docstring for the layouts).

    Args:
        name: One of :data:`DATASETS`.
        root: Folder holding the files (not needed for ``digits``).
        download: Fetch the files into ``root`` with torchvision if they are missing.
        image_size: ``image_folder`` only: resize every image to this square size.

    Raises:
        ValueError: unknown ``name``.
        DataError: missing or malformed files; the message says where they must be.
    """
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; available datasets are {sorted(DATASETS)}.")
    if name == "image_folder":
        return _load_image_folder(root, image_size)
    return DATASETS[name](root, download)


# --------------------------------------------------------------------------------------------


def _finish(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
) -> TensorData:
    """uint8/float (N, C, H, W) arrays -> normalised float32 tensors (train statistics)."""
    train = torch.from_numpy(np.array(x_train, dtype=np.float32))  # copy: inputs may be read-only
    test = torch.from_numpy(np.array(x_test, dtype=np.float32))
    mean = train.mean(dim=(0, 2, 3))  # (C,)
    std = train.std(dim=(0, 2, 3)).clamp_min(1e-8)  # (C,)
    train = (train - mean[None, :, None, None]) / std[None, :, None, None]
    test = (test - mean[None, :, None, None]) / std[None, :, None, None]
    labels = torch.from_numpy(np.array(y_train, dtype=np.int64))
    test_labels = torch.from_numpy(np.array(y_test, dtype=np.int64))
    num_classes = int(max(labels.max().item(), test_labels.max().item()) + 1)
    return TensorData(
        name=name,
        x_train=train,
        y_train=labels,
        x_test=test,
        y_test=test_labels,
        num_classes=num_classes,
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
    )


def _load_digits(root: str | Path | None, download: bool) -> TensorData:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = bunch.images.astype(np.float32)[:, None, :, :]  # (1797, 1, 8, 8), values 0..16
    x_train, x_test, y_train, y_test = train_test_split(
        images, bunch.target, test_size=0.2, random_state=0, stratify=bunch.target
    )
    return _finish("digits", x_train, y_train, x_test, y_test)


# -- MNIST IDX ---------------------------------------------------------------------------------

_IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one MNIST IDX file (raw or ``.gz``): magic 2049 (labels) or 2051 (images).

    Raises:
        DataError: not an IDX file of unsigned bytes, or truncated.
    """
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise DataError(f"cannot read IDX file {path}: {err}") from err
    if len(raw) < 8:
        raise DataError(f"{path} is too short ({len(raw)} bytes) to be an MNIST IDX file.")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08 or ndim not in (1, 3):
        raise DataError(
            f"{path} is not an MNIST IDX file of unsigned bytes: magic number "
            f"{struct.unpack('>I', raw[:4])[0]} (expected 2049 for labels or 2051 for images)."
        )
    header = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise DataError(
            f"{path} is truncated or corrupt: header says {dims} = {expected} bytes of data, "
            f"the file has {len(raw) - header}."
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _find_idx(root: Path, subdirs: tuple[str, ...]) -> dict[str, Path] | None:
    for folder in (root, *(root / s for s in subdirs)):
        found = {}
        for key, stem in _IDX_FILES.items():
            for candidate in (folder / stem, folder / f"{stem}.gz"):
                if candidate.is_file():
                    found[key] = candidate
                    break
        if len(found) == len(_IDX_FILES):
            return found
    return None


def _idx_loader(
    name: str, torchvision_name: str
) -> Callable[[str | Path | None, bool], TensorData]:
    subdirs = (f"{torchvision_name}/raw", "raw")

    def load(root: str | Path | None, download: bool) -> TensorData:
        folder = _require_root(name, root)
        files = _find_idx(folder, subdirs)
        if files is None and download:
            _download(torchvision_name, folder)
            files = _find_idx(folder, subdirs)
        if files is None:
            names = ", ".join(f"{stem}[.gz]" for stem in _IDX_FILES.values())
            raise DataError(
                f"{name}: no MNIST IDX files in {folder} (also looked in "
                f"{', '.join(str(folder / s) for s in subdirs)}). Expected {names}. Get them "
                f"with `gainsearch train --dataset {name} --data-root {folder} --download` "
                "(needs `pip install gainsearch[vision]`) or copy them there; "
                "../shared/data/mnist5k is a 5,000-image MNIST in this layout."
            )
        arrays = {key: read_idx(path) for key, path in files.items()}
        for split in ("train", "test"):
            n_images, n_labels = len(arrays[f"x_{split}"]), len(arrays[f"y_{split}"])
            if arrays[f"x_{split}"].ndim != 3 or n_images != n_labels:
                raise DataError(
                    f"{name}: {split} images and labels do not match in {folder}: "
                    f"{arrays[f'x_{split}'].shape} images, {n_labels} labels."
                )
        return _finish(
            name,
            arrays["x_train"][:, None],
            arrays["y_train"],
            arrays["x_test"][:, None],
            arrays["y_test"],
        )

    return load


# -- CIFAR-10 ---------------------------------------------------------------------------------


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles CIFAR-10 batches only: dicts, lists, bytes and numpy arrays; nothing callable."""

    _ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: a CIFAR-10 batch holds only arrays and lists"
        )


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with path.open("rb") as handle:
            batch = _CifarUnpickler(io.BufferedReader(handle), encoding="bytes").load()  # type: ignore[arg-type]
        data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (OSError, EOFError, KeyError, TypeError, ValueError, pickle.UnpicklingError) as err:
        raise DataError(f"cifar10: cannot read batch {path}: {err}") from err
    if len(data) != len(labels):
        raise DataError(f"cifar10: {path} has {len(data)} images but {len(labels)} labels.")
    return data, labels


def _load_cifar10(root: str | Path | None, download: bool) -> TensorData:
    folder = _require_root("cifar10", root)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]

    def locate() -> Path | None:
        for candidate in (folder / "cifar-10-batches-py", folder):
            if all((candidate / n).is_file() for n in names):
                return candidate
        return None

    batches = locate()
    if batches is None and download:
        _download("CIFAR10", folder)
        batches = locate()
    if batches is None:
        raise DataError(
            f"cifar10: no CIFAR-10 python batches in {folder / 'cifar-10-batches-py'} or "
            f"{folder}. Expected {', '.join(names)}. Get them with `gainsearch train --dataset "
            f"cifar10 --data-root {folder} --download` (needs `pip install gainsearch[vision]`)."
        )
    train = [_read_cifar_batch(batches / n) for n in names[:-1]]
    x_test, y_test = _read_cifar_batch(batches / "test_batch")
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    return _finish("cifar10", x_train, y_train, x_test, y_test)


# -- helpers ----------------------------------------------------------------------------------


def _require_root(name: str, root: str | Path | None) -> Path:
    if root is None:
        raise DataError(
            f"{name} is read from disk: pass its folder as root= (CLI: --data-root DIR). "
            "Only 'digits' is embedded."
        )
    return Path(root).expanduser()


def _download(torchvision_name: str, folder: Path) -> None:
    try:
        import torchvision.datasets as tv_datasets  # type: ignore[import-not-found]
    except ImportError as err:
        raise DataError(
            f"download=True needs torchvision: `pip install gainsearch[vision]` ({err})."
        ) from err
    cls = getattr(tv_datasets, torchvision_name)
    for train in (True, False):
        cls(str(folder), train=train, download=True)


#: Loader for each data set name: ``loader(root, download) -> TensorData``.
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def _load_npz(root: str | Path | None, download: bool) -> TensorData:
    """Your own data: a ``.npz`` file (``data_root``) with ``x_train``, ``y_train``, ``x_test``,
    ``y_test``; images ``(N, C, H, W)`` or ``(N, H, W)``, any numeric type; integer labels in
    ``0..K-1``. Read with ``allow_pickle=False`` (arrays only)."""
    if root is None:
        raise DataError(
            "dataset 'npz' needs data_root: the path of a .npz file with the arrays "
            f"{', '.join(NPZ_KEYS)}."
        )
    path = Path(root)
    if not path.is_file():
        raise DataError(f"data_root {str(path)!r}: no such .npz file (dataset 'npz').")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [k for k in NPZ_KEYS if k not in archive.files]
            if missing:
                raise DataError(
                    f"{path}: missing array(s) {missing}; a dataset 'npz' file holds "
                    f"{', '.join(NPZ_KEYS)} (it has {sorted(archive.files)})."
                )
            arrays = {k: archive[k] for k in NPZ_KEYS}
    except DataError:
        raise
    except Exception as err:  # not a zip, a pickled object array, a truncated file
        raise DataError(
            f"{path}: not a readable .npz of plain arrays ({type(err).__name__}: {err})."
        ) from None
    images = {}
    for key in ("x_train", "x_test"):
        x = arrays[key]
        if x.ndim == 3:
            x = x[:, None, :, :]
        if x.ndim != 4 or not np.issubdtype(x.dtype, np.number):
            raise DataError(
                f"{path}: {key} has shape {arrays[key].shape} and dtype {arrays[key].dtype}; "
                "expected numeric images (N, C, H, W) or (N, H, W)."
            )
        images[key] = x
    if images["x_train"].shape[1:] != images["x_test"].shape[1:]:
        raise DataError(
            f"{path}: x_train images are {images['x_train'].shape[1:]} but x_test images are "
            f"{images['x_test'].shape[1:]}; both splits need one shape."
        )
    for xs, ys in (("x_train", "y_train"), ("x_test", "y_test")):
        y = arrays[ys]
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise DataError(
                f"{path}: {ys} has shape {y.shape} and dtype {y.dtype}; expected integer "
                "labels, one per image."
            )
        if y.shape[0] != images[xs].shape[0]:
            raise DataError(
                f"{path}: {xs} holds {images[xs].shape[0]} images but {ys} {y.shape[0]} labels."
            )
        if y.size and y.min() < 0:
            raise DataError(f"{path}: {ys} has label {int(y.min())}; labels are 0..K-1.")
    k = int(arrays["y_train"].max()) + 1 if arrays["y_train"].size else 0
    if arrays["y_test"].size and int(arrays["y_test"].max()) >= k:
        raise DataError(
            f"{path}: y_test has label {int(arrays['y_test'].max())}, but y_train's classes "
            f"are 0..{k - 1}: every test class must be in the training set."
        )
    if arrays["y_train"].size == 0 or k < 2:
        raise DataError(f"{path}: y_train needs at least two classes, got {k}.")
    return _finish("npz", images["x_train"], arrays["y_train"], images["x_test"], arrays["y_test"])


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def _load_image_folder(root: str | Path | None, image_size: int | None) -> TensorData:
    """Your own images: ``root/train/<class>/*`` and ``root/test/<class>/*`` (one sub-folder per
    class, named as you like; classes are the train folders in sorted order), read with Pillow.
    Every image is resized to ``image_size`` x ``image_size`` when given; otherwise all must
    share one size. Grey images give one channel; any colour image makes every image RGB."""
    try:
        from PIL import Image
    except ImportError as err:  # pragma: no cover - Pillow comes with the plot and dev extras
        raise DataError("dataset 'image_folder' needs Pillow: pip install Pillow") from err
    if root is None:
        raise DataError(
            "dataset 'image_folder' needs data_root: a folder with train/ and test/, one "
            "sub-folder of images per class in each."
        )
    base = Path(root)
    for split in ("train", "test"):
        if not (base / split).is_dir():
            raise DataError(
                f"data_root {str(base)!r}: no {split}/ folder; dataset 'image_folder' reads "
                "train/<class>/* and test/<class>/*."
            )
    classes = sorted(p.name for p in (base / "train").iterdir() if p.is_dir())
    if len(classes) < 2:
        raise DataError(f"{base / 'train'}: needs at least two class folders, found {classes}.")
    unknown = sorted(
        p.name for p in (base / "test").iterdir() if p.is_dir() and p.name not in classes
    )
    if unknown:
        raise DataError(
            f"{base / 'test'}: class folder(s) {unknown} are not in train/ (classes {classes})."
        )
    loaded: dict[str, tuple[list[Any], list[int]]] = {}
    for split in ("train", "test"):
        images, labels = [], []
        for label, name in enumerate(classes):
            folder = base / split / name
            files = (
                sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
                if folder.is_dir()
                else []
            )
            if split == "train" and not files:
                raise DataError(
                    f"{folder}: an empty class folder (no {', '.join(IMAGE_SUFFIXES)} file)."
                )
            for f in files:
                try:
                    with Image.open(f) as im:
                        im.load()
                        image = im.copy()
                except Exception as err:  # PIL raises UnidentifiedImageError, OSError, ...
                    raise DataError(f"{f}: not a readable image ({type(err).__name__}).") from None
                if image_size is not None:
                    image = image.resize((image_size, image_size))
                images.append(image)
                labels.append(label)
        loaded[split] = (images, labels)
    everything = loaded["train"][0] + loaded["test"][0]
    grey = all(im.mode in ("L", "1", "I", "F", "I;16") for im in everything)
    sizes = {im.size for im in everything}
    if len(sizes) > 1:
        raise DataError(
            f"{base}: images of several sizes {sorted(sizes)[:4]}; set image_size to resize "
            "them all to one square size."
        )

    def stack(images: list[Any]) -> np.ndarray:
        arrays = [np.asarray(im.convert("L" if grey else "RGB"), dtype=np.float32) for im in images]
        x = np.stack(arrays) if arrays else np.zeros((0, *next(iter(sizes))[::-1]), np.float32)
        return x[:, None] if grey else x.transpose(0, 3, 1, 2)

    return _finish(
        "image_folder",
        stack(loaded["train"][0]),
        np.asarray(loaded["train"][1]),
        stack(loaded["test"][0]),
        np.asarray(loaded["test"][1]),
    )


DATASETS: dict[str, Callable[[str | Path | None, bool], TensorData]] = {
    "digits": _load_digits,
    "mnist": _idx_loader("mnist", "MNIST"),
    "fashion_mnist": _idx_loader("fashion_mnist", "FashionMNIST"),
    "cifar10": _load_cifar10,
    "npz": _load_npz,
    "image_folder": lambda root, download: _load_image_folder(root, None),
}

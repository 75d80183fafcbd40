"""Your own data by path (issue 29): dataset 'npz', on the CLI and both back ends; its errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gainsearch.batteries.data import DataError, load_dataset
from gainsearch.cli import main


def _write(path: Path, **overrides: np.ndarray) -> Path:
    rng = np.random.default_rng(0)
    y = np.arange(120) % 3
    x = rng.normal(size=(120, 8, 8)).astype(np.float32) + y[:, None, None]  # learnable
    arrays = {"x_train": x[:90], "y_train": y[:90], "x_test": x[90:], "y_test": y[90:]}
    arrays.update(overrides)
    np.savez(path, **arrays)
    return path


def test_an_npz_loads_normalised_with_channels(tmp_path: Path) -> None:
    data = load_dataset("npz", _write(tmp_path / "d.npz"))
    assert data.x_train.shape == (90, 1, 8, 8) and data.num_classes == 3
    assert abs(float(data.x_train.mean())) < 1e-5  # normalised with the training statistics
    assert data.y_test.tolist() == (np.arange(120) % 3)[90:].tolist()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"y_test": None}, r"missing array\(s\) \['y_test'\]"),
        ({"y_train": np.arange(89) % 3}, r"x_train holds 90 images but y_train 89 labels"),
        ({"y_test": np.full(30, 7)}, r"y_test has label 7, but y_train's classes are 0..2"),
        ({"y_train": (np.arange(90) % 3).astype(float)}, r"expected integer labels"),
        ({"x_test": np.zeros((30, 1, 4, 4))}, r"both splits need one shape"),
    ],
)
def test_bad_npz_files_get_one_line_errors(tmp_path: Path, overrides: dict, message: str) -> None:
    path = tmp_path / "bad.npz"
    if overrides.get("y_test", 0) is None:
        rng = np.random.default_rng(0)
        np.savez(
            path,
            x_train=rng.normal(size=(9, 8, 8)),
            y_train=np.arange(9) % 3,
            x_test=rng.normal(size=(3, 8, 8)),
        )
    else:
        _write(path, **overrides)
    with pytest.raises(DataError, match=message):
        load_dataset("npz", path)
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(DataError, match=r"junk.npz: not a readable .npz"):
        load_dataset("npz", tmp_path / "junk.npz")
    with pytest.raises(DataError, match=r"needs data_root"):
        load_dataset("npz", None)


@pytest.mark.parametrize("backend", ["optuna", "ray"])
def test_a_search_on_an_npz_runs_on_both_back_ends(tmp_path: Path, backend: str) -> None:
    if backend == "ray":
        pytest.importorskip("ray.tune")
    path = _write(tmp_path / "own.npz")
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "name: own\n"
        f"train: {{dataset: npz, data_root: {path}, model: digits_lenet, epochs: 2}}\n"
        "search:\n  lr: {type: float, low: 0.01, high: 0.1, log: true}\n"
        "pruner: {type: none}\n"
    )
    out = tmp_path / "out"
    if backend == "ray":  # in this process (the CLI's stdout under pytest does not pickle)
        from gainsearch.search.run_ray import run_tuner
        from gainsearch.search.spaces import load_spec

        run_tuner(load_spec(spec), out_dir=out, n_trials=2, max_concurrent=1)
    else:
        args = ["search", str(spec), "--trials", "2", "--out", str(out), "--quiet", "--no-report"]
        assert main(args) == 0
    best = json.loads((out / "best.json").read_text())["best"]
    assert best["config"]["dataset"] == "npz" and best["model_file"]
    assert (
        main(
            [
                "train",
                "--dataset",
                "npz",
                "--data-root",
                str(path),
                "--epochs",
                "1",
                "--out",
                str(tmp_path / "t"),
                "--quiet",
            ]
        )
        == 0
    )


def test_class_dependent_noise_is_named_in_every_output(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """Digits with 30 % of the labels flipped to the next class, as your own .npz: the search's
    closing lines, best.json, trials.csv and the report name the noise and say to keep a
    validation split (issue 28)."""
    pytest.importorskip("matplotlib")
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x, y = bunch.images.astype(np.float32), bunch.target.copy()
    rng = np.random.default_rng(0)
    train = rng.permutation(len(y))
    test, train = train[:300], train[300:]
    noisy = y[train].copy()
    flip = rng.permutation(len(train))[: round(0.3 * len(train))]
    noisy[flip] = (noisy[flip] + 1) % 10
    path = tmp_path / "noisy.npz"
    np.savez(path, x_train=x[train], y_train=noisy, x_test=x[test], y_test=y[test])
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "name: noisy\n"
        f"train: {{dataset: npz, data_root: {path}, model: digits_lenet, epochs: 10, lr: 0.05}}\n"
        "search:\n  seed: {type: int, low: 0, high: 3}\n"
        "pruner: {type: none}\n"
    )
    out = tmp_path / "out"
    assert main(["search", str(spec), "--trials", "1", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "class-dependent" in printed and "keep a validation split" in printed
    noise = json.loads((out / "best.json").read_text())["best"]["label_noise"]
    assert noise["kind"] == "class-dependent" and noise["needs_split"]
    assert 0.2 < noise["rate"] < 0.4
    assert all(g == (t + 1) % 10 for t, g, _ in noise["pairs"])
    assert "class-dependent" in (out / "trials.csv").read_text()
    page = (out / "report.html").read_text()
    assert 'id="labels"' in page and "keep a validation split" in page
    assert (out / "labels.png").is_file()


def _image_folder(root: Path, sizes: tuple[int, int] = (10, 10), colour: bool = False) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("test", 4)):
        for label, name in enumerate(("cat", "dog", "owl")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                shape = (sizes[1], sizes[0], 3) if colour else (sizes[1], sizes[0])
                pixels = rng.integers(0, 60, shape) + 90 * label
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
    return root


def test_an_image_folder_loads_and_is_searched(tmp_path: Path) -> None:
    root = _image_folder(tmp_path / "imgs")
    data = load_dataset("image_folder", root)
    assert data.x_train.shape == (36, 1, 10, 10) and data.num_classes == 3
    assert data.y_test.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    resized = load_dataset(
        "image_folder", _image_folder(tmp_path / "rgb", colour=True), image_size=16
    )
    assert resized.x_train.shape == (36, 3, 16, 16)
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "name: imgs\n"
        f"train: {{dataset: image_folder, data_root: {root}, model: digits_cnn, image_size: 8, "
        "epochs: 2}\n"
        "search:\n  lr: {type: float, low: 0.01, high: 0.1, log: true}\npruner: {type: none}\n"
    )
    out = tmp_path / "out"
    assert (
        main(["search", str(spec), "--trials", "1", "--out", str(out), "--quiet", "--no-report"])
        == 0
    )
    assert json.loads((out / "best.json").read_text())["best"]["config"]["image_size"] == 8


def test_bad_image_folders_get_one_line_errors(tmp_path: Path) -> None:
    root = _image_folder(tmp_path / "imgs")
    (root / "train" / "dog" / "9.png").write_text("not an image")
    with pytest.raises(DataError, match=r"9.png: not a readable image"):
        load_dataset("image_folder", root)
    (root / "train" / "dog" / "9.png").unlink()
    for f in (root / "train" / "owl").iterdir():
        f.unlink()
    with pytest.raises(DataError, match=r"owl: an empty class folder"):
        load_dataset("image_folder", root)
    other = _image_folder(tmp_path / "other")
    (other / "test" / "fox").mkdir()
    with pytest.raises(DataError, match=r"class folder\(s\) \['fox'\] are not in train/"):
        load_dataset("image_folder", other)
    with pytest.raises(DataError, match=r"no train/ folder"):
        load_dataset("image_folder", tmp_path / "nowhere")
    mixed = _image_folder(tmp_path / "mixed")
    from PIL import Image

    Image.fromarray(np.zeros((5, 7), np.uint8)).save(mixed / "train" / "cat" / "odd.png")
    with pytest.raises(DataError, match=r"several sizes.*set image_size"):
        load_dataset("image_folder", mixed)


def test_an_image_folder_search_runs_on_ray(tmp_path: Path) -> None:
    pytest.importorskip("ray.tune")
    from gainsearch.search.run_ray import run_tuner
    from gainsearch.search.spaces import parse_spec

    root = _image_folder(tmp_path / "imgs", colour=True)
    spec = parse_spec(
        {
            "name": "imgs",
            "train": {
                "dataset": "image_folder",
                "data_root": str(root),
                "model": "digits_cnn",
                "image_size": 8,
                "epochs": 2,
            },
            "search": {"lr": {"type": "float", "low": 0.01, "high": 0.1, "log": True}},
            "pruner": {"type": "none"},
        }
    )
    outcome = run_tuner(spec, out_dir=tmp_path / "ray", n_trials=1, max_concurrent=1)
    assert [r.state for r in outcome.rows] == ["complete"]
    assert outcome.best["best"]["config"]["image_size"] == 8 and outcome.best["best"]["model_file"]

"""The bad-input catalogue: what users get wrong, at every public entry point.

Each case must fail with an error that names the parameter, the value and what is allowed, and
(for the CLI) leave an existing study and run directory byte-for-byte as they were.
"""

from __future__ import annotations

import gzip
import re
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from gainsearch.batteries.data import DataError, load_dataset
from gainsearch.cli import main
from gainsearch.core.decision import DecisionConfig
from gainsearch.core.monitor import GainMonitor
from gainsearch.core.spectral import maximum_gain
from gainsearch.integrations.optuna import GainPruner
from gainsearch.search.spaces import SpecError, parse_spec
from gainsearch.search.study import make_storage

SPEC = """\
name: catalogue
train: {dataset: digits, model: digits_lenet, epochs: 2, batch_size: 256}
search:
  lr: {type: float, low: 1.0e-3, high: 0.1, log: true}
sampler: {type: random, seed: 0}
"""


@pytest.fixture(scope="module")
def existing(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A finished study and a finished training run that bad commands must not touch."""
    root = tmp_path_factory.mktemp("existing")
    spec = root / "spec.yaml"
    spec.write_text(SPEC)
    assert (
        main(["search", str(spec), "--trials", "2", "--out", str(root / "study"), "--quiet"]) == 0
    )
    run = ["train", "--epochs", "2", "--batch-size", "256", "--quiet", "--out", str(root / "run")]
    assert main(run) == 0
    return {"root": root, "spec": spec, "study": root / "study", "run": root / "run"}


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def write(folder: Path, name: str, text: str) -> str:
    path = folder / name
    path.write_text(text)
    return str(path)


# (argv template, regex the error must match). {study}, {run}, {spec}, {tmp} are filled in.
CLI_CASES = [
    # search: specs
    (["search", "{tmp}/nope.yaml", "--out", "{study}"], r"spec .*nope.yaml: cannot read it"),
    (["search", "@yaml:train: [1, 2", "--out", "{study}"], r"is not valid YAML"),
    (["search", "@yaml:- 1\n- 2\n", "--out", "{study}"], r"must hold a mapping with keys"),
    (
        ["search", "@yaml:trian: {}\n", "--out", "{study}"],
        r"unknown key\(s\) \['trian'\]; allowed keys are",
    ),
    (
        ["search", "@yaml:train: {epochs: two}\n", "--out", "{study}"],
        r"epochs must be a positive integer, but got epochs='two'",
    ),
    (
        ["search", "@yaml:train: {dataset: imagenet}\n", "--out", "{study}"],
        r"Unknown dataset 'imagenet'; available datasets are \[",
    ),
    (
        ["search", "@yaml:train: {model: resnet50}\n", "--out", "{study}"],
        r"Unknown model 'resnet50'; available models are \[",
    ),
    (
        [
            "search",
            "@yaml:search: {lr: {type: float, low: 0.1, high: 0.001}}\n",
            "--out",
            "{study}",
        ],
        r"search.lr: low must be <= high, but got low=0.1 > high=0.001 \(inverted range\)",
    ),
    (
        ["search", "@yaml:search: {lr: {type: float, low: 0.1, high: 0.1}}\n", "--out", "{study}"],
        r"search.lr: empty range",
    ),
    (
        [
            "search",
            "@yaml:search: {lr: {type: float, low: 0, high: 1, log: true}}\n",
            "--out",
            "{study}",
        ],
        r"a log scale needs low > 0, but got low=0",
    ),
    (
        ["search", "@yaml:search: {lr: {type: float, low: '0.1', high: 1}}\n", "--out", "{study}"],
        r"search.lr.low must be a finite number, but got '0.1'",
    ),
    (
        ["search", "@yaml:pruner: {type: hyperband}\n", "--out", "{study}"],
        r"pruner.type must be one of \['gain', 'median', 'asha', 'none'\], but got 'hyperband'",
    ),
    # search: flags and resume
    (
        ["search", "{spec}", "--trials", "0", "--out", "{study}"],
        r"n_trials must be a positive integer, but got n_trials=0",
    ),
    (
        ["search", "{spec}", "--workers", "-2", "--out", "{study}"],
        r"workers must be a positive integer, but got workers=-2",
    ),
    (
        ["search", "{spec}", "--timeout", "-5", "--out", "{study}"],
        r"timeout must be a positive number of seconds",
    ),
    (
        ["search", "{spec}", "--epochs", "0", "--out", "{study}"],
        r"epochs must be a positive integer, but got epochs=0",
    ),
    (
        ["search", "{spec}", "--address", "auto", "--out", "{study}"],
        r"--address belong\(s\) to --backend ray, not optuna",
    ),
    (
        [
            "search",
            "@yaml:name: catalogue\ntrain: {dataset: digits, model: digits_cnn, epochs: 2}\nsearch: {lr: {type: float, low: 0.001, high: 0.1, log: true}}\n",
            "--out",
            "{study}",
        ],
        r"study 'catalogue' was run with a different spec \(sections \['train'\] differ\)",
    ),
    (
        ["search", "{spec}", "--storage", "nosuchdb://user:hunter2@host/db", "--out", "{study}"],
        r"storage 'nosuchdb://user:\*\*\*@host/db' cannot be opened",
    ),
    (
        [
            "search",
            "{spec}",
            "--storage",
            "postgresql://user:hunter2@127.0.0.1:1/db",
            "--out",
            "{study}",
        ],
        r"storage 'postgresql://user:\*\*\*@127.0.0.1:1/db' cannot be opened",
    ),
    # train
    (["train", "--lr", "-0.1", "--out", "{run}"], r"lr must be a positive number, but got lr=-0.1"),
    (
        ["train", "--optimizer", "rmsprop", "--out", "{run}"],
        r"optimizer must be one of 'sgd', 'adam', 'adamw', but got optimizer='rmsprop'",
    ),
    (
        ["train", "--momentum", "1.5", "--out", "{run}"],
        r"momentum must be a number in \[0, 1\), but got momentum=1.5",
    ),
    (
        ["train", "--gain-target", "best", "--out", "{run}"],
        r"target must be 'winner', 'all' or a class index, but got 'best'",
    ),
    (["train", "--device", "tpu9", "--out", "{run}"], r"device must be a torch device"),
    (
        ["train", "--model", "lenet_mnist", "--out", "{run}"],
        r"model 'lenet_mnist' needs inputs of at least 16x16",
    ),
    (
        ["train", "--lr", "0.5", "--epochs", "2", "--batch-size", "256", "--out", "{run}"],
        r"belongs to a different trial \(lr: 0.02 -> 0.5\)",
    ),
    (
        ["train", "--spec", "@yaml:learning_rate: 0.1\n", "--out", "{run}"],
        r"unknown training setting\(s\) \['learning_rate'\]; known settings are",
    ),
    (
        ["train", "--dataset", "mnist", "--out", "{run}"],
        r"mnist is read from disk: pass its folder as root= \(CLI: --data-root DIR\)",
    ),
    (
        ["train", "--dataset", "mnist", "--data-root", "{tmp}/empty", "--out", "{run}"],
        r"no MNIST IDX files in .*empty.*Expected train-images-idx3-ubyte\[.gz\]",
    ),
    (
        ["train", "--dataset", "mnist", "--data-root", "{tmp}/truncated", "--out", "{run}"],
        r"truncated or corrupt: header says",
    ),
    (
        ["train", "--dataset", "cifar10", "--data-root", "{tmp}/empty", "--out", "{run}"],
        r"no CIFAR-10 python batches in",
    ),
    # gain and diagnose
    (["gain", "--model", "vgg"], r"Unknown model 'vgg'; available models are"),
    (
        ["gain", "--model", "digits_lenet", "--in-shape", "1,8"],
        r"--in-shape must be three positive integers C,H,W, but got '1,8'",
    ),
    (
        ["gain", "--model", "digits_lenet", "--in-shape", "1,8,8", "--target", "12"],
        r"target must be 'winner', 'all' or a class index in \[0, 9\], but got target=12",
    ),
    (["gain", "--checkpoint", "{tmp}/nope.pt"], r"checkpoint .*nope.pt does not exist"),
    (["gain", "--checkpoint", "{spec}"], r"not a readable gainsearch checkpoint"),
    (["diagnose", "{tmp}/nope.json"], r"history .*nope.json: cannot read it"),
    (
        ["diagnose", '@text:{"history": [{"loss": 1}]}'],
        r"every record of 'history' needs a 'gain' entry",
    ),
    (["diagnose", "@text:1\nfoo\n"], r"neither JSON nor a text file of one gain \(dB\) per line"),
    (
        ["diagnose", "@text:[1, 2, 3]", "--window", "1"],
        r"window must be an integer >= 2, but got window=1",
    ),
    (["report", "{tmp}/nope"], r"RUN '.*nope' is neither a search output directory nor a"),
    (["report", "{tmp}/empty"], r"RUN '.*empty' holds no trials.json"),
    (
        ["report", "sqlite:///{study}/study.db", "--study-name", "other"],
        r"study_name 'other' is not in sqlite:///.*; its studies are \['catalogue'\]",
    ),
    (["report", "{tmp}/truncated", "--out", "{tmp}/r"], r"holds no trials.json"),
]


def test_catalogue_size() -> None:
    assert len(CLI_CASES) >= 40


@pytest.mark.parametrize(
    ("argv", "match"), CLI_CASES, ids=[f"{c[0][0]}-{i}" for i, c in enumerate(CLI_CASES)]
)
def test_cli_bad_input_is_named_and_changes_nothing(
    existing: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    match: str,
) -> None:
    (tmp_path / "empty").mkdir()
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    for stem, shape in (
        ("train-images-idx3-ubyte", (10, 28, 28)),
        ("t10k-images-idx3-ubyte", (5, 28, 28)),
    ):
        raw = struct.pack(">I3I", 2051, *shape) + bytes(int(np.prod(shape)) - 7)  # 7 bytes short
        (truncated / f"{stem}.gz").write_bytes(gzip.compress(raw))
    for stem, n in (("train-labels-idx1-ubyte", 10), ("t10k-labels-idx1-ubyte", 5)):
        (truncated / f"{stem}.gz").write_bytes(
            gzip.compress(struct.pack(">II", 2049, n) + bytes(n))
        )
    before = {k: snapshot(existing[k]) for k in ("study", "run")}
    filled = []
    for arg in argv:
        if arg.startswith("@yaml:"):
            arg = write(tmp_path, "bad.yaml", arg[len("@yaml:") :])
        elif arg.startswith("@text:"):
            arg = write(tmp_path, "bad.txt", arg[len("@text:") :])
        for key in ("study", "run", "spec"):
            arg = arg.replace("{" + key + "}", str(existing[key]))
        filled.append(arg.replace("{tmp}", str(tmp_path)))
    started = time.time()
    assert main(filled) == 2
    assert time.time() - started < 60  # a clear error within a bounded time, not a hang
    err = capsys.readouterr().err
    assert err.startswith("gainsearch: error: ") and len(err.strip().splitlines()) == 1, err
    assert re.search(match, err), err
    assert "hunter2" not in err  # passwords are never printed
    assert {k: snapshot(existing[k]) for k in ("study", "run")} == before


# -- library entry points ----------------------------------------------------------------------


class NotLogits(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=1)  # (N, H, W): not (N, K)


def test_library_entry_points() -> None:
    conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 6 * 6, 3))
    cases = [
        (
            lambda: maximum_gain(NotLogits(), in_shape=(1, 8, 8)),
            r"logits of shape \(N, num_classes\)",
        ),
        (
            lambda: maximum_gain(conv, in_shape=(1, 9, 9)),
            r"probe of shape \(1, 9, 9\) does not fit the model",
        ),
        (
            lambda: maximum_gain(conv, torch.zeros(2, 8, 8)),
            r"probe of shape \(2, 8, 8\) does not fit the model",
        ),
        (
            lambda: GainMonitor(in_shape=(1, 8)),
            r"in_shape must be three positive integers.*\(1, 8\)",
        ),
        (
            lambda: GainMonitor(in_shape=(1, 8, 8), target="top"),
            r"target must be 'winner', 'all'.*'top'",
        ),
        (
            lambda: GainPruner(percentile=120),
            r"percentile must be between 0 and 100 inclusive, but got p=120",
        ),
        (
            lambda: GainPruner(min_peers=0),
            r"min_peers must be an integer >= 1, but got min_peers=0",
        ),
        (
            lambda: DecisionConfig(variability_factor=-1),
            r"variability_factor must be a positive number",
        ),
        (
            lambda: parse_spec({"search": {"lr": {"type": "float", "low": 1, "high": 0.1}}}),
            r"search.lr: low must be <= high",
        ),
        (lambda: load_dataset("svhn"), r"Unknown dataset 'svhn'; available datasets are"),
        (
            lambda: make_storage("sqlite:////nonexistent-dir/x/study.db", None),
            r"storage 'sqlite:////nonexistent-dir/x/study.db' cannot be opened",
        ),
    ]
    for call, match in cases:
        with pytest.raises((ValueError, TypeError, SpecError, DataError), match=match):
            call()


def test_scheduler_constructor() -> None:
    pytest.importorskip("ray.tune")
    from gainsearch.integrations.ray import GainScheduler

    with pytest.raises(
        ValueError, match=r"^grace_period must be an integer >= 1, but got grace_period=0\.$"
    ):
        GainScheduler(grace_period=0)
    with pytest.raises(ValueError, match=r"mode must be 'min' or 'max', but got mode='best'"):
        GainScheduler(mode="best")


def test_non_finite_values_are_readings_not_errors(small_net: nn.Module) -> None:
    """Policy: a NaN gain or loss is a diverged trial, recorded; it never raises."""
    with torch.no_grad():
        small_net.fc.weight.fill_(float("nan"))
    monitor = GainMonitor(in_shape=(3, 6, 6))
    assert monitor.measure(small_net, 1).diverged
    assert monitor.diagnose().label == "diverged"

"""Evidence suite: does any validation-free objective beat the free training loss? (issue 13)

    python benchmarks/suite.py --train                      # train what is not cached yet
    python benchmarks/suite.py --train --setups s01 s07      # only these set-ups
    python benchmarks/suite.py                               # tables from the cache, no training
    python benchmarks/suite.py --quick --out /tmp/q          # smoke run (never the committed cache)

A *set-up* is what a user tunes: a model, an optimizer and schedule, a data set, and one searched
hyperparameter (or two) over a grid. Every grid point is trained with several seeds twice:

* **merged** (our protocol): all training data; per epoch the training loss, the learning rate,
  the gain (class mean, the paper's impulse probe), the smoothed gain (``gain_smoothing=1``), the
  paper's winner-class gain and, for evaluation only, test loss and accuracy;
* **split** (the standard protocol): 80 % of the training data, 20 % held out (stratified per
  seed); validation loss per epoch. The point it selects is "retrained on all data", i.e. the
  merged run of that point and seed.

Set-ups are split in two before anything is analysed: a **calibration** half (``role: calib``),
on which any constant of a candidate objective is chosen, and a **report** half, on which the
chosen objective is scored. The analysis (:mod:`suite_analysis`) also reports leave-one-set-up-
out figures over all set-ups. Nothing that selects reads a test metric.

The cache is one JSON file per set-up under ``--out`` (default ``benchmarks/results/suite``),
rewritten after every finished run, so a run once trained is never trained again.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import selection  # the first two grids: its 80/20 split is reused

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MNIST = ROOT.parent / "shared" / "data" / "mnist5k"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "suite"
SMOOTHING = 1.0  # the smoothed gain's noise std (one pixel std of the normalised data; a priori)


@dataclass(frozen=True)
class Setup:
    """One set-up: fixed training settings, a grid of searched settings, seeds, role."""

    name: str
    title: str
    train: dict[str, Any]
    grid: list[dict[str, Any]]
    seeds: tuple[int, ...] = (0, 1, 2)
    role: str = "report"  # "calib" or "report"
    label_noise: float = 0.0
    varies: str = "lr"


def _lrs(low: float, high: float, n: int) -> list[float]:
    return [float(f"{v:.3g}") for v in np.geomspace(low, high, n)]


def _points(key: str, values: Sequence[Any]) -> list[dict[str, Any]]:
    return [{key: v} for v in values]


DIGITS = {"dataset": "digits"}
MNIST = {"dataset": "mnist"}

SETUPS: dict[str, Setup] = {
    s.name: s
    for s in [
        Setup(
            "s01",
            "digits_lenet, SGD, constant, learning rate",
            {**DIGITS, "model": "digits_lenet", "optimizer": "sgd", "epochs": 15},
            _points("lr", _lrs(3e-4, 1.0, 7)),
            role="calib",
        ),
        Setup(
            "s02",
            "digits_cnn, Adam, constant, learning rate",
            {**DIGITS, "model": "digits_cnn", "optimizer": "adam", "epochs": 15},
            _points("lr", _lrs(1e-4, 0.1, 7)),
        ),
        Setup(
            "s03",
            "digits_lenet, SGD Nesterov, cosine, width",
            {
                **DIGITS,
                "model": "digits_lenet",
                "optimizer": "sgd",
                "nesterov": True,
                "schedule": "cosine",
                "lr": 0.05,
                "epochs": 15,
            },
            _points("width", [0.0625, 0.125, 0.25, 0.5, 1.0, 2.0]),
            role="calib",
            varies="width",
        ),
        Setup(
            "s04",
            "digits_lenet, SGD, constant, batch size",
            {**DIGITS, "model": "digits_lenet", "optimizer": "sgd", "lr": 0.02, "epochs": 15},
            _points("batch_size", [8, 16, 32, 64, 128, 256]),
            varies="batch_size",
        ),
        Setup(
            "s05",
            "digits_cnn, Adam, constant, learning rate x augmentation",
            {**DIGITS, "model": "digits_cnn", "optimizer": "adam", "epochs": 15},
            [{"lr": lr, "augment": a} for a in ("none", "standard") for lr in (1e-3, 3e-3, 1e-2)],
            role="calib",
            varies="lr, augment",
        ),
        Setup(
            "s06",
            "digits_lenet, SGD, cosine, epochs",
            {
                **DIGITS,
                "model": "digits_lenet",
                "optimizer": "sgd",
                "schedule": "cosine",
                "lr": 0.02,
            },
            _points("epochs", [2, 4, 7, 10, 15, 25]),
            varies="epochs",
        ),
        Setup(
            "s07",
            "resnet20 (width 0.5), SGD, cosine, learning rate",
            {
                **DIGITS,
                "model": "resnet20",
                "width": 0.5,
                "optimizer": "sgd",
                "schedule": "cosine",
                "epochs": 12,
            },
            _points("lr", _lrs(1e-3, 3.0, 6)),
            role="calib",
        ),
        Setup(
            "s08",
            "vgg11_bn (width 0.25), AdamW, cosine + warm-up, learning rate",
            {
                **DIGITS,
                "model": "vgg11_bn",
                "width": 0.25,
                "optimizer": "adamw",
                "weight_decay": 0.05,
                "schedule": "cosine",
                "warmup_epochs": 1,
                "epochs": 15,
            },
            _points("lr", _lrs(1e-4, 0.1, 6)),
        ),
        Setup(
            "s09",
            "lenet_mnist, SGD, constant, weight decay (mnist5k)",
            {**MNIST, "model": "lenet_mnist", "optimizer": "sgd", "lr": 0.01, "epochs": 10},
            _points("weight_decay", [0.0, 1e-4, 1e-3, 3e-3, 1e-2, 3e-2]),
            role="calib",
            varies="weight_decay",
        ),
        Setup(
            "s10",
            "lenet_mnist, AdamW, cosine, label smoothing (mnist5k)",
            {
                **MNIST,
                "model": "lenet_mnist",
                "optimizer": "adamw",
                "lr": 1e-3,
                "schedule": "cosine",
                "epochs": 10,
            },
            _points("label_smoothing", [0.0, 0.05, 0.1, 0.2, 0.3, 0.5]),
            varies="label_smoothing",
        ),
        Setup(
            "s11",
            "lenet_mnist, SGD, constant, learning rate (mnist5k, 20 % noisy labels)",
            {**MNIST, "model": "lenet_mnist", "optimizer": "sgd", "epochs": 10},
            _points("lr", _lrs(3e-4, 0.3, 6)),
            label_noise=0.2,
        ),
        Setup(
            "s12",
            "resnet20 (width 0.25), SGD Nesterov, cosine, learning rate (mnist5k)",
            {
                **MNIST,
                "model": "resnet20",
                "width": 0.25,
                "optimizer": "sgd",
                "nesterov": True,
                "schedule": "cosine",
                "epochs": 8,
            },
            _points("lr", _lrs(3e-3, 3.0, 6)),
            seeds=(0, 1),
        ),
    ]
}


# --------------------------------------------------------------------------------------------
# training (worker processes)


@functools.lru_cache(maxsize=4)
def _data(dataset: str, data_root: str | None, label_noise: float) -> Any:
    from gainsearch.batteries.data import load_dataset

    data = load_dataset(dataset, data_root)
    if label_noise > 0:
        data = noisy_labels(data, label_noise)
    return data


def noisy_labels(data: Any, fraction: float, seed: int = 1234) -> Any:
    """A copy of ``data`` whose training labels are replaced by uniformly random labels on a
    fixed random ``fraction`` of the images (the replacement may equal the old label); the test
    labels stay clean."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    n = data.y_train.shape[0]
    picked = torch.randperm(n, generator=gen)[: round(fraction * n)]
    y = data.y_train.clone()
    y[picked] = torch.randint(0, data.num_classes, (picked.numel(),), generator=gen)
    return dataclasses.replace(data, y_train=y)


def train_run(task: dict[str, Any]) -> dict[str, Any]:
    """One grid point, one seed, one protocol: a JSON-friendly record with per-epoch signals."""
    import torch

    from gainsearch.batteries.train import TrainConfig, train_trial
    from gainsearch.core.spectral import maximum_gain

    torch.set_num_threads(1)
    setup = SETUPS[task["setup"]]
    root = task["data_root"] if setup.train["dataset"] == "mnist" else None
    data = _data(setup.train["dataset"], root, setup.label_noise)
    split = task["protocol"] == "split"
    if split:
        data = selection._split(data, task["seed"])  # 80/20, stratified, as selection.py
    settings = {**setup.train, **task["point"], "seed": task["seed"], "data_root": root}
    config = TrainConfig.from_dict({**settings, "gain_target": "all", "eval_test": True})
    extra: list[dict[str, float]] = []

    def record(ctx: Any) -> None:
        smooth = maximum_gain(ctx.model, in_shape=data.in_shape, target="all", smoothing=SMOOTHING)
        win = maximum_gain(ctx.model, in_shape=data.in_shape, target="winner")
        extra.append({"gain_smooth": smooth.gain, "gain_winner": win.gain})

    started = time.perf_counter()
    result = train_trial(config, data=data, callbacks=[record])
    epochs = []
    for rec, more in zip(result.history, extra, strict=True):
        row = {
            "epoch": rec["epoch"],
            "lr": rec["lr"],
            "train_loss": rec["train_loss"],
            "gain": rec["gain"],
            "gain_max": rec["gain_max"],
            **more,
        }
        if "train_objective" in rec:  # label smoothing: train_loss is the plain cross-entropy
            row["train_objective"] = rec["train_objective"]
        if split:
            row.update(val_loss=rec["test_loss"], val_acc=rec["test_acc"])
        else:
            row.update(test_loss=rec["test_loss"], test_acc=rec["test_acc"])
        epochs.append(row)
    return {
        **task,
        "status": result.status,
        "seconds": time.perf_counter() - started,
        "epochs": config.epochs,
        "epochs_trained": len(epochs),
        "history": epochs,
    }


def stale(run: dict[str, Any]) -> bool:
    """A cached run from before ``train_loss`` became the plain cross-entropy: with label
    smoothing it recorded the smoothed loss there (and no ``train_objective``); retrained."""
    settings = {**SETUPS[run["setup"]].train, **run["point"]}
    history = run.get("history") or [{}]
    return bool(settings.get("label_smoothing")) and "train_objective" not in history[0]


def run_key(run: dict[str, Any]) -> str:
    return json.dumps([run["protocol"], run["point"], run["seed"]], sort_keys=True)


def load_cache(out: Path, name: str) -> list[dict[str, Any]]:
    path = out / f"{name}.json"
    if not path.exists():
        return []
    return list(json.loads(path.read_text())["runs"])


def save_cache(out: Path, setup: Setup, runs: Sequence[dict[str, Any]]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{setup.name}.json"
    tmp = path.with_suffix(".json.tmp")
    body = {
        "setup": {
            "name": setup.name,
            "title": setup.title,
            "role": setup.role,
            "train": setup.train,
            "grid": setup.grid,
            "seeds": list(setup.seeds),
            "label_noise": setup.label_noise,
            "varies": setup.varies,
        },
        "runs": sorted(runs, key=run_key),
    }
    tmp.write_text(json.dumps(body, indent=1, allow_nan=True))
    os.replace(tmp, path)


def tasks_for(setup: Setup, data_root: str, seeds: Sequence[int] | None = None) -> list[dict]:
    return [
        {"setup": setup.name, "protocol": p, "point": point, "seed": seed, "data_root": data_root}
        for seed in (seeds if seeds is not None else setup.seeds)
        for p in ("merged", "split")
        for point in setup.grid
    ]


def train(
    names: Sequence[str], out: Path, *, data_root: str, workers: int, seeds: Sequence[int] | None
) -> None:
    cached = {name: {run_key(r): r for r in load_cache(out, name)} for name in names}
    todo = [
        t
        for name in names
        for t in tasks_for(SETUPS[name], data_root, seeds)
        if run_key(t) not in cached[name] or stale(cached[name][run_key(t)])
    ]
    print(f"{len(todo)} runs to train ({sum(map(len, cached.values()))} cached)", file=sys.stderr)
    for run in run_tasks(train_run, todo, workers):
        cached[run["setup"]][run_key(run)] = run
        save_cache(out, SETUPS[run["setup"]], list(cached[run["setup"]].values()))


def run_tasks(fn: Any, todo: Sequence[dict[str, Any]], workers: int) -> Iterator[dict[str, Any]]:
    """``fn`` over ``todo`` in a spawned pool of ``workers`` processes (in this process for 1),
    yielding each finished run (without its ``data_root``) for the caller to cache, then printing
    its progress line on stderr. Shared by this suite and ``memorisation.py``."""
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if workers > 1:
            pool = stack.enter_context(
                ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"))
            )
            results = pool.map(fn, todo)
        else:
            results = map(fn, todo)
        for i, run in enumerate(results, 1):
            run.pop("data_root", None)
            yield run
            print(
                f"[{i}/{len(todo)} {time.perf_counter() - started:.0f}s] {run['setup']} "
                f"{run['protocol']} {run['point']} seed={run['seed']}: {run['status']} "
                f"({run['seconds']:.0f}s)",
                file=sys.stderr,
                flush=True,
            )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", action="store_true", help="train the runs not yet cached")
    parser.add_argument("--setups", nargs="+", choices=sorted(SETUPS), default=sorted(SETUPS))
    parser.add_argument("--quick", action="store_true", help="smoke run: s01, 1 seed, 4 epochs")
    parser.add_argument("--out", type=Path, default=None, help=f"cache folder ({DEFAULT_OUT})")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--data-root", default=str(DEFAULT_MNIST), help="mnist5k folder")
    args = parser.parse_args(argv)
    out = args.out
    if args.quick:
        if out is None or out.resolve() == DEFAULT_OUT.resolve():
            parser.error(
                "--quick needs --out outside benchmarks/results (a smoke run never "
                "writes the committed cache)"
            )
        SETUPS["s01"] = Setup(
            "s01",
            SETUPS["s01"].title,
            {**SETUPS["s01"].train, "epochs": 4},
            _points("lr", [1e-3, 1e-2, 0.1]),
            seeds=(0, 1),
            role="calib",
        )
        SETUPS["s02"] = Setup(
            "s02",
            SETUPS["s02"].title,
            {**SETUPS["s02"].train, "epochs": 4},
            _points("lr", [1e-3, 1e-2, 0.1]),
            seeds=(0, 1),
        )
        args.setups, args.train, args.workers = ["s01", "s02"], True, 1  # in this process
    out = out or DEFAULT_OUT
    if args.train:
        train(args.setups, out, data_root=args.data_root, workers=args.workers, seeds=None)
    import suite_analysis

    suite_analysis.print_all(out, args.setups)


if __name__ == "__main__":
    main()

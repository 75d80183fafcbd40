"""Memorisation suite: noisy labels and small data, where validation data earns its keep (issue 20).

    python benchmarks/memorisation.py --train                 # train what is not cached yet
    python benchmarks/memorisation.py --train --setups m01    # only these set-ups
    python benchmarks/memorisation.py                         # tables from the cache only
    python benchmarks/memorisation.py --quick --out /tmp/q    # smoke run (never the cache)

Beside ``benchmarks/suite.py``, with its conventions: a *set-up* is what a user tunes (model,
optimizer, schedule, data, a searched hyperparameter over a grid); every grid point is trained
with 3 seeds under two protocols:

* **merged** (validation-free): all (noisy or few) training data; per epoch the training loss,
  the gain and every stopping signal (``prediction_changes``, ``gradient_disparity``,
  ``gain_variability``, ``gain_trend``) and, for evaluation only, the clean test accuracy;
* **split** (the validation workflow it replaces): 80 % of the same noisy training data, 20 %
  held out with the same label noise (stratified per seed); validation loss and accuracy per
  epoch. The (configuration, epoch) it chooses is "retrained on all data for that many epochs":
  with a constant schedule the merged run of that point and seed up to that epoch (the same
  training, bit for bit), with a schedule a **retrain** run with that budget.

Label noise is applied to the training labels only, seeded per seed (the test set stays clean):
*symmetric* moves a ``rate`` fraction of the labels to a uniformly drawn other class, *pair-flip*
moves them to the next class (``c -> c + 1 mod K``). Small data is a class-balanced subset of
mnist5k's training set, drawn per seed.

The set-ups are split into a **calibration** half and a **report** half here, before anything is
analysed (``role``); :mod:`memorisation_analysis` chooses every constant on the calibration half
(and leave-one-set-up-out) and publishes the held-out numbers. The cache is one JSON file per
set-up under ``--out`` (default ``benchmarks/results/memorisation``), rewritten after every
finished run, so a run once trained is never trained again.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import selection  # its stratified 80/20 split
import suite  # its pool of training processes

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MNIST = ROOT.parent / "shared" / "data" / "mnist5k"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "memorisation"
SIGNALS = ["prediction_changes", "gradient_disparity", "gain_variability", "gain_trend"]


@dataclass(frozen=True)
class Setup:
    """One set-up: fixed settings, a grid, seeds, role, and how its data is damaged."""

    name: str
    title: str
    train: dict[str, Any]
    grid: list[dict[str, Any]]
    role: str  # "calib" or "report"
    noise: float = 0.0
    noise_kind: str = "symmetric"  # or "pairflip"
    subset: int | None = None  # training examples kept (class-balanced), None: all
    seeds: tuple[int, ...] = (0, 1, 2)
    varies: str = "lr"


def _lrs(low: float, high: float, n: int) -> list[float]:
    return [float(f"{v:.3g}") for v in np.geomspace(low, high, n)]


def _points(key: str, values: Sequence[Any]) -> list[dict[str, Any]]:
    return [{key: v} for v in values]


DIGITS = {"dataset": "digits"}
MNIST = {"dataset": "mnist"}
WD = [0.0, 1e-4, 1e-3, 1e-2]

SETUPS: dict[str, Setup] = {
    s.name: s
    for s in [
        Setup(
            "m01",
            "digits_lenet, SGD, constant, learning rate; 20 % symmetric noise",
            {**DIGITS, "model": "digits_lenet", "optimizer": "sgd", "epochs": 30},
            _points("lr", _lrs(3e-3, 0.3, 4)),
            role="calib",
            noise=0.2,
        ),
        Setup(
            "m02",
            "digits_cnn, Adam, constant, learning rate; 40 % symmetric noise",
            {**DIGITS, "model": "digits_cnn", "optimizer": "adam", "epochs": 30},
            _points("lr", _lrs(3e-4, 1e-2, 4)),
            role="report",
            noise=0.4,
        ),
        Setup(
            "m03",
            "digits_lenet, SGD, cosine, weight decay; 20 % pair-flip noise",
            {
                **DIGITS,
                "model": "digits_lenet",
                "optimizer": "sgd",
                "schedule": "cosine",
                "lr": 0.05,
                "epochs": 30,
            },
            _points("weight_decay", WD),
            role="calib",
            noise=0.2,
            noise_kind="pairflip",
            varies="weight_decay",
        ),
        Setup(
            "m04",
            "lenet_mnist, SGD, constant, learning rate; 500 clean examples of mnist5k",
            {**MNIST, "model": "lenet_mnist", "optimizer": "sgd", "epochs": 40},
            _points("lr", _lrs(3e-3, 0.3, 4)),
            role="report",
            subset=500,
        ),
        Setup(
            "m05",
            "lenet_mnist, Adam, cosine, learning rate; 1,000 examples, 10 % symmetric noise",
            {
                **MNIST,
                "model": "lenet_mnist",
                "optimizer": "adam",
                "schedule": "cosine",
                "epochs": 30,
            },
            _points("lr", _lrs(3e-4, 1e-2, 4)),
            role="calib",
            noise=0.1,
            subset=1000,
        ),
        Setup(
            "m06",
            "digits_cnn, SGD, constant, learning rate, augmentation; 20 % symmetric noise",
            {
                **DIGITS,
                "model": "digits_cnn",
                "optimizer": "sgd",
                "augment": "standard",
                "epochs": 30,
            },
            _points("lr", _lrs(3e-3, 0.3, 4)),
            role="report",
            noise=0.2,
        ),
        Setup(
            "m07",
            "resnet20 (BatchNorm, width 0.25), SGD, cosine, learning rate; 20 % symmetric noise",
            {
                **DIGITS,
                "model": "resnet20",
                "width": 0.25,
                "optimizer": "sgd",
                "schedule": "cosine",
                "epochs": 25,
            },
            _points("lr", _lrs(0.01, 1.0, 4)),
            role="calib",
            noise=0.2,
        ),
        Setup(
            "m08",
            "lenet_mnist, SGD, constant, weight decay; 250 examples, 20 % symmetric noise",
            {**MNIST, "model": "lenet_mnist", "optimizer": "sgd", "lr": 0.05, "epochs": 40},
            _points("weight_decay", WD),
            role="report",
            noise=0.2,
            subset=250,
            varies="weight_decay",
        ),
    ]
}


# --------------------------------------------------------------------------------------------
# data


def damaged(data: Any, setup: Setup, seed: int) -> Any:
    """``data`` with the set-up's subset and label noise, drawn per seed (test set untouched)."""
    import torch

    gen = torch.Generator().manual_seed(10_000 + seed)
    x, y = data.x_train, data.y_train
    if setup.subset is not None:
        per_class = setup.subset // data.num_classes
        keep = []
        for c in range(data.num_classes):
            members = torch.nonzero(y == c).ravel()
            keep.append(members[torch.randperm(members.numel(), generator=gen)[:per_class]])
        idx = torch.cat(keep).sort().values
        x, y = x[idx], y[idx]
    if setup.noise > 0:
        y = y.clone()
        picked = torch.randperm(y.numel(), generator=gen)[: round(setup.noise * y.numel())]
        if setup.noise_kind == "pairflip":
            y[picked] = (y[picked] + 1) % data.num_classes
        else:  # a uniformly drawn other class
            shift = torch.randint(1, data.num_classes, (picked.numel(),), generator=gen)
            y[picked] = (y[picked] + shift) % data.num_classes
    return dataclasses.replace(data, x_train=x, y_train=y)


@functools.lru_cache(maxsize=2)
def _base(dataset: str, data_root: str | None) -> Any:
    from gainsearch.batteries.data import load_dataset

    return load_dataset(dataset, data_root)


# --------------------------------------------------------------------------------------------
# training (worker processes)


def train_run(task: dict[str, Any]) -> dict[str, Any]:
    """One grid point, one seed, one protocol (merged, split or retrain): a JSON record."""
    import torch

    from gainsearch.batteries.train import TrainConfig, train_trial

    torch.set_num_threads(1)
    setup = SETUPS[task["setup"]]
    root = task["data_root"] if setup.train["dataset"] == "mnist" else None
    data = damaged(_base(setup.train["dataset"], root), setup, task["seed"])
    split = task["protocol"] == "split"
    if split:
        data = selection._split(data, task["seed"])  # the held-out 20 % takes the test slot
    settings = {**setup.train, **task["point"], "seed": task["seed"], "data_root": root}
    if task["protocol"] == "retrain":
        settings["epochs"] = task["epochs"]
    config = TrainConfig.from_dict({**settings, "eval_test": True, "signals": SIGNALS})
    started = time.perf_counter()
    result = train_trial(config, data=data)
    history = []
    for rec in result.history:
        row = {k: rec[k] for k in ("epoch", "lr", "train_loss", "gain", *SIGNALS)}
        if split:
            row.update(val_loss=rec["test_loss"], val_acc=rec["test_acc"])
        else:
            row.update(test_loss=rec["test_loss"], test_acc=rec["test_acc"])
        history.append(row)
    return {
        **task,
        "status": result.status,
        "seconds": time.perf_counter() - started,
        "n_train": int(data.x_train.shape[0]),
        "history": history,
    }


def run_key(run: dict[str, Any]) -> str:
    return json.dumps([run["protocol"], run["point"], run["seed"], run.get("epochs")])


def load_cache(out: Path, name: str) -> list[dict[str, Any]]:
    path = out / f"{name}.json"
    return list(json.loads(path.read_text())["runs"]) if path.exists() else []


def save_cache(out: Path, setup: Setup, runs: Sequence[dict[str, Any]]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{setup.name}.json"
    tmp = path.with_suffix(".json.tmp")
    body = {"setup": dataclasses.asdict(setup), "runs": sorted(runs, key=run_key)}
    tmp.write_text(json.dumps(body, indent=1, allow_nan=True))
    os.replace(tmp, path)


def tasks_for(setup: Setup, data_root: str) -> list[dict[str, Any]]:
    return [
        {"setup": setup.name, "protocol": p, "point": point, "seed": seed, "data_root": data_root}
        for seed in setup.seeds
        for p in ("merged", "split")
        for point in setup.grid
    ]


def validation_choice(runs: Sequence[dict[str, Any]], seed: int) -> tuple[dict, int]:
    """The validation workflow's (grid point, epoch) for one seed: the lowest validation loss
    over every split run's epochs (ties: the earlier epoch, then the point's JSON)."""
    candidates = [
        (row["val_loss"], row["epoch"], json.dumps(run["point"], sort_keys=True))
        for run in runs
        if run["protocol"] == "split" and run["seed"] == seed
        for row in run["history"]
        if row["val_loss"] is not None and row["val_loss"] == row["val_loss"]
    ]
    if not candidates:
        raise ValueError(f"no finite validation loss for seed {seed}")
    _, epoch, point = min(candidates)
    return json.loads(point), int(epoch)


def retrain_tasks(setup: Setup, runs: Sequence[dict[str, Any]], data_root: str) -> list[dict]:
    """With a schedule, the validation workflow's choice is retrained with its epochs as the
    budget (a constant-rate run's first epochs are the retrain already)."""
    if setup.train.get("schedule", "constant") == "constant":
        return []
    tasks = []
    for seed in setup.seeds:
        seed_runs = [r for r in runs if r["seed"] == seed and r["protocol"] == "split"]
        if len(seed_runs) < len(setup.grid):
            continue  # the split runs of this seed are not all trained yet
        point, epoch = validation_choice(seed_runs, seed)
        tasks.append(
            {
                "setup": setup.name,
                "protocol": "retrain",
                "point": point,
                "seed": seed,
                "epochs": epoch,
                "data_root": data_root,
            }
        )
    return tasks


def train(names: Sequence[str], out: Path, *, data_root: str, workers: int) -> None:
    cached = {name: {run_key(r): r for r in load_cache(out, name)} for name in names}
    for phase in ("runs", "retrains"):
        todo = []
        for name in names:
            setup = SETUPS[name]
            wanted = (
                tasks_for(setup, data_root)
                if phase == "runs"
                else retrain_tasks(setup, list(cached[name].values()), data_root)
            )
            todo += [t for t in wanted if run_key(t) not in cached[name]]
        print(f"{phase}: {len(todo)} to train", file=sys.stderr, flush=True)
        for run in suite.run_tasks(train_run, todo, workers):
            cached[run["setup"]][run_key(run)] = run
            save_cache(out, SETUPS[run["setup"]], list(cached[run["setup"]].values()))


# --------------------------------------------------------------------------------------------
# the control: today's 12 set-ups, merged runs again, now with the prediction changes

CONTROL_SIGNALS = ["prediction_changes", "gain_variability", "gain_trend"]


def control_run(task: dict[str, Any]) -> dict[str, Any]:
    """One merged run of a ``benchmarks/suite.py`` set-up, recording the free signals (the same
    training as the suite's cached run: the signals leave it bit-identical)."""
    import torch

    from gainsearch.batteries.train import TrainConfig, train_trial

    torch.set_num_threads(1)
    setup = suite.SETUPS[task["setup"]]
    root = task["data_root"] if setup.train["dataset"] == "mnist" else None
    data = suite._data(setup.train["dataset"], root, setup.label_noise)
    settings = {**setup.train, **task["point"], "seed": task["seed"], "data_root": root}
    config = TrainConfig.from_dict(
        {**settings, "gain_target": "all", "eval_test": True, "signals": CONTROL_SIGNALS}
    )
    started = time.perf_counter()
    result = train_trial(config, data=data)
    keys = ("epoch", "train_loss", "gain", *CONTROL_SIGNALS, "test_acc")
    return {
        **task,
        "status": result.status,
        "seconds": time.perf_counter() - started,
        "history": [{k: rec[k] for k in keys} for rec in result.history],
    }


def train_controls(names: Sequence[str], out: Path, *, data_root: str, workers: int) -> None:
    folder = out / "controls"
    folder.mkdir(parents=True, exist_ok=True)
    cached = {}
    for name in names:
        path = folder / f"{name}.json"
        cached[name] = {
            run_key(r): r for r in (json.loads(path.read_text())["runs"] if path.exists() else [])
        }
    todo = [
        {"setup": name, "protocol": "control", "point": point, "seed": seed, "data_root": data_root}
        for name in names
        for seed in suite.SETUPS[name].seeds
        for point in suite.SETUPS[name].grid
    ]
    todo = [t for t in todo if run_key(t) not in cached[t["setup"]]]
    print(f"controls: {len(todo)} to train", file=sys.stderr, flush=True)
    for run in suite.run_tasks(control_run, todo, workers):
        name = run["setup"]
        cached[name][run_key(run)] = run
        path = folder / f"{name}.json"
        tmp = path.with_suffix(".json.tmp")
        body = {"setup": name, "runs": sorted(cached[name].values(), key=run_key)}
        tmp.write_text(json.dumps(body, indent=1, allow_nan=True))
        os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", action="store_true", help="train the runs not yet cached")
    parser.add_argument("--setups", nargs="+", choices=sorted(SETUPS), default=sorted(SETUPS))
    parser.add_argument("--quick", action="store_true", help="smoke: m01, m02, 1 seed, 6 epochs")
    parser.add_argument("--out", type=Path, default=None, help=f"cache folder ({DEFAULT_OUT})")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--data-root", default=str(DEFAULT_MNIST), help="mnist5k folder")
    parser.add_argument(
        "--controls",
        nargs="*",
        metavar="SETUP",
        help="train the merged runs of these benchmarks/suite.py set-ups again with the "
        "prediction changes (none named: all 12), cached under OUT/controls",
    )
    args = parser.parse_args(argv)
    out = args.out
    if args.quick:
        if out is None or out.resolve() == DEFAULT_OUT.resolve():
            parser.error("--quick needs --out outside benchmarks/results (never the cache)")
        for name in ("m01", "m02"):
            s = SETUPS[name]
            SETUPS[name] = dataclasses.replace(
                s, train={**s.train, "epochs": 6}, grid=s.grid[:2], seeds=(0,)
            )
        args.setups, args.train, args.workers = ["m01", "m02"], True, 1
    out = out or DEFAULT_OUT
    if args.controls is not None:
        names = args.controls or sorted(suite.SETUPS)
        train_controls(names, out, data_root=args.data_root, workers=args.workers)
        return
    if args.train:
        train(args.setups, out, data_root=args.data_root, workers=args.workers)
    import memorisation_analysis

    memorisation_analysis.print_all(out, args.setups)


if __name__ == "__main__":
    main()

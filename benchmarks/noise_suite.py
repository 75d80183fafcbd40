"""Label-noise suite (issue 28): know the noise, rank and stop by it, against a validation split.

    python benchmarks/noise_suite.py --train --role calib    # the calibration half (first)
    python benchmarks/noise_suite.py --train --role report   # only after the choice is committed
    python benchmarks/noise_suite.py --train --setups r01    # only these set-ups
    python benchmarks/noise_suite.py --quick --out /tmp/q    # smoke run (never the cache)

The protocol (set-ups, roles, regimes, candidates, the calibration rule, the targets) is
``benchmarks/PROTOCOL.md``, committed before any report-half run. This file is its set-ups and
their training; ``noise_analysis.py`` replays every candidate on what is cached here.

Conventions of ``benchmarks/memorisation.py``, with 5 seeds: every grid point and seed is trained

* **merged** (validation-free): all (damaged) training data; per epoch the training loss, the
  gain, the free stopping signals, and the label-noise fields the trainer records from its
  training pass (``train_acc``, ``noise_mixture``, ``mixture_separation``, ``label_confusion``,
  ``confident_confusion``, ``changes_by_class``); the clean test accuracy for evaluation only;
* **split**: 80 % of the same damaged data, 20 % held out with the same damage; validation loss
  and accuracy per epoch; with a schedule the validation choice is **retrained** on all data.

Damage, on the training labels only (the test set stays clean), drawn per seed:

* ``symmetric``: a ``noise`` share of the labels moved to a uniformly drawn other class;
* ``pairflip``: moved to the next class (``c -> c + 1 mod K``);
* ``lookalike``: each example of a class in a look-alike pair (1-7, 3-8, 4-9, 5-6) moved to its
  partner with probability ``noise`` (the other classes untouched);
* ``model``: a ``noise`` share of the labels moved to the class a model trained on the clean
  labels (``digits_lenet`` or ``lenet_mnist``, 3 epochs, seed 1000) finds most likely after the
  true one, for that very image (noise drawn from a trained model's own confusions);
* ``subset``: a class-balanced subset of the training set (small data), drawn per seed.

The cache is one JSON file per set-up under ``--out`` (default ``benchmarks/results/noise``),
rewritten after every finished run, so a run once trained is never trained again.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
import memorisation  # its grids, cache helpers and validation choice
import selection  # its stratified 80/20 split
import suite  # its pool of training processes

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MNIST = memorisation.DEFAULT_MNIST
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "noise"
SIGNALS = ["prediction_changes", "gain_variability", "gain_trend"]
NOISE_FIELDS = (
    "train_acc",
    "noise_mixture",
    "mixture_separation",
    "label_confusion",
    "confident_confusion",
    "changes_by_class",
)
SEEDS = (0, 1, 2, 3, 4)
LOOKALIKE = ((1, 7), (3, 8), (4, 9), (5, 6))
REGIMES = ("clean", "symmetric", "class-dependent")


@dataclass(frozen=True)
class Setup:
    """One set-up: fixed settings, a grid, seeds, role, and how its data is damaged."""

    name: str
    title: str
    train: dict[str, Any]
    grid: list[dict[str, Any]]
    role: str  # "calib" or "report"
    noise: float = 0.0
    noise_kind: str = "symmetric"  # symmetric, pairflip, lookalike, model
    subset: int | None = None
    seeds: tuple[int, ...] = SEEDS
    varies: str = "lr"

    @property
    def regime(self) -> str:
        """Fixed by how the data was damaged, before any number."""
        if self.noise == 0:
            return "clean"
        return "symmetric" if self.noise_kind == "symmetric" else "class-dependent"


def _from_memorisation(name: str) -> Setup:
    old = memorisation.SETUPS[name]
    return Setup(
        name=old.name,
        title=old.title,
        train=old.train,
        grid=old.grid,
        role="calib",
        noise=old.noise,
        noise_kind=old.noise_kind,
        subset=old.subset,
        varies=old.varies,
    )


_lrs, _points = memorisation._lrs, memorisation._points
DIGITS, MNIST = memorisation.DIGITS, memorisation.MNIST
SGD_LRS, ADAM_LRS, WD = _lrs(3e-3, 0.3, 4), _lrs(3e-4, 1e-2, 4), memorisation.WD

SETUPS: dict[str, Setup] = {
    s.name: s
    for s in [
        # calibration: the memorisation suite's eight set-ups (all calibration here) and two
        # class-dependent ones
        *(_from_memorisation(f"m0{i}") for i in range(1, 9)),
        Setup(
            "c09",
            "digits_lenet, SGD, constant, learning rate; 30 % look-alike confusions",
            {**DIGITS, "model": "digits_lenet", "optimizer": "sgd", "epochs": 30},
            _points("lr", SGD_LRS),
            role="calib",
            noise=0.3,
            noise_kind="lookalike",
        ),
        Setup(
            "c10",
            "digits_cnn, Adam, constant, learning rate; 25 % noise from a model's confusions",
            {**DIGITS, "model": "digits_cnn", "optimizer": "adam", "epochs": 30},
            _points("lr", ADAM_LRS),
            role="calib",
            noise=0.25,
            noise_kind="model",
        ),
        # report: new set-ups, trained only after the calibration choice is committed
        Setup(
            "r01",
            "digits_lenet, SGD, constant, learning rate; 30 % pair-flip",
            {**DIGITS, "model": "digits_lenet", "optimizer": "sgd", "epochs": 30},
            _points("lr", SGD_LRS),
            role="report",
            noise=0.3,
            noise_kind="pairflip",
        ),
        Setup(
            "r02",
            "digits_cnn, Adam, constant, learning rate; 15 % pair-flip",
            {**DIGITS, "model": "digits_cnn", "optimizer": "adam", "epochs": 30},
            _points("lr", ADAM_LRS),
            role="report",
            noise=0.15,
            noise_kind="pairflip",
        ),
        Setup(
            "r03",
            "digits_cnn, SGD, cosine, weight decay; 40 % look-alike confusions",
            {
                **DIGITS,
                "model": "digits_cnn",
                "optimizer": "sgd",
                "schedule": "cosine",
                "lr": 0.05,
                "epochs": 30,
            },
            _points("weight_decay", WD),
            role="report",
            noise=0.4,
            noise_kind="lookalike",
            varies="weight_decay",
        ),
        Setup(
            "r04",
            "lenet_mnist, SGD, constant, learning rate; 2,000 examples, 30 % model confusions",
            {**MNIST, "model": "lenet_mnist", "optimizer": "sgd", "epochs": 30},
            _points("lr", SGD_LRS),
            role="report",
            noise=0.3,
            noise_kind="model",
            subset=2000,
        ),
        Setup(
            "r05",
            "digits_lenet, AdamW, cosine, learning rate; 40 % pair-flip",
            {
                **DIGITS,
                "model": "digits_lenet",
                "optimizer": "adamw",
                "schedule": "cosine",
                "epochs": 30,
            },
            _points("lr", ADAM_LRS),
            role="report",
            noise=0.4,
            noise_kind="pairflip",
        ),
        Setup(
            "r06",
            "digits_lenet, SGD, constant, learning rate; 30 % symmetric",
            {**DIGITS, "model": "digits_lenet", "optimizer": "sgd", "epochs": 30},
            _points("lr", SGD_LRS),
            role="report",
            noise=0.3,
        ),
        Setup(
            "r07",
            "digits_cnn, AdamW, cosine, learning rate; 40 % symmetric",
            {
                **DIGITS,
                "model": "digits_cnn",
                "optimizer": "adamw",
                "schedule": "cosine",
                "epochs": 30,
            },
            _points("lr", ADAM_LRS),
            role="report",
            noise=0.4,
        ),
        Setup(
            "r08",
            "digits_cnn, Adam, constant, weight decay; 20 % symmetric",
            {**DIGITS, "model": "digits_cnn", "optimizer": "adam", "lr": 1e-3, "epochs": 30},
            _points("weight_decay", WD),
            role="report",
            noise=0.2,
            varies="weight_decay",
        ),
        Setup(
            "r09",
            "resnet20 (BatchNorm, width 0.25), SGD, cosine, learning rate; 30 % symmetric",
            {
                **DIGITS,
                "model": "resnet20",
                "width": 0.25,
                "optimizer": "sgd",
                "schedule": "cosine",
                "epochs": 25,
            },
            _points("lr", _lrs(0.01, 1.0, 4)),
            role="report",
            noise=0.3,
        ),
        Setup(
            "r10",
            "lenet_mnist, Adam, cosine, learning rate; 1,000 examples, 40 % symmetric",
            {
                **MNIST,
                "model": "lenet_mnist",
                "optimizer": "adam",
                "schedule": "cosine",
                "epochs": 30,
            },
            _points("lr", ADAM_LRS),
            role="report",
            noise=0.4,
            subset=1000,
        ),
        Setup(
            "r11",
            "digits_lenet, SGD, constant, learning rate, augmentation; 10 % symmetric",
            {
                **DIGITS,
                "model": "digits_lenet",
                "optimizer": "sgd",
                "augment": "standard",
                "epochs": 30,
            },
            _points("lr", SGD_LRS),
            role="report",
            noise=0.1,
        ),
        Setup(
            "r12",
            "lenet_mnist, SGD, constant, learning rate; 250 clean examples",
            {**MNIST, "model": "lenet_mnist", "optimizer": "sgd", "epochs": 40},
            _points("lr", SGD_LRS),
            role="report",
            subset=250,
        ),
        Setup(
            "r13",
            "digits_cnn, Adam, constant, learning rate; 300 clean examples",
            {**DIGITS, "model": "digits_cnn", "optimizer": "adam", "epochs": 40},
            _points("lr", ADAM_LRS),
            role="report",
            subset=300,
        ),
        Setup(
            "r14",
            "digits_lenet, SGD, cosine, learning rate; clean, all of digits",
            {
                **DIGITS,
                "model": "digits_lenet",
                "optimizer": "sgd",
                "schedule": "cosine",
                "epochs": 30,
            },
            _points("lr", SGD_LRS),
            role="report",
        ),
    ]
}


# --------------------------------------------------------------------------------------------
# data


@functools.lru_cache(maxsize=2)
def _confuser_logits(dataset: str, data_root: str | None) -> Any:
    """Logits on every training image of a model trained 3 epochs on the clean labels."""
    import torch

    from gainsearch.batteries.train import TrainConfig, train_trial

    model = "digits_lenet" if dataset == "digits" else "lenet_mnist"
    config = TrainConfig.from_dict(
        {"dataset": dataset, "data_root": data_root, "model": model, "epochs": 3, "seed": 1000}
    )
    result = train_trial(config, data=memorisation._base(dataset, data_root))
    result.model.eval()
    with torch.no_grad():
        return result.model(memorisation._base(dataset, data_root).x_train)


def damaged(data: Any, setup: Setup, seed: int, data_root: str | None) -> tuple[Any, float]:
    """``data`` with the set-up's subset and label damage (drawn per seed), and the share of
    training labels actually changed."""
    import torch

    gen = torch.Generator().manual_seed(10_000 + seed)
    x, y = data.x_train, data.y_train
    idx = torch.arange(y.numel())
    if setup.subset is not None:
        per_class = setup.subset // data.num_classes
        keep = []
        for c in range(data.num_classes):
            members = torch.nonzero(y == c).ravel()
            keep.append(members[torch.randperm(members.numel(), generator=gen)[:per_class]])
        idx = torch.cat(keep).sort().values
        x, y = x[idx], y[idx]
    clean = y.clone()
    if setup.noise > 0:
        y = y.clone()
        k = data.num_classes
        if setup.noise_kind == "lookalike":
            partner = torch.arange(k)
            for a, b in LOOKALIKE:
                partner[a], partner[b] = b, a
            flip = (partner[y] != y) & (torch.rand(y.numel(), generator=gen) < setup.noise)
            y[flip] = partner[y[flip]]
        else:
            picked = torch.randperm(y.numel(), generator=gen)[: round(setup.noise * y.numel())]
            if setup.noise_kind == "pairflip":
                y[picked] = (y[picked] + 1) % k
            elif setup.noise_kind == "model":
                logits = _confuser_logits(setup.train["dataset"], data_root)[idx].clone()
                logits[torch.arange(y.numel()), clean] = -torch.inf  # the true class excluded
                y[picked] = logits[picked].argmax(dim=1)
            elif setup.noise_kind == "symmetric":
                shift = torch.randint(1, k, (picked.numel(),), generator=gen)
                y[picked] = (y[picked] + shift) % k
            else:
                raise ValueError(f"unknown noise_kind {setup.noise_kind!r}")
    changed = float((y != clean).float().mean())
    return dataclasses.replace(data, x_train=x, y_train=y), changed


# --------------------------------------------------------------------------------------------
# training (worker processes)


def train_run(task: dict[str, Any]) -> dict[str, Any]:
    """One grid point, one seed, one protocol (merged, split or retrain): a JSON record."""
    import torch

    from gainsearch.batteries.train import TrainConfig, train_trial

    torch.set_num_threads(1)
    setup = SETUPS[task["setup"]]
    root = task["data_root"] if setup.train["dataset"] == "mnist" else None
    data, changed = damaged(
        memorisation._base(setup.train["dataset"], root), setup, task["seed"], root
    )
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
        row = {k: rec.get(k) for k in ("epoch", "lr", "train_loss", "gain", *SIGNALS)}
        if split:
            row.update(val_loss=rec["test_loss"], val_acc=rec["test_acc"])
        else:
            row.update({k: rec.get(k) for k in NOISE_FIELDS})
            row.update(test_loss=rec["test_loss"], test_acc=rec["test_acc"])
        history.append(row)
    return {
        **task,
        "status": result.status,
        "seconds": time.perf_counter() - started,
        "n_train": int(data.x_train.shape[0]),
        "true_noise": changed,
        "history": history,
    }


def save_cache(out: Path, setup: Setup, runs: Sequence[dict[str, Any]]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{setup.name}.json"
    tmp = path.with_suffix(".json.tmp")
    body = {
        "setup": {**dataclasses.asdict(setup), "regime": setup.regime},
        "runs": sorted(runs, key=memorisation.run_key),
    }
    tmp.write_text(json.dumps(body, separators=(",", ":"), allow_nan=True))
    os.replace(tmp, path)


def train(names: Sequence[str], out: Path, *, data_root: str, workers: int) -> None:
    key = memorisation.run_key
    cached = {name: {key(r): r for r in memorisation.load_cache(out, name)} for name in names}
    for phase in ("runs", "retrains"):
        todo = []
        for name in names:
            setup = SETUPS[name]
            wanted = (  # memorisation's task lists: they read a set-up's fields only
                memorisation.tasks_for(setup, data_root)  # type: ignore[arg-type]
                if phase == "runs"
                else memorisation.retrain_tasks(  # type: ignore[arg-type]
                    setup, list(cached[name].values()), data_root
                )
            )
            todo += [t for t in wanted if key(t) not in cached[name]]
        print(f"{phase}: {len(todo)} to train", file=sys.stderr, flush=True)
        for run in suite.run_tasks(train_run, todo, workers):
            cached[run["setup"]][key(run)] = run
            save_cache(out, SETUPS[run["setup"]], list(cached[run["setup"]].values()))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", action="store_true", help="train the runs not yet cached")
    parser.add_argument("--setups", nargs="+", choices=sorted(SETUPS), default=None)
    parser.add_argument("--role", choices=("calib", "report"), default=None)
    parser.add_argument("--quick", action="store_true", help="smoke: c09, 1 seed, 4 epochs")
    parser.add_argument("--out", type=Path, default=None, help=f"cache folder ({DEFAULT_OUT})")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--data-root", default=str(DEFAULT_MNIST), help="mnist5k folder")
    args = parser.parse_args(argv)
    names = args.setups or sorted(
        n for n, s in SETUPS.items() if args.role is None or s.role == args.role
    )
    out = args.out
    if args.quick:
        if out is None or out.resolve() == DEFAULT_OUT.resolve():
            parser.error("--quick needs --out outside benchmarks/results (never the cache)")
        s = SETUPS["c09"]
        SETUPS["c09"] = dataclasses.replace(
            s, train={**s.train, "epochs": 4}, grid=s.grid[:2], seeds=(0,)
        )
        names, args.train, args.workers = ["c09"], True, 1
    out = out or DEFAULT_OUT
    if args.train:
        train(names, out, data_root=args.data_root, workers=args.workers)
    import noise_analysis

    noise_analysis.print_all(out, names)


if __name__ == "__main__":
    main()

"""Evidence: does the gain choose learning rates as well as validation loss? (issue 5)

    python benchmarks/selection.py --quick                 # smoke run, digits only, ~1 minute
    python benchmarks/selection.py                          # full grid, both data sets
    python benchmarks/selection.py --from-json runs.json    # tables again, no training

For each data set (``digits`` with ``digits_lenet``; the paper's ``lenet_mnist`` on mnist5k) a
log-spaced learning-rate grid from clearly too low to divergent is trained with several seeds,
a fixed epoch budget and SGD with momentum, twice:

* **merged** (our protocol): the whole training set; per epoch the gain (all-class mean and the
  paper's winner), the training loss, the input-output Jacobian norm on training images, and, for
  evaluation only, test loss and accuracy;
* **split** (the standard protocol): 80 % of the training set, the other 20 % held out (stratified,
  per seed); validation loss per epoch. The learning rate it selects is "retrained on all data",
  which is exactly the merged run with that learning rate and seed.

Every signal chooses one learning rate per seed; the script prints, per data set, the rank
correlations (Spearman and Kendall, per seed across the grid, then averaged; Spearman also over
the runs that did not diverge, since diverged runs are easy for every signal) with final test
accuracy, the selection regret (best test accuracy of the grid minus the chosen one's, percentage
points, averaged over seeds), and the epochs each protocol trains to reach its final model. Then
it checks the diagnosis against ground truth read off the test curves, and sweeps the score's
variability weight and window (the calibration table).

Nothing that selects reads a test metric: test loss/accuracy are only the yardstick. Runs on the
CPU, two worker processes by default (one torch thread each); the JSON of every run is written
to ``--out`` (default ``benchmarks/results/selection.json``; ``--quick`` writes a temporary file
and refuses to write into ``benchmarks/results/``).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED = ROOT / "benchmarks" / "results" / "selection.json"  # committed: never a smoke run's
DEFAULT_MNIST = ROOT.parent / "shared" / "data" / "mnist5k"

#: Data set -> (registry model, data set name in gainsearch.batteries.data).
SETUPS = {"digits": ("digits_lenet", "digits"), "mnist5k": ("lenet_mnist", "mnist")}


# --------------------------------------------------------------------------------------------
# training (worker processes)


@functools.lru_cache(maxsize=4)
def _data(dataset: str, data_root: str | None) -> Any:
    from gainsearch.batteries.data import load_dataset

    return load_dataset(SETUPS[dataset][1], data_root)


def _split(data: Any, seed: int) -> Any:
    """80 % train / 20 % held out (stratified); the held-out part takes the test slot."""
    from sklearn.model_selection import train_test_split

    from gainsearch.batteries.data import TensorData

    idx = np.arange(data.x_train.shape[0])
    tr, va = train_test_split(idx, test_size=0.2, stratify=data.y_train.numpy(), random_state=seed)
    return TensorData(
        name=data.name,
        x_train=data.x_train[tr],
        y_train=data.y_train[tr],
        x_test=data.x_train[va],
        y_test=data.y_train[va],
        num_classes=data.num_classes,
        mean=data.mean,
        std=data.std,
    )


def _jacobian_norm(model: Any, x: Any) -> float:
    """Mean over images of the Frobenius norm of d softmax / d input (Novak et al. 2018)."""
    import torch

    was_training = model.training
    model.eval()
    x = x.clone().requires_grad_(True)
    with torch.enable_grad():
        probs = torch.softmax(model(x), dim=1)  # (N, K)
        squares = torch.zeros(x.shape[0], dtype=torch.float64)
        for k in range(probs.shape[1]):  # eval mode: samples independent, one pass per class
            (grad,) = torch.autograd.grad(probs[:, k].sum(), x, retain_graph=True)
            squares += grad.flatten(1).double().pow(2).sum(dim=1)
    model.train(was_training)
    return float(squares.sqrt().mean())


def train_run(task: dict[str, Any]) -> dict[str, Any]:
    """One grid point: train, record per-epoch signals, return a JSON-friendly record."""
    import torch

    from gainsearch.batteries.train import TrainConfig, train_trial
    from gainsearch.core.spectral import maximum_gain

    torch.set_num_threads(1)
    data = _data(task["dataset"], task["data_root"])
    split = task["protocol"] == "split"
    if split:
        data = _split(data, task["seed"])
    model_name, data_name = SETUPS[task["dataset"]]
    config = TrainConfig(
        dataset=data_name,
        data_root=task["data_root"],
        model=model_name,
        epochs=task["epochs"],
        batch_size=64,
        optimizer="sgd",
        momentum=0.9,
        lr=task["lr"],
        seed=task["seed"],
        gain_target="all",
        eval_test=True,  # merged: the test set (yardstick); split: the held-out 20 %
    )
    probe_images = data.x_train[
        torch.randperm(data.x_train.shape[0], generator=torch.Generator().manual_seed(99))[:256]
    ]
    extra: list[dict[str, float]] = []

    def record(ctx: Any) -> None:
        win = maximum_gain(ctx.model, in_shape=data.in_shape, target="winner")
        row = {"gain_winner": win.gain}
        if not split:
            row["jacobian"] = (
                _jacobian_norm(ctx.model, probe_images) if not ctx.diverged else math.nan
            )
        extra.append(row)

    started = time.perf_counter()
    result = train_trial(config, data=data, callbacks=[record])
    epochs = []
    for rec, more in zip(result.history, extra, strict=True):
        row = {
            "epoch": rec["epoch"],
            "train_loss": rec["train_loss"],
            "gain": rec["gain"],
            "gain_max": rec["gain_max"],
            "gain_winner": more["gain_winner"],
        }
        if split:
            row.update(val_loss=rec["test_loss"], val_acc=rec["test_acc"])
        else:
            row.update(test_loss=rec["test_loss"], test_acc=rec["test_acc"])
            row["jacobian"] = more["jacobian"]
        epochs.append(row)
    return {
        **task,
        "model": model_name,
        "status": result.status,
        "seconds": time.perf_counter() - started,
        "epochs_trained": len(epochs),
        "history": epochs,
    }


def run_grid(
    datasets: Sequence[str],
    lrs: Sequence[float],
    seeds: Sequence[int],
    epochs: int,
    *,
    data_root: str,
    workers: int,
) -> list[dict[str, Any]]:
    tasks = [
        {
            "dataset": ds,
            "data_root": data_root if ds == "mnist5k" else None,
            "protocol": protocol,
            "lr": float(lr),
            "seed": seed,
            "epochs": epochs,
        }
        for ds in datasets
        for protocol in ("merged", "split")
        for seed in seeds
        for lr in lrs
    ]
    runs = []
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if workers > 1:
            pool = stack.enter_context(
                ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"))
            )
            results = pool.map(train_run, tasks)
        else:  # in this process (also what tests use)
            results = map(train_run, tasks)
        for i, run in enumerate(results, 1):
            runs.append(run)
            print(
                f"[{i}/{len(tasks)} {time.perf_counter() - started:.0f}s] {run['dataset']} "
                f"{run['protocol']} lr={run['lr']:.3g} seed={run['seed']}: {run['status']}",
                file=sys.stderr,
                flush=True,
            )
    return runs


# --------------------------------------------------------------------------------------------
# signals (each: run record(s) -> a number, higher = preferred; NaN = never chosen)


def _curve(run: dict[str, Any], key: str = "gain") -> list[float]:
    return [float(r[key]) for r in run["history"]]


def _gain_feature(name: str, key: str = "gain", sign: float = 1.0, **overrides: Any) -> Callable:
    def signal(run: dict[str, Any], split_run: dict[str, Any] | None) -> float:
        from gainsearch.core.features import DiagnosisConfig
        from gainsearch.core.objective import ScoreConfig, curve_metric

        weight = overrides.get("variability_weight")
        score_cfg = ScoreConfig(variability_weight=weight) if weight is not None else None
        diag = DiagnosisConfig(window=overrides.get("window", 5))
        if run["status"] == "diverged":
            return math.nan
        return sign * curve_metric(name, _curve(run, key), config=score_cfg, diagnosis=diag)

    return signal


def _final_train_loss(run: dict[str, Any], _: Any) -> float:
    value = run["history"][-1]["train_loss"]
    return -value if run["status"] != "diverged" and math.isfinite(value) else math.nan


def _train_loss_sum(run: dict[str, Any], _: Any) -> float:
    total = sum(r["train_loss"] for r in run["history"])
    return -total if run["status"] != "diverged" and math.isfinite(total) else math.nan


def _jacobian(run: dict[str, Any], _: Any) -> float:
    value = run["history"][-1].get("jacobian", math.nan)
    return -value if run["status"] != "diverged" and math.isfinite(value) else math.nan


def _val_loss(_: dict[str, Any], split_run: dict[str, Any] | None) -> float:
    if split_run is None or split_run["status"] == "diverged":
        return math.nan
    value = split_run["history"][-1]["val_loss"]
    return -value if math.isfinite(value) else math.nan


#: Signal name -> (function(merged run, split run) -> preference, which protocol it needs).
SIGNALS: dict[str, tuple[Callable, str]] = {
    "gain score (default)": (_gain_feature("gain_score"), "gain"),
    "gain score, winner gain": (_gain_feature("gain_score", key="gain_winner"), "gain"),
    "gain level": (_gain_feature("level"), "gain"),
    "gain last": (_gain_feature("last"), "gain"),
    "gain peak": (_gain_feature("peak"), "gain"),
    "gain rise": (_gain_feature("rise"), "gain"),
    "gain trend": (_gain_feature("trend"), "gain"),
    "gain saturation": (_gain_feature("saturation"), "gain"),
    "-gain variability": (_gain_feature("variability", sign=-1.0), "gain"),
    "-gain early variability": (_gain_feature("early_variability", sign=-1.0), "gain"),
    "-final training loss": (_final_train_loss, "train"),
    "-training loss sum (Ru et al.)": (_train_loss_sum, "train"),
    "-Jacobian norm (Novak et al.)": (_jacobian, "train"),
    "-validation loss (80/20 split)": (_val_loss, "split"),
}


@dataclass
class SignalStats:
    spearman_alive: float
    spearman: float
    kendall: float
    regret: float
    chosen: list[float]
    epochs: int


def _grid(runs: Sequence[dict[str, Any]], dataset: str) -> dict[int, list[tuple[dict, Any]]]:
    """seed -> [(merged run, split run or None)] sorted by learning rate."""
    merged = [r for r in runs if r["dataset"] == dataset and r["protocol"] == "merged"]
    split = {
        (r["seed"], r["lr"]): r
        for r in runs
        if r["dataset"] == dataset and r["protocol"] == "split"
    }
    out: dict[int, list[tuple[dict, Any]]] = {}
    for run in sorted(merged, key=lambda r: (r["seed"], r["lr"])):
        out.setdefault(run["seed"], []).append((run, split.get((run["seed"], run["lr"]))))
    return out


def test_acc(run: dict[str, Any]) -> float:
    """Final test accuracy; a diverged run counts as chance (it has no usable model)."""
    value = run["history"][-1]["test_acc"]
    return 0.0 if run["status"] == "diverged" or not math.isfinite(value) else float(value)


def evaluate_signal(
    runs: Sequence[dict[str, Any]], dataset: str, signal: Callable, protocol: str
) -> SignalStats:
    """Rank correlation with test accuracy, regret and compute of one signal on one grid.

    Per seed: the signal over the grid (a NaN, i.e. a diverged run, ranks below every finite
    value), Spearman/Kendall against final test accuracy, and the learning rate with the
    highest signal; regret = best test accuracy in that seed's grid minus the chosen run's.
    """
    rhos, taus, regrets, chosen, compute = [], [], [], [], 0
    rhos_alive: list[float] = []
    for _seed, pairs in _grid(runs, dataset).items():
        values = np.array([signal(m, s) for m, s in pairs], dtype=np.float64)
        accs = np.array([test_acc(m) for m, _ in pairs])
        floor = np.nanmin(values) - 1.0 if np.any(np.isfinite(values)) else 0.0
        ranked = np.where(np.isfinite(values), values, floor)
        alive = np.array([m["status"] != "diverged" for m, _ in pairs])
        with warnings.catch_warnings():  # a constant column has no rank correlation: NaN
            warnings.simplefilter("ignore")
            rhos.append(stats.spearmanr(ranked, accs).statistic)
            rhos_alive.append(stats.spearmanr(ranked[alive], accs[alive]).statistic)
        taus.append(stats.kendalltau(ranked, accs).statistic)
        pick = int(np.argmax(ranked))
        regrets.append(100.0 * (accs.max() - accs[pick]))
        chosen.append(pairs[pick][0]["lr"])
        if protocol == "split":  # the grid on 80 %, then the chosen rate retrained on all
            compute += sum(s["epochs_trained"] for _, s in pairs if s) + pairs[pick][0]["epochs"]
        else:
            compute += sum(m["epochs_trained"] for m, _ in pairs)
    return SignalStats(
        spearman_alive=_nanmean(rhos_alive),
        spearman=_nanmean(rhos),
        kendall=_nanmean(taus),
        regret=float(np.mean(regrets)),
        chosen=chosen,
        epochs=compute,
    )


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def random_choice(runs: Sequence[dict[str, Any]], dataset: str) -> SignalStats:
    """The expected regret of a uniformly random learning rate (exact mean, not a draw)."""
    regrets, compute = [], 0
    for pairs in _grid(runs, dataset).values():
        accs = np.array([test_acc(m) for m, _ in pairs])
        regrets.append(100.0 * float(np.mean(accs.max() - accs)))
        compute += pairs[0][0]["epochs"]  # one run of the budget
    return SignalStats(0.0, 0.0, 0.0, float(np.mean(regrets)), [], compute)


def selection_table(runs: Sequence[dict[str, Any]], dataset: str) -> list[dict[str, Any]]:
    rows = []
    for name, (fn, protocol) in SIGNALS.items():
        s = evaluate_signal(runs, dataset, fn, protocol)
        rows.append(
            {
                "signal": name,
                "spearman": s.spearman,
                "spearman_alive": s.spearman_alive,
                "kendall": s.kendall,
                "regret": s.regret,
                "chosen": s.chosen,
                "epochs": s.epochs,
                "needs_validation": protocol == "split",
            }
        )
    r = random_choice(runs, dataset)
    rows.append(
        {
            "signal": "random choice (expected)",
            "spearman": r.spearman,
            "spearman_alive": 0.0,
            "kendall": r.kendall,
            "regret": r.regret,
            "chosen": [],
            "epochs": r.epochs,
            "needs_validation": False,
        }
    )
    return rows


# --------------------------------------------------------------------------------------------
# diagnosis check


def ground_truth(run: dict[str, Any], best_acc: float, window: int = 5) -> tuple[str, int | None]:
    """A label from the test curves only, and the overfitting onset (first epoch after the
    test-loss minimum) when the label is ``overfitting``.

    In order: ``diverged`` (non-finite training loss); ``lr_too_high`` (unstable: the test
    accuracy moves by more than 2 points between epochs in the last ``window`` epochs on average
    and the test loss rises by more than 2 % from one epoch to the next at least twice, and it
    ends more than 2 points below the grid's best); ``overfitting`` (the test loss ends at
    least 10 % above its minimum, reached at least 3 epochs before the end, while the training
    loss kept falling); ``lr_too_low`` (still improving at the end: test loss down by more than
    5 % over the last ``window`` epochs, or final accuracy more than 2 points below the best with
    test accuracy still rising); otherwise ``converging``.
    """
    h = run["history"]
    if run["status"] == "diverged" or not all(math.isfinite(r["train_loss"]) for r in h):
        return "diverged", None
    acc = np.array([r["test_acc"] for r in h])
    loss = np.array([r["test_loss"] for r in h])
    train = np.array([r["train_loss"] for r in h])
    jumps = np.abs(np.diff(acc[-(window + 1) :]))
    final_gap = best_acc - acc[-1]
    loss_jumps = int(np.sum(loss[1:] > 1.02 * loss[:-1]))  # a slow run's test loss only falls
    if 100 * float(np.mean(jumps)) > 2.0 and loss_jumps >= 2 and 100 * final_gap > 2.0:
        return "lr_too_high", None
    m = int(np.argmin(loss))
    if m <= len(h) - 4 and loss[-1] > 1.10 * loss[m] and train[-1] < train[m]:
        return "overfitting", int(h[m]["epoch"]) + 1
    old = loss[-(window + 1)]
    rising = acc[-1] - acc[-(window + 1)] > 0.0
    if loss[-1] < 0.95 * old or (100 * final_gap > 2.0 and rising):
        return "lr_too_low", None
    return "converging", None


def diagnosis_check(
    runs: Sequence[dict[str, Any]], datasets: Sequence[str], config: Any = None
) -> dict[str, Any]:
    """Agreement of the gain diagnosis (peers = the other learning rates of the same seed, as in
    a study) with :func:`ground_truth`, per label, and the onset error in epochs."""
    from gainsearch.core.features import diagnose

    rows, onset_errors = [], []
    for dataset in datasets:
        for pairs in _grid(runs, dataset).values():
            best = max(test_acc(m) for m, _ in pairs)
            curves = [_curve(m) for m, _ in pairs]
            for i, (run, _) in enumerate(pairs):
                truth, onset = ground_truth(run, best)
                peers = curves[:i] + curves[i + 1 :]
                diverged_at = next(
                    (r["epoch"] for r in run["history"] if not math.isfinite(r["train_loss"])),
                    None,
                )
                d = diagnose(
                    curves[i],
                    peers=peers,
                    config=config,
                    diverged_epoch=diverged_at,
                    train_loss=[r["train_loss"] for r in run["history"]],
                )
                rows.append(
                    {
                        "dataset": dataset,
                        "lr": run["lr"],
                        "seed": run["seed"],
                        "truth": truth,
                        "label": d.label,
                        "onset_truth": onset,
                        "onset_gain": d.overfit_onset,
                    }
                )
                if truth == "overfitting" and d.overfit_onset is not None:
                    onset_errors.append(d.overfit_onset - onset)
    agree = float(np.mean([r["truth"] == r["label"] for r in rows])) if rows else math.nan
    return {
        "agreement": agree,
        "rows": rows,
        "onset_mae": float(np.mean(np.abs(onset_errors))) if onset_errors else math.nan,
        "onset_bias": float(np.mean(onset_errors)) if onset_errors else math.nan,
        "onset_pairs": len(onset_errors),
    }


#: The diagnosis thresholds tried ("off": a value that never fires), and the seed split.
FITTED_LOSSES = (1e-12, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2)
FAR_BELOW = (1e9, 5.0, 10.0, 20.0)
CALIBRATION_SEEDS = (0, 1, 2)


def _off(value: float) -> str:
    return "off" if value in (1e-12, 1e9) else f"{value:g}"


def diagnosis_calibration(
    runs: Sequence[dict[str, Any]], datasets: Sequence[str]
) -> list[dict[str, Any]]:
    """Agreement for each pair of ``fitted_loss`` and ``far_below_peers``, on the calibration
    seeds and on the others (the check)."""
    from gainsearch.core.features import DiagnosisConfig

    out = []
    for fitted in FITTED_LOSSES:
        for far in FAR_BELOW:
            config = DiagnosisConfig(fitted_loss=fitted, far_below_peers=far)
            rows = diagnosis_check(runs, datasets, config)["rows"]
            split = {
                part: [
                    r["truth"] == r["label"]
                    for r in rows
                    if (r["seed"] in CALIBRATION_SEEDS) == (part == "calibrate")
                ]
                for part in ("calibrate", "check")
            }
            out.append(
                {
                    "fitted_loss": fitted,
                    "far_below_peers": far,
                    **{k: float(np.mean(v)) if v else math.nan for k, v in split.items()},
                }
            )
    return out


# --------------------------------------------------------------------------------------------
# calibration of the score


def calibration_table(
    runs: Sequence[dict[str, Any]],
    datasets: Sequence[str],
    weights: Sequence[float] = (0.0, 0.5, 1.0, 2.0, 4.0),
    windows: Sequence[int] = (3, 5, 7),
) -> list[dict[str, Any]]:
    rows = []
    for window in windows:
        for weight in weights:
            fn = _gain_feature("gain_score", variability_weight=weight, window=window)
            row: dict[str, Any] = {"window": window, "weight": weight}
            for dataset in datasets:
                s = evaluate_signal(runs, dataset, fn, "gain")
                row[dataset] = (s.spearman, s.regret)
            rows.append(row)
    return rows


def pruning_table(
    runs: Sequence[dict[str, Any]],
    datasets: Sequence[str],
    settings: Sequence[tuple[int, float, float]] = (
        (1, 50.0, 3.0),
        (1, 50.0, math.inf),
        (2, 50.0, 3.0),
        (3, 50.0, 3.0),
        (1, 25.0, 3.0),
    ),
) -> list[dict[str, Any]]:
    """The decision core replayed on the grid: trials arrive in a seeded random order, each is
    judged every epoch against the curves of the trials before it (cut where they stopped), as
    GainPruner does. Epochs spent and the regret of the best-scoring completed trial, per
    (warm-up epochs, percentile, variability factor)."""
    from gainsearch.core.decision import DecisionConfig, decide
    from gainsearch.core.objective import gain_score

    rows = []
    for warmup, percentile, factor in settings:
        off = 1e300  # math.inf: the too-variable rule switched off
        cfg = DecisionConfig(
            grace_period=warmup,
            percentile=percentile,
            variability_factor=factor if math.isfinite(factor) else off,
        )
        row: dict[str, Any] = {"warmup": warmup, "percentile": percentile, "factor": factor}
        for dataset in datasets:
            spent, full, regrets, lost = 0, 0, [], 0
            for seed, pairs in _grid(runs, dataset).items():
                order = np.random.default_rng(seed).permutation(len(pairs))
                accs = [test_acc(m) for m, _ in pairs]
                seen: list[list[float]] = []
                done: list[int] = []
                for i in order:
                    run = pairs[i][0]
                    curve = _curve(run)
                    full += len(curve)
                    kept = curve
                    for t in range(1, len(curve) + 1):
                        if decide(curve[:t], seen, config=cfg).prune:
                            kept = curve[:t]
                            break
                    spent += len(kept)
                    seen.append(kept)
                    if len(kept) == len(curve) and run["status"] != "diverged":
                        done.append(int(i))
                scores = {i: gain_score(_curve(pairs[i][0])) for i in done}
                pick = max(scores, key=lambda i: scores[i]) if scores else None
                chosen = accs[pick] if pick is not None else 0.0
                regrets.append(100 * (max(accs) - chosen))
                lost += int(pick is None or accs[pick] < max(accs))
            row[dataset] = (100 * (1 - spent / full), float(np.mean(regrets)))
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------
# printing


def print_tables(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    datasets = [d for d in SETUPS if any(r["dataset"] == d for r in runs)]
    summary: dict[str, Any] = {"selection": {}, "calibration": [], "diagnosis": {}}
    for dataset in datasets:
        grid = _grid(runs, dataset)
        lrs = sorted({m["lr"] for pairs in grid.values() for m, _ in pairs})
        epochs = next(iter(grid.values()))[0][0]["epochs"]
        print(
            f"\n## {dataset} ({SETUPS[dataset][0]}): {len(lrs)} learning rates "
            f"{lrs[0]:.3g}..{lrs[-1]:.3g}, seeds {sorted(grid)}, {epochs} epochs, SGD momentum 0.9"
        )
        print("test accuracy (%) by learning rate, mean over seeds (diverged = 0):")
        for lr in lrs:
            accs = [test_acc(m) for pairs in grid.values() for m, _ in pairs if m["lr"] == lr]
            print(f"  lr {lr:<8.3g} {100 * np.mean(accs):6.2f}")
        rows = selection_table(runs, dataset)
        summary["selection"][dataset] = rows
        print(
            f"| {'signal':<32} | {'Spearman':>8} | {'not diverged':>12} | {'Kendall':>7} | "
            f"{'regret (pts)':>12} | "
            f"{'epochs':>6} | {'validation data':>15} |"
        )
        print(f"|{'-' * 34}|{'-' * 9}:|{'-' * 13}:|{'-' * 8}:|{'-' * 13}:|{'-' * 7}:|{'-' * 17}|")
        for r in rows:
            print(
                f"| {r['signal']:<32} | {r['spearman']:>8.3f} | {r['spearman_alive']:>12.3f} | "
                f"{r['kendall']:>7.3f} | "
                f"{r['regret']:>12.2f} | {r['epochs']:>6d} | "
                f"{'yes (20 %)' if r['needs_validation'] else 'no':>15} |"
            )
    diag = diagnosis_check(runs, datasets)
    summary["diagnosis"] = diag
    labels = ("diverged", "lr_too_high", "lr_too_low", "converging", "overfitting")
    print(
        f"\n## diagnosis vs ground truth from the test curves: agreement "
        f"{100 * diag['agreement']:.1f} % of {len(diag['rows'])} runs"
    )
    print(f"rows: truth; columns: gain diagnosis ({', '.join(labels)}, undetermined)")
    for truth in labels:
        counts = [
            sum(r["truth"] == truth and r["label"] == lab for r in diag["rows"])
            for lab in (*labels, "undetermined")
        ]
        print(f"  {truth:<12} {' '.join(f'{c:>4d}' for c in counts)}")
    print(
        f"overfitting onset error: {diag['onset_mae']:.2f} epochs mean absolute, "
        f"{diag['onset_bias']:+.2f} mean signed (detected - truth), over the "
        f"{diag['onset_pairs']} runs where both saw overfitting"
    )
    dcal = diagnosis_calibration(runs, datasets)
    summary["diagnosis_calibration"] = dcal
    print(
        "\n## diagnosis calibration: agreement (%) on seeds 0-2 / 3-4 by fitted_loss "
        "(rows) and far_below_peers (columns); 'off' leaves the rule out"
    )
    fars = [c["far_below_peers"] for c in dcal if c["fitted_loss"] == dcal[0]["fitted_loss"]]
    print("  fitted_loss  " + "  ".join(f"{_off(f):>13}" for f in fars))
    for fitted in dict.fromkeys(c["fitted_loss"] for c in dcal):
        cells = [
            f"{100 * c['calibrate']:>5.1f} / {100 * c['check']:>5.1f}"
            for c in dcal
            if c["fitted_loss"] == fitted
        ]
        print(f"  {_off(fitted):>11}  " + "  ".join(cells))
    cal = calibration_table(runs, datasets)
    summary["calibration"] = cal
    print("\n## calibration: score = level - weight * variability, window W")
    print("  W  weight  " + "  ".join(f"{d + ' rho / regret':>24}" for d in datasets))
    for row in cal:
        cells = "  ".join(f"{row[d][0]:>14.3f} / {row[d][1]:>6.2f}" for d in datasets)
        print(f"  {row['window']}  {row['weight']:>6.2f}  {cells}")
    prune = pruning_table(runs, datasets)
    summary["pruning"] = prune
    print("\n## decision core replayed on the grid (trials in a seeded random order)")
    print(
        "  warm-up  percentile  var. factor  "
        + "  ".join(f"{d + ' epochs saved / regret':>32}" for d in datasets)
    )
    for row in prune:
        cells = "  ".join(f"{row[d][0]:>23.1f} % / {row[d][1]:>5.2f}" for d in datasets)
        print(f"  {row['warmup']:>7}  {row['percentile']:>10g}  {row['factor']:>11g}  {cells}")
    return summary


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: digits, 5 rates, 2 seeds")
    parser.add_argument("--datasets", nargs="+", choices=sorted(SETUPS), default=None)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lr-min", type=float, default=1e-4)
    parser.add_argument("--lr-max", type=float, default=1.0)
    parser.add_argument("--n-lr", type=int, default=9, help="log-spaced learning rates")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--data-root", default=str(DEFAULT_MNIST), help="mnist5k folder")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"runs JSON (default {PUBLISHED.relative_to(ROOT)}; --quick: a temporary file)",
    )
    parser.add_argument("--from-json", type=Path, help="analyse saved runs instead of training")
    args = parser.parse_args(argv)
    if args.quick and args.out is not None and args.out.resolve().parent == PUBLISHED.parent:
        parser.error("--quick never writes benchmarks/results/ (the published evidence)")
    if args.out is None:
        quick_out = Path(tempfile.mkdtemp(prefix="selection-quick-")) / "selection.json"
        args.out = quick_out if args.quick else PUBLISHED

    if args.from_json:
        runs = json.loads(args.from_json.read_text())["runs"]
    else:
        datasets = args.datasets or (["digits"] if args.quick else list(SETUPS))
        if args.quick:
            args.seeds, args.epochs, args.n_lr = min(args.seeds, 2), min(args.epochs, 6), 5
        lrs = np.logspace(math.log10(args.lr_min), math.log10(args.lr_max), args.n_lr)
        started = time.perf_counter()
        runs = run_grid(
            datasets,
            [float(f"{lr:.4g}") for lr in lrs],
            list(range(args.seeds)),
            args.epochs,
            data_root=args.data_root,
            workers=args.workers,
        )
        wall = time.perf_counter() - started
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"argv": sys.argv[1:], "wall_s": wall, "runs": runs}))
        print(f"{len(runs)} runs in {wall:.0f} s -> {args.out}")
    print_tables(runs)


if __name__ == "__main__":
    main()

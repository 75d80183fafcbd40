"""Does GainPruner save epochs without losing the best model? (issue: Optuna back end)

    python benchmarks/pruning.py [--spec search_spaces/mnist_lenet_lr.yaml] [--trials 20]

Runs the spec's learning-rate study twice with the same TPE seed and trial count: once with
GainPruner and once without pruning (diverged trials still stop, as the trainer must). Prints, for
each: epochs trained, wall time, and the best trial's (by the spec's objective) test accuracy,
which is recorded with eval_test for this evaluation only and read after the study; nothing
that decides reads it. Target: >= 50 % fewer epochs, best test accuracy within 0.5 points.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import optuna

from gainsearch.search.run_optuna import run_study
from gainsearch.search.spaces import load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=ROOT / "search_spaces" / "mnist_lenet_lr.yaml")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--data-root", help="override the spec's data_root")
    parser.add_argument("--percentile", type=float, help="override pruner.percentile")
    parser.add_argument("--grace-period", type=int, help="override pruner.grace_period")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    spec = load_spec(args.spec)
    if args.data_root:
        spec = spec.with_train(data_root=args.data_root)
    elif spec.train.get("data_root") and not Path(spec.train["data_root"]).is_absolute():
        spec = spec.with_train(data_root=str((ROOT / spec.train["data_root"]).resolve()))
    pruner_settings = dict(spec.to_dict()["pruner"])
    if args.percentile is not None:
        pruner_settings["percentile"] = args.percentile
    if args.grace_period is not None:
        pruner_settings["grace_period"] = args.grace_period
    results = {}
    for label, pruner in (("GainPruner", "gain"), ("no pruning", "none")):
        variant = parse_spec({**spec.to_dict(), "pruner": {**pruner_settings, "type": pruner}})
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            outcome = run_study(
                variant, out_dir=out, n_trials=args.trials, eval_test=True, heartbeat=None
            )
            wall = time.perf_counter() - start
        epochs = sum(r.epochs for r in outcome.rows)
        best = outcome.best["best"]
        best_row = next(r for r in outcome.rows if r.number == best["number"])
        pruned = sum(r.state == "pruned" for r in outcome.rows)
        results[label] = (epochs, wall, best_row.test_acc, best["params"]["lr"], pruned)

    print(
        f"spec: {args.spec.name}, {args.trials} trials, TPE seed {spec.seed}, "
        f"{spec.train['epochs']} epochs per trial at most; GainPruner grace period "
        f"{pruner_settings['grace_period']}, percentile {pruner_settings['percentile']:g}, "
        f"min peers {pruner_settings['min_peers']}"
    )
    print(
        f"{'study':<12} {'epochs':>7} {'wall s':>7} {'pruned':>7} {'best lr':>9} "
        f"{'best test acc':>14}"
    )
    for label, (epochs, wall, acc, lr, pruned) in results.items():
        print(f"{label:<12} {epochs:>7d} {wall:>7.1f} {pruned:>7d} {lr:>9.4g} {100 * acc:>13.2f}%")
    (e1, w1, a1, _, _), (e0, w0, a0, _, _) = results["GainPruner"], results["no pruning"]
    print(
        f"epochs saved: {100 * (1 - e1 / e0):.1f} % (target >= 50 %), wall time saved: "
        f"{100 * (1 - w1 / w0):.1f} %"
    )
    print(f"best test accuracy difference: {100 * (a1 - a0):+.2f} points (target within 0.5)")


if __name__ == "__main__":
    main()

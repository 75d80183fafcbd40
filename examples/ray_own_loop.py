"""Your own model and training loop in a Ray Tune learning-rate search, stopped on the gain.

    python examples/ray_own_loop.py [--trials 6] [--epochs 8]

The Ray twin of ``examples/optuna_own_loop.py``. Every trial trains on all of scikit-learn's
digits (no validation split). After each epoch, ``report_gain`` reports the trial score (the
training loss; NaN once it or the gain is non-finite), the gain and its features with
``ray.tune.report``; ``GainScheduler`` stops bad trials and keeps the reason. Ray runs locally on
127.0.0.1, two trials at a time.
"""

from __future__ import annotations

import argparse
import os
import tempfile

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # local Ray on loopback only

import torch
from ray import tune
from torch import nn

from gainsearch import GainMonitor, load_dataset
from gainsearch.integrations.ray import GainResults, GainScheduler, report_gain
from gainsearch.search.ray_cluster import connect


def train_digits(config: dict) -> None:
    """A Tune function trainable: your loop, plus three lines of gainsearch."""
    data = load_dataset("digits")
    x, y = data.x_train, data.y_train  # (N, 1, 8, 8), (N,)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 10),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=config["lr"], momentum=0.9)
    monitor = GainMonitor(in_shape=(1, 8, 8), target="all")
    losses: list[float] = []
    for epoch in range(1, config["epochs"] + 1):
        total = 0.0
        for idx in torch.randperm(len(x)).split(64):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        losses.append(total / len(x))
        monitor.measure(model, epoch)
        report_gain(monitor, epoch, train_loss=losses)  # GainScheduler decides on this
        if not torch.isfinite(loss):
            return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args()
    started = connect(None, num_cpus=2)
    scheduler = GainScheduler(metric="trial_score", mode="max", min_peers=2)
    try:
        grid = tune.Tuner(
            tune.with_resources(train_digits, {"cpu": 1}),
            param_space={
                "lr": tune.grid_search([float(v) for v in torch.logspace(-3, 0.5, args.trials)]),
                "epochs": args.epochs,
            },
            tune_config=tune.TuneConfig(
                scheduler=scheduler, metric="trial_score", mode="max", max_concurrent_trials=2
            ),
            run_config=tune.RunConfig(
                storage_path=tempfile.mkdtemp(prefix="gainsearch-ray-"),
                verbose=0,
                # the scheduler's evaluation (diagnosis against the peers, the rule) in results
                callbacks=[GainResults(scheduler)],
            ),
        ).fit()
    finally:
        if started:
            import ray

            ray.shutdown()
    for result in sorted(grid, key=lambda r: r.config["lr"]):
        m = result.metrics or {}
        reason = m.get("prune_reason", "")  # GainResults put it there
        print(
            f"lr={result.config['lr']:.2e} {'stopped' if reason else 'complete':8s} "
            f"epochs={m.get('epoch')} trial_score={m.get('trial_score'):.3f} "
            f"{m.get('diagnosis', '')} {reason}"
        )


if __name__ == "__main__":
    main()

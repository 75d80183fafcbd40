"""The same LightningModule under Ray Tune, stopped by GainScheduler, with no validation loop.

    pip install -c constraints.txt -e ".[ray,lightning]"
    python examples/lightning_ray.py --trials 4 --epochs 3

Ray Tune's Lightning callback reports on the validation end by default; ``GainCallback(
ray_tune=True)`` reports every training epoch with ``ray.tune.report`` (the trial score, the gain
and its features), and ``GainScheduler`` (the same decision core as Optuna's ``GainPruner``)
stops bad trials and says why. Ray runs locally, bound to 127.0.0.1, two trials at a time.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # local Ray on loopback only

import lightning.pytorch as pl
import torch
from lightning_optuna import DigitsNet
from ray import tune
from torch.utils.data import DataLoader, TensorDataset

from gainsearch import load_dataset
from gainsearch.core.signals import Indexed
from gainsearch.integrations.lightning import GainCallback
from gainsearch.integrations.ray import GainResults, GainScheduler
from gainsearch.search.ray_cluster import connect, tune_output


def train_digits(config: dict) -> None:
    """A Ray Tune function trainable: one Lightning fit, reported every epoch."""
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    data = load_dataset("digits")
    torch.manual_seed(0)
    trainer = pl.Trainer(
        max_epochs=config["epochs"],
        callbacks=[GainCallback(ray_tune=True)],
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    train = Indexed(TensorDataset(data.x_train, data.y_train))  # DigitsNet's (index, x, y)
    loader = DataLoader(train, batch_size=64, shuffle=True)
    trainer.fit(DigitsNet(config["lr"]), loader)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    started = connect(None, num_cpus=2)  # a local Ray on 127.0.0.1, no dashboard
    scheduler = GainScheduler(metric="trial_score", mode="max", min_peers=2)
    lrs = [float(v) for v in torch.logspace(-3, 0.5, args.trials)]  # the last ones diverge
    try:
        tuner = tune.Tuner(
            tune.with_resources(train_digits, {"cpu": 1}),
            param_space={"lr": tune.grid_search(lrs), "epochs": args.epochs},
            tune_config=tune.TuneConfig(
                scheduler=scheduler,
                metric="trial_score",
                mode="max",
                max_concurrent_trials=2,
                reuse_actors=True,  # the next trial in a finished one's process: no new imports
            ),
            run_config=tune.RunConfig(
                storage_path=tempfile.mkdtemp(prefix="gainsearch-ray-"),
                verbose=0,
                # the scheduler's evaluation (diagnosis against the peers, the rule) in results
                callbacks=[GainResults(scheduler)],
            ),
        )
        with tune_output(False):  # Tune's new output prints its box even at verbose=0
            grid = tuner.fit()
    finally:
        if started:
            import ray

            ray.shutdown()
    for result in sorted(grid, key=lambda r: r.config["lr"]):
        m = result.metrics or {}
        reason = m.get("prune_reason", "")  # GainResults put it there
        state = "stopped" if reason else "complete"
        print(
            f"lr={result.config['lr']:.2e} {state:8s} epochs={m.get('epoch')} "
            f"trial_score={m.get('trial_score')} {m.get('diagnosis', '')} {reason}"
        )
    best = grid.get_best_result()
    print(f"best: lr={best.config['lr']:.3g} (trial score {best.metrics['trial_score']:.3f})")


if __name__ == "__main__":
    main()

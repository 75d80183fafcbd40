"""GainCallback under DDP: two CPU processes (gloo), rank 0 measures, every rank decides alike.

    python benchmarks/lightning_ddp.py [--epochs 3] [--lr 0.05] [--out DIR]

Lightning's DDP strategy starts a second process that runs this script again. Each rank prints
one JSON line (and writes it to ``DIR/rank<r>.json`` with ``--out``: the two processes share the
terminal, so their lines can interleave): its rank, the epochs its callback measured (rank 0
only), whether the trainer stopped early and the prune reason it received, and the per-epoch
training losses (reduced over both ranks). With ``--lr 1e4`` the trial diverges: both ranks
must stop at the same epoch with the same reason. ``tests/test_integrations_lightning.py`` runs it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import warnings
from pathlib import Path

import lightning.pytorch as pl
import optuna
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from gainsearch import load_dataset
from gainsearch.integrations.lightning import GainCallback
from gainsearch.integrations.optuna import GainPruner


class Tiny(pl.LightningModule):
    def __init__(self, lr: float) -> None:
        super().__init__()
        self.lr = lr
        self.net = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--out", help="folder for one rank<r>.json per rank")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(1)
    rank = int(os.environ.get("LOCAL_RANK", "0"))
    trial = None
    if rank == 0:  # only rank 0 talks to the study
        study = optuna.create_study(direction="maximize", pruner=GainPruner())
        trial = study.ask()
    callback = GainCallback(trial=trial)
    torch.manual_seed(0)
    data = load_dataset("digits")
    loader = DataLoader(TensorDataset(data.x_train[:512], data.y_train[:512]), batch_size=64)
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        callbacks=[callback],
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=2,
        strategy="ddp",
    )
    trainer.fit(Tiny(args.lr), loader)
    line = json.dumps(
        {
            "rank": trainer.global_rank,
            "measured": callback.monitor.epochs if callback.monitor else [],
            "epochs_run": trainer.current_epoch,
            "pruned_reason": callback.pruned_reason,
            "losses": callback.losses,
            "reported": sorted(study.trials[0].intermediate_values) if rank == 0 else None,
        }
    )
    print(line, flush=True)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / f"rank{trainer.global_rank}.json").write_text(line)


if __name__ == "__main__":
    main()

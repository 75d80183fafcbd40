"""A LightningModule with no validation loop, tuned by Optuna and pruned by GainCallback.

    pip install -c constraints.txt -e ".[lightning]"
    python examples/lightning_optuna.py --trials 4 --epochs 3

Optuna's own Lightning callback reports on the validation end, so a fit without a validation
loop never reports and is never pruned. ``GainCallback`` reports at the end of every training
epoch: the trial score (``gainsearch.trial_score``: the training loss, NaN once the loss or gain
is non-finite) to Optuna, with the gain curve, features and diagnosis in the trial's user
attributes; ``GainPruner`` decides, and ``check_pruned()`` raises ``TrialPruned`` with the
reason. All of scikit-learn's digits train every trial (no validation split); the study is kept
in SQLite, so running the script again adds trials to it.

Each fit also stops on its own when the training passes' prediction changes (Label Wave),
averaged over the last 3 epochs, have not fallen for ``--patience`` epochs: Lightning's
``EarlyStopping`` on the signal ``GainCallback`` logs, without a validation loop. That is the
built-in trainer's ``select_by: prediction_changes, select_window: 3, patience: 3``, the rule
measured for symmetric label noise and small data (``docs/memorisation.md``; the library's
default stays the last epoch, and this example opts in), and the objective is the trial score at
the epoch it keeps. The training step returns its logits and the batch's
indices (``Indexed`` adds them to the data set) for that.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import lightning.pytorch as pl
import optuna
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from gainsearch import load_dataset
from gainsearch.core.signals import Indexed
from gainsearch.integrations.lightning import GainCallback
from gainsearch.integrations.optuna import GainPruner


class DigitsNet(pl.LightningModule):
    """A small CNN for the 8x8 digits. No validation_step: all data trains."""

    def __init__(self, lr: float) -> None:
        super().__init__()
        self.lr = lr
        self.net = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(32 * 4 * 4, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor], _: int
    ) -> dict[str, torch.Tensor]:
        idx, x, y = batch  # Indexed data: the examples' indices first
        logits = self(x)
        loss = nn.functional.cross_entropy(logits, y)
        self.log("train_loss", loss, on_epoch=True, on_step=False)
        return {"loss": loss, "logits": logits, "indices": idx}  # for prediction changes

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--patience", type=int, default=3, help="epochs without fewer changes")
    parser.add_argument("--storage", default="sqlite:///runs/lightning_optuna/study.db")
    args = parser.parse_args()
    if args.storage.startswith("sqlite:///"):
        Path(args.storage.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    data = load_dataset("digits")  # the train split; its test split is not used here
    train = Indexed(TensorDataset(data.x_train, data.y_train))

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", 1e-4, 1.0, log=True)
        torch.manual_seed(trial.number)
        callback = GainCallback(trial=trial, signals=["prediction_changes"], select_window=3)
        stop = pl.callbacks.EarlyStopping(
            monitor="prediction_changes", mode="min", patience=args.patience
        )
        seen: list[tuple[float, float]] = []  # (smoothed changes, trial score) per epoch
        record = pl.callbacks.LambdaCallback(
            on_train_epoch_end=lambda tr, _: seen.append(
                (
                    float(tr.callback_metrics["prediction_changes"]),
                    float(tr.callback_metrics["trial_score"]),
                )
            )
        )
        trainer = pl.Trainer(
            max_epochs=args.epochs,
            callbacks=[callback, record, stop],  # GainCallback first: it logs what they read
            limit_val_batches=0,  # no validation loop
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            accelerator="cpu",
        )
        loader = DataLoader(train, batch_size=64, shuffle=True)
        trainer.fit(DigitsNet(lr), loader)
        callback.check_pruned()  # raises optuna.TrialPruned with the reason
        kept = min(range(len(seen)), key=lambda i: (seen[i][0], i))  # EarlyStopping's best
        trial.set_user_attr("selected_epoch", kept + 1)
        return seen[kept][1]  # the trial score at the kept epoch, as the built-in objective

    study = optuna.create_study(
        study_name="lightning_digits",
        storage=args.storage,
        load_if_exists=True,
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=0),
        pruner=GainPruner(),
    )
    study.optimize(objective, n_trials=args.trials)
    for t in study.trials:
        reason = t.user_attrs.get("prune_reason", "")
        epochs = len(t.user_attrs.get("gain_curve", []))
        kept = t.user_attrs.get("selected_epoch", "-")
        print(
            f"#{t.number:2d} lr={t.params['lr']:.2e} {t.state.name:8s} epochs={epochs} "
            f"kept={kept} "
            f"{t.user_attrs.get('diagnosis', ''):12s} {reason}"
        )
    print(
        f"best: #{study.best_trial.number} lr={study.best_params['lr']:.3g} "
        f"(trial score {study.best_value:.3f}); study in {args.storage}"
    )


if __name__ == "__main__":
    main()

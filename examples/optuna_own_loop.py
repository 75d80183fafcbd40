"""Your own model and training loop in an Optuna learning-rate search, pruned on the gain.

    python examples/optuna_own_loop.py

No validation split: every trial trains on all of scikit-learn's digits. After each epoch,
``report_gain`` reports the trial score (``gainsearch.trial_score``: the training loss, NaN once
the loss or the gain is non-finite) to Optuna, stores the gain curve, features and diagnosis in
the trial's user attributes, asks GainPruner and raises ``TrialPruned`` with the reason.
"""

from __future__ import annotations

import optuna
import torch
from sklearn.datasets import load_digits
from torch import nn

from gainsearch import GainMonitor
from gainsearch.integrations.optuna import GainPruner, report_gain

digits = load_digits()
x = torch.tensor(digits.images, dtype=torch.float32)[:, None]  # (N, 1, 8, 8)
x = (x - x.mean()) / x.std()
y = torch.tensor(digits.target)


def objective(trial: optuna.Trial) -> float:
    lr = trial.suggest_float("lr", 1e-4, 1.0, log=True)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 128, 2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(128, 10),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    monitor = GainMonitor(in_shape=(1, 8, 8), target="all")
    score = float("nan")
    losses: list[float] = []  # the mean training loss of every epoch
    for epoch in range(1, 11):
        total = 0.0
        for idx in torch.randperm(len(x)).split(64):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        losses.append(total / len(x))
        monitor.measure(model, epoch)
        # report, store features + diagnosis, prune with a reason (raises optuna.TrialPruned)
        score = report_gain(
            trial, monitor, epoch, train_loss=losses, diverged=not torch.isfinite(loss).item()
        )
    return score


optuna.logging.set_verbosity(optuna.logging.WARNING)
study = optuna.create_study(
    direction="maximize",
    sampler=optuna.samplers.TPESampler(seed=0),
    pruner=GainPruner(grace_period=3, min_peers=3),
)
study.optimize(objective, n_trials=12)
for t in study.trials:
    print(
        f"#{t.number:2d} lr={t.params['lr']:.2e} {t.state.name:8s} "
        f"{t.user_attrs.get('diagnosis', ''):12s} {t.user_attrs.get('prune_reason', '')}"
    )
print(f"best lr: {study.best_params['lr']:.3g} (trial score {study.best_value:.2f})")

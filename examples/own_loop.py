"""Bring your own model and training loop: GainMonitor in three lines, and a stopping signal.

    python examples/own_loop.py

Trains a small CNN of its own on scikit-learn's 8x8 digits (all of them: no validation split)
and prints the gain curve and its diagnosis. Nothing here uses gainsearch's trainer or registry.
It also counts the prediction changes of the training passes (Label Wave), stops once they have
not fallen for 3 epochs, and keeps the weights of their lowest epoch: the stopping signal of
docs/stopping.md, in an own loop.
"""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits
from torch import nn

from gainsearch import GainMonitor
from gainsearch.core.selection import select_epoch
from gainsearch.core.signals import PredictionChanges

torch.manual_seed(0)
digits = load_digits()
x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0  # (N, 1, 8, 8)
x = (x - x.mean()) / x.std()
y = torch.tensor(digits.target)

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
optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)

monitor = GainMonitor(in_shape=(1, 8, 8), target="all")  # 1. create, with the input shape
changes = PredictionChanges(len(x))  # the training passes' predicted classes, by index
kept = {}
for epoch in range(1, 31):
    for idx in torch.randperm(len(x)).split(64):
        optimizer.zero_grad()
        logits = model(x[idx])
        nn.functional.cross_entropy(logits, y[idx]).backward()
        optimizer.step()
        changes.update(idx, logits)
    reading = monitor.measure(model, epoch)  # 2. measure after each epoch
    changed = changes.end_epoch()  # nan at the first epoch
    print(f"epoch {epoch:2d}  gain {reading.gain:6.2f} dB  prediction changes {changed:5.0f}")
    selection = select_epoch(changes.history, select_by="prediction_changes", patience=3)
    if selection.epoch == epoch:  # the lowest so far: keep these weights
        kept = {k: v.clone() for k, v in model.state_dict().items()}
    if selection.stop:
        print(f"stopping: {selection.reason}")
        break

model.load_state_dict(kept)  # the kept epoch's weights
print(f"kept epoch {selection.epoch}")
diagnosis = monitor.diagnose()  # 3. features and diagnosis of the curve
if selection.stop and diagnosis.label == "lr_too_low":
    # the gain still rising is what the stop avoided (the net fitting its last examples), not
    # a reason to train longer
    print(f"diagnosis: {diagnosis.label}, but the stop was chosen: its advice does not apply")
else:
    print(diagnosis)

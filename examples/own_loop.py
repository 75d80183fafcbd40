"""Bring your own model and training loop: GainMonitor in three lines.

    python examples/own_loop.py

Trains a small CNN of its own on scikit-learn's 8x8 digits (all of them: no validation split)
and prints the gain curve and its diagnosis. Nothing here uses gainsearch's trainer or registry.
"""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits
from torch import nn

from gainsearch import GainMonitor

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
for epoch in range(1, 16):
    for idx in torch.randperm(len(x)).split(64):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        optimizer.step()
    reading = monitor.measure(model, epoch)  # 2. measure after each epoch
    print(f"epoch {epoch:2d}  gain {reading.gain:6.2f} dB")

print(monitor.diagnose())  # 3. features and diagnosis of the curve

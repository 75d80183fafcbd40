"""The validation-free stopping signals against direct computations, and the measurement
contract (nothing of the model or the RNG changes)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from gainsearch.core.signals import (
    PredictionChanges,
    gradient_disparity,
    label_wave_epoch,
    moving_average,
    prediction_changes,
)


def test_prediction_changes_on_a_hand_made_sequence() -> None:
    epochs = [[0, 1, 2, 3], [0, 1, 1, 3], [2, 1, 1, 0], [2, 1, 1, 0]]
    tracker = PredictionChanges(4)
    values = []
    for preds in epochs:
        logits = torch.nn.functional.one_hot(torch.tensor(preds), 5).float()
        order = torch.tensor([2, 0, 3, 1])  # batches in any order, by index
        tracker.update(order[:2], logits[order[:2]])
        tracker.update(order[2:], logits[order[2:]])
        values.append(tracker.end_epoch())
    assert math.isnan(values[0]) and values[1:] == [1.0, 2.0, 0.0]
    assert tracker.history[1:] == [1.0, 2.0, 0.0]
    # an example not seen in an epoch does not count as a change
    assert prediction_changes(np.array([1, 2, -1]), np.array([1, 0, 3])) == 1.0
    with pytest.raises(ValueError, match=r"one prediction per training example each"):
        prediction_changes(np.array([1, 2]), np.array([1, 2, 3]))
    with pytest.raises(ValueError, match=r"indices must be in \[0, 4\)"):
        tracker.update(torch.tensor([4]), torch.zeros(1, 5))


def test_label_wave_picks_the_minimum_of_the_moving_average() -> None:
    changes = [math.nan, 40.0, 20.0, 10.0, 12.0, 30.0, 35.0]
    assert moving_average(changes, 2)[1:4].tolist() == [40.0, 30.0, 15.0]
    # trailing means by epoch: -, 40, 30, 15, 11, 21, 32.5: the lowest at epoch 5
    assert label_wave_epoch(changes, window=2) == 5
    assert label_wave_epoch([math.nan]) is None
    assert label_wave_epoch(changes, window=1, epochs=[2, 4, 6, 8, 10, 12, 14]) == 8


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(3 * 4 * 4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(torch.relu(self.bn(self.conv(x)))).flatten(1))


def test_gradient_disparity_against_two_explicit_backward_passes() -> None:
    torch.manual_seed(0)
    net = Net().eval()  # eval: no dropout, fixed BatchNorm statistics, a deterministic check
    x, y = torch.randn(40, 1, 4, 4), torch.randint(0, 4, (40,))
    value = gradient_disparity(net, x, y, batch_size=8, pairs=3, seed=7)
    generator = torch.Generator().manual_seed(7)
    expected = []
    for _ in range(3):
        order = torch.randperm(40, generator=generator)[:16]
        grads = []
        for part in (order[:8], order[8:]):
            net.zero_grad()
            nn.functional.cross_entropy(net(x[part]), y[part]).backward()
            grads.append(torch.cat([p.grad.reshape(-1) for p in net.parameters()]))
        expected.append(float((grads[0] - grads[1]).norm()))
    assert value == pytest.approx(float(np.mean(expected)), rel=1e-6)


def test_gradient_disparity_leaves_the_model_and_the_rng_as_they_were() -> None:
    torch.manual_seed(1)
    net = Net().train()
    net.conv.eval()  # a mixed mode, to be restored as it was
    x, y = torch.randn(40, 1, 4, 4), torch.randint(0, 4, (40,))
    state = {k: v.clone() for k, v in net.state_dict().items()}
    rng = torch.get_rng_state()
    value = gradient_disparity(net, x, y, batch_size=8, pairs=2)
    assert math.isfinite(value) and value > 0
    assert all(p.grad is None for p in net.parameters())
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())  # BN buffers too
    assert net.training and not net.conv.training and net.bn.training
    with pytest.raises(ValueError, match=r"two disjoint batches of batch_size=32"):
        gradient_disparity(net, x, y, batch_size=32)

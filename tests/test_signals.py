"""The validation-free stopping signals against direct computations, and the measurement
contract (nothing of the model or the RNG changes)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from gainsearch.core.selection import select_epoch
from gainsearch.core.signals import (
    PredictionChanges,
    gain_trend,
    gain_variability,
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


def test_gradient_disparity_against_explicit_backward_passes() -> None:
    torch.manual_seed(0)
    net = Net().eval()  # eval: no dropout, fixed BatchNorm statistics, a deterministic check
    x, y = torch.randn(40, 1, 4, 4), torch.randint(0, 4, (40,))
    value = gradient_disparity(net, x, y, batch_size=8, batches=3, seed=7)
    order = torch.randperm(40, generator=torch.Generator().manual_seed(7))[:24]
    grads = []
    for part in (order[:8], order[8:16], order[16:]):
        net.zero_grad()
        nn.functional.cross_entropy(net(x[part]), y[part]).backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in net.parameters()]))
    pairs = [(0, 1), (0, 2), (1, 2)]
    expected = np.mean([float((grads[i] - grads[j]).norm()) for i, j in pairs])
    assert value == pytest.approx(float(expected), rel=1e-6)


def test_gradient_disparity_leaves_the_model_and_the_rng_as_they_were() -> None:
    torch.manual_seed(1)
    net = Net().train()
    net.conv.eval()  # a mixed mode, to be restored as it was
    x, y = torch.randn(40, 1, 4, 4), torch.randint(0, 4, (40,))
    state = {k: v.clone() for k, v in net.state_dict().items()}
    rng = torch.get_rng_state()
    value = gradient_disparity(net, x, y, batch_size=8, batches=2)
    assert math.isfinite(value) and value > 0
    assert all(p.grad is None for p in net.parameters())
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())  # BN buffers too
    assert net.training and not net.conv.training and net.bn.training
    with pytest.raises(ValueError, match=r"needs 5 disjoint batches of batch_size=9"):
        gradient_disparity(net, x, y, batch_size=9)
    with pytest.raises(ValueError, match=r"batches must be at least 2"):
        gradient_disparity(net, x, y, batch_size=8, batches=1)


def test_the_gain_signals_against_direct_computations() -> None:
    gains = [0.0, 4.0, 6.0, 6.5, 6.4, 6.6, 9.0, 5.0]
    variability = gain_variability(gains, window=3)
    assert all(math.isnan(v) for v in variability[:2])
    diffs = np.diff(gains)
    assert variability[2] == pytest.approx(np.std(diffs[:2]))
    assert variability[7] == pytest.approx(np.std(diffs[4:7]))  # the last 3 differences
    trend = gain_trend(gains, epochs=[2, 4, 6, 8, 10, 12, 14, 16], window=3)
    assert all(math.isnan(v) for v in trend[:2])
    assert trend[5] == pytest.approx(np.polyfit([8, 10, 12], [6.5, 6.4, 6.6], 1)[0])
    assert math.isnan(gain_variability([1.0, math.nan, 2.0, 3.0])[2])


def test_the_selection_rule_keeps_the_lowest_smoothed_epoch_and_waits_patience() -> None:
    changes = {1: math.nan, 2: 40.0, 3: 20.0, 4: 10.0, 5: 12.0, 6: 30.0, 7: 9.0}
    sel = select_epoch(changes, select_by="prediction_changes")
    assert (sel.epoch, sel.value, sel.stop) == (7, 9.0, False)
    # a trailing mean of 2: 40, 30, 15, 11, 21, 19.5 -> epoch 5
    assert select_epoch(changes, select_by="prediction_changes", window=2).epoch == 5
    head = {e: v for e, v in changes.items() if e <= 6}
    waiting = select_epoch(head, select_by="prediction_changes", patience=3)
    assert (waiting.epoch, waiting.stop) == (4, False)  # 2 epochs since epoch 4
    stopped = select_epoch(head, select_by="prediction_changes", patience=2)
    assert stopped.stop and stopped.epoch == 4
    assert "not improved for 2 epochs since epoch 4" in stopped.reason
    # epochs are numbers: a stride of 2 waits 4 epochs for patience 4, i.e. two readings
    strided = {2: 5.0, 4: 3.0, 6: 4.0, 8: 4.0}
    assert select_epoch(strided, select_by="gain_trend", patience=4).stop
    assert not select_epoch(strided, select_by="gain_trend", patience=5).stop
    assert select_epoch({1: math.nan}, select_by="prediction_changes").epoch == 1
    assert select_epoch(changes, select_by="last").epoch == 7
    for kwargs, match in (
        ({"select_by": "val_loss"}, r"select_by must be one of 'last', 'prediction_changes'"),
        ({"select_by": "gain_trend", "patience": -1}, r"patience must be a positive integer"),
        ({"select_by": "last", "patience": 3}, r"patience=3 needs a stopping signal"),
        ({"select_by": "gain_trend", "window": 0}, r"select_window must be a positive integer"),
    ):
        with pytest.raises(ValueError, match=match):
            select_epoch(changes, **kwargs)

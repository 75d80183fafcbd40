"""GainMonitor: history, divergence as a reading, checkpoint round trip."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from gainsearch.core.monitor import GainMonitor, GainReading
from gainsearch.core.spectral import maximum_gain


def test_measure_appends_readings(small_net: nn.Module) -> None:
    monitor = GainMonitor(in_shape=(3, 6, 6), target="all")
    first = monitor.measure(small_net, 1)
    second = monitor.measure(small_net, 2)
    assert monitor.epochs == [1, 2] and len(monitor) == 2
    assert (
        first.gain == second.gain == maximum_gain(small_net, in_shape=(3, 6, 6), target="all").gain
    )
    assert first.class_gains is not None and len(first.class_gains) == 5
    assert monitor.gains.tolist() == [first.gain, second.gain]
    assert monitor.features().n_epochs == 2
    assert monitor.diagnose().label == "undetermined"


def test_epochs_must_increase(small_net: nn.Module) -> None:
    monitor = GainMonitor(in_shape=(3, 6, 6))
    monitor.measure(small_net, 3)
    with pytest.raises(ValueError, match=r"epoch must increase: got epoch=3 after epoch 3"):
        monitor.measure(small_net, 3)
    with pytest.raises(ValueError, match=r"epoch must be an int.*'4'"):
        monitor.measure(small_net, "4")  # type: ignore[arg-type]
    assert len(monitor) == 1


def test_non_finite_gain_is_recorded_as_divergence(small_net: nn.Module) -> None:
    monitor = GainMonitor(in_shape=(3, 6, 6))
    monitor.measure(small_net, 1)
    with torch.no_grad():
        small_net.fc.bias.fill_(float("inf"))
    reading = monitor.measure(small_net, 2)
    assert reading.diverged and monitor.diverged
    assert monitor.diagnose().label == "diverged"


def test_state_dict_round_trip_with_weights_only_load(small_net: nn.Module) -> None:
    image = torch.randn(3, 6, 6, generator=torch.Generator().manual_seed(0))
    monitor = GainMonitor(probe=image, target=1)
    for epoch in (1, 2, 5):
        monitor.measure(small_net, epoch)
    buffer = io.BytesIO()
    torch.save(monitor.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    restored = GainMonitor(in_shape=(3, 6, 6))
    restored.load_state_dict(state)
    assert restored.history == monitor.history
    assert restored.target == 1 and torch.equal(restored.probe, image)  # type: ignore[arg-type]
    # it continues after the last epoch with the same probe
    assert restored.measure(small_net, 6).gain == monitor.measure(small_net, 6).gain


def test_load_state_dict_checks(small_net: nn.Module) -> None:
    monitor = GainMonitor(in_shape=(3, 6, 6))
    with pytest.raises(ValueError, match=r"keys 'in_shape' and 'history'.*\['foo'\]"):
        monitor.load_state_dict({"foo": 1})
    other = GainMonitor(in_shape=(1, 8, 8)).state_dict()
    with pytest.raises(ValueError, match=r"in_shape=\(1, 8, 8\).*\(3, 6, 6\)"):
        monitor.load_state_dict(other)


def test_reading_dict_round_trip() -> None:
    reading = GainReading(4, float("nan"), (1.0, 2.0), 3, float("nan"), (0.5,), 0.9)
    back = GainReading.from_dict(reading.to_dict())
    assert back.epoch == 4 and math.isnan(back.gain) and back.class_gains == (0.5,)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, r"needs in_shape=\(C, H, W\) or probe"),
        ({"in_shape": (3, 6)}, r"in_shape must be three positive integers"),
        ({"in_shape": (3, 6, 6), "target": "max"}, r"target must be .*'max'"),
        ({"in_shape": (3, 6, 6), "normalize": "yes"}, r"normalize must be True or False"),
        ({"in_shape": (3, 6, 6), "eps": -1}, r"eps must be a positive finite number.*-1"),
        ({"probe": torch.zeros(6, 6)}, r"probe must have shape \(C, H, W\)"),
        ({"probe": torch.zeros(3, 6, 6), "in_shape": (1, 6, 6)}, r"does not match in_shape"),
    ],
)
def test_constructor_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        GainMonitor(**kwargs)

"""Shared fixtures: small deterministic models and data, no network, no GPU needed."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable

# Every Ray process the tests start binds 127.0.0.1: Ray reads this when it is first imported.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

# A shell's background job (`pytest ... &`) starts with SIGINT ignored, and gainsearch keeps an
# ignored signal ignored (by design, tested): the Ctrl-C tests need the default handler back,
# here and in the processes they start.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

import pytest
import torch
from torch import nn

from gainsearch.batteries.data import TensorData, load_dataset


class SmallNet(nn.Module):
    """A tiny CNN with BatchNorm and Dropout, to check mode and RNG handling."""

    def __init__(self, channels: int = 3, classes: int = 5) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(4 * 6 * 6, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(torch.relu(self.bn(self.conv(x))))
        return self.fc(h.flatten(1))


@pytest.fixture
def small_net() -> SmallNet:
    torch.manual_seed(0)
    net = SmallNet()
    with torch.no_grad():  # non-trivial running statistics
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.running_var.uniform_(0.5, 2.0)
    return net


@pytest.fixture(scope="session")
def digits() -> TensorData:
    return load_dataset("digits")


def wait_until(
    condition: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    proc: subprocess.Popen | None = None,
    poll: float = 0.05,
) -> None:
    """Poll ``condition`` until it holds. The test fails, saying ``what`` it waited for, when it
    does not within ``timeout`` seconds or when ``proc`` ends first: a slow machine makes a
    test fail with a message, never act on a state it did not reach."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"the process ended before {what}: {err.decode()[-2000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout:g} s for {what}")
        time.sleep(poll)

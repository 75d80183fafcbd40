"""Shared fixtures: small deterministic models and data, no network, no GPU needed."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator

# Every Ray process the tests start binds 127.0.0.1: Ray reads this when it is first imported.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
# One torch thread per process, here and in every process the tests start (commands, Ray
# workers): two test workers share two cores, and torch's threads fighting over them made single
# tests many times slower. Set before torch is imported.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# A shell's background job (`pytest ... &`) starts with SIGINT ignored, and gainsearch keeps an
# ignored signal ignored (by design, tested): the Ctrl-C tests need the default handler back,
# here and in the processes they start.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

import pytest
import torch
from torch import nn

from gainsearch.batteries.data import TensorData, load_dataset


def pytest_configure(config: pytest.Config) -> None:
    """Before the test workers start (pytest-xdist runs this first in the controller): the Ray
    token file a local Ray creates when missing, created once here, so that two workers starting
    their first local Ray at the same moment cannot write two different tokens."""
    if hasattr(config, "workerinput"):
        return  # a worker: the controller has done it
    try:
        from ray._private.authentication import authentication_token_setup as tokens
    except ImportError:  # no Ray extra: nothing starts a Ray
        return
    if not tokens._get_default_token_path().exists():
        tokens.generate_and_save_token()


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


@pytest.fixture(scope="session")
def ray_head() -> Iterator[str]:
    """One Ray cluster for the whole session (``ray start --head`` on 127.0.0.1, 2 CPUs, no
    dashboard, its own process group), stopped at the end. The Ray searches run as commands
    (``--address``) join it instead of starting and stopping a Ray each, and the local-Ray test
    checks that gainsearch's own local Ray does not join it. Searches in this process keep
    their local Ray: a driver that has run a local Ray in a process (which turns Ray's token
    authentication on for the whole process) cannot run actors on this cluster."""
    import socket
    import sys
    from pathlib import Path

    pytest.importorskip("ray.tune")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray_cli = Path(sys.executable).with_name("ray")
    # no token authentication on this loopback-only test cluster (see ray_address)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    head = subprocess.Popen(
        [
            str(ray_cli),
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--node-ip-address=127.0.0.1",
            "--num-cpus=2",
            "--include-dashboard=false",
            "--disable-usage-stats",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group: the head and what it started
        env=env,
    )
    address = f"127.0.0.1:{port}"

    def up() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    try:
        wait_until(up, timeout=120, what=f"the session's Ray head at {address}", proc=head)
        yield address
    finally:  # the head's process group: `ray start` and every Ray process it started
        os.killpg(head.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            head.wait(timeout=5)
        with contextlib.suppress(ProcessLookupError):  # a test cluster: no state to keep
            os.killpg(head.pid, signal.SIGKILL)


@pytest.fixture
def ray_address(ray_head: str) -> Iterator[str]:
    """The session's Ray for one test, whose commands connect without token authentication:
    a local Ray started earlier in this process set ``RAY_AUTH_MODE=token``, which the commands
    would inherit. Set for the test, then put back."""
    before = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    try:
        yield ray_head
    finally:
        if before is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = before

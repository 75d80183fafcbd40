"""Connecting to Ray and taming its output: the cluster plumbing of the Ray back end
(:mod:`gainsearch.search.run_ray` keeps the runner).

* :func:`connect`: join a cluster, or start a local Ray bound to 127.0.0.1 with no dashboard;
* :func:`check_reachable`: fail in seconds on an address that does not answer;
* :func:`loopback_only`: make a local Ray bind loopback only;
* :func:`tune_output`: Tune's own reporting on stdout, or none;
* :func:`quiet_expected_warnings`: drop the log records and warnings of expected events.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import warnings
from collections.abc import Iterator
from typing import Any

try:
    import ray
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "gainsearch.search.ray_cluster needs Ray: pip install 'gainsearch[ray]'"
    ) from err

__all__ = [
    "LOCAL_TOKEN",
    "NAN_SCORE",
    "check_reachable",
    "connect",
    "loopback_only",
    "quiet_expected_warnings",
    "tune_output",
]

logger = logging.getLogger(__name__)


def connect(address: str | None, *, num_cpus: int | None = None) -> bool:
    """Join ``address`` (``auto``, ``host:port``, ``ray://host:port``) or start a local Ray.

    A local Ray binds 127.0.0.1 and has no dashboard. Returns True when this call started Ray.

    Raises:
        ValueError: the address cannot be reached (within Ray's connection timeout).
    """
    if ray.is_initialized():
        return False
    if address is None:
        loopback_only()
        with quiet_expected_warnings(LOCAL_TOKEN):
            ray.init(
                # "local": a new Ray of its own, even where `ray start` left a cluster on this
                # machine (ray.init() without an address would join that one)
                address="local",
                num_cpus=num_cpus,
                include_dashboard=False,
                logging_level=logging.WARNING,
                log_to_driver=False,
            )
        return True
    check_reachable(address)
    try:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    except Exception as err:  # ConnectionError, TimeoutError, ValueError, RuntimeError ...
        raise ValueError(
            f"--address {address!r}: cannot connect to a Ray cluster there ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}). Start one with `ray start --head` "
            "and pass its address (auto, host:port or ray://host:10001)."
        ) from None
    return True


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail within ``timeout`` seconds when a ``host:port`` address does not answer.

    Ray itself retries an unreachable GCS for minutes; ``auto`` is left to Ray, which fails at
    once when no local cluster runs.
    """
    import socket

    target = address.removeprefix("ray://")
    if address == "auto" or ":" not in target:
        return
    host, _, port = target.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return
    except ValueError:
        raise ValueError(
            f"--address {address!r}: expected auto, host:port or ray://host:port."
        ) from None
    except OSError as err:
        raise ValueError(
            f"--address {address!r}: cannot connect to a Ray cluster there ({err}). Start one "
            "with `ray start --head` and pass its address (auto, host:port or ray://host:10001)."
        ) from None


@contextlib.contextmanager
def tune_output(shown: bool) -> Iterator[None]:
    """Tune's own reporting on stdout, or none (``RAY_AIR_NEW_OUTPUT=0`` and ``verbose=0``)."""
    if shown:
        yield
        return
    before = os.environ.get("RAY_AIR_NEW_OUTPUT")
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = before


def loopback_only() -> None:
    """Make a local Ray bind 127.0.0.1 only.

    Ray reads ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` when it is imported: the variable reaches the
    Ray processes started next (they inherit the environment) and the constant already read by
    this process is set to match.
    """
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    try:
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False
    except (ImportError, AttributeError):  # pragma: no cover - other Ray versions
        logger.warning("could not force Ray onto loopback; set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0")


#: What Ray and Optuna say about expected events of a search, silenced during one: OptunaSearch
#: telling Optuna a diverged trial's NaN score (the trial is pruned, and the table says why)...
NAN_SCORE = "is not acceptable"
#: ...and Ray's note on token authentication, for a Ray started here on loopback only.
LOCAL_TOKEN = "Token authentication is enabled for this Ray cluster"


class _Drop(logging.Filter):
    def __init__(self, patterns: tuple[str, ...]) -> None:
        super().__init__()
        self.patterns = patterns

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(p in message for p in self.patterns)


@contextlib.contextmanager
def quiet_expected_warnings(*patterns: str) -> Iterator[None]:
    """Drop log records and warnings that contain one of ``patterns`` (Ray's and Optuna's
    loggers and their handlers, which children propagate to; ``warnings.warn`` too)."""
    drop = _Drop(patterns)
    loggers = [logging.getLogger(name) for name in ("", "ray", "ray.tune", "optuna")]
    targets: list[Any] = [*loggers, *{h for lg in loggers for h in lg.handlers}]
    for target in targets:
        target.addFilter(drop)
    try:
        with warnings.catch_warnings():
            for pattern in patterns:
                warnings.filterwarnings("ignore", message=f".*{re.escape(pattern)}")
            yield
    finally:
        for target in targets:
            target.removeFilter(drop)

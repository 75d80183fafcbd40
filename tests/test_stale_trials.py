"""A dead worker's trial never stays RUNNING, however fast the other trials end (issue 31).

Optuna fails a stale trial only when a worker starts a trial. Here a "killed worker" is a
trial planted RUNNING in the study with one heartbeat and no process behind it; the search
then runs in this process with trials made trivially short or slower than the grace period. On
the old code both end with the planted trial RUNNING (checked by breaking ``_settle_running``);
on the new one the worker that finds the count reached waits, fails it and runs its retry.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from gainsearch.search import run_optuna
from gainsearch.search.run_optuna import run_study
from gainsearch.search.spaces import parse_spec
from gainsearch.search.study import STALE_GRACE_FACTOR, create_study

HEARTBEAT = 1  # a trial is stale after STALE_GRACE_FACTOR seconds without a heartbeat
SPEC = parse_spec(
    {
        "name": "stale",
        "train": {"dataset": "digits", "model": "digits_lenet", "epochs": 1, "batch_size": 256},
        "search": {"lr": {"type": "float", "low": 1e-3, "high": 0.1, "log": True}},
        "pruner": {"type": "none"},
        "sampler": {"type": "random", "seed": 0},
    }
)
DIST = {"lr": optuna.distributions.FloatDistribution(1e-3, 0.1, log=True)}


def _plant_dead_trial(url: str) -> int:
    """A RUNNING trial with one heartbeat, whose worker is gone: its number."""
    study = create_study(SPEC, url, heartbeat=HEARTBEAT, retry_failed=1)
    with pytest.warns(UserWarning, match="Heartbeat"):  # ask() is not optimize(): it is a plant
        trial = study.ask(DIST)
    study._storage.record_heartbeat(trial._trial_id)  # type: ignore[attr-defined]
    return trial.number


def _slowed(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """Every trial takes at least ``seconds`` more (a slow machine)."""
    original = run_optuna.GainObjective.__call__

    def slow(self: Any, trial: optuna.Trial) -> Any:
        time.sleep(seconds)
        return original(self, trial)

    monkeypatch.setattr(run_optuna.GainObjective, "__call__", slow)


def _check_settled(url: str, dead: int, progress: list[dict[str, Any]]) -> None:
    trials = optuna.load_study(study_name="stale", storage=url).get_trials()
    states = {t.number: t.state for t in trials}
    assert TrialState.RUNNING not in states.values(), states
    assert states[dead] == TrialState.FAIL, states
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == dead]
    assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE, states
    assert retried[0].params == trials[dead].params


@pytest.mark.parametrize("trial_seconds", [0.0, 1.5 * STALE_GRACE_FACTOR * HEARTBEAT])
def test_the_last_worker_fails_and_retries_a_dead_workers_trial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trial_seconds: float
) -> None:
    """Fast: the study's one trial ends long before the dead trial goes stale. Slow: it ends
    after, but no trial starts then. Either way the old code left the dead trial RUNNING."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    dead = _plant_dead_trial(url)
    _slowed(monkeypatch, trial_seconds)
    progress: list[dict[str, Any]] = []
    started = time.monotonic()
    run_study(
        SPEC,
        out_dir=tmp_path / "out",
        n_trials=1,
        storage=url,
        heartbeat=HEARTBEAT,
        retry_failed=1,
        progress=progress.append,
    )
    _check_settled(url, dead, progress)
    # bounded: the wait is at most the grace period and one interval, besides the trials
    grace = (STALE_GRACE_FACTOR + 1) * HEARTBEAT
    assert time.monotonic() - started < grace + 2 * trial_seconds + 60
    if trial_seconds == 0:  # the dead trial was not stale yet: the progress line said so
        assert any(0 < p.get("waiting", 0) <= grace for p in progress), progress


def test_a_resumed_search_fails_and_retries_a_dead_trial_first(tmp_path: Path) -> None:
    """Every worker died (the count is already reached): running the search again settles the
    dead trial at once and runs its retry."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    run_study(SPEC, out_dir=tmp_path / "out", n_trials=1, storage=url, heartbeat=HEARTBEAT)
    dead = _plant_dead_trial(url)
    time.sleep(STALE_GRACE_FACTOR * HEARTBEAT + 0.5)  # its heartbeat is stale now
    outcome = run_study(
        SPEC,
        out_dir=tmp_path / "out",
        n_trials=1,
        storage=url,
        heartbeat=HEARTBEAT,
        retry_failed=1,
    )
    _check_settled(url, dead, [])
    assert [r.state for r in outcome.rows].count("complete") == 2


def test_without_heartbeats_nothing_is_waited_for(tmp_path: Path) -> None:
    """A trial without heartbeats cannot be told dead from alive: the worker leaves at once."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    create_study(SPEC, url, heartbeat=None).ask(DIST)  # a RUNNING trial, no heartbeat
    started = time.monotonic()
    run_study(SPEC, out_dir=tmp_path / "out", n_trials=1, storage=url, heartbeat=None)
    assert time.monotonic() - started < 60
    states = [t.state for t in optuna.load_study(study_name="stale", storage=url).get_trials()]
    assert states.count(TrialState.RUNNING) == 1

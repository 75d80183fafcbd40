"""The Optuna study behind both back ends: storage, sampler, pruner and counts (its rows:
:mod:`gainsearch.search.record`).

The Optuna runner optimises this study itself; the Ray runner hands it to ``OptunaSearch`` (TPE
through Tune), so ``study.db`` opens in optuna-dashboard whichever back end ran the search.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import optuna
from optuna.pruners import BasePruner
from optuna.trial import FrozenTrial, TrialState

from gainsearch.integrations.optuna import GainPruner
from gainsearch.search.results import redact
from gainsearch.search.spaces import ExperimentSpec, spec_differences

__all__ = [
    "FINISHED",
    "check_same_space",
    "check_timeout",
    "create_study",
    "finished_count",
    "make_pruner",
    "make_sampler",
    "make_storage",
    "study_counts",
]

#: Trial states that count towards ``--trials``.
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def make_sampler(spec: ExperimentSpec) -> optuna.samplers.BaseSampler:
    """TPE (default) or random sampling, seeded by the spec and by the first trial it samples.

    A sampler seeded by the spec alone proposes the same sequence in every process that opens
    the study: parallel workers (``--workers``, or one command per machine on a shared storage)
    ran the same parameters, and a resumed study repeated its first ones. Seeded by
    ``(seed, number of its first trial)`` each process has its own sequence, still reproducible;
    a fresh study's first process (first trial 0) keeps the spec's seed, so a single-process
    search gives the same trials as before.
    """
    return _SeededPerProcess(spec.sampler, spec.seed)


class _SeededPerProcess(optuna.samplers.BaseSampler):
    """The spec's sampler, created at the first trial it samples (see :func:`make_sampler`)."""

    def __init__(self, kind: str, seed: int | None) -> None:
        self.kind, self.seed = kind, seed
        self._sampler: optuna.samplers.BaseSampler | None = None

    @property
    def sampler(self) -> optuna.samplers.BaseSampler:
        if self._sampler is None:  # before any trial (e.g. a study asked for its search space)
            self._sampler = self._make(self.seed)
        return self._sampler

    def _make(self, seed: int | None) -> optuna.samplers.BaseSampler:
        if self.kind == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        return optuna.samplers.TPESampler(seed=seed)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if self._sampler is None:
            seed = self.seed
            if seed is not None and trial.number > 0:
                seed = int(np.random.SeedSequence([seed, trial.number]).generate_state(1)[0])
            self._sampler = self._make(seed)
        self.sampler.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> Any:
        return self.sampler.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, space: Any) -> Any:
        return self.sampler.sample_relative(study, trial, space)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, name: str, distribution: Any
    ) -> Any:
        return self.sampler.sample_independent(study, trial, name, distribution)

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Any
    ) -> None:
        self.sampler.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.sampler.reseed_rng()


def make_pruner(spec: ExperimentSpec) -> BasePruner:
    """The spec's pruner: ``gain``, ``median``, ``asha`` (successive halving) or ``none``."""
    if spec.pruner == "none":
        return optuna.pruners.NopPruner()
    if spec.pruner in ("median", "asha") and spec.multi_objective:
        raise ValueError(
            f"pruner.type {spec.pruner!r} needs a single objective (Optuna's trial.report is "
            "single-objective); use 'gain' or 'none' with several metrics."
        )
    if spec.pruner == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=spec.decision.grace_period)
    if spec.pruner == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=spec.decision.min_peers, n_warmup_steps=spec.decision.grace_period
        )
    return GainPruner(config=spec.decision)


#: A trial whose worker sent no heartbeat for this many intervals is stale (failed, retried).
STALE_GRACE_FACTOR = 3


def make_storage(
    url: str, heartbeat: int | None, retry_failed: int = 0
) -> optuna.storages.BaseStorage:
    """An RDB storage (SQLite, PostgreSQL, ...) with heartbeats when ``heartbeat`` is set.

    With heartbeats, a trial whose worker died (no heartbeat for 3 intervals) is marked failed
    when any worker next starts a trial, or by a worker that found the trial count reached and
    waited for it (:func:`gainsearch.search.run_optuna._settle_running`); ``retry_failed > 0``
    then re-queues it with the same parameters, up to that many times (Optuna's
    ``RetryHeartbeatStaleTrialCallback``).

    Raises:
        ValueError: the URL is malformed, its driver is missing, or the database cannot be
            reached (within 10 seconds for a server); the message hides any password.
    """
    kwargs: dict[str, Any] = {"engine_kwargs": _engine_kwargs(url)}
    if heartbeat:
        kwargs.update(
            heartbeat_interval=int(heartbeat), grace_period=STALE_GRACE_FACTOR * int(heartbeat)
        )
        if retry_failed:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                kwargs["heartbeat_stale_trial_callback"] = (
                    optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=int(retry_failed))
                )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, **kwargs)
    except Exception as err:  # sqlalchemy raises ArgumentError, OperationalError, ImportError...
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        if "://" in url and "@" in url:
            detail = detail.replace(url, redact(url))
        raise ValueError(
            f"storage {redact(url)!r} cannot be opened: {detail}. Expected an Optuna RDB URL "
            "such as sqlite:///path/study.db or postgresql://user@host/db."
        ) from None


def _engine_kwargs(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 60}}  # several worker processes share one file
    if url.startswith("postgresql"):
        return {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}
    return {"pool_pre_ping": True}


def create_study(
    spec: ExperimentSpec,
    storage: str,
    *,
    study_name: str | None = None,
    heartbeat: int | None = 10,
    retry_failed: int = 0,
) -> optuna.Study:
    """Create or load (resume) the spec's study in ``storage``."""
    name = study_name or spec.name
    kwargs: dict[str, Any] = {"directions": spec.directions}
    return optuna.create_study(
        storage=make_storage(storage, heartbeat, retry_failed),
        study_name=name,
        sampler=make_sampler(spec),
        pruner=make_pruner(spec),
        load_if_exists=True,
        **kwargs,
    )


def finished_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def check_timeout(timeout: Any) -> None:
    """``timeout`` (both back ends) is None or a positive number of seconds."""
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0
    ):
        raise ValueError(f"timeout must be a positive number of seconds, but got {timeout=}.")


def check_threads(threads: Any) -> None:
    """``threads`` (both back ends) is None or a positive number of torch threads per trial."""
    if threads is not None and (
        isinstance(threads, bool) or not isinstance(threads, int) or threads < 1
    ):
        raise ValueError(
            f"threads must be a positive integer (torch threads per trial) or None (the back "
            f"end's default), but got {threads=}."
        )


def check_same_space(study: optuna.Study, spec: ExperimentSpec) -> None:
    """A resumed study must have been run with the same spec."""
    saved = study.user_attrs.get("spec")
    if saved is None:
        study.set_user_attr("spec", spec.to_dict())
        return
    differ = spec_differences(saved, spec)
    if differ:
        raise ValueError(
            f"study {study.study_name!r} was run with a different spec (sections {differ} "
            "differ); resume it with the same spec, or pick another --study-name or --out."
        )


def study_counts(study: optuna.Study) -> dict[str, Any]:
    """Counts of complete, pruned, running and failed trials, and the best value so far."""
    trials = study.get_trials(deepcopy=False)
    counts = {state: 0 for state in TrialState}
    for t in trials:
        counts[t.state] += 1
    best = None
    if len(study.directions) == 1:
        done = [t.value for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
        if done:
            best = (
                max(done) if study.direction == optuna.study.StudyDirection.MAXIMIZE else min(done)
            )
    return {
        "complete": counts[TrialState.COMPLETE],
        "pruned": counts[TrialState.PRUNED],
        "running": counts[TrialState.RUNNING],
        "failed": counts[TrialState.FAIL],
        "done": counts[TrialState.COMPLETE] + counts[TrialState.PRUNED],
        "best": best,
    }

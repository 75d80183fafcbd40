"""The Optuna study behind both back ends: storage, sampler, pruner, counts and rows.

The Optuna runner optimises this study itself; the Ray runner hands it to ``OptunaSearch`` (TPE
through Tune), so ``study.db`` opens in optuna-dashboard whichever back end ran the search.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import optuna
from optuna.pruners import BasePruner
from optuna.trial import FrozenTrial, TrialState

from gainsearch.integrations.optuna import (
    CURVE_ATTR,
    DIVERGED_ATTR,
    EPOCHS_ATTR,
    LOSS_ATTR,
    METRIC_ATTR,
    GainPruner,
)
from gainsearch.search.results import TrialRow, redact
from gainsearch.search.spaces import ExperimentSpec, spec_differences

__all__ = [
    "FINISHED",
    "best_summary",
    "check_same_space",
    "check_timeout",
    "create_study",
    "finished_count",
    "make_pruner",
    "make_sampler",
    "make_storage",
    "study_counts",
    "trial_rows",
    "write_trials",
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


#: The user attribute that names a trial's Ray Tune trial (the Ray back end's record).
RAY_TRIAL_ATTR = "ray_trial_id"
#: TrialRow fields stored as user attributes of the same name, both ways.
_ROW_ATTRS = (
    "diagnosis",
    "diagnosis_reason",
    "decision_rule",
    "decision_reason",
    "spectrum",
    "config",
    "epoch_log",
    "nodes",
    "selected_epoch",
    "stop_reason",
    "signals",
    "label_noise",
    "model_file",
)
#: A row's state -> the trial state it is recorded in. An interrupted Ray trial is recorded as
#: the Optuna back end records one: failed (the resumed run finishes it as a new trial).
_STATES = {
    "complete": TrialState.COMPLETE,
    "pruned": TrialState.PRUNED,
    "failed": TrialState.FAIL,
    "interrupted": TrialState.FAIL,
}


def trial_rows(study: optuna.Study) -> list[TrialRow]:
    """One row per trial of the study: the reader of what :func:`write_trials` (Ray) and the
    Optuna back end's ``report_gain`` store, so both back ends' studies read alike."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        attrs = t.user_attrs
        single = t.values is None or len(t.values) == 1
        steps = t.intermediate_values
        test = attrs.get("test_acc")
        rows.append(
            TrialRow(
                number=t.number,
                state=t.state.name.lower(),
                params=dict(t.params),
                value=t.value if single else None,
                values=list(t.values) if t.values is not None else None,
                epochs=len(attrs.get(CURVE_ATTR, [])),
                gain_curve=list(attrs.get(CURVE_ATTR, [])),
                train_loss=list(attrs.get(LOSS_ATTR, [])),
                prune_rule=attrs.get("prune_rule", "") if t.state == TrialState.PRUNED else "",
                prune_reason=attrs.get("prune_reason", ""),
                test_acc=(test or [None])[-1] if isinstance(test, list) else test,
                test_acc_curve=list(test) if isinstance(test, list) else None,
                trial_id=str(attrs.get(RAY_TRIAL_ATTR, "")),
                value_curve=[steps.get(e) for e in range(1, max(steps, default=0) + 1)],
                **{key: attrs[key] if key in attrs else _ROW_DEFAULTS[key] for key in _ROW_ATTRS},
            )
        )
    return rows


_ROW_DEFAULTS = {f: getattr(TrialRow(number=0, state=""), f) for f in _ROW_ATTRS}


def write_trials(study: optuna.Study, rows: list[TrialRow], spec: ExperimentSpec) -> int:
    """Record finished rows (the Ray back end's trials) in the study, with the state they ended
    in, their intermediate values and the user attributes the Optuna back end stores (those
    :func:`trial_rows` reads back). A row already recorded in that state is skipped, so a
    resumed run adds only what is new; an interrupted trial is recorded as failed and, once a
    resumed run finishes it, again in its final state. Returns the trials written."""
    done = {
        (t.user_attrs.get(RAY_TRIAL_ATTR), t.state)
        for t in study.get_trials(deepcopy=False)
        if t.user_attrs.get(RAY_TRIAL_ATTR)
    }
    distributions = spec.to_optuna()
    metric = spec.metrics[0]
    written = 0
    for row in rows:
        state = _STATES.get(row.state)
        if state is None or (row.trial_id, state) in done:
            continue
        attrs: dict[str, Any] = {
            key: getattr(row, key) for key in _ROW_ATTRS if getattr(row, key) not in (None, "", [])
        }
        attrs.update(
            {
                CURVE_ATTR: list(row.gain_curve),
                EPOCHS_ATTR: list(range(1, len(row.gain_curve) + 1)),
                LOSS_ATTR: list(row.train_loss),
                METRIC_ATTR: metric,
                RAY_TRIAL_ATTR: row.trial_id,
            }
        )
        if row.prune_rule == "diverged":
            attrs[DIVERGED_ATTR] = True
        if state == TrialState.PRUNED or row.prune_reason:
            attrs.update(prune_rule=row.prune_rule, prune_reason=row.prune_reason)
        if row.test_acc_curve:
            attrs["test_acc"] = list(row.test_acc_curve)
        elif row.test_acc is not None:
            attrs["test_acc"] = [row.test_acc]
        value = row.value if state == TrialState.COMPLETE else None
        if state == TrialState.PRUNED and row.value_curve:  # Optuna: the last value reported
            value = row.value_curve[-1]
        if state == TrialState.COMPLETE and (value is None or not np.isfinite(value)):
            state, value = TrialState.FAIL, None  # a completed trial without a finite value
        study.add_trial(
            optuna.trial.create_trial(
                state=state,
                value=value if state != TrialState.FAIL else None,
                params={k: v for k, v in row.params.items() if k in distributions},
                distributions={k: d for k, d in distributions.items() if k in row.params},
                user_attrs=attrs,
                intermediate_values={  # a non-finite report is NaN, as Optuna stores it
                    e: math.nan if v is None else float(v) for e, v in enumerate(row.value_curve, 1)
                },
            )
        )
        written += 1
    return written


def best_summary(study: optuna.Study, spec: ExperimentSpec) -> dict[str, Any]:
    """The best trial (or the Pareto front for several metrics) with its full configuration."""
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return {"best": None, "reason": "no trial completed yet"}
    rows = {r.number: r for r in trial_rows(study)}

    def describe(t: FrozenTrial) -> dict[str, Any]:
        config = t.user_attrs.get("config") or spec.train_config(t.params).to_dict()
        return rows[t.number].best_entry(spec.metrics, config)

    if spec.multi_objective:
        return {
            "metrics": list(spec.metrics),
            "modes": list(spec.modes),
            "pareto_front": [describe(t) for t in study.best_trials],
        }
    return {"metric": spec.metrics[0], "mode": spec.modes[0], "best": describe(study.best_trial)}

"""The Ray Tune runner behind ``gainsearch search --backend ray``: the built-in trainer as a
function trainable (:func:`gain_trainable`, reporting what
:func:`gainsearch.integrations.ray.report_gain` does and the metric at the kept epoch, one
checkpoint per epoch) and
:func:`run_tuner`: Optuna's TPE through ``OptunaSearch`` (each trial recorded in the Optuna
study as it ends, by :mod:`gainsearch.search.record`'s writer), the spec's pruner as a
scheduler, a local Ray on loopback or ``--address`` to join a cluster, resume. Needs
``pip install gainsearch[ray]``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gainsearch.batteries.train import EpochContext, TrainConfig, train_trial
from gainsearch.core.features import DIVERGED
from gainsearch.core.objective import ScoreConfig, TrialScoreConfig
from gainsearch.integrations.ray import (
    SCORE,
    TRIAL_SCORE,
    GainResults,
    GainScheduler,
    gain_metrics,
)
from gainsearch.search.models import ray_model_file
from gainsearch.search.record import (
    GAIN,
    TEST_ACC,
    TRAIN_LOSS,
    VALUE,
    TrialRecorder,
    best_summary,
    reported_by_tune,
    trial_row,
    write_trials,
)
from gainsearch.search.results import Outcome, TrialRow, check_out_dir, finite_float, write_results
from gainsearch.search.spaces import ExperimentSpec, read_yaml_mapping, spec_differences
from gainsearch.search.study import (
    check_same_space,
    check_threads,
    check_timeout,
    create_study,
    make_sampler,
)

try:
    import ray
    from ray import tune
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import FIFOScheduler, TrialScheduler
    from ray.tune.search import Searcher, SearchGenerator

    from gainsearch.search.ray_cluster import (
        NAN_SCORE,
        connect,
        quiet_expected_warnings,
        tune_output,
    )
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "gainsearch.search.run_ray needs Ray Tune: pip install 'gainsearch[ray]'"
    ) from err

__all__ = ["RayOutcome", "gain_trainable", "make_scheduler", "result_rows", "run_tuner"]

logger = logging.getLogger(__name__)

#: The spec's metric -> the key of the reported result that Tune optimises.
RESULT_KEYS = {"trial_score": TRIAL_SCORE, "gain_score": SCORE}
CHECKPOINT_FILE = "checkpoint.pt"
#: The checkpoint score: the epoch when it is the selected one, else 0 (see gain_trainable).
KEPT_ATTRIBUTE = "kept_checkpoint"
GAINSEARCH_KEY = "_gainsearch"  # fixed, non-searched settings travel in the config under this key


def result_key(spec: ExperimentSpec) -> str:
    """The result key Tune's schedulers read for ``spec`` (its single metric, per epoch)."""
    return RESULT_KEYS[spec.metrics[0]]


#: Prefix of the result key that holds the metric at the kept epoch (what the searcher learns).
KEPT_PREFIX = "kept_"


def searcher_key(spec: ExperimentSpec) -> str:
    """The result key TPE learns for ``spec``: its metric at the epoch the trial keeps so far.

    Tune's ``OptunaSearch`` tells TPE ``result[metric]`` of a trial's *last* result; with
    ``select_by`` and ``patience`` the last epoch is not the kept one, and the Optuna back end
    (and ``trials.csv``) returns the kept epoch's value. Reporting that value under its own key
    makes both back ends' samplers learn the same number.
    """
    return KEPT_PREFIX + result_key(spec)


def gain_trainable(config: dict[str, Any]) -> None:
    """Ray Tune function trainable: one built-in trial, reported every epoch.

    ``config`` holds the sampled hyperparameters plus, under ``"_gainsearch"``, the fixed
    training settings (``train``), the score weights (``variability_weight``) and whether to
    record test metrics. Reports ``epoch``, ``gain``, ``trial_score``
    (:func:`gainsearch.trial_score`), ``gain_score``, ``level``, ``trend``,
    ``variability``, ``saturation``, ``diagnosis``, ``train_loss``, ``diverged``, each recorded
    stopping signal, ``selected_epoch``, ``kept_checkpoint`` (the epoch number when this epoch
    is, at that point, the selected one, else 0: the score of Tune's ``CheckpointConfig``, which
    thus keeps the selected epoch's checkpoint and the latest), ``stop_reason`` (patience ran
    out), ``kept_trial_score`` (the metric at the epoch kept so far: what TPE learns,
    :func:`searcher_key`) (+ ``test_acc``, ``test_loss``) with a checkpoint directory holding
    ``checkpoint.pt``.
    """
    from ray.tune import Checkpoint

    fixed = dict(config.get(GAINSEARCH_KEY, {}))
    params = {k: v for k, v in config.items() if k != GAINSEARCH_KEY}
    settings = {**fixed.get("train", {}), **params}
    if settings.get("threads") is None and fixed.get("threads"):
        settings["threads"] = int(fixed["threads"])  # recorded in the trial's config
    if fixed.get("eval_test"):
        settings["eval_test"] = True
    if fixed.get("use_gpu"):
        settings["device"] = "cuda"
    train_config = TrainConfig.from_dict(settings)
    score_config = ScoreConfig(variability_weight=fixed.get("variability_weight", 1.0))
    trial_config = TrialScoreConfig(**fixed.get("trial_score", {}))

    with tempfile.TemporaryDirectory(prefix="gainsearch-trial-") as work:
        local = Path(work) / CHECKPOINT_FILE
        restored = tune.get_checkpoint()
        if restored is not None:
            with restored.as_directory() as folder:
                saved = Path(folder) / CHECKPOINT_FILE
                if saved.is_file():
                    local.write_bytes(saved.read_bytes())

        key = RESULT_KEYS[fixed.get("metric", "trial_score")]
        recorder = TrialRecorder()  # the record both back ends report (search.record)

        def report(ctx: EpochContext) -> None:
            fields = recorder.add(ctx)
            metrics = gain_metrics(
                ctx.monitor,
                ctx.epoch,
                train_loss=[r["train_loss"] for r in ctx.history],
                diverged=ctx.diverged,
                score_config=score_config,
                trial_config=trial_config,
            )
            recorder.report(ctx.epoch, metrics[key])
            selected = fields["selected_epoch"]
            metrics.update(fields)
            metrics.update(
                # Tune flattens dicts: the label-noise estimate travels as JSON
                label_noise=json.dumps(fields["label_noise"]),
                node_id=ray.get_runtime_context().get_node_id(),
                **{KEPT_ATTRIBUTE: ctx.epoch if selected == ctx.epoch else 0},
                # the searcher's value: the metric at the kept epoch (NaN once diverged, as the
                # Optuna back end prunes a diverged trial)
                **{KEPT_PREFIX + key: recorder.kept(selected, diverged=ctx.diverged)},
            )
            tune.report(metrics, checkpoint=Checkpoint.from_directory(work))

        train_trial(train_config, callbacks=[report], checkpoint_path=local)


@dataclass(kw_only=True)
class RayOutcome(Outcome):
    """What :func:`run_tuner` leaves behind (and Tune's ``experiment_path``)."""

    experiment_path: str

    def where(self) -> list[str]:
        """Where the results are (for the end-of-run summary)."""
        return [f"ray results: {self.experiment_path}"]


def make_scheduler(spec: ExperimentSpec) -> TrialScheduler:
    """The spec's pruner as a Ray scheduler: gain (GainScheduler), median, asha or none."""
    from ray.tune.schedulers import ASHAScheduler, MedianStoppingRule

    d = spec.decision
    if spec.pruner == "median":
        return MedianStoppingRule(
            time_attr="epoch", grace_period=d.grace_period, min_samples_required=d.min_peers
        )
    if spec.pruner == "asha":
        return ASHAScheduler(
            time_attr="epoch",
            grace_period=d.grace_period,
            max_t=int(spec.train.get("epochs", TrainConfig().epochs)),
        )
    if spec.pruner == "none":
        return FIFOScheduler()
    return GainScheduler(config=d, metric=result_key(spec), mode=spec.modes[0])


def _stop_gracefully(signum: int, frame: Any) -> None:
    """SIGTERM during ``fit``: ask Tune to stop as on Ctrl-C (it saves the experiment state)."""
    os.kill(os.getpid(), signal.SIGUSR1)


_now = time.time  # the clock of --timeout; tests replace it


class _DeadlineSearch(SearchGenerator):
    """Tune's search generator, finished once ``deadline`` (``_now()``) has passed: no new
    trial starts and Tune ends when the running ones have finished."""

    def __init__(self, searcher: Searcher, deadline: float | None) -> None:
        super().__init__(searcher)
        self.deadline = deadline

    @classmethod
    def renew(cls, search_alg: Any, deadline: float | None) -> _DeadlineSearch:
        """The restored search algorithm with this run's deadline (the pickled one is old)."""
        if isinstance(search_alg, cls):
            search_alg.deadline = deadline
            return search_alg
        return cls(search_alg, deadline)  # a run started before there was a deadline

    def is_finished(self) -> bool:
        timed_out = self.deadline is not None and _now() >= self.deadline
        return timed_out or super().is_finished()

    def set_search_properties(
        self, metric: str | None, mode: str | None, config: dict, **spec: Any
    ) -> bool:
        """Tune hands its metric (the per-epoch one its schedulers read) to the searcher, which
        would then learn the last result's value: the searcher keeps its own
        (:func:`searcher_key`, the kept epoch's value)."""
        return super().set_search_properties(None, mode, config, **spec)


class _ProgressCallback(tune.Callback):
    def __init__(
        self, progress: Callable[[dict[str, Any]], None], budget: int, metric: str = SCORE
    ) -> None:
        self.progress = progress
        self.budget = budget
        self.metric = metric

    # Tune calls these before it sets the trial's status: count the trial as ended here, or
    # the last trial never shows (the bar ended at 11/12).
    def on_trial_complete(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        self._emit(trials, ended={trial.trial_id: Trial.TERMINATED})

    def on_trial_error(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        self._emit(trials, ended={trial.trial_id: Trial.ERROR})

    def on_trial_result(
        self, iteration: int, trials: list[Trial], trial: Trial, result: dict, **info: Any
    ) -> None:
        self._emit(trials)

    def _emit(self, trials: list[Trial], ended: dict[str, str] | None = None) -> None:
        status = {t.trial_id: (ended or {}).get(t.trial_id, t.status) for t in trials}
        terminated = [t for t in trials if status[t.trial_id] == Trial.TERMINATED]
        scores = [  # completed trials only, as on the Optuna back end: the best never drops
            float(t.last_result[self.metric])
            for t in terminated
            if t.last_result
            and t.last_result.get("epoch", 0) >= self.budget
            and t.last_result.get(self.metric) is not None
            and math.isfinite(float(t.last_result[self.metric]))
        ]
        self.progress(
            {
                "done": sum(s in (Trial.TERMINATED, Trial.ERROR) for s in status.values()),
                "running": sum(s == Trial.RUNNING for s in status.values()),
                "pruned": sum(t.last_result.get("epoch", 0) < self.budget for t in terminated),
                "best": max(scores) if scores else None,
            }
        )


class _StudyWriter(tune.Callback):
    """Record each trial in the Optuna study as it ends (complete, pruned or failed), as the
    Optuna back end does: ``optuna-dashboard`` shows a running Ray search, and a driver killed
    without warning (SIGKILL) loses no finished trial from the study. The row is the one the
    end of the run would build (:func:`tune_row`, from the trial's results so far); the end of
    the run records what is still missing (an interrupted trial), and a trial recorded in its
    state is never recorded twice (:func:`~gainsearch.search.record.write_trials`)."""

    def __init__(self, run: _Run) -> None:
        self.run = run
        #: trial id -> its results in order (a resumed run replays those on disk first)
        self.results: dict[str, list[dict[str, Any]]] = {}

    def on_trial_result(
        self, iteration: int, trials: list[Trial], trial: Trial, result: dict, **info: Any
    ) -> None:
        self.add(trial.trial_id, result)

    def add(self, trial_id: str, result: dict[str, Any]) -> None:
        """One result of ``trial_id`` (after :class:`GainResults` added its evaluation)."""
        if "epoch" in result and "gain" in result:
            self.results.setdefault(trial_id, []).append(dict(result))

    def on_trial_complete(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        self._write(trial, None)

    def on_trial_error(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        try:
            error = str(trial.get_error() or "the trial failed")
        except Exception:
            error = "the trial failed"
        self._write(trial, error)

    def _write(self, trial: Trial, error: str | None) -> None:
        run = self.run
        if run.study is None:
            return
        results = self.results.get(trial.trial_id, [])
        try:
            row = tune_row(
                _creation_index(trial)[0],
                run.spec,
                run.budget,
                results=results,
                last=results[-1] if results else None,
                config=trial.config or {},
                error=error,
                checkpoint=trial.checkpoint.path if trial.checkpoint else None,
                client_mode=run.client_mode,
                out=Path(run.out),
                train=run.train,
            )
            write_trials(run.study, [row], run.spec)
        except Exception as err:
            logger.warning("could not record trial %s in the study yet: %s", trial.trial_id, err)


def _check_same_spec(out: Path, spec: ExperimentSpec) -> None:
    """A resumed experiment must have been run with the same spec (as on the Optuna back end)."""
    saved_path = out / "spec.yaml"
    if not saved_path.is_file():
        return
    saved = read_yaml_mapping(saved_path, what="saved spec", expected="a spec")
    differ = spec_differences(saved, spec)
    if differ:
        raise ValueError(
            f"experiment {spec.name!r} in {out} was run with a different spec (sections {differ} "
            "differ); resume it with the same spec, or pick another --study-name or --out."
        )


def _creation_index(result: Any) -> tuple[int, str]:
    """Tune names a trial's folder ``<trainable>_<trial_id>_<index>_<params>_<date>``."""
    name = Path(str(result.path)).name
    match = re.match(r"^.+?_[0-9a-f]{5,}_(\d+)_", name)
    return (int(match.group(1)) if match else 1 << 30, name)


def _check_args(
    spec: ExperimentSpec,
    n_trials: Any,
    max_concurrent: Any,
    cpus: Any,
    gpus: Any,
    max_failures: Any,
) -> None:
    if spec.multi_objective:
        raise ValueError(
            f"the Ray back end optimises one metric, but the spec has {list(spec.metrics)}; use "
            "--backend optuna for several metrics."
        )
    if spec.metrics[0] not in RESULT_KEYS:
        raise ValueError(
            f"the Ray back end optimises {' or '.join(RESULT_KEYS)}; "
            f"objective.metric={spec.metrics[0]!r} needs --backend optuna."
        )
    for name, value in (("n_trials", n_trials), ("max_concurrent", max_concurrent)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, but got {name}={value!r}.")
    if not isinstance(max_failures, int) or max_failures < 0:
        raise ValueError(f"max_failures must be a non-negative integer, but got {max_failures=}.")
    if not (isinstance(cpus, (int, float)) and cpus > 0):
        raise ValueError(
            f"cpus_per_trial must be a positive number, but got cpus_per_trial={cpus!r}."
        )
    if not (isinstance(gpus, (int, float)) and gpus >= 0):
        raise ValueError(
            f"gpus_per_trial must be a non-negative number, but got gpus_per_trial={gpus!r}."
        )


def run_tuner(
    spec: ExperimentSpec,
    *,
    out_dir: str | Path,
    n_trials: int,
    max_concurrent: int = 2,
    cpus_per_trial: float = 1.0,
    gpus_per_trial: float = 0.0,
    address: str | None = None,
    storage_path: str | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    eval_test: bool = False,
    max_failures: int = 3,
    timeout: float | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
    ray_output: bool = False,
    reuse_actors: bool = True,
    threads: int | None = None,
) -> RayOutcome:
    """Run (or resume) the spec's search on Ray Tune.

    Args:
        spec: The experiment (single objective: Ray Tune optimises one metric).
        out_dir: Where ``trials.csv``, ``best.json``, ``spec.yaml`` go (and, by default, the Ray
            results under ``OUT/ray_results``).
        n_trials: Trials to sample (``num_samples``).
        max_concurrent: Trials running at once.
        cpus_per_trial: CPUs reserved per trial.
        gpus_per_trial: GPUs per trial (> 0 trains on CUDA).
        address: Existing cluster (``auto``, ``host:port``, ``ray://...``); ``None`` starts a local
            Ray on loopback.
        storage_path: Results location; on a multi-node cluster a shared path or a bucket URI.
        storage: Optuna storage URL of the study the trials are recorded in (default
            ``sqlite:///OUT/study.db``), as they ended: states, intermediate values and user
            attributes as on the Optuna back end (:func:`~gainsearch.search.record.write_trials`),
            so ``gainsearch report URL``, ``optuna.visualization`` and optuna-dashboard show
            what ``trials.csv`` shows. Written as each trial ends (and, for what an interrupt
            left, when the run ends).
        study_name: Name of the Optuna study and of the Ray experiment (default: the spec's).
        eval_test: Record test metrics per epoch (evaluation only).
        max_failures: Restarts per trial from its last checkpoint (``FailureConfig``).
        timeout: Seconds, counted from this call, after which no new trial starts; the running
            ones finish (as on the Optuna back end), and running the call again gets a new
            timeout. Tune's own ``time_budget_s`` is not used: it stops the running trials, and
            its spent budget carries over to a resumed run, which then starts nothing.
        progress: Called with counts as results arrive.
        threads: Torch threads per trial (default: the trial's CPUs; a spec's ``threads``
            wins). A run argument, not a spec setting: a resume may change it.
        ray_output: Let Tune print its own reporting (the experiment's box, where the results
            are, the TensorBoard hint). Off: gainsearch's progress and table only (Tune's new
            output engine prints its box even at ``verbose=0``; the legacy one, chosen here with
            ``RAY_AIR_NEW_OUTPUT=0`` for the duration of the run, prints nothing at 0).
        reuse_actors: Run the next trial in the actor (the process) of a finished one, as
            Tune's ``TuneConfig(reuse_actors=True)``: no new process and no new import of torch
            per trial (a 6-trial, 1-epoch search of digits: 44 s without, 25 s with, on 2 CPUs).
            A built-in trial is a function of its configuration alone (seeded, its own model and
            data), so the results are the same; ``False`` for code that keeps global state
            between trials.
    """
    _check_args(spec, n_trials, max_concurrent, cpus_per_trial, gpus_per_trial, max_failures)
    check_threads(threads)
    if not isinstance(reuse_actors, bool):
        raise ValueError(f"reuse_actors must be True or False, but got {reuse_actors=}.")
    check_timeout(timeout)
    deadline = _now() + timeout if timeout else None
    out = Path(out_dir).resolve()
    name = study_name or spec.name
    check_out_dir(out, name)
    if storage is not None:  # a storage elsewhere: a bad URL is refused before OUT is made
        create_study(spec, storage, study_name=name, heartbeat=None)
    out.mkdir(parents=True, exist_ok=True)
    train = dict(spec.train)
    if train.get("data_root") and "://" not in str(train["data_root"]):
        train["data_root"] = str(
            Path(train["data_root"]).expanduser().resolve()
        )  # trials run elsewhere
    results_path = storage_path or str(out / "ray_results")
    if "://" not in results_path:
        results_path = str(Path(results_path).expanduser().resolve())
    study_url = storage or f"sqlite:///{out / 'study.db'}"
    # the study every trial is recorded in as it ended (write_trials); opened now, so that a bad
    # URL or a study of another spec is an error before Ray starts
    study = create_study(spec, study_url, study_name=name, heartbeat=None)
    check_same_space(study, spec)
    # One checkpoint per epoch is the point of fault tolerance here; Ray's advice to snapshot
    # less often does not apply to epochs of seconds.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    run = _Run(spec, name, out, train, results_path, study_url, deadline, progress, address)
    run.study, run.ray_output = study, ray_output
    with quiet_expected_warnings(NAN_SCORE):
        started = connect(address, num_cpus=None)
        try:
            run.check_shared_storage()
            tuner = run.tuner(
                n_trials,
                max_concurrent,
                max_failures,
                tune.with_resources(gain_trainable, {"cpu": cpus_per_trial, "gpu": gpus_per_trial}),
                {
                    **spec.to_ray(),
                    GAINSEARCH_KEY: {
                        **run.fixed(eval_test, gpus_per_trial > 0),
                        # torch threads: the trial's CPUs (a spec's threads wins)
                        "threads": threads or max(1, int(cpus_per_trial)),
                    },
                },
                reuse_actors,
            )
            previous = signal.signal(signal.SIGTERM, _stop_gracefully)
            try:
                with tune_output(ray_output):
                    grid = tuner.fit()
            finally:
                signal.signal(signal.SIGTERM, previous)
            return run.finish(grid, n_trials, run.client_mode)
        finally:
            if started:
                ray.shutdown()


@dataclass
class _Run:
    """One run of :func:`run_tuner`: what its Tuner is made of."""

    spec: ExperimentSpec
    name: str
    out: Path
    train: dict[str, Any]
    results_path: str
    study_url: str
    deadline: float | None
    progress: Callable[[dict[str, Any]], None] | None
    address: str | None
    study: Any = None  # the Optuna study the trials are recorded in (optuna.Study)
    ray_output: bool = False

    @property
    def client_mode(self) -> bool:
        """Ray Client (``ray://``): the Tuner runs on the cluster, not in this process."""
        return self.address is not None and self.address.startswith("ray://")

    def check_shared_storage(self) -> None:
        """Warn when a cluster's nodes may not see a local results path."""
        remote = "://" in self.results_path
        if self.address is not None and not remote and len(ray.nodes()) > 1:
            logger.warning(
                "storage path %s is local but the cluster has %d nodes: every node must see it "
                "(a shared file system), else pass --storage-path s3://... or another shared URI",
                self.results_path,
                len(ray.nodes()),
            )

    def finish(self, grid: Any, n_trials: int, client_mode: bool) -> RayOutcome:
        """The rows, the best trial and the result files of a fitted grid."""
        rows = result_rows(
            grid,
            self.spec,
            self.budget,
            client_mode=client_mode,
            out=Path(self.out),
            train=self.train,
        )
        if self.study is not None:  # what the trials' ends did not record (an interrupt)
            write_trials(self.study, rows, self.spec)
        best = best_summary(rows, self.spec)
        write_results(self.out, self.spec, rows, best, self.study_url, self.name)
        timed_out = self.deadline is not None and _now() >= self.deadline
        interrupted = any(r.state == "interrupted" for r in rows) or (
            len(rows) < n_trials and not timed_out
        )
        return RayOutcome(
            experiment_path=str(grid.experiment_path),
            rows=rows,
            best=best,
            interrupted=interrupted,
        )

    @property
    def budget(self) -> int:
        return int(self.train.get("epochs", TrainConfig().epochs))

    def fixed(self, eval_test: bool, use_gpu: bool) -> dict[str, Any]:
        """The settings every trial gets (under ``GAINSEARCH_KEY``, never searched)."""
        trial = self.spec.trial
        return {
            "train": self.train,
            "variability_weight": self.spec.score.variability_weight,
            "trial_score": {"gain_weight": trial.gain_weight, "early_epochs": trial.early_epochs},
            "metric": self.spec.metrics[0],
            "eval_test": eval_test,
            "use_gpu": use_gpu,
        }

    def callbacks(self, scheduler: TrialScheduler) -> list[Any]:
        """GainResults (the evaluation in every result), the study writer (after it: the rows
        hold the evaluation), then the progress bar."""
        out: list[Any] = [
            GainResults(
                scheduler,
                budget=self.budget,
                metric=result_key(self.spec),
                mode=self.spec.modes[0],
            ),
            _StudyWriter(self),
        ]
        if self.progress:
            out.append(_ProgressCallback(self.progress, self.budget, result_key(self.spec)))
        return out

    def tuner(
        self,
        n_trials: int,
        max_concurrent: int,
        max_failures: int,
        trainable: Any,
        param_space: dict[str, Any],
        reuse_actors: bool,
    ) -> Any:
        """A new Tuner, or the experiment's restored one with this run's scheduler, deadline
        and callbacks (the pickled ones belong to the old run: its progress closure wrote to
        the old run's stream)."""
        from ray.tune import CheckpointConfig, FailureConfig, RunConfig, TuneConfig, Tuner
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        metric, mode = result_key(self.spec), self.spec.modes[0]
        scheduler = make_scheduler(self.spec)
        experiment = Path(self.results_path) / self.name
        if "://" not in self.results_path and Tuner.can_restore(str(experiment)):
            if self.client_mode:
                raise ValueError(
                    f"--address {self.address!r}: resuming a Ray search through Ray Client "
                    "(ray://) is not supported, the restored run would lose its scheduler and "
                    "callbacks; run the same command on a node of the cluster with --address "
                    f"auto, or start afresh with another --out. Nothing was changed in {self.out}."
                )
            _check_same_spec(self.out, self.spec)
            tuner = Tuner.restore(
                str(experiment), trainable=trainable, resume_errored=True, param_space=param_space
            )
            callbacks = self.callbacks(scheduler)
            _replay(experiment, callbacks[0].book, callbacks[1])
            _renew_restored(tuner, scheduler, self.deadline, callbacks, reuse_actors)
            return tuner
        # TPE's working copy of the study lives in the searcher (in memory, saved with Tune's
        # experiment state and restored with it); the study in --storage is written from the
        # typed rows as trials end (_StudyWriter -> record.write_trials), with their real states
        searcher = OptunaSearch(
            sampler=make_sampler(self.spec), metric=searcher_key(self.spec), mode=mode
        )
        return Tuner(
            trainable,
            param_space=param_space,
            tune_config=TuneConfig(
                metric=metric,
                mode=mode,
                search_alg=_DeadlineSearch(
                    ConcurrencyLimiter(searcher, max_concurrent=max_concurrent), self.deadline
                ),
                scheduler=scheduler,
                num_samples=n_trials,
                reuse_actors=reuse_actors,
            ),
            run_config=RunConfig(
                name=self.name,
                storage_path=self.results_path,
                failure_config=FailureConfig(max_failures=max_failures),
                checkpoint_config=CheckpointConfig(
                    num_to_keep=1,  # the selected epoch's (and Tune always keeps the latest)
                    checkpoint_score_attribute=KEPT_ATTRIBUTE,
                    checkpoint_score_order="max",
                ),
                verbose=2 if self.ray_output else 0,
                callbacks=self.callbacks(scheduler),
            ),
        )


def _renew_restored(
    tuner: Any,
    scheduler: TrialScheduler,
    deadline: float | None,
    callbacks: list[Any],
    reuse_actors: bool,
) -> None:
    """Give a restored Tuner this run's scheduler, deadline and callbacks.

    The one place that uses Tune's private state, on purpose: ``Tuner.restore`` (Ray 2.60) takes
    no scheduler, search algorithm or callbacks, and the pickled ones belong to the old run (a
    scheduler without the peers' series, the old deadline, a progress callback that wrote to
    the old process's stream). A Ray that no longer has these attributes is an error here,
    not a resume that silently runs without them.
    """
    try:
        tune_config = tuner._local_tuner._tune_config
        run_config = tuner._local_tuner._run_config
    except AttributeError as err:  # pragma: no cover - another Ray version
        raise RuntimeError(
            f"this Ray ({ray.__version__}) restores Tuners differently: gainsearch cannot give "
            "the resumed search its scheduler and callbacks; start afresh with another --out"
        ) from err
    tune_config.scheduler = scheduler
    tune_config.search_alg = _DeadlineSearch.renew(tune_config.search_alg, deadline)
    tune_config.time_budget_s = None  # a run from before the deadline
    tune_config.reuse_actors = reuse_actors
    run_config.callbacks = callbacks


def _replay(experiment: Path, book: GainScheduler, writer: _StudyWriter) -> None:
    """Rebuild the peer series (the scheduler's, or GainResults' own) and the study writer's
    results from the results already on disk (resume)."""
    for result_file in experiment.glob("*/result.json"):
        trial_id = None
        for line in result_file.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            trial_id = record.get("trial_id", trial_id)
            if trial_id and "epoch" in record and "gain" in record:
                book.record(trial_id, record)
                writer.add(trial_id, record)


def result_rows(
    grid: Any,
    spec: ExperimentSpec,
    budget: int,
    *,
    client_mode: bool = False,
    out: Path | None = None,
    train: dict[str, Any] | None = None,
) -> list[TrialRow]:
    """One row per trial of a fitted grid (numbered in creation order, stable across resumes),
    by the row builder both back ends share (:func:`gainsearch.search.record.trial_row`)."""
    ordered = sorted(grid, key=_creation_index)
    return [
        tune_row(
            number,
            spec,
            budget,
            results=_records(result.metrics_dataframe),
            last=dict(result.metrics or {}),
            config=result.config or {},
            error=None if result.error is None else str(result.error),
            checkpoint=result.checkpoint.path if result.checkpoint else None,
            client_mode=client_mode,
            out=out,
            train=train,
        )
        for number, result in enumerate(ordered)
    ]


def tune_row(
    number: int,
    spec: ExperimentSpec,
    budget: int,
    *,
    results: list[dict[str, Any]],
    last: dict[str, Any] | None,
    config: dict[str, Any],
    error: str | None,
    checkpoint: str | None,
    client_mode: bool = False,
    out: Path | None = None,
    train: dict[str, Any] | None = None,
) -> TrialRow:
    """One Tune trial's row, from its results, as on the Optuna back end.

    State: ``complete``; ``pruned`` (stopped by the scheduler, with the rule and reason that
    :class:`GainResults` stored in the last result; diverged trials count as pruned);
    ``failed``; ``interrupted`` (shorter than the budget but stopped by no scheduler: the run
    ended first, resume to finish it). In Ray Client mode (``ray://``) without stored reasons,
    short trials count as pruned. The value is the metric at the kept epoch.
    """
    resolved = _config_of(spec, config, train)
    names = (resolved or {}).get("signals") or []
    numeric = {
        GAIN: "gain",
        TRAIN_LOSS: "train_loss",
        VALUE: result_key(spec),
        TEST_ACC: "test_acc",
        **{name: name for name in names},
    }
    reported = reported_by_tune(results, numeric, last)
    latest = reported.latest
    epochs = int(latest.get("epoch") or len(reported.series[GAIN]) or 0)
    state, rule, reason = _state(latest, epochs, budget, error, client_mode, spec.pruner)
    kept = latest.get("selected_epoch")
    kept = int(kept) if kept is not None and kept == kept else None
    latest.update(selected_epoch=kept, config=resolved)
    values = reported.series[VALUE]
    score = values.get(kept) if kept in values else finite_float(latest.get(result_key(spec)))
    if state == "complete":
        latest["model_file"] = ray_model_file(checkpoint, out, CHECKPOINT_FILE)
    else:
        latest.pop("model_file", None)
    return trial_row(
        number,
        state,
        {k: v for k, v in config.items() if k != GAINSEARCH_KEY},
        reported,
        value=score,
        prune_rule=rule,
        prune_reason=reason,
        trial_id=str(latest.get("trial_id", "")),
    )


def _state(
    latest: dict[str, Any],
    epochs: int,
    budget: int,
    error: str | None,
    client_mode: bool,
    pruner: str,
) -> tuple[str, str, str]:
    """(state, prune rule, reason) of a Tune trial from its last result."""
    rule, reason = str(latest.get("prune_rule") or ""), str(latest.get("prune_reason") or "")
    if error is not None:
        return "failed", "", error.splitlines()[0]
    if latest.get("diverged"):
        return "pruned", DIVERGED, reason or f"diverged at epoch {epochs}"
    if rule:
        return "pruned", rule, reason
    if latest.get("stop_reason"):  # patience ran out: a completed trial
        return "complete", "", reason
    if epochs < budget and client_mode:  # no stored reason: the scheduler ran remotely
        return "pruned", "pruner", f"stopped at epoch {epochs} by the {pruner} scheduler"
    if epochs < budget:  # no scheduler stopped it: the run ended first
        return "interrupted", "", "the run stopped before this trial finished"
    return "complete", "", reason


def _records(history: Any) -> list[dict[str, Any]]:
    """A trial's results table (``Result.metrics_dataframe``) as results, in order."""
    if history is None:
        return []
    return [dict(r) for r in history.to_dict("records")]


def _config_of(
    spec: ExperimentSpec, config: dict[str, Any], train: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """The trial's resolved training configuration (as the Optuna back end stores it; ``train``:
    the run's fixed settings, with its data root resolved, default the spec's)."""
    try:
        params = {k: v for k, v in config.items() if k != GAINSEARCH_KEY}
        threads = (config.get(GAINSEARCH_KEY) or {}).get("threads")
        if threads and spec.train.get("threads") is None:
            params["threads"] = int(threads)  # what the trial ran with
        if train is None:
            return spec.train_config(params).to_dict()
        return TrainConfig.from_dict({**train, **params}).to_dict()
    except (ValueError, TypeError):
        return None

"""Ray Tune back end: the same search, distributed, with fault-tolerant trials.

* :func:`gain_trainable`: a function trainable; one built-in trial reporting every epoch with
  ``ray.tune.report(metrics, checkpoint=...)``. The checkpoint holds model, optimizer, monitor
  history and RNG state; a restarted trial resumes from it with its gain history intact.
* :class:`GainScheduler`: a ``TrialScheduler`` over the decision core
  (:func:`gainsearch.decision.decide`), the same rules as :class:`~.optuna.GainPruner`.
* :func:`run_tuner`: the runner behind ``gainsearch search --backend ray``: Optuna's TPE through
  ``OptunaSearch``, a local Ray on loopback or ``--address`` to join a cluster, resume.

Needs ``pip install gainsearch[ray]``.
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gainsearch.decision import DecisionConfig, decide
from gainsearch.features import diagnose
from gainsearch.monitor import GainMonitor
from gainsearch.objective import ScoreConfig, TrialScoreConfig, gain_score, trial_score
from gainsearch.spaces import ExperimentSpec, read_yaml_mapping, spec_differences
from gainsearch.train import EpochContext, TrainConfig, train_trial

try:
    import ray
    from ray import tune
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import FIFOScheduler, TrialScheduler
    from ray.tune.search import Searcher, SearchGenerator
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "gainsearch.integrations.ray needs Ray Tune: pip install 'gainsearch[ray]'"
    ) from err

__all__ = [
    "GainScheduler",
    "RayOutcome",
    "gain_metrics",
    "gain_trainable",
    "report_gain",
    "result_rows",
    "run_tuner",
]

logger = logging.getLogger(__name__)

#: Metric names reported every epoch.
SCORE = "gain_score"
TRIAL_SCORE = "trial_score"
#: The spec's metric -> the key of the reported result that Tune optimises.
RESULT_KEYS = {"trial_score": TRIAL_SCORE, "score": SCORE}


def result_key(spec: ExperimentSpec) -> str:
    """The result key Tune optimises for ``spec`` (its single metric)."""
    return RESULT_KEYS[spec.metrics[0]]


CHECKPOINT_FILE = "checkpoint.pt"
GAINSEARCH_KEY = "_gainsearch"  # fixed, non-searched settings travel in the config under this key


class GainScheduler(FIFOScheduler):
    """Stop trials on their gain curve against their peers at the same epoch.

    A thin adapter over :func:`gainsearch.decision.decide`: diverged trials are stopped at
    once; after ``grace_period`` epochs, with at least ``min_peers`` other trials that reached the
    same epoch (running or finished), a trial is stopped when its variability is far above the
    peers' median or its ``metric`` (the trial score in :func:`run_tuner`) is below the
    ``percentile``-th percentile of the peers' at the same epoch. The reason is logged and kept
    in :attr:`stop_reasons` (trial id -> reason).

    Each result must carry ``epoch`` and ``gain`` (and may carry ``diverged``), as
    :func:`gain_trainable` reports. A result without them is an error listing the keys it has.
    A restarted trial that reports an epoch again replaces its curve from that epoch on.

    Args:
        grace_period: Epochs before stopping for anything but divergence.
        min_peers: Peers needed before comparing.
        percentile: Score percentile of the peers below which a trial is stopped (0-100).
        variability_factor: Multiple of the peers' median variability that marks "too high".
        min_variability: Variability floor (dB/epoch).
        config: A complete :class:`DecisionConfig` instead of the arguments above.
        metric: The result key Tune optimises (set here or once in ``TuneConfig``): the
            percentile rule compares its value with the peers' at the same epoch (results
            without it: the gain score of the curves). The divergence and too-variable rules
            always read the gain curve.
        mode: ``"max"`` or ``"min"`` for ``metric``.
    """

    def __init__(
        self,
        *,
        grace_period: int = 1,
        min_peers: int = 3,
        percentile: float = 50.0,
        variability_factor: float = 3.0,
        min_variability: float = 1.0,
        config: DecisionConfig | None = None,
        metric: str | None = None,
        mode: str | None = None,
    ) -> None:
        super().__init__()
        if mode is not None and mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', but got mode={mode!r}.")
        if config is None and (
            isinstance(grace_period, bool) or not isinstance(grace_period, int) or grace_period < 1
        ):  # Ray's name for the decision core's warmup_epochs
            raise ValueError(
                f"grace_period must be an integer >= 1, but got grace_period={grace_period!r}."
            )
        self.config = config or DecisionConfig(
            warmup_epochs=grace_period,
            min_peers=min_peers,
            percentile=percentile,
            variability_factor=variability_factor,
            min_variability=min_variability,
        )
        self._metric = metric
        self._mode = mode
        self.curves: dict[str, list[float]] = {}
        #: trial id -> the optimised metric per epoch (higher is better), when results carry it
        self.values: dict[str, list[float]] = {}
        self.stop_reasons: dict[str, str] = {}

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        if self._metric and metric and metric != self._metric:
            return False
        self._metric = self._metric or metric
        self._mode = self._mode or mode
        return True

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict[str, Any]) -> str:
        return (
            TrialScheduler.STOP if self.observe(trial.trial_id, result) else TrialScheduler.CONTINUE
        )

    def observe(self, trial_id: str, result: dict[str, Any]) -> bool:
        """Record one result of ``trial_id``; True when the trial should stop (reason kept)."""
        if "epoch" not in result or "gain" not in result:
            raise ValueError(
                "GainScheduler needs 'epoch' and 'gain' in every result (report them like "
                f"gainsearch.integrations.ray.gain_trainable); the result has {sorted(result)}."
            )
        epoch = int(result["epoch"])
        curve = _extend(self.curves, trial_id, epoch, result["gain"])
        peers = [c for tid, c in self.curves.items() if tid != trial_id]
        values = peer_values = None
        if self._metric and self._metric in result:  # the percentile rule on the metric
            sign = -1.0 if self._mode == "min" else 1.0
            value = result[self._metric]
            values = _extend(self.values, trial_id, epoch, None if value is None else sign * value)
            peer_values = [v for tid, v in self.values.items() if tid != trial_id]
        verdict = decide(
            curve,
            peers,
            config=self.config,
            diverged=bool(result.get("diverged")),
            values=values,
            peer_values=peer_values,
        )
        if verdict.prune:
            self.stop_reasons[trial_id] = verdict.reason
            logger.info("stopping trial %s: %s", trial_id, verdict.reason)
        return verdict.prune

    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: dict[str, Any]) -> None:
        pass

    def debug_string(self) -> str:
        return f"GainScheduler: {len(self.stop_reasons)} trial(s) stopped early."


def _extend(store: dict[str, list[float]], trial_id: str, epoch: int, value: Any) -> list[float]:
    """``store[trial_id]`` cut to ``epoch - 1`` readings (a restarted trial reports an epoch
    again), then ``value`` (``None`` -> NaN) for ``epoch``."""
    series = store.get(trial_id, [])[: epoch - 1]
    series += [math.nan] * (epoch - 1 - len(series))  # never happens with our trainable
    series.append(math.nan if value is None else float(value))
    store[trial_id] = series
    return series


def gain_metrics(
    monitor: GainMonitor | Sequence[float],
    epoch: int | None = None,
    *,
    train_loss: Sequence[float],
    diverged: bool = False,
    score_config: ScoreConfig | None = None,
    trial_config: TrialScoreConfig | None = None,
) -> dict[str, Any]:
    """The metrics one epoch reports to Tune (see :func:`report_gain`), without reporting."""
    if isinstance(monitor, GainMonitor):
        curve = [float(v) for v in monitor.gains]
        epochs: list[int] | None = monitor.epochs
    else:
        curve, epochs = [float(v) for v in monitor], None
    epoch = epoch if epoch is not None else (epochs[-1] if epochs else len(curve))
    losses = [float(v) for v in train_loss]
    if len(losses) != len(curve):
        raise ValueError(
            f"train_loss has {len(losses)} value(s) but the gain curve {len(curve)}: pass the "
            "training loss of every measured epoch."
        )
    diag = diagnose(
        curve,
        epochs=epochs,
        diverged_epoch=epoch if diverged else None,
        train_loss=losses,
    )
    feats = diag.features
    records = [{"train_loss": v, "gain": g} for v, g in zip(losses, curve, strict=True)]
    score = trial_score(records, config=trial_config)
    return {
        "epoch": int(epoch),
        "gain": _finite(curve[-1]) if curve else None,
        # NaN, not None, when diverged: OptunaSearch reports it to Optuna, which takes floats
        # only (and records the diverged trial as failed in its study)
        TRIAL_SCORE: math.nan if diverged else score,
        SCORE: float(gain_score(feats, config=score_config)),
        "level": _finite(feats.level),
        "trend": _finite(feats.trend),
        "variability": _finite(feats.variability),
        "saturation": _finite(feats.saturation),
        "diagnosis": diag.label,
        "train_loss": _finite(losses[-1]) if losses else None,
        "diverged": bool(diverged or not math.isfinite(score)),
    }


def report_gain(
    monitor: GainMonitor | Sequence[float],
    epoch: int | None = None,
    *,
    train_loss: Sequence[float],
    diverged: bool = False,
    checkpoint: Any = None,
    extra: dict[str, Any] | None = None,
    score_config: ScoreConfig | None = None,
    trial_config: TrialScoreConfig | None = None,
) -> dict[str, Any]:
    """Report one epoch of your own training loop to Ray Tune (the twin of the Optuna helper).

    Call it inside a Tune function trainable once per epoch, after
    ``monitor.measure(model, epoch)``. It reports ``epoch``, ``gain``, ``trial_score`` (the
    value :func:`run_tuner` optimises, :func:`gainsearch.trial_score`), ``gain_score``,
    ``level``, ``trend``, ``variability``, ``saturation``, ``diagnosis``, ``train_loss`` and
    ``diverged`` (plus ``extra``) with ``ray.tune.report(metrics, checkpoint=checkpoint)``, so
    that :class:`GainScheduler` (``metric="trial_score"``) can stop the trial. A diverged trial
    reports ``trial_score`` NaN and ``diverged`` True, and GainScheduler stops it.

    Args:
        monitor: The trial's :class:`~gainsearch.GainMonitor` (or its gain curve).
        epoch: The epoch just measured (default: the monitor's last).
        train_loss: The training loss of every measured epoch so far.
        diverged: The training loss went non-finite.
        checkpoint: A ``ray.tune.Checkpoint`` to report with the metrics.
        extra: More metrics to report (e.g. your own accuracy, for logging only).
        score_config: Weights of the gain score.
        trial_config: The trial score's form.

    Returns:
        The metrics reported.
    """
    metrics = gain_metrics(
        monitor,
        epoch,
        train_loss=train_loss,
        diverged=diverged,
        score_config=score_config,
        trial_config=trial_config,
    )
    metrics.update(extra or {})
    tune.report(metrics, checkpoint=checkpoint)
    return metrics


def gain_trainable(config: dict[str, Any]) -> None:
    """Ray Tune function trainable: one built-in trial, reported every epoch.

    ``config`` holds the sampled hyperparameters plus, under ``"_gainsearch"``, the fixed
    training settings (``train``), the score weights (``variability_weight``) and whether to
    record test metrics. Reports ``epoch``, ``gain``, ``trial_score``
    (:func:`gainsearch.trial_score`), ``gain_score``, ``level``, ``trend``,
    ``variability``, ``saturation``, ``diagnosis``, ``train_loss``, ``diverged`` (+ ``test_acc``,
    ``test_loss``) with a checkpoint directory holding ``checkpoint.pt``.
    """
    from ray.tune import Checkpoint

    fixed = dict(config.get(GAINSEARCH_KEY, {}))
    params = {k: v for k, v in config.items() if k != GAINSEARCH_KEY}
    settings = {**fixed.get("train", {}), **params}
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

        def report(ctx: EpochContext) -> None:
            extra: dict[str, Any] = {
                "gain_max": _finite(ctx.record["gain_max"]),
                "node_id": ray.get_runtime_context().get_node_id(),
            }
            if ctx.epoch == train_config.epochs and not ctx.diverged:  # the report's figure
                extra["spectrum"] = ctx.monitor.spectrum(ctx.model)
            if train_config.eval_test:  # evaluation only: the scheduler never reads these
                extra["test_acc"] = ctx.record["test_acc"]
                extra["test_loss"] = _finite(ctx.record["test_loss"])
            report_gain(
                ctx.monitor,
                ctx.epoch,
                train_loss=[r["train_loss"] for r in ctx.history],
                diverged=ctx.diverged,
                checkpoint=Checkpoint.from_directory(work),
                extra=extra,
                score_config=score_config,
                trial_config=trial_config,
            )

        train_trial(train_config, callbacks=[report], checkpoint_path=local)


def _finite(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


# -- runner -------------------------------------------------------------------------------------


@dataclass
class RayOutcome:
    """What :func:`run_tuner` leaves behind."""

    experiment_path: str
    rows: list[dict[str, Any]]
    best: dict[str, Any]
    interrupted: bool = False


def make_scheduler(spec: ExperimentSpec) -> TrialScheduler:
    """The spec's pruner as a Ray scheduler: gain (GainScheduler), median, asha or none."""
    from ray.tune.schedulers import ASHAScheduler, MedianStoppingRule

    d = spec.decision
    if spec.pruner == "median":
        return MedianStoppingRule(
            time_attr="epoch", grace_period=d.warmup_epochs, min_samples_required=d.min_peers
        )
    if spec.pruner == "asha":
        return ASHAScheduler(
            time_attr="epoch",
            grace_period=d.warmup_epochs,
            max_t=int(spec.train.get("epochs", TrainConfig().epochs)),
        )
    if spec.pruner == "none":
        return FIFOScheduler()
    return GainScheduler(config=d, metric=result_key(spec), mode=spec.modes[0])


def connect(address: str | None, *, num_cpus: int | None = None) -> bool:
    """Join ``address`` (``auto``, ``host:port``, ``ray://host:port``) or start a local Ray.

    A local Ray binds 127.0.0.1 and has no dashboard. Returns True when this call started Ray.

    Raises:
        ValueError: the address cannot be reached (within Ray's connection timeout).
    """
    if ray.is_initialized():
        return False
    if address is None:
        _loopback_only()
        ray.init(
            num_cpus=num_cpus,
            include_dashboard=False,
            logging_level=logging.WARNING,
            log_to_driver=False,
        )
        return True
    _check_reachable(address)
    try:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    except Exception as err:  # ConnectionError, TimeoutError, ValueError, RuntimeError ...
        raise ValueError(
            f"--address {address!r}: cannot connect to a Ray cluster there ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}). Start one with `ray start --head` "
            "and pass its address (auto, host:port or ray://host:10001)."
        ) from None
    return True


def _check_reachable(address: str, timeout: float = 5.0) -> None:
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


def _stop_gracefully(signum: int, frame: Any) -> None:
    """SIGTERM during ``fit``: ask Tune to stop as on Ctrl-C (it saves the experiment state)."""
    os.kill(os.getpid(), signal.SIGUSR1)


def _loopback_only() -> None:
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
        storage: Optuna storage URL of the TPE study behind ``OptunaSearch`` (default
            ``sqlite:///OUT/study.db``): the study opens in optuna-dashboard as on the Optuna
            back end.
        study_name: Name of the Optuna study and of the Ray experiment (default: the spec's).
        eval_test: Record test metrics per epoch (evaluation only).
        max_failures: Restarts per trial from its last checkpoint (``FailureConfig``).
        timeout: Seconds, counted from this call, after which no new trial starts; the running
            ones finish (as on the Optuna back end), and running the call again gets a new
            timeout. Tune's own ``time_budget_s`` is not used: it stops the running trials, and
            its spent budget carries over to a resumed run, which then starts nothing.
        progress: Called with counts as results arrive.
    """
    from ray.tune import CheckpointConfig, FailureConfig, RunConfig, TuneConfig, Tuner
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from gainsearch.integrations.optuna import (
        check_out_dir,
        check_timeout,
        make_sampler,
        make_storage,
        write_results,
    )

    _check_args(spec, n_trials, max_concurrent, cpus_per_trial, gpus_per_trial, max_failures)
    check_timeout(timeout)
    deadline = _now() + timeout if timeout else None
    out = Path(out_dir).resolve()
    check_out_dir(out, study_name or spec.name)
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
    study_storage = make_storage(study_url, heartbeat=None)  # a clear error before Ray starts
    # One checkpoint per epoch is the point of fault tolerance here; Ray's advice to snapshot
    # less often does not apply to epochs of seconds.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    started = connect(address, num_cpus=None)
    try:
        if address is not None and "://" not in results_path and len(ray.nodes()) > 1:
            logger.warning(
                "storage path %s is local but the cluster has %d nodes: every node must see it "
                "(a shared file system), else pass --storage-path s3://... or another shared URI",
                results_path,
                len(ray.nodes()),
            )
        metric, mode = result_key(spec), spec.modes[0]
        budget = int(train.get("epochs", TrainConfig().epochs))
        scheduler = make_scheduler(spec)
        stops = _record_stops(scheduler, spec.pruner, budget)
        param_space = {
            **spec.to_ray(),
            GAINSEARCH_KEY: {
                "train": train,
                "variability_weight": spec.score.variability_weight,
                "trial_score": {
                    "gain_weight": spec.trial.gain_weight,
                    "early_epochs": spec.trial.early_epochs,
                },
                "eval_test": eval_test,
                "use_gpu": gpus_per_trial > 0,
            },
        }
        trainable = tune.with_resources(
            gain_trainable, {"cpu": cpus_per_trial, "gpu": gpus_per_trial}
        )
        name = study_name or spec.name
        experiment = Path(results_path) / name if "://" not in results_path else None
        if experiment is not None and Tuner.can_restore(str(experiment)):
            _check_same_spec(out, spec)
            tuner = Tuner.restore(
                str(experiment), trainable=trainable, resume_errored=True, param_space=param_space
            )
            if isinstance(scheduler, GainScheduler):
                _replay(scheduler, experiment)
            local = getattr(tuner, "_local_tuner", None)
            if local is not None:
                # restore unpickles the old scheduler and the old run's callbacks, whose progress
                # closure would write to the stream of the old run (jsonl events went to stderr):
                # use the recording scheduler and this run's progress
                local._tune_config.scheduler = scheduler
                local._tune_config.search_alg = _DeadlineSearch.renew(
                    local._tune_config.search_alg, deadline
                )
                local._tune_config.time_budget_s = None  # a run from before the deadline
                local._run_config.callbacks = (
                    [_ProgressCallback(progress, budget, metric)] if progress else None
                )
        else:
            limited = ConcurrencyLimiter(
                OptunaSearch(
                    sampler=make_sampler(spec),
                    metric=metric,
                    mode=mode,
                    storage=study_storage,
                    study_name=name,
                ),
                max_concurrent=max_concurrent,
            )
            tuner = Tuner(
                trainable,
                param_space=param_space,
                tune_config=TuneConfig(
                    metric=metric,
                    mode=mode,
                    search_alg=_DeadlineSearch(limited, deadline),
                    scheduler=scheduler,
                    num_samples=n_trials,
                ),
                run_config=RunConfig(
                    name=name,
                    storage_path=results_path,
                    failure_config=FailureConfig(max_failures=max_failures),
                    checkpoint_config=CheckpointConfig(num_to_keep=2),
                    verbose=0,
                    callbacks=[_ProgressCallback(progress, budget, metric)] if progress else None,
                ),
            )
        previous = signal.signal(signal.SIGTERM, _stop_gracefully)
        try:
            grid = tuner.fit()
        finally:
            signal.signal(signal.SIGTERM, previous)
        reasons = {**_load_reasons(out), **stops}
        (out / "stop_reasons.json").write_text(json.dumps(reasons, indent=2) + "\n")
        client_mode = getattr(tuner, "_local_tuner", None) is None  # ray:// runs Tune remotely
        rows = result_rows(grid, spec, reasons, budget, client_mode=client_mode)
        best = _best(rows, spec, train)
        write_results(out, spec, rows, best, study_url, name)
        interrupted = any(r["state"] == "interrupted" for r in rows) or (
            len(rows) < n_trials and not (deadline is not None and _now() >= deadline)
        )
        return RayOutcome(str(grid.experiment_path), rows, best, interrupted)
    finally:
        if started:
            ray.shutdown()


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


def _record_stops(scheduler: TrialScheduler, name: str, budget: int) -> dict[str, str]:
    """Trial id -> reason for every trial the scheduler stops before the epoch ``budget``.

    GainScheduler keeps its own reasons; ASHA also says STOP at ``max_t``, a normal completion.
    """
    if isinstance(scheduler, GainScheduler):
        return scheduler.stop_reasons
    stops: dict[str, str] = {}
    decide_result = scheduler.on_trial_result

    def on_trial_result(tune_controller: Any, trial: Trial, result: dict[str, Any]) -> str:
        verdict = decide_result(tune_controller, trial, result)
        if verdict == TrialScheduler.STOP and int(result.get("epoch", budget)) < budget:
            stops[trial.trial_id] = (
                f"stopped at epoch {result.get('epoch')} by the {name} scheduler"
            )
        return str(verdict)

    scheduler.on_trial_result = on_trial_result  # type: ignore[method-assign]
    return stops


def _replay(scheduler: GainScheduler, experiment: Path) -> None:
    """Rebuild the scheduler's peer curves from the results already on disk (resume)."""
    for result_file in experiment.glob("*/result.json"):
        trial_id = None
        for line in result_file.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            trial_id = record.get("trial_id", trial_id)
            if trial_id and "epoch" in record and "gain" in record:
                epoch = int(record["epoch"])
                _extend(scheduler.curves, trial_id, epoch, record["gain"])
                metric = scheduler._metric
                if metric and metric in record:
                    value = record[metric]
                    sign = -1.0 if scheduler._mode == "min" else 1.0
                    _extend(
                        scheduler.values, trial_id, epoch, None if value is None else sign * value
                    )


def _load_reasons(out: Path) -> dict[str, str]:
    path = out / "stop_reasons.json"
    if path.is_file():
        try:
            return dict(json.loads(path.read_text()))
        except (ValueError, TypeError):
            return {}
    return {}


def result_rows(
    grid: Any,
    spec: ExperimentSpec,
    reasons: dict[str, str],
    budget: int,
    *,
    client_mode: bool = False,
) -> list[dict[str, Any]]:
    """One row per trial in the same format as the Optuna back end's table.

    State: ``complete``; ``pruned`` (stopped early by the scheduler, with the reason from
    ``reasons``; diverged trials count as pruned); ``failed``; ``interrupted`` (shorter than the
    budget but stopped by no scheduler: the run ended first, resume to finish it). In Ray Client
    mode (``ray://``) the scheduler runs remotely, so short trials count as pruned.
    """
    rows = []
    ordered = sorted(grid, key=_creation_index)  # stable numbering across resumes
    for number, result in enumerate(ordered):
        metrics = dict(result.metrics or {})
        trial_id = metrics.get("trial_id", "")
        history = result.metrics_dataframe
        curve: list[float | None] = []
        losses: list[float | None] = []
        nodes: list[str] = []
        epoch_log: list[int] = []
        if history is not None and "gain" in history:
            epoch_log = [int(e) for e in history["epoch"] if e == e]  # as reported, in order
            missing = [None] * len(history)
            by_epoch: dict[int, Any] = {}  # the last reading of each epoch (a replay repeats one)
            for epoch, gain, loss, node in zip(
                history["epoch"],
                history["gain"],
                history.get("train_loss", missing),
                history.get("node_id", missing),
                strict=False,
            ):
                if epoch == epoch:  # not NaN
                    by_epoch[int(epoch)] = (gain, loss, node)
            readings = [by_epoch[e] for e in sorted(by_epoch)]
            curve = [None if g is None or g != g else float(g) for g, _, _ in readings]
            if "train_loss" in history:
                losses = [None if v is None or v != v else float(v) for _, v, _ in readings]
            nodes = sorted({str(n) for _, _, n in by_epoch.values() if n})
        epochs = int(metrics.get("epoch", len(curve)) or 0)
        if result.error is not None:
            state, reason = "failed", str(result.error).splitlines()[0]
        elif metrics.get("diverged"):
            state, reason = "pruned", f"diverged at epoch {epochs}"
        elif trial_id in reasons:
            state, reason = "pruned", reasons[trial_id]
        elif epochs < budget and client_mode:  # the scheduler ran remotely: no reasons here
            state, reason = "pruned", f"stopped at epoch {epochs} by the {spec.pruner} scheduler"
        elif epochs < budget:  # no scheduler stopped it: the run ended first
            state, reason = "interrupted", "the run stopped before this trial finished"
        else:
            state, reason = "complete", ""
        params = {k: v for k, v in (result.config or {}).items() if k != GAINSEARCH_KEY}
        score = metrics.get(result_key(spec))
        score = None if score is None or score != score else float(score)
        rows.append(
            {
                "number": number,
                "trial_id": trial_id,
                "state": state,
                "params": params,
                "value": score if state == "complete" else (score if score is not None else None),
                "values": [score] if score is not None else None,
                "epochs": epochs,
                "final_gain": curve[-1] if curve else None,
                "gain_curve": curve,
                "epoch_log": epoch_log,
                "diagnosis": metrics.get("diagnosis", ""),
                "prune_reason": reason,
                "test_acc": metrics.get("test_acc"),
                "nodes": nodes,
                "train_loss": losses,
                "diagnosis_reason": "",
                "spectrum": metrics.get("spectrum"),
            }
        )
    return rows


def _creation_index(result: Any) -> tuple[int, str]:
    """Tune names a trial's folder ``<trainable>_<trial_id>_<index>_<params>_<date>``."""
    name = Path(str(result.path)).name
    match = re.match(r"^.+?_[0-9a-f]{5,}_(\d+)_", name)
    return (int(match.group(1)) if match else 1 << 30, name)


def _best(
    rows: list[dict[str, Any]], spec: ExperimentSpec, train: dict[str, Any]
) -> dict[str, Any]:
    complete = [r for r in rows if r["state"] == "complete" and r["value"] is not None]
    if not complete:
        return {"best": None, "reason": "no trial completed yet"}
    pick = max if spec.modes[0] == "max" else min
    best = pick(complete, key=lambda r: r["value"])
    return {
        "metric": spec.metrics[0],
        "mode": spec.modes[0],
        "best": {
            "number": best["number"],
            "trial_id": best["trial_id"],
            "params": best["params"],
            "values": {spec.metrics[0]: best["value"]},
            "diagnosis": best["diagnosis"],
            "config": TrainConfig.from_dict({**train, **best["params"]}).to_dict(),
        },
    }


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

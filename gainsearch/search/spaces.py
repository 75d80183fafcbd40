"""Experiment specs: ``search_spaces/*.yaml`` -> validated :class:`ExperimentSpec`.

A spec names the data set and model, fixes the training settings, lists the searched
hyperparameters and configures the objective and the pruner::

    name: digits_lr                 # the study name
    description: free text
    train:                          # fixed TrainConfig settings (dataset, model, epochs, ...)
      dataset: digits
      model: digits_lenet
      epochs: 12
    search:                         # searched TrainConfig settings
      lr: {type: float, low: 1.0e-4, high: 1.0, log: true}
      batch_size: {type: categorical, choices: [32, 64, 128]}
      weight_decay: {type: float, low: 0.0, high: 1.0e-3, step: 1.0e-4}
    objective:
      metric: trial_score           # (default) or score, level, ...; a list for multi-objective
      mode: max                     # or a list: [max, min]
      gain_weight: 0.5              # the trial score's form (see gainsearch.core.objective)
      early_epochs: 3
      variability_weight: 1.0       # the gain score's weight
    pruner:
      type: gain                    # gain | median | asha | none
      grace_period: 1               # the decision core's settings (gainsearch.core.decision)
      min_peers: 3
      percentile: 50
      variability_factor: 3.0
      min_variability: 1.0
    sampler:
      type: tpe                     # tpe | random
      seed: 0

Every error names the key, the value and what is allowed. ``to_optuna``/``suggest`` turn the
search space into Optuna suggestions, ``to_ray`` into Ray Tune domains (imported lazily).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from gainsearch.batteries.train import TrainConfig
from gainsearch.core.decision import DecisionConfig
from gainsearch.core.features import DiagnosisConfig
from gainsearch.core.objective import METRICS, ScoreConfig, TrialScoreConfig

__all__ = [
    "ExperimentSpec",
    "ParamSpec",
    "SpecError",
    "load_spec",
    "parse_spec",
    "read_yaml_mapping",
    "spec_differences",
]

TOP_KEYS = ("name", "description", "train", "search", "objective", "pruner", "sampler")
PARAM_TYPES = ("float", "int", "categorical")
PRUNERS = ("gain", "median", "asha", "none")
SAMPLERS = ("tpe", "random")
MODES = ("max", "min")
#: Settings that cannot be searched (they identify the experiment or are not hyperparameters).
NOT_SEARCHABLE = (
    "dataset",
    "data_root",
    "model",
    "image_size",  # the data, loaded once per search
    "threads",
    "model_args",
    "epochs",
    "device",
    "eval_test",
    "precision",
    "channels_last",
    "gain_smoothing",
    # how a trial picks and keeps its epoch: one rule for the whole study, so that the trials'
    # values (each the trial score at its kept epoch) compare
    "signals",
    "select_by",
    "patience",
    "select_window",
)


class SpecError(ValueError):
    """An experiment spec is invalid; the message names the key, the value and what is allowed."""


@dataclass(frozen=True)
class ParamSpec:
    """One searched hyperparameter."""

    name: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    @property
    def bounds(self) -> tuple[float, float]:
        """``(low, high)`` of a numeric parameter."""
        if self.low is None or self.high is None:
            raise ValueError(f"search.{self.name} is categorical and has no bounds.")
        return self.low, self.high

    def to_dict(self) -> dict[str, Any]:
        """The YAML form."""
        if self.type == "categorical":
            return {"type": self.type, "choices": list(self.choices)}
        out: dict[str, Any] = {"type": self.type, "low": self.low, "high": self.high}
        if self.log:
            out["log"] = True
        if self.step is not None:
            out["step"] = self.step
        return out


@dataclass(frozen=True)
class ExperimentSpec:
    """A validated experiment."""

    name: str
    train: dict[str, Any]
    search: dict[str, ParamSpec]
    metrics: tuple[str, ...] = ("trial_score",)
    modes: tuple[str, ...] = ("max",)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    trial: TrialScoreConfig = field(default_factory=TrialScoreConfig)
    pruner: str = "gain"
    decision: DecisionConfig = field(default_factory=DecisionConfig)
    sampler: str = "tpe"
    seed: int | None = 0
    description: str = ""

    @property
    def multi_objective(self) -> bool:
        """True when more than one metric is optimised."""
        return len(self.metrics) > 1

    @property
    def directions(self) -> list[str]:
        """Optuna directions (``maximize``/``minimize``) of the metrics."""
        return ["maximize" if m == "max" else "minimize" for m in self.modes]

    def train_config(self, params: Mapping[str, Any]) -> TrainConfig:
        """The trial's full configuration: fixed settings plus the sampled ``params``."""
        return TrainConfig.from_dict({**self.train, **params})

    def with_train(self, **overrides: Any) -> ExperimentSpec:
        """A copy with some fixed training settings replaced (validated)."""
        return parse_spec({**self.to_dict(), "train": {**self.train, **overrides}})

    def to_dict(self) -> dict[str, Any]:
        """The resolved spec in YAML form (written next to results)."""
        decision = self.decision
        return {
            "name": self.name,
            "description": self.description,
            "train": dict(self.train),
            "search": {k: p.to_dict() for k, p in self.search.items()},
            "objective": {
                "metric": list(self.metrics) if self.multi_objective else self.metrics[0],
                "mode": list(self.modes) if self.multi_objective else self.modes[0],
                "gain_weight": self.trial.gain_weight,
                "early_epochs": self.trial.early_epochs,
                "variability_weight": self.score.variability_weight,
            },
            "pruner": {
                "type": self.pruner,
                "grace_period": decision.grace_period,
                "min_peers": decision.min_peers,
                "percentile": decision.percentile,
                "variability_factor": decision.variability_factor,
                "min_variability": decision.min_variability,
            },
            "sampler": {"type": self.sampler, "seed": self.seed},
        }

    # -- back ends -----------------------------------------------------------------------------
    def suggest(self, trial: Any) -> dict[str, Any]:
        """Sample the search space with an ``optuna.Trial``."""
        params: dict[str, Any] = {}
        for name, p in self.search.items():
            if p.type == "categorical":
                params[name] = trial.suggest_categorical(name, list(p.choices))
            elif p.type == "int":
                step = int(p.step) if p.step is not None else 1
                params[name] = trial.suggest_int(
                    name,
                    int(p.bounds[0]),
                    int(p.bounds[1]),
                    step=step,
                    log=p.log,
                )
            else:
                params[name] = trial.suggest_float(
                    name,
                    float(p.bounds[0]),
                    float(p.bounds[1]),
                    step=p.step,
                    log=p.log,
                )
        return params

    def to_optuna(self) -> dict[str, Any]:
        """The search space as ``optuna.distributions`` (for ``study.enqueue_trial`` & co)."""
        from optuna import distributions as d

        out: dict[str, Any] = {}
        for name, p in self.search.items():
            if p.type == "categorical":
                out[name] = d.CategoricalDistribution(list(p.choices))
            elif p.type == "int":
                step = int(p.step) if p.step is not None else 1
                out[name] = d.IntDistribution(
                    int(p.bounds[0]), int(p.bounds[1]), log=p.log, step=step
                )
            else:
                out[name] = d.FloatDistribution(
                    float(p.bounds[0]), float(p.bounds[1]), log=p.log, step=p.step
                )
        return out

    def to_ray(self) -> dict[str, Any]:
        """The search space as Ray Tune domains (needs ``pip install gainsearch[ray]``)."""
        from ray import tune

        out: dict[str, Any] = {}
        for name, p in self.search.items():
            if p.type == "categorical":
                out[name] = tune.choice(list(p.choices))
            elif p.type == "int":
                low, high = int(p.bounds[0]), int(p.bounds[1])
                if p.log:
                    out[name] = tune.lograndint(low, high + 1)
                elif p.step is not None:
                    out[name] = tune.qrandint(low, high, int(p.step))
                else:
                    out[name] = tune.randint(low, high + 1)
            else:
                low_f, high_f = float(p.bounds[0]), float(p.bounds[1])
                if p.log:
                    out[name] = tune.loguniform(low_f, high_f)
                elif p.step is not None:
                    out[name] = tune.quniform(low_f, high_f, p.step)
                else:
                    out[name] = tune.uniform(low_f, high_f)
        return out


# --------------------------------------------------------------------------------------------


def load_spec(path: str | Path) -> ExperimentSpec:
    """Read and validate a YAML spec (``yaml.safe_load``: no Python objects).

    Raises:
        SpecError: unreadable file, invalid YAML, or an invalid spec.
    """
    path = Path(path)
    data = read_yaml_mapping(path, what="spec", expected=f"a mapping with keys {list(TOP_KEYS)}")
    data.setdefault("name", path.stem)
    try:
        return parse_spec(data)
    except SpecError as err:
        raise SpecError(f"spec {path}: {err}") from err


def spec_differences(saved: Mapping[str, Any], spec: ExperimentSpec) -> list[str]:
    """Sections (``train``, ``search``, ``objective``, ``pruner``) in which a resumed run's
    saved spec (``ExperimentSpec.to_dict()`` form) differs from ``spec``."""
    import json

    current = spec.to_dict()
    return [
        key
        for key in ("train", "search", "objective", "pruner")
        if json.dumps(saved.get(key), sort_keys=True) != json.dumps(current[key], sort_keys=True)
    ]


def read_yaml_mapping(path: Path, *, what: str, expected: str) -> dict[str, Any]:
    """A YAML file holding a mapping, read with ``yaml.safe_load`` (no Python objects).

    Raises:
        SpecError: the file cannot be read, is not valid YAML, or is not a mapping; the message
            names ``what`` and the path.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise SpecError(f"{what} {path}: cannot read it: {err}") from err
    except UnicodeDecodeError as err:  # e.g. an image renamed .yaml
        byte = err.object[err.start : err.start + 1].hex()
        raise SpecError(
            f"{what} {path} is not a text file: it must be UTF-8 YAML, but byte 0x{byte} at "
            f"position {err.start} is not UTF-8."
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise SpecError(f"{what} {path} is not valid YAML: {problem}{where}.") from None
    if not isinstance(data, dict):
        raise SpecError(f"{what} {path} must hold {expected}, but holds {type(data).__name__}.")
    return data


def parse_spec(data: Mapping[str, Any]) -> ExperimentSpec:
    """Validate a spec given as a mapping (see the module docstring)."""
    if not isinstance(data, Mapping):
        raise SpecError(f"a spec must be a mapping, but got {type(data).__name__}.")
    _no_unknown("spec", data, TOP_KEYS)
    name = data.get("name", "gainsearch")
    if not isinstance(name, str) or not name.strip():
        raise SpecError(f"name must be a non-empty string, but got name={name!r}.")
    description = data.get("description", "") or ""
    train = _mapping("train", data.get("train", {}))
    search_raw = _mapping("search", data.get("search", {}))
    search = {key: _param(key, value) for key, value in search_raw.items()}
    known = {f.name for f in fields(TrainConfig)}
    for key in search:
        if key not in known:
            raise SpecError(
                f"search.{key}: unknown training setting; searchable settings are "
                f"{sorted(known - set(NOT_SEARCHABLE))}."
            )
        if key in NOT_SEARCHABLE:
            raise SpecError(
                f"search.{key}: {key!r} cannot be searched (it defines the experiment); put it "
                f"under train:. Searchable settings are {sorted(known - set(NOT_SEARCHABLE))}."
            )
        if key in train:
            raise SpecError(f"{key!r} is both fixed under train: and searched under search:.")
    try:  # dataset/model names and every fixed value
        TrainConfig.from_dict(train)
    except ValueError as err:
        raise SpecError(f"train: {err}") from err
    for key, p in search.items():  # every end of every range and every choice must be valid
        for value in p.choices if p.type == "categorical" else p.bounds:
            try:
                TrainConfig.from_dict({**train, key: value})
            except ValueError as err:
                raise SpecError(f"search.{key}: the value {value!r} is not allowed: {err}") from err

    objective = _mapping("objective", data.get("objective", {}))
    _no_unknown(
        "objective",
        objective,
        ("metric", "mode", "gain_weight", "early_epochs", "variability_weight"),
    )
    metrics = _as_tuple(objective.get("metric", "trial_score"))
    modes = _as_tuple(
        objective.get("mode", ["max" if m != "variability" else "min" for m in metrics])
    )
    for metric in metrics:
        if metric not in METRICS:
            raise SpecError(
                f"objective.metric: unknown metric {metric!r}; available: {list(METRICS)}."
            )
    if len(set(metrics)) != len(metrics):
        raise SpecError(f"objective.metric: metrics must be distinct, but got {list(metrics)}.")
    for mode in modes:
        if mode not in MODES:
            raise SpecError(
                f"objective.mode must be 'max' or 'min' (one per metric), but got {mode!r}."
            )
    if len(modes) != len(metrics):
        raise SpecError(
            f"objective.mode needs one mode per metric: {len(metrics)} metric(s) {list(metrics)}, "
            f"{len(modes)} mode(s) {list(modes)}."
        )
    try:
        score = ScoreConfig(variability_weight=objective.get("variability_weight", 1.0))
        defaults = TrialScoreConfig()
        trial = TrialScoreConfig(
            gain_weight=objective.get("gain_weight", defaults.gain_weight),
            early_epochs=objective.get("early_epochs", defaults.early_epochs),
        )
    except ValueError as err:
        raise SpecError(f"objective.{err}") from err

    pruner_raw = _mapping("pruner", data.get("pruner", {}))
    if "warmup_epochs" in pruner_raw:  # a common slip: train has a warmup_epochs of its own
        raise SpecError(
            f"pruner.warmup_epochs={pruner_raw['warmup_epochs']!r} is not a pruner setting: the "
            "first epoch a trial may be pruned at is pruner.grace_period (Ray Tune's name); "
            "train.warmup_epochs is the learning-rate warm-up."
        )
    decision_keys = (
        "grace_period",
        "min_peers",
        "percentile",
        "variability_factor",
        "min_variability",
    )
    _no_unknown("pruner", pruner_raw, ("type", *decision_keys))
    pruner = pruner_raw.get("type", "gain")
    if pruner not in PRUNERS:
        raise SpecError(f"pruner.type must be one of {list(PRUNERS)}, but got {pruner!r}.")
    try:
        decision = DecisionConfig(
            score=score,
            diagnosis=DiagnosisConfig(),
            **{k: pruner_raw[k] for k in decision_keys if k in pruner_raw},
        )
    except (ValueError, TypeError) as err:
        raise SpecError(f"pruner.{err}") from err

    sampler_raw = _mapping("sampler", data.get("sampler", {}))
    _no_unknown("sampler", sampler_raw, ("type", "seed"))
    sampler = sampler_raw.get("type", "tpe")
    if sampler not in SAMPLERS:
        raise SpecError(f"sampler.type must be one of {list(SAMPLERS)}, but got {sampler!r}.")
    seed = sampler_raw.get("seed", 0)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise SpecError(
            f"sampler.seed must be a non-negative integer or null, but got seed={seed!r}."
        )
    return ExperimentSpec(
        name=name.strip(),
        description=str(description),
        train=dict(train),
        search=search,
        metrics=metrics,
        modes=modes,
        score=score,
        trial=trial,
        pruner=pruner,
        decision=decision,
        sampler=sampler,
        seed=seed,
    )


def _no_unknown(where: str, data: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {unknown}; allowed keys are {list(allowed)}.")


def _mapping(key: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(f"{key} must be a mapping, but got {type(value).__name__} ({value!r}).")
    return dict(value)


def _as_tuple(value: Any) -> tuple[str, ...]:
    items = tuple(value) if isinstance(value, (list, tuple)) else (value,)
    if not items:
        raise SpecError("objective.metric must name at least one metric.")
    return items


def _number(where: str, value: Any, integer: bool) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if integer:
        ok = ok and float(value).is_integer()
    if not ok:
        kind = "an integer" if integer else "a finite number"
        raise SpecError(f"{where} must be {kind}, but got {value!r}.")
    return value  # type: ignore[no-any-return]


def _param(name: str, raw: Any) -> ParamSpec:
    where = f"search.{name}"
    if not isinstance(raw, Mapping):
        raise SpecError(
            f"{where} must be a mapping like {{type: float, low: 0.001, high: 0.1, log: true}}, "
            f"but got {raw!r}."
        )
    kind = raw.get("type")
    if kind not in PARAM_TYPES:
        raise SpecError(f"{where}.type must be one of {list(PARAM_TYPES)}, but got {kind!r}.")
    if kind == "categorical":
        _no_unknown(where, raw, ("type", "choices"))
        choices = raw.get("choices")
        if not isinstance(choices, list) or not choices:
            raise SpecError(f"{where}.choices must be a non-empty list, but got {choices!r}.")
        if not all(c is None or isinstance(c, (str, int, float, bool)) for c in choices):
            raise SpecError(
                f"{where}.choices must hold numbers, strings, booleans or null: {choices!r}."
            )
        return ParamSpec(name, kind, choices=tuple(choices))
    _no_unknown(where, raw, ("type", "low", "high", "log", "step"))
    integer = kind == "int"
    for key in ("low", "high"):
        if key not in raw:
            raise SpecError(f"{where} needs '{key}' (type {kind}).")
    low = _number(f"{where}.low", raw["low"], integer)
    high = _number(f"{where}.high", raw["high"], integer)
    if low > high:
        raise SpecError(
            f"{where}: low must be <= high, but got low={low!r} > high={high!r} (inverted range)."
        )
    log = raw.get("log", False)
    if not isinstance(log, bool):
        raise SpecError(f"{where}.log must be true or false, but got {log!r}.")
    if log and low <= 0:
        raise SpecError(f"{where}: a log scale needs low > 0, but got low={low!r}.")
    step = raw.get("step")
    if step is not None:
        step = _number(f"{where}.step", step, integer)
        if step <= 0:
            raise SpecError(f"{where}.step must be positive, but got step={step!r}.")
        if log:
            raise SpecError(f"{where}: step and log cannot be combined (Optuna's rule).")
        if step > high - low and high != low:
            raise SpecError(f"{where}.step={step!r} is larger than the range [{low}, {high}].")
    if low == high:
        raise SpecError(
            f"{where}: empty range (low == high == {low!r}); fix the value under train:."
        )
    return ParamSpec(
        name,
        kind,
        low=int(low) if integer else float(low),
        high=int(high) if integer else float(high),
        log=log,
        step=(int(step) if integer else float(step)) if step is not None else None,
    )

"""What a search leaves in its output directory, the same for both back ends.

:class:`TrialRow` is one trial, typed: the Optuna runner builds it from a study's trials, the Ray
runner from Tune's results, :func:`write_results` writes it to ``trials.csv`` (the table),
``trials.json`` (every field, curves included) and ``best.json``, and ``gainsearch report``
reads it back (:class:`gainsearch.report.RunData` holds these rows). A directory holds one study
(:func:`check_out_dir`).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from gainsearch._files import write_atomic
from gainsearch.search.spaces import ExperimentSpec

__all__ = [
    "Outcome",
    "TrialRow",
    "check_out_dir",
    "finite_float",
    "finite_json",
    "redact",
    "write_results",
]

#: ``trials.csv`` columns after ``number``, ``state`` and the parameters.
CSV_TAIL = (
    "value",
    "epochs",
    "selected_epoch",
    "final_gain",
    "diagnosis",
    "prune_reason",
    "stop_reason",
    "noise_rate",
    "noise_kind",
    "model_file",
    "test_acc",
)


@dataclass
class TrialRow:
    """One trial of a search, as ``trials.csv``, ``trials.json``, ``best.json`` and the report
    show it.

    Attributes:
        number: The trial's number (Optuna's; on Ray the creation order).
        state: ``complete``, ``pruned``, ``failed``, ``running``, ``waiting`` or
            ``interrupted`` (Ray: the run ended before the trial; resume to finish it).
        params: The searched parameters.
        value: The objective (single-objective studies).
        values: Every objective value.
        epochs: Epochs trained.
        gain_curve: The gain (dB) per epoch (``None`` where non-finite).
        train_loss: The training loss per epoch.
        diagnosis: The diagnosis label at the trial's last epoch, and its reason.
        prune_rule: Why the trial was pruned, as a rule: ``diverged``, ``too_variable``,
            ``below_percentile`` (the decision core's rules) or ``pruner`` (another pruner or
            scheduler); empty when not pruned.
        prune_reason: The same in words.
        test_acc: The last test accuracy (with ``--eval-test``; evaluation only).
        spectrum: The final network's amplitude spectrum (for the report's figure).
        trial_id: Ray Tune's trial id.
        epoch_log: Ray: the epochs in the order reported (a restored trial repeats some).
        nodes: Ray: the nodes the trial ran on.
        value_curve: The reported metric per epoch (Optuna's intermediate values; ``None``
            where non-finite or not reported).
        decision_rule: The decision core's rule at the trial's last epoch, and its reason.
        config: The trial's resolved training configuration.
        selected_epoch: The epoch whose weights the trial kept (its ``select_by``; the last
            epoch with ``select_by: last``). ``value`` is the trial score at this epoch.
        stop_reason: Why a trial that completed stopped before its budget (patience ran out).
        signals: The stopping signals per epoch (``None`` where non-finite or not recorded).
        label_noise: The trial's label-noise diagnosis
            (:meth:`gainsearch.core.noise.LabelNoise.to_dict`: rate, kind, pairs, ...).
        model_file: The file with the kept epoch's weights, relative to the run directory
            (Optuna: ``models/trial_N.pt``, as ``keep`` allows; Ray: the trial's latest Tune
            checkpoint, whose kept weights :func:`gainsearch.load_best` reads); empty when none.
    """

    number: int
    state: str
    params: dict[str, Any] = field(default_factory=dict)
    value: float | None = None
    values: list[float] | None = None
    epochs: int = 0
    gain_curve: list[float | None] = field(default_factory=list)
    train_loss: list[float | None] = field(default_factory=list)
    diagnosis: str = ""
    diagnosis_reason: str = ""
    prune_rule: str = ""
    prune_reason: str = ""
    test_acc: float | None = None
    test_acc_curve: list[float | None] | None = None
    spectrum: Any = None
    trial_id: str = ""
    epoch_log: list[int] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)
    value_curve: list[float | None] = field(default_factory=list)
    decision_rule: str = ""
    decision_reason: str = ""
    config: dict[str, Any] | None = None
    selected_epoch: int | None = None
    stop_reason: str = ""
    signals: dict[str, list[float | None]] = field(default_factory=dict)
    label_noise: dict[str, Any] | None = None
    model_file: str = ""

    def __post_init__(self) -> None:  # one form for a missing reading: None (as in JSON)
        self.gain_curve = [finite_float(v) for v in self.gain_curve]
        self.train_loss = [finite_float(v) for v in self.train_loss]
        self.value_curve = [finite_float(v) for v in self.value_curve]
        self.signals = {k: [finite_float(v) for v in vs] for k, vs in self.signals.items()}

    @property
    def noise_rate(self) -> float | None:
        """The estimated label-noise rate (``None`` if not recorded)."""
        rate = (self.label_noise or {}).get("rate")
        return finite_float(rate)

    @property
    def noise_kind(self) -> str:
        """``none``, ``symmetric`` or ``class-dependent`` (empty if not recorded)."""
        return str((self.label_noise or {}).get("kind") or "")

    @property
    def final_gain(self) -> float | None:
        """The last gain reading (``None`` if none, or non-finite)."""
        last = self.gain_curve[-1] if self.gain_curve else None
        return None if last is None or not math.isfinite(float(last)) else float(last)

    def to_dict(self) -> dict[str, Any]:
        """Every field (and ``final_gain``), strict JSON (non-finite numbers as ``None``)."""
        return finite_json({**asdict(self), "final_gain": self.final_gain})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrialRow:
        """A row read back from ``trials.json`` (unknown keys are ignored, missing ones take
        their defaults, so results of earlier versions still load)."""
        return cls(**{k: data[k] for k in _FIELDS if k in data})

    def csv_cells(self, param_names: Sequence[str]) -> list[Any]:
        """This row in ``trials.csv``: number, state, parameters, then :data:`CSV_TAIL`."""
        value = self.value if self.value is not None else self.values
        tail = [value if key == "value" else getattr(self, key) for key in CSV_TAIL]
        return [self.number, self.state, *[self.params.get(p, "") for p in param_names], *tail]

    def best_entry(self, metrics: Sequence[str], config: dict[str, Any]) -> dict[str, Any]:
        """This trial as ``best.json`` describes the best one."""
        values = self.values if self.values is not None else [self.value]
        entry: dict[str, Any] = {"number": self.number}
        if self.trial_id:
            entry["trial_id"] = self.trial_id
        entry.update(
            params=dict(self.params),
            values=dict(zip(metrics, values, strict=True)),
            selected_epoch=self.selected_epoch,
            diagnosis=self.diagnosis,
            label_noise=self.label_noise,
            model_file=self.model_file,
            config=config,
        )
        return entry


_FIELDS = tuple(f.name for f in fields(TrialRow))


def finite_float(value: Any) -> float | None:
    """``value`` as a float, ``None`` where missing or non-finite (NaN, inf)."""
    return None if value is None or not math.isfinite(float(value)) else float(value)


@dataclass(kw_only=True)
class Outcome:
    """What a search leaves behind: its rows, its best trial (``best.json``), whether it was
    interrupted, and where the results are (:meth:`where`)."""

    rows: list[TrialRow]
    best: dict[str, Any]
    interrupted: bool = False
    #: Trials this call finished (``None`` where the back end does not count them): ``0`` when
    #: a finished search is run again (nothing to run).
    new_trials: int | None = None

    def where(self) -> list[str]:
        """Where the results are (for the end-of-run summary)."""
        return []


def write_results(
    out: Path,
    spec: ExperimentSpec,
    rows: Sequence[TrialRow],
    best: dict[str, Any],
    url: str,
    name: str,
) -> None:
    """``trials.csv``, ``trials.json`` (every row with its curves, read by ``gainsearch report``),
    ``best.json`` and ``spec.yaml`` in ``out`` (each written atomically)."""
    import yaml

    # a kept-weights file pruned since (keep: the best k only) is named nowhere
    rows = [
        r if not r.model_file or (out / r.model_file).exists() else replace(r, model_file="")
        for r in rows
    ]
    param_names = sorted({k for r in rows for k in r.params})
    table = io.StringIO(newline="")
    writer = csv.writer(table)
    writer.writerow(["number", "state", *param_names, *CSV_TAIL])
    for r in rows:
        writer.writerow(r.csv_cells(param_names))
    write_atomic(out / "trials.csv", table.getvalue())
    payload = {"rows": [r.to_dict() for r in rows]}
    write_atomic(
        out / "trials.json", json.dumps(payload, default=_json_default, allow_nan=False) + "\n"
    )
    summary = {"study_name": name, "storage": redact(url), **best}
    write_atomic(out / "best.json", json.dumps(summary, indent=2, default=_json_default) + "\n")
    write_atomic(out / "spec.yaml", yaml.safe_dump(spec.to_dict(), sort_keys=False))


def check_out_dir(out: Path, name: str) -> None:
    """Refuse an output directory that holds the results of another study (a directory holds
    one study: its ``trials.csv``, ``best.json``, ``spec.yaml`` and report). Nothing is written.

    Raises:
        ValueError: ``out/best.json`` names another study.
    """
    try:
        held = json.loads((out / "best.json").read_text()).get("study_name")
    except (OSError, ValueError, AttributeError):
        return  # a new directory (or no readable results yet)
    if held and held != name:
        raise ValueError(
            f"output directory {out} holds the results of study {held!r}, and this search is "
            f"study {name!r}: a directory holds one study. Use another --out, or --study-name "
            f"{held} to continue that study."
        )


def redact(url: str) -> str:
    """A storage URL with any password hidden."""
    try:
        import sqlalchemy

        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1] if "@" in url else url


def finite_json(value: Any) -> Any:
    """``value`` with every non-finite float replaced by ``None`` (strict JSON: no NaN)."""
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    if isinstance(value, (float, np.floating)) and not math.isfinite(float(value)):
        return None
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")

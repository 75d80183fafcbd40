"""Figures and the run report (the ``plot`` extra: matplotlib).

A finished (or interrupted) search is read back with :func:`load_run`, from its output directory
(``trials.json``, ``best.json``, ``spec.yaml``, written by both back ends) or from an Optuna
storage URL and study name. :func:`write_report` then writes the figures as PNG and one
self-contained ``report.html`` (images embedded as ``data:`` URIs, no scripts, no external
resources: it opens offline from disk and can be mailed as one file).

Figures (each a function returning a :class:`matplotlib.figure.Figure`; no global pyplot state):

* :func:`plot_curves`: the gain curve of every trial against epoch, coloured by the learning
  rate (or the first searched parameter) on a log colour scale, pruned trials marked where they
  stopped, with a marker per reason; training loss beside it (the paper's Figures 8-13);
* :func:`plot_spectrum`: the 2-D amplitude spectrum of the data derivative per channel, zero
  frequency centred, maximum marked (the paper's Figures 4-6), from a model or stored spectrum;
* :func:`plot_features`: level, trend, variability and score against each searched parameter;
* :func:`plot_diagnosis`: the diagnosis of each trial against the colouring parameter.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gainsearch._files import write_atomic
from gainsearch.core.features import DIVERGED, LABELS, compute_features
from gainsearch.core.selection import LAST
from gainsearch.search.results import TrialRow

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure
    from torch import nn

    from gainsearch.batteries.train import TrialResult

__all__ = [
    "FIGURES",
    "RunData",
    "load_run",
    "plot_curves",
    "plot_diagnosis",
    "plot_features",
    "plot_per_epoch",
    "plot_spectrum",
    "write_report",
    "write_sweep",
]

#: The figures a report holds, in order: file stem -> caption.
FIGURES = {
    "curves": "Gain and training loss of every trial against epoch, coloured by {param}; "
    "pruned trials are marked where they stopped, one marker per reason.",
    "features": "Features of each trial's gain curve (last 5 epochs) against the searched "
    "parameters.",
    "diagnosis": "Diagnosis of each trial's gain curve against {param}.",
    "labels": "The best trial's training labels against its predictions (the confident half of "
    "each predicted class, at the label-noise estimate epoch): off the diagonal, the given labels "
    "the network disagrees with; concentrated cells are class-dependent noise.",
    "spectrum": "Amplitude spectrum of the data derivative of the best trial's final network "
    "around the impulse (winning class, per channel, zero frequency centred; x marks the "
    "maximum, the Maximum Gain).",
}

#: Prune-reason category -> (marker, label) for :func:`plot_curves`.
_STOP_MARKERS = {
    "diverged": ("X", "diverged"),
    "too_variable": ("^", "too variable (lr too high)"),
    "below_percentile": ("v", "score below peers"),
    "other": ("s", "stopped by the scheduler"),
    "failed": ("D", "failed"),
    "interrupted": ("o", "interrupted"),
}


@dataclass
class RunData:
    """A search read back for the report.

    Attributes:
        rows: One :class:`~gainsearch.search.results.TrialRow` per trial.
        best: The content of ``best.json`` (``best`` or ``pareto_front``).
        spec: The experiment spec as a mapping (``name``, ``train``, ``search``, ...).
        source: Where it was read from (a directory or a redacted storage URL).
        study_name: The Optuna study name, when known.
    """

    rows: list[TrialRow]
    best: dict[str, Any]
    spec: dict[str, Any]
    source: str
    study_name: str = ""
    log_params: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:  # rows given as mappings (e.g. read from JSON) are typed
        self.rows = [r if isinstance(r, TrialRow) else TrialRow.from_dict(r) for r in self.rows]

    @classmethod
    def from_results(
        cls, results: Sequence[TrialResult], params: Sequence[str] = ("lr",), *, source: str = ""
    ) -> RunData:
        """A run of :func:`gainsearch.train_trial` results (e.g. a sweep of your own), each
        diagnosed against the others as peers; ``params`` names the configuration fields that
        vary (plotted on a log scale when they span more than a factor of 20)."""
        from gainsearch.core.evaluation import evaluate

        curves = [r.gains for r in results]
        rows: list[TrialRow] = []
        for i, r in enumerate(results):
            losses = [h["train_loss"] for h in r.history]
            peers = curves[:i] + curves[i + 1 :]
            diag = evaluate(curves[i], train_loss=losses, peers=peers).diagnosis
            config = r.config.to_dict()
            test = [h["test_acc"] for h in r.history if "test_acc" in h]
            done = r.status in ("completed", "early_stopped")  # patience: it completed
            rows.append(
                TrialRow(
                    number=i,
                    state="complete" if done else "pruned",
                    params={p: config[p] for p in params},
                    epochs=len(r.history),
                    gain_curve=list(r.gains),
                    train_loss=losses,
                    test_acc=test[-1] if test else None,  # as in a search's rows
                    test_acc_curve=test or None,
                    diagnosis=diag.label,
                    diagnosis_reason=diag.reason,
                    prune_rule="" if done else (DIVERGED if r.status == DIVERGED else "pruner"),
                    prune_reason="" if done else r.reason,
                    stop_reason=r.reason if done else "",
                    config=config,
                    selected_epoch=r.selected_epoch,
                    signals={name: [h.get(name) for h in r.history] for name in r.config.signals},
                )
            )
        spans = {
            p: [float(r.params[p]) for r in rows if isinstance(r.params[p], (int, float))]
            for p in params
        }
        log = {p for p, v in spans.items() if v and min(v) > 0 and max(v) / min(v) > 20}
        return cls(rows=rows, best={}, spec={}, source=source, log_params=log)

    @property
    def color_param(self) -> str | None:
        """``lr`` when searched, else the first numeric parameter, else ``None``."""
        numeric = [
            p
            for p in self.param_names
            if any(isinstance(r.params.get(p), (int, float)) for r in self.rows)
        ]
        return "lr" if "lr" in numeric else (numeric[0] if numeric else None)

    @property
    def param_names(self) -> list[str]:
        return sorted({k for r in self.rows for k in r.params})

    @property
    def best_row(self) -> TrialRow | None:
        best = self.best.get("best") if isinstance(self.best, Mapping) else None
        if not best:
            front = self.best.get("pareto_front") if isinstance(self.best, Mapping) else None
            best = front[0] if front else None
        if not best:
            return None
        return next((r for r in self.rows if r.number == best["number"]), None)


def load_run(source: str | Path, study_name: str | None = None) -> RunData:
    """Read a search back: an output directory, or an Optuna storage URL (+ study name).

    Raises:
        ValueError: the directory does not exist or holds no search results, the storage
            cannot be opened, or the study name is missing/unknown (the error lists the names).
    """
    text = str(source)
    if "://" in text:
        return _load_storage(text, study_name)
    folder = Path(text)
    if not folder.is_dir():
        raise ValueError(
            f"RUN {text!r} is neither a search output directory nor a storage URL "
            "(e.g. sqlite:///runs/digits/study.db)."
        )
    trials = folder / "trials.json"
    if not trials.is_file():
        db = folder / "study.db"
        if db.is_file():  # a study whose run was cut off before writing its results
            return _load_storage(f"sqlite:///{db.resolve()}", study_name)
        raise ValueError(
            f"RUN {text!r} holds no trials.json (written by `gainsearch search --out DIR`) and "
            "no study.db; pass the directory of a search or a storage URL with --study-name."
        )
    try:
        rows = [TrialRow.from_dict(r) for r in json.loads(trials.read_text())["rows"]]
        best_file = folder / "best.json"
        best = json.loads(best_file.read_text()) if best_file.is_file() else {}
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{trials} is not a gainsearch results file: {err}.") from err
    spec = _read_spec(folder / "spec.yaml")
    return RunData(
        rows=rows,
        best=best,
        spec=spec,
        source=str(folder),
        study_name=str(best.get("study_name", "")),
        log_params=_log_params(spec),
    )


def _read_spec(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    from gainsearch.search.spaces import read_yaml_mapping

    return dict(read_yaml_mapping(path, what="spec", expected="a mapping"))


def _log_params(spec: Mapping[str, Any]) -> set[str]:
    space = spec.get("search") or {}
    return {k for k, v in space.items() if isinstance(v, Mapping) and v.get("log")}


def _load_storage(url: str, study_name: str | None) -> RunData:
    import optuna

    from gainsearch.search.record import read_study, trial_rows
    from gainsearch.search.results import redact
    from gainsearch.search.spaces import parse_spec
    from gainsearch.search.study import make_storage

    storage = make_storage(url, heartbeat=None)
    names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    if study_name is None:
        if len(names) != 1:
            raise ValueError(
                f"--study-name is needed: the storage holds {len(names)} studies {sorted(names)}."
            )
        study_name = names[0]
    if study_name not in names:
        raise ValueError(
            f"study_name {study_name!r} is not in {redact(url)}; its studies are {sorted(names)}."
        )
    study = optuna.load_study(study_name=study_name, storage=storage)
    spec_dict = dict(study.user_attrs.get("spec") or {})
    rows = trial_rows(study)
    best: dict[str, Any] = {"study_name": study_name}
    if spec_dict:
        rows, summary = read_study(study, parse_spec(spec_dict))
        best.update(summary)
    return RunData(
        rows=rows,
        best=best,
        spec=spec_dict,
        source=redact(url),
        study_name=study_name,
        log_params=_log_params(spec_dict),
    )


# --------------------------------------------------------------------------------------------
# figures


def _figure(width: float, height: float, ncols: int = 1, nrows: int = 1) -> tuple[Figure, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _numbers(values: Sequence[Any] | None) -> np.ndarray:
    return np.array([math.nan if v is None else float(v) for v in (values or [])], dtype=np.float64)


def _stop_kind(row: TrialRow) -> str | None:
    state = row.state
    if state in ("failed", "fail"):
        return "failed"
    if state in ("interrupted", "running"):
        return "interrupted"
    if state != "pruned":
        return None
    # the rule stored with the trial (the decision core's, or "pruner" for any other)
    return row.prune_rule if row.prune_rule in _STOP_MARKERS else "other"


def _color_scale(run: RunData) -> tuple[Any, Any, str]:
    """(colormap, norm, label) for the colouring parameter (log scale when it is searched so)."""
    from matplotlib import colormaps
    from matplotlib.colors import LogNorm, Normalize

    param = run.color_param
    cmap = colormaps["viridis"]
    if param is None:
        numbers = [r.number for r in run.rows] or [0]
        return cmap, Normalize(min(numbers), max(max(numbers), min(numbers) + 1)), "trial"
    values = [
        float(r.params[param]) for r in run.rows if isinstance(r.params.get(param), (int, float))
    ]
    lo, hi = min(values), max(values)
    if hi <= lo:
        hi = lo * 1.01 + 1e-12 if lo else 1.0
    if param in run.log_params or (lo > 0 and hi / lo > 20):
        return cmap, LogNorm(lo, hi), f"{param} (log scale)"
    return cmap, Normalize(lo, hi), param


def _color_value(run: RunData, row: TrialRow) -> float:
    param = run.color_param
    if param is None:
        return float(row.number)
    value = row.params.get(param)
    return float(value) if isinstance(value, (int, float)) else math.nan


def _log_x(ax: Any) -> None:
    """Log x axis labelled at 1, 2 and 5 times powers of ten, plain numbers, no minor labels."""
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def selecting_by(run: RunData) -> str | None:
    """The stopping signal the run's trials keep their epoch by (``None``: ``select_by: last``)."""
    names = {(r.config or {}).get("select_by", LAST) for r in run.rows} - {LAST}
    return sorted(names)[0] if names else None


def plot_curves(run: RunData, signal: str | None = None) -> Figure:
    """Gain curves (left) and training loss (right) of every trial, coloured by parameter, and a
    third panel with a stopping signal per epoch (``signal``; default: the run's ``select_by``
    when it is not ``last``). When the trials keep a selected epoch (``select_by`` a signal),
    each curve marks it with a dot."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import LogNorm
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    signal = signal or selecting_by(run)
    marks = selecting_by(run) is not None
    if signal is not None and not any(signal in r.signals for r in run.rows):
        known = sorted({k for r in run.rows for k in r.signals})
        raise ValueError(f"signal {signal!r} is not recorded by this run's trials; known: {known}.")
    fig, axes = _figure(16 if signal else 11, 4.2, ncols=3 if signal else 2)
    ax_gain, ax_loss = axes[0][:2]
    ax_signal = axes[0][2] if signal else None
    cmap, norm, label = _color_scale(run)
    kinds_seen: set[str] = set()
    every = np.concatenate([_numbers(r.gain_curve) for r in run.rows] or [np.zeros(0)])
    span = _robust_range(every[np.isfinite(every)])
    for row in sorted(run.rows, key=lambda r: _color_value(run, r)):
        gains = _numbers(row.gain_curve)
        losses = _numbers(row.train_loss)
        value = _color_value(run, row)
        color = cmap(norm(value)) if math.isfinite(value) else "grey"
        if gains.size:
            epochs = np.arange(1, gains.size + 1)
            ax_gain.plot(epochs, gains, color=color, lw=1.3, alpha=0.9)
        if losses.size:
            ax_loss.plot(np.arange(1, losses.size + 1), losses, color=color, lw=1.3, alpha=0.9)
        values = _numbers(row.signals.get(signal)) if signal else np.zeros(0)
        if ax_signal is not None and values.size:
            ax_signal.plot(np.arange(1, values.size + 1), values, color=color, lw=1.3, alpha=0.9)
        kept = row.selected_epoch
        if marks and kept is not None:  # the kept epoch, on every panel
            dot = {"marker": "o", "color": color, "mec": "black", "mew": 0.6, "ms": 5, "ls": ""}
            for ax, series in ((ax_gain, gains), (ax_loss, losses), (ax_signal, values)):
                if ax is not None and 0 < kept <= series.size and math.isfinite(series[kept - 1]):
                    ax.plot(kept, series[kept - 1], zorder=3, **dot)
        kind = _stop_kind(row)
        if kind:
            marker, _ = _STOP_MARKERS[kind]
            style = {"marker": marker, "color": color, "mec": "black", "mew": 0.8, "ms": 8}
            finite = np.flatnonzero(np.isfinite(gains))
            if finite.size:  # where it stopped: its last finite reading
                at = int(finite[-1])
                y = float(np.clip(gains[at], *span)) if span else gains[at]  # on the edge
                ax_gain.plot(at + 1, y, clip_on=False, **style)
            else:  # no finite reading at all (diverged at once): on the bottom edge
                ax_gain.plot(
                    max(int(row.epochs or 1), 1),
                    0.03,
                    transform=ax_gain.get_xaxis_transform(),
                    clip_on=False,
                    **style,
                )
            kinds_seen.add(kind)
    ax_gain.set(xlabel="epoch", ylabel="Maximum Gain (dB)", title="gain per epoch")
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="training loss per epoch")
    if ax_signal is not None:
        ax_signal.set(xlabel="epoch", ylabel=signal, title=f"{signal} per epoch")
    if span:  # a trial that exploded (finite but huge) must not flatten every other curve
        ax_gain.set_ylim(*span)
    finite_losses = np.array(
        [v for r in run.rows for v in _numbers(r.train_loss) if v > 0 and math.isfinite(v)]
    )
    if finite_losses.size and finite_losses.max() / finite_losses.min() > 50:
        ax_loss.set_yscale("log")
        decades = _robust_range(np.log10(finite_losses), min_fence=3.0)  # in decades
        if decades:
            ax_loss.set_ylim(10 ** decades[0], 10 ** decades[1])
    for ax in (ax_gain, ax_loss, *([ax_signal] if ax_signal is not None else [])):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    if marks:
        kept_handle = Line2D([], [], ls="", marker="o", mfc="white", mec="black", ms=5)
        ax_loss.legend([kept_handle], ["kept epoch"], loc="best", fontsize=8)
    if kinds_seen:
        handles = [
            Line2D([], [], ls="", marker=_STOP_MARKERS[k][0], mfc="white", mec="black", ms=8)
            for k in _STOP_MARKERS
            if k in kinds_seen
        ]
        labels = [_STOP_MARKERS[k][1] for k in _STOP_MARKERS if k in kinds_seen]
        ax_gain.legend(handles, labels, loc="best", fontsize=8, title="stopped", title_fontsize=8)
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=list(axes[0]), label=label)
    if isinstance(norm, LogNorm):  # 0.01, 0.02, 0.05, not 10^-2 and crowded minor labels
        bar.ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        bar.ax.yaxis.set_minor_formatter(NullFormatter())
    return fig


def _robust_range(values: np.ndarray, min_fence: float = 50.0) -> tuple[float, float] | None:
    """y-limits holding the bulk of the gains; ``None`` when nothing sticks out."""
    if values.size < 2:
        return None
    q1, q3 = np.percentile(values, [25, 75])
    fence = max(6.0 * (q3 - q1), min_fence)  # wide: only a trial that exploded falls outside
    inside = values[(values >= q1 - fence) & (values <= q3 + fence)]
    lo, hi = float(inside.min()), float(inside.max())
    pad = max(0.1 * (hi - lo), min_fence / 50)
    lo, hi = float(lo - pad), float(hi + pad)
    if values.min() >= lo and values.max() <= hi:
        return None
    return lo, hi


def plot_per_epoch(run: RunData, key: str, ylabel: str) -> Figure:
    """Any per-epoch list of the rows (e.g. ``test_acc_curve`` from
    :meth:`RunData.from_results` with ``eval_test``, or a stopping signal's name such as
    ``"prediction_changes"``) against epoch, coloured as in :func:`plot_curves`, one legend
    entry per trial."""
    fig, axes = _figure(6, 4)
    ax = axes[0, 0]
    cmap, norm, _ = _color_scale(run)
    param = run.color_param or "trial"
    for row in sorted(run.rows, key=lambda r: _color_value(run, r)):
        values = _numbers(row.signals[key] if key in row.signals else getattr(row, key))
        if values.size:
            value = _color_value(run, row)
            color = cmap(norm(value)) if math.isfinite(value) else "grey"
            ax.plot(
                np.arange(1, values.size + 1), values, color=color, label=f"{param} {value:.3g}"
            )
    ax.set(xlabel="epoch", ylabel=ylabel)
    ax.xaxis.get_major_locator().set_params(integer=True)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    return fig


def plot_spectrum(
    source: nn.Module | Sequence[Any] | np.ndarray,
    *,
    in_shape: Sequence[int] | None = None,
    probe: Any = None,
    title: str = "",
) -> Figure:
    """The 2-D amplitude spectrum (dB) of the data derivative, one panel per channel.

    Args:
        source: A model (measured now around ``probe`` or the impulse of ``in_shape``, winning
            class), or spectra ``(C, H, W)`` in dB with the zero frequency centred (as stored by
            :meth:`gainsearch.GainMonitor.spectrum`).
        in_shape: ``(C, H, W)`` of the impulse probe, for a model without ``probe``.
        probe: A probe image ``(C, H, W)``.
        title: Figure title.
    """
    from torch import nn

    if isinstance(source, nn.Module):
        from gainsearch.core.spectral import maximum_gain

        result = maximum_gain(
            source, probe, in_shape=None if probe is not None else in_shape, return_spectra=True
        )
        maps = np.fft.fftshift(np.asarray(result.spectra), axes=(-2, -1))
        title = title or f"winning class {result.winner}, Maximum Gain {result.gain:.1f} dB"
    else:
        maps = np.asarray(source, dtype=np.float64)
    if maps.ndim == 2:
        maps = maps[None]
    if maps.ndim != 3:
        raise ValueError(f"spectra must have shape (C, H, W), but got shape={maps.shape}.")
    channels = maps.shape[0]
    fig, axes = _figure(max(3.6 * channels + 0.6, 5.0), 3.6, ncols=channels)
    h, w = maps.shape[1:]
    extent = (-(w // 2) - 0.5, w - w // 2 - 0.5, h - h // 2 - 0.5, -(h // 2) - 0.5)
    for k in range(channels):
        ax = axes[0, k]
        image = ax.imshow(maps[k], cmap="magma", extent=extent)
        peak = np.unravel_index(int(np.nanargmax(maps[k])), maps[k].shape)
        ax.plot(peak[1] - w // 2, peak[0] - h // 2, "x", color="cyan", ms=9, mew=2)
        ax.set(
            title=f"channel {k}: max {np.nanmax(maps[k]):.1f} dB",
            xlabel="horizontal frequency (bins)",
            ylabel="vertical frequency (bins)" if k == 0 else "",
        )
        fig.colorbar(image, ax=ax, label="dB", shrink=0.85)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


#: Features shown by :func:`plot_features`: (key, axis label).
_FEATURES = (
    ("score", "objective value"),
    ("level", "level (dB)"),
    ("trend", "trend (dB/epoch)"),
    ("variability", "variability (dB/epoch)"),
)


def _row_features(row: TrialRow) -> dict[str, float]:
    gains = _numbers(row.gain_curve)
    value = row.value
    out = {"score": float(value) if isinstance(value, (int, float)) else math.nan}
    if gains.size >= 3 and np.all(np.isfinite(gains)):  # slopes and spreads need 3 readings
        feats = compute_features(gains)
        out.update(level=feats.level, trend=feats.trend, variability=feats.variability)
    elif gains.size and np.all(np.isfinite(gains)):
        out.update(level=float(np.median(gains)), trend=math.nan, variability=math.nan)
    else:
        out.update(level=math.nan, trend=math.nan, variability=math.nan)
    return out


def plot_features(run: RunData) -> Figure:
    """Level, trend, variability and score of each trial against each numeric parameter."""
    params = [
        p
        for p in run.param_names
        if any(isinstance(r.params.get(p), (int, float)) for r in run.rows)
    ] or ["trial"]
    fig, axes = _figure(
        3.2 * len(_FEATURES) + 0.4, 2.8 * len(params), ncols=len(_FEATURES), nrows=len(params)
    )
    feats = [_row_features(r) for r in run.rows]
    for i, param in enumerate(params):
        xs = np.array(
            [
                float(r.number) if param == "trial" else float(r.params.get(param, math.nan))
                for r in run.rows
            ]
        )
        for j, (key, label) in enumerate(_FEATURES):
            ax = axes[i, j]
            ys = np.array([f[key] for f in feats])
            for state, marker in (("complete", "o"), ("pruned", "v")):
                mask = np.array([r.state == state for r in run.rows]) & np.isfinite(ys)
                if mask.any():
                    ax.scatter(xs[mask], ys[mask], marker=marker, s=28, label=state, alpha=0.85)
            if param in run.log_params:
                _log_x(ax)
            ax.set(xlabel=param, title=label if i == 0 else "")
            ax.grid(alpha=0.3)
        if axes[i, 0].get_legend_handles_labels()[0]:
            axes[i, 0].legend(fontsize=8)
    return fig


def plot_diagnosis(run: RunData) -> Figure:
    """The diagnosis of each trial (y) against the colouring parameter (x)."""
    param = run.color_param
    labels = [lab for lab in LABELS if any(r.diagnosis == lab for r in run.rows)]
    labels += sorted({str(r.diagnosis or "none") for r in run.rows} - set(labels))
    fig, axes = _figure(7.5, 0.5 * len(labels) + 1.8)
    ax = axes[0, 0]
    markers = {"complete": "o", "pruned": "v", "failed": "D", "interrupted": "s"}
    for state, marker in markers.items():
        rows = [r for r in run.rows if r.state == state]
        if not rows:
            continue
        xs = [_color_value(run, r) for r in rows]
        ys = [labels.index(str(r.diagnosis or "none")) for r in rows]
        ax.scatter(xs, ys, marker=marker, s=40, label=state, alpha=0.85)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_ylim(-0.6, len(labels) - 0.4)
    if param in run.log_params:
        _log_x(ax)
    ax.set(xlabel=param or "trial", title="diagnosis of each trial's gain curve")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return fig


def plot_labels(noise: Mapping[str, Any]) -> Figure:
    """The label-noise confusion of a trial (its ``label_noise``): given label (rows) against
    predicted class (columns), share of each predicted class, with the diagnosis as the title."""
    counts = np.asarray(noise["confusion"], dtype=float)
    shares = counts / np.maximum(counts.sum(axis=0, keepdims=True), 1.0)
    k = counts.shape[0]
    fig, axes = _figure(5.2, 4.6)
    ax = axes[0, 0]
    image = ax.imshow(shares, cmap="viridis", vmin=0.0, vmax=1.0)
    ax.set(xlabel="predicted class (about the true one)", ylabel="given label")
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    rate = noise.get("rate")
    rate_text = f"~{100 * float(rate):.0f} % " if rate is not None else ""
    ax.set_title(f"label noise: {rate_text}{noise.get('kind', '')}", fontsize=10)
    fig.colorbar(image, ax=ax, label="share of the predicted class")
    return fig


# --------------------------------------------------------------------------------------------
# the report


def write_report(
    run: RunData | str | Path, out_dir: str | Path | None = None, *, signal: str | None = None
) -> Path:
    """Write ``curves.png``, ``features.png``, ``diagnosis.png``, ``spectrum.png`` (when the best
    trial has a stored spectrum) and ``report.html`` into ``out_dir`` (default: the run's own
    directory, or ``./report`` for a storage URL). Returns the path of ``report.html``.
    ``signal``: a stopping signal shown beside the curves (default: the run's ``select_by``)."""
    if not isinstance(run, RunData):
        run = load_run(run)
    if out_dir is None:
        folder = Path(run.source)
        out_dir = folder if folder.is_dir() else Path("report")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images: dict[str, bytes] = {}
    if run.rows:
        images["curves"] = _png(plot_curves(run, signal))
        images["features"] = _png(plot_features(run))
        images["diagnosis"] = _png(plot_diagnosis(run))
    best = run.best_row
    spectrum = (best.spectrum if best is not None else None) or {}
    if best is not None and spectrum.get("db") is not None:
        images["spectrum"] = _png(
            plot_spectrum(
                spectrum["db"],
                title=f"trial #{best.number} (best): winning class {spectrum['winner']}, its "
                f"Maximum Gain {spectrum['gain']:.1f} dB"
                + (
                    f" (the trial's gain, {(best.config or {}).get('gain_target', 'all')}: "
                    f"{best.final_gain:.1f} dB)"
                    if best.final_gain is not None
                    else ""
                ),
            )
        )
    noise = (best.label_noise if best is not None else None) or {}
    if noise.get("confusion"):
        images["labels"] = _png(plot_labels(noise))
    for stem, data in images.items():
        write_atomic(out / f"{stem}.png", data)
    page = _html(run, images)
    path = out / "report.html"
    write_atomic(path, page.encode("utf-8"))
    return path


def write_sweep(run: RunData, out_dir: str | Path, stem: str) -> list[str]:
    """Write a sweep of your own (:meth:`RunData.from_results`): ``STEM_curves.png``,
    ``STEM_test.png`` (when the rows have ``test_acc_curve``) and ``STEM.json`` (every row)
    into ``out_dir``. Returns one printable line per trial: the coloured parameter, final test
    accuracy, diagnosis and gain curve."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / f"{stem}_curves.png", _png(plot_curves(run)))
    if any(row.test_acc_curve for row in run.rows):
        test = plot_per_epoch(run, "test_acc_curve", "test accuracy (evaluation only)")
        write_atomic(out / f"{stem}_test.png", _png(test))
    write_atomic(out / f"{stem}.json", json.dumps([r.to_dict() for r in run.rows], indent=1))
    param = run.color_param or "trial"
    lines = []
    for row in run.rows:
        acc = row.test_acc
        gains = " ".join("nan" if g is None else f"{g:.1f}" for g in row.gain_curve)
        lines.append(
            f"{param} {_color_value(run, row):<8.3g} test acc "
            f"{'-' if acc is None else f'{acc:.3f}':<5}  {row.diagnosis:<12} gains {gains}"
        )
    return lines


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:1200px;
color:#222;padding:0 1rem}h1{font-size:1.6rem}h2{font-size:1.2rem;margin-top:2rem}
table{border-collapse:collapse;font-size:.85rem;width:100%}th,td{border:1px solid #ddd;
padding:.25rem .5rem;text-align:left;vertical-align:top}th{background:#f4f4f4}
tr.pruned td{color:#666}tr.best td{background:#eef7ee}figure{margin:1rem 0}
img{max-width:100%;height:auto;border:1px solid #eee}figcaption{font-size:.85rem;color:#555}
code,pre{background:#f6f6f6;padding:.1rem .3rem}pre{padding:.6rem;overflow-x:auto}
.muted{color:#777}
"""


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if not math.isfinite(value) else f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_fmt(v)}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(_fmt(v) for v in value)
    return str(value)


def _html(run: RunData, images: Mapping[str, bytes]) -> str:
    e = html.escape
    counts: dict[str, int] = {}
    for r in run.rows:
        counts[r.state] = counts.get(r.state, 0) + 1
    epochs = sum(int(r.epochs or 0) for r in run.rows)
    budget = (run.spec.get("train") or {}).get("epochs")
    best = run.best_row
    param = run.color_param or "trial"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>gainsearch report: {e(run.spec.get('name') or run.study_name or 'search')}"
        "</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>gainsearch report: {e(str(run.spec.get('name') or run.study_name or 'search'))}</h1>",
    ]
    if run.spec.get("description"):
        parts.append(f"<p>{e(str(run.spec['description']))}</p>")
    state_text = ", ".join(f"{n} {e(s)}" for s, n in sorted(counts.items()))
    parts += [
        "<h2>Summary</h2><table>",
        f"<tr><th>source</th><td><code>{e(run.source)}</code></td></tr>",
        f"<tr><th>study</th><td>{e(run.study_name)}</td></tr>",
        f"<tr><th>trials</th><td>{len(run.rows)} ({state_text})</td></tr>",
        f"<tr><th>epochs trained</th><td>{epochs}"
        + (
            f" of {budget * len(run.rows)} without pruning ({budget} per trial)"
            if isinstance(budget, int) and run.rows
            else ""
        )
        + "</td></tr>",
        f"<tr><th>objective</th><td>{e(_fmt(run.spec.get('objective')))}</td></tr>",
        f"<tr><th>pruner</th><td>{e(_fmt(run.spec.get('pruner')))}</td></tr>",
        f"<tr><th>written</th><td>{datetime.now(UTC):%Y-%m-%d %H:%M UTC}</td></tr>",
        "</table>",
        "<h2>Best configuration</h2>",
    ]
    top = run.best.get("best") if isinstance(run.best, Mapping) else None
    if best is not None and top:
        parts += [
            f"<p>Trial <b>#{best.number}</b>: {e(_fmt(best.params))}; "
            f"{e(_fmt(top.get('values')))}; diagnosis <b>{e(best.diagnosis)}</b>"
            f"{': ' + e(best.diagnosis_reason) if best.diagnosis_reason else ''}"
            ".</p>",
            f"<pre>{e(json.dumps(top.get('config', {}), indent=2))}</pre>",
        ]
        noise = best.label_noise or {}
        if noise.get("kind"):
            rate = noise.get("rate")
            parts.append(
                f"<p>Label noise: {'~%.0f %% ' % (100 * rate) if rate is not None else ''}"
                f"<b>{e(str(noise['kind']))}</b>"
                + (f" (estimated at epoch {noise.get('epoch')})" if noise.get("epoch") else "")
                + ".</p>"
            )
            if noise.get("needs_split"):
                from gainsearch.core.noise import NEEDS_SPLIT

                parts.append(f'<p class="warning"><b>{e(NEEDS_SPLIT)}</b></p>')
        if top.get("model_file"):
            parts.append(
                f"<p>Its weights: <code>{e(str(top['model_file']))}</code> "
                "(<code>gainsearch.load_best(RUN)</code>).</p>"
            )
    elif isinstance(run.best, Mapping) and run.best.get("pareto_front"):
        front = [t["number"] for t in run.best["pareto_front"]]
        parts.append(f"<p>Pareto front: trials {e(str(front))}.</p>")
    else:
        parts.append('<p class="muted">No trial has completed yet.</p>')
    parts.append("<h2>Figures</h2>")
    for stem, data in images.items():
        encoded = base64.b64encode(data).decode("ascii")
        caption = FIGURES[stem].format(param=param)
        parts.append(
            f'<figure id="{stem}"><img src="data:image/png;base64,{encoded}" '
            f'alt="{e(stem)}"><figcaption>{e(caption)}</figcaption></figure>'
        )
    if not images:
        parts.append('<p class="muted">No trials yet: nothing to plot.</p>')
    names = run.param_names
    with_test = any(r.test_acc is not None for r in run.rows)
    head = ["#", "state", *names, "value", "epochs", "final gain (dB)", "diagnosis", "why"]
    if with_test:
        head.append("test acc (evaluation only)")
    parts += ["<h2>Trials</h2><table><thead><tr>"]
    parts += [f"<th>{e(h)}</th>" for h in head]
    parts.append("</tr></thead><tbody>")
    for r in sorted(run.rows, key=lambda r: r.number):
        klass = "best" if best is not None and r.number == best.number else r.state
        why = r.prune_reason or r.diagnosis_reason or ""
        cells = [
            r.number,
            r.state,
            *[r.params.get(n) for n in names],
            r.value if r.value is not None else r.values,
            r.epochs,
            r.final_gain,
            r.diagnosis,
            why,
        ]
        if with_test:
            cells.append(r.test_acc)
        parts.append(f'<tr class="{e(str(klass))}">')
        parts += [f"<td>{e(_fmt(c))}</td>" for c in cells]
        parts.append("</tr>")
    parts += [
        "</tbody></table>",
        '<p class="muted">Written by gainsearch. Test metrics, when shown, were recorded for '
        "evaluation only; nothing that decided read them.</p>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"

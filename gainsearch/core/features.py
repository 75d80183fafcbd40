"""From a gain curve to features and a diagnosis. Pure functions.

The definitions below are those of docs/decisions.md ("Features and diagnosis").

A gain curve is ``g_1..g_t``: one Maximum Gain reading (dB) per epoch. With ``W`` the window
(default 5 epochs) and ``d_i = g_i - g_{i-1}`` the first differences:

=====================  =========================================================================
feature                formula
=====================  =========================================================================
``level``              median of the last ``W`` finite gains (dB)
``trend``              least-squares slope of the last ``W`` gains against epoch (dB/epoch)
``early_trend``        least-squares slope of the first ``W`` gains (dB/epoch)
``rise``               ``level - g_1`` (dB)
``variability``        standard deviation of the last ``W`` differences ``d_i`` (dB/epoch)
``early_variability``  standard deviation of the first ``W`` differences (dB/epoch)
``saturation``         ``1 - |trend| / max(|early_trend|, |trend|, slope_floor)``, in [0, 1];
                       1 = the curve has flattened relative to how it started
``overfit_onset``      first epoch whose jump ``|d_i|`` exceeds ``onset_factor`` times the spread
                       of the ``W`` calm differences before it, after a flat stretch of ``W``
                       epochs (``|mean d| <= flat_slope``); ``None`` if there is none
``diverged_epoch``     first epoch with a non-finite gain, or ``None``
=====================  =========================================================================

Features other than ``diverged_epoch`` are computed on the finite part of the curve before the
first non-finite reading.

Diagnosis (the paper's section IV-C1 rules, in this order):

1. any non-finite gain -> ``diverged``;
2. fewer than ``min_epochs`` readings -> ``undetermined``;
3. high variability early *and* late -> ``lr_too_high`` (jagged at all epochs);
4. a flat stretch followed by a jump (``overfit_onset``) -> ``overfitting`` (stop);
5. when the training loss is given: the training set is fitted (final loss below
   ``fitted_loss``) -> ``overfitting`` (stop: the gain may still rise, the network is only
   getting sharper);
6. still rising (``trend > rising_slope``; and ``saturation < saturated``, which the default
   ``saturated=1`` leaves out) -> ``lr_too_low`` (raise the learning rate or train longer);
7. variability that is high late but not early -> ``overfitting`` (stop);
8. with peers: a level more than ``far_below_peers`` dB below the best peer's at the same epochs
   -> ``lr_too_low`` (flat because it has barely started learning);
9. otherwise -> ``converging`` (rise then smooth flattening).

The defaults were calibrated on ``benchmarks/selection.py`` (9 learning rates x 5 seeds x 2 data
sets, ground truth read off the test curves; docs/evidence.md): a run still improving at the end
of its budget had a gain still climbing 0.05-0.3 dB/epoch, with a saturation near 0.96 (relative
to its steep start), so "still rising" is ``trend > 0.05`` alone, and it is checked before the
late-variability rule because a fast rise that decelerates has a large spread of differences.
The gain of a good learning rate keeps climbing 0.05-0.15 dB/epoch after the training loss has
reached 1e-4..1e-3 while the test loss rises: the gain alone reads that as "still rising", the
training loss tells it apart (rule 5; any threshold from 0.002 to 0.01 agrees equally). The
smallest rates stay flat 13-42 dB below their best peer with the training loss near chance
(rule 8; 5-10 dB agree equally). Agreement with the ground truth: 54 % with the first defaults,
71 % with the gain-only rules, 89 % with rules 5 and 8 (chosen on seeds 0-2, also 89 % on
seeds 3-4).

**Too variable** (:func:`variability_check`) is the one definition shared with the decision
core, so that a trial pruned as "learning rate too high" is always diagnosed ``lr_too_high`` and
the reverse: the variability of the last ``W`` differences *and* of the first ``W`` is high, and
the gain fell by more than ``min_high_variability`` dB inside the last window (the fall tells a
jagged curve from a good learning rate's steep early rise, whose differences also spread
widely). "High" is relative when at least ``min_peers`` peer curves reached the same epoch:
above ``peer_factor`` times the peers' median variability over the same epochs (the paper's
"trial a few learning rates" calibration), and never below ``min_high_variability``. Without
enough peers the absolute threshold ``high_variability`` is used. (Until version 0.1 the
diagnosis used 4x and 0.5 dB/epoch without a fall, the decision 3x and 1 dB/epoch with one; the
decision's constants were kept, as the ones the pruning benchmarks chose.)
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np

__all__ = [
    "CONVERGING",
    "DIVERGED",
    "LABELS",
    "LR_TOO_HIGH",
    "LR_TOO_LOW",
    "OVERFITTING",
    "UNDETERMINED",
    "CurveFeatures",
    "Diagnosis",
    "DiagnosisConfig",
    "VariabilityCheck",
    "compute_features",
    "diagnose",
    "peer_levels",
    "peer_variability",
    "variability_check",
]

DIVERGED = "diverged"
LR_TOO_HIGH = "lr_too_high"
LR_TOO_LOW = "lr_too_low"
CONVERGING = "converging"
OVERFITTING = "overfitting"
UNDETERMINED = "undetermined"
#: Every diagnosis label.
LABELS = (DIVERGED, LR_TOO_HIGH, LR_TOO_LOW, CONVERGING, OVERFITTING, UNDETERMINED)


@dataclass(frozen=True)
class DiagnosisConfig:
    """Windows and thresholds of the features and the diagnosis. All in dB or dB/epoch.

    Attributes:
        window: ``W``, epochs in the level/trend/variability windows.
        min_epochs: Readings needed before a diagnosis other than ``undetermined``/``diverged``.
        high_variability: Absolute "high variability" threshold (dB/epoch), used without peers.
        peer_factor: With peers: high = above this multiple of the peers' median variability.
        min_high_variability: With peers: never call variability below this "high"; also the
            fall (dB) inside the last window that a too variable curve must show.
        rising_slope: A trend above this (dB/epoch) counts as still rising.
        saturated: Saturation at or above this counts as flattened.
        slope_floor: Slopes below this (dB/epoch) count as flat in the saturation ratio.
        flat_slope: A stretch is flat when its mean difference is within this (dB/epoch).
        onset_factor: A jump this many times the calm spread before it marks overfitting.
        min_onset_jump: ...and is at least this large (dB).
        fitted_loss: With the training loss given: a final training loss (cross-entropy, nats
            per example) below this means the training set is fitted.
        far_below_peers: With peers: a level this many dB below the best peer's (same epochs)
            marks a curve that has barely started learning.
    """

    window: int = 5
    min_epochs: int = 3
    high_variability: float = 1.0
    peer_factor: float = 3.0
    min_high_variability: float = 1.0
    rising_slope: float = 0.05
    saturated: float = 1.0
    slope_floor: float = 0.05
    flat_slope: float = 0.25
    onset_factor: float = 4.0
    min_onset_jump: float = 1.0
    fitted_loss: float = 0.005
    far_below_peers: float = 10.0

    def __post_init__(self) -> None:
        for f in fields(self):  # integers >= 2, saturated in [0, 1], the rest positive
            name, value = f.name, getattr(self, f.name)
            if f.type == "int":
                if isinstance(value, bool) or not isinstance(value, int) or value < 2:
                    raise ValueError(f"{name} must be an integer >= 2, but got {name}={value!r}.")
            elif name == "saturated":
                if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
                    raise ValueError(
                        f"saturated must be between 0 and 1 inclusive, but got saturated={value!r}."
                    )
            elif not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, but got {name}={value!r}.")

    def with_overrides(self, **overrides: Any) -> DiagnosisConfig:
        """A copy with some fields replaced; unknown names are an error that lists the known."""
        known = set(asdict(self))
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(
                f"unknown diagnosis setting(s) {unknown}; known settings are {sorted(known)}."
            )
        return replace(self, **overrides)


@dataclass(frozen=True)
class CurveFeatures:
    """Features of one gain curve (see the module docstring for the formulas)."""

    n_epochs: int
    last_epoch: int | None
    last: float
    level: float
    peak: float
    rise: float
    trend: float
    early_trend: float
    variability: float
    early_variability: float
    saturation: float
    overfit_onset: int | None
    diverged_epoch: int | None
    window: int

    @property
    def diverged(self) -> bool:
        """True when the curve has a non-finite reading."""
        return self.diverged_epoch is not None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (non-finite numbers stay floats: json writes them as NaN)."""
        return asdict(self)


@dataclass(frozen=True)
class Diagnosis:
    """A diagnosis label, the human-readable reason, and the evidence."""

    label: str
    reason: str
    features: CurveFeatures
    high_variability_threshold: float
    peers: int = 0
    #: Epoch from which the trial overfits, for ``overfitting``: the gain's jump after a flat
    #: stretch, or the first epoch whose training loss was below ``fitted_loss``.
    overfit_onset: int | None = None
    #: The "too variable" verdict behind ``lr_too_high`` (the decision core reuses it).
    variability: VariabilityCheck | None = None

    def __str__(self) -> str:
        return f"{self.label}: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict."""
        return {
            "label": self.label,
            "reason": self.reason,
            "high_variability_threshold": self.high_variability_threshold,
            "peers": self.peers,
            "overfit_onset": self.overfit_onset,
            "features": self.features.to_dict(),
        }


# --------------------------------------------------------------------------------------------


def compute_features(
    curve: Sequence[float] | np.ndarray,
    *,
    epochs: Sequence[int] | None = None,
    config: DiagnosisConfig | None = None,
    window: int | None = None,
) -> CurveFeatures:
    """Features of a gain curve.

    Args:
        curve: Gains in dB, one per epoch, oldest first. NaN/inf mark divergence.
        epochs: The epoch numbers of the readings (default ``1..t``). Must strictly increase.
        config: Windows and thresholds (default :class:`DiagnosisConfig`).
        window: Shortcut to override ``config.window``.

    Raises:
        ValueError: ``curve`` is not one-dimensional numbers, or ``epochs`` does not match it.
    """
    cfg = _config(config, window)
    values, epoch_arr = _as_curve(curve, epochs)
    bad = np.flatnonzero(~np.isfinite(values))
    diverged_epoch = int(epoch_arr[bad[0]]) if bad.size else None
    n_finite = int(bad[0]) if bad.size else values.size
    g = values[:n_finite]
    e = epoch_arr[:n_finite].astype(np.float64)
    w = cfg.window
    nan = math.nan
    if g.size == 0:
        return CurveFeatures(
            n_epochs=int(values.size),
            last_epoch=int(epoch_arr[-1]) if epoch_arr.size else None,
            last=float(values[-1]) if values.size else nan,
            level=nan,
            peak=nan,
            rise=nan,
            trend=nan,
            early_trend=nan,
            variability=nan,
            early_variability=nan,
            saturation=nan,
            overfit_onset=None,
            diverged_epoch=diverged_epoch,
            window=w,
        )
    diffs = np.diff(g)  # (t-1,) dB per step
    trend = _slope(e[-w:], g[-w:])
    early_trend = _slope(e[:w], g[:w])
    denominator = max(abs(early_trend), abs(trend), cfg.slope_floor)
    return CurveFeatures(
        n_epochs=int(values.size),
        last_epoch=int(epoch_arr[-1]),
        last=float(values[-1]),
        level=float(np.median(g[-w:])),
        peak=float(np.max(g)),
        rise=float(np.median(g[-w:]) - g[0]),
        trend=trend,
        early_trend=early_trend,
        variability=_spread(diffs[-w:]),
        early_variability=_spread(diffs[:w]),
        saturation=float(np.clip(1.0 - abs(trend) / denominator, 0.0, 1.0)),
        overfit_onset=_overfit_onset(g, epoch_arr[:n_finite], cfg),
        diverged_epoch=diverged_epoch,
        window=w,
    )


def peer_variability(
    peers: Sequence[Sequence[float] | np.ndarray],
    n_epochs: int,
    *,
    config: DiagnosisConfig | None = None,
    early: bool = False,
) -> np.ndarray:
    """Variability of each peer curve over its first ``n_epochs`` readings (same epochs).

    Peers shorter than ``n_epochs`` or non-finite there are left out, so a trial is compared
    with peers that reached the same epoch. Returns the finite variabilities found.
    """
    cfg = config or DiagnosisConfig()
    out = []
    for head in _peer_heads(peers, n_epochs):
        diffs = np.diff(head)
        value = _spread(diffs[: cfg.window] if early else diffs[-cfg.window :])
        if math.isfinite(value):
            out.append(value)
    return np.asarray(out, dtype=np.float64)


def peer_levels(
    peers: Sequence[Sequence[float] | np.ndarray],
    n_epochs: int,
    *,
    config: DiagnosisConfig | None = None,
) -> np.ndarray:
    """Level of each peer curve over its first ``n_epochs`` readings (the same epochs as the
    curve judged); peers shorter than that or non-finite there are left out."""
    cfg = config or DiagnosisConfig()
    heads = _peer_heads(peers, n_epochs)
    return np.asarray([np.median(head[-cfg.window :]) for head in heads], dtype=np.float64)


def _peer_heads(peers: Sequence[Sequence[float] | np.ndarray], n_epochs: int) -> list[np.ndarray]:
    """The first ``n_epochs`` readings of each peer that reached them with finite gains."""
    heads = [np.asarray(peer, dtype=np.float64).ravel()[:n_epochs] for peer in peers]
    return [h for h in heads if h.size == n_epochs and np.all(np.isfinite(h))]


def _loss_curve(train_loss: Sequence[float] | float | np.ndarray | None) -> np.ndarray:
    if train_loss is None:
        return np.empty(0)
    values = None
    if not isinstance(train_loss, (str, bytes)):
        with contextlib.suppress(TypeError, ValueError):
            values = np.asarray(train_loss, dtype=np.float64)
    if values is None or values.ndim > 1:
        raise ValueError(
            "train_loss must be a number or a sequence of numbers (one per epoch), but got "
            f"train_loss={train_loss!r}."
        )
    return np.atleast_1d(values)


@dataclass(frozen=True)
class VariabilityCheck:
    """The one "too variable" verdict (module docstring), with its evidence.

    Attributes:
        too_variable: High variability early and late, with a fall in the last window: the
            learning rate is too high (diagnosis ``lr_too_high``, decision ``too_variable``).
        late_high: The variability of the last ``W`` differences alone is high.
        threshold: "High" for the last window (dB/epoch).
        early_threshold: "High" for the first window (dB/epoch).
        fall: The largest fall between consecutive readings of the last window (dB).
        peers: Peers that set the thresholds (0: the absolute ``high_variability``).
    """

    too_variable: bool
    late_high: bool
    threshold: float
    early_threshold: float
    fall: float
    peers: int


def variability_check(
    curve: Sequence[float] | np.ndarray,
    peers: Sequence[Sequence[float] | np.ndarray] | None = None,
    *,
    config: DiagnosisConfig | None = None,
    min_peers: int = 3,
    features: CurveFeatures | None = None,
) -> VariabilityCheck:
    """Whether ``curve`` is too variable, against the peers that reached the same epoch.

    ``features`` (of ``curve``, same ``config``) saves computing them again.
    """
    cfg = config or DiagnosisConfig()
    feats = features or compute_features(curve, config=cfg)
    late, n_peers = _high_threshold(peers, feats.n_epochs, cfg, min_peers, early=False)
    early, _ = _high_threshold(peers, feats.n_epochs, cfg, min_peers, early=True)
    gains = np.asarray(curve, dtype=np.float64).ravel()
    window = gains[-(cfg.window + 1) :]
    fall = max(float(np.max(window[:-1] - window[1:])), 0.0) if window.size > 1 else 0.0
    late_high = bool(feats.variability > late)
    too = (
        late_high
        and bool(feats.early_variability > early)
        and fall > cfg.min_high_variability
        and not feats.diverged
    )
    return VariabilityCheck(
        too, late_high, late, early, fall if math.isfinite(fall) else 0.0, n_peers
    )


def diagnose(
    curve: Sequence[float] | np.ndarray,
    *,
    peers: Sequence[Sequence[float] | np.ndarray] | None = None,
    epochs: Sequence[int] | None = None,
    config: DiagnosisConfig | None = None,
    min_peers: int = 3,
    diverged_epoch: int | None = None,
    train_loss: Sequence[float] | float | np.ndarray | None = None,
) -> Diagnosis:
    """Diagnose a gain curve with the paper's rules (module docstring), optionally vs peers.

    Args:
        curve: Gains in dB, one per epoch; NaN/inf mean divergence.
        peers: Gain curves of other trials of the same study (any length; only those that reached
            this curve's epoch count are used). Gives peer-relative "high variability".
        epochs: Epoch numbers of ``curve`` (default ``1..t``).
        config: Windows and thresholds.
        min_peers: Peers needed before the peer-relative threshold replaces the absolute one.
        diverged_epoch: Outside evidence of divergence (e.g. the epoch whose training loss went
            non-finite); the diagnosis is then ``diverged`` whatever the gain curve says.
        train_loss: The training loss per epoch (or its last value). It needs no held-out data;
            a fitted training set (last value below ``fitted_loss``) turns "still rising" into
            ``overfitting``.
    """
    cfg = config or DiagnosisConfig()
    losses = _loss_curve(train_loss)
    feats = compute_features(curve, epochs=epochs, config=cfg)
    check = variability_check(curve, peers, config=cfg, min_peers=min_peers, features=feats)
    late_threshold, n_peers = check.threshold, check.peers

    def make(label: str, reason: str, onset: int | None = None) -> Diagnosis:
        return Diagnosis(
            label=label,
            reason=reason,
            features=feats,
            high_variability_threshold=late_threshold,
            peers=n_peers,
            overfit_onset=onset,
            variability=check,
        )

    if feats.diverged:
        return make(DIVERGED, f"the gain became non-finite at epoch {feats.diverged_epoch}")
    if diverged_epoch is not None:
        return make(DIVERGED, f"the training loss became non-finite at epoch {diverged_epoch}")
    if feats.n_epochs < cfg.min_epochs:
        return make(
            UNDETERMINED, f"{feats.n_epochs} reading(s); {cfg.min_epochs} are needed to judge"
        )
    if check.too_variable:
        return make(
            LR_TOO_HIGH,
            f"high variability at all epochs ({feats.early_variability:.2f} early, "
            f"{feats.variability:.2f} late dB/epoch; high is > {late_threshold:.2f}"
            f"{f' ({cfg.peer_factor:g}x the median of {n_peers} peers)' if n_peers else ''}) "
            f"and a fall of {check.fall:.2f} dB: learning rate too high",
        )
    if feats.overfit_onset is not None:
        return make(
            OVERFITTING,
            f"flat, then variable from epoch {feats.overfit_onset}: overfitting, stop training",
            feats.overfit_onset,
        )
    if losses.size and 0.0 <= losses[-1] < cfg.fitted_loss:
        onset = None
        epoch_numbers = _as_curve(curve, epochs)[1]
        if losses.size == epoch_numbers.size:  # one loss per gain reading
            onset = int(epoch_numbers[int(np.argmax(losses < cfg.fitted_loss))])
        return make(
            OVERFITTING,
            f"the training set is fitted (training loss {losses[-1]:.2g} < {cfg.fitted_loss:g}"
            f"{f' from epoch {onset}' if onset is not None else ''}) and the gain moves "
            f"{feats.trend:+.2f} dB/epoch: further epochs sharpen the network, they do not "
            "teach it; stop training",
            onset,
        )
    if feats.trend > cfg.rising_slope and feats.saturation < cfg.saturated:
        return make(
            LR_TOO_LOW,
            f"still rising ({feats.trend:+.2f} dB/epoch over the last {cfg.window} epochs, "
            f"saturation {feats.saturation:.2f}): learning rate too low or train longer",
        )
    if check.late_high:
        return make(
            OVERFITTING,
            f"smooth at first, then variable ({feats.variability:.2f} dB/epoch over the last "
            f"{cfg.window} epochs; high is > {late_threshold:.2f}): overfitting, stop training",
        )
    levels = peer_levels(peers, feats.n_epochs, config=cfg) if peers else np.empty(0)
    if levels.size >= min_peers and float(levels.max()) - feats.level > cfg.far_below_peers:
        return make(
            LR_TOO_LOW,
            f"flat at {feats.level:.1f} dB, {float(levels.max()) - feats.level:.1f} dB below the "
            f"best of {levels.size} peers: it has barely started learning; learning rate too low",
        )
    return make(
        CONVERGING,
        f"rose {feats.rise:+.1f} dB then flattened (trend {feats.trend:+.2f} dB/epoch, "
        f"saturation {feats.saturation:.2f}): converging",
    )


# --------------------------------------------------------------------------------------------


def _config(config: DiagnosisConfig | None, window: int | None) -> DiagnosisConfig:
    cfg = config or DiagnosisConfig()
    if window is not None:
        cfg = cfg.with_overrides(window=window)
    return cfg


def _as_curve(
    curve: Sequence[float] | np.ndarray, epochs: Sequence[int] | None
) -> tuple[np.ndarray, np.ndarray]:
    try:
        values = np.asarray(curve, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"curve must be a sequence of numbers (dB), but got {curve!r}.") from err
    if values.ndim != 1:
        raise ValueError(f"curve must be one-dimensional, but got shape={values.shape}.")
    if epochs is None:
        epoch_arr = np.arange(1, values.size + 1)
    else:
        epoch_arr = np.asarray(epochs)
        if epoch_arr.shape != values.shape:
            raise ValueError(
                f"epochs must have one entry per reading ({values.size}), but got {epoch_arr.size}."
            )
        if epoch_arr.size and (
            not np.issubdtype(epoch_arr.dtype, np.integer) or np.any(np.diff(epoch_arr) <= 0)
        ):
            raise ValueError(f"epochs must be strictly increasing integers, but got {epochs!r}.")
    return values, epoch_arr


def _slope(x: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of y against x (0 for fewer than two points)."""
    if y.size < 2:
        return 0.0
    xc = x - x.mean()
    return float(np.dot(xc, y - y.mean()) / np.dot(xc, xc))


def _spread(diffs: np.ndarray) -> float:
    """Standard deviation (ddof=0) of differences; 0 for fewer than two."""
    return float(np.std(diffs)) if diffs.size >= 2 else 0.0


def _overfit_onset(g: np.ndarray, epochs: np.ndarray, cfg: DiagnosisConfig) -> int | None:
    """First epoch whose jump follows a flat, calm stretch of ``W`` differences."""
    diffs = np.diff(g)  # diffs[i] belongs to epochs[i + 1]
    w = cfg.window
    for i in range(w, diffs.size):
        calm = diffs[i - w : i]
        if abs(float(calm.mean())) > cfg.flat_slope:
            continue
        spread = max(float(np.std(calm)), cfg.slope_floor)
        jump = abs(float(diffs[i]))
        if jump >= cfg.min_onset_jump and jump > cfg.onset_factor * spread:
            return int(epochs[i + 1])
    return None


def _high_threshold(
    peers: Sequence[Sequence[float] | np.ndarray] | None,
    n_epochs: int,
    cfg: DiagnosisConfig,
    min_peers: int,
    *,
    early: bool,
) -> tuple[float, int]:
    if peers:
        values = peer_variability(peers, n_epochs, config=cfg, early=early)
        if values.size >= min_peers:
            threshold = max(cfg.peer_factor * float(np.median(values)), cfg.min_high_variability)
            return threshold, int(values.size)
    return cfg.high_variability, 0

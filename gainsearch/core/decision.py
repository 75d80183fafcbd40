"""The one decision core: continue or prune a trial, and why. Pure.

Both back ends are thin adapters over :func:`decide`: ``GainPruner`` (Optuna) and
``GainScheduler`` (Ray Tune) collect the trial's gain curve and its peers' curves and act on the
returned :class:`Decision`, so the same curves give the same decisions on either back end.

**Epochs are numbers, not counts.** A trial is judged at its latest epoch number ``e`` (the
last of ``epochs``; ``1..t`` when a curve comes without them), and a peer is compared at the
same epoch numbers: its gains at the trial's measured epochs (a peer missing one of them is left
out of the curve comparison) and its reported value at ``e`` (a peer without one is left out of
the percentile rule). A trial that measures every second epoch is thus compared with its peers'
epochs 2, 4, 6, ..., whatever their own stride. A peer is a mapping ``{epoch: value}`` or a
sequence, whose entries are epochs ``1, 2, ...`` (see :func:`gainsearch.core.series.by_epoch`).

Rules, in order:

1. a non-finite gain, or a diverged flag from the trainer -> prune (``diverged``), at once,
   grace period or not;
2. ``e < grace_period`` -> continue (``grace_period``);
3. fewer than ``min_peers`` peers -> continue (``few_peers``);
4. too variable -> prune (``too_variable``: learning rate too high). This is the diagnosis's
   own definition (:func:`gainsearch.core.features.variability_check`): variability of the
   first and of the last window above ``variability_factor`` x the peers' median and above
   ``min_variability`` dB/epoch, with a fall of more than ``min_variability`` dB inside the last
   window. So a trial pruned here is diagnosed ``lr_too_high`` at that epoch, and a trial
   diagnosed ``lr_too_high`` against ``min_peers`` peers after the warm-up is pruned. The
   fall is what tells a jagged curve from a good learning rate's steep early rise, whose
   differences also spread widely (without it, ``benchmarks/selection.py`` replayed on digits
   pruned the best rate in one seed of five: regret 4.28 points; with it 0.39);
5. score below the ``percentile``-th percentile of the peers' scores at the same epoch -> prune
   (``below_percentile``). The score is the value the study optimises, as reported per epoch
   (``values``/``peer_values``: the trial score by default, see :mod:`gainsearch.core.objective`);
   without them, the gain score of the curves;
6. otherwise continue.

NaN policy: a trial whose curve holds NaN/inf is pruned at once (it diverged); peers with
non-finite gains before epoch ``t`` are left out of the comparison.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from gainsearch.core.features import (
    DIVERGED,
    CurveFeatures,
    DiagnosisConfig,
    VariabilityCheck,
    compute_features,
    variability_check,
)
from gainsearch.core.objective import ScoreConfig, gain_score
from gainsearch.core.series import Series, align, by_epoch

__all__ = [
    "BELOW_PERCENTILE",
    "CONTINUE",
    "DIVERGED",
    "FEW_PEERS",
    "GRACE_PERIOD",
    "TOO_VARIABLE",
    "Decision",
    "DecisionConfig",
    "decide",
]

GRACE_PERIOD = "grace_period"
FEW_PEERS = "few_peers"
TOO_VARIABLE = "too_variable"
BELOW_PERCENTILE = "below_percentile"
CONTINUE = "continue"


@dataclass(frozen=True)
class DecisionConfig:
    """Settings of the decision core.

    Defaults (judged from the first reading against the median of at least 3 peers, as Optuna's
    ``MedianPruner``) were chosen on ``benchmarks/pruning.py`` (paper's LeNet, mnist5k, 20 TPE
    trials) and the grid of ``benchmarks/selection.py``; docs/benchmarks.md and docs/evidence.md
    give their figures, each with the command that prints it.

    Attributes:
        grace_period: The first epoch (number) at which a trial may be pruned for anything but
            divergence (Ray Tune's ``grace_period``); 1 = judged from the first reading.
        min_peers: Peers that reached the same epoch needed before comparing.
        percentile: Prune when the score is below this percentile of the peers' (0-100).
        variability_factor: Too variable above this multiple of the peers' median variability
            (``None``: the diagnosis's ``peer_factor``; a value given here is written there, so
            that the decision and the diagnosis keep one definition).
        min_variability: ...and above this floor (dB/epoch), with a fall of as many dB
            (``None``: the diagnosis's ``min_high_variability``; given: written there).
        score: The score's weights.
        diagnosis: Feature windows and the "too variable" thresholds.
    """

    grace_period: int = 1
    min_peers: int = 3
    percentile: float = 50.0
    variability_factor: float | None = None
    min_variability: float | None = None
    score: ScoreConfig = field(default_factory=ScoreConfig)
    diagnosis: DiagnosisConfig = field(default_factory=DiagnosisConfig)

    def __post_init__(self) -> None:
        # one definition of "too variable": the diagnosis's thresholds, set from here if given
        overrides = {
            key: value
            for key, value in (
                ("peer_factor", self.variability_factor),
                ("min_high_variability", self.min_variability),
            )
            if value is not None
        }
        for name, value in (
            ("variability_factor", self.variability_factor),
            ("min_variability", self.min_variability),
        ):
            if value is not None and not (
                isinstance(value, (int, float)) and math.isfinite(value) and value > 0
            ):
                raise ValueError(f"{name} must be a positive number, but got {name}={value!r}.")
        diagnosis = self.diagnosis.with_overrides(**overrides) if overrides else self.diagnosis
        object.__setattr__(self, "diagnosis", diagnosis)
        object.__setattr__(self, "variability_factor", diagnosis.peer_factor)
        object.__setattr__(self, "min_variability", diagnosis.min_high_variability)
        for name in ("grace_period", "min_peers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, but got {name}={value!r}.")
        p = self.percentile
        if not (isinstance(p, (int, float)) and 0.0 <= p <= 100.0):
            raise ValueError(f"percentile must be between 0 and 100 inclusive, but got {p=}.")


@dataclass(frozen=True)
class Decision:
    """Whether to prune, which rule decided, and a human-readable reason.

    Attributes:
        prune: Prune (stop) the trial.
        rule: The rule that decided (``diverged``, ``grace_period``, ``few_peers``,
            ``too_variable``, ``below_percentile``, ``continue``).
        reason: One sentence saying why.
        epoch: The epoch number judged.
        value: The number the percentile rule compares: the study's metric as reported (in the
            direction "higher is better"), or the gain score when no metric was given.
        peers: Peers compared.
    """

    prune: bool
    rule: str
    reason: str
    epoch: int
    value: float = math.nan
    peers: int = 0


def decide(
    curve: Sequence[float] | np.ndarray,
    peers: Sequence[Series] = (),
    *,
    epochs: Sequence[int] | None = None,
    config: DecisionConfig | None = None,
    diverged: bool = False,
    values: Series | None = None,
    peer_values: Sequence[Series] | None = None,
    features: CurveFeatures | None = None,
    metric: str = "gain_score",
    variability: VariabilityCheck | None = None,
) -> Decision:
    """Decide whether the trial with gain ``curve`` continues, against its ``peers``.

    Args:
        curve: The trial's gains (dB), one per measured epoch so far.
        peers: Other trials' gain curves (a :data:`~gainsearch.core.series.Series` each),
            compared at this trial's epoch numbers.
        epochs: The epoch numbers of ``curve`` (strictly increasing; default ``1..t``).
        config: Thresholds.
        diverged: The trainer saw a non-finite training loss.
        values: The objective the study optimises, by epoch (a series), higher is better
            (e.g. :func:`gainsearch.core.objective.trial_score` of each epoch's history). The
            percentile rule compares its value at the last epoch ``e`` with the peers' at ``e``.
            ``None``: the gain score of ``curve`` and of the peers' curves.
        peer_values: Other trials' values by epoch (needed with ``values``). Peers without a
            finite value at ``e`` are left out of the percentile rule.
        features: The features of ``curve`` (same diagnosis config), when already computed.
        metric: The name of ``values`` in the reasons.
        variability: The "too variable" verdict of ``curve`` against the same ``peers``, when
            the diagnosis already has it (:attr:`gainsearch.core.features.Diagnosis.variability`).
    """
    if (values is None) != (peer_values is None):
        raise ValueError("values and peer_values go together: pass both or neither.")
    cfg = config or DecisionConfig()
    gains = np.asarray(curve, dtype=np.float64).ravel()
    t = int(gains.size)
    numbers = [int(e) for e in epochs] if epochs is not None else list(range(1, t + 1))
    if len(numbers) != t:
        raise ValueError(
            f"epochs must have one entry per reading ({t}), but got {len(numbers)}: {numbers!r}."
        )
    e = numbers[-1] if numbers else 0  # the epoch judged
    if diverged or not np.all(np.isfinite(gains)):
        bad = np.flatnonzero(~np.isfinite(gains))
        at = numbers[int(bad[0])] if bad.size else e
        what = "gain" if bad.size else "training loss"
        return Decision(True, DIVERGED, f"diverged: the {what} became non-finite at epoch {at}", e)
    feats = features or compute_features(gains, epochs=numbers, config=cfg.diagnosis)
    score = gain_score(feats, config=cfg.score) if t else math.nan
    if e < cfg.grace_period:
        reason = f"grace period: epoch {e} of {cfg.grace_period}"
        return Decision(False, GRACE_PERIOD, reason, e, score)
    heads = [np.asarray(list(head.values())) for head in align(peers, numbers)]
    n = len(heads)
    if n < cfg.min_peers:
        reason = f"{n} peer(s) reached epoch {e}; {cfg.min_peers} are needed to compare"
        return Decision(False, FEW_PEERS, reason, e, score, n)
    check = variability or variability_check(
        gains, heads, config=cfg.diagnosis, min_peers=cfg.min_peers, features=feats
    )
    if check.too_variable:
        reason = (
            f"learning rate too high: variability {feats.variability:.2f} dB/epoch at epoch {e} "
            f"is above {cfg.diagnosis.peer_factor:g}x the median of {n} peers (high is > "
            f"{check.threshold:.2f}) and the gain fell {check.fall:.2f} dB"
        )
        return Decision(True, TOO_VARIABLE, reason, e, score, n)
    what, fmt = "gain score", ".2f"
    if values is None or peer_values is None:
        peer_scores = [gain_score(h, config=cfg.score, diagnosis=cfg.diagnosis) for h in heads]
    else:
        what, fmt = metric, ".3g"
        score = by_epoch(values).get(e, math.nan)
        peer_scores = [
            v for v in (by_epoch(p).get(e, math.nan) for p in peer_values) if math.isfinite(v)
        ]
        n = len(peer_scores)
        if n < cfg.min_peers or not math.isfinite(score):
            reason = f"{n} peer(s) have a {metric} at epoch {e}; {cfg.min_peers} are needed"
            return Decision(False, FEW_PEERS, reason, e, score, n)
    cutoff = float(np.percentile(peer_scores, cfg.percentile))
    if score < cutoff:
        reason = (
            f"{what} {score:{fmt}} at epoch {e} is below the {cfg.percentile:g}th percentile "
            f"of {n} peers ({cutoff:{fmt}})"
        )
        return Decision(True, BELOW_PERCENTILE, reason, e, score, n)
    return Decision(
        False, CONTINUE, f"{what} {score:{fmt}} at epoch {e} is within its peers", e, score, n
    )

"""Knowing the label noise from the training predictions alone (issue 28).

Pure functions of what the built-in trainer already has after each epoch: every training
example's predicted class from its training forward pass (the one prediction changes count), its
per-example loss from the same pass, and its given (possibly wrong) label. No extra pass, nothing
held out.

* :func:`label_confusion`: the given-label x predicted-class counts on the training set.
* :func:`loss_mixture`: a two-component Gaussian mixture of the per-example losses (Arazo et
  al., 2019: noisy labels have the high-loss component), its high component's weight (a noise
  rate estimate) and how well the two components separate.
* :func:`estimate_label_noise`: the trial's estimate from its per-epoch records, at the
  *estimate epoch*: the epoch, among those so far (from epoch 2), where the two loss components
  separate best, the high-loss one weighing ``MIN_WEIGHT`` to ``MAX_WEIGHT`` (none such: the
  last epoch).
  Before it the network has not learned the clean labels yet; after it it memorises the
  wrong ones and the noisy examples' losses fall toward the clean ones. At that epoch:

  - ``rate``: the share of wrong given labels among the **confident** examples, the
    ``CONFIDENT_SHARE`` most confident of each predicted class (Patrini et al. 2017's anchor
    idea with argmax predictions: a learned example's predicted class is its true one, so its
    wrong label is noise, not the network's own confusion); beside it, for comparison,
    ``disagreement`` (the same share among all examples) and ``mixture_rate`` (the mixture's);
  - ``kind``, from the confident examples' confusion: ``"none"`` when ``rate < NONE_BELOW``;
    else ``"class-dependent"`` when, for the typical predicted (≈ true) class, its two most
    frequent wrong given labels hold at least ``CONCENTRATED_ABOVE`` of its wrong labels
    (mass-weighted over classes) **and** a chi-square test rejects uniform wrong labels per
    class at ``P_VALUE``; else ``"symmetric"``;
  - ``pairs``: the largest cells of the estimated transition, true (predicted) class → given
    label, with the share of that class's examples that carry the label.

  The constants are fixed before any report-half number exists (``benchmarks/PROTOCOL.md``).

Where the kind is ``class-dependent`` no validation-free rule is proven: :data:`NEEDS_SPLIT`
says so, in every output that shows the kind.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "CONCENTRATED_ABOVE",
    "KINDS",
    "NEEDS_SPLIT",
    "NONE_BELOW",
    "P_VALUE",
    "LabelNoise",
    "estimate_label_noise",
    "label_confusion",
    "loss_mixture",
    "noise_record",
]

#: The kinds of label noise the diagnosis names.
KINDS = ("none", "symmetric", "class-dependent")
#: Below this estimated rate the labels are called clean.
NONE_BELOW = 0.05
#: The share of a class's wrong labels in its two most frequent ones, above which it is
#: concentrated (symmetric noise over 10 classes gives about 2/9).
CONCENTRATED_ABOVE = 0.6
#: The chi-square test of uniform wrong labels per class must reject at this level too (small
#: data sets concentrate by chance).
P_VALUE = 1e-3
#: The share of each predicted class's most confident examples whose given labels estimate the
#: noise (the rate, the kind and the pairs).
CONFIDENT_SHARE = 0.5
#: The high-loss component's weight must lie in [MIN_WEIGHT, MAX_WEIGHT] for its epoch to be
#: the estimate epoch.
MIN_WEIGHT, MAX_WEIGHT = NONE_BELOW, 0.5
#: Pairs listed: at most this many, each at least this share of its class.
MAX_PAIRS, MIN_PAIR_SHARE = 5, 0.05
#: What every output says where the kind is class-dependent.
NEEDS_SPLIT = (
    "class-dependent label noise: keep a validation split. The training predictions settle on "
    "the wrong labels while the network memorises them; on 5 held-out set-ups of such noise the "
    "best validation-free rule (select_by: auto) still lost 2.9 points to a split on average, "
    "up to 9.1 (docs/label-noise.md)."
)


def label_confusion(
    given: np.ndarray | Sequence[int], predicted: np.ndarray | Sequence[int], num_classes: int
) -> np.ndarray:
    """Counts ``C[g, p]``: training examples with given label ``g`` predicted ``p``.

    An example without a prediction this epoch (``-1``: not seen) is left out.

    Raises:
        ValueError: the two are not one entry per example, or a label is out of range.
    """
    y, p = np.asarray(given).ravel(), np.asarray(predicted).ravel()
    if y.shape != p.shape:
        raise ValueError(
            f"given and predicted must have one entry per example each, got {y.size} and {p.size}."
        )
    seen = p >= 0
    y, p = y[seen].astype(np.int64), p[seen].astype(np.int64)
    if y.size and (y.min() < 0 or y.max() >= num_classes or p.max() >= num_classes):
        raise ValueError(f"labels and predictions must be in [0, {num_classes}).")
    return np.bincount(y * num_classes + p, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )


def loss_mixture(losses: np.ndarray | Sequence[float], seed: int = 0) -> tuple[float, float]:
    """A two-component Gaussian mixture of per-example losses: (the weight of the high-loss
    component, the separation ``(mu_high - mu_low) / sqrt(var_high + var_low)``).

    ``(nan, nan)`` with fewer than 10 finite losses or when they are all equal. Deterministic
    (a fixed seed); 1,000 examples take about 10 ms.
    """
    x = np.asarray(losses, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    if x.size < 10 or float(np.ptp(x)) == 0.0:
        return math.nan, math.nan
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gmm = GaussianMixture(2, random_state=seed, reg_covar=1e-4, max_iter=100, tol=1e-3)
        gmm.fit(x.reshape(-1, 1))
    means = gmm.means_.ravel()
    variances = gmm.covariances_.ravel()
    high, low = int(np.argmax(means)), int(np.argmin(means))
    if high == low:
        return math.nan, math.nan
    separation = (means[high] - means[low]) / math.sqrt(variances[high] + variances[low])
    return float(gmm.weights_[high]), float(separation)


def noise_record(
    given: np.ndarray,
    predicted: np.ndarray,
    losses: np.ndarray,
    confidence: np.ndarray,
    num_classes: int,
) -> dict[str, Any]:
    """One epoch's label-noise fields, from the training pass (what the trainer records).

    Keys: ``train_acc`` (the share of seen examples predicted as their given label),
    ``noise_mixture`` and ``mixture_separation`` (:func:`loss_mixture`), ``label_confusion``
    (``K x K`` nested lists) and ``confident_confusion`` (the same over each predicted class's
    ``CONFIDENT_SHARE`` most confident examples).
    """
    y = np.asarray(given).ravel()
    p = np.asarray(predicted).ravel()
    seen = p >= 0
    confusion = label_confusion(y, p, num_classes)
    conf = np.asarray(confidence, dtype=np.float64).ravel()
    confident = np.zeros_like(seen)
    for c in range(num_classes):
        members = np.flatnonzero(seen & (p == c))
        if members.size:
            keep = max(1, math.ceil(CONFIDENT_SHARE * members.size))
            confident[members[np.argsort(-conf[members], kind="stable")[:keep]]] = True
    rate, separation = loss_mixture(np.asarray(losses)[seen])
    n_seen = int(seen.sum())
    return {
        "train_acc": float(np.trace(confusion) / n_seen) if n_seen else math.nan,
        "noise_mixture": rate,
        "mixture_separation": separation,
        "label_confusion": confusion.tolist(),
        "confident_confusion": label_confusion(y[confident], p[confident], num_classes).tolist(),
    }


@dataclass(frozen=True)
class LabelNoise:
    """A trial's label-noise diagnosis (:func:`estimate_label_noise`).

    Attributes:
        rate: The estimated noise rate: the share of wrong given labels among the confident
            half of each predicted class's examples at ``epoch``.
        kind: ``"none"``, ``"symmetric"`` or ``"class-dependent"``.
        pairs: ``(true class, given label, share)``: the largest cells of the estimated
            transition, largest first.
        epoch: The estimate epoch (the best separation of the loss mixture so far).
        mixture_rate: The loss mixture's high-component weight at ``epoch``.
        disagreement: The share of all training examples predicted as another class than
            their given label there.
        concentration: The mass-weighted share of each class's wrong labels in its top two.
        p_value: The chi-square test of uniform wrong labels per class.
        confusion: The confident half's given-label x predicted-class counts at ``epoch``
            (what the kind is read from; the report draws it).
        provisional: The estimate epoch is the last one read: the loss components were still
            separating, so the network may not have learned the clean labels yet (train longer
            before trusting the kind).
    """

    rate: float
    kind: str
    pairs: list[tuple[int, int, float]] = field(default_factory=list)
    epoch: int | None = None
    mixture_rate: float = math.nan
    disagreement: float = math.nan
    concentration: float = math.nan
    p_value: float = math.nan
    provisional: bool = False
    confusion: list[list[int]] = field(default_factory=list)

    @property
    def needs_split(self) -> bool:
        """True where no validation-free rule is proven (class-dependent noise, not
        provisional)."""
        return self.kind == "class-dependent" and not self.provisional

    def describe(self) -> str:
        """One line: ``~20 % symmetric (estimated at epoch 6)``, with the pairs if any."""
        if not math.isfinite(self.rate):
            return "unknown (no training predictions recorded)"
        text = f"~{100 * self.rate:.0f} % {self.kind} (estimated at epoch {self.epoch})"
        if self.kind == "class-dependent" and self.pairs:
            shown = ", ".join(f"{t}->{g} {100 * s:.0f} %" for t, g, s in self.pairs)
            text += f"; {shown}"
        if self.provisional:
            text += "; provisional: estimated at the last epoch, train longer to trust the kind"
        return text

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values (JSON, ``torch.load(weights_only=True)``)."""
        out = {k: float(v) if isinstance(v, np.floating) else v for k, v in asdict(self).items()}
        out["pairs"] = [[int(t), int(g), float(share)] for t, g, share in self.pairs]
        out["needs_split"] = self.needs_split
        return out


UNKNOWN = LabelNoise(rate=math.nan, kind="none")


def _concentration(confusion: np.ndarray) -> tuple[float, float]:
    """(The mass-weighted top-two share of each predicted class's wrong labels, the chi-square
    p-value of uniform wrong labels per predicted class)."""
    from scipy.stats import chi2

    k = confusion.shape[0]
    wrong = confusion.astype(np.float64).copy()
    np.fill_diagonal(wrong, 0.0)
    per_class = wrong.sum(axis=0)  # column p: examples predicted p with another label
    total = float(per_class.sum())
    if total <= 0 or k < 3:
        return math.nan, math.nan
    shares, stat, dof = 0.0, 0.0, 0
    for p in range(k):
        column = np.delete(wrong[:, p], p)
        if per_class[p] <= 0:
            continue
        top2 = np.sort(column)[-2:].sum()
        shares += top2  # weighted by the class's wrong mass: sum of top-two counts
        expected = per_class[p] / (k - 1)
        stat += float(((column - expected) ** 2).sum() / expected)
        dof += k - 2
    return float(shares / total), float(chi2.sf(stat, dof)) if dof else math.nan


def _pairs(confusion: np.ndarray) -> list[tuple[int, int, float]]:
    k = confusion.shape[0]
    column = confusion.sum(axis=0).astype(np.float64)
    cells = []
    for g in range(k):
        for p in range(k):
            if g != p and column[p] > 0:
                share = confusion[g, p] / column[p]  # of the examples predicted p, labelled g
                if share >= MIN_PAIR_SHARE:
                    cells.append((p, g, round(float(share), 3)))
    cells.sort(key=lambda c: (-c[2], c[0], c[1]))
    return cells[:MAX_PAIRS]


def estimate_label_noise(
    history: Sequence[Mapping[str, Any]], *, upto: int | None = None
) -> LabelNoise:
    """The trial's label-noise diagnosis from its records up to epoch ``upto`` (all: ``None``).

    Causal: what it says at epoch ``e`` uses epochs ``<= e`` only, so a rule may act on it.
    :data:`UNKNOWN` (rate ``nan``) when no record holds a confusion.
    """
    records = [
        r
        for r in history
        if r.get("label_confusion") is not None and (upto is None or r["epoch"] <= upto)
    ]
    if not records:
        return UNKNOWN
    candidates = [r for r in records if r["epoch"] >= 2] or records

    def separation(r: Mapping[str, Any]) -> float:
        value, weight = r.get("mixture_separation"), r.get("noise_mixture")
        if value is None or weight is None or not (math.isfinite(value) and math.isfinite(weight)):
            return -math.inf
        # a component of almost no weight (a few outliers once everything is fitted, or a
        # diverged epoch) separates from the rest without saying anything about the labels
        # (a high-loss component of more than half the examples is the unlearned majority of
        # an early epoch, not noise: labels that are mostly wrong cannot be learned at all)
        return value if MIN_WEIGHT <= weight <= MAX_WEIGHT else -math.inf

    best = max(candidates, key=lambda r: (separation(r), r["epoch"]))
    confusion = np.asarray(best["label_confusion"], dtype=np.int64)
    total = int(confusion.sum())
    disagreement = 1.0 - float(np.trace(confusion)) / total if total else math.nan
    # the confident half of each predicted class: examples the network has learned, whose
    # predicted class is their true one (Patrini et al.'s anchors), so their wrong given labels
    # are label noise and not the network's own confusions (an unfinished network's errors
    # concentrate on look-alike classes too)
    confident = np.asarray(best.get("confident_confusion") or confusion, dtype=np.int64)
    n_confident = int(confident.sum())
    rate = 1.0 - float(np.trace(confident)) / n_confident if n_confident else math.nan
    concentration, p_value = _concentration(confident)
    if not math.isfinite(rate) or rate < NONE_BELOW:
        kind = "none"
    elif concentration >= CONCENTRATED_ABOVE and p_value < P_VALUE:
        kind = "class-dependent"
    else:
        kind = "symmetric"
    mixture = best.get("noise_mixture")
    return LabelNoise(
        rate=rate,
        kind=kind,
        pairs=_pairs(confident) if kind != "none" else [],
        epoch=int(best["epoch"]),
        mixture_rate=float(mixture) if mixture is not None else math.nan,
        disagreement=disagreement,
        concentration=concentration,
        p_value=p_value,
        provisional=best is records[-1] and separation(best) > -math.inf,
        confusion=confident.astype(int).tolist(),
    )


# --------------------------------------------------------------------------------------------
# rules that act on the noise (candidates of benchmarks/PROTOCOL.md; pure, causal)

#: The noise-rate criterion's estimators: the product's rate (confident half) or the mixture's.
ESTIMATORS = ("transition", "mixture")


def noise_rate_epoch(
    history: Sequence[Mapping[str, Any]], *, estimator: str = "transition", margin: float = 0.0
) -> tuple[int, bool]:
    """The noise-rate criterion (Song et al. 2019, "Prestopping"): the first epoch ``e >= 2``
    whose training accuracy against the given labels reaches ``1 - r(e) - margin``, ``r(e)`` the
    noise estimate from epochs ``<= e``; ``(e, True)`` (stop there, keep it), or ``(the last
    epoch, False)`` when it is never reached.

    Raises:
        ValueError: an unknown estimator, or no epoch.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, but got {estimator=}.")
    if not history:
        raise ValueError("noise_rate_epoch needs at least one epoch.")
    for record in history:
        epoch, acc = int(record["epoch"]), record.get("train_acc")
        if epoch < 2 or acc is None or not math.isfinite(acc):
            continue
        noise = estimate_label_noise(history, upto=epoch)
        rate = noise.rate if estimator == "transition" else noise.mixture_rate
        if math.isfinite(rate) and acc >= 1.0 - rate - margin:
            return epoch, True
    return int(history[-1]["epoch"]), False


def per_class_epoch(
    history: Sequence[Mapping[str, Any]], *, aggregate: str = "min", window: int = 3
) -> int:
    """Per-class prediction changes: each given label's changes (``changes_by_class``),
    smoothed by a trailing mean of ``window``, reach their lowest at an epoch; the kept epoch is
    the earliest (``"min"``) or the lower median (``"median"``) of those epochs over classes.
    Without per-class readings: the last epoch."""
    from gainsearch.core.signals import moving_average

    if aggregate not in ("min", "median"):
        raise ValueError(f"aggregate must be 'min' or 'median', but got {aggregate=}.")
    rows = [r for r in history if r.get("changes_by_class") is not None]
    if not rows:
        return int(history[-1]["epoch"])
    epochs = [int(r["epoch"]) for r in rows]
    counts = np.asarray([r["changes_by_class"] for r in rows], dtype=np.float64)
    lows = []
    for k in range(counts.shape[1]):
        smooth = moving_average(list(counts[:, k]), window)
        if np.any(np.isfinite(smooth)):
            lows.append(epochs[int(np.nanargmin(smooth))])
    if not lows:
        return int(history[-1]["epoch"])
    lows.sort()
    return lows[0] if aggregate == "min" else lows[(len(lows) - 1) // 2]


def corrected_accuracy(accuracy: float, rate: float, num_classes: int) -> float:
    """The accuracy against the true labels implied by ``accuracy`` against labels damaged
    symmetrically at ``rate``: ``(a - r/(K-1)) / (1 - r - r/(K-1))`` (``a`` unchanged when the
    rate is unknown or the inversion undefined)."""
    k = num_classes
    if not math.isfinite(rate) or k < 2:
        return accuracy
    off = rate / (k - 1)
    denominator = 1.0 - rate - off
    return (accuracy - off) / denominator if denominator > 0 else accuracy


#: ``select_by: auto``'s prediction-changes branch: trailing mean and patience (the measured form).
AUTO_WINDOW, AUTO_PATIENCE = 3, 3
#: What ``auto`` does where the labels look clean: keep the last epoch (``"last"``) or stop by
#: prediction changes too (``"prediction_changes"``).
AUTO_NONE_RULES = ("last", "prediction_changes")


@dataclass(frozen=True)
class AutoVerdict:
    """``select_by: auto`` after the latest epoch (:func:`auto_verdict`).

    Attributes:
        epoch: The kept epoch (if training ended now, or where it stops).
        stop: The governing rule says stop now.
        reason: Why, in words (empty when it does not stop).
        kind: The label-noise kind estimated so far, which picked the governing rule.
        keep: Every epoch whose weights a trainer must still hold: the governing rule may
            return to any of them later (at most three).
    """

    epoch: int
    stop: bool
    reason: str
    kind: str
    keep: frozenset[int]


def _pc_verdicts(history: Sequence[Mapping[str, Any]]) -> tuple[int, int | None]:
    """(The current prediction-changes selection, the kept epoch of its first stop or None)."""
    from gainsearch.core.selection import select_epoch

    values: dict[int, float] = {}
    selected = int(history[-1]["epoch"])
    for record in history:
        values[int(record["epoch"])] = float(record.get("prediction_changes", math.nan))
        sel = select_epoch(
            values, select_by="prediction_changes", window=AUTO_WINDOW, patience=AUTO_PATIENCE
        )
        if sel.stop:
            return sel.epoch, sel.epoch
        selected = sel.epoch
    return selected, None


def auto_verdict(history: Sequence[Mapping[str, Any]], *, none_rule: str = "last") -> AutoVerdict:
    """``select_by: auto``: the label-noise kind estimated so far picks the rule that governs.

    * class-dependent: the noise-rate criterion (:func:`noise_rate_epoch`, the confident-half
      rate, no margin): it stops where the training accuracy reaches ``1 - rate``;
    * symmetric: prediction changes, trailing mean of ``AUTO_WINDOW``, patience
      ``AUTO_PATIENCE`` (a stop already due under another kind counts at once);
    * none: the last epoch (``none_rule="last"``) or prediction changes as for symmetric.

    From epoch 2 on; causal (the records so far only). The protocol's candidates ``auto-A``
    (``"last"``) and ``auto-B`` (``"prediction_changes"``).

    Raises:
        ValueError: an unknown ``none_rule`` or no epoch.
    """
    if none_rule not in AUTO_NONE_RULES:
        raise ValueError(f"none_rule must be one of {AUTO_NONE_RULES}, but got {none_rule=}.")
    if not history:
        raise ValueError("auto_verdict needs at least one epoch.")
    last = int(history[-1]["epoch"])
    kind = estimate_label_noise(history).kind
    pc_selected, pc_stop = _pc_verdicts(history)
    nr_epoch, nr_met = noise_rate_epoch(history, estimator="transition", margin=0.0)
    keep = frozenset({last, pc_selected} | ({nr_epoch} if nr_met else set()))
    by_changes = kind == "symmetric" or (kind == "none" and none_rule == "prediction_changes")
    if len(history) >= 2:
        if kind == "class-dependent" and nr_met:
            reason = (
                f"class-dependent label noise: the training accuracy reached 1 - the estimated "
                f"noise rate at epoch {nr_epoch} (noise-rate criterion)"
            )
            return AutoVerdict(nr_epoch, True, reason, kind, keep)
        if by_changes and pc_stop is not None:
            reason = (
                f"{kind} label noise: prediction_changes (mean of {AUTO_WINDOW}) has not "
                f"improved since epoch {pc_stop} (patience {AUTO_PATIENCE})"
            )
            return AutoVerdict(pc_stop, True, reason, kind, keep)
    if kind == "class-dependent":
        epoch = nr_epoch if nr_met else last
    elif by_changes:
        epoch = pc_selected
    else:
        epoch = last
    return AutoVerdict(epoch, False, "", kind, keep)

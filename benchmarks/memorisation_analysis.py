"""Tables of the memorisation suite (``benchmarks/memorisation.py``), from its cache only.

Every stopping rule is replayed on the recorded per-epoch signals of the merged runs, exactly as
the trainer applies it (:func:`gainsearch.core.selection.select_epoch` on each prefix; with
patience the run stops where the rule says so), so one training run per grid point and seed
serves every candidate. A candidate is (signal, smoothing window, patience, how the
configuration is chosen): by the **trial score** at the kept epoch (the training loss, what the
search ranks by) or by the **signal's own** smoothed value there. For each seed it picks one
(configuration, epoch); its clean test accuracy is compared with:

* the **validation workflow** (choose configuration and epoch by the lowest validation loss of
  the 80/20 split runs, then retrain on all data for that many epochs): *regret* = its test
  accuracy minus the candidate's, in points (positive: the candidate is worse);
* **today** (the last epoch, configuration by the final training loss) and the **oracle** (the
  best test accuracy of any configuration and epoch), for scale.

Constants are chosen on the calibration set-ups and scored on the report set-ups (and
leave-one-set-up-out); the published numbers are the held-out ones. Nothing that chooses reads
a test metric.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import memorisation
import numpy as np
from scipy.stats import rankdata, spearmanr

from gainsearch.core.selection import Selection
from gainsearch.core.signals import moving_average

SIGNALS = ("prediction_changes", "gradient_disparity", "gain_variability", "gain_trend")
WINDOWS = (1, 3)
PATIENCES: tuple[int | None, ...] = (None, 3, 5, 10)
CHOOSERS = ("score", "signal", "rank")
#: Two signals together: ``first`` stops when either rule runs out of patience and keeps the
#: earlier of the two kept epochs; ``both`` waits for both and keeps the later one.
COMBINES = ("first", "both")
#: The targets (issue 20): regret within this many points of the validation workflow, on
#: average and on the worst set-up; at most this share of the epochs; and on the controls never
#: more than 0.3 points worse than today's rule.
REGRET_TARGET = 2.0
EPOCHS_TARGET = 0.7
CONTROL_FLOOR = -0.3


@dataclass(frozen=True)
class Candidate:
    signal: str  # "last", a signal, or two joined by "+"
    window: int = 1
    patience: int | None = None
    chooser: str = "score"  # the configuration: by "score", "signal" or "rank" (both ranks)
    combine: str = ""  # with two signals: one of COMBINES

    @property
    def signals(self) -> tuple[str, ...]:
        return tuple(self.signal.split("+"))

    @property
    def label(self) -> str:
        if self.signal == "last":
            return "last epoch, final training loss (today)"
        p = "none" if self.patience is None else str(self.patience)
        name = " and ".join(self.signals) + f" ({self.combine})" if self.combine else self.signal
        return f"{name}, window {self.window}, patience {p}, by {self.chooser}"


TODAY = Candidate("last")
SINGLE = [
    Candidate(s, w, p, c) for s, w, p, c in itertools.product(SIGNALS, WINDOWS, PATIENCES, CHOOSERS)
]
#: Pairs rank their configurations by the trial score (a pair has no one value to rank by).
PAIRS = [
    Candidate(f"{a}+{b}", w, p, "score", k)
    for (a, b), w, p, k in itertools.product(
        itertools.combinations(SIGNALS, 2), WINDOWS, PATIENCES, COMBINES
    )
]
CANDIDATES = [TODAY, *SINGLE, *PAIRS]


def load(out: Path, names: Sequence[str]) -> dict[str, dict[str, Any]]:
    found = {}
    for name in names:
        path = out / f"{name}.json"
        if path.exists():
            found[name] = json.loads(path.read_text())
    return found


#: replays by (the history's id, candidate); each entry holds its history, so no id is reused
_REPLAYS: dict[tuple[int, Candidate], tuple[Sequence[Any], tuple[int, int, float]]] = {}


def replay(history: Sequence[dict[str, Any]], cand: Candidate) -> tuple[int, int, float]:
    """(kept epoch, epochs trained, the smoothed signal at the kept epoch) of one run."""
    key = (id(history), cand)
    if key not in _REPLAYS:
        _REPLAYS[key] = (history, _replay(history, cand))
    return _REPLAYS[key][1]


def _replay(history: Sequence[dict[str, Any]], cand: Candidate) -> tuple[int, int, float]:
    if cand.signal == "last":
        last = int(history[-1]["epoch"])
        return last, last, math.nan
    verdicts = [prefix_selections(history, s, cand.window, cand.patience) for s in cand.signals]
    kept, value, epoch = 0, math.nan, 0
    for i, row in enumerate(history):
        epoch = int(row["epoch"])
        sels = [v[i] for v in verdicts]
        if cand.combine == "first":
            kept, stop = min(x.epoch for x in sels), any(x.stop for x in sels)
        elif cand.combine == "both":
            kept, stop = max(x.epoch for x in sels), all(x.stop for x in sels)
        else:
            kept, stop, value = sels[0].epoch, sels[0].stop, sels[0].value
        if stop:
            break
    return kept, epoch, value if not cand.combine else math.nan


def prefix_selections(
    history: Sequence[dict[str, Any]], signal: str, window: int, patience: int | None
) -> list[Selection]:
    """:func:`~gainsearch.core.selection.select_epoch`'s verdict after each epoch (on each
    prefix of the history, as the trainer asks it), in one pass: the trailing mean is causal, so
    a prefix's smoothed values are the first ones of the whole history's, and the prefix's
    selected epoch is the first lowest of them (``nan`` skipped; the latest epoch while none is
    finite). ``tests/test_caught_bugs.py`` checks it against ``select_epoch`` itself and
    against epochs worked out by hand."""
    numbers = [int(r["epoch"]) for r in history]
    raw = [math.nan if r.get(signal) is None else float(r[signal]) for r in history]
    smooth = moving_average(raw, window)
    out: list[Selection] = []
    best, finite = -1, False
    for k, value in enumerate(smooth):
        if not math.isnan(value) and (best < 0 or value < smooth[best]):
            best = k
        finite = finite or math.isfinite(value)
        if not finite:
            out.append(Selection(numbers[k], math.nan, False))
            continue
        stop = patience is not None and numbers[k] - numbers[best] >= patience
        out.append(Selection(numbers[best], float(smooth[best]), stop))
    return out


def _score(history: Sequence[dict[str, Any]], epoch: int) -> float:
    loss = float(history[epoch - 1]["train_loss"])
    return -math.log10(max(loss, 1e-12)) if math.isfinite(loss) else -math.inf


def choose(
    histories: Sequence[Sequence[dict[str, Any]]], cand: Candidate
) -> tuple[int, list[tuple[int, int]], list[float]]:
    """The candidate's configuration choice among one seed's runs: (index of the chosen run,
    (kept epoch, epochs trained) of every run, every run's ranking key, higher chosen).

    By ``score``: the trial score at the kept epoch; by ``signal``: the signal's smoothed value
    there (lower is better); by ``rank``: the mean of the two ranks (ties: by the score)."""
    outs = [replay(h, cand) for h in histories]
    scores = [_score(h, kept) for h, (kept, _, _) in zip(histories, outs, strict=True)]
    values = [-v if math.isfinite(v) else -math.inf for _, _, v in outs]
    if cand.chooser == "signal" and cand.signal != "last" and not cand.combine:
        keys = values
    elif cand.chooser == "rank" and cand.signal != "last" and not cand.combine:
        keys = list((rankdata(scores) + rankdata(values)) / 2)
    else:
        keys = scores
    best = max(range(len(keys)), key=lambda i: (keys[i], scores[i]))
    return best, [(k, t) for k, t, _ in outs], keys


def seed_outcome(
    runs: Sequence[dict[str, Any]], seed: int, cand: Candidate, *, constant: bool
) -> dict | None:
    """The candidate's choice on one seed, and the references."""
    merged = {
        json.dumps(r["point"], sort_keys=True): r
        for r in runs
        if r["protocol"] == "merged" and r["seed"] == seed
    }
    split = [r for r in runs if r["protocol"] == "split" and r["seed"] == seed]
    if not merged or len(split) < len(merged):
        return None
    keys = list(merged)
    histories = [merged[k]["history"] for k in keys]
    best, kept_trained, ranks = choose(histories, cand)
    accs = [float(h[k - 1]["test_acc"]) for h, (k, _) in zip(histories, kept_trained, strict=True)]
    ours = accs[best]
    # the validation workflow
    try:
        v_point, v_epoch = memorisation.validation_choice(split, seed)
    except ValueError:
        return None
    v_key = json.dumps(v_point, sort_keys=True)
    retrain = [
        r
        for r in runs
        if r["protocol"] == "retrain"
        and r["seed"] == seed
        and json.dumps(r["point"], sort_keys=True) == v_key
        and r.get("epochs") == v_epoch
    ]
    if retrain:
        validation = float(retrain[0]["history"][-1]["test_acc"])
    elif constant:  # the merged run's first epochs are the retrain, bit for bit
        validation = float(merged[v_key]["history"][v_epoch - 1]["test_acc"])
    else:
        return None  # a schedule's retrain is not trained yet
    oracle = max(float(row["test_acc"]) for r in merged.values() for row in r["history"])
    budget = sum(len(r["history"]) for r in merged.values())
    trained = sum(t for _, t in kept_trained)
    rho = (
        spearmanr(ranks, accs).statistic if len(set(ranks)) > 1 and len(set(accs)) > 1 else math.nan
    )
    # the same workflow choosing by validation accuracy (highest; ties: the earlier epoch);
    # its retrain exists only with a constant rate (the merged run's first epochs)
    by_acc = max(
        (
            (row["val_acc"], -row["epoch"], json.dumps(r["point"], sort_keys=True))
            for r in split
            for row in r["history"]
            if row.get("val_acc") is not None
        ),
        default=None,
    )
    validation_acc = math.nan
    if by_acc is not None and constant:
        validation_acc = float(merged[by_acc[2]]["history"][-by_acc[1] - 1]["test_acc"])
    return {
        "ours": 100 * ours,
        "validation": 100 * validation,
        "validation_acc": 100 * validation_acc,
        "oracle": 100 * oracle,
        "regret": 100 * (validation - ours),
        "epochs_fraction": trained / budget,
        "spearman": float(rho),
    }


def setup_outcome(body: dict[str, Any], cand: Candidate) -> dict[str, float] | None:
    runs = body["runs"]
    constant = body["setup"]["train"].get("schedule", "constant") == "constant"
    seeds = sorted({r["seed"] for r in runs})
    outs = [o for s in seeds if (o := seed_outcome(runs, s, cand, constant=constant)) is not None]
    if not outs:
        return None
    with warnings.catch_warnings():  # an all-nan column (no retrain by accuracy) stays nan
        warnings.simplefilter("ignore", RuntimeWarning)
        means = {k: float(np.nanmean([o[k] for o in outs])) for k in outs[0]}
    return means | {"seeds": len(outs)}


def table(
    found: dict[str, dict[str, Any]], names: Sequence[str], cands: Sequence[Candidate]
) -> dict:
    return {
        (c, n): o
        for c in cands
        for n in names
        if n in found and (o := setup_outcome(found[n], c)) is not None
    }


def _mean_regret(results: dict, cand: Candidate, names: Sequence[str]) -> float:
    values = [results[(cand, n)]["regret"] for n in names if (cand, n) in results]
    return float(np.mean(values)) if values else math.inf


SUITE = Path(__file__).resolve().parent / "results" / "suite"


def control_runs(suite: Path = SUITE, retrained: Path | None = None) -> dict[str, dict[str, Any]]:
    """Today's 12 set-ups, ``{name: {"role", "runs"}}`` (the role is ``benchmarks/suite.py``'s):
    their merged runs as ``memorisation.py --controls`` trained them again (with the prediction
    changes) where it has, else the suite's cache, with the gain's signals computed from the
    recorded gain curves."""
    from gainsearch.core.signals import gain_trend, gain_variability

    found = {}
    for path in sorted(suite.glob("s[0-9]*.json")):
        body = json.loads(path.read_text())
        role = body["setup"]["role"]
        again = (retrained or memorisation.DEFAULT_OUT / "controls") / path.name
        if again.exists():
            runs = list(json.loads(again.read_text())["runs"])
            if len(runs) == len(body["runs"]) // 2:  # all merged runs
                found[path.stem] = {"role": role, "runs": runs}
                continue
        runs = [r for r in body["runs"] if r["protocol"] == "merged"]
        for r in runs:
            gains = [row["gain"] if row["gain"] is not None else math.nan for row in r["history"]]
            for row, v, t in zip(
                r["history"], gain_variability(gains), gain_trend(gains), strict=True
            ):
                row["gain_variability"], row["gain_trend"] = v, t
        found[path.stem] = {"role": role, "runs": runs}
    return found


def control_delta(runs: Sequence[dict[str, Any]], cand: Candidate) -> float | None:
    """Test accuracy (points, mean over seeds) of ``cand``'s choice minus today's (last epoch,
    final training loss) on one control set-up; ``None`` if a signal of it is not recorded."""
    if cand.signal != "last" and any(s not in r["history"][0] for r in runs for s in cand.signals):
        return None
    deltas = []
    for seed in sorted({r["seed"] for r in runs}):
        histories = [r["history"] for r in runs if r["seed"] == seed and r["history"]]
        accs = []
        for c in (TODAY, cand):
            best, kept_trained, _ = choose(histories, c)
            acc = histories[best][kept_trained[best][0] - 1]["test_acc"]
            accs.append(0.0 if acc is None or acc != acc else float(acc))
        deltas.append(100 * (accs[1] - accs[0]))
    return float(np.mean(deltas))


def pick(
    results: dict,
    deltas: dict,
    memo: Sequence[str],
    controls: Sequence[str],
    cands: Sequence[Candidate] = CANDIDATES,
) -> Candidate:
    """The calibration rule: the lowest mean regret on the ``memo`` set-ups among the candidates
    never more than 0.3 points worse than today's on the ``controls`` (a candidate whose signal
    the controls do not record cannot show that: it is not eligible). Today's rule always is."""
    pool = [
        c
        for c in cands
        if all((c, m) in results for m in memo)
        and all(
            deltas.get((c, n)) is not None and deltas[(c, n)] >= CONTROL_FLOOR for n in controls
        )
    ]
    return min(pool, key=lambda c: _mean_regret(results, c, memo))


def print_all(out: Path, names: Sequence[str]) -> None:
    found = load(out, names)
    if not found:
        print(f"no cached runs in {out}")
        return
    calib = [n for n in names if n in found and found[n]["setup"]["role"] == "calib"]
    report = [n for n in names if n in found and found[n]["setup"]["role"] == "report"]
    results = table(found, list(found), CANDIDATES)
    done = [n for n in found if (TODAY, n) in results]
    controls = control_runs()
    deltas = {
        (c, n): control_delta(body["runs"], c) for c in CANDIDATES for n, body in controls.items()
    }
    c_calib = [n for n, b in controls.items() if b["role"] == "calib"]
    c_report = [n for n, b in controls.items() if b["role"] == "report"]
    print(
        f"set-ups with results: {', '.join(done)} (calibration: {', '.join(calib)}; "
        f"report: {', '.join(report)})"
    )
    print(
        f"controls (benchmarks/suite.py's set-ups and roles): calibration {', '.join(c_calib)}; "
        f"report {', '.join(c_report)}"
    )
    print(
        f"candidates: {len(CANDIDATES)} (4 signals x window {{1, 3}} x patience {{none, 3, 5, 10}}"
        " x configuration by score, signal or rank; the 6 pairs of signals, 'first' or 'both', by "
        "score; today's rule)\n"
    )

    print("## Per set-up: test accuracy (%) of the choice, 3 seeds averaged\n")
    print(
        "| set-up | role | validation workflow (val loss) | by val accuracy | "
        "today (last epoch) | oracle |"
    )
    print("|---|---|---|---|---|---|")
    for n in done:
        o = results[(TODAY, n)]
        acc = "-" if math.isnan(o["validation_acc"]) else f"{o['validation_acc']:.1f}"
        print(
            f"| {n} {found[n]['setup']['title']} | {found[n]['setup']['role']} | "
            f"{o['validation']:.1f} | {acc} | {o['ours']:.1f} (regret {o['regret']:+.1f}) | "
            f"{o['oracle']:.1f} |"
        )
    print(
        "\n(by val accuracy: the same workflow choosing by the highest validation accuracy; "
        "retrained only with a constant rate, '-' with a schedule)"
    )

    print("\n## Chosen on the calibration set-ups, scored on the report set-ups\n")
    print(
        "the rule: the lowest mean regret on the calibration memorisation set-ups among the "
        f"candidates never below {CONTROL_FLOOR} points on the calibration controls\n"
    )
    chosen = pick(results, deltas, calib, c_calib) if calib else TODAY
    free = pick(results, {}, calib, []) if calib else TODAY  # without the control constraint
    print(
        f"chosen: {chosen.label} (calibration mean regret "
        f"{_mean_regret(results, chosen, calib):+.2f})"
    )
    print(
        f"without the control constraint: {free.label} (calibration mean regret "
        f"{_mean_regret(results, free, calib):+.2f})\n"
    )
    variants = [chosen, free]
    for c in (chosen, free):
        if c.signal != "last" and not c.combine:
            variants += [dataclasses.replace(c, chooser=k) for k in CHOOSERS]
    _print_rows(results, [TODAY, *variants], report, found)

    print("\n## Each signal's rule (no constant fitted), report set-ups\n")
    fixed = [Candidate(s, 1, p, "score") for s in SIGNALS for p in (5, 10)]
    fixed += [
        Candidate(f"prediction_changes+{b}", 1, 5, "score", k)
        for b in ("gain_variability", "gain_trend")
        for k in COMBINES
    ]
    _print_rows(results, [TODAY, *fixed], report, found)

    print("\n## Control: today's 12 set-ups\n")
    print(
        "test accuracy of the candidate's choice minus today's, points (target: never below "
        f"{CONTROL_FLOOR}); gradient disparity is not recorded on the controls\n"
    )
    print(
        "| candidate | "
        + " | ".join(f"{n} ({b['role']})" for n, b in controls.items())
        + " | worst (report) |"
    )
    print("|---|" + "---|" * (len(controls) + 1))
    for c in dict.fromkeys([*variants, *fixed]):
        cells = [deltas[(c, n)] for n in controls]
        if all(d is None for d in cells):
            continue
        held = [deltas[(c, n)] for n in c_report if deltas[(c, n)] is not None]
        print(
            f"| {c.label} | "
            + " | ".join("-" if d is None else f"{d:+.1f}" for d in cells)
            + f" | {min(held):+.1f} |"
        )

    print("\n## The floor: every candidate fitted on all the memorisation set-ups (not held out)\n")
    full = [c for c in CANDIDATES if all((c, n) in results for n in done)]
    floor = min(full, key=lambda c: max(results[(c, n)]["regret"] for n in done))
    worst_n = max(done, key=lambda n: results[(floor, n)]["regret"])
    lowest = results[(floor, worst_n)]["regret"]
    print(
        f"the lowest worst-set-up regret of any candidate: {lowest:+.2f} ({worst_n}), by "
        f"{floor.label}"
        + (
            "; no candidate meets the worst-case target even where it is scored on what chose it"
            if lowest > REGRET_TARGET
            else ""
        )
    )

    rest = [n for n in done if n != worst_n]
    fine = [c for c in full if all(results[(c, n)]["regret"] <= REGRET_TARGET for n in rest)]
    if fine:
        best = min(fine, key=lambda c: results[(c, worst_n)]["regret"])
        print(
            f"on {worst_n}, the candidates within 2 points on every other set-up lose "
            f"{results[(best, worst_n)]['regret']:+.2f} or more ({best.label})"
        )

    searchable = [c for c in CANDIDATES if c.chooser == "score"]
    pools = [
        ("every candidate", CANDIDATES),
        ("what a search applies (configurations by the trial score)", searchable),
    ]
    verdicts = []
    for title, pool in pools:
        verdicts.append(
            _held_out(
                title, pool, results, deltas, calib, report, done, controls, c_calib, c_report
            )
        )
    chosen_ok = [c for c, ok in verdicts if ok]
    print(
        "\nverdict for the default (every regime): "
        + (
            f"every target met: the default becomes {chosen_ok[-1].label}"
            if chosen_ok
            else "no calibrated choice meets every target held out: the default stays "
            "select_by='last' (today's rule)"
        )
    )
    # the regime a user can name: labels replaced at random (symmetric) or few examples; the
    # class-dependent (pair-flip) set-ups left out of the calibration and the scoring alike
    regime = [n for n in done if found[n]["setup"].get("noise_kind") != "pairflip"]
    left = [n for n in done if n not in regime]
    chosen, ok = _held_out(
        f"what a search applies, symmetric noise and small data only ({', '.join(left)} left out)",
        searchable,
        results,
        deltas,
        [n for n in calib if n in regime],
        [n for n in report if n in regime],
        regime,
        controls,
        c_calib,
        c_report,
    )
    print(
        "\nverdict for symmetric noise and small data: "
        + (
            f"every target met held out: recommend {chosen.label}"
            if ok
            else "not every target is met held out: no recommendation"
        )
    )


def _held_out(
    title: str,
    pool: Sequence[Candidate],
    results: dict,
    deltas: dict,
    calib: Sequence[str],
    report: Sequence[str],
    done: Sequence[str],
    controls: dict[str, Any],
    c_calib: Sequence[str],
    c_report: Sequence[str],
) -> tuple[Candidate, bool]:
    """Print the leave-one-set-up-out table and the targets for one pool of candidates; return
    its calibrated choice and whether it meets every target held out."""
    chosen = pick(results, deltas, calib, c_calib, pool) if calib else TODAY
    print(f"\n## Held out, choosing among {title}\n")
    print(
        "leave one set-up out, the controls included: each set-up held out in turn, the rule "
        "above applied to all the others (memorisation set-ups for the regret, controls as the "
        "constraint)\n"
    )
    print("| held out | chosen | regret / control delta | epochs trained |")
    print("|---|---|---|---|")
    loso, loso_c = [], []
    for n in [*done, *controls]:
        memo = [m for m in done if m != n]
        ctrl = [m for m in controls if m != n]
        c = pick(results, deltas, memo, ctrl, pool)
        if n in controls:
            d = deltas[(c, n)]
            if d is None:
                continue
            loso_c.append(d)
            print(f"| {n} (control) | {c.label} | {d:+.2f} | - |")
            continue
        o = results.get((c, n))
        if o is None:
            continue
        loso.append(o["regret"])
        print(f"| {n} | {c.label} | {o['regret']:+.2f} | {100 * o['epochs_fraction']:.0f} % |")
    target = REGRET_TARGET
    rows = [results[(chosen, n)] for n in report if (chosen, n) in results]
    held_c = [deltas[(chosen, n)] for n in c_report]
    checks = []
    if rows:
        r = [x["regret"] for x in rows]
        epochs = float(np.mean([x["epochs_fraction"] for x in rows]))
        checks += [
            (
                "report half: mean regret within 2 points",
                f"{np.mean(r):+.2f}",
                np.mean(r) <= target,
            ),
            ("report half: worst regret within 2 points", f"{max(r):+.2f}", max(r) <= target),
            (
                "report half: at least 30 % fewer epochs",
                f"{100 * epochs:.0f} %",
                epochs <= EPOCHS_TARGET,
            ),
        ]
    if held_c and all(d is not None for d in held_c):
        worst = min(held_c)
        checks.append(
            (
                f"report controls: never below {CONTROL_FLOOR}",
                f"{worst:+.2f}",
                worst >= CONTROL_FLOOR,
            )
        )
    if loso:
        checks += [
            (
                "leave-one-out: mean regret within 2 points",
                f"{np.mean(loso):+.2f}",
                np.mean(loso) <= target,
            ),
            (
                "leave-one-out: worst regret within 2 points",
                f"{max(loso):+.2f}",
                max(loso) <= target,
            ),
        ]
    if loso_c:
        checks.append(
            (
                f"leave-one-out controls: never below {CONTROL_FLOOR}",
                f"{min(loso_c):+.2f}",
                min(loso_c) >= CONTROL_FLOOR,
            )
        )
    print(f"\nthe calibrated choice: {chosen.label}\n")
    print("| target (held-out numbers only) | measured | met |")
    print("|---|---|---|")
    for what, value, ok in checks:
        print(f"| {what} | {value} | {'yes' if ok else 'no'} |")
    return chosen, bool(checks) and all(ok for _, _, ok in checks) and chosen != TODAY


def _print_rows(
    results: dict, cands: Sequence[Candidate], names: Sequence[str], found: dict
) -> None:
    if not names:
        print("(no set-up of this role has results yet)")
        return
    cands = list(dict.fromkeys(cands))  # once each
    print(
        "| candidate | "
        + " | ".join(names)
        + " | mean regret | worst | epochs trained | Spearman |"
    )
    print("|---|" + "---|" * (len(names) + 4))
    for c in cands:
        cells = [results.get((c, n)) for n in names]
        if any(x is None for x in cells):
            continue
        regrets = [x["regret"] for x in cells]
        epochs = np.mean([x["epochs_fraction"] for x in cells])
        rho = np.nanmean([x["spearman"] for x in cells])
        print(
            f"| {c.label} | "
            + " | ".join(f"{r:+.1f}" for r in regrets)
            + f" | {np.mean(regrets):+.2f} | {max(regrets):+.2f} | {100 * epochs:.0f} %"
            + f" | {rho:.2f} |"
        )

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
from scipy.stats import spearmanr

from gainsearch.core.selection import select_epoch

SIGNALS = ("prediction_changes", "gradient_disparity", "gain_variability", "gain_trend")
WINDOWS = (1, 3)
PATIENCES: tuple[int | None, ...] = (None, 3, 5, 10)
CHOOSERS = ("score", "signal")


@dataclass(frozen=True)
class Candidate:
    signal: str  # or "last"
    window: int = 1
    patience: int | None = None
    chooser: str = "score"

    @property
    def label(self) -> str:
        if self.signal == "last":
            return "last epoch, final training loss (today)"
        p = "none" if self.patience is None else str(self.patience)
        return f"{self.signal}, window {self.window}, patience {p}, by {self.chooser}"


TODAY = Candidate("last")
CANDIDATES = [TODAY] + [
    Candidate(s, w, p, c) for s, w, p, c in itertools.product(SIGNALS, WINDOWS, PATIENCES, CHOOSERS)
]


def load(out: Path, names: Sequence[str]) -> dict[str, dict[str, Any]]:
    found = {}
    for name in names:
        path = out / f"{name}.json"
        if path.exists():
            found[name] = json.loads(path.read_text())
    return found


def replay(history: Sequence[dict[str, Any]], cand: Candidate) -> tuple[int, int, float]:
    """(kept epoch, epochs trained, the smoothed signal at the kept epoch) of one run."""
    if cand.signal == "last":
        last = int(history[-1]["epoch"])
        return last, last, math.nan
    values: dict[int, float] = {}
    sel = None
    for row in history:
        v = row.get(cand.signal)
        values[int(row["epoch"])] = math.nan if v is None else float(v)
        sel = select_epoch(
            values, select_by=cand.signal, window=cand.window, patience=cand.patience
        )
        if sel.stop:
            break
    assert sel is not None
    return sel.epoch, max(values), sel.value


def _rank(history: Sequence[dict[str, Any]], cand: Candidate, kept: int, value: float) -> float:
    """How a candidate ranks a configuration (higher is chosen): by the signal's smoothed value
    at the kept epoch (lower is better), or by the trial score there."""
    if cand.chooser == "signal" and cand.signal != "last":
        return -value if math.isfinite(value) else -math.inf
    return _score(history, kept)


def _score(history: Sequence[dict[str, Any]], epoch: int) -> float:
    loss = float(history[epoch - 1]["train_loss"])
    return -math.log10(max(loss, 1e-12)) if math.isfinite(loss) else -math.inf


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
    picks = []
    for key, run in merged.items():
        h = run["history"]
        kept, trained, value = replay(h, cand)
        rank = _rank(h, cand, kept, value)
        picks.append((rank, key, kept, trained, float(h[kept - 1]["test_acc"])))
    best = max(picks, key=lambda p: p[0])
    ours = best[4]
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
    trained = sum(p[3] for p in picks)
    ranks = [p[0] for p in picks]
    accs = [p[4] for p in picks]
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


def control_runs(
    suite: Path = SUITE, retrained: Path | None = None
) -> dict[str, list[dict[str, Any]]]:
    """Today's 12 set-ups: their merged runs as ``memorisation.py --controls`` trained them
    again (with the prediction changes) where it has, else ``benchmarks/suite.py``'s cache, with
    the gain's signals computed from the recorded gain curves."""
    from gainsearch.core.signals import gain_trend, gain_variability

    found = {}
    for path in sorted(suite.glob("s[0-9]*.json")):
        again = (retrained or memorisation.DEFAULT_OUT / "controls") / path.name
        if again.exists():
            runs = list(json.loads(again.read_text())["runs"])
            if len(runs) == len(json.loads(path.read_text())["runs"]) // 2:  # all merged runs
                found[path.stem] = runs
                continue
        runs = [r for r in json.loads(path.read_text())["runs"] if r["protocol"] == "merged"]
        for r in runs:
            gains = [row["gain"] if row["gain"] is not None else math.nan for row in r["history"]]
            for row, v, t in zip(
                r["history"], gain_variability(gains), gain_trend(gains), strict=True
            ):
                row["gain_variability"], row["gain_trend"] = v, t
        found[path.stem] = runs
    return found


def control_delta(runs: Sequence[dict[str, Any]], cand: Candidate) -> float | None:
    """Test accuracy (points, mean over seeds) of ``cand``'s choice minus today's (last epoch,
    final training loss) on one control set-up; ``None`` if its signal is not replayable."""
    if cand.signal != "last" and any(cand.signal not in r["history"][0] for r in runs):
        return None
    deltas = []
    for seed in sorted({r["seed"] for r in runs}):
        mine = [r for r in runs if r["seed"] == seed and r["history"]]
        accs = []
        for c in (TODAY, cand):
            picks = []
            for r in mine:
                kept, _, value = replay(r["history"], c)
                rank = _rank(r["history"], c, kept, value)
                acc = r["history"][kept - 1]["test_acc"]
                picks.append((rank, 0.0 if acc is None or acc != acc else float(acc)))
            accs.append(max(picks, key=lambda p: p[0])[1])
        deltas.append(100 * (accs[1] - accs[0]))
    return float(np.mean(deltas))


def print_all(out: Path, names: Sequence[str]) -> None:
    found = load(out, names)
    if not found:
        print(f"no cached runs in {out}")
        return
    calib = [n for n in names if n in found and found[n]["setup"]["role"] == "calib"]
    report = [n for n in names if n in found and found[n]["setup"]["role"] == "report"]
    results = table(found, list(found), CANDIDATES)
    done = [n for n in found if (TODAY, n) in results]
    print(
        f"set-ups with results: {', '.join(done)} (calibration: {', '.join(calib)}; "
        f"report: {', '.join(report)})\n"
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
    fitted = [c for c in CANDIDATES if all((c, n) in results for n in calib)]
    if calib and fitted:
        chosen = min(fitted, key=lambda c: _mean_regret(results, c, calib))
        print(
            f"chosen on calibration: {chosen.label} "
            f"(calibration mean regret {_mean_regret(results, chosen, calib):+.2f})\n"
        )
        # the same stopping rule as a search applies it: configurations by the trial score
        searched = dataclasses.replace(chosen, chooser="score")
        _print_rows(results, [TODAY, chosen, searched], report, found)
    print("\n## Each signal's rule (no constant fitted), report set-ups\n")
    fixed = [Candidate(s, 1, p, "score") for s in SIGNALS for p in (5, 10)]
    _print_rows(results, [TODAY, *fixed], report, found)

    print("\n## Control: today's 12 set-ups (benchmarks/suite.py's cache)\n")
    controls = control_runs()
    rows = [TODAY, *fixed]
    if calib and fitted:
        rows = [chosen, dataclasses.replace(chosen, chooser="score"), *fixed]
    print(
        "test accuracy of the candidate's choice minus today's, points (target: never below "
        "-0.3); gradient disparity is not recorded on the controls\n"
    )
    print("| candidate | " + " | ".join(controls) + " | worst |")
    print("|---|" + "---|" * (len(controls) + 1))
    for c in dict.fromkeys(rows):
        deltas = [control_delta(runs, c) for runs in controls.values()]
        known = [d for d in deltas if d is not None]
        cells = " | ".join("-" if d is None else f"{d:+.1f}" for d in deltas)
        if not known:
            print(f"| {c.label} | {cells} | not recorded |")
            continue
        missing = len(deltas) - len(known)
        worst = f"{min(known):+.1f}" + (f" ({missing} not recorded)" if missing else "")
        print(f"| {c.label} | {cells} | {worst} |")

    print("\n## Leave one set-up out (chosen on the other memorisation set-ups)\n")
    print("| held out | chosen | regret | epochs trained |")
    print("|---|---|---|---|")
    loso = []
    for n in done:
        others = [m for m in done if m != n]
        pool = [c for c in CANDIDATES if all((c, m) in results for m in others)]
        if not others or not pool:
            continue
        c = min(pool, key=lambda c: _mean_regret(results, c, others))
        o = results.get((c, n))
        if o is None:
            continue
        loso.append(o["regret"])
        print(f"| {n} | {c.label} | {o['regret']:+.2f} | {100 * o['epochs_fraction']:.0f} % |")
    if loso:
        print(
            f"\nleave-one-out regret: mean {np.mean(loso):+.2f}, worst {max(loso):+.2f} "
            "(target: within 2 points on average and on the worst set-up)"
        )


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

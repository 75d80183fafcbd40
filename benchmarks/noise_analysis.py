"""Analysis of the label-noise suite (issue 28), exactly as ``benchmarks/PROTOCOL.md`` says.

    python benchmarks/noise_analysis.py                 # every table, from the cache only
    python benchmarks/noise_analysis.py --choose        # the calibration choice, written to
                                                        # benchmarks/results/noise_choice.json

Every candidate (a stopping rule and a ranking of grid points) is replayed on the cached
per-epoch records of the merged runs, epoch by epoch as the trainer applies it; the validation
workflow is replayed on the split runs (and their retrains). Test accuracy is read only to score.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import rankdata

sys.path.insert(0, str(Path(__file__).resolve().parent))
import memorisation
import noise_suite

from gainsearch.core.noise import (
    auto_verdict,
    corrected_accuracy,
    estimate_label_noise,
    noise_rate_epoch,
    per_class_epoch,
)
from gainsearch.core.objective import trial_score
from gainsearch.core.selection import select_epoch

ROOT = Path(__file__).resolve().parents[1]
CHOICE = ROOT / "benchmarks" / "results" / "noise_choice.json"
BOOTSTRAP, BOOTSTRAP_SEED = 10_000, 0
#: Targets (PROTOCOL.md section 5), in points of gap (validation accuracy - ours).
SYMMETRIC_MEAN_GAP, SYMMETRIC_WORST_GAP, CLASS_DEPENDENT_GAP = 0.0, 1.0, 2.0
KIND_RIGHT, FALSE_CLASS_DEPENDENT = 0.9, 0.05


# --------------------------------------------------------------------------------------------
# candidates


@dataclass(frozen=True)
class Rule:
    """A stopping rule: ``kind`` and its settings; ``label`` names it in tables."""

    kind: str  # last, signal, noise_rate, per_class, auto
    signal: str = ""
    window: int = 1
    patience: int | None = None
    estimator: str = ""
    margin: float = 0.0
    aggregate: str = ""
    none_rule: str = ""

    @property
    def label(self) -> str:
        if self.kind == "last":
            return "last"
        if self.kind == "signal":
            return f"{self.signal}/w{self.window}/p{self.patience or '-'}"
        if self.kind == "noise_rate":
            return f"noise_rate/{self.estimator}/m{self.margin:g}"
        if self.kind == "per_class":
            return f"per_class/{self.aggregate}"
        return f"auto-{self.none_rule}"


@dataclass(frozen=True)
class Candidate:
    rule: Rule
    ranking: str  # score, accuracy, corrected, rank

    @property
    def label(self) -> str:
        return f"{self.rule.label} by {self.ranking}"


PC33 = Rule("signal", "prediction_changes", 3, 3)
RULES: list[Rule] = [
    Rule("last"),
    *(Rule("signal", "prediction_changes", w, p) for w in (1, 3, 5) for p in (None, 3, 5)),
    *(Rule("signal", "gain_trend", w, p) for w in (1, 3) for p in (3, 5)),
    *(
        Rule("noise_rate", estimator=e, margin=m)
        for e in ("mixture", "transition")
        for m in (0, 0.02)
    ),
    *(Rule("per_class", aggregate=a) for a in ("min", "median")),
    Rule("auto", none_rule="A"),
    Rule("auto", none_rule="B"),
]
RANKINGS = ("score", "accuracy", "corrected", "rank")
CANDIDATES = [Candidate(r, k) for r in RULES for k in RANKINGS]
LAST = Candidate(RULES[0], "score")


def _finite(history: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The epochs before a non-finite training loss or gain (never kept)."""
    out = []
    for row in history:
        if not (math.isfinite(row["train_loss"]) and math.isfinite(row.get("gain") or 0.0)):
            break
        out.append(row)
    return out


def _signal_verdict(history: Sequence[dict[str, Any]], rule: Rule) -> tuple[int, int]:
    """(kept epoch, last epoch trained) of a signal rule with patience, epoch by epoch."""
    for i in range(1, len(history) + 1):
        prefix = history[:i]
        sel = select_epoch(
            {r["epoch"]: r[rule.signal] for r in prefix},
            select_by=rule.signal,
            window=rule.window,
            patience=rule.patience,
        )
        if sel.stop:
            return sel.epoch, prefix[-1]["epoch"]
    return sel.epoch, history[-1]["epoch"]


def replay(history: Sequence[dict[str, Any]], rule: Rule) -> tuple[int, int] | None:
    """(kept epoch, epochs trained) of ``rule`` on one merged run; ``None`` when the run has no
    finite epoch (or diverged, for ``last``, whose kept epoch is the diverged one)."""
    finite = _finite(history)
    if not finite:
        return None
    last = finite[-1]["epoch"]
    if rule.kind == "last":
        return (last, last) if len(finite) == len(history) else None
    if rule.kind == "signal":
        return _signal_verdict(finite, rule)
    if rule.kind == "noise_rate":
        epoch, stop = noise_rate_epoch(finite, estimator=rule.estimator, margin=rule.margin)
        return epoch, epoch if stop else last
    if rule.kind == "per_class":
        return per_class_epoch(finite, aggregate=rule.aggregate), last
    # auto: the trainer's own function, epoch by epoch (a stop ends the run there)
    none_rule = "last" if rule.none_rule == "A" else "prediction_changes"
    for i in range(1, len(finite) + 1):
        verdict = auto_verdict(finite[:i], none_rule=none_rule)
        if verdict.stop:
            return verdict.epoch, finite[i - 1]["epoch"]
    return verdict.epoch, last


def _row(history: Sequence[dict[str, Any]], epoch: int) -> dict[str, Any]:
    return next(r for r in history if r["epoch"] == epoch)


def choose(histories: Sequence[Sequence[dict[str, Any]]], cand: Candidate, k: int) -> dict:
    """The candidate's grid point on one seed: its index, every run's (kept, trained)."""
    verdicts = [replay(h, cand.rule) for h in histories]
    scores, accs, corrected = [], [], []
    for h, v in zip(histories, verdicts, strict=True):
        if v is None:
            scores.append(-math.inf)
            accs.append(-math.inf)
            corrected.append(-math.inf)
            continue
        prefix = [r for r in h if r["epoch"] <= v[0]]
        score = trial_score(prefix)
        scores.append(score if math.isfinite(score) else -math.inf)
        acc = _row(h, v[0]).get("train_acc")
        acc = acc if acc is not None and math.isfinite(acc) else -math.inf
        accs.append(acc)
        rate = estimate_label_noise(prefix).rate
        corrected.append(corrected_accuracy(acc, rate, k) if math.isfinite(acc) else -math.inf)
    if cand.ranking == "score":
        keys = scores
    elif cand.ranking == "accuracy":
        keys = accs
    elif cand.ranking == "corrected":
        keys = corrected
    else:
        keys = list((rankdata(scores) + rankdata(accs)) / 2)
    best = max(range(len(keys)), key=lambda i: (keys[i], scores[i], -i))
    return {"best": best, "verdicts": verdicts}


# --------------------------------------------------------------------------------------------
# scoring


def _key(point: dict[str, Any]) -> str:
    return json.dumps(point, sort_keys=True)


@functools.cache
def _load(out: str, name: str) -> dict[str, Any] | None:
    path = Path(out) / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def seed_outcome(body: dict[str, Any], seed: int, cand: Candidate) -> dict[str, Any] | None:
    runs = body["runs"]
    setup = body["setup"]
    merged = {_key(r["point"]): r for r in runs if r["protocol"] == "merged" and r["seed"] == seed}
    split = [r for r in runs if r["protocol"] == "split" and r["seed"] == seed]
    if len(merged) < len(setup["grid"]) or len(split) < len(setup["grid"]):
        return None
    keys = sorted(merged)
    histories = [merged[k]["history"] for k in keys]
    choice = choose(histories, cand, 10)
    best = choice["best"]
    verdict = choice["verdicts"][best]
    if verdict is None:
        return None
    ours = float(_row(histories[best], verdict[0])["test_acc"])
    oracle = max(float(r["test_acc"]) for h in histories for r in h if r["test_acc"] is not None)
    v_point, v_epoch = memorisation.validation_choice(split, seed)
    constant = setup["train"].get("schedule", "constant") == "constant"
    retrain = [
        r
        for r in runs
        if r["protocol"] == "retrain"
        and r["seed"] == seed
        and _key(r["point"]) == _key(v_point)
        and r.get("epochs") == v_epoch
    ]
    if retrain:
        validation = float(retrain[0]["history"][-1]["test_acc"])
    elif constant:
        validation = float(_row(merged[_key(v_point)]["history"], v_epoch)["test_acc"])
    else:
        return None
    budget = sum(len(h) for h in histories)
    trained = sum(v[1] for v in choice["verdicts"] if v is not None)
    # the validation workflow's epochs in full-data equivalents: every split epoch is 0.8 of
    # one, and the retrain on all data runs its chosen epochs (with a constant rate too: the
    # merged run's first epochs stand in for it here, but a user trains them)
    split_epochs = 0.8 * sum(len(r["history"]) for r in split) + v_epoch
    # what the chosen trial recorded (to its stop): TrialResult.label_noise reads the same
    chosen_history = [r for r in histories[best] if r["epoch"] <= verdict[1]]
    return {
        "regret": 100 * (oracle - ours),
        "validation_regret": 100 * (oracle - validation),
        "gap": 100 * (validation - ours),
        "ours": 100 * ours,
        "validation": 100 * validation,
        "epochs": trained,
        "budget": budget,
        "split_epochs": split_epochs,
        "noise": estimate_label_noise(chosen_history),
        "true_noise": merged[keys[best]].get("true_noise", math.nan),
    }


def bootstrap(values: Sequence[float]) -> tuple[float, float]:
    """Percentile 95 % interval of the mean over seeds."""
    x = np.asarray(values, dtype=np.float64)
    if x.size < 2:
        return (float(x.mean()), float(x.mean())) if x.size else (math.nan, math.nan)
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    means = x[rng.integers(0, x.size, (BOOTSTRAP, x.size))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


@functools.cache
def outcomes(out: str, name: str, cand: Candidate) -> tuple[dict[str, Any], ...]:
    body = _load(out, name)
    if body is None:
        return ()
    seeds = sorted({r["seed"] for r in body["runs"]})
    return tuple(o for s in seeds if (o := seed_outcome(body, s, cand)) is not None)


def loses_to_last(out: str, name: str, cand: Candidate) -> bool:
    """The paired bootstrap interval of (candidate - last) regret lies above 0."""
    ours, last = outcomes(out, name, cand), outcomes(out, name, LAST)
    if not ours or len(ours) != len(last):
        return False
    diff = [a["regret"] - b["regret"] for a, b in zip(ours, last, strict=True)]
    return bootstrap(diff)[0] > 0


def mean_regret(out: str, names: Sequence[str], cand: Candidate) -> float:
    values = [np.mean([o["regret"] for o in outcomes(out, n, cand)]) for n in names]
    values = [v for v in values if np.isfinite(v)]
    return float(np.mean(values)) if values else math.inf


def calibrate(out: str, names: Sequence[str], pool: Sequence[Candidate] = CANDIDATES) -> Candidate:
    """The one calibration rule: among candidates that lose to ``last`` beyond the seed noise on
    no set-up of ``names``, the lowest mean regret (ties: fewer epochs trained)."""
    eligible = [c for c in pool if not any(loses_to_last(out, n, c) for n in names)]

    def epochs(c: Candidate) -> float:
        return float(sum(o["epochs"] for n in names for o in outcomes(out, n, c)))

    return min(eligible, key=lambda c: (mean_regret(out, names, c), epochs(c), c.label))


# --------------------------------------------------------------------------------------------
# printing


def _complete(out: Path, names: Sequence[str]) -> list[str]:
    done = []
    for n in names:
        body = _load(str(out), n)
        setup = noise_suite.SETUPS[n]
        if body is None:
            continue
        merged = sum(r["protocol"] == "merged" for r in body["runs"])
        if merged >= len(setup.grid) * len(setup.seeds) and outcomes(str(out), n, LAST):
            done.append(n)
    return done


def setup_table(out: str, names: Sequence[str], cands: Sequence[Candidate]) -> list[str]:
    lines = [
        "| set-up | regime | seeds | validation regret [95 % CI] | "
        + " | ".join(f"{c.label}: gap [95 % CI] (worst)" for c in cands)
        + " |",
        "|---" * (4 + len(cands)) + "|",
    ]
    for n in names:
        base = outcomes(out, n, cands[0])
        if not base:
            continue
        vr = [o["validation_regret"] for o in base]
        lo, hi = bootstrap(vr)
        cells = [f"{np.mean(vr):.1f} [{lo:.1f}, {hi:.1f}]"]
        for c in cands:
            gaps = [o["gap"] for o in outcomes(out, n, c)]
            lo, hi = bootstrap(gaps)
            cells.append(f"{np.mean(gaps):+.1f} [{lo:+.1f}, {hi:+.1f}] ({max(gaps):+.1f})")
        regime = noise_suite.SETUPS[n].regime
        lines.append(f"| {n} | {regime} | {len(base)} | " + " | ".join(cells) + " |")
    return lines


def diagnosis_table(out: str, names: Sequence[str], cand: Candidate) -> list[str]:
    lines = [
        "| regime | searches | kind right | false class-dependent | rate MAE (confident / "
        "disagreement / mixture) |",
        "|---|---|---|---|---|",
    ]
    for regime in noise_suite.REGIMES:
        rows = [
            o
            for n in names
            if noise_suite.SETUPS[n].regime == regime
            for o in outcomes(out, n, cand)
        ]
        if not rows:
            continue
        want = {"clean": "none"}.get(regime, regime)
        right = np.mean([o["noise"].kind == want for o in rows])
        false_cd = np.mean([o["noise"].kind == "class-dependent" for o in rows])
        maes = [
            np.nanmean([abs(getattr(o["noise"], f) - o["true_noise"]) for o in rows])
            for f in ("rate", "disagreement", "mixture_rate")
        ]
        lines.append(
            f"| {regime} | {len(rows)} | {100 * right:.0f} % | "
            + (f"{100 * false_cd:.0f} %" if regime != "class-dependent" else "-")
            + " | "
            + " / ".join(f"{100 * m:.1f}" for m in maes)
            + " |"
        )
    return lines


def print_all(out: Path, names: Sequence[str], choose_now: bool = False) -> None:
    done = _complete(out, names)
    calib = [n for n in done if noise_suite.SETUPS[n].role == "calib"]
    report = [n for n in done if noise_suite.SETUPS[n].role == "report"]
    print(f"set-ups complete: calibration {calib}, report {report}")
    if not calib:
        return
    key = str(out)
    chosen = calibrate(key, calib)
    print(
        f"\ncalibration choice ({len(calib)} set-ups): {chosen.label}, "
        f"mean regret {mean_regret(key, calib, chosen):.2f} (last: "
        f"{mean_regret(key, calib, LAST):.2f})"
    )
    if choose_now:
        CHOICE.write_text(
            json.dumps(
                {
                    "candidate": chosen.label,
                    "rule": chosen.rule.__dict__,
                    "ranking": chosen.ranking,
                    "calibration_setups": calib,
                    "calibration_mean_regret": mean_regret(key, calib, chosen),
                },
                indent=1,
            )
            + "\n"
        )
        print(f"written: {CHOICE.relative_to(ROOT)}")
    shown = [LAST, Candidate(PC33, "score"), chosen]
    shown = list(dict.fromkeys(shown))
    print("\n## calibration half: gap to the validation workflow (points), per set-up\n")
    print("\n".join(setup_table(key, calib, shown)))
    print("\n## label-noise diagnosis of the chosen trial (calibration)\n")
    print("\n".join(diagnosis_table(key, calib, chosen)))
    top = sorted(CANDIDATES, key=lambda c: mean_regret(key, calib, c))[:10]
    print("\n## the ten lowest calibration mean regrets (in-sample)\n")
    for c in top:
        lost = [n for n in calib if loses_to_last(key, n, c)]
        print(
            f"{mean_regret(key, calib, c):6.2f}  {c.label}"
            + (f"  loses to last on {lost}" if lost else "")
        )
    if report:
        print("\n## report half (held out): gap to the validation workflow, per set-up\n")
        print("\n".join(setup_table(key, report, shown)))
        print("\n## label-noise diagnosis of the chosen trial (report)\n")
        print("\n".join(diagnosis_table(key, report, chosen)))
        print("\n## targets, report half (PROTOCOL.md section 5)\n")
        print("\n".join(targets(key, report, shown)))
        lost = [n for n in report if loses_to_last(key, n, chosen)]
        print(
            f"\nthe default (section 6): {chosen.label} "
            + (
                f"loses to last beyond the seed noise on {lost}: the default stays last"
                if lost
                else "loses to last beyond the seed noise on no report set-up: it becomes "
                "the default"
            )
        )
        everything = calib + report
        print("\n## leave-one-set-up-out over all set-ups (the calibration rule on the others)\n")
        held: dict[str, tuple[Candidate, list[dict[str, Any]]]] = {}
        for n in everything:
            pick = calibrate(key, [m for m in everything if m != n])
            held[n] = (pick, list(outcomes(key, n, pick)))
        print("| set-up | regime | chosen without it | gap [95 % CI] (worst) |")
        print("|---|---|---|---|")
        for n, (pick, outs) in held.items():
            gaps = [o["gap"] for o in outs]
            lo, hi = bootstrap(gaps)
            print(
                f"| {n} | {noise_suite.SETUPS[n].regime} | {pick.label} | "
                f"{np.mean(gaps):+.1f} [{lo:+.1f}, {hi:+.1f}] ({max(gaps):+.1f}) |"
            )
        for regime in noise_suite.REGIMES:
            gaps = [
                np.mean([o["gap"] for o in outs])
                for n, (_, outs) in held.items()
                if noise_suite.SETUPS[n].regime == regime
            ]
            if gaps:
                print(
                    f"leave-one-out {regime}: mean gap {np.mean(gaps):+.2f}, worst set-up "
                    f"{max(gaps):+.2f} ({len(gaps)} set-ups)"
                )


def targets(out: str, names: Sequence[str], cands: Sequence[Candidate]) -> list[str]:
    """Per regime and candidate: mean gap, worst set-up mean gap, and the targets met."""
    lines = [
        "| regime | candidate | mean gap | worst set-up mean gap | mean regret (validation) "
        "| epochs, full-data equivalents (validation workflow) | target met |",
        "|---|---|---|---|---|---|---|",
    ]
    for regime in noise_suite.REGIMES:
        group = [n for n in names if noise_suite.SETUPS[n].regime == regime]
        if not group:
            continue
        for c in cands:
            gaps = [float(np.mean([o["gap"] for o in outcomes(out, n, c)])) for n in group]
            ours = [float(np.mean([o["regret"] for o in outcomes(out, n, c)])) for n in group]
            theirs = [
                float(np.mean([o["validation_regret"] for o in outcomes(out, n, c)])) for n in group
            ]
            if regime == "class-dependent":
                met = np.mean(gaps) <= CLASS_DEPENDENT_GAP
            else:
                met = np.mean(gaps) <= SYMMETRIC_MEAN_GAP and max(gaps) <= SYMMETRIC_WORST_GAP
            if regime == "clean":
                met = met and not any(loses_to_last(out, n, c) for n in group)
            ep = sum(o["epochs"] for n in group for o in outcomes(out, n, c))
            vep = sum(o["split_epochs"] for n in group for o in outcomes(out, n, c))
            lines.append(
                f"| {regime} | {c.label} | {np.mean(gaps):+.2f} | {max(gaps):+.2f} | "
                f"{np.mean(ours):.2f} ({np.mean(theirs):.2f}) | {ep:.0f} ({vep:.0f}) | "
                f"{'yes' if met else 'no'} |"
            )
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=noise_suite.DEFAULT_OUT)
    parser.add_argument("--choose", action="store_true", help="write the calibration choice")
    parser.add_argument("--setups", nargs="+", default=sorted(noise_suite.SETUPS))
    args = parser.parse_args(argv)
    print_all(args.out, args.setups, choose_now=args.choose)


if __name__ == "__main__":
    main()

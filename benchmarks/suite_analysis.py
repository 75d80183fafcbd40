"""The evidence suite's analysis: every candidate objective, side by side, chosen without peeking.

Read by ``benchmarks/suite.py`` (which trains and caches the runs); also runnable alone::

    python benchmarks/suite_analysis.py [CACHE_DIR]       # default benchmarks/results/suite

Objectives are functions of a trial's per-epoch records (training loss and gain curves, nothing
held out), higher is better, NaN for a diverged run (ranked below every finite value). A
*family* has one constant (a weight or a threshold); its constant is chosen on the set-ups it is
**not** scored on:

* **calibration -> report**: chosen on the ``calib`` set-ups, scored on the ``report`` ones;
* **leave one set-up out**: for each set-up, chosen on all the others, scored on it.

The constant minimises the mean selection regret of the fitting set-ups (ties: higher mean
Spearman, then the constant that leans most on the training loss). Only held-out figures are
printed for families.

Metrics per set-up (per seed, then averaged): Spearman and Kendall of the objective with final
test accuracy over the grid; regret (best test accuracy of the grid minus the chosen point's, in
points); early Spearman (the objective computed on the first 2 and 3 epochs only, against final
test accuracy, averaged: what a pruner relies on).
"""

from __future__ import annotations

import json
import math
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "suite"
FLOOR_DB = -200.0  # a reading at or below this is the eps floor (an exactly zero derivative)

History = list[dict[str, Any]]
Objective = Callable[[History], float]


# --------------------------------------------------------------------------------------------
# loading


@dataclass
class SetupRuns:
    name: str
    meta: dict[str, Any]
    #: seed -> [(merged run, split run or None)] in grid order
    grid: dict[int, list[tuple[dict[str, Any], dict[str, Any] | None]]]

    @property
    def role(self) -> str:
        return str(self.meta["role"])


def load(out: Path, names: Sequence[str] | None = None) -> list[SetupRuns]:
    found = []
    for path in sorted(out.glob("s[0-9]*.json")):
        body = json.loads(path.read_text())
        meta = body["setup"]
        if names is not None and meta["name"] not in names:
            continue
        order = {json.dumps(p, sort_keys=True): i for i, p in enumerate(meta["grid"])}
        runs = {
            (r["protocol"], json.dumps(r["point"], sort_keys=True), r["seed"]): r
            for r in body["runs"]
        }
        grid: dict[int, list[tuple[dict, dict | None]]] = {}
        for seed in meta["seeds"]:
            pairs = []
            for key in sorted(order, key=order.__getitem__):
                merged = runs.get(("merged", key, seed))
                if merged is not None:
                    pairs.append((merged, runs.get(("split", key, seed))))
            if len(pairs) == len(order):  # only complete grids are analysed
                grid[seed] = pairs
        if grid:
            found.append(SetupRuns(meta["name"], meta, grid))
    return found


def test_acc(run: dict[str, Any]) -> float:
    """Final test accuracy; a diverged run counts as 0 (it has no usable model)."""
    value = run["history"][-1]["test_acc"] if run["history"] else math.nan
    return 0.0 if run["status"] == "diverged" or not math.isfinite(value) else float(value)


# --------------------------------------------------------------------------------------------
# objectives of a history (the first t epochs of a run)


def _finite(values: Sequence[float]) -> bool:
    return len(values) > 0 and all(math.isfinite(v) for v in values)


def _losses(h: History) -> list[float]:
    return [float(r["train_loss"]) for r in h]


def _gains(h: History, key: str) -> list[float]:
    return [float(r[key]) for r in h]


def neg_final_loss(h: History) -> float:
    losses = _losses(h)
    return -losses[-1] if _finite(losses) else math.nan


def neg_loss_sum(h: History) -> float:
    losses = _losses(h)
    return -sum(losses) if _finite(losses) else math.nan


def gain_metric(name: str, key: str = "gain") -> Objective:
    def objective(h: History) -> float:
        from gainsearch.core.objective import curve_metric

        gains = _gains(h, key)
        if not _finite(_losses(h)) or not _finite(gains):
            return math.nan
        return float(curve_metric(name, gains))

    return objective


def combined(weight: float, key: str, until: int | None = None) -> Objective:
    """``-log10(final training loss) + weight * gain score / 20`` (both in decades); with
    ``until``, the gain term only while the history has at most ``until`` epochs (an early-
    ranking term: the final value is the training loss's)."""

    def objective(h: History) -> float:
        from gainsearch.core.objective import gain_score

        losses, gains = _losses(h), _gains(h, key)
        if not _finite(losses) or not _finite(gains):
            return math.nan
        base = -math.log10(max(losses[-1], 1e-12))
        if not weight or (until is not None and len(h) > until):
            return base
        return base + weight * gain_score(gains) / 20.0

    return objective


def guarded(threshold: float, key: str) -> Objective:
    """The final training loss, but a run whose gain variability (dB/epoch over the score's
    window) exceeds ``threshold`` ranks below every stable run (the gain as a guard)."""

    def objective(h: History) -> float:
        from gainsearch.core.features import compute_features

        losses, gains = _losses(h), _gains(h, key)
        if not _finite(losses) or not _finite(gains):
            return math.nan
        unstable = compute_features(gains).variability > threshold
        return -math.log10(max(losses[-1], 1e-12)) - (1e3 if unstable else 0.0)

    return objective


#: Fixed objectives (no constant).
FIXED: dict[str, Objective] = {
    "-final training loss": neg_final_loss,
    "-training loss sum (Ru et al.)": neg_loss_sum,
    "gain score (impulse, default until now)": gain_metric("gain_score"),
    "gain score (smoothed)": gain_metric("gain_score", "gain_smooth"),
    "gain score (winner class, paper)": gain_metric("gain_score", "gain_winner"),
    "gain level (smoothed)": gain_metric("level", "gain_smooth"),
}

WEIGHTS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
THRESHOLDS = (math.inf, 20.0, 10.0, 5.0, 3.0)

EARLY_EPOCHS = 3  # the early-ranking term's horizon: the epochs a pruner decides on (2-3)

#: Families: name -> (constants, constant -> objective, what the constant is chosen on). The
#: first constant is the pure training loss.
FAMILIES: dict[str, tuple[Sequence[float], Callable[[float], Objective], str]] = {
    "loss + w * gain score (impulse)": (WEIGHTS, lambda w: combined(w, "gain"), "regret"),
    "loss + w * gain score (smoothed)": (
        WEIGHTS,
        lambda w: combined(w, "gain_smooth"),
        "regret",
    ),
    "loss, guarded by gain variability (smoothed)": (
        THRESHOLDS,
        lambda v: guarded(v, "gain_smooth"),
        "regret",
    ),
    f"loss + w * gain score (impulse) in epochs 1-{EARLY_EPOCHS} only": (
        WEIGHTS,
        lambda w: combined(w, "gain", until=EARLY_EPOCHS),
        "early",
    ),
    f"loss + w * gain score (smoothed) in epochs 1-{EARLY_EPOCHS} only": (
        WEIGHTS,
        lambda w: combined(w, "gain_smooth", until=EARLY_EPOCHS),
        "early",
    ),
}


# --------------------------------------------------------------------------------------------
# metrics


@dataclass
class Stats:
    spearman: float
    kendall: float
    regret: float
    early: float
    #: Spearman over the grid points whose merged run trained (did not diverge): a diverged
    #: run counts as accuracy 0 and ranks last for every signal, which inflates ``spearman``
    spearman_trained: float = math.nan


def _rank_values(values: np.ndarray) -> np.ndarray:
    floor = np.nanmin(values) - 1.0 if np.any(np.isfinite(values)) else 0.0
    return np.where(np.isfinite(values), values, floor)


def _corr(fn: Callable, a: np.ndarray, b: np.ndarray) -> float:
    with warnings.catch_warnings():  # a constant column has no rank correlation: NaN
        warnings.simplefilter("ignore")
        return float(fn(a, b).statistic)


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def trained(run: dict[str, Any]) -> bool:
    """The merged run trained: it did not diverge and has a finite test accuracy."""
    value = run["history"][-1]["test_acc"] if run["history"] else math.nan
    return run["status"] != "diverged" and math.isfinite(value)


def evaluate(
    setup: SetupRuns, objective: Objective, *, split: bool = False, key: str = "val_loss"
) -> Stats:
    """Spearman, Kendall, regret and early Spearman of one objective on one set-up (with
    ``split``: of the split run's final ``key``, ``val_loss`` or ``val_acc``)."""
    rhos, taus, regrets, early, rhos_trained = [], [], [], [], []
    for pairs in setup.grid.values():
        accs = np.array([test_acc(m) for m, _ in pairs])
        if split:
            values = np.array([_val(s, key) for _, s in pairs])
        else:
            values = np.array([objective(m["history"]) for m, _ in pairs])
        ranked = _rank_values(values)
        rhos.append(_corr(stats.spearmanr, ranked, accs))
        keep = np.array([trained(m) for m, _ in pairs])
        if keep.sum() >= 3:
            rhos_trained.append(_corr(stats.spearmanr, _rank_values(values[keep]), accs[keep]))
        taus.append(_corr(stats.kendalltau, ranked, accs))
        regrets.append(100.0 * (accs.max() - accs[int(np.argmax(ranked))]))
        if not split:
            for t in (2, 3):
                at_t = np.array([objective(m["history"][:t]) for m, _ in pairs])
                early.append(_corr(stats.spearmanr, _rank_values(at_t), accs))
    return Stats(
        _nanmean(rhos),
        _nanmean(taus),
        float(np.mean(regrets)),
        _nanmean(early),
        _nanmean(rhos_trained),
    )


def _val(split_run: dict[str, Any] | None, key: str = "val_loss") -> float:
    """The split run's final validation loss (negated: higher is better) or accuracy."""
    if split_run is None or split_run["status"] == "diverged":
        return math.nan
    value = split_run["history"][-1][key]
    if not math.isfinite(value):
        return math.nan
    return -value if key == "val_loss" else float(value)


def random_regret(setup: SetupRuns) -> float:
    """Expected regret of a uniformly random grid point (exact mean)."""
    out = []
    for pairs in setup.grid.values():
        accs = np.array([test_acc(m) for m, _ in pairs])
        out.append(100.0 * float(np.mean(accs.max() - accs)))
    return float(np.mean(out))


def choose_constant(
    family: str, fit_on: Sequence[SetupRuns], cache: dict[tuple[str, float, str], Stats]
) -> float:
    """The family's constant with the lowest mean regret on ``fit_on`` (ties: higher mean
    Spearman, then the earlier constant of the list, i.e. the one closest to the pure loss);
    for an early-ranking family, the highest mean early Spearman (ties: the earlier constant)."""
    constants, make, criterion = FAMILIES[family]
    best, best_key = constants[0], (math.inf, math.inf)
    for c in constants:
        rows = [_cached(cache, family, c, s, make) for s in fit_on]
        if criterion == "early":
            key = (-round(_nanmean([r.early for r in rows]), 9), 0.0)
        else:
            key = (
                round(float(np.mean([r.regret for r in rows])), 9),
                -round(_nanmean([r.spearman for r in rows]), 9),
            )
        if key < best_key:
            best, best_key = c, key
    return best


def _cached(
    cache: dict[tuple[str, float, str], Stats],
    family: str,
    c: float,
    setup: SetupRuns,
    make: Callable[[float], Objective],
) -> Stats:
    key = (family, c, setup.name)
    if key not in cache:
        cache[key] = evaluate(setup, make(c))
    return cache[key]


# --------------------------------------------------------------------------------------------
# tables


def _fmt(v: float, digits: int = 2) -> str:
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return "  n/a" if not math.isfinite(v) else f"{v:.{digits}f}"


def held_out(setups: Sequence[SetupRuns]) -> dict[str, Any]:
    """Per family: constants and held-out stats under both protocols."""
    cache: dict[tuple[str, float, str], Stats] = {}
    out: dict[str, Any] = {}
    calib = [s for s in setups if s.role == "calib"]
    report = [s for s in setups if s.role != "calib"]
    for family, (_, make, _) in FAMILIES.items():
        chosen = choose_constant(family, calib, cache) if calib else math.nan
        on_report = {s.name: _cached(cache, family, chosen, s, make) for s in report}
        loso, loso_constants = {}, {}
        for s in setups:
            c = choose_constant(family, [o for o in setups if o is not s], cache)
            loso_constants[s.name] = c
            loso[s.name] = _cached(cache, family, c, s, make)
        out[family] = {
            "calib_constant": chosen,
            "report": on_report,
            "loso_constants": loso_constants,
            "loso": loso,
        }
    return out


def floor_counts(setups: Sequence[SetupRuns]) -> list[dict[str, Any]]:
    """How often each gain variant reads the floor on merged runs, per set-up, counted over the
    epochs whose training loss is finite and below the first epoch's ("falling", the issue's
    criterion), and over those whose loss is also below half the chance level, ln(K) / 2 with
    K = 10 ("working": the network has learnt something)."""
    rows = []
    for s in setups:
        counts = {"falling": [0, 0, 0], "working": [0, 0, 0]}  # epochs, impulse, smoothed
        for pairs in s.grid.values():
            for m, _ in pairs:
                h = m["history"]
                for r in h:
                    loss = r["train_loss"]
                    if not math.isfinite(loss) or loss >= h[0]["train_loss"]:
                        continue
                    kinds = ["falling"] + (["working"] if loss < math.log(10) / 2 else [])
                    for kind in kinds:
                        c = counts[kind]
                        c[0] += 1
                        c[1] += r["gain"] <= FLOOR_DB
                        c[2] += r["gain_smooth"] <= FLOOR_DB
        rows.append({"setup": s.name, "model": s.meta["train"]["model"], **counts})
    return rows


def pruning_replay(setup: SetupRuns, seed_order: int = 0) -> dict[str, dict[str, float]]:
    """Replay the grid as a sequential Optuna study (a seeded random order per seed): no
    pruning; ``GainPruner`` reporting the gain score (the behaviour before the trial score);
    ``GainPruner`` reporting the trial score (now), also with its too-variable rule off (what
    the gain adds to pruning); Optuna's ``MedianPruner`` on the training loss, with Optuna's
    defaults and with GainPruner's (3 peers, from epoch 1). The point chosen is the completed
    trial with the lowest final training loss in all of them, so only pruning differs. Returns
    per way: epochs trained as a fraction of no pruning, and mean regret in points."""
    import optuna

    from gainsearch.core.objective import gain_score, trial_score
    from gainsearch.integrations.optuna import CURVE_ATTR, GainPruner

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def loss(h: History) -> float:
        value = float(h[-1]["train_loss"])
        return value if math.isfinite(value) else math.inf

    def median_like_gain_pruner() -> optuna.pruners.BasePruner:
        # GainPruner's defaults: judged from epoch 1 against the median of >= 3 finished peers
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)

    def without_variability_rule() -> GainPruner:
        return GainPruner(variability_factor=1e9)

    ways: dict[str, tuple[Callable[[], Any], Callable[[History], float], str]] = {
        "no pruning": (optuna.pruners.NopPruner, loss, "minimize"),
        "GainPruner, gain score (before)": (
            GainPruner,
            lambda h: gain_score(_gains(h, "gain")),
            "maximize",
        ),
        "GainPruner, trial score (now)": (GainPruner, trial_score, "maximize"),
        "GainPruner, trial score, no variability rule": (
            without_variability_rule,
            trial_score,
            "maximize",
        ),
        "MedianPruner (Optuna's defaults), loss": (optuna.pruners.MedianPruner, loss, "minimize"),
        "MedianPruner (3 peers, from epoch 1), loss": (median_like_gain_pruner, loss, "minimize"),
    }
    out: dict[str, dict[str, Any]] = {}
    for way, (make, value_of, direction) in ways.items():
        used = full = 0
        regrets = []
        rules: dict[str, int] = {}
        for seed, pairs in setup.grid.items():
            order = np.random.default_rng(1000 * seed_order + seed).permutation(len(pairs))
            study = optuna.create_study(direction=direction, pruner=make())
            finals: list[tuple[float, float]] = []  # (final loss, test accuracy) of completed
            for i in order:
                run = pairs[int(i)][0]
                trial = study.ask()
                h = run["history"]
                full += len(h)
                pruned = False
                for e in range(1, len(h) + 1):
                    used += 1
                    trial.set_user_attr(CURVE_ATTR, _gains(h[:e], "gain"))
                    diverged = not _finite(_losses(h[:e])) or not _finite(_gains(h[:e], "gain"))
                    if diverged:
                        trial.set_user_attr("diverged", True)
                    value = value_of(h[:e])
                    trial.report(value if math.isfinite(value) else math.nan, e)
                    if diverged or trial.should_prune():  # a diverged trial cannot go on
                        if isinstance(study.pruner, GainPruner):  # which rule pruned it
                            frozen = next(t for t in study.trials if t.number == trial.number)
                            rule = study.pruner.decision(study, frozen).rule
                        else:
                            rule = "diverged" if diverged else "pruner"
                        rules[rule] = rules.get(rule, 0) + 1
                        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                        pruned = True
                        break
                if not pruned:
                    final = value_of(h)
                    study.tell(trial, final if math.isfinite(final) else math.nan)
                    if run["status"] != "diverged" and math.isfinite(loss(h)):
                        finals.append((loss(h), test_acc(run)))
            best = max(test_acc(m) for m, _ in pairs)
            chosen = min(finals)[1] if finals else 0.0
            regrets.append(100.0 * (best - chosen))
        out[way] = {"epochs": used / full, "regret": float(np.mean(regrets)), "rules": rules}
    return out


#: Random orders of the pruning replay for its spread (order 0 is the published table's).
PRUNING_ORDERS = 10


def pruning_orders(setups: Sequence[SetupRuns]) -> dict[str, Any]:
    """The replay's mean epochs fraction over the set-ups, for each of ``PRUNING_ORDERS``
    random trial orders: how much of a gap between two ways is the order's."""
    per_order: dict[str, list[float]] = {}
    rules: dict[str, dict[str, int]] = {}
    for order in range(PRUNING_ORDERS):
        replays = [pruning_replay(s, seed_order=order) for s in setups]
        for way in replays[0]:
            per_order.setdefault(way, []).append(
                float(np.mean([r[way]["epochs"] for r in replays]))
            )
            for r in replays:
                for rule, k in r[way]["rules"].items():
                    rules.setdefault(way, {})[rule] = rules.get(way, {}).get(rule, 0) + k
    return {
        way: {
            "per_order": v,
            "mean": float(np.mean(v)),
            "sd": float(np.std(v, ddof=1)),
            "rules": rules.get(way, {}),
        }
        for way, v in per_order.items()
    }


def diagnosis_agreement(setup: SetupRuns) -> tuple[int, int]:
    """(agreeing, total) of the library's diagnosis (peers = the other grid points of the seed,
    training loss given) with the ground truth of ``benchmarks/selection.py``."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import selection

    from gainsearch.core.features import diagnose

    agree = total = 0
    for pairs in setup.grid.values():
        best = max(test_acc(m) for m, _ in pairs)
        curves = [_gains(m["history"], "gain") for m, _ in pairs]
        for i, (run, _) in enumerate(pairs):
            window = max(1, min(5, len(run["history"]) - 1))  # the epochs grid has 2-epoch runs
            truth, _ = selection.ground_truth(run, best, window=window)
            losses = _losses(run["history"])
            diverged_at = next((e for e, v in enumerate(losses, 1) if not math.isfinite(v)), None)
            label = diagnose(
                curves[i],
                peers=curves[:i] + curves[i + 1 :],
                diverged_epoch=diverged_at,
                train_loss=losses,
            ).label
            agree += label == truth
            total += 1
    return agree, total


def summarise(setups: Sequence[SetupRuns]) -> dict[str, Any]:
    """Everything the tables print, as data (also written next to the cache as summary.json)."""
    per_setup: dict[str, Any] = {}
    for s in setups:
        rows = {name: evaluate(s, fn).__dict__ for name, fn in FIXED.items()}
        rows["-validation loss (80/20 split, reference)"] = evaluate(
            s, neg_final_loss, split=True
        ).__dict__
        rows["validation accuracy (80/20 split, reference)"] = evaluate(
            s, neg_final_loss, split=True, key="val_acc"
        ).__dict__
        per_setup[s.name] = {
            "title": s.meta["title"],
            "role": s.role,
            "seeds": len(s.grid),
            "points": len(s.meta["grid"]),
            "fixed": rows,
            "random_regret": random_regret(s),
        }
    families = held_out(setups)
    return {
        "per_setup": per_setup,
        "families": {
            f: {
                "calib_constant": v["calib_constant"],
                "loso_constants": v["loso_constants"],
                "report": {k: s.__dict__ for k, s in v["report"].items()},
                "loso": {k: s.__dict__ for k, s in v["loso"].items()},
            }
            for f, v in families.items()
        },
        "floor": floor_counts(setups),
        "pruning": {s.name: pruning_replay(s) for s in setups},
        "pruning_orders": pruning_orders(setups),
        "diagnosis": {s.name: diagnosis_agreement(s) for s in setups},
    }


def print_all(out: Path, names: Sequence[str] | None = None) -> dict[str, Any]:
    setups = load(out, names)
    if not setups:
        print(f"no complete set-up in {out}")
        return {}
    summary = summarise(setups)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, allow_nan=True))
    print_tables(summary)
    return summary


#: The fixed signals of the documentation's table, with the names it shows.
DOC_SIGNALS = {
    "-final training loss": "\u2212final training loss",
    "-training loss sum (Ru et al.)": "\u2212loss sum (Ru et al.)",
    "gain score (impulse, default until now)": "gain score",
    "gain score (smoothed)": "gain score, smoothed",
    "gain score (winner class, paper)": "gain score, winner class",
    "-validation loss (80/20 split, reference)": (
        "\u2212validation loss (80/20, needs validation data)"
    ),
    "validation accuracy (80/20 split, reference)": (
        "validation accuracy (80/20, needs validation data)"
    ),
}


def print_doc_tables(summary: dict[str, Any]) -> None:
    """The tables of docs/evidence.md, each between snippet markers: the page includes them
    from the committed output (``benchmarks/results/suite.txt``), it does not copy them."""
    per = summary["per_setup"]
    names = list(per)
    cols = list(DOC_SIGNALS)
    print("<!-- --8<-- [start:fixed] -->")
    print("| set-up | role | " + " | ".join(DOC_SIGNALS.values()) + " | random |")
    print("|---|---|" + "---:|" * (len(cols) + 1))
    for n in names:
        p = per[n]
        cells = [
            f"{_fmt(p['fixed'][c]['spearman'])} / {_fmt(p['fixed'][c]['regret'])}".strip()
            for c in cols
        ]
        print(
            f"| {n}: {p['title']} | {p['role']} | "
            + " | ".join(cells)
            + f" | {p['random_regret']:.2f} |"
        )
    means = [
        f"**{_fmt(_nanmean([per[n]['fixed'][c]['spearman'] for n in names]))} / "
        f"{_fmt(float(np.mean([per[n]['fixed'][c]['regret'] for n in names])))}**"
        for c in cols
    ]
    rnd = float(np.mean([per[n]["random_regret"] for n in names]))
    print(f"| **mean of {len(names)}** | | " + " | ".join(means) + f" | {rnd:.2f} |")
    trained = [
        _fmt(_nanmean([per[n]["fixed"][c]["spearman_trained"] for n in names])) for c in cols
    ]
    print(
        "| mean Spearman over the runs that trained (diverged runs left out) | | "
        + " | ".join(trained)
        + " | |"
    )
    early = [
        "n/a" if "validation" in c else _fmt(_nanmean([per[n]["fixed"][c]["early"] for n in names]))
        for c in cols
    ]
    print("| early Spearman (epochs 2-3), mean | | " + " | ".join(early) + " | |")
    print("<!-- --8<-- [end:fixed] -->\n")

    loss = {n: per[n]["fixed"]["-final training loss"] for n in names}
    report = [n for n in names if per[n]["role"] == "report"]

    def family_cells(rows: dict[str, Any], scored: list[str]) -> str:
        rho = _nanmean([rows[n]["spearman"] for n in scored])
        reg = float(np.mean([rows[n]["regret"] for n in scored]))
        worst = max(rows[n]["regret"] - loss[n]["regret"] for n in scored)
        early = _nanmean([rows[n]["early"] for n in scored])
        return f"{_fmt(rho)} | {_fmt(reg)} | {_fmt(worst)} | {_fmt(early)}"

    def constant(c: float) -> str:
        return "inf" if math.isinf(c) else f"{c:g}"

    print("<!-- --8<-- [start:families] -->")
    print(
        "| family (constant chosen held out) | calibration → report: constant | mean Spearman"
        " | mean regret | worst excess over loss | early Spearman | leave-one-out: constants"
        " | mean Spearman | mean regret | worst excess | early Spearman |"
    )
    print("|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|")
    print(
        f"| \u2212final training loss (no constant) | \u2013 | {family_cells(loss, report)}"
        " | \u2013 | "
        f"{family_cells(loss, names)} |"
    )
    for family, v in summary["families"].items():
        consts = ", ".join(
            constant(c) for c in sorted({float(c) for c in v["loso_constants"].values()})
        )
        print(
            f"| {family} | {constant(float(v['calib_constant']))} | "
            f"{family_cells(v['report'], report)} | {consts} | {family_cells(v['loso'], names)} |"
        )
    print("<!-- --8<-- [end:families] -->\n")

    ways = list(next(iter(summary["pruning"].values())))
    print("<!-- --8<-- [start:pruning] -->")
    print(f"| pruning (replayed, {len(names)} set-ups) | " + " | ".join(ways) + " |")
    print("|---|" + "---:|" * len(ways))
    cells = []
    for w in ways:
        e = float(np.mean([r[w]["epochs"] for r in summary["pruning"].values()]))
        r = float(np.mean([r[w]["regret"] for r in summary["pruning"].values()]))
        cells.append(f"{100 * e:.0f} % / {_fmt(r)}")
    print("| epochs trained / regret (mean) | " + " | ".join(cells) + " |")
    orders = summary.get("pruning_orders", {})
    if orders:
        cells = [f"{100 * orders[w]['mean']:.1f} ± {100 * orders[w]['sd']:.1f} %" for w in ways]
        print(f"| epochs trained over {PRUNING_ORDERS} random orders | " + " | ".join(cells) + " |")
        cells = [
            ", ".join(f"{rule} {k}" for rule, k in sorted(orders[w].get("rules", {}).items()))
            or "none"
            for w in ways
        ]
        print(f"| pruned by, over the {PRUNING_ORDERS} orders | " + " | ".join(cells) + " |")
    print("<!-- --8<-- [end:pruning] -->\n")


def print_tables(summary: dict[str, Any]) -> None:
    print_doc_tables(summary)
    per = summary["per_setup"]
    names = list(per)
    print("## Set-ups\n")
    print("| set-up | role | what varies | seeds x points |")
    print("|---|---|---|---|")
    for n in names:
        p = per[n]
        print(f"| {n} | {p['role']} | {p['title']} | {p['seeds']} x {p['points']} |")

    print("\n## Fixed objectives (no constant), per set-up: Spearman / regret (points)\n")
    objectives = list(next(iter(per.values()))["fixed"])
    print(
        "| objective | " + " | ".join(names) + " | mean Spearman | mean regret | early Spearman |"
    )
    print("|---" * (len(names) + 4) + "|")
    for o in objectives:
        cells = [
            f"{_fmt(per[n]['fixed'][o]['spearman'])} / {_fmt(per[n]['fixed'][o]['regret'])}"
            for n in names
        ]
        rho = _nanmean([per[n]["fixed"][o]["spearman"] for n in names])
        reg = float(np.mean([per[n]["fixed"][o]["regret"] for n in names]))
        early = _nanmean([per[n]["fixed"][o]["early"] for n in names])
        print(f"| {o} | " + " | ".join(cells) + f" | {_fmt(rho)} | {_fmt(reg)} | {_fmt(early)} |")
    rnd = [per[n]["random_regret"] for n in names]
    print(
        "| random choice (expected) | "
        + " | ".join(f"0 / {_fmt(r)}" for r in rnd)
        + f" | 0 | {_fmt(float(np.mean(rnd)))} | 0 |"
    )

    print(
        "\n## Spearman over the runs that trained (diverged runs left out: as accuracy 0 they rank"
        " last for every signal)\n"
    )
    print("| objective | " + " | ".join(names) + " | mean (all runs) | mean (runs that trained) |")
    print("|---" * (len(names) + 3) + "|")
    for o in objectives:
        cells = [_fmt(per[n]["fixed"][o]["spearman_trained"]) for n in names]
        rho = _nanmean([per[n]["fixed"][o]["spearman"] for n in names])
        rho_t = _nanmean([per[n]["fixed"][o]["spearman_trained"] for n in names])
        print(f"| {o} | " + " | ".join(cells) + f" | {_fmt(rho)} | {_fmt(rho_t)} |")

    loss = {n: per[n]["fixed"]["-final training loss"] for n in names}
    for protocol, title in (
        ("report", "calibration -> report set-ups"),
        ("loso", "leave one set-up out"),
    ):
        print(f"\n## Families, held out ({title}): Spearman / regret; vs -final training loss\n")
        scored = [n for n in names if protocol == "loso" or per[n]["role"] != "calib"]
        print(
            "| family | constant(s) | "
            + " | ".join(scored)
            + " | mean Spearman (loss) | mean regret (loss) | worst regret excess"
            + " | early Spearman (loss) |"
        )
        print("|---" * (len(scored) + 6) + "|")
        for family, v in summary["families"].items():
            rows = v[protocol]
            const = (
                _fmt(v["calib_constant"], 3)
                if protocol == "report"
                else ", ".join(sorted({_fmt(c, 3) for c in v["loso_constants"].values()}))
            )
            cells = [f"{_fmt(rows[n]['spearman'])} / {_fmt(rows[n]['regret'])}" for n in scored]
            rho = _nanmean([rows[n]["spearman"] for n in scored])
            reg = float(np.mean([rows[n]["regret"] for n in scored]))
            rho_l = _nanmean([loss[n]["spearman"] for n in scored])
            reg_l = float(np.mean([loss[n]["regret"] for n in scored]))
            worst = max(rows[n]["regret"] - loss[n]["regret"] for n in scored)
            early = _nanmean([rows[n]["early"] for n in scored])
            early_l = _nanmean([loss[n]["early"] for n in scored])
            print(
                f"| {family} | {const} | "
                + " | ".join(cells)
                + f" | {_fmt(rho)} ({_fmt(rho_l)}) | {_fmt(reg)} ({_fmt(reg_l)}) | {_fmt(worst)}"
                + f" | {_fmt(early)} ({_fmt(early_l)}) |"
            )

    print("\n## The floor: epochs reading <= -200 dB (impulse / smoothed gain)\n")
    print("| set-up | model | loss finite and falling: epochs | floor | working: epochs | floor |")
    print("|---|---|---|---|---|---|")
    for r in summary["floor"]:
        f, w = r["falling"], r["working"]
        print(
            f"| {r['setup']} | {r['model']} | {f[0]} | {f[1]} / {f[2]} | {w[0]} | {w[1]} / {w[2]} |"
        )

    print("\n## Pruning replayed (chosen by final training loss): epochs used / regret\n")
    ways = list(next(iter(summary["pruning"].values())))
    print("| set-up | " + " | ".join(ways) + " |")
    print("|---" * (len(ways) + 1) + "|")
    for n, row in summary["pruning"].items():
        print(
            f"| {n} | "
            + " | ".join(f"{100 * row[w]['epochs']:.0f} % / {_fmt(row[w]['regret'])}" for w in ways)
            + " |"
        )
    means = {
        w: (
            np.mean([r[w]["epochs"] for r in summary["pruning"].values()]),
            np.mean([r[w]["regret"] for r in summary["pruning"].values()]),
        )
        for w in ways
    }
    print(
        "| mean | " + " | ".join(f"{100 * e:.0f} % / {_fmt(r)}" for e, r in means.values()) + " |"
    )
    print("\n## Which rule pruned, in the replay (all set-ups, order 0)\n")
    for w in ways:
        counts: dict[str, int] = {}
        for row in summary["pruning"].values():
            for rule, k in row[w].get("rules", {}).items():
                counts[rule] = counts.get(rule, 0) + k
        print(f"- {w}: " + (", ".join(f"{r} {k}" for r, k in sorted(counts.items())) or "none"))
    orders = summary.get("pruning_orders", {})
    if orders:
        print(
            f"\n## Epochs trained over {PRUNING_ORDERS} random trial orders (mean of the set-ups;"
            " mean ± sd over orders, min-max)\n"
        )
        for w, v in orders.items():
            counts = ", ".join(f"{r} {k}" for r, k in sorted(v.get("rules", {}).items()))
            print(
                f"- {w}: {100 * v['mean']:.1f} % ± {100 * v['sd']:.1f} "
                f"({100 * min(v['per_order']):.1f}-{100 * max(v['per_order']):.1f}); "
                f"pruned by: {counts or 'none'}"
            )

    print("\n## Diagnosis agreement with the test-curve ground truth\n")
    total = [0, 0]
    cells = []
    for n, (a, t) in summary["diagnosis"].items():
        cells.append(f"{n}: {a}/{t}")
        total[0] += a
        total[1] += t
    print(
        ", ".join(cells)
        + f"; all: {total[0]}/{total[1]} = {100 * total[0] / max(1, total[1]):.1f} %"
    )


if __name__ == "__main__":
    print_all(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT)

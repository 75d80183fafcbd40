"""Trials per minute of the Ray back end with 1 and 2 concurrent trials on this machine.

    python benchmarks/ray_scaling.py [--spec search_spaces/digits_lr.yaml] [--trials 8]

Runs the same search (same TPE seed, pruning off so every trial does the same work) twice on a
local Ray, once with ``max_concurrent=1`` and once with 2, and prints trials per minute and the
ratio. Each trial reserves one CPU; torch runs one thread per trial.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from gainsearch.search.run_ray import run_tuner
from gainsearch.search.spaces import load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=ROOT / "search_spaces" / "digits_lr.yaml")
    parser.add_argument("--trials", type=int, default=8)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread per trial, in every Ray worker
    spec = load_spec(args.spec)
    spec = parse_spec({**spec.to_dict(), "pruner": {**spec.to_dict()["pruner"], "type": "none"}})
    rates = {}
    for concurrent in (1, 2):
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            outcome = run_tuner(spec, out_dir=out, n_trials=args.trials, max_concurrent=concurrent)
            minutes = (time.perf_counter() - start) / 60
        done = sum(r.state in ("complete", "pruned") for r in outcome.rows)
        rates[concurrent] = done / minutes
        print(
            f"max_concurrent={concurrent}: {done} trials in {60 * minutes:.1f} s = "
            f"{rates[concurrent]:.1f} trials/min (Ray start-up included)"
        )
    print(f"speed-up with 2 concurrent trials: {rates[2] / rates[1]:.2f}x on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()

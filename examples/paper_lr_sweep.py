"""The paper's MNIST LeNet learning-rate sweep, reproduced on mnist5k.

    python examples/paper_lr_sweep.py [--data-root ../shared/data/mnist5k] [--epochs 20]
                                      [--out runs/paper]

Trains the paper's LeNet (``lenet_mnist``, SGD with momentum 0.9, batch 64) on all 4,000 mnist5k
training images at a reference rate of 0.01 times and divided by factors from 1/100 to 30,
measuring the paper's winner-class Maximum Gain after every epoch. Writes
``lr_sweep_curves.png`` (gain and training loss, coloured by learning rate),
``lr_sweep_test.png`` (test accuracy per epoch, evaluation only: nothing chose anything from it)
and ``lr_sweep.json`` (every curve with its diagnosis against the other rates as peers).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gainsearch import load_dataset, train_trial
from gainsearch.report import RunData, write_sweep

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_LR = 0.01
FACTORS = (1 / 100, 1 / 30, 1 / 10, 1 / 3, 1, 3, 10, 30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data" / "mnist5k"))
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "runs" / "paper",
        help="where the figures go (docs/figures: the committed ones)",
    )
    args = parser.parse_args()
    data = load_dataset("mnist", args.data_root)
    results = []
    for factor in FACTORS:
        config = {
            "dataset": "mnist",
            "data_root": args.data_root,
            "model": "lenet_mnist",
            "epochs": args.epochs,
            "lr": REFERENCE_LR * factor,
            "gain_target": "winner",  # the paper's measurement
            "eval_test": True,  # evaluation only
        }
        results.append(train_trial(config, data=data))
    run = RunData.from_results(results, ["lr"], source="examples/paper_lr_sweep.py")
    for line in write_sweep(run, args.out, "lr_sweep"):
        print(line)
    print(f"figures: {args.out}/lr_sweep_curves.png, {args.out}/lr_sweep_test.png")


if __name__ == "__main__":
    main()

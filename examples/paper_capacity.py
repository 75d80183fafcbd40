"""The paper's model-capacity experiment: narrower and wider LeNets on mnist5k.

    python examples/paper_capacity.py [--data-root ../shared/data/mnist5k] [--epochs 15]
                                      [--lr 0.01] [--out runs/paper]

Trains ``lenet_mnist`` with every hidden channel count multiplied by 1/8, 1/4, 1/2, 1 and 2 (the
``width`` knob; SGD with momentum 0.9, one learning rate for all) on all 4,000 mnist5k training
images, measuring the paper's winner-class Maximum Gain after every epoch. Writes
``capacity_curves.png`` (gain and training loss, coloured by width), ``capacity_test.png``
(test accuracy per epoch, evaluation only) and ``capacity.json`` (the curves and diagnoses).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gainsearch import load_dataset, train_trial
from gainsearch.report import RunData, write_sweep

ROOT = Path(__file__).resolve().parents[1]
WIDTHS = (0.125, 0.25, 0.5, 1.0, 2.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data" / "mnist5k"))
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "runs" / "paper",
        help="where the figures go (docs/figures: the committed ones)",
    )
    args = parser.parse_args()
    data = load_dataset("mnist", args.data_root)
    results = []
    for width in WIDTHS:
        config = {
            "dataset": "mnist",
            "data_root": args.data_root,
            "model": "lenet_mnist",
            "width": width,
            "epochs": args.epochs,
            "lr": args.lr,
            "gain_target": "winner",  # the paper's measurement
            "eval_test": True,  # evaluation only
        }
        results.append(train_trial(config, data=data))
    run = RunData.from_results(results, ["width"], source="examples/paper_capacity.py")
    run.log_params = {"width"}
    for line in write_sweep(run, args.out, "capacity"):
        print(line)
    print(f"figures: {args.out}/capacity_curves.png, {args.out}/capacity_test.png")


if __name__ == "__main__":
    main()

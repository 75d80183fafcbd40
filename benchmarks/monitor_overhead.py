"""Cost of one gain measurement as a fraction of one training epoch (the paper's MNIST LeNet).

    python benchmarks/monitor_overhead.py [--data-root ../shared/data/mnist5k] [--repeats 50]

Trains one epoch of ``lenet_mnist`` on mnist5k (SGD, batch 64), then times the winner and the
all-class Maximum Gain ``--repeats`` times each, all in this one run, and prints the median
times and their ratio to the epoch. Targets: < 0.5 % (winner) and < 2 % (all classes).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from gainsearch import create_model, load_dataset, maximum_gain
from gainsearch.train import TrainConfig, _make_optimizer, _train_epoch

DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist5k"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=3, help="epochs timed (median taken)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    data = load_dataset("mnist", args.data_root)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = create_model("lenet_mnist", data.in_shape, data.num_classes).to(device)
    config = TrainConfig(dataset="mnist", model="lenet_mnist", lr=0.01, batch_size=64)
    optimizer = _make_optimizer(config, model)
    generator = torch.Generator().manual_seed(0)
    x, y = data.x_train.to(device), data.y_train.to(device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    epoch_times = []
    for _ in range(args.epochs):
        sync()
        start = time.perf_counter()
        _train_epoch(model, optimizer, x, y, config, generator)
        sync()
        epoch_times.append(time.perf_counter() - start)
    epoch = statistics.median(epoch_times)

    def time_gain(target: str) -> float:
        maximum_gain(model, in_shape=data.in_shape, target=target)  # warm-up
        times = []
        for _ in range(args.repeats):
            sync()
            start = time.perf_counter()
            maximum_gain(model, in_shape=data.in_shape, target=target)
            sync()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    winner, every = time_gain("winner"), time_gain("all")
    print(f"device: {device}, torch threads: {torch.get_num_threads()}")
    print(f"training epoch (lenet_mnist, {len(x)} images, batch 64): {epoch * 1e3:.1f} ms")
    print(
        f"gain, winner class:  {winner * 1e3:.3f} ms = {100 * winner / epoch:.3f} % of an epoch "
        "(target < 0.5 %)"
    )
    print(
        f"gain, all classes:   {every * 1e3:.3f} ms = {100 * every / epoch:.3f} % of an epoch "
        "(target < 2 %)"
    )


if __name__ == "__main__":
    main()

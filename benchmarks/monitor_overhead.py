"""Cost of one gain measurement, and of each stopping signal, as a fraction of one epoch.

    python benchmarks/monitor_overhead.py [--data-root ../shared/data/mnist5k] [--repeats 50]
    python benchmarks/monitor_overhead.py --scale [--device cuda]

Default: trains one epoch of ``lenet_mnist`` on mnist5k (SGD, batch 64), then times the winner
and the all-class Maximum Gain ``--repeats`` times each, all in this one run, and prints the
median times and their ratio to the epoch. Targets: < 0.5 % (winner) and < 2 % (all classes).
Then the stopping signals (``gainsearch.core.signals``), each against the same epoch: prediction
changes (what the trainer adds: each batch's argmax written into the epoch's buffer, and the
count against the previous epoch; median of ``--repeats``), gradient disparity (5 batches of
64, median of ``--repeats // 5``) and the gain's variability and trend (of a 30-epoch curve).
Target: each default signal below 2 % of an epoch (gradient disparity is not a default).

``--scale``: the all-class gain of networks people train at scale, on random weights and inputs,
against one epoch of the matching data set size, estimated from timed training steps (SGD, one
warm-up step, then the median of ``--steps``):

* ``resnet18`` (CIFAR variant) at 32x32, K = 10 and K = 100, against 50,000 images (batch 128);
* an ImageNet ResNet-18 (7x7 stride-2 stem, max-pool, 11.7 M parameters) at 224x224,
  K = 1000, against 1.28 M images (batch 32); its K probe copies go in chunks of 64.

One probe copy costs about one training image's forward and backward pass, so the all-class
gain is about K / N of an epoch. Target: below 1 % of an epoch.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from gainsearch import create_model, load_dataset, maximum_gain
from gainsearch.batteries.train import TrainConfig, make_optimizer, train_epoch

DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist5k"


def imagenet_resnet18(num_classes: int = 1000) -> torch.nn.Module:
    """ResNet-18 as torchvision builds it (7x7/2 stem, 3x3/2 max-pool, 4 stages of 2 blocks)."""
    from torch import nn

    from gainsearch.batteries.models import BasicBlock

    layers: list[nn.Module] = [
        nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.MaxPool2d(3, stride=2, padding=1),
    ]
    cin = 64
    for i, cout in enumerate((64, 128, 256, 512)):
        for j in range(2):
            layers.append(BasicBlock(cin, cout, 2 if (i > 0 and j == 0) else 1))
            cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes)]
    return nn.Sequential(*layers)


def _train_step(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor
) -> None:
    optimizer.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()


def scale(device: torch.device, steps: int) -> None:
    """The ``--scale`` table (module docstring)."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def timed(fn: Callable[[], object], repeats: int) -> float:
        fn()  # warm-up
        times = []
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    cases = [
        ("resnet18 (CIFAR) 32x32", (3, 32, 32), 10, 50_000, 128, 64 * 4),
        ("resnet18 (CIFAR) 32x32", (3, 32, 32), 100, 50_000, 128, 64 * 4),
        ("ResNet-18 (ImageNet) 224x224", (3, 224, 224), 1000, 1_281_167, 32, 64),
    ]
    print(f"device: {device}, torch threads: {torch.get_num_threads()}")
    print("| network | K | gain, all classes | training step (batch) | epoch (N images) | share |")
    print("|---|---|---|---|---|---|")
    for name, shape, k, n, batch, chunk in cases:
        torch.manual_seed(0)
        model = (
            imagenet_resnet18(k) if shape[1] == 224 else create_model("resnet18", shape, k)
        ).to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        x = torch.randn(batch, *shape, device=device)
        y = torch.randint(0, k, (batch,), device=device)

        step_s = timed(functools.partial(_train_step, model, optimizer, x, y), steps)
        epoch_s = step_s * n / batch
        gain_s = timed(
            functools.partial(maximum_gain, model, in_shape=shape, target="all", max_batch=chunk),
            1 if shape[1] == 224 else 3,
        )
        print(
            f"| {name} | {k} | {gain_s:.2f} s | {step_s * 1e3:.0f} ms ({batch}) | "
            f"{epoch_s / 60:.1f} min ({n:,}) | {100 * gain_s / epoch_s:.3f} % |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=3, help="epochs timed (median taken)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--scale", action="store_true", help="resnet18 at K = 10, 100, 1000")
    parser.add_argument("--steps", type=int, default=3, help="training steps timed (--scale)")
    args = parser.parse_args()
    if args.scale:
        scale(torch.device(args.device), args.steps)
        return

    data = load_dataset("mnist", args.data_root)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = create_model("lenet_mnist", data.in_shape, data.num_classes).to(device)
    config = TrainConfig(dataset="mnist", model="lenet_mnist", lr=0.01, batch_size=64)
    optimizer = make_optimizer(config, model)
    generator = torch.Generator().manual_seed(0)
    x, y = data.x_train.to(device), data.y_train.to(device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    epoch_times = []
    for _ in range(args.epochs):
        sync()
        start = time.perf_counter()
        train_epoch(model, optimizer, x, y, config, generator)
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

    # the stopping signals
    import numpy as np

    from gainsearch.batteries.train import measure_disparity
    from gainsearch.core.signals import gain_trend, gain_variability, prediction_changes

    # prediction changes: what the trainer adds per batch (the argmax of the batch's logits
    # written into the epoch's prediction buffer) and per epoch (the count against the last
    # epoch's), timed directly: an epoch-with against an epoch-without differs by less than
    # the epochs' own spread
    predictions = torch.full((len(x),), -1, dtype=torch.long, device=device)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0)).to(device)
    batches = [order[i : i + config.batch_size] for i in range(0, len(x), config.batch_size)]
    with torch.no_grad():
        logits = [model(x[idx]) for idx in batches]
    previous = predictions.cpu().numpy().copy()
    change_times = []
    for _ in range(args.repeats):
        sync()
        start = time.perf_counter()
        predictions.fill_(-1)
        for idx, out in zip(batches, logits, strict=True):
            predictions[idx] = out.argmax(dim=1)
        now = predictions.cpu().numpy().copy()
        prediction_changes(previous, now)
        sync()
        change_times.append(time.perf_counter() - start)
    changes_s = statistics.median(change_times)
    disparity_times = []
    for i in range(max(1, args.repeats // 5)):
        sync()
        start = time.perf_counter()
        measure_disparity(model, x, y, config, i)
        sync()
        disparity_times.append(time.perf_counter() - start)
    disparity_s = statistics.median(disparity_times)
    curve = np.cumsum(np.random.default_rng(0).normal(size=30))
    start = time.perf_counter()
    for _ in range(100):
        gain_variability(curve)
        gain_trend(curve)
    curve_s = (time.perf_counter() - start) / 100
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
    print(
        f"prediction_changes:  {changes_s * 1e3:.3f} ms = {100 * changes_s / epoch:.3f} % of an "
        f"epoch ({len(batches)} batches' argmax and the epoch's count; target < 2 %)"
    )
    print(
        f"gradient_disparity:  {disparity_s * 1e3:.3f} ms = {100 * disparity_s / epoch:.3f} % "
        "of an epoch (5 batches of 64; not a default signal)"
    )
    print(
        f"gain_variability + gain_trend: {curve_s * 1e3:.3f} ms = {100 * curve_s / epoch:.4f} % of "
        "an epoch (target < 2 %)"
    )


if __name__ == "__main__":
    main()

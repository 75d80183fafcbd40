"""Images per second of the trainer (monitor included) against a plain PyTorch loop.

    python benchmarks/throughput.py --device cuda [--precision bf16] [--channels-last]
    python benchmarks/throughput.py --device cpu --images 1024 --width 0.25   # smoke run

Both train ``resnet18`` (CIFAR variant) on the same random 3x32x32 images (``--images``, 10
classes) with SGD (momentum 0.9, batch ``--batch-size``), the same precision and memory format,
for ``--epochs`` epochs; the first epoch is a warm-up and the median of the others is taken. The
trainer's epoch time includes its per-epoch gain measurement (all classes). Target on CUDA: the
trainer reaches at least 90 % of the plain loop's images per second.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from gainsearch.batteries.data import TensorData
from gainsearch.batteries.models import create_model
from gainsearch.batteries.train import TrainConfig, train_trial


def plain_loop(data: TensorData, cfg: TrainConfig, epochs: int) -> list[float]:
    """Seconds per epoch of the loop a user would write by hand."""
    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model, data.in_shape, data.num_classes, width=cfg.width).to(device)
    memory = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory)  # type: ignore[call-overload]
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    dtype = {"bf16": torch.bfloat16, "16": torch.float16}.get(cfg.precision)
    scaler = torch.amp.GradScaler(device.type) if cfg.precision == "16" else None
    x, y = data.x_train.to(device), data.y_train.to(device)
    times = []
    for _ in range(epochs):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        model.train()
        for idx in torch.randperm(len(x), device=device).split(cfg.batch_size):
            xb = x[idx].contiguous(memory_format=memory)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = F.cross_entropy(model(xb), y[idx])
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
        float(loss.detach())  # one sync per epoch, as the trainer
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--precision", default="32", choices=["32", "bf16", "16"])
    parser.add_argument("--channels-last", action="store_true")
    args = parser.parse_args()

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.images, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (args.images,), generator=gen)
    data = TensorData("cifar10", x, y, x[:256], y[:256], 10, (0.0,) * 3, (1.0,) * 3)
    cfg = TrainConfig(
        dataset="cifar10",
        model="resnet18",
        width=args.width,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=0.01,
        device=args.device,
        precision=args.precision,
        channels_last=args.channels_last,
    )
    plain = statistics.median(plain_loop(data, cfg, args.epochs)[1:])
    result = train_trial(cfg, data=data)
    ours = statistics.median(r["seconds"] for r in result.history[1:])
    print(
        f"device {args.device}, resnet18 width {args.width}, {args.images} images, batch "
        f"{args.batch_size}, precision {args.precision}, channels_last {args.channels_last}"
    )
    print(f"plain PyTorch loop: {args.images / plain:,.0f} images/s ({plain:.2f} s/epoch)")
    print(
        f"gainsearch trainer: {args.images / ours:,.0f} images/s ({ours:.2f} s/epoch, gain incl.)"
    )
    print(f"ratio: {100 * plain / ours:.1f} % (target on CUDA: >= 90 %)")


if __name__ == "__main__":
    main()

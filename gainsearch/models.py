"""Model registry: ``create_model(name, in_shape, num_classes, width=1.0)``.

===================  =====================================================================
name                 architecture
===================  =====================================================================
``lenet_mnist``      the paper's MNIST LeNet (MatConvNet's ``cnn_mnist`` net): conv5-20,
                     max-pool, conv5-50, max-pool, conv-500 (kernel = remaining size), relu,
                     fully-connected. 3 conv + 1 FC, 2 max-pool, 1 relu.
``lenet_cifar``      the paper's larger CIFAR-10 LeNet: 4 conv (32, 32, 64, 64 channels),
                     2 max-pool, 2 average-pool, 4 relu, 1 fully-connected.
``nin``              Network in Network (Lin et al. 2014): three mlpconv blocks
                     (192-160-96, 192-192-192, 192-192-K), global average pooling, no FC.
``digits_cnn``       small CNN for 8x8 digits: conv3-16, relu, max-pool, conv3-32, relu,
                     max-pool, FC.
``digits_lenet``     the paper's LeNet structure scaled to 8x8: conv3-20, max-pool, conv3-50,
                     max-pool, conv-500 (kernel = remaining size), relu, FC.
===================  =====================================================================

``width`` multiplies every hidden channel count (rounded, at least 1): the capacity knob of the
paper's model-capacity experiment.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from torch import nn

from gainsearch.spectral import _check_in_shape

__all__ = ["MODELS", "create_model", "list_models", "register_model"]

ModelFactory = Callable[..., nn.Module]

#: Registered factories: ``factory(in_shape, num_classes, width, **kwargs) -> nn.Module``.
MODELS: dict[str, ModelFactory] = {}


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator adding a factory ``f(in_shape, num_classes, width, **kw)`` to the registry."""

    def decorate(factory: ModelFactory) -> ModelFactory:
        if name in MODELS:
            raise ValueError(f"model name {name!r} is already registered.")
        MODELS[name] = factory
        return factory

    return decorate


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(MODELS)


def create_model(
    name: str,
    in_shape: Sequence[int],
    num_classes: int,
    *,
    width: float = 1.0,
    **kwargs: object,
) -> nn.Module:
    """Build a registered model.

    Args:
        name: One of :func:`list_models`.
        in_shape: ``(C, H, W)`` of the input images.
        num_classes: Number of output logits ``K``.
        width: Channel multiplier (> 0).
        **kwargs: Passed to the factory (e.g. ``dropout`` for ``nin``).

    Raises:
        ValueError: unknown name, bad shape, class count or width, or an input too small for the
            architecture.
    """
    if name not in MODELS:
        raise ValueError(f"Unknown model {name!r}; available models are {list_models()}.")
    shape = _check_in_shape(in_shape)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(
            f"num_classes must be an integer >= 2, but got num_classes={num_classes!r}."
        )
    if not (isinstance(width, (int, float)) and math.isfinite(width) and width > 0):
        raise ValueError(f"width must be a positive number, but got width={width!r}.")
    return MODELS[name](shape, num_classes, float(width), **kwargs)


def _ch(base: int, width: float) -> int:
    return max(1, round(base * width))


def _after(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _require(name: str, ok: bool, in_shape: tuple[int, int, int], minimum: str) -> None:
    if not ok:
        raise ValueError(
            f"model {name!r} needs inputs of at least {minimum}, but got in_shape={in_shape}."
        )


@register_model("lenet_mnist")
def _lenet_mnist(in_shape: tuple[int, int, int], num_classes: int, width: float) -> nn.Module:
    c, h, w = in_shape
    _require("lenet_mnist", min(h, w) >= 16, in_shape, "16x16 pixels (the paper uses 28x28)")
    h3, w3 = (_after(_after(_after(_after(s, 5), 2, 2), 5), 2, 2) for s in (h, w))
    c1, c2, c3 = _ch(20, width), _ch(50, width), _ch(500, width)
    return nn.Sequential(
        nn.Conv2d(c, c1, 5),  # (N, 20, H-4, W-4)
        nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 5),
        nn.MaxPool2d(2),  # (N, 50, h3, w3): 4x4 for 28x28
        nn.Conv2d(c2, c3, (h3, w3)),  # (N, 500, 1, 1)
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(c3, num_classes),
    )


@register_model("digits_lenet")
def _digits_lenet(in_shape: tuple[int, int, int], num_classes: int, width: float) -> nn.Module:
    c, h, w = in_shape
    _require("digits_lenet", min(h, w) >= 4, in_shape, "4x4 pixels")
    h3, w3 = (s // 2 // 2 for s in (h, w))
    c1, c2, c3 = _ch(20, width), _ch(50, width), _ch(500, width)
    return nn.Sequential(
        nn.Conv2d(c, c1, 3, padding=1),
        nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 3, padding=1),
        nn.MaxPool2d(2),  # (N, 50, 2, 2) for 8x8
        nn.Conv2d(c2, c3, (h3, w3)),  # (N, 500, 1, 1)
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(c3, num_classes),
    )


@register_model("digits_cnn")
def _digits_cnn(in_shape: tuple[int, int, int], num_classes: int, width: float) -> nn.Module:
    c, h, w = in_shape
    _require("digits_cnn", min(h, w) >= 4, in_shape, "4x4 pixels")
    c1, c2 = _ch(16, width), _ch(32, width)
    return nn.Sequential(
        nn.Conv2d(c, c1, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),  # (N, 32, H/4, W/4)
        nn.Flatten(),
        nn.Linear(c2 * (h // 4) * (w // 4), num_classes),
    )


@register_model("lenet_cifar")
def _lenet_cifar(in_shape: tuple[int, int, int], num_classes: int, width: float) -> nn.Module:
    c, h, w = in_shape
    _require("lenet_cifar", min(h, w) >= 16, in_shape, "16x16 pixels (the paper uses 32x32)")
    c1, c2, c3, c4 = _ch(32, width), _ch(32, width), _ch(64, width), _ch(64, width)
    return nn.Sequential(
        nn.Conv2d(c, c1, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(3, stride=2, padding=1),  # 32 -> 16
        nn.Conv2d(c1, c2, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(3, stride=2, padding=1),  # 16 -> 8
        nn.Conv2d(c2, c3, 5, padding=2),
        nn.ReLU(),
        nn.AvgPool2d(3, stride=2, padding=1),  # 8 -> 4
        nn.Conv2d(c3, c4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),  # global average: (N, 64, 1, 1)
        nn.Flatten(),
        nn.Linear(c4, num_classes),
    )


@register_model("nin")
def _nin(
    in_shape: tuple[int, int, int], num_classes: int, width: float, dropout: float = 0.5
) -> nn.Module:
    c, h, w = in_shape
    _require("nin", min(h, w) >= 8, in_shape, "8x8 pixels (the paper uses 32x32)")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be in [0, 1), but got dropout={dropout!r}.")
    a, b, d = _ch(192, width), _ch(160, width), _ch(96, width)

    def mlpconv(cin: int, cout: int, kernel: int, hidden: Sequence[int]) -> list[nn.Module]:
        layers: list[nn.Module] = [
            nn.Conv2d(cin, hidden[0], kernel, padding=kernel // 2),
            nn.ReLU(),
        ]
        layers += [nn.Conv2d(hidden[0], hidden[1], 1), nn.ReLU()]
        layers += [nn.Conv2d(hidden[1], cout, 1), nn.ReLU()]
        return layers

    return nn.Sequential(
        *mlpconv(c, d, 5, (a, b)),
        nn.MaxPool2d(3, stride=2, padding=1),
        nn.Dropout(dropout),
        *mlpconv(d, a, 5, (a, a)),
        nn.AvgPool2d(3, stride=2, padding=1),
        nn.Dropout(dropout),
        *mlpconv(a, num_classes, 3, (a, a))[:-1],  # last 1x1 conv gives the K class maps
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),  # (N, K)
    )

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
``resnet20``         the CIFAR ResNet of He et al. (2016): 3x3 stem (16), three stages of three
                     BasicBlocks (16, 32, 64 channels, stride 2 between stages), BatchNorm,
                     global average pooling, FC. 0.27 M parameters at width 1.
``resnet18``         the CIFAR variant of ResNet-18: 3x3 stem (64), no stem max-pool, four stages
                     of two BasicBlocks (64, 128, 256, 512). 11.2 M parameters at width 1.
``vgg11_bn``         VGG-11 with BatchNorm (Simonyan & Zisserman; 64-M-128-M-256-256-M-512-512-M-
                     512-512-M), a max-pool skipped once the feature map is 1 pixel, global
                     average pooling, one FC layer. 9.2 M parameters at width 1.
===================  =====================================================================

``width`` multiplies every hidden channel count (rounded, at least 1): the capacity knob of the
paper's model-capacity experiment. ``dropout`` (a probability in [0, 1)) is applied before the
final fully-connected layer of every model that has one (default 0: no dropout layer); ``nin`` has
its own two dropout layers (default 0.5).

A user's own model is named by its import path, ``"mypkg.nets:build"``: a callable taking
``in_shape`` (``(C, H, W)``), ``num_classes`` and the spec's ``model_args`` as keyword arguments,
returning an ``nn.Module`` whose output is ``(N, num_classes)`` logits. The module must be
importable wherever trials run (on a Ray cluster: on every worker, e.g. installed as a package
or shipped with ``runtime_env``).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from gainsearch.core.spectral import check_in_shape

__all__ = ["MODELS", "check_model_name", "create_model", "list_models", "register_model"]

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
    """Build a registered model, or a user's own from its import path ``"module:callable"``.

    Args:
        name: One of :func:`list_models`, or ``"module.path:callable"``.
        in_shape: ``(C, H, W)`` of the input images.
        num_classes: Number of output logits ``K``.
        width: Channel multiplier (> 0); registry models only.
        **kwargs: Passed to the factory (e.g. ``dropout``; a user's ``model_args``).

    Raises:
        ValueError: unknown name, a module that cannot be imported or lacks the callable, a
            callable that does not return an ``nn.Module`` of ``(N, K)`` logits, bad shape, class
            count or width, or an input too small for the architecture.
    """
    check_model_name(name)
    shape = check_in_shape(in_shape)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(
            f"num_classes must be an integer >= 2, but got num_classes={num_classes!r}."
        )
    if not (isinstance(width, (int, float)) and math.isfinite(width) and width > 0):
        raise ValueError(f"width must be a positive number, but got width={width!r}.")
    if ":" in name:
        return _own_model(name, shape, num_classes, kwargs)
    dropout = kwargs.get("dropout", 0.0)
    if not (isinstance(dropout, (int, float)) and 0.0 <= float(dropout) < 1.0):
        raise ValueError(f"dropout must be in [0, 1), but got dropout={dropout!r}.")
    return MODELS[name](shape, num_classes, float(width), **kwargs)


def check_model_name(name: object) -> None:
    """Raise ``ValueError`` unless ``name`` is registered or an importable ``"module:callable"``."""
    if not isinstance(name, str):
        raise ValueError(f"model must be a string, but got model={name!r}.")
    if ":" in name:
        _resolve_callable(name)
    elif name not in MODELS:
        raise ValueError(
            f"Unknown model {name!r}; available models are {list_models()}, or an import path "
            "'module:callable' of your own."
        )


def _resolve_callable(path: str) -> Callable[..., object]:
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ValueError(
            f"model {path!r} is not an import path: expected 'module.path:callable', e.g. "
            "'mynets:build'."
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(
            f"model {path!r}: module {module_name!r} cannot be imported ({err}); it must be "
            "importable where trials run (on the path, or installed)."
        ) from err
    target: object = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ValueError(f"model {path!r}: module {module_name!r} has no attribute {attr!r}.")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"model {path!r}: {attr!r} is not callable.")
    return target


def _own_model(
    path: str, in_shape: tuple[int, int, int], num_classes: int, kwargs: Mapping[str, object]
) -> nn.Module:
    build = _resolve_callable(path)
    try:
        model = build(in_shape=in_shape, num_classes=num_classes, **kwargs)
    except TypeError as err:
        raise ValueError(
            f"model {path!r} must accept in_shape, num_classes and the model_args "
            f"{sorted(kwargs)} as keyword arguments ({err})."
        ) from err
    if not isinstance(model, nn.Module):
        raise ValueError(
            f"model {path!r} must return a torch.nn.Module, but returned {type(model).__name__}."
        )
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, *in_shape))
    except Exception as err:  # the user's forward failed on an input of the data's shape
        raise ValueError(
            f"model {path!r} failed on an input of shape (2, {', '.join(map(str, in_shape))}): "
            f"{type(err).__name__}: {err}"
        ) from err
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            f"model {path!r} must return logits of shape (N, {num_classes}) = (N, num_classes), "
            f"but returned {shape} for N=2."
        )
    return model


def _head(features: int, num_classes: int, dropout: float) -> list[nn.Module]:
    """The classifier head: ``[Dropout(p)] + Linear`` (no dropout layer when ``p`` is 0, so the
    state-dict keys of the plain models stay as they were)."""
    drop: list[nn.Module] = [nn.Dropout(dropout)] if dropout > 0 else []
    return [*drop, nn.Linear(features, num_classes)]


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
def _lenet_mnist(
    in_shape: tuple[int, int, int], num_classes: int, width: float, dropout: float = 0.0
) -> nn.Module:
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
        *_head(c3, num_classes, dropout),
    )


@register_model("digits_lenet")
def _digits_lenet(
    in_shape: tuple[int, int, int], num_classes: int, width: float, dropout: float = 0.0
) -> nn.Module:
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
        *_head(c3, num_classes, dropout),
    )


@register_model("digits_cnn")
def _digits_cnn(
    in_shape: tuple[int, int, int], num_classes: int, width: float, dropout: float = 0.0
) -> nn.Module:
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
        *_head(c2 * (h // 4) * (w // 4), num_classes, dropout),
    )


@register_model("lenet_cifar")
def _lenet_cifar(
    in_shape: tuple[int, int, int], num_classes: int, width: float, dropout: float = 0.0
) -> nn.Module:
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
        *_head(c4, num_classes, dropout),
    )


@register_model("nin")
def _nin(
    in_shape: tuple[int, int, int], num_classes: int, width: float, dropout: float = 0.5
) -> nn.Module:
    c, h, w = in_shape
    _require("nin", min(h, w) >= 8, in_shape, "8x8 pixels (the paper uses 32x32)")
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


# --------------------------------------------------------------------------------------------
# BatchNorm networks: ResNets (He et al. 2016, CIFAR variants) and VGG-11 with BatchNorm


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 conv-BN projection) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


def _resnet(
    in_shape: tuple[int, int, int],
    num_classes: int,
    width: float,
    stages: Sequence[tuple[int, int]],
    dropout: float,
) -> nn.Module:
    """3x3 conv-BN-ReLU stem, ``stages`` of (channels, blocks) with stride 2 between stages,
    global average pooling, head."""
    c = in_shape[0]
    stem = _ch(stages[0][0], width)
    layers: list[nn.Module] = [
        nn.Conv2d(c, stem, 3, padding=1, bias=False),
        nn.BatchNorm2d(stem),
        nn.ReLU(),
    ]
    cin = stem
    for i, (base, blocks) in enumerate(stages):
        cout = _ch(base, width)
        for j in range(blocks):
            layers.append(BasicBlock(cin, cout, 2 if (i > 0 and j == 0) else 1))
            cin = cout
    return nn.Sequential(
        *layers,
        nn.AdaptiveAvgPool2d(1),  # (N, C, 1, 1)
        nn.Flatten(),
        *_head(cin, num_classes, dropout),
    )


@register_model("resnet20")
def _resnet20(
    in_shape: tuple[int, int, int], num_classes: int, width: float, dropout: float = 0.0
) -> nn.Module:
    _require("resnet20", min(in_shape[1:]) >= 4, in_shape, "4x4 pixels (He et al. use 32x32)")
    return _resnet(in_shape, num_classes, width, [(16, 3), (32, 3), (64, 3)], dropout)


@register_model("resnet18")
def _resnet18(
    in_shape: tuple[int, int, int], num_classes: int, width: float, dropout: float = 0.0
) -> nn.Module:
    _require("resnet18", min(in_shape[1:]) >= 8, in_shape, "8x8 pixels (CIFAR uses 32x32)")
    return _resnet(in_shape, num_classes, width, [(64, 2), (128, 2), (256, 2), (512, 2)], dropout)


@register_model("vgg11_bn")
def _vgg11_bn(
    in_shape: tuple[int, int, int], num_classes: int, width: float, dropout: float = 0.0
) -> nn.Module:
    c, h, w = in_shape
    _require("vgg11_bn", min(h, w) >= 4, in_shape, "4x4 pixels (VGG uses 32x32 on CIFAR)")
    layers: list[nn.Module] = []
    cin, size = c, min(h, w)
    for item in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"):
        if item == "M":
            if size >= 2:  # 28x28 inputs reach 1 pixel after four pools: skip the fifth
                layers.append(nn.MaxPool2d(2))
                size //= 2
            continue
        cout = _ch(int(item), width)
        layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
        cin = cout
    return nn.Sequential(
        *layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), *_head(cin, num_classes, dropout)
    )

"""Model registry: shapes, width multiplier, clear errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gainsearch.models import create_model, list_models, register_model


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("name", "in_shape"),
    [
        ("lenet_mnist", (1, 28, 28)),
        ("lenet_cifar", (3, 32, 32)),
        ("nin", (3, 32, 32)),
        ("digits_cnn", (1, 8, 8)),
        ("digits_lenet", (1, 8, 8)),
    ],
)
def test_forward_shape(name: str, in_shape: tuple[int, int, int]) -> None:
    model = create_model(name, in_shape, 10)
    assert model(torch.zeros(2, *in_shape)).shape == (2, 10)
    wide = create_model(name, in_shape, 10, width=2.0)
    assert n_params(wide) > n_params(model)
    assert wide(torch.zeros(1, *in_shape)).shape == (1, 10)


def test_lenet_mnist_is_the_papers_net() -> None:
    layers = list(create_model("lenet_mnist", (1, 28, 28), 10))
    kinds = [type(m).__name__ for m in layers]
    assert kinds.count("Conv2d") == 3 and kinds.count("Linear") == 1
    assert kinds.count("MaxPool2d") == 2 and kinds.count("ReLU") == 1
    convs = [m for m in layers if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [20, 50, 500]
    assert convs[2].kernel_size == (4, 4)


def test_lenet_cifar_layer_counts() -> None:
    kinds = [type(m).__name__ for m in create_model("lenet_cifar", (3, 32, 32), 10)]
    assert kinds.count("Conv2d") == 4 and kinds.count("Linear") == 1
    assert kinds.count("MaxPool2d") == 2
    assert kinds.count("AvgPool2d") + kinds.count("AdaptiveAvgPool2d") == 2
    assert kinds.count("ReLU") == 4


def test_errors() -> None:
    with pytest.raises(ValueError, match=r"Unknown model 'resnet'; available models are \[.*'nin'"):
        create_model("resnet", (1, 28, 28), 10)
    with pytest.raises(ValueError, match=r"needs inputs of at least 16x16.*\(1, 8, 8\)"):
        create_model("lenet_mnist", (1, 8, 8), 10)
    with pytest.raises(ValueError, match=r"num_classes must be an integer >= 2.*1"):
        create_model("digits_cnn", (1, 8, 8), 1)
    with pytest.raises(ValueError, match=r"width must be a positive number.*-1"):
        create_model("digits_cnn", (1, 8, 8), 10, width=-1)
    with pytest.raises(ValueError, match=r"in_shape must be three positive integers"):
        create_model("digits_cnn", (8, 8), 10)
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\)"):
        create_model("nin", (3, 32, 32), 10, dropout=1.5)
    with pytest.raises(ValueError, match="already registered"):
        register_model("nin")(lambda *a: nn.Identity())


def test_list_models() -> None:
    assert {"lenet_mnist", "lenet_cifar", "nin", "digits_cnn", "digits_lenet"} <= set(list_models())

"""Model registry: shapes, width multiplier, clear errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gainsearch.batteries.models import create_model, list_models, register_model


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
        ("resnet20", (3, 32, 32)),
        ("resnet20", (1, 28, 28)),
        ("resnet20", (1, 8, 8)),
        ("resnet18", (3, 32, 32)),
        ("vgg11_bn", (3, 32, 32)),
        ("vgg11_bn", (1, 28, 28)),
        ("vgg11_bn", (1, 8, 8)),
    ],
)
def test_forward_shape(name: str, in_shape: tuple[int, int, int]) -> None:
    model = create_model(name, in_shape, 10)
    assert model(torch.zeros(2, *in_shape)).shape == (2, 10)
    wide = create_model(name, in_shape, 10, width=2.0 if "resnet18" not in name else 1.25)
    assert n_params(wide) > n_params(model)
    assert wide(torch.zeros(2, *in_shape)).shape == (2, 10)


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


def test_parameter_counts_of_the_modern_nets() -> None:
    # He et al. report 0.27 M for resnet20 (1x1-conv shortcuts add a little); the README's table
    assert n_params(create_model("resnet20", (3, 32, 32), 10)) == 272_474
    assert n_params(create_model("resnet18", (3, 32, 32), 10)) == 11_173_962
    assert n_params(create_model("vgg11_bn", (3, 32, 32), 10)) == 9_228_362
    kinds = [type(m).__name__ for m in create_model("resnet20", (3, 32, 32), 10).modules()]
    assert kinds.count("BasicBlock") == 9 and kinds.count("BatchNorm2d") == 1 + 18 + 2


@pytest.mark.parametrize("name", ["digits_lenet", "digits_cnn", "resnet20", "vgg11_bn"])
def test_dropout_goes_before_the_last_layer_and_only_when_asked(name: str) -> None:
    plain = list(create_model(name, (1, 8, 8), 10).children())
    assert not any(isinstance(m, nn.Dropout) for m in plain)
    dropped = list(create_model(name, (1, 8, 8), 10, dropout=0.3).children())
    assert isinstance(dropped[-2], nn.Dropout) and dropped[-2].p == 0.3
    assert isinstance(dropped[-1], nn.Linear)
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\), but got dropout=1"):
        create_model(name, (1, 8, 8), 10, dropout=1)

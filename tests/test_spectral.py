"""The measurement against independent references (numpy.fft, scipy windows, closed forms)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.signal.windows import hann
from torch import nn

from gainsearch.core.spectral import (
    DEFAULT_EPS,
    amplitude_spectrum_db,
    data_derivative,
    hann_window_2d,
    impulse_probe,
    maximum_gain,
)


class CentreReadout(nn.Module):
    """Logits [s(x), 0] with s(x) = act(conv(x))[centre]: linear (act=identity) or the paper's
    toy (act=relu). At the impulse the derivative of s is the (correlation) filter placed around
    the centre pixel."""

    def __init__(self, kernel: torch.Tensor, relu: bool = False) -> None:
        super().__init__()
        channels, k = kernel.shape[0], kernel.shape[-1]
        self.conv = nn.Conv2d(channels, 1, k, padding=k // 2, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(kernel[None])
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        if self.relu:
            out = torch.relu(out)
        h, w = x.shape[-2:]
        s = out[:, 0, h // 2, w // 2]
        return torch.stack([s, torch.zeros_like(s)], dim=1)  # (N, 2)


def numpy_reference(kernel: np.ndarray, h: int, w: int, scale: float) -> np.ndarray:
    """Per-channel dB spectra of the windowed, centred filter: numpy + scipy only."""
    c, k, _ = kernel.shape
    window = np.outer(hann(h, sym=True), hann(w, sym=True))
    spectra = []
    for ch in range(c):
        g = np.zeros((h, w))
        top, left = h // 2 - k // 2, w // 2 - k // 2
        g[top : top + k, left : left + k] = kernel[ch] * scale
        spectra.append(20 * np.log10(np.abs(np.fft.fft2(window * g)) + DEFAULT_EPS))
    return np.stack(spectra)


@pytest.mark.parametrize(("channels", "h", "w"), [(1, 16, 16), (3, 15, 20)])
def test_linear_conv_gain_equals_numpy_amplitude_response(channels: int, h: int, w: int) -> None:
    rng = np.random.default_rng(1)
    kernel = rng.normal(size=(channels, 5, 5))
    model = CentreReadout(torch.tensor(kernel, dtype=torch.float32))
    s = float(np.sum(kernel[:, 2, 2]))  # conv output at the centre for the impulse
    y0 = 1.0 / (1.0 + math.exp(-s))  # softmax([s, 0])[0]
    # winner is class 0 when s > 0; fix the class to make the scale known either way
    result = maximum_gain(model, in_shape=(channels, h, w), target=0, return_spectra=True)
    reference = numpy_reference(kernel, h, w, scale=1.0 - y0)  # d log y0 / ds = 1 - y0
    assert result.spectra is not None
    np.testing.assert_allclose(result.spectra, reference, atol=1e-3)
    per_channel = reference.reshape(channels, -1).max(axis=1)
    np.testing.assert_allclose(result.channel_gains, per_channel, atol=1e-3)
    assert result.gain == pytest.approx(per_channel.mean(), abs=1e-3)


def test_unnormalised_gain_differs_by_the_confidence_in_db() -> None:
    kernel = torch.randn(1, 3, 3, generator=torch.Generator().manual_seed(3))
    model = CentreReadout(kernel)
    norm = maximum_gain(model, in_shape=(1, 12, 12), target=0)
    raw = maximum_gain(model, in_shape=(1, 12, 12), target=0, normalize=False)
    y0 = torch.softmax(model(impulse_probe((1, 12, 12))[None]), 1)[0, 0].item()
    # d y0/dx = y0 * d log y0/dx  ->  +20 log10(y0) dB
    assert raw.gain == pytest.approx(norm.gain + 20 * math.log10(y0), abs=1e-3)


def test_paper_toy_gaussian_relu_gives_the_gaussian_low_pass_response() -> None:
    sigma, k, n = 1.0, 9, 64
    u = np.arange(k) - k // 2
    g1 = np.exp(-(u**2) / (2 * sigma**2))
    kernel = np.outer(g1, g1)
    kernel /= kernel.sum()  # unit DC gain
    model = CentreReadout(torch.tensor(kernel[None], dtype=torch.float32), relu=True)
    result = maximum_gain(model, in_shape=(1, n, n), target=0, return_spectra=True)
    assert result.spectra is not None
    spectrum = result.spectra[0]  # (n, n) dB, unshifted
    scale_db = 20 * math.log10(
        1 - torch.softmax(model(impulse_probe((1, n, n))[None]), 1)[0, 0].item()
    )
    # Low-pass: the maximum is at DC and the response falls monotonically along each axis.
    assert np.unravel_index(np.argmax(spectrum), spectrum.shape) == (0, 0)
    assert np.all(np.diff(spectrum[0, : n // 2]) < 0)
    # And it is the Gaussian's transfer function exp(-sigma^2 w^2 / 2), in dB, where the
    # (sampled, truncated, Hann-windowed) filter is close to the continuous one.
    for f in (1, 4, 8, 12):
        omega = 2 * math.pi * f / n
        expected = 20 * math.log10(math.exp(-(sigma**2) * omega**2 / 2)) + scale_db
        assert spectrum[0, f] == pytest.approx(expected, abs=0.5)
        assert spectrum[f, 0] == pytest.approx(expected, abs=0.5)


def test_all_classes_in_one_pass_equal_a_per_class_loop(small_net: nn.Module) -> None:
    batched = maximum_gain(small_net, in_shape=(3, 6, 6), target="all", return_spectra=True)
    loop = [maximum_gain(small_net, in_shape=(3, 6, 6), target=k) for k in range(5)]
    assert batched.class_gains is not None
    np.testing.assert_allclose(batched.class_gains, [r.gain for r in loop], atol=1e-4)
    assert batched.gain == pytest.approx(np.mean([r.gain for r in loop]), abs=1e-4)
    assert batched.gain_max == pytest.approx(max(r.gain for r in loop), abs=1e-4)
    np.testing.assert_allclose(
        batched.channel_gains, np.mean([r.channel_gains for r in loop], axis=0), atol=1e-4
    )
    assert batched.spectra is not None and batched.spectra.shape == (5, 3, 6, 6)
    winner = maximum_gain(small_net, in_shape=(3, 6, 6))
    assert winner.gain == pytest.approx(loop[winner.winner].gain, abs=1e-5)
    assert batched.winner == winner.winner


def test_data_derivative_matches_finite_differences(small_net: nn.Module) -> None:
    small_net.eval()
    probe = impulse_probe((3, 6, 6))
    grad, probs = data_derivative(small_net.double(), probe, target=2)
    x = probe.double()
    eps = 1e-6
    for idx in [(0, 3, 3), (1, 0, 5), (2, 2, 1)]:
        plus, minus = x.clone(), x.clone()
        plus[idx] += eps
        minus[idx] -= eps
        lp = torch.log_softmax(small_net(plus[None]), 1)[0, 2]
        lm = torch.log_softmax(small_net(minus[None]), 1)[0, 2]
        assert grad[idx].item() == pytest.approx(((lp - lm) / (2 * eps)).item(), rel=1e-4)
    assert probs.sum().item() == pytest.approx(1.0, abs=1e-5)


def test_measurement_does_not_disturb_training(small_net: nn.Module) -> None:
    small_net.train()
    small_net.bn.eval()  # mixed modes must come back exactly as they were
    modes = [m.training for m in small_net.modules()]
    small_net.conv.weight.grad = torch.ones_like(small_net.conv.weight)
    before = {k: v.clone() for k, v in small_net.state_dict().items()}
    rng = torch.get_rng_state()
    with torch.no_grad():
        result = maximum_gain(small_net, in_shape=(3, 6, 6), target="all")
    assert math.isfinite(result.gain)
    assert [m.training for m in small_net.modules()] == modes
    assert torch.equal(small_net.conv.weight.grad, torch.ones_like(small_net.conv.weight))
    assert small_net.fc.weight.grad is None
    assert torch.equal(torch.get_rng_state(), rng)
    for key, value in small_net.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_dropout_in_train_mode_is_not_applied(small_net: nn.Module) -> None:
    small_net.eval()
    reference = maximum_gain(small_net, in_shape=(3, 6, 6)).gain
    small_net.train()
    # measured in train mode, the result is the eval-mode one: no dropout mask, BatchNorm on its
    # running statistics (were eval() not applied inside, the p = 0.5 dropout would change it)
    assert maximum_gain(small_net, in_shape=(3, 6, 6)).gain == reference
    assert small_net.training and small_net.drop.training  # the mode is restored


def test_low_precision_model_is_measured_in_float32(small_net: nn.Module) -> None:
    reference = maximum_gain(small_net, in_shape=(3, 6, 6), target="all")
    small_net.to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = maximum_gain(small_net, in_shape=(3, 6, 6), target="all")
    assert next(small_net.parameters()).dtype == torch.bfloat16
    # bf16 weights differ from the float32 ones by rounding only
    assert low.gain == pytest.approx(reference.gain, abs=0.2)


def test_nan_weights_give_a_non_finite_reading_not_an_exception(small_net: nn.Module) -> None:
    with torch.no_grad():
        small_net.fc.weight.fill_(float("nan"))
    result = maximum_gain(small_net, in_shape=(3, 6, 6))
    assert not result.finite
    assert not math.isfinite(maximum_gain(small_net, in_shape=(3, 6, 6), target="all").gain)


def test_natural_image_probe(small_net: nn.Module) -> None:
    image = torch.randn(3, 6, 6, generator=torch.Generator().manual_seed(0))
    a = maximum_gain(small_net, image)
    b = maximum_gain(small_net, image[None])
    assert a.gain == b.gain
    assert a.gain != maximum_gain(small_net, in_shape=(3, 6, 6)).gain


def test_result_is_immutable(small_net: nn.Module) -> None:
    result = maximum_gain(small_net, in_shape=(3, 6, 6), return_spectra=True)
    with pytest.raises(AttributeError):
        result.gain = 0.0  # type: ignore[misc]
    assert result.spectra is not None
    with pytest.raises(ValueError, match="read-only"):
        result.spectra[0, 0, 0] = 1.0


def test_hann_window_matches_scipy() -> None:
    np.testing.assert_allclose(
        hann_window_2d(7, 10).numpy(), np.outer(hann(7, sym=True), hann(10, sym=True))
    )
    assert hann_window_2d(1, 4).shape == (1, 4)
    assert hann_window_2d(1, 1).item() == 1.0


def test_amplitude_spectrum_matches_numpy() -> None:
    g = torch.randn(2, 3, 9, 8, generator=torch.Generator().manual_seed(0))
    window = np.outer(hann(9, sym=True), hann(8, sym=True))
    expected = 20 * np.log10(np.abs(np.fft.fft2(g.numpy() * window)) + DEFAULT_EPS)
    np.testing.assert_allclose(amplitude_spectrum_db(g).numpy(), expected, atol=1e-4)


def test_impulse_probe() -> None:
    probe = impulse_probe((3, 5, 6))
    assert probe.shape == (3, 5, 6)
    assert probe.sum().item() == 3.0
    assert torch.all(probe[:, 2, 3] == 1.0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"in_shape": (3, 6)}, r"in_shape must be three positive integers.*\(3, 6\)"),
        ({"in_shape": (3, 0, 6)}, r"in_shape must be three positive integers"),
        ({"in_shape": (3, 6, 6), "target": "best"}, r"target must be 'winner', 'all'.*'best'"),
        ({"in_shape": (3, 6, 6), "target": 7}, r"class index in \[0, 4\].*target=7"),
        ({"in_shape": (3, 6, 6), "target": -1}, r"target must be.*target=-1"),
        ({"in_shape": (3, 6, 6), "eps": 0.0}, r"eps must be a positive finite number.*eps=0.0"),
        ({"in_shape": (3, 9, 9)}, r"probe of shape \(3, 9, 9\) does not fit the model"),
        ({"in_shape": (1, 6, 6)}, r"probe of shape \(1, 6, 6\) does not fit the model"),
        ({}, r"Pass probe .* or in_shape"),
        ({"probe": torch.zeros(6, 6)}, r"probe must have shape \(C, H, W\).*\(6, 6\)"),
        (
            {"probe": torch.zeros(3, 6, 6), "in_shape": (3, 5, 5)},
            r"probe shape \(3, 6, 6\) does not match in_shape=\(3, 5, 5\)",
        ),
    ],
)
def test_bad_input_is_a_clear_error(small_net: nn.Module, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        maximum_gain(small_net, **kwargs)


def test_model_output_must_be_logits() -> None:
    class Bad(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x)  # (N, 2, H-2, W-2): not (N, K)

    with pytest.raises(ValueError, match=r"logits of shape \(N, num_classes\).*\(1, 2, 4, 4\)"):
        maximum_gain(Bad(), in_shape=(1, 6, 6))
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        maximum_gain(lambda x: x, in_shape=(1, 6, 6))  # type: ignore[arg-type]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu(small_net: nn.Module) -> None:  # pragma: no cover - GPU only
    cpu = maximum_gain(small_net, in_shape=(3, 6, 6), target="all")
    gpu = maximum_gain(small_net.cuda(), in_shape=(3, 6, 6), target="all")
    assert gpu.gain == pytest.approx(cpu.gain, abs=1e-3)


def dead_at_the_impulse() -> nn.Module:
    """Conv (weights 1, bias -2) -> ReLU -> linear: the impulse's pre-activations are at most
    1 - 2 < 0, so every ReLU is dead there and the data derivative is exactly zero."""
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 4, 3, padding=1)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        conv.bias.fill_(-2.0)
    return nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3))


def test_smoothed_gain_reads_a_network_whose_impulse_path_is_dead() -> None:
    net = dead_at_the_impulse()
    paper = maximum_gain(net, in_shape=(1, 8, 8), target="all")
    assert paper.gain == pytest.approx(20 * np.log10(1e-12))  # the -240 dB floor
    smooth = maximum_gain(net, in_shape=(1, 8, 8), target="all", smoothing=1.0)
    assert smooth.gain > -100.0
    winner = maximum_gain(net, in_shape=(1, 8, 8), smoothing=1.0)
    assert winner.gain > -100.0


def test_smoothed_gain_is_the_mean_derivative_over_fixed_noisy_probes(small_net: nn.Module) -> None:
    x = impulse_probe((3, 6, 6))
    grad, _ = data_derivative(small_net, x, target=2, smoothing=0.5, samples=4)
    noise = torch.randn((4, 3, 6, 6), generator=torch.Generator().manual_seed(0))
    loop = torch.stack([data_derivative(small_net, x + 0.5 * n, target=2)[0] for n in noise]).mean(
        dim=0
    )
    assert torch.allclose(grad, loop, atol=1e-6)
    every, _ = data_derivative(small_net, x, target="all", smoothing=0.5, samples=4)
    assert torch.allclose(every[2], loop, atol=1e-6)  # the batched all-class pass agrees
    # deterministic, the global RNG untouched, and smoothing=0 is the paper's measurement
    state = torch.get_rng_state()
    again, _ = data_derivative(small_net, x, target=2, smoothing=0.5, samples=4)
    assert torch.equal(grad, again) and torch.equal(state, torch.get_rng_state())
    plain = maximum_gain(small_net, x, target=2)
    assert maximum_gain(small_net, x, target=2, smoothing=0.0).gain == plain.gain
    with pytest.raises(ValueError, match=r"smoothing must be a non-negative number.*-1"):
        maximum_gain(small_net, x, smoothing=-1)
    chunked, _ = data_derivative(small_net, x, target="all", smoothing=0.5, samples=4, max_batch=3)
    assert torch.allclose(chunked, every, atol=1e-6)  # 20 copies in chunks of 3: the same
    with pytest.raises(ValueError, match=r"max_batch must be a positive integer.*max_batch=0"):
        data_derivative(small_net, x, target="all", max_batch=0)
    with pytest.raises(ValueError, match=r"samples must be a positive integer.*samples=0"):
        maximum_gain(small_net, x, smoothing=1.0, samples=0)

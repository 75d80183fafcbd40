"""The Maximum Gain measurement (docs/measurement.md).

The network ``f`` is linearised around a probe image ``x`` (by default the impulse image
``delta``): the data derivative ``g = d log y_c / dx`` of the winning class's log-probability is
windowed with a 2-D Hann window, and its amplitude spectrum in dB is taken per colour channel::

    A_k = 20 * log10(|FFT2(w * g_k)| + eps)      # (H, W) dB, one per channel k
    M_k = max A_k                                 # per-channel Maximum Gain, dB
    M   = mean_k M_k                              # the scalar Maximum Gain, dB

Source: Stamatescu & McDonnell, "Diagnosing Convolutional Neural Networks using their Spectral
Response" (arXiv:1810.03241).

Everything here is a pure function of the model's current weights. A measurement:

* runs the model in ``eval()`` mode and restores every submodule's own train/eval flag;
* never writes ``.grad`` of parameters (it differentiates detached copies);
* consumes no random numbers of the global CPU/CUDA generators (``torch.random.fork_rng``);
* runs under ``torch.enable_grad()`` with autocast off, in float32, even inside ``no_grad`` or a
  mixed-precision training step, whatever the dtype of the model's parameters;
* returns non-finite gains as values (a diverged network), never raises because of them.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

__all__ = [
    "DEFAULT_EPS",
    "GainResult",
    "Target",
    "amplitude_spectrum_db",
    "check_in_shape",
    "check_smoothing",
    "check_target",
    "data_derivative",
    "hann_window_2d",
    "impulse_probe",
    "maximum_gain",
]

#: Added to the FFT amplitude before the logarithm: a floor of -240 dB for exactly zero bins.
DEFAULT_EPS = 1e-12

Target = Literal["winner", "all"] | int


@dataclass(frozen=True)
class GainResult:
    """One Maximum Gain measurement. Immutable.

    Attributes:
        gain: The scalar Maximum Gain in dB. For ``target="winner"`` or a fixed class: the mean of
            ``channel_gains``. For ``target="all"``: the mean over classes of each class's scalar
            gain (``class_gains``). ``nan``/``inf`` if the network has diverged.
        channel_gains: Per-channel Maximum Gain ``M_k`` in dB, shape ``(C,)``, for the winning
            class (``"winner"``), the fixed class (int target) or averaged over classes
            (``"all"``).
        winner: The class with the highest softmax score on the probe.
        target: What was measured: ``"winner"``, ``"all"`` or a class index.
        class_gains: For ``target="all"``: the scalar gain of every class, shape ``(K,)``; else
            ``None``.
        gain_max: For ``target="all"``: the maximum over classes; else equal to ``gain``.
        confidence: Softmax score of the winning class on the probe.
        spectra: When asked for: the amplitude spectra in dB, unshifted FFT layout (use
            ``numpy.fft.fftshift`` to centre the zero frequency), shape ``(C, H, W)`` or
            ``(K, C, H, W)`` for ``target="all"``. Read-only.
    """

    gain: float
    channel_gains: tuple[float, ...]
    winner: int
    target: str | int
    class_gains: tuple[float, ...] | None = None
    gain_max: float = math.nan
    confidence: float = math.nan
    spectra: np.ndarray | None = None

    @property
    def finite(self) -> bool:
        """Whether the scalar gain is a finite number (``False`` means diverged)."""
        return math.isfinite(self.gain)


def impulse_probe(
    in_shape: Sequence[int],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The impulse image ``delta`` of shape ``(C, H, W)``.

    Zero everywhere except the centre pixel ``(H // 2, W // 2)``, which is ``1.0`` in every
    channel. It lives in the model's input space, i.e. after any normalisation.

    Raises:
        ValueError: if ``in_shape`` is not three positive integers.
    """
    shape = check_in_shape(in_shape)
    _, height, width = shape
    probe = torch.zeros(shape, device=device, dtype=dtype)
    probe[:, height // 2, width // 2] = 1.0
    return probe


def hann_window_2d(
    height: int, width: int, *, device: torch.device | str | None = None
) -> torch.Tensor:
    """The 2-D Hann window: outer product of two *symmetric* Hann windows, shape ``(H, W)``.

    ``w[i] = 0.5 - 0.5 * cos(2 * pi * i / (n - 1))`` (``scipy.signal.windows.hann(n, sym=True)``);
    a length-1 window is ``[1.0]``.
    """
    rows = torch.hann_window(height, periodic=False, dtype=torch.float64, device=device)
    cols = torch.hann_window(width, periodic=False, dtype=torch.float64, device=device)
    if height == 1:
        rows = torch.ones(1, dtype=torch.float64, device=device)
    if width == 1:
        cols = torch.ones(1, dtype=torch.float64, device=device)
    return torch.outer(rows, cols)


def amplitude_spectrum_db(derivative: torch.Tensor, *, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """Per-channel windowed amplitude spectrum in dB: ``20 log10(|FFT2(w * g_k)| + eps)``.

    Args:
        derivative: Data derivative ``g`` of shape ``(..., C, H, W)``.
        eps: Added to the amplitude before the logarithm.

    Returns:
        Float64 tensor of the same shape, unshifted FFT layout.
    """
    if derivative.dim() < 3:
        raise ValueError(
            f"derivative must have shape (..., C, H, W), but got shape={tuple(derivative.shape)}."
        )
    height, width = derivative.shape[-2:]
    window = hann_window_2d(height, width, device=derivative.device)
    spectrum = torch.fft.fft2(derivative.to(torch.float64) * window)
    return 20.0 * torch.log10(spectrum.abs() + eps)


def data_derivative(
    model: nn.Module,
    probe: torch.Tensor | None = None,
    *,
    in_shape: Sequence[int] | None = None,
    target: Target = "winner",
    normalize: bool = True,
    smoothing: float = 0.0,
    samples: int = 8,
    max_batch: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The data derivative of the model linearised around ``probe``.

    Args:
        model: Classifier mapping ``(N, C, H, W)`` to logits ``(N, K)``.
        probe: Probe image ``(C, H, W)`` (or ``(1, C, H, W)``) in the model's input space. If
            ``None``, the impulse image of ``in_shape``.
        in_shape: ``(C, H, W)``, needed only when ``probe`` is ``None``.
        target: ``"winner"``: the class with the highest score; an int: that class; ``"all"``:
            every class, in one batched forward and backward pass.
        normalize: ``True``: ``d log y_c / dx`` (the paper's projection ``e_c / y_c``);
            ``False``: ``d y_c / dx``.
        smoothing: ``0`` (the paper): the derivative at the probe. ``s > 0``: the mean of the
            derivatives at ``samples`` probes ``x + s * n_i`` with fixed Gaussian noise images
            ``n_i`` (seeded, the same at every call; SmoothGrad, Smilkov et al. 2017), i.e. the
            derivative of the network smoothed over a neighbourhood of the probe. The winning
            class is still the one of the probe itself. See :func:`maximum_gain`.
        samples: Number of noisy probes when ``smoothing > 0``.
        max_batch: Most probe copies in one forward/backward pass for ``target="all"`` (the
            ``K`` copies, times ``samples``, go in chunks: memory stays bounded for ``K = 1000``).

    Returns:
        ``(g, probs)``: ``g`` float32 of shape ``(C, H, W)`` (``(K, C, H, W)`` for ``"all"``),
        ``probs`` the softmax scores on the probe, shape ``(K,)``.
    """
    x = _resolve_probe(model, probe, in_shape)
    check_target(target)
    check_smoothing(smoothing)
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be a positive integer, but got samples={samples!r}.")
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise ValueError(f"max_batch must be a positive integer, but got max_batch={max_batch!r}.")
    n = samples if smoothing > 0 else 1
    # (n, C, H, W): the probe, or the probe plus fixed noise images (a private generator: the
    # global RNG is not touched)
    points = x.unsqueeze(0)
    if smoothing > 0:
        noise = torch.randn((n, *x.shape), generator=torch.Generator().manual_seed(0))
        points = x.unsqueeze(0) + smoothing * noise.to(x.device)
    with _measurement_context(model, x.device):
        params = {
            name: t.detach().to(torch.float32)
            for name, t in _named_tensors(model)
            if t.is_floating_point()
        }
        x1 = x.unsqueeze(0).clone().requires_grad_(True)  # (1, C, H, W)
        logits = _forward(model, params, x1)  # (1, K)
        num_classes = logits.shape[1]
        probs = torch.softmax(logits.detach(), dim=1)[0]  # (K,)
        winner = int(torch.argmax(probs).item())
        if target == "all":
            # One batched pass: copy (i, k) of the probe carries class k at point i. In eval()
            # mode the samples of a batch are independent, so d(sum score_k(x_ik))/dx_ik =
            # d score_k / dx at point i.
            # Copies go in chunks of at most max_batch (memory stays bounded for K = 1000).
            classes = torch.arange(num_classes, device=x.device).repeat(n)  # (n * K,)
            which = torch.arange(n, device=x.device).repeat_interleave(num_classes)
            parts = []
            for start in range(0, n * num_classes, max_batch):
                cls_part = classes[start : start + max_batch]
                xs = points[which[start : start + max_batch]].clone().requires_grad_(True)
                scores = _class_scores(_forward(model, params, xs), normalize)  # (B, K)
                picked = scores.gather(1, cls_part[:, None])  # (B, 1): copy j's own class
                (part,) = torch.autograd.grad(picked.sum(), xs)
                parts.append(part)
            grad = torch.cat(parts).view(n, num_classes, *x.shape).mean(dim=0)  # (K, C, H, W)
        else:
            cls = winner if target == "winner" else int(target)
            if not 0 <= cls < num_classes:
                raise ValueError(
                    f"target must be 'winner', 'all' or a class index in [0, {num_classes - 1}], "
                    f"but got target={target!r}."
                )
            if n == 1:
                scores = _class_scores(logits, normalize)  # (1, K)
                (grad,) = torch.autograd.grad(scores[0, cls], x1)
            else:
                xs = points.clone().requires_grad_(True)  # (n, C, H, W)
                scores = _class_scores(_forward(model, params, xs), normalize)  # (n, K)
                (grad,) = torch.autograd.grad(scores[:, cls].sum(), xs)
            grad = grad.mean(dim=0)  # (C, H, W)
    return grad.detach(), probs.detach()


def maximum_gain(
    model: nn.Module,
    probe: torch.Tensor | None = None,
    *,
    in_shape: Sequence[int] | None = None,
    target: Target = "winner",
    normalize: bool = True,
    eps: float = DEFAULT_EPS,
    return_spectra: bool = False,
    smoothing: float = 0.0,
    samples: int = 8,
    max_batch: int = 256,
) -> GainResult:
    """Measure the Maximum Gain of ``model`` around ``probe`` (docs/measurement.md).

    Args:
        model: Classifier mapping ``(N, C, H, W)`` to logits ``(N, K)``; any device, any
            floating dtype (the measurement itself runs in float32).
        probe: Probe image ``(C, H, W)`` in the model's input space, or ``None`` for the impulse
            image of ``in_shape``.
        in_shape: ``(C, H, W)``; needed only when ``probe`` is ``None``.
        target: ``"winner"`` (the paper), ``"all"`` (every class in one batched backward pass,
            mean and max over classes) or a fixed class index.
        normalize: Differentiate ``log y_c`` (``True``, the paper) or ``y_c`` (``False``).
        eps: Added to the amplitude before the logarithm.
        return_spectra: Also return the dB spectra (read-only numpy array).
        smoothing: ``0`` is the paper's measurement. A positive ``s`` measures the derivative
            averaged over ``samples`` probes ``x + s * n_i`` (fixed Gaussian noise images): the
            *smoothed* Maximum Gain. On BatchNorm networks the impulse's zero background can put
            every ReLU on the impulse's path in its dead half, so the paper's derivative is
            exactly zero and the gain reads the ``20 log10(eps)`` floor (-240 dB) for a network
            that works; the noisy probes keep the units alive (docs/measurement.md says
            how often each variant reads the floor).
        samples: Number of noisy probes when ``smoothing > 0``.
        max_batch: Most probe copies per forward/backward pass for ``target="all"``.

    Returns:
        A :class:`GainResult`. A diverged network gives a non-finite ``gain``; no exception.

    Raises:
        ValueError: bad ``probe``/``in_shape``/``target``/``eps``, or a model whose output is not
            ``(N, K)`` logits.
        TypeError: ``model`` is not an ``nn.Module``.

    Example:
        >>> from gainsearch import create_model, maximum_gain
        >>> net = create_model("digits_cnn", in_shape=(1, 8, 8), num_classes=10)
        >>> result = maximum_gain(net, in_shape=(1, 8, 8))
        >>> isinstance(result.gain, float)
        True
    """
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a positive finite number, but got eps={eps!r}.")
    grad, probs = data_derivative(
        model,
        probe,
        in_shape=in_shape,
        target=target,
        normalize=normalize,
        smoothing=smoothing,
        samples=samples,
        max_batch=max_batch,
    )
    spectra = amplitude_spectrum_db(grad, eps=eps)  # (C, H, W) or (K, C, H, W), dB
    per_channel = spectra.flatten(-2).amax(dim=-1)  # (C,) or (K, C)
    winner = int(torch.argmax(probs).item())
    if target == "all":
        per_class = per_channel.mean(dim=-1)  # (K,)
        gain = float(per_class.mean())
        gain_max = float(per_class.max())
        channel_gains = per_channel.mean(dim=0)
        class_gains: tuple[float, ...] | None = tuple(float(v) for v in per_class.cpu())
    else:
        gain = float(per_channel.mean())
        gain_max = gain
        channel_gains = per_channel
        class_gains = None
    spectra_np: np.ndarray | None = None
    if return_spectra:
        spectra_np = spectra.cpu().numpy()
        spectra_np.flags.writeable = False
    return GainResult(
        gain=gain,
        channel_gains=tuple(float(v) for v in channel_gains.cpu()),
        winner=winner,
        target=target,
        class_gains=class_gains,
        gain_max=gain_max,
        confidence=float(probs[winner]),
        spectra=spectra_np,
    )


# --------------------------------------------------------------------------------------------
# helpers


def _class_scores(logits: torch.Tensor, normalize: bool) -> torch.Tensor:
    """``log softmax`` (normalised, the paper's ``e_c / y_c`` projection) or ``softmax``."""
    if normalize:
        return torch.log_softmax(logits, dim=1)
    return torch.softmax(logits, dim=1)


def _named_tensors(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    yield from model.named_parameters(remove_duplicate=False)
    yield from model.named_buffers(remove_duplicate=False)


@contextlib.contextmanager
def _measurement_context(model: nn.Module, device: torch.device) -> Iterator[None]:
    """eval() mode restored per submodule, gradients on, autocast off, global RNG untouched."""
    modes = [(module, module.training) for module in model.modules()]
    cuda_devices = [device] if device.type == "cuda" else []
    try:
        with (
            torch.random.fork_rng(devices=cuda_devices),
            torch.enable_grad(),
            torch.autocast(device_type=device.type, enabled=False),
        ):
            model.eval()
            yield
    finally:
        for module, training in modes:
            module.training = training


def check_in_shape(in_shape: Sequence[int] | None) -> tuple[int, int, int]:
    """``in_shape`` as ``(C, H, W)`` of positive integers, or the error naming it."""
    try:
        shape = tuple(int(s) for s in in_shape)  # type: ignore[union-attr]
        ok = len(shape) == 3 and all(s > 0 for s in shape)
        ok = ok and all(float(s) == float(t) for s, t in zip(shape, in_shape, strict=True))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(
            f"in_shape must be three positive integers (C, H, W), but got in_shape={in_shape!r}."
        )
    return shape  # type: ignore[return-value]


def check_smoothing(smoothing: object) -> float:
    """``smoothing`` as a float, or the error naming it (a non-negative finite number)."""
    if not (
        isinstance(smoothing, (int, float))
        and not isinstance(smoothing, bool)
        and math.isfinite(smoothing)
        and smoothing >= 0
    ):
        raise ValueError(
            f"smoothing must be a non-negative number, but got smoothing={smoothing!r}."
        )
    return float(smoothing)


def check_target(target: object) -> None:
    """Refuse a ``gain_target`` that is not ``"winner"``, ``"all"`` or a class index."""
    if target in ("winner", "all"):
        return
    if isinstance(target, (int, np.integer)) and not isinstance(target, bool) and target >= 0:
        return
    raise ValueError(
        f"target must be 'winner', 'all' or a non-negative class index, but got target={target!r}."
    )


def _forward(model: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Float32 logits of ``model`` with ``params`` on ``x``; shape errors made readable."""
    try:
        logits = functional_call(model, params, (x,))
    except RuntimeError as err:
        raise ValueError(
            f"probe of shape {tuple(x.shape[1:])} does not fit the model: forward pass failed "
            f"with: {err}"
        ) from err
    _check_logits(logits, batch=x.shape[0])
    return logits.to(torch.float32)


def _check_logits(logits: object, batch: int) -> None:
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != batch:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(
            f"model must return logits of shape (N, num_classes) = ({batch}, K), but for a probe "
            f"batch of {batch} it returned {shape}."
        )


def _resolve_probe(
    model: object, probe: torch.Tensor | None, in_shape: Sequence[int] | None
) -> torch.Tensor:
    """The probe as a float32 ``(C, H, W)`` tensor on the model's device."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, but got {type(model).__name__}.")
    device = _model_device(model)
    if probe is None:
        if in_shape is None:
            raise ValueError("Pass probe (a (C, H, W) tensor) or in_shape=(C, H, W); got neither.")
        return impulse_probe(in_shape, device=device)
    if not isinstance(probe, torch.Tensor):
        probe = torch.as_tensor(np.asarray(probe))
    if probe.dim() == 4 and probe.shape[0] == 1:
        probe = probe[0]
    if probe.dim() != 3 or any(s == 0 for s in probe.shape):
        raise ValueError(
            f"probe must have shape (C, H, W) or (1, C, H, W), but got shape={tuple(probe.shape)}."
        )
    if in_shape is not None and tuple(probe.shape) != check_in_shape(in_shape):
        raise ValueError(
            f"probe shape {tuple(probe.shape)} does not match in_shape={tuple(in_shape)}."
        )
    return probe.detach().to(device=device, dtype=torch.float32)


def _model_device(model: nn.Module) -> torch.device:
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    return first.device if first is not None else torch.device("cpu")

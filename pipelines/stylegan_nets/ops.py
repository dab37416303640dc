"""Shared StyleGAN operations in plain torch (fp32 reference maths, any device).

Scope: FIR resampling (``upfirdn2d`` and its ``upsample2d`` / ``downsample2d`` / ``filter2d`` wrappers),
bias + activation with StyleGAN's gains and clamping (``bias_act``), fully connected layers with a
learning-rate multiplier (``fully_connected``), ``normalize_2nd_moment``, convolution combined with FIR
resampling (``conv2d_resample``) and the modulated/demodulated convolution of StyleGAN2
(``modulated_conv2d``). The conventions follow Karras et al. 2020 (StyleGAN2) and StyleGAN2-ADA:

- a filter ``f`` is a float32 tensor, 2-D ``[fh, fw]`` or 1-D ``[taps]`` (then applied separably along
  x and y); ``None`` means the 1x1 identity filter;
- ``padding`` is an int or (px0, px1, py0, py1); negative values crop;
- by default filters are flipped before the (correlating) conv2d, so that the operation is a true
  convolution; ``flip_filter=True`` skips that flip;
- ``gain`` scales the whole 2-D filter (a 1-D filter is scaled by ``sqrt(gain)`` along each axis).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Activation:
    """One activation of ``bias_act`` and its default gain."""

    name: str  # the name callers pass as ``act``
    def_alpha: float  # default slope/shape parameter (lrelu negative slope), 0 where unused
    def_gain: float  # default output gain, chosen to preserve the signal's second moment


ACTIVATIONS: dict[str, Activation] = {
    "linear": Activation("linear", 0.0, 1.0),
    "relu": Activation("relu", 0.0, math.sqrt(2)),
    "lrelu": Activation("lrelu", 0.2, math.sqrt(2)),
    "tanh": Activation("tanh", 0.0, 1.0),
    "sigmoid": Activation("sigmoid", 0.0, 1.0),
    "elu": Activation("elu", 0.0, 1.0),
    "selu": Activation("selu", 0.0, 1.0),
    "softplus": Activation("softplus", 0.0, 1.0),
    "swish": Activation("swish", 0.0, math.sqrt(2)),
}


# ----------------------------------------------------------------------------------------------------
# Filters and FIR resampling


def setup_filter(f: Sequence[float] | np.ndarray | torch.Tensor | None, device: torch.device | str = "cpu",
                 normalize: bool = True, flip_filter: bool = False, gain: float = 1,
                 separable: bool | None = None) -> torch.Tensor:
    """A float32 FIR filter from taps: 1-D taps become their outer product unless ``separable``.

    ``separable=None`` keeps 1-D filters of 8 or more taps separable. ``normalize`` makes the taps sum
    to 1; ``gain`` then scales the 2-D response (so a 1-D filter by ``gain ** 0.5``).
    """
    if f is None:
        f = 1
    f = torch.as_tensor(f, dtype=torch.float32)
    if f.ndim == 0:
        f = f[None]
    if f.ndim not in (1, 2):
        raise ValueError(f"a FIR filter must be 1-D or 2-D, not {f.ndim}-D")
    if separable is None:
        separable = f.ndim == 1 and f.numel() >= 8
    if f.ndim == 1 and not separable:
        f = torch.outer(f, f)  # [taps, taps]
    if normalize:
        f = f / f.sum()
    if flip_filter:
        f = f.flip(list(range(f.ndim)))
    f = f * (gain ** (f.ndim / 2))
    return f.to(device)


def filter_size(f: torch.Tensor | None) -> tuple[int, int]:
    """(width, height) of a filter; a 1-D filter is square."""
    if f is None:
        return 1, 1
    return int(f.shape[-1]), int(f.shape[0])


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    if len(value) != 2:
        raise ValueError(f"expected one or two integers, got {value!r}")
    return int(value[0]), int(value[1])


def parse_padding(padding: int | Sequence[int]) -> tuple[int, int, int, int]:
    """(px0, px1, py0, py1) from an int, an (x, y) pair or four values."""
    if isinstance(padding, int):
        return padding, padding, padding, padding
    if len(padding) == 2:
        px, py = padding
        return int(px), int(px), int(py), int(py)
    if len(padding) != 4:
        raise ValueError(f"padding must have 1, 2 or 4 values, got {padding!r}")
    px0, px1, py0, py1 = padding
    return int(px0), int(px1), int(py0), int(py1)


def upfirdn2d(x: torch.Tensor, f: torch.Tensor | None, up: int | Sequence[int] = 1,
              down: int | Sequence[int] = 1, padding: int | Sequence[int] = 0, flip_filter: bool = False,
              gain: float = 1) -> torch.Tensor:
    """Upsample by zero insertion, pad (or crop), FIR-filter, then keep every ``down``-th pixel.

    x: [N, C, H, W]; f: [fh, fw] or [taps] (separable), or None for the identity. Output height is
    ``(H * up_y + py0 + py1 - fh) // down_y + 1`` (and likewise for width).
    """
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    upx, upy = _pair(up)
    downx, downy = _pair(down)
    px0, px1, py0, py1 = parse_padding(padding)
    n, c, h, w = x.shape
    # zero insertion: each pixel followed by up-1 zeros along both axes
    x = x.reshape(n, c, h, 1, w, 1)
    x = F.pad(x, [0, upx - 1, 0, 0, 0, upy - 1])
    x = x.reshape(n, c, h * upy, w * upx)  # [N, C, H*up, W*up]
    # pad with zeros where positive, crop where negative
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0): x.shape[2] - max(-py1, 0), max(-px0, 0): x.shape[3] - max(-px1, 0)]
    # filter: conv2d correlates, so flip the taps for a true convolution unless told otherwise
    f = (f * (gain ** (f.ndim / 2))).to(x.dtype)
    if not flip_filter:
        f = f.flip(list(range(f.ndim)))
    if f.ndim == 2:
        weight = f[None, None].repeat(c, 1, 1, 1)  # [C, 1, fh, fw]
        x = F.conv2d(x, weight, groups=c)
    else:
        weight = f[None, None].repeat(c, 1, 1)  # [C, 1, taps]
        x = F.conv2d(x, weight.unsqueeze(2), groups=c)  # along x
        x = F.conv2d(x, weight.unsqueeze(3), groups=c)  # along y
    return x[:, :, ::downy, ::downx]


def upsample2d(x: torch.Tensor, f: torch.Tensor | None, up: int | Sequence[int] = 2,
               padding: int | Sequence[int] = 0, flip_filter: bool = False, gain: float = 1) -> torch.Tensor:
    """Upsample by ``up`` with filter ``f``, padded so that the output is exactly ``up`` times the input."""
    upx, upy = _pair(up)
    px0, px1, py0, py1 = parse_padding(padding)
    fw, fh = filter_size(f)
    pad = [px0 + (fw + upx - 1) // 2, px1 + (fw - upx) // 2, py0 + (fh + upy - 1) // 2, py1 + (fh - upy) // 2]
    return upfirdn2d(x, f, up=(upx, upy), padding=pad, flip_filter=flip_filter, gain=gain * upx * upy)


def downsample2d(x: torch.Tensor, f: torch.Tensor | None, down: int | Sequence[int] = 2,
                 padding: int | Sequence[int] = 0, flip_filter: bool = False, gain: float = 1) -> torch.Tensor:
    """Filter with ``f`` and downsample by ``down``, padded so that the output is the input / ``down``."""
    downx, downy = _pair(down)
    px0, px1, py0, py1 = parse_padding(padding)
    fw, fh = filter_size(f)
    pad = [px0 + (fw - downx + 1) // 2, px1 + (fw - downx) // 2, py0 + (fh - downy + 1) // 2,
           py1 + (fh - downy) // 2]
    return upfirdn2d(x, f, down=(downx, downy), padding=pad, flip_filter=flip_filter, gain=gain)


def filter2d(x: torch.Tensor, f: torch.Tensor | None, padding: int | Sequence[int] = 0,
             flip_filter: bool = False, gain: float = 1) -> torch.Tensor:
    """Filter with ``f`` keeping the size (plus ``padding``)."""
    px0, px1, py0, py1 = parse_padding(padding)
    fw, fh = filter_size(f)
    pad = [px0 + fw // 2, px1 + (fw - 1) // 2, py0 + fh // 2, py1 + (fh - 1) // 2]
    return upfirdn2d(x, f, padding=pad, flip_filter=flip_filter, gain=gain)


# ----------------------------------------------------------------------------------------------------
# Bias, activation, fully connected layers


def bias_act(x: torch.Tensor, b: torch.Tensor | None = None, act: str = "linear", alpha: float | None = None,
             gain: float | None = None, clamp: float | None = None, *, dim: int = 1) -> torch.Tensor:
    """``clamp(act(x + b) * gain, -clamp, clamp)``; b: [x.shape[dim]]; gain defaults to the activation's.

    'lrelu' uses slope ``alpha`` (default 0.2) and gain sqrt(2); the clamp is applied after the gain
    (``clamp=None`` or negative: no clamp).
    """
    spec = ACTIVATIONS.get(act)
    if spec is None:
        raise ValueError(f"unknown activation {act!r}")
    alpha = float(alpha if alpha is not None else spec.def_alpha)
    gain = float(gain if gain is not None else spec.def_gain)
    if b is not None:
        x = x + b.reshape([-1 if i == dim else 1 for i in range(x.ndim)])
    x = _activate(x, act, alpha)
    if gain != 1:
        x = x * gain
    if clamp is not None and clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


def _activate(x: torch.Tensor, act: str, alpha: float) -> torch.Tensor:
    if act == "linear":
        return x
    if act == "relu":
        return F.relu(x)
    if act == "lrelu":
        return F.leaky_relu(x, alpha)
    if act == "tanh":
        return torch.tanh(x)
    if act == "sigmoid":
        return torch.sigmoid(x)
    if act == "elu":
        return F.elu(x)
    if act == "selu":
        return F.selu(x)
    if act == "softplus":
        return F.softplus(x)
    return torch.sigmoid(x) * x  # swish


def fc_gains(in_features: int, lr_multiplier: float = 1) -> tuple[float, float]:
    """(weight_gain, bias_gain) of an equalised-learning-rate layer: lr_mul / sqrt(in), lr_mul."""
    return lr_multiplier / math.sqrt(in_features), lr_multiplier


def fully_connected(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, weight_gain: float,
                    bias_gain: float = 1, activation: str = "linear") -> torch.Tensor:
    """x: [N, in], weight: [out, in] (stored, unscaled) -> [N, out] = act(x @ (w * wg).T + b * bg)."""
    w = weight.to(x.dtype) * weight_gain
    b = bias
    if b is not None:
        b = b.to(x.dtype)
        if bias_gain != 1:
            b = b * bias_gain
    if activation == "linear" and b is not None:
        return torch.addmm(b.unsqueeze(0), x, w.t())
    x = x.matmul(w.t())
    return bias_act(x, b, act=activation)


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """Scale each vector to unit mean square along ``dim`` (StyleGAN's pixel norm for latents)."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


# ----------------------------------------------------------------------------------------------------
# Convolution with resampling, modulated convolution


def _conv2d(x: torch.Tensor, w: torch.Tensor, stride: int = 1, padding: int | Sequence[int] = 0,
            groups: int = 1, transpose: bool = False, flip_weight: bool = True) -> torch.Tensor:
    """conv2d (or conv_transpose2d); ``flip_weight=False`` flips the kernel, i.e. a true convolution."""
    if not flip_weight:
        w = w.flip([2, 3])
    op = F.conv_transpose2d if transpose else F.conv2d
    return op(x, w, stride=stride, padding=padding, groups=groups)


def conv2d_resample(x: torch.Tensor, w: torch.Tensor, f: torch.Tensor | None = None, up: int = 1,
                    down: int = 1, padding: int | Sequence[int] = 0, groups: int = 1, flip_weight: bool = True,
                    flip_filter: bool = False) -> torch.Tensor:
    """2-D convolution with optional FIR up/downsampling by an integer factor.

    x: [N, C_in, H, W]; w: [C_out, C_in / groups, kh, kw]; f: the FIR filter (used when up or down > 1).
    Upsampling uses a stride-``up`` transposed convolution followed by the filter (gain up**2);
    downsampling filters first and then uses a strided convolution.
    """
    out_channels, in_per_group, kh, kw = w.shape
    fw, fh = filter_size(f)
    px0, px1, py0, py1 = parse_padding(padding)
    if up > 1:
        px0, px1 = px0 + (fw + up - 1) // 2, px1 + (fw - up) // 2
        py0, py1 = py0 + (fh + up - 1) // 2, py1 + (fh - up) // 2
    if down > 1:
        px0, px1 = px0 + (fw - down + 1) // 2, px1 + (fw - down) // 2
        py0, py1 = py0 + (fh - down + 1) // 2, py1 + (fh - down) // 2
    pad = [px0, px1, py0, py1]
    if kw == 1 and kh == 1 and down > 1 and up == 1:  # 1x1: downsample first, then convolve
        x = upfirdn2d(x, f, down=down, padding=pad, flip_filter=flip_filter)
        return _conv2d(x, w, groups=groups, flip_weight=flip_weight)
    if kw == 1 and kh == 1 and up > 1 and down == 1:  # 1x1: convolve first, then upsample
        x = _conv2d(x, w, groups=groups, flip_weight=flip_weight)
        return upfirdn2d(x, f, up=up, padding=pad, gain=up ** 2, flip_filter=flip_filter)
    if down > 1 and up == 1:  # filter, then strided convolution
        x = upfirdn2d(x, f, padding=pad, flip_filter=flip_filter)
        return _conv2d(x, w, stride=down, groups=groups, flip_weight=flip_weight)
    if up > 1:  # transposed strided convolution, then filter
        return _conv_up(x, w, f, up, down, pad, groups, flip_weight, flip_filter)
    if px0 == px1 and py0 == py1 and px0 >= 0 and py0 >= 0:  # plain convolution
        return _conv2d(x, w, padding=[py0, px0], groups=groups, flip_weight=flip_weight)
    x = upfirdn2d(x, None, padding=pad, flip_filter=flip_filter)  # general padding/cropping
    return _conv2d(x, w, groups=groups, flip_weight=flip_weight)


def _conv_up(x: torch.Tensor, w: torch.Tensor, f: torch.Tensor | None, up: int, down: int, pad: list[int],
             groups: int, flip_weight: bool, flip_filter: bool) -> torch.Tensor:
    """The upsampling branch of ``conv2d_resample``: conv_transpose2d (stride ``up``) + FIR filter."""
    out_channels, in_per_group, kh, kw = w.shape
    if groups == 1:
        w = w.transpose(0, 1)  # [C_in, C_out, kh, kw]
    else:
        w = w.reshape(groups, out_channels // groups, in_per_group, kh, kw)
        w = w.transpose(1, 2).reshape(groups * in_per_group, out_channels // groups, kh, kw)
    px0, px1, py0, py1 = pad
    px0, px1, py0, py1 = px0 - (kw - 1), px1 - (kw - up), py0 - (kh - 1), py1 - (kh - up)
    pxt, pyt = max(min(-px0, -px1), 0), max(min(-py0, -py1), 0)
    x = _conv2d(x, w, stride=up, padding=[pyt, pxt], groups=groups, transpose=True, flip_weight=not flip_weight)
    x = upfirdn2d(x, f, padding=[px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt], gain=up ** 2,
                  flip_filter=flip_filter)
    if down > 1:
        x = downsample2d(x, f, down=down, flip_filter=flip_filter)
    return x


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor,
                     noise: torch.Tensor | None = None, up: int = 1, down: int = 1,
                     padding: int | Sequence[int] = 0, resample_filter: torch.Tensor | None = None,
                     demodulate: bool = True, flip_weight: bool = True, fused_modconv: bool = True) -> torch.Tensor:
    """StyleGAN2's modulated convolution: scale input channels by ``styles``, optionally demodulate.

    x: [N, I, H, W]; weight: [O, I, kh, kw]; styles: [N, I]; noise: broadcastable to the output
    [N, O, H', W'] and added after demodulation. ``fused_modconv`` folds the styles into per-sample
    weights (one grouped convolution); otherwise the input is scaled and the output demodulated, which
    is the same maths. In fp16 the weight and styles are pre-normalised by their max-norm (which the
    demodulation cancels) to avoid overflow.
    """
    n = x.shape[0]
    out_channels, in_channels, kh, kw = weight.shape
    if x.dtype == torch.float16 and demodulate:
        weight = weight * (1 / math.sqrt(in_channels * kh * kw)
                           / weight.norm(float("inf"), dim=[1, 2, 3], keepdim=True))  # max |w| = 1
        styles = styles / styles.norm(float("inf"), dim=1, keepdim=True)  # max |s| = 1
    w = None
    dcoefs = None
    if demodulate or fused_modconv:
        w = weight.unsqueeze(0) * styles.reshape(n, 1, -1, 1, 1)  # [N, O, I, kh, kw]
    if demodulate:
        dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()  # [N, O]
    if demodulate and fused_modconv:
        w = w * dcoefs.reshape(n, -1, 1, 1, 1)  # [N, O, I, kh, kw]
    if not fused_modconv:
        x = x * styles.to(x.dtype).reshape(n, -1, 1, 1)
        x = conv2d_resample(x, weight.to(x.dtype), f=resample_filter, up=up, down=down, padding=padding,
                            flip_weight=flip_weight)
        if demodulate:
            x = x * dcoefs.to(x.dtype).reshape(n, -1, 1, 1)
        if noise is not None:
            x = x + noise.to(x.dtype)
        return x
    x = x.reshape(1, -1, *x.shape[2:])  # [1, N*I, H, W]
    w = w.reshape(-1, in_channels, kh, kw)  # [N*O, I, kh, kw]
    x = conv2d_resample(x, w.to(x.dtype), f=resample_filter, up=up, down=down, padding=padding, groups=n,
                        flip_weight=flip_weight)
    x = x.reshape(n, -1, *x.shape[2:])  # [N, O, H', W']
    if noise is not None:
        x = x + noise.to(x.dtype)
    return x

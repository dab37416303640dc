"""StyleGAN3 generators (configs T and R) in plain torch, rebuilt from a NVIDIA snapshot record.

Scope: inference only, fp32 only, for the ``training.networks_stylegan3.Generator`` of Karras et al.,
"Alias-Free Generative Adversarial Networks" (2021). The network is built from the ``G_ema`` record that
``pipelines.stylegan_nets.reader.read_network_file`` returns; no code from the file is run. Sizes,
sampling rates, channels, paddings and FIR filters come from the record's attributes and tensors (the
stored ``up_filter``/``down_filter`` buffers are used as they are, radial ones included), not from
defaults assumed here.

Structure:

- mapping: normalize z (and the class embedding, when conditional) to unit second moment, an MLP of
  fully connected lrelu layers with a learning-rate multiplier, broadcast to ``num_ws`` copies, then
  truncation towards ``w_avg`` (``psi``, optionally only for the first ``cutoff`` copies);
- synthesis: Fourier features whose frequencies are rotated/translated by an affine of ``ws[0]`` and the
  stored ``transform``, then layers L0..L14, each a modulated conv (input scaled by the stored
  ``magnitude_ema``) followed by a filtered leaky ReLU (upsample, bias/lrelu/clamp, downsample); the last
  layer is the ToRGB layer (no demodulation, linear, clamped to ``conv_clamp``); the image is finally
  multiplied by ``output_scale``.

Training-time behaviour (updating ``magnitude_ema`` and ``w_avg``, fp16 layers) is left out: fp16 is
treated as off, which is what the reference code does on CPU as well.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipelines.stylegan_nets.ops import bias_act, fully_connected, normalize_2nd_moment, upfirdn2d
from studio.errors import StudioError

if TYPE_CHECKING:
    from pipelines.stylegan_nets.reader import PersistentModule

LRELU_SLOPE = 0.2  # the negative slope of every leaky ReLU in the network
LRELU_GAIN = math.sqrt(2)  # keeps the activations' second moment near 1 after a leaky ReLU
# ``ops`` supplies the StyleGAN2-ADA conventions this network shares (FIR resampling, bias_act, equalised
# fully connected layers); the StyleGAN3-specific maths (modulated conv with input gain, filtered lrelu,
# Fourier features) lives here.


# ----------------------------------------------------------------------------------------------------
# Reading the record


def _name(rec: PersistentModule) -> str:
    """The record's class name without the module path, for error messages."""
    return rec.class_name.rsplit(".", 1)[-1]


def _attr(rec: PersistentModule, key: str, default: Any = ...) -> Any:
    """A plain attribute of the record, then an init kwarg of the same name, then ``default``."""
    if key in rec.attrs:
        return rec.attrs[key]
    if key in rec.init_kwargs:
        return rec.init_kwargs[key]
    if default is ...:
        raise StudioError(f"StyleGAN3 file: {_name(rec)} lacks the attribute {key!r}")
    return default


def _tensor(rec: PersistentModule, key: str, optional: bool = False) -> torch.Tensor | None:
    """A parameter or buffer of the record as an fp32 tensor (None only if ``optional``)."""
    value = rec.parameters.get(key)
    if value is None:
        value = rec.buffers.get(key)
    if value is None:
        if optional:
            return None
        raise StudioError(f"StyleGAN3 file: {_name(rec)} lacks the tensor {key!r}")
    return torch.as_tensor(value).detach().to(torch.float32).clone()


def _child(rec: PersistentModule, key: str) -> PersistentModule:
    child = rec.modules.get(key)
    if child is None:
        raise StudioError(f"StyleGAN3 file: {_name(rec)} lacks the sub-module {key!r}")
    return child


def _pair(value: Any) -> tuple[int, int]:
    """A size stored as an int, a [2] array, a tuple or a list, as (width, height) ints."""
    arr = np.broadcast_to(np.asarray(value), [2])
    return int(arr[0]), int(arr[1])


# ----------------------------------------------------------------------------------------------------
# Ops


def filter_taps(f: torch.Tensor | None) -> int:
    """Taps of a (square or 1-D) filter along one axis; None is the 1-tap identity."""
    return 1 if f is None else int(f.shape[-1])


def filtered_lrelu(x: torch.Tensor, fu: torch.Tensor | None, fd: torch.Tensor | None, b: torch.Tensor | None,
                   up: int, down: int, padding: Sequence[int], gain: float, slope: float,
                   clamp: float | None) -> torch.Tensor:
    """Alias-suppressed nonlinearity: bias, upsample, leaky ReLU + gain + clamp, downsample.

    ``x`` [N, C, H, W] -> [N, C, H', W'] with H' = (H*up + pad_y - (taps_u - 1) - (taps_d - 1) + down - 1)
    // down. The bias is added before upsampling, so it passes through the same filter as the signal (and
    tapers like it into the zero padding at the borders). The upsampling filter carries a gain of up**2,
    which restores the amplitude lost to zero insertion in two dimensions. The nonlinearity runs at the
    higher rate, where the high frequencies it creates stay below Nyquist until the downsampling filter
    removes them. ``clamp`` bounds the activations after the gain (ToRGB: gain 1, slope 1, so a plain
    bias + clamp).
    """
    x = bias_act(x, b)
    x = upfirdn2d(x, fu, up=up, padding=padding, gain=up**2)  # [N, C, H*up + pad - taps_u + 1, ...]
    x = bias_act(x, act="lrelu", alpha=slope, gain=gain, clamp=clamp)
    return upfirdn2d(x, fd, down=down)  # [N, C, H', W']


def lrelu_padding(in_size: tuple[int, int], out_size: tuple[int, int], conv_kernel: int, up: int, down: int,
                  up_taps: int, down_taps: int) -> list[int]:
    """(left, right, top, bottom) padding of ``filtered_lrelu`` that turns the conv output into ``out_size``.

    The factors come from the rates: ``up = tmp_rate / in_rate`` and ``down = tmp_rate / out_rate``, where
    the nonlinearity's rate ``tmp_rate`` is the higher of the two rates times ``lrelu_upsampling`` (ToRGB:
    times 1). The conv grows the input by ``conv_kernel - 1`` (its padding is k - 1), so after upsampling
    there are ``(in + k - 1) * up`` samples; the downsampled output needs ``(out - 1) * down + 1`` samples
    before striding, and each (valid) filter eats ``taps - 1``: the total padding is the difference
    (negative: a crop, e.g. where sizes drop from 52 to the final 32). Zero insertion puts each input
    sample at the first of its ``up`` slots instead of their centre, so the split is shifted by ``up / 2``
    towards the low side: ``lo = (total + up) // 2``, which keeps the grids of all layers centred on one
    another under the symmetric interpretation of pixels (paper, appendix C.3).
    """
    pads = []
    for i in (0, 1):  # x, then y
        total = (out_size[i] - 1) * down + 1 - (in_size[i] + conv_kernel - 1) * up + up_taps + down_taps - 2
        lo = (total + up) // 2
        pads += [lo, total - lo]
    return [pads[0], pads[1], pads[2], pads[3]]


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, demodulate: bool,
                     padding: int, input_gain: torch.Tensor | None) -> torch.Tensor:
    """Per-sample conv: the weight [O, I, k, k] is scaled by ``styles`` [N, I] along its input channels.

    With ``demodulate`` the weight and styles are first brought to unit RMS (numerical safety only: the
    demodulation that follows undoes any common scale), then each output filter is normalized to unit L2
    norm. ``input_gain`` (scalar) rescales the input, folded into the weight. ``x`` [N, I, H, W] ->
    [N, O, H + 2p - k + 1, ...].
    """
    n = x.shape[0]
    out_ch, in_ch, kh, kw = weight.shape
    if demodulate:
        weight = weight * weight.square().mean(dim=[1, 2, 3], keepdim=True).rsqrt()
        styles = styles * styles.square().mean().rsqrt()  # one scale for the whole batch
    w = weight.unsqueeze(0) * styles.reshape(n, 1, in_ch, 1, 1)  # [N, O, I, k, k]
    if demodulate:
        w = w * (w.square().sum(dim=[2, 3, 4], keepdim=True) + 1e-8).rsqrt()
    if input_gain is not None:
        w = w * input_gain
    # One grouped conv: the batch becomes groups, each with its own weight.
    x = x.reshape(1, n * in_ch, *x.shape[2:])  # [1, N*I, H, W]
    x = F.conv2d(x, w.reshape(n * out_ch, in_ch, kh, kw).to(x.dtype), padding=padding, groups=n)
    return x.reshape(n, out_ch, *x.shape[2:])  # [N, O, H', W']


# ----------------------------------------------------------------------------------------------------
# Layers


class FullyConnected(nn.Module):
    """``y = act(x @ (W * weight_gain).T + b * bias_gain)``; the gains implement the learning-rate multiplier."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, weight_gain: float, bias_gain: float,
                 activation: str):
        super().__init__()
        if activation not in ("linear", "lrelu"):
            raise StudioError(f"StyleGAN3 file: unsupported activation {activation!r} in a fully connected layer")
        self.weight = nn.Parameter(weight, requires_grad=False)  # [out, in]
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)  # [out]
        self.weight_gain = float(weight_gain)
        self.bias_gain = float(bias_gain)
        self.activation = activation

    @classmethod
    def from_record(cls, rec: PersistentModule) -> FullyConnected:
        weight = _tensor(rec, "weight")
        lr = float(_attr(rec, "lr_multiplier", 1))
        weight_gain = _attr(rec, "weight_gain", lr / math.sqrt(weight.shape[1]))
        bias_gain = _attr(rec, "bias_gain", lr)
        return cls(weight, _tensor(rec, "bias", optional=True), weight_gain, bias_gain,
                   str(_attr(rec, "activation", "linear")))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, in] -> [N, out]
        return fully_connected(x, self.weight, self.bias, self.weight_gain, self.bias_gain, self.activation)


class MappingNetwork(nn.Module):
    """z [N, z_dim] (+ c [N, c_dim]) -> ws [N, num_ws, w_dim], with truncation towards ``w_avg``."""

    def __init__(self, z_dim: int, c_dim: int, w_dim: int, num_ws: int, embed: FullyConnected | None,
                 layers: list[FullyConnected], w_avg: torch.Tensor):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws = z_dim, c_dim, w_dim, num_ws
        self.embed = embed
        self.layers = nn.ModuleList(layers)
        self.register_buffer("w_avg", w_avg)  # [w_dim]

    @classmethod
    def from_record(cls, rec: PersistentModule) -> MappingNetwork:
        c_dim = int(_attr(rec, "c_dim"))
        num_layers = int(_attr(rec, "num_layers", sum(1 for k in rec.modules if re.fullmatch(r"fc\d+", k))))
        layers = [FullyConnected.from_record(_child(rec, f"fc{i}")) for i in range(num_layers)]
        embed = FullyConnected.from_record(_child(rec, "embed")) if c_dim > 0 else None
        return cls(int(_attr(rec, "z_dim")), c_dim, int(_attr(rec, "w_dim")), int(_attr(rec, "num_ws")),
                   embed, layers, _tensor(rec, "w_avg"))

    def forward(self, z: torch.Tensor, c: torch.Tensor | None, truncation_psi: float = 1,
                truncation_cutoff: int | None = None) -> torch.Tensor:
        x = normalize_2nd_moment(z.to(torch.float32))  # [N, z_dim]
        if self.embed is not None:
            if c is None:
                raise StudioError(f"this StyleGAN3 generator is conditional: give a class vector c of {self.c_dim}")
            y = normalize_2nd_moment(self.embed(c.to(torch.float32)))  # [N, w_dim]
            x = torch.cat([x, y], dim=1)
        for layer in self.layers:
            x = layer(x)  # [N, w_dim]
        ws = x.unsqueeze(1).repeat(1, self.num_ws, 1)  # [N, num_ws, w_dim]
        if truncation_psi != 1:
            head = ws[:, :truncation_cutoff]  # all of them for cutoff None
            ws[:, :truncation_cutoff] = self.w_avg.lerp(head, truncation_psi)
        return ws


class SynthesisInput(nn.Module):
    """Fourier features: w [N, w_dim] -> [N, C, H, W], sinusoids sampled on the layer's grid.

    The affine maps w to (cos, sin, tx, ty); normalized by the rotation's length it gives a rotation and a
    translation, applied (after the stored user ``transform``) to the frequencies and phases, which makes
    the generator equivariant to those motions of its input.
    """

    def __init__(self, affine: FullyConnected, weight: torch.Tensor, freqs: torch.Tensor, phases: torch.Tensor,
                 transform: torch.Tensor, size: tuple[int, int], sampling_rate: float, bandwidth: float):
        super().__init__()
        self.affine = affine  # w_dim -> 4
        self.weight = nn.Parameter(weight, requires_grad=False)  # [C, C]: mixes the features
        self.register_buffer("freqs", freqs)  # [C, 2]: cycles per unit, (x, y)
        self.register_buffer("phases", phases)  # [C]: in cycles
        self.register_buffer("transform", transform)  # [3, 3]
        self.size = size  # (W, H) in samples
        self.sampling_rate = sampling_rate  # samples per unit
        self.bandwidth = bandwidth  # the cutoff of layer 0

    @classmethod
    def from_record(cls, rec: PersistentModule) -> SynthesisInput:
        return cls(FullyConnected.from_record(_child(rec, "affine")), _tensor(rec, "weight"),
                   _tensor(rec, "freqs"), _tensor(rec, "phases"), _tensor(rec, "transform"),
                   _pair(_attr(rec, "size")), float(_attr(rec, "sampling_rate")), float(_attr(rec, "bandwidth")))

    def motion(self, w: torch.Tensor) -> torch.Tensor:
        """The rotation-after-translation from ``w`` [N, w_dim], composed with ``transform``: [N, 3, 3]."""
        t = self.affine(w)  # [N, 4] = (r_c, r_s, t_x, t_y)
        t = t / t[:, :2].norm(dim=1, keepdim=True)  # unit rotation; the translation shares the scale
        n = w.shape[0]
        rot = torch.eye(3, device=w.device).repeat(n, 1, 1)  # [N, 3, 3]
        rot[:, 0, 0], rot[:, 0, 1] = t[:, 0], -t[:, 1]
        rot[:, 1, 0], rot[:, 1, 1] = t[:, 1], t[:, 0]
        shift = torch.eye(3, device=w.device).repeat(n, 1, 1)  # [N, 3, 3]
        shift[:, 0, 2], shift[:, 1, 2] = -t[:, 2], -t[:, 3]
        return rot @ shift @ self.transform.unsqueeze(0)

    def grid(self, device: torch.device) -> torch.Tensor:
        """Sample positions [1, H, W, 2] (x, y) in units: pixel centres (i + 0.5 - size/2) / sampling_rate."""
        theta = torch.zeros(1, 2, 3, device=device)
        theta[0, 0, 0] = 0.5 * self.size[0] / self.sampling_rate
        theta[0, 1, 1] = 0.5 * self.size[1] / self.sampling_rate
        return F.affine_grid(theta, [1, 1, self.size[1], self.size[0]], align_corners=False)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        m = self.motion(w)  # [N, 3, 3]
        freqs = self.freqs.unsqueeze(0)  # [1, C, 2]
        # Moving the image by m: a sinusoid f.x + p becomes f.(A x + b) + p.
        phases = self.phases.unsqueeze(0) + (freqs @ m[:, :2, 2:]).squeeze(2)  # [N, C]
        freqs = freqs @ m[:, :2, :2]  # [N, C, 2]
        # The user transform may scale frequencies past the band: fade them out rather than alias.
        amplitudes = (1 - (freqs.norm(dim=2) - self.bandwidth)
                      / (self.sampling_rate / 2 - self.bandwidth)).clamp(0, 1)  # [N, C]
        grid = self.grid(w.device)  # [1, H, W, 2]
        x = (grid.unsqueeze(3) @ freqs.permute(0, 2, 1).unsqueeze(1).unsqueeze(2)).squeeze(3)  # [N, H, W, C]
        x = torch.sin((x + phases.unsqueeze(1).unsqueeze(2)) * (2 * math.pi))
        x = x * amplitudes.unsqueeze(1).unsqueeze(2)
        x = x @ (self.weight / math.sqrt(self.weight.shape[0])).t()  # [N, H, W, C]
        return x.permute(0, 3, 1, 2)  # [N, C, H, W]


class SynthesisLayer(nn.Module):
    """One layer: modulated conv, then filtered leaky ReLU; the ToRGB layer is linear and not demodulated."""

    def __init__(self, affine: FullyConnected, weight: torch.Tensor, bias: torch.Tensor, magnitude_ema: torch.Tensor,
                 up_filter: torch.Tensor | None, down_filter: torch.Tensor | None, up: int, down: int,
                 padding: list[int], is_torgb: bool, conv_clamp: float | None):
        super().__init__()
        self.affine = affine  # w_dim -> in_channels
        self.weight = nn.Parameter(weight, requires_grad=False)  # [O, I, k, k]
        self.bias = nn.Parameter(bias, requires_grad=False)  # [O]
        self.register_buffer("magnitude_ema", magnitude_ema)  # []: running mean square of the input
        # FIR filters, [taps] (separable) or [taps, taps] (radial); None where the factor is 1 (one tap).
        self.register_buffer("up_filter", up_filter)
        self.register_buffer("down_filter", down_filter)
        self.up, self.down, self.padding = up, down, padding
        self.is_torgb = is_torgb
        self.conv_clamp = conv_clamp

    @classmethod
    def from_record(cls, rec: PersistentModule) -> SynthesisLayer:
        weight = _tensor(rec, "weight")
        kernel = int(weight.shape[-1])
        is_torgb = bool(_attr(rec, "is_torgb"))
        in_rate, out_rate = float(_attr(rec, "in_sampling_rate")), float(_attr(rec, "out_sampling_rate"))
        # The nonlinearity runs at lrelu_upsampling times the higher of the two rates (ToRGB: no upsampling);
        # the padding is worked out from the sizes and checked against the one the layer stored.
        tmp_rate = float(_attr(rec, "tmp_sampling_rate", max(in_rate, out_rate)
                               * (1 if is_torgb else int(_attr(rec, "lrelu_upsampling", 2)))))
        up, down = int(round(tmp_rate / in_rate)), int(round(tmp_rate / out_rate))
        fu, fd = _tensor(rec, "up_filter", optional=True), _tensor(rec, "down_filter", optional=True)
        padding = lrelu_padding(_pair(_attr(rec, "in_size")), _pair(_attr(rec, "out_size")), kernel, up, down,
                                filter_taps(fu), filter_taps(fd))
        stored = rec.attrs.get("padding")
        if stored is not None and [int(p) for p in stored] != padding:
            raise StudioError(f"StyleGAN3 file: layer padding {list(stored)} does not match its sizes ({padding})")
        clamp = _attr(rec, "conv_clamp", None)
        return cls(FullyConnected.from_record(_child(rec, "affine")), weight, _tensor(rec, "bias"),
                   _tensor(rec, "magnitude_ema"), fu, fd, up, down, padding, is_torgb,
                   None if clamp is None else float(clamp))

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:  # [N, I, H, W], [N, w_dim]
        out_ch, in_ch, _, k = self.weight.shape
        styles = self.affine(w)  # [N, I]
        if self.is_torgb:  # no demodulation: the usual 1/sqrt(fan_in) weight scale goes into the styles
            styles = styles * (1 / math.sqrt(in_ch * k * k))
        x = modulated_conv2d(x, self.weight, styles, demodulate=not self.is_torgb, padding=k - 1,
                             input_gain=self.magnitude_ema.rsqrt())  # [N, O, H + k - 1, W + k - 1]
        gain, slope = (1.0, 1.0) if self.is_torgb else (LRELU_GAIN, LRELU_SLOPE)
        return filtered_lrelu(x, self.up_filter, self.down_filter, self.bias, self.up, self.down, self.padding,
                              gain=gain, slope=slope, clamp=self.conv_clamp)  # [N, O, out_h, out_w]


class SynthesisNetwork(nn.Module):
    """ws [N, num_ws, w_dim] -> image [N, img_channels, R, R]: ws[0] drives the input, ws[i+1] layer i."""

    def __init__(self, inp: SynthesisInput, layers: list[SynthesisLayer], names: list[str], output_scale: float):
        super().__init__()
        self.input = inp
        self.layers = nn.ModuleList(layers)
        self.layer_names = names
        self.output_scale = output_scale
        self.num_ws = len(layers) + 1

    @classmethod
    def from_record(cls, rec: PersistentModule) -> SynthesisNetwork:
        names = [str(n) for n in _attr(rec, "layer_names", [])] or sorted(
            (k for k in rec.modules if k.startswith("L") and k[1:].split("_")[0].isdigit()),
            key=lambda k: int(k[1:].split("_")[0]))
        if not names:
            raise StudioError("StyleGAN3 file: the synthesis network has no layers")
        layers = [SynthesisLayer.from_record(_child(rec, n)) for n in names]
        if not layers[-1].is_torgb:
            raise StudioError(f"StyleGAN3 file: the last synthesis layer {names[-1]} is not a ToRGB layer")
        return cls(SynthesisInput.from_record(_child(rec, "input")), layers, names,
                   float(_attr(rec, "output_scale", 1)))

    def forward(self, ws: torch.Tensor) -> torch.Tensor:
        if ws.ndim != 3 or ws.shape[1] != self.num_ws:
            raise StudioError(f"StyleGAN3 synthesis takes ws of shape [N, {self.num_ws}, w_dim], "
                              f"got {list(ws.shape)}")
        w = ws.to(torch.float32).unbind(dim=1)
        x = self.input(w[0])  # [N, C0, H0, W0]
        for layer, wi in zip(self.layers, w[1:]):
            x = layer(x, wi)
        return x * self.output_scale if self.output_scale != 1 else x  # [N, img_channels, R, R]


# ----------------------------------------------------------------------------------------------------
# Generator


def is_stylegan3_generator(module: object) -> bool:
    """Whether a record is a StyleGAN3 ``Generator``.

    Pickles name classes without their module (StyleGAN2's generator is a ``Generator`` too), so the
    layout decides: a mapping network, and a synthesis network whose ``input`` is a ``SynthesisInput``.
    """
    modules = getattr(module, "modules", None)
    if getattr(module, "class_name", "").rsplit(".", 1)[-1] != "Generator" or not isinstance(modules, dict):
        return False
    synthesis = modules.get("synthesis")
    source = synthesis.modules.get("input") if synthesis is not None else None
    return (modules.get("mapping") is not None and source is not None
            and source.class_name.rsplit(".", 1)[-1] == "SynthesisInput")


class StyleGAN3Generator(nn.Module):
    """A StyleGAN3 generator (config T or R): ``forward(z, c)`` = ``synthesis(mapping(z, c))``.

    ``mapping`` and ``synthesis`` are methods (the official call signatures); the sub-networks themselves
    are ``mapping_network`` and ``synthesis_network``.
    """

    def __init__(self, mapping: MappingNetwork, synthesis: SynthesisNetwork, img_resolution: int,
                 img_channels: int):
        super().__init__()
        if mapping.num_ws != synthesis.num_ws:
            raise StudioError(f"StyleGAN3 file: mapping gives {mapping.num_ws} ws, synthesis takes "
                              f"{synthesis.num_ws}")
        self.mapping_network = mapping
        self.synthesis_network = synthesis
        self.z_dim, self.c_dim, self.w_dim = mapping.z_dim, mapping.c_dim, mapping.w_dim
        self.num_ws = mapping.num_ws
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.eval().requires_grad_(False)

    @classmethod
    def from_persistent(cls, module: PersistentModule) -> StyleGAN3Generator:
        """Build from a generator record (take ``G_ema`` from a snapshot: see ``from_snapshot``)."""
        if not is_stylegan3_generator(module):
            found = getattr(module, "class_name", type(module).__name__)
            raise StudioError(f"not a StyleGAN3 generator: the record {found!r} has no Fourier-feature "
                              "synthesis input")
        return cls(MappingNetwork.from_record(_child(module, "mapping")),
                   SynthesisNetwork.from_record(_child(module, "synthesis")),
                   int(_attr(module, "img_resolution")), int(_attr(module, "img_channels")))

    @classmethod
    def from_snapshot(cls, snapshot: dict) -> StyleGAN3Generator:
        """Build from a whole snapshot dict: ``G_ema``, the averaged weights meant for sampling (``G`` is
        the training copy)."""
        if not isinstance(snapshot, dict) or snapshot.get("G_ema") is None:
            raise StudioError("this StyleGAN3 file has no G_ema network (the generator used for sampling)")
        return cls.from_persistent(snapshot["G_ema"])

    def _check_z(self, z: torch.Tensor, c: torch.Tensor | None) -> None:
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise StudioError(f"StyleGAN3 z must have shape [N, {self.z_dim}], got {list(z.shape)}")
        if self.c_dim > 0 and (c is None or c.shape != (z.shape[0], self.c_dim)):
            got = None if c is None else list(c.shape)
            raise StudioError(f"StyleGAN3 c must have shape [{z.shape[0]}, {self.c_dim}], got {got}")

    def mapping(self, z: torch.Tensor, c: torch.Tensor | None = None, truncation_psi: float = 1,
                truncation_cutoff: int | None = None) -> torch.Tensor:
        """z [N, z_dim], c [N, c_dim] (ignored when c_dim is 0) -> ws [N, num_ws, w_dim]."""
        self._check_z(z, c)
        return self.mapping_network(z, c, truncation_psi, truncation_cutoff)

    def synthesis(self, ws: torch.Tensor, noise_mode: str = "const") -> torch.Tensor:
        """ws [N, num_ws, w_dim] -> image [N, img_channels, R, R], about [-1, 1]. StyleGAN3 has no noise
        inputs, so ``noise_mode`` is accepted for symmetry with StyleGAN2 and ignored."""
        if ws.ndim != 3 or tuple(ws.shape[1:]) != (self.num_ws, self.w_dim):
            raise StudioError(f"StyleGAN3 ws must have shape [N, {self.num_ws}, {self.w_dim}], got {list(ws.shape)}")
        return self.synthesis_network(ws)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None, truncation_psi: float = 1,
                truncation_cutoff: int | None = None, noise_mode: str = "const") -> torch.Tensor:
        return self.synthesis(self.mapping(z, c, truncation_psi, truncation_cutoff), noise_mode=noise_mode)

"""StyleGAN2 generators in plain torch, built from published network files or created fresh for training.

Scope: ``StyleGAN2Generator``, the generator of Karras et al. 2020 (StyleGAN2) as laid out by
NVIDIA's stylegan2-ada-pytorch (``training.networks.Generator``): a mapping network (z, optional class
label) -> w with a tracked ``w_avg`` for truncation, and a synthesis network (4x4 learned constant,
modulated/demodulated 3x3 convolutions with per-layer noise, FIR upsampling, 'skip' / 'orig' / 'resnet'
output architectures). It is built either from an NVIDIA pickle's ``G_ema`` (``from_persistent``) or
from rosinality's stylegan2-pytorch ``g_ema`` weights (``from_rosinality``, which maps that layout onto
the same layers: the maths of the two implementations coincide). Everything runs in float32; the
fp16 settings of a pickle are ignored. Channel counts come from tensor shapes, resolutions from block
names. ``load_stylegan(path)`` reads any supported file and returns the right generator.

``StyleGAN2Generator.create(settings)`` makes a fresh, trainable 'skip' generator from a
``StyleGAN2Settings``, initialised as StyleGAN2 does. While such a generator is in training mode its
mapping tracks ``w_avg`` and, for a conditional generator, one average w per class (``w_avg_class``),
and its synthesis takes the unfused modulated convolution (the official training path); truncation
then pulls a w toward the centre of the class it was given. Networks read from files have no class
centres and track nothing, so they behave exactly as before. ``pipelines/stylegan_nets/training.py``
saves and loads created generators as a folder.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipelines.stylegan_nets import ops
from pipelines.stylegan_nets.reader import (
    PersistentModule,
    network_kind,
    read_network_file,
    rosinality_weights,
)
from pipelines.stylegan_nets.sg3 import StyleGAN3Generator
from studio.errors import StudioError

NOISE_MODES = ("const", "random", "none")  # fixed noise buffers, fresh noise, no noise
ARCHITECTURES = ("skip", "orig", "resnet")  # how the blocks' outputs become the image


@dataclass
class StyleGAN2Config:
    """What a built generator is; every field is read from the network file's tensors."""

    z_dim: int  # input latent size
    c_dim: int  # class-label size (one-hot), 0 for unconditional networks
    w_dim: int  # intermediate latent size
    num_ws: int  # how many w vectors synthesis takes, one per convolution plus the last ToRGB
    img_resolution: int  # output side in pixels
    img_channels: int  # output channels (3 for RGB)
    architecture: str  # 'skip', 'orig' or 'resnet'
    source: str  # 'nvidia' (stylegan2-ada pickle), 'rosinality' (stylegan2-pytorch checkpoint) or 'created'


# What a created generator may ask for (the official 1024 px networks use 512, 8 layers and 32768).
# Beyond these a hostile or mistyped config.json would build a network of many gigabytes, with
# random weights, before its tensors could be compared with it.
SETTINGS_BOUNDS = {
    "z_dim": (1, 2048), "w_dim": (1, 2048), "c_dim": (0, 32768), "mapping_layers": (1, 32),
    "resolution": (4, 4096), "img_channels": (1, 4), "channel_base": (1, 1 << 20), "channel_max": (1, 1024),
    "noise_seed": (0, 2**63 - 1),
}


@dataclass(frozen=True)
class StyleGAN2Settings:
    """What ``StyleGAN2Generator.create`` builds: a StyleGAN2-ADA 'skip' generator, fresh weights.

    The defaults are the official ones for a 1024 px network; small models set the sizes down.
    """

    z_dim: int = 512  # input latent size; z ~ N(0, I)
    w_dim: int = 512  # intermediate latent size, the space where edits are most linear
    c_dim: int = 0  # number of classes (c is one-hot [N, c_dim]); 0 = unconditional
    embed_dim: int | None = None  # class embedding size, concatenated with z; None = w_dim (official)
    mapping_layers: int = 8  # depth of the z -> w MLP; deeper disentangles more, trains slower
    mapping_lr_mul: float = 0.01  # the mapping learns 100x slower than synthesis, so w drifts slowly
    resolution: int = 1024  # output side in pixels, a power of two >= 4
    img_channels: int = 3  # RGB
    channel_base: int = 32768  # feature channels at resolution r are min(channel_base // r, channel_max) ...
    channel_max: int = 512  # ... so that low resolutions do not explode in width
    conv_clamp: float | None = None  # clamp conv outputs to +-this (official: 256 with fp16); None = no clamp
    # How the blocks' outputs become the image: 'skip' (a ToRGB per block, images summed upward) is the
    # only one created here. Not called 'architecture': a folder's config.json uses that name for its marker.
    synthesis_architecture: str = "skip"
    use_noise: bool = True  # per-pixel noise inputs, scaled by a learned strength per layer
    w_avg_beta: float = 0.995  # decay of the running mean of w (and per-class means) tracked in training
    noise_seed: int = 0  # seeds the fixed noise buffers, so 'const' rendering is reproducible

    def __post_init__(self):
        for name, (low, high) in SETTINGS_BOUNDS.items():
            _check_int(getattr(self, name), name, low, high)
        if self.embed_dim is not None:
            _check_int(self.embed_dim, "embed_dim", *SETTINGS_BOUNDS["w_dim"])
        for name in ("mapping_lr_mul", "w_avg_beta"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise StudioError(f"StyleGAN2 setting {name} must be a number, not {value!r}")
        if self.mapping_lr_mul <= 0 or not 0 <= self.w_avg_beta <= 1:
            raise StudioError(f"StyleGAN2 settings need mapping_lr_mul > 0 and w_avg_beta in [0, 1], got "
                              f"{self.mapping_lr_mul!r} and {self.w_avg_beta!r}")
        clamp = self.conv_clamp
        if clamp is not None and (isinstance(clamp, bool) or not isinstance(clamp, int | float) or not clamp > 0):
            raise StudioError(f"StyleGAN2 setting conv_clamp must be None or a positive number, not {clamp!r}")
        if self.resolution & (self.resolution - 1):
            raise StudioError(f"StyleGAN2 resolution must be a power of two >= 4, not {self.resolution}")
        if self.channel_base < self.resolution:  # the last block would have no channels
            raise StudioError(f"StyleGAN2 setting channel_base must be at least the resolution "
                              f"({self.resolution}), not {self.channel_base}")
        if self.synthesis_architecture != "skip":
            raise StudioError("a created StyleGAN2 generator has the 'skip' architecture, "
                              f"not {self.synthesis_architecture!r}")
        if not isinstance(self.use_noise, bool):
            raise StudioError(f"StyleGAN2 setting use_noise must be true or false, not {self.use_noise!r}")

    def channels(self, res: int) -> int:
        """Feature channels at resolution ``res``."""
        return min(self.channel_base // res, self.channel_max)

    @property
    def resolutions(self) -> list[int]:
        """The synthesis blocks' resolutions: 4, 8, ..., resolution."""
        return [2 ** i for i in range(2, int(math.log2(self.resolution)) + 1)]

    @property
    def num_ws(self) -> int:
        """Synthesis inputs: one per convolution, plus the last ToRGB (the others share the next conv's)."""
        return 2 * len(self.resolutions)


def _check_int(value, name: str, minimum: int, maximum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:40] + "..."
        raise StudioError(f"StyleGAN2 setting {name} must be an integer from {minimum} to {maximum}, not {shown}")


def _tensor(module: PersistentModule, name: str) -> torch.Tensor:
    value = module.parameters.get(name, module.buffers.get(name))
    if value is None:
        raise StudioError(f"the network layer {module.short_name!r} has no tensor {name!r}")
    return value


def _child(module: PersistentModule, name: str) -> PersistentModule:
    child = module.modules.get(name)
    if child is None:
        raise StudioError(f"the network layer {module.short_name!r} has no part {name!r}")
    return child


# ----------------------------------------------------------------------------------------------------
# Layers


class FullyConnectedLayer(nn.Module):
    """x @ (weight * weight_gain).T + bias * bias_gain, then an activation (equalised learning rate)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation: str = "linear",
                 lr_multiplier: float = 1, weight_gain: float | None = None, bias_gain: float | None = None):
        super().__init__()
        self.in_features, self.out_features, self.activation = in_features, out_features, activation
        self.lr_multiplier = float(lr_multiplier)  # what fresh weights are divided by (``create``)
        default_wg, default_bg = ops.fc_gains(in_features, lr_multiplier)
        self.weight_gain = float(default_wg if weight_gain is None else weight_gain)
        self.bias_gain = float(default_bg if bias_gain is None else bias_gain)
        self.weight = nn.Parameter(torch.zeros([out_features, in_features]))  # [out, in]
        self.bias = nn.Parameter(torch.zeros([out_features])) if bias else None  # [out]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.fully_connected(x, self.weight, self.bias, self.weight_gain, self.bias_gain, self.activation)

    @classmethod
    def from_persistent(cls, m: PersistentModule) -> FullyConnectedLayer:
        out_features, in_features = _tensor(m, "weight").shape
        lr = float(m.init_kwargs.get("lr_multiplier", 1))
        activation = m.attrs.get("activation", m.init_kwargs.get("activation", "linear"))
        return cls(in_features, out_features, bias=m.parameters.get("bias") is not None, activation=activation,
                   lr_multiplier=lr, weight_gain=m.attrs.get("weight_gain"), bias_gain=m.attrs.get("bias_gain"))


class MappingNetwork(nn.Module):
    """(z, c) -> ws [N, num_ws, w_dim]: normalised z (and embedded c) through an MLP, then truncation.

    With ``w_avg_beta`` set (created generators) the mapping tracks, in training mode, the running
    mean of w in ``w_avg`` and, with ``class_centres``, the running mean of each class's w in
    ``w_avg_class`` [c_dim, w_dim]; truncation pulls a w toward the centre of the class it is given.
    """

    def __init__(self, z_dim: int, c_dim: int, w_dim: int, num_ws: int, fcs: list[FullyConnectedLayer],
                 embed: FullyConnectedLayer | None, truncate_below_one_only: bool = False,
                 w_avg_beta: float | None = None, class_centres: bool = False):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws = z_dim, c_dim, w_dim, num_ws
        self.num_layers = len(fcs)
        self.truncate_below_one_only = truncate_below_one_only  # rosinality ignores psi >= 1
        self.w_avg_beta = w_avg_beta  # None: the centres stay as loaded, even in training mode
        if embed is not None:
            self.embed = embed
        for i, fc in enumerate(fcs):
            setattr(self, f"fc{i}", fc)
        self.register_buffer("w_avg", torch.zeros([w_dim]))  # [w_dim], the truncation centre
        self.has_class_centres = bool(class_centres and c_dim > 0)
        if self.has_class_centres:
            self.register_buffer("w_avg_class", torch.zeros([c_dim, w_dim]))  # [c_dim, w_dim], per-class centres

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None, truncation_psi: float = 1,
                truncation_cutoff: int | None = None) -> torch.Tensor:
        x = self.w_of(z, c)  # [N, w_dim]
        if self.training and self.w_avg_beta is not None:
            self._track_centres(x.detach(), c)
        ws = x.unsqueeze(1).repeat([1, self.num_ws, 1])  # [N, num_ws, w_dim]
        return self.truncate(ws, truncation_psi, truncation_cutoff, c)

    def w_of(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """One w per sample, before broadcasting and truncation. z: [N, z_dim]; c: [N, c_dim]."""
        _check_shape(z, (z.shape[0], self.z_dim), "z")
        x = ops.normalize_2nd_moment(z.to(torch.float32)) if self.z_dim > 0 else None
        if self.c_dim > 0:
            if c is None:
                raise StudioError(f"this generator is conditional: it needs a class label c of size {self.c_dim}")
            _check_shape(c, (z.shape[0], self.c_dim), "c")
            y = ops.normalize_2nd_moment(self.embed(c.to(torch.float32)))
            x = torch.cat([x, y], dim=1) if x is not None else y
        for i in range(self.num_layers):
            x = getattr(self, f"fc{i}")(x)
        return x

    @torch.no_grad()
    def _track_centres(self, w: torch.Tensor, c: torch.Tensor | None) -> None:
        """Move ``w_avg`` (and each class's centre seen in the batch) toward this batch's mean w [N, w_dim]."""
        self.w_avg.copy_(w.mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        if not self.has_class_centres or c is None:
            return
        c = c.to(w.dtype)  # [N, c_dim], one-hot (a soft label counts toward each class by its weight)
        counts = c.sum(dim=0)  # [c_dim]
        seen = counts > 0
        means = (c.t() @ w)[seen] / counts[seen, None]  # [seen, w_dim]
        self.w_avg_class[seen] = means.lerp(self.w_avg_class[seen], self.w_avg_beta)

    def truncate(self, ws: torch.Tensor, truncation_psi: float = 1, truncation_cutoff: int | None = None,
                 c: torch.Tensor | None = None) -> torch.Tensor:
        """Pull ws [N, num_ws, w_dim] toward the centre by psi, in the first ``truncation_cutoff`` layers.

        The centre is ``w_avg``; a mapping with class centres given one-hot labels c [N, c_dim] pulls
        each w toward its class's centre (``c @ w_avg_class``) instead.
        """
        if truncation_psi == 1 or (self.truncate_below_one_only and truncation_psi > 1):
            return ws
        centre = self.w_avg
        if self.has_class_centres and c is not None:
            _check_shape(c, (ws.shape[0], self.c_dim), "c")
            centre = (c.to(self.w_avg_class.dtype) @ self.w_avg_class).unsqueeze(1)  # [N, 1, w_dim]
        if truncation_cutoff is None:
            return centre.lerp(ws, truncation_psi)
        ws = ws.clone()
        ws[:, :truncation_cutoff] = centre.lerp(ws[:, :truncation_cutoff], truncation_psi)
        return ws


class SynthesisLayer(nn.Module):
    """Modulated convolution (optionally upsampling x2), noise, bias, lrelu, clamp."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, kernel_size: int = 3,
                 up: int = 1, use_noise: bool = True, activation: str = "lrelu", conv_clamp: float | None = None,
                 resample_filter: torch.Tensor | None = None):
        super().__init__()
        self.resolution, self.up, self.use_noise, self.activation = resolution, up, use_noise, activation
        self.conv_clamp = conv_clamp
        self.padding = kernel_size // 2
        self.act_gain = ops.ACTIVATIONS[activation].def_gain
        self.affine = FullyConnectedLayer(w_dim, in_channels)
        self.weight = nn.Parameter(torch.zeros([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.register_buffer("resample_filter", _filter_or_default(resample_filter))
        if use_noise:
            self.register_buffer("noise_const", torch.zeros([resolution, resolution]))  # [H, W]
            self.noise_strength = nn.Parameter(torch.zeros([]))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "const", gain: float = 1,
                fused_modconv: bool = True) -> torch.Tensor:
        styles = self.affine(w)  # [N, I]
        noise = None
        if self.use_noise and noise_mode == "random":
            noise = torch.randn([x.shape[0], 1, self.resolution, self.resolution], device=x.device)
            noise = noise * self.noise_strength
        if self.use_noise and noise_mode == "const":
            noise = self.noise_const * self.noise_strength  # [H, W]
        x = ops.modulated_conv2d(x, self.weight, styles, noise=noise, up=self.up, padding=self.padding,
                                 resample_filter=self.resample_filter, flip_weight=(self.up == 1),
                                 fused_modconv=fused_modconv)
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return ops.bias_act(x, self.bias, act=self.activation, gain=self.act_gain * gain, clamp=clamp)

    @classmethod
    def from_persistent(cls, m: PersistentModule, resolution: int, up: int) -> SynthesisLayer:
        out_channels, in_channels, kernel_size, _ = _tensor(m, "weight").shape
        w_dim = _tensor(_child(m, "affine"), "weight").shape[1]
        return cls(in_channels, out_channels, w_dim, resolution, kernel_size=kernel_size,
                   up=int(m.attrs.get("up", up)), use_noise="noise_const" in m.buffers,
                   activation=m.attrs.get("activation", "lrelu"), conv_clamp=m.attrs.get("conv_clamp"),
                   resample_filter=m.buffers.get("resample_filter"))


class ToRGBLayer(nn.Module):
    """1x1 modulated convolution without demodulation, plus bias and clamp."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, kernel_size: int = 1,
                 conv_clamp: float | None = None):
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels)
        self.weight = nn.Parameter(torch.zeros([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size * kernel_size)

    def forward(self, x: torch.Tensor, w: torch.Tensor, fused_modconv: bool = True) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain  # [N, I]
        x = ops.modulated_conv2d(x, self.weight, styles, demodulate=False, fused_modconv=fused_modconv)
        return ops.bias_act(x, self.bias, clamp=self.conv_clamp)

    @classmethod
    def from_persistent(cls, m: PersistentModule) -> ToRGBLayer:
        out_channels, in_channels, kernel_size, _ = _tensor(m, "weight").shape
        w_dim = _tensor(_child(m, "affine"), "weight").shape[1]
        layer = cls(in_channels, out_channels, w_dim, kernel_size=kernel_size, conv_clamp=m.attrs.get("conv_clamp"))
        layer.weight_gain = float(m.attrs.get("weight_gain", layer.weight_gain))
        return layer


class Conv2dLayer(nn.Module):
    """Plain equalised-learning-rate convolution with FIR resampling (the 'resnet' skip path)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True,
                 activation: str = "linear", up: int = 1, down: int = 1, conv_clamp: float | None = None,
                 resample_filter: torch.Tensor | None = None):
        super().__init__()
        self.activation, self.up, self.down, self.conv_clamp = activation, up, down, conv_clamp
        self.padding = kernel_size // 2
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size * kernel_size)
        self.act_gain = ops.ACTIVATIONS[activation].def_gain
        self.weight = nn.Parameter(torch.zeros([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = nn.Parameter(torch.zeros([out_channels])) if bias else None
        self.register_buffer("resample_filter", _filter_or_default(resample_filter))

    def forward(self, x: torch.Tensor, gain: float = 1) -> torch.Tensor:
        w = self.weight * self.weight_gain
        x = ops.conv2d_resample(x, w, f=self.resample_filter, up=self.up, down=self.down, padding=self.padding,
                                flip_weight=(self.up == 1))
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return ops.bias_act(x, self.bias, act=self.activation, gain=self.act_gain * gain, clamp=clamp)

    @classmethod
    def from_persistent(cls, m: PersistentModule) -> Conv2dLayer:
        out_channels, in_channels, kernel_size, _ = _tensor(m, "weight").shape
        return cls(in_channels, out_channels, kernel_size, bias=m.parameters.get("bias") is not None,
                   activation=m.attrs.get("activation", "linear"), up=int(m.attrs.get("up", 1)),
                   down=int(m.attrs.get("down", 1)), conv_clamp=m.attrs.get("conv_clamp"),
                   resample_filter=m.buffers.get("resample_filter"))


def _filter_or_default(f: torch.Tensor | None) -> torch.Tensor:
    return f.detach().clone().float() if f is not None else ops.setup_filter([1, 3, 3, 1])


# ----------------------------------------------------------------------------------------------------
# Blocks and networks


class SynthesisBlock(nn.Module):
    """One resolution: (const | upsampling conv0), conv1, optional ToRGB, and the image skip path."""

    def __init__(self, in_channels: int, resolution: int, architecture: str, is_last: bool,
                 conv0: SynthesisLayer | None, conv1: SynthesisLayer, torgb: ToRGBLayer | None,
                 skip: Conv2dLayer | None, resample_filter: torch.Tensor | None, const_channels: int = 0):
        super().__init__()
        self.in_channels, self.resolution, self.architecture, self.is_last = in_channels, resolution, architecture, is_last
        if in_channels == 0:
            self.const = nn.Parameter(torch.zeros([const_channels, resolution, resolution]))  # [C, H, W]
        if conv0 is not None:
            self.conv0 = conv0
        self.conv1 = conv1
        if torgb is not None:
            self.torgb = torgb
        if skip is not None:
            self.skip = skip
        self.register_buffer("resample_filter", _filter_or_default(resample_filter))
        self.num_conv = 1 + (conv0 is not None)
        self.num_torgb = int(torgb is not None)

    def forward(self, x: torch.Tensor | None, img: torch.Tensor | None, ws: torch.Tensor, noise_mode: str,
                fused_modconv: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        w_iter = iter(ws.unbind(dim=1))  # each [N, w_dim]
        kw = {"noise_mode": noise_mode, "fused_modconv": fused_modconv}
        if self.in_channels == 0:
            x = self.const.unsqueeze(0).repeat([ws.shape[0], 1, 1, 1])  # [N, C, 4, 4]
            x = self.conv1(x, next(w_iter), **kw)
        elif self.architecture == "resnet":
            y = self.skip(x, gain=math.sqrt(0.5))
            x = self.conv0(x, next(w_iter), **kw)
            x = self.conv1(x, next(w_iter), gain=math.sqrt(0.5), **kw)
            x = y + x
        else:
            x = self.conv0(x, next(w_iter), **kw)
            x = self.conv1(x, next(w_iter), **kw)
        if img is not None:
            img = ops.upsample2d(img, self.resample_filter)  # [N, C_img, 2H, 2W]
        if self.num_torgb:
            y = self.torgb(x, next(w_iter), fused_modconv=fused_modconv)
            img = img + y if img is not None else y
        return x, img

    @classmethod
    def from_persistent(cls, m: PersistentModule, resolution: int, architecture: str, is_last: bool
                        ) -> SynthesisBlock:
        has_const = m.parameters.get("const") is not None
        conv0 = None if has_const else SynthesisLayer.from_persistent(_child(m, "conv0"), resolution, up=2)
        conv1 = SynthesisLayer.from_persistent(_child(m, "conv1"), resolution, up=1)
        torgb = ToRGBLayer.from_persistent(m.modules["torgb"]) if m.modules.get("torgb") else None
        skip = Conv2dLayer.from_persistent(m.modules["skip"]) if m.modules.get("skip") else None
        in_channels = 0 if has_const else conv0.weight.shape[1]
        const_channels = _tensor(m, "const").shape[0] if has_const else 0
        return cls(in_channels, resolution, architecture, is_last, conv0, conv1, torgb, skip,
                   m.buffers.get("resample_filter"), const_channels)


class SynthesisNetwork(nn.Module):
    """ws [N, num_ws, w_dim] -> image [N, C, H, W], through blocks b4, b8, ..., b<resolution>."""

    def __init__(self, w_dim: int, blocks: dict[int, SynthesisBlock]):
        super().__init__()
        self.w_dim = w_dim
        self.block_resolutions = sorted(blocks)
        for res, block in blocks.items():
            setattr(self, f"b{res}", block)
        self.img_resolution = self.block_resolutions[-1]
        last = blocks[self.img_resolution]
        if last.num_torgb == 0:
            raise StudioError("the last synthesis block has no ToRGB layer, so the network makes no image")
        self.img_channels = last.torgb.weight.shape[0]
        self.num_ws = sum(b.num_conv for b in blocks.values()) + last.num_torgb

    def forward(self, ws: torch.Tensor, noise_mode: str = "const", force_fp32: bool = True,
                fused_modconv: bool | None = None) -> torch.Tensor:
        """Images [N, img_channels, H, W] from ws [N, num_ws, w_dim]. ``fused_modconv`` None: one grouped
        convolution per layer in eval mode, and in training mode the unfused form (same maths), whose
        backward pass is cheaper, as the official training does."""
        if fused_modconv is None:
            fused_modconv = not self.training
        if noise_mode not in NOISE_MODES:
            raise StudioError(f"noise_mode must be one of {', '.join(NOISE_MODES)}, not {noise_mode!r}")
        _check_shape(ws, (ws.shape[0], self.num_ws, self.w_dim), "ws")
        ws = ws.to(torch.float32)
        x = img = None
        w_idx = 0
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            block_ws = ws.narrow(1, w_idx, block.num_conv + block.num_torgb)  # [N, k, w_dim]
            x, img = block(x, img, block_ws, noise_mode, fused_modconv)
            w_idx += block.num_conv
        return img

    @classmethod
    def from_persistent(cls, m: PersistentModule) -> SynthesisNetwork:
        resolutions = sorted(int(name[1:]) for name in m.modules if re.fullmatch(r"b[0-9]+", name))
        if not resolutions or resolutions[0] != 4 or any(b != 2 * a for a, b in zip(resolutions, resolutions[1:])):
            raise StudioError(f"the synthesis network has unexpected blocks {sorted(m.modules)!r}")
        architecture = _architecture([m.modules[f"b{r}"] for r in resolutions])
        blocks = {r: SynthesisBlock.from_persistent(m.modules[f"b{r}"], r, architecture, r == resolutions[-1])
                  for r in resolutions}
        w_dim = blocks[4].conv1.affine.weight.shape[1]
        return cls(w_dim, blocks)


def _architecture(blocks: list[PersistentModule]) -> str:
    """'resnet' if blocks have a skip convolution, 'skip' if every block has a ToRGB, else 'orig'."""
    if any(b.modules.get("skip") is not None for b in blocks):
        return "resnet"
    if all(b.modules.get("torgb") is not None for b in blocks):
        return "skip"
    return "orig"


def _check_shape(t: torch.Tensor, shape: tuple[int, ...], name: str) -> None:
    if not isinstance(t, torch.Tensor) or tuple(t.shape) != tuple(shape):
        got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise StudioError(f"{name} must have shape {list(shape)}, got {list(got) if isinstance(got, tuple) else got}")


# ----------------------------------------------------------------------------------------------------
# The generator


class StyleGAN2Generator(nn.Module):
    """A StyleGAN2 generator: ``mapping`` (z, c) -> ws and ``synthesis`` ws -> image, in float32.

    ``G.mapping(z, c, truncation_psi=1, truncation_cutoff=None)`` gives ws [N, num_ws, w_dim];
    ``G.synthesis(ws, noise_mode='const')`` gives images [N, img_channels, H, W] (about [-1, 1]);
    ``G(z, c, truncation_psi, truncation_cutoff, noise_mode)`` does both. A conditional generator takes
    one-hot labels c [N, c_dim] (``one_hot_classes`` makes them from class ids). ``G.settings`` is the
    ``StyleGAN2Settings`` of a generator made by ``create`` (None for one read from a network file).
    """

    def __init__(self, mapping: MappingNetwork, synthesis: SynthesisNetwork, source: str,
                 settings: StyleGAN2Settings | None = None):
        super().__init__()
        self.settings = settings
        if mapping.w_dim != synthesis.w_dim:
            raise StudioError(f"the mapping makes w of size {mapping.w_dim} but synthesis takes {synthesis.w_dim}")
        self.mapping, self.synthesis = mapping, synthesis
        self.config = StyleGAN2Config(
            z_dim=mapping.z_dim, c_dim=mapping.c_dim, w_dim=mapping.w_dim, num_ws=synthesis.num_ws,
            img_resolution=synthesis.img_resolution, img_channels=synthesis.img_channels,
            architecture=getattr(synthesis, f"b{synthesis.img_resolution}").architecture, source=source)
        self.z_dim, self.c_dim, self.w_dim = mapping.z_dim, mapping.c_dim, mapping.w_dim
        self.num_ws, self.img_resolution, self.img_channels = synthesis.num_ws, synthesis.img_resolution, synthesis.img_channels

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None, truncation_psi: float = 1,
                truncation_cutoff: int | None = None, noise_mode: str = "const") -> torch.Tensor:
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        return self.synthesis(ws, noise_mode=noise_mode)

    @staticmethod
    def mix(ws_a: torch.Tensor, ws_b: torch.Tensor, inject_index: int) -> torch.Tensor:
        """Style mixing: layers [0, inject_index) from ws_a, the rest from ws_b (both [N, num_ws, w_dim])."""
        if ws_a.shape != ws_b.shape or not 0 <= inject_index <= ws_a.shape[1]:
            raise StudioError(f"cannot mix ws of shapes {list(ws_a.shape)} and {list(ws_b.shape)} at layer {inject_index}")
        return torch.cat([ws_a[:, :inject_index], ws_b[:, inject_index:]], dim=1)

    # -- builders --------------------------------------------------------------------------------------

    @classmethod
    def create(cls, settings: StyleGAN2Settings, generator: torch.Generator | None = None) -> StyleGAN2Generator:
        """A fresh, trainable generator (training mode), initialised as StyleGAN2 does.

        Weights are N(0, 1) / lr_multiplier (their gains applied at run time), biases 0 except the
        style affines' 1 (every style starts as a plain convolution), noise strengths 0, the 4x4
        constant N(0, 1); drawn from ``generator`` (torch's global one when None). The fixed noise
        buffers are drawn from their own generator seeded with ``settings.noise_seed``.
        """
        g = cls.from_settings(settings)
        with torch.no_grad():
            for module in g.modules():
                if isinstance(module, FullyConnectedLayer):
                    module.weight.normal_(generator=generator).div_(module.lr_multiplier)
                elif isinstance(module, SynthesisLayer | ToRGBLayer):
                    module.weight.normal_(generator=generator)
                    module.affine.bias.fill_(1)
                elif isinstance(module, SynthesisBlock) and module.in_channels == 0:
                    module.const.normal_(generator=generator)
            noise_gen = torch.Generator().manual_seed(settings.noise_seed)
            for module in g.modules():
                if isinstance(module, SynthesisLayer) and module.use_noise:
                    module.noise_const.normal_(generator=noise_gen)
        return g.train().requires_grad_(True)

    @classmethod
    def from_settings(cls, settings: StyleGAN2Settings) -> StyleGAN2Generator:
        """The layers ``settings`` describe, every tensor zero (``create`` initialises them, a loader fills them)."""
        s = settings
        embed_dim = s.w_dim if s.embed_dim is None else s.embed_dim
        embed = FullyConnectedLayer(s.c_dim, embed_dim) if s.c_dim else None
        features = [s.z_dim + (embed_dim if s.c_dim else 0)] + [s.w_dim] * s.mapping_layers
        fcs = [FullyConnectedLayer(a, b, activation="lrelu", lr_multiplier=s.mapping_lr_mul)
               for a, b in zip(features, features[1:])]
        blocks = {}
        for res in s.resolutions:
            in_channels, out_channels = (s.channels(res // 2) if res > 4 else 0), s.channels(res)
            layer = {"use_noise": s.use_noise, "conv_clamp": s.conv_clamp}
            conv0 = SynthesisLayer(in_channels, out_channels, s.w_dim, res, up=2, **layer) if res > 4 else None
            conv1 = SynthesisLayer(out_channels, out_channels, s.w_dim, res, **layer)
            torgb = ToRGBLayer(out_channels, s.img_channels, s.w_dim, conv_clamp=s.conv_clamp)
            blocks[res] = SynthesisBlock(in_channels, res, "skip", res == s.resolution, conv0, conv1, torgb,
                                         None, None, const_channels=out_channels)
        synthesis = SynthesisNetwork(s.w_dim, blocks)
        mapping = MappingNetwork(s.z_dim, s.c_dim, s.w_dim, synthesis.num_ws, fcs, embed,
                                 w_avg_beta=s.w_avg_beta, class_centres=True)
        return cls(mapping, synthesis, source="created", settings=s)

    @classmethod
    def from_persistent(cls, module: PersistentModule | dict) -> StyleGAN2Generator:
        """Build from an NVIDIA pickle's generator (``G_ema``; a whole pickle dict is also accepted)."""
        if isinstance(module, dict):
            module = module.get("G_ema")
        if not isinstance(module, PersistentModule):
            raise StudioError("a StyleGAN2 generator is built from the pickle's 'G_ema' network")
        synthesis = SynthesisNetwork.from_persistent(_child(module, "synthesis"))
        mapping = _mapping_from_persistent(_child(module, "mapping"), synthesis.num_ws)
        g = cls(mapping, synthesis, source="nvidia")
        _load_exactly(g, module.state_dict(), "the pickle's G_ema")
        return g.eval().requires_grad_(False)

    @classmethod
    def from_rosinality(cls, state_dict: dict[str, torch.Tensor], latent_avg: torch.Tensor | None = None,
                        lr_mlp: float = 0.01) -> StyleGAN2Generator:
        """Build from rosinality's ``g_ema`` state_dict; ``latent_avg`` ([1, w_dim] or [w_dim]) is the
        truncation centre (when None it is the mean w of 4096 z drawn with seed 0, as ``mean_latent``
        would give). ``lr_mlp`` is the mapping's learning-rate multiplier (stylegan2-pytorch's default)."""
        nvidia_state = _rosinality_to_nvidia(state_dict)
        synthesis = _synthesis_for_state(nvidia_state)
        n_mlp = len([k for k in state_dict if re.fullmatch(r"style\.[0-9]+\.weight", k)])
        fcs = []
        for i in range(n_mlp):
            out_f, in_f = nvidia_state[f"mapping.fc{i}.weight"].shape
            fcs.append(FullyConnectedLayer(in_f, out_f, activation="lrelu", lr_multiplier=lr_mlp))
        w_dim = fcs[-1].out_features
        mapping = MappingNetwork(fcs[0].in_features, 0, w_dim, synthesis.num_ws, fcs, None,
                                 truncate_below_one_only=True)
        g = cls(mapping, synthesis, source="rosinality")
        if latent_avg is not None and latent_avg.numel() != w_dim:
            raise StudioError(f"latent_avg has shape {list(latent_avg.shape)}, expected [1, {w_dim}] or [{w_dim}]")
        avg = latent_avg if latent_avg is not None else torch.zeros([w_dim])
        nvidia_state["mapping.w_avg"] = avg.detach().reshape(-1).float()
        _load_exactly(g, nvidia_state, "the rosinality g_ema weights")
        if latent_avg is None:
            g.mapping.w_avg.copy_(_mean_w(g))
        return g.eval().requires_grad_(False)


def one_hot_classes(class_ids: torch.Tensor | list[int], c_dim: int) -> torch.Tensor:
    """Class ids [N] -> the one-hot labels [N, c_dim] (float32) that a conditional mapping takes as c."""
    ids = torch.as_tensor(class_ids)
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise StudioError(f"class ids must be integers, not {ids.dtype}")
    ids = ids.reshape(-1)
    if c_dim < 1 or (ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= c_dim)):
        raise StudioError(f"class ids must lie in [0, {c_dim}), got {ids[:8].tolist()}")
    return F.one_hot(ids.long(), c_dim).to(torch.float32)


def _mapping_from_persistent(m: PersistentModule, num_ws: int) -> MappingNetwork:
    count = len([n for n in m.modules if re.fullmatch(r"fc[0-9]+", n)])
    if count == 0:
        raise StudioError("the mapping network has no layers")
    fcs = [FullyConnectedLayer.from_persistent(_child(m, f"fc{i}")) for i in range(count)]
    embed = FullyConnectedLayer.from_persistent(m.modules["embed"]) if m.modules.get("embed") else None
    c_dim = embed.in_features if embed is not None else 0
    z_dim = fcs[0].in_features - (embed.out_features if embed is not None else 0)
    if m.buffers.get("w_avg") is None:
        raise StudioError("the mapping network has no 'w_avg', so truncation has no centre")
    return MappingNetwork(z_dim, c_dim, fcs[-1].out_features, num_ws, fcs, embed)


def _load_exactly(g: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Copy every tensor in; the names and shapes must match the built layers one to one."""
    own = g.state_dict()
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or extra:
        raise StudioError(f"{what} do not fit the network built from their shapes (missing {missing[:4]!r}, "
                          f"unexpected {extra[:4]!r})")
    for name, t in state.items():
        if tuple(t.shape) != tuple(own[name].shape):
            raise StudioError(f"{what}: tensor {name!r} has shape {list(t.shape)}, expected {list(own[name].shape)}")
    g.load_state_dict({k: v.detach().to(torch.float32) for k, v in state.items()}, strict=True)


# ----------------------------------------------------------------------------------------------------
# rosinality's layout


def _rosinality_to_nvidia(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename (and rescale) rosinality's g_ema tensors into this module's NVIDIA-style names.

    rosinality scales each conv weight by 1/sqrt(fan_in) before modulating; demodulation makes that
    scale matter only through its epsilon, so it is folded into the stored weight here. Its blur and
    upsample kernels sum to 4 (the x2 upsampling gain); the FIR filters here sum to 1 and carry that
    gain in the resampling call instead.
    """
    def get(name: str) -> torch.Tensor:
        if name not in sd:
            raise StudioError(f"the rosinality weights have no tensor {name!r}")
        return sd[name].detach().float()

    out: dict[str, torch.Tensor] = {}
    for i in range(1, 1 + len([k for k in sd if re.fullmatch(r"style\.[0-9]+\.weight", k)])):
        out[f"mapping.fc{i - 1}.weight"] = get(f"style.{i}.weight")
        out[f"mapping.fc{i - 1}.bias"] = get(f"style.{i}.bias")
    const = get("input.input")  # [1, C, 4, 4]
    out["synthesis.b4.const"] = const[0]
    n_convs = len([k for k in sd if re.fullmatch(r"convs\.[0-9]+\.conv\.weight", k)])
    up_kernel = _rosinality_kernel(sd, "to_rgbs.0.upsample.kernel")
    _styled_conv(out, get, "conv1", "synthesis.b4.conv1", "noises.noise_0", up_kernel)
    _to_rgb(out, get, "to_rgb1", "synthesis.b4.torgb")
    out["synthesis.b4.resample_filter"] = up_kernel
    for j in range(n_convs // 2):
        res = 8 * 2 ** j
        blur = _rosinality_kernel(sd, f"convs.{2 * j}.conv.blur.kernel")
        _styled_conv(out, get, f"convs.{2 * j}", f"synthesis.b{res}.conv0", f"noises.noise_{2 * j + 1}", blur)
        _styled_conv(out, get, f"convs.{2 * j + 1}", f"synthesis.b{res}.conv1", f"noises.noise_{2 * j + 2}", blur)
        _to_rgb(out, get, f"to_rgbs.{j}", f"synthesis.b{res}.torgb")
        out[f"synthesis.b{res}.resample_filter"] = _rosinality_kernel(sd, f"to_rgbs.{j}.upsample.kernel")
    return out


def _rosinality_kernel(sd: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """A rosinality blur/upsample kernel [k, k] normalised to sum 1 (the standard one if absent)."""
    k = sd.get(name)
    if k is None:
        return ops.setup_filter([1, 3, 3, 1])
    k = k.detach().float()
    return k / k.sum()


def _styled_conv(out: dict, get, src: str, dst: str, noise: str, resample_filter: torch.Tensor) -> None:
    weight = get(f"{src}.conv.weight")[0]  # [O, I, k, k]
    fan_in = weight.shape[1] * weight.shape[2] * weight.shape[3]
    out[f"{dst}.weight"] = weight * (1 / math.sqrt(fan_in))
    out[f"{dst}.bias"] = get(f"{src}.activate.bias")
    out[f"{dst}.affine.weight"] = get(f"{src}.conv.modulation.weight")
    out[f"{dst}.affine.bias"] = get(f"{src}.conv.modulation.bias")
    out[f"{dst}.noise_strength"] = get(f"{src}.noise.weight").reshape([])
    out[f"{dst}.noise_const"] = get(noise)[0, 0]  # [H, W]
    out[f"{dst}.resample_filter"] = resample_filter


def _to_rgb(out: dict, get, src: str, dst: str) -> None:
    out[f"{dst}.weight"] = get(f"{src}.conv.weight")[0]  # [C_img, I, 1, 1]
    out[f"{dst}.bias"] = get(f"{src}.bias").reshape(-1)  # [C_img]
    out[f"{dst}.affine.weight"] = get(f"{src}.conv.modulation.weight")
    out[f"{dst}.affine.bias"] = get(f"{src}.conv.modulation.bias")


def _synthesis_for_state(state: dict[str, torch.Tensor]) -> SynthesisNetwork:
    """Synthesis layers (architecture 'skip', lrelu, no clamp) shaped after NVIDIA-named tensors."""
    resolutions = sorted({int(m.group(1)) for k in state if (m := re.match(r"synthesis\.b([0-9]+)\.", k))})
    w_dim = state["synthesis.b4.conv1.affine.weight"].shape[1]
    blocks = {}
    for res in resolutions:
        p = f"synthesis.b{res}."
        conv0 = _layer_for_state(state, p + "conv0", w_dim, res, up=2) if res > 4 else None
        conv1 = _layer_for_state(state, p + "conv1", w_dim, res, up=1)
        img_channels, in_channels = state[p + "torgb.weight"].shape[:2]
        torgb = ToRGBLayer(in_channels, img_channels, w_dim)
        const_channels = state[p + "const"].shape[0] if res == 4 else 0
        blocks[res] = SynthesisBlock(0 if res == 4 else conv0.weight.shape[1], res, "skip", res == resolutions[-1],
                                     conv0, conv1, torgb, None, state[p + "resample_filter"], const_channels)
    return SynthesisNetwork(w_dim, blocks)


def _layer_for_state(state: dict, prefix: str, w_dim: int, res: int, up: int) -> SynthesisLayer:
    out_channels, in_channels, k, _ = state[prefix + ".weight"].shape
    return SynthesisLayer(in_channels, out_channels, w_dim, res, kernel_size=k, up=up,
                          resample_filter=state[prefix + ".resample_filter"])


@torch.no_grad()
def _mean_w(g: StyleGAN2Generator, count: int = 4096, seed: int = 0) -> torch.Tensor:
    """The mean w of ``count`` z drawn with ``seed`` (the truncation centre when a file has none)."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn([count, g.z_dim], generator=gen)
    return g.mapping.w_of(z).mean(dim=0)


# ----------------------------------------------------------------------------------------------------
# Loading any supported file


def load_stylegan(path: str | os.PathLike) -> nn.Module:
    """The generator of a StyleGAN network file (NVIDIA StyleGAN2/StyleGAN3 pickle or rosinality
    checkpoint), in eval mode; the file is read without running code it names."""
    obj = read_network_file(path)
    return build_generator(obj, network_kind(obj))


def build_generator(contents: dict, kind: str) -> nn.Module:
    """The generator of a network file's contents (as ``read_network_file`` gives them) of ``kind``."""
    if kind == "nvidia-stylegan2":
        return StyleGAN2Generator.from_persistent(contents["G_ema"])
    if kind == "rosinality-stylegan2":
        state, avg = rosinality_weights(contents)
        return StyleGAN2Generator.from_rosinality(state, avg)
    if kind == "nvidia-stylegan3":
        return StyleGAN3Generator.from_persistent(contents["G_ema"])
    raise StudioError(f"unknown StyleGAN network kind {kind!r}")

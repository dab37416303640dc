"""A compact StyleGAN2-style generator and discriminator in plain torch, stored as config.json + safetensors.

Mapping z -> w (MLP, tracked ``w_avg`` for truncation), synthesis w -> image (learned 4x4
constant, modulated/demodulated convs, per-layer noise, toRGB skips), after Karras et al.,
"Analyzing and Improving the Image Quality of StyleGAN" (2020). Simplifications: bilinear
upsampling instead of FIR filters, one w for every layer unless a [N, num_ws, w_dim] is given.

Conditional models (``num_classes > 0``, as in StyleGAN2-ADA): the mapping network takes z and
a class label, embeds the label, normalizes both and maps their concatenation to w; it also
tracks one average w per class, the centre that class-aware truncation pulls toward. The
discriminator then scores (image, class) pairs with a projection head (Miyato & Koyama, 2018).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from itertools import pairwise
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from pipelines.common import read_json_config
from studio.errors import StudioError, printable

ARCHITECTURE = "latent-studio-stylegan2"  # the marker in config.json that says "this folder is our GAN"
# The sizes a config may ask for. Beyond these a hostile or mistyped config.json would build a network
# of many gigabytes, with random weights, before its weights could be compared with it.
SIZE_BOUNDS = {
    "z_dim": (1, 2048), "w_dim": (1, 2048), "mapping_layers": (1, 32), "resolution": (4, 4096),
    "channel_base": (1, 1 << 20), "channel_max": (1, 1024), "img_channels": (1, 4), "noise_seed": (0, 2**63 - 1),
    "num_classes": (0, 32768),
}


@dataclass
class GeneratorConfig:
    """What defines a generator; written to config.json next to the weights."""

    z_dim: int = 512  # input latent size; z ~ N(0, I)
    w_dim: int = 512  # intermediate latent size; the space where edits are most linear
    mapping_layers: int = 8  # depth of the z -> w MLP; deeper disentangles more, trains slower
    resolution: int = 64  # output side in pixels, a power of two >= 4
    channel_base: int = 8192  # channels at resolution r are channel_base // r ...
    channel_max: int = 256  # ... capped here, so low resolutions do not explode in width
    img_channels: int = 3  # RGB
    mapping_lr_mul: float = 0.01  # slower learning rate for the mapping MLP, as in StyleGAN
    w_avg_beta: float = 0.995  # decay of the running mean of w tracked during training (truncation centre)
    noise_seed: int = 0  # seeds the fixed per-layer noise, so rendering is reproducible
    num_classes: int = 0  # 0 = unconditional; else the mapping also takes a class id in [0, num_classes)
    # Optional factorization of the class id (mixed radix, last factor fastest), e.g. [9, 2] for
    # category x style: each factor gets its own embedding, added to the class's own, so what the
    # classes share (a style, a category) is learned from all of them.
    class_factors: list[int] = field(default_factory=list)

    def channels(self, res: int) -> int:
        """Feature channels at resolution ``res``."""
        return min(self.channel_base // res, self.channel_max)

    @property
    def resolutions(self) -> list[int]:
        return [2**i for i in range(2, int(math.log2(self.resolution)) + 1)]

    @property
    def class_code_dim(self) -> int:
        """Length of the multi-hot class code: one slot per class plus one per value of each factor."""
        return self.num_classes + sum(self.class_factors) if self.num_classes else 0

    def __post_init__(self):
        for name, (low, high) in SIZE_BOUNDS.items():
            _check_size(getattr(self, name), name, low, high)
        lr, beta = self.mapping_lr_mul, self.w_avg_beta
        if not _is_number(lr) or not 0 < lr < math.inf:
            raise StudioError(f"GAN config field mapping_lr_mul must be a positive number, not {_shown(lr)}")
        if not _is_number(beta) or not 0 <= beta <= 1:
            raise StudioError(f"GAN config field w_avg_beta must be a number from 0 to 1, not {_shown(beta)}")
        if not isinstance(self.class_factors, list | tuple):
            raise StudioError(f"GAN config field class_factors must be a list of whole numbers, "
                              f"not {_shown(self.class_factors)}")
        self.class_factors = list(self.class_factors)
        for f in self.class_factors:
            _check_size(f, "class_factors", 1, SIZE_BOUNDS["num_classes"][1])
        if self.class_factors and math.prod(self.class_factors) != self.num_classes:
            raise StudioError(
                f"class_factors {self.class_factors} do not multiply to num_classes={self.num_classes}"
            )
        if self.resolution & (self.resolution - 1):
            raise StudioError(f"GAN resolution must be a power of two >= 4, not {self.resolution}")
        if self.channel_base < self.resolution:  # the last block would have no channels
            raise StudioError(f"GAN config field channel_base must be at least the resolution ({self.resolution}), "
                              f"not {self.channel_base}")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _shown(value: object) -> str:
    return printable(repr(value), 40)


def _check_size(value: object, name: str, low: int, high: int) -> None:
    """A size field of the config: a whole number (not a bool) within [low, high]; the error names the field."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise StudioError(f"GAN config field {name} must be a whole number from {low} to {high}, not {_shown(value)}")


class EqualLinear(nn.Module):
    """Fully connected layer with equalized learning rate (weights scaled at run time, not at init)."""

    def __init__(
        self, in_dim: int, out_dim: int, bias_init: float = 0.0, lr_mul: float = 1.0, act: bool = False
    ):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.full([out_dim], float(bias_init) / lr_mul))
        self.scale, self.lr_mul, self.act = lr_mul / math.sqrt(in_dim), lr_mul, act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)
        return F.leaky_relu(x, 0.2) * math.sqrt(2) if self.act else x


def class_code(c: torch.Tensor, cfg: GeneratorConfig, dtype: torch.dtype) -> torch.Tensor:
    """Class ids [N] -> multi-hot code [N, cfg.class_code_dim]: the class, then each factor's value."""
    parts, rest = [F.one_hot(c, cfg.num_classes)], c
    factor_parts = []
    for n in reversed(cfg.class_factors):
        factor_parts.insert(0, F.one_hot(rest % n, n))
        rest = torch.div(rest, n, rounding_mode="floor")
    return torch.cat(parts + factor_parts, dim=1).to(dtype)


class MappingNetwork(nn.Module):
    """(z[, class]) -> w: normalize z (and the class embedding) by the second moment, then an MLP.

    Tracks ``w_avg`` (and, for a conditional model, ``w_avg_class`` [num_classes, w_dim]) while
    training: the centres of the truncation trick.
    """

    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        self.cfg, self.num_classes = cfg, cfg.num_classes
        dims = [cfg.z_dim + (cfg.w_dim if cfg.num_classes else 0)] + [cfg.w_dim] * cfg.mapping_layers
        if cfg.num_classes:  # multi-hot class code -> embedding (an equalized linear layer: learned tables)
            self.embed = EqualLinear(cfg.class_code_dim, cfg.w_dim)
        self.layers = nn.Sequential(
            *[EqualLinear(a, b, lr_mul=cfg.mapping_lr_mul, act=True) for a, b in pairwise(dims)]
        )
        self.register_buffer("w_avg", torch.zeros(cfg.w_dim))
        if cfg.num_classes:
            self.register_buffer("w_avg_class", torch.zeros(cfg.num_classes, cfg.w_dim))
        self.w_avg_beta = cfg.w_avg_beta

    def _check_classes(self, c: torch.Tensor | None, n: int) -> torch.Tensor | None:
        if not self.num_classes:
            if c is not None:
                raise StudioError("this GAN is unconditional: it takes no class label")
            return None
        if c is None:
            raise StudioError(
                f"this GAN is conditional: it needs a class id in [0, {self.num_classes}) per item"
            )
        c = torch.as_tensor(c, dtype=torch.long, device=self.w_avg.device).reshape(-1)
        if c.numel() == 1 and n > 1:
            c = c.expand(n)
        if c.numel() != n or (c < 0).any() or (c >= self.num_classes).any():
            raise StudioError(f"class ids must be {n} integers in [0, {self.num_classes}), got {c.tolist()}")
        return c

    def forward(self, z: torch.Tensor, psi: float = 1.0, c: torch.Tensor | None = None) -> torch.Tensor:
        """w for z ``[N, z_dim]`` (and class ids ``c`` ``[N]`` when conditional), truncated by ``psi``."""
        c = self._check_classes(c, z.shape[0])
        x = z * torch.rsqrt(z.square().mean(dim=1, keepdim=True) + 1e-8)  # [N, z_dim]
        if c is not None:
            y = self.embed(class_code(c, self.cfg, z.dtype))  # [N, w_dim]
            x = torch.cat([x, y * torch.rsqrt(y.square().mean(dim=1, keepdim=True) + 1e-8)], dim=1)
        w = self.layers(x)  # [N, w_dim]
        if self.training:
            with torch.no_grad():
                self.w_avg.copy_(w.detach().mean(0).lerp(self.w_avg, self.w_avg_beta))
                if c is not None:  # each class seen in the batch moves its own centre
                    sums = torch.zeros_like(self.w_avg_class).index_add_(
                        0, c, w.detach().to(self.w_avg.dtype)
                    )
                    counts = torch.bincount(c, minlength=self.num_classes)
                    seen = counts > 0
                    means = sums[seen] / counts[seen, None]
                    self.w_avg_class[seen] = means.lerp(self.w_avg_class[seen], self.w_avg_beta)
        return self.truncate(w, psi, c)

    def truncate(self, w: torch.Tensor, psi: float, c: torch.Tensor | None = None) -> torch.Tensor:
        """The truncation trick: pull w toward the average, ``w_avg + psi * (w - w_avg)``.

        A conditional model pulls each w toward its class's average when ``c`` is given.
        """
        if psi == 1.0:
            return w
        if self.num_classes and c is not None:
            centre = self.w_avg_class[self._check_classes(c, w.shape[0])]  # [N, w_dim]
            if w.dim() == 3:
                centre = centre[:, None]
            return centre.to(w.dtype).lerp(w, psi)
        return self.w_avg.to(w.dtype).lerp(w, psi)


class ModulatedConv(nn.Module):
    """Conv whose weights are scaled per sample by a style from w, then (optionally) demodulated."""

    def __init__(self, in_ch: int, out_ch: int, w_dim: int, kernel: int = 3, demodulate: bool = True):
        super().__init__()
        self.affine = EqualLinear(w_dim, in_ch, bias_init=1.0)  # style starts at 1 = plain conv
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_ch))
        self.scale, self.demodulate, self.padding = (
            1 / math.sqrt(in_ch * kernel * kernel),
            demodulate,
            kernel // 2,
        )

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        # Modulating the input activations and demodulating the outputs is the same as scaling the
        # weights per sample (Karras et al. 2020, eq. 1-3) but runs as one ordinary batched conv.
        style = self.affine(w)  # [N, in_ch]
        weight = self.weight * self.scale  # [out, in, k, k]
        x = F.conv2d(x * style[:, :, None, None], weight, padding=self.padding)  # [N, out, H, W]
        if self.demodulate:  # 1 / ||w'|| per sample and output channel: sum_in style^2 * sum_k weight^2
            dcoef = torch.rsqrt(style.square() @ weight.square().sum(dim=[2, 3]).t() + 1e-8)  # [N, out]
            x = x * dcoef[:, :, None, None]
        return x + self.bias[None, :, None, None]


class StyleLayer(nn.Module):
    """Modulated 3x3 conv + scaled noise + bias + leaky ReLU; optionally upsamples by 2 first."""

    def __init__(self, in_ch: int, out_ch: int, w_dim: int, res: int, up: bool, noise_gen: torch.Generator):
        super().__init__()
        self.conv, self.up = ModulatedConv(in_ch, out_ch, w_dim), up
        self.register_buffer("noise_const", torch.randn(1, 1, res, res, generator=noise_gen))
        self.noise_strength = nn.Parameter(torch.zeros([]))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "const") -> torch.Tensor:
        if self.up:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        x = self.conv(x, w)
        if noise_mode == "const":
            x = x + self.noise_const.to(x.dtype) * self.noise_strength
        elif noise_mode == "random":  # training only: fresh noise each step
            x = x + torch.randn_like(x[:, :1]) * self.noise_strength
        return F.leaky_relu(x, 0.2) * math.sqrt(2)


class SynthesisNetwork(nn.Module):
    """w -> image: learned 4x4 constant, two style layers per resolution, toRGB outputs summed upward."""

    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        gen = torch.Generator().manual_seed(cfg.noise_seed)
        self.const = nn.Parameter(torch.randn(cfg.channels(4), 4, 4))
        self.layers, self.to_rgb = nn.ModuleList(), nn.ModuleList()
        in_ch = cfg.channels(4)
        for res in cfg.resolutions:
            out_ch = cfg.channels(res)
            if res > 4:
                self.layers.append(StyleLayer(in_ch, out_ch, cfg.w_dim, res, up=True, noise_gen=gen))
            self.layers.append(StyleLayer(out_ch, out_ch, cfg.w_dim, res, up=False, noise_gen=gen))
            self.to_rgb.append(ModulatedConv(out_ch, cfg.img_channels, cfg.w_dim, kernel=1, demodulate=False))
            in_ch = out_ch
        self.num_ws = len(self.layers) + len(self.to_rgb)  # style inputs, for per-layer w (style mixing)

    def forward(self, w: torch.Tensor, noise_mode: str = "const") -> torch.Tensor:
        ws = w[:, None].expand(-1, self.num_ws, -1) if w.dim() == 2 else w  # [N, num_ws, w_dim]
        x = self.const[None].expand(ws.shape[0], -1, -1, -1)  # [N, C, 4, 4]
        img, i, layers = None, 0, iter(self.layers)
        for block, to_rgb in enumerate(self.to_rgb):
            for _ in range(1 if block == 0 else 2):
                x = next(layers)(x, ws[:, i], noise_mode)
                i += 1
            rgb = to_rgb(x, ws[:, i])  # [N, 3, H, W]
            i += 1
            img = (
                rgb
                if img is None
                else F.interpolate(img, scale_factor=2, mode="bilinear", align_corners=False) + rgb
            )
        return img


class Generator(nn.Module):
    """z -> image, nominally in [-1, 1] (clamp when converting to pixels): ``mapping`` then ``synthesis``."""

    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        self.config = cfg
        self.mapping = MappingNetwork(cfg)
        self.synthesis = SynthesisNetwork(cfg)

    def forward(
        self, z: torch.Tensor, psi: float = 1.0, noise_mode: str = "const", c: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.synthesis(self.mapping(z, psi, c), noise_mode)  # [N, 3, R, R]


class EqualConv2d(nn.Module):
    """Conv with equalized learning rate: N(0, 1) weights scaled by 1/sqrt(fan_in) at run time."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_ch)) if bias else None
        self.scale, self.padding = 1 / math.sqrt(in_ch * kernel * kernel), kernel // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.padding)


def _lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2) * math.sqrt(2)  # the gain keeps activations at unit scale


class DiscriminatorBlock(nn.Module):
    """Residual block: two 3x3 convs then downsample by 2, plus a 1x1 downsampled skip."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv0 = EqualConv2d(in_ch, in_ch, 3)
        self.conv1 = EqualConv2d(in_ch, out_ch, 3)
        self.skip = EqualConv2d(in_ch, out_ch, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.skip(F.avg_pool2d(x, 2))
        x = _lrelu(self.conv0(x))
        x = F.avg_pool2d(_lrelu(self.conv1(x)), 2)
        return (x + skip) / math.sqrt(2)


class Discriminator(nn.Module):
    """image (and class) -> realness score: fromRGB, residual downsampling to 4x4, minibatch stddev, dense head.

    Every layer has an equalized learning rate, like the generator's, so one Adam learning rate
    suits both. Conditional (``cfg.num_classes > 0``): a projection head adds
    ``<embed(c), h> / sqrt(dim)`` to the score, h being the last hidden features, so D judges
    whether the image fits its class. With ``aux=True`` it also has an auxiliary classifier head
    (AC-GAN, Odena et al. 2017): class logits from the same features, trained on real images, so
    the generator can be pushed toward pictures that read as the class asked for.
    """

    def __init__(self, cfg: GeneratorConfig, stddev_group: int = 4, aux: bool = False):
        super().__init__()
        res = cfg.resolutions[::-1]  # R, R/2, ..., 4
        self.from_rgb = EqualConv2d(cfg.img_channels, cfg.channels(res[0]), 1)
        self.blocks = nn.Sequential(
            *[DiscriminatorBlock(cfg.channels(a), cfg.channels(b)) for a, b in pairwise(res)]
        )
        ch = cfg.channels(4)
        self.stddev_group = stddev_group
        self.conv = EqualConv2d(ch + 1, ch, 3)
        self.fc = EqualLinear(ch * 16, ch, act=True)
        self.out = EqualLinear(ch, 1)
        self.cfg, self.num_classes = cfg, cfg.num_classes
        if cfg.num_classes:  # projection vectors: one per class plus one per factor value, summed
            self.embed = nn.Parameter(torch.randn(cfg.class_code_dim, ch))
        if aux:
            if not cfg.num_classes:
                raise StudioError("an auxiliary classifier needs a conditional discriminator")
            self.aux = EqualLinear(ch, cfg.num_classes)

    def minibatch_stddev(self, x: torch.Tensor) -> torch.Tensor:
        """Append the mean stddev across a group of samples as a feature map: lets D see diversity."""
        n, c, h, w = x.shape
        g = min(self.stddev_group, n)
        while n % g:
            g -= 1
        y = x.reshape(g, n // g, c, h, w).std(dim=0, unbiased=False).mean(dim=[1, 2, 3])  # [N/g]
        return torch.cat([x, y.repeat(g)[:, None, None, None].expand(n, 1, h, w)], dim=1)

    def forward(self, img: torch.Tensor, c: torch.Tensor | None = None, with_aux: bool = False):
        """Scores ``[N, 1]``; with ``with_aux``, also the auxiliary class logits ``[N, num_classes]``."""
        x = _lrelu(self.from_rgb(img))  # [N, C, R, R]
        x = self.blocks(x)  # [N, C4, 4, 4]
        x = _lrelu(self.conv(self.minibatch_stddev(x)))
        h = self.fc(x.flatten(1))  # [N, C4]
        score = self.out(h)  # [N, 1]
        if self.num_classes:
            if c is None:
                raise StudioError("this discriminator is conditional: it needs class ids")
            e = class_code(c, self.cfg, h.dtype) @ self.embed  # [N, C4]
            score = score + (e * h).sum(dim=1, keepdim=True) / math.sqrt(h.shape[1])
        return (score, self.aux(h)) if with_aux else score


def _atomic_write(path: Path, write) -> None:
    """Write through a temp file in the same folder, fsync, then rename over ``path``."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def save_generator(
    gen: Generator, folder: str | Path, extra: dict | None = None, dtype: torch.dtype | None = None
) -> Path:
    """Write ``config.json`` (with the architecture marker) and ``model.safetensors`` into ``folder``.

    ``extra``: more top-level config entries (e.g. a conditional model's ``labels``), kept for the
    adapter; ``dtype``: store floating tensors in this dtype (e.g. ``torch.float16``) to save space.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"architecture": ARCHITECTURE, **asdict(gen.config), **(extra or {})}
    state = {
        k: (
            v.detach().to("cpu", dtype) if dtype is not None and v.is_floating_point() else v.detach().cpu()
        ).contiguous()
        for k, v in gen.state_dict().items()
    }
    _atomic_write(
        folder / "model.safetensors",
        lambda p: save_file(state, str(p), metadata={"architecture": ARCHITECTURE}),
    )
    _atomic_write(folder / "config.json", lambda p: p.write_text(json.dumps(config, indent=2) + "\n"))
    return folder


def read_config_json(folder: str | Path) -> dict:
    """The JSON object in ``folder/config.json``; one StudioError line for anything else."""
    return read_json_config(Path(folder) / "config.json", "GAN")


def read_extra(folder: str | Path) -> dict:
    """The entries of ``folder/config.json`` that are not GeneratorConfig fields (e.g. ``labels``)."""
    data = read_config_json(folder)
    known = {f.name for f in fields(GeneratorConfig)} | {"architecture"}
    return {k: v for k, v in data.items() if k not in known}


def read_config(folder: str | Path) -> GeneratorConfig:
    """The GeneratorConfig in ``folder/config.json``, refusing folders that are not ours."""
    data = read_config_json(folder)
    if data.get("architecture") != ARCHITECTURE:
        raise StudioError(f"{printable(Path(folder) / 'config.json')} is not a {ARCHITECTURE} config "
                          f"(architecture={_shown(data.get('architecture'))})")
    known = {f.name for f in fields(GeneratorConfig)}
    return GeneratorConfig(**{k: v for k, v in data.items() if k in known})


def load_generator(folder: str | Path) -> Generator:
    """Build the generator from ``config.json`` and load ``model.safetensors`` (no code is executed)."""
    from pipelines.stylegan_nets.sg2 import _load_exactly

    config = read_config(folder)
    path = Path(folder) / "model.safetensors"
    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError, ValueError) as exc:  # missing, truncated, or not safetensors at all
        raise StudioError(f"cannot read the GAN weights {printable(path)}: {printable(exc, 200)}") from None
    bad = sorted(k for k, v in tensors.items() if not v.is_floating_point())
    if bad:
        raise StudioError(f"{printable(path)}: tensors {_shown(bad[:4])} are not floating point")
    gen = Generator(config)
    _load_exactly(gen, tensors, f"the tensors of {printable(path)}")  # names and shapes, one line on a mismatch
    return gen.eval()

"""The generators behind the GAN adapter: one small interface, whatever network file they came from.

The adapter samples z, maps it to w, truncates and synthesises; it needs nothing else of a
generator, so each kind of network says only these things here:

- ``ProjectNetwork``: the studio's own generator (``pipelines/stylegan.py``: ``emoji-gan``,
  ``tiny-gan``), whose conditional models pull truncation toward a per-class centre;
- ``StyleGanNetwork``: NVIDIA StyleGAN2/StyleGAN2-ADA and StyleGAN3 networks and rosinality's
  StyleGAN2, read by ``pipelines/stylegan_nets`` (classes given as one-hot vectors, one global
  truncation centre, optionally cut off after the first layers).

Every w is untruncated until render time (truncation is a render setting), and a w+ holds one
w per synthesis input, ``[N, num_ws, w_dim]``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict

import torch
import torch.nn.functional as F
from torch import nn

from pipelines.common import weight_sample
from pipelines.stylegan import Generator
from pipelines.stylegan_nets.sg2 import StyleGAN2Generator
from pipelines.stylegan_nets.sg3 import StyleGAN3Generator
from studio.space import fingerprint


class GanNetwork(ABC):
    """What the GAN adapter asks of a generator; ``module`` is the torch module that holds its weights."""

    module: nn.Module
    z_dim: int
    w_dim: int
    num_ws: int  # synthesis inputs: the rows of a w+
    num_classes: int  # 0 for an unconditional network
    resolution: int  # output side in pixels

    @abstractmethod
    def w(self, z: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        """Untruncated w [N, w_dim] for z [N, z_dim] and class ids c [N] (None when unconditional)."""

    @abstractmethod
    def truncate(self, ws: torch.Tensor, psi: float, c: torch.Tensor | None) -> torch.Tensor:
        """The truncation trick on ws [N, num_ws, w_dim]: pulled toward the centre by ``psi``."""

    @abstractmethod
    def synthesize(self, ws: torch.Tensor) -> torch.Tensor:
        """Pictures [N, 3, R, R], about [-1, 1], from ws [N, num_ws, w_dim], with the fixed noise."""

    @abstractmethod
    def style_weights(self, layers: range) -> torch.Tensor:
        """The style affines of the synthesis inputs in ``layers``, stacked: [S, w_dim] (SeFa's A)."""

    @abstractmethod
    def family(self) -> str:
        """The fingerprint of the spaces this network defines (its settings and a sample of its weights)."""

    @abstractmethod
    def activation_cells(self) -> int:
        """An item's largest feature map, cells x channels: what sizes a batch."""

    def centre(self, c: torch.Tensor | None) -> torch.Tensor:
        """Where projection starts: the truncation centre [N or 1, w_dim] (the class's, where there is one)."""
        return self.truncate(self.w(torch.zeros(1, self.z_dim, device=self._device()), c)[:, None], 0.0, c)[:, 0]

    def _device(self) -> torch.device:
        return next(self.module.parameters()).device


class ProjectNetwork(GanNetwork):
    """The studio's own StyleGAN-style generator (``pipelines/stylegan.py``)."""

    def __init__(self, generator: Generator):
        self.module = generator
        cfg = generator.config
        self.config = cfg
        self.z_dim, self.w_dim, self.num_classes = cfg.z_dim, cfg.w_dim, cfg.num_classes
        self.num_ws, self.resolution = generator.synthesis.num_ws, cfg.resolution

    def w(self, z: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        return self.module.mapping(z, 1.0, c=c)

    def truncate(self, ws: torch.Tensor, psi: float, c: torch.Tensor | None) -> torch.Tensor:
        return self.module.mapping.truncate(ws, psi, c)

    def synthesize(self, ws: torch.Tensor) -> torch.Tensor:
        return self.module.synthesis(ws, noise_mode="const")

    def style_weights(self, layers: range) -> torch.Tensor:
        synthesis, convs = self.module.synthesis, iter(self.module.synthesis.layers)
        rows = []  # the modules reading w+ rows 0, 1, ... (see SynthesisNetwork.forward)
        for block, to_rgb in enumerate(synthesis.to_rgb):
            rows += [next(convs).conv for _ in range(1 if block == 0 else 2)] + [to_rgb]
        return torch.cat([rows[i].affine.weight * rows[i].affine.scale for i in layers])

    def family(self) -> str:
        config = asdict(self.config)
        if not config["num_classes"]:  # unconditional models keep the fingerprint they had before classes
            del config["num_classes"], config["class_factors"]
        return fingerprint("stylegan", config, weight_sample(self.module))

    def activation_cells(self) -> int:
        c = self.config
        return max(r * r * c.channels(r) for r in c.resolutions)

    def centre(self, c: torch.Tensor | None) -> torch.Tensor:
        if self.num_classes and c is not None:
            return self.module.mapping.w_avg_class[c]
        return self.module.mapping.w_avg[None]


class StyleGanNetwork(GanNetwork):
    """A StyleGAN2 or StyleGAN3 generator read from a network file or a converted folder."""

    def __init__(self, generator: StyleGAN2Generator | StyleGAN3Generator):
        self.module = generator
        if isinstance(generator, StyleGAN3Generator):
            self.kind = "nvidia-stylegan3"
        else:
            self.kind = "rosinality-stylegan2" if generator.config.source == "rosinality" else "nvidia-stylegan2"
        self.z_dim, self.w_dim, self.num_ws = generator.z_dim, generator.w_dim, generator.num_ws
        self.num_classes, self.resolution = generator.c_dim, generator.img_resolution

    @property
    def _mapping(self) -> nn.Module:
        """The mapping network (StyleGAN3's ``mapping`` is the method that calls it)."""
        return self.module.mapping_network if isinstance(self.module, StyleGAN3Generator) else self.module.mapping

    def _one_hot(self, c: torch.Tensor | None, n: int) -> torch.Tensor | None:
        if not self.num_classes:
            return None
        return F.one_hot(c.reshape(-1).expand(n) if c.numel() == 1 else c, self.num_classes).float()

    def w(self, z: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        return self.module.mapping(z, self._one_hot(c, len(z)))[:, 0]

    def truncate(self, ws: torch.Tensor, psi: float, c: torch.Tensor | None) -> torch.Tensor:
        if psi == 1.0:
            return ws
        if isinstance(self.module, StyleGAN2Generator):  # the studio's own keep a centre per class
            return self.module.mapping.truncate(ws, psi, None, self._one_hot(c, len(ws)))
        return self._mapping.w_avg.to(ws.dtype).lerp(ws, psi)

    def synthesize(self, ws: torch.Tensor) -> torch.Tensor:
        return self.module.synthesis(ws, noise_mode="const")

    def style_weights(self, layers: range) -> torch.Tensor:
        readers = self._readers()
        return torch.cat([m.affine.weight * m.affine.weight_gain for i in layers for m in readers[i]])

    def _readers(self) -> list[list[nn.Module]]:
        """Per w+ row, the modules whose style affine reads it."""
        if self.kind == "nvidia-stylegan3":  # the input's affine turns w[0] into a rotation and a shift
            s = self.module.synthesis_network
            return [[s.input], *([layer] for layer in s.layers)]
        s = self.module.synthesis
        rows: list[list[nn.Module]] = [[] for _ in range(self.num_ws)]
        row = 0
        for res in s.block_resolutions:  # a block reads rows [row, row + convs], its ToRGB the one after
            block = getattr(s, f"b{res}")
            convs = [block.conv0, block.conv1] if block.num_conv == 2 else [block.conv1]
            for i, conv in enumerate(convs):
                rows[row + i].append(conv)
            if block.num_torgb:
                rows[row + block.num_conv].append(block.torgb)
            row += block.num_conv
        return rows

    def family(self) -> str:
        facts = {"network": self.kind, "z_dim": self.z_dim, "w_dim": self.w_dim, "num_ws": self.num_ws,
                 "c_dim": self.num_classes, "resolution": self.resolution}
        return fingerprint("stylegan", facts, weight_sample(self.module))

    def activation_cells(self) -> int:
        width = max(p.shape[0] for p in self.module.parameters() if p.dim() == 4)
        side = self.resolution * (2 if self.kind == "nvidia-stylegan3" else 1)  # SG3 works above its output size
        return side * side * width

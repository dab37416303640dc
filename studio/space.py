"""Spaces: where a tensor is meaningful (its kind, the model family that defines it, its shape)."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass

from studio.errors import SpaceMismatch, StudioError
from studio.lazy import torch

# The kinds of space the studio knows, and whether a standard normal draw lives there
# (which decides whether interpolating spherically is the natural choice).
KINDS = {
    "noise": True,  # diffusion starting noise, stored unscaled (before init_noise_sigma)
    "vae": False,  # VAE image latents; the Latent records its scale convention
    "text": False,  # text-encoder hidden states (prompt embeddings)
    "hspace": False,  # denoiser bottleneck activations (UNet mid block, transformer middle block)
    "gan-z": True,  # StyleGAN input latent z ~ N(0, I)
    "gan-w": False,  # StyleGAN intermediate latent w = mapping(z)
    "gan-w+": False,  # StyleGAN extended latent: one w per synthesis layer, shape (num_ws, w_dim)
}

# The role a GAN generation holds its one latent under, by the kind of space it is in.
GAN_ROLES = {"gan-z": "z", "gan-w": "w", "gan-w+": "w+"}


Part = tuple[str, tuple[int, ...]]  # (name, shape) of one piece of a packed tensor


@dataclass(frozen=True)
class Space:
    """A tensor's home: ``kind`` (see KINDS), ``family`` (fingerprint of the defining component), ``shape`` per item.

    A space with ``parts`` holds several tensors packed into one flat vector, in order: SDXL's text
    conditioning is its sequence embeddings and its pooled embedding together, so that every op
    (lerp, means, vectors) moves all of them alike. ``shape`` is then the flat length.
    """

    kind: str
    family: str
    shape: tuple[int, ...]
    parts: tuple[Part, ...] = ()

    def __post_init__(self):
        if self.kind not in KINDS:
            raise StudioError(f"unknown space kind {self.kind!r}; expected one of {', '.join(KINDS)}")
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        parts = tuple((str(n), tuple(int(s) for s in shape)) for n, shape in self.parts)
        object.__setattr__(self, "parts", parts)
        if parts and self.shape != (sum(math.prod(shape) for _, shape in parts),):
            raise StudioError(f"a packed space's shape must be the total length of its parts, not {self.shape}")
        if self.kind == "gan-w+" and (parts or len(self.shape) != 2):
            raise StudioError(f"a gan-w+ space's shape is (num_ws, w_dim), one w per layer; got {self.shape}")

    @classmethod
    def packed(cls, kind: str, family: str, parts: list[Part]) -> Space:
        """A space of several named tensors packed into one flat vector (see ``pack``/``unpack``)."""
        if len(parts) == 1:  # one part is just a plain space of that shape
            return cls(kind, family, parts[0][1])
        return cls(kind, family, (sum(math.prod(shape) for _, shape in parts),), tuple(parts))

    def pack(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        """Per-part tensors, each [N, *part shape], -> [N, *shape]."""
        if not self.parts:
            (only,) = tensors
            return only
        return torch.cat([t.flatten(1) for t in tensors], dim=1)

    def unpack(self, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
        """[N, *shape] -> part name -> [N, *part shape] (a plain space has the single part ``""``)."""
        if not self.parts:
            return {"": tensor}
        out, start = {}, 0
        for name, shape in self.parts:
            size = math.prod(shape)
            out[name] = tensor[:, start : start + size].reshape(len(tensor), *shape)
            start += size
        return out

    @property
    def gaussian(self) -> bool:
        """True where items are standard normal draws (noise, gan-z): slerp is the natural path."""
        return KINDS[self.kind]

    def __str__(self) -> str:
        if self.parts:
            shape = " + ".join(f"{name} {'x'.join(map(str, s))}" for name, s in self.parts)
        else:
            shape = "x".join(map(str, self.shape))
        return f"{self.kind}[{self.family}]({shape})"

    def to_json(self) -> dict:
        out = {"kind": self.kind, "family": self.family, "shape": list(self.shape)}
        if self.parts:
            out["parts"] = [[name, list(shape)] for name, shape in self.parts]
        return out

    @classmethod
    def from_json(cls, data: dict) -> Space:
        try:
            parts = tuple((name, tuple(shape)) for name, shape in data.get("parts", ()))
            family = data["family"]
            names = [family, *(name for name, _ in parts)]
            if not all(isinstance(n, str) and n.isprintable() for n in names):  # messages show them as they are
                raise ValueError(names)
            return cls(data["kind"], family, tuple(data["shape"]), parts)
        except (KeyError, TypeError, ValueError, AttributeError):
            raise StudioError(f"malformed space description {str(data)[:200]!r}") from None

    @classmethod
    def parse(cls, text: str) -> Space:
        """Read back ``str(space)``: ``kind[family](AxBxC)``."""
        try:
            kind, rest = text.split("[", 1)
            family, rest = rest.split("](", 1)
            shape = tuple(int(s) for s in rest.rstrip(")").split("x"))
        except ValueError as exc:
            raise StudioError(f"malformed space {text!r}; expected kind[family](AxB)") from exc
        return cls(kind, family, shape)


def check_same(spaces: list[Space], what: str = "combine") -> Space:
    """Return the one space all inputs share, or raise an error naming the two that differ."""
    first = spaces[0]
    for other in spaces[1:]:
        if other != first:
            raise SpaceMismatch(f"cannot {what} latents of two different spaces: {first} and {other}")
    return first


def fingerprint(label: str, config: dict, sample: bytes = b"") -> str:
    """Short family id: ``label-<8 hex>`` from a component's config and a sample of its weights."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode() + sample).hexdigest()
    return f"{label}-{digest[:8]}"

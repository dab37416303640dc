"""Spaces: where a tensor is meaningful (its kind, the model family that defines it, its shape)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from studio.errors import SpaceMismatch, StudioError

# The kinds of space the studio knows, and whether a standard normal draw lives there
# (which decides whether interpolating spherically is the natural choice).
KINDS = {
    "noise": True,  # diffusion starting noise, stored unscaled (before init_noise_sigma)
    "vae": False,  # VAE image latents; the Latent records its scale convention
    "text": False,  # text-encoder hidden states (prompt embeddings)
    "hspace": False,  # UNet bottleneck activations
    "gan-z": True,  # StyleGAN input latent z ~ N(0, I)
    "gan-w": False,  # StyleGAN intermediate latent w = mapping(z)
}


@dataclass(frozen=True)
class Space:
    """A tensor's home: ``kind`` (see KINDS), ``family`` (fingerprint of the defining component), ``shape`` per item."""

    kind: str
    family: str
    shape: tuple[int, ...]

    def __post_init__(self):
        if self.kind not in KINDS:
            raise StudioError(f"unknown space kind {self.kind!r}; expected one of {', '.join(KINDS)}")
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))

    @property
    def gaussian(self) -> bool:
        """True where items are standard normal draws (noise, gan-z): slerp is the natural path."""
        return KINDS[self.kind]

    def __str__(self) -> str:
        return f"{self.kind}[{self.family}]({'x'.join(map(str, self.shape))})"

    def to_json(self) -> dict:
        return {"kind": self.kind, "family": self.family, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, data: dict) -> Space:
        try:
            return cls(data["kind"], data["family"], tuple(data["shape"]))
        except (KeyError, TypeError) as exc:
            raise StudioError(f"malformed space description {data!r}") from exc

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

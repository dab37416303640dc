"""The stored object types: Latent, Generation (latents by role + render settings) and Vector.

Each is a small dataclass; its ``id`` is a content hash, so the same tensor in the same
space is stored once, whatever lineage produced it.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field, replace
from typing import Any

from studio.errors import StudioError
from studio.lazy import np, torch
from studio.space import Space


@dataclass(frozen=True)
class Lineage:
    """How an object was made: the op, its parameters, and the ids of its parents (in order)."""

    op: str
    params: dict = field(default_factory=dict)
    parents: tuple[str, ...] = ()

    def to_json(self) -> dict:
        return {"op": self.op, "params": self.params, "parents": list(self.parents)}

    @classmethod
    def from_json(cls, data: dict | None) -> Lineage | None:
        if not data:
            return None
        return cls(data["op"], dict(data.get("params", {})), tuple(data.get("parents", ())))


def check_finite(tensor: torch.Tensor, what: str) -> torch.Tensor:
    """Refuse NaN or Inf: they would silently poison every result built from them."""
    if tensor.device.type == "cpu" and tensor.dtype in (torch.float32, torch.float64) and not tensor.requires_grad:
        finite = bool(np.isfinite(tensor.numpy()).all())  # one numpy pass: a few µs where torch takes 15
    else:
        finite = bool(torch.isfinite(tensor).all())
    if not finite:
        bad = (~torch.isfinite(tensor)).sum().item()
        raise StudioError(f"{what} contains {bad} NaN or Inf value(s); refusing to use it")
    return tensor


def _canonical(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to("cpu", torch.float32).contiguous()


def _check_tensor(tensor: torch.Tensor, space: Space, what: str) -> None:
    """A tensor that fits its space, holds at least one value, and no NaN or Inf."""
    if tuple(tensor.shape) != space.shape:
        raise StudioError(f"tensor of shape {tuple(tensor.shape)} does not fit space {space}")
    if tensor.numel() == 0:
        raise StudioError(f"{what} in {space} holds no values (shape {tuple(tensor.shape)})")
    check_finite(tensor, f"{what} in {space}")


def check_finite_settings(value: Any, what: str = "settings") -> None:
    """Refuse NaN or Inf anywhere in JSON-like settings: a model cannot render with them."""
    if isinstance(value, float) and not math.isfinite(value):
        raise StudioError(f"{what} must be a finite number, got {value}")
    if isinstance(value, dict):
        for k, v in value.items():
            check_finite_settings(v, f"{what}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_finite_settings(v, f"{what}[{i}]")


def _hash(parts: list[bytes]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()


@dataclass
class Latent:
    """One item's tensor in one space, with metadata (seed, prompt, model, scale...) and lineage."""

    tensor: torch.Tensor  # [*space.shape], float32 on the CPU
    space: Space
    meta: dict[str, Any] = field(default_factory=dict)
    lineage: Lineage | None = None
    kind = "latent"

    def __post_init__(self):
        self.tensor = _canonical(self.tensor)
        _check_tensor(self.tensor, self.space, "latent")

    @property
    def id(self) -> str:
        return _hash([self.kind.encode(), str(self.space).encode(), self.tensor.numpy().tobytes()])

    def with_tensor(self, tensor: torch.Tensor, lineage: Lineage | None = None, **meta) -> Latent:
        """A new latent in the same space; metadata is kept unless overridden."""
        return replace(self, tensor=tensor, lineage=lineage, meta={**self.meta, **meta})


@dataclass
class Vector:
    """A direction in one space: how it was made (``method``) and what was measured of it (``meta``)."""

    tensor: torch.Tensor  # [*space.shape]
    space: Space
    method: str = "unknown"
    meta: dict[str, Any] = field(default_factory=dict)
    lineage: Lineage | None = None
    kind = "vector"

    def __post_init__(self):
        self.tensor = _canonical(self.tensor)
        _check_tensor(self.tensor, self.space, "vector")

    @property
    def id(self) -> str:
        return _hash([self.kind.encode(), str(self.space).encode(), self.tensor.numpy().tobytes()])

    def with_tensor(self, tensor: torch.Tensor, lineage: Lineage | None = None, **meta) -> Vector:
        return replace(self, tensor=tensor, lineage=lineage, meta={**self.meta, **meta})


@dataclass
class Generation:
    """What a picture needs: latents by role (``noise`` + ``text``, or ``z`` / ``w``) and render settings."""

    roles: dict[str, Latent]
    model: str  # the model spec that renders it (``tiny-sd``, a hub id, a folder...)
    settings: dict[str, Any] = field(default_factory=dict)  # steps, guidance, scheduler, size...
    meta: dict[str, Any] = field(default_factory=dict)  # seed, prompt...
    lineage: Lineage | None = None
    kind = "generation"

    def __post_init__(self):
        if not self.roles:
            raise StudioError("a generation needs at least one latent role")
        check_finite_settings(self.settings)

    @property
    def id(self) -> str:
        parts = [self.kind.encode(), self.model.encode(), json.dumps(self.settings, sort_keys=True).encode()]
        for role in sorted(self.roles):
            latent = self.roles[role]
            parts += [role.encode(), str(latent.space).encode(), latent.tensor.numpy().tobytes()]
        return _hash(parts)

    @property
    def spaces(self) -> dict[str, Space]:
        return {role: latent.space for role, latent in self.roles.items()}

    def with_roles(self, roles: dict[str, Latent], lineage: Lineage | None = None, **meta) -> Generation:
        return replace(self, roles=roles, lineage=lineage, meta={**self.meta, **meta})


StoredObject = Latent | Generation | Vector


def now() -> float:
    return math.floor(time.time() * 1000) / 1000

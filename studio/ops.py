"""The latent algebra: small pure functions on tensors, one shared shape (tensors in, tensor out).

No space checks and no lineage here; ``studio.algebra`` wraps these once for every object type.
"""

from __future__ import annotations

from studio.lazy import torch

# Below this angle between two tensors (radians) slerp and lerp agree to float32 precision,
# and the sin(omega) denominator would amplify rounding error: fall back to lerp.
PARALLEL_EPS = 1e-4


def lerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Linear interpolation (1 - t) * a + t * b; exact at t = 0 and t = 1."""
    if t == 0:
        return a.clone()
    if t == 1:
        return b.clone()
    return torch.lerp(a, b, float(t))


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation over the whole tensor (Shoemake 1985); lerp when nearly parallel."""
    if t == 0:
        return a.clone()
    if t == 1:
        return b.clone()
    a64, b64 = a.double().flatten(), b.double().flatten()
    na, nb = a64.norm(), b64.norm()
    if na == 0 or nb == 0:
        return lerp(a, b, t)
    cos = torch.clamp(torch.dot(a64 / na, b64 / nb), -1.0, 1.0)
    omega = torch.arccos(cos)
    if omega < PARALLEL_EPS:
        return lerp(a, b, t)
    if torch.pi - omega < PARALLEL_EPS:
        raise ValueError("slerp between opposite tensors has no unique path; use lerp")
    so = torch.sin(omega)
    out = (torch.sin((1 - t) * omega) / so) * a64 + (torch.sin(t * omega) / so) * b64
    return out.reshape(a.shape).to(a.dtype)


def add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Element-wise sum a + b."""
    return a + b


def sub(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Element-wise difference a - b."""
    return a - b


def scale(a: torch.Tensor, k: float) -> torch.Tensor:
    """Multiply by a scalar k."""
    return a * float(k)


def mean(*xs: torch.Tensor) -> torch.Tensor:
    """Arithmetic mean of one or more tensors."""
    return torch.stack(xs).mean(dim=0)


def normalize(a: torch.Tensor, norm: float = 1.0) -> torch.Tensor:
    """Rescale to the given L2 norm over the whole tensor (unit norm by default)."""
    n = a.double().norm()
    if n < 1e-12:  # zero, or rounding noise that rescaling would turn into a random direction
        raise ValueError(f"cannot normalize a tensor of norm {float(n):.2g}: it is (numerically) zero")
    return (a.double() * (float(norm) / n)).to(a.dtype)


def blend(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Norm-preserving blend: lerp, then rescale to (1 - t)|a| + t|b| so mixes do not fade toward zero."""
    if t == 0:
        return a.clone()
    if t == 1:
        return b.clone()
    mixed = lerp(a, b, t).double()
    target = (1 - t) * a.double().norm() + t * b.double().norm()
    n = mixed.norm()
    if n == 0:
        return mixed.to(a.dtype)
    return (mixed * (target / n)).to(a.dtype)

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


def mix_layers(a: torch.Tensor, b: torch.Tensor, k: int) -> torch.Tensor:
    """Style mixing (Karras et al. 2019): layers [0, k) of [..., num_ws, w_dim] from a, layers [k, num_ws) from b."""
    if a.shape != b.shape or a.dim() < 2:
        raise ValueError(f"style mixing needs two [..., num_ws, w_dim] tensors of one shape, got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    if not 0 <= k <= a.shape[-2]:
        raise ValueError(f"the mixing layer must be from 0 to {a.shape[-2]}, got {k}")
    return torch.cat([a[..., :k, :], b[..., k:, :]], dim=-2)


def sefa(weight: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k eigenvectors [k, w_dim] and eigenvalues [k] of A^T A, A = stacked style weights [S, w_dim].

    SeFa: Shen & Zhou 2021, "Closed-Form Factorization of Latent Semantics in GANs". Directions have
    unit norm, eigenvalues descend, and each direction's largest-magnitude component is positive.
    """
    if weight.dim() != 2:
        raise ValueError(f"SeFa needs a [S, w_dim] weight matrix, got shape {tuple(weight.shape)}")
    w_dim = weight.shape[1]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= w_dim:
        raise ValueError(f"SeFa's k must be a whole number from 1 to {w_dim} (the latent's width), got {k!r}")
    a = weight.double()
    values, vectors = torch.linalg.eigh(a.T @ a)  # ascending; vectors in columns
    values, vectors = values.flip(0)[:k], vectors.flip(1)[:, :k].T  # [k], [k, w_dim]
    peak = vectors.gather(1, vectors.abs().argmax(dim=1, keepdim=True))  # [k, 1]
    vectors = vectors * torch.where(peak < 0, -1.0, 1.0).to(vectors.dtype)
    return vectors.float(), values.clamp(min=0).float()

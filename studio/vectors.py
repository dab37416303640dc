"""Attribute vectors: directions in one space, made from examples, prompt pairs or PCA.

Pure functions on tensors and Latents; the Session wraps them (storing, naming, lineage).
Every maker returns a direction scaled so that strength 1 moves the average item of set A
to the average item of set B along it (for PCA: one standard deviation), so strengths
mean the same thing whichever way a vector was made.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from studio.errors import SpaceMismatch, StudioError
from studio.lazy import torch
from studio.objects import Generation, Latent, Vector
from studio.space import Space, check_same

MIN_EXAMPLES = 2


def role_latents(objs: Sequence[Latent | Generation], role: str | None) -> list[Latent]:
    """The latents in one role of generations (or the latents themselves)."""
    out = []
    for obj in objs:
        if isinstance(obj, Latent):
            out.append(obj)
        elif isinstance(obj, Generation):
            if role is None:
                role = default_role(obj)
            if role not in obj.roles:
                raise StudioError(f"a generation of {obj.model} has no role {role!r} (it has {', '.join(obj.roles)})")
            out.append(obj.roles[role])
        else:
            raise StudioError(f"vectors are made from latents or generations, not from a {obj.kind}")
    return out


def default_role(g: Generation) -> str:
    """The role an attribute vector edits by default: the prompt embedding, else the GAN latent."""
    for role in ("text", "w", "w+", "z"):
        if role in g.roles:
            return role
    return next(iter(g.roles))


def _stack(latents: list[Latent], what: str) -> tuple[torch.Tensor, Space]:
    if len(latents) < MIN_EXAMPLES:
        raise StudioError(f"{what} needs at least {MIN_EXAMPLES} examples, got {len(latents)}")
    space = check_same([lat.space for lat in latents], f"build a vector from {what}")
    return torch.stack([lat.tensor.flatten() for lat in latents]).double(), space  # [N, D]


def mean_difference(a: list[Latent], b: list[Latent]) -> tuple[torch.Tensor, Space]:
    """mean(B) - mean(A): the simplest attribute direction (as in many GAN-editing papers)."""
    xa, sa = _stack(a, "set A")
    xb, sb = _stack(b, "set B")
    if sa != sb:
        raise SpaceMismatch(f"set A is in {sa} but set B is in {sb}")
    return (xb.mean(0) - xa.mean(0)).reshape(sa.shape).float(), sa


def linear_boundary(a: list[Latent], b: list[Latent], l2: float = 1e-2, steps: int = 200) -> tuple[torch.Tensor, Space]:
    """Normal of a logistic-regression boundary separating A from B (InterFaceGAN, Shen et al. 2020).

    Scaled so that strength 1 moves mean(A) to mean(B)'s side by their distance along the normal.
    """
    xa, space = _stack(a, "set A")
    xb, sb = _stack(b, "set B")
    if sb != space:
        raise SpaceMismatch(f"set A is in {space} but set B is in {sb}")
    x = torch.cat([xa, xb])
    y = torch.cat([torch.zeros(len(xa)), torch.ones(len(xb))]).double()
    mu, sd = x.mean(0), x.std(0).clamp_min(1e-8)
    xs = (x - mu) / sd  # standardize so one l2 weight suits every space
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, bias], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(xs @ w + bias, y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    normal = (w.detach() / sd)  # back to the original coordinates
    normal = normal / normal.norm().clamp_min(1e-12)
    gap = torch.dot(xb.mean(0) - xa.mean(0), normal)
    return (normal * gap).reshape(space.shape).float(), space


def prompt_pair(encode: Callable[[list[str]], torch.Tensor], templates: list[str], phrase_a: str, phrase_b: str,
                space: Space) -> torch.Tensor:
    """Mean over templates of embed(template with B) - embed(template with A) in text space."""
    if not templates:
        raise StudioError("a prompt-pair vector needs at least one template")
    bad = [t for t in templates if "{}" not in t]
    if bad:
        raise StudioError(f"every template needs a '{{}}' where the phrase goes; this one has none: {bad[0]!r}")
    ea = encode([t.format(phrase_a) for t in templates]).double()  # [T, L, D]
    eb = encode([t.format(phrase_b) for t in templates]).double()
    out = (eb - ea).mean(0).float()
    if tuple(out.shape) != space.shape:
        raise StudioError(f"the text encoder gave shape {tuple(out.shape)}, expected {space}")
    return out


def principal_directions(samples: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k principal directions of samples [N, D] (GANSpace, Härkönen et al. 2020).

    Returns (directions [k, D] scaled to one standard deviation, explained-variance ratios [k]).
    """
    n, d = samples.shape
    if n < 2:
        raise StudioError("PCA needs at least 2 samples")
    k = min(k, n - 1, d)
    x = samples.double() - samples.double().mean(0)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    var = s**2 / (n - 1)
    ratio = var / var.sum()
    directions = vh[:k] * var[:k].sqrt().unsqueeze(1)
    # a fixed sign, so the same samples always give the same direction
    signs = torch.sign(directions[:, directions.abs().argmax(1)].diagonal())
    return (directions * signs.unsqueeze(1)).float(), ratio[:k].float()


def conditional(v: Vector, others: list[Vector]) -> torch.Tensor:
    """Remove from v its components along others (InterFaceGAN's conditional manipulation)."""
    if not others:
        raise StudioError("conditioning needs at least one other vector")
    for o in others:
        if o.space != v.space:
            raise SpaceMismatch(f"cannot condition a vector in {v.space} on one in {o.space}: they live in different spaces")
    basis: list[torch.Tensor] = []
    for o in others:  # Gram-Schmidt: project out the span, not each vector in turn
        u = o.tensor.double().flatten()
        for q in basis:
            u = u - torch.dot(u, q) * q
        if u.norm() > 1e-10:
            basis.append(u / u.norm())
    x = v.tensor.double().flatten()
    for q in basis:
        x = x - torch.dot(x, q) * q
    return x.reshape(v.space.shape).float()


def cosine(a: Vector, b: Vector) -> float:
    check_same([a.space, b.space], "compare vectors")
    return float(torch.nn.functional.cosine_similarity(a.tensor.flatten().double(), b.tensor.flatten().double(), 0))

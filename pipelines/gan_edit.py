"""Editing tools for the GAN adapter: sampling w for GANSpace, and projecting a picture into w.

Projection follows StyleGAN2's projector in spirit (Karras et al. 2020): optimise one w,
starting at the class centre, to reproduce the target; the loss is pixel MSE plus a
perceptual term on a feature network (the emoji judge's penultimate features when given).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from PIL import Image
from tqdm.auto import tqdm

from pipelines.base import Progress, cpu_generator
from pipelines.common import from_pil
from studio.checks import check_int, check_seed
from studio.errors import StudioError
from studio.objects import Generation, Latent, Lineage

if TYPE_CHECKING:
    from pipelines.gan import GanAdapter


@torch.no_grad()
def sample_w(adapter: GanAdapter, n: int, seed: int = 0) -> torch.Tensor:
    """n untruncated w = mapping(z[, class]) from seeded z (classes spread evenly), [n, w_dim] on the CPU."""
    check_int(n, "the number of w samples", 2, 100_000)
    check_seed(seed)
    z = torch.randn(n, adapter.config.z_dim, generator=cpu_generator(seed))
    c = None
    if adapter.config.num_classes:
        c = (torch.arange(n) % adapter.config.num_classes).to(adapter.device)
    out = []
    for start in range(0, n, 1024):
        zc = z[start : start + 1024].to(adapter.device, adapter.dtype)
        out.append(adapter.generator.mapping(zc, c=None if c is None else c[start : start + 1024]).float().cpu())
    return torch.cat(out)


def project(adapter: GanAdapter, image: Image.Image, steps: int = 300, category: str | None = None,
            style: str | None = None, features=None, perceptual_weight: float = 0.05,
            progress: Progress | None = None) -> Generation:
    """Optimise w so that synthesis(w) reproduces ``image``; returns a w generation with its lineage."""
    if not 1 <= steps <= 10_000:
        raise StudioError(f"projection steps must be between 1 and 10000, not {steps}")
    g = adapter.generator
    res = adapter.config.resolution
    target = from_pil(image.convert("RGB").resize((res, res), Image.LANCZOS))[None].to(adapter.device)  # [1,3,R,R]
    settings = adapter.resolve_settings({"truncation": 1.0})
    c = None
    if adapter.vocabulary is not None:
        v = adapter.vocabulary
        settings["category"] = v.pick(category, v.categories, "category") if category else v.categories[0]
        settings["style"] = v.pick(style, v.styles, "style") if style else v.styles[0]
        c = adapter.class_ids([settings])
    with torch.no_grad():  # start at the class centre: the mean w of many samples
        z = torch.randn(512, adapter.config.z_dim, generator=cpu_generator(0)).to(adapter.device, adapter.dtype)
        w0 = g.mapping(z, c=None if c is None else c.expand(512)).mean(0, keepdim=True).float()
        target_feats = features(target) if features is not None else None
    w = w0.clone().requires_grad_(True)
    opt = torch.optim.Adam([w], lr=0.05, betas=(0.9, 0.999))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=0.002)
    best, best_loss = w0.clone(), float("inf")
    bar = tqdm(range(steps), desc="project", leave=False, disable=None)
    with torch.enable_grad():
        for step in bar:
            x = g.synthesis(w.to(adapter.dtype), noise_mode="const").float()  # [1, 3, R, R]
            loss = torch.nn.functional.mse_loss(x, target)
            if target_feats is not None:
                loss = loss + perceptual_weight * torch.nn.functional.mse_loss(features(x), target_feats)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            if loss.item() < best_loss:
                best_loss, best = loss.item(), w.detach().clone()
            bar.set_postfix(loss=f"{loss.item():.4f}")
            if progress:
                progress(step + 1, steps)
    meta = {"model": adapter.spec, "projection_loss": round(best_loss, 6)}
    lineage = Lineage("gan-project", {"steps": steps, "perceptual": features is not None})
    latent = Latent(best[0].cpu(), adapter.w_space, meta, lineage)
    return Generation({"w": latent}, adapter.spec, settings, meta, lineage)


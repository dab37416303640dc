"""Editing tools for the GAN adapter: sampling w for GANSpace, and projecting a picture into w or w+.

Projection follows StyleGAN2's projector in spirit (Karras et al. 2020): optimise one w (or, in
w+, one w per synthesis input, as Abdal et al. 2019 do), starting at the class centre, to
reproduce the target; the loss is pixel MSE plus a perceptual term on a feature network (the
emoji judge's penultimate features when given).
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
    net = adapter.network
    z = torch.randn(n, net.z_dim, generator=cpu_generator(seed))
    c = (torch.arange(n) % net.num_classes).to(adapter.device) if net.num_classes else None
    out = []
    for start in range(0, n, 1024):
        zc = z[start : start + 1024].to(adapter.device, adapter.dtype)
        out.append(net.w(zc, None if c is None else c[start : start + 1024]).float().cpu())
    return torch.cat(out)


def project(adapter: GanAdapter, image: Image.Image, steps: int = 300, classes: dict | None = None,
            features=None, perceptual_weight: float = 0.05, space: str = "w",
            progress: Progress | None = None) -> Generation:
    """Optimise w (or w+) so that synthesis reproduces ``image``; returns a generation with its lineage.

    ``classes`` are the class settings of a conditional model (category and style, or class);
    the first class where none are given.
    """
    if not 1 <= steps <= 10_000:
        raise StudioError(f"projection steps must be between 1 and 10000, not {steps}")
    if space not in ("w", "w+"):
        raise StudioError(f"a GAN projects into w or w+, not {space!r}")
    net = adapter.network
    res = net.resolution
    target = from_pil(image.convert("RGB").resize((res, res), Image.LANCZOS))[None].to(adapter.device)  # [1,3,R,R]
    settings = adapter.resolve_settings({"truncation": 1.0, **(classes or {})})
    if adapter.vocabulary is not None:
        v = adapter.vocabulary
        settings["category"] = v.pick(settings.get("category") or v.categories[0], v.categories, "category")
        settings["style"] = v.pick(settings.get("style") or v.styles[0], v.styles, "style")
    elif net.num_classes and settings.get("class") is None:
        settings["class"] = 0
    c = adapter.class_ids([settings])
    with torch.no_grad():  # start at the class centre
        start = net.centre(c).float()  # [1, w_dim]
        if space == "w+":
            start = start[:, None].repeat(1, net.num_ws, 1)  # [1, num_ws, w_dim]
        target_feats = features(target) if features is not None else None
    w = start.clone().requires_grad_(True)
    opt = torch.optim.Adam([w], lr=0.05, betas=(0.9, 0.999))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=0.002)
    best, best_loss = start.clone(), float("inf")
    bar = tqdm(range(steps), desc=f"project into {space}", leave=False, disable=None)
    with torch.enable_grad():
        for step in bar:
            ws = w if space == "w+" else w[:, None].expand(-1, net.num_ws, -1)  # [1, num_ws, w_dim]
            x = net.synthesize(ws.to(adapter.dtype)).float()  # [1, 3, R, R]
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
    lineage = Lineage("gan-project", {"steps": steps, "perceptual": features is not None, "space": space})
    latent = Latent(best[0].cpu(), adapter.spaces()[space], meta, lineage)
    return Generation({space: latent}, adapter.spec, settings, meta, lineage)

"""Editing tools for the diffusion adapter: h-space probes and shifts, SDEdit, DDIM inversion.

- h-space (Kwon et al. 2023, "Diffusion models already have a semantic latent space"): the
  UNet mid-block output; a direction added there during the first denoising steps edits
  the picture while the noise and prompt stay.
- SDEdit (Meng et al. 2022): noise an image latent to a chosen strength, denoise it with
  the (edited) conditioning.
- DDIM inversion (Song et al. 2021; Mokady et al. 2023): run the deterministic sampler
  backwards from an image latent to the noise that re-renders it.
"""

from __future__ import annotations

import functools
import inspect
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
from PIL import Image
from tqdm.auto import tqdm

from pipelines.base import Progress
from pipelines.common import from_pil
from studio.checks import check_text
from studio.errors import StudioError
from studio.objects import Generation, Latent, Lineage

if TYPE_CHECKING:
    from pipelines.diffusion import DiffusionAdapter

HSPACE_STEPS = 5  # default: shift the bottleneck during the first five denoising steps (the coarse layout)


@contextmanager
def hspace_shift(unet, delta: torch.Tensor | None, steps: int):
    """Add ``delta`` [N, C, h, w] to the mid-block output during the first ``steps`` UNet calls."""
    if delta is None:
        yield
        return
    calls = 0

    def hook(module, inputs, output):
        nonlocal calls
        calls += 1
        if calls > steps:
            return output
        reps = output.shape[0] // delta.shape[0]  # classifier-free guidance doubles the batch
        return output + delta.repeat(reps, 1, 1, 1).to(output.dtype)

    handle = unet.mid_block.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def hspace_probe(unet, store: list[torch.Tensor]):
    """Record the mid-block output of every UNet call into ``store``."""
    handle = unet.mid_block.register_forward_hook(lambda m, i, o: store.append(o.detach().float().cpu()))
    try:
        yield
    finally:
        handle.remove()


def scaled(adapter: DiffusionAdapter, z: torch.Tensor) -> torch.Tensor:
    """Unscaled VAE latent -> the scaled latent the UNet works on."""
    cfg = adapter.pipe.vae.config
    return (z - (getattr(cfg, "shift_factor", None) or 0.0)) * cfg.scaling_factor


@torch.no_grad()
def denoise(adapter: DiffusionAdapter, latents: torch.Tensor, text: torch.Tensor, settings: dict,
            start: float = 1.0, hdelta: torch.Tensor | None = None, progress: Progress | None = None,
            base: int = 0, total: int = 0) -> torch.Tensor:
    """A plain sampling loop over the last ``start`` fraction of the schedule; returns x0 latents."""
    scheduler = adapter.scheduler(settings["scheduler"])
    scheduler.set_timesteps(settings["steps"], device=adapter.device)
    timesteps = scheduler.timesteps
    skip = settings["steps"] - max(1, round(settings["steps"] * start))
    timesteps = timesteps[skip:]
    if hasattr(scheduler, "set_begin_index"):  # diffusers' own optional scheduler method, not ours
        scheduler.set_begin_index(skip)
    generator = torch.Generator("cpu").manual_seed(0)  # only a stochastic scheduler (LCM, DDPM) draws on it
    x = latents
    with hspace_shift(adapter.pipe.unet, hdelta, settings.get("hspace_steps", HSPACE_STEPS)):
        for i, t in enumerate(timesteps):
            eps = adapter.predict(scheduler.scale_model_input(x, t), t, text, settings)
            x = step(scheduler, eps, t, x, generator)
            if progress:
                progress(base + i + 1 + skip, total)
    return x


def step(scheduler, output: torch.Tensor, t: torch.Tensor, x: torch.Tensor, generator) -> torch.Tensor:
    """One scheduler step; LCM's returns its denoised estimate separately, which the last step keeps."""
    extra = {"generator": generator} if _takes_generator(type(scheduler)) else {}
    result = scheduler.step(output, t, x, **extra)
    if getattr(result, "denoised", None) is not None and scheduler.step_index == len(scheduler.timesteps):
        return result.denoised
    return result.prev_sample


@functools.cache
def _takes_generator(kind: type) -> bool:
    """Whether a scheduler class's step draws noise from a generator (read once per class, not per step)."""
    return "generator" in inspect.signature(kind.step).parameters


def decode(adapter: DiffusionAdapter, x0: torch.Tensor) -> list[Image.Image]:
    vae = adapter.pipe.vae
    z = x0 / vae.config.scaling_factor + (getattr(vae.config, "shift_factor", None) or 0.0)
    return adapter.pipe.image_processor.postprocess(vae.decode(z).sample, output_type="pil")


@torch.no_grad()
def render_loop(adapter: DiffusionAdapter, gens: list[Generation], settings: dict,
                progress: Progress | None = None, base: int = 0, total: int = 0) -> list[Image.Image]:
    """Render with the studio's own loop: from the noise, or (SDEdit) from each ``init`` latent noised to ``sdedit``."""
    dev, dt = adapter.device, adapter.dtype
    noise = torch.stack([g.roles["noise"].tensor for g in gens]).to(dev, dt)  # [N, C, h, w]
    text = torch.stack([g.roles["text"].tensor for g in gens]).to(dev, dt)  # [N, *text shape]
    scheduler = adapter.scheduler(settings["scheduler"])
    scheduler.set_timesteps(settings["steps"], device=dev)
    strength = settings.get("sdedit", 1.0)
    x = noise * scheduler.init_noise_sigma
    if strength < 1:
        init = scaled(adapter, torch.stack([g.roles["init"].tensor for g in gens]).to(dev, dt))
        skip = settings["steps"] - max(1, round(settings["steps"] * strength))
        x = scheduler.add_noise(init, noise * scheduler.init_noise_sigma, scheduler.timesteps[skip : skip + 1])
    return decode(adapter, denoise(adapter, x, text, settings, strength, hdelta(gens, dev, dt), progress, base, total))


def hdelta(gens: list[Generation], dev, dt) -> torch.Tensor | None:
    """The batch's h-space shifts [N, C, h, w] (zeros for items without one), or None when no item has one."""
    if not any("hspace" in g.roles for g in gens):
        return None
    shape = next(g.roles["hspace"].space.shape for g in gens if "hspace" in g.roles)
    return torch.stack([g.roles["hspace"].tensor if "hspace" in g.roles else torch.zeros(shape)
                        for g in gens]).to(dev, dt)


@torch.no_grad()
def hspace_of(adapter: DiffusionAdapter, gens: list[Generation], steps: int) -> list[Latent]:
    """Mean mid-block activation over the first ``steps`` denoising steps of each generation (conditional half)."""
    out = []
    for g in tqdm(gens, desc="h-space", leave=False, disable=None):
        s = adapter.resolve_settings(g.settings)
        space = adapter.hspace_space(s["height"], s["width"])
        if s["steps"] < steps:
            raise StudioError(f"h-space probing over {steps} steps needs generations of at least {steps} steps")
        seen: list[torch.Tensor] = []
        scheduler = adapter.scheduler(s["scheduler"])
        x = g.roles["noise"].tensor[None].to(adapter.device, adapter.dtype) * scheduler.init_noise_sigma
        text = g.roles["text"].tensor[None].to(adapter.device, adapter.dtype)
        with hspace_probe(adapter.pipe.unet, seen):
            _first_steps(adapter, x, text, s, steps)
        acts = torch.stack([a[-1] for a in seen[:steps]])  # conditional half is last; [steps, C, h, w]
        h = acts.mean(0)
        if tuple(h.shape) != space.shape:
            raise StudioError(f"h-space activations of shape {tuple(h.shape)} do not fit {space}")
        out.append(Latent(h, space, {"model": adapter.spec, "steps": steps, "hspace_stride": adapter.hspace_stride},
                          Lineage("hspace-probe", {"steps": steps})))
    return out


def _first_steps(adapter: DiffusionAdapter, x: torch.Tensor, text: torch.Tensor, s: dict, steps: int) -> None:
    """Run only the first ``steps`` steps of the schedule (the probe records along the way)."""
    scheduler = adapter.scheduler(s["scheduler"])
    scheduler.set_timesteps(s["steps"], device=adapter.device)
    generator = torch.Generator("cpu").manual_seed(0)
    for t in scheduler.timesteps[:steps]:
        eps = adapter.predict(scheduler.scale_model_input(x, t), t, text, s)
        x = step(scheduler, eps, t, x, generator)


def _eps_and_x0(scheduler, output: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor):
    """The UNet's output at ``x`` (alpha-bar ``alpha``) as the pair (predicted noise, predicted x0)."""
    kind = scheduler.config.prediction_type
    a, b = alpha.sqrt(), (1 - alpha).sqrt()
    if kind == "epsilon":
        return output, (x - b * output) / a
    if kind == "v_prediction":
        return a * output + b * x, a * x - b * output
    if kind == "sample":
        return (x - a * output) / b, output
    raise StudioError(f"DDIM inversion does not know the prediction type {kind!r}")


@torch.no_grad()
def invert(adapter: DiffusionAdapter, image: Image.Image, prompt: str = "", steps: int = 100,
           refine: int = 3) -> Generation:
    """DDIM inversion: the noise latent that re-renders ``image`` with DDIM, guidance 1, ``steps`` steps.

    Plain DDIM inversion asks the UNet at the latent a step starts from, where the sampler will
    ask it at the latent the step ends on; the mismatch costs several dB. So each inverse step is
    solved ``refine`` more times by fixed-point iteration (as in Pan et al. 2023, "Effective real
    image editing with accelerated iterative diffusion inversion"), asking the UNet at the current
    estimate, until the forward DDIM step from it lands back where it began. Where noise dominates
    (alpha-bar < 1/2) the UNet's predicted noise follows the latent almost one to one and that
    iteration stalls, so there the predicted x0, which barely moves, is held fixed instead.
    """
    check_text(prompt, "prompt")
    pipe = adapter.pipe
    d = adapter.default_settings()
    if image.size != (d["width"], d["height"]):
        image = image.resize((d["width"], d["height"]), Image.LANCZOS)
    x = from_pil(image)[None].to(adapter.device, adapter.dtype)  # [1, 3, H, W]
    _, _, h, w = x.shape
    latents = scaled(adapter, pipe.vae.encode(x).latent_dist.mean).double()  # [1, C, h, w]
    text = adapter.encode_text([prompt])
    settings = adapter.resolve_settings({"steps": steps, "guidance": 1.0, "scheduler": "DDIMScheduler",
                                         "height": h, "width": w})
    forward = adapter.scheduler("DDIMScheduler")  # exactly the sampler that will re-render it
    forward.set_timesteps(steps, device=adapter.device)
    alphas = forward.alphas_cumprod.to(adapter.device, torch.float64)
    jump = forward.config.num_train_timesteps // steps

    def predict(z: torch.Tensor, t: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = adapter.predict(z.to(adapter.dtype), t, text, settings).double()
        return _eps_and_x0(forward, out, z, alpha)

    for t in tqdm(list(reversed(forward.timesteps)), desc="invert", leave=False, disable=None):
        a_t = alphas[t]
        a_prev = alphas[t - jump] if t - jump >= 0 else torch.as_tensor(forward.final_alpha_cumprod, dtype=torch.float64)
        guess = latents  # plain DDIM inversion's choice of where to ask the UNet
        for _ in range(refine + 1):
            eps, x0 = predict(guess, t, a_t)
            if a_t >= 0.5:  # hold eps: solve the forward step for x0
                x0 = (latents - (1 - a_prev).sqrt() * eps) / a_prev.sqrt()
                guess = a_t.sqrt() * x0 + (1 - a_t).sqrt() * eps
            else:  # hold x0: solve the forward step for the latent itself
                guess = (latents - a_prev.sqrt() * x0) * ((1 - a_t) / (1 - a_prev)).sqrt() + a_t.sqrt() * x0
        latents = guess
    noise = (latents[0] / forward.init_noise_sigma).to("cpu", torch.float32)  # stored unscaled
    meta = {"prompt": prompt, "model": adapter.spec}
    lineage = Lineage("ddim-invert", {"steps": steps, "refine": refine, "prompt": prompt})
    roles = {"noise": Latent(noise, adapter.noise_space(h, w), {**meta, "scale": "unscaled"}, lineage),
             "text": Latent(text[0].to("cpu", torch.float32), adapter.text_space, {**meta, "scale": "none"}, lineage)}
    return Generation(roles, adapter.spec, settings, meta, lineage)

"""Editing tools for the diffusion adapter: h-space probes and shifts, SDEdit, inversion.

- h-space (Kwon et al. 2023, "Diffusion models already have a semantic latent space"): the
  UNet mid-block output, or a transformer's middle-block image tokens; a direction added there
  during the first denoising steps edits the picture while the noise and prompt stay.
- SDEdit (Meng et al. 2022): noise an image latent to a chosen strength, denoise it with
  the (edited) conditioning. A DDPM-style model noises with its scheduler's ``add_noise``; a
  flow-matching one along the flow, ``x_t = (1 - sigma) x0 + sigma noise``.
- Inversion: DDIM inversion (Song et al. 2021; Mokady et al. 2023) runs the deterministic
  sampler backwards from an image latent to the noise that re-renders it; for flow matching the
  flow ODE is integrated backwards with the Euler steps its sampler takes forwards.
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


def _image_tokens(output):
    """The image part of a block's output: a UNet block's tensor, or the second of a joint block's pair."""
    return output[1] if isinstance(output, tuple) else output


def _with_image_tokens(output, tokens: torch.Tensor):
    return (output[0], tokens, *output[2:]) if isinstance(output, tuple) else tokens


@contextmanager
def hspace_shift(adapter: DiffusionAdapter, delta: torch.Tensor | None, steps: int, passes: int = 1):
    """Add ``delta`` [N, C, h, w] to the h-space block's output during the first ``steps`` steps.

    ``passes``: denoiser calls per step (Flux's pipeline runs its true-CFG negative pass as a second call).
    """
    if delta is None:
        yield
        return
    calls = 0
    tokens = adapter.kind.denoiser != "unet"  # a transformer block outputs tokens [N, h * w, C], row by row

    def hook(module, inputs, output):
        nonlocal calls
        calls += 1
        if calls > steps * passes:
            return output
        x = _image_tokens(output)
        d = delta.repeat(x.shape[0] // delta.shape[0], 1, 1, 1)  # classifier-free guidance doubles the batch
        if tokens:
            d = d.flatten(2).transpose(1, 2)  # [N, C, h, w] -> [N, h * w, C]
        return _with_image_tokens(output, x + d.to(x.dtype))

    handle = adapter.kind.hspace_block(adapter.denoiser).register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def hspace_probe(adapter: DiffusionAdapter, store: list[torch.Tensor], grid: tuple[int, int]):
    """Record the h-space block's output of every denoiser call into ``store``, as [N, C, *grid]."""
    tokens = adapter.kind.denoiser != "unet"

    def hook(module, inputs, output):
        x = _image_tokens(output).detach().float().cpu()
        store.append(x.transpose(1, 2).reshape(len(x), -1, *grid) if tokens else x)

    handle = adapter.kind.hspace_block(adapter.denoiser).register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def noise_sigma(adapter: DiffusionAdapter, scheduler) -> float:
    """What unscaled noise is multiplied by to start sampling (1 for flow matching: x at sigma 1 is the noise)."""
    return 1.0 if adapter.kind.flow else scheduler.init_noise_sigma


def model_input(adapter: DiffusionAdapter, scheduler, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The denoiser's input at ``x``: scaled by a DDPM-style scheduler, as is for flow matching."""
    return x if adapter.kind.flow else scheduler.scale_model_input(x, t)


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
    adapter.set_timesteps(scheduler, settings)
    timesteps = scheduler.timesteps
    skip = settings["steps"] - max(1, round(settings["steps"] * start))
    timesteps = timesteps[skip:]
    if hasattr(scheduler, "set_begin_index"):  # diffusers' own optional scheduler method, not ours
        scheduler.set_begin_index(skip)
    generator = torch.Generator("cpu").manual_seed(0)  # only a stochastic scheduler (LCM, DDPM) draws on it
    x = latents
    with hspace_shift(adapter, hdelta, settings.get("hspace_steps", HSPACE_STEPS)):
        for i, t in enumerate(timesteps):
            eps = adapter.predict(model_input(adapter, scheduler, x, t), t, text, settings)
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
    adapter.set_timesteps(scheduler, settings)
    strength = settings.get("sdedit", 1.0)
    x = noise * noise_sigma(adapter, scheduler)
    if strength < 1:
        init = scaled(adapter, torch.stack([g.roles["init"].tensor for g in gens]).to(dev, dt))
        skip = settings["steps"] - max(1, round(settings["steps"] * strength))
        if adapter.kind.flow:  # along the flow: x_t = (1 - sigma) x0 + sigma noise
            sigma = scheduler.sigmas[skip].to(dev, dt)
            x = (1 - sigma) * init + sigma * noise
        else:
            x = scheduler.add_noise(init, x, scheduler.timesteps[skip : skip + 1])
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
        x = g.roles["noise"].tensor[None].to(adapter.device, adapter.dtype) * noise_sigma(adapter, scheduler)
        text = g.roles["text"].tensor[None].to(adapter.device, adapter.dtype)
        with hspace_probe(adapter, seen, space.shape[1:]):
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
    adapter.set_timesteps(scheduler, s)
    generator = torch.Generator("cpu").manual_seed(0)
    for t in scheduler.timesteps[:steps]:
        eps = adapter.predict(model_input(adapter, scheduler, x, t), t, text, s)
        x = step(scheduler, eps, t, x, generator)


def _image_latents(adapter: DiffusionAdapter, image: Image.Image) -> torch.Tensor:
    """A picture, resized to the model's default size, as the scaled VAE latent the denoiser works on: [1, C, h, w]."""
    d = adapter.default_settings()
    if image.size != (d["width"], d["height"]):
        image = image.resize((d["width"], d["height"]), Image.LANCZOS)
    x = from_pil(image)[None].to(adapter.device, adapter.dtype)  # [1, 3, H, W]
    return scaled(adapter, adapter.pipe.vae.encode(x).latent_dist.mean)


def _inverted(adapter: DiffusionAdapter, noise: torch.Tensor, text: torch.Tensor, settings: dict, prompt: str,
              lineage: Lineage) -> Generation:
    """The generation an inversion found: its noise (stored unscaled) and the prompt's text."""
    h, w = settings["height"], settings["width"]
    meta = {"prompt": prompt, "model": adapter.spec}
    roles = {"noise": Latent(noise.to("cpu", torch.float32), adapter.noise_space(h, w), {**meta, "scale": "unscaled"},
                             lineage),
             "text": Latent(text[0].to("cpu", torch.float32), adapter.text_space, {**meta, "scale": "none"}, lineage)}
    return Generation(roles, adapter.spec, settings, meta, lineage)


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
    latents = _image_latents(adapter, image).double()  # [1, C, h, w]
    h, w = (side * adapter.scale for side in latents.shape[-2:])
    text = adapter.encode_text([prompt])
    settings = adapter.resolve_settings({"steps": steps, **adapter.kind.unguided(), "scheduler": "DDIMScheduler",
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
    lineage = Lineage("ddim-invert", {"steps": steps, "refine": refine, "prompt": prompt})
    return _inverted(adapter, latents[0] / forward.init_noise_sigma, text, settings, prompt, lineage)


@torch.no_grad()
def flow_invert(adapter: DiffusionAdapter, image: Image.Image, prompt: str = "", steps: int = 28,
                refine: int = 3) -> Generation:
    """The noise that re-renders ``image`` with the flow-matching Euler sampler, unguided, ``steps`` steps.

    The sampler steps ``x[i+1] = x[i] + (sigma[i+1] - sigma[i]) v(x[i], t[i])`` from sigma 1 (noise)
    to 0 (the picture). Run backwards, each step knows ``x[i+1]`` and must find the ``x[i]`` it came
    from; the velocity is asked at the current estimate of ``x[i]`` and the step solved again,
    ``refine`` more times (fixed-point iteration), so that the forward step from the result lands
    back on ``x[i+1]``.
    """
    check_text(prompt, "prompt")
    latents = _image_latents(adapter, image).double()  # [1, C, h, w], sigma 0
    h, w = (side * adapter.scale for side in latents.shape[-2:])
    text = adapter.encode_text([prompt])
    settings = adapter.resolve_settings({"steps": steps, **adapter.kind.unguided(), "height": h, "width": w,
                                         "scheduler": adapter.default_scheduler})
    scheduler = adapter.scheduler(settings["scheduler"])
    adapter.set_timesteps(scheduler, settings)
    sigmas = scheduler.sigmas.to(adapter.device, torch.float64)  # [steps + 1], from 1 down to 0
    for i in tqdm(reversed(range(len(scheduler.timesteps))), total=len(scheduler.timesteps), desc="invert",
                  leave=False, disable=None):
        t, target = scheduler.timesteps[i], latents
        guess = target  # plain inversion's choice: the velocity where the step ends
        for _ in range(refine + 1):
            velocity = adapter.predict(guess.to(adapter.dtype), t, text, settings).double()
            guess = target - (sigmas[i + 1] - sigmas[i]) * velocity
        latents = guess
    lineage = Lineage("flow-invert", {"steps": steps, "refine": refine, "prompt": prompt})
    return _inverted(adapter, latents[0], text, settings, prompt, lineage)

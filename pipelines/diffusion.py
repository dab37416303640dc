"""The diffusion adapter: a diffusers text-to-image pipeline (SD 1.x/2.x style) behind the PipelineAdapter contract.

Spaces: ``noise`` (starting latents, stored unscaled: before ``scheduler.init_noise_sigma``),
``text`` (text-encoder hidden states), ``vae`` (image latents, stored unscaled: the raw
``latent_dist.mean``, no ``scaling_factor``/``shift_factor``) and ``hspace`` (UNet mid-block output).
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import diffusers
import torch
import transformers
from PIL import Image

from pipelines import diffusion_edit
from pipelines.base import PipelineAdapter, Progress, cpu_generator, pick_device
from pipelines.common import (
    batches,
    check_prompts,
    check_setting,
    from_pil,
    offline_error,
    public_config,
    weight_sample,
)
from studio.errors import SpaceMismatch, StudioError
from studio.objects import Generation, Latent, Lineage
from studio.space import Space, fingerprint

transformers.logging.set_verbosity_error()  # prompt truncation is expected, not news, for short-context encoders
diffusers.utils.logging.disable_progress_bar()  # loading a model is quick; the render bar is ours
transformers.utils.logging.disable_progress_bar()

SCHEDULERS = [
    "DDIMScheduler",
    "DDPMScheduler",
    "PNDMScheduler",
    "LMSDiscreteScheduler",
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "HeunDiscreteScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "KDPM2DiscreteScheduler",
    "UniPCMultistepScheduler",
    "LCMScheduler",
]
OPTIONAL_SETTINGS = {
    "sdedit": "SDEdit strength: render from the ``init`` picture latent noised this far (0..1)",
    "hspace_steps": "how many first denoising steps the ``hspace`` role shifts the UNet bottleneck",
}
HSPACE_STEPS = diffusion_edit.HSPACE_STEPS
MAX_SIDE = 4096  # pixels; beyond this a render would not fit any accelerator we know
TEXT_KEYS = [
    "model_type",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "max_position_embeddings",
    "hidden_act",
    "projection_dim",
]


STUDIO_DEFAULTS_FILE = "studio.json"  # optional, in a model folder: {"steps": 20, "guidance": 3.0, ...}
STUDIO_DEFAULT_KEYS = {"steps": int, "guidance": float, "scheduler": str, "negative_prompt": str}


def read_studio_defaults(folder: str | Path) -> dict[str, Any]:
    """A model folder's own render defaults from its ``studio.json`` ({} when there is none)."""
    path = Path(folder) / STUDIO_DEFAULTS_FILE
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise StudioError(f"cannot read the model's render defaults {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise StudioError(f"{path} must hold a JSON object of render settings, not {type(raw).__name__}")
    out: dict[str, Any] = {}
    for key, kind in STUDIO_DEFAULT_KEYS.items():
        if key not in raw:
            continue
        value = raw[key]
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float else (
            isinstance(value, kind) and not isinstance(value, bool)
        )
        if not ok:
            raise StudioError(f"{path}: {key} must be {kind.__name__}, not {value!r}")
        out[key] = kind(value)
    return out


class DiffusionAdapter(PipelineAdapter):
    """A diffusers pipeline with a UNet, a VAE and one CLIP text encoder (StableDiffusionPipeline and compatible)."""

    family = "diffusion"

    def __init__(
        self,
        pipe,
        spec: str,
        device: str | None = None,
        dtype: str | None = None,
        defaults: dict[str, Any] | None = None,
    ):
        missing = [
            c
            for c in ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
            if getattr(pipe, c, None) is None
        ]
        if missing or getattr(pipe, "text_encoder_2", None) is not None:
            raise StudioError(
                f"model {spec!r} ({type(pipe).__name__}) is not a single-text-encoder latent diffusion pipeline"
            )
        self.device, self.dtype = pick_device(device, dtype)
        self.pipe, self.spec = pipe.to(self.device), spec
        if pipe.dtype != self.dtype:
            pipe.to(dtype=self.dtype)
        pipe.set_progress_bar_config(disable=True)
        self.scale = pipe.vae_scale_factor  # pixels per latent cell
        self.max_batch = 8 if self.device.type == "cpu" else 32
        self._schedulers = {type(pipe.scheduler).__name__: pipe.scheduler}
        self._negative: dict[str, torch.Tensor] = {}  # negative prompt -> [1, L, D] on device
        self._defaults = dict(defaults or {})  # the model folder's own render defaults (studio.json)
        # Family fingerprints, once: configs plus a few KB of weights, never the whole model.
        vae, unet, te = pipe.vae, pipe.unet, pipe.text_encoder
        self.vae_family = fingerprint("vae", public_config(vae.config), weight_sample(vae))
        text_config = {**public_config(te.config, TEXT_KEYS), "max_length": pipe.tokenizer.model_max_length}
        self.text_family = fingerprint("text", text_config, weight_sample(te))
        self.unet_family = fingerprint("unet", public_config(unet.config), weight_sample(unet))
        self.text_space = Space(
            "text", self.text_family, (pipe.tokenizer.model_max_length, te.config.hidden_size)
        )

    @classmethod
    def from_pretrained(
        cls,
        source: str | Path,
        device: str | None = None,
        dtype: str | None = None,
        spec: str | None = None,
        download: bool = False,
    ) -> DiffusionAdapter:
        """Load a hub id or a local diffusers folder; from the local cache only unless ``download``."""
        spec = spec or str(source)
        _, dt = pick_device(device, dtype)
        try:
            with warnings.catch_warnings():  # torch_dtype is spelled dtype in newer diffusers; both work
                warnings.simplefilter("ignore", FutureWarning)
                pipe = diffusers.DiffusionPipeline.from_pretrained(
                    source,
                    torch_dtype=dt,
                    local_files_only=not download,
                    safety_checker=None,
                    requires_safety_checker=False,
                    low_cpu_mem_usage=False,  # the small models load at once; no accelerate needed
                )
        except Exception as exc:
            if Path(source).is_dir():
                raise StudioError(f"cannot load diffusion model {spec!r} from {source}: {exc}") from exc
            raise offline_error(spec, exc) from exc
        defaults = read_studio_defaults(source) if Path(source).is_dir() else None
        return cls(pipe, spec, device, dtype, defaults=defaults)

    @classmethod
    def from_single_file(
        cls, path: str | Path, device: str | None = None, dtype: str | None = None, download: bool = False
    ) -> DiffusionAdapter:
        """Load a single ``.safetensors``/``.ckpt`` SD checkpoint (``.ckpt`` through weights-only torch.load)."""
        _, dt = pick_device(device, dtype)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                pipe = diffusers.StableDiffusionPipeline.from_single_file(
                    str(path), torch_dtype=dt, local_files_only=not download
                )
        except Exception as exc:
            raise StudioError(
                f"cannot load checkpoint {str(path)!r} as a Stable Diffusion model: {type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:200] if str(exc) else ''} (its configuration may need the hub)"
            ) from exc
        return cls(pipe, str(path), device, dtype)

    # -- spaces and settings -------------------------------------------------------------------------

    def noise_space(self, height: int, width: int) -> Space:
        """Starting noise for a height x width picture, unscaled."""
        return Space(
            "noise",
            self.vae_family,
            (self.pipe.unet.config.in_channels, height // self.scale, width // self.scale),
        )

    def vae_space(self, height: int, width: int) -> Space:
        """VAE image latents of a height x width picture, unscaled."""
        return Space(
            "vae",
            self.vae_family,
            (self.pipe.vae.config.latent_channels, height // self.scale, width // self.scale),
        )

    def hspace_space(self, height: int | None = None, width: int | None = None) -> Space:
        """UNet mid-block output (Kwon et al.'s h-space) for a height x width picture."""
        d = self.default_settings()
        h, w = (height or d["height"]) // self.scale, (width or d["width"]) // self.scale
        stride = self.hspace_stride
        return Space("hspace", self.unet_family,
                     (self.pipe.unet.config.block_out_channels[-1], math.ceil(h / stride), math.ceil(w / stride)))

    @property
    def hspace_stride(self) -> int:
        """Latent cells per h-space cell along each side: each down block but the last halves the grid."""
        return 2 ** (len(self.pipe.unet.config.down_block_types) - 1)

    def spaces(self) -> dict[str, Space]:
        d = self.default_settings()
        return {"noise": self.noise_space(d["height"], d["width"]), "text": self.text_space}

    def default_settings(self) -> dict[str, Any]:
        side = self.pipe.unet.config.sample_size * self.scale
        return {
            "steps": 20,
            "guidance": 7.5,
            "scheduler": type(self.pipe.scheduler).__name__,
            "height": side,
            "width": side,
            "negative_prompt": "",
            **self._defaults,  # a model folder's studio.json (e.g. the embedded emoji-diffusion's guidance)
        }

    def _settings(self, settings: dict) -> dict:
        """Defaults overlaid with ``settings``, refusing impossible values with one clear sentence."""
        s = {**self.default_settings(), **settings}
        unknown = set(s) - set(self.default_settings()) - set(OPTIONAL_SETTINGS)
        if unknown:
            raise StudioError(
                f"unknown setting(s) {', '.join(sorted(unknown))}; expected {', '.join(self.default_settings())}"
            )
        for side in ("height", "width"):
            check_setting(s, side, self.scale, MAX_SIDE, integer=True)
            if s[side] % self.scale:
                raise StudioError(
                    f"{side}={s[side]} must be a multiple of {self.scale} (the VAE scale factor)"
                )
        check_setting(s, "steps", 1, 1000, integer=True)
        check_setting(s, "guidance", 0.0, 100.0)
        self._scheduler(s["scheduler"])
        if "sdedit" in s:
            check_setting(s, "sdedit", 0.0, 1.0)
        if "hspace_steps" in s:
            check_setting(s, "hspace_steps", 0, s["steps"], integer=True)
        if not isinstance(s["negative_prompt"], str):
            raise StudioError(f"negative_prompt must be text, not {s['negative_prompt']!r}")
        return s

    def _scheduler(self, name: str):
        """The scheduler called ``name``, built once from the model's own scheduler config."""
        if not isinstance(name, str) or name not in self._schedulers:
            if name not in SCHEDULERS:  # a list or another non-text value is no scheduler name either
                raise StudioError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
            self._schedulers[name] = getattr(diffusers, name).from_config(self.pipe.scheduler.config)
        return self._schedulers[name]

    # -- sampling --------------------------------------------------------------------------------------

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """Prompt embeddings exactly as the pipeline computes them: [N, L, D] on the model's device."""
        embeds, _ = self.pipe.encode_prompt(prompts, self.device, 1, False)
        return embeds

    @torch.no_grad()
    def sample(self, seeds: list[int], prompts: list[str] | None = None, **settings: Any) -> list[Generation]:
        """One generation per seed: noise from a CPU generator (unscaled) + the prompt's text latent."""
        settings = self._settings(settings)
        if "sdedit" in settings:  # it renders from an init picture, which only an SDEdit edit holds
            raise StudioError("the sdedit setting needs an init picture, which a sampled generation has not; "
                              "make an SDEdit edit with vectors apply --mode sdedit")
        prompts = check_prompts(seeds, prompts)
        noise_space = self.noise_space(settings["height"], settings["width"])
        texts = self.encode_text(prompts).to("cpu", torch.float32)  # [N, L, D]
        out = []
        for seed, prompt, text in zip(seeds, prompts, texts, strict=True):
            seed = int(seed)
            meta = {"seed": seed, "prompt": prompt, "model": self.spec}
            lineage = Lineage("sample", {"seed": seed, "prompt": prompt})
            noise = torch.randn(noise_space.shape, generator=cpu_generator(seed))  # [C, h, w]
            roles = {
                "noise": Latent(
                    noise, noise_space, {**meta, "scale": "unscaled", "generator_device": "cpu"}, lineage
                ),
                "text": Latent(text, self.text_space, {**meta, "scale": "none"}, lineage),
            }
            out.append(Generation(roles, self.spec, dict(settings), {**meta, "generator_device": "cpu"}))
        return out

    # -- rendering -------------------------------------------------------------------------------------

    def _negative_embeds(self, text: str, n: int) -> torch.Tensor:
        """The negative prompt's embedding, encoded once per text: [n, L, D]."""
        if text not in self._negative:
            self._negative[text] = self.encode_text([text])
        return self._negative[text].expand(n, -1, -1)

    @torch.no_grad()
    def render(self, generations: list[Generation], progress: Progress | None = None) -> list[Image.Image]:
        """Pictures in input order, denoised in batches by the diffusers pipeline itself."""
        # 1. Check inputs: every generation lives in this model's spaces at its own size.
        settings = [self._settings(g.settings) for g in generations]
        for g, s in zip(generations, settings, strict=True):
            expected = {"noise": self.noise_space(s["height"], s["width"]), "text": self.text_space}
            optional = {"hspace": self.hspace_space(s["height"], s["width"]),
                        "init": self.vae_space(s["height"], s["width"])}
            if not set(expected) <= set(g.roles) <= set(expected) | set(optional):
                raise StudioError(
                    f"a diffusion generation needs roles noise and text (optionally hspace, init), "
                    f"not {', '.join(sorted(g.roles))}"
                )
            if ("init" in g.roles) != ("sdedit" in s):
                raise StudioError("an SDEdit generation needs both the init role and the sdedit setting")
            expected |= {r: optional[r] for r in optional if r in g.roles}
            for role, space in expected.items():
                if g.roles[role].space != space:
                    raise SpaceMismatch(
                        f"model {self.spec} cannot render {g.roles[role].space}: it expects {space}"
                    )
        # 2. Group by identical settings, at most max_batch per call.
        keys = [{**s, "_roles": sorted(g.roles)} for g, s in zip(generations, settings)]
        groups = [({k: v for k, v in key.items() if k != "_roles"}, idx) for key, idx in batches(keys, self.max_batch)]
        images: list[Image.Image | None] = [None] * len(generations)
        total, done = sum(s["steps"] for s, _ in groups), 0
        for s, idx in groups:
            batch = [generations[i] for i in idx]
            if "sdedit" in s:  # SDEdit: start from the init picture latent, partly noised
                for i, image in zip(idx, diffusion_edit.render_sdedit(self, batch, s, progress, done, total)):
                    images[i] = image
                done += s["steps"]
                continue
            # 3. Stack the batch's latents and move them to the model's device and dtype.
            noise = torch.stack([generations[i].roles["noise"].tensor for i in idx]).to(
                self.device, self.dtype
            )  # [N, C, h, w]
            text = torch.stack([generations[i].roles["text"].tensor for i in idx]).to(
                self.device, self.dtype
            )  # [N, L, D]
            negative = self._negative_embeds(s["negative_prompt"], len(idx)) if s["guidance"] > 1 else None
            # Stochastic schedulers (ancestral, DDPM) draw per item from CPU generators seeded like the noise.
            generator = [cpu_generator(generations[i].meta.get("seed", 0)) for i in idx]

            def on_step(pipe, step, timestep, tensors, base=done, steps=s["steps"]):
                if progress:
                    progress(base + round((step + 1) * steps / pipe.num_timesteps), total)
                return tensors

            # 4. Denoise and decode with the pipeline: it multiplies the unscaled noise by init_noise_sigma itself.
            self.pipe.scheduler = self._scheduler(s["scheduler"])
            hdelta = diffusion_edit._hdelta(batch, self.device, self.dtype)
            with diffusion_edit.hspace_shift(self.pipe.unet, hdelta, s.get("hspace_steps", HSPACE_STEPS)):
                result = self.pipe(
                    latents=noise,
                    prompt_embeds=text,
                    negative_prompt_embeds=negative,
                    num_inference_steps=s["steps"],
                    guidance_scale=s["guidance"],
                    height=s["height"],
                    width=s["width"],
                    generator=generator,
                    output_type="pil",
                    callback_on_step_end=on_step,
                )
            for i, image in zip(idx, result.images, strict=True):
                images[i] = image
            done += s["steps"]
        return images

    # -- editing ---------------------------------------------------------------------------------------

    def hspace_of(self, generations: list[Generation], steps: int = HSPACE_STEPS) -> list[Latent]:
        """Each generation's mean UNet bottleneck activation over its first ``steps`` steps (h-space)."""
        return diffusion_edit.hspace_of(self, generations, steps)

    def invert(self, image: Image.Image, prompt: str = "", steps: int = 100, refine: int = 3) -> Generation:
        """DDIM inversion (``refine`` fixed-point iterations per step) into a generation that re-renders it."""
        return diffusion_edit.invert(self, image, prompt, steps, refine)

    # -- VAE ---------------------------------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, images: list[Image.Image]) -> list[Latent]:
        """Pictures -> unscaled VAE latents (raw ``latent_dist.mean``; scaling_factor/shift_factor not applied)."""
        out = []
        for image in images:
            x = from_pil(image)  # [3, H, W] in [-1, 1]
            _, h, w = x.shape
            if h % self.scale or w % self.scale:
                raise StudioError(
                    f"picture size {w}x{h} must be a multiple of {self.scale} on both sides to encode"
                )
            z = self.pipe.vae.encode(x[None].to(self.device, self.dtype)).latent_dist.mean[0]  # [C, h, w]
            meta = {"model": self.spec, "scale": "unscaled", "size": [w, h]}
            out.append(Latent(z, self.vae_space(h, w), meta, Lineage("encode", {"size": [w, h]})))
        return out

    @torch.no_grad()
    def decode(self, latents: list[Latent]) -> list[Image.Image]:
        """VAE latents -> pictures; "scaled" latents are first unscaled as ``z / scaling_factor + shift_factor``."""
        vae = self.pipe.vae
        out = []
        for latent in latents:
            c, h, w = latent.space.shape if len(latent.space.shape) == 3 else (0, 0, 0)
            if latent.space != self.vae_space(h * self.scale, w * self.scale):
                raise SpaceMismatch(
                    f"model {self.spec} cannot decode {latent.space}: it expects a vae space of family {self.vae_family}"
                )
            z = latent.tensor[None].to(self.device, self.dtype)  # [1, C, h, w]
            scale = latent.meta.get("scale")
            if scale == "scaled":
                z = z / vae.config.scaling_factor + (getattr(vae.config, "shift_factor", None) or 0.0)
            elif scale != "unscaled":
                raise StudioError(
                    f"vae latent has scale convention {scale!r}; expected 'unscaled' or 'scaled'"
                )
            image = vae.decode(z).sample  # [1, 3, H, W]
            out += self.pipe.image_processor.postprocess(image, output_type="pil")
        return out

"""The UNet diffusion adapter: SD 1.x/2.x, SDXL (and Turbo) and LCM pipelines behind the PipelineAdapter contract.

Spaces: ``noise`` (starting latents, stored unscaled: before ``scheduler.init_noise_sigma``),
``text`` (the whole text conditioning the UNet takes: SD's hidden states, or SDXL's sequence
embeddings and pooled embedding packed together), ``vae`` (image latents, stored unscaled: the raw
``latent_dist.mean``, no ``scaling_factor``/``shift_factor``) and ``hspace`` (UNet mid-block output).
What differs between the families is stated once, in ``UNET_FAMILIES``.
"""

from __future__ import annotations

import inspect
import json
import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diffusers
import torch
import transformers
from PIL import Image

from pipelines import diffusion_edit
from pipelines.base import (
    HSpace,
    Invertible,
    PipelineAdapter,
    Progress,
    SDEditable,
    TextConditioned,
    VaeCoder,
    cpu_generator,
    pick_device,
)
from pipelines.common import (
    batches,
    check_pair,
    check_prompts,
    check_setting,
    from_pil,
    offline_error,
    one_line,
    public_config,
    weight_sample,
)
from studio.errors import SpaceMismatch, StudioError
from studio.objects import Generation, Latent, Lineage
from studio.space import Space, fingerprint


@dataclass(frozen=True)
class UNetFamily:
    """What one UNet family's pipeline needs that another's does not."""

    name: str  # as `studio models` and messages say it
    pooled_text: bool  # SDXL: a second encoder whose pooled projection enters through added embeddings
    micro_conditioning: bool  # SDXL: original size, crop and target size enter as added time ids
    guidance_embedding: bool  # LCM: guidance is distilled into the UNet (no negative prompt, no CFG batch)
    steps: int  # default denoising steps
    guidance: float  # default guidance scale
    pipeline_schedulers: tuple[str, ...] | None  # schedulers its pipeline call takes (None: every studio one)
    schedulers: tuple[str, ...]  # schedulers offered; others render through the studio's own loop


MICRO_CONDITIONING = ("original_size", "crops_coords_top_left", "target_size")  # SDXL render settings


transformers.logging.set_verbosity_error()  # prompt truncation is expected, not news, for short-context encoders
diffusers.utils.logging.disable_progress_bar()  # loading a model is quick; the render bar is ours
transformers.utils.logging.disable_progress_bar()

SCHEDULERS = (
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
)  # what an SD or SDXL model offers
UNET_FAMILIES = {
    "StableDiffusionPipeline": UNetFamily("SD 1.x/2.x", False, False, False, 20, 7.5, None, SCHEDULERS),
    "StableDiffusionXLPipeline": UNetFamily("SDXL", True, True, False, 20, 5.0, None, SCHEDULERS),
    "LatentConsistencyModelPipeline": UNetFamily("LCM", False, False, True, 4, 8.5, ("LCMScheduler",),
                                                 ("LCMScheduler", "DDIMScheduler")),
}
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


class DiffusionAdapter(PipelineAdapter, TextConditioned, VaeCoder, Invertible, SDEditable, HSpace):
    """A diffusers UNet pipeline: SD 1.x/2.x (one CLIP encoder), SDXL (two, with pooled text), or LCM."""

    family = "diffusion"

    def __init__(
        self,
        pipe,
        spec: str,
        device: str | None = None,
        dtype: str | None = None,
        defaults: dict[str, Any] | None = None,
    ):
        self.unet_kind = check_pipeline(pipe, spec)
        self.device, self.dtype = pick_device(device, dtype)
        self.pipe, self.spec = pipe.to(self.device), spec
        if pipe.dtype != self.dtype:
            pipe.to(dtype=self.dtype)
        pipe.set_progress_bar_config(disable=True)
        self.scale = pipe.vae_scale_factor  # pixels per latent cell
        self.max_batch = 8 if self.device.type == "cpu" else 32
        # The model's own scheduler is the default for good: rendering with another never replaces it.
        self.default_scheduler = type(pipe.scheduler).__name__
        self.schedulers = list(self.unet_kind.schedulers)
        if self.default_scheduler not in self.schedulers:
            self.schedulers.insert(0, self.default_scheduler)
        self._schedulers = {self.default_scheduler: pipe.scheduler}
        self._negative: dict[str, torch.Tensor] = {}  # negative prompt -> [1, *text shape] on device
        self._defaults = dict(defaults or {})  # the model folder's own render defaults (studio.json)
        # Family fingerprints, once: configs plus a few KB of weights, never the whole model.
        vae, unet = pipe.vae, pipe.unet
        self.vae_family = fingerprint("vae", public_config(vae.config), weight_sample(vae))
        encoders = [(pipe.text_encoder, pipe.tokenizer)]
        if self.unet_kind.pooled_text:
            encoders.append((pipe.text_encoder_2, pipe.tokenizer_2))
        text_config = [{**public_config(te.config, TEXT_KEYS), "max_length": tok.model_max_length}
                       for te, tok in encoders]
        samples = b"".join(weight_sample(te) for te, _ in encoders)
        # SD's fingerprint keeps its one-encoder form, so libraries made before SDXL stay valid.
        self.text_family = fingerprint("text", text_config[0] if len(text_config) == 1 else text_config, samples)
        self.unet_family = fingerprint("unet", public_config(unet.config), weight_sample(unet))
        length = pipe.tokenizer.model_max_length
        width = sum(te.config.hidden_size for te, _ in encoders)
        parts = [("embeds", (length, width))]
        if self.unet_kind.pooled_text:
            parts.append(("pooled", (pipe.text_encoder_2.config.projection_dim,)))
        self.text_space = Space.packed("text", self.text_family, parts)

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
        if Path(source).is_dir():
            check_pipeline_folder(Path(source), spec)
        quiet = diffusers.utils.logging.get_verbosity()
        try:
            # torch_dtype is spelled dtype in newer diffusers; both work. The safety-checker arguments
            # are for SD pipelines; the note that SDXL ignores them is not news.
            diffusers.utils.logging.set_verbosity_error()
            with warnings.catch_warnings():
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
                raise StudioError(f"cannot load diffusion model {spec!r}: {type(exc).__name__}: "
                                  f"{one_line(exc)}") from None
            raise offline_error(spec, exc) from None
        finally:
            diffusers.utils.logging.set_verbosity(quiet)
        defaults = read_studio_defaults(source) if Path(source).is_dir() else None
        return cls(pipe, spec, device, dtype, defaults=defaults)

    @classmethod
    def from_single_file(
        cls, path: str | Path, device: str | None = None, dtype: str | None = None, spec: str | None = None
    ) -> DiffusionAdapter:
        """Load an original-layout SD 1.x/2.x/SDXL checkpoint file, offline, with configs shipped in the package."""
        from pipelines.single_file import load_single_file

        _, dt = pick_device(device, dtype)
        return cls(load_single_file(path, dt), spec or str(path), device, dtype)

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
        micro = dict.fromkeys(MICRO_CONDITIONING) if self.unet_kind.micro_conditioning else {}
        return {
            "steps": self.unet_kind.steps,
            "guidance": self.unet_kind.guidance,
            "scheduler": self.default_scheduler,
            "height": side,
            "width": side,
            "negative_prompt": "",
            **micro,  # SDXL: None means the render size (and crop 0, 0), as in diffusers
            **self._defaults,  # a model folder's studio.json (e.g. the embedded emoji-diffusion's guidance)
        }

    def resolve_settings(self, settings: dict) -> dict:
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
        self.scheduler(s["scheduler"])
        if "sdedit" in s:
            check_setting(s, "sdedit", 0.0, 1.0)
        if "hspace_steps" in s:
            check_setting(s, "hspace_steps", 0, s["steps"], integer=True)
        if not isinstance(s["negative_prompt"], str):
            raise StudioError(f"negative_prompt must be text, not {s['negative_prompt']!r}")
        if s["negative_prompt"] and self.unet_kind.guidance_embedding:
            raise StudioError(f"model {self.spec} is an LCM model: it ignores a negative prompt (its guidance "
                              "is distilled into the UNet); leave the negative prompt empty")
        if s["negative_prompt"] and s["guidance"] <= 1:
            raise StudioError(f"guidance {s['guidance']} ignores the negative prompt (it takes effect only "
                              "above 1); raise the guidance or leave the negative prompt empty")
        if self.unet_kind.micro_conditioning:
            defaults = {"original_size": [s["height"], s["width"]], "crops_coords_top_left": [0, 0],
                        "target_size": [s["height"], s["width"]]}
            for key in MICRO_CONDITIONING:
                s[key] = check_pair(s[key] if s[key] is not None else defaults[key], key)
        return s

    def scheduler(self, name: str):
        """The scheduler called ``name`` (one of ``schedulers``), built once from the model's own config."""
        if not isinstance(name, str) or name not in self._schedulers:
            if not isinstance(name, str) or name not in self.schedulers:
                raise StudioError(f"unknown scheduler {repr(name)[:80]} for model {self.spec} "
                                  f"({self.unet_kind.name}); choose one of {', '.join(self.schedulers)}")
            kind = getattr(diffusers, name)
            takes = inspect.signature(kind.__init__).parameters  # e.g. LCM's original_inference_steps: not DDIM's
            config = self._schedulers[self.default_scheduler].config
            self._schedulers[name] = kind.from_config({k: v for k, v in config.items() if k in takes})
        return self._schedulers[name]

    # -- text conditioning -----------------------------------------------------------------------------

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """Prompt conditioning exactly as the pipeline computes it, packed: [N, *text_space.shape] on device."""
        if self.unet_kind.pooled_text:
            embeds, _, pooled, _ = self.pipe.encode_prompt(
                prompt=prompts, device=self.device, num_images_per_prompt=1, do_classifier_free_guidance=False
            )
            return self.text_space.pack([embeds, pooled])
        embeds, _ = self.pipe.encode_prompt(prompts, self.device, 1, False)
        return embeds

    def negative_text(self, text: str, n: int) -> torch.Tensor:
        """The negative prompt's conditioning, encoded once per text: [n, *text shape].

        An empty negative prompt on a model whose config says ``force_zeros_for_empty_prompt`` (SDXL)
        is zeros, as its pipeline makes it.
        """
        if text not in self._negative:
            if not text and getattr(self.pipe.config, "force_zeros_for_empty_prompt", False):
                self._negative[text] = torch.zeros((1, *self.text_space.shape), device=self.device,
                                                   dtype=self.dtype)
            else:
                self._negative[text] = self.encode_text([text])
        return self._negative[text].expand(n, *self._negative[text].shape[1:])

    def text_parts(self, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Packed conditioning [N, *text shape] -> (sequence embeddings [N, L, D], pooled [N, P] or None)."""
        if not self.unet_kind.pooled_text:
            return text, None
        parts = self.text_space.unpack(text)
        return parts["embeds"], parts["pooled"]

    def guided(self, settings: dict) -> bool:
        """Whether rendering runs classifier-free guidance (a doubled batch with the negative prompt)."""
        return settings["guidance"] > 1 and not self.unet_kind.guidance_embedding

    def _time_ids(self, settings: dict, n: int) -> torch.Tensor:
        """SDXL's micro-conditioning as added time ids: [n, 6]."""
        ids = [*settings["original_size"], *settings["crops_coords_top_left"], *settings["target_size"]]
        return torch.tensor([ids], device=self.device, dtype=self.dtype).expand(n, -1)

    def unet_conditioning(self, text: torch.Tensor, settings: dict) -> dict[str, Any]:
        """Keyword arguments for a direct UNet call on the packed conditioning ``text`` [N, *text shape]."""
        embeds, pooled = self.text_parts(text)
        kwargs: dict[str, Any] = {"encoder_hidden_states": embeds}
        if pooled is not None:
            kwargs["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": self._time_ids(settings, len(text))}
        if self.unet_kind.guidance_embedding:
            w = torch.full((len(text),), settings["guidance"] - 1.0)
            kwargs["timestep_cond"] = self.pipe.get_guidance_scale_embedding(
                w, embedding_dim=self.pipe.unet.config.time_cond_proj_dim
            ).to(self.device, self.dtype)
        return kwargs

    def predict(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor, settings: dict) -> torch.Tensor:
        """The UNet's (guided) output at the scaled model input ``x`` [N, C, h, w] for conditioning ``text``."""
        if self.guided(settings):
            cond = torch.cat([self.negative_text(settings["negative_prompt"], len(text)), text])
            out = self.pipe.unet(torch.cat([x, x]), t, **self.unet_conditioning(cond, settings)).sample
            uncond, conditioned = out.chunk(2)
            return uncond + settings["guidance"] * (conditioned - uncond)
        return self.pipe.unet(x, t, **self.unet_conditioning(text, settings)).sample

    def _pipeline_text(self, text: torch.Tensor, settings: dict) -> dict[str, Any]:
        """Keyword arguments that hand the packed conditioning to the diffusers pipeline call."""
        embeds, pooled = self.text_parts(text)
        kwargs: dict[str, Any] = {"prompt_embeds": embeds}
        if pooled is not None:
            kwargs["pooled_prompt_embeds"] = pooled
            kwargs.update({key: tuple(settings[key]) for key in MICRO_CONDITIONING})
        if self.guided(settings):
            embeds, pooled = self.text_parts(self.negative_text(settings["negative_prompt"], len(text)))
            kwargs["negative_prompt_embeds"] = embeds
            if pooled is not None:
                kwargs["negative_pooled_prompt_embeds"] = pooled
        return kwargs

    # -- sampling --------------------------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, seeds: list[int], prompts: list[str] | None = None, **settings: Any) -> list[Generation]:
        """One generation per seed: noise from a CPU generator (unscaled) + the prompt's text latent."""
        settings = self.resolve_settings(settings)
        if "sdedit" in settings:  # it renders from an init picture, which only an SDEdit edit holds
            raise StudioError("the sdedit setting needs an init picture, which a sampled generation has not; "
                              "make an SDEdit edit with vectors apply --mode sdedit")
        prompts = check_prompts(seeds, prompts)
        noise_space = self.noise_space(settings["height"], settings["width"])
        # one encoder call per distinct prompt: a batched call differs in the last bits with the batch,
        # and a seed and prompt must give the same generation alone or among others
        encoded = {p: self.encode_text([p])[0].to("cpu", torch.float32) for p in dict.fromkeys(prompts)}
        texts = [encoded[p] for p in prompts]  # [*text shape] each
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

    def _check_roles(self, g: Generation, s: dict) -> None:
        """Every role of ``g`` lives in this model's spaces at the generation's own size."""
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
                raise SpaceMismatch(f"model {self.spec} cannot render {g.roles[role].space}: it expects {space}")

    def _through_pipeline(self, s: dict) -> bool:
        """Whether the diffusers pipeline call itself renders with these settings (else the studio's loop)."""
        allowed = self.unet_kind.pipeline_schedulers
        return "sdedit" not in s and (allowed is None or s["scheduler"] in allowed)

    @torch.no_grad()
    def render(self, generations: list[Generation], progress: Progress | None = None) -> list[Image.Image]:
        """Pictures in input order, denoised in batches by the diffusers pipeline itself."""
        # 1. Check inputs: every generation lives in this model's spaces at its own size.
        settings = [self.resolve_settings(g.settings) for g in generations]
        for g, s in zip(generations, settings, strict=True):
            self._check_roles(g, s)
        # 2. Group by identical settings, at most max_batch per call.
        keys = [{**s, "_roles": sorted(g.roles)} for g, s in zip(generations, settings)]
        groups = [({k: v for k, v in key.items() if k != "_roles"}, idx) for key, idx in batches(keys, self.max_batch)]
        images: list[Image.Image | None] = [None] * len(generations)
        total, done = sum(s["steps"] for s, _ in groups), 0
        for s, idx in groups:
            batch = [generations[i] for i in idx]
            if not self._through_pipeline(s):  # SDEdit, or a scheduler the pipeline call does not take
                for i, image in zip(idx, diffusion_edit.render_loop(self, batch, s, progress, done, total)):
                    images[i] = image
                done += s["steps"]
                continue
            # 3. Stack the batch's latents and move them to the model's device and dtype.
            noise = torch.stack([g.roles["noise"].tensor for g in batch]).to(self.device, self.dtype)  # [N, C, h, w]
            text = torch.stack([g.roles["text"].tensor for g in batch]).to(self.device, self.dtype)  # [N, *text]
            # Stochastic schedulers (ancestral, DDPM, LCM) draw per item from CPU generators seeded like the noise.
            generator = [cpu_generator(g.meta.get("seed", 0)) for g in batch]

            def on_step(pipe, step, timestep, tensors, base=done, steps=s["steps"]):
                if progress:
                    progress(base + round((step + 1) * steps / pipe.num_timesteps), total)
                return tensors

            # 4. Denoise and decode with the pipeline: it multiplies the unscaled noise by init_noise_sigma itself.
            hdelta = diffusion_edit.hdelta(batch, self.device, self.dtype)
            with self._using_scheduler(s["scheduler"]), \
                    diffusion_edit.hspace_shift(self.pipe.unet, hdelta, s.get("hspace_steps", HSPACE_STEPS)):
                result = self.pipe(
                    latents=noise,
                    num_inference_steps=s["steps"],
                    guidance_scale=s["guidance"],
                    height=s["height"],
                    width=s["width"],
                    generator=generator,
                    output_type="pil",
                    callback_on_step_end=on_step,
                    **self._pipeline_text(text, s),
                )
            for i, image in zip(idx, result.images, strict=True):
                images[i] = image
            done += s["steps"]
        return images

    @contextmanager
    def _using_scheduler(self, name: str):
        """The pipeline runs with scheduler ``name`` inside, and has its own default back afterwards."""
        own = self.pipe.scheduler
        self.pipe.scheduler = self.scheduler(name)
        try:
            yield
        finally:
            self.pipe.scheduler = own

    # -- editing ---------------------------------------------------------------------------------------

    def hspace_of(self, generations: list[Generation], steps: int = HSPACE_STEPS) -> list[Latent]:
        """Each generation's mean UNet bottleneck activation over its first ``steps`` steps (h-space)."""
        return diffusion_edit.hspace_of(self, generations, steps)

    def invert(self, image: Image.Image, prompt: str = "", steps: int = 100, refine: int = 3) -> Generation:
        """DDIM inversion (``refine`` fixed-point iterations per step) into a generation that re-renders it."""
        return diffusion_edit.invert(self, image, prompt, steps, refine)

    def sdedit_init(self, generation: Generation) -> Latent:
        """The unscaled VAE latent of the generation's own picture (what an SDEdit edit starts from)."""
        (picture,) = self.render([generation])
        (init,) = self.encode([picture])
        return init

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


def check_pipeline(pipe, spec: str) -> UNetFamily:
    """The UNet family of a loaded pipeline, or one error saying what is missing or does not fit."""
    name = type(pipe).__name__
    kind = UNET_FAMILIES.get(name)
    if kind is None:
        raise StudioError(f"model {spec!r} is a {name}, which the studio does not run; it runs "
                          f"{', '.join(UNET_FAMILIES)}")
    needed = ["unet", "vae", "text_encoder", "tokenizer", "scheduler"]
    if kind.pooled_text:
        needed += ["text_encoder_2", "tokenizer_2"]
    missing = [c for c in needed if getattr(pipe, c, None) is None]
    if missing:
        raise StudioError(f"model {spec!r} ({name}) lacks {', '.join(missing)}")
    unet = pipe.unet.config
    widths = [pipe.text_encoder.config.hidden_size]
    if kind.pooled_text:
        widths.append(pipe.text_encoder_2.config.hidden_size)
        pooled = pipe.text_encoder_2.config.projection_dim
        if unet.addition_embed_type != "text_time" or (
                unet.projection_class_embeddings_input_dim != 6 * unet.addition_time_embed_dim + pooled):
            raise StudioError(f"model {spec!r} ({name}): the UNet's added embedding does not take the second "
                              f"text encoder's pooled width {pooled} plus six micro-conditioning numbers")
        if pipe.tokenizer.model_max_length != pipe.tokenizer_2.model_max_length:
            raise StudioError(f"model {spec!r} ({name}): its tokenizers take {pipe.tokenizer.model_max_length} "
                              f"and {pipe.tokenizer_2.model_max_length} tokens; they must agree")
    if sum(widths) != unet.cross_attention_dim:
        raise StudioError(f"model {spec!r} ({name}): text encoder width{'s' if len(widths) > 1 else ''} "
                          f"{' + '.join(map(str, widths))} do{'' if len(widths) > 1 else 'es'} not match the "
                          f"UNet's cross-attention width {unet.cross_attention_dim}")
    if kind.guidance_embedding and not unet.time_cond_proj_dim:
        raise StudioError(f"model {spec!r} ({name}): its UNet has no guidance embedding (time_cond_proj_dim)")
    return kind


def check_pipeline_folder(folder: Path, spec: str) -> None:
    """A diffusers folder names a pipeline the studio runs, and holds a folder for each part it lists."""
    try:
        index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise StudioError(f"cannot read {folder / 'model_index.json'}: {type(exc).__name__}: "
                          f"{one_line(exc)}") from None
    if not isinstance(index, dict):
        raise StudioError(f"{folder / 'model_index.json'} must hold a JSON object")
    name = index.get("_class_name")
    if name not in UNET_FAMILIES:
        raise StudioError(f"model {spec!r} is a {str(name)[:80]!r} pipeline, which the studio does not run; "
                          f"it runs {', '.join(UNET_FAMILIES)}")
    parts = [k for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and v[0] is not None
             and k not in ("safety_checker", "feature_extractor", "image_encoder")]
    missing = [k for k in parts if not (folder / k).is_dir()]
    if missing:
        raise StudioError(f"model {spec!r} ({name}) is missing the part folder(s) {', '.join(missing)}")

"""The diffusion adapter: diffusers pipelines, UNet (SD 1.x/2.x, SDXL, LCM) and transformer (SD 3, Flux.1, PixArt-Sigma).

Spaces: ``noise`` (starting latents, stored unscaled: before ``scheduler.init_noise_sigma``, and
unpacked, ``[C, h, w]``, for every family), ``text`` (the whole text conditioning the denoiser
takes, its parts packed together: SD's hidden states; SDXL's and SD 3's sequence embeddings and
pooled embedding; Flux's T5 sequence and CLIP pooled embedding), ``vae`` (image latents, stored
unscaled: the raw ``latent_dist.mean``, no ``scaling_factor``/``shift_factor``) and ``hspace``
(a UNet's mid-block output, or a transformer's middle-block image tokens as a grid).
What differs between the families is stated once each, in ``pipelines/families.py``.
"""

from __future__ import annotations

import inspect
import json
import math
import warnings
from contextlib import contextmanager
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
    fitting_batch,
    pick_device,
)
from pipelines.common import (
    batches,
    check_prompts,
    check_setting,
    from_pil,
    offline_error,
    one_line,
    public_config,
    safetensors_damage,
    weight_sample,
)
from pipelines.families import FAMILIES, SDXL, Family, supported, text_fingerprint_config, text_label
from studio.errors import SpaceMismatch, StudioError, printable
from studio.objects import Generation, Latent, Lineage
from studio.space import Space, fingerprint

transformers.logging.set_verbosity_error()  # prompt truncation is expected, not news, for short-context encoders
diffusers.utils.logging.disable_progress_bar()  # loading a model is quick; the render bar is ours
transformers.utils.logging.disable_progress_bar()

OPTIONAL_SETTINGS = {
    "sdedit": "SDEdit strength: render from the ``init`` picture latent noised this far (0..1)",
    "hspace_steps": "how many first denoising steps the ``hspace`` role shifts the h-space (UNet bottleneck, transformer middle block)",
}
HSPACE_STEPS = diffusion_edit.HSPACE_STEPS
MAX_SIDE = 4096  # pixels; beyond this a render would not fit any accelerator we know

STUDIO_DEFAULTS_FILE = "studio.json"  # optional, in a model folder: {"steps": 20, "guidance": 3.0, ...}
STUDIO_DEFAULT_KEYS = {"steps": int, "guidance": float, "scheduler": str, "negative_prompt": str}


def read_studio_defaults(folder: str | Path) -> dict[str, Any]:
    """A model folder's own render defaults from its ``studio.json`` ({} when there is none)."""
    path = Path(folder) / STUDIO_DEFAULTS_FILE
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:
        raise StudioError(f"cannot read the model's render defaults {printable(path)}: it nests too deeply") from None
    except (OSError, ValueError) as exc:
        raise StudioError(f"cannot read the model's render defaults {printable(path)}: {one_line(exc)}") from None
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
    """A diffusers pipeline of one of the ``FAMILIES``: a UNet or transformer denoiser, its text encoders, a VAE."""

    family = "diffusion"

    def __init__(
        self,
        pipe,
        spec: str,
        device: str | None = None,
        dtype: str | None = None,
        defaults: dict[str, Any] | None = None,
    ):
        self.kind = check_pipeline(pipe, spec)  # the family: what differs from the others
        self.device, self.dtype = pick_device(device, dtype)
        self.pipe, self.spec = pipe.to(self.device), spec
        if pipe.dtype != self.dtype:
            pipe.to(dtype=self.dtype)
        pipe.set_progress_bar_config(disable=True)
        self.denoiser = getattr(pipe, self.kind.denoiser)  # the UNet or the transformer
        self.scale = pipe.vae_scale_factor  # pixels per latent cell
        self.patch = self.kind.patch(pipe)  # latent cells per denoiser token along each side
        self.batch_override: int | None = None  # items per denoiser call, when set (else sized to free memory)
        # The model's own scheduler is the default for good: rendering with another never replaces it.
        self.default_scheduler = type(pipe.scheduler).__name__
        self.schedulers = list(self.kind.schedulers)
        if self.default_scheduler not in self.schedulers:
            self.schedulers.insert(0, self.default_scheduler)
        self._schedulers = {self.default_scheduler: pipe.scheduler}
        self._negative: dict[str, torch.Tensor] = {}  # negative prompt -> [1, *text shape] on device
        self._defaults = dict(defaults or {})  # the model folder's own render defaults (studio.json)
        # Family fingerprints, once: configs plus a few KB of weights, never the whole model.
        self.vae_family = fingerprint("vae", public_config(pipe.vae.config), weight_sample(pipe.vae))
        text_config, encoders = text_fingerprint_config(self.kind, pipe)
        self.text_family = fingerprint(text_label(self.kind, pipe), text_config,
                                       b"".join(weight_sample(te) for te in encoders))
        self.denoiser_family = fingerprint(self.kind.denoiser, public_config(self.denoiser.config),
                                           weight_sample(self.denoiser))
        self.text_space = Space.packed("text", self.text_family, self.kind.text_parts(pipe))

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
        absent: list[str] = []
        if Path(source).is_dir():
            absent = check_pipeline_folder(Path(source), spec)
        quiet = diffusers.utils.logging.get_verbosity()
        try:
            if not Path(source).is_dir():  # a hub id: its model_index.json from the cache (or the hub)
                absent = absent_parts(diffusers.DiffusionPipeline.load_config(source, local_files_only=not download))
            # torch_dtype is spelled dtype in newer diffusers; both work. The safety-checker arguments
            # are for SD pipelines; the note that SDXL ignores them is not news. A part that fails to
            # load is logged by diffusers before it raises, and torch's weights-only reader warns about
            # pickle protocols: the exception caught below says it once, in one line.
            diffusers.utils.logging.set_verbosity(diffusers.utils.logging.CRITICAL)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                warnings.filterwarnings("ignore", category=UserWarning, module="torch")
                pipe = diffusers.DiffusionPipeline.from_pretrained(
                    source,
                    torch_dtype=dt,
                    local_files_only=not download,
                    low_cpu_mem_usage=False,  # the small models load at once; no accelerate needed
                    # parts a pipeline saves as absent (SD 3 without T5) stay None
                    **{**dict.fromkeys(absent), "safety_checker": None, "requires_safety_checker": False},
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
        """Starting noise for a height x width picture, unscaled and unpacked: [C, h, w]."""
        return Space("noise", self.vae_family, self.vae_space(height, width).shape)

    def vae_space(self, height: int, width: int) -> Space:
        """VAE image latents of a height x width picture, unscaled."""
        return Space(
            "vae",
            self.vae_family,
            (self.pipe.vae.config.latent_channels, height // self.scale, width // self.scale),
        )

    def hspace_space(self, height: int | None = None, width: int | None = None) -> Space:
        """The h-space (Kwon et al.) for a height x width picture: a UNet's mid-block output, or a
        transformer's middle-block image tokens laid out on their grid, [C, h, w] either way."""
        d = self.default_settings()
        h, w = (height or d["height"]) // self.scale, (width or d["width"]) // self.scale
        stride = self.hspace_stride
        return Space("hspace", self.denoiser_family,
                     (self.kind.hspace_channels(self.denoiser), math.ceil(h / stride), math.ceil(w / stride)))

    @property
    def hspace_stride(self) -> int:
        """Latent cells per h-space cell along each side."""
        return self.kind.hspace_stride(self.pipe)

    def spaces(self) -> dict[str, Space]:
        d = self.default_settings()
        return {"noise": self.noise_space(d["height"], d["width"]), "text": self.text_space}

    def default_settings(self) -> dict[str, Any]:
        side = self.kind.default_side(self.pipe)
        return {
            **self.kind.settings(self.pipe),  # steps and guidance, and what only the family takes
            "scheduler": self.default_scheduler,
            "height": side,
            "width": side,
            "negative_prompt": "",
            **self._defaults,  # a model folder's studio.json (e.g. the embedded emoji-diffusion's guidance)
        }

    def resolve_settings(self, settings: dict) -> dict:
        """Defaults overlaid with ``settings``, refusing impossible values with one clear sentence."""
        defaults = self.default_settings()
        s = {**defaults, **settings}
        unknown = set(s) - set(defaults) - set(OPTIONAL_SETTINGS)
        if unknown:
            raise StudioError(f"unknown setting(s) {', '.join(sorted(unknown))} for model {self.spec} "
                              f"({self.kind.name}); expected {', '.join(defaults)}")
        for side in ("height", "width"):
            check_setting(s, side, self.scale, MAX_SIDE, integer=True)
            self._check_side(side, s[side])
        check_setting(s, "steps", 1, 1000, integer=True)
        for key in ("guidance", "true_cfg"):
            if key in s:
                check_setting(s, key, 0.0, 100.0)
        self.scheduler(s["scheduler"])
        if "sdedit" in s:
            check_setting(s, "sdedit", 0.0, 1.0)
        if "hspace_steps" in s:
            check_setting(s, "hspace_steps", 0, s["steps"], integer=True)
        if not isinstance(s["negative_prompt"], str):
            raise StudioError(f"negative_prompt must be text, not {s['negative_prompt']!r}")
        self.kind.check_settings(s, self.spec)
        if self.kind.micro_conditioning:
            SDXL.resolve_micro(s)
        return s

    def _check_side(self, side: str, value: int) -> None:
        """A picture side the VAE and the denoiser's patches divide; else the nearest sizes that work."""
        step = self.scale * self.patch
        if value % step == 0:
            return
        low, high = value // step * step, (value // step + 1) * step
        nearest = f"{low} or {high}" if low else str(high)
        if self.patch == 1:
            raise StudioError(f"{side}={value} must be a multiple of {self.scale} (the VAE scale factor); "
                              f"nearest: {nearest}")
        raise StudioError(f"{side}={value} cannot be cut into the {self.kind.denoiser}'s {self.patch}x{self.patch} "
                          f"latent patches: it must be a multiple of {step} ({self.scale} pixels per latent cell); "
                          f"nearest: {nearest}")

    def scheduler(self, name: str):
        """The scheduler called ``name`` (one of ``schedulers``), built once from the model's own config."""
        if not isinstance(name, str) or name not in self._schedulers:
            if not isinstance(name, str) or name not in self.schedulers:
                raise StudioError(f"unknown scheduler {repr(name)[:80]} for model {self.spec} "
                                  f"({self.kind.name}); choose one of {', '.join(self.schedulers)}")
            kind = getattr(diffusers, name)
            takes = inspect.signature(kind.__init__).parameters  # e.g. LCM's original_inference_steps: not DDIM's
            config = self._schedulers[self.default_scheduler].config
            self._schedulers[name] = kind.from_config({k: v for k, v in config.items() if k in takes})
        return self._schedulers[name]

    def tokens(self, settings: dict) -> int:
        """Positions the denoiser sees for a picture at these settings: latent cells for a UNet, patches for a
        transformer (what the resolution shift and the batch size are reckoned in)."""
        return (settings["height"] // self.scale) * (settings["width"] // self.scale) // self.patch**2

    def set_timesteps(self, scheduler, settings: dict) -> None:
        """Set ``scheduler`` to the schedule the pipeline call sets for these settings (steps, shift, size)."""
        self.kind.set_timesteps(scheduler, settings["steps"], self.tokens(settings), self.device)

    # -- text conditioning -----------------------------------------------------------------------------

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """Prompt conditioning exactly as the pipeline computes it, packed: [N, *text_space.shape] on device."""
        return self.text_space.pack(self.kind.encode(self.pipe, prompts, self.device))

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

    def text_parts(self, text: torch.Tensor) -> list[torch.Tensor]:
        """Packed conditioning [N, *text shape] -> its parts in order, each [N, *part shape]."""
        return list(self.text_space.unpack(text).values())

    def cfg_scale(self, settings: dict) -> float | None:
        """The classifier-free guidance scale of a render (a negative pass runs), or None when it has none."""
        return self.kind.cfg_scale(settings)

    def predict(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor, settings: dict) -> torch.Tensor:
        """The denoiser's (guided) output at model input ``x`` [N, C, h, w] for the packed conditioning ``text``."""
        scale = self.cfg_scale(settings)
        if scale is None:
            return self.kind.denoise(self, x, t, self.text_parts(text), settings)
        cond = torch.cat([self.negative_text(settings["negative_prompt"], len(text)), text])
        uncond, conditioned = self.kind.denoise(self, torch.cat([x, x]), t, self.text_parts(cond), settings).chunk(2)
        return uncond + scale * (conditioned - uncond)

    def _pipeline_call(self, noise: torch.Tensor, text: torch.Tensor, settings: dict) -> dict[str, Any]:
        """Keyword arguments that hand the latents, the packed conditioning and the guidance to the pipeline."""
        negative = None
        if self.cfg_scale(settings) is not None:
            negative = self.text_parts(self.negative_text(settings["negative_prompt"], len(text)))
        return self.kind.pipeline_call(self, noise, self.text_parts(text), negative, settings)

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

    def batch_size(self, settings: dict) -> int:
        """Items per denoiser call at these settings: ``batch_override``, or what half the free memory holds
        (an item's activations counted per latent cell for a UNet, per token for a transformer)."""
        return fitting_batch(self.device, self.tokens(settings), self.kind.widest(self.denoiser), self.dtype,
                             self.batch_override)

    def _through_pipeline(self, s: dict) -> bool:
        """Whether the diffusers pipeline call itself renders with these settings (else the studio's loop)."""
        allowed = self.kind.pipeline_schedulers
        return "sdedit" not in s and (allowed is None or s["scheduler"] in allowed)

    @torch.no_grad()
    def render(self, generations: list[Generation], progress: Progress | None = None) -> list[Image.Image]:
        """Pictures in input order, denoised in batches by the diffusers pipeline itself."""
        # 1. Check inputs: every generation lives in this model's spaces at its own size.
        settings = [self.resolve_settings(g.settings) for g in generations]
        for g, s in zip(generations, settings, strict=True):
            self._check_roles(g, s)
        # 2. Group by identical settings, as many per call as the device's free memory holds at that size.
        keys = [{**s, "_roles": sorted(g.roles)} for g, s in zip(generations, settings)]
        groups = []
        for key, idx in batches(keys, len(keys)):
            s = {k: v for k, v in key.items() if k != "_roles"}
            size = self.batch_size(s)
            groups += [(s, idx[i : i + size]) for i in range(0, len(idx), size)]
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

            def on_old_step(step, timestep, latents, base=done, steps=s["steps"]):  # PixArt's older callback
                if progress:
                    progress(base + min(step + 1, steps), total)

            callback = ({"callback_on_step_end": on_step} if self.kind.step_callback
                        else {"callback": on_old_step, "callback_steps": 1})
            # 4. Denoise and decode with the pipeline: it multiplies the unscaled noise by init_noise_sigma
            #    itself (and Flux's call takes the noise packed; the family packs it).
            hdelta = diffusion_edit.hdelta(batch, self.device, self.dtype)
            passes = 2 if self.kind.separate_negative_pass and self.cfg_scale(s) is not None else 1
            with self._using_scheduler(s["scheduler"]), \
                    diffusion_edit.hspace_shift(self, hdelta, s.get("hspace_steps", HSPACE_STEPS), passes):
                result = self.pipe(
                    num_inference_steps=s["steps"],
                    height=s["height"],
                    width=s["width"],
                    generator=generator,
                    output_type="pil",
                    **callback,
                    **self._pipeline_call(noise, text, s),
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
        """Each generation's mean h-space activation (UNet bottleneck, transformer middle block) over its first ``steps`` steps."""
        return diffusion_edit.hspace_of(self, generations, steps)

    def invert(self, image: Image.Image, prompt: str = "", steps: int = 100, refine: int = 3) -> Generation:
        """Inversion into a generation that re-renders ``image``: DDIM inversion, or for flow matching the flow
        ODE integrated backwards; ``refine`` fixed-point iterations per step either way."""
        if self.kind.flow:
            return diffusion_edit.flow_invert(self, image, prompt, steps, refine)
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
            cfg = self.pipe.vae.config  # what "scaled" would apply: (z - shift_factor) * scaling_factor
            meta = {"model": self.spec, "scale": "unscaled", "size": [w, h], "scaling_factor": cfg.scaling_factor,
                    "shift_factor": getattr(cfg, "shift_factor", None) or 0.0}
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


def check_pipeline(pipe, spec: str) -> Family:
    """The family of a loaded pipeline, or one error saying what is missing or does not fit."""
    name = type(pipe).__name__
    kind = FAMILIES.get(name)
    if kind is None:
        raise StudioError(f"model {spec!r} is a {name}, which the studio does not run; it runs {supported()}")
    missing = [c for c in kind.components(pipe) if getattr(pipe, c, None) is None]
    if missing:
        raise StudioError(f"model {spec!r} ({name}) lacks {', '.join(missing)}")
    kind.check(pipe, spec)
    return kind


def absent_parts(index: dict) -> list[str]:
    """The components a ``model_index.json`` saves as absent (``[null, null]``, e.g. SD 3's optional T5)."""
    return [k for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and v[0] is None]


def check_pipeline_folder(folder: Path, spec: str) -> list[str]:
    """A diffusers folder names a pipeline the studio runs, and holds a folder for each part it lists;
    returns the parts it saves as absent."""
    shown = printable(folder / "model_index.json")
    try:
        index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    except RecursionError:
        raise StudioError(f"cannot read {shown}: it nests too deeply") from None
    except (OSError, ValueError) as exc:
        raise StudioError(f"cannot read {shown}: {type(exc).__name__}: {one_line(exc)}") from None
    if not isinstance(index, dict):
        raise StudioError(f"{shown} must hold a JSON object")
    name = index.get("_class_name")
    if name not in FAMILIES:
        raise StudioError(f"model {spec!r} is a {str(name)[:80]!r} pipeline, which the studio does not run; "
                          f"it runs {supported()}")
    parts = [k for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and v[0] is not None
             and k not in ("safety_checker", "feature_extractor", "image_encoder")]
    missing = [k for k in parts if not (folder / k).is_dir()]
    if missing:
        raise StudioError(f"model {spec!r} ({name}) is missing the part folder(s) {printable(', '.join(missing))}")
    for part in parts:  # a weights file cut short or of another format, said before diffusers tries it
        for weights in sorted((folder / part).glob("*.safetensors")):
            damage = safetensors_damage(weights)
            if damage:
                raise StudioError(f"cannot load diffusion model {spec!r}: "
                                  f"{printable(weights.relative_to(folder))}: {damage}")
    return absent_parts(index)

"""What one diffusers pipeline family needs that another does not, stated once per family.

``DiffusionAdapter`` does what every family shares: seeds and sampling, batching, the text role
and its space, the space checks, rendering through the pipeline call or the studio's own loop.
A family says only what differs:

- the parts of its text conditioning and how its pipeline encodes a prompt into them;
- one call of its denoiser (a UNet or a transformer) on latents, a timestep and that conditioning;
- its render settings and the keyword arguments that hand them to its pipeline call;
- its schedule (DDPM-style, or flow matching: ``x_t = (1 - sigma) x0 + sigma noise``), its latent
  patch size, and the block whose output is its h-space.

Latents are always handled unpacked, ``[N, C, h, w]``: Flux packs them into 2x2 patches only for
its transformer, so its noise compares with every other 16-channel latent and with ComfyUI's.
"""

from __future__ import annotations

from typing import Any

from pipelines.common import check_pair, public_config
from studio.errors import StudioError
from studio.lazy import np, torch
from studio.space import Part

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
)  # what a DDPM-style (epsilon or v) model offers
FLOW_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler",)  # what a flow-matching model offers
MICRO_CONDITIONING = ("original_size", "crops_coords_top_left", "target_size")  # SDXL render settings
CLIP_KEYS = [
    "model_type",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "max_position_embeddings",
    "hidden_act",
    "projection_dim",
]  # what tells two CLIP text encoders apart in a fingerprint
T5_KEYS = [*CLIP_KEYS, "d_model", "d_kv", "d_ff", "num_layers", "num_heads", "feed_forward_proj"]


def refused(pipe, spec: str, why: str) -> StudioError:
    """The one error for a pipeline whose parts do not fit together: the model, its pipeline class, why."""
    return StudioError(f"model {spec!r} ({type(pipe).__name__}): {why}")


class Family:
    """A family of diffusers pipelines: the UNet ones of SD 1.x/2.x by default; subclasses say what differs."""

    name = "SD 1.x/2.x"  # as `studio models` and messages say it
    summary = "CLIP text; guidance with a negative prompt; 11 DDPM-style schedulers; DDIM inversion; h-space: UNet mid block"
    denoiser = "unet"  # the pipeline component that denoises
    encoders: dict[str, str] = {"text_encoder": "clip"}  # text encoder component -> its label
    optional_encoders: tuple[str, ...] = ()  # encoders a pipeline may leave out (SD3's T5)
    flow = False  # flow matching (velocity, sigma from 1 to 0) rather than a DDPM-style schedule
    guidance_embedding = False  # guidance enters the denoiser as an input: no negative prompt, no CFG batch
    micro_conditioning = False  # SDXL: sizes and crop enter as added time ids
    step_callback = True  # the pipeline call takes callback_on_step_end (PixArt's takes the older callback)
    separate_negative_pass = False  # the pipeline runs the negative prompt as a second denoiser call (Flux)
    guidance_label = "Guidance"  # what the guidance setting is, as the UI labels it
    schedulers: tuple[str, ...] = SCHEDULERS  # offered; the model's own is always among them
    pipeline_schedulers: tuple[str, ...] | None = None  # what its pipeline call takes (None: all offered)
    fingerprint_keys = CLIP_KEYS
    text_label = "text"  # fingerprint label of the text space (the newer families name their encoders)

    # -- checks --------------------------------------------------------------------------------------

    def components(self, pipe) -> list[str]:
        """The components a pipeline of this family must have."""
        encoders = [e for e in self.encoders if e not in self.optional_encoders]
        return [self.denoiser, "vae", "scheduler", *encoders, *(e.replace("text_encoder", "tokenizer") for e in encoders)]

    def check(self, pipe, spec: str) -> None:
        """Refuse a pipeline whose parts do not fit together, naming the mismatch."""
        width, unet = pipe.text_encoder.config.hidden_size, pipe.unet.config
        if width != unet.cross_attention_dim:
            raise refused(pipe, spec, f"text encoder width {width} does not match the UNet's cross-attention "
                          f"width {unet.cross_attention_dim}")

    # -- settings ------------------------------------------------------------------------------------

    def settings(self, pipe) -> dict[str, Any]:
        """The family's default render settings (the adapter adds scheduler, size and negative prompt)."""
        return {"steps": 20, "guidance": 7.5}

    def default_side(self, pipe) -> int:
        """The side in pixels the model was trained at."""
        return pipe.unet.config.sample_size * pipe.vae_scale_factor

    def patch(self, pipe) -> int:
        """Latent cells per denoiser token along each side (a UNet takes every cell)."""
        return 1

    def cfg_scale(self, settings: dict) -> float | None:
        """The classifier-free guidance scale a render runs with (a negative pass), or None for none."""
        g = settings.get("guidance", 0.0)
        return g if g > 1 and not self.guidance_embedding else None

    def unguided(self) -> dict[str, float]:
        """The settings that turn classifier-free guidance off (what an inversion renders with)."""
        return {"guidance": 1.0}

    def check_settings(self, s: dict, spec: str) -> None:
        """Refuse settings the family ignores (a negative prompt without a negative pass)."""
        if not s["negative_prompt"]:
            return
        if self.guidance_embedding:
            raise StudioError(f"model {spec} is an {self.name} model: it ignores a negative prompt (its guidance "
                              "is distilled into the UNet); leave the negative prompt empty")
        if self.cfg_scale(s) is None:
            raise StudioError(f"guidance {s['guidance']} ignores the negative prompt (it takes effect only "
                              "above 1); raise the guidance or leave the negative prompt empty")

    # -- text ----------------------------------------------------------------------------------------

    def text_length(self, pipe) -> int:
        return pipe.tokenizer.model_max_length

    def text_parts(self, pipe) -> list[Part]:
        """The named tensors of one prompt's conditioning, in packing order."""
        return [("embeds", (self.text_length(pipe), pipe.text_encoder.config.hidden_size))]

    def encode(self, pipe, prompts: list[str], device) -> list[torch.Tensor]:
        """Prompts -> the conditioning parts, each [N, *part shape], exactly as the pipeline computes them."""
        embeds, _ = pipe.encode_prompt(prompts, device, 1, False)
        return [embeds]

    # -- denoising -----------------------------------------------------------------------------------

    def denoise(self, adapter, x: torch.Tensor, t: torch.Tensor, parts: list[torch.Tensor],
                settings: dict) -> torch.Tensor:
        """One denoiser call on latents ``x`` [N, C, h, w] (already scaled for the scheduler), no guidance."""
        return adapter.pipe.unet(x, t, encoder_hidden_states=parts[0]).sample

    def set_timesteps(self, scheduler, steps: int, tokens: int, device) -> None:
        """The schedule the pipeline call itself would set for ``steps`` steps on ``tokens`` image tokens."""
        scheduler.set_timesteps(steps, device=device)

    def pipeline_call(self, adapter, noise: torch.Tensor, parts: list[torch.Tensor],
                      negative: list[torch.Tensor] | None, settings: dict) -> dict[str, Any]:
        """Keyword arguments for the pipeline call: its latents, conditioning and guidance."""
        kwargs = {"latents": noise, "prompt_embeds": parts[0], "guidance_scale": settings["guidance"]}
        if negative is not None:
            kwargs["negative_prompt_embeds"] = negative[0]
        return kwargs

    # -- h-space -------------------------------------------------------------------------------------

    def hspace_block(self, denoiser):
        """The module whose output is the h-space: a UNet's mid block (its bottleneck)."""
        return denoiser.mid_block

    def hspace_channels(self, denoiser) -> int:
        return denoiser.config.block_out_channels[-1]

    def widest(self, denoiser) -> int:
        """The denoiser's widest activations in channels (what sizes a batch to the free memory)."""
        return max(denoiser.config.block_out_channels)

    def hspace_stride(self, pipe) -> int:
        """Latent cells per h-space cell along each side: each UNet down block but the last halves the grid."""
        return 2 ** (len(pipe.unet.config.down_block_types) - 1)


class SDXL(Family):
    """SDXL and SDXL-Turbo: two CLIP encoders, the second one's pooled projection, micro-conditioning."""

    name = "SDXL"
    summary = ("two CLIP sequences + pooled text; size/crop micro-conditioning; guidance with a negative prompt; "
               "DDIM inversion; h-space: UNet mid block")
    encoders = {"text_encoder": "clip", "text_encoder_2": "clip"}
    micro_conditioning = True

    def check(self, pipe, spec: str) -> None:
        unet = pipe.unet.config
        widths = [pipe.text_encoder.config.hidden_size, pipe.text_encoder_2.config.hidden_size]
        pooled = pipe.text_encoder_2.config.projection_dim
        if unet.addition_embed_type != "text_time" or (
                unet.projection_class_embeddings_input_dim != 6 * unet.addition_time_embed_dim + pooled):
            raise refused(pipe, spec, f"the UNet's added embedding does not take the second "
                          f"text encoder's pooled width {pooled} plus six micro-conditioning numbers")
        if pipe.tokenizer.model_max_length != pipe.tokenizer_2.model_max_length:
            raise refused(pipe, spec, f"its tokenizers take {pipe.tokenizer.model_max_length} "
                          f"and {pipe.tokenizer_2.model_max_length} tokens; they must agree")
        if sum(widths) != unet.cross_attention_dim:
            raise refused(pipe, spec, f"text encoder widths {widths[0]} + {widths[1]} do not "
                          f"match the UNet's cross-attention width {unet.cross_attention_dim}")

    def settings(self, pipe) -> dict[str, Any]:
        # None means the render size (and crop 0, 0), as in diffusers
        return {"steps": 20, "guidance": 5.0, **dict.fromkeys(MICRO_CONDITIONING)}

    def text_parts(self, pipe) -> list[Part]:
        width = pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
        return [("embeds", (self.text_length(pipe), width)), ("pooled", (pipe.text_encoder_2.config.projection_dim,))]

    def encode(self, pipe, prompts: list[str], device) -> list[torch.Tensor]:
        embeds, _, pooled, _ = pipe.encode_prompt(prompt=prompts, device=device, num_images_per_prompt=1,
                                                  do_classifier_free_guidance=False)
        return [embeds, pooled]

    @staticmethod
    def resolve_micro(s: dict) -> None:
        """Fill the micro-conditioning settings left at None with the render size, as diffusers does."""
        defaults = {"original_size": [s["height"], s["width"]], "crops_coords_top_left": [0, 0],
                    "target_size": [s["height"], s["width"]]}
        for key in MICRO_CONDITIONING:
            s[key] = check_pair(s[key] if s[key] is not None else defaults[key], key)

    def denoise(self, adapter, x, t, parts, settings):
        ids = [*settings["original_size"], *settings["crops_coords_top_left"], *settings["target_size"]]
        time_ids = torch.tensor([ids], device=x.device, dtype=x.dtype).expand(len(x), -1)  # [N, 6]
        added = {"text_embeds": parts[1], "time_ids": time_ids}
        return adapter.pipe.unet(x, t, encoder_hidden_states=parts[0], added_cond_kwargs=added).sample

    def pipeline_call(self, adapter, noise, parts, negative, settings):
        kwargs = {"latents": noise, "prompt_embeds": parts[0], "pooled_prompt_embeds": parts[1],
                  "guidance_scale": settings["guidance"], **{k: tuple(settings[k]) for k in MICRO_CONDITIONING}}
        if negative is not None:
            kwargs.update(negative_prompt_embeds=negative[0], negative_pooled_prompt_embeds=negative[1])
        return kwargs


class LCM(Family):
    """Latent consistency models: SD's parts with the guidance scale distilled into a UNet embedding."""

    name = "LCM"
    summary = "SD's text; guidance distilled into the UNet (no negative prompt); LCM or DDIM scheduler; DDIM inversion"
    guidance_embedding = True
    guidance_label = "Guidance (distilled into the UNet)"
    schedulers = ("LCMScheduler", "DDIMScheduler")
    pipeline_schedulers = ("LCMScheduler",)

    def check(self, pipe, spec: str) -> None:
        super().check(pipe, spec)
        if not pipe.unet.config.time_cond_proj_dim:
            raise refused(pipe, spec, "its UNet has no guidance embedding (time_cond_proj_dim)")

    def settings(self, pipe) -> dict[str, Any]:
        return {"steps": 4, "guidance": 8.5}

    def denoise(self, adapter, x, t, parts, settings):
        w = torch.full((len(x),), settings["guidance"] - 1.0)
        cond = adapter.pipe.get_guidance_scale_embedding(w, embedding_dim=adapter.pipe.unet.config.time_cond_proj_dim)
        return adapter.pipe.unet(x, t, encoder_hidden_states=parts[0], timestep_cond=cond.to(x.device, x.dtype)).sample


class Transformer(Family):
    """What the transformer (DiT) families share: patches of latent cells as tokens, T5 text, a middle block."""

    denoiser = "transformer"
    fingerprint_keys = T5_KEYS
    default_text_length = 256  # T5 tokens, as the pipeline's own max_sequence_length default

    def text_length(self, pipe) -> int:
        t5 = next(e for e, label in self.encoders.items() if label == "t5")
        tokenizer = getattr(pipe, t5.replace("text_encoder", "tokenizer"), None)
        limit = tokenizer.model_max_length if tokenizer is not None else self.default_text_length
        return min(self.default_text_length, limit)

    def default_side(self, pipe) -> int:
        return pipe.transformer.config.sample_size * pipe.vae_scale_factor

    def patch(self, pipe) -> int:
        return pipe.transformer.config.patch_size

    def hspace_block(self, denoiser):
        """The middle block of the transformer's stack.

        A DiT keeps one token grid from its first block to its last, so it has no bottleneck; the
        middle of its depth is where a layout has formed that later blocks still refine, the role
        a UNet's mid block plays. Its output image tokens are the h-space.
        """
        blocks = self.blocks(denoiser)
        return blocks[len(blocks) // 2]

    def blocks(self, denoiser) -> list:
        return list(denoiser.transformer_blocks)

    def hspace_channels(self, denoiser) -> int:
        return denoiser.config.num_attention_heads * denoiser.config.attention_head_dim

    def widest(self, denoiser) -> int:
        return self.hspace_channels(denoiser)  # the token width (a batch is sized per token, not per cell)

    def hspace_stride(self, pipe) -> int:
        return self.patch(pipe)


class SD3(Transformer):
    """Stable Diffusion 3 / 3.5: CLIP-L + CLIP-G + optional T5 sequence, pooled CLIP, flow matching."""

    name = "SD 3/3.5"
    summary = ("CLIP-L + CLIP-G + optional T5 sequence, pooled CLIP; guidance with a negative prompt; flow matching "
               "(Euler, shift); flow-ODE inversion; h-space: middle joint block")
    encoders = {"text_encoder": "clipL", "text_encoder_2": "clipG", "text_encoder_3": "t5"}
    optional_encoders = ("text_encoder_3",)
    flow = True
    schedulers = FLOW_SCHEDULERS
    text_label = "text-sd3"

    def check(self, pipe, spec: str) -> None:
        tr = pipe.transformer.config
        pooled = pipe.text_encoder.config.projection_dim + pipe.text_encoder_2.config.projection_dim
        if tr.pooled_projection_dim != pooled:
            raise refused(pipe, spec, f"the transformer takes pooled text of width "
                          f"{tr.pooled_projection_dim}, its CLIP encoders give {pooled}")
        if tr.in_channels != pipe.vae.config.latent_channels:
            raise refused(pipe, spec, f"the transformer takes {tr.in_channels} latent "
                          f"channels, its VAE gives {pipe.vae.config.latent_channels}")

    def settings(self, pipe) -> dict[str, Any]:
        return {"steps": 28, "guidance": 7.0}

    def text_parts(self, pipe) -> list[Part]:
        clip = pipe.tokenizer.model_max_length
        pooled = pipe.text_encoder.config.projection_dim + pipe.text_encoder_2.config.projection_dim
        width = pipe.transformer.config.joint_attention_dim
        return [("embeds", (clip + self.text_length(pipe), width)), ("pooled", (pooled,))]

    def encode(self, pipe, prompts, device):
        embeds, _, pooled, _ = pipe.encode_prompt(prompt=prompts, prompt_2=None, prompt_3=None, device=device,
                                                  do_classifier_free_guidance=False,
                                                  max_sequence_length=self.text_length(pipe))
        return [embeds, pooled]

    def denoise(self, adapter, x, t, parts, settings):
        return adapter.pipe.transformer(hidden_states=x, timestep=t.expand(len(x)), encoder_hidden_states=parts[0],
                                        pooled_projections=parts[1]).sample

    def set_timesteps(self, scheduler, steps, tokens, device):
        kwargs = {}
        if scheduler.config.get("use_dynamic_shifting"):  # SD 3.5's own pipeline computes mu only then
            kwargs["mu"] = resolution_shift(scheduler, tokens, 1.16)
        scheduler.set_timesteps(steps, device=device, **kwargs)

    def pipeline_call(self, adapter, noise, parts, negative, settings):
        kwargs = {"latents": noise, "prompt_embeds": parts[0], "pooled_prompt_embeds": parts[1],
                  "guidance_scale": settings["guidance"]}
        if negative is not None:
            kwargs.update(negative_prompt_embeds=negative[0], negative_pooled_prompt_embeds=negative[1])
        return kwargs


class Flux(Transformer):
    """Flux.1 dev and schnell: T5 sequence + CLIP pooled, packed 2x2 latents, distilled guidance, flow matching.

    ``guidance`` is dev's distilled guidance (an embedding the transformer takes); ``true_cfg`` is
    classifier-free guidance proper, a second pass with the negative prompt. Schnell has no
    guidance embedding, so it has no ``guidance`` setting at all.
    """

    name = "Flux.1"
    encoders = {"text_encoder": "clipL", "text_encoder_2": "t5"}
    flow = True
    summary = ("T5 sequence + CLIP pooled, latents packed 2x2 for the transformer; dev: distilled guidance; true CFG "
               "with a negative prompt; flow matching with the resolution shift; flow-ODE inversion; h-space: middle "
               "of the double + single stack")
    schedulers = FLOW_SCHEDULERS
    pipeline_schedulers = FLOW_SCHEDULERS
    default_text_length = 512
    text_label = "text-flux"

    def distilled(self, pipe) -> bool:
        return bool(pipe.transformer.config.guidance_embeds)

    def check(self, pipe, spec: str) -> None:
        tr = pipe.transformer.config
        if tr.in_channels != 4 * pipe.vae.config.latent_channels:
            raise refused(pipe, spec, f"the transformer takes {tr.in_channels} channels, not "
                          f"its VAE's {pipe.vae.config.latent_channels} latent channels in 2x2 patches")
        if tr.pooled_projection_dim != pipe.text_encoder.config.hidden_size:
            raise refused(pipe, spec, f"the transformer takes pooled text of width "
                          f"{tr.pooled_projection_dim}, its CLIP encoder gives {pipe.text_encoder.config.hidden_size}")

    def settings(self, pipe) -> dict[str, Any]:
        if self.distilled(pipe):  # dev
            return {"steps": 28, "guidance": 3.5, "true_cfg": 1.0}
        return {"steps": 4, "true_cfg": 1.0}  # schnell

    def default_side(self, pipe) -> int:
        return pipe.vae.config.sample_size  # the transformer has no sample size; Flux's VAE says 1024

    def patch(self, pipe) -> int:
        return 2 * pipe.transformer.config.patch_size  # the 2x2 packing, then the transformer's own patches

    def blocks(self, denoiser) -> list:
        return [*denoiser.transformer_blocks, *denoiser.single_transformer_blocks]  # one stack, double then single

    separate_negative_pass = True
    guidance_label = "Distilled guidance"

    def cfg_scale(self, settings):
        return settings["true_cfg"] if settings["true_cfg"] > 1 else None

    def unguided(self):
        return {"true_cfg": 1.0}  # the distilled guidance stays: it is part of the model

    def check_settings(self, s, spec):
        if s["negative_prompt"] and self.cfg_scale(s) is None:
            raise StudioError(f"model {spec} ({self.name}) takes a negative prompt only with true CFG: set true_cfg "
                              "above 1 (its guidance setting is the distilled guidance embedding, which has no "
                              "negative pass), or leave the negative prompt empty")

    def text_parts(self, pipe):
        return [("embeds", (self.text_length(pipe), pipe.text_encoder_2.config.d_model)),
                ("pooled", (pipe.text_encoder.config.hidden_size,))]

    def encode(self, pipe, prompts, device):
        embeds, pooled, _ = pipe.encode_prompt(prompt=prompts, prompt_2=None, device=device,
                                               max_sequence_length=self.text_length(pipe))
        return [embeds, pooled]

    def denoise(self, adapter, x, t, parts, settings):
        pipe, (n, _, h, w) = adapter.pipe, x.shape
        guidance = None
        if self.distilled(pipe):
            guidance = torch.full((n,), settings["guidance"], device=x.device, dtype=torch.float32)
        out = pipe.transformer(
            hidden_states=pack(x),
            timestep=t.expand(n).to(x.dtype) / 1000,
            guidance=guidance,
            pooled_projections=parts[1],
            encoder_hidden_states=parts[0],
            txt_ids=torch.zeros(parts[0].shape[1], 3, device=x.device, dtype=x.dtype),
            img_ids=image_ids(h // 2, w // 2, x.device, x.dtype),
        ).sample
        return unpack(out, h, w)

    def set_timesteps(self, scheduler, steps, tokens, device):
        kwargs: dict[str, Any] = {"mu": resolution_shift(scheduler, tokens, 1.15)}
        if not scheduler.config.get("use_flow_sigmas"):
            kwargs["sigmas"] = np.linspace(1.0, 1 / steps, steps)
        scheduler.set_timesteps(None if "sigmas" in kwargs else steps, device=device, **kwargs)

    def pipeline_call(self, adapter, noise, parts, negative, settings):
        kwargs = {"latents": pack(noise), "prompt_embeds": parts[0], "pooled_prompt_embeds": parts[1],
                  "guidance_scale": settings.get("guidance", 3.5), "true_cfg_scale": settings["true_cfg"]}
        if negative is not None:
            kwargs.update(negative_prompt_embeds=negative[0], negative_pooled_prompt_embeds=negative[1])
        return kwargs


class PixArtSigma(Transformer):
    """PixArt-Sigma: a T5 sequence with an attention mask, SD's VAE and a DDPM-style schedule.

    Its conditioning is stored with the padding positions zeroed, and the mask is read back as
    the rows that are not all zero: a mixture of two prompts then attends to the tokens of either
    and never to the padding embeddings of one of them.
    """

    name = "PixArt-Sigma"
    summary = ("T5 sequence with its mask (padding stored as zeros); guidance with a negative prompt; 11 DDPM-style "
               "schedulers; DDIM inversion; h-space: middle block")
    encoders = {"text_encoder": "t5"}
    step_callback = False
    default_text_length = 300
    text_label = "text-pixart"

    def check(self, pipe, spec: str) -> None:
        tr = pipe.transformer.config
        if tr.caption_channels != pipe.text_encoder.config.d_model:
            raise refused(pipe, spec, f"the transformer takes text of width "
                          f"{tr.caption_channels}, its T5 encoder gives {pipe.text_encoder.config.d_model}")

    def settings(self, pipe) -> dict[str, Any]:
        return {"steps": 20, "guidance": 4.5}

    def text_parts(self, pipe):
        return [("embeds", (self.text_length(pipe), pipe.text_encoder.config.d_model))]

    def encode(self, pipe, prompts, device):
        embeds, mask, _, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False, device=device,
                                                max_sequence_length=self.text_length(pipe))
        return [embeds.masked_fill(mask[..., None] == 0, 0.0)]  # +0.0, never -0.0: ids hash the bytes

    @staticmethod
    def mask(embeds: torch.Tensor) -> torch.Tensor:
        """The attention mask [N, L] of stored conditioning [N, L, D]: 1 where a row is not all zero."""
        return (embeds != 0).any(-1).long()

    def denoise(self, adapter, x, t, parts, settings):
        tr = adapter.pipe.transformer
        out = tr(x, encoder_hidden_states=parts[0], encoder_attention_mask=self.mask(parts[0]),
                 timestep=t.reshape(-1).expand(len(x)), added_cond_kwargs={"resolution": None, "aspect_ratio": None}
                 ).sample
        if tr.config.out_channels // 2 == x.shape[1]:  # learned sigma: the second half is the variance
            out = out.chunk(2, dim=1)[0]
        return out

    def pipeline_call(self, adapter, noise, parts, negative, settings):
        kwargs = {"latents": noise, "prompt_embeds": parts[0], "prompt_attention_mask": self.mask(parts[0]),
                  "guidance_scale": settings["guidance"], "use_resolution_binning": False,
                  "negative_prompt": None, "clean_caption": False}  # the embeddings say it all
        if negative is not None:
            kwargs.update(negative_prompt_embeds=negative[0], negative_prompt_attention_mask=self.mask(negative[0]))
        return kwargs


FAMILIES: dict[str, Family] = {
    "StableDiffusionPipeline": Family(),
    "StableDiffusionXLPipeline": SDXL(),
    "LatentConsistencyModelPipeline": LCM(),
    "StableDiffusion3Pipeline": SD3(),
    "FluxPipeline": Flux(),
    "PixArtSigmaPipeline": PixArtSigma(),
}  # pipeline class -> family; `studio models` and the README list these


def family_table() -> list[tuple[str, str, str]]:
    """(pipeline class, family, what it takes and how it edits) for each family, as `studio models` lists them."""
    return [(pipeline, family.name, family.summary) for pipeline, family in FAMILIES.items()]


def supported() -> str:
    """The families the studio runs, as a message lists them."""
    return ", ".join(f"{name} ({family.name})" for name, family in FAMILIES.items())


def text_fingerprint_config(family: Family, pipe) -> tuple[Any, list]:
    """The config that names a pipeline's text space, and the encoders whose weights join it."""
    present = [(e, getattr(pipe, e, None)) for e in family.encoders]
    configs = []
    for name, encoder in present:
        tokenizer = getattr(pipe, name.replace("text_encoder", "tokenizer"), None)
        if encoder is None:
            configs.append({"absent": name})
            continue
        configs.append({**public_config(encoder.config, family.fingerprint_keys),
                        "max_length": tokenizer.model_max_length if tokenizer is not None else None})
    encoders = [enc for _, enc in present if enc is not None]
    # SD's fingerprint keeps its one-encoder form, so libraries made before SDXL stay valid
    return (configs[0] if len(configs) == 1 and family.text_label == "text" else configs), encoders


def text_label(family: Family, pipe) -> str:
    """The text space's family label: the newer families say which encoders made it (``text-sd3-clipL-clipG``)."""
    if family.text_label == "text":
        return "text"
    present = [label for e, label in family.encoders.items() if getattr(pipe, e, None) is not None]
    return "-".join([family.text_label, *present])


def resolution_shift(scheduler, image_tokens: int, max_shift: float) -> float:
    """The resolution-dependent shift mu: linear in the image token count, as diffusers computes it."""
    cfg = scheduler.config
    low, high = cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096)
    base, top = cfg.get("base_shift", 0.5), cfg.get("max_shift", max_shift)
    slope = (top - base) / (high - low)
    return image_tokens * slope + base - slope * low


def pack(x: torch.Tensor) -> torch.Tensor:
    """Latents [N, C, h, w] -> Flux's tokens of 2x2 patches [N, h/2 * w/2, 4C] (row by row)."""
    n, c, h, w = x.shape
    return x.view(n, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(n, (h // 2) * (w // 2), c * 4)


def unpack(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Flux's tokens [N, h/2 * w/2, 4C] -> latents [N, C, h, w]; the inverse of ``pack``."""
    n, _, c4 = tokens.shape
    return tokens.view(n, h // 2, w // 2, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(n, c4 // 4, h, w)


def image_ids(h: int, w: int, device, dtype) -> torch.Tensor:
    """Flux's position ids of an h x w token grid: [h * w, 3] holding (0, row, column)."""
    ids = torch.zeros(h, w, 3)
    ids[..., 1] = torch.arange(h)[:, None]
    ids[..., 2] = torch.arange(w)[None, :]
    return ids.reshape(h * w, 3).to(device, dtype)

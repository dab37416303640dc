"""Original-layout single-file checkpoints (SD 1.x, SD 2.x, SDXL base), loaded with no network at all.

A checkpoint downloaded from a model site is one ``.safetensors`` (or old ``.ckpt``) file in the
CompVis/Stability layout: ``model.diffusion_model.*`` (UNet), ``first_stage_model.*`` (VAE) and
the text encoder(s) under ``cond_stage_model.*`` or ``conditioner.embedders.*``. It carries no
configuration, so the layout is read from its keys and every size from its tensors (channels,
blocks, layers, widths, vocabulary, positions); what tensors cannot tell (head counts, schedule,
the VAE's scaling factor, group-norm groups, activations) follows the published configuration of
that layout (SD 1.5, SD 2.1, SDXL base 1.0). The CLIP tokenizer ships in ``pipelines/configs``.
diffusers' own converters map the weights onto its classes; nothing is initialised at random first.

SD 2.x files of the 512 px epsilon models and of the 768 px v-prediction models have the same
tensors. A file says which it is through ModelSpec metadata (``modelspec.prediction_type``,
``modelspec.resolution``) or a ``v_pred`` key; without either it loads as the 512 px epsilon model.

``.ckpt`` files are read only through ``torch.load(weights_only=True)``: nothing in a file runs.
``save_original_layout`` writes a diffusers pipeline back in this layout (for tests and tools).
"""

from __future__ import annotations

import json
import os
import pickle
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pipelines.common import one_line
from studio.errors import StudioError

if TYPE_CHECKING:
    import diffusers

CONFIGS = Path(__file__).parent / "configs"
TOKENIZER = CONFIGS / "clip-tokenizer"  # vocab.json, merges.txt and the SD 1.x tokenizer's config
OPEN_CLIP_TOKENIZER = CONFIGS / "open-clip-tokenizer"  # the same vocabulary, padded with "!"
CLIP_VOCAB = 49408
UNET = "model.diffusion_model."
VAE = "first_stage_model."
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")  # read weights-only; everything else is safetensors


@dataclass(frozen=True)
class Layout:
    """What one original layout holds and what its published configuration says."""

    name: str
    text_prefixes: tuple[str, ...]  # where each text encoder's weights live
    openclip: tuple[bool, ...]  # per encoder: OpenCLIP key names (else Hugging Face CLIP names)
    image_size: int  # default picture side, for files that do not state theirs
    scaling_factor: float  # the VAE's
    per_head_width: bool  # head counts follow channels // 64 (SD 2, SDXL) instead of 8 heads (SD 1)
    architecture: str  # ModelSpec's name for it (written by save_original_layout)


LAYOUTS = {
    "SD 1.x": Layout("SD 1.x", ("cond_stage_model.transformer.",), (False,), 512, 0.18215, False,
                     "stable-diffusion-v1"),
    "SD 2.x": Layout("SD 2.x", ("cond_stage_model.model.",), (True,), 512, 0.18215, True,
                     "stable-diffusion-v2-512"),
    "SDXL base": Layout("SDXL base", ("conditioner.embedders.0.transformer.", "conditioner.embedders.1.model."),
                        (False, True), 1024, 0.13025, True, "stable-diffusion-xl-v1-base"),
}


@dataclass(frozen=True)
class Variant:
    """What a file says about itself beyond its tensors (ModelSpec metadata, a ``v_pred`` key)."""

    prediction_type: str  # "epsilon" or "v_prediction"
    image_size: int  # picture side it was trained at


def _refusal(exc: BaseException) -> str:
    """Why torch's weights-only unpickler refused a file, without its advice to load it unsafely."""
    paragraphs = [p.strip() for p in str(exc).split("\n\n") if p.strip()]
    boilerplate = ("Weights only load failed", "Check the documentation")
    return one_line(" ".join(p for p in paragraphs if not p.startswith(boilerplate)) or type(exc).__name__)


# -- reading -----------------------------------------------------------------------------------------

def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and header metadata of a ``.safetensors`` or weights-only ``.ckpt`` file."""
    path = Path(path)
    metadata: dict[str, str] = {}
    if path.suffix.lower() in PICKLE_SUFFIXES:
        try:
            with warnings.catch_warnings():  # torch's note on the pickle protocol is not the user's business
                warnings.simplefilter("ignore", UserWarning)
                data = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise StudioError(f"checkpoint {path.name!r}: the weights-only loader refused it (nothing in it was "
                              f"run; it is never loaded unsafely): {_refusal(exc)}") from None
        except Exception as exc:
            raise StudioError(f"cannot read checkpoint {path.name!r}: {type(exc).__name__}: "
                              f"{one_line(exc)}") from None
        while isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
            data = data["state_dict"]
        if isinstance(data, dict):  # a training checkpoint's bookkeeping (global_step, ...) is not weights
            data = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    else:
        from safetensors import SafetensorError, safe_open
        from safetensors.torch import load_file

        try:
            with safe_open(str(path), "pt") as f:
                metadata = f.metadata() or {}
            data = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise StudioError(f"checkpoint {path.name!r} is not a readable safetensors file (truncated or "
                              f"another format): {one_line(exc)}") from None
    if not isinstance(data, dict) or not data or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise StudioError(f"checkpoint {path.name!r} does not hold a dict of tensors")
    return _hf_clip_names(data), metadata


def _hf_clip_names(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Old SD 1.x files name CLIP's weights without ``text_model.``; give them the name diffusers reads."""
    old = "cond_stage_model.transformer."
    if not any(k.startswith(old) for k in sd) or any(k.startswith(old + "text_model.") for k in sd):
        return sd
    return {(old + "text_model." + k[len(old):] if k.startswith(old) else k): v for k, v in sd.items()}


def detect_layout(sd: dict[str, torch.Tensor], name: str = "checkpoint") -> Layout:
    """The original layout whose keys the checkpoint has."""
    has = lambda prefix: any(k.startswith(prefix) for k in sd)  # noqa: E731
    if has(UNET) and has(VAE):
        for layout in reversed(LAYOUTS.values()):  # SDXL first: it holds the most prefixes
            if all(has(p) for p in layout.text_prefixes):
                return layout
    raise StudioError(f"{name}: its keys match no known checkpoint layout (known: {', '.join(LAYOUTS)}, each "
                      f"with {UNET}*, {VAE}* and its text encoder keys)")


def detect_variant(sd: dict[str, torch.Tensor], metadata: dict[str, str], layout: Layout) -> Variant:
    """Prediction type and picture size: from ModelSpec metadata or a ``v_pred`` key, else the layout's default."""
    said = metadata.get("modelspec.prediction_type", "").lower().replace("-", "_")
    arch = metadata.get("modelspec.architecture", "")
    v = said in ("v", "v_prediction") or (not said and ("v_pred" in sd or arch.endswith("-v")))
    size = re.fullmatch(r"(\d+)x(\d+)", metadata.get("modelspec.resolution", "").strip())
    image_size = int(size[1]) if size else 768 if v and layout.name == "SD 2.x" else layout.image_size
    return Variant("v_prediction" if v else "epsilon", image_size)


def _indices(sd: dict, prefix: str) -> list[int]:
    """The distinct integers that follow ``prefix`` in the keys, sorted."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m.group(1)) for k in sd for m in [pattern.match(k)] if m})


def _shape(sd: dict, key: str) -> tuple[int, ...]:
    if key not in sd:
        raise StudioError(f"it lacks {key}, which its layout needs")
    return tuple(sd[key].shape)


# -- configurations from shapes ------------------------------------------------------------------------

def unet_config(sd: dict, layout: Layout, pooled: int | None, variant: Variant | None = None) -> dict[str, Any]:
    """The diffusers UNet2DConditionModel config of the ``model.diffusion_model.*`` weights.

    ``pooled`` is the second text encoder's projection width (SDXL), which the added embedding takes."""
    variant = variant or Variant("epsilon", layout.image_size)
    blocks = [i for i in _indices(sd, UNET + "input_blocks.") if i > 0]
    levels: list[list[int]] = [[]]
    for i in blocks:  # downsamplers split the input blocks into levels
        if f"{UNET}input_blocks.{i}.0.op.weight" in sd:
            levels.append([])
        else:
            levels[-1].append(i)
    if not levels[0]:
        raise StudioError("its UNet has no input blocks after its first convolution")
    attention = [any(k.startswith(f"{UNET}input_blocks.{lv[0]}.1.") for k in sd) for lv in levels]
    channels = [_shape(sd, f"{UNET}input_blocks.{lv[0]}.0.out_layers.3.weight")[0] for lv in levels]
    depth = [len(_indices(sd, f"{UNET}input_blocks.{lv[0]}.1.transformer_blocks.")) or 1 for lv in levels]
    first = next((lv[0] for lv, a in zip(levels, attention) if a), None)
    if first is None:
        raise StudioError("its UNet has no cross-attention blocks; it is not a text-to-image UNet")
    attn = f"{UNET}input_blocks.{first}.1."
    config: dict[str, Any] = {
        "sample_size": variant.image_size // 8,  # the VAE's 8x (checked against the VAE's own levels)
        "in_channels": _shape(sd, UNET + "input_blocks.0.0.weight")[1],
        "out_channels": _shape(sd, UNET + "out.2.weight")[0],
        "block_out_channels": tuple(channels),
        "layers_per_block": len(levels[0]),
        "down_block_types": tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention),
        "up_block_types": tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
        "cross_attention_dim": _shape(sd, attn + "transformer_blocks.0.attn2.to_k.weight")[1],
        # diffusers' "attention_head_dim" counts heads here; the weights do not tell, the published configs do
        "attention_head_dim": tuple(max(1, c // 64) for c in channels) if layout.per_head_width else 8,
        "use_linear_projection": len(_shape(sd, attn + "proj_in.weight")) == 2,
        "transformer_layers_per_block": depth[0] if len(set(depth)) == 1 else tuple(depth),
    }
    if layout.name == "SD 2.x" and variant.prediction_type == "v_prediction":
        config["upcast_attention"] = True  # SD 2.1 768-v: fp16 attention overflows without it
    if f"{UNET}label_emb.0.0.weight" in sd:  # SDXL: pooled text plus six size numbers, each embedded
        adm = _shape(sd, f"{UNET}label_emb.0.0.weight")[1]
        if pooled is None or adm <= pooled or (adm - pooled) % 6:
            raise StudioError(f"its UNet's added embedding takes {adm} numbers, which does not fit a "
                              f"pooled text width of {pooled} plus six micro-conditioning numbers")
        config.update(addition_embed_type="text_time", addition_time_embed_dim=(adm - pooled) // 6,
                      projection_class_embeddings_input_dim=adm)
    elif pooled is not None:
        raise StudioError("its UNet has no added embedding for the pooled text of its second encoder")
    return config


def vae_config(sd: dict, layout: Layout, variant: Variant | None = None) -> dict[str, Any]:
    """The diffusers AutoencoderKL config of the ``first_stage_model.*`` weights."""
    variant = variant or Variant("epsilon", layout.image_size)
    levels = _indices(sd, VAE + "encoder.down.")
    channels = [_shape(sd, f"{VAE}encoder.down.{i}.block.0.conv2.weight")[0] for i in levels]
    config = {
        "in_channels": _shape(sd, VAE + "encoder.conv_in.weight")[1],
        "out_channels": _shape(sd, VAE + "decoder.conv_out.weight")[0],
        "block_out_channels": tuple(channels),
        "down_block_types": ("DownEncoderBlock2D",) * len(channels),
        "up_block_types": ("UpDecoderBlock2D",) * len(channels),
        "layers_per_block": len(_indices(sd, VAE + "encoder.down.0.block.")),
        "latent_channels": _shape(sd, VAE + "post_quant_conv.weight")[0],
        "sample_size": variant.image_size,
        "scaling_factor": layout.scaling_factor,
    }
    if not any(k.startswith(VAE + "encoder.mid.attn_1.") for k in sd):
        config["mid_block_add_attention"] = False
    return config


def text_config(sd: dict, prefix: str, openclip: bool, drop_last: bool):
    """A CLIPTextConfig for one text encoder's weights (Hugging Face or OpenCLIP key names).

    ``drop_last``: SD 2 conditions on the penultimate layer, so diffusers keeps one layer fewer than the file."""
    from transformers import CLIPTextConfig

    if openclip:
        vocab, width = _shape(sd, prefix + "token_embedding.weight")
        positions = _shape(sd, prefix + "positional_embedding")[0]
        layers = len(_indices(sd, prefix + "transformer.resblocks.")) - (1 if drop_last else 0)
        inner = _shape(sd, prefix + "transformer.resblocks.0.mlp.c_fc.weight")[0]
        projection = _shape(sd, prefix + "text_projection")[1] if prefix + "text_projection" in sd else width
        act = "gelu"
    else:
        p = prefix + "text_model."
        vocab, width = _shape(sd, p + "embeddings.token_embedding.weight")
        positions = _shape(sd, p + "embeddings.position_embedding.weight")[0]
        layers = len(_indices(sd, p + "encoder.layers."))
        inner = _shape(sd, p + "encoder.layers.0.mlp.fc1.weight")[0]
        projection, act = width, "quick_gelu"  # CLIP ViT-L/14
    if vocab < CLIP_VOCAB:
        raise StudioError(f"its text encoder {prefix}* has {vocab} tokens, fewer than the "
                          f"{CLIP_VOCAB} of the CLIP tokenizer its layout uses")
    if layers < 1:
        raise StudioError(f"its text encoder {prefix}* has no layers to run")
    return CLIPTextConfig(vocab_size=vocab, hidden_size=width, intermediate_size=inner, num_hidden_layers=layers,
                          num_attention_heads=max(1, width // 64), max_position_embeddings=positions,
                          hidden_act=act, projection_dim=projection, bos_token_id=0, eos_token_id=2,
                          pad_token_id=1)  # the published CLIP configs' ids (pooling takes the highest id)


def tokenizer(max_length: int, openclip: bool):
    """The shipped CLIP BPE tokenizer; OpenCLIP encoders pad with "!" as their published tokenizers do."""
    from transformers import CLIPTokenizer

    settings = json.loads(((OPEN_CLIP_TOKENIZER if openclip else TOKENIZER) / "tokenizer_config.json").read_text())
    settings.pop("tokenizer_class", None)
    settings["model_max_length"] = max_length
    return CLIPTokenizer.from_pretrained(TOKENIZER, **settings)


def scheduler(layout: Layout, prediction_type: str = "epsilon"):
    """The published scheduler: PNDM (SD 1.5, SD 2.1 base), DDIM (SD 2.1 768-v), Euler (SDXL base)."""
    from diffusers import DDIMScheduler, EulerDiscreteScheduler, PNDMScheduler

    common = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "steps_offset": 1,
              "prediction_type": prediction_type}
    if layout.name == "SDXL base":
        return EulerDiscreteScheduler(**common, timestep_spacing="leading")
    if prediction_type == "v_prediction":
        return DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=False)
    return PNDMScheduler(**common, skip_prk_steps=True, set_alpha_to_one=False)


# -- building the pipeline ---------------------------------------------------------------------------

def _build(cls, *args, **kwargs) -> torch.nn.Module:
    """A module whose parameters and buffers are on the meta device: no memory, no random initialisation."""
    with torch.device("meta"):
        return cls(*args, **kwargs)


def _load(module: torch.nn.Module, weights: dict[str, torch.Tensor], what: str, dtype: torch.dtype) -> None:
    """Put converted weights into a meta-built module; a missing, extra or misshapen tensor is one error line."""
    own = module.state_dict()
    missing = sorted(set(own) - set(weights))
    extra = sorted(set(weights) - set(own))
    bad = [k for k in own if k in weights and tuple(weights[k].shape) != tuple(own[k].shape)]
    if missing or extra or bad:
        detail = (f"missing {missing[0]}" if missing else f"unexpected {extra[0]}" if extra else
                  f"{bad[0]} has shape {tuple(weights[bad[0]].shape)}, expected {tuple(own[bad[0]].shape)}")
        raise StudioError(f"its {what} weights do not fit the architecture read from them "
                          f"({len(missing)} missing, {len(extra)} unexpected, {len(bad)} misshapen; {detail})")
    module.load_state_dict({k: v.to(dtype) if v.is_floating_point() else v for k, v in weights.items()},
                           strict=True, assign=True)
    for name, buffer in list(module.named_buffers()):  # the one non-persistent buffer: CLIP's position ids
        if buffer.is_meta:
            owner, _, leaf = name.rpartition(".")
            if leaf != "position_ids":
                raise StudioError(f"its {what} has a buffer the file cannot give: {name}")
            ids = torch.arange(buffer.shape[-1]).expand(buffer.shape)
            module.get_submodule(owner).register_buffer(leaf, ids, persistent=False)
    module.eval()


def _text_encoder(sd: dict, layout: Layout, index: int, dtype: torch.dtype):
    """Text encoder ``index`` of the file and the tokenizer that fits it."""
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint, convert_open_clip_checkpoint
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    prefix, openclip = layout.text_prefixes[index], layout.openclip[index]
    with_projection = layout.name == "SDXL base" and index == 1  # its pooled projection enters the UNet
    config = text_config(sd, prefix, openclip, drop_last=layout.name == "SD 2.x")
    model = _build(CLIPTextModelWithProjection if with_projection else CLIPTextModel, config)
    if openclip:
        weights = convert_open_clip_checkpoint(model, sd, prefix=prefix)
        if not with_projection:
            weights.pop("text_projection.weight", None)
        layer = re.compile(r"text_model\.encoder\.layers\.(\d+)\.")  # SD 2 runs all but the file's last layer
        weights = {k: v for k, v in weights.items()
                   if not (m := layer.match(k)) or int(m.group(1)) < config.num_hidden_layers}
    else:
        weights = convert_ldm_clip_checkpoint(sd, remove_prefix=prefix)
        weights = {k: v for k, v in weights.items() if not k.endswith("position_ids")}
    if not any(k.startswith("text_model.") for k in model.state_dict()):  # CLIPTextModel drops the prefix
        weights = {k.removeprefix("text_model."): v for k, v in weights.items()}
    _load(model, weights, f"text encoder {index + 1}", dtype)
    return model, tokenizer(config.max_position_embeddings, openclip)


def _check_fit(unet: dict, vae: dict, widths: int, layout: Layout) -> None:
    """Refuse parts whose shapes do not fit together (each one passed its own load)."""
    if widths != unet["cross_attention_dim"]:
        raise StudioError(f"its text encoders give {widths} channels but its UNet attends to "
                          f"{unet['cross_attention_dim']}")
    if unet["in_channels"] != vae["latent_channels"] or unet["out_channels"] != vae["latent_channels"]:
        raise StudioError(f"its UNet takes {unet['in_channels']} and gives {unet['out_channels']} channels but "
                          f"its VAE's latents have {vae['latent_channels']} (inpainting and other {layout.name} "
                          "variants are not supported)")
    if len(vae["block_out_channels"]) != 4:
        raise StudioError(f"its VAE has {len(vae['block_out_channels'])} levels; {layout.name} VAEs have 4 (8x)")


def load_single_file(path: str | Path, dtype: torch.dtype = torch.float32) -> diffusers.DiffusionPipeline:
    """A StableDiffusionPipeline (SD 1.x/2.x) or StableDiffusionXLPipeline (SDXL base) from one checkpoint file."""
    from diffusers import (
        AutoencoderKL,
        UNet2DConditionModel,
    )
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    path = Path(path)
    sd, metadata = read_checkpoint(path)
    layout = detect_layout(sd, f"checkpoint {path.name!r}")
    variant = detect_variant(sd, metadata, layout)
    try:
        encoders = [_text_encoder(sd, layout, i, dtype) for i in range(len(layout.text_prefixes))]
        pooled = encoders[1][0].config.projection_dim if len(encoders) > 1 else None
        config, vconfig = unet_config(sd, layout, pooled, variant), vae_config(sd, layout, variant)
        _check_fit(config, vconfig, sum(te.config.hidden_size for te, _ in encoders), layout)
        unet = _build(UNet2DConditionModel, **config)
        _load(unet, convert_ldm_unet_checkpoint(sd, config), "UNet", dtype)
        vae = _build(AutoencoderKL, **vconfig)
        _load(vae, convert_ldm_vae_checkpoint(sd, vconfig), "VAE", dtype)
    except StudioError as exc:
        raise StudioError(f"{layout.name} checkpoint {path.name!r}: {exc}") from None
    except (KeyError, RuntimeError, ValueError, IndexError, TypeError, AttributeError) as exc:
        raise StudioError(f"cannot read {layout.name} checkpoint {path.name!r}: {type(exc).__name__}: "
                          f"{one_line(exc)}") from None
    return assemble(layout, unet, vae, encoders, variant.prediction_type)


def assemble(layout: Layout, unet, vae, encoders: list[tuple[Any, Any]], prediction_type: str = "epsilon"):
    """The diffusers pipeline of ``layout`` from its parts; ``encoders`` are (text model, tokenizer) pairs."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    parts = {"unet": unet, "vae": vae, "scheduler": scheduler(layout, prediction_type),
             "text_encoder": encoders[0][0], "tokenizer": encoders[0][1]}
    if layout.name == "SDXL base":
        return StableDiffusionXLPipeline(**parts, text_encoder_2=encoders[1][0], tokenizer_2=encoders[1][1])
    return StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


# -- writing: the inverse of diffusers' converters -----------------------------------------------------

_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
           "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_UNET_FIXED = {"time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
               "add_embedding.linear_1.": "label_emb.0.0.", "add_embedding.linear_2.": "label_emb.0.2.",
               "conv_in.": "input_blocks.0.0.", "conv_norm_out.": "out.0.", "conv_out.": "out.2."}


def _resnet_key(rest: str) -> str:
    name, _, tail = rest.partition(".")
    return f"{_RESNET[name]}.{tail}"


def _unet_key(key: str, per_level: int, attention_levels: set[int]) -> str:
    """A diffusers UNet key -> its original name (without ``model.diffusion_model.``).

    The input blocks run level by level, ``per_level`` resnets (each with its attention) and then
    a downsampler; the output blocks the same upwards with one resnet more and the upsampler last."""
    for new, old in _UNET_FIXED.items():
        if key.startswith(new):
            return old + key[len(new):]
    if m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions|downsamplers)\.(\d+)\.(.*)", key):
        level, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        block = 1 + level * (per_level + 1) + (per_level if kind == "downsamplers" else j)
        if kind == "resnets":
            return f"input_blocks.{block}.0.{_resnet_key(rest)}"
        if kind == "attentions":
            return f"input_blocks.{block}.1.{rest}"
        return f"input_blocks.{block}.0.op.{rest.removeprefix('conv.')}"
    if m := re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", key):
        kind, j, rest = m[1], int(m[2]), m[3]
        return f"middle_block.1.{rest}" if kind == "attentions" else f"middle_block.{2 * j}.{_resnet_key(rest)}"
    if m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions|upsamplers)\.(\d+)\.(.*)", key):
        level, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        block = level * (per_level + 1) + (per_level if kind == "upsamplers" else j)
        if kind == "resnets":
            return f"output_blocks.{block}.0.{_resnet_key(rest)}"
        if kind == "attentions":
            return f"output_blocks.{block}.1.{rest}"
        return f"output_blocks.{block}.{2 if level in attention_levels else 1}.{rest}"
    raise StudioError(f"no original name for UNet weight {key}")


_VAE_ATTENTION = {"group_norm.": "norm.", "to_q.": "q.", "to_k.": "k.", "to_v.": "v.", "to_out.0.": "proj_out."}


def _vae_key(key: str, levels: int) -> str:
    """A diffusers VAE key -> its original name (without ``first_stage_model.``); decoder levels run reversed."""
    key = key.replace("conv_norm_out.", "norm_out.")
    key = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", key)
    key = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", key)
    key = re.sub(r"decoder\.up_blocks\.(\d+)\.resnets\.", lambda m: f"decoder.up.{levels - 1 - int(m[1])}.block.", key)
    key = re.sub(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
                 lambda m: f"decoder.up.{levels - 1 - int(m[1])}.upsample.", key)
    key = re.sub(r"mid_block\.resnets\.(\d+)\.", lambda m: f"mid.block_{int(m[1]) + 1}.", key)
    for new, old in _VAE_ATTENTION.items():
        key = key.replace("mid_block.attentions.0." + new, "mid.attn_1." + old)
    return key.replace("conv_shortcut.", "nin_shortcut.")


def _clip_weights(model) -> dict[str, torch.Tensor]:
    """A Hugging Face CLIP text encoder's weights under the names the original files use (``text_model.*``)."""
    return {(k if k.startswith(("text_model.", "text_projection")) else "text_model." + k): v
            for k, v in model.state_dict().items() if not k.endswith("position_ids")}


def _openclip_weights(model, prefix: str, spare_layer: bool) -> dict[str, torch.Tensor]:
    """A Hugging Face CLIP text encoder's weights under OpenCLIP names (q, k, v fused into ``in_proj``).

    ``spare_layer`` (SD 2): the file holds one layer more than SD 2 runs; it is written as zeros, which
    makes it an identity residual block. A model without a projection gets an identity ``text_projection``."""
    sd = _clip_weights(model)
    out = {prefix + "token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
           prefix + "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
           prefix + "ln_final.weight": sd["text_model.final_layer_norm.weight"],
           prefix + "ln_final.bias": sd["text_model.final_layer_norm.bias"]}
    width = model.config.hidden_size
    projection = sd.get("text_projection.weight")  # [projection, width]; OpenCLIP multiplies by [width, projection]
    embedding = out[prefix + "token_embedding.weight"]
    out[prefix + "text_projection"] = (projection.T if projection is not None else
                                       torch.eye(width, dtype=embedding.dtype, device=embedding.device))
    layers = model.config.num_hidden_layers
    for i in range(layers):
        src, dst = f"text_model.encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[dst + f"attn.in_proj_{kind}"] = torch.cat([sd[src + f"self_attn.{p}_proj.{kind}"] for p in "qkv"])
            out[dst + f"attn.out_proj.{kind}"] = sd[src + f"self_attn.out_proj.{kind}"]
            out[dst + f"ln_1.{kind}"] = sd[src + f"layer_norm1.{kind}"]
            out[dst + f"ln_2.{kind}"] = sd[src + f"layer_norm2.{kind}"]
            out[dst + f"mlp.c_fc.{kind}"] = sd[src + f"mlp.fc1.{kind}"]
            out[dst + f"mlp.c_proj.{kind}"] = sd[src + f"mlp.fc2.{kind}"]
    if spare_layer:
        last, spare = f"{prefix}transformer.resblocks.{layers - 1}.", f"{prefix}transformer.resblocks.{layers}."
        out |= {spare + k[len(last):]: torch.zeros_like(v) for k, v in list(out.items()) if k.startswith(last)}
    return out


def original_layout(pipe: diffusers.DiffusionPipeline, layout: str) -> dict[str, torch.Tensor]:
    """A diffusers SD or SDXL pipeline's weights under the original single-file names of ``layout``:
    contiguous CPU copies, none sharing storage (as safetensors requires)."""
    return {k: v.detach().to("cpu").clone().contiguous() for k, v in original_names(pipe, layout).items()}


def original_names(pipe: Any, layout: str) -> dict[str, torch.Tensor]:
    """The pipeline's tensors (views, not copies) keyed by their original single-file names.

    ``pipe`` needs only ``unet``, ``vae``, ``text_encoder`` (and ``text_encoder_2`` for SDXL)."""
    spec = LAYOUTS[layout]
    unet = pipe.unet.config
    attention_levels = {i for i, t in enumerate(unet.up_block_types) if t.startswith("CrossAttn")}
    out = {UNET + _unet_key(k, unet.layers_per_block, attention_levels): v for k, v in pipe.unet.state_dict().items()}
    levels = len(pipe.vae.config.block_out_channels)
    for k, v in pipe.vae.state_dict().items():
        name = VAE + _vae_key(k, levels)  # the original's attention projections are 1x1 convolutions
        out[name] = v[..., None, None] if ".mid.attn_1." in name and name.endswith("weight") and v.ndim == 2 else v
    encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if len(spec.text_prefixes) > 1 else [])
    for encoder, prefix, openclip in zip(encoders, spec.text_prefixes, spec.openclip, strict=True):
        if openclip:
            out.update(_openclip_weights(encoder, prefix, spare_layer=layout == "SD 2.x"))
        else:
            out.update({prefix + k: v for k, v in _clip_weights(encoder).items()})
    return out


def pipeline_layout(pipe: diffusers.DiffusionPipeline) -> str:
    """The original layout a diffusers pipeline is written in: by its encoders (OpenCLIP's use gelu)."""
    if getattr(pipe, "text_encoder_2", None) is not None:
        return "SDXL base"
    return "SD 2.x" if pipe.text_encoder.config.hidden_act == "gelu" else "SD 1.x"


def save_original_layout(pipe: diffusers.DiffusionPipeline, path: str | Path, layout: str | None = None) -> Path:
    """Write a diffusers SD/SDXL pipeline as one original-layout ``.safetensors`` file, atomically.

    The header carries ModelSpec metadata (architecture, resolution, prediction type), as Stability's files do."""
    from safetensors.torch import save_file

    from studio.store import FILE_MODE

    layout = layout or pipeline_layout(pipe)
    if layout not in LAYOUTS:
        raise StudioError(f"unknown checkpoint layout {layout!r}; known: {', '.join(LAYOUTS)}")
    side = pipe.unet.config.sample_size * 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    v = pipe.scheduler.config.get("prediction_type") == "v_prediction"
    architecture = "stable-diffusion-v2-768-v" if layout == "SD 2.x" and v else LAYOUTS[layout].architecture
    metadata = {"modelspec.sai_model_spec": "1.0.0", "modelspec.architecture": architecture,
                "modelspec.resolution": f"{side}x{side}", "modelspec.prediction_type": "v" if v else "epsilon"}
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        save_file(original_layout(pipe, layout), str(tmp), metadata=metadata)
        os.chmod(tmp, FILE_MODE)  # safetensors writes it private; it should read like any file the user writes
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path

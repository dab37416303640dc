"""Original-layout single-file checkpoints (SD 1.x, SD 2.x, SDXL base), loaded with no network at all.

A checkpoint downloaded from a model site is one ``.safetensors`` (or old ``.ckpt``) file in the
CompVis/Stability layout: ``model.diffusion_model.*`` (UNet), ``first_stage_model.*`` (VAE) and
the text encoder(s) under ``cond_stage_model.*`` or ``conditioner.embedders.*``. It carries no
configuration, so the layout is read from its keys and every size from its tensors (channels,
blocks, layers, widths, vocabulary); what tensors cannot tell (head counts, schedules, the
VAE's scaling factor, group-norm groups) follows the published configuration of that layout.
The CLIP tokenizer ships in ``pipelines/configs/clip-tokenizer`` (see its README). diffusers'
own converters then map the weights onto its classes.

``.ckpt`` files are read only through ``torch.load(weights_only=True)``: nothing in a file runs.
``save_original_layout`` writes a diffusers pipeline back in this layout (for tests and tools).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from studio.errors import StudioError

CONFIGS = Path(__file__).parent / "configs"
TOKENIZER = CONFIGS / "clip-tokenizer"
UNET = "model.diffusion_model."
VAE = "first_stage_model."


@dataclass(frozen=True)
class Layout:
    """What one original layout holds and what its published configuration says."""

    name: str
    text_prefixes: tuple[str, ...]  # where each text encoder's weights live
    openclip: tuple[bool, ...]  # per encoder: OpenCLIP key names (else Hugging Face CLIP names)
    sample_size: int  # latent side the model was trained at
    scaling_factor: float  # the VAE's
    prediction_type: str
    per_head_width: bool  # head counts follow channels // 64 (SD 2, SDXL) instead of 8 heads (SD 1)


LAYOUTS = {
    "SD 1.x": Layout("SD 1.x", ("cond_stage_model.transformer.",), (False,), 64, 0.18215, "epsilon", False),
    # SD 2.x: the 768 px v-prediction model (2.0-v, 2.1); the 512 px base models differ only in training
    "SD 2.x": Layout("SD 2.x", ("cond_stage_model.model.",), (True,), 96, 0.18215, "v_prediction", True),
    "SDXL base": Layout("SDXL base", ("conditioner.embedders.0.transformer.", "conditioner.embedders.1.model."),
                        (False, True), 128, 0.13025, "epsilon", True),
}


# -- reading -----------------------------------------------------------------------------------------

def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` or ``.ckpt`` file (weights-only), or one StudioError line."""
    path = Path(path)
    if path.suffix.lower() == ".ckpt":
        import pickle
        import warnings

        try:
            with warnings.catch_warnings():  # torch's note on the pickle protocol is not the user's business
                warnings.simplefilter("ignore", UserWarning)
                data = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            first = " ".join(str(exc).split())[:200]
            raise StudioError(f"checkpoint {path.name!r} holds more than tensors, and weights-only loading "
                              f"refused it (nothing in it was run): {first}") from None
        except Exception as exc:
            raise StudioError(f"cannot read checkpoint {path.name!r}: {type(exc).__name__}: "
                              f"{' '.join(str(exc).split())[:200]}") from None
        if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
            data = data["state_dict"]
    else:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            data = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise StudioError(f"checkpoint {path.name!r} is not a readable safetensors file (truncated or "
                              f"another format): {' '.join(str(exc).split())[:200]}") from None
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise StudioError(f"checkpoint {path.name!r} does not hold a flat dict of tensors")
    return data


def detect_layout(sd: dict[str, torch.Tensor], name: str = "checkpoint") -> Layout:
    """The original layout whose keys the checkpoint has."""
    has = lambda prefix: any(k.startswith(prefix) for k in sd)  # noqa: E731
    if has(UNET) and has(VAE):
        for layout in reversed(LAYOUTS.values()):  # SDXL first: it holds the most prefixes
            if all(has(p) for p in layout.text_prefixes):
                return layout
    raise StudioError(f"{name}: its keys match no known checkpoint layout (known: {', '.join(LAYOUTS)}: "
                      f"{UNET}*, {VAE}* and the text encoder keys of each)")


def _indices(sd: dict, prefix: str) -> list[int]:
    """The distinct integers that follow ``prefix`` in the keys, sorted."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m.group(1)) for k in sd for m in [pattern.match(k)] if m})


def _shape(sd: dict, key: str) -> tuple[int, ...]:
    if key not in sd:
        raise StudioError(f"checkpoint lacks {key}, which its layout needs")
    return tuple(sd[key].shape)


# -- configurations from shapes ------------------------------------------------------------------------

def unet_config(sd: dict, layout: Layout, pooled: int | None) -> dict[str, Any]:
    """The diffusers UNet2DConditionModel config of the ``model.diffusion_model.*`` weights."""
    blocks = [i for i in _indices(sd, UNET + "input_blocks.") if i > 0]
    levels: list[list[int]] = [[]]
    for i in blocks:  # downsamplers split the input blocks into levels
        if f"{UNET}input_blocks.{i}.0.op.weight" in sd:
            levels.append([])
        else:
            levels[-1].append(i)
    attention = [any(k.startswith(f"{UNET}input_blocks.{lv[0]}.1.") for k in sd) for lv in levels]
    channels = [_shape(sd, f"{UNET}input_blocks.{lv[0]}.0.out_layers.3.weight")[0] for lv in levels]
    depth = [len(_indices(sd, f"{UNET}input_blocks.{lv[0]}.1.transformer_blocks.")) or 1 for lv in levels]
    first = next((lv[0] for lv, a in zip(levels, attention) if a), None)
    if first is None:
        raise StudioError("checkpoint UNet has no cross-attention blocks; it is not a text-to-image UNet")
    attn = f"{UNET}input_blocks.{first}.1."
    config: dict[str, Any] = {
        "sample_size": layout.sample_size,
        "in_channels": _shape(sd, UNET + "input_blocks.0.0.weight")[1],
        "out_channels": _shape(sd, UNET + "out.2.weight")[0],
        "block_out_channels": tuple(channels),
        "layers_per_block": len(levels[0]),
        "down_block_types": tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention),
        "up_block_types": tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
        "cross_attention_dim": _shape(sd, attn + "transformer_blocks.0.attn2.to_k.weight")[1],
        "attention_head_dim": tuple(max(1, c // 64) for c in channels) if layout.per_head_width else 8,
        "use_linear_projection": len(_shape(sd, attn + "proj_in.weight")) == 2,
        "transformer_layers_per_block": depth[0] if len(set(depth)) == 1 else tuple(depth),
    }
    if f"{UNET}label_emb.0.0.weight" in sd:  # SDXL: pooled text plus six size numbers, 256 channels each
        adm = _shape(sd, f"{UNET}label_emb.0.0.weight")[1]
        if pooled is None or (adm - pooled) % 6:
            raise StudioError(f"checkpoint UNet's added embedding takes {adm} numbers, which does not fit a "
                              f"pooled text width of {pooled} plus six micro-conditioning numbers")
        config.update(addition_embed_type="text_time", addition_time_embed_dim=(adm - pooled) // 6,
                      projection_class_embeddings_input_dim=adm)
    return config


def vae_config(sd: dict, layout: Layout) -> dict[str, Any]:
    """The diffusers AutoencoderKL config of the ``first_stage_model.*`` weights."""
    levels = _indices(sd, VAE + "encoder.down.")
    channels = [_shape(sd, f"{VAE}encoder.down.{i}.block.0.conv2.weight")[0] for i in levels]
    return {
        "in_channels": _shape(sd, VAE + "encoder.conv_in.weight")[1],
        "out_channels": _shape(sd, VAE + "decoder.conv_out.weight")[0],
        "block_out_channels": tuple(channels),
        "down_block_types": ("DownEncoderBlock2D",) * len(channels),
        "up_block_types": ("UpDecoderBlock2D",) * len(channels),
        "layers_per_block": len(_indices(sd, VAE + "encoder.down.0.block.")),
        "latent_channels": _shape(sd, VAE + "encoder.conv_out.weight")[0] // 2,
        "sample_size": layout.sample_size * 8,
        "scaling_factor": layout.scaling_factor,
    }


def text_config(sd: dict, prefix: str, openclip: bool, drop_last: bool):
    """A CLIPTextConfig for one text encoder's weights (Hugging Face or OpenCLIP key names)."""
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
        projection, act = width, "quick_gelu"
    return CLIPTextConfig(vocab_size=vocab, hidden_size=width, intermediate_size=inner, num_hidden_layers=layers,
                          num_attention_heads=max(1, width // 64), max_position_embeddings=positions,
                          hidden_act=act, projection_dim=projection, bos_token_id=0, eos_token_id=2,
                          pad_token_id=1)  # the published CLIP configs' ids (pooling takes the highest id)


def tokenizer(max_length: int, openclip: bool):
    """The shipped CLIP BPE tokenizer; OpenCLIP encoders pad with "!" as their published tokenizers do."""
    from transformers import CLIPTokenizer

    extra = {"pad_token": "!"} if openclip else {}
    return CLIPTokenizer.from_pretrained(TOKENIZER, model_max_length=max_length, **extra)


# -- building the pipeline ---------------------------------------------------------------------------

def _load(module: torch.nn.Module, weights: dict[str, torch.Tensor], what: str) -> None:
    """Copy converted weights into a module; a missing, extra or misshapen tensor is one error line."""
    own = module.state_dict()
    missing = sorted(set(own) - set(weights))
    extra = sorted(set(weights) - set(own))
    bad = [k for k in own if k in weights and tuple(weights[k].shape) != tuple(own[k].shape)]
    if missing or extra or bad:
        detail = (f"missing {missing[0]}" if missing else f"unexpected {extra[0]}" if extra else
                  f"{bad[0]} has shape {tuple(weights[bad[0]].shape)}, expected {tuple(own[bad[0]].shape)}")
        raise StudioError(f"checkpoint's {what} weights do not fit the architecture read from them "
                          f"({len(missing)} missing, {len(extra)} unexpected, {len(bad)} misshapen; {detail})")
    module.load_state_dict(weights, strict=True)


def _text_encoder(sd: dict, layout: Layout, index: int):
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint, convert_open_clip_checkpoint
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    prefix, openclip = layout.text_prefixes[index], layout.openclip[index]
    with_projection = layout.name == "SDXL base" and index == 1
    config = text_config(sd, prefix, openclip, drop_last=layout.name == "SD 2.x")
    model = (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)
    if openclip:
        weights = convert_open_clip_checkpoint(model, sd, prefix=prefix)
        if not with_projection:
            weights.pop("text_projection.weight", None)
        keep = re.compile(r"text_model\.encoder\.layers\.(\d+)\.")  # SD 2 runs all but the last layer
        weights = {k: v for k, v in weights.items()
                   if not (m := keep.match(k)) or int(m.group(1)) < config.num_hidden_layers}
    else:
        weights = convert_ldm_clip_checkpoint(sd, remove_prefix=prefix)
        weights.pop("text_model.embeddings.position_ids", None)
    if not any(k.startswith("text_model.") for k in model.state_dict()):  # CLIPTextModel drops the prefix
        weights = {k.removeprefix("text_model."): v for k, v in weights.items()}
    _load(model, weights, f"text encoder {index + 1}")
    return model, tokenizer(config.max_position_embeddings, openclip)


def _scheduler(layout: Layout):
    from diffusers import DDIMScheduler, EulerDiscreteScheduler

    common = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "steps_offset": 1}
    if layout.name == "SDXL base":  # SDXL's published scheduler
        return EulerDiscreteScheduler(**common, timestep_spacing="leading")
    return DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=False, prediction_type=layout.prediction_type)


def load_single_file(path: str | Path, dtype: torch.dtype = torch.float32):
    """A diffusers pipeline (StableDiffusionPipeline or StableDiffusionXLPipeline) from one checkpoint file."""
    from diffusers import (
        AutoencoderKL,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    path = Path(path)
    sd = read_checkpoint(path)
    layout = detect_layout(sd, path.name)
    try:
        encoders = [_text_encoder(sd, layout, i) for i in range(len(layout.text_prefixes))]
        pooled = encoders[1][0].config.projection_dim if len(encoders) > 1 else None
        config = unet_config(sd, layout, pooled)
        widths = sum(te.config.hidden_size for te, _ in encoders)
        if widths != config["cross_attention_dim"]:
            raise StudioError(f"checkpoint {path.name!r}: its text encoders give {widths} channels but its UNet "
                              f"attends to {config['cross_attention_dim']}")
        unet = UNet2DConditionModel(**config)
        _load(unet, convert_ldm_unet_checkpoint(sd, config), "UNet")
        vconfig = vae_config(sd, layout)
        vae = AutoencoderKL(**vconfig)
        _load(vae, convert_ldm_vae_checkpoint(sd, vconfig), "VAE")
    except StudioError as exc:
        raise StudioError(f"{exc} ({layout.name} checkpoint {path.name!r})") from None
    except (KeyError, RuntimeError, ValueError, IndexError) as exc:
        raise StudioError(f"cannot read {layout.name} checkpoint {path.name!r}: {type(exc).__name__}: "
                          f"{' '.join(str(exc).split())[:200]}") from None
    parts = {"unet": unet, "vae": vae, "scheduler": _scheduler(layout),
             "text_encoder": encoders[0][0], "tokenizer": encoders[0][1]}
    if layout.name == "SDXL base":
        pipe = StableDiffusionXLPipeline(**parts, text_encoder_2=encoders[1][0], tokenizer_2=encoders[1][1])
    else:
        pipe = StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    return pipe if dtype == torch.float32 else pipe.to(dtype=dtype)


# -- writing ---------------------------------------------------------------------------------------------

_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
           "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}


def _unet_key(key: str, per_level: int, attention_levels: set[int]) -> str:
    """A diffusers UNet key -> its original name (without the ``model.diffusion_model.`` prefix)."""
    fixed = {"time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
             "add_embedding.linear_1.": "label_emb.0.0.", "add_embedding.linear_2.": "label_emb.0.2.",
             "conv_in.": "input_blocks.0.0.", "conv_norm_out.": "out.0.", "conv_out.": "out.2."}
    for new, old in fixed.items():
        if key.startswith(new):
            return old + key[len(new):]

    def resnet(rest: str) -> str:
        name, _, tail = rest.partition(".")
        return f"{_RESNET[name]}.{tail}"

    if m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions|downsamplers)\.(\d+)\.(.*)", key):
        level, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        block = 1 + level * (per_level + 1) + (per_level if kind == "downsamplers" else j)
        if kind == "resnets":
            return f"input_blocks.{block}.0.{resnet(rest)}"
        if kind == "attentions":
            return f"input_blocks.{block}.1.{rest}"
        return f"input_blocks.{block}.0.op.{rest.removeprefix('conv.')}"
    if m := re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", key):
        kind, j, rest = m[1], int(m[2]), m[3]
        if kind == "attentions":
            return f"middle_block.1.{rest}"
        return f"middle_block.{2 * j}.{resnet(rest)}"
    if m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions|upsamplers)\.(\d+)\.(.*)", key):
        level, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        block = level * (per_level + 1) + (per_level if kind == "upsamplers" else j)
        if kind == "resnets":
            return f"output_blocks.{block}.0.{resnet(rest)}"
        if kind == "attentions":
            return f"output_blocks.{block}.1.{rest}"
        return f"output_blocks.{block}.{2 if level in attention_levels else 1}.{rest}"
    raise StudioError(f"no original name for UNet weight {key}")


def _vae_key(key: str, levels: int) -> str:
    """A diffusers VAE key -> its original name (without the ``first_stage_model.`` prefix)."""
    key = key.replace("conv_norm_out.", "norm_out.")
    key = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", key)
    key = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", key)
    key = re.sub(r"decoder\.up_blocks\.(\d+)\.resnets\.",
                 lambda m: f"decoder.up.{levels - 1 - int(m[1])}.block.", key)
    key = re.sub(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
                 lambda m: f"decoder.up.{levels - 1 - int(m[1])}.upsample.", key)
    key = re.sub(r"mid_block\.resnets\.(\d+)\.", lambda m: f"mid.block_{int(m[1]) + 1}.", key)
    for new, old in (("mid_block.attentions.0.group_norm.", "mid.attn_1.norm."),
                     ("mid_block.attentions.0.to_q.", "mid.attn_1.q."), ("mid_block.attentions.0.to_k.", "mid.attn_1.k."),
                     ("mid_block.attentions.0.to_v.", "mid.attn_1.v."),
                     ("mid_block.attentions.0.to_out.0.", "mid.attn_1.proj_out.")):
        key = key.replace(new, old)
    return key.replace("conv_shortcut.", "nin_shortcut.")


def _clip_weights(model) -> dict[str, torch.Tensor]:
    """A Hugging Face CLIP text encoder's weights under the names the original files use (``text_model.*``)."""
    return {(k if k.startswith(("text_model.", "text_projection")) else "text_model." + k): v
            for k, v in model.state_dict().items() if not k.endswith("position_ids")}


def _openclip_weights(model, prefix: str, spare_layer: bool) -> dict[str, torch.Tensor]:
    """A Hugging Face CLIP text encoder's weights under OpenCLIP names (q, k, v fused into in_proj)."""
    sd = _clip_weights(model)
    out = {prefix + "token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
           prefix + "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
           prefix + "ln_final.weight": sd["text_model.final_layer_norm.weight"],
           prefix + "ln_final.bias": sd["text_model.final_layer_norm.bias"]}
    width = model.config.hidden_size
    out[prefix + "text_projection"] = (sd["text_projection.weight"].T.contiguous() if "text_projection.weight" in sd
                                       else torch.eye(width))
    layers = model.config.num_hidden_layers
    for i in range(layers + (1 if spare_layer else 0)):  # SD 2 files hold one layer more than they run
        src, dst = f"text_model.encoder.layers.{min(i, layers - 1)}.", f"{prefix}transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[dst + f"attn.in_proj_{kind}"] = torch.cat(
                [sd[src + f"self_attn.{p}_proj.{kind}"] for p in "qkv"])
            out[dst + f"attn.out_proj.{kind}"] = sd[src + f"self_attn.out_proj.{kind}"]
            out[dst + f"ln_1.{kind}"] = sd[src + f"layer_norm1.{kind}"]
            out[dst + f"ln_2.{kind}"] = sd[src + f"layer_norm2.{kind}"]
            out[dst + f"mlp.c_fc.{kind}"] = sd[src + f"mlp.fc1.{kind}"]
            out[dst + f"mlp.c_proj.{kind}"] = sd[src + f"mlp.fc2.{kind}"]
    return out


def original_layout(pipe, layout: str) -> dict[str, torch.Tensor]:
    """A diffusers SD or SDXL pipeline's weights under the original single-file names of ``layout``."""
    spec = LAYOUTS[layout]
    unet = pipe.unet.config
    attention_levels = {i for i, t in enumerate(unet.up_block_types) if t.startswith("CrossAttn")}
    out = {UNET + _unet_key(k, unet.layers_per_block, attention_levels): v for k, v in pipe.unet.state_dict().items()}
    levels = len(pipe.vae.config.block_out_channels)
    for k, v in pipe.vae.state_dict().items():
        name = VAE + _vae_key(k, levels)
        out[name] = v[..., None, None] if ".mid.attn_1." in name and name.endswith("weight") and v.ndim == 2 else v
    encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if len(spec.text_prefixes) > 1 else [])
    for encoder, prefix, openclip in zip(encoders, spec.text_prefixes, spec.openclip, strict=True):
        if openclip:
            out.update(_openclip_weights(encoder, prefix, spare_layer=layout == "SD 2.x"))
        else:
            out.update({prefix + k: v for k, v in _clip_weights(encoder).items()})
    return {k: v.detach().to("cpu").clone().contiguous() for k, v in out.items()}  # no shared storage


def save_original_layout(pipe, path: str | Path, layout: str | None = None) -> Path:
    """Write a diffusers SD/SDXL pipeline as one original-layout ``.safetensors`` checkpoint file."""
    from safetensors.torch import save_file

    if layout is None:
        layout = "SDXL base" if getattr(pipe, "text_encoder_2", None) is not None else (
            "SD 2.x" if pipe.text_encoder.config.hidden_act == "gelu" else "SD 1.x")
    path = Path(path)
    save_file(original_layout(pipe, layout), str(path))
    return path

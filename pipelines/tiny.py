"""Tiny random-weight models built from configs in code: the real code paths, no downloads.

``build_tiny_sd()`` is a genuine ``diffusers.StableDiffusionPipeline`` (64x64 pictures);
``build_tiny_gan()`` is a ``GanAdapter`` around a 32x32 StyleGAN-style generator. Every
component is built after ``torch.manual_seed``, so two builds hold the same weights.
"""

from __future__ import annotations

import json
import tempfile
from functools import lru_cache
from pathlib import Path

import torch

TINY_SD_MAX_LENGTH = 16  # tokens per prompt: short, so the text space stays small
_SPECIAL = ["<|startoftext|>", "<|endoftext|>"]
# A few byte-level BPE merges, enough that common words are not all single letters.
_MERGES = ["t h", "th e</w>", "a t</w>", "c at</w>", "d o", "do g</w>", "i n", "a n", "o n</w>", "e r</w>"]


def byte_unicode_chars() -> list[str]:
    """The 256 printable characters byte-level BPE uses for the bytes 0..255 (GPT-2's mapping)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:  # unprintable bytes move past 255, in order
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def write_bpe_tokenizer(folder: str | Path, merges: list[str], max_length: int) -> Path:
    """Write a CLIP byte-level BPE tokenizer (vocab.json, merges.txt, config) into ``folder``.

    The vocabulary is the 256 byte characters, each also as a word end (``</w>``), then one token
    per merge (``"a b"`` adds ``ab``) in merge order, then the two special tokens."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = byte_unicode_chars()
    tokens = chars + [c + "</w>" for c in chars] + [a + b for a, b in (m.split() for m in merges)] + _SPECIAL
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(m + "\n" for m in merges))
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": max_length,
        "pad_token": "<|endoftext|>",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def write_char_tokenizer(folder: str | Path, max_length: int = TINY_SD_MAX_LENGTH) -> Path:
    """Write a minimal CLIP byte-level tokenizer: single characters plus a few merges."""
    return write_bpe_tokenizer(folder, _MERGES, max_length)


@lru_cache(maxsize=1)
def _tiny_tokenizer_folder() -> Path:
    return write_char_tokenizer(Path(tempfile.mkdtemp(prefix="studio-tiny-tokenizer-")))


SD_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "steps_offset": 1}  # SD's


def _tiny_unet(seed: int, **changes):
    """A seeded two-level UNet on 8x8 latents (64 px pictures); ``changes`` make the SDXL and LCM variants."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(**{
        "sample_size": 8,  # latent side; x8 VAE -> 64 px pictures
        "block_out_channels": (32, 64),
        "layers_per_block": 1,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
        "cross_attention_dim": 32,
        "attention_head_dim": 8,
        "norm_num_groups": 8,
        **changes,
    })


def _tiny_vae(seed: int, **changes):
    """A seeded four-level VAE: the 8x downscale of real SD VAEs, with few channels."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(**{
        "block_out_channels": (8, 8, 16, 16),
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "latent_channels": 4,
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "sample_size": 64,
        **changes,
    })


def _quiet(pipe):
    """A built pipeline with its own progress bar off (the studio shows its own)."""
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_sd():
    """A real StableDiffusionPipeline with tiny seeded random weights: 64x64 pictures, 8x VAE, 16 tokens."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(_tiny_tokenizer_folder())
    unet = _tiny_unet(0)
    vae = _tiny_vae(1)
    torch.manual_seed(2)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=TINY_SD_MAX_LENGTH,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    scheduler = DDIMScheduler(**SD_BETAS, clip_sample=False, set_alpha_to_one=False)  # deterministic at eta 0
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return _quiet(pipe)


def build_tiny_gan(device: str | None = None, dtype: str | None = None):
    """A GanAdapter around a seeded 32x32 StyleGAN-style generator (z_dim = w_dim = 32)."""
    from pipelines.gan import GanAdapter
    from pipelines.gan_networks import ProjectNetwork
    from pipelines.stylegan import Generator, GeneratorConfig

    config = GeneratorConfig(
        z_dim=32, w_dim=32, mapping_layers=2, resolution=32, channel_base=512, channel_max=32
    )
    torch.manual_seed(0)
    return GanAdapter(ProjectNetwork(Generator(config)), spec="tiny-gan", device=device, dtype=dtype)


def _tiny_clip(tokenizer, hidden: int, projection: bool = False, layers: int = 2):
    """A seeded-by-the-caller CLIP text encoder sized for the tiny tokenizer."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=37,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length,
        projection_dim=hidden,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def build_tiny_sdxl():
    """A real StableDiffusionXLPipeline with tiny seeded random weights: 64x64, two text encoders, pooled text.

    The shape of diffusers' own SDXL test components: the UNet's cross-attention width is the two
    encoders' widths together (32 + 32), and its added embedding takes the six micro-conditioning
    numbers (8 channels each) plus the second encoder's pooled projection (32).
    """
    from diffusers import (
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
    )
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(_tiny_tokenizer_folder())
    unet = _tiny_unet(0, attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
                      addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
                      projection_class_embeddings_input_dim=6 * 8 + 32, cross_attention_dim=64)
    vae = _tiny_vae(1, scaling_factor=0.13025)  # SDXL's VAE factor
    torch.manual_seed(2)
    text_encoder = _tiny_clip(tokenizer, 32)
    torch.manual_seed(3)
    text_encoder_2 = _tiny_clip(tokenizer, 32, projection=True)
    scheduler = EulerDiscreteScheduler(**SD_BETAS, timestep_spacing="leading")  # SDXL's published scheduler
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=scheduler,
    )
    return _quiet(pipe)


def build_tiny_lcm():
    """A real LatentConsistencyModelPipeline: tiny-sd's parts with a guidance-embedding UNet and LCMScheduler."""
    from diffusers import LatentConsistencyModelPipeline, LCMScheduler

    base = build_tiny_sd()
    # the guidance scale w enters as an embedding: LCM distils guidance away
    unet = _tiny_unet(4, time_cond_proj_dim=32)
    scheduler = LCMScheduler(**SD_BETAS, set_alpha_to_one=True, timestep_spacing="leading",
                             original_inference_steps=50)
    pipe = LatentConsistencyModelPipeline(
        vae=base.vae,
        text_encoder=base.text_encoder,
        tokenizer=base.tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return _quiet(pipe)


def build_tiny_checkpoint_pipeline(layout: str = "SD 1.x", prediction_type: str = "epsilon"):
    """A tiny pipeline in the shape a single-file checkpoint of ``layout`` is read back into.

    A checkpoint file carries no configuration, so what its tensors cannot tell follows the
    published configs (see ``pipelines/single_file.py``): the real CLIP tokenizer (49408 tokens,
    77 positions), 32 group-norm groups, 8 attention heads (SD 1.x) or one per 64 channels.
    """
    from diffusers import (
        AutoencoderKL,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from pipelines.single_file import LAYOUTS, assemble, tokenizer

    spec = LAYOUTS[layout]
    xl = layout == "SDXL base"
    v_sd2 = layout == "SD 2.x" and prediction_type == "v_prediction"

    def encoder(openclip: bool, projection: bool = False):
        config = CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                num_attention_heads=1, max_position_embeddings=77, projection_dim=32,
                                hidden_act="gelu" if openclip else "quick_gelu",
                                bos_token_id=0, eos_token_id=2, pad_token_id=1)
        return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)

    torch.manual_seed(10)
    unet = UNet2DConditionModel(
        sample_size=8,  # 64 px pictures
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64 if xl else 32,
        attention_head_dim=(1, 1) if spec.per_head_width else 8,
        use_linear_projection=spec.per_head_width,
        upcast_attention=v_sd2,
        transformer_layers_per_block=(1, 2) if xl else 1,
        **({"addition_embed_type": "text_time", "addition_time_embed_dim": 8,
            "projection_class_embeddings_input_dim": 6 * 8 + 32} if xl else {}),
    )
    torch.manual_seed(11)
    vae = AutoencoderKL(block_out_channels=(32, 32, 64, 64), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=1,
                        sample_size=64, scaling_factor=spec.scaling_factor)
    torch.manual_seed(12)
    encoders = [(encoder(spec.openclip[0]), tokenizer(77, spec.openclip[0]))]
    if xl:
        torch.manual_seed(13)
        encoders.append((encoder(True, projection=True), tokenizer(77, True)))
    pipe = assemble(spec, unet, vae, encoders, prediction_type)
    return _quiet(pipe)


TINY_T5_MAX_LENGTH = 24  # the T5 slots' tokenizer length; the pipelines pad to their own max_sequence_length


@lru_cache(maxsize=1)
def _tiny_t5_tokenizer_folder() -> Path:
    return write_char_tokenizer(Path(tempfile.mkdtemp(prefix="studio-tiny-t5-tokenizer-")), TINY_T5_MAX_LENGTH)


def _tiny_t5(tokenizer, d_model: int):
    """A seeded-by-the-caller T5 encoder (gated GELU, as T5 v1.1) sized for the tiny tokenizer, no dropout."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=2,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        dropout_rate=0.0,
        feed_forward_proj="gated-gelu",
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    return T5EncoderModel(config).eval()


def _tiny_flow_vae(seed: int, scaling_factor: float, shift_factor: float):
    """``_tiny_vae`` with the SD3 / Flux latent space: 16 channels, a shift, no quant convs."""
    return _tiny_vae(seed, latent_channels=16, scaling_factor=scaling_factor, shift_factor=shift_factor,
                     use_quant_conv=False, use_post_quant_conv=False)


def build_tiny_sd3(t5: bool = True):
    """A real StableDiffusion3Pipeline with tiny seeded random weights: 64x64, two CLIPs and a T5.

    The CLIP features (32 + 32 wide) are padded to the T5 width (64), the transformer's
    joint attention width; pooled text is the two projections together (64). Without ``t5``
    the pipeline has no third encoder and SD3 puts zeros in the T5 part of the text.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(_tiny_tokenizer_folder())
    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        sample_size=8,  # latent side; x8 VAE -> 64 px pictures
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=64,
        caption_projection_dim=32,  # = heads x head width
        pooled_projection_dim=64,
        pos_embed_max_size=16,  # patches a side: pictures up to 256 px
    )
    vae = _tiny_flow_vae(1, scaling_factor=1.5305, shift_factor=0.0609)  # SD3's VAE numbers
    torch.manual_seed(2)
    text_encoder = _tiny_clip(tokenizer, 32, projection=True)
    torch.manual_seed(3)
    text_encoder_2 = _tiny_clip(tokenizer, 32, projection=True)
    tokenizer_3 = text_encoder_3 = None
    if t5:
        tokenizer_3 = CLIPTokenizer.from_pretrained(_tiny_t5_tokenizer_folder())
        torch.manual_seed(4)
        text_encoder_3 = _tiny_t5(tokenizer_3, 64)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),  # SD3's published scheduler
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer,
        text_encoder_3=text_encoder_3,
        tokenizer_3=tokenizer_3,
    )
    return _quiet(pipe)


def build_tiny_flux(guidance_embeds: bool = True):
    """A real FluxPipeline with tiny seeded random weights: 64x64, CLIP pooled text and T5 text.

    ``guidance_embeds`` gives the dev shape (guidance as an embedding, resolution-dependent
    shift); without it, the schnell shape (no guidance embedding, no shift). Latents are
    16 channels packed 2x2 into 64-wide tokens.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(_tiny_tokenizer_folder())
    tokenizer_2 = CLIPTokenizer.from_pretrained(_tiny_t5_tokenizer_folder())
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,  # 16 latent channels x 2x2 packing
        num_layers=1,
        num_single_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=guidance_embeds,
        axes_dims_rope=[4, 4, 8],  # sums to the head width
    )
    vae = _tiny_flow_vae(1, scaling_factor=0.3611, shift_factor=0.1159)  # Flux's VAE numbers
    torch.manual_seed(2)
    text_encoder = _tiny_clip(tokenizer, 32)
    torch.manual_seed(3)
    text_encoder_2 = _tiny_t5(tokenizer_2, 32)
    if guidance_embeds:  # dev's published scheduler
        scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                                    max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
    else:  # schnell's
        scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    pipe = FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )
    return _quiet(pipe)


def build_tiny_pixart():
    """A real PixArtSigmaPipeline with tiny seeded random weights: 64x64, T5 text, learned sigma.

    The tiny sample size is none of PixArt's aspect-ratio bins: call it with
    ``use_resolution_binning=False``.
    """
    from diffusers import DPMSolverMultistepScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(_tiny_t5_tokenizer_folder())
    torch.manual_seed(0)
    transformer = PixArtTransformer2DModel(
        sample_size=8,  # latent side; x8 VAE -> 64 px pictures
        num_layers=2,
        patch_size=2,
        attention_head_dim=8,
        num_attention_heads=3,
        caption_channels=32,  # the T5 width
        in_channels=4,
        cross_attention_dim=24,  # = heads x head width
        out_channels=8,  # noise and variance: learned sigma
        attention_bias=True,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
    )
    vae = _tiny_vae(1)
    torch.manual_seed(2)
    text_encoder = _tiny_t5(tokenizer, 32)
    # PixArt-Sigma's published scheduler: DPM-Solver++ (2M) on linear betas
    scheduler = DPMSolverMultistepScheduler(beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                                            prediction_type="epsilon", algorithm_type="dpmsolver++",
                                            solver_order=2, solver_type="midpoint", lower_order_final=True,
                                            timestep_spacing="linspace", steps_offset=0)
    pipe = PixArtSigmaPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer,
        scheduler=scheduler,
    )
    return _quiet(pipe)

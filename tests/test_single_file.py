"""Original-layout single-file checkpoints (SD 1.x, SD 2.x, SDXL base): offline, weights as the folder's, bad files.

The files are written by ``save_original_layout`` from tiny pipelines built in code, in the key
layout of the files people download; loading reads them with diffusers' own converters.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from pipelines.registry import load_adapter
from pipelines.single_file import (
    LAYOUTS,
    UNET,
    Variant,
    detect_layout,
    load_single_file,
    original_names,
    save_original_layout,
    text_config,
    unet_config,
    vae_config,
)
from pipelines.tiny import build_tiny_checkpoint_pipeline
from studio.errors import StudioError

ROOT = Path(__file__).resolve().parents[1]
PARTS = {"SD 1.x": ["unet", "vae", "text_encoder"], "SD 2.x": ["unet", "vae", "text_encoder"],
         "SDXL base": ["unet", "vae", "text_encoder", "text_encoder_2"]}
CAT = [49406, 320, 1125, 539, 320, 2368, 49407]  # "a photo of a cat" in CLIP's vocabulary


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """layout -> (its single file, the same pipeline's save_pretrained folder)."""
    folder = tmp_path_factory.mktemp("checkpoints")
    out = {}
    for layout in LAYOUTS:
        pipe = build_tiny_checkpoint_pipeline(layout)
        stem = layout.replace(" ", "").replace(".", "").lower()
        path = save_original_layout(pipe, folder / f"{stem}-original.safetensors", layout)
        pipe.save_pretrained(folder / stem)
        out[layout] = (path, folder / stem)
    return out


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[1:] or kwargs}")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def public(config) -> dict:
    """A component config as a folder stores it (JSON: tuples become lists), without private entries."""
    return json.loads(json.dumps({k: v for k, v in dict(config).items() if not k.startswith("_")}))


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_weights_from_the_file_equal_the_same_model_saved_as_a_folder(files, layout, no_network):
    from diffusers import DiffusionPipeline

    path, folder = files[layout]
    from_file = load_single_file(path, torch.float32)
    from_folder = DiffusionPipeline.from_pretrained(folder)
    assert type(from_file) is type(from_folder)
    for part in PARTS[layout]:
        a, b = getattr(from_file, part).state_dict(), getattr(from_folder, part).state_dict()
        assert a.keys() == b.keys(), part
        assert all(torch.equal(a[k], b[k]) for k in a), part
        assert not getattr(from_file, part).training, part
    for part in ("unet", "vae", "scheduler"):
        assert public(getattr(from_file, part).config) == public(getattr(from_folder, part).config), part
    for part in PARTS[layout][2:]:  # the text encoders' architecture too
        a, b = getattr(from_file, part).config.to_dict(), getattr(from_folder, part).config.to_dict()
        assert all(a[k] == b[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                          "intermediate_size", "hidden_act", "vocab_size", "projection_dim"))
    assert from_file.tokenizer("a photo of a cat").input_ids == CAT  # the real CLIP vocabulary, shipped
    tokenizers = [from_file.tokenizer] + ([from_file.tokenizer_2] if layout == "SDXL base" else [])
    pads = [t.pad_token for t in tokenizers]
    assert pads == {"SD 1.x": ["<|endoftext|>"], "SD 2.x": ["!"], "SDXL base": ["<|endoftext|>", "!"]}[layout]


def test_a_checkpoint_renders_as_its_folder_does(files, no_network):
    """The same bytes from every load of the file; the folder's numbers up to float rounding (its tensors
    sit at other memory alignments, which vectorised kernels round differently)."""
    import numpy as np

    path, folder = files["SDXL base"]
    a, again, b = load_adapter(str(path)), load_adapter(str(path)), load_adapter(str(folder))
    assert a.text_space == b.text_space and a.noise_space(64, 64) == b.noise_space(64, 64)
    (ga,), (gg,), (gb,) = (m.sample([1], ["a cat"], steps=1, height=64, width=64) for m in (a, again, b))
    assert torch.equal(ga.roles["text"].tensor, gg.roles["text"].tensor)
    assert torch.allclose(ga.roles["text"].tensor, gb.roles["text"].tensor, rtol=0, atol=1e-5)
    ia, ig, ib = (np.asarray(m.render([g])[0]).astype(int) for m, g in ((a, ga), (again, gg), (b, gb)))
    assert np.array_equal(ia, ig) and np.abs(ia - ib).max() <= 1


def test_dtype_and_v_prediction_come_through(files, tmp_path):
    path, _ = files["SD 1.x"]
    half = load_single_file(path, torch.float16)
    assert {p.dtype for part in PARTS["SD 1.x"] for p in getattr(half, part).parameters()} == {torch.float16}
    v = build_tiny_checkpoint_pipeline("SD 2.x", prediction_type="v_prediction")
    loaded = load_single_file(save_original_layout(v, tmp_path / "v.safetensors"), torch.float32)
    assert type(loaded.scheduler).__name__ == "DDIMScheduler"
    assert loaded.scheduler.config.prediction_type == "v_prediction" and loaded.unet.config.upcast_attention
    assert public(loaded.unet.config) == public(v.unet.config)
    bare = load_file(str(files["SD 2.x"][0]))  # no metadata: the documented default, epsilon
    save_file(bare, str(tmp_path / "bare.safetensors"))
    assert load_single_file(tmp_path / "bare.safetensors").scheduler.config.prediction_type == "epsilon"
    save_file({**bare, "v_pred": torch.zeros(0)}, str(tmp_path / "vpred.safetensors"))  # the community marker
    marked = load_single_file(tmp_path / "vpred.safetensors")
    assert marked.scheduler.config.prediction_type == "v_prediction" and marked.unet.config.sample_size == 96


CLIP_L = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
              hidden_act="quick_gelu", projection_dim=768)  # SD 1.5's encoder, SDXL's first
OPEN_CLIP_H = dict(hidden_size=1024, num_hidden_layers=23, num_attention_heads=16, intermediate_size=4096,
                   hidden_act="gelu", projection_dim=1024)  # SD 2.x's: 24 layers in the file, 23 run
OPEN_CLIP_BIGG = dict(hidden_size=1280, num_hidden_layers=32, num_attention_heads=20, intermediate_size=5120,
                      hidden_act="gelu", projection_dim=1280)  # SDXL's second
SD15_UNET = dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280),
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
SD21_UNET = {**SD15_UNET, "cross_attention_dim": 1024, "attention_head_dim": (5, 10, 20, 20),
             "use_linear_projection": True}
KNOWN_KEYS = {  # a few names and shapes as the published files hold them
    "SD 1.x": {"model.diffusion_model.output_blocks.2.1.conv.weight": (1280, 1280, 3, 3),  # an UpBlock's upsampler
               "model.diffusion_model.output_blocks.5.2.conv.weight": (1280, 1280, 3, 3),  # after an attention
               "model.diffusion_model.input_blocks.9.0.op.weight": (1280, 1280, 3, 3),
               "model.diffusion_model.output_blocks.11.0.skip_connection.weight": (320, 640, 1, 1),
               "first_stage_model.decoder.up.3.upsample.conv.weight": (512, 512, 3, 3),
               "first_stage_model.encoder.mid.attn_1.q.weight": (512, 512, 1, 1),
               "cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc2.weight": (768, 3072)},
    "SD 2.x": {"cond_stage_model.model.transformer.resblocks.23.attn.in_proj_weight": (3072, 1024),
               "cond_stage_model.model.text_projection": (1024, 1024),
               "cond_stage_model.model.positional_embedding": (77, 1024),
               "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight": (320, 1024)},
    "SDXL base": {"conditioner.embedders.1.model.transformer.resblocks.31.mlp.c_proj.bias": (1280,),
                  "conditioner.embedders.1.model.text_projection": (1280, 1280),
                  "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": (768,),
                  "model.diffusion_model.label_emb.0.0.weight": (1280, 2816),
                  "model.diffusion_model.input_blocks.8.1.transformer_blocks.9.attn2.to_k.weight": (1280, 2048)},
}
PUBLISHED = {  # name: layout, variant, UNet config, text encoder configs, diffusers' own name, UNet parameters
    "SD 1.5": ("SD 1.x", Variant("epsilon", 512), SD15_UNET, [CLIP_L], "v1", 859_520_964),
    "SD 2.1 base": ("SD 2.x", Variant("epsilon", 512), SD21_UNET, [OPEN_CLIP_H], "v2", 865_910_724),
    "SD 2.1 768-v": ("SD 2.x", Variant("v_prediction", 768), {**SD21_UNET, "sample_size": 96, "upcast_attention": True},
                     [OPEN_CLIP_H], "v2", 865_910_724),
    "SDXL base 1.0": ("SDXL base", Variant("epsilon", 1024),
                      dict(sample_size=128, cross_attention_dim=2048, attention_head_dim=(5, 10, 20),
                           layers_per_block=2, block_out_channels=(320, 640, 1280), use_linear_projection=True,
                           down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                           up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                           transformer_layers_per_block=(1, 2, 10), addition_embed_type="text_time",
                           addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816),
                      [CLIP_L, OPEN_CLIP_BIGG], "xl_base", 2_567_463_684),
}


@pytest.mark.parametrize("published", list(PUBLISHED))
def test_full_size_files_get_the_published_architecture(published):
    """A full-size pipeline of the published configs, on the meta device (no memory, no weights), written
    under original names: diffusers' own detector names the layout, and the keys and shapes give back
    the published UNet, VAE and text encoder configs."""
    from types import SimpleNamespace

    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    layout, variant, config, encoders, diffusers_name, params = PUBLISHED[published]
    spec = LAYOUTS[layout]
    with torch.device("meta"):
        unet = UNet2DConditionModel(**config)
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2,
                            sample_size=variant.image_size, scaling_factor=spec.scaling_factor)
        texts = [(CLIPTextModelWithProjection if i else CLIPTextModel)(CLIPTextConfig(**e, max_position_embeddings=77))
                 for i, e in enumerate(encoders)]
    pipe = SimpleNamespace(unet=unet, vae=vae, text_encoder=texts[0], text_encoder_2=texts[-1])
    sd = original_names(pipe, layout)
    assert infer_diffusers_model_type(sd) == diffusers_name
    assert {k: tuple(sd[k].shape) for k in KNOWN_KEYS[layout] if k in sd} == KNOWN_KEYS[layout]
    assert detect_layout(sd) is spec
    pooled = encoders[-1]["projection_dim"] if len(encoders) > 1 else None
    with torch.device("meta"):
        derived = UNet2DConditionModel(**unet_config(sd, spec, pooled, variant))
        derived_vae = AutoencoderKL(**vae_config(sd, spec, variant))
    assert sum(p.numel() for p in derived.parameters()) == params
    assert public(derived.config) == public(unet.config)
    assert public(derived_vae.config) == public(vae.config)
    for i, (prefix, openclip) in enumerate(zip(spec.text_prefixes, spec.openclip)):
        text = text_config(sd, prefix, openclip, drop_last=layout == "SD 2.x").to_dict()
        assert {k: text[k] for k in encoders[i]} == encoders[i]
        assert (text["vocab_size"], text["max_position_embeddings"]) == (49408, 77)


NARROW = {  # the published block structures (levels, layers, attention levels, depths) at tiny widths
    "SD 1.x": dict(block_out_channels=(32, 32, 64, 64), layers_per_block=2, attention_head_dim=8,
                   cross_attention_dim=32, down_block_types=SD15_UNET["down_block_types"],
                   up_block_types=SD15_UNET["up_block_types"]),
    "SDXL base": dict(block_out_channels=(32, 64, 64), layers_per_block=2, attention_head_dim=(1, 1, 1),
                      cross_attention_dim=64, use_linear_projection=True, transformer_layers_per_block=(1, 2, 3),
                      down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                      up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                      addition_embed_type="text_time", addition_time_embed_dim=8,
                      projection_class_embeddings_input_dim=6 * 8 + 32),
}


@pytest.mark.parametrize("layout", list(NARROW))
def test_the_published_block_structures_round_trip(layout, tmp_path):
    """Twelve input and output blocks (SD 1.5) or three levels with deeper transformers (SDXL), with weights."""
    from diffusers import UNet2DConditionModel

    pipe = build_tiny_checkpoint_pipeline(layout)
    torch.manual_seed(20)
    pipe.unet = UNet2DConditionModel(sample_size=8, **NARROW[layout])
    loaded = load_single_file(save_original_layout(pipe, tmp_path / "narrow.safetensors"), torch.float32)
    a, b = loaded.unet.state_dict(), pipe.unet.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert public(loaded.unet.config) == public(pipe.unet.config)


@pytest.mark.slow  # a fresh interpreter imports torch, diffusers and transformers: several seconds
def test_loading_a_file_needs_no_network_at_all(files, tmp_path):
    """A fresh process, under ``unshare -n`` (no network namespace to reach anything) where it can run."""
    path, _ = files["SD 2.x"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE"))}
    env["HF_HOME"] = str(tmp_path / "empty-hf-home")  # no cache to lean on either
    prefix = next((p for p in (["unshare", "-n"], ["unshare", "-rn"]) if shutil.which("unshare")
                   and subprocess.run([*p, "true"], capture_output=True).returncode == 0), [])
    if not prefix:
        env["HF_HUB_OFFLINE"] = "1"
    code = ("import sys, torch; from pipelines.single_file import load_single_file; "
            "p = load_single_file(sys.argv[1], torch.float32); "
            "print(type(p).__name__, p.tokenizer('a photo of a cat').input_ids)")
    out = subprocess.run([*prefix, sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == f"StableDiffusionPipeline {CAT}"


# ---- .ckpt files: weights only ----

def test_a_ckpt_loads_through_weights_only_torch_load(files, tmp_path):
    path, _ = files["SD 1.x"]
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": load_file(str(path)), "global_step": 1, "epoch": 0}, ckpt)
    a, b = load_single_file(ckpt, torch.float32), load_single_file(path, torch.float32)
    for part in PARTS["SD 1.x"]:
        sa, sb = getattr(a, part).state_dict(), getattr(b, part).state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


class Hostile:
    """Unpickling this runs ``touch marker``: what a weights-only loader must never do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_hostile_ckpt_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "ran"
    plain = tmp_path / "evil.ckpt"
    with open(plain, "wb") as f:  # a legacy (non-zip) pickle
        pickle.dump({"state_dict": {"x": Hostile(marker)}}, f, protocol=2)
    zipped = tmp_path / "zip.ckpt"
    torch.save({"state_dict": {"x": Hostile(marker)}}, zipped)  # torch's zip format
    for ckpt in (plain, zipped):
        message = one_line(lambda ckpt=ckpt: load_single_file(ckpt, torch.float32))
        assert message.startswith(f"checkpoint {ckpt.name!r}: the weights-only loader refused it (nothing "
                                  "in it was run; it is never loaded unsafely): ")
        assert "posix.system" in message  # what torch's unpickler refused to call
        assert "weights_only` set to `False`" not in message  # torch's advice, which the studio never takes
        assert not marker.exists()
    assert "the weights-only loader refused it" in one_line(lambda: load_adapter(str(plain)))
    assert not marker.exists()


# ---- bad files: one line each, nothing stored ----

def one_line(call) -> str:
    with pytest.raises(StudioError) as err:
        call()
    assert "\n" not in str(err.value)
    return str(err.value)


def test_bad_checkpoint_files_are_one_error_line_each(files, tmp_path, session):
    path, _ = files["SD 1.x"]
    text = tmp_path / "notes.safetensors"
    text.write_text("these are not weights")
    assert "is not a readable safetensors file" in one_line(lambda: load_single_file(text, torch.float32))
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert "is not a readable safetensors file (truncated" in one_line(lambda: load_adapter(str(cut)))
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"\x00not a pickle")
    assert one_line(lambda: load_single_file(junk, torch.float32)).startswith(
        "checkpoint 'junk.ckpt': the weights-only loader refused it")
    other = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down.alpha": torch.ones(1)}, str(other))
    assert "keys match no known checkpoint layout (known: SD 1.x, SD 2.x, SDXL base" in one_line(
        lambda: load_single_file(other, torch.float32))
    sd = load_file(str(path))
    del sd[UNET + "out.2.weight"]
    save_file(sd, str(tmp_path / "partial.safetensors"))
    assert "lacks model.diffusion_model.out.2.weight" in one_line(
        lambda: load_single_file(tmp_path / "partial.safetensors", torch.float32))
    before = len(session.library)
    assert "is not a readable safetensors file" in one_line(lambda: session.sample(str(cut), "a cat", seed=1))
    assert len(session.library) == before


def test_shapes_that_do_not_fit_are_refused(files, tmp_path):
    from transformers import CLIPTextConfig, CLIPTextModel

    pipe = build_tiny_checkpoint_pipeline("SD 1.x")
    pipe.text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=48, intermediate_size=37,
                                                     num_hidden_layers=1, num_attention_heads=1,
                                                     max_position_embeddings=77, hidden_act="quick_gelu"))
    path = save_original_layout(pipe, tmp_path / "odd.safetensors", "SD 1.x")
    assert "its text encoders give 48 channels but its UNet attends to 32" in one_line(
        lambda: load_single_file(path, torch.float32))
    sd = load_file(str(files["SD 1.x"][0]))
    conv = UNET + "input_blocks.0.0.weight"  # an inpainting UNet's first convolution takes 9 channels
    save_file({**sd, conv: torch.zeros(32, 9, 3, 3)}, str(tmp_path / "inpaint.safetensors"))
    assert "its UNet takes 9 and gives 4 channels but its VAE's latents have 4" in one_line(
        lambda: load_single_file(tmp_path / "inpaint.safetensors", torch.float32))
    proj = UNET + "input_blocks.3.1.proj_in.weight"
    save_file({**sd, proj: torch.zeros(64, 60, 1, 1)}, str(tmp_path / "misshapen.safetensors"))
    message = one_line(lambda: load_single_file(tmp_path / "misshapen.safetensors", torch.float32))
    assert "UNet weights do not fit the architecture read from them" in message and "misshapen" in message
    small = {k: v[:1000] if k.endswith("token_embedding.weight") else v for k, v in sd.items()}
    save_file(small, str(tmp_path / "vocab.safetensors"))
    assert "has 1000 tokens, fewer than the 49408 of the CLIP tokenizer" in one_line(
        lambda: load_single_file(tmp_path / "vocab.safetensors", torch.float32))


def test_the_cli_samples_a_file_under_unshare_n(files, tmp_path):
    """`unshare -n studio sample --model sd15-original.safetensors ...` in a folder of its own."""
    path, _ = files["SD 1.x"]
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(path, work / "sd15-original.safetensors")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE"))}
    env |= {"STUDIO_HOME": str(tmp_path / "home"), "HF_HOME": str(tmp_path / "empty-hf-home")}
    prefix = next((p for p in (["unshare", "-n"], ["unshare", "-rn"]) if shutil.which("unshare")
                   and subprocess.run([*p, "true"], capture_output=True).returncode == 0), [])
    if not prefix:
        env["HF_HUB_OFFLINE"] = "1"
    out = subprocess.run([*prefix, sys.executable, "-m", "studio", "sample", "--model", "sd15-original.safetensors",
                          "--prompt", "a cat", "--seed", "1", "--steps", "2", "--out", "o/", "--json"],
                         capture_output=True, text=True, env=env, cwd=work, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    (made,) = json.loads(out.stdout)
    assert len(list((work / "o").glob("*.png"))) == 1
    show = subprocess.run([sys.executable, "-m", "studio", "latents", "show", made["id"], "--json"],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert json.loads(show.stdout)["model"] == str((work / "sd15-original.safetensors").resolve())


def test_a_written_checkpoint_reads_like_any_file_the_user_writes(files):
    from studio.store import FILE_MODE

    path, _ = files["SD 1.x"]
    assert path.stat().st_mode & 0o777 == FILE_MODE


def test_the_studio_renders_a_file_as_plain_diffusers_does_on_the_pipeline_read_from_it(files):
    import numpy as np

    path, _ = files["SD 1.x"]
    adapter, pipe = load_adapter(str(path)), load_single_file(path)
    gens = adapter.sample([1, 2], ["a cat", "a dog"], steps=2, height=64, width=64)
    ours = adapter.render(gens)
    theirs = pipe(prompt_embeds=torch.stack([g.roles["text"].tensor for g in gens]),
                  latents=torch.stack([g.roles["noise"].tensor for g in gens]), num_inference_steps=2,
                  guidance_scale=gens[0].settings["guidance"], height=64, width=64, output_type="pil").images
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(ours, theirs, strict=True))
    assert gens[0].settings["scheduler"] == "PNDMScheduler"  # SD 1.5's published scheduler

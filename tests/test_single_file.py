"""Original-layout single-file checkpoints (SD 1.x, SD 2.x, SDXL base): offline, weights as the folder's, bad files.

The files are written by ``save_original_layout`` from tiny pipelines built in code, in the key
layout of the files people download; loading reads them with diffusers' own converters.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
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
    VAE,
    _unet_key,
    _vae_key,
    load_single_file,
    save_original_layout,
    unet_config,
    vae_config,
)
from pipelines.tiny import build_tiny_checkpoint_pipeline
from studio.errors import StudioError

ROOT = Path(__file__).resolve().parents[1]
PARTS = {"SD 1.x": ["unet", "vae", "text_encoder"], "SD 2.x": ["unet", "vae", "text_encoder"],
         "SDXL base": ["unet", "vae", "text_encoder", "text_encoder_2"]}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """layout -> (pipeline, its single file, its save_pretrained folder)."""
    folder = tmp_path_factory.mktemp("checkpoints")
    out = {}
    for layout in LAYOUTS:
        pipe = build_tiny_checkpoint_pipeline(layout)
        stem = layout.split()[0].lower() + layout.split()[1].replace(".", "")
        path = save_original_layout(pipe, folder / f"{stem}-original.safetensors", layout)
        pipe.save_pretrained(folder / stem)
        out[layout] = (pipe, path, folder / stem)
    return out


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_weights_from_the_file_equal_the_same_model_saved_as_a_folder(files, layout, monkeypatch):
    from diffusers import DiffusionPipeline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _, path, folder = files[layout]
    from_file = load_single_file(path)
    from_folder = DiffusionPipeline.from_pretrained(folder)
    assert type(from_file) is type(from_folder)
    for part in PARTS[layout]:
        a, b = getattr(from_file, part).state_dict(), getattr(from_folder, part).state_dict()
        assert a.keys() == b.keys(), part
        assert all(torch.equal(a[k], b[k]) for k in a), part
    for part in ("unet", "vae"):
        a, b = (json.loads(json.dumps({k: v for k, v in dict(getattr(p, part).config).items() if not k.startswith("_")}))
                for p in (from_file, from_folder))  # as a folder stores it: tuples become lists
        assert a == b, part
    ids = from_file.tokenizer("a photo of a cat").input_ids
    assert ids == [49406, 320, 1125, 539, 320, 2368, 49407]  # the real CLIP vocabulary, shipped


def test_a_checkpoint_renders_as_its_folder_does(files):
    import numpy as np

    _, path, folder = files["SDXL base"]
    a, b = load_adapter(str(path)), load_adapter(str(folder))
    assert a.spec == str(path.resolve()) and a.text_space == b.text_space
    (ga,), (gb,) = a.sample([1], ["a cat"], steps=2, height=64, width=64), b.sample([1], ["a cat"], steps=2,
                                                                                  height=64, width=64)
    # equal weights; a weight read from a mapped file may take another BLAS path, so allow one ulp
    assert torch.allclose(ga.roles["text"].tensor, gb.roles["text"].tensor, atol=1e-6, rtol=0)
    diff = np.abs(np.asarray(a.render([ga])[0], int) - np.asarray(b.render([gb])[0], int))
    assert diff.max() <= 1


@pytest.mark.parametrize("published", ["SD 1.x", "SD 2.x", "SDXL base"])
def test_full_size_files_get_the_published_architecture(published):
    """Keys and shapes of a full-size file (on the meta device: no memory, no weights) give back the
    published UNet and VAE configs: 859.5M, 865.9M and 2567.5M UNet parameters."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    sd15 = dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8, layers_per_block=2,
                block_out_channels=(320, 640, 1280, 1280), down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
    configs = {
        "SD 1.x": (sd15, None, 859_520_964),
        "SD 2.x": ({**sd15, "sample_size": 96, "cross_attention_dim": 1024, "attention_head_dim": (5, 10, 20, 20),
                    "use_linear_projection": True}, None, 865_910_724),
        "SDXL base": (dict(sample_size=128, cross_attention_dim=2048, attention_head_dim=(5, 10, 20), layers_per_block=2,
                           block_out_channels=(320, 640, 1280), use_linear_projection=True,
                           down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                           up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                           transformer_layers_per_block=(1, 2, 10), addition_embed_type="text_time",
                           addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816), 1280, 2_567_463_684),
    }
    config, pooled, params = configs[published]
    with torch.device("meta"):
        unet = UNet2DConditionModel(**config)
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2,
                            sample_size={"SD 1.x": 512, "SD 2.x": 768, "SDXL base": 1024}[published])
    cross = {i for i, t in enumerate(unet.config.up_block_types) if t.startswith("CrossAttn")}
    sd = {UNET + _unet_key(k, 2, cross): v for k, v in unet.state_dict().items()}
    sd |= {VAE + _vae_key(k, 4): v for k, v in vae.state_dict().items()}
    with torch.device("meta"):
        derived = UNet2DConditionModel(**unet_config(sd, LAYOUTS[published], pooled))
        derived_vae = AutoencoderKL(**vae_config(sd, LAYOUTS[published]))
    assert sum(p.numel() for p in derived.parameters()) == params
    public = lambda c: {k: v for k, v in dict(c).items() if not k.startswith("_") and k != "scaling_factor"}  # noqa: E731
    assert public(derived.config) == public(unet.config)
    assert public(derived_vae.config) == public(vae.config)


def test_the_cli_samples_a_file_with_no_network_at_all(files, tmp_path):
    _, path, _ = files["SD 1.x"]
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(path, work / "sd15-original.safetensors")
    env = {**os.environ, "STUDIO_HOME": str(tmp_path / "home")}
    env.pop("HF_HUB_OFFLINE", None)  # no help: the network itself is gone
    prefix = ["unshare", "-n"] if shutil.which("unshare") and subprocess.run(
        ["unshare", "-n", "true"], capture_output=True).returncode == 0 else []
    if not prefix:
        env["HF_HUB_OFFLINE"] = "1"
    cmd = [*prefix, sys.executable, "-m", "studio", "sample", "--model", "sd15-original.safetensors",
           "--prompt", "a cat", "--seed", "1", "--steps", "2", "--size", "64", "--out", "o/", "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=work, timeout=300)
    assert out.returncode == 0, out.stderr
    (made,) = json.loads(out.stdout)
    assert (work / "o").is_dir() and len(list((work / "o").glob("*.png"))) == 1
    show = subprocess.run([sys.executable, "-m", "studio", "latents", "show", made["id"], "--json"],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert json.loads(show.stdout)["model"] == str((work / "sd15-original.safetensors").resolve())


# ---- .ckpt files: weights only ----

def test_a_ckpt_loads_through_weights_only_torch_load(files, tmp_path):
    _, path, _ = files["SD 1.x"]
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": load_file(str(path)), "global_step": 1}, ckpt)
    a, b = load_single_file(ckpt), load_single_file(path)
    assert all(torch.equal(x, y) for x, y in zip(a.unet.state_dict().values(), b.unet.state_dict().values()))


class Hostile:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_hostile_ckpt_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "ran"
    ckpt = tmp_path / "evil.ckpt"
    with open(ckpt, "wb") as f:
        pickle.dump({"state_dict": {"x": Hostile(marker)}}, f)
    with pytest.raises(StudioError, match=r"^checkpoint 'evil.ckpt' holds more than tensors, and weights-only "
                                          r"loading refused it \(nothing in it was run\)"):
        load_adapter(str(ckpt))
    assert not marker.exists()
    torch.save({"state_dict": {"x": Hostile(marker)}}, tmp_path / "zip.ckpt")  # zip format, same refusal
    with pytest.raises(StudioError, match="weights-only loading refused it"):
        load_adapter(str(tmp_path / "zip.ckpt"))
    assert not marker.exists()


# ---- bad files: one line each, nothing stored ----

def one_line(call) -> str:
    with pytest.raises(StudioError) as err:
        call()
    assert "\n" not in str(err.value)
    return str(err.value)


def test_bad_checkpoint_files_are_one_error_line_each(files, tmp_path, session):
    _, path, _ = files["SD 1.x"]
    text = tmp_path / "notes.safetensors"
    text.write_text("these are not weights")
    assert "is not a readable safetensors file" in one_line(lambda: load_adapter(str(text)))
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert "is not a readable safetensors file (truncated" in one_line(lambda: load_adapter(str(cut)))
    other = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down.alpha": torch.ones(1)}, str(other))
    assert "keys match no known checkpoint layout (known: SD 1.x, SD 2.x, SDXL base" in one_line(
        lambda: load_adapter(str(other)))
    sd = load_file(str(path))
    del sd[UNET + "out.2.weight"]
    save_file(sd, str(tmp_path / "partial.safetensors"))
    assert "lacks model.diffusion_model.out.2.weight" in one_line(
        lambda: load_adapter(str(tmp_path / "partial.safetensors")))
    before = len(session.library)
    assert "is not a readable safetensors file" in one_line(lambda: session.sample(str(cut), "a cat", seed=1))
    assert len(session.library) == before


def test_text_encoder_and_unet_widths_that_do_not_fit_are_refused(tmp_path):
    from transformers import CLIPTextConfig, CLIPTextModel

    pipe = build_tiny_checkpoint_pipeline("SD 1.x")
    pipe.text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=48, intermediate_size=37,
                                                     num_hidden_layers=1, num_attention_heads=1,
                                                     max_position_embeddings=77, hidden_act="quick_gelu"))
    path = save_original_layout(pipe, tmp_path / "odd.safetensors", "SD 1.x")
    assert "its text encoders give 48 channels but its UNet attends to 32" in one_line(
        lambda: load_adapter(str(path)))

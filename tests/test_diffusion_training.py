"""scripts/train_diffusion.py's decoder stage on a tiny VAE and a small made-up emoji cache."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from test_emoji_data import make_cache  # noqa: E402
from train_diffusion import build_vae, main  # noqa: E402


def decoder_run(root: Path, *extra: str) -> Path:
    """Runs the stage; the VAE weights file it writes into the model folder at the end."""
    out = root / "model"
    args = ["--stage", "decoder", "--steps", "4", "--batch-size", "2", "--ckpt-every", "2",
            "--cache", str(root / "cache"), "--work", str(root / "work"), "--out", str(out), *extra]
    assert main(args) == 0
    return out / "vae" / "diffusion_pytorch_model.safetensors"


def test_decoder_stage_trains_the_decoder_alone_and_resumes_exactly(tmp_path):
    runs = {}
    for name in ("whole", "resumed"):
        root = tmp_path / name
        (root / "cache").mkdir(parents=True)
        make_cache(root / "cache", n=9)
        torch.manual_seed(0)
        build_vae((16, 16)).save_pretrained(root / "work" / "vae")
        (root / "model" / "unet").mkdir(parents=True)
        (root / "model" / "unet" / "config.json").write_text("{}")
        if name == "resumed":
            assert not decoder_run(root, "--stop-after", "2").exists()  # nothing written before the last step
            runs[name] = load_file(str(decoder_run(root, "--resume")))
        else:
            runs[name] = load_file(str(decoder_run(root)))
    before = load_file(str(tmp_path / "whole" / "work" / "vae" / "diffusion_pytorch_model.safetensors"))
    after = runs["whole"]
    assert all(t.dtype == torch.float16 for t in after.values())  # shipped as fp16
    encoder = [k for k in before if k.startswith(("encoder.", "quant_conv."))]
    decoder = [k for k in before if k.startswith(("decoder.", "post_quant_conv."))]
    assert encoder and decoder and len(encoder) + len(decoder) == len(before)
    assert all(torch.equal(after[k], before[k].half()) for k in encoder)  # the latent space stays
    assert sum(not torch.equal(after[k], before[k].half()) for k in decoder) > len(decoder) // 2
    assert all(torch.equal(runs["resumed"][k], after[k]) for k in after)  # stop + resume == one run
    import json

    assert "_name_or_path" not in json.loads((tmp_path / "whole" / "model" / "vae" / "config.json").read_text())


def test_decoder_stage_needs_the_vae_and_the_model(tmp_path):
    import pytest

    with pytest.raises(SystemExit, match="run --stage vae first"):
        main(["--stage", "decoder", "--work", str(tmp_path / "w"), "--out", str(tmp_path / "m")])
    build_vae((16, 16)).save_pretrained(tmp_path / "w" / "vae")
    with pytest.raises(SystemExit, match="run --stage unet first"):
        main(["--stage", "decoder", "--work", str(tmp_path / "w"), "--out", str(tmp_path / "m")])

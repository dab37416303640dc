"""Created StyleGAN2 generators: fresh weights, training behaviour, the folder format, and train_gan.py.

Everything runs on tiny random-weight networks and a small emoji cache made here, in seconds.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from pipelines.stylegan_nets.sg2 import StyleGAN2Generator, StyleGAN2Settings, load_stylegan, one_hot_classes
from pipelines.stylegan_nets.training import (
    ARCHITECTURE,
    exact_w_averages,
    is_sg2_folder,
    load_sg2_folder,
    read_sg2_extra,
    save_sg2_folder,
)
from studio.errors import StudioError

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "stylegan"
TINY = StyleGAN2Settings(z_dim=16, w_dim=16, c_dim=4, mapping_layers=2, resolution=32, channel_base=256,
                         channel_max=16)


@pytest.fixture
def G() -> StyleGAN2Generator:
    return StyleGAN2Generator.create(TINY, generator=torch.Generator().manual_seed(0))


def inputs(n: int = 4, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, TINY.z_dim, generator=gen), one_hot_classes(torch.arange(n) % TINY.c_dim, TINY.c_dim)


# ----------------------------------------------------------------------------------------------------
# create()


def test_create_makes_a_trainable_stylegan2_of_the_asked_shape(G):
    again = StyleGAN2Generator.create(TINY, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(G.state_dict().values(), again.state_dict().values()))
    assert (G.z_dim, G.w_dim, G.c_dim, G.img_resolution, G.img_channels) == (16, 16, 4, 32, 3)
    assert G.num_ws == TINY.num_ws == 8  # 7 convolutions (1 at 4 px, 2 per block above) + the last ToRGB
    assert G.config.architecture == "skip" and G.config.source == "created" and G.settings == TINY
    assert [getattr(G.synthesis, f"b{r}").conv1.weight.shape[0] for r in (4, 8, 16, 32)] == [16, 16, 16, 8]
    assert G.training and all(p.requires_grad for p in G.parameters())
    z, c = inputs()
    ws = G.mapping(z, c)
    assert ws.shape == (4, 8, 16) and G.synthesis(ws).shape == (4, 3, 32, 32)
    # StyleGAN2's initialisation: style biases 1, other biases and noise strengths 0, mapping weights / lr_mul
    b8 = G.synthesis.b8
    assert torch.equal(b8.conv0.affine.bias, torch.ones(16)) and torch.equal(b8.torgb.affine.bias, torch.ones(16))
    assert not b8.conv0.bias.any() and not G.mapping.fc0.bias.any() and not b8.conv1.noise_strength.detach()
    assert 80 < float(G.mapping.fc1.weight.detach().std()) < 120 and 0.8 < float(b8.conv0.weight.detach().std()) < 1.2
    other_noise = StyleGAN2Generator.create(StyleGAN2Settings(**{**TINY.__dict__, "noise_seed": 1}))
    assert not torch.equal(other_noise.synthesis.b8.conv0.noise_const, b8.conv0.noise_const)


def test_bad_settings_and_class_ids_are_one_line_errors():
    for bad in ({"resolution": 48}, {"synthesis_architecture": "resnet"}, {"z_dim": 0}, {"conv_clamp": -1},
                {"w_avg_beta": 2.0}, {"mapping_layers": 1.5}):
        with pytest.raises(StudioError) as err:
            StyleGAN2Settings(**{**TINY.__dict__, **bad})
        assert "\n" not in str(err.value)
    assert torch.equal(one_hot_classes([2, 0], 3), torch.tensor([[0.0, 0, 1], [1, 0, 0]]))
    for ids in ([3], [-1], [0.5]):
        with pytest.raises(StudioError, match="class ids"):
            one_hot_classes(ids, 3)


def test_gradients_reach_every_parameter_with_random_noise(G):
    z, c = inputs()
    G(z, c, noise_mode="random").square().mean().backward()  # noise strengths start at 0, yet learn
    names = [n for n, p in G.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert names == []
    assert all(torch.isfinite(p.grad).all() for p in G.parameters())
    with torch.no_grad():
        G.synthesis.b16.conv1.noise_strength.fill_(0.5)
        assert not torch.equal(G(z, c, noise_mode="random"), G(z, c, noise_mode="random"))  # fresh noise per call
        assert torch.equal(G(z, c, noise_mode="const"), G(z, c, noise_mode="const"))


def test_training_mode_tracks_w_avg_and_each_seen_class_centre(G):
    z = torch.randn(6, 16)
    c = one_hot_classes([0, 0, 1, 1, 1, 0], 4)
    with torch.no_grad():
        w = G.mapping.w_of(z, c)
        G.mapping(z, c)  # training mode: the centres move toward this batch, by 1 - w_avg_beta
    beta = TINY.w_avg_beta
    m = G.mapping
    assert torch.allclose(m.w_avg, w.mean(0) * (1 - beta), atol=1e-7)
    assert torch.allclose(m.w_avg_class[0], w[[0, 1, 5]].mean(0) * (1 - beta), atol=1e-7)
    assert torch.allclose(m.w_avg_class[1], w[[2, 3, 4]].mean(0) * (1 - beta), atol=1e-7)
    assert not m.w_avg_class[2:].any()  # classes not in the batch keep their centre
    before = m.state_dict()
    G.eval()
    G.mapping(z, c)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_loaded_networks_keep_their_behaviour_in_training_mode():
    g = load_stylegan(FIXTURES / "sg2ada_cond.pkl")
    assert not hasattr(g.mapping, "w_avg_class") and g.settings is None
    avg = g.mapping.w_avg.clone()
    z = torch.randn(2, g.z_dim)
    with torch.no_grad():
        g.train().mapping(z, torch.eye(g.c_dim)[:2])
    assert torch.equal(g.mapping.w_avg, avg)
    with pytest.raises(StudioError, match="StyleGAN2Generator.create"):
        save_sg2_folder(g, "/nonexistent/never-written")


def test_truncation_pulls_toward_the_centre_of_the_class_given(G):
    G.eval()
    m = G.mapping
    m.w_avg_class.copy_(torch.randn(4, 16))
    m.w_avg.copy_(m.w_avg_class.mean(0))
    z, c = inputs()
    with torch.no_grad():
        ws = m(z, c)
        centred = m(z, c, truncation_psi=0)
        half = m(z, c, truncation_psi=0.5, truncation_cutoff=3)
    assert torch.equal(centred, m.w_avg_class[[0, 1, 2, 3]][:, None].expand(-1, 8, -1))
    want = m.w_avg_class[[0, 1, 2, 3]][:, None].lerp(ws[:, :3], 0.5)
    assert torch.equal(half[:, :3], want) and torch.equal(half[:, 3:], ws[:, 3:])
    assert torch.equal(m.truncate(ws, 0.5), m.w_avg.lerp(ws, 0.5))  # no class given: the global centre


def test_exact_w_averages_are_per_class_means(G):
    G.eval()
    exact_w_averages(G, per_class=64, seed=3)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for k in range(4):
            z = torch.randn(64, 16, generator=gen)
            w = G.mapping.w_of(z, one_hot_classes(torch.full((64,), k), 4))
            assert torch.allclose(G.mapping.w_avg_class[k], w.mean(0), atol=1e-6)
    assert torch.allclose(G.mapping.w_avg, G.mapping.w_avg_class.mean(0))


# ----------------------------------------------------------------------------------------------------
# The folder format


def test_folder_round_trip_gives_bit_identical_outputs(G, tmp_path):
    z, c = inputs()
    with torch.no_grad():
        G(z, c)  # move the tracked centres off zero
    G.eval()
    extra = {"labels": {"categories": ["a", "b"]}, "default_settings": {"truncation": 0.7}}
    save_sg2_folder(G, tmp_path / "m", extra=extra)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    assert is_sg2_folder(tmp_path / "m") and read_sg2_extra(tmp_path / "m") == extra
    assert json.loads((tmp_path / "m" / "config.json").read_text())["architecture"] == ARCHITECTURE
    H = load_sg2_folder(tmp_path / "m")
    assert H.settings == TINY and not H.training and not any(p.requires_grad for p in H.parameters())
    with torch.no_grad():
        for psi in (1.0, 0.7):
            assert torch.equal(G(z, c, truncation_psi=psi), H(z, c, truncation_psi=psi))
    assert all(torch.equal(v, H.state_dict()[k]) for k, v in G.state_dict().items())
    with pytest.raises(StudioError, match="reuse the names"):
        save_sg2_folder(G, tmp_path / "m", extra={"z_dim": 3})


def _broken(folder: Path, case: str) -> None:
    config = json.loads((folder / "config.json").read_text())
    tensors = load_file(str(folder / "model.safetensors"))
    if case == "bad json":
        (folder / "config.json").write_text("{not json")
    elif case == "other marker":
        (folder / "config.json").write_text(json.dumps({**config, "architecture": "latent-studio-stylegan2"}))
    elif case == "missing setting":
        del config["w_dim"]
        (folder / "config.json").write_text(json.dumps(config))
    elif case == "bad setting":
        (folder / "config.json").write_text(json.dumps({**config, "resolution": "32"}))
    elif case == "no weights":
        (folder / "model.safetensors").unlink()
    elif case == "corrupt weights":
        (folder / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{\n\"x\": 1}")
    elif case == "missing tensor":
        del tensors["synthesis.b8.conv0.weight"]
        save_file(tensors, str(folder / "model.safetensors"))
    elif case == "wrong shape":
        tensors["mapping.w_avg_class"] = torch.zeros(5, 16)
        save_file(tensors, str(folder / "model.safetensors"))


@pytest.mark.parametrize("case", ["bad json", "other marker", "missing setting", "bad setting", "no weights",
                                  "corrupt weights", "missing tensor", "wrong shape"])
def test_malformed_folders_are_one_line_errors(G, tmp_path, case):
    save_sg2_folder(G, tmp_path)
    _broken(tmp_path, case)
    with pytest.raises(StudioError) as err:
        load_sg2_folder(tmp_path)
    assert "\n" not in str(err.value) and len(str(err.value)) < 400, str(err.value)
    assert is_sg2_folder(tmp_path) == (case not in ("bad json", "other marker"))
    assert not is_sg2_folder(tmp_path / "nothing here")


# ----------------------------------------------------------------------------------------------------
# scripts/train_gan.py on a tiny emoji cache


def make_emoji_cache(folder: Path) -> None:
    """Two 64 px pictures of each of the 18 classes, with labels as scripts/prepare_emoji.py writes them."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from emoji_data import CATEGORIES, STYLES

    rng = np.random.default_rng(0)
    n = 2 * len(CATEGORIES) * len(STYLES)
    images = rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)
    labels = [{"name": f"thing {i} {CATEGORIES[(i // 2) % 9].split()[0].lower()}", "short_names": [f"t{i}"],
               "caption": "", "category": CATEGORIES[(i // 2) % 9], "subcategory": "x", "style": STYLES[i % 2],
               "skin_tone": None, "split": "train", "unified": f"{i:05X}", "base": f"{i:05X}"} for i in range(n)]
    folder.mkdir(parents=True)
    np.savez_compressed(folder / "emoji64.npz", images=images)
    (folder / "labels.json").write_text(json.dumps({"images": labels}))


@pytest.fixture
def train_gan(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    import train_gan

    deterministic = torch.are_deterministic_algorithms_enabled()
    yield train_gan
    torch.use_deterministic_algorithms(deterministic)


def test_train_gan_trains_resumes_bit_exactly_and_exports_a_loadable_folder(tmp_path, train_gan):
    make_emoji_cache(tmp_path / "emoji")
    tiny = ["--cache", str(tmp_path / "emoji"), "--resolution", "8", "--z-dim", "8", "--w-dim", "8",
            "--channel-base", "64", "--channel-max", "8", "--batch", "4", "--eval-every", "0", "--log-every", "1"]

    def run(name: str, *more: str) -> Path:
        train_gan.main([*tiny, "--workdir", str(tmp_path / name), "--out", str(tmp_path / name / "model"), *more])
        return tmp_path / name

    one_go = run("a", "--steps", "2")
    run("b", "--steps", "2", "--stop-after", "1")
    resumed = run("b", "--steps", "2")
    for name in ("G", "G_ema", "D", "opt_G", "opt_D"):
        a, b = (d / "ckpt" / f"{name}.safetensors" for d in (one_go, resumed))
        assert a.read_bytes() == b.read_bytes(), name
    model = one_go / "model"
    assert (model / "model.safetensors").read_bytes() == (resumed / "model" / "model.safetensors").read_bytes()
    assert (model / "samples.png").is_file()
    G = load_sg2_folder(model)
    assert (G.c_dim, G.img_resolution, G.z_dim) == (18, 8, 8)
    extra = read_sg2_extra(model)
    assert extra["training"]["steps"] == 2 and extra["default_settings"] == {"truncation": 0.8}
    assert extra["labels"]["styles"] == ["noto", "twemoji"] and "flag" in extra["labels"]["category_words"]["Flags"]
    with torch.no_grad():
        img = G(torch.randn(2, 8), one_hot_classes([0, 17], 18), truncation_psi=0.8)
    assert img.shape == (2, 3, 8, 8) and torch.isfinite(img).all()
    # a packed checkpoint is half the size and a later run goes on from it
    train_gan.main([*tiny, "--workdir", str(one_go), "--pack", str(tmp_path / "packed")])
    packed = tmp_path / "packed" / "ckpt"
    from safetensors.torch import load_file

    assert {t.dtype for t in load_file(str(packed / "G.safetensors")).values()} == {torch.float16}
    steps = {k: v for k, v in load_file(str(packed / "opt_G.safetensors")).items() if k.endswith(".step")}
    assert steps and all(v.dtype == torch.float32 and float(v) == 2 for v in steps.values())  # counts kept exact
    run("packed", "--steps", "3")
    assert json.loads((tmp_path / "packed" / "ckpt" / "state.json").read_text())["step"] == 3

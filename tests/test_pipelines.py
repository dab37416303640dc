"""The adapter contract on the tiny models, plus exact values, errors and the GAN folder round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines.registry import list_models, load_adapter
from studio.errors import StudioError

SETTINGS = {"tiny-sd": {"steps": 2}, "tiny-gan": {}}


@pytest.fixture(scope="module", params=["tiny-sd", "tiny-gan"])
def adapter(request):
    return load_adapter(request.param)


@pytest.fixture(scope="module")
def sd():
    return load_adapter("tiny-sd")


def pixels(image) -> np.ndarray:
    return np.asarray(image)


def test_same_seed_same_bytes_different_seeds_differ(adapter):
    settings = SETTINGS[adapter.spec]
    a, b = adapter.sample([7], ["a cat"], **settings)[0], adapter.sample([7], ["a cat"], **settings)[0]
    other = adapter.sample([8], ["a cat"], **settings)[0]
    for role, latent in a.roles.items():
        assert latent.tensor.numpy().tobytes() == b.roles[role].tensor.numpy().tobytes()
    assert a.id == b.id != other.id


def test_sample_declares_spaces_and_metadata(adapter):
    gens = adapter.sample([1, 2], **SETTINGS[adapter.spec])
    assert len(gens) == 2
    for gen in gens:
        assert gen.spaces == {role: adapter.spaces()[role] for role in gen.roles}
        assert gen.model == adapter.spec and gen.meta["generator_device"] == "cpu"
        for latent in gen.roles.values():
            assert latent.tensor.dtype == torch.float32 and latent.tensor.device.type == "cpu"
            assert latent.lineage.op == "sample" and latent.meta["seed"] == gen.meta["seed"]


def test_render_size_and_determinism(adapter):
    gens = adapter.sample([1, 2, 3], ["a cat", "a dog", ""], **SETTINGS[adapter.spec])
    seen = []
    images = adapter.render(gens, progress=lambda done, total: seen.append((done, total)))
    size = adapter.default_settings().get("resolution") or adapter.default_settings()["width"]
    assert [im.size for im in images] == [(size, size)] * 3 and all(im.mode == "RGB" for im in images)
    assert seen and seen[-1][0] == seen[-1][1]
    again = adapter.render(gens)
    assert all((pixels(x) == pixels(y)).all() for x, y in zip(images, again, strict=True))
    assert not (pixels(images[0]) == pixels(images[1])).all()


def test_render_refuses_foreign_spaces(adapter):
    other = load_adapter("tiny-gan" if adapter.spec == "tiny-sd" else "tiny-sd")
    foreign = other.sample([1], **SETTINGS[other.spec])
    with pytest.raises(StudioError):
        adapter.render(foreign)


def test_tiny_sd_noise_is_a_plain_cpu_randn(sd):
    noise = sd.sample([1])[0].roles["noise"]
    expected = torch.randn(noise.space.shape, generator=torch.Generator().manual_seed(1))
    assert noise.space.shape == (4, 8, 8) and noise.meta["scale"] == "unscaled"
    assert torch.equal(noise.tensor, expected)
    assert noise.tensor.flatten()[:3].tolist() == pytest.approx([-1.5256, -0.7502, -0.6540], abs=1e-4)


def test_tiny_sd_text_latent_is_deterministic_across_builds(sd):
    fresh = load_adapter("tiny-sd")
    a, b = sd.sample([0], ["a cat"])[0].roles["text"], fresh.sample([0], ["a cat"])[0].roles["text"]
    assert a.space == b.space and a.space.shape == (16, 32)
    assert torch.equal(a.tensor, b.tensor)


def test_tiny_sd_render_matches_plain_diffusers_call(sd):
    gen = sd.sample([3], ["a cat"], steps=2)[0]
    studio = sd.render([gen])[0]
    plain = sd.pipe("a cat", num_inference_steps=2, generator=torch.Generator().manual_seed(3)).images[0]
    assert (pixels(studio) == pixels(plain)).all()


def test_tiny_sd_settings_sizes_and_schedulers(sd):
    gen = sd.sample([1], height=32, width=48, steps=2, scheduler="EulerAncestralDiscreteScheduler")[0]
    assert gen.roles["noise"].space.shape == (4, 4, 6)
    first, second = sd.render([gen])[0], sd.render([gen])[0]
    assert first.size == (48, 32) and (pixels(first) == pixels(second)).all()
    with pytest.raises(StudioError, match="height=30"):
        sd.sample([1], height=30)
    with pytest.raises(StudioError, match="steps"):
        sd.sample([1], steps=0)
    with pytest.raises(StudioError, match="DDIMScheduler"):
        sd.sample([1], scheduler="NoSuchScheduler")


def test_tiny_sd_vae_round_trip(sd):
    image = sd.render(sd.sample([1], steps=2))[0]
    latent = sd.encode([image])[0]
    assert latent.space == sd.vae_space(64, 64) and latent.meta["scale"] == "unscaled"
    assert sd.decode([latent])[0].size == (64, 64)
    assert sd.hspace_space().shape == (64, 4, 4)


def test_offline_hub_id_fails_fast_naming_the_model():
    with pytest.raises(StudioError, match="stabilityai/sd-turbo"):
        load_adapter("stabilityai/sd-turbo")
    with pytest.raises(StudioError, match="no/such/thing"):
        load_adapter("no/such/thing")
    with pytest.raises(StudioError, match="does not exist"):
        load_adapter("./no-such-folder")


@pytest.mark.parametrize("name", ["emoji-diffusion", "emoji-gan"])
def test_embedded_models_are_listed_and_say_when_missing(name, tmp_path, monkeypatch):
    import pipelines.registry

    assert name in dict(list_models())
    monkeypatch.setattr(pipelines.registry, "EMBEDDED", tmp_path)  # as in a checkout without the weights
    with pytest.raises(StudioError, match="not installed"):
        load_adapter(name)


def test_gan_w_space_and_truncation():
    gan = load_adapter("tiny-gan")
    w_gen = gan.sample([4], space="w")[0]
    assert w_gen.spaces == {"w": gan.spaces()["w"]}
    z_img = gan.render(gan.sample([4]))[0]
    w_img = gan.render([w_gen])[0]  # w stored untruncated: renders like its z
    assert np.abs(pixels(w_img).astype(int) - pixels(z_img)).max() <= 1
    squeezed = gan.render(gan.sample([4], truncation=0.0) + gan.sample([5], truncation=0.0))
    assert (pixels(squeezed[0]) == pixels(squeezed[1])).all()  # psi = 0: every seed renders the average


def test_gan_save_load_round_trip(tmp_path):
    from pipelines.gan import GanAdapter
    from pipelines.stylegan import save_generator

    gan = load_adapter("tiny-gan")
    save_generator(gan.generator, tmp_path / "gan")
    loaded = load_adapter(str(tmp_path / "gan"))
    assert isinstance(loaded, GanAdapter) and loaded.spaces() == gan.spaces()
    gens = gan.sample([1, 2])
    assert all(
        (pixels(a) == pixels(b)).all() for a, b in zip(gan.render(gens), loaded.render(gens), strict=True)
    )


def test_discriminator_auxiliary_classifier_head():
    from pipelines.stylegan import Discriminator, GeneratorConfig

    cfg = GeneratorConfig(z_dim=8, w_dim=8, mapping_layers=1, resolution=8, channel_base=64, channel_max=16,
                          num_classes=6)
    torch.manual_seed(0)
    d = Discriminator(cfg, aux=True)
    img, c = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 5])
    score, logits = d(img, c, with_aux=True)
    assert score.shape == (4, 1) and logits.shape == (4, 6)
    assert torch.equal(d(img, c), score)  # the realness score does not depend on asking for the logits
    assert list(dict(d.named_parameters()))[-2:] == ["aux.weight", "aux.bias"]  # last: old optimizer states fit
    with pytest.raises(StudioError, match="auxiliary classifier needs a conditional"):
        Discriminator(GeneratorConfig(resolution=8, channel_base=64, channel_max=16), aux=True)

"""SDXL and LCM on the UNet adapter, the typed capability contract, scheduler hygiene and resolved specs.

Tiny random-weight pipelines built from configs in code (``pipelines/tiny.py``); nothing downloads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import gaussian_denoiser
from pipelines.base import GanW, HSpace, Invertible, SDEditable, TextConditioned, VaeCoder
from pipelines.registry import load_adapter
from pipelines.tiny import build_tiny_lcm, build_tiny_sd, build_tiny_sdxl
from studio.errors import SpaceMismatch, StudioError
from studio.objects import Generation, Latent, Vector
from studio.session import Session
from studio.space import Space

ROOT = Path(__file__).resolve().parents[1]
STEPS = {"tiny-sd": 3, "tiny-sdxl": 3, "tiny-lcm": 2, "emoji-diffusion": 3}


def emoji_diffusion():
    from diffusers import DiffusionPipeline

    from pipelines.registry import EMBEDDED

    return DiffusionPipeline.from_pretrained(EMBEDDED / "emoji-diffusion", dtype=torch.float32, safety_checker=None,
                                             requires_safety_checker=False)


BUILDERS = {"tiny-sd": build_tiny_sd, "tiny-sdxl": build_tiny_sdxl, "tiny-lcm": build_tiny_lcm,
            "emoji-diffusion": emoji_diffusion}


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def plain_call(spec: str, gens: list[Generation], **extra) -> list[Image.Image]:
    """The same render as a user would write it against diffusers itself, from the stored tensors."""
    pipe = BUILDERS[spec]()
    pipe.set_progress_bar_config(disable=True)
    adapter_space = load_adapter(spec).text_space
    text = adapter_space.unpack(torch.stack([g.roles["text"].tensor for g in gens]))
    s = gens[0].settings
    kwargs = {"prompt_embeds": text.get("embeds", text.get(""))}
    if "pooled" in text:
        kwargs["pooled_prompt_embeds"] = text["pooled"]
    return pipe(latents=torch.stack([g.roles["noise"].tensor for g in gens]), num_inference_steps=s["steps"],
                guidance_scale=s["guidance"], height=s["height"], width=s["width"], output_type="pil",
                generator=[torch.Generator().manual_seed(g.meta["seed"]) for g in gens], **kwargs, **extra).images


# ---- the contract, on every UNet family ----

@pytest.mark.parametrize("spec", ["tiny-sd", "tiny-sdxl", "tiny-lcm", "emoji-diffusion"])
def test_render_equals_the_plain_diffusers_call_and_seeds_are_stable(studio, spec):
    adapter = studio.adapter(spec)
    gens = adapter.sample([3, 4], ["a cat", "a dog"], steps=STEPS[spec])
    again = adapter.sample([3, 4], ["a cat", "a dog"], steps=STEPS[spec])
    assert [g.id for g in gens] == [g.id for g in again]
    assert gens[0].id != adapter.sample([5, 4], ["a cat", "a dog"], steps=STEPS[spec])[0].id
    ours = adapter.render(gens)
    theirs = plain_call(spec, gens)
    assert all(np.array_equal(pixels(a), pixels(b)) for a, b in zip(ours, theirs, strict=True))
    # a generation survives the library: same id, same tensors, same picture
    stored = studio.library.put(gens[0], None)
    back = studio.library.get(stored)
    assert back.id == gens[0].id and all(torch.equal(back.roles[r].tensor, gens[0].roles[r].tensor) for r in back.roles)
    assert np.array_equal(pixels(adapter.render([back])[0]), pixels(adapter.render([gens[0]])[0]))


@pytest.mark.parametrize("spec", ["tiny-sd", "tiny-sdxl", "tiny-lcm", "tiny-gan", "emoji-diffusion", "emoji-gan"])
def test_every_declared_capability_works(studio, spec):
    adapter = studio.adapter(spec)
    (g,) = adapter.sample([1], ["a cat"], **({"steps": STEPS[spec]} if spec in STEPS else {}))
    (again,) = adapter.sample([1], ["a cat"], **({"steps": STEPS[spec]} if spec in STEPS else {}))
    assert again.id == g.id and all(torch.equal(again.roles[r].tensor, g.roles[r].tensor) for r in g.roles)
    assert studio.library.get(studio.library.put(g, None)).id == g.id
    declared = {c.__name__ for c in (TextConditioned, VaeCoder, Invertible, SDEditable, HSpace, GanW)
                if isinstance(adapter, c)}
    gan = spec.endswith("-gan")
    expected = {"GanW"} if gan else {"TextConditioned", "VaeCoder", "Invertible", "SDEditable", "HSpace"}
    assert declared == expected
    picture = adapter.render([g])[0]
    assert picture.size == (32, 32) if gan else (64, 64)
    if isinstance(adapter, TextConditioned):
        assert adapter.encode_text(["a", "b"]).shape == (2, *adapter.text_space.shape)
        assert g.roles["text"].space == adapter.text_space
    if isinstance(adapter, VaeCoder):
        (lat,) = adapter.encode([picture])
        assert lat.space == adapter.vae_space(64, 64) and adapter.decode([lat])[0].size == (64, 64)
    if isinstance(adapter, SDEditable):
        assert adapter.sdedit_init(g).space == adapter.vae_space(64, 64)
    if isinstance(adapter, HSpace):
        (h,) = adapter.hspace_of([g], 2)
        assert h.space == adapter.hspace_space(64, 64)
    if isinstance(adapter, Invertible):
        inv = adapter.invert(picture, "a cat", steps=3)
        assert inv.settings["scheduler"] in adapter.schedulers and adapter.render([inv])[0].size == (64, 64)
    if isinstance(adapter, GanW):
        assert adapter.sample_w(4).shape == (4, adapter.spaces()["w"].shape[0])


def test_a_model_without_a_capability_is_one_error_naming_it(studio, tmp_path):
    with pytest.raises(StudioError, match="^model tiny-gan cannot make prompt-pair vectors: it has no text encoder$"):
        studio.vectors.from_prompts({"from": "day", "to": "night", "templates": ["{}"]}, "tiny-gan")
    picture = tmp_path / "p.png"
    Image.new("RGB", (32, 32), "red").save(picture)
    with pytest.raises(StudioError, match="^model tiny-gan cannot encode pictures: it has no VAE$"):
        studio.encode_image(picture, "tiny-gan")


def test_the_edit_modules_use_the_adapters_public_surface():
    private = ("._scheduler(", "._negative_embeds(", "._settings(", "._class_ids(", "._pick(", "hasattr(adapter")
    for path in [*(ROOT / "pipelines").glob("*_edit.py"), ROOT / "studio" / "session.py", ROOT / "studio" / "vectorlab.py"]:
        text = path.read_text()
        assert [p for p in private if p in text] == [], path.name


# ---- SDXL ----

def test_sdxl_text_is_sequence_and_pooled_embeddings_packed_in_one_space(studio):
    adapter = studio.adapter("tiny-sdxl")
    space = adapter.text_space
    assert space.parts == (("embeds", (16, 64)), ("pooled", (32,))) and space.shape == (16 * 64 + 32,)
    assert str(space).endswith("(embeds 16x64 + pooled 32)")
    assert Space.from_json(json.loads(json.dumps(space.to_json()))) == space
    embeds, _, pooled, _ = adapter.pipe.encode_prompt(prompt=["a cat"], device="cpu", do_classifier_free_guidance=False)
    parts = space.unpack(adapter.encode_text(["a cat"]))
    assert torch.equal(parts["embeds"], embeds) and torch.equal(parts["pooled"], pooled)
    # the fingerprint covers both encoders: another second encoder is another text space
    other = build_tiny_sdxl()
    with torch.no_grad():
        other.text_encoder_2.text_projection.weight.mul_(2)
    from pipelines.diffusion import DiffusionAdapter

    assert DiffusionAdapter(other, "other").text_space.family != space.family


def test_sdxl_micro_conditioning_is_a_recorded_render_setting(studio):
    adapter = studio.adapter("tiny-sdxl")
    (g,) = adapter.sample([2], ["a cat"], steps=2)
    assert g.settings["original_size"] == [64, 64] and g.settings["crops_coords_top_left"] == [0, 0]
    assert g.settings["target_size"] == [64, 64]
    (moved,) = adapter.sample([2], ["a cat"], steps=2, original_size=[512, 512], crops_coords_top_left=[0, 32])
    assert moved.settings["original_size"] == [512, 512] and moved.id != g.id
    ours = adapter.render([moved])[0]
    theirs = plain_call("tiny-sdxl", [moved], original_size=(512, 512), crops_coords_top_left=(0, 32),
                        target_size=(64, 64))[0]
    assert np.array_equal(pixels(ours), pixels(theirs))
    assert not np.array_equal(pixels(ours), pixels(adapter.render([g])[0]))
    with pytest.raises(StudioError, match=r"setting original_size=\[64\] must be two whole numbers"):
        adapter.sample([1], ["x"], original_size=[64])
    with pytest.raises(StudioError, match="unknown setting.*original_size"):
        studio.adapter("tiny-sd").sample([1], ["x"], original_size=[64, 64])


def test_sdxl_empty_negative_prompt_is_zeros_as_force_zeros_says(studio):
    adapter = studio.adapter("tiny-sdxl")
    assert adapter.pipe.config.force_zeros_for_empty_prompt
    assert not adapter.negative_text("", 1).any()
    assert adapter.negative_text("blurry", 1).abs().sum() > 0
    (g,) = adapter.sample([4], ["a cat"], steps=2, negative_prompt="blurry")
    ours = adapter.render([g])[0]
    pipe = build_tiny_sdxl()
    neg, _, neg_pooled, _ = pipe.encode_prompt(prompt=["blurry"], device="cpu", do_classifier_free_guidance=False)
    theirs = plain_call("tiny-sdxl", [g], negative_prompt_embeds=neg, negative_pooled_prompt_embeds=neg_pooled)[0]
    assert np.array_equal(pixels(ours), pixels(theirs))


def test_sdxl_interpolation_stores_lineage_and_renders(studio):
    a, b = studio.sample("tiny-sdxl", "a cat", seed=11, count=2, name="xl", steps=2)
    for op in ("slerp", "lerp"):
        mid = studio.evaluate(f"{op}(@xl-1, @xl-2, 0.5)", name=f"xl-{op}")
        assert mid.obj.lineage.op == op and set(mid.obj.lineage.parents) == {a.id, b.id}
        text = mid.obj.roles["text"].tensor
        expected = 0.5 * a.obj.roles["text"].tensor + 0.5 * b.obj.roles["text"].tensor  # pooled moves with embeds
        assert torch.allclose(text, expected, atol=1e-6)
        assert studio.render([mid.obj])[0].size == (64, 64)


def test_sdxl_prompt_pair_vector_applies_to_sdxl_and_is_refused_on_tiny_sd(studio):
    v = studio.vectors.from_prompts({"from": "day", "to": "night", "templates": ["a {} city", "{}"]}, "tiny-sdxl",
                                    name="xl-night")
    assert v.obj.space == studio.adapter("tiny-sdxl").text_space
    studio.sample("tiny-sdxl", "a day city", seed=21, name="xl-city", steps=2)
    edits = studio.vectors.apply("xl-city", "xl-night", [0.0, 1.0], name="xl-city-night")
    assert edits[0].id == studio.library.resolve("xl-city") and edits[1].obj.lineage.op != "sample"
    assert studio.render([edits[1].obj])[0].size == (64, 64)
    studio.sample("tiny-sd", "a day city", seed=21, name="sd-city", steps=2)
    before = len(studio.library)
    with pytest.raises(SpaceMismatch) as err:
        studio.vectors.apply("sd-city", "xl-night", [1.0])
    message = str(err.value)
    assert str(studio.adapter("tiny-sdxl").text_space) in message
    assert str(studio.adapter("tiny-sd").text_space) in message
    assert len(studio.library) == before


def test_sdxl_hspace_and_sdedit_edits_render(studio):
    studio.sample("tiny-sdxl", "a cat", seed=31, count=2, name="xh", steps=6)
    studio.sample("tiny-sdxl", "a dog", seed=33, count=2, name="xd", steps=6)
    hv = studio.vectors.from_sets(["xh-1", "xh-2"], ["xd-1", "xd-2"], role="hspace", name="xl-h")
    assert hv.obj.space.kind == "hspace"
    (shifted,) = studio.vectors.apply("xh-1", "xl-h", [2.0], mode="hspace")
    base, moved = studio.render([studio.get("xh-1"), shifted.obj])
    assert not np.array_equal(pixels(base), pixels(moved))
    studio.vectors.from_prompts({"from": "cat", "to": "dog", "templates": ["a {}"]}, "tiny-sdxl", name="xl-dog")
    (edit,) = studio.vectors.apply("xh-1", "xl-dog", [1.0], mode="sdedit", sdedit_strength=0.5)
    assert set(edit.obj.roles) == {"noise", "text", "init"}
    a, b = studio.render([edit.obj, edit.obj])
    assert np.array_equal(pixels(a), pixels(b))


def test_sdxl_comfyui_latent_round_trip(studio, tmp_path):
    picture = tmp_path / "p.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(picture)
    enc = studio.encode_image(picture, "tiny-sdxl", name="xl-enc")
    studio.export("xl-enc", tmp_path / "x.latent")
    (back,) = studio.import_file(tmp_path / "x.latent", model="tiny-sdxl")
    assert back.id == enc.id and torch.equal(back.obj.tensor, enc.obj.tensor)
    with pytest.raises(SpaceMismatch):
        studio.adapter("tiny-sd").decode([back.obj])


# ---- inversion on SDXL and LCM, against a denoiser whose behaviour is known ----

@pytest.mark.parametrize("spec", ["tiny-sdxl", "tiny-lcm"])
def test_inversion_re_renders_the_picture(spec, monkeypatch):
    """With the optimal denoiser for Gaussian latents in place of the random UNet, the refined DDIM
    inversion and the adapter's own re-render land on the VAE reconstruction of the picture."""
    from studio.scoring import psnr

    adapter = load_adapter(spec)
    seen: list = []
    monkeypatch.setattr(adapter.pipe.unet, "forward", gaussian_denoiser(adapter.pipe.scheduler.alphas_cumprod, seen))
    yy, xx = np.mgrid[0:64, 0:64]
    picture = Image.fromarray(np.stack([xx * 4, yy * 4, (xx + yy) * 2], -1).astype(np.uint8))
    (encoded,) = adapter.encode([picture])
    target = np.asarray(adapter.decode([encoded])[0])
    inv = adapter.invert(picture, "", steps=10, refine=3)
    assert inv.settings["scheduler"] == "DDIMScheduler" and inv.settings["guidance"] == 1.0
    assert psnr(target, np.asarray(adapter.render([inv])[0])) > 40
    extra = {"tiny-sdxl": "added_cond_kwargs", "tiny-lcm": "timestep_cond"}[spec]
    assert all(extra in keys for keys in seen)  # the family's own conditioning reached the UNet


# ---- LCM and scheduler hygiene ----

def test_lcm_refuses_a_negative_prompt_and_offers_only_fitting_schedulers(studio):
    lcm = studio.adapter("tiny-lcm")
    assert lcm.default_settings()["steps"] == 4 and lcm.schedulers == ["LCMScheduler", "DDIMScheduler"]
    before = len(studio.library)
    with pytest.raises(StudioError, match="^model tiny-lcm is an LCM model: it ignores a negative prompt"):
        studio.sample("tiny-lcm", "a cat", seed=1, negative_prompt="a dog")
    with pytest.raises(StudioError, match="unknown scheduler 'EulerDiscreteScheduler' for model tiny-lcm"):
        studio.sample("tiny-lcm", "a cat", seed=1, scheduler="EulerDiscreteScheduler")
    assert len(studio.library) == before
    assert "LCMScheduler" not in studio.adapter("tiny-sd").schedulers
    with pytest.raises(StudioError, match="guidance 1.0 ignores the negative prompt"):
        studio.adapter("tiny-sd").sample([1], ["x"], guidance=1.0, negative_prompt="y")


def test_rendering_with_another_scheduler_leaves_the_models_default_alone():
    """Before the fix, render() left the last scheduler in the pipeline and default_settings() read it back."""
    adapter = load_adapter("tiny-sd")
    (plain,) = adapter.sample([1], ["a cat"], steps=2)
    (ancestral,) = adapter.sample([1], ["a cat"], steps=2, scheduler="EulerAncestralDiscreteScheduler")
    adapter.render([ancestral])
    assert type(adapter.pipe.scheduler).__name__ == "DDIMScheduler"
    assert adapter.default_settings()["scheduler"] == "DDIMScheduler"
    (after,) = adapter.sample([1], ["a cat"], steps=2)
    assert after.id == plain.id


# ---- specs ----

def test_a_folder_spec_is_stored_resolved_and_renders_from_another_folder(tmp_path, monkeypatch):
    models = tmp_path / "models"
    build_tiny_sdxl().save_pretrained(models / "xl")
    work, other = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir(), other.mkdir()
    monkeypatch.chdir(work)
    s = Session(tmp_path / "home")
    (made,) = s.sample("../models/xl", "a cat", seed=1, name="cat", steps=2)
    assert made.obj.model == str((models / "xl").resolve())
    first = s.render([made.obj])[0]
    s.library.close()
    monkeypatch.chdir(other)
    s2 = Session(tmp_path / "home")
    assert np.array_equal(pixels(s2.render([s2.get("cat")])[0]), pixels(first))
    s2.library.close()


def test_specs_that_name_something_that_is_not_a_model_say_so(tmp_path):
    (tmp_path / "net.bin").write_bytes(b"not a model")
    with pytest.raises(StudioError, match=r"^'.*net\.bin' is a file but not a model the studio reads"):
        load_adapter(str(tmp_path / "net.bin"))
    (tmp_path / "net.pkl").write_bytes(b"not a model")  # a .pkl is read as a StyleGAN network, safely
    with pytest.raises(StudioError, match=r"^cannot read '.*net\.pkl': it is neither a network pickle nor a"):
        load_adapter(str(tmp_path / "net.pkl"))
    for missing in ("missing.safetensors", "missing.pkl"):
        with pytest.raises(StudioError, match="^model file .* does not exist$"):
            load_adapter(str(tmp_path / missing))
    (tmp_path / "empty").mkdir()
    with pytest.raises(StudioError, match="holds neither a diffusers model"):
        load_adapter(str(tmp_path / "empty"))


# ---- bad SDXL folders ----

def test_broken_sdxl_folders_are_one_error_each(tmp_path):
    good = tmp_path / "xl"
    build_tiny_sdxl().save_pretrained(good)

    def variant(name, change):
        folder = tmp_path / name
        subprocess.run(["cp", "-r", str(good), str(folder)], check=True)
        change(folder)
        with pytest.raises(StudioError) as err:
            load_adapter(str(folder))
        assert "\n" not in str(err.value)
        return str(err.value)

    def drop_encoder(f):
        subprocess.run(["rm", "-r", str(f / "text_encoder_2")], check=True)

    assert "missing the part folder(s) text_encoder_2" in variant("no-te2", drop_encoder)

    def widen(f):
        cfg = json.loads((f / "text_encoder_2" / "config.json").read_text())
        cfg["hidden_size"] = 48
        (f / "text_encoder_2" / "config.json").write_text(json.dumps(cfg))

    msg = variant("wide", widen)
    assert "cannot load diffusion model" in msg or "do not match the UNet's cross-attention width" in msg

    def truncate(f):
        weights = next((f / "unet").glob("*.safetensors"))
        weights.write_bytes(weights.read_bytes()[:1000])

    assert "cannot load diffusion model" in variant("cut", truncate)

    def other_family(f):
        index = json.loads((f / "model_index.json").read_text())
        index["_class_name"] = "SanaPipeline"
        (f / "model_index.json").write_text(json.dumps(index))

    message = variant("sana", other_family)
    assert "is a 'SanaPipeline' pipeline, which the studio does not run; it runs StableDiffusionPipeline" in message
    assert "FluxPipeline (Flux.1)" in message and "PixArtSigmaPipeline (PixArt-Sigma)" in message


def test_mismatched_encoder_widths_are_refused_before_rendering():
    from pipelines.diffusion import DiffusionAdapter

    pipe = build_tiny_sdxl()
    pipe.unet.register_to_config(cross_attention_dim=96)
    with pytest.raises(StudioError, match=r"text encoder widths 32 \+ 32 do not match the UNet's cross-attention "
                                          r"width 96"):
        DiffusionAdapter(pipe, "odd")


def test_the_cli_samples_sdxl_from_a_folder(tmp_path):
    folder = tmp_path / "xl"
    build_tiny_sdxl().save_pretrained(folder)
    env = {**os.environ, "STUDIO_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "studio.cli", "sample", "--model", str(folder), "--prompt", "a cat",
                          "--seed", "1", "--steps", "2", "--out", str(tmp_path / "o"), "--json"],
                         capture_output=True, text=True, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    (made,) = json.loads(out.stdout)
    assert Image.open(next((tmp_path / "o").glob("*.png"))).size == (64, 64)
    info = subprocess.run([sys.executable, "-m", "studio.cli", "latents", "show", made["id"], "--json"],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    assert json.loads(info.stdout)["settings"]["target_size"] == [64, 64]


def test_objects_of_plain_spaces_keep_their_ids():
    """Packing is only for several parts: a one-part text space (SD) is the plain space it always was."""
    space = Space.packed("text", "text-00000000", [("embeds", (3, 2))])
    assert space == Space("text", "text-00000000", (3, 2)) and space.to_json() == {
        "kind": "text", "family": "text-00000000", "shape": [3, 2]}
    lat = Latent(torch.ones(3, 2), space)
    assert lat.id == Latent(torch.ones(3, 2), Space("text", "text-00000000", (3, 2))).id
    with pytest.raises(StudioError, match="packed space's shape"):
        Space("text", "t", (5,), (("a", (2,)), ("b", (2,))))
    assert isinstance(Vector(torch.zeros(4), Space.packed("text", "t", [("a", (2,)), ("b", (2,))])), Vector)


@pytest.mark.parametrize("spec", ["tiny-sd", "tiny-sdxl"])
def test_a_seed_gives_the_same_generation_alone_or_in_a_batch(studio, spec):
    adapter = studio.adapter(spec)
    alone = adapter.sample([1], ["a cat"], steps=2)[0]
    batched = adapter.sample([1, 2, 3], ["a cat", "a dog", "a cat"], steps=2)
    assert batched[0].id == alone.id and batched[2].roles["text"].id == alone.roles["text"].id


def test_sdxl_turbo_the_same_weights_with_one_step_and_no_guidance(tmp_path):
    """SDXL-Turbo is an SDXL pipeline with a trailing EulerAncestral schedule, one step and guidance 0."""
    from diffusers import EulerAncestralDiscreteScheduler

    from pipelines.tiny import SD_BETAS

    pipe = build_tiny_sdxl()
    pipe.scheduler = EulerAncestralDiscreteScheduler(**SD_BETAS, timestep_spacing="trailing")
    pipe.save_pretrained(tmp_path / "turbo")
    (tmp_path / "turbo" / "studio.json").write_text(json.dumps({"steps": 1, "guidance": 0.0}))
    adapter = load_adapter(str(tmp_path / "turbo"))
    (g,) = adapter.sample([5], ["a cat"])
    assert g.settings["steps"] == 1 and g.settings["guidance"] == 0.0
    assert g.settings["scheduler"] == "EulerAncestralDiscreteScheduler"
    ours = adapter.render([g])[0]
    text = adapter.text_space.unpack(g.roles["text"].tensor[None])
    theirs = pipe(prompt_embeds=text["embeds"], pooled_prompt_embeds=text["pooled"], latents=g.roles["noise"].tensor[None],
                  num_inference_steps=1, guidance_scale=0.0, height=64, width=64, output_type="pil",
                  generator=[torch.Generator().manual_seed(5)]).images[0]
    assert np.array_equal(pixels(ours), pixels(theirs))
    with pytest.raises(StudioError, match="guidance 0.0 ignores the negative prompt"):
        adapter.sample([5], ["a cat"], negative_prompt="blurry")

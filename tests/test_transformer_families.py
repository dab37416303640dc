"""SD 3, Flux.1 (dev and schnell) and PixArt-Sigma: transformer denoisers on the diffusion adapter.

Tiny random-weight pipelines built from configs in code (``pipelines/tiny.py``); nothing downloads.
Flow matching is checked against a velocity field whose behaviour is known, as DDIM inversion is.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.pipelines.flux.pipeline_flux import calculate_shift
from PIL import Image

from pipelines.diffusion import DiffusionAdapter
from pipelines.families import Flux, image_ids, pack, unpack
from pipelines.registry import load_adapter
from pipelines.tiny import TINY_T5_MAX_LENGTH, build_tiny_flux, build_tiny_pixart, build_tiny_sd3
from studio.errors import SpaceMismatch, StudioError
from studio.scoring import psnr

FAMILIES = ["tiny-sd3", "tiny-flux", "tiny-flux-schnell", "tiny-pixart"]
BUILDERS = {"tiny-sd3": build_tiny_sd3, "tiny-flux": build_tiny_flux,
            "tiny-flux-schnell": lambda: build_tiny_flux(guidance_embeds=False), "tiny-pixart": build_tiny_pixart}
STEPS = 3


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def stacked(gens, role: str) -> torch.Tensor:
    return torch.stack([g.roles[role].tensor for g in gens])


def plain_call(spec: str, gens, **extra) -> list[Image.Image]:
    """The same render as a user writes it against diffusers, from the stored noise and conditioning."""
    pipe = BUILDERS[spec]()
    s = gens[0].settings
    parts = load_adapter(spec).text_space.unpack(stacked(gens, "text"))
    noise = stacked(gens, "noise")
    kwargs = {"num_inference_steps": s["steps"], "height": s["height"], "width": s["width"], "output_type": "pil",
              "max_sequence_length": TINY_T5_MAX_LENGTH, **extra}
    n = len(gens)
    with torch.no_grad():  # the empty negative prompt, encoded once by the pipeline (a batched encoding differs
        if spec == "tiny-pixart":  # in the last bits with the batch size)
            embeds = parts[""]
            neg, neg_mask, _, _ = pipe.encode_prompt("", do_classifier_free_guidance=False, clean_caption=False,
                                                     max_sequence_length=TINY_T5_MAX_LENGTH)
            kwargs.update(prompt_embeds=embeds, prompt_attention_mask=(embeds != 0).any(-1).long(),
                          negative_prompt_embeds=neg.expand(n, -1, -1), negative_prompt=None,
                          negative_prompt_attention_mask=neg_mask.expand(n, -1), use_resolution_binning=False,
                          clean_caption=False)
        else:
            kwargs.update(prompt_embeds=parts["embeds"], pooled_prompt_embeds=parts["pooled"])
        if spec == "tiny-sd3":
            neg, _, neg_pooled, _ = pipe.encode_prompt("", None, None, do_classifier_free_guidance=False,
                                                       max_sequence_length=TINY_T5_MAX_LENGTH)
            kwargs.update(negative_prompt_embeds=neg.expand(n, -1, -1), negative_pooled_prompt_embeds=neg_pooled.expand(n, -1))
    if spec.startswith("tiny-flux"):  # Flux's call takes the noise in its packed 2x2 form
        n, c, h, w = noise.shape
        noise = FluxPipeline._pack_latents(noise, n, c, h, w)
    return pipe(latents=noise, guidance_scale=s.get("guidance", 0.0), **kwargs).images


# ---- the contract, on every transformer family ----

@pytest.mark.parametrize("spec", FAMILIES)
def test_render_equals_the_plain_diffusers_call_and_seeds_are_stable(studio, spec):
    adapter = studio.adapter(spec)
    gens = adapter.sample([3, 4], ["a cat", "a dog"], steps=STEPS)
    assert [g.id for g in gens] == [g.id for g in adapter.sample([3, 4], ["a cat", "a dog"], steps=STEPS)]
    (alone,) = adapter.sample([4], ["a dog"], steps=STEPS)
    assert alone.id == gens[1].id  # a seed gives the same generation alone or in a batch
    ours, theirs = adapter.render(gens), plain_call(spec, gens)
    assert all(np.array_equal(pixels(a), pixels(b)) for a, b in zip(ours, theirs, strict=True))
    stored = studio.library.get(studio.library.put(gens[0], None))  # (Flux's transformer is not batch-invariant
    assert stored.id == gens[0].id  # in the last bits, in diffusers as here: compare one render with one)
    assert np.array_equal(pixels(adapter.render([stored])[0]), pixels(adapter.render([gens[0]])[0]))


@pytest.mark.parametrize("spec", ["tiny-sd3", "tiny-flux", "tiny-pixart"])
def test_the_pipeline_encoding_its_own_prompt_renders_the_same_picture(studio, spec):
    """The stored conditioning is what the pipeline makes of the prompt (PixArt's padding zeroed changes nothing)."""
    adapter = studio.adapter(spec)
    (g,) = adapter.sample([7], ["a red cat"], steps=STEPS)
    pipe = BUILDERS[spec]()
    noise = stacked([g], "noise")
    extra = {"use_resolution_binning": False, "clean_caption": False} if spec == "tiny-pixart" else {}
    if spec == "tiny-flux":
        noise = pack(noise)
    theirs = pipe(prompt="a red cat", latents=noise, num_inference_steps=STEPS, guidance_scale=g.settings["guidance"],
                  height=64, width=64,
                  max_sequence_length=TINY_T5_MAX_LENGTH, output_type="pil", **extra).images[0]
    assert np.array_equal(pixels(adapter.render([g])[0]), pixels(theirs))


def test_families_state_their_spaces_and_settings(studio):
    sd3, flux, schnell, pixart = (studio.adapter(s) for s in FAMILIES)
    assert sd3.noise_space(64, 64).shape == flux.noise_space(64, 64).shape == (16, 8, 8)  # Flux stored unpacked
    assert sd3.text_space.parts == (("embeds", (16 + TINY_T5_MAX_LENGTH, 64)), ("pooled", (64,)))
    assert flux.text_space.parts == (("embeds", (TINY_T5_MAX_LENGTH, 32)), ("pooled", (32,)))
    assert pixart.text_space.shape == (TINY_T5_MAX_LENGTH, 32) and not pixart.text_space.parts
    assert sd3.text_space.family.startswith("text-sd3-clipL-clipG-t5-")
    assert flux.text_space.family.startswith("text-flux-clipL-t5-")
    assert sd3.default_settings()["scheduler"] == "FlowMatchEulerDiscreteScheduler" and sd3.kind.flow
    assert flux.default_settings()["guidance"] == 3.5 and flux.default_settings()["true_cfg"] == 1.0
    assert "guidance" not in schnell.default_settings() and schnell.default_settings()["steps"] == 4
    assert not pixart.kind.flow and "DDIMScheduler" in pixart.schedulers
    assert (sd3.patch, flux.patch, pixart.patch) == (2, 2, 2)


def test_sd3_without_t5_is_another_text_space_that_says_so():
    without = DiffusionAdapter(build_tiny_sd3(t5=False), "sd3-no-t5")
    assert without.text_space.family.startswith("text-sd3-clipL-clipG-") and "-t5-" not in without.text_space.family
    assert without.text_space.family != load_adapter("tiny-sd3").text_space.family
    parts = without.text_space.unpack(without.encode_text(["a cat"]))
    assert not parts["embeds"][:, 16:].any()  # SD 3 fills the T5 part with zeros
    (g,) = without.sample([2], ["a cat"], steps=2)
    pipe = build_tiny_sd3(t5=False)
    theirs = pipe(latents=stacked([g], "noise"), prompt_embeds=parts["embeds"], pooled_prompt_embeds=parts["pooled"],
                  num_inference_steps=2, guidance_scale=7.0, output_type="pil").images[0]
    assert np.array_equal(pixels(without.render([g])[0]), pixels(theirs))


# ---- Flux: distilled guidance and true CFG, the resolution-dependent shift, packing ----

def test_flux_distilled_guidance_and_true_cfg_are_two_settings(studio):
    flux = studio.adapter("tiny-flux")
    (g,) = flux.sample([5], ["a cat"], steps=2)
    (stronger,) = flux.sample([5], ["a cat"], steps=2, guidance=8.0)
    assert not np.array_equal(pixels(flux.render([g])[0]), pixels(flux.render([stronger])[0]))
    with pytest.raises(StudioError, match=r"takes a negative prompt only with true CFG: set true_cfg above 1"):
        flux.sample([5], ["a cat"], negative_prompt="blurry")
    (cfg,) = flux.sample([5], ["a cat"], steps=2, true_cfg=2.0, negative_prompt="blurry")
    theirs = plain_call("tiny-flux", [cfg], true_cfg_scale=2.0, negative_prompt="blurry")[0]
    assert np.array_equal(pixels(flux.render([cfg])[0]), pixels(theirs))
    with pytest.raises(StudioError, match=r"^unknown setting\(s\) guidance for model tiny-flux-schnell \(Flux.1\)"):
        studio.adapter("tiny-flux-schnell").sample([5], ["a cat"], guidance=3.5)


@pytest.mark.parametrize("side", [64, 128])
def test_flux_schedule_is_the_pipelines_own_with_its_resolution_shift(studio, side):
    flux = studio.adapter("tiny-flux")
    settings = flux.resolve_settings({"steps": 4, "height": side, "width": side})
    ours = flux.scheduler(settings["scheduler"])
    flux.set_timesteps(ours, settings)
    seen = []
    flux.pipe(prompt="x", num_inference_steps=4, height=side, width=side, output_type="latent",
              max_sequence_length=TINY_T5_MAX_LENGTH,
              callback_on_step_end=lambda p, i, t, k: seen.append(float(t)) or k)
    assert torch.allclose(ours.timesteps, torch.tensor(seen))
    cfg = ours.config
    mu = calculate_shift((side // 16) ** 2, cfg.base_image_seq_len, cfg.max_image_seq_len, cfg.base_shift,
                         cfg.max_shift)
    expected = np.exp(mu) / (np.exp(mu) + (1 / np.linspace(1, 1 / 4, 4) - 1))  # the shifted sigmas
    assert np.allclose(ours.sigmas[:-1].numpy(), expected, atol=1e-6)


def test_flux_packing_round_trips_and_matches_diffusers():
    x = torch.randn(2, 16, 6, 8)
    assert torch.equal(pack(x), FluxPipeline._pack_latents(x, 2, 16, 6, 8))
    assert torch.equal(unpack(pack(x), 6, 8), x)
    assert torch.equal(image_ids(3, 4, "cpu", torch.float32), FluxPipeline._prepare_latent_image_ids(1, 3, 4, "cpu",
                                                                                                   torch.float32))


# ---- operations on each family ----

@pytest.mark.parametrize("spec", FAMILIES)
def test_slerp_of_two_generations_stores_lineage_and_renders(studio, spec):
    a, b = studio.sample(spec, "a cat", seed=11, count=2, name=f"{spec}-s", steps=2)
    mid = studio.evaluate(f"slerp(@{spec}-s-1, @{spec}-s-2, 0.5)", name=f"{spec}-mid")
    assert mid.obj.lineage.op == "slerp" and set(mid.obj.lineage.parents) == {a.id, b.id}
    assert studio.render([mid.obj])[0].size == (64, 64)


@pytest.mark.parametrize("spec,other", [("tiny-sd3", "tiny-flux"), ("tiny-flux", "tiny-pixart"),
                                        ("tiny-pixart", "tiny-sd")])
def test_a_prompt_pair_vector_applies_and_is_refused_on_another_family(studio, spec, other):
    v = studio.vectors.from_prompts({"from": "day", "to": "night", "templates": ["a {} city", "{}"]}, spec,
                                    name=f"{spec}-night")
    assert v.obj.space == studio.adapter(spec).text_space
    studio.sample(spec, "a day city", seed=21, name=f"{spec}-city", steps=2)
    edits = studio.vectors.apply(f"{spec}-city", f"{spec}-night", [0.0, 1.0])
    assert edits[0].id == studio.library.resolve(f"{spec}-city") and edits[1].id != edits[0].id
    assert studio.render([edits[1].obj])[0].size == (64, 64)
    studio.sample(other, "a day city", seed=21, name=f"{other}-city-{spec}", steps=2)
    before = len(studio.library)
    with pytest.raises(SpaceMismatch) as err:
        studio.vectors.apply(f"{other}-city-{spec}", f"{spec}-night", [1.0])
    assert str(studio.adapter(spec).text_space) in str(err.value)
    assert str(studio.adapter(other).text_space) in str(err.value)
    assert len(studio.library) == before


@pytest.mark.parametrize("spec", ["tiny-sd3", "tiny-flux", "tiny-pixart"])
def test_hspace_and_sdedit_edits_render(studio, spec):
    adapter = studio.adapter(spec)
    studio.sample(spec, "a cat", seed=31, count=2, name=f"{spec}-h", steps=6)
    studio.sample(spec, "a dog", seed=33, count=2, name=f"{spec}-d", steps=6)
    hv = studio.vectors.from_sets([f"{spec}-h-1", f"{spec}-h-2"], [f"{spec}-d-1", f"{spec}-d-2"], role="hspace",
                                  name=f"{spec}-hv")
    assert hv.obj.space == adapter.hspace_space(64, 64) and hv.obj.space.shape[1:] == (4, 4)  # one cell per token
    (shifted,) = studio.vectors.apply(f"{spec}-h-1", f"{spec}-hv", [2.0], mode="hspace")
    base, moved = studio.render([studio.get(f"{spec}-h-1"), shifted.obj])
    assert not np.array_equal(pixels(base), pixels(moved))
    studio.vectors.from_prompts({"from": "cat", "to": "dog", "templates": ["a {}"]}, spec, name=f"{spec}-dog")
    (edit,) = studio.vectors.apply(f"{spec}-h-1", f"{spec}-dog", [1.0], mode="sdedit", sdedit_strength=0.5)
    assert set(edit.obj.roles) == {"noise", "text", "init"}
    a, b = studio.render([edit.obj, edit.obj])
    assert np.array_equal(pixels(a), pixels(b))


def test_flux_true_cfg_shifts_the_hspace_for_as_many_steps_through_the_pipeline_as_in_its_own_loop(studio):
    """Flux's pipeline runs true CFG's negative pass as a second transformer call; the shift still lasts
    ``hspace_steps`` steps, as in the studio's own loop (one batched call per step)."""
    from pipelines import diffusion_edit

    flux = studio.adapter("tiny-flux")
    (g,) = flux.sample([41], ["a cat"], steps=4, true_cfg=2.0)
    (h,) = flux.hspace_of([g], 2)
    shifted = type(g)({**g.roles, "hspace": type(h)(h.tensor * 3, h.space)}, g.model,
                      {**g.settings, "hspace_steps": 2}, g.meta)
    through_pipeline = pixels(flux.render([shifted])[0])
    own_loop = pixels(diffusion_edit.render_loop(flux, [shifted], flux.resolve_settings(shifted.settings))[0])
    assert np.abs(through_pipeline - own_loop).max() <= 1  # the same edit, to the last bits of batching
    # (shifting one step only, the pipeline's render differs from the loop's by 0.29 levels on average)
    assert np.abs(through_pipeline - pixels(flux.render([g])[0])).mean() > 0.2  # and it is an edit


def test_the_hspace_block_is_the_middle_of_the_stack(studio):
    sd3, flux, pixart = (studio.adapter(s) for s in ("tiny-sd3", "tiny-flux", "tiny-pixart"))
    assert sd3.kind.hspace_block(sd3.denoiser) is sd3.denoiser.transformer_blocks[1]  # of 2
    assert flux.kind.hspace_block(flux.denoiser) is flux.denoiser.single_transformer_blocks[0]  # 1 double + 2 single
    assert pixart.kind.hspace_block(pixart.denoiser) is pixart.denoiser.transformer_blocks[1]


@pytest.mark.parametrize("spec", ["tiny-sd3", "tiny-flux", "tiny-pixart"])
def test_comfyui_latent_round_trip(studio, spec, tmp_path):
    picture = tmp_path / "p.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(picture)
    enc = studio.encode_image(picture, spec, name=f"{spec}-enc")
    cfg = studio.adapter(spec).pipe.vae.config  # SD 3 and Flux.1 shift their latents; the latent says by how much
    assert enc.obj.meta["scale"] == "unscaled" and enc.obj.meta["shift_factor"] == (cfg.shift_factor or 0.0)
    studio.export(f"{spec}-enc", tmp_path / "x.latent")
    (back,) = studio.import_file(tmp_path / "x.latent", model=spec)
    assert back.id == enc.id and torch.equal(back.obj.tensor, enc.obj.tensor)
    assert studio.adapter(spec).decode([back.obj])[0].size == (64, 64)
    with pytest.raises(SpaceMismatch):
        studio.adapter("tiny-sd" if spec != "tiny-pixart" else "tiny-sd3").decode([back.obj])


def test_pixart_padding_never_leaks_into_a_mixture(studio):
    pixart = studio.adapter("tiny-pixart")
    short, long = pixart.encode_text(["a cat", "a big brown dog"])
    rows = lambda t: int((t != 0).any(-1).sum())  # noqa: E731
    assert rows(short) < rows(long) < TINY_T5_MAX_LENGTH
    assert not short[rows(short):].any()  # the padding is stored as zeros
    mix = 0.5 * short + 0.5 * long
    assert rows(mix) == rows(long)  # the mixture attends to the tokens of either prompt, and to no padding


def test_a_size_the_transformer_cannot_patchify_names_the_nearest_valid_sizes(studio):
    with pytest.raises(StudioError, match=r"^height=72 cannot be cut into the transformer's 2x2 latent patches: it "
                                          r"must be a multiple of 16 .*nearest: 64 or 80$"):
        studio.adapter("tiny-sd3").sample([1], ["x"], height=72)
    with pytest.raises(StudioError, match=r"^width=8 cannot be cut.*nearest: 16$"):
        studio.adapter("tiny-flux").sample([1], ["x"], width=8)
    assert studio.adapter("tiny-sd").resolve_settings({"height": 72})["height"] == 72  # a UNet takes any cell


# ---- flow matching against a velocity field whose behaviour is known ----

def gaussian_velocity(scale: float = 0.5, seen: list | None = None, timestep_is_sigma: bool = False):
    """A transformer forward that is the optimal flow-matching velocity for latents ~ N(0, scale^2):
    with x = (1 - s) x0 + s noise, v = E[noise - x0 | x] = (s - (1 - s) scale^2) x / ((1 - s)^2 scale^2 + s^2).
    It is elementwise, so it works on Flux's packed tokens as on plain latents."""

    def forward(hidden_states, timestep=None, *args, return_dict=True, **kwargs):
        if seen is not None:
            seen.append(hidden_states.clone())
        s = (timestep if timestep_is_sigma else timestep / 1000).double().reshape(-1, *[1] * (hidden_states.dim() - 1))
        v = (s - (1 - s) * scale**2) * hidden_states.double() / ((1 - s) ** 2 * scale**2 + s**2)
        v = v.to(hidden_states.dtype)
        return Transformer2DModelOutput(sample=v) if return_dict else (v,)

    return forward


def gradient_picture() -> Image.Image:
    yy, xx = np.mgrid[0:64, 0:64]
    return Image.fromarray(np.stack([xx * 4, yy * 4, (xx + yy) * 2], -1).astype(np.uint8))


@pytest.mark.parametrize("spec", ["tiny-sd3", "tiny-flux"])
def test_flow_inversion_re_renders_the_picture(spec, monkeypatch):
    """The flow ODE integrated backwards, then forwards by the pipeline's own Euler sampler, lands on the
    VAE reconstruction of the picture."""
    adapter = load_adapter(spec)
    monkeypatch.setattr(adapter.denoiser, "forward", gaussian_velocity(timestep_is_sigma=spec == "tiny-flux"))
    picture = gradient_picture()
    (encoded,) = adapter.encode([picture])
    target = np.asarray(adapter.decode([encoded])[0])
    inv = adapter.invert(picture, "", steps=8, refine=4)
    assert inv.lineage.op == "flow-invert" and inv.settings["scheduler"] == "FlowMatchEulerDiscreteScheduler"
    assert adapter.cfg_scale(inv.settings) is None  # unguided, as the inversion assumed
    assert psnr(target, np.asarray(adapter.render([inv])[0])) > 40
    plain = load_adapter(spec)  # without refinement the re-render is visibly worse
    monkeypatch.setattr(plain.denoiser, "forward", gaussian_velocity(timestep_is_sigma=spec == "tiny-flux"))
    rough = plain.invert(picture, "", steps=8, refine=0)
    assert psnr(target, np.asarray(plain.render([rough])[0])) < psnr(target, np.asarray(adapter.render([inv])[0]))


def test_flow_sdedit_starts_on_the_flow_interpolation(monkeypatch):
    """SDEdit at strength 0.5 of 4 steps starts at x = (1 - sigma) x0 + sigma noise with sigma the schedule's
    third, and runs the last two steps only."""
    adapter = load_adapter("tiny-sd3")
    (g,) = adapter.sample([9], ["a cat"], steps=4, guidance=1.0)
    init = adapter.sdedit_init(g)
    seen: list = []
    monkeypatch.setattr(adapter.denoiser, "forward", gaussian_velocity(seen=seen))
    edit = type(g)({**g.roles, "init": init}, g.model, {**g.settings, "sdedit": 0.5}, g.meta)
    adapter.render([edit])
    scheduler = adapter.scheduler("FlowMatchEulerDiscreteScheduler")
    adapter.set_timesteps(scheduler, adapter.resolve_settings(edit.settings))
    sigma = scheduler.sigmas[2]
    cfg = adapter.pipe.vae.config
    x0 = (init.tensor - cfg.shift_factor) * cfg.scaling_factor
    assert len(seen) == 2
    assert torch.allclose(seen[0][0], (1 - sigma) * x0 + sigma * g.roles["noise"].tensor, atol=1e-6)


def test_ddim_inversion_serves_pixart_a_ddpm_style_transformer(monkeypatch):
    from conftest import gaussian_denoiser

    adapter = load_adapter("tiny-pixart")
    unet_like = gaussian_denoiser(adapter.pipe.scheduler.alphas_cumprod)

    def forward(hidden_states, *args, timestep=None, return_dict=True, **kwargs):
        eps = unet_like(hidden_states, timestep.reshape(-1)[0]).sample
        out = torch.cat([eps, torch.zeros_like(eps)], 1)  # learned sigma: the variance half is dropped
        return Transformer2DModelOutput(sample=out) if return_dict else (out,)

    monkeypatch.setattr(adapter.denoiser, "forward", forward)
    picture = gradient_picture()
    target = np.asarray(adapter.decode(adapter.encode([picture]))[0])
    inv = adapter.invert(picture, "", steps=10, refine=3)
    assert inv.lineage.op == "ddim-invert" and inv.settings["scheduler"] == "DDIMScheduler"
    assert psnr(target, np.asarray(adapter.render([inv])[0])) > 40


def test_the_flux_family_names_its_guidance_for_the_ui():
    assert Flux().guidance_label == "Distilled guidance"


def test_folders_of_each_family_load_and_an_sd3_folder_without_t5_too(tmp_path):
    for name, pipe, builtin in [("sd3-no-t5", build_tiny_sd3(t5=False), None), ("pixart", build_tiny_pixart(), "tiny-pixart"),
                                ("schnell", build_tiny_flux(guidance_embeds=False), "tiny-flux-schnell")]:
        pipe.save_pretrained(tmp_path / name)
        adapter = load_adapter(str(tmp_path / name))
        assert adapter.spec == str((tmp_path / name).resolve())
        if builtin:  # the same weights saved: the same spaces
            assert adapter.text_space == load_adapter(builtin).text_space
        else:
            assert adapter.pipe.text_encoder_3 is None and "-t5-" not in adapter.text_space.family
        (g,) = adapter.sample([1], ["a cat"], steps=2)
        assert adapter.render([g])[0].size == (64, 64)

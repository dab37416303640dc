"""Attribute vectors: the makers' maths, applying them, h-space and SDEdit modes, inversion."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TEXT, gaussian_denoiser, vector
from studio import vectors as vx
from studio.errors import SpaceMismatch, StudioError
from studio.objects import Latent, Vector
from studio.space import Space

ROOT = Path(__file__).resolve().parents[1]
DAY_TO_NIGHT = ROOT / "prompts" / "vectors" / "day_to_night.yaml"
SPACE = Space("gan-w", "stylegan-test", (16,))


def planted(n=200, seed=0):
    """Two sets that differ along one planted direction, plus a nuisance axis of large variance."""
    g = torch.Generator().manual_seed(seed)
    direction = torch.zeros(16)
    direction[3] = 1.0
    base = torch.randn(2 * n, 16, generator=g)
    base[:, 0] *= 10  # the biggest variance is NOT the attribute
    a = [Latent(x, SPACE) for x in base[:n]]
    b = [Latent(x + 2.0 * direction, SPACE) for x in base[n:]]
    return a, b, direction


def test_mean_difference_and_boundary_find_the_planted_direction():
    a, b, d = planted()
    for maker in (vx.mean_difference, vx.linear_boundary):
        v, space = maker(a, b)
        assert space == SPACE
        cos = torch.nn.functional.cosine_similarity(v, d, 0).item()
        assert cos > 0.9, (maker.__name__, cos)
        assert torch.dot(v, d).item() == pytest.approx(2.0, rel=0.15)  # strength 1 = the average gap


def test_vector_makers_refuse_mixed_spaces_and_tiny_sets():
    a, b, _ = planted(5)
    other = [Latent(torch.zeros(8), Space("gan-w", "stylegan-other", (8,)))] * 3
    with pytest.raises(SpaceMismatch, match="stylegan-other"):
        vx.mean_difference(a, other)
    with pytest.raises(StudioError, match="at least 2"):
        vx.linear_boundary(a[:1], b)


def test_pca_orders_directions_by_variance():
    a, _, _ = planted()
    x = torch.stack([lat.tensor for lat in a])
    dirs, ratios = vx.principal_directions(x, 3)
    assert dirs.shape == (3, 16) and ratios[0] > 0.5 and bool((ratios[:-1] >= ratios[1:]).all())
    assert abs(dirs[0][0].item()) / dirs[0].norm().item() > 0.99  # the big nuisance axis first
    assert dirs[0].norm().item() == pytest.approx(x[:, 0].std().item(), rel=0.05)  # one standard deviation


def test_conditional_vector_is_orthogonal_to_the_conditions():
    v, c1, c2 = vector(1, TEXT), vector(2, TEXT), vector(3, TEXT)
    out = Vector(vx.conditional(v, [c1, c2]), TEXT)
    assert abs(vx.cosine(out, c1)) < 1e-5 and abs(vx.cosine(out, c2)) < 1e-5
    assert vx.cosine(out, v) > 0.5


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from studio.session import Session

    s = Session(tmp_path_factory.mktemp("vec"))
    s.sample("tiny-sd", "a street", 1, name="scene", steps=6)
    return s


def test_day_to_night_is_the_mean_embedding_difference_over_templates(tiny):
    import yaml

    stored = tiny.vectors.from_prompts(DAY_TO_NIGHT, "tiny-sd")
    assert stored.name == "day_to_night"
    spec = yaml.safe_load(DAY_TO_NIGHT.read_text())
    adapter = tiny.adapter("tiny-sd")
    night = adapter.encode_text([t.format(spec["to"]) for t in spec["templates"]]).double()
    day = adapter.encode_text([t.format(spec["from"]) for t in spec["templates"]]).double()
    assert torch.allclose(stored.obj.tensor, (night - day).mean(0).float(), atol=1e-6)
    assert stored.obj.space == adapter.spaces()["text"] and stored.obj.method == "prompt-pair"


def test_applying_a_text_vector_moves_the_text_by_exactly_strength_times_vector(tiny):
    tiny.vectors.from_prompts(DAY_TO_NIGHT, "tiny-sd")
    scene, v = tiny.get("scene"), tiny.get("day_to_night")
    out = tiny.vectors.apply("scene", "day_to_night", [0.7, -1.5], name="night")
    for stored, s in zip(out, (0.7, -1.5)):
        g = stored.obj
        assert torch.equal(g.roles["noise"].tensor, scene.roles["noise"].tensor)  # the composition stays
        assert torch.equal(g.roles["text"].tensor, scene.roles["text"].tensor + v.tensor * s)
        assert g.lineage.op == "add" and g.lineage.params["s"] == s
        assert g.lineage.parents == (tiny.library.resolve("scene"), tiny.library.resolve("day_to_night"))
    assert tiny.library.resolve("night-1") == out[0].id


def test_vector_of_another_space_is_a_clear_error(tiny):
    z = Vector(torch.ones(32), Space("gan-z", "stylegan-xyz", (32,)), "pca")
    tiny.library.put(z, "zdir")
    with pytest.raises(SpaceMismatch, match="gan-z\\[stylegan-xyz\\]"):
        tiny.vectors.apply("scene", "zdir", [1.0])


def test_vectors_survive_export_and_import_with_their_metadata(tiny, tmp_path):
    tiny.vectors.from_prompts(DAY_TO_NIGHT, "tiny-sd")
    path = tiny.export("day_to_night", tmp_path / "v.safetensors")
    from studio.session import Session

    other = Session(tmp_path / "other")
    (back,) = other.import_file(path, name="dn")
    v = other.get("dn")
    assert isinstance(v, Vector) and v.method == "prompt-pair"
    assert v.meta["attribute"] == {"name": "time of day", "from": "day", "to": "night"}
    assert torch.equal(v.tensor, tiny.get("day_to_night").tensor)


def test_hspace_vectors_shift_the_bottleneck_only_when_present(tiny):
    tiny.sample("tiny-sd", "a dog", 10, count=3, name="dog", tags=["A"], steps=6)
    tiny.sample("tiny-sd", "a cat", 20, count=3, name="cat", tags=["B"], steps=6)
    a = [r.id for r in tiny.library.ls(tag="A")]
    b = [r.id for r in tiny.library.ls(tag="B")]
    hv = tiny.vectors.from_sets(a, b, role="hspace", name="hcat")
    adapter = tiny.adapter("tiny-sd")
    assert hv.obj.space == adapter.hspace_space() and hv.obj.space.kind == "hspace"
    (shifted,) = tiny.vectors.apply("scene", "hcat", [3.0], mode="hspace")
    assert set(shifted.obj.roles) == {"noise", "text", "hspace"}
    base, moved = tiny.render([tiny.get("scene"), shifted.obj])
    again = tiny.render([tiny.get("scene")])[0]
    assert np.array_equal(np.asarray(base), np.asarray(again))
    assert np.abs(np.asarray(base, float) - np.asarray(moved, float)).mean() > 0.5
    with pytest.raises(StudioError, match="mode latent needs a latent-space vector; hcat is in hspace"):
        tiny.vectors.apply("scene", "hcat", [1.0], mode="latent")


def test_sdedit_loop_matches_the_pipeline_and_is_deterministic(tiny):
    tiny.vectors.from_prompts(DAY_TO_NIGHT, "tiny-sd")
    original = np.asarray(tiny.render([tiny.get("scene")])[0], float)
    full, = tiny.vectors.apply("scene", "day_to_night", [0.0], mode="sdedit", sdedit_strength=1.0)
    # at strength 1 the init picture is ignored: the studio's own loop must agree with diffusers'
    assert np.abs(np.asarray(tiny.render([full.obj])[0], float) - original).mean() < 1.0
    low, = tiny.vectors.apply("scene", "day_to_night", [1.0], mode="sdedit", sdedit_strength=0.3)
    assert set(low.obj.roles) == {"noise", "text", "init"} and low.obj.settings["sdedit"] == 0.3
    assert low.obj.lineage.op == "sdedit"
    a, b = tiny.render([low.obj, low.obj])
    assert np.array_equal(np.asarray(a), np.asarray(b))


def test_ddim_inversion_is_deterministic_and_renders_at_the_model_size(tiny, tmp_path):
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    adapter = tiny.adapter("tiny-sd")
    g1, g2 = adapter.invert(picture, "", steps=5), adapter.invert(picture, "", steps=5)
    assert torch.equal(g1.roles["noise"].tensor, g2.roles["noise"].tensor)
    assert g1.settings["guidance"] == 1.0 and g1.settings["scheduler"] == "DDIMScheduler"
    assert tiny.render([g1])[0].size == (64, 64)


def test_scoring_in_sdedit_mode_renders_from_the_source_pictures(tiny, tmp_path):
    from studio.scoring import score_vector

    definition = {"from": "noto", "to": "twemoji", "templates": ["cat, {}"],
                  "attribute": {"name": "style", "from": "noto", "to": "twemoji"}}
    tiny.vectors.from_prompts(definition, "tiny-sd", name="style_sd")
    result = score_vector(tiny, "style_sd", [0.0, 2.0], n=2, sdedit=0.5)
    assert result["sdedit"] == 0.5 and [r["strength"] for r in result["rows"]] == [0.0, 2.0]
    # at strength 0 the SDEdit re-render is not the source picture itself, but close to it
    assert result["rows"][0]["pixel_change"] > 0.01  # latent mode: exactly 0 at strength 0
    with pytest.raises(StudioError, match="sdedit scoring needs a diffusion model"):
        score_vector(tiny, "style_sd", [1.0], n=2, sdedit=1.5)


def test_refined_ddim_inversion_is_the_exact_inverse_of_the_sampler(tiny, monkeypatch):
    """With a denoiser whose behaviour is known (the optimal one for Gaussian latents) in place of the
    random UNet, the refined inversion followed by the adapter's own DDIM render lands on the VAE
    reconstruction; plain DDIM inversion (refine=0) falls well short of it."""
    from studio.scoring import psnr

    adapter = tiny.adapter("tiny-sd")
    monkeypatch.setattr(adapter.pipe.unet, "forward", gaussian_denoiser(adapter.pipe.scheduler.alphas_cumprod))
    yy, xx = np.mgrid[0:64, 0:64]
    picture = Image.fromarray(np.stack([xx * 4, yy * 4, (xx + yy) * 2], -1).astype(np.uint8))
    (encoded,) = adapter.encode([picture])
    target = np.asarray(adapter.decode([encoded])[0])
    plain, refined = (adapter.invert(picture, "", steps=10, refine=r) for r in (0, 3))
    assert refined.lineage.params["refine"] == 3 and refined.settings["steps"] == 10
    assert psnr(target, np.asarray(adapter.render([plain])[0])) < 40
    assert psnr(target, np.asarray(adapter.render([refined])[0])) > 55


def test_scoring_sweeps_strengths_with_the_judge_and_draws_the_plot(tiny, tmp_path):
    from studio.scoring import score_vector, summary_table

    # tiny-sd reads 16 characters: a short definition, so the phrases are not cut off
    definition = {"from": "noto", "to": "twemoji", "templates": ["cat, {}"],
                  "attribute": {"name": "style", "from": "noto", "to": "twemoji"}}
    tiny.vectors.from_prompts(definition, "tiny-sd", name="style_short")
    result = score_vector(tiny, "style_short", [0.0, 2.0], n=3, out=tmp_path)
    assert [r["strength"] for r in result["rows"]] == [0.0, 2.0]
    first = result["rows"][0]
    assert first["preservation"] == 1.0 and first["pixel_change"] == 0.0  # strength 0 changes nothing
    assert first["flip_rate"] == result["baseline_style"]
    assert Image.open(result["plot"]).size[0] > 300 and Image.open(result["strip"]).size == (3 * 64, 14 + 3 * 64)
    assert result["rows"][1]["pixel_change"] > 0.01
    assert "category kept" in summary_table(result).splitlines()[0]


def test_scoring_refuses_an_attribute_the_judge_does_not_know(tiny):
    from studio.scoring import score_vector

    tiny.vectors.from_prompts(DAY_TO_NIGHT, "tiny-sd")
    with pytest.raises(StudioError, match="the judge knows the attributes style, category, sky"):
        score_vector(tiny, "day_to_night", [1.0], n=2)


def test_gan_space_discovery_stores_directions_with_their_variance(tmp_path):
    from studio.session import Session

    s = Session(tmp_path)
    rows = s.vectors.discover("tiny-gan", "w", k=3, samples=300, prefix="pc")
    ratios = [r for _, r in rows]
    assert [st.name for st, _ in rows] == ["pc0", "pc1", "pc2"]
    assert ratios == sorted(ratios, reverse=True) and 0 < sum(ratios) < 1
    v = s.get("pc0")
    assert v.space == s.adapter("tiny-gan").spaces()["w"] and v.meta["explained_variance"] == pytest.approx(ratios[0], abs=1e-6)
    (moved,) = s.vectors.apply(s.sample("tiny-gan", seed=1, space="w")[0].id, "pc0", [2.0])
    assert moved.obj.roles["w"].space.kind == "gan-w"


def test_gan_projection_gets_closer_than_its_starting_point(tmp_path):
    from studio.scoring import psnr
    from studio.session import Session

    s = Session(tmp_path)
    adapter = s.adapter("tiny-gan")
    (target_gen,) = adapter.sample([3], space="w")
    target = adapter.render([target_gen])[0]
    start = adapter.project(target, steps=1)
    fitted = adapter.project(target, steps=80)
    a = np.asarray(target)
    before = psnr(a, np.asarray(adapter.render([start])[0]))
    after = psnr(a, np.asarray(adapter.render([fitted])[0]))
    assert after > before + 1.0, (before, after)
    assert fitted.lineage.op == "gan-project" and fitted.meta["projection_loss"] < start.meta["projection_loss"]


def test_a_sweep_that_fails_half_way_stores_nothing(tiny):
    """Every edit of a sweep is computed and every name checked before the first is stored."""
    tiny.vectors.from_prompts(DAY_TO_NIGHT, "tiny-sd")
    before = len(tiny.library)
    tiny.library.name("day_to_night", "sweep-2")  # the second result's name is taken
    with pytest.raises(StudioError, match="the name 'sweep-2' already refers to"):
        tiny.vectors.apply("scene", "day_to_night", [0.5, 1.0, 1.5], name="sweep")
    with pytest.raises(StudioError, match="strength 5000.0 is not a number between -1000 and 1000"):
        tiny.vectors.apply("scene", "day_to_night", [0.5, 5000.0], name="big")
    with pytest.raises(StudioError, match="at most 64"):
        tiny.vectors.apply("scene", "day_to_night", [0.1] * 65)
    with pytest.raises(StudioError, match=r"SDEdit strength must be a number in \(0, 1\]"):
        tiny.vectors.apply("scene", "day_to_night", [1.0], mode="sdedit", sdedit_strength=1.5)
    assert len(tiny.library) == before and tiny.library.name_owner("sweep-1") is None


def test_zero_directions_are_refused(tiny):
    tiny.sample("tiny-sd", "a dog", 30, count=2, name="zdog", steps=2)
    dogs = ["zdog-1", "zdog-2"]
    with pytest.raises(StudioError, match="the two sets have the same mean.*zero vector"):
        tiny.vectors.from_sets(dogs, dogs)
    tiny.vectors.from_prompts(DAY_TO_NIGHT, "tiny-sd")
    with pytest.raises(StudioError, match="day_to_night without its components along day_to_night is a zero"):
        tiny.vectors.condition("day_to_night", ["day_to_night"])
    with pytest.raises(StudioError, match="normalize's norm must be positive"):
        tiny.evaluate("normalize(@day_to_night, 0)")


def test_hspace_edits_check_the_target_and_reach_sdedit_renders(tiny, tmp_path):
    from studio.scoring import score_vector

    tiny.sample("tiny-sd", "a dog", 40, count=2, name="hdog", steps=6)
    tiny.sample("tiny-sd", "a cat", 50, count=2, name="hcat", steps=6)
    hv = tiny.vectors.from_sets(["hdog-1", "hdog-2"], ["hcat-1", "hcat-2"], role="hspace", name="hstyle",
                                attribute={"name": "style", "from": "noto", "to": "twemoji"}, hspace_steps=3)
    with pytest.raises(StudioError, match="hspace steps must be a whole number from 1 to 1000, not 0"):
        tiny.vectors.from_sets(["hdog-1", "hdog-2"], ["hcat-1", "hcat-2"], role="hspace", hspace_steps=0)
    tiny.sample("tiny-gan", "", 1, name="hgan")
    with pytest.raises(StudioError, match="h-space vectors edit diffusion generations; the target is a "
                                          "generation of tiny-gan"):
        tiny.vectors.apply("hgan", "hstyle", [1.0], mode="hspace")
    tiny.sample("tiny-sd", "a dog", 60, name="hwide", steps=6, height=64, width=96)
    with pytest.raises(SpaceMismatch, match="this generation's h-space is hspace"):
        tiny.vectors.apply("hwide", "hstyle", [1.0], mode="hspace")
    # SDEdit renders apply the h-space shift too (they used to drop it): strength 0 and 50 differ
    result = score_vector(tiny, hv.name, [0.0, 50.0], n=2, sdedit=1.0)
    assert result["rows"][1]["pixel_change"] > result["rows"][0]["pixel_change"] + 0.01


def test_bad_vector_definitions_and_discovery_options_are_one_clear_error(tiny, tmp_path):
    from studio.vectorlab import load_definition

    base = {"from": "day", "to": "night"}
    for templates, words in ((["{} and {}"], "exactly one '{}'"), (["x {} {foo}"], "exactly one '{}'"),
                             (["a { b {}"], "malformed")):
        with pytest.raises(StudioError, match=words):
            load_definition({**base, "templates": templates})
    with pytest.raises(StudioError, match="'attribute' must be a mapping"):
        load_definition({**base, "templates": ["{}"], "attribute": "night"})
    bad = tmp_path / "bad.yaml"
    bad.write_text("from: [day\nto: night\n")
    with pytest.raises(StudioError, match=r"^cannot read .*bad.yaml: .*\(line \d+, column \d+\)$"):
        load_definition(bad)
    taken = tiny.library.put(vector(7), "pc1")
    before = len(tiny.library)
    with pytest.raises(StudioError, match=f"the name 'pc1' already refers to {taken[:12]}"):
        tiny.vectors.discover("tiny-gan", "w", k=3, samples=20, prefix="pc")
    with pytest.raises(StudioError, match="k must be a whole number of directions from 1 to 64, not 0"):
        tiny.vectors.discover("tiny-gan", "w", k=0)
    with pytest.raises(StudioError, match=r"model tiny-gan cannot discover directions in text space \(use --space w\): it has no text encoder"):
        tiny.vectors.discover("tiny-gan", "text", k=2, prompts=["a", "b", "c"])
    assert len(tiny.library) == before

"""The studio's handlers without a browser: plain values in, stored objects and files out, errors as gr.Error."""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v3 as iio
import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image

gr = pytest.importorskip("gradio")

from studio import formats  # noqa: E402
from studio.errors import ExpressionError  # noqa: E402
from studio.session import Session  # noqa: E402
from studio.ui.handlers import Studio  # noqa: E402

STEPS = 2  # tiny-sd draws noise at any step count; two keep the module fast


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    session = Session(tmp_path_factory.mktemp("ui-home"))
    yield Studio(session, "tiny-sd")
    session.library.close()


@pytest.fixture(scope="module")
def pair(studio):
    """Two named tiny-sd generations: cat and dog."""
    _, _, ids = studio.generate("tiny-sd", "a cat", 100, 2, STEPS, 7.5, None, "", progress=None)
    studio.name_item(ids[0], "cat", "animal")
    studio.name_item(ids[1], "dog", "animal")
    return ids


class Recorder:
    """Stands in for gr.Progress: remembers what it was told."""

    def __init__(self):
        self.calls = []

    def __call__(self, value, desc=None, total=None, unit="steps"):
        self.calls.append((value, desc))


def test_generate_stores_every_item_and_renders_pngs_that_carry_them(studio):
    before = len(studio.session.library)
    progress = Recorder()
    gallery, info, ids = studio.generate("tiny-sd", "a fox", 7, 3, STEPS, 7.5, None, "fox, test", progress=progress)
    assert len(gallery) == len(info) == len(ids) == 3
    assert len(studio.session.library) == before + 3
    assert [i["seed"] for i in info] == [7, 8, 9] and {i["prompt"] for i in info} == {"a fox"}
    for (path, caption), object_id in zip(gallery, ids):
        gen, recipe = formats.read_png(path)  # the picture carries its generation
        assert gen.id == object_id == recipe["id"] and caption == f"{object_id[:12]} · seed {gen.meta['seed']}"
        assert Path(path).name == f"{object_id[:12]}_seed{gen.meta['seed']}.png"  # what a download is called
        assert studio.session.library.record(object_id).tags == ("fox", "test")
    assert any(isinstance(v, tuple) and v[1] for v, _ in progress.calls)  # fed (done, total) steps


def test_generate_with_a_gan_uses_truncation_and_no_prompt(studio):
    gallery, info, _ = studio.generate("tiny-gan", "ignored", 3, 2, None, None, 0.7, "", progress=None)
    assert len(gallery) == 2
    assert info[0]["settings"]["truncation"] == 0.7 and info[0]["prompt"] == ""


@pytest.mark.parametrize("args, message", [
    (("tiny-sd", "x", None, 1), "seed is empty"),
    (("tiny-sd", "x", 1.5, 1), "seed must be a whole number"),
    (("tiny-sd", "x", 1, 0), "count must be between 1 and 16"),
    (("no-such-model-here", "x", 1, 1), "no-such-model-here"),
    (("tiny-sd", "x", 1, 1, 0), "steps must be between 1 and 1000"),
])
def test_bad_generate_input_is_one_message(studio, args, message):
    with pytest.raises(gr.Error, match=message):
        studio.generate(*args, progress=None)


def test_name_item_names_and_tags(studio, pair):
    out = studio.name_item(pair[0], "kitty", "cute")
    assert "kitty" in out["names"] and "cute" in out["tags"]
    with pytest.raises(gr.Error, match="already refers to"):
        studio.name_item(pair[1], "kitty", "")
    with pytest.raises(gr.Error, match="invalid name"):
        studio.name_item(pair[1], "../etc", "")


def test_interpolate_renders_one_batch_and_writes_gif_and_mp4(studio, pair, monkeypatch):
    calls = []
    render = studio.session.render
    monkeypatch.setattr(studio.session, "render", lambda gens, progress=None: calls.append(len(gens)) or
                        render(gens, progress))
    before = len(studio.session.library)
    strip, gif, mp4, plan = studio.interpolate(["cat", "dog"], 6, "slerp", "linear", 8, progress=None)
    assert calls == [6]  # the whole strip in one render call
    assert len(strip) == len(plan) == 6 and len(studio.session.library) == before  # frames are not stored
    assert plan[0] == {"expr": "slerp(@cat, @dog, t)", "t": 0.0} and plan[-1]["t"] == 1.0
    assert iio.imread(gif, index=None).shape[0] == 6
    assert imageio_ffmpeg.count_frames_and_secs(mp4)[0] == 6
    assert studio.outputs in Path(gif).parents and studio.outputs in Path(mp4).parents
    stored = studio.store_frame(plan, 3, "between")
    assert stored["label"] == "between" and stored["made_by"] == "slerp(@cat, @dog, t)"
    assert studio.session.describe("between")["lineage"]["params"]["t"] == plan[3]["t"]


def test_the_cli_interpolates_to_the_same_frames_as_the_ui(studio, pair, tmp_path):
    from click.testing import CliRunner

    from studio.cli import main

    strip, _, _, plan = studio.interpolate(["cat", "dog"], 5, "slerp", "ease-in-out", 8, progress=None)
    home = studio.session.library.home
    result = CliRunner().invoke(main, ["--home", str(home), "interpolate", "cat", "dog", "--frames", "5",
                                       "--out", str(tmp_path / "cli"), "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    made = json.loads(result.stdout)
    assert [{"expr": f["expr"], "t": f["t"]} for f in made["frames"]] == plan
    for (ui_png, _), frame in zip(strip, made["frames"]):
        assert np.array_equal(np.asarray(Image.open(ui_png)), np.asarray(Image.open(frame["file"])))
        assert formats.read_png(ui_png)[0].id == formats.read_png(frame["file"])[0].id
    assert Path(made["gif"]).is_file() and made["mp4"] is None  # --mp4 is asked for


def test_interpolate_refuses_what_it_cannot_do(studio, pair):
    with pytest.raises(gr.Error, match="between 2 and 16 keyframes"):
        studio.interpolate(["cat"], 4, "slerp", "linear", 8, progress=None)
    with pytest.raises(gr.Error, match="method must be one of slerp, lerp, got 'cubic'"):
        studio.interpolate(["cat", "dog"], 4, "cubic", "linear", 8, progress=None)
    with pytest.raises(gr.Error, match="no stored object"):
        studio.interpolate(["cat", "nobody"], 4, "slerp", "linear", 8, progress=None)


def test_a_bad_expression_shows_the_cores_message(studio, pair):
    source = "slerp(@cat, @dog, 0.5"
    with pytest.raises(ExpressionError) as core:
        studio.session.check_expression(source)
    shown = studio.check_expression(source)
    assert shown.startswith("✗ " + str(core.value)) and core.value.pointer() in shown
    with pytest.raises(gr.Error) as ui:
        studio.render_expression(source, None, progress=None)
    assert ui.value.message == str(core.value)
    assert studio.check_expression("slerp(@cat, @dog, 0.5)").startswith("✓ generation of tiny-sd")


def test_render_expression_stores_and_renders(studio, pair):
    path, info = studio.render_expression("lerp(@cat, @dog, 0.25)", "quarter", progress=None)
    assert formats.read_png(path)[0].id == info["id"] and info["label"] == "quarter"


def test_output_paths_never_leave_the_outputs_folder(studio, pair):
    for bad in ("../x.yaml", "/etc/passwd", "a/b.yaml", "..", ".hidden"):
        with pytest.raises(Exception, match="invalid file name"):
            studio.output_path("recipes", bad)
    with pytest.raises(gr.Error, match="invalid file name"):
        studio.save_recipe("let: {m: '@cat'}\n", "../../escape.yaml")
    saved = studio.save_recipe("let: {m: 'mean(@cat, @dog)'}\n", "mine")
    assert saved == str(studio.outputs / "recipes" / "mine.yaml")
    exported = studio.export("cat", "safetensors")
    assert exported == str(studio.outputs / "exports" / "cat.safetensors")
    with pytest.raises(gr.Error, match="only VAE-space latents"):
        studio.export("cat", "latent")


def test_library_view_details_and_delete(studio, pair):
    gallery, table, gen_ids, other_ids, footer, following = studio.library_view(None, None, "animal", None,
                                                                                 progress=None)
    assert set(pair) <= set(gen_ids) and all(p.endswith(".png") for p, _ in gallery)
    assert footer == f"Objects 1–{len(gen_ids) + len(other_ids)} of {len(gen_ids) + len(other_ids)}, newest first"
    assert following is None
    info, parents, parent_ids, picture = studio.details("quarter")
    assert parent_ids == pair and len(parents) == 2 and picture.endswith(".png")
    assert info["lineage"]["op"] == "lerp"
    victim = studio.render_expression("lerp(@cat, @dog, 0.75)", None, progress=None)[1]["id"]
    assert (studio.thumbs / f"{victim}.png").is_file()
    studio.delete(victim)
    assert not studio.session.library.exists(victim) and not (studio.thumbs / f"{victim}.png").exists()
    with pytest.raises(gr.Error, match="no stored object"):
        studio.details(victim[:16])


def test_import_a_studio_png_gives_its_recipe_back(studio, pair, tmp_path):
    (png,) = studio.session.render_refs(["cat"], tmp_path)
    items, recipe, picture = studio.import_upload(str(png), None, None)
    assert items[0]["id"] == pair[0] == recipe["id"] and recipe["prompt"] == "a cat"
    plain = tmp_path / "plain.png"
    formats.read_png(png)  # sanity: the studio PNG is readable
    from PIL import Image

    Image.new("RGB", (64, 64), "red").save(plain)
    with pytest.raises(gr.Error, match="not made by Latent Studio"):
        studio.import_upload(str(plain), None, None)
    encoded = studio.encode_upload(str(plain), "tiny-sd", "red", progress=None)
    assert encoded["kind"] == "latent" and encoded["space"].startswith("vae[")
    assert studio.export("red", "latent").endswith("red.latent")
    with pytest.raises(gr.Error, match="cannot encode"):
        studio.encode_upload(str(plain), "tiny-gan", None, progress=None)


def test_build_and_apply_a_vector(studio, pair):
    _, _, more = studio.generate("tiny-sd", "a smiling cat", 200, 2, STEPS, 7.5, None, "", progress=None)
    assert studio.roles_of(pair) == ["noise", "text"]
    vec = studio.build_vector(pair, more, "text", "smile", "mean", progress=None)
    assert vec["kind"] == "vector" and vec["space"].startswith("text[")
    applied, sweep, info = studio.apply_vector("smile", ["cat"], 0.5, -1, 1, 5, "latent", "cat_smiles", progress=None)
    assert len(applied) == 1 and info[0]["label"] == "cat_smiles" and len(sweep) == 5
    assert [c for _, c in sweep] == ["s=-1.00", "s=-0.50", "s=+0.00", "s=+0.50", "s=+1.00"]
    assert studio.session.describe("cat_smiles")["lineage"]["params"]["s"] == 0.5
    with pytest.raises(gr.Error, match="pick at least one target"):
        studio.apply_vector("smile", [], 1, -1, 1, 3, "latent", None, progress=None)


def test_run_recipe_renders_every_point(studio):
    text = ("model: tiny-gan\ninputs:\n  a: {seed: 1}\n  b: {seed: 2}\n"
            "renders:\n  - name: walk\n    expr: \"slerp(@a, @b, t)\"\n    sweep: {t: [0, 0.5, 1]}\n")
    assert studio.check_recipe(text).startswith("✓ 2 input(s)")
    gallery, info = studio.run_recipe(text, progress=None)
    assert len(gallery) == info["images"] == 3 and len(info["renders"]["walk"]) == 3
    with pytest.raises(gr.Error, match="not valid YAML"):
        studio.run_recipe("renders: [", progress=None)


def test_score_a_vector_with_the_judge(studio, pair):
    _, _, more = studio.generate("tiny-sd", "a twemoji cat", 300, 2, STEPS, 7.5, None, "", progress=None)
    studio.build_vector(pair, more, "text", "to_twemoji", "mean", "style:noto:twemoji", progress=None)
    plot, strip, rows = studio.score_vector("to_twemoji", "0, 1", 2, 5, progress=None)
    assert Path(plot).is_file() and Path(strip).is_file() and studio.outputs in Path(plot).parents
    assert [r[0] for r in rows] == [0.0, 1.0] and all(0 <= r[1] <= 1 for r in rows)
    with pytest.raises(gr.Error, match="attribute takes NAME:FROM:TO"):
        studio.build_vector(pair, more, "text", None, "mean", "style-noto", progress=None)
    with pytest.raises(gr.Error, match="comma-separated numbers"):
        studio.score_vector("to_twemoji", "zero, one", 2, 5, progress=None)
    _, _, sd_rows = studio.score_vector("to_twemoji", "0", 2, 5, sdedit=0.5, progress=None)
    assert sd_rows[0][3] > 0.01  # SDEdit re-renders the source: the pixels move even at strength 0
    with pytest.raises(gr.Error, match="SDEdit strength must be a number between 0.0 and 1.0"):
        studio.score_vector("to_twemoji", "0", 2, 5, sdedit=1.5, progress=None)
    for psi in (0.5, "0"):
        with pytest.raises(gr.Error, match="truncation is a GAN setting; to_twemoji is scored on tiny-sd"):
            studio.score_vector("to_twemoji", "0", 2, 5, truncation=psi, progress=None)
    with pytest.raises(gr.Error, match="truncation must be a number"):
        studio.score_vector("to_twemoji", "0", 2, 5, truncation="half", progress=None)


def test_load_recipe_reads_text_and_checks_it(studio, tmp_path):
    good = tmp_path / "walk.yaml"
    good.write_text("model: tiny-gan\ninputs:\n  a: {seed: 1}\nrenders:\n  - expr: \"@a\"\n")
    text, verdict = studio.load_recipe(str(good))
    assert text == good.read_text() and verdict.startswith("✓ 1 input(s)")
    bad = tmp_path / "bad.yaml"
    bad.write_text("renders: [")
    assert studio.load_recipe(str(bad))[1].startswith("✗ recipe is not valid YAML")  # loads, to be fixed
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(gr.Error, match="not a text file"):
        studio.load_recipe(str(binary))


def test_prompt_pair_discovery_and_conditioning_from_the_ui(studio):
    import torch

    assert "day_to_night" in studio.definitions()
    fields = studio.definition_fields("day_to_night")
    assert fields[:2] == ("in broad daylight", "at night") and fields[2].count("{}") == 6
    assert fields[3] == "time of day:day:night" and fields[4] == "day_to_night"
    v = studio.prompt_vector("tiny-sd", *fields, progress=None)
    assert v["kind"] == "vector" and v["label"] == "day_to_night" and v["space"].startswith("text[")
    adapter = studio.session.adapter("tiny-sd")
    templates = fields[2].splitlines()
    expected = (adapter.encode_text([t.format("at night") for t in templates]).double()
                - adapter.encode_text([t.format("in broad daylight") for t in templates]).double()).mean(0).float()
    assert torch.allclose(studio.session.get("day_to_night").tensor, expected, atol=1e-6)
    with pytest.raises(gr.Error, match="must hold exactly one"):
        studio.prompt_vector("tiny-sd", "a", "b", "{} and {}", "", None, progress=None)
    with pytest.raises(gr.Error, match="unknown definition 'nope'"):
        studio.definition_fields("nope")

    rows = studio.discover_vectors("tiny-gan", "w", 3, "ui_pc", "", progress=None)
    assert [r[0] for r in rows] == ["ui_pc0", "ui_pc1", "ui_pc2"] and rows[0][2] >= rows[1][2] >= rows[2][2] > 0
    text_rows = studio.discover_vectors("tiny-sd", "text", 2, None, "", progress=None)  # the emoji prompts
    assert len(text_rows) == 2 and studio.session.get(text_rows[0][1]).meta["samples"] == 36
    with pytest.raises(gr.Error, match="has no text encoder"):
        studio.discover_vectors("tiny-gan", "text", 2, None, "a\nb\nc", progress=None)

    cond = studio.condition_vector("ui_pc0", ["ui_pc1"], "ui_pc0_only")
    assert cond["label"] == "ui_pc0_only" and len(cond["cosine_before"]) == 1
    c, other = studio.session.get("ui_pc0_only"), studio.session.get("ui_pc1")
    assert abs(torch.dot(c.tensor.double(), other.tensor.double()).item()) < 1e-6 * other.tensor.norm().item()
    with pytest.raises(gr.Error, match="zero vector"):
        studio.condition_vector("ui_pc0", ["ui_pc0"], None)


def test_invert_an_uploaded_picture_then_edit_it(studio, tmp_path):
    import numpy as np
    from PIL import Image

    picture = tmp_path / "flat.png"
    Image.fromarray(np.full((64, 64, 3), 180, np.uint8)).save(picture)
    info, rendered, line = studio.invert_upload(str(picture), "tiny-sd", "", 4, "inverted", progress=None)
    assert info["label"] == "inverted" and info["kind"] == "generation" and Path(rendered).is_file()
    gen, _ = formats.read_png(rendered)
    assert gen.id == info["id"] and gen.lineage.params["file"] == "flat.png"
    assert line.startswith("Stored **inverted**: it re-renders the picture at") and " dB PSNR" in line
    with pytest.raises(gr.Error, match="upload a picture first"):
        studio.invert_upload(None, "tiny-sd", progress=None)
    with pytest.raises(gr.Error, match="the name 'inverted' already refers to"):
        studio.invert_upload(str(picture), "tiny-sd", "", 4, "inverted", progress=None)


def test_bad_values_from_api_clients_are_one_message_and_change_nothing(studio, pair):
    before = studio.session.library.record(pair[0])
    with pytest.raises(gr.Error, match="invalid tag 'bad/tag'"):
        studio.name_item(pair[0], "renamed_first", "good,bad/tag")
    after = studio.session.library.record(pair[0])
    assert (after.names, after.tags) == (before.names, before.tags)  # neither the name nor 'good' was attached
    assert studio.check_expression(5) == "✗ expected text, got int"
    assert studio.check_recipe(["renders"]) == "✗ expected text, got list"
    with pytest.raises(gr.Error, match="model must be text, got int"):
        studio.library_view(5, None, None, None, progress=None)
    with pytest.raises(gr.Error, match="the expression must be text, got int"):
        studio.render_expression(42, progress=None)
    with pytest.raises(gr.Error, match="no recipe file at missing.yaml"):
        studio.load_recipe("/nowhere/missing.yaml")


def test_applying_to_several_targets_checks_every_name_first(studio, pair):
    _, _, more = studio.generate("tiny-sd", "a calm cat", 400, 2, STEPS, 7.5, None, "", progress=None)
    studio.build_vector(pair, more, "text", "calm", "mean", progress=None)
    studio.name_item(more[0], "calmed-2")  # the second target's result name is taken
    before = len(studio.session.library)
    with pytest.raises(gr.Error, match="the name 'calmed-2' already refers to"):
        studio.apply_vector("calm", [pair[0], pair[1]], 0.5, -1, 1, 0, "latent", "calmed", progress=None)
    assert len(studio.session.library) == before


def test_model_info_labels_guidance_by_family_or_says_it_does_not_apply(studio):
    assert studio.model_info("tiny-sd", progress=None)["guidance_label"] == "Guidance"
    dev = studio.model_info("tiny-flux", progress=None)
    assert dev["guidance_label"] == "Distilled guidance" and "guidance" in dev["defaults"]
    schnell = studio.model_info("tiny-flux-schnell", progress=None)
    assert schnell["guidance_label"] is None and "guidance" not in schnell["defaults"]
    assert studio.model_info("tiny-gan", progress=None)["guidance_label"] is None


def test_generate_drops_guidance_for_a_model_that_takes_none(studio):
    # the UI's hidden Guidance slider still sends its value; Flux.1 schnell would refuse it
    _, info, ids = studio.generate("tiny-flux-schnell", "a cat", 1, 1, STEPS, 7, None, "", progress=None)
    assert "guidance" not in info[0]["settings"]
    assert "guidance" not in studio.session.get(ids[0]).settings
    _, dev, _ = studio.generate("tiny-flux", "a cat", 1, 1, STEPS, 2.5, None, "", progress=None)
    assert dev[0]["settings"]["guidance"] == 2.5


def test_progress_updates_are_spaced_but_the_first_and_last_steps_always_go_out(monkeypatch):
    from studio.ui import handlers

    clock = iter([0.0, 0.01, 0.02, 0.25, 0.26, 0.3])  # seconds at each of six steps
    monkeypatch.setattr(handlers.time, "monotonic", lambda: next(clock))
    sent = []
    report = handlers.step_callback(lambda value, desc, unit: sent.append(value), "rendering")
    for done in range(1, 7):
        report(done, 6)
    assert sent == [(1, 6), (4, 6), (6, 6)]  # step 4 is the first 0.2 s after step 1


def test_library_pages_go_on_by_cursor_and_say_where_they_are(studio, monkeypatch):
    from conftest import noise_latent
    from studio.ui import handlers

    monkeypatch.setattr(handlers, "LIBRARY_PAGE", 4)
    lib = studio.session.library
    ids = [lib.put(noise_latent(i), tags=["paged"]) for i in range(10)]
    newest_first = [r.id for r in lib.ls(tag="paged")]
    seen, after, page = [], None, 1
    while True:
        _, table, _, other_ids, footer, after = studio.library_view(None, None, "paged", None, after, page, progress=None)
        seen += other_ids
        first = (page - 1) * 4 + 1
        assert footer == f"Objects {first}–{first + len(other_ids) - 1} of 10, newest first"
        if after is None:
            break
        page += 1
    assert seen == newest_first and sorted(seen) == sorted(ids) and page == 3
    *_, footer, after = studio.library_view(None, None, "paged", "no such text", progress=None)
    assert footer == "Nothing matches these filters" and after is None
    with pytest.raises(gr.Error, match="invalid cursor"):
        studio.library_view(None, None, "paged", None, "nonsense", 2, progress=None)


def test_generate_draws_the_class_picked_for_a_conditional_gan(studio):
    from studio.ui.handlers import BY_SEED

    network = str(Path(__file__).parent / "fixtures" / "stylegan" / "sg2ada_cond.pkl")
    info = studio.model_info(network, progress=None)
    assert info["classes"] == ["0", "1", "2", "3"] and info["family"] == "gan"
    _, made, _ = studio.generate(network, None, 3, 2, None, None, 1.0, "", "1", progress=None)
    assert [m["settings"]["class"] for m in made] == [1, 1]
    _, chosen, _ = studio.generate(network, None, 3, 1, None, None, 1.0, "", BY_SEED, progress=None)
    assert chosen[0]["settings"]["class"] in range(4)
    emoji = studio.model_info("emoji-gan", progress=None)["classes"]
    assert len(emoji) == 18 and emoji[6] == "Food & Drink · noto"
    _, food, _ = studio.generate("emoji-gan", None, 1, 1, None, None, 1.0, "", emoji[7], progress=None)
    assert (food[0]["settings"]["category"], food[0]["settings"]["style"]) == ("Food & Drink", "twemoji")
    with pytest.raises(gr.Error, match="unknown class '9' for model"):
        studio.generate(network, None, 3, 1, None, None, 1.0, "", "9", progress=None)

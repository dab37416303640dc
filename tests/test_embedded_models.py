"""The embedded models shipped in pipelines/embedded/: they load by name, and give the recorded values.

The constants below were recorded from the shipped weights; a retrained model needs them re-recorded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from pipelines.registry import EMBEDDED, load_adapter
from studio.errors import StudioError

# ---------------------------------------------------------------------------------------------- emoji-gan

EMOJI_GAN = EMBEDDED / "emoji-gan"
# Recorded from the shipped emoji-gan (seed 0, CPU fp32).
GAN_SEED0_CLASS = ("Objects", "twemoji")  # seed 0 with no prompt: the seed's own choice
GAN_SEED0_W = [0.6274, 1.4549, 0.5755]  # w[:3] of sample([0], space="w")
GAN_SEED0_PIXELS = {
    (0, 0): (255, 254, 254),
    (16, 16): (50, 49, 59),
    (10, 20): (121, 78, 61),
    (22, 18): (67, 105, 142),
    (14, 24): (205, 136, 105),
}  # (x, y): RGB


@pytest.fixture(scope="module")
def emoji_gan():
    return load_adapter("emoji-gan", device="cpu")


def test_emoji_gan_folder_is_complete_and_small():
    names = {p.name for p in EMOJI_GAN.iterdir()}
    assert {"config.json", "model.safetensors", "README.md", "samples.png"} <= names
    assert sum(p.stat().st_size for p in EMOJI_GAN.iterdir()) <= 25 * 2**20


def test_emoji_gan_seed0_recorded_values(emoji_gan):
    gen = emoji_gan.sample([0])[0]
    z = gen.roles["z"].tensor
    assert torch.equal(z, torch.randn(emoji_gan.network.z_dim, generator=torch.Generator().manual_seed(0)))
    assert z[:3].tolist() == pytest.approx([-1.1258, -1.1524, -0.2506], abs=1e-4)
    assert (gen.settings["category"], gen.settings["style"]) == GAN_SEED0_CLASS
    w = emoji_gan.sample([0], space="w")[0]
    assert w.settings["category"] == GAN_SEED0_CLASS[0]
    assert w.roles["w"].tensor[:3].tolist() == pytest.approx(GAN_SEED0_W, abs=1e-4)
    image = emoji_gan.render([gen])[0]
    assert image.size == (32, 32)
    for (x, y), rgb in GAN_SEED0_PIXELS.items():
        assert np.abs(np.array(image.getpixel((x, y)), int) - rgb).max() <= 2, (x, y)


def test_emoji_gan_prompt_and_settings_choose_the_class(emoji_gan):
    def chosen(prompt="", **settings):
        g = emoji_gan.sample([5], [prompt], **settings)[0]
        return g.settings["category"], g.settings["style"]

    assert chosen("smiling cat face")[0] == "Smileys & Emotion"
    assert chosen("flag of france, twemoji") == ("Flags", "twemoji")
    assert chosen("a red apple in google style") == ("Food & Drink", "noto")
    assert chosen("pizza", category="Animals & Nature", style="twemoji") == ("Animals & Nature", "twemoji")
    assert chosen("", category="flags", style="noto") == ("Flags", "noto")  # case and short names
    with pytest.raises(StudioError, match="unknown category"):
        emoji_gan.sample([1], category="Dinosaurs")
    with pytest.raises(StudioError, match="unknown style"):
        emoji_gan.sample([1], style="openmoji")
    # seeds without a prompt spread over the classes
    classes = {(g.settings["category"], g.settings["style"]) for g in emoji_gan.sample(list(range(40)))}
    assert len(classes) >= 10


def test_emoji_gan_w_space_bakes_the_class_in(emoji_gan):
    z_gen = emoji_gan.sample([4], ["pizza"], truncation=1.0)[0]
    w_gen = emoji_gan.sample([4], ["pizza"], truncation=1.0, space="w")[0]
    assert w_gen.spaces == {"w": emoji_gan.spaces()["w"]}
    a, b = (np.asarray(im, int) for im in emoji_gan.render([z_gen, w_gen]))
    assert np.abs(a - b).max() <= 1  # w = mapping(z, class): the same picture
    other = emoji_gan.sample([4], ["flag"], truncation=1.0)[0]
    assert np.abs(np.asarray(emoji_gan.render([other])[0], int) - a).mean() > 5  # the class matters


def test_emoji_gan_cli_sample(tmp_path):
    from studio.cli import main

    out = tmp_path / "out"
    result = CliRunner().invoke(
        main,
        [
            "--home",
            str(tmp_path / "home"),
            "sample",
            "--model",
            "emoji-gan",
            "--prompt",
            "smiling cat face",
            "--seed",
            "3",
            "--out",
            str(out),
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    pngs = list(Path(out).glob("*.png"))
    assert len(pngs) == 1 and Image.open(pngs[0]).size == (32, 32)


# ---------------------------------------------------------------------------------------------- emoji-diffusion

EMOJI_DIFFUSION = EMBEDDED / "emoji-diffusion"
DIFF_PROMPT = "grinning face, smileys and emotion, twemoji style"
# Recorded from the shipped emoji-diffusion (seed 0, CPU fp32): text latent [L, D] at (token, channel) ...
DIFF_TEXT = {(0, 0): 0.10522, (1, 5): 0.55996, (10, 100): -0.17068, (31, 17): 0.13097}
# ... and (x, y) -> RGB of the 4-step render of seed 0 with the model's default guidance.
DIFF_PIXELS_4STEPS = {(0, 0): (254, 251, 245), (32, 32): (255, 209, 64), (20, 40): (249, 178, 46), (45, 25): (151, 71, 0)}


@pytest.fixture(scope="module")
def emoji_diffusion():
    return load_adapter("emoji-diffusion", device="cpu")


def test_emoji_diffusion_folder_is_complete_and_small():
    names = {p.name for p in EMOJI_DIFFUSION.iterdir()}
    assert {"model_index.json", "studio.json", "README.md", "samples.png"} <= names
    assert {"vae", "unet", "text_encoder", "tokenizer", "scheduler"} <= names
    assert sum(p.stat().st_size for p in EMOJI_DIFFUSION.rglob("*") if p.is_file()) <= 25 * 2**20


def test_emoji_diffusion_defaults_and_spaces(emoji_diffusion):
    import json

    stored = json.loads((EMOJI_DIFFUSION / "studio.json").read_text())
    d = emoji_diffusion.default_settings()
    assert (d["steps"], d["guidance"]) == (stored["steps"], stored["guidance"]) == (20, d["guidance"])
    assert (d["height"], d["width"], d["scheduler"]) == (64, 64, "DDIMScheduler")
    pipe = emoji_diffusion.pipe
    # stored as fp16, run as fp32 on the CPU
    assert pipe.unet.dtype == pipe.vae.dtype == pipe.text_encoder.dtype == torch.float32
    spaces = emoji_diffusion.spaces()
    assert spaces["noise"].shape == (4, 16, 16) and spaces["text"].shape == (32, 128)


def test_emoji_diffusion_tokenizer_knows_the_caption_words(emoji_diffusion):
    tok = emoji_diffusion.pipe.tokenizer
    caption = "woman in motorized wheelchair, medium-dark skin tone, people and body, noto style"
    pieces = tok.tokenize(caption)
    assert pieces[:4] == ["woman</w>", "in</w>", "motorized</w>", "wheelchair</w>"]
    assert len(tok(caption).input_ids) == len(pieces) + 2 <= tok.model_max_length == 32
    assert len(tok.tokenize("xylophonic")) > 1  # a word no caption has falls apart into pieces


def test_emoji_diffusion_seed0_recorded_values(emoji_diffusion):
    gen = emoji_diffusion.sample([0], [DIFF_PROMPT])[0]
    noise, text = gen.roles["noise"].tensor, gen.roles["text"].tensor
    assert torch.equal(noise, torch.randn((4, 16, 16), generator=torch.Generator().manual_seed(0)))
    assert text.shape == (32, 128)
    for (i, j), value in DIFF_TEXT.items():
        assert text[i, j].item() == pytest.approx(value, abs=1e-4), (i, j)
    gen.settings["steps"] = 4
    image = emoji_diffusion.render([gen])[0]
    assert image.size == (64, 64)
    for (x, y), rgb in DIFF_PIXELS_4STEPS.items():
        assert np.abs(np.array(image.getpixel((x, y)), int) - rgb).max() <= 2, (x, y)


def test_emoji_diffusion_is_the_default_model_of_the_cli(tmp_path):
    import json

    from studio.cli import main
    from studio.formats import PNG_KEY

    out = tmp_path / "out"
    result = CliRunner().invoke(
        main,
        [
            "--home",
            str(tmp_path / "home"),
            "sample",
            "--prompt",
            "smiling cat face",
            "--seed",
            "3",
            "--steps",
            "4",
            "--out",
            str(out),
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    pngs = list(Path(out).glob("*.png"))
    assert len(pngs) == 1 and Image.open(pngs[0]).size == (64, 64)
    recipe = json.loads(Image.open(pngs[0]).info[PNG_KEY])
    assert recipe["model"] == "emoji-diffusion" and recipe["seed"] == 3


def test_emoji_diffusion_studio_json_is_checked(tmp_path):
    from pipelines.diffusion import read_studio_defaults

    assert read_studio_defaults(tmp_path) == {}
    (tmp_path / "studio.json").write_text('{"steps": 12, "guidance": 3, "other": 1}')
    assert read_studio_defaults(tmp_path) == {"steps": 12, "guidance": 3.0}
    (tmp_path / "studio.json").write_text('{"guidance": "high"}')
    with pytest.raises(StudioError, match="guidance"):
        read_studio_defaults(tmp_path)
    (tmp_path / "studio.json").write_text("{not json")
    with pytest.raises(StudioError, match="studio.json"):
        read_studio_defaults(tmp_path)


def test_emoji_gan_cli_category_and_style_options(tmp_path):
    from studio.cli import main

    result = CliRunner().invoke(main, ["--home", str(tmp_path / "home"), "sample", "--model", "emoji-gan", "--seed", "2",
                                       "--category", "flags", "--style", "noto", "--name", "f"])
    assert result.exit_code == 0, result.output
    show = CliRunner().invoke(main, ["--home", str(tmp_path / "home"), "latents", "show", "f", "--json"])
    import json

    settings = json.loads(show.stdout)["settings"]
    assert (settings["category"], settings["style"]) == ("Flags", "noto")
    bad = CliRunner().invoke(main, ["--home", str(tmp_path / "home"), "sample", "--model", "emoji-gan",
                                    "--category", "dinosaurs"])
    assert bad.exit_code == 2 and "unknown category" in bad.stderr


def test_scoring_a_gan_category_vector_starts_from_the_source_category_at_the_truncation_asked(tmp_path):
    import json

    from studio.cli import main
    from studio.scoring import source_generations
    from studio.session import Session

    s = Session(tmp_path / "home")
    adapter = s.adapter("emoji-gan")
    sets = {cat: [s.library.put(g) for g in adapter.sample(list(range(4)), None, space="w", category=cat)]
            for cat in ("Smileys & Emotion", "Animals & Nature")}
    attribute = {"name": "category", "from": "Smileys & Emotion", "to": "Animals & Nature"}
    s.vectors.from_sets(sets["Smileys & Emotion"], sets["Animals & Nature"], "mean", "w", "to_animals", attribute)
    sources = source_generations(s, "emoji-gan", attribute, 6, 1000, space="w", settings={"truncation": 0.5})
    assert {g.settings["category"] for g in sources} == {"Smileys & Emotion"}
    assert {g.settings["truncation"] for g in sources} == {0.5}
    run = CliRunner().invoke(main, ["--home", str(tmp_path / "home"), "vectors", "score", "to_animals", "-n", "3",
                                    "--strengths", "0,2", "--truncation", "0.5", "--out", str(tmp_path / "score"),
                                    "--json"])
    assert run.exit_code == 0, run.output
    result = json.loads(run.stdout)
    assert result["settings"] == {"truncation": 0.5} and result["rows"][0]["preservation"] == 1.0
    assert result["rows"][1]["pixel_change"] > 0.01
    bad = CliRunner().invoke(main, ["--home", str(tmp_path / "home"), "vectors", "score", "to_animals", "-n", "2",
                                    "--truncation", "7", "--out", str(tmp_path / "score")])
    assert bad.exit_code != 0 and "truncation" in bad.output and "Traceback" not in bad.output
    s.vectors.from_prompts({"from": "noto", "to": "twemoji", "templates": ["cat, {}"],
                            "attribute": {"name": "style", "from": "noto", "to": "twemoji"}}, "tiny-sd", name="sd_style")
    wrong = CliRunner().invoke(main, ["--home", str(tmp_path / "home"), "vectors", "score", "sd_style", "-n", "2",
                                      "--truncation", "0.5", "--out", str(tmp_path / "score")])
    assert wrong.exit_code == 2 and "truncation is a GAN setting; sd_style is scored on tiny-sd, a diffusion" in wrong.stderr

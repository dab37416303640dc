"""What a new user meets in the first hour: typos, the captions' own words, requests that run but
surprise (an empty prompt, a size far from the model's), pictures that are not square, sweep files."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from studio.cli import main, sweep_filenames
from studio.errors import StudioError
from studio.session import Session, Stored, StudioWarning


def studio(home, *args, code=0):
    result = CliRunner().invoke(main, ["--home", str(home), *args], catch_exceptions=False)
    assert result.exit_code == code, (result.exit_code, result.output)
    return result


@pytest.mark.parametrize("typo, meant", [
    ("emoji-difusion", "emoji-diffusion"), ("emojigan", "emoji-gan"), ("Tiny-SD", "tiny-sd"), ("tiny_sdxl", "tiny-sdxl"),
])
def test_a_typo_of_a_built_in_model_suggests_it(tmp_path, typo, meant):
    result = studio(tmp_path, "sample", "--model", typo, "--seed", "1", code=2)
    assert result.stderr == (f"error: unknown model {typo!r}; did you mean {meant!r}? "
                             f"('studio models' lists the built-in ones)\n")
    assert not (tmp_path / "objects").exists() or not any((tmp_path / "objects").rglob("*.safetensors"))


def test_a_hub_id_is_never_taken_for_a_typo(tmp_path):
    result = studio(tmp_path, "sample", "--model", "someone/emoji-difusion", "--seed", "1", code=2)
    assert "did you mean" not in result.stderr and "not available offline" in result.stderr


@pytest.mark.parametrize("written", ["food and drink", "Food & Drink", "FOOD-AND-DRINK", "food"])
def test_emoji_gan_takes_a_category_as_the_captions_write_it(tmp_path, written):
    out = studio(tmp_path, "sample", "--model", "emoji-gan", "--category", written, "--seed", "1", "--json")
    object_id = json.loads(out.stdout)[0]["id"]
    info = json.loads(studio(tmp_path, "latents", "show", object_id, "--json").stdout)
    assert info["settings"]["category"] == "Food & Drink"


def test_an_unknown_category_still_lists_the_names(tmp_path):
    result = studio(tmp_path, "sample", "--model", "emoji-gan", "--category", "and", "--seed", "1", code=2)
    assert result.stderr.startswith("error: unknown category 'and'; choose one of: Smileys & Emotion")


def test_an_empty_prompt_is_drawn_with_a_warning(tmp_path):
    result = studio(tmp_path, "sample", "--model", "tiny-sd", "--prompt", " ", "--steps", "1", "--seed", "1")
    assert result.stderr == ("warning: the prompt is empty: tiny-sd draws without text conditioning "
                             "(whatever it has learnt most often)\n")
    assert len(result.stdout.splitlines()) == 1  # stored all the same
    quiet = studio(tmp_path, "sample", "--model", "tiny-gan", "--prompt", "", "--seed", "1")
    assert quiet.stderr == ""  # a GAN has no text to miss


def test_a_size_far_from_the_models_is_drawn_with_a_warning(tmp_path):
    result = studio(tmp_path, "sample", "--model", "tiny-sd", "--prompt", "a cat", "--steps", "1", "--seed", "1",
                    "--size", "256")
    assert result.stderr == ("warning: tiny-sd was trained at 64x64 px; 256x256 px is far from it: expect repeated "
                             "or broken shapes, and 16 times the work per step\n")
    near = studio(tmp_path, "sample", "--model", "tiny-sd", "--prompt", "a cat", "--steps", "1", "--seed", "1",
                  "--size", "96")
    assert near.stderr == ""


def test_python_callers_get_the_advice_as_a_warning(tmp_path):
    session = Session(tmp_path)
    with pytest.warns(StudioWarning, match="the prompt is empty"):
        session.sample("tiny-sd", "", seed=1, steps=1)
    seen = []
    Session(tmp_path, notify=seen.append).sample("tiny-sd", "", seed=2, steps=1)
    assert len(seen) == 1 and seen[0].startswith("the prompt is empty")


def strip_picture(path, size=(96, 32)):
    """Red left third, green middle, blue right third."""
    a = np.zeros((size[1], size[0], 3), np.uint8)
    third = size[0] // 3
    a[:, :third, 0] = 255
    a[:, third:2 * third, 1] = 255
    a[:, 2 * third:, 2] = 255
    Image.fromarray(a).save(path)


def test_a_picture_that_is_not_square_is_cropped_or_padded_and_said_so(tmp_path):
    strip_picture(tmp_path / "strip.png")
    seen = []
    session = Session(tmp_path / "home", notify=seen.append)
    cropped = session._square(Image.open(tmp_path / "strip.png").convert("RGB"), tmp_path / "strip.png", "crop")
    assert cropped.size == (32, 32) and np.asarray(cropped)[:, :, 1].min() == 255  # the green middle only
    padded = session._square(Image.open(tmp_path / "strip.png").convert("RGB"), tmp_path / "strip.png", "pad")
    assert padded.size == (96, 96)
    assert tuple(np.asarray(padded)[0, 0]) == (255, 255, 255) and tuple(np.asarray(padded)[48, 0]) == (255, 0, 0)
    assert seen == ["'strip.png' is 96x32 px, not square: centre-cropped to 32x32 (fit=pad to pad it instead)",
                    "'strip.png' is 96x32 px, not square: padded to 96x96 (fit=crop to crop it instead)"]


def test_invert_says_how_it_squared_the_picture_and_scores_what_it_inverted(tmp_path):
    strip_picture(tmp_path / "strip.png")
    home = tmp_path / "home"
    result = studio(home, "invert", str(tmp_path / "strip.png"), "--model", "tiny-gan", "--steps", "3",
                    "--fit", "pad", "--out", str(tmp_path / "out"))
    lines = result.stderr.splitlines()
    assert lines[0] == "warning: 'strip.png' is 96x32 px, not square: padded to 96x96 (fit=crop to crop it instead)"
    assert lines[-1].startswith("reconstruction PSNR ") and lines[-1].endswith(" dB")
    bad = studio(home, "invert", str(tmp_path / "strip.png"), "--model", "tiny-gan", "--fit", "stretch", code=2)
    assert "error:" in bad.stderr and "stretch" in bad.stderr
    with pytest.raises(StudioError, match="fit must be one of crop, pad, got 'stretch'"):
        Session(home).invert(tmp_path / "strip.png", "tiny-gan", fit="stretch")


def test_reconstruction_psnr_compares_with_the_squared_picture(tmp_path):
    strip_picture(tmp_path / "strip.png")
    Image.new("RGB", (16, 16), (0, 255, 0)).save(tmp_path / "green.png")  # the crop's content, smaller
    session = Session(tmp_path / "home")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scoring says nothing about squaring a second time
        assert session.reconstruction_psnr(tmp_path / "strip.png", tmp_path / "green.png", "crop") == float("inf")
        assert session.reconstruction_psnr(tmp_path / "strip.png", tmp_path / "green.png", "pad") < 10


def test_sweep_files_sort_by_strength_and_say_it():
    items = [Stored(f"{k:064x}", None, None) for k in range(4)]
    assert sweep_filenames(items, "cat", "noto_to_twemoji", [-1, 0, 0.5, 10]) == [
        "cat+noto_to_twemoji-01-s-1.png", "cat+noto_to_twemoji-02-s0.png", "cat+noto_to_twemoji-03-s0.5.png",
        "cat+noto_to_twemoji-04-s10.png"]
    named = [Stored(f"{k:064x}", f"night-{k + 1}", None) for k in range(2)]
    assert sweep_filenames(named, "cat", "v", [0, 1]) == ["night-1.png", "night-2.png"]
    assert sweep_filenames(items[:2], "a b/../c", "v", [0, 1])[0] == "a_b_.._c+v-01-s0.png"

"""The `studio` command line, end to end on the tiny models, as a user would run it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import load_file, save_file

from studio.cli import main


def studio(home, *args, code=0):
    """Run one CLI command in-process; check its exit code; return the result."""
    result = CliRunner().invoke(main, ["--home", str(home), *args], catch_exceptions=False)
    assert result.exit_code == code, (result.exit_code, result.output, result.stderr)
    return result


def library_state(home: Path):
    files = sorted(str(p.relative_to(home)) for p in (home / "objects").rglob("*") if p.is_file())
    rows = [json.loads(line) for line in studio(home, "latents", "ls", "--all", "--json").stdout.splitlines()]
    return files, rows


@pytest.mark.parametrize("model, extra", [("tiny-sd", ["--prompt", "a cat", "--steps", "2"]), ("tiny-gan", [])])
def test_sample_slerp_render_and_lineage(tmp_path, model, extra):
    home = tmp_path / "home"
    out_a = studio(home, "sample", "--model", model, *extra, "--seed", "1", "--name", "a", "--json")
    a_id = json.loads(out_a.stdout)[0]["id"]
    studio(home, "sample", "--model", model, *extra, "--seed", "2", "--name", "b")
    png = tmp_path / "mid.png"
    studio(home, "eval", "slerp(@a, @b, 0.5)", "--name", "mid", "--out", str(png))
    image = Image.open(png)
    assert image.format == "PNG" and image.mode == "RGB"
    assert image.size == ((64, 64) if model == "tiny-sd" else (32, 32))
    info = json.loads(studio(home, "latents", "show", "mid", "--json").stdout)
    assert info["lineage"]["op"] == "slerp" and info["lineage"]["params"]["t"] == 0.5
    assert [p["names"] for p in info["lineage"]["parents"]] == [["a"], ["b"]]
    assert info["lineage"]["parents"][0]["id"] == a_id
    # the PNG carries its generation: importing it gives back the same stored object
    recipe = json.loads(Image.open(png).text["latent-studio"])
    assert recipe["id"] == info["id"] and recipe["lineage"]["op"] == "slerp"
    back = json.loads(studio(home, "latents", "import", str(png), "--json").stdout)
    assert back[0]["id"] == info["id"]


def test_a_scheduler_that_fits_is_a_stored_setting(tmp_path):
    home = tmp_path / "home"
    out = studio(home, "sample", "--model", "tiny-sd", "--prompt", "a cat", "--steps", "2", "--seed", "4",
                 "--scheduler", "EulerAncestralDiscreteScheduler", "--name", "anc", "--json")
    assert json.loads(out.stdout)[0]["name"] == "anc"
    info = json.loads(studio(home, "latents", "show", "anc", "--json").stdout)
    assert info["settings"]["scheduler"] == "EulerAncestralDiscreteScheduler"


def test_negative_prompt_is_a_stored_setting_that_changes_the_picture(tmp_path):
    home = tmp_path / "home"
    common = ["sample", "--model", "tiny-sd", "--prompt", "a cat", "--steps", "2", "--seed", "4"]
    studio(home, *common, "--name", "plain", "--out", str(tmp_path / "out"))
    studio(home, *common, "--negative", "a dog", "--name", "neg", "--out", str(tmp_path / "out"))
    info = json.loads(studio(home, "latents", "show", "neg", "--json").stdout)
    assert info["settings"]["negative_prompt"] == "a dog"
    plain, neg = (np.asarray(Image.open(tmp_path / "out" / f"{n}.png"), int) for n in ("plain", "neg"))
    assert np.abs(plain - neg).mean() > 0.5


def test_same_seed_gives_identical_bytes_and_pixels(tmp_path):
    ids, tensors = [], []
    for run in ("one", "two"):
        home = tmp_path / run
        out = studio(home, "sample", "--model", "tiny-sd", "--prompt", "a cat", "--seed", "7", "--steps", "2",
                     "--json")
        object_id = json.loads(out.stdout)[0]["id"]
        ids.append(object_id)
        tensors.append(load_file(home / "objects" / object_id[:2] / f"{object_id}.safetensors"))
    assert ids[0] == ids[1]
    assert tensors[0].keys() == tensors[1].keys() == {"role.noise", "role.text"}
    for key in tensors[0]:
        assert tensors[0][key].numpy().tobytes() == tensors[1][key].numpy().tobytes()
    expected = torch.randn((4, 8, 8), generator=torch.Generator().manual_seed(7))
    assert torch.equal(tensors[0]["role.noise"], expected)  # stored unscaled, drawn on a CPU generator
    home = tmp_path / "one"
    first = studio(home, "render", ids[0][:8], "--out", str(tmp_path / "r1"), "--json")
    second = studio(home, "render", ids[0][:8], "--out", str(tmp_path / "r2"), "--json")
    p1, p2 = json.loads(first.stdout)[0], json.loads(second.stdout)[0]
    assert np.array_equal(np.asarray(Image.open(p1)), np.asarray(Image.open(p2)))


@pytest.fixture(scope="module")
def mixed_home(tmp_path_factory):
    """A library with a tiny-sd generation `a` and a tiny-gan generation `g`."""
    home = tmp_path_factory.mktemp("mixed")
    studio(home, "sample", "--model", "tiny-sd", "--prompt", "a cat", "--seed", "1", "--name", "a")
    studio(home, "sample", "--model", "tiny-gan", "--seed", "1", "--name", "g")
    return home


def nan_file(tmp_path):
    from studio import formats
    from studio.objects import Latent
    from studio.space import Space
    data = formats.to_bytes(Latent(torch.zeros(4), Space("gan-z", "x-1", (4,))))
    header = json.loads(formats.read_header(data)["latent-studio"])
    header.pop("id")
    path = tmp_path / "nan.safetensors"
    save_file({"tensor": torch.tensor([0.0, float("nan"), 1.0, 2.0])}, path,
              metadata={"latent-studio": json.dumps(header)})
    return path


def truncated_file(tmp_path):
    from studio import formats
    from studio.objects import Latent
    from studio.space import Space
    data = formats.to_bytes(Latent(torch.ones(64), Space("gan-z", "x-1", (64,))))
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[: len(data) // 2])
    return path


def png_file(tmp_path):
    path = tmp_path / "picture.png"
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(path)
    return path


def jpg_file(tmp_path):
    path = tmp_path / "photo.jpg"
    Image.fromarray(np.full((8, 8, 3), 30, np.uint8)).save(path)
    return path


def file_as_folder(tmp_path):
    (tmp_path / "afile").write_text("a file, not a folder")
    return tmp_path / "afile" / "sub"


def text_file(tmp_path):
    path = tmp_path / "notes.safetensors"
    path.write_text("these are not tensors\n")
    return path


@pytest.mark.parametrize("args, words", [
    (["eval", "@a + @g"], ["noise[vae-", "gan-z[stylegan-", "two different spaces"]),
    (["eval", "@a + @g", "--name", "bad"], ["two different spaces"]),
    (["eval", "slerp(@a, @g"], ["expected ')'", "position 13"]),
    (["eval", "@a + @nobody"], ["no stored object", "'nobody'", "position 6"]),
    (["sample", "--model", "tiny-gan", "--seed", "3", "--name", "../../etc/x"], ["invalid name '../../etc/x'"]),
    (["eval", "@a", "--name", "../../etc/x"], ["invalid name"]),
    (["latents", "import", "NAN", "--name", "n"], ["NaN or Inf"]),
    (["latents", "import", "CUT"], ["truncated"]),
    (["latents", "import", "TEXT"], ["not a safetensors file"]),
    (["latents", "show", "ghost"], ["no stored object"]),
    (["render", "@ghost"], ["no stored object"]),
    (["sample", "--model", "stabilityai/sd-turbo"], ["stabilityai/sd-turbo", "offline"]),
    (["sample", "--model", "tiny-sd", "--size", "30"], ["multiple of 8"]),
    (["sample", "--model", "tiny-gan", "-n", "0"], ["count must be between"]),
    (["sample", "--model", "tiny-gan", "--negative", "noto style"], ["unknown setting(s) negative_prompt for a GAN"]),
    (["sample", "--model", "tiny-lcm", "--scheduler", "EulerDiscreteScheduler"],
     ["unknown scheduler 'EulerDiscreteScheduler' for model tiny-lcm (LCM); choose one of LCMScheduler, DDIMScheduler"]),
    (["sample", "--model", "tiny-lcm", "--negative", "a dog"], ["tiny-lcm is an LCM model: it ignores a negative"]),
    (["eval", "@a * 2", "--out", "x.jpg"], ["--out names a PNG file"]),
    (["vectors", "apply", "a", "a", "--bogus"], ["No such option '--bogus'", "vectors apply --help"]),
    (["latents", "ls", "--limit", "many"], ["'many' is not a valid integer", "latents ls --help"]),
    (["vectors", "apply", "a", "a", "-s", "1_000"], ["expected comma-separated numbers"]),
    (["invert", "PNG", "--model", "tiny-sd", "--steps", "0"], ["inversion takes 1 to 1000 steps, not 0"]),
    (["invert", "PNG", "--model", "tiny-gan", "--category", "x"], ["model tiny-gan is unconditional: it takes no category"]),
    (["invert", "PNG", "--model", "tiny-gan", "--name", "a"], ["the name 'a' already refers to"]),
    (["vectors", "discover", "--model", "tiny-gan", "--space", "text", "--prompts", "NOFILE"],
     ["cannot read prompts from"]),
    (["sample", "--model", "tiny-gan", "--seed", "80", "--name", "g80", "--out", "FILEDIR"],
     ["cannot create output folder", "Not a directory"]),
    (["render", "@a", "--batch", "0"], ["--batch", "0 is not in the range 1<=x<=1024"]),
    (["latents", "ls", "--limit", "0"], ["--limit", "0 is not in the range x>=1"]),
    (["latents", "untag", "a", "nosuch"], ["a has no tag 'nosuch'"]),
    (["latents", "name", "a", "x\n"], ["invalid name 'x\\n'"]),
    (["latents", "tag", "a", "nl\n"], ["invalid tag 'nl\\n'"]),
    (["latents", "import", "JPG"], ["cannot import photo.jpg: import takes a studio PNG"]),
    (["sample", "--model", "x" * 300], ["is not a usable path: File name too long"]),
])
def test_user_errors_exit_2_with_one_line_and_change_nothing(mixed_home, tmp_path, args, words):
    files = {"NAN": nan_file, "CUT": truncated_file, "TEXT": text_file, "PNG": png_file,
             "NOFILE": lambda tmp: tmp / "missing.txt", "FILEDIR": file_as_folder, "JPG": jpg_file}
    args = [str(files[a](tmp_path)) if a in files else a for a in args]
    before = library_state(mixed_home)
    result = studio(mixed_home, *args, code=2)
    err = result.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in result.output
    for w in words:
        assert w in err, (w, err)
    assert library_state(mixed_home) == before


def test_errors_from_a_real_process_have_no_traceback(mixed_home):
    proc = subprocess.run([sys.executable, "-m", "studio.cli", "--home", str(mixed_home), "eval", "@a + @g"],
                          capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: cannot add") and "noise[" in lines[0]


def test_comfy_latent_export_import_round_trip(tmp_path):
    home = tmp_path / "home"
    picture = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(picture)
    studio(home, "encode", str(picture), "--model", "tiny-sd", "--name", "pic")
    target = tmp_path / "pic.latent"
    studio(home, "latents", "export", "pic", str(target))
    raw = load_file(target)
    assert set(raw) == {"latent_tensor", "latent_format_version_0"}
    assert raw["latent_tensor"].shape == (1, 4, 8, 8)
    studio(home, "latents", "rm", "pic")
    studio(home, "latents", "import", str(target), "--model", "tiny-sd", "--name", "back")
    info = json.loads(studio(home, "latents", "show", "back", "--json").stdout)
    assert info["spaces"]["latent"].startswith("vae[vae-")
    studio(home, "latents", "export", "back", str(tmp_path / "again.latent"))
    assert torch.equal(load_file(tmp_path / "again.latent")["latent_tensor"], raw["latent_tensor"])


def test_recipe_renders_a_sweep_in_batches(tmp_path):
    home = tmp_path / "home"
    out = tmp_path / "out"
    recipe = Path(__file__).resolve().parents[1] / "prompts" / "recipes" / "gan_walk.yaml"
    result = json.loads(studio(home, "render", str(recipe), "--out", str(out), "--json").stdout)
    names = sorted(Path(p).name for p in result["files"])
    assert len(names) == 7 and names[0] == "average_000.png" and names[-1] == "walk_005_t=1.png"
    first = json.loads(Image.open(out / "walk_000_t=0.png").text["latent-studio"])
    assert first["lineage"]["op"] == "slerp" and first["lineage"]["params"]["t"] == 0.0


@pytest.mark.parametrize("text, words", [
    ("inputs: [1, 2", "not valid YAML at line"),
    ("renders:\n  - expr: 'slerp(@a, @b'\n", "renders[0].expr: expected ')'"),
    ("inputs:\n  a: {seed: one}\nrenders: [{expr: '@a'}]\n", "inputs.a: 'seed' must be an integer"),
    ("renders:\n  - expr: 'lerp(@a, @b, t)'\n", "variable(s) t used in expr but not swept"),
    ("bogus: 1\n", "unknown key(s) bogus"),
    ("renders:\n  - expr: '@a'\n    sweep: {t: [0, .nan]}\n", "expected a list of numbers"),
])
def test_bad_recipes_fail_cleanly(tmp_path, text, words):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    result = studio(tmp_path / "home", "render", str(path), code=2)
    assert words in result.stderr


def test_models_lists_builtins():
    out = CliRunner().invoke(main, ["models", "--json"]).stdout
    specs = [m["spec"] for m in json.loads(out)]
    assert {"tiny-sd", "tiny-gan", "emoji-diffusion", "emoji-gan"} <= set(specs)


def test_eval_checks_its_out_file_before_storing_and_tags_bare_references(tmp_path):
    home = tmp_path / "home"
    studio(home, "sample", "--model", "tiny-sd", "--prompt", "a cat", "--seed", "1", "--steps", "2", "--name", "a")
    picture = tmp_path / "p.png"
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(picture)
    studio(home, "encode", str(picture), "--model", "tiny-sd", "--name", "lat")
    before = library_state(home)
    err = studio(home, "eval", "@lat * 2", "--name", "lat2", "--out", str(tmp_path / "x.png"), code=2).stderr
    assert err.strip() == "error: --out renders a generation; '@lat * 2' gives a lone vae latent, which has no picture"
    assert library_state(home) == before and not (tmp_path / "x.png").exists()
    studio(home, "eval", "@a", "--tag", "kept")  # a bare reference: the object itself, tagged
    assert json.loads(studio(home, "latents", "show", "a", "--json").stdout)["tags"] == ["kept"]


def test_a_failed_command_leaves_no_empty_output_folder(mixed_home, tmp_path):
    out = tmp_path / "new" / "deeper"
    err = studio(mixed_home, "vectors", "apply", "a", "a", "-s", "1", "--out", str(out), code=2).stderr
    assert "is a generation, not a vector" in err
    assert not (tmp_path / "new").exists()  # both folders it made are gone again
    studio(mixed_home, "eval", "@g * 1", "--out", str(out / "g.png"))
    assert (out / "g.png").is_file()


def test_a_damaged_index_is_one_line_and_repair_rebuilds_it_from_the_files(tmp_path):
    home = tmp_path / "home"
    studio(home, "sample", "--model", "tiny-gan", "--seed", "1", "-n", "3", "--name", "g")
    index = home / "index.sqlite"
    import sqlite3

    db = sqlite3.connect(index)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every page in the main file, as after the process exits
    db.close()
    data = bytearray(index.read_bytes())
    assert len(data) > 12288
    data[4196:12288] = b"\xff" * (12288 - 4196)  # damage pages after the header
    index.write_bytes(bytes(data))
    err = studio(home, "latents", "ls", code=2).stderr.strip()
    assert err.startswith("error: the library's index is damaged") and "\n" not in err
    out = studio(home, "latents", "check", "--repair").stdout
    assert "the index was damaged" in out and "adopted 3 unindexed object(s)" in out
    assert out.strip().endswith("3 object(s), 0 problem(s)")
    assert len(list(home.glob("index.sqlite.damaged-*"))) == 1  # set aside, not deleted


def test_discover_takes_a_seed(tmp_path):
    home = tmp_path / "home"
    ids = [studio(home, "vectors", "discover", "--model", "tiny-gan", "-k", "2", "--samples", "64",
                  "--seed", seed).stdout.split()[0] for seed in ("0", "0", "7")]
    assert ids[0] == ids[1] != ids[2]  # the same seed finds the same direction; another seed another one
    result = studio(home, "vectors", "discover", "--model", "tiny-gan", "-k", "2", "--seed", "-1", code=2)
    assert result.stderr.strip().splitlines() == ["error: seed must be between 0 and 2^63-1, got -1"]


def test_latents_ls_pages_and_says_how_to_go_on(tmp_path):
    from conftest import noise_latent
    from studio.store import Library

    home = tmp_path / "home"
    lib = Library(home)
    ids = [lib.put(noise_latent(i), tags=["t"]) for i in range(7)]
    lib.close()
    first = studio(home, "latents", "ls", "--limit", "3")
    assert len(first.stdout.splitlines()) == 3
    footer = first.stderr.strip()
    assert footer.startswith("3 of 7 shown; the next page: studio latents ls --after ") and "\n" not in footer
    cursor = footer.split("--after ")[1].split()[0]
    rest = studio(home, "latents", "ls", "--after", cursor, "--json")
    rows = [json.loads(line) for line in rest.stdout.splitlines()]
    assert len(rows) == 4 and rest.stderr == ""  # the last page says nothing more
    shown = [line.split()[0] for line in first.stdout.splitlines()] + [r["id"][:12] for r in rows]
    assert sorted(shown) == sorted(i[:12] for i in ids)
    assert len(studio(home, "latents", "ls", "--all", "--tag", "t").stdout.splitlines()) == 7
    err = studio(home, "latents", "ls", "--all", "--limit", "2", code=2).stderr
    assert err.strip() == "error: give --all or --limit, not both"
    err = studio(home, "latents", "ls", "--after", "bad\ncursor", code=2).stderr.strip()
    assert err.startswith("error: invalid cursor 'bad\\ncursor'") and "\n" not in err


def test_latents_ls_keeps_the_objects_of_a_time_range(tmp_path):
    from datetime import datetime

    from conftest import noise_latent
    from studio.store import Library

    home = tmp_path / "home"
    lib = Library(home)
    ids = [lib.put(noise_latent(i)) for i in range(4)]
    with lib._tx() as db:  # made on four days
        for day, object_id in enumerate(ids, 1):
            db.execute("UPDATE objects SET created = ? WHERE id = ?", (datetime(2026, 11, day, 12).timestamp(), object_id))
    lib.close()
    out = studio(home, "latents", "ls", "--since", "2026-11-02", "--until", "2026-11-04").stdout.splitlines()
    assert [line.split()[0] for line in out] == [ids[2][:12], ids[1][:12]]  # newest first
    paged = studio(home, "latents", "ls", "--since", "2026-11-02", "--limit", "1")
    assert paged.stderr.startswith("1 of 3 shown")  # the count keeps the time range too
    err = studio(home, "latents", "ls", "--since", "yesterday\nerror: x", code=2).stderr.strip()
    assert err.startswith("error: --since 'yesterday\\nerror: x' is not a date") and "\n" not in err


def test_latents_ls_filters_by_name_prefix_and_space(tmp_path):
    from conftest import OTHER, noise_latent
    from studio.store import Library

    home = tmp_path / "home"
    lib = Library(home)
    frames = [lib.put(noise_latent(i), name=f"frame-{i}") for i in range(3)]
    z = lib.put(noise_latent(9, OTHER), name="frog")
    lib.close()
    out = studio(home, "latents", "ls", "--name", "frame-", "--limit", "2")
    assert [line.split()[0] for line in out.stdout.splitlines()] == [frames[2][:12], frames[1][:12]]
    assert out.stderr.startswith("2 of 3 shown")
    assert [line.split()[0] for line in studio(home, "latents", "ls", "--name", "fr", "--space", "gan-z").stdout
            .splitlines()] == [z[:12]]
    assert studio(home, "latents", "ls", "--space", "gan").stdout == ""  # a whole kind, not a piece of one

"""Hostile files and text at the command line: every one ends in exactly one `error:` line on stderr,
exit code 2, and a library left as it was.

The inputs are built here: safetensors headers that nest or count absurdly, studio files whose fields
have the wrong JSON types, PNGs whose text chunks inflate without bound or whose header claims
billions of pixels, GAN folders with damaged weights or impossible sizes, and newlines in expressions
and file names that try to pass for a second error line.
"""

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from conftest import generation
from studio import formats
from studio.cli import main
from studio.errors import ExpressionError, StudioError
from studio.session import Session

FIXTURES = Path(__file__).parent / "fixtures" / "stylegan"
NESTED = b"[" * 100_000 + b"]" * 100_000
HUGE_INT = "9" * 5000


# ---- helpers -----------------------------------------------------------------------------------------


@pytest.fixture
def lib(home):
    """A library holding two generations, a and b (``home`` points STUDIO_HOME at it)."""
    session = Session(home)
    for seed, name in ((1, "a"), (2, "b")):
        session.library.put(generation(seed), name)
    session.library.close()
    return home


def run(home: Path, *args: str):
    """One CLI command in-process; returns the result (exceptions are not caught: a traceback fails)."""
    return CliRunner().invoke(main, ["--home", str(home), *args], catch_exceptions=False)


def state(home: Path):
    """What must not change: the object files' bytes and the index's listing."""
    files = {str(p.relative_to(home)): p.read_bytes() for p in (home / "objects").rglob("*") if p.is_file()}
    return files, run(home, "latents", "ls", "--all", "--json").stdout


def one_error(home: Path, *args: str, words: tuple[str, ...] = ()) -> str:
    """Run a command that must fail: exit 2, one `error:` line on stderr, nothing on stdout, library
    unchanged; returns the line."""
    before = state(home)
    result = run(home, *args)
    lines = result.stderr.splitlines()
    assert result.exit_code == 2, (result.exit_code, result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert result.stdout == ""
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert state(home) == before
    return lines[0]


def one_error_in_a_process(home: Path, *args: str) -> str:
    """The same from a real process, where warnings and log records reach stderr as a user sees them."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    proc = subprocess.run([sys.executable, "-m", "studio.cli", "--home", str(home), *args],
                          capture_output=True, text=True, env={**env, "OMP_NUM_THREADS": "1"}, timeout=300)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def safetensors_blob(header: bytes, body: bytes = b"") -> bytes:
    return struct.pack("<Q", len(header)) + header + body


def split(data: bytes) -> tuple[dict, bytes]:
    """(JSON header, tensor bytes) of a safetensors blob."""
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def with_studio_header(obj, text: str) -> bytes:
    """The file of ``obj`` with its Latent Studio header replaced by ``text`` (tensors untouched)."""
    header, body = split(formats.to_bytes(obj))
    header["__metadata__"] = {formats.FORMAT: text}
    raw = json.dumps(header).encode()
    return safetensors_blob(raw + b" " * (-len(raw) % 8), body)


def with_fields(obj, **changes) -> bytes:
    """The file of ``obj`` with header fields replaced, its id left out (so only the field is wrong)."""
    header, _ = split(formats.to_bytes(obj))
    studio_header = json.loads(header["__metadata__"][formats.FORMAT])
    studio_header.pop("id")
    studio_header.update(changes)
    return with_studio_header(obj, json.dumps(studio_header))


def write(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


# ---- 1. safetensors files with hostile headers -------------------------------------------------------

FRESH = generation(7)  # not in the library: a file that imported cleanly would add it
STUDIO_TEXT = json.loads(split(formats.to_bytes(FRESH))[0]["__metadata__"][formats.FORMAT])


@pytest.mark.parametrize("data, words", [
    (lambda: safetensors_blob(NESTED), ["is not a safetensors file (unreadable header: nested too deeply)"]),
    (lambda: safetensors_blob(b'{"__metadata__": {"x": ' + NESTED + b"}}"), ["nested too deeply"]),
    (lambda: safetensors_blob(b'{"__metadata__": {"x": "1"}, "n": ' + HUGE_INT.encode() + b"}"),
     ["unreadable header: an integer of 5000 digits"]),
    (lambda: struct.pack("<Q", 10**6) + b"{}", ["is not a safetensors file, or it is truncated (header of 1000000"]),
    (lambda: struct.pack("<Q", 2**63) + b"{}", ["or it is truncated"]),
    (lambda: b"\x01\x02", ["is not a safetensors file (only 2 bytes)"]),
    (lambda: safetensors_blob(b'{"\xff\xfe": 1}'), ["is not a safetensors file (unreadable header: 'utf-8' codec"]),
    (lambda: safetensors_blob(b"hello world"), ["is not a safetensors file (unreadable header: Expecting value"]),
    (lambda: with_studio_header(FRESH, NESTED.decode()), ["has an unreadable Latent Studio header (nested too deeply)"]),
    (lambda: with_studio_header(FRESH, json.dumps(STUDIO_TEXT)[:-1] + ', "big": ' + HUGE_INT + "}"),
     ["has an unreadable Latent Studio header (an integer of 5000 digits)"]),
    (lambda: with_fields(FRESH, settings={"steps": 2, "x": json.loads("[" * 500 + "]" * 500)}),
     ["has an unreadable Latent Studio header (nested more than 32 levels deep)"]),
    (lambda: with_fields(FRESH, version=10**30), ["has an unreadable Latent Studio header (an integer of 31 digits)"]),
    (lambda: with_fields(FRESH, id=12345), ["malformed Latent Studio header: 'id' should be a string, not int"]),
    (lambda: with_fields(FRESH, id=[1, 2]), ["'id' should be a string, not list"]),
    (lambda: with_fields(FRESH, id={"a": 1}), ["'id' should be a string, not dict"]),
    (lambda: with_fields(FRESH, kind=["generation"]), ["'kind' should be a string, not list"]),
])
def test_hostile_safetensors_headers_are_one_error(lib, tmp_path, data, words):
    one_error(lib, "latents", "import", write(tmp_path, "bad.safetensors", data()), words=tuple(words))


def test_a_space_family_with_a_newline_is_malformed(lib, tmp_path):
    header, _ = split(formats.to_bytes(FRESH))
    studio_header = json.loads(header["__metadata__"][formats.FORMAT])
    studio_header["roles"]["noise"]["space"]["family"] = "vae\nerror: injected"
    path = write(tmp_path, "fam.safetensors", with_studio_header(FRESH, json.dumps(studio_header)))
    one_error(lib, "latents", "import", path, words=("malformed space description",))


# ---- 8. lineage and metadata fields of the wrong JSON type: the file's fault, not the index's -------

LINEAGE = {"op": "slerp", "params": {}, "parents": []}


@pytest.mark.parametrize("changes, field, wanted", [
    ({"lineage": {**LINEAGE, "op": ["x"]}}, "lineage.op", "a string, not list"),
    ({"lineage": {**LINEAGE, "op": 3}}, "lineage.op", "a string, not int"),
    ({"lineage": {"params": {}}}, "lineage.op", "a string, not NoneType"),
    ({"lineage": {**LINEAGE, "params": [1]}}, "lineage.params", "a mapping, not list"),
    ({"lineage": {**LINEAGE, "params": {"expr": {"a": 1}}}}, "lineage.params.expr", "a string, not dict"),
    ({"lineage": {**LINEAGE, "parents": {"a": 1}}}, "lineage.parents", "a list of object ids, not dict"),
    ({"lineage": {**LINEAGE, "parents": "abc"}}, "lineage.parents", "a list of object ids, not str"),
    ({"lineage": {**LINEAGE, "parents": [{"a": 1}]}}, "lineage.parents", "a list of object ids (64 hex digits)"),
    ({"lineage": {**LINEAGE, "parents": [["x"]]}}, "lineage.parents", "a list of object ids (64 hex digits)"),
    ({"meta": {"seed": {"x": 1}}}, "meta.seed", "a whole number, not dict"),
    ({"meta": {"prompt": ["p"]}}, "meta.prompt", "a string, not list"),
    ({"roles": {r: {**v, "lineage": {**LINEAGE, "op": {"x": 1}}} for r, v in STUDIO_TEXT["roles"].items()}},
     "roles.noise.lineage.op", "a string, not dict"),
    ({"roles": {r: {**v, "meta": {"seed": [1]}} for r, v in STUDIO_TEXT["roles"].items()}},
     "roles.noise.meta.seed", "a whole number, not list"),
])
def test_malformed_lineage_fields_name_the_field_not_the_index(lib, tmp_path, changes, field, wanted):
    path = write(tmp_path, "lineage.safetensors", with_fields(FRESH, **changes))
    line = one_error(lib, "latents", "import", path)
    assert line.startswith(f"error: {path}: malformed Latent Studio header: {field!r} should be {wanted}"), line
    assert "index" not in line


def test_a_well_formed_file_of_the_same_shape_imports(lib, tmp_path):
    path = write(tmp_path, "good.safetensors", with_fields(FRESH))
    result = run(lib, "latents", "import", path, "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)[0]["id"] == FRESH.id


# ---- 2 and 3. PNGs: text chunks beyond Pillow's limits, headers that claim billions of pixels -------


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width: int, height: int, chunks: bytes = b"") -> bytes:
    """A PNG of a grey picture (or, for absurd sizes, a header and a few bytes of data) with extra chunks."""
    rows = b"".join(b"\x00" + b"\x80" * 3 * width for _ in range(height)) if width * height < 4096 else b"\x00" * 64
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunks + png_chunk(b"IDAT", zlib.compress(rows)) + png_chunk(b"IEND", b""))


INFLATES = zlib.compress(b"A" * (50 << 20), 9)  # 50 KB that inflate to 50 MB
KEY = formats.PNG_DATA_KEY.encode()


@pytest.mark.parametrize("chunks, words", [
    (lambda: png_chunk(b"zTXt", KEY + b"\x00\x00" + INFLATES), ["its metadata is larger than the reader allows",
                                                                "MAX_TEXT_CHUNK"]),
    (lambda: png_chunk(b"iTXt", KEY + b"\x00\x01\x00\x00\x00" + INFLATES), ["MAX_TEXT_CHUNK"]),
    (lambda: b"".join(png_chunk(b"zTXt", b"k%d\x00\x00" % i + zlib.compress(b"B" * (900 << 10), 9))
                      for i in range(80)), ["its metadata is larger than the reader allows", "MAX_TEXT_MEMORY"]),
])
def test_png_text_chunks_beyond_the_limits_are_one_error(lib, tmp_path, chunks, words):
    path = write(tmp_path, "bomb.png", png(4, 4, chunks()))
    one_error(lib, "latents", "import", path, words=("is not a readable PNG",) + tuple(words))


def test_a_readable_recipe_chunk_that_nests_absurdly_is_ignored(lib, tmp_path):
    import base64

    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text(formats.PNG_KEY, NESTED.decode())  # the copy for people: not what an import reads
    info.add_text(formats.PNG_DATA_KEY, base64.b64encode(formats.to_bytes(FRESH)).decode("ascii"), zip=True)
    path = tmp_path / "nested-recipe.png"
    Image.new("RGB", (4, 4)).save(path, pnginfo=info)
    assert formats.read_png(path)[1] == {}
    result = run(lib, "latents", "import", str(path), "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)[0]["id"] == FRESH.id


@pytest.mark.parametrize("width, height, words", [
    (100_000, 100_000, ["claims more than", "pixels; the limit is 16777216 pixels"]),  # beyond Pillow's error
    (10_000, 10_000, ["claims more than", "the limit is 16777216 pixels"]),  # between its warning and its error
    (5_000, 5_000, ["is 5000x5000 pixels; the limit is 16777216 pixels"]),  # beyond ours only
])
def test_png_headers_claiming_billions_of_pixels_are_one_error(lib, tmp_path, width, height, words):
    path = write(tmp_path, "huge.png", png(width, height))
    one_error(lib, "latents", "import", path, words=tuple(words))


def test_a_decompression_bomb_warning_is_never_printed(lib, tmp_path):
    path = write(tmp_path, "warns.png", png(10_000, 10_000))  # Pillow warns above 89M pixels
    assert "claims more than" in one_error_in_a_process(lib, "latents", "import", path)


def test_the_picture_reader_turns_pillow_s_warnings_and_limits_into_one_error(tmp_path, recwarn):
    for size in ((100_000, 100_000), (10_000, 10_000)):
        path = tmp_path / "p.png"
        path.write_bytes(png(*size))
        with pytest.raises(StudioError, match="claims more than .* pixels; the limit is"):
            formats.read_image(path)
    path.write_bytes(png(4, 4, png_chunk(b"zTXt", b"k\x00\x00" + INFLATES)))
    with pytest.raises(StudioError, match="its metadata is larger than the reader allows"):
        formats.read_image(path)
    assert not recwarn.list
    path.write_bytes(png(4, 4))
    image, text = formats.read_image(path)
    assert image.size == (4, 4) and image.mode == "RGB" and text == {}


@pytest.mark.parametrize("command", ["encode", "invert"])
def test_encode_and_invert_refuse_hostile_pictures_in_one_line(lib, tmp_path, command):
    for name, data in (("warns.png", png(10_000, 10_000)),
                       ("bomb.png", png(4, 4, png_chunk(b"zTXt", b"k\x00\x00" + INFLATES)))):
        path = write(tmp_path, name, data)
        assert one_error_in_a_process(lib, command, path, "--model", "tiny-gan")


# ---- 4 and 5. GAN folders: damaged weights, impossible sizes ---------------------------------------


@pytest.fixture(scope="module")
def gan_folders(tmp_path_factory):
    """One small folder of each GAN format: the studio's own (v1), a created StyleGAN2 (v2), and a
    converted NVIDIA network."""
    from pipelines.stylegan import Generator, GeneratorConfig, save_generator
    from pipelines.stylegan_nets.folder import save_network_folder
    from pipelines.stylegan_nets.sg2 import StyleGAN2Generator, StyleGAN2Settings
    from pipelines.stylegan_nets.training import save_sg2_folder

    root = tmp_path_factory.mktemp("gans")
    torch.manual_seed(0)
    sizes = dict(z_dim=8, w_dim=8, mapping_layers=1, resolution=8, channel_base=64, channel_max=8)
    save_generator(Generator(GeneratorConfig(**sizes)), root / "v1")
    save_sg2_folder(StyleGAN2Generator.create(StyleGAN2Settings(**sizes)), root / "v2")
    save_network_folder(FIXTURES / "sg2ada_uncond.pkl", root / "net")
    return root


def gan_copy(gan_folders: Path, kind: str, tmp_path: Path) -> Path:
    folder = tmp_path / kind
    shutil.copytree(gan_folders / kind, folder)
    return folder


def test_the_gan_folders_load(lib, gan_folders):
    for kind in ("v1", "v2", "net"):
        assert run(lib, "sample", "--model", str(gan_folders / kind), "--seed", "1").exit_code == 0


DAMAGED_WEIGHTS = {
    "text": lambda w: b"hello, this is not safetensors\n" * 50,
    "half": lambda w: w[: len(w) // 2],
    "empty": lambda w: b"",
    "long header": lambda w: (10**9).to_bytes(8, "little") + w[8:],
    "nested header": lambda w: safetensors_blob(NESTED),
    "huge integers": lambda w: safetensors_blob(b'{"t": {"dtype": "F32", "shape": [' + HUGE_INT.encode()
                                                 + b'], "data_offsets": [0, 4]}}', b"\0" * 4),
}


@pytest.mark.parametrize("kind", ["v1", "v2", "net"])
@pytest.mark.parametrize("damage", list(DAMAGED_WEIGHTS))
def test_gan_folders_with_damaged_weights_are_one_error(lib, gan_folders, tmp_path, kind, damage):
    folder = gan_copy(gan_folders, kind, tmp_path)
    weights = folder / "model.safetensors"
    weights.write_bytes(DAMAGED_WEIGHTS[damage](weights.read_bytes()))
    line = one_error(lib, "sample", "--model", str(folder), "--seed", "1")
    assert "model.safetensors" in line


@pytest.mark.parametrize("kind", ["v1", "v2", "net"])
def test_gan_folders_without_weights_are_one_error(lib, gan_folders, tmp_path, kind):
    folder = gan_copy(gan_folders, kind, tmp_path)
    (folder / "model.safetensors").unlink()
    assert "model.safetensors" in one_error(lib, "sample", "--model", str(folder), "--seed", "1")


@pytest.mark.parametrize("kind", ["v1", "v2"])
@pytest.mark.parametrize("field, value", [
    ("resolution", 10**9), ("resolution", 2**30), ("resolution", 3), ("channel_base", "abc"), ("w_dim", 0),
    ("z_dim", -4), ("z_dim", 8.5), ("z_dim", True), ("z_dim", 10**9), ("mapping_layers", 10**6),
    ("channel_max", 10**9), ("img_channels", 0), ("noise_seed", "s"), ("mapping_lr_mul", "fast"),
])
def test_gan_configs_with_impossible_sizes_name_the_field(lib, gan_folders, tmp_path, kind, field, value):
    folder = gan_copy(gan_folders, kind, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config[field] = value
    (folder / "config.json").write_text(json.dumps(config))
    assert field in one_error(lib, "sample", "--model", str(folder), "--seed", "1")


@pytest.mark.parametrize("kind, field, value", [
    ("v1", "num_classes", -1), ("v1", "num_classes", "x"), ("v1", "class_factors", "ab"), ("v1", "w_avg_beta", 7),
    ("net", "z_dim", "abc"), ("net", "img_resolution", 10**9), ("net", "w_dim", 0),
])
def test_gan_config_fields_of_the_wrong_type_or_size_name_the_field(lib, gan_folders, tmp_path, kind, field, value):
    """Class fields of a studio GAN folder (v1), and the facts of a converted network folder."""
    folder = gan_copy(gan_folders, kind, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config[field] = value
    (folder / "config.json").write_text(json.dumps(config))
    assert field in one_error(lib, "sample", "--model", str(folder), "--seed", "1")


@pytest.mark.parametrize("entry, value, words", [
    ("default_settings", [1, 2], "default_settings entry in config.json must be a mapping"),
    ("labels", [1], "labels entry in config.json is malformed"),
])
def test_embedded_style_gan_entries_of_the_wrong_type_are_one_error(lib, tmp_path, entry, value, words):
    from pipelines.registry import EMBEDDED

    folder = tmp_path / "emoji"
    shutil.copytree(EMBEDDED / "emoji-gan", folder)
    config = json.loads((folder / "config.json").read_text())
    config[entry] = value
    (folder / "config.json").write_text(json.dumps(config))
    one_error(lib, "sample", "--model", str(folder), "--seed", "1", words=(words,))


@pytest.mark.parametrize("kind", ["v1", "v2", "net"])
def test_the_gan_loaders_refuse_a_config_that_nests_absurdly(gan_folders, tmp_path, kind):
    from pipelines.gan import GanAdapter

    folder = gan_copy(gan_folders, kind, tmp_path)
    architecture = json.loads((folder / "config.json").read_text())["architecture"]
    (folder / "config.json").write_text(f'{{"architecture": "{architecture}", "x": {NESTED.decode()}}}')
    with pytest.raises(StudioError) as err:
        GanAdapter.from_folder(folder)
    assert "\n" not in str(err.value)


def test_a_gan_folder_whose_config_nests_absurdly_is_one_error(lib, gan_folders, tmp_path):
    folder = gan_copy(gan_folders, "v1", tmp_path)
    (folder / "config.json").write_text('{"architecture": "latent-studio-stylegan2", "x": ' + NESTED.decode() + "}")
    one_error(lib, "sample", "--model", str(folder), "--seed", "1")


# ---- 4 and 7. diffusers folders: damaged weights, diffusers' own messages ---------------------------


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    from pipelines.tiny import build_tiny_sd

    folder = tmp_path_factory.mktemp("sd") / "tiny"
    build_tiny_sd().save_pretrained(folder)
    return folder


UNET = "unet/diffusion_pytorch_model.safetensors"


@pytest.mark.parametrize("damage, words", [
    ("text", "it is not a safetensors file, or it is truncated"),
    ("half", "it is truncated or damaged: its header describes"),
    ("nested header", "it is not a safetensors file (its header is not JSON)"),
])
def test_diffusers_folders_with_damaged_weights_are_one_error(lib, sd_folder, tmp_path, damage, words):
    folder = tmp_path / "sd"
    shutil.copytree(sd_folder, folder)
    weights = folder / UNET
    weights.write_bytes(DAMAGED_WEIGHTS[damage](weights.read_bytes()))
    one_error(lib, "sample", "--model", str(folder), "--prompt", "x", "--steps", "1", "--seed", "1",
              words=(UNET, words))


def test_a_refused_pickle_in_a_diffusers_folder_is_one_line_without_chatter(lib, sd_folder, tmp_path):
    import pickle

    class Runs:
        def __reduce__(self):
            return (print, ("this ran",))

    folder = tmp_path / "sd"
    shutil.copytree(sd_folder, folder)
    (folder / UNET).unlink()
    with open(folder / "unet" / "diffusion_pytorch_model.bin", "wb") as f:
        pickle.dump({"x": Runs()}, f)  # diffusers logs the missing .safetensors, torch warns on the protocol
    line = one_error_in_a_process(lib, "sample", "--model", str(folder), "--prompt", "x", "--steps", "1")
    assert "cannot load diffusion model" in line and "this ran" not in line


def test_library_messages_shrink_to_their_first_meaningful_line():
    from pipelines.common import one_line

    listing = RuntimeError("Error(s) in loading state_dict for UNet:\n\tsize mismatch for a: copying\n\tsize b")
    assert one_line(listing) == "Error(s) in loading state_dict for UNet: size mismatch for a: copying"
    chatter = OSError("We couldn't connect to 'https://huggingface.co' to load the files.\nCheck your connection")
    assert one_line(chatter) == "We couldn't connect to 'https://huggingface.co' to load the files."
    remote = ValueError("The repository contains custom code which must be executed to load it.\n"
                        "Please pass the argument `trust_remote_code=True` to allow custom code to be run.")
    assert one_line(remote) == "The repository contains custom code which must be executed to load it."
    assert one_line(ValueError("\x1b[1mbold\x1b[0m and a bell\x07")) == "bold and a bell\\x07"
    assert one_line(ValueError("\n\n")) == "ValueError"
    assert one_line("x" * 400).endswith("x...") and len(one_line("x" * 400)) == 303


# ---- 6. newlines and control characters in expressions and file names -----------------------------


@pytest.mark.parametrize("expression, shown", [
    ("@a\nerror: injected", "'@a\\nerror: injected'"),
    ("slerp(@a, @b, 0.5) + @a\x1b[31m", "@a\\x1b[31m'"),
    ("@a * @b # \r\nerror: x", "# \\r\\nerror: x'"),
])
def test_expressions_with_newlines_stay_one_line(lib, expression, shown):
    assert shown in one_error(lib, "eval", expression)


def test_expression_errors_escape_their_source():
    err = ExpressionError("unexpected character ':'", "@a\nerror: injected", 8)
    assert str(err) == "unexpected character ':' at position 9 of '@a\\nerror: injected'"


def test_a_space_mismatch_inside_an_expression_with_a_newline_stays_one_line(home):
    from conftest import noise_latent
    from studio.space import Space

    session = Session(home)
    session.library.put(noise_latent(1), "n")
    session.library.put(noise_latent(2, Space("gan-z", "stylegan-test0001", (16,))), "z")
    with pytest.raises(StudioError) as err:
        session.evaluate("@n +\n@z")
    session.library.close()
    assert "\n" not in str(err.value) and "'@n +\\n@z'" in str(err.value)


def test_file_names_with_newlines_stay_one_line(lib, tmp_path):
    missing = str(tmp_path / "x\nerror: fake.safetensors")
    assert "x\\nerror: fake.safetensors" in one_error(lib, "latents", "import", missing)
    nested = write(tmp_path, "n\nerror: fake.safetensors", safetensors_blob(NESTED))
    assert "n\\nerror: fake.safetensors is not a safetensors file" in one_error(lib, "latents", "import", nested)
    bomb = write(tmp_path, "z\rerror: fake.png", png(4, 4, png_chunk(b"zTXt", KEY + b"\x00\x00" + INFLATES)))
    assert "z\\rerror: fake.png is not a readable PNG" in one_error(lib, "latents", "import", bomb)


def test_the_cli_keeps_any_message_on_one_line(lib, monkeypatch):
    def fails(self, *args, **kwargs):
        raise StudioError("a message that quotes text raw:\nerror: a second line\x1b[2J")

    monkeypatch.setattr(Session, "import_file", fails)
    line = one_error(lib, "latents", "import", "whatever.safetensors")
    assert line == "error: a message that quotes text raw:\\nerror: a second line\\x1b[2J"


def test_printable_escapes_once():
    from studio.errors import printable

    assert printable("a\nb\tc\x1b\u2028é") == "a\\nb\\tc\\x1b\\u2028é"
    assert printable(printable("a\nb")) == "a\\nb"
    assert printable("abcdef", 3) == "abc..."

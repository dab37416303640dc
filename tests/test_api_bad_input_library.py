"""Bad input through the Python facade (Session, Library): one clear StudioError, and the library unchanged."""

import json
import os

import pytest
import torch
from PIL import Image
from safetensors.torch import save

from conftest import generation, noise_latent
from studio import formats
from studio.errors import StudioError
from studio.session import Session, Stored


def snapshot(session: Session):
    lib = session.library
    return ([r.to_json() for r in lib.ls()],
            {p.name: p.read_bytes() for p in lib.objects_dir.rglob("*") if p.is_file()})


@pytest.fixture
def picture(tmp_path):
    path = tmp_path / "red.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(path)
    return path


@pytest.fixture
def two(session):
    """Two stored generations, named a and b."""
    for seed, name in ((1, "a"), (2, "b")):
        session.library.put(generation(seed), name)
    return session


# ---- A1: export never writes into the library's own folder ----

def test_export_onto_a_stored_object_file_is_refused(two, tmp_path):
    s = two
    target = s.library.path_of(s.library.resolve("a"))
    before = snapshot(s)
    own = "it is one of the library's own files .objects and index in .*.; choose a path outside them"
    with pytest.raises(StudioError, match=f"cannot export to {target}: {own}"):
        s.export("b", target)
    (tmp_path / "link").symlink_to(s.library.objects_dir)  # a path that only resolves into the library
    for path in (tmp_path / "link" / target.parent.name / target.name, s.library.objects_dir / "x.latent",
                 s.library.home / "index.sqlite"):
        with pytest.raises(StudioError, match=own):
            s.export("b", path)
    assert snapshot(s) == before
    assert s.get("a").id == s.library.resolve("a")
    assert s.export("b", s.library.home / "outputs" / "b.SAFETENSORS").is_file()  # the UI's outputs live here


# ---- A2: a ComfyUI file of several items checks every name before storing any ----

def test_comfy_import_checks_every_name_before_storing(session, tmp_path, picture):
    lat = session.encode_image(picture, model="tiny-sd").obj
    session.library.put(noise_latent(1), "cb-2")
    path = tmp_path / "two.latent"
    batch = torch.stack([lat.tensor + 1, lat.tensor + 2])
    path.write_bytes(save({formats.COMFY_KEY: batch, formats.COMFY_MARKER: torch.tensor([])}))
    before = snapshot(session)
    with pytest.raises(StudioError, match="the name 'cb-2' already refers to"):
        session.import_file(path, model="tiny-sd", name="cb")
    assert snapshot(session) == before and session.library.name_owner("cb-1") is None
    assert [s.name for s in session.import_file(path, model="tiny-sd", name="cc")] == ["cc-1", "cc-2"]


# ---- B3: the library home must be a path ----

@pytest.mark.parametrize("home", [5, "", "  ", b"x"])
def test_session_home_must_be_a_path(tmp_path, monkeypatch, home):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StudioError, match=r"home must be a non-empty file path, got "):
        Session(home)
    assert os.listdir(tmp_path) == []  # no library made in the working folder


# ---- B5/B6/B7/C22/C23: sample's count, seed, tags and prompt ----

@pytest.mark.parametrize("kwargs, message", [
    ({"count": "2"}, "count must be a whole number, got '2'"),
    ({"count": 1.5}, "count must be a whole number, got 1.5"),
    ({"count": True}, "count must be a whole number, got True"),
    ({"count": 0}, "count must be between 1 and 1024, got 0"),
    ({"seed": 0.5}, "seed must be a whole number, got 0.5"),
    ({"seed": True}, "seed must be a whole number, got True"),
    ({"seed": "7"}, "seed must be a whole number, got '7'"),
    ({"seed": -1}, r"seed must be between 0 and 2\^63-1, got -1"),
    ({"seed": 2**63 - 2, "count": 3}, r"seed 9223372036854775806 with 3 items runs past 2\^63-1"),
    ({"tags": "abc"}, "tags must be a list of strings, got 'abc'"),
    ({"tags": ["ok", 5]}, "tags must be strings, got 5"),
    ({"tags": ["a b"]}, "invalid tag 'a b'"),
    ({"prompt": ["x", "y"]}, r"prompt must be text, got \['x', 'y'\]"),
    ({"prompt": 5}, "prompt must be text, got 5"),
])
def test_sample_refuses_bad_arguments(two, kwargs, message):
    before = snapshot(two)
    with pytest.raises(StudioError, match=message):
        two.sample("tiny-gan", **{"seed": 1, "name": "new", **kwargs})
    assert snapshot(two) == before


def test_sample_tags_none_means_no_tags(session):
    (stored,) = session.sample("tiny-gan", seed=1, tags=None)
    assert session.library.record(stored.id).tags == ()


def test_evaluate_refuses_a_bare_string_of_tags(two):
    before = snapshot(two)
    for source in ("@a", "@a * 2"):
        with pytest.raises(StudioError, match="tags must be a list of strings, got 'abc'"):
            two.evaluate(source, name="c", tags="abc")
    with pytest.raises(StudioError, match="tags must be a list of strings"):
        two.library.put(noise_latent(9), tags="abc")
    assert snapshot(two) == before


# ---- B12, and references that are not text ----

@pytest.mark.parametrize("limit, message", [("x", "limit must be a whole number, got 'x'"),
                                            (0, "limit must be at least 1, got 0"),
                                            (2.5, "limit must be a whole number, got 2.5")])
def test_ls_limit_must_be_a_whole_number(two, limit, message):
    with pytest.raises(StudioError, match=message):
        two.library.ls(limit=limit)
    assert len(two.library.ls(limit=1)) == 1


def test_a_reference_must_be_text(two):
    before = snapshot(two)
    for call in (lambda: two.get(5), lambda: two.library.tag(5, "x"), lambda: two.export(None, "x.safetensors")):
        with pytest.raises(StudioError, match=r"a reference must be text \(a name or an id prefix\), got "):
            call()
    assert snapshot(two) == before


# ---- B13: render takes Generation objects ----

@pytest.mark.parametrize("gens", [["a"], [None], "a"])
def test_render_takes_generations(two, gens):
    with pytest.raises(StudioError, match="render takes (a list of )?Generation objects .*render_refs"):
        two.render(gens)


@pytest.mark.parametrize("bad", ["../escape.png", "sub/x.png", "..", ""])
def test_render_to_file_names_stay_inside_the_folder(two, tmp_path, bad):
    out = tmp_path / "out"
    item = Stored(two.library.resolve("a"), "a", two.get("a"))
    with pytest.raises(StudioError, match="is not a plain file name inside"):
        two.render_to([item], out, filenames=[bad])
    assert not (tmp_path / "escape.png").exists() and not out.exists()


# ---- B14: paths must be paths ----

@pytest.mark.parametrize("bad", [5, "", None, ["x.png"]])
@pytest.mark.parametrize("call, what", [
    pytest.param(lambda s, p: s.export("a", p), "path", id="export"),
    pytest.param(lambda s, p: s.import_file(p), "path", id="import_file"),
    pytest.param(lambda s, p: s.encode_image(p, model="tiny-sd"), "path", id="encode_image"),
    pytest.param(lambda s, p: s.invert(p, model="tiny-gan"), "path", id="invert"),
    pytest.param(lambda s, p: s.render_refs(["a"], p), "out", id="render_refs"),
    pytest.param(lambda s, p: s.render_to([], p), "out", id="render_to"),
])
def test_paths_must_be_non_empty_paths(two, tmp_path, monkeypatch, call, what, bad):
    monkeypatch.chdir(tmp_path)
    before = snapshot(two)
    with pytest.raises(StudioError, match=f"^{what} must be a non-empty file path, got "):
        call(two, bad)
    assert snapshot(two) == before
    assert sorted(os.listdir(tmp_path)) == ["home"]  # nothing written into the working folder


# ---- B15: invert's options and progress ----

def test_invert_refuses_unknown_options_and_a_progress_that_is_not_callable(session, picture):
    before = snapshot(session)
    with pytest.raises(StudioError, match="invert takes no option 'bogus'; its options are category, style"):
        session.invert(picture, model="tiny-gan", steps=2, bogus=1)
    with pytest.raises(StudioError, match="progress must be a function .* or None, got 5"):
        session.invert(picture, model="tiny-gan", steps=2, progress=5)
    with pytest.raises(StudioError, match=r"prompt must be text, got \['x'\]"):
        session.invert(picture, model="tiny-sd", steps=1, prompt=["x"])
    assert snapshot(session) == before
    calls = []
    session.invert(picture, model="tiny-gan", steps=2, progress=lambda done, total: calls.append(done))
    assert calls and len(session.library) == 1


# ---- C21: nonsense files are refused at import ----

def _write_object_file(path, header, tensors):
    header = {"format": formats.FORMAT, "version": formats.VERSION, **header}
    path.write_bytes(save(tensors, metadata={formats.FORMAT: json.dumps(header)}))
    return path


def test_import_refuses_an_empty_tensor(session, tmp_path):
    space = {"kind": "gan-z", "family": "stylegan-test0001", "shape": [0]}
    path = _write_object_file(tmp_path / "empty.safetensors", {"kind": "latent", "space": space},
                              {"tensor": torch.zeros(0)})
    before = snapshot(session)
    with pytest.raises(StudioError, match=r"empty.safetensors: latent in .* holds no values \(shape \(0,\)\)"):
        session.import_file(path, name="empty")
    assert snapshot(session) == before


@pytest.mark.parametrize("value", [float("nan"), float("inf"), [1.0, float("-inf")]])
def test_import_refuses_settings_that_are_not_finite(session, tmp_path, value):
    z = noise_latent(1)
    header = {"kind": "generation", "model": "tiny-gan", "settings": {"truncation": value},
              "roles": {"z": {"space": z.space.to_json(), "meta": {}}}}
    path = _write_object_file(tmp_path / "nan.safetensors", header, {"role.z": z.tensor})
    before = snapshot(session)
    with pytest.raises(StudioError, match=r"nan.safetensors: settings.truncation(\[1\])? must be a finite number"):
        session.import_file(path, name="nanset")
    assert snapshot(session) == before


# ---- suffixes in any case; PNGs of derived objects ----

def test_suffixes_are_read_in_any_case(session, tmp_path, picture):
    lat = session.encode_image(picture, model="tiny-sd").obj
    path = tmp_path / "X.LATENT"
    path.write_bytes(formats.to_comfy(lat.with_tensor(lat.tensor + 1)))
    (stored,) = session.import_file(path, model="tiny-sd", name="upper")
    assert stored.obj.lineage.params["format"] == "comfyui"
    assert session.export("upper", tmp_path / "again.Latent").is_file()


def test_a_png_of_a_derived_object_imports_like_its_safetensors(two, tmp_path):
    s = two
    mid = s.evaluate("lerp(@a, @b, 0.5)", name="mid")
    png = formats.save_png(Image.new("RGB", (8, 8)), tmp_path / "mid.png", mid.obj, {})
    st = s.export("mid", tmp_path / "mid.safetensors")
    other = Session(tmp_path / "other")
    (from_png,) = other.import_file(png, name="p")
    (from_st,) = other.import_file(st, name="q")
    for stored in (from_png, from_st):
        assert stored.obj.lineage.params["foreign_parents"] == list(mid.obj.lineage.parents)
        assert other.library.parents(stored.id) == []
    other.library.close()

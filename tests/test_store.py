"""The library: ids, names, tags, lineage, files, and what bad input may not break."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from conftest import NOISE, OTHER, generation, noise_latent, vector
from studio import formats
from studio.errors import StudioError
from studio.objects import Latent, Lineage
from studio.space import Space
from studio.store import Library


def snapshot(lib: Library):
    return [r.to_json() for r in lib.ls()], sorted(p.name for p in lib.objects_dir.rglob("*"))


def test_round_trip_of_every_kind(session):
    lib = session.library
    for obj in (noise_latent(1), generation(2), vector(3)):
        object_id = lib.put(obj)
        back = lib.get(object_id)
        assert type(back) is type(obj) and back.id == obj.id == object_id
        assert back.meta == obj.meta and back.lineage == obj.lineage
    g = lib.get(generation(2).id)
    assert torch.equal(g.roles["noise"].tensor, generation(2).roles["noise"].tensor)
    assert g.settings == {"steps": 2}


def test_same_content_is_stored_once(session):
    lib = session.library
    assert lib.put(noise_latent(1)) == lib.put(noise_latent(1))
    assert len(lib) == 1


def test_names_prefixes_and_tags(session):
    lib = session.library
    object_id = lib.put(noise_latent(1), name="cat", tags=["pets"])
    assert lib.resolve("@cat") == lib.resolve("cat") == lib.resolve(object_id[:6]) == object_id
    lib.tag("cat", "favourite")
    assert lib.record("cat").tags == ("favourite", "pets")
    assert [r.id for r in lib.ls(tag="favourite")] == [object_id]
    with pytest.raises(StudioError, match="already refers to"):
        lib.put(noise_latent(2), name="cat")
    with pytest.raises(StudioError, match="no stored object"):
        lib.resolve("dog")
    with pytest.raises(StudioError, match="no stored object"):
        lib.resolve(object_id[:3])  # too short to be taken as a prefix


@pytest.mark.parametrize("bad", ["../../etc/x", "/etc/passwd", "a b", "", "x" * 65, "-rf", "a/b", "ünï"])
def test_hostile_names_are_refused_and_nothing_changes(session, bad):
    before = snapshot(session.library)
    with pytest.raises(StudioError, match="invalid name"):
        session.library.put(noise_latent(1), name=bad)
    assert snapshot(session.library) == before


def test_lineage_is_indexed(session):
    lib = session.library
    a, b = lib.put(noise_latent(1), "a"), lib.put(noise_latent(2), "b")
    mid = noise_latent(3)
    mid.lineage = Lineage("slerp", {"t": 0.5}, (a, b))
    m = lib.put(mid, "mid")
    assert lib.parents("mid") == [a, b]
    assert lib.children("a") == [m]
    orphan = noise_latent(4)
    orphan.lineage = Lineage("slerp", {}, ("f" * 64,))
    with pytest.raises(StudioError, match="not in the library"):
        lib.put(orphan)


def test_remove_forgets_index_and_file(session):
    lib = session.library
    object_id = lib.put(noise_latent(1), "a", ["t"])
    lib.remove("a")
    assert len(lib) == 0 and not lib.path_of(object_id).exists()
    with pytest.raises(StudioError):
        lib.resolve("a")


def test_files_are_self_describing(session):
    lib = session.library
    object_id = lib.put(generation(1), "g")
    header = json.loads(formats.read_header(lib.path_of(object_id).read_bytes())["latent-studio"])
    assert header["kind"] == "generation" and header["id"] == object_id
    assert header["roles"]["noise"]["space"] == NOISE.to_json()
    assert header["meta"] == {"seed": 1, "prompt": "p1"} and header["settings"] == {"steps": 2}


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "flip", "foreign"])
def test_damaged_files_give_one_clear_error(tmp_path, damage):
    data = formats.to_bytes(noise_latent(1))
    path = tmp_path / "x.safetensors"
    if damage == "truncate":
        data = data[: len(data) - 10]
    elif damage == "garbage":
        data = b"\x89PNG not a tensor file at all" * 3
    elif damage == "empty":
        data = b""
    elif damage == "flip":
        data = data[:-4] + bytes([data[-4] ^ 0xFF]) + data[-3:]
    elif damage == "foreign":
        from safetensors.torch import save
        data = save({"weight": torch.zeros(2)})
    path.write_bytes(data)
    with pytest.raises(StudioError) as err:
        formats.read_file(path)
    assert str(path) in str(err.value)


def test_nan_tensor_in_a_file_is_refused(tmp_path):
    good = formats.to_bytes(noise_latent(1))
    header = json.loads(formats.read_header(good)["latent-studio"])
    header.pop("id")
    t = torch.zeros(NOISE.shape)
    t[1, 1, 1] = float("inf")
    from safetensors.torch import save
    path = tmp_path / "nan.safetensors"
    path.write_bytes(save({"tensor": t}, metadata={"latent-studio": json.dumps(header)}))
    with pytest.raises(StudioError, match="NaN or Inf"):
        formats.read_file(path)


def test_comfy_latent_round_trip_has_exactly_comfy_keys(tmp_path):
    from safetensors.torch import load_file
    space = Space("vae", "vae-test0001", (4, 3, 5))
    lat = Latent(torch.randn(4, 3, 5), space, {"scale": "unscaled"})
    path = tmp_path / "x.latent"
    path.write_bytes(formats.to_comfy(lat))
    raw = load_file(path)
    assert set(raw) == {"latent_tensor", "latent_format_version_0"}
    assert raw["latent_tensor"].shape == (1, 4, 3, 5) and raw["latent_format_version_0"].numel() == 0
    (back,) = formats.from_comfy(path.read_bytes())
    assert torch.equal(back, lat.tensor)
    with pytest.raises(StudioError, match="only VAE-space"):
        formats.to_comfy(noise_latent(1))


WRITER = textwrap.dedent("""
    import sys, torch
    from studio.objects import Latent
    from studio.space import Space
    from studio.store import Library
    lib = Library(sys.argv[1])
    space = Space("noise", "vae-crash", (64, 64, 16))
    i = 0
    while True:
        lib.put(Latent(torch.full(space.shape, float(i)), space, {"i": i}), name=f"n{i}")
        print(i, flush=True)
        i += 1
""")


def test_killing_a_writer_midway_leaves_the_library_intact(tmp_path):
    home = tmp_path / "lib"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(home)], stdout=subprocess.PIPE, text=True)
    written = 0
    while written < 30:
        line = proc.stdout.readline()
        assert line, "writer died"
        written = int(line) + 1
    time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    lib = Library(home)
    assert len(lib) >= 30
    # the one put in flight may have its file on disk and not yet its index row: nothing corrupt, and
    # reindex (`latents check --repair`) adopts it, as the README says
    problems = lib.check()
    assert len(problems) <= 1 and all("on disk but not in the index" in p for p in problems), problems
    for r in lib.ls():
        obj = lib.get(r.id)
        i = obj.meta["i"]
        assert r.names == (f"n{i}",) and torch.all(obj.tensor == i)
    lib.reindex()
    assert lib.check() == []


def test_a_second_derivation_of_stored_content_does_not_rewrite_its_lineage(session):
    lib = session.library
    a, b = lib.put(noise_latent(1), "a"), lib.put(noise_latent(2), "b")
    again = noise_latent(1)  # the same content as `a`, reached another way (say, a + 0 * v)
    again.lineage = Lineage("add", {"s": 0.0}, (a, b))
    assert lib.put(again, "a_again") == a
    assert lib.parents("a") == [] and lib.get("a").lineage.op == "sample"
    assert lib.record(a).names == ("a", "a_again")


# ---- robustness: names shared by one object, descriptions, swapped files, hostile imports ----------


def test_removing_one_of_several_names_keeps_the_object(session):
    lib = session.library
    object_id = lib.put(noise_latent(1), "cat", ["pets"])
    assert lib.put(noise_latent(1), "cat_sweep-1") == object_id  # same content, a second name
    assert lib.remove("@cat_sweep-1") == object_id
    assert lib.exists(object_id) and lib.path_of(object_id).exists()
    assert lib.record(object_id).names == ("cat",) and lib.record(object_id).tags == ("pets",)
    assert torch.equal(lib.get("cat").tensor, noise_latent(1).tensor)
    assert lib.remove("cat") == object_id  # the last name takes the object with it
    assert len(lib) == 0 and not lib.path_of(object_id).exists()


def test_removing_by_id_prefix_removes_an_object_with_several_names(session):
    lib = session.library
    object_id = lib.put(noise_latent(1), "a")
    lib.name("a", "b")
    assert lib.remove(object_id[:6]) == object_id
    assert len(lib) == 0 and not lib.path_of(object_id).exists() and lib.names_of(object_id) == []


def test_cli_rm_says_whether_a_name_or_the_object_went(home):
    from click.testing import CliRunner

    from studio.cli import main
    lib = Library(home)
    object_id = lib.put(noise_latent(1), "ecat")
    lib.put(noise_latent(1), "ecat_tw-1")
    lib.close()

    def rm(ref):
        result = CliRunner().invoke(main, ["--home", str(home), "latents", "rm", ref])
        return result.exit_code, result.output

    assert rm("ecat_tw-1") == (0, "removed the name ecat_tw-1 (the object stays: also named ecat)\n")
    assert rm("ecat") == (0, f"removed {object_id[:12]}\n")


def described(attribute: dict | None, method: str = "prompt-pair"):
    v = vector(3)
    v.method = method
    v.meta = {"model": "test", "attribute": attribute} if attribute is not None else {}
    return v


STYLE = {"name": "style", "from": "noto", "to": "twemoji"}
CATEGORY = {"name": "category", "from": "smileys", "to": "animals"}


def test_a_vector_remade_with_another_attribute_or_method_is_refused(session):
    lib = session.library
    object_id = lib.put(described(STYLE), "noto_to_twemoji")
    before = snapshot(lib)
    with pytest.raises(StudioError) as err:
        lib.put(described(CATEGORY), "smileys_to_animals")
    assert str(err.value) == (
        f"this vector is already stored as {object_id[:12]} (noto_to_twemoji) with method prompt-pair, "
        "attribute style noto->twemoji, not method prompt-pair, attribute category smileys->animals; "
        f"the same content keeps one description: remove it first (studio latents rm {object_id[:12]}) "
        "to store it anew")
    with pytest.raises(StudioError, match="with method prompt-pair, attribute style noto->twemoji, "
                                          "not method mean-difference, attribute style"):
        lib.put(described(STYLE, "mean-difference"), "other")
    assert snapshot(lib) == before
    assert lib.put(described(STYLE), "again") == object_id  # the same description: just another name
    assert lib.record(object_id).names == ("again", "noto_to_twemoji")
    assert lib.put(described(None, "mean-difference")) == object_id  # algebra results declare nothing


def test_get_refuses_a_file_swapped_for_another_object(session):
    lib = session.library
    a, b = lib.put(noise_latent(1), "a"), lib.put(noise_latent(2), "b")
    lib.path_of(b).write_bytes(lib.path_of(a).read_bytes())  # a valid file, but of the other object
    message = f"object {b[:12]} is damaged: its file holds different content (run 'studio latents check')"
    for read in (lib.get, lib.header):
        with pytest.raises(StudioError) as err:
            read("b")
        assert str(err.value) == message
    assert torch.equal(lib.get("a").tensor, noise_latent(1).tensor)


def test_resolve_says_why_a_short_hex_key_is_no_reference(session):
    object_id = session.library.put(noise_latent(1))
    with pytest.raises(StudioError) as err:
        session.library.resolve(object_id[:3])
    assert str(err.value) == f"no stored object is named {object_id[:3]!r}; id prefixes need at least 4 digits"
    with pytest.raises(StudioError) as err:
        session.library.resolve("dog")
    assert str(err.value) == "no stored object is named or has an id starting with 'dog' (see 'studio latents ls')"


def with_header(obj, **changes) -> bytes:
    """The file of ``obj`` with its Latent Studio header fields replaced (the id check still holds)."""
    from safetensors.torch import save
    good = formats.to_bytes(obj)
    header = json.loads(formats.read_header(good)["latent-studio"])
    header.update(changes)
    tensors = formats.load_tensors(good)
    return save(tensors, metadata={"latent-studio": json.dumps(header)})


@pytest.mark.parametrize("data, message", [
    (lambda: with_header(vector(3), meta=[1, 2]), "'meta' should be a mapping, not list"),
    (lambda: with_header(vector(3), method=7), "'method' should be a string, not int"),
    (lambda: with_header(generation(1), settings="fast"), "'settings' should be a mapping, not str"),
    (lambda: with_header(generation(1), roles=[1]), "'roles' should be a mapping, not list"),
    (lambda: with_header(generation(1), model=3), "'model' should be a string, not int"),
    (lambda: with_header(noise_latent(1), lineage=["x"]), "'lineage' should be a mapping, not list"),
])
def test_imported_files_with_malformed_headers_give_one_error_and_store_nothing(session, tmp_path, data, message):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(data())
    before = snapshot(session.library)
    with pytest.raises(StudioError) as err:
        session.import_file(path)
    assert str(err.value) == f"{path}: malformed Latent Studio header: {message}"
    assert snapshot(session.library) == before


def test_a_header_that_is_not_a_mapping_is_unreadable(session, tmp_path):
    from safetensors.torch import save
    path = tmp_path / "listhdr.safetensors"
    path.write_bytes(save({"tensor": torch.zeros(2)}, metadata={"latent-studio": "[1, 2, 3]"}))
    before = snapshot(session.library)
    with pytest.raises(StudioError) as err:
        session.import_file(path)
    assert str(err.value) == f"{path} has an unreadable Latent Studio header"
    assert snapshot(session.library) == before


@pytest.mark.parametrize("readable", ["{not json", "[1, 2]"])
def test_a_png_whose_readable_recipe_is_damaged_still_gives_its_generation(session, tmp_path, readable):
    import base64

    from PIL import Image, PngImagePlugin
    gen = generation(1)
    info = PngImagePlugin.PngInfo()
    info.add_text(formats.PNG_KEY, readable)
    info.add_text(formats.PNG_DATA_KEY, base64.b64encode(formats.to_bytes(gen)).decode("ascii"), zip=True)
    path = tmp_path / "x.png"
    Image.new("RGB", (4, 4)).save(path, format="PNG", pnginfo=info)
    back, recipe = formats.read_png(path)
    assert back.id == gen.id and recipe == {}
    (stored,) = session.import_file(path)
    assert stored.id == gen.id and session.library.exists(gen.id)


@pytest.mark.parametrize("shape", [(0, 4, 8, 8), (1, 4, 0, 0), (1, 0, 8, 8)])
def test_comfy_latents_without_values_are_refused(session, tmp_path, shape):
    from safetensors.torch import save
    path = tmp_path / "empty.latent"
    path.write_bytes(save({formats.COMFY_KEY: torch.zeros(shape), formats.COMFY_MARKER: torch.tensor([])}))
    before = snapshot(session.library)
    with pytest.raises(StudioError) as err:
        session.import_file(path, model="tiny-sd")
    assert str(err.value) == f"{path} holds no latent values (shape {shape}); nothing to import"
    assert snapshot(session.library) == before


def test_a_comfy_latent_cannot_go_into_a_model_without_a_vae(session, tmp_path):
    path = tmp_path / "enc.latent"
    space = Space("vae", "vae-test0001", (4, 8, 8))
    path.write_bytes(formats.to_comfy(Latent(torch.randn(4, 8, 8), space, {"scale": "unscaled"})))
    before = snapshot(session.library)
    with pytest.raises(StudioError) as err:
        session.import_file(path, model="tiny-gan")
    assert str(err.value) == ("model tiny-gan cannot take a ComfyUI .latent (name a diffusion model with --model): "
                              "it has no VAE")
    assert snapshot(session.library) == before


def test_search_text_is_literal_not_a_like_pattern(session):
    session.sample("tiny-gan", "x", 1, count=2, name="g_1")
    session.sample("tiny-gan", "100% cat", 5, name="pct")
    assert [r.label for r in session.library.ls(text="%")] == ["pct"]
    assert sorted(r.label for r in session.library.ls(text="g_")) == ["g_1-1", "g_1-2"]
    assert session.library.ls(text="g%1") == []


def test_check_reports_what_the_index_and_the_files_disagree_on(session, tmp_path):
    import os
    import sqlite3
    import time

    lib = session.library
    ids = [s.id for s in session.sample("tiny-gan", "x", 1, count=3, name="g")]
    (lib.objects_dir / "stray.txt").write_text("not an object")
    db = sqlite3.connect(lib.home / "index.sqlite")
    db.execute("DELETE FROM objects WHERE id = ?", (ids[0],))  # g-1's file stays: unindexed
    db.execute("INSERT INTO names(name, id) VALUES ('ghost', ?)", ("ab" * 32,))  # a name of nothing
    db.execute("UPDATE objects SET summary = '' WHERE id = ?", (ids[1],))  # a damaged index column
    db.commit()
    db.close()
    problems = lib.check()
    assert any(p.startswith(f"{ids[0][:12]}: on disk but not in the index") for p in problems)
    assert any(p.startswith("name 'ghost' refers to abababababab") for p in problems)
    assert "objects/stray.txt: not an object file of this library" in problems
    assert {r.id for r in lib.ls()} == set(ids[1:])  # a damaged summary reads as empty, not a crash
    with pytest.raises(StudioError, match="ghost names an object that is not in the library"):
        lib.record("ghost")
    fresh = lib.objects_dir / ids[1][:2] / f".{ids[1]}.safetensors.in-progress.tmp"  # another process's write
    old = lib.objects_dir / ids[1][:2] / f".{ids[1]}.safetensors.crashed.tmp"
    fresh.write_bytes(b"x")
    old.write_bytes(b"x")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    assert lib.reindex() == 1
    assert fresh.exists() and not old.exists()
    assert lib.name_owner("ghost") is None and lib.resolve("g-1") == ids[0]
    assert lib.check() == ["objects/stray.txt: not an object file of this library"]


def test_names_that_read_as_ids_are_refused_and_files_get_ordinary_permissions(session, tmp_path):
    import os

    (g,) = session.sample("tiny-gan", "x", 1)
    with pytest.raises(StudioError, match="7 or more hex digits read as an id"):
        session.library.name(g.id, g.id[:12])
    session.library.name(g.id, "cafe")  # short words are fine
    umask = os.umask(0o022)
    os.umask(umask)
    path = session.export(g.id, tmp_path / "g.safetensors")
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


# ---- listing at scale: pages by cursor, tags by their own index, counts kept by triggers ----

def _many(lib: Library, count: int, tag_every: int = 3) -> list[str]:
    ids = []
    for i in range(count):
        tags = ["third"] if i % tag_every == 0 else []
        ids.append(lib.put(noise_latent(1000 + i), name=f"m{i}" if i % 2 else None, tags=tags))
    return ids


def test_pages_by_cursor_list_every_object_once_in_order(session):
    lib = session.library
    _many(lib, 23)
    with lib._tx() as db:  # ties in creation time are ordered by id, and a page boundary can fall inside them
        db.execute("UPDATE objects SET created = 5.0 WHERE rowid % 4 = 0")
        db.execute("UPDATE tags SET created = (SELECT created FROM objects WHERE id = tags.id)")
    for filters in ({}, {"tag": "third"}, {"kind": "latent"}, {"text": "m1"}):
        whole = [r.id for r in lib.ls(**filters)]
        pages, after = [], None
        while True:
            page = lib.ls(limit=4, after=after, **filters)
            if not page:
                break
            pages += [r.id for r in page]
            after = page[-1].cursor
        assert pages == whole and len(set(pages)) == len(pages), filters
        assert lib.count(**filters) == len(whole), filters
    assert len(lib) == 23 == lib.count(kind="latent") and lib.count(kind="vector") == 0
    assert lib.count(tag="third") == 8


def test_counts_follow_removals_and_repair_recounts(session):
    lib = session.library
    ids = _many(lib, 5)
    lib.remove(ids[0])
    assert len(lib) == 4 and lib.check() == []
    with lib._tx() as db:
        db.execute("UPDATE counts SET n = 99")
    assert any("kept counts" in p for p in lib.check())
    lib.reindex()
    assert lib.check() == [] and len(lib) == 4


def test_a_library_made_before_kept_counts_and_tag_times_is_upgraded_when_opened(tmp_path):
    import sqlite3

    lib = Library(tmp_path / "home")
    _many(lib, 6)
    expected = [r.id for r in lib.ls(tag="third")]
    lib.close()
    db = sqlite3.connect(tmp_path / "home" / "index.sqlite")  # take the index back to its earlier shape
    db.executescript("DROP TRIGGER tags_created; DROP TRIGGER objects_counted; DROP TRIGGER objects_uncounted;"
                     "DROP TABLE counts; DROP INDEX tags_by_tag; ALTER TABLE tags DROP COLUMN created;")
    db.close()
    again = Library(tmp_path / "home")
    assert [r.id for r in again.ls(tag="third", limit=1)] == expected[:1] and len(again) == 6
    assert [r.id for r in again.ls(tag="third")] == expected and again.check() == []
    again.close()


@pytest.mark.parametrize("cursor", ["", "nope", "1.0:abc", "x:" + "a" * 64, "1.0:" + "g" * 64])
def test_a_malformed_cursor_is_one_error(session, cursor):
    with pytest.raises(StudioError, match=r"^invalid cursor .*: a listing's cursor is CREATED:ID"):
        session.library.ls(after=cursor)


def test_check_reads_each_object_once_and_says_how_far_it_is(session, monkeypatch):
    lib = session.library
    ids = _many(lib, 5)
    reads, seen = [], []
    read_file = formats.read_file
    monkeypatch.setattr(formats, "read_file", lambda path: reads.append(str(path)) or read_file(path))
    assert lib.check(lambda done, total: seen.append((done, total))) == []
    assert sorted(reads) == sorted(str(lib.path_of(i)) for i in ids) and seen[-1] == (5, 5)
    (lib.objects_dir / "stray.txt").write_text("x")
    (lib.objects_dir / ids[0][:2] / "notes.txt").write_text("x")
    assert sorted(lib.check()) == [f"objects/{ids[0][:2]}/notes.txt: not an object file of this library",
                                   "objects/stray.txt: not an object file of this library"]


# ---- space, name and text filters by their own indexes ----

def test_space_filters_take_a_kind_a_family_or_both_and_page_by_their_rows(session):
    lib = session.library
    latents = [lib.put(noise_latent(i)) for i in range(5)]
    others = [lib.put(noise_latent(i, OTHER)) for i in range(3)]
    g = lib.put(generation(7))
    newest_first = lambda ids: [r.id for r in lib.ls() if r.id in ids]  # noqa: E731
    for space in ("noise", "vae-test0001", "noise[vae-test0001]"):
        assert [r.id for r in lib.ls(space=space)] == newest_first({*latents, g}), space
        assert lib.count(space=space) == 6
    assert [r.id for r in lib.ls(space="text")] == [g] and lib.count(space="text-test0001") == 1
    assert [r.id for r in lib.ls(space="gan-z")] == newest_first(set(others))
    assert lib.ls(space="vae") == [] and lib.ls(space="noise[vae-test0001](4x2x2)") == []  # whole tokens only
    pages, after = [], None
    while page := lib.ls(space="noise", limit=2, after=after):
        pages += [r.id for r in page]
        after = page[-1].cursor
    assert pages == newest_first({*latents, g})
    lib.tag(latents[1], "pick")
    assert [r.id for r in lib.ls(space="noise", tag="pick")] == [latents[1]]
    assert lib.count(space="noise", kind="generation") == 1
    lib.remove(latents[0])
    assert lib.count(space="noise") == 5 and lib.check() == []


def test_name_filters_take_a_prefix_and_text_is_found_in_prompts_names_and_ids(session):
    lib = session.library
    a = lib.put(generation(1), name="frame-001")
    b = lib.put(generation(2), name="frame-002")
    c = lib.put(generation(3), name="cat")
    assert [r.id for r in lib.ls(name="frame-")] == [b, a] and lib.count(name="frame") == 2
    assert lib.ls(name="rame") == [] and [r.id for r in lib.ls(name="c")] == [c]
    assert [r.id for r in lib.ls(text="FRAME-00")] == [b, a]  # case-insensitive, inside a name
    assert [r.id for r in lib.ls(text="p3")] == [c] and lib.ls(text='p3" OR "p1') == []  # the text is literal
    assert [r.id for r in lib.ls(text=c[:6])] == [c]  # an id prefix
    lib.name(a, "dog-on-a-skateboard")
    assert [r.id for r in lib.ls(text="skateboard")] == [a] and lib.count(text="skate") == 1
    lib.remove("dog-on-a-skateboard")  # one of two names: the object stays, the name is no longer found
    assert lib.ls(text="skateboard") == [] and [r.id for r in lib.ls(text="frame-001")] == [a]
    lib.remove(b)
    assert lib.ls(text="frame-002") == [] and lib.check() == []


def test_a_library_made_before_the_space_and_text_indexes_gains_them_when_opened(tmp_path):
    import sqlite3

    lib = Library(tmp_path / "home")
    ids = [lib.put(generation(i), name=f"old-{i}") for i in range(3)]
    lib.close()
    db = sqlite3.connect(tmp_path / "home" / "index.sqlite")
    db.executescript("DROP TABLE search; DROP TABLE space_tokens;")
    db.close()
    again = Library(tmp_path / "home")
    assert [r.id for r in again.ls(text="old-1")] == [ids[1]] and again.count(space="text") == 3
    assert again.check() == []
    with again._tx() as db:  # a damaged text index is found by check and rebuilt by repair
        db.execute("DELETE FROM search WHERE rowid = (SELECT rowid FROM objects WHERE id = ?)", (ids[0],))
    assert any(p.startswith("the text index misses 1 objects") for p in again.check())
    again.reindex()
    assert again.check() == [] and [r.id for r in again.ls(text="old-0")] == [ids[0]]
    again.close()


@pytest.mark.parametrize("window", [1, 3, 1000])
def test_name_and_text_pages_are_the_same_whether_the_newest_rows_or_the_indexes_answer(session, monkeypatch, window):
    from studio import store

    monkeypatch.setattr(store, "WINDOW", window)
    lib = session.library
    for i in range(12):
        lib.put(generation(300 + i), name=f"{'frame' if i % 3 else 'other'}-{i}")
    for filters in ({"name": "frame-"}, {"name": "other"}, {"text": "frame"}, {"text": "p30"}, {"text": "OTHER-9"}):
        whole = [r.id for r in lib.ls(**filters)]
        pages, after = [], None
        while page := lib.ls(limit=2, after=after, **filters):
            pages += [r.id for r in page]
            after = page[-1].cursor
        assert pages == whole and whole, (window, filters)

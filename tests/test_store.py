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

from conftest import NOISE, generation, noise_latent, vector
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
    assert lib.check() == []
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

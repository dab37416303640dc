"""The StyleGAN network folder format (config.json + model.safetensors): conversion and loading.

Every fixture network (tests/fixtures/stylegan, see its README) is converted, loaded back and compared
with the generator loaded straight from the original file: the same tensors, bit-identical outputs.
Damaged folders and refused conversions must give one-line StudioErrors and leave nothing behind.
"""

from __future__ import annotations

import copy
import json
import math
import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from pipelines.stylegan_nets import folder as folder_module
from pipelines.stylegan_nets.folder import (
    FOLDER_ARCHITECTURE,
    is_network_folder,
    load_network_folder,
    read_network_folder,
    save_network_folder,
)
from pipelines.stylegan_nets.reader import PersistentModule, read_network_file
from pipelines.stylegan_nets.sg2 import StyleGAN2Generator, load_stylegan
from pipelines.stylegan_nets.sg3 import StyleGAN3Generator
from studio.errors import StudioError

FIXTURES = Path(__file__).parent / "fixtures" / "stylegan"
TOLERANCE = 1e-4  # against the official outputs in the npz files
NETWORKS = {  # file: (kind, npz, the npz image checked, its truncation psi)
    "sg2ada_uncond.pkl": ("nvidia-stylegan2", "sg2ada_uncond.npz", "img_psi0.7_const", 0.7),
    "sg2ada_cond.pkl": ("nvidia-stylegan2", "sg2ada_cond.npz", "img_psi0.7_const", 0.7),
    "sg3_t.pkl": ("nvidia-stylegan3", "sg3_t.npz", "img_psi0.7_const", 0.7),
    "sg3_r.pkl": ("nvidia-stylegan3", "sg3_r.npz", "img_psi0.7_const", 0.7),
    "rosinality_g_ema.pt": ("rosinality-stylegan2", "rosinality.npz", "img_trunc0.7", 0.7),
    # no latent_avg in a train checkpoint: the centre is a mean w, so only psi 1 matches the npz
    "rosinality_train_ckpt.pt": ("rosinality-stylegan2", "rosinality.npz", "img_trunc1", 1.0),
}
FACTS = ("z_dim", "w_dim", "c_dim", "num_ws", "img_resolution", "img_channels")


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("converted")
    return {name: save_network_folder(FIXTURES / name, root / name.split(".")[0]) for name in NETWORKS}


@pytest.fixture(scope="module")
def originals() -> dict[str, torch.nn.Module]:
    return {name: load_stylegan(FIXTURES / name) for name in NETWORKS}


def copy_of(folder: Path, tmp_path: Path) -> Path:
    target = tmp_path / f"copy_of_{folder.name}"
    shutil.copytree(folder, target)
    return target


def one_line_error(call: Callable[[], object], must_name: str) -> str:
    with pytest.raises(StudioError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and "\r" not in message, message
    assert must_name in message, message
    return message


def load_error(folder: Path) -> str:
    return one_line_error(lambda: load_network_folder(folder), folder.name)


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir()) if parent.exists() else []


# ----------------------------------------------------------------------------------------------------
# Round trips


@pytest.mark.parametrize("name", list(NETWORKS))
def test_folder_reproduces_the_original_generator_bit_for_bit(name, converted, originals):
    kind, npz, image_key, psi = NETWORKS[name]
    g, original = load_network_folder(converted[name]), originals[name]
    assert type(g) is type(original) is (StyleGAN3Generator if kind == "nvidia-stylegan3" else StyleGAN2Generator)
    assert not g.training and not any(p.requires_grad for p in g.parameters())
    ours, theirs = g.state_dict(), original.state_dict()
    assert list(ours) == list(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours)
    ref = np.load(FIXTURES / npz)
    z = torch.from_numpy(ref["z"])
    c = torch.from_numpy(ref["c"]) if "c" in ref.files else None
    with torch.no_grad():
        for truncation_psi in (1.0, 0.7):
            ws, ws_original = g.mapping(z, c, truncation_psi=truncation_psi), original.mapping(
                z, c, truncation_psi=truncation_psi)
            assert torch.equal(ws, ws_original)
            img = g.synthesis(ws, noise_mode="const")
            assert torch.equal(img, original.synthesis(ws_original, noise_mode="const"))
            if truncation_psi == psi:
                assert float((img - torch.from_numpy(ref[image_key])).abs().max()) <= TOLERANCE


@pytest.mark.parametrize("name", [n for n in NETWORKS if n.endswith(".pkl")])
def test_folder_rebuilds_the_same_nvidia_record(name, converted):
    def plain(m: PersistentModule | None) -> object:  # the record without tensor values
        if m is None:
            return None
        return (m.class_name, m.init_args, m.init_kwargs, m.attrs,
                {k: None if t is None else (tuple(t.shape), t.dtype) for k, t in m.parameters.items()},
                {k: None if t is None else (tuple(t.shape), t.dtype) for k, t in m.buffers.items()},
                {k: plain(v) for k, v in m.modules.items()})

    original = read_network_file(FIXTURES / name)["G_ema"]
    rebuilt = read_network_folder(converted[name])["G_ema"]
    assert plain(rebuilt) == plain(original)  # tuples stay tuples, None buffers stay None
    a, b = rebuilt.state_dict(), original.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_rosinality_folder_keeps_latent_avg_only_when_the_file_has_one(converted):
    with_avg = read_network_folder(converted["rosinality_g_ema.pt"])
    original = read_network_file(FIXTURES / "rosinality_g_ema.pt")
    assert torch.equal(with_avg["latent_avg"], original["latent_avg"])
    assert set(with_avg["g_ema"]) == set(original["g_ema"])
    assert all(torch.equal(with_avg["g_ema"][k], original["g_ema"][k]) for k in original["g_ema"])
    assert read_network_folder(converted["rosinality_train_ckpt.pt"])["latent_avg"] is None
    assert "latent_avg" not in load_file(str(converted["rosinality_train_ckpt.pt"] / "model.safetensors"))
    config = json.loads((converted["rosinality_g_ema.pt"] / "config.json").read_text())
    assert config["generator"]["lr_mlp"] == 0.01 and config["generator"]["latent_avg"]["shape"] == [1, 32]


@pytest.mark.parametrize("name", list(NETWORKS))
def test_config_records_marker_kind_source_and_facts_without_paths(name, converted, originals):
    folder = converted[name]
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == FOLDER_ARCHITECTURE and config["network"] == NETWORKS[name][0]
    assert config["source"] == name
    assert {k: config[k] for k in FACTS} == {k: getattr(originals[name], k) for k in FACTS}

    def strings(value: object) -> list[str]:
        if isinstance(value, dict):
            return [s for k, v in value.items() for s in [k, *strings(v)]]
        if isinstance(value, list):
            return [s for v in value for s in strings(v)]
        return [value] if isinstance(value, str) else []

    for text in strings(config):
        assert not os.path.isabs(text) and str(FIXTURES) not in text and str(folder.parent) not in text
    tensors = load_file(str(folder / "model.safetensors"))
    assert all(t.is_contiguous() and t.dtype == torch.float32 for t in tensors.values())
    assert is_network_folder(folder)


def test_is_network_folder_only_for_the_marker(tmp_path, converted):
    assert not is_network_folder(tmp_path / "missing")
    assert not is_network_folder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "something-else"}))
    assert not is_network_folder(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    assert not is_network_folder(tmp_path)
    assert not is_network_folder(FIXTURES / "sg2ada_cond.pkl")  # a file, not a folder
    assert is_network_folder(str(converted["sg3_t.pkl"]))


def test_attribute_values_json_cannot_tell_apart_come_back_unchanged(tmp_path):
    obj = read_network_file(FIXTURES / "sg2ada_uncond.pkl")
    odd = {"pair": (1, (2.5, "x")), "listed": [1, [2, None]], "int_keys": {3: "a", (1, 2): "b"},
           "$tagged": {"$tuple": [1]}, "labels": {"a", "b"}, "frozen": frozenset({4}), "inf": -math.inf,
           "array": np.arange(6, dtype=np.float32).reshape(2, 3) / 7, "flag": True, "empty": ()}
    obj["G_ema"].child("synthesis.b8").attrs.update(odd | {"nan": math.nan})
    folder = save_network_folder(obj, tmp_path / "odd", source="where/ever/odd.pkl")
    assert json.loads((folder / "config.json").read_text())["source"] == "odd.pkl"
    attrs = read_network_folder(folder)["G_ema"].child("synthesis.b8").attrs
    arrays = odd.pop("array"), attrs.pop("array")
    assert arrays[1].dtype == np.float32 and np.array_equal(*arrays)
    assert math.isnan(attrs.pop("nan"))
    assert {k: attrs[k] for k in odd} == odd
    assert all(type(attrs[k]) is type(v) for k, v in odd.items())
    assert isinstance(load_network_folder(folder), StyleGAN2Generator)


def test_loading_never_unpickles(converted, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a network folder must load without pickle")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle._Unpickler, "load", refuse)
    for name in ("sg2ada_cond.pkl", "sg3_r.pkl", "rosinality_g_ema.pt"):
        load_network_folder(converted[name])


# ----------------------------------------------------------------------------------------------------
# Refused conversions leave nothing behind


def test_conversion_refuses_a_non_empty_or_non_folder_target(tmp_path):
    target = tmp_path / "busy"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    one_line_error(lambda: save_network_folder(FIXTURES / "sg2ada_cond.pkl", target), "not empty")
    assert leftovers(target) == ["keep.txt"] and leftovers(tmp_path) == ["busy"]
    a_file = tmp_path / "file"
    a_file.write_text("x")
    one_line_error(lambda: save_network_folder(FIXTURES / "sg2ada_cond.pkl", a_file), "not a folder")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert is_network_folder(save_network_folder(FIXTURES / "sg2ada_cond.pkl", empty))


def test_conversion_of_a_file_that_is_no_stylegan_network_writes_nothing(tmp_path):
    not_a_network = tmp_path / "notes.pkl"
    not_a_network.write_text("just text\n")
    no_generator = tmp_path / "weights.pt"
    torch.save({"encoder": torch.zeros(3)}, no_generator)
    plain_pickle = tmp_path / "list.pkl"
    plain_pickle.write_bytes(pickle.dumps([1, 2, 3]))
    for source, expected in ((not_a_network, "neither a network pickle"), (no_generator, "no StyleGAN generator"),
                             (plain_pickle, "not a dict")):
        target = tmp_path / "out" / f"from_{source.stem}"
        with pytest.raises(StudioError) as info:
            save_network_folder(source, target)
        with pytest.raises(StudioError) as reader_info:  # the reader's own refusal, unchanged
            load_stylegan(source)
        assert str(info.value) == str(reader_info.value) and expected in str(info.value)
        assert "\n" not in str(info.value)
        assert not (tmp_path / "out").exists()


def test_a_failed_write_removes_the_partial_folder_and_new_parents(tmp_path, monkeypatch):
    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(folder_module, "save_file", disk_full)
    target = tmp_path / "new" / "deeper" / "net"
    one_line_error(lambda: save_network_folder(FIXTURES / "sg3_t.pkl", target), "No space left")
    assert leftovers(tmp_path) == []


def test_a_network_the_format_cannot_record_is_refused(tmp_path):
    obj = read_network_file(FIXTURES / "sg2ada_uncond.pkl")
    obj["G_ema"].child("mapping").attrs["oddity"] = torch.zeros(2)  # a tensor outside the tensor tables
    one_line_error(lambda: save_network_folder(obj, tmp_path / "out"), "mapping")
    obj = read_network_file(FIXTURES / "sg2ada_uncond.pkl")
    obj["G_ema"].child("mapping").modules["a.b"] = None
    one_line_error(lambda: save_network_folder(obj, tmp_path / "out"), "not a plain name")
    assert leftovers(tmp_path) == []


# ----------------------------------------------------------------------------------------------------
# Damaged folders


def edit_config(folder: Path, change: Callable[[dict], object]) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config))


def edit_tensors(folder: Path, change: Callable[[dict], object]) -> None:
    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path))


def _truncate(folder: Path) -> None:
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])


def _drop_module_key(config: dict) -> None:
    del config["generator"]["modules"]["mapping"]["attrs"]


def _set_layer_clamp(config: dict, value: object) -> None:
    config["generator"]["modules"]["synthesis"]["modules"]["L2_36_32"]["attrs"]["conv_clamp"] = value


DAMAGE: dict[str, tuple[str, Callable[[Path], object], str]] = {  # name: (network, damage, expected text)
    "invalid JSON": ("sg2ada_cond.pkl", lambda f: (f / "config.json").write_text('{"architecture": '),
                     "not valid JSON"),
    "not an object": ("sg2ada_cond.pkl", lambda f: (f / "config.json").write_text("[1, 2]"), "JSON object"),
    "no config": ("sg2ada_cond.pkl", lambda f: (f / "config.json").unlink(), "no config.json"),
    "another marker": ("sg2ada_cond.pkl", lambda f: edit_config(f, lambda c: c.update(architecture="x")),
                       "not a StyleGAN network folder"),
    "missing key": ("sg2ada_cond.pkl", lambda f: edit_config(f, lambda c: c.pop("network")), "'network'"),
    "missing generator": ("sg3_t.pkl", lambda f: edit_config(f, lambda c: c.pop("generator")), "'generator'"),
    "missing module key": ("sg2ada_cond.pkl", lambda f: edit_config(f, _drop_module_key), "'attrs'"),
    "fact of the wrong type": ("sg2ada_cond.pkl", lambda f: edit_config(f, lambda c: c.update(z_dim="32")),
                               "'z_dim'"),
    "wrong fact": ("sg2ada_cond.pkl", lambda f: edit_config(f, lambda c: c.update(w_dim=31)), "w_dim 31"),
    "newer format": ("sg2ada_cond.pkl", lambda f: edit_config(f, lambda c: c.update(format_version=2)),
                     "format version"),
    "unknown kind": ("sg2ada_cond.pkl", lambda f: edit_config(f, lambda c: c.update(network="biggan")),
                     "unknown network kind 'biggan'"),
    "kind with a newline": ("sg2ada_cond.pkl", lambda f: edit_config(f, lambda c: c.update(network="a\nb")),
                            "unknown network kind"),
    "kind of another network": ("sg2ada_cond.pkl",
                                lambda f: edit_config(f, lambda c: c.update(network="nvidia-stylegan3")),
                                "holds a 'nvidia-stylegan2'"),
    "unknown tag": ("sg3_r.pkl", lambda f: edit_config(f, lambda c: c["generator"]["attrs"].update(
        x={"$pickle": []})), "unknown tag '$pickle'"),
    "value the builder cannot use": ("sg3_r.pkl", lambda f: edit_config(f, lambda c: _set_layer_clamp(c, "hot")),
                                     "cannot be built"),
    "no weights": ("sg2ada_cond.pkl", lambda f: (f / "model.safetensors").unlink(), "no model.safetensors"),
    "tensor removed": ("sg2ada_cond.pkl", lambda f: edit_tensors(f, lambda t: t.pop("synthesis.b8.conv0.weight")),
                       "lacks the tensor 'synthesis.b8.conv0.weight'"),
    "tensor of the wrong shape": ("sg3_t.pkl", lambda f: edit_tensors(
        f, lambda t: t.update({"mapping.w_avg": torch.zeros(31)})), "'mapping.w_avg' has shape [31]"),
    "tensor of the wrong dtype": ("sg2ada_cond.pkl", lambda f: edit_tensors(
        f, lambda t: t.update({"mapping.w_avg": t["mapping.w_avg"].double()})), "float64"),
    "extra tensor": ("sg2ada_cond.pkl", lambda f: edit_tensors(f, lambda t: t.update(stray=torch.zeros(1))),
                     "does not name: 'stray'"),
    "truncated weights": ("sg2ada_cond.pkl", _truncate, "truncated or corrupt"),
    "latent_avg removed": ("rosinality_g_ema.pt", lambda f: edit_tensors(f, lambda t: t.pop("latent_avg")),
                           "lacks the tensor 'latent_avg'"),
    "bad lr_mlp": ("rosinality_g_ema.pt", lambda f: edit_config(f, lambda c: c["generator"].update(lr_mlp="x")),
                   "lr_mlp"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_folder_gives_a_one_line_error(case, converted, tmp_path):
    network, damage, expected = DAMAGE[case]
    folder = copy_of(converted[network], tmp_path)
    damage(folder)
    message = load_error(folder)
    assert expected in message, message
    assert message.startswith("cannot load the network folder")


def test_the_original_folders_are_untouched_by_the_damage_tests(converted):
    # the damage tests work on copies; the shared conversions must still load
    for name in ("sg2ada_cond.pkl", "sg3_t.pkl", "rosinality_g_ema.pt"):
        assert isinstance(load_network_folder(converted[name]), torch.nn.Module)


def test_missing_folder_is_a_one_line_error(tmp_path):
    assert "not a folder" in load_error(tmp_path / "nowhere")
    one_line_error(lambda: read_network_folder(tmp_path / "nowhere"), "nowhere")


def test_converting_a_reader_dict_leaves_it_unchanged(tmp_path):
    obj = read_network_file(FIXTURES / "sg2ada_cond.pkl")
    before = copy.deepcopy(obj["G_ema"].state_dict())
    save_network_folder(obj, tmp_path / "net")
    after = obj["G_ema"].state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert json.loads((tmp_path / "net" / "config.json").read_text())["source"] is None

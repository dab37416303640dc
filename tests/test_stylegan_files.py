"""StyleGAN network files: the safe reader, and StyleGAN2 generators that reproduce the official outputs.

The fixtures (tests/fixtures/stylegan/, see its README) are tiny random-weight networks written by the
official NVIDIA and rosinality code, with reference outputs in .npz files. Hostile files are built here.
"""

from __future__ import annotations

import builtins
import io
import os
import pickle
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.stylegan_nets import ops
from pipelines.stylegan_nets.reader import (
    LEGACY_MAGIC,
    LEGACY_PROTOCOL,
    ArgsRecord,
    PersistentModule,
    network_kind,
    read_network_file,
    rosinality_weights,
)
from pipelines.stylegan_nets.sg2 import StyleGAN2Generator, load_stylegan
from studio.errors import StudioError

FIXTURES = Path(__file__).parent / "fixtures" / "stylegan"
TOLERANCE = 1e-4  # max abs error allowed against the official outputs (measured: 0 to ~2e-6)
ALL_FILES = {
    "sg2ada_uncond.pkl": "nvidia-stylegan2", "sg2ada_cond.pkl": "nvidia-stylegan2",
    "sg3_t.pkl": "nvidia-stylegan3", "sg3_t_numpy2.pkl": "nvidia-stylegan3", "sg3_r.pkl": "nvidia-stylegan3",
    "rosinality_g_ema.pt": "rosinality-stylegan2", "rosinality_g_ema_legacy.pt": "rosinality-stylegan2",
    "rosinality_train_ckpt.pt": "rosinality-stylegan2",
}
ROSINALITY_FILES = ["rosinality_g_ema.pt", "rosinality_g_ema_legacy.pt", "rosinality_train_ckpt.pt"]


def max_error(got: torch.Tensor, want: np.ndarray, label: str) -> float:
    assert tuple(got.shape) == want.shape, label
    err = float((got.detach().float() - torch.from_numpy(want)).abs().max())
    print(f"max abs error {label}: {err:.3e}")
    return err


@pytest.fixture(scope="module")
def nvidia_generators() -> dict[str, StyleGAN2Generator]:
    return {name: load_stylegan(FIXTURES / f"{name}.pkl") for name in ("sg2ada_uncond", "sg2ada_cond")}


@pytest.fixture(scope="module")
def rosinality_ref() -> dict[str, np.ndarray]:
    return dict(np.load(FIXTURES / "rosinality.npz"))


# ----------------------------------------------------------------------------------------------------
# Reading every fixture


@pytest.mark.parametrize("name", sorted(ALL_FILES))
def test_every_fixture_reads_and_is_recognised(name):
    obj = read_network_file(FIXTURES / name)
    assert network_kind(obj) == ALL_FILES[name]


def test_nvidia_pickle_becomes_plain_records():
    obj = read_network_file(FIXTURES / "sg2ada_cond.pkl")
    g = obj["G_ema"]
    assert isinstance(g, PersistentModule) and g.class_name == "Generator"
    assert g.init_kwargs["mapping_kwargs"] == {"num_layers": 2} and type(g.init_kwargs["mapping_kwargs"]) is dict
    fc = g.child("mapping.fc0")
    assert type(fc.attrs["weight_gain"]) is float and fc.attrs["weight_gain"] == pytest.approx(0.01 / 8)
    assert fc.init_args == (64, 32)
    state = g.state_dict()
    assert list(state)[:3] == ["synthesis.b4.const", "synthesis.b4.resample_filter", "synthesis.b4.conv1.weight"]
    assert state["mapping.w_avg"].shape == (32,) and state["synthesis.b32.conv1.noise_const"].shape == (32, 32)
    assert obj["training_set_kwargs"]["use_labels"] is True and obj["augment_pipe"] is None


def test_stylegan3_pickles_numpy1_and_numpy2_hold_the_same_network():
    a = read_network_file(FIXTURES / "sg3_t.pkl")["G_ema"]
    b = read_network_file(FIXTURES / "sg3_t_numpy2.pkl")["G_ema"]
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    layer = a.child("synthesis.L0_36_32")
    assert layer.attrs["in_size"] == (36, 36) and type(layer.attrs["in_cutoff"]) is float
    assert layer.buffers["up_filter"].shape == (12,)
    assert a.child("synthesis.L14_32_3").buffers["up_filter"] is None  # ToRGB has no filters
    assert "up_filter" not in a.child("synthesis.L14_32_3").state_dict()


def test_rosinality_checkpoints_read_like_torch_load():
    ref = torch.load(FIXTURES / "rosinality_g_ema.pt", weights_only=True)
    for name in ("rosinality_g_ema.pt", "rosinality_g_ema_legacy.pt"):
        obj = read_network_file(FIXTURES / name)
        assert list(obj["g_ema"]) == list(ref["g_ema"]) and len(obj["g_ema"]) == 69
        assert all(torch.equal(obj["g_ema"][k], ref["g_ema"][k]) for k in ref["g_ema"])
        assert torch.equal(obj["latent_avg"], ref["latent_avg"]) and obj["latent_avg"].shape == (1, 32)
        assert hasattr(obj["g_ema"], "_metadata")


def test_rosinality_train_checkpoint_reads_without_unrestricted_unpickling(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("unrestricted unpickling")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    obj = read_network_file(FIXTURES / "rosinality_train_ckpt.pt")
    assert isinstance(obj["args"], ArgsRecord) and obj["args"].size == 32 and obj["args"].n_mlp == 2
    assert obj["args"].as_dict()["latent"] == 32
    assert obj["ada_aug_p"] == 0.0 and obj["g_optim"]["state"] == {}
    assert obj["g_optim"]["param_groups"][0]["betas"][0] == 0.0
    assert set(obj) == {"g", "d", "g_ema", "g_optim", "d_optim", "args", "ada_aug_p"}
    state, avg = rosinality_weights(obj)
    assert avg is None and not torch.equal(state["style.1.weight"], obj["g"]["style.1.weight"])
    assert state["style.1.weight"] is obj["g_ema"]["style.1.weight"]


# ----------------------------------------------------------------------------------------------------
# NVIDIA StyleGAN2 against the official outputs


@pytest.mark.parametrize("name", ["sg2ada_uncond", "sg2ada_cond"])
def test_nvidia_stylegan2_matches_official_outputs(name, nvidia_generators):
    g = nvidia_generators[name]
    ref = np.load(FIXTURES / f"{name}.npz")
    z, c = torch.from_numpy(ref["z"]), torch.from_numpy(ref["c"])
    assert (g.z_dim, g.w_dim, g.num_ws, g.img_resolution, g.img_channels) == (32, 32, 8, 32, 3)
    assert g.c_dim == (4 if name == "sg2ada_cond" else 0)
    cutoff = g.num_ws // 2
    with torch.no_grad():
        ws = {"psi1": g.mapping(z, c, truncation_psi=1), "psi0.7": g.mapping(z, c, truncation_psi=0.7),
              f"psi0.7_cutoff{cutoff}": g.mapping(z, c, truncation_psi=0.7, truncation_cutoff=cutoff)}
        ws_keys = [k for k in ref.files if k.startswith("ws_")]
        img_keys = [k for k in ref.files if k.startswith("img_")]
        assert sorted(ws_keys) == sorted(f"ws_{k}" for k in ws) and len(img_keys) == 5
        for key in ws_keys:
            assert max_error(ws[key[3:]], ref[key], f"{name} {key}") <= TOLERANCE
        for key in img_keys:
            ws_name, noise_mode = key[4:].rsplit("_", 1)
            img = g.synthesis(torch.from_numpy(ref[f"ws_{ws_name}"]), noise_mode=noise_mode)
            assert max_error(img, ref[key], f"{name} {key}") <= TOLERANCE
        img = g(z, c, truncation_psi=0.7, noise_mode="const")
        assert max_error(img, ref["img_psi0.7_const"], f"{name} G(z, c) psi 0.7") <= TOLERANCE


def test_conditional_generator_honours_every_class(nvidia_generators):
    g = nvidia_generators["sg2ada_cond"]
    ref = np.load(FIXTURES / "sg2ada_cond.npz")
    z = torch.from_numpy(ref["z"])
    assert torch.equal(torch.from_numpy(ref["c"]), torch.eye(4))  # one sample per class
    with torch.no_grad():
        for cls in range(4):
            ws = g.mapping(z[cls:cls + 1], torch.eye(4)[cls:cls + 1])
            assert max_error(ws, ref["ws_psi1"][cls:cls + 1], f"sg2ada_cond class {cls}") <= TOLERANCE
    with pytest.raises(StudioError, match="conditional"):
        g.mapping(z)


def test_loader_takes_g_ema_not_the_training_copy(nvidia_generators):
    obj = read_network_file(FIXTURES / "sg2ada_uncond.pkl")
    g = nvidia_generators["sg2ada_uncond"]
    ema = obj["G_ema"].state_dict()
    assert all(torch.equal(g.state_dict()[k], ema[k].float()) for k in ema)
    training_copy = StyleGAN2Generator.from_persistent(obj["G"])
    ref = np.load(FIXTURES / "sg2ada_uncond.npz")
    with torch.no_grad():
        img = training_copy.synthesis(torch.from_numpy(ref["ws_psi1"]))
    assert float((img - torch.from_numpy(ref["img_psi1_const"])).abs().max()) > 1e-2


def test_noise_modes_and_bad_inputs(nvidia_generators):
    g = nvidia_generators["sg2ada_uncond"]
    ws = g.mapping(torch.randn(2, 32))
    torch.manual_seed(0)
    a = g.synthesis(ws, noise_mode="random")
    assert a.shape == (2, 3, 32, 32) and not torch.equal(a, g.synthesis(ws, noise_mode="random"))
    with pytest.raises(StudioError, match="noise_mode"):
        g.synthesis(ws, noise_mode="loud")
    with pytest.raises(StudioError, match=r"ws must have shape \[2, 8, 32\]"):
        g.synthesis(ws[:, :3])
    with pytest.raises(StudioError, match="z must have shape"):
        g.mapping(torch.randn(2, 31))


# ----------------------------------------------------------------------------------------------------
# rosinality StyleGAN2 against the official outputs


@pytest.mark.parametrize("name", ROSINALITY_FILES)
def test_rosinality_matches_official_outputs(name, rosinality_ref):
    ref = rosinality_ref
    obj = read_network_file(FIXTURES / name)
    state, avg = rosinality_weights(obj)
    if avg is None:  # the train checkpoint saves no latent_avg: use the one the references used
        avg = torch.from_numpy(ref["latent_avg"])
    g = StyleGAN2Generator.from_rosinality(state, avg)
    assert (g.z_dim, g.w_dim, g.num_ws, g.img_resolution, g.c_dim) == (32, 32, 8, 32, 0)
    z = torch.from_numpy(ref["z"])
    styles = torch.from_numpy(ref["styles"])
    with torch.no_grad():
        ws1, ws7 = g.mapping(z), g.mapping(z, truncation_psi=0.7)
        from_styles = styles.unsqueeze(1).repeat(1, g.num_ws, 1)
        mixed = g.mix(ws1, g.mapping(torch.roll(z, 1, dims=0)), inject_index=3)
        outputs = {
            "styles": ws1[:, 0], "latent_trunc1": ws1, "latent_trunc0.7": ws7,
            "img_trunc1": g.synthesis(ws1), "img_trunc0.7": g.synthesis(ws7),
            "img_from_styles_trunc1": g.synthesis(from_styles),
            "img_from_styles_trunc0.7": g.synthesis(g.mapping.truncate(from_styles, 0.7)),
            "img_mix_inject3": g.synthesis(mixed),
        }
    for key, got in outputs.items():
        assert max_error(got, ref[key], f"{name} {key}") <= TOLERANCE


def test_rosinality_latent_avg_shapes_and_default(rosinality_ref):
    state, avg = rosinality_weights(read_network_file(FIXTURES / "rosinality_g_ema.pt"))
    flat = StyleGAN2Generator.from_rosinality(state, avg.reshape(-1))
    assert torch.equal(flat.mapping.w_avg, avg.reshape(-1))
    loaded = load_stylegan(FIXTURES / "rosinality_train_ckpt.pt")  # no latent_avg: a mean w of 4096 z
    assert loaded.mapping.w_avg.shape == (32,)
    assert float((loaded.mapping.w_avg - avg.reshape(-1)).abs().max()) < 0.1
    z = torch.from_numpy(rosinality_ref["z"])
    with torch.no_grad():
        assert max_error(loaded(z), rosinality_ref["img_trunc1"], "train ckpt G(z)") <= TOLERANCE
    with pytest.raises(StudioError, match="latent_avg"):
        StyleGAN2Generator.from_rosinality(state, torch.zeros(3))


# ----------------------------------------------------------------------------------------------------
# Shared ops


def test_fused_and_unfused_modulated_conv_agree():
    gen = torch.Generator().manual_seed(0)
    x, weight = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(5, 4, 3, 3, generator=gen)
    styles, noise = torch.randn(2, 4, generator=gen), torch.randn(16, 16, generator=gen)
    f = ops.setup_filter([1, 3, 3, 1])
    for up, flip in ((1, True), (2, False)):
        kw = dict(noise=noise if up == 2 else None, up=up, padding=1, resample_filter=f, flip_weight=flip)
        fused = ops.modulated_conv2d(x, weight, styles, fused_modconv=True, **kw)
        split = ops.modulated_conv2d(x, weight, styles, fused_modconv=False, **kw)
        assert fused.shape == (2, 5, 8 * up, 8 * up) and torch.allclose(fused, split, atol=1e-5)


def test_resampling_keeps_constants_and_sizes():
    f = ops.setup_filter([1, 3, 3, 1])
    assert torch.allclose(ops.upsample2d(torch.ones(1, 2, 6, 6), f)[..., 2:-2, 2:-2], torch.ones(1))
    assert ops.downsample2d(torch.ones(1, 2, 8, 8), f).shape == (1, 2, 4, 4)
    sep = ops.setup_filter(torch.ones(12))
    assert sep.ndim == 1 and ops.filter2d(torch.ones(1, 1, 20, 20), sep).shape == (1, 1, 20, 20)
    x = torch.randn(1, 1, 16, 16)
    assert torch.allclose(ops.upsample2d(x, torch.outer(sep, sep)), ops.upsample2d(x, sep), atol=1e-5)
    out = ops.bias_act(torch.tensor([[-1.0, 2.0]]), torch.tensor([0.0, 1.0]), act="lrelu", clamp=3)
    assert torch.allclose(out, torch.tensor([[-0.2 * 2 ** 0.5, 3.0]]))


# ----------------------------------------------------------------------------------------------------
# Hostile and broken files


class Hostile:
    def __init__(self, reduce: tuple):
        self.reduce = reduce

    def __reduce__(self):
        return self.reduce


def legacy_blob(payload: object) -> bytes:
    """A legacy torch.save stream whose object pickle is ``payload``."""
    return b"".join(pickle.dumps(v, protocol=2) for v in (LEGACY_MAGIC, LEGACY_PROTOCOL, {"little_endian": True},
                                                          payload))


def hostile_payloads(marker: Path) -> dict[str, tuple[object, str]]:
    shell = f"touch {marker}"
    return {
        "os.system": (Hostile((os.system, (shell,))), f"{os.system.__module__}.system"),
        "exec": (Hostile((builtins.exec, (f"open({str(marker)!r}, 'w').close()",))), "builtins.exec"),
        "popen": (Hostile((subprocess.Popen, (["touch", str(marker)],))), "subprocess.Popen"),
        "eval in a dict": ({"G_ema": Hostile((builtins.eval, ("1",)))}, "builtins.eval"),
    }


def assert_refused(path: Path, global_name: str, marker: Path) -> None:
    with pytest.raises(StudioError) as info:
        read_network_file(path)
    message = str(info.value)
    assert "\n" not in message and f"'{global_name}'" in message and "refusing to load" in message
    assert not marker.exists()


@pytest.mark.parametrize("case", ["os.system", "exec", "popen", "eval in a dict"])
def test_hostile_pickles_are_refused(tmp_path, case):
    marker = tmp_path / "MARKER"
    payload, name = hostile_payloads(marker)[case]
    for protocol in (2, 4, 5):
        path = tmp_path / f"evil{protocol}.pkl"
        path.write_bytes(pickle.dumps(payload, protocol=protocol))
        assert_refused(path, name, marker)


def test_unknown_globals_are_refused_with_their_name_escaped(tmp_path):
    marker = tmp_path / "MARKER"
    path = tmp_path / "unknown.pkl"
    path.write_bytes(pickle.dumps(Hostile((pytest.approx, (1,))), protocol=4))
    assert_refused(path, pytest.approx.__module__ + ".approx", marker)
    # STACK_GLOBAL with a newline in the module name: the message stays on one line
    raw = b"\x80\x04\x8c\x0bevil\nmodule\x94\x8c\x03run\x94\x93\x94)R\x94."
    path.write_bytes(raw)
    with pytest.raises(StudioError) as info:
        read_network_file(path)
    assert "\n" not in str(info.value) and "evil\\nmodule.run" in str(info.value)


def test_hostile_nested_tensor_blobs_are_refused(tmp_path):
    marker = tmp_path / "MARKER"
    evil = Hostile((os.system, (f"touch {marker}",)))
    load_from_bytes = torch.storage._load_from_bytes
    for blob in (pickle.dumps(evil, protocol=2), legacy_blob(evil)):
        path = tmp_path / "nested.pkl"
        path.write_bytes(pickle.dumps({"G_ema": Hostile((load_from_bytes, (blob,)))}, protocol=4))
        assert_refused(path, f"{os.system.__module__}.system", marker)


def test_hostile_zip_and_legacy_checkpoints_are_refused(tmp_path):
    marker = tmp_path / "MARKER"
    evil = Hostile((os.system, (f"touch {marker}",)))
    name = f"{os.system.__module__}.system"
    zipped = tmp_path / "evil_zip.pt"
    torch.save({"g_ema": evil}, zipped)
    assert zipfile.is_zipfile(zipped)
    assert_refused(zipped, name, marker)
    legacy = tmp_path / "evil_legacy.pt"
    torch.save({"g_ema": evil}, legacy, _use_new_zipfile_serialization=False)
    assert_refused(legacy, name, marker)


def test_setting_state_on_other_objects_is_refused(tmp_path):
    path = tmp_path / "build.pkl"
    path.write_bytes(pickle.dumps(Hostile((set, ([],), {"x": 1})), protocol=4))
    with pytest.raises(StudioError, match="sets the state of a 'set' object"):
        read_network_file(path)


def one_line_error(path: Path) -> str:
    with pytest.raises(StudioError) as info:
        read_network_file(path)
    message = str(info.value)
    assert "\n" not in message and str(path.name) in message
    return message


def test_truncated_empty_and_random_files_give_one_line_errors(tmp_path):
    for name in ("sg2ada_uncond.pkl", "rosinality_g_ema.pt", "rosinality_g_ema_legacy.pt"):
        data = (FIXTURES / name).read_bytes()
        for cut in (len(data) // 2, len(data) - 3):
            path = tmp_path / f"cut_{cut}_{name}"
            path.write_bytes(data[:cut])
            assert "truncated or corrupt" in one_line_error(path) or "corrupt" in one_line_error(path)
    empty = tmp_path / "empty.pkl"
    empty.write_bytes(b"")
    assert "empty" in one_line_error(empty)
    short = tmp_path / "short.pkl"
    short.write_bytes(b"\x80")
    assert "too short" in one_line_error(short)
    noise = tmp_path / "noise.pkl"
    noise.write_bytes(np.random.RandomState(0).bytes(4096))
    assert "neither a network pickle nor a torch.save checkpoint" in one_line_error(noise)
    noisy_pickle = tmp_path / "noisy_pickle.pkl"
    noisy_pickle.write_bytes(b"\x80\x04" + np.random.RandomState(1).bytes(4096))
    one_line_error(noisy_pickle)
    assert one_line_error(tmp_path / "missing.pkl").startswith("no network file")


def test_pickles_that_are_not_networks_are_clear_errors(tmp_path):
    listed = tmp_path / "list.pkl"
    listed.write_bytes(pickle.dumps([1, 2, 3]))
    assert "not a dict of networks" in one_line_error(listed)
    no_g_ema = tmp_path / "no_g_ema.pkl"
    no_g_ema.write_bytes(pickle.dumps({"G": 1, "D": 2}))
    assert "no 'G_ema' network" in one_line_error(no_g_ema) and "'G'" in one_line_error(no_g_ema)
    bare = tmp_path / "bare.pt"
    torch.save({"weights": torch.zeros(2)}, bare)
    with pytest.raises(StudioError, match="no StyleGAN generator"):
        network_kind(read_network_file(bare))


def test_out_of_bounds_tensor_views_are_refused(tmp_path):
    buffer = io.BytesIO()
    torch.save({"g_ema": torch.zeros(4).as_strided([3], [1], 0)}, buffer)
    path = tmp_path / "ok.pt"
    path.write_bytes(buffer.getvalue())
    assert read_network_file(path)["g_ema"].shape == (3,)
    # the same archive with the tensor's size raised past its storage
    with zipfile.ZipFile(path) as zf:
        entries = {n: zf.read(n) for n in zf.namelist()}
    pkl = next(n for n in entries if n.endswith("data.pkl"))
    entries[pkl] = entries[pkl].replace(b"K\x03\x85", b"K\x09\x85")
    bad = tmp_path / "bad.pt"
    with zipfile.ZipFile(bad, "w") as zf:
        for n, data in entries.items():
            zf.writestr(n, data)
    assert "past the end of its storage" in one_line_error(bad)


def test_stylegan3_files_route_to_the_stylegan3_generator():
    sg3 = pytest.importorskip("pipelines.stylegan_nets.sg3")
    assert isinstance(load_stylegan(FIXTURES / "sg3_t.pkl"), sg3.StyleGAN3Generator)

"""StyleGAN3 generators (configs T and R) against the outputs the official code gives for the fixture nets.

The fixtures (tests/fixtures/stylegan, described in their README) are tiny random-weight snapshots; the
``.npz`` next to them holds ws and images for z from seeds 0..3. Every array must match to 1e-4.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.stylegan_nets.reader import read_network_file
from pipelines.stylegan_nets.sg3 import StyleGAN3Generator, filtered_lrelu, lrelu_padding
from studio.errors import StudioError

FIXTURES = Path(__file__).parent / "fixtures" / "stylegan"
TOL = 1e-4
NETWORKS = {"sg3_t.pkl": "sg3_t.npz", "sg3_t_numpy2.pkl": "sg3_t.npz", "sg3_r.pkl": "sg3_r.npz"}


@cache
def snapshot(name: str) -> dict:
    return read_network_file(FIXTURES / name)


@cache
def reference(name: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / name) as data:
        return {k: data[k] for k in data.files}


@cache
def generator(name: str) -> StyleGAN3Generator:
    return StyleGAN3Generator.from_snapshot(snapshot(name))


def outputs(G: StyleGAN3Generator, ref: dict[str, np.ndarray], all_keys: bool = True) -> dict[str, np.ndarray]:
    """The npz's ws_* and img_* keys (only the psi=1 pair unless ``all_keys``), computed end to end: the
    images come from our own ws."""
    z, c = torch.from_numpy(ref["z"]), torch.from_numpy(ref["c"])
    cutoff = G.num_ws // 2
    with torch.no_grad():
        ws = {"psi1": G.mapping(z, c, truncation_psi=1)}
        if all_keys:
            ws["psi0.7"] = G.mapping(z, c, truncation_psi=0.7)
            ws[f"psi0.7_cutoff{cutoff}"] = G.mapping(z, c, truncation_psi=0.7, truncation_cutoff=cutoff)
        out = {f"ws_{k}": v.numpy() for k, v in ws.items()}
        out |= {f"img_{k}_const": G.synthesis(v, noise_mode="const").numpy() for k, v in ws.items()}
    return out


@cache
def our_outputs(name: str) -> dict[str, np.ndarray]:
    return outputs(generator(name), reference(NETWORKS[name]))


def max_errors(ours: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> dict[str, float]:
    for key, value in ours.items():
        assert value.shape == ref[key].shape, key
    return {key: float(np.abs(value - ref[key]).max()) for key, value in ours.items()}


@pytest.mark.parametrize("name", list(NETWORKS))
def test_ws_and_images_match_the_official_outputs(name):
    ref = reference(NETWORKS[name])
    ours = our_outputs(name)
    assert set(ours) == {k for k in ref if k.startswith(("ws_", "img_"))}  # every key of the npz
    errors = max_errors(ours, ref)
    print(name, {k: f"{v:.2e}" for k, v in errors.items()})
    assert all(v <= TOL for v in errors.values()), errors


@pytest.mark.parametrize("name", list(NETWORKS))
def test_generator_attributes_come_from_the_file(name):
    G = generator(name)
    assert (G.z_dim, G.w_dim, G.c_dim, G.num_ws, G.img_resolution, G.img_channels) == (32, 32, 0, 16, 32, 3)
    z = torch.from_numpy(reference(NETWORKS[name])["z"])
    with torch.no_grad():
        img = G(z, None, truncation_psi=0.7)
    np.testing.assert_allclose(img.numpy(), reference(NETWORKS[name])["img_psi0.7_const"], atol=TOL, rtol=0)


def test_the_generator_reads_G_ema_not_the_training_copy():
    snap, ref = snapshot("sg3_t.pkl"), reference("sg3_t.npz")
    errors = max_errors(outputs(StyleGAN3Generator.from_persistent(snap["G"]), ref, all_keys=False), ref)
    print("G (training copy)", {k: f"{v:.2e}" for k, v in errors.items()})
    assert min(errors.values()) > 100 * TOL  # the training copy is visibly different ...
    assert max(max_errors(our_outputs("sg3_t.pkl"), ref).values()) <= TOL  # ... while G_ema matches


def test_records_that_are_not_a_stylegan3_generator_are_refused():
    snap = snapshot("sg3_t.pkl")
    with pytest.raises(StudioError, match="not a StyleGAN3 generator") as err:
        StyleGAN3Generator.from_persistent(snap["D"])
    assert "\n" not in str(err.value)
    with pytest.raises(StudioError, match="no G_ema"):
        StyleGAN3Generator.from_snapshot({k: v for k, v in snap.items() if k != "G_ema"})


def test_wrong_latent_shapes_are_refused_in_one_line():
    G = generator("sg3_r.pkl")
    for call in (lambda: G.mapping(torch.zeros(2, 31)), lambda: G.synthesis(torch.zeros(2, 15, 32))):
        with pytest.raises(StudioError) as err:
            call()
        assert "\n" not in str(err.value)


def test_filtered_lrelu_paddings_match_the_layers_stored_ones():
    for name in ("sg3_t.pkl", "sg3_r.pkl"):
        synthesis = snapshot(name)["G_ema"].modules["synthesis"]
        for key, rec in synthesis.modules.items():
            if key == "input":
                continue
            a = rec.attrs
            taps = [1 if rec.buffers.get(f) is None else rec.buffers[f].shape[-1] for f in ("up_filter", "down_filter")]
            pad = lrelu_padding(tuple(int(s) for s in a["in_size"]), tuple(int(s) for s in a["out_size"]),
                                int(rec.parameters["weight"].shape[-1]), int(a["up_factor"]), int(a["down_factor"]),
                                *taps)
            assert pad == [int(p) for p in a["padding"]], key


def test_filtered_lrelu_keeps_a_positive_constant_times_the_gain_away_from_the_borders():
    # The up filter's gain up**2 makes up for zero insertion, so a constant > 0 comes out times sqrt(2).
    rec = snapshot("sg3_t.pkl")["G_ema"].modules["synthesis"].modules["L6_52_17"]
    fu, fd = rec.buffers["up_filter"], rec.buffers["down_filter"]
    pad = lrelu_padding((52, 52), (52, 52), 3, 2, 2, fu.shape[-1], fd.shape[-1])
    x = torch.full([1, 2, 54, 54], 0.5)
    y = filtered_lrelu(x, fu, fd, torch.tensor([0.25, 0.25]), up=2, down=2, padding=pad, gain=2**0.5,
                       slope=0.2, clamp=None)
    assert y.shape == (1, 2, 52, 52)
    inner = y[:, :, 10:-10, 10:-10]
    torch.testing.assert_close(inner, torch.full_like(inner, 0.75 * 2**0.5), atol=2e-3, rtol=0)


def test_the_r_config_clamp_is_reached_at_conv_clamp_times_output_scale():
    # sg3_r has conv_clamp=3 and output_scale=0.25: a few percent of its pixels sit exactly at +-0.75.
    img = our_outputs("sg3_r.pkl")["img_psi1_const"]
    assert abs(float(np.abs(img).max()) - 0.75) < 1e-6
    assert 0.01 < float(np.mean(np.abs(img) > 0.75 - 1e-6)) < 0.2

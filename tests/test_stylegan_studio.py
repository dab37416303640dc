"""StyleGAN networks in the studio: a .pkl or .pt as a model spec, classes, z/w/w+, style mixing, SeFa,
projection into w and w+, and `studio convert`, all on the fixture networks (tests/fixtures/stylegan)."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image

from pipelines.common import to_pil
from pipelines.registry import load_adapter
from pipelines.stylegan_nets.sg2 import load_stylegan
from studio import ops
from studio.cli import main
from studio.errors import SpaceMismatch, StudioError
from studio.objects import Generation, Latent
from studio.session import Session

FIXTURES = Path(__file__).parent / "fixtures" / "stylegan"
UNCOND, COND, SG3_R = (str(FIXTURES / f) for f in ("sg2ada_uncond.pkl", "sg2ada_cond.pkl", "sg3_r.pkl"))
ROSINALITY = str(FIXTURES / "rosinality_g_ema.pt")


def studio(home, *args, code=0):
    result = CliRunner().invoke(main, ["--home", str(home), *args], catch_exceptions=False)
    assert result.exit_code == code, (result.exit_code, result.output, result.stderr)
    return result


def pixels(images) -> np.ndarray:
    return np.stack([np.asarray(im) for im in images])


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    s = Session(tmp_path_factory.mktemp("stylegan-home"))
    yield s
    s.library.close()


@pytest.mark.parametrize("spec", [UNCOND, SG3_R, ROSINALITY])
def test_a_network_file_renders_what_the_network_draws(session, spec):
    G = load_stylegan(spec)
    (gen,) = session.sample(spec, seed=3, truncation=0.7)
    z = gen.obj.roles["z"].tensor[None]  # [1, z_dim]: drawn on the CPU from seed 3
    assert torch.equal(z[0], torch.randn(G.z_dim, generator=torch.Generator().manual_seed(3)))
    want = to_pil(G(z, None, truncation_psi=0.7, noise_mode="const"))
    assert np.array_equal(pixels(session.render([gen.obj])), pixels(want))
    assert gen.obj.spaces["z"].kind == "gan-z" and gen.obj.model == str(Path(spec).resolve())


def test_the_adapter_draws_the_recorded_pictures_of_the_official_code(session):
    ref = np.load(FIXTURES / "sg2ada_uncond.npz")
    adapter = session.adapter(UNCOND)
    gens = [Generation({"z": Latent(torch.from_numpy(z), adapter.z_space, {})}, UNCOND, {"truncation": 0.7}, {})
            for z in ref["z"]]
    want = pixels(to_pil(torch.from_numpy(ref["img_psi0.7_const"])))
    assert np.abs(pixels(adapter.render(gens)).astype(int) - want).max() <= 1  # 1e-6 apart before rounding


def test_a_conditional_network_takes_a_class_chosen_or_given(session):
    G = load_stylegan(COND)
    given = session.sample(COND, seed=5, **{"class": 3})[0].obj
    assert given.settings["class"] == 3
    chosen = [g.obj.settings["class"] for g in session.sample(COND, seed=0, count=8)]
    assert set(chosen) <= {0, 1, 2, 3} and len(set(chosen)) > 1  # the seed chooses, so seeds spread over classes
    z = given.roles["z"].tensor[None]
    want = to_pil(G(z, F.one_hot(torch.tensor([3]), 4).float(), noise_mode="const"))
    assert np.array_equal(pixels(session.render([given])), pixels(want))
    with pytest.raises(StudioError, match=r"setting class=4 must be an integer between 0 and 3"):
        session.sample(COND, seed=1, **{"class": 4})
    with pytest.raises(StudioError, match=r"takes its class as an index, the setting class \(0 to 3\), not category"):
        session.sample(COND, seed=1, category="flags")
    with pytest.raises(StudioError, match="is unconditional: it takes no class setting"):
        session.sample(UNCOND, seed=1, **{"class": 0})
    with pytest.raises(StudioError, match="takes its class as a category and a style, not the setting class"):
        session.sample("emoji-gan", seed=1, **{"class": 0})


@pytest.mark.parametrize("spec", [COND, SG3_R])
def test_z_w_and_w_plus_samples_of_a_seed_draw_the_same_picture(session, spec):
    items = [session.sample(spec, seed=11, space=space, **({"class": 2} if spec == COND else {}))[0].obj
             for space in ("z", "w", "w+")]
    adapter = session.adapter(spec)
    assert items[2].roles["w+"].tensor.shape == (adapter.network.num_ws, adapter.network.w_dim)
    assert str(items[2].spaces["w+"]).startswith("gan-w+[")
    first, *rest = (pixels(session.render([g])) for g in items)
    assert all(np.array_equal(first, other) for other in rest)


def test_mix_takes_coarse_layers_from_one_and_fine_from_the_other_with_lineage(session):
    a, b = (session.sample(UNCOND, seed=s, name=f"mix-{s}")[0] for s in (1, 2))
    mixed = session.evaluate("mix(@mix-1, @mix-2, 4)", name="mixed")
    adapter = session.adapter(UNCOND)
    ws = [adapter.to_wplus(g.obj).roles["w+"].tensor for g in (a, b)]
    assert torch.equal(mixed.obj.roles["w+"].tensor, torch.cat([ws[0][:4], ws[1][4:]]))
    assert mixed.obj.lineage.op == "mix" and mixed.obj.lineage.parents == (a.id, b.id)
    assert mixed.obj.lineage.params["layer"] == 4
    want = to_pil(load_stylegan(UNCOND).synthesis(mixed.obj.roles["w+"].tensor[None], noise_mode="const"))
    assert np.array_equal(pixels(session.render([mixed.obj])), pixels(want))
    with pytest.raises(StudioError, match=r"mix's layer must be a whole number from 1 to 7"):
        session.evaluate("mix(@mix-1, @mix-2, 8)")
    other = session.sample(SG3_R, seed=1, name="mix-sg3")[0]
    with pytest.raises(SpaceMismatch, match="gan-w\\+"):
        session.evaluate("mix(@mix-1, @mix-sg3, 4)")
    session.sample("tiny-sd", "a cat", seed=1, name="mix-sd", steps=1)
    with pytest.raises(StudioError, match="w\\+ is a GAN space; a generation of tiny-sd has none"):
        session.evaluate("mix(@mix-sd, @mix-sd, 1)")
    assert other.obj.model.endswith("sg3_r.pkl")


def test_sefa_directions_are_the_top_eigenvectors_of_the_chosen_layers_style_weights(session):
    made = session.vectors.discover(UNCOND, method="sefa", layers="0-3", k=3, prefix="sefa")
    adapter = session.adapter(UNCOND)
    a = adapter.style_weights(range(0, 4)).double()
    a = a / a.norm(dim=1, keepdim=True)
    want, values = ops.sefa(a, 3)
    got = torch.stack([s.obj.tensor for s, _ in made])
    assert torch.allclose(got, want, atol=1e-6) and made[0][0].obj.space == adapter.w_space
    assert [round(r, 6) for _, r in made] == [round(float(v) / float(a.square().sum()), 6) for v in values]
    assert made[0][0].obj.lineage.params["layers"] == [0, 3]
    (edited,) = session.vectors.apply(session.sample(UNCOND, seed=4, space="w")[0].id, "sefa0", [3.0])
    assert torch.allclose(edited.obj.roles["w"].tensor - session.get(edited.obj.lineage.parents[0]).roles["w"].tensor,
                          3.0 * got[0], atol=1e-5)
    with pytest.raises(StudioError, match="layers '0-9' are not a range of this network's synthesis inputs 0-7"):
        session.vectors.discover(UNCOND, method="sefa", layers="0-9", k=2)
    with pytest.raises(StudioError, match="model tiny-sd cannot find SeFa directions"):
        session.vectors.discover("tiny-sd", method="sefa", k=2)


def test_projection_into_w_plus_reconstructs_closer_than_into_w(session, tmp_path):
    from studio.scoring import psnr

    (target,) = session.render_to(session.sample(UNCOND, seed=21, truncation=0.5), tmp_path)
    scores = {}
    for space in ("w", "w+"):
        stored = session.invert(target, UNCOND, steps=60, space=space)
        assert list(stored.obj.roles) == [space] and stored.obj.lineage.params["space"] == space
        (picture,) = session.render([session.get(stored.id)])  # as stored
        scores[space] = psnr(np.asarray(picture), np.asarray(Image.open(target)))
    assert scores["w+"] > scores["w"] + 1, scores


def test_cli_samples_mixes_inverts_discovers_and_converts_a_network(tmp_path):
    home, out = tmp_path / "home", tmp_path / "o"
    line = studio(home, "sample", "--model", SG3_R, "--seed", "1", "-n", "2", "--name", "r", "--out", str(out)).stdout
    assert line.count("generation") == 2 and len(list(out.glob("*.png"))) == 2
    mixed = studio(home, "eval", "mix(@r-1, @r-2, 4)", "--name", "rmix", "--json").stdout
    shown = json.loads(studio(home, "latents", "show", "rmix", "--json").stdout)
    assert json.loads(mixed)[0]["id"] == shown["id"] and shown["lineage"]["op"] == "mix"
    assert shown["lineage"]["params"]["layer"] == 4 and len(shown["lineage"]["parents"]) == 2
    picture = next(out.glob("*.png"))
    inverted = studio(home, "invert", str(picture), "--model", SG3_R, "--space", "w+", "--steps", "5", "--out",
                      str(tmp_path / "inv"))
    assert "reconstruction PSNR" in inverted.stderr and inverted.stdout.count("generation") == 1
    rows = studio(home, "vectors", "discover", "--model", SG3_R, "--method", "sefa", "-k", "2", "--prefix", "d").stdout
    assert "eigenvalue share" in rows and len(rows.splitlines()) == 2
    folder = tmp_path / "converted"
    said = studio(home, "convert", str(FIXTURES / "sg2ada_cond.pkl"), str(folder)).stdout
    assert said.startswith("nvidia-stylegan2 (32px, z 32, w 32, 8 ws, 4 classes) -> ")
    a = studio(home, "sample", "--model", str(folder), "--seed", "2", "--class", "1", "--out", str(tmp_path / "a"))
    b = studio(home, "sample", "--model", COND, "--seed", "2", "--class", "1", "--out", str(tmp_path / "b"))
    assert a.stdout.split()[0] != b.stdout.split()[0]  # another model spec, so another id ...
    pa, pb = (next((tmp_path / d).glob("*.png")) for d in "ab")
    assert np.array_equal(np.asarray(Image.open(pa)), np.asarray(Image.open(pb)))  # ... and the same picture
    err = studio(home, "convert", str(FIXTURES / "sg2ada_cond.pkl"), str(folder), code=2).stderr
    assert err.startswith("error: ") and "\n" not in err.strip()


class Hostile:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_hostile_network_file_is_refused_by_name_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    evil = tmp_path / "net.pkl"
    evil.write_bytes(pickle.dumps({"G_ema": Hostile(marker)}))
    home = tmp_path / "home"
    for args in (["sample", "--model", str(evil), "--seed", "1"], ["convert", str(evil), str(tmp_path / "f")]):
        err = studio(home, *args, code=2).stderr.strip()
        assert err.startswith("error: ") and "'posix.system'" in err and "\n" not in err, err
    assert not marker.exists() and not (tmp_path / "f").exists()
    assert load_adapter(str(FIXTURES / "sg3_t_numpy2.pkl")).network.num_ws == 16  # numpy 2 pickles read too
    shutil.rmtree(home, ignore_errors=True)


def test_the_cli_samples_a_pickle_under_unshare_n(tmp_path):
    """`unshare -n studio sample --model sg3_r.pkl --seed 1 --out o/` in a fresh process, in a folder of its own."""
    import subprocess
    import sys

    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(SG3_R, work / "sg3_r.pkl")
    env = {**os.environ, "STUDIO_HOME": str(tmp_path / "home")}
    prefix = next((p for p in (["unshare", "-n"], ["unshare", "-rn"]) if shutil.which("unshare")
                   and subprocess.run([*p, "true"], capture_output=True).returncode == 0), [])
    out = subprocess.run([*prefix, sys.executable, "-m", "studio", "sample", "--model", "sg3_r.pkl", "--seed", "1",
                          "--out", "o/", "--json"], capture_output=True, text=True, env=env, cwd=work, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    (made,) = json.loads(out.stdout)
    assert Image.open(work / "o" / f"{made['id'][:12]}.png").size == (32, 32)


def test_a_w_direction_applied_to_a_layer_range_moves_only_those_rows(session):
    session.vectors.discover(SG3_R, method="sefa", k=1, prefix="lr")
    target = session.sample(SG3_R, seed=8, name="lr-target")[0]
    low, high = session.vectors.apply("lr-target", "lr0", [-2.0, 2.0], layers="2-5", name="lr-edit")
    base = session.adapter(SG3_R).to_wplus(target.obj).roles["w+"].tensor
    v = session.get("lr0").tensor
    moved = high.obj.roles["w+"].tensor - base
    assert torch.allclose(moved[2:6], 2.0 * v.expand(4, -1), atol=1e-6) and not moved[:2].any() and not moved[6:].any()
    assert torch.allclose(low.obj.roles["w+"].tensor[2:6] - base[2:6], -2.0 * v.expand(4, -1), atol=1e-6)
    assert high.obj.lineage.params["layers"] == [2, 5] and high.obj.lineage.parents == (target.id, session.get(
        "lr0").id)
    assert not np.array_equal(*(pixels(session.render([x.obj])) for x in (low, high)))
    with pytest.raises(StudioError, match="layers '5-99' are not a range"):
        session.vectors.apply("lr-target", "lr0", [1.0], layers="5-99")
    session.vectors.discover(UNCOND, method="sefa", k=1, prefix="other")  # another network's w
    with pytest.raises(SpaceMismatch, match="--layers moves w\\+ rows by a vector in gan-w"):
        session.vectors.apply("lr-target", "other0", [1.0], layers="0-1")

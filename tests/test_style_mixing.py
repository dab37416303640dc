"""StyleGAN's w+ space: style mixing as an algebra op (with lifting and lineage), and SeFa's directions."""

import pytest
import torch

from studio import algebra, expr, ops
from studio.errors import ExpressionError, SpaceMismatch, StudioError
from studio.objects import Generation, Latent, Lineage, Vector
from studio.space import GAN_ROLES, KINDS, Space

FAMILY = "stylegan-test0001"
NUM_WS, W_DIM = 6, 4
WPLUS = Space("gan-w+", FAMILY, (NUM_WS, W_DIM))
W = Space("gan-w", FAMILY, (W_DIM,))
Z = Space("gan-z", FAMILY, (8,))
SETTINGS = {"truncation": 0.7}


def randn(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def gan(seed: int, role: str = "w+", space: Space = WPLUS, model: str = "tiny-gan") -> Generation:
    lat = Latent(randn(seed, space.shape), space, {"seed": seed, "model": model})
    return Generation({role: lat}, model, dict(SETTINGS), {"seed": seed}, Lineage("sample", {"seed": seed}))


def repeat_w(role: str, value):
    """A stand-in for the model's lift: a w generation becomes w+ by repeating its w for every layer."""
    assert role == "w+"
    if "w" not in value.roles:
        raise StudioError(f"cannot lift {algebra.describe(value)} without a mapping network")
    w = value.roles["w"]
    lat = Latent(w.tensor.expand(NUM_WS, -1), WPLUS, dict(w.meta))
    return Generation({"w+": lat}, value.model, dict(value.settings), dict(value.meta))


def run(source, table, lift=None):
    def lookup(name):
        if name not in table:
            raise StudioError(f"no stored object is named {name!r}")
        return table[name]

    return expr.evaluate(source, lookup, lift=lift)


# --- the pure op ---------------------------------------------------------------------------------

@pytest.mark.parametrize("k", [1, NUM_WS - 1])
def test_mix_layers_takes_coarse_layers_from_a_and_fine_from_b(k):
    a, b = randn(1, (NUM_WS, W_DIM)), randn(2, (NUM_WS, W_DIM))
    assert torch.equal(ops.mix_layers(a, b, k), torch.cat([a[:k], b[k:]]))


def test_mix_layers_works_on_batches():
    a, b = randn(1, (3, NUM_WS, W_DIM)), randn(2, (3, NUM_WS, W_DIM))
    assert torch.equal(ops.mix_layers(a, b, 2), torch.cat([a[:, :2], b[:, 2:]], dim=1))


def test_mix_layers_refuses_shapes_that_differ():
    with pytest.raises(ValueError, match="one shape"):
        ops.mix_layers(randn(1, (NUM_WS, W_DIM)), randn(2, (NUM_WS + 1, W_DIM)), 2)


# --- the space -----------------------------------------------------------------------------------

def test_w_plus_is_a_space_kind_that_is_not_gaussian():
    assert "gan-w+" in KINDS and not WPLUS.gaussian
    assert GAN_ROLES["gan-w+"] == "w+"
    assert Space.parse(str(WPLUS)) == WPLUS and Space.from_json(WPLUS.to_json()) == WPLUS


def test_w_plus_space_is_one_w_per_layer():
    with pytest.raises(StudioError, match=r"\(num_ws, w_dim\)"):
        Space("gan-w+", FAMILY, (NUM_WS * W_DIM,))


def test_slerp_on_w_plus_generations_is_linear():
    a, b = gan(1), gan(2)
    mid = algebra.slerp(a, b, 0.3)
    assert torch.allclose(mid.roles["w+"].tensor, ops.lerp(a.roles["w+"].tensor, b.roles["w+"].tensor, 0.3))


# --- mix in the algebra and the expression language -----------------------------------------------

def test_mix_of_w_plus_generations():
    a, b = gan(1), gan(2, model="other-gan")
    value, _ = run("mix(@a, @b, 2)", {"a": a, "b": b})
    assert isinstance(value, Generation) and list(value.roles) == ["w+"]
    assert value.roles["w+"].space == WPLUS
    assert torch.equal(value.roles["w+"].tensor, torch.cat([a.roles["w+"].tensor[:2], b.roles["w+"].tensor[2:]]))
    assert value.model == "tiny-gan" and value.settings == SETTINGS and value.meta == {}


def test_mix_of_w_plus_latents():
    a, b = gan(1).roles["w+"], gan(2).roles["w+"]
    out = algebra.mix(a, b, 3)
    assert isinstance(out, Latent) and out.space == WPLUS
    assert torch.equal(out.tensor, torch.cat([a.tensor[:3], b.tensor[3:]]))


def test_mix_lifts_w_generations_through_the_callback():
    a, b = gan(1, "w", W), gan(2)
    seen = []

    def lift(role, value):
        seen.append(value)
        return repeat_w(role, value)

    value, _ = run("mix(@a, @b, 2)", {"a": a, "b": b}, lift)
    assert seen == [a]  # b is in w+ already
    wa = a.roles["w"].tensor
    assert torch.equal(value.roles["w+"].tensor, torch.cat([wa.expand(2, -1), b.roles["w+"].tensor[2:]]))
    assert value.roles["w+"].space == WPLUS and value.model == a.model and value.settings == SETTINGS


def test_lift_is_not_called_outside_mix():
    def lift(role, value):
        raise AssertionError("lerp works in every role and needs no lift")

    value, _ = run("lerp(@a, @b, 0.5)", {"a": gan(1, "w", W), "b": gan(2, "w", W)}, lift)
    assert list(value.roles) == ["w"]


def test_mix_lineage_records_op_parents_and_layer():
    source = "mix(@a, @b, 2)"
    _, tree = run(source, {"a": gan(1), "b": gan(2)})
    lin = expr.lineage_of(tree, source, ["ida", "idb"])
    assert lin.op == "mix" and lin.parents == ("ida", "idb")
    assert lin.params == {"expr": source, "layer": 2}


def test_mix_lineage_records_a_keyword_layer_and_a_bound_one():
    _, tree = run("mix(@a, @b, layer=3)", {"a": gan(1), "b": gan(2)})
    assert expr.lineage_of(tree, "mix(@a, @b, layer=3)", ["ida", "idb"]).params["layer"] == 3
    table = {"a": gan(1), "b": gan(2)}
    value, tree = expr.evaluate("mix(@a, @b, k)", table.__getitem__, {"k": 4})
    assert torch.equal(value.roles["w+"].tensor[4:], table["b"].roles["w+"].tensor[4:])
    assert expr.lineage_of(tree, "mix(@a, @b, k)", ["ida", "idb"], {"k": 4}).params["k"] == 4


@pytest.mark.parametrize("layer", ["0", str(NUM_WS), "2.5", "@a", "-1"])
def test_mix_layer_out_of_range_says_the_range(layer):
    with pytest.raises(StudioError) as err:
        run(f"mix(@a, @b, {layer})", {"a": gan(1), "b": gan(2)})
    message = str(err.value)
    assert f"mix's layer must be a whole number from 1 to {NUM_WS - 1} (layers [0, k) come from the first " \
           "argument), got" in message
    assert "at position 1 of" in message
    if layer == "@a":
        assert "got generation of tiny-gan" in message


def test_mix_layer_message_matches_the_documented_one():
    space = Space("gan-w+", FAMILY, (16, 2))
    a = Generation({"w+": Latent(randn(1, (16, 2)), space)}, "m")
    with pytest.raises(StudioError, match=r"^mix's layer must be a whole number from 1 to 15 \(layers \[0, k\) "
                                          r"come from the first argument\), got 16$"):
        algebra.mix(a, a, 16)


def test_mix_of_two_spaces_names_both():
    other = Space("gan-w+", "stylegan-test0002", (NUM_WS, W_DIM))
    with pytest.raises(SpaceMismatch) as err:
        run("mix(@a, @b, 2)", {"a": gan(1), "b": gan(2, space=other)})
    assert str(WPLUS) in str(err.value) and str(other) in str(err.value)


def test_mix_of_a_z_generation_without_lift_says_what_it_needs():
    z = gan(1, "z", Z, "tiny-gan")
    with pytest.raises(StudioError) as err:
        run("mix(@a, @b, 2)", {"a": z, "b": gan(2)})
    message = str(err.value)
    assert message.startswith(f"mix needs generations in w+ (one w per layer); got generation of tiny-gan (z: {Z})")
    assert message.endswith("(at position 1 of 'mix(@a, @b, 2)')") and "\n" not in message


def test_a_lift_that_fails_keeps_the_position():
    with pytest.raises(StudioError) as err:
        run("mix(@b, @a, 2)", {"a": gan(1, "z", Z), "b": gan(2)}, repeat_w)
    assert not isinstance(err.value, ExpressionError)
    assert str(err.value) == (f"cannot lift generation of tiny-gan (z: {Z}) without a mapping network "
                              "(at position 9 of 'mix(@b, @a, 2)')")


def test_mix_of_a_vector_is_refused():
    v = Vector(randn(3, WPLUS.shape), WPLUS, "sefa")
    with pytest.raises(StudioError, match="mix needs latents or generations in w\\+.*got vector in gan-w\\+"):
        run("mix(@a, @v, 2)", {"a": gan(1).roles["w+"], "v": v})


def test_mix_of_a_generation_and_a_latent_is_refused():
    with pytest.raises(StudioError, match="two generations or two latents"):
        algebra.mix(gan(1), gan(2).roles["w+"], 2)


def test_mix_takes_three_arguments():
    with pytest.raises(ExpressionError, match=r"mix\(a, b, layer\) takes 3 argument"):
        expr.parse("mix(@a, @b)")


# --- SeFa ----------------------------------------------------------------------------------------

def orthogonal(seed: int, n: int) -> torch.Tensor:
    q, r = torch.linalg.qr(randn(seed, (n, n)).double())
    return q * torch.sign(torch.diagonal(r))


def signed(v: torch.Tensor) -> torch.Tensor:
    """Each row with its largest-magnitude component made positive (SeFa's sign rule)."""
    peak = v.gather(1, v.abs().argmax(dim=1, keepdim=True))
    return v * torch.sign(peak)


def known_weight(rows: int = 12, w_dim: int = 8):
    u, v = orthogonal(1, rows)[:, :w_dim], orthogonal(2, w_dim)
    s = torch.tensor([0.5, 3.0, 1.0, 2.5, 0.2, 4.0, 1.5, 0.8], dtype=torch.float64)[:w_dim]
    return (u * s) @ v.T, s, v  # A = U diag(s) V^T, [rows, w_dim]


@pytest.mark.parametrize("k", [1, 3, 8])
def test_sefa_finds_the_right_singular_vectors(k):
    a, s, v = known_weight()
    directions, values = ops.sefa(a.float(), k)
    order = torch.argsort(s, descending=True)[:k]
    assert directions.shape == (k, 8) and directions.dtype == torch.float32 and values.dtype == torch.float32
    assert (directions.double() - signed(v[:, order].T)).abs().max() < 1e-5
    assert torch.allclose(values.double(), s[order] ** 2, rtol=1e-5)
    assert torch.all(values[:-1] >= values[1:])
    assert torch.allclose(directions.double().norm(dim=1), torch.ones(k, dtype=torch.float64), atol=1e-6)


def test_sefa_sign_is_deterministic():
    a, _, _ = known_weight()
    d1, _ = ops.sefa(a.float(), 4)
    d2, _ = ops.sefa(-a.float(), 4)  # the same A^T A: the same directions, signs included
    assert torch.equal(d1, d2)
    peak = d1.gather(1, d1.abs().argmax(dim=1, keepdim=True))
    assert torch.all(peak > 0)


@pytest.mark.parametrize("k", [0, 9, 2.0, True])
def test_sefa_k_bounds(k):
    a, _, _ = known_weight()
    with pytest.raises(ValueError, match="from 1 to 8"):
        ops.sefa(a.float(), k)


def test_sefa_needs_a_matrix():
    with pytest.raises(ValueError, match=r"\[S, w_dim\]"):
        ops.sefa(torch.ones(2, 3, 4), 1)

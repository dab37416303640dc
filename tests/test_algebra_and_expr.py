"""The typed algebra (space checks, role-by-role ops) and the expression language."""

import pytest
import torch

from conftest import NOISE, OTHER, TEXT, generation, noise_latent, vector
from studio import algebra, expr, ops
from studio.errors import ExpressionError, SpaceMismatch, StudioError
from studio.objects import Generation, Latent


def test_combining_two_spaces_names_both():
    a, z = noise_latent(1), noise_latent(2, OTHER)
    with pytest.raises(SpaceMismatch) as err:
        algebra.add(a, z)
    assert str(NOISE) in str(err.value) and str(OTHER) in str(err.value)


def test_slerp_on_generations_is_spherical_for_noise_and_linear_for_text():
    g1, g2 = generation(1), generation(2)
    mid = algebra.slerp(g1, g2, 0.3)
    assert isinstance(mid, Generation)
    assert torch.allclose(mid.roles["noise"].tensor,
                          ops.slerp(g1.roles["noise"].tensor, g2.roles["noise"].tensor, 0.3))
    assert torch.allclose(mid.roles["text"].tensor,
                          ops.lerp(g1.roles["text"].tensor, g2.roles["text"].tensor, 0.3))
    assert mid.settings == g1.settings and mid.model == g1.model


def test_vector_added_to_generation_moves_only_its_role():
    g, v = generation(1), vector(7, TEXT)
    out = algebra.add(g, algebra.scale(v, 0.5))
    assert torch.equal(out.roles["noise"].tensor, g.roles["noise"].tensor)
    assert torch.allclose(out.roles["text"].tensor, g.roles["text"].tensor + 0.5 * v.tensor)


def test_vector_of_another_space_is_a_clear_error():
    with pytest.raises(SpaceMismatch, match="gan-z"):
        algebra.add(generation(1), vector(1, OTHER))


def test_number_plus_latent_is_refused():
    with pytest.raises(StudioError, match="use '\\*'"):
        algebra.add(1.0, noise_latent(1))


def test_nan_results_are_refused():
    with pytest.raises(StudioError, match="NaN or Inf"):
        algebra.scale(noise_latent(1), 1e39)


def test_latent_refuses_nan_input():
    t = torch.zeros(NOISE.shape)
    t[0, 0, 0] = float("nan")
    with pytest.raises(StudioError, match="1 NaN or Inf"):
        Latent(t, NOISE)


def objects():
    return {"a": noise_latent(1), "b": noise_latent(2), "g": noise_latent(3, OTHER), "v": vector(4, NOISE)}


def run(source, bindings=None):
    table = objects()

    def lookup(name):
        if name not in table:
            raise StudioError(f"no stored object is named {name!r}")
        return table[name]

    value, _ = expr.evaluate(source, lookup, bindings)
    return value


def test_expression_precedence_and_functions():
    a, b, v = objects()["a"].tensor, objects()["b"].tensor, objects()["v"].tensor
    out = run("slerp(@a, @b, 0.3) + 0.8 * @v")
    assert torch.allclose(out.tensor, ops.slerp(a, b, 0.3) + 0.8 * v, atol=1e-6)
    assert torch.allclose(run("-(@a - @b) / 2").tensor, -(a - b) / 2)
    assert torch.allclose(run("mean(@a, @b, @a)").tensor, (2 * a + b) / 3, atol=1e-6)
    assert torch.allclose(run("lerp(@a, @b, t=0.25)").tensor, torch.lerp(a, b, 0.25))
    assert torch.allclose(run("lerp(@a, @b, t)", {"t": 0.5}).tensor, torch.lerp(a, b, 0.5))
    assert run("2 * 3 - 1") == 5.0


@pytest.mark.parametrize("source, message, position", [
    ("slerp(@a, @b", "expected ')'", 13),
    ("@a + * @b", "expected a number", 6),
    ("@a @b", "expected an operator", 4),
    ("frobnicate(@a)", "unknown function 'frobnicate'", 1),
    ("@a + $", "unexpected character '$'", 6),
    ("slerp(@a, @b)", "takes 3 argument(s), got 2", 1),
    ("lerp(@a, @b, 0.5, t=1)", "got 't' twice", 21),
    ("@a + @nope", "no stored object is named 'nope'", 6),
    ("@a * t", "unknown variable 't'", 6),
])
def test_expression_errors_point_at_the_position(source, message, position):
    with pytest.raises(ExpressionError) as err:
        run(source)
    assert message in str(err.value)
    assert f"at position {position}" in str(err.value)
    assert err.value.position == position - 1


def test_space_mismatch_in_expression_names_both_spaces_and_the_position():
    with pytest.raises(SpaceMismatch) as err:
        run("@a + @g")
    assert str(NOISE) in str(err.value) and str(OTHER) in str(err.value)
    assert "position 4" in str(err.value)


def test_deep_nesting_is_refused_not_a_crash():
    with pytest.raises(ExpressionError, match="nested more than"):
        expr.parse("(" * 500 + "1" + ")" * 500)
    with pytest.raises(ExpressionError, match="nested more than"):
        expr.parse("-" * 500 + "1")


def test_refs_and_variables():
    tree = expr.parse("slerp(@a, @b, t) + @a * k")
    assert expr.refs(tree) == ["a", "b"]
    assert expr.variables(tree) == ["t", "k"]


def test_lineage_names_the_top_op_and_parents():
    tree = expr.parse("slerp(@a, @b, 0.5)")
    lin = expr.lineage_of(tree, "slerp(@a, @b, 0.5)", ["ida", "idb"])
    assert lin.op == "slerp" and lin.parents == ("ida", "idb")
    assert lin.params == {"expr": "slerp(@a, @b, 0.5)", "t": 0.5}


def test_long_flat_chains_evaluate_without_recursion():
    a = objects()["a"].tensor
    assert torch.allclose(run("+".join(["@a"] * 2000)).tensor, 2000 * a, rtol=1e-4)
    source = "@a" + "*1" * 4999  # 10,000 characters: a tree 4,999 levels deep
    assert torch.equal(run(source).tensor, a)
    assert run("-".join(["1"] * 3000)) == 1 - 2999
    assert expr.refs(expr.parse(source)) == ["a"]


def test_argument_mistakes_are_found_before_any_lookup():
    with pytest.raises(ExpressionError, match="got 't' twice"):
        run("lerp(@nope, @b, 0.5, t=1)")
    with pytest.raises(ExpressionError, match="takes 3 argument"):
        expr.parse("slerp(@a, @b)")  # known from the text alone


@pytest.mark.parametrize("fn, t", [("lerp", 1e39), ("blend", 1e39), ("slerp", 1e308), ("lerp", -2e6)])
def test_interpolation_weight_out_of_range_is_a_clear_error(fn, t):
    with pytest.raises(StudioError, match=f"{fn}'s t must be between -1e\\+06 and 1e\\+06"):
        run(f"{fn}(@a, @b, {t})")
    with pytest.raises(StudioError, match="must be between"):
        getattr(algebra, fn)(generation(1), generation(2), t)
    assert isinstance(getattr(algebra, fn)(generation(1), generation(2), 1e6), Generation)

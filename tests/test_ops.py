"""Properties of the pure latent ops (studio.ops)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from studio import ops

seeds = st.integers(0, 2**31 - 1)
ts = st.floats(0, 1, allow_nan=False)
shapes = st.sampled_from([(4,), (3, 5), (4, 2, 2)])


def pair(seed, shape):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


@given(seeds, shapes)
def test_interpolations_are_exact_at_the_ends(seed, shape):
    a, b = pair(seed, shape)
    for fn in (ops.lerp, ops.slerp, ops.blend):
        assert torch.equal(fn(a, b, 0), a)
        assert torch.equal(fn(a, b, 1), b)


@given(seeds, shapes, ts)
def test_slerp_keeps_the_norm_of_unit_inputs(seed, shape, t):
    a, b = pair(seed, shape)
    a, b = a / a.norm(), b / b.norm()
    assert ops.slerp(a, b, t).norm().item() == pytest.approx(1.0, abs=1e-5)


@given(seeds, ts)
def test_slerp_moves_at_constant_angular_speed(seed, t):
    a, b = pair(seed, (8,))
    a, b = a / a.norm(), b / b.norm()
    omega = math.acos(float(torch.dot(a, b)))
    m = ops.slerp(a, b, t)
    assert math.acos(max(-1.0, min(1.0, float(torch.dot(a, m))))) == pytest.approx(t * omega, abs=1e-3)


@given(seeds, ts, st.floats(1e-9, 1e-6))
def test_slerp_is_stable_for_nearly_parallel_inputs(seed, t, eps):
    a, d = pair(seed, (16,))
    b = a + eps * d
    out = ops.slerp(a, b, t)
    assert torch.isfinite(out).all()
    assert torch.allclose(out, ops.lerp(a, b, t), atol=1e-5)


def test_slerp_of_opposite_tensors_is_refused():
    a = torch.ones(4)
    with pytest.raises(ValueError, match="opposite"):
        ops.slerp(a, -a, 0.5)


def test_slerp_of_two_gaussians_keeps_their_norm_where_lerp_shrinks_it():
    a, b = pair(0, (4096,))
    assert ops.slerp(a, b, 0.5).norm() / a.norm() == pytest.approx(1.0, abs=0.02)
    assert ops.lerp(a, b, 0.5).norm() / a.norm() == pytest.approx(1 / math.sqrt(2), abs=0.03)


@given(seeds, shapes, st.floats(-4, 4))
def test_add_sub_scale_are_inverse(seed, shape, k):
    a, b = pair(seed, shape)
    assert torch.allclose(ops.sub(ops.add(a, b), b), a, atol=1e-5)
    assert torch.allclose(ops.scale(a, k), a * k)


@given(seeds, shapes)
def test_mean_of_copies_is_the_tensor_and_mean_is_symmetric(seed, shape):
    a, b = pair(seed, shape)
    assert torch.allclose(ops.mean(a, a, a), a)
    assert torch.allclose(ops.mean(a, b), ops.mean(b, a))
    assert torch.allclose(ops.mean(a, b), (a + b) / 2, atol=1e-6)


@given(seeds, shapes, st.floats(0.1, 100))
def test_normalize_sets_the_norm(seed, shape, norm):
    a, _ = pair(seed, shape)
    assert ops.normalize(a, norm).norm().item() == pytest.approx(norm, rel=1e-5)
    with pytest.raises(ValueError):
        ops.normalize(torch.zeros(shape))


@given(seeds, ts)
def test_blend_interpolates_the_norm(seed, t):
    a, b = pair(seed, (64,))
    b = b * 3
    expected = (1 - t) * a.norm() + t * b.norm()
    assert ops.blend(a, b, t).norm().item() == pytest.approx(expected.item(), rel=1e-4)


@settings(max_examples=20)
@given(seeds, ts)
def test_lerp_matches_the_formula(seed, t):
    a, b = pair(seed, (3, 5))
    assert torch.allclose(ops.lerp(a, b, t), (1 - t) * a + t * b, atol=1e-6)

"""The typed latent algebra: ``studio.ops`` applied to Latents, Vectors and Generations.

The space check happens here, once, around the pure ops. On generations ops act role by
role; ``slerp`` uses the spherical path only where a role holds a Gaussian draw (noise, gan-z)
and the linear one elsewhere (text embeddings, w, w+). ``mix`` (style mixing) works in w+ alone:
turning z or w into w+ needs the model, so the expression evaluator lifts those first (see
``Function.lift``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from studio import ops
from studio.errors import SpaceMismatch, StudioError
from studio.lazy import torch
from studio.objects import Generation, Latent, Vector, check_finite
from studio.space import GAN_ROLES, Space, check_same

Value = float | Latent | Vector | Generation

# Roles that hold a shift applied during rendering (not a starting point): a generation
# without one behaves as if it held zeros, so adding such a vector creates the role.
DELTA_KINDS = ("hspace",)

# Interpolation weights beyond this extrapolate so far that nothing recognisable is left.
MAX_T = 1e6

W_PLUS = GAN_ROLES["gan-w+"]  # the role of a generation in StyleGAN's extended latent, one w per layer


def describe(x: Value) -> str:
    """A short phrase for error messages: 'a number', 'latent in noise[...]'..."""
    if isinstance(x, (int, float)):
        return "a number"
    if isinstance(x, Generation):
        return f"generation of {x.model} ({', '.join(f'{r}: {s}' for r, s in x.spaces.items())})"
    return f"{x.kind} in {x.space}"


def _number(x: Value, what: str) -> float:
    if not isinstance(x, (int, float)) or isinstance(x, bool):
        raise StudioError(f"{what} must be a number, got {describe(x)}")
    if not math.isfinite(x):
        raise StudioError(f"{what} must be a finite number, got {x}")
    return float(x)


def _tensor_op(fn: Callable[..., torch.Tensor], xs: list[Latent | Vector], *extra) -> Latent | Vector:
    """Apply a tensor op to same-space latents/vectors; the result's type follows the first latent."""
    check_same([x.space for x in xs])
    try:
        out = fn(*(x.tensor for x in xs), *extra)
    except ValueError as exc:
        raise StudioError(str(exc)) from exc
    check_finite(out, "the result")
    base = next((x for x in xs if isinstance(x, Latent)), xs[0])
    if isinstance(base, Latent):
        keep = ("model", "scale", "generator_device")
        return Latent(out, base.space, {k: v for k, v in base.meta.items() if k in keep})
    # an h-space vector keeps its stride, so the sum or multiple of one is checked like the vector itself
    return Vector(out, base.space, base.method, {k: v for k, v in base.meta.items() if k == "hspace_stride"})


def _role_for(g: Generation, space: Space, what: str) -> str:
    for role, s in g.spaces.items():
        if s == space:
            return role
    roles = ", ".join(f"{r}: {s}" for r, s in g.spaces.items())
    raise SpaceMismatch(f"cannot {what} {space} and a generation of {g.model} whose spaces are {roles}")


def _generation_op(name: str, gs: list[Generation], per_role: Callable[[str, list[Latent]], Latent]) -> Generation:
    roles = set(gs[0].roles)
    for g in gs[1:]:
        if set(g.roles) != roles:
            raise SpaceMismatch(
                f"cannot {name} generations of two different spaces: {describe(gs[0])} and {describe(g)}"
            )
    out = {role: per_role(role, [g.roles[role] for g in gs]) for role in gs[0].roles}
    first = gs[0]
    return Generation(out, first.model, dict(first.settings), {})


def _zero_delta(g: Generation, x: Latent | Vector) -> Latent:
    """A zero h-space role for ``x``'s space, refused where it cannot fit ``g``: h-space shifts edit diffusion
    generations, and the bottleneck is the noise grid shrunk by the UNet's ``hspace_stride`` (when ``x`` records it)."""
    if "noise" not in g.roles:
        raise SpaceMismatch(f"cannot add {describe(x)} to a generation of {g.model}: h-space shifts edit "
                            "diffusion generations")
    stride, grid = x.meta.get("hspace_stride"), g.roles["noise"].space.shape[1:]
    if isinstance(stride, int) and stride > 0 and len(grid) == 2 and len(x.space.shape) == 3:
        fits = (x.space.shape[0], *(math.ceil(n / stride) for n in grid))
        if fits != x.space.shape:
            raise SpaceMismatch(f"{describe(x)} was made at another picture size: this generation of {g.model} "
                                f"has an h-space of {'x'.join(map(str, fits))}")
    return Latent(torch.zeros(x.space.shape), x.space, {"model": g.model})


def _pairwise(name: str, fn: Callable, a: Value, b: Value, *extra) -> Value:
    """Dispatch a two-operand op over the object types."""
    if isinstance(a, Generation) and isinstance(b, Generation):
        return _generation_op(name, [a, b], lambda role, xs: _tensor_op(fn, xs, *extra))
    if isinstance(a, Generation) and isinstance(b, (Latent, Vector)):
        roles = dict(a.roles)
        if b.space.kind in DELTA_KINDS and not any(s == b.space for s in a.spaces.values()):
            # an absent delta role means "no shift": start it at zero
            roles[b.space.kind] = _zero_delta(a, b)
            role = b.space.kind
        else:
            role = _role_for(a, b.space, name)
        roles[role] = _tensor_op(fn, [roles[role], b], *extra)
        return Generation(roles, a.model, dict(a.settings), {})
    if isinstance(b, Generation) and isinstance(a, (Latent, Vector)):
        if name == "sub":
            raise StudioError(f"cannot subtract a generation from {describe(a)}")
        return _pairwise(name, fn, b, a, *extra)
    if isinstance(a, (Latent, Vector)) and isinstance(b, (Latent, Vector)):
        if isinstance(a, Vector) and isinstance(b, Latent) and name == "sub":
            raise StudioError(f"cannot subtract a latent from a vector ({describe(b)} from {describe(a)})")
        return _tensor_op(fn, [a, b], *extra)
    raise StudioError(f"cannot {name} {describe(a)} and {describe(b)}")


def add(a: Value, b: Value) -> Value:
    """a + b: same-space latents or vectors; a vector added to a generation moves the role in its space."""
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a + b
    if isinstance(a, (int, float)) or isinstance(b, (int, float)):
        raise StudioError(f"cannot add {describe(a)} and {describe(b)}; to weight a latent use '*'")
    return _pairwise("add", ops.add, a, b)


def sub(a: Value, b: Value) -> Value:
    """a - b, with the same rules as add."""
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a - b
    if isinstance(a, (int, float)) or isinstance(b, (int, float)):
        raise StudioError(f"cannot subtract {describe(b)} from {describe(a)}; to weight a latent use '*'")
    return _pairwise("sub", ops.sub, a, b)


def scale(x: Value, k: Value) -> Value:
    """x * k for a number k; on a generation every role is scaled."""
    if isinstance(x, (int, float)) and not isinstance(k, (int, float)):
        x, k = k, x
    k = _number(k, "a scale factor")
    if isinstance(x, (int, float)):
        return x * k
    if isinstance(x, Generation):
        return _generation_op("scale", [x], lambda role, xs: _tensor_op(ops.scale, xs, k))
    return _tensor_op(ops.scale, [x], k)


def div(x: Value, k: Value) -> Value:
    """x / k for a nonzero number k."""
    k = _number(k, "a divisor")
    if k == 0:
        raise StudioError("division by zero")
    if isinstance(x, (int, float)):
        return x / k
    return scale(x, 1.0 / k)


def neg(x: Value) -> Value:
    """-x."""
    return scale(x, -1.0)


def _interp(name: str, tensor_fn: Callable, a: Value, b: Value, t: Value) -> Value:
    t = _number(t, f"{name}'s t")
    if abs(t) > MAX_T:  # torch refuses a weight beyond float32's range with an overflow error
        raise StudioError(f"{name}'s t must be between {-MAX_T:g} and {MAX_T:g}, got {t:g}")
    if isinstance(a, Generation) and isinstance(b, Generation):
        def per_role(role: str, xs: list[Latent]) -> Latent:
            fn = tensor_fn if (tensor_fn is not ops.slerp or xs[0].space.gaussian) else ops.lerp
            return _tensor_op(fn, xs, t)

        return _generation_op(name, [a, b], per_role)
    if isinstance(a, (Latent, Vector)) and isinstance(b, (Latent, Vector)) and type(a) is type(b):
        return _tensor_op(tensor_fn, [a, b], t)
    raise StudioError(f"{name} needs two latents, two vectors or two generations, got {describe(a)} and {describe(b)}")


def lerp(a: Value, b: Value, t: Value) -> Value:
    """Linear interpolation, every role linearly."""
    return _interp("lerp", ops.lerp, a, b, t)


def slerp(a: Value, b: Value, t: Value) -> Value:
    """Spherical interpolation; on generations spherical for noise/gan-z roles, linear for the others."""
    return _interp("slerp", ops.slerp, a, b, t)


def blend(a: Value, b: Value, t: Value) -> Value:
    """Norm-preserving blend of two latents, vectors or generations."""
    return _interp("blend", ops.blend, a, b, t)


def mean(*xs: Value) -> Value:
    """Mean of latents, vectors or generations of one type and space."""
    if not xs:
        raise StudioError("mean needs at least one argument")
    if all(isinstance(x, Generation) for x in xs):
        return _generation_op("mean", list(xs), lambda role, ls: _tensor_op(ops.mean, ls))
    if all(isinstance(x, (Latent, Vector)) for x in xs) and len({type(x) for x in xs}) == 1:
        return _tensor_op(ops.mean, list(xs))
    raise StudioError("mean needs arguments of one type: " + ", ".join(describe(x) for x in xs))


def normalize(x: Value, norm: Value | None = None) -> Value:
    """Rescale to an L2 norm: by default sqrt(numel) in Gaussian spaces (a fresh draw's norm), 1 elsewhere.

    On a generation only the Gaussian roles (noise, z) are rescaled: the usual fix after mean().
    """
    if norm is not None:
        norm = _number(norm, "normalize's norm")
        if norm <= 0:
            raise StudioError(f"normalize's norm must be positive, got {norm:g}")

    def one(lat: Latent | Vector) -> Latent | Vector:
        target = norm if norm is not None else (math.sqrt(lat.tensor.numel()) if lat.space.gaussian else 1.0)
        return _tensor_op(ops.normalize, [lat], target)

    if isinstance(x, Generation):
        roles = {r: (one(lat) if lat.space.gaussian else lat) for r, lat in x.roles.items()}
        return Generation(roles, x.model, dict(x.settings), {})
    if not isinstance(x, (Latent, Vector)):
        raise StudioError(f"normalize needs a latent, a vector or a generation, got {describe(x)}")
    return one(x)


def _w_plus(x: Value) -> Latent:
    """The w+ latent that ``mix`` works on: a generation's only role, or a latent in a gan-w+ space."""
    if isinstance(x, Generation):
        if set(x.roles) == {W_PLUS} and x.roles[W_PLUS].space.kind == "gan-w+":
            return x.roles[W_PLUS]
        raise StudioError(f"mix needs generations in w+ (one w per layer); got {describe(x)}")
    if isinstance(x, Latent) and x.space.kind == "gan-w+":
        return x
    raise StudioError(f"mix needs latents or generations in w+ (one w per layer); got {describe(x)}")


def _mix_layer(k: Value, space: Space) -> int:
    """The first layer taken from mix's second argument: a whole number from 1 to num_ws - 1."""
    num_ws = space.shape[0]
    if num_ws < 2:
        raise StudioError(f"mix needs at least two layers to mix; {space} has one")
    number = isinstance(k, (int, float)) and not isinstance(k, bool)
    if not (number and math.isfinite(k) and k == int(k) and 1 <= k <= num_ws - 1):
        got = f"{k:g}" if number else describe(k)
        raise StudioError(f"mix's layer must be a whole number from 1 to {num_ws - 1} "
                          f"(layers [0, k) come from the first argument), got {got}")
    return int(k)


def mix(a: Value, b: Value, layer: Value) -> Value:
    """Style mixing of two w+ generations (or latents): layers [0, layer) from a, the rest from b."""
    la, lb = _w_plus(a), _w_plus(b)
    if isinstance(a, Generation) != isinstance(b, Generation):
        raise StudioError(f"mix needs two generations or two latents, got {describe(a)} and {describe(b)}")
    k = _mix_layer(layer, check_same([la.space, lb.space], "mix"))
    if isinstance(a, Generation):
        return _generation_op("mix", [a, b], lambda role, xs: _tensor_op(ops.mix_layers, xs, k))
    return _tensor_op(ops.mix_layers, [la, lb], k)


@dataclass(frozen=True)
class Function:
    """An expression-language function: its implementation and parameter names (for messages)."""

    fn: Callable[..., Value]
    params: tuple[str, ...]
    variadic: bool = False
    optional: int = 0  # how many trailing params may be left out
    # the role its generation arguments must hold: the evaluator's lift callback turns the others into it
    # first (z or w into w+ takes the model's mapping network, which the algebra does not know)
    lift: str | None = None
    integers: tuple[str, ...] = ()  # params that are whole numbers (recorded in lineage as such)

    def signature(self, name: str) -> str:
        return f"{name}({', '.join(self.params)}{', ...' if self.variadic else ''})"


FUNCTIONS: dict[str, Function] = {
    "lerp": Function(lerp, ("a", "b", "t")),
    "slerp": Function(slerp, ("a", "b", "t")),
    "blend": Function(blend, ("a", "b", "t")),
    "add": Function(add, ("a", "b")),
    "sub": Function(sub, ("a", "b")),
    "scale": Function(scale, ("x", "k")),
    "mean": Function(mean, ("x",), variadic=True),
    "normalize": Function(normalize, ("x", "norm"), optional=1),
    "mix": Function(mix, ("a", "b", "layer"), lift=W_PLUS, integers=("layer",)),
}

"""The vector workbench behind ``session.vectors``: make, condition, discover and apply vectors.

Thin: the maths lives in ``studio.vectors``; this stores results with their lineage and
finds the model adapters a method needs (prompt encoders, w samplers, h-space probes).
"""

from __future__ import annotations

import os
import string
from typing import TYPE_CHECKING, Any

import yaml

from pipelines.base import GanW, HSpace, SDEditable, TextConditioned, require
from studio import vectors as vx
from studio.checks import check_number, check_path, check_seed, check_text
from studio.errors import SpaceMismatch, StudioError
from studio.lazy import torch
from studio.objects import Generation, Latent, Lineage, Vector
from studio.space import Space
from studio.store import numbered_names

if TYPE_CHECKING:
    from studio.session import Session, Stored

METHODS = ("mean", "boundary")
APPLY_MODES = ("latent", "hspace", "sdedit")
MAX_STRENGTHS = 64  # one sweep stores one object per strength
MAX_STRENGTH = 1000.0  # far beyond any useful edit; larger values only make overflowed pictures
MAX_HSPACE_STEPS = 1000


def check_strengths(strengths: float | list[float]) -> list[float]:
    """One strength, or a sweep of 1..MAX_STRENGTHS finite strengths of at most MAX_STRENGTH in size."""
    if isinstance(strengths, (int, float)) and not isinstance(strengths, bool):
        strengths = [strengths]
    if not isinstance(strengths, (list, tuple)):
        raise StudioError(f"strengths must be a number or a list of numbers, got {strengths!r}")
    if not strengths:
        raise StudioError("give at least one strength")
    if len(strengths) > MAX_STRENGTHS:
        raise StudioError(f"{len(strengths)} strengths in one sweep; at most {MAX_STRENGTHS}")
    for s in strengths:
        if abs(check_number(s, "each strength")) > MAX_STRENGTH:
            raise StudioError(f"strength {s!r} is not a number between -{MAX_STRENGTH:g} and {MAX_STRENGTH:g}")
    return [float(s) for s in strengths]


def parse_attribute(text: Any) -> dict[str, str] | None:
    """NAME:FROM:TO (e.g. style:noto:twemoji) -> {"name", "from", "to"}; empty -> None."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    parts = [p.strip() for p in str(text).split(":")]
    if len(parts) != 3 or not all(parts):
        raise StudioError(f"attribute takes NAME:FROM:TO (e.g. style:noto:twemoji), got {text!r}")
    return dict(zip(("name", "from", "to"), parts))


def check_nonzero(tensor: torch.Tensor, scale: float, what: str) -> torch.Tensor:
    """Refuse a direction that is zero, or rounding noise next to ``scale`` (the size of what it came from)."""
    if float(tensor.double().norm()) <= 1e-6 * max(scale, 1e-30):
        raise StudioError(f"{what} is a zero vector: it has no direction to edit along")
    return tensor


class VectorLab:
    """Vector operations on one session's library and models."""

    def __init__(self, session: Session):
        self.session = session
        self.library = session.library

    def _store(self, v: Vector, name: str | None, tags=()) -> Stored:
        from studio.session import Stored

        return Stored(self.library.put(v, name, tags), name, v)

    def _resolve_all(self, refs: list[str], what: str) -> tuple[list[str], list[Any]]:
        if isinstance(refs, (str, bytes)) or not isinstance(refs, (list, tuple)):
            raise StudioError(f"{what} must be a list of names or id prefixes, got {refs!r}")
        ids = [self.library.resolve(r) for r in refs]
        return ids, [self.library.get(i) for i in ids]

    # ---- making vectors ----

    def from_sets(self, refs_a: list[str], refs_b: list[str], method: str = "mean", role: str | None = None,
                  name: str | None = None, attribute: dict | None = None, hspace_steps: int = 5) -> Stored:
        """A direction from set A to set B of stored latents/generations: mean difference or linear boundary."""
        if method not in METHODS:
            raise StudioError(f"unknown method {method!r}; choose {', '.join(METHODS)}")
        if role == "hspace" and (isinstance(hspace_steps, bool) or not isinstance(hspace_steps, int)
                                 or not 1 <= hspace_steps <= MAX_HSPACE_STEPS):
            raise StudioError(f"hspace steps must be a whole number from 1 to {MAX_HSPACE_STEPS}, not {hspace_steps!r}")
        check_attribute(attribute or None, "attribute")
        ids_a, objs_a = self._resolve_all(refs_a, "set A")
        ids_b, objs_b = self._resolve_all(refs_b, "set B")
        if role == "hspace":
            lat_a, lat_b = self._hspace(objs_a, hspace_steps), self._hspace(objs_b, hspace_steps)
        else:
            lat_a, lat_b = vx.role_latents(objs_a, role), vx.role_latents(objs_b, role)
        maker = vx.mean_difference if method == "mean" else vx.linear_boundary
        tensor, space = maker(lat_a, lat_b)
        scale = float(torch.stack([x.tensor.double().norm() for x in lat_a + lat_b]).mean())
        check_nonzero(tensor, scale, "the direction from set A to set B (the two sets have the same mean)")
        meta = {"model": lat_a[0].meta.get("model"), "attribute": attribute or {}, "n_a": len(ids_a), "n_b": len(ids_b)}
        if role == "hspace":  # the stride lets the algebra check the size of a generation it is added to
            meta.update(hspace_steps=hspace_steps, hspace_stride=lat_a[0].meta.get("hspace_stride"))
        lineage = Lineage(f"vector-{method}", {"role": role or "default", "sets": [len(ids_a), len(ids_b)]},
                          tuple(ids_a + ids_b))
        method_name = "mean-difference" if method == "mean" else "linear-boundary"
        return self._store(Vector(tensor, space, method_name, meta, lineage), name)

    def _hspace(self, objs: list[Any], steps: int) -> list[Latent]:
        gens = [o for o in objs if isinstance(o, Generation)]
        if len(gens) != len(objs):
            raise StudioError("h-space vectors are made from stored generations")
        models = {g.model for g in gens}
        if len(models) != 1:
            raise StudioError(f"h-space vectors need generations of one model, got {', '.join(sorted(models))}")
        adapter = require(self.session.adapter(models.pop()), HSpace, "make h-space vectors")
        return adapter.hspace_of(gens, steps)

    def from_prompts(self, definition: str | os.PathLike | dict, model: str | None = None,
                     name: str | None = None) -> Stored:
        """A text-space vector from a prompt-pair definition (templates, ``from`` and ``to`` phrases)."""
        spec = load_definition(definition)
        adapter = require(self.session.adapter(model), TextConditioned, "make prompt-pair vectors")
        space: Space = adapter.text_space

        norms: list[float] = []  # of the embeddings, the scale a zero direction is judged against

        def encode(prompts: list[str]) -> torch.Tensor:
            out = adapter.encode_text(prompts).to("cpu", torch.float32)
            norms.append(float(out.double().flatten(1).norm(dim=1).mean()))
            return out

        tensor = vx.prompt_pair(encode, spec["templates"], spec["from"], spec["to"], space)
        check_nonzero(tensor, max(norms), f"the direction from {spec['from']!r} to {spec['to']!r} "
                      "(the two phrases encode alike)")
        meta = {"model": adapter.spec, "attribute": spec.get("attribute", {}), "from": spec["from"], "to": spec["to"],
                "templates": spec["templates"]}
        lineage = Lineage("vector-prompts", {"definition": spec.get("name"), "from": spec["from"], "to": spec["to"]})
        return self._store(Vector(tensor, space, "prompt-pair", meta, lineage), name or spec.get("name"))

    def discover(self, model: str | None = None, space: str = "w", k: int = 8, samples: int = 2000,
                 prefix: str | None = None, prompts: list[str] | None = None, seed: int = 0,
                 method: str = "pca", layers: str | None = None) -> list[tuple[Stored, float]]:
        """Directions in w or text space, stored with their share of the variance they explain.

        ``method`` "pca": principal directions (GANSpace) of sampled w, or of the text embeddings of
        ``prompts``. "sefa": the closed-form directions of a StyleGAN's style affines (SeFa), for the
        synthesis inputs in ``layers`` ("0-3", "5"; default all); no sampling.
        """
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 64:
            raise StudioError(f"k must be a whole number of directions from 1 to 64, not {k!r}")
        if method not in ("pca", "sefa"):
            raise StudioError(f"unknown discovery method {method!r}; use pca (GANSpace) or sefa")
        if method == "pca" and layers is not None:
            raise StudioError("--layers chooses the style layers of SeFa; PCA samples w, which every layer reads")
        if method == "pca" and space == "w" and (isinstance(samples, bool) or not isinstance(samples, int)
                                                 or not k < samples <= 100_000):
            raise StudioError(f"samples must be a whole number above k={k} and at most 100000, not {samples!r}")
        check_seed(seed)
        check_text(prefix, "prefix", optional=True)
        if prompts is not None and (not isinstance(prompts, (list, tuple))
                                    or not all(isinstance(p, str) for p in prompts)):
            raise StudioError(f"prompts must be a list of text, got {prompts!r}")
        for i in range(k) if prefix else ():  # every name checked before anything is stored
            self.library.check_free(f"{prefix}{i}")
        adapter = self.session.adapter(model)
        if method == "sefa":
            if space != "w":
                raise StudioError(f"SeFa finds directions in w, from a StyleGAN's style weights, not in {space!r}")
            gan = require(adapter, GanW, "find SeFa directions (it has no StyleGAN style weights)")
            rows = parse_layers(layers, gan.spaces()["w+"].shape[0])
            dirs, ratios, lineage = sefa_directions(gan.style_weights(rows), k, rows)
            return self._store_directions(adapter, dirs, ratios, "sefa", lineage, prefix, adapter.spaces()["w"],
                                          {"layers": f"{rows.start}-{rows.stop - 1}"})
        if space == "w":
            x = require(adapter, GanW, "discover directions in w space (use --space text with prompts)").sample_w(
                samples, seed)
            target = adapter.spaces()["w"]
        elif space == "text":
            require(adapter, TextConditioned, "discover directions in text space (use --space w)")
            if not prompts or len(prompts) < 3:
                raise StudioError("text-space discovery needs a list of at least 3 prompts")
            x = adapter.encode_text(prompts).to("cpu", torch.float32).flatten(1)
            target = adapter.text_space
        else:
            raise StudioError(f"discovery works in 'w' or 'text' space, not {space!r}")
        distinct = len(torch.unique(x, dim=0))
        if k >= distinct:
            raise StudioError(f"{len(x)} samples ({distinct} distinct) give at most {distinct - 1} directions; "
                              f"ask for fewer than k={k}, or give more varied prompts")
        dirs, ratios = vx.principal_directions(x, k)
        scale = float(x.double().norm(dim=1).mean())
        for i, d in enumerate(dirs):  # every direction checked before any is stored
            check_nonzero(d, scale, f"principal direction {i} (the samples vary along fewer than {k} directions)")
        lineage = {"space": space, "samples": len(x), "seed": seed}
        return self._store_directions(adapter, dirs, ratios, "pca", lineage, prefix, target, {"samples": len(x)})

    def _store_directions(self, adapter: Any, dirs: torch.Tensor, ratios: Any, method: str, lineage: dict,
                          prefix: str | None, target: Space, meta: dict) -> list[tuple[Stored, float]]:
        """Store discovered directions as vectors PREFIX0, PREFIX1, ... with what found them."""
        made = []
        for i, (d, r) in enumerate(zip(dirs, ratios)):
            v = Vector(d.reshape(target.shape), target, method,
                       {"model": adapter.spec, "component": i, "explained_variance": round(float(r), 6), **meta},
                       Lineage(f"vector-{method}", {**lineage, "component": i}))
            made.append((v, float(r)))
        return [(self._store(v, f"{prefix}{i}" if prefix else None), r) for i, (v, r) in enumerate(made)]

    def condition(self, ref: str, on: list[str], name: str | None = None) -> Stored:
        """Remove from a vector its components along others, so editing one attribute spares those."""
        vid = self.library.resolve(ref)
        v = self.library.get(vid)
        ids, others = self._resolve_all(on, "on")
        for o in [v, *others]:
            if not isinstance(o, Vector):
                raise StudioError(f"conditioning works on vectors, got a {o.kind}")
        tensor = check_nonzero(vx.conditional(v, others), float(v.tensor.double().norm()),
                               f"{ref} without its components along {', '.join(on)}")
        lineage = Lineage("vector-condition", {"on": len(ids)}, (vid, *ids))
        meta = {**v.meta, "conditioned_on": ids, "cosine_before": [round(vx.cosine(v, o), 4) for o in others]}
        return self._store(Vector(tensor, v.space, f"{v.method}+conditional", meta, lineage), name)

    # ---- applying ----

    def apply(self, target: str, vector: str, strengths: float | list[float], mode: str = "latent",
              name: str | None = None, sdedit_strength: float = 0.6, layers: str | None = None) -> list[Stored]:
        """target + s * vector for each strength s, stored with lineage (one object per strength).

        ``latent``: add to the role in the vector's space (text: the prompt moves, the noise stays);
        ``hspace``: an h-space vector shifts the denoiser's h-space (UNet bottleneck, transformer middle block) during the first denoising steps;
        ``sdedit``: the edit is rendered from the original picture noised to ``sdedit_strength``.
        ``layers`` ("A-B"): a GAN's w vector moves only those synthesis inputs of the target, in w+
        (as GANSpace edits a layer range); the result is a w+ generation.
        """
        if layers is not None:
            if mode != "latent":
                raise StudioError(f"--layers edits a GAN's w+ rows; it does not combine with mode {mode}")
            return self._apply_to_layers(target, vector, check_strengths(strengths), layers, name)
        if mode not in APPLY_MODES:
            raise StudioError(f"unknown mode {mode!r}; choose {', '.join(APPLY_MODES)}")
        strengths = check_strengths(strengths)
        if mode == "sdedit" and (isinstance(sdedit_strength, bool) or not isinstance(sdedit_strength, (int, float))
                                 or not 0 < sdedit_strength <= 1):
            raise StudioError(f"the SDEdit strength must be a number in (0, 1], not {sdedit_strength!r}")
        names = numbered_names(name, len(strengths))
        tid, vid = self.library.resolve(target), self.library.resolve(vector)
        v = self.library.get(vid)
        if not isinstance(v, Vector):
            raise StudioError(f"{vector} is a {v.kind}, not a vector")
        if (mode == "hspace") != (v.space.kind == "hspace"):
            raise StudioError(f"mode {mode} needs {'an h-space' if mode == 'hspace' else 'a latent-space'} vector; "
                              f"{vector} is in {v.space}")
        # the user's own references name the parents in the recorded expression
        t_ref, v_ref = target.lstrip("@"), vector.lstrip("@")
        scope = {t_ref: self._stored(tid), v_ref: self._stored(vid)}
        source = f"@{t_ref} + s * @{v_ref}"
        base = self.library.get(tid)
        if mode == "hspace":
            self._check_hspace(base, v, vector)
        init = self._sdedit_init(base, tid) if mode == "sdedit" else None
        # 1. Every edit computed, and every name checked, before the first is stored: a sweep that
        #    fails half-way (a NaN result, a name taken) leaves the library as it was.
        edits = []
        for s, n in zip(strengths, names, strict=True):
            edited = self.session.evaluate(source, bindings={"s": s}, scope=scope, store=False).obj
            if init is not None:
                g: Generation = edited
                roles = {**g.roles, "init": init}
                settings = {**g.settings, "sdedit": float(sdedit_strength)}
                lineage = Lineage("sdedit", {"s": s, "strength": float(sdedit_strength)}, (tid, vid))
                edited = Generation(roles, g.model, settings, {}, lineage)
            if n is not None:
                self.library.check_free(n, edited.id)
            edits.append((edited, n))
        # 2. Then stored, each with its lineage.
        return [self._put(obj, n) for obj, n in edits]

    def _apply_to_layers(self, target: str, vector: str, strengths: list[float], layers: str,
                         name: str | None) -> list[Stored]:
        """target's w+ with s * vector added to the rows of ``layers`` only, for each strength."""
        names = numbered_names(name, len(strengths))
        tid, vid = self.library.resolve(target), self.library.resolve(vector)
        base, v = self.library.get(tid), self.library.get(vid)
        if not isinstance(v, Vector):
            raise StudioError(f"{vector} is a {v.kind}, not a vector")
        if not isinstance(base, Generation):
            raise StudioError(f"--layers edits a GAN generation; {target} is a {base.kind}")
        gan = require(self.session.adapter(base.model), GanW, "edit a range of layers (it has no w+)")
        w, wplus = gan.spaces()["w"], gan.spaces()["w+"]
        if v.space != w:
            raise SpaceMismatch(f"--layers moves w+ rows by a vector in {w}; {vector} is in {v.space}")
        rows = parse_layers(layers, wplus.shape[0])
        start = gan.to_wplus(base)
        source = f"@{target.lstrip('@')} + s * @{vector.lstrip('@')} on layers {rows.start}-{rows.stop - 1}"
        edits = []
        for s, n in zip(strengths, names, strict=True):  # every edit and name checked before one is stored
            tensor = start.roles["w+"].tensor.clone()  # [num_ws, w_dim]
            tensor[rows.start:rows.stop] += s * v.tensor
            lineage = Lineage("add", {"expr": source, "s": s, "layers": [rows.start, rows.stop - 1]}, (tid, vid))
            edited = Generation({"w+": Latent(tensor, wplus, {"model": base.model})}, base.model,
                                dict(start.settings), {}, lineage)
            if n is not None:
                self.library.check_free(n, edited.id)
            edits.append((edited, n))
        return [self._put(obj, n) for obj, n in edits]

    def _check_hspace(self, base: Any, v: Vector, ref: str) -> None:
        """An h-space vector shifts the bottleneck of the UNet that rendered ``base``, at its size."""
        adapter = self.session.adapter(base.model) if isinstance(base, Generation) else None
        if adapter is None or not isinstance(adapter, HSpace):
            what = f"a generation of {base.model}" if isinstance(base, Generation) else f"a {base.kind}"
            raise StudioError(f"h-space vectors edit diffusion generations; the target is {what}")
        settings = {**adapter.default_settings(), **base.settings}
        expected = adapter.hspace_space(settings["height"], settings["width"])
        if v.space != expected:
            raise SpaceMismatch(f"{ref} is in {v.space}, but this generation's h-space is {expected}")

    def _stored(self, object_id: str) -> Stored:
        from studio.session import Stored

        return Stored(object_id, None, self.library.get(object_id))

    def _put(self, obj, name):
        from studio.session import Stored

        return Stored(self.library.put(obj, name), name, obj)

    def _sdedit_init(self, base: Any, base_id: str) -> Latent:
        if not isinstance(base, Generation) or "noise" not in base.roles:
            raise StudioError("sdedit needs a diffusion generation as its target")
        init = require(self.session.adapter(base.model), SDEditable, "make SDEdit edits").sdedit_init(base)
        init.lineage = Lineage("encode", {"render_of": base_id})
        return init


def load_definition(definition: str | os.PathLike | dict) -> dict[str, Any]:
    """Read and check a prompt-pair definition (see prompts/vectors/*.yaml)."""
    where = "vector definition"
    if not isinstance(definition, (dict, str, os.PathLike)):
        raise StudioError(f"a vector definition is a YAML file's path or a dict, got {definition!r}")
    if not isinstance(definition, dict):
        path = check_path(definition, "vector definition")
        where = str(path)
        try:
            definition = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise StudioError(f"no such vector definition: {path}") from None
        except yaml.YAMLError as exc:  # the parser's own message spans several lines of context
            mark = getattr(exc, "problem_mark", None)
            where_in = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            problem = getattr(exc, "problem", None) or "not valid YAML"
            raise StudioError(f"cannot read {path}: {problem}{where_in}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise StudioError(f"cannot read {path}: {exc}") from None
    if not isinstance(definition, dict):
        raise StudioError(f"{where}: expected a mapping with 'from', 'to' and 'templates'")
    for key in ("from", "to"):
        if not isinstance(definition.get(key), str) or not definition[key].strip():
            raise StudioError(f"{where}: '{key}' must be a phrase")
    templates = definition.get("templates")
    if not isinstance(templates, list) or not templates or not all(isinstance(t, str) for t in templates):
        raise StudioError(f"{where}: 'templates' must be a list of strings with '{{}}' for the phrase")
    for t in templates:
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(t) if f is not None]
        except ValueError as exc:  # a lone '{' or '}'
            raise StudioError(f"{where}: template {t!r} is malformed ({exc}); write '{{{{' for a literal brace") from None
        if fields != [""]:
            raise StudioError(f"{where}: template {t!r} must hold exactly one '{{}}' (the phrase) and no other field")
    check_attribute(definition.get("attribute"), f"{where}: 'attribute'")
    return definition


def check_attribute(attribute: Any, what: str) -> None:
    """None, or the mapping parse_attribute makes: the text fields name, from and to."""
    if attribute is not None and (not isinstance(attribute, dict) or
                                  not all(isinstance(attribute.get(k), str) for k in ("name", "from", "to"))):
        raise StudioError(f"{what} must be a mapping with the text fields name, from and to")


def parse_layers(layers: str | None, count: int) -> range:
    """Synthesis inputs "A-B" (inclusive) or "A" of a network with ``count`` of them; None means all."""
    if layers is None:
        return range(count)
    text = check_text(layers, "layers").strip()
    first, _, last = text.partition("-")
    try:
        start, stop = int(first), int(last or first) + 1
    except ValueError:
        raise StudioError(f"layers must be A-B or A (synthesis inputs counted from 0), got {layers!r}") from None
    if not 0 <= start < stop <= count:
        raise StudioError(f"layers {layers!r} are not a range of this network's synthesis inputs 0-{count - 1}")
    return range(start, stop)


def sefa_directions(weight: torch.Tensor, k: int, rows: range) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """SeFa's directions of style affines [S, w_dim], each output's weights scaled to unit norm first
    (as the paper's code does, so that no one layer's scale decides), with each eigenvalue's share."""
    from studio import ops

    a = weight.double()
    a = a / a.norm(dim=1, keepdim=True).clamp(min=1e-12)
    try:
        dirs, values = ops.sefa(a, k)
    except ValueError as exc:
        raise StudioError(str(exc)) from None
    total = float(a.square().sum())  # the trace of A^T A: the eigenvalues' sum
    return dirs, (values.double() / total).tolist(), {"layers": [rows.start, rows.stop - 1]}

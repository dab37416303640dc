"""The vector workbench behind ``session.vectors``: make, condition, discover and apply vectors.

Thin: the maths lives in ``studio.vectors``; this stores results with their lineage and
finds the model adapters a method needs (prompt encoders, w samplers, h-space probes).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml

from studio import vectors as vx
from studio.errors import StudioError
from studio.objects import Generation, Latent, Lineage, Vector
from studio.space import Space

if TYPE_CHECKING:
    from studio.session import Session, Stored

METHODS = ("mean", "boundary")
APPLY_MODES = ("latent", "hspace", "sdedit")


class VectorLab:
    """Vector operations on one session's library and models."""

    def __init__(self, session: Session):
        self.session = session
        self.library = session.library

    def _store(self, v: Vector, name: str | None, tags=()) -> Stored:
        from studio.session import Stored

        return Stored(self.library.put(v, name, tags), name, v)

    def _resolve_all(self, refs: list[str]) -> tuple[list[str], list[Any]]:
        ids = [self.library.resolve(r) for r in refs]
        return ids, [self.library.get(i) for i in ids]

    # ---- making vectors ----

    def from_sets(self, refs_a: list[str], refs_b: list[str], method: str = "mean", role: str | None = None,
                  name: str | None = None, attribute: dict | None = None, hspace_steps: int = 5) -> Stored:
        """A direction from set A to set B of stored latents/generations: mean difference or linear boundary."""
        if method not in METHODS:
            raise StudioError(f"unknown method {method!r}; choose {', '.join(METHODS)}")
        ids_a, objs_a = self._resolve_all(refs_a)
        ids_b, objs_b = self._resolve_all(refs_b)
        if role == "hspace":
            lat_a, lat_b = self._hspace(objs_a, hspace_steps), self._hspace(objs_b, hspace_steps)
        else:
            lat_a, lat_b = vx.role_latents(objs_a, role), vx.role_latents(objs_b, role)
        maker = vx.mean_difference if method == "mean" else vx.linear_boundary
        tensor, space = maker(lat_a, lat_b)
        meta = {"model": lat_a[0].meta.get("model"), "attribute": attribute or {}, "n_a": len(ids_a), "n_b": len(ids_b)}
        if role == "hspace":
            meta["hspace_steps"] = hspace_steps
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
        adapter = self.session.adapter(models.pop())
        if not hasattr(adapter, "hspace_of"):
            raise StudioError(f"model {adapter.spec} has no h-space (only diffusion UNets do)")
        return adapter.hspace_of(gens, steps)

    def from_prompts(self, definition: str | os.PathLike | dict, model: str | None = None,
                     name: str | None = None) -> Stored:
        """A text-space vector from a prompt-pair definition (templates, ``from`` and ``to`` phrases)."""
        spec = load_definition(definition)
        adapter = self.session.adapter(model)
        if not hasattr(adapter, "encode_text"):
            raise StudioError(f"model {adapter.spec} is not text-conditioned; prompt-pair vectors need a text encoder")
        space: Space = adapter.spaces()["text"]

        def encode(prompts: list[str]) -> torch.Tensor:
            return adapter.encode_text(prompts).to("cpu", torch.float32)

        tensor = vx.prompt_pair(encode, spec["templates"], spec["from"], spec["to"], space)
        meta = {"model": adapter.spec, "attribute": spec.get("attribute", {}), "from": spec["from"], "to": spec["to"],
                "templates": spec["templates"]}
        lineage = Lineage("vector-prompts", {"definition": spec.get("name"), "from": spec["from"], "to": spec["to"]})
        return self._store(Vector(tensor, space, "prompt-pair", meta, lineage), name or spec.get("name"))

    def discover(self, model: str | None = None, space: str = "w", k: int = 8, samples: int = 2000,
                 prefix: str | None = None, prompts: list[str] | None = None, seed: int = 0) -> list[tuple[Stored, float]]:
        """Principal directions (GANSpace) of sampled w, or of text embeddings of ``prompts``; stored with their variance."""
        adapter = self.session.adapter(model)
        if space == "w":
            if not hasattr(adapter, "sample_w"):
                raise StudioError(f"model {adapter.spec} has no w space; use --space text with prompts")
            x, target = adapter.sample_w(samples, seed), adapter.spaces()["w"]
        elif space == "text":
            if not prompts or len(prompts) < 3:
                raise StudioError("text-space discovery needs a list of at least 3 prompts")
            x = adapter.encode_text(prompts).to("cpu", torch.float32).flatten(1)
            target = adapter.spaces()["text"]
        else:
            raise StudioError(f"discovery works in 'w' or 'text' space, not {space!r}")
        dirs, ratios = vx.principal_directions(x, k)
        out = []
        for i, (d, r) in enumerate(zip(dirs, ratios)):
            v = Vector(d.reshape(target.shape), target, "pca",
                       {"model": adapter.spec, "component": i, "explained_variance": round(float(r), 6),
                        "samples": len(x)},
                       Lineage("vector-pca", {"space": space, "component": i, "samples": len(x), "seed": seed}))
            out.append((self._store(v, f"{prefix}{i}" if prefix else None), float(r)))
        return out

    def condition(self, ref: str, on: list[str], name: str | None = None) -> Stored:
        """Remove from a vector its components along others, so editing one attribute spares those."""
        vid = self.library.resolve(ref)
        v = self.library.get(vid)
        ids, others = self._resolve_all(on)
        for o in [v, *others]:
            if not isinstance(o, Vector):
                raise StudioError(f"conditioning works on vectors, got a {o.kind}")
        tensor = vx.conditional(v, others)
        lineage = Lineage("vector-condition", {"on": len(ids)}, (vid, *ids))
        meta = {**v.meta, "conditioned_on": ids, "cosine_before": [round(vx.cosine(v, o), 4) for o in others]}
        return self._store(Vector(tensor, v.space, f"{v.method}+conditional", meta, lineage), name)

    # ---- applying ----

    def apply(self, target: str, vector: str, strengths: list[float], mode: str = "latent", name: str | None = None,
              sdedit_strength: float = 0.6) -> list[Stored]:
        """target + s * vector for each strength s, stored with lineage (one object per strength).

        ``latent``: add to the role in the vector's space (text: the prompt moves, the noise stays);
        ``hspace``: an h-space vector shifts the UNet bottleneck during the first denoising steps;
        ``sdedit``: the edit is rendered from the original picture noised to ``sdedit_strength``.
        """
        if mode not in APPLY_MODES:
            raise StudioError(f"unknown mode {mode!r}; choose {', '.join(APPLY_MODES)}")
        if not strengths:
            raise StudioError("give at least one strength")
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
        init = self._sdedit_init(base, tid) if mode == "sdedit" else None
        out = []
        for i, s in enumerate(strengths):
            n = name if (name and len(strengths) == 1) else (f"{name}-{i + 1}" if name else None)
            if init is None:
                out.append(self.session.evaluate(source, name=n, bindings={"s": float(s)}, scope=scope))
                continue
            edited = self.session.evaluate(source, bindings={"s": float(s)}, scope=scope, store=False)
            g: Generation = edited.obj
            roles = {**g.roles, "init": init}
            settings = {**g.settings, "sdedit": float(sdedit_strength)}
            lineage = Lineage("sdedit", {"s": float(s), "strength": float(sdedit_strength)}, (tid, vid))
            out.append(self._put(Generation(roles, g.model, settings, {}, lineage), n))
        return out

    def _stored(self, object_id: str) -> Stored:
        from studio.session import Stored

        return Stored(object_id, None, self.library.get(object_id))

    def _put(self, obj, name):
        from studio.session import Stored

        return Stored(self.library.put(obj, name), name, obj)

    def _sdedit_init(self, base: Any, base_id: str) -> Latent:
        if not isinstance(base, Generation) or "noise" not in base.roles:
            raise StudioError("sdedit needs a diffusion generation as its target")
        adapter = self.session.adapter(base.model)
        (picture,) = adapter.render([base])
        (init,) = adapter.encode([picture])
        init.lineage = Lineage("encode", {"render_of": base_id})
        return init


def load_definition(definition: str | os.PathLike | dict) -> dict[str, Any]:
    """Read and check a prompt-pair definition (see prompts/vectors/*.yaml)."""
    where = "vector definition"
    if not isinstance(definition, dict):
        path = Path(definition)
        where = str(path)
        try:
            definition = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise StudioError(f"no such vector definition: {path}") from None
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise StudioError(f"cannot read {path}: {exc}") from None
    if not isinstance(definition, dict):
        raise StudioError(f"{where}: expected a mapping with 'from', 'to' and 'templates'")
    for key in ("from", "to"):
        if not isinstance(definition.get(key), str) or not definition[key].strip():
            raise StudioError(f"{where}: '{key}' must be a phrase")
    templates = definition.get("templates")
    if not isinstance(templates, list) or not templates or not all(isinstance(t, str) for t in templates):
        raise StudioError(f"{where}: 'templates' must be a list of strings with '{{}}' for the phrase")
    return definition

"""Recipe files: named inputs, expressions and renders in YAML, run the same from every entry point.

Example (see ``prompts/recipes/``)::

    model: tiny-sd                 # default model for sampled inputs
    settings: {steps: 4}           # render settings for sampled inputs
    inputs:
      cat: {prompt: "a cat", seed: 1}
      dog: {prompt: "a dog", seed: 2}
      old: {ref: "@mid"}           # an object already in the library
    let:
      mid: "slerp(@cat, @dog, 0.5)"
    renders:
      - name: cat_to_dog
        expr: "slerp(@cat, @dog, t)"
        sweep: {t: [0, 0.25, 0.5, 0.75, 1]}
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from studio import expr
from studio.errors import StudioError
from studio.session import Progress, Session, Stored
from studio.store import NAME_RULE

MAX_RECIPE_BYTES = 1024 * 1024
MAX_SWEEP_POINTS = 4096


@dataclass
class Render:
    name: str
    expr: str
    sweep: dict[str, list[float]] = field(default_factory=dict)

    def points(self) -> list[dict[str, float]]:
        keys = list(self.sweep)
        return [dict(zip(keys, combo)) for combo in itertools.product(*(self.sweep[k] for k in keys))] or [{}]


@dataclass
class Recipe:
    """A parsed, validated recipe; ``source`` names the file for error messages."""

    source: str
    model: str | None
    settings: dict[str, Any]
    inputs: dict[str, dict[str, Any]]
    let: dict[str, str]
    renders: list[Render]

    @classmethod
    def load(cls, path: str | os.PathLike) -> Recipe:
        path = Path(path)
        try:
            if path.stat().st_size > MAX_RECIPE_BYTES:
                raise StudioError(f"{path} is larger than {MAX_RECIPE_BYTES // 1024} KiB; not a recipe")
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise StudioError(f"no such recipe file: {path}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise StudioError(f"cannot read recipe {path}: {exc}") from None
        return cls.parse(text, str(path))

    @classmethod
    def parse(cls, text: str, source: str = "recipe") -> Recipe:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            where = getattr(exc, "problem_mark", None)
            at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
            raise StudioError(f"{source} is not valid YAML{at}: {getattr(exc, 'problem', exc)}") from None
        if not isinstance(data, dict):
            raise StudioError(f"{source}: a recipe is a mapping with 'inputs', 'let' and 'renders'")
        unknown = set(data) - {"model", "settings", "inputs", "let", "renders", "description"}
        if unknown:
            raise StudioError(f"{source}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; "
                              "expected model, settings, inputs, let, renders")
        model = data.get("model")
        if model is not None and not isinstance(model, str):
            raise StudioError(f"{source}: 'model' must be a model spec string")
        settings = _mapping(data.get("settings") or {}, f"{source}: settings")
        inputs = {}
        for key, spec in _mapping(data.get("inputs") or {}, f"{source}: inputs").items():
            where = f"{source}: inputs.{key}"
            _check_local_name(key, where)
            spec = _mapping(spec, where)
            if "ref" in spec:
                if set(spec) != {"ref"}:
                    raise StudioError(f"{where}: an input from the library has only 'ref'")
            else:
                extra = set(spec) - {"prompt", "seed", "model", "settings", "space"}
                if extra:
                    raise StudioError(f"{where}: unknown key(s) {', '.join(sorted(extra))}; "
                                      "expected ref, or prompt/seed/model/settings")
                if not isinstance(spec.get("seed"), int) or isinstance(spec.get("seed"), bool):
                    raise StudioError(f"{where}: 'seed' must be an integer")
                if "prompt" in spec and not isinstance(spec["prompt"], str):
                    raise StudioError(f"{where}: 'prompt' must be text")
            inputs[key] = spec
        let = {}
        for key, source_expr in _mapping(data.get("let") or {}, f"{source}: let").items():
            _check_local_name(key, f"{source}: let.{key}")
            if key in inputs:
                raise StudioError(f"{source}: let.{key} has the same name as an input")
            let[key] = _expression(source_expr, f"{source}: let.{key}")
        renders = []
        raw = data.get("renders") or []
        if not isinstance(raw, list):
            raise StudioError(f"{source}: 'renders' must be a list")
        for i, r in enumerate(raw):
            where = f"{source}: renders[{i}]"
            r = _mapping(r, where)
            extra = set(r) - {"name", "expr", "sweep"}
            if extra:
                raise StudioError(f"{where}: unknown key(s) {', '.join(sorted(extra))}; expected name, expr, sweep")
            name = r.get("name", f"render{i + 1}")
            _check_local_name(name, where)
            sweep = {}
            for var, values in _mapping(r.get("sweep") or {}, f"{where}.sweep").items():
                if not isinstance(values, list) or not values or not all(
                        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
                    raise StudioError(f"{where}.sweep.{var}: expected a list of numbers, e.g. [0, 0.5, 1]")
                sweep[str(var)] = [float(v) for v in values]
            render = Render(name, _expression(r.get("expr"), f"{where}.expr"), sweep)
            if len(render.points()) > MAX_SWEEP_POINTS:
                raise StudioError(f"{where}: the sweep has more than {MAX_SWEEP_POINTS} points")
            missing = set(expr.variables(expr.parse(render.expr))) - set(sweep)
            if missing:
                raise StudioError(f"{where}: variable(s) {', '.join(sorted(missing))} used in expr but not swept")
            renders.append(render)
        if not renders and not let:
            raise StudioError(f"{source}: nothing to do (no 'let' and no 'renders')")
        return cls(source, model, settings, inputs, let, renders)


def _mapping(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise StudioError(f"{where}: expected a mapping, got {type(value).__name__}")
    return value


def _check_local_name(name: Any, where: str) -> None:
    if not isinstance(name, str) or not NAME_RULE.match(name):
        raise StudioError(f"{where}: invalid name {name!r}")


def _expression(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise StudioError(f"{where}: expected an expression string")
    try:
        expr.parse(value)
    except StudioError as exc:
        raise StudioError(f"{where}: {exc}") from None
    return value


@dataclass
class RecipeResult:
    inputs: dict[str, Stored]
    lets: dict[str, Stored]
    renders: dict[str, list[tuple[dict[str, float], Stored]]]
    files: list[Path]


def run(session: Session, recipe: Recipe, out: str | os.PathLike | None = None,
        progress: Progress | None = None, on_stage: Any = None, batch: int = 16) -> RecipeResult:
    """Sample or load the inputs, evaluate the lets, evaluate and render every sweep point in batches."""
    tag = f"recipe:{Path(recipe.source).stem}"[:64]
    scope: dict[str, Stored] = {}
    # 1. inputs: sampled ones grouped per model so each model loads once
    for key, spec in recipe.inputs.items():
        if "ref" in spec:
            ref = spec["ref"]
            object_id = session.library.resolve(ref)
            scope[key] = Stored(object_id, None, session.library.get(object_id))
        else:
            settings = {**recipe.settings, **spec.get("settings", {})}
            extra = {"space": spec["space"]} if "space" in spec else {}
            (stored,) = session.sample(spec.get("model") or recipe.model, spec.get("prompt"), spec["seed"],
                                       tags=[tag], **settings, **extra)
            scope[key] = stored
    # 2. lets, in order; each may use the ones before it
    lets = {}
    for key, source in recipe.let.items():
        lets[key] = scope[key] = session.evaluate(source, scope=scope, tags=[tag])
    # 3. renders: evaluate every sweep point, then render all of them in batches
    renders: dict[str, list[tuple[dict[str, float], Stored]]] = {}
    for r in recipe.renders:
        renders[r.name] = [(p, session.evaluate(r.expr, bindings=p, scope=scope, tags=[tag])) for p in r.points()]
    files: list[Path] = []
    if out is not None:
        jobs = [(name, i, p, s) for name, pts in renders.items() for i, (p, s) in enumerate(pts)]
        for start in range(0, len(jobs), batch):
            chunk = jobs[start : start + batch]
            names = [f"{name}_{i:03d}" + "".join(f"_{k}={v:g}" for k, v in p.items()) + ".png"
                     for name, i, p, _ in chunk]
            files += session.render_to([s for *_, s in chunk], out, progress, filenames=names)
            if on_stage:
                on_stage(min(start + batch, len(jobs)), len(jobs))
    return RecipeResult({k: scope[k] for k in recipe.inputs}, lets, renders, files)

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

A recipe is checked whole when parsed; a run computes every object in memory and renders the
pictures before it stores anything, so a recipe that fails leaves the library as it was.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from studio import expr
from studio.checks import MAX_SEED, check_int, check_path, check_text, is_finite_number
from studio.errors import StudioError
from studio.objects import Generation
from studio.session import Progress, Session, Stored
from studio.store import NAME_RULE

MAX_RECIPE_BYTES = 1024 * 1024
MAX_SWEEP_POINTS = 4096  # pictures in one recipe, all renders together
MAX_YAML_DEPTH = 32  # a recipe needs about 5 levels; the YAML composer recurses once per level
QUOTE_LIMIT = 60  # user text quoted in an error is cut to this many characters
MESSAGE_LIMIT = 800  # and a whole error message to this many
VARIABLE_RULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,31}")  # sweep variables and setting names


def _cut(text: str, limit: int = QUOTE_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _quote(value: Any) -> str:
    """``repr(value)``, cut short, for error messages."""
    return _cut(repr(value))


def _keys(keys: set) -> str:
    """Unexpected keys, listed for an error message."""
    return ", ".join(sorted(_cut(str(k)) for k in keys))


# a quoted run without spaces (so never the prose between two quotes) longer than QUOTE_LIMIT
_LONG_QUOTED = re.compile(r"'([^'\s]{" + str(QUOTE_LIMIT + 1) + r",})'")


def _clip(message: str) -> str:
    """One line, long quoted words (a tag, a setting's value) shortened, at most MESSAGE_LIMIT long."""
    message = _LONG_QUOTED.sub(lambda m: _quote(m.group(1)), re.sub(r"\s*\n\s*", " ", message))
    return message if len(message) <= MESSAGE_LIMIT else message[: MESSAGE_LIMIT - 3] + "..."


class _RecipeLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing anchors and aliases and very deep nesting.

    A few hundred bytes of nested aliases expand to gigabytes (a "billion laughs"), and every
    nesting level costs the composer a Python stack frame; a recipe needs neither.
    """

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or event.anchor is not None:
            raise _refused("recipes may not use YAML anchors or aliases (& and *)", event.start_mark)
        self._depth += 1
        if self._depth > MAX_YAML_DEPTH:
            raise _refused(f"the recipe is nested more than {MAX_YAML_DEPTH} levels deep", event.start_mark)
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _refused(message: str, mark: Any) -> StudioError:
    return StudioError(f"{message} (line {mark.line + 1}, column {mark.column + 1})")


@dataclass
class Render:
    name: str
    expr: str
    sweep: dict[str, list[float]] = field(default_factory=dict)

    def size(self) -> int:
        """How many sweep points (pictures), without making them."""
        return math.prod(len(v) for v in self.sweep.values())

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
        path = check_path(path, "recipe path")
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
        check_text(text, "a recipe")
        check_text(source, "a recipe's source name")
        try:
            return cls._parse(text, source)
        except StudioError as exc:  # every message one line of bounded length
            raise type(exc)(_clip(str(exc))) from None

    @classmethod
    def _parse(cls, text: str, source: str) -> Recipe:
        data = _load_yaml(text, source)
        if not isinstance(data, dict):
            raise StudioError(f"{source}: a recipe is a mapping with 'inputs', 'let' and 'renders'")
        unknown = set(data) - {"model", "settings", "inputs", "let", "renders", "description"}
        if unknown:
            raise StudioError(f"{source}: unknown key(s) {_keys(unknown)}; "
                              "expected model, settings, inputs, let, renders")
        model = _model(data.get("model"), f"{source}: model")
        settings = _settings(data.get("settings"), f"{source}: settings")
        inputs = {}
        for key, spec in _mapping(data.get("inputs") or {}, f"{source}: inputs").items():
            _check_local_name(key, f"{source}: inputs")
            inputs[key] = _input(spec, f"{source}: inputs.{key}")
        let: dict[str, str] = {}
        lets = _mapping(data.get("let") or {}, f"{source}: let")
        for key, source_expr in lets.items():
            _check_local_name(key, f"{source}: let")
            where = f"{source}: let.{key}"
            if key in inputs:
                raise StudioError(f"{where} has the same name as an input")
            let[key] = _expression(source_expr, where)
            # a let sees the inputs and the lets before it; a name of itself or of a later let
            # would otherwise quietly mean a library object of that name, or nothing
            for ref in expr.refs(expr.parse(let[key])):
                if ref == key:
                    raise StudioError(f"{where} refers to itself (@{key}); a let may use the inputs "
                                      "and the lets before it")
                if ref in lets and ref not in let:
                    raise StudioError(f"{where} uses @{ref}, which is defined after it; a let may use "
                                      "the inputs and the lets before it")
        renders = _renders(data.get("renders"), source)
        if not renders and not let:
            raise StudioError(f"{source}: nothing to do (no 'let' and no 'renders')")
        return cls(source, model, settings, inputs, let, renders)


def _load_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_RecipeLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        raise StudioError(f"{source} is not valid YAML{at}: {getattr(exc, 'problem', None) or exc}") from None
    except StudioError as exc:
        raise StudioError(f"{source}: {exc}") from None
    except (ValueError, OverflowError) as exc:  # e.g. a date such as 2001-13-01 that YAML reads as a timestamp
        raise StudioError(f"{source} is not a valid recipe: {exc}") from None
    except RecursionError:  # a backstop: the loader bounds nesting, so this should not happen
        raise StudioError(f"{source}: the recipe is nested too deeply") from None


def _mapping(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise StudioError(f"{where}: expected a mapping, got {type(value).__name__}")
    return value


def _check_local_name(name: Any, where: str) -> None:
    if not isinstance(name, str) or not NAME_RULE.fullmatch(name):
        raise StudioError(f"{where}: invalid name {_quote(name)} (a name starts with a letter or '_' and has "
                          "at most 64 letters, digits, '_', '.' or '-')")


def _model(value: Any, where: str) -> str | None:
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise StudioError(f"{where}: expected a model spec string, got {_quote(value)}")
    return value


def _settings(value: Any, where: str) -> dict[str, Any]:
    """Sampling settings: names to numbers, text or true/false (the model checks which it knows)."""
    settings = _mapping(value if value is not None else {}, where)
    for key, v in settings.items():
        if not isinstance(key, str) or not VARIABLE_RULE.fullmatch(key):
            raise StudioError(f"{where}: invalid setting name {_quote(key)}")
        if not isinstance(v, (int, float, str, bool)):
            raise StudioError(f"{where}.{key}: expected a number or text, got {_quote(v)}")
    return settings


def _input(spec: Any, where: str) -> dict[str, Any]:
    spec = _mapping(spec, where)
    if "ref" in spec:
        if set(spec) != {"ref"}:
            raise StudioError(f"{where}: an input from the library has only 'ref'")
        if not isinstance(spec["ref"], str) or not spec["ref"].strip("@ "):
            raise StudioError(f"{where}: 'ref' must name a stored object, e.g. \"@mid\", got {_quote(spec['ref'])}")
        return spec
    extra = set(spec) - {"prompt", "seed", "model", "settings", "space"}
    if extra:
        raise StudioError(f"{where}: unknown key(s) {_keys(extra)}; "
                          "expected ref, or prompt/seed/model/settings/space")
    seed = spec.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise StudioError(f"{where}: 'seed' must be an integer")
    if not 0 <= seed <= MAX_SEED:
        raise StudioError(f"{where}: 'seed' must be between 0 and 2^63-1, got {_quote(seed)}")
    if "prompt" in spec and not isinstance(spec["prompt"], str):
        raise StudioError(f"{where}: 'prompt' must be text")
    if "space" in spec and not isinstance(spec["space"], str):
        raise StudioError(f"{where}: 'space' must be text (e.g. z or w), got {_quote(spec['space'])}")
    _model(spec.get("model"), f"{where}.model")
    return {**spec, "settings": _settings(spec.get("settings"), f"{where}.settings")}


def _renders(raw: Any, source: str) -> list[Render]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise StudioError(f"{source}: 'renders' must be a list")
    renders: list[Render] = []
    pictures, names = 0, set()
    for i, r in enumerate(raw):
        where = f"{source}: renders[{i}]"
        r = _mapping(r, where)
        extra = set(r) - {"name", "expr", "sweep"}
        if extra:
            raise StudioError(f"{where}: unknown key(s) {_keys(extra)}; "
                              "expected name, expr, sweep")
        name = r.get("name", f"render{i + 1}")
        _check_local_name(name, where)
        if name in names:  # its pictures would overwrite the other's
            raise StudioError(f"{where}: another render is named {name!r} already; give each render its own name")
        names.add(name)
        sweep = {}
        for var, values in _mapping(r.get("sweep") or {}, f"{where}.sweep").items():
            # variables go into file names (name_000_t=0.5.png): identifiers only
            if not isinstance(var, str) or not VARIABLE_RULE.fullmatch(var):
                raise StudioError(f"{where}.sweep: invalid variable name {_quote(var)} (a letter or '_', then "
                                  "at most 31 letters, digits or '_')")
            if not isinstance(values, list) or not values or not all(map(is_finite_number, values)):
                raise StudioError(f"{where}.sweep.{var}: expected a list of numbers, e.g. [0, 0.5, 1]")
            sweep[var] = [float(v) for v in values]
        render = Render(name, _expression(r.get("expr"), f"{where}.expr"), sweep)
        used = set(expr.variables(expr.parse(render.expr)))
        if missing := used - set(sweep):
            raise StudioError(f"{where}: variable(s) {', '.join(sorted(missing))} used in expr but not swept")
        if unused := set(sweep) - used:  # it would only repeat the same picture
            raise StudioError(f"{where}: sweep variable(s) {', '.join(sorted(unused))} not used in expr "
                              f"{_quote(render.expr)}")
        renders.append(render)
        pictures += render.size()
        if pictures > MAX_SWEEP_POINTS:
            raise StudioError(f"{where}: the recipe asks for more than {MAX_SWEEP_POINTS} pictures")
    return renders


def _expression(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise StudioError(f"{where}: expected an expression string")
    with _step(where, value):
        expr.parse(value)
    return value


@contextlib.contextmanager
def _step(where: str, source: str | None = None) -> Iterator[None]:
    """Prefix an error with the recipe field it came from; a long expression is quoted shortened."""
    try:
        yield
    except StudioError as exc:
        message = str(exc)
        if source is not None and len(source) > QUOTE_LIMIT:
            message = message.replace(f"'{source}'", _quote(source))
        raise type(exc)(_clip(f"{where}: {message}")) from None


@dataclass
class RecipeResult:
    inputs: dict[str, Stored]
    lets: dict[str, Stored]
    renders: dict[str, list[tuple[dict[str, float], Stored]]]
    files: list[Path]


def run(session: Session, recipe: Recipe, out: str | os.PathLike | None = None,
        progress: Progress | None = None, on_stage: Any = None, batch: int = 16) -> RecipeResult:
    """Sample or load the inputs, evaluate the lets and every sweep point, render them in batches, store.

    Everything is computed in memory and rendered before anything is stored, so a recipe that
    fails (a bad reference, two spaces combined, a setting the model refuses, a render error)
    leaves the library as it was. Only a failure while storing (a full disk) can leave part.
    """
    if not isinstance(recipe, Recipe):
        raise StudioError(f"run takes a Recipe (Recipe.load(path) or Recipe.parse(text)), got {_quote(recipe)}")
    check_int(batch, "batch", 1)
    if out is not None:
        check_path(out, "out")
    src = recipe.source
    # the tag names the file; characters a tag may not hold become '_'
    tag = "recipe:" + re.sub(r"[^A-Za-z0-9_.:\-]", "_", Path(src).stem)[:57]
    scope: dict[str, Stored] = {}
    new: list[Stored] = []  # objects this run makes, parents before children: the order to store them
    # 1. inputs
    for key, spec in recipe.inputs.items():
        with _step(f"{src}: inputs.{key}"):
            if "ref" in spec:
                object_id = session.library.resolve(spec["ref"])
                scope[key] = Stored(object_id, None, session.library.get(object_id))
            else:
                scope[key] = _sample(session, recipe, spec)
                new.append(scope[key])
    # 2. lets, in order; each may use the ones before it
    lets = {}
    for key, source in recipe.let.items():
        with _step(f"{src}: let.{key}", source):
            lets[key] = scope[key] = _evaluate(session, source, scope, None, new)
    # 3. renders: every sweep point, each checked to be a picture and given a file name
    renders: dict[str, list[tuple[dict[str, float], Stored]]] = {}
    jobs: list[tuple[Stored, str]] = []
    for i, r in enumerate(recipe.renders):
        renders[r.name] = []
        for k, p in enumerate(r.points()):
            with _step(f"{src}: renders[{i}] ({r.name})", r.expr):
                stored = _evaluate(session, r.expr, scope, p, new)
                if out is not None and not isinstance(stored.obj, Generation):
                    raise StudioError(f"'{r.expr}' gives a {stored.obj.kind} in {stored.obj.space}, which has "
                                      "no picture; a render needs a generation")
            renders[r.name].append((p, stored))
            jobs.append((stored, _file_name(r.name, k, p)))
    # 4. pictures, in batches
    files: list[Path] = []
    if out is not None:
        for start in range(0, len(jobs), batch):
            chunk = jobs[start : start + batch]
            files += session.render_to([s for s, _ in chunk], out, progress, filenames=[f for _, f in chunk])
            if on_stage:
                on_stage(min(start + batch, len(jobs)), len(jobs))
    # 5. only now the library: inputs, lets and sweep points, parents first
    for stored in new:
        session.library.put(stored.obj, None, [tag])
    return RecipeResult({k: scope[k] for k in recipe.inputs}, lets, renders, files)


def _sample(session: Session, recipe: Recipe, spec: dict[str, Any]) -> Stored:
    """A sampled input, in memory: what ``Session.sample`` makes, not yet stored."""
    settings = {**recipe.settings, **spec["settings"]}
    if "space" in spec:
        settings["space"] = spec["space"]
    (stored,) = session.sample(spec.get("model") or recipe.model, spec.get("prompt"), spec["seed"], store=False,
                               **settings)
    return stored


def _evaluate(session: Session, source: str, scope: dict[str, Stored], bindings: dict[str, float] | None,
              new: list[Stored]) -> Stored:
    """Evaluate without storing; a result that is not just a reference joins ``new``, to be stored later."""
    stored = session.evaluate(source, bindings=bindings, scope=scope, store=False)
    if not isinstance(expr.parse(source), expr.Ref):
        new.append(stored)
    return stored


def _file_name(render: str, index: int, point: dict[str, float]) -> str:
    """``name_003_t=0.5.png``; the parts are checked names and numbers, so it is one plain file name."""
    name = f"{render}_{index:03d}" + "".join(f"_{k}={v:g}" for k, v in point.items()) + ".png"
    if Path(name).name != name or name.startswith("."):
        raise StudioError(f"cannot use {_quote(name)} as a file name")
    return name

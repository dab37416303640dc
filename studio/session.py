"""The session facade: the one object the UI, the CLI and scripts call.

It holds the library and the loaded model adapters (loaded lazily, once per spec), and
turns user requests (sample, evaluate, render, import, export) into library objects and
PNG files. Importing this module does not import diffusers: adapters load on first use.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from pipelines.base import GanW, Invertible, VaeCoder, require
from studio import expr, formats
from studio.checks import (
    check_choice,
    check_int,
    check_number,
    check_path,
    check_seed,
    check_tags,
    check_text,
)
from studio.errors import StudioError
from studio.objects import Generation, Latent, Lineage, StoredObject, Vector
from studio.space import Space
from studio.store import Library, Record, atomic_write, check_name, check_tag, make_folder, numbered_names

DEFAULT_MODEL = "emoji-diffusion"
MAX_COUNT = 1024  # more samples than this in one call is almost surely a typo
INVERT_OPTIONS = ("category", "style", "class", "space")  # what a GAN's projection takes besides steps
FITS = ("crop", "pad")  # how a picture that is not square becomes one, for encode and invert
Progress = Callable[[int, int], None]


class StudioWarning(UserWarning):
    """Advice about a request that runs anyway (see ``Session.notify``)."""


def warn(message: str) -> None:
    import warnings

    warnings.warn(message, StudioWarning, stacklevel=4)


def default_home() -> Path:
    """``STUDIO_HOME`` if set, else the per-user data folder."""
    if os.environ.get("STUDIO_HOME"):
        return Path(os.environ["STUDIO_HOME"]).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir("latent-studio", appauthor=False))


@dataclass
class Stored:
    """An object just stored: its id, the name it got (if any) and the object itself."""

    id: str
    name: str | None
    obj: StoredObject

    @property
    def label(self) -> str:
        return self.name or self.id[:12]


def recipe_of(gen: Generation, object_id: str | None = None) -> dict[str, Any]:
    """The readable recipe a PNG carries: enough for a person to see how it was made."""
    return {
        "studio": "latent-studio", "id": object_id or gen.id, "model": gen.model, "settings": gen.settings,
        "seed": gen.meta.get("seed"), "prompt": gen.meta.get("prompt"),
        "spaces": {r: str(s) for r, s in gen.spaces.items()},
        "lineage": gen.lineage.to_json() if gen.lineage else None,
    }


class Session:
    """Library + loaded adapters, behind plain-value methods."""

    def __init__(self, home: str | os.PathLike | None = None, device: str | None = None, dtype: str | None = None,
                 batch_size: int | None = None, notify: Callable[[str], None] | None = None):
        if batch_size is not None:
            check_int(batch_size, "batch size", 1)
        self.library = Library(home if home is not None else default_home())
        self.device = device
        self.dtype = dtype
        self.batch_size = batch_size  # items per model call; None: sized to the device's free memory
        self._adapters: dict[str, Any] = {}
        # where advice about a request that still runs goes (an empty prompt, a size far from the model's):
        # the CLI prints it on stderr, the UI shows it as a toast; Python callers get a StudioWarning
        self.notify = notify or warn

    @property
    def vectors(self):
        """The vector workbench (make, condition, discover, apply vectors)."""
        from studio.vectorlab import VectorLab

        return VectorLab(self)

    # ---- models ----

    def adapter(self, spec: str | None = None):
        """The loaded adapter for a model spec (loaded once per session)."""
        from pipelines.registry import load_adapter, resolved_spec

        spec = resolved_spec(spec or DEFAULT_MODEL)
        if spec not in self._adapters:
            adapter = load_adapter(spec, device=self.device, dtype=self.dtype)
            adapter.batch_override = self.batch_size
            self._adapters[spec] = adapter
        return self._adapters[spec]

    def loaded(self, spec: str | None = None) -> bool:
        """Whether this session has the model loaded already."""
        from pipelines.registry import resolved_spec

        return resolved_spec(spec or DEFAULT_MODEL) in self._adapters

    @staticmethod
    def local_kind(spec: str | None = None) -> str | None:
        """'diffusion' or 'gan' for a model on this machine, told without loading it; None when only loading can tell."""
        from pipelines.registry import local_kind

        return local_kind(spec or DEFAULT_MODEL)

    @staticmethod
    def models() -> list[tuple[str, str]]:
        from pipelines.registry import list_models

        return list_models()

    # ---- sampling ----

    def sample(self, model: str | None = None, prompt: str | None = None, seed: int | None = None,
               count: int = 1, name: str | None = None, tags: Iterable[str] | None = None, store: bool = True,
               **settings: Any) -> list[Stored]:
        """Draw ``count`` generations (seeds seed, seed+1, ...) and store each (unless ``store`` is false)."""
        check_int(count, "count", 1, MAX_COUNT)
        if name is not None:
            check_name(name)
        check_text(prompt, "prompt", optional=True)
        tags = [check_tag(t) for t in check_tags(tags)]
        if seed is None:
            seed = secrets.randbelow(2**31)
        check_seed(seed, count)
        names = numbered_names(name, count)
        for n in names:
            if n is not None:
                self.library.check_free(n)
        adapter = self.adapter(model)
        self._advise_sample(adapter, prompt, settings)
        seeds = [seed + i for i in range(count)]
        gens = adapter.sample(seeds, [prompt or ""] * count if prompt is not None else None, **settings)
        for g in gens:
            g.lineage = g.lineage or Lineage("sample", {k: g.meta[k] for k in ("seed", "prompt") if k in g.meta})
        if not store:
            return [Stored(g.id, None, g) for g in gens]
        return [Stored(self.library.put(g, n, tags), n, g) for g, n in zip(gens, names)]

    def _advise_sample(self, adapter, prompt: str | None, settings: dict[str, Any]) -> None:
        """Say what a request will give that its asker may not expect; it still runs as asked."""
        from pipelines.base import TextConditioned

        if not isinstance(adapter, TextConditioned):
            return  # a GAN has neither a prompt to miss nor a size to ask for
        adapter.resolve_settings(settings)  # a setting the model refuses is the one error, before any advice
        if prompt is not None and not prompt.strip():
            self.notify(f"the prompt is empty: {adapter.spec} draws without text conditioning "
                        f"(whatever it has learnt most often)")
        native = adapter.default_settings()
        asked = {side: settings[side] for side in ("height", "width")
                 if isinstance(settings.get(side), int) and side in native}
        if any(not native[side] / 2 <= value <= native[side] * 2 for side, value in asked.items()):
            h, w = settings.get("height", native.get("height")), settings.get("width", native.get("width"))
            self.notify(f"{adapter.spec} was trained at {native['width']}x{native['height']} px; {w}x{h} px is far "
                        f"from it: expect repeated or broken shapes, and {w * h / (native['width'] * native['height']):.3g} "
                        f"times the work per step")

    # ---- the algebra ----

    def get(self, ref: str) -> StoredObject:
        return self.library.get(ref)

    def evaluate(self, source: str, name: str | None = None, bindings: dict[str, float] | None = None,
                 scope: dict[str, Stored] | None = None, store: bool = True,
                 tags: Iterable[str] | None = None) -> Stored:
        """Evaluate an expression over stored objects; store the result with its lineage."""
        if name is not None:
            check_name(name)
        tags = [check_tag(t) for t in check_tags(tags)]
        tree = expr.parse(source)
        scope = scope or {}
        ids: dict[str, str] = {}

        def lookup(ref: str) -> StoredObject:
            if ref in scope:
                ids[ref] = scope[ref].id
                return scope[ref].obj
            ids[ref] = self.library.resolve(ref)
            return self.library.get(ids[ref])

        value = expr.Evaluator(source, lookup, bindings, lift=self._lift).eval(tree)
        if isinstance(value, (int, float)):
            raise StudioError(f"'{source}' gives the number {value:g}, not a latent; use @name to refer to stored objects")
        if isinstance(tree, expr.Ref):  # a bare reference: the object itself, named and tagged as asked
            object_id = ids[tree.name]
            if store and name:
                self.library.name(object_id, name)
            for t in tags if store else ():
                self.library.tag(object_id, t)
            return Stored(object_id, name, value)
        params = dict(bindings or {})
        value.lineage = expr.lineage_of(tree, source, [ids[r] for r in expr.refs(tree)], params)
        if not store:
            return Stored(value.id, None, value)
        return Stored(self.library.put(value, name, tags), name, value)

    def _lift(self, space: str, value: Any) -> Any:
        """A GAN generation in another of its model's spaces (``mix`` takes w+: a z is mapped, a w repeated)."""
        if not isinstance(value, Generation):
            return value
        adapter = self.adapter(value.model)
        if not isinstance(adapter, GanW):
            raise StudioError(f"{space} is a GAN space; a generation of {value.model} has none")
        return adapter.to_wplus(value)

    def check_expression(self, source: str, bindings: dict[str, float] | None = None) -> str:
        """Parse and resolve an expression without storing; returns a description of the result."""
        return describe_value(self.evaluate(source, bindings=bindings, store=False).obj)

    # ---- rendering ----

    def render(self, gens: list[Generation], progress: Progress | None = None) -> list[Image.Image]:
        """Pictures for generations, batched per model."""
        if not isinstance(gens, (list, tuple)):
            raise StudioError(f"render takes a list of Generation objects (refs go to render_refs), got {gens!r}")
        _check_progress(progress)
        images: list[Image.Image | None] = [None] * len(gens)
        by_model: dict[str, list[int]] = {}
        for i, g in enumerate(gens):
            if isinstance(g, (Latent, Vector)):
                raise StudioError(f"only generations can be rendered; got a {g.kind} (in {g.space})")
            if not isinstance(g, Generation):
                raise StudioError(f"render takes Generation objects (refs go to render_refs), got {g!r}")
            by_model.setdefault(g.model, []).append(i)
        for model, idx in by_model.items():
            for i, im in zip(idx, self.adapter(model).render([gens[i] for i in idx], progress)):
                images[i] = im
        return images  # type: ignore[return-value]

    def render_to(self, items: list[Stored], out: str | os.PathLike, progress: Progress | None = None,
                  filenames: list[str] | None = None) -> list[Path]:
        """Render stored generations into PNGs (named by label) that carry their generation."""
        bad = [f for f in filenames or () if not isinstance(f, str) or Path(f).name != f or f in ("", ".", "..")]
        if bad:
            raise StudioError(f"file name {bad[0]!r} is not a plain file name inside {out}")
        out_dir = make_folder(check_path(out, "out"))
        gens = [self._as_generation(s.obj) for s in items]
        images = self.render(gens, progress)
        paths = []
        for k, (s, g, im) in enumerate(zip(items, gens, images)):
            path = out_dir / (filenames[k] if filenames else f"{s.label}.png")
            paths.append(formats.save_png(im, path, g, recipe_of(g, s.id)))
        return paths

    def render_refs(self, refs: list[str], out: str | os.PathLike, progress: Progress | None = None) -> list[Path]:
        check_path(out, "out")
        if isinstance(refs, str) or not isinstance(refs, (list, tuple)):
            raise StudioError(f"refs must be a list of names or id prefixes, got {refs!r}")
        return self.render_to([self.stored(ref) for ref in refs], out, progress)

    def stored(self, ref: str) -> Stored:
        """A library object by reference, labelled by its first name (or short id)."""
        object_id = self.library.resolve(ref)
        names = self.library.names_of(object_id)
        return Stored(object_id, names[0] if names else None, self.library.get(object_id))

    # ---- interpolation ----

    def interpolate(self, refs: list[str], frames: int = 12, method: str = "slerp",
                    easing: str = "ease-in-out") -> tuple[list[Stored], list[dict[str, Any]]]:
        """The frames between two or more keyframes (generations), evaluated but not stored, and their
        plan: one {expr, t} per frame, ``METHOD(@a, @b, t)`` over the pair a frame lies between."""
        from studio import interpolation

        if isinstance(refs, str) or not isinstance(refs, (list, tuple)):
            raise StudioError(f"keyframes must be a list of names or id prefixes, got {refs!r}")
        if not 2 <= len(refs) <= interpolation.MAX_KEYFRAMES:
            raise StudioError(f"give between 2 and {interpolation.MAX_KEYFRAMES} keyframes, got {len(refs)}")
        check_int(frames, "frames", 2, interpolation.MAX_FRAMES)
        check_choice(method, "method", interpolation.METHODS)
        check_choice(easing, "easing", interpolation.EASINGS)
        keys = [self.stored(r) for r in refs]
        for k in keys:
            if not isinstance(k.obj, Generation):
                raise StudioError(f"{k.label} is a {k.obj.kind}, not a generation; only generations are keyframes")
        scope = {k.name or k.id: k for k in keys}  # how the plan's expressions refer to them
        plan = interpolation.plan([k.name or k.id for k in keys], frames, method, easing)
        items = [self.evaluate(p["expr"], bindings={"t": p["t"]}, scope=scope, store=False) for p in plan]
        return items, plan

    def render_interpolation(self, refs: list[str], out: str | os.PathLike, frames: int = 12,
                             method: str = "slerp", easing: str = "ease-in-out", fps: float = 8,
                             gif: bool = True, mp4: bool = True, progress: Progress | None = None
                             ) -> dict[str, Any]:
        """Render an interpolation's frames (``frame_000.png``, ... carrying their generations) and the
        animation; returns {frames: paths, gif, mp4, plan}. Nothing is stored in the library."""
        from studio import interpolation

        check_path(out, "out")
        fps = check_number(fps, "fps")
        if not 1 <= fps <= 60:
            raise StudioError(f"fps must be between 1 and 60, got {fps:g}")
        items, plan = self.interpolate(refs, frames, method, easing)
        paths = self.render_to(items, out, progress, filenames=[f"frame_{i:03d}.png" for i in range(len(items))])
        animated = interpolation.write_animation([Image.open(p) for p in paths], paths[0].parent / "animation", fps,
                                                 gif, mp4) if gif or mp4 else (None, None)
        return {"frames": paths, "gif": animated[0], "mp4": animated[1], "plan": plan}

    def reconstruction_psnr(self, original: str | os.PathLike, rendered: str | os.PathLike, fit: str = "crop") -> float:
        """PSNR (dB) of a re-rendered picture against the original, squared as ``invert`` squared it."""
        import numpy as np

        from studio.scoring import psnr

        picture = open_image(rendered)
        square = self._square(open_image(original), original, fit, quiet=True)
        return psnr(np.asarray(square.resize(picture.size, Image.LANCZOS)), np.asarray(picture))

    def _as_generation(self, obj: StoredObject) -> Generation:
        if isinstance(obj, Generation):
            return obj
        if isinstance(obj, Vector):
            raise StudioError("a vector has no picture of its own; add it to a generation (e.g. @scene + 0.8 * @vector)")
        raise StudioError(f"a lone {obj.space.kind} latent has no picture; render a generation that uses it")

    # ---- files in and out ----

    def export(self, ref: str, path: str | os.PathLike) -> Path:
        """Export to ``.safetensors`` (our self-describing file) or ``.latent`` (ComfyUI, VAE latents)."""
        path = check_path(path, "path")
        obj = self.library.get(ref)
        if self.library.owns(path):  # an object file overwritten by another's content would be lost
            raise StudioError(f"cannot export to {path}: it is one of the library's own files "
                              f"(objects and index in {self.library.home}); choose a path outside them")
        suffix = path.suffix.lower()
        if suffix == ".latent":
            if not isinstance(obj, Latent):
                raise StudioError(f"only VAE-space latents export to ComfyUI .latent files; {ref} is a {obj.kind}")
            data = formats.to_comfy(obj)
        elif suffix == ".safetensors":
            data = formats.to_bytes(obj)
        else:
            raise StudioError(f"unknown export format {path.suffix or '(none)'!r}: use .safetensors or .latent")
        try:
            atomic_write(path, data)
        except OSError as exc:
            raise StudioError(f"cannot write {path}: {exc.strerror}") from None
        return path

    @staticmethod
    def convert(network: str | os.PathLike, folder: str | os.PathLike) -> dict[str, Any]:
        """Write a StyleGAN network file (.pkl, .pt) as a folder of config.json + model.safetensors.

        The file is read without running code from it; the folder then loads as a model spec with
        the same outputs, bit for bit. Returns what config.json says of the network.
        """
        from pipelines.stylegan_nets.folder import save_network_folder

        path = check_path(network, "network file")
        if not path.is_file():
            raise StudioError(f"network file {str(network)!r} does not exist")
        target = save_network_folder(path, check_path(folder, "folder"))
        config = json.loads((target / "config.json").read_text())
        keep = ("network", "source", "z_dim", "w_dim", "c_dim", "num_ws", "img_resolution", "img_channels")
        return {"folder": str(target), **{k: config.get(k) for k in keep}}

    def import_file(self, path: str | os.PathLike, name: str | None = None, model: str | None = None) -> list[Stored]:
        """Import a Latent Studio ``.safetensors`` file, a ComfyUI ``.latent`` or a studio PNG."""
        path = check_path(path, "path")
        if name is not None:
            check_name(name)
        if not path.is_file():
            raise StudioError(f"no such file: {path}")
        suffix = path.suffix.lower()
        if suffix not in (".png", ".safetensors", ".latent"):
            raise StudioError(f"cannot import {path.name}: import takes a studio PNG, a .safetensors file "
                              f"or a ComfyUI .latent")
        if suffix == ".png":
            gen = self._foreign_parents_noted(formats.read_png(path)[0])
            return [Stored(self.library.put(gen, name), name, gen)]
        data = path.read_bytes()
        if suffix == ".latent":
            tensors = formats.from_comfy(data, str(path))
            if model is None:
                raise StudioError("a ComfyUI .latent file does not say which VAE made it; "
                                  "name the model with --model so its VAE space can be assigned")
            adapter = require(self.adapter(model), VaeCoder, "take a ComfyUI .latent (name a diffusion model "
                              "with --model)")
            h, w = tensors[0].shape[-2:]
            space: Space = adapter.vae_space(h * adapter.scale, w * adapter.scale)
            lats = []
            for t in tensors:
                if tuple(t.shape) != space.shape:
                    raise StudioError(f"{path}: latent of shape {tuple(t.shape)} does not fit {space}")
                lats.append(Latent(t, space, {"model": adapter.spec, "scale": "unscaled", "source": path.name},
                                   Lineage("import", {"file": path.name, "format": "comfyui"})))
            names = numbered_names(name, len(lats))
            for lat, n in zip(lats, names):  # every name checked before any item is stored
                if n is not None:
                    self.library.check_free(n, lat.id)
            return [Stored(self.library.put(lat, n), n, lat) for lat, n in zip(lats, names)]
        obj = self._foreign_parents_noted(formats.from_bytes(data, str(path))[0])
        return [Stored(self.library.put(obj, name), name, obj)]

    def _foreign_parents_noted(self, obj: StoredObject) -> StoredObject:
        """An imported object whose parents are not all in this library keeps them as a note, not as links."""
        if obj.lineage and not all(self.library.exists(p) for p in obj.lineage.parents):
            obj.lineage = Lineage(obj.lineage.op, {**obj.lineage.params, "foreign_parents": list(obj.lineage.parents)})
        return obj

    def encode_image(self, path: str | os.PathLike, model: str | None = None, name: str | None = None,
                     fit: str = "crop") -> Stored:
        """Encode a picture into the model's VAE space (unscaled) and store it; one that is not square is
        centre-cropped or padded to a square first (``fit``)."""
        if name is not None:
            check_name(name)
        check_choice(fit, "fit", FITS)
        image = self._square(open_image(path), path, fit)
        adapter = require(self.adapter(model), VaeCoder, "encode pictures")
        (lat,) = adapter.encode([image])
        lat.lineage = Lineage("encode", {"file": Path(path).name})
        return Stored(self.library.put(lat, name), name, lat)

    def invert(self, path: str | os.PathLike, model: str | None = None, prompt: str | None = "",
               steps: int | None = None, name: str | None = None, progress: Progress | None = None,
               fit: str = "crop", **options: Any) -> Stored:
        """A picture -> a generation that re-renders it (DDIM or flow inversion, or GAN projection), stored.
        A picture that is not square is centre-cropped or padded to a square first (``fit``)."""
        prompt = check_text(prompt, "prompt", optional=True) or ""
        _check_progress(progress)
        check_choice(fit, "fit", FITS)
        unknown = sorted(set(options) - set(INVERT_OPTIONS))
        if unknown:
            raise StudioError(f"invert takes no option {', '.join(map(repr, unknown))}; "
                              f"its options are {', '.join(INVERT_OPTIONS)} (a GAN's projection)")
        if name is not None:
            self.library.check_free(name)  # checked before the slow work
        image = self._square(open_image(path), path, fit)
        adapter = self.adapter(model)
        options = {k: v for k, v in options.items() if v is not None}
        if isinstance(adapter, Invertible):
            if options:
                raise StudioError(f"{', '.join(sorted(options))}: options of a GAN's projection; "
                                  f"{adapter.spec} is a diffusion model")
            gen = adapter.invert(image, prompt, _steps(steps, 100, 1000, "inversion"))
        elif isinstance(adapter, GanW):  # the adapter refuses class settings its model does not take
            gen = adapter.project(image, _steps(steps, 300, 10_000, "GAN projection"), progress=progress, **options)
        else:
            raise StudioError(f"model {adapter.spec} cannot invert pictures")
        gen.lineage = Lineage(gen.lineage.op if gen.lineage else "invert",
                              {**(gen.lineage.params if gen.lineage else {}), "file": Path(path).name})
        return Stored(self.library.put(gen, name), name, gen)

    def _square(self, image: Image.Image, path: str | os.PathLike, fit: str, quiet: bool = False) -> Image.Image:
        """The picture as a square, centre-cropped or padded with white (the models' pictures are square), said so."""
        w, h = image.size
        if w == h:
            return image
        side = min(w, h) if fit == "crop" else max(w, h)
        other = "pad" if fit == "crop" else "crop"
        if not quiet:
            self.notify(f"{Path(path).name!r} is {w}x{h} px, not square: {'centre-cropped' if fit == 'crop' else 'padded'}"
                        f" to {side}x{side} (fit={other} to {other} it instead)")
        if fit == "crop":
            left, top = (w - side) // 2, (h - side) // 2
            return image.crop((left, top, left + side, top + side))
        square = Image.new("RGB", (side, side), (255, 255, 255))
        square.paste(image, ((side - w) // 2, (side - h) // 2))
        return square

    # ---- looking ----

    def describe(self, ref: str) -> dict[str, Any]:
        """Everything ``latents show`` prints: the index record, the file header, parents with names."""
        rec: Record = self.library.record(ref)
        header = self.library.header(rec.id)
        parents = [{"id": p, "names": self.library.names_of(p)} for p in self.library.parents(rec.id)]
        lineage = header.get("lineage") or {}
        return {**rec.to_json(), "meta": header.get("meta", {}), "settings": header.get("settings"),
                "lineage": {"op": lineage.get("op"), "params": lineage.get("params", {}), "parents": parents},
                "children": self.library.children(rec.id), "path": str(self.library.path_of(rec.id))}


def _check_progress(progress: Any) -> None:
    if progress is not None and not callable(progress):
        raise StudioError(f"progress must be a function (done, total) or None, got {progress!r}")


def _steps(steps: int | None, default: int, most: int, what: str) -> int:
    """The step count asked for (None: the default), a whole number from 1 to ``most``."""
    if steps is None:
        return default
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= most:
        raise StudioError(f"{what} takes 1 to {most} steps, not {steps!r}")
    return steps


def open_image(path: str | os.PathLike) -> Image.Image:
    """An RGB picture from a file, refusing what is not an image, is absurdly large or claims to be."""
    return formats.read_image(check_path(path, "path"))[0]


def describe_value(value: StoredObject) -> str:
    if isinstance(value, Generation):
        return f"generation of {value.model}: " + ", ".join(f"{r} {s}" for r, s in value.spaces.items())
    return f"{value.kind} in {value.space}"

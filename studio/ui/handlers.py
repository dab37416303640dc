"""The studio's handlers: plain values in, plain values out, each a thin call into the Session facade.

``Studio`` wraps one Session for a server shared by many users. The pipelines are not
thread-safe and the library's SQLite connection is shared, so every model call holds that
model's lock and every library call holds the library lock; locks are always taken in the
order model(s) -> library, so two requests never wait on each other in a circle.

Every public method turns a ``StudioError`` into ``gr.Error`` with the same message, so bad
input shows as one line in the UI (or in a gradio_client exception), never as a traceback.
Outputs are files under ``<STUDIO_HOME>/outputs`` and ``<STUDIO_HOME>/thumbs``: the only
folders the server lets a browser read.
"""

from __future__ import annotations

import contextvars
import functools
import html
import math
import os
import re
import shutil
import sys
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image, ImageDraw

from studio.errors import ExpressionError, StudioError
from studio.interpolation import MAX_FRAMES
from studio.objects import Generation
from studio.session import Session, Stored
from studio.store import check_tag, numbered_names
from studio.vectorlab import parse_attribute

TINY_STEPS = 4  # the tiny test models render noise at any step count; keep them fast
MAX_UI_COUNT = 16  # generations per click
MAX_SWEEP = 16
LIBRARY_PAGE = 60  # objects in a page of the Library tab (newest first)
BY_SEED = "chosen by the seed"  # the class picker's first entry: no class asked for
CHOICES_LIMIT = 500  # objects offered in pickers
DEFINITIONS = Path(__file__).resolve().parents[2] / "prompts" / "vectors"  # prompt-pair vector definitions
MAX_PROMPTS = 2000  # prompts per text-space discovery
SAFE_FILENAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,79}$")


# ---- error and progress plumbing ----------------------------------------------------------------


def shows_errors(fn: Callable) -> Callable:
    """StudioError -> gr.Error with its message; anything unexpected -> one line, traceback to the server log."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except StudioError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        except Exception as exc:  # a bug, not bad input: keep the UI readable, keep the details for the log
            traceback.print_exc(file=sys.stderr)
            raise gr.Error(f"internal error ({type(exc).__name__}: {exc}); see the server log",
                           print_exception=False) from None

    return wrapper


_MODEL_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="studio-models")


def on_model_thread(fn: Callable) -> Callable:
    """Run a handler that uses a model on the one thread that does all model work.

    torch's OpenMP pools belong to the threads that start them; with work on several threads,
    libgomp counts more pool threads than cores and stops its idle threads from spinning, and a
    render ran 1.9x slower on a gradio worker thread than on the thread that did all the work
    before (0.63 s against 1.71 s for 4 emoji-diffusion pictures). One thread keeps one pool.
    The request's context (gradio's progress) goes along.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if threading.current_thread().name.startswith("studio-models"):  # already there (a nested call)
            return fn(*args, **kwargs)
        return _MODEL_THREAD.submit(contextvars.copy_context().run, fn, *args, **kwargs).result()

    return wrapper


PROGRESS_INTERVAL = 0.2  # seconds between progress updates sent to the page (tqdm's mininterval, in spirit)


def step_callback(progress: Any, desc: str) -> Callable[[int, int], None] | None:
    """A Session progress callback (done, total) feeding a gr.Progress (or any callable with its signature).

    Updates go out at most every PROGRESS_INTERVAL seconds, and always for the first and the last
    step: an update per denoising step costs the server and the page more than the bar is worth.
    """
    if progress is None:
        return None
    last = [-math.inf]

    def report(done: int, total: int) -> None:
        now = time.monotonic()
        if done in (0, 1, total) or now - last[0] >= PROGRESS_INTERVAL:
            last[0] = now
            progress((done, total), desc=desc, unit="steps")

    return report


def whole(value: Any, what: str, low: int | None = None, high: int | None = None) -> int:
    """An integer from a UI number field, or a StudioError naming the field."""
    if value is None or value == "":
        raise StudioError(f"{what} is empty; give a whole number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise StudioError(f"{what} must be a whole number, got {value!r}") from None
    if not math.isfinite(number) or number != int(number):
        raise StudioError(f"{what} must be a whole number, got {value!r}")
    number = int(number)
    if (low is not None and number < low) or (high is not None and number > high):
        raise StudioError(f"{what} must be between {low} and {high}, got {number}")
    return number


def real(value: Any, what: str, low: float | None = None, high: float | None = None) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise StudioError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(number) or (low is not None and number < low) or (high is not None and number > high):
        raise StudioError(f"{what} must be a number between {low} and {high}, got {value!r}")
    return number


def refs_of(value: Any, what: str) -> list[str]:
    """A list of references from a (multi)select value: names, ids or @names."""
    if value is None:
        return []
    items = [value] if isinstance(value, str) else list(value)
    out = []
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise StudioError(f"{what}: every item must be a name or an id")
        out.append(item.strip())
    return out


def md_escape(text: str) -> str:
    """Text shown inside Markdown as written (space names like ``noise[...](4x8x8)`` are not links)."""
    return re.sub(r"([\\`*_\[\]<>#|])", r"\\\1", text)


def text_or_none(value: Any, what: str) -> str | None:
    """A text field's value (None when empty); API clients can send anything, so check."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise StudioError(f"{what} must be text, got {type(value).__name__}")
    return value


def live_check(fn: Callable[..., str]) -> Callable[..., str]:
    """For checks that run on every keystroke: any failure becomes a one-line ✗ message, never a server error."""

    @functools.wraps(fn)
    def wrapper(self, text: Any) -> str:
        if text is not None and not isinstance(text, str):
            return f"✗ expected text, got {type(text).__name__}"
        try:
            return fn(self, text)
        except Exception as exc:  # a bug, not bad input: the detail goes to the server log
            traceback.print_exc(file=sys.stderr)
            return f"✗ internal error ({type(exc).__name__}); see the server log"

    return wrapper


def optional_name(name: Any) -> str | None:
    return name.strip() if isinstance(name, str) and name.strip() else None


def placeholder(kind: str, label: str, side: int = 128) -> Image.Image:
    """A tile for an object that has no picture of its own (a latent or a vector)."""
    im = Image.new("RGB", (side, side), (46, 52, 64) if kind == "vector" else (59, 66, 82))
    draw = ImageDraw.Draw(im)
    draw.text((10, side // 2 - 14), kind, fill=(236, 239, 244))
    draw.text((10, side // 2 + 2), label[:18], fill=(163, 190, 140))
    return im


# ---- the handlers --------------------------------------------------------------------------------


class Studio:
    """One Session behind plain-value, thread-safe handlers shaped for the UI and for API clients."""

    def __init__(self, session: Session, model: str, notice: str | None = None):
        self.session = session
        self.model = model  # the model the UI opens with
        self.notice = notice  # e.g. why the default model was replaced
        home = session.library.home
        self.outputs = home / "outputs"
        self.thumbs = home / "thumbs"
        for folder in (self.outputs, self.thumbs):
            folder.mkdir(parents=True, exist_ok=True)
        self._library = threading.RLock()

    def loading(self, spec: str | None = None) -> bool:
        """Whether a model has yet to load: it loads on first use (the page's first open, or a request)."""
        return not self.session.loaded(self._model(spec))

    # ---- models ----

    def _loaded(self, spec: str, progress: Any = None):
        """The adapter of a model (loaded on first use); call on the model thread (see ``on_model_thread``)."""
        if progress is not None:
            progress(0, desc=f"preparing {spec}")
        return self.session.adapter(spec)

    def _model(self, model: Any) -> str:
        if model is None or (isinstance(model, str) and not model.strip()):
            return self.model
        if not isinstance(model, str):
            raise StudioError(f"model must be a model spec, got {model!r}")
        return model.strip()

    # ---- small shared pieces ----

    def _stored(self, ref: str) -> Stored:
        """A library object by reference, labelled by its first name (or short id)."""
        return self.session.stored(ref)

    @staticmethod
    def _generation(s: Stored) -> Generation:
        if not isinstance(s.obj, Generation):
            raise StudioError(f"{s.label} is a {s.obj.kind}, not a generation; it has no picture to render")
        return s.obj

    def _ref_label(self, s: Stored) -> str:
        """How an expression refers to it: its name, else its full id."""
        return s.name or s.id

    def _summary(self, s: Stored) -> dict[str, Any]:
        obj = s.obj
        out: dict[str, Any] = {"id": s.id, "label": s.label, "kind": obj.kind}
        if isinstance(obj, Generation):
            out.update(model=obj.model, seed=obj.meta.get("seed"), prompt=obj.meta.get("prompt"),
                       settings=obj.settings)
        else:
            out.update(space=str(obj.space), model=obj.meta.get("model"))
        if obj.lineage:
            out["made_by"] = obj.lineage.params.get("expr") or obj.lineage.op
        return {k: v for k, v in out.items() if v is not None}

    @on_model_thread
    def _thumbs(self, items: list[Stored], progress: Any = None) -> list[Path]:
        """Cached PNGs (with their recipe) for stored objects: generations rendered, the rest as tiles.

        Missing renders are made in one batch per model, on the model thread.
        """
        paths = [self.thumbs / f"{s.id}.png" for s in items]
        missing: dict[str, list[int]] = {}
        for i, (s, path) in enumerate(zip(items, paths)):
            if path.is_file():
                continue
            if isinstance(s.obj, Generation):
                missing.setdefault(s.obj.model, []).append(i)
            else:
                tmp = path.with_name(f".{path.name}.{threading.get_ident()}.tmp")
                placeholder(s.obj.kind, s.label).save(tmp, format="PNG")
                tmp.replace(path)
        for model, idx in missing.items():
            self._loaded(model, progress)
            self.session.render_to([items[i] for i in idx], self.thumbs,
                                   step_callback(progress, f"rendering with {model}"),
                                   filenames=[paths[i].name for i in idx])
        return paths

    def _gallery(self, items: list[Stored], progress: Any = None) -> list[tuple[str, str]]:
        return [(str(p), s.label) for s, p in zip(items, self._thumbs(items, progress))]

    def _results(self, items: list[Stored], progress: Any = None) -> list[tuple[str, str]]:
        """Fresh results: PNGs (each carrying its recipe) named and captioned by the item's name or short
        id and its seed, so a download says what it is; links to the cached renders, not copies."""
        folder = self._out_dir("results")
        shown = []
        for s, thumb in zip(items, self._thumbs(items, progress)):
            seed = s.obj.meta.get("seed") if isinstance(s.obj, Generation) else None
            caption = s.label if seed is None else f"{s.label} · seed {seed}"
            path = folder / (s.label if seed is None else f"{s.label}_seed{seed}")
            path = path.with_name(re.sub(r"[^A-Za-z0-9_.-]+", "_", path.name)[:80] + ".png")
            try:
                os.link(thumb, path)
            except OSError:
                shutil.copyfile(thumb, path)
            shown.append((str(path), caption))
        return shown

    def _out_dir(self, kind: str, label: str = "") -> Path:
        stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{time.time_ns() % 1_000_000:06d}"
        folder = self.outputs / kind / (f"{stamp}-{label}" if label else stamp)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def output_path(self, kind: str, filename: str) -> Path:
        """A file under outputs/<kind>/; the filename must be a plain name (no folders, no '..')."""
        if not isinstance(filename, str) or not SAFE_FILENAME.match(filename) or ".." in filename:
            raise StudioError(f"invalid file name {filename!r}: use letters, digits, '_', '.' and '-' only")
        folder = self.outputs / kind
        folder.mkdir(parents=True, exist_ok=True)
        path = (folder / filename).resolve()
        if path.parent != folder.resolve():
            raise StudioError(f"invalid file name {filename!r}")
        return path

    # ---- models and choices ----

    def models(self) -> list[str]:
        specs = [spec for spec, _ in Session.models()]
        return specs if self.model in specs else [self.model, *specs]

    @shows_errors
    @on_model_thread
    def model_info(self, model: str | None, progress: Any = gr.Progress()) -> dict[str, Any]:
        """Load a model (once) and say what it is: family, description, the UI's default settings.

        ``guidance_label`` is what its family calls the guidance setting ("Distilled guidance" for
        Flux.1 dev), or None where the model takes no guidance setting (Flux.1 schnell, GANs).
        """
        spec = self._model(model)
        adapter = self._loaded(spec, progress)
        defaults = dict(adapter.default_settings())
        if spec.startswith("tiny-") and "steps" in defaults:
            defaults["steps"] = TINY_STEPS
        label = adapter.kind.guidance_label if "guidance" in defaults else None  # only diffusion takes guidance
        classes = adapter.class_names() if adapter.family == "gan" else []
        return {"model": spec, "family": adapter.family, "defaults": defaults, "guidance_label": label,
                "classes": classes,
                "description": dict(Session.models()).get(spec, spec), "spaces": sorted(adapter.spaces())}

    def model_preview(self, model: str | None = None) -> dict[str, Any]:
        """What the UI can show of a model before it has loaded: its family, no settings yet (``loading``)."""
        spec = self._model(model)
        family = Session.local_kind(spec)
        return {"model": spec, "family": family or "diffusion", "defaults": {}, "classes": [],
                "guidance_label": "Guidance" if family != "gan" else None, "loading": True,
                "description": dict(Session.models()).get(spec, spec), "spaces": []}

    def title(self, model: str | None = None) -> str:
        spec = self._model(model)
        with self._library:
            count = len(self.session.library)
        state = " · loading…" if self.loading(spec) else ""
        return (f"<div class='ls-title'><span class='ls-logo'>◈ Latent Studio</span>"
                f"<span class='ls-chip' id='model-state'>model <b>{html.escape(spec)}</b>{state}</span>"
                f"<span class='ls-chip'>{count} stored object{'s' if count != 1 else ''}</span>"
                f"<span class='ls-home'>{self.session.library.home}</span></div>")

    def choices(self) -> dict[str, list[tuple[str, str]] | list[str]]:
        """What the pickers offer: generations, everything, vectors (as (label, id)), names, models, tags."""
        with self._library:
            rows = self.session.library.ls(limit=CHOICES_LIMIT)
            tags = sorted({t for r in rows for t in r.tags})

        def label(r) -> str:
            what = r.summary.get("prompt") or r.summary.get("expr") or r.summary.get("method") or r.op or ""
            return f"{r.label} · {r.kind[:3]} · {str(what)[:28]}".rstrip(" ·")

        return {
            "generations": [(label(r), r.id) for r in rows if r.kind == "generation"],
            "objects": [(label(r), r.id) for r in rows],
            "sources": [(label(r), r.id) for r in rows if r.kind in ("generation", "latent")],
            "vectors": [(label(r), r.id) for r in rows if r.kind == "vector"],
            "names": sorted({n for r in rows for n in r.names}),
            "models": sorted({r.model for r in rows if r.model}),
            "tags": tags,
        }

    # ---- Generate ----

    @shows_errors
    @on_model_thread
    def generate(self, model: str | None, prompt: str | None, seed: Any, count: Any = 1, steps: Any = None,
                 guidance: Any = None, truncation: Any = None, tags: str | None = None, gan_class: Any = None,
                 progress: Any = gr.Progress()) -> tuple[list[tuple[str, str]], list[dict[str, Any]], list[str]]:
        """Sample ``count`` generations (seeds seed, seed+1, ...), store each, render them.

        ``gan_class``: a conditional GAN's class, one of its ``class_names`` (empty or BY_SEED: the
        prompt, else the seed, chooses). Returns (gallery of (png, caption), one summary per item,
        the ids: this user's state).
        """
        spec = self._model(model)
        seed = whole(seed, "seed", 0, 2**63 - 1)
        count = whole(count, "count", 1, MAX_UI_COUNT)
        tag_list = [t for t in re.split(r"[,\s]+", tags or "") if t]
        adapter = self._loaded(spec, progress)
        settings: dict[str, Any] = {}
        if adapter.family == "diffusion":
            if steps not in (None, ""):
                settings["steps"] = whole(steps, "steps", 1, 1000)
            # a hidden Guidance slider still sends its value: only a model that takes guidance gets it
            if guidance not in (None, "") and "guidance" in adapter.default_settings():
                settings["guidance"] = real(guidance, "guidance", 0.0, 100.0)
            text = prompt if isinstance(prompt, str) else ""
        else:
            if truncation not in (None, ""):
                settings["truncation"] = real(truncation, "truncation", -2.0, 2.0)
            if gan_class not in (None, "", BY_SEED):
                names = adapter.class_names()
                if gan_class not in names:
                    raise StudioError(f"unknown class {str(gan_class)[:60]!r} for model {spec}; pick one of the list")
                settings.update(adapter.class_of(names.index(gan_class)))
            text = None  # the class picker, not a prompt, chooses a GAN's class here
        with self._library:
            items = self.session.sample(spec, text, seed, count, tags=tag_list, **settings)
        gallery = self._results(items, progress)
        return gallery, [self._summary(s) for s in items], [s.id for s in items]

    @shows_errors
    def name_item(self, ref: str, name: str | None = None, tags: str | None = None) -> dict[str, Any]:
        """Give a stored object a name and/or tags (comma or space separated); returns its summary."""
        if not isinstance(ref, str) or not ref.strip():
            raise StudioError("select a picture first")
        name = optional_name(text_or_none(name, "name"))
        tag_list = [check_tag(t) for t in re.split(r"[,\s]+", text_or_none(tags, "tags") or "") if t]
        if name is None and not tag_list:
            raise StudioError("give a name or a tag to attach")
        with self._library:
            object_id = self.session.library.resolve(ref)
            if name:  # checked before anything is attached: a bad tag or a taken name changes nothing
                self.session.library.check_free(name, object_id)
            if name:
                self.session.library.name(object_id, name)
            for t in tag_list:
                self.session.library.tag(object_id, t)
            rec = self.session.library.record(object_id)
        return {"id": rec.id, "names": list(rec.names), "tags": list(rec.tags)}

    # ---- Library ----

    @shows_errors
    def library_view(self, model: str | None = None, space: str | None = None, tag: str | None = None,
                     text: str | None = None, after: str | None = None, page: Any = 1, progress: Any = gr.Progress()
                     ) -> tuple[list[tuple[str, str]], list[list[str]], list[str], list[str], str, str | None]:
        """One page of the filtered library, newest first, read off the index a page at a time.

        ``after`` is the cursor the page starts after (None: the newest), ``page`` its number (for
        the footer). Returns (gallery of its generations, table rows of its latents and vectors,
        their ids, a footer line, the cursor of the next page or None on the last).
        """
        model, space, tag, text = (text_or_none(v, w) for v, w in ((model, "model"), (space, "space"),
                                                                   (tag, "tag"), (text, "search text")))
        page = whole(page, "page", 1)
        filters = {"tag": tag or None, "model": model or None, "space": space or None,
                   "text": (text or "").strip() or None}
        with self._library:
            rows = self.session.library.ls(limit=LIBRARY_PAGE + 1, after=after or None, **filters)
            more = len(rows) > LIBRARY_PAGE  # one row beyond the page says there is a next one
            rows = rows[:LIBRARY_PAGE]
            total = self.session.library.count(**filters) if more or page > 1 else len(rows)
            gens = [r for r in rows if r.kind == "generation"]
            missing = [Stored(r.id, r.names[0] if r.names else None, self.session.library.get(r.id))
                       for r in gens if not (self.thumbs / f"{r.id}.png").is_file()]
        self._thumbs(missing, progress)  # renders what is not cached yet, in one batch per model
        gallery = [(str(self.thumbs / f"{r.id}.png"), r.label) for r in gens]
        others = [r for r in rows if r.kind != "generation"]
        table = [[r.label, r.kind, ", ".join(r.spaces.values()), r.model or "-",
                  str(r.summary.get("expr") or r.summary.get("method") or r.op or ""), " ".join(r.tags), r.short_id]
                 for r in others]
        first = (page - 1) * LIBRARY_PAGE + 1
        footer = (f"Objects {first:,}–{first + len(rows) - 1:,} of {total:,}, newest first" if rows else
                  "Nothing matches these filters" if any(filters.values()) else "The library is empty")
        return (gallery, table, [r.id for r in gens], [r.id for r in others], footer,
                rows[-1].cursor if more else None)

    @shows_errors
    def details(self, ref: str) -> tuple[dict[str, Any], list[tuple[str, str]], list[str], str | None]:
        """One object's metadata and lineage: (description, parents as thumbnails, parent ids, its picture)."""
        if not isinstance(ref, str) or not ref.strip():
            raise StudioError("select an object first")
        with self._library:
            info = self.session.describe(ref)
            parents = []
            for p in info["lineage"]["parents"]:
                if self.session.library.exists(p["id"]):
                    parents.append(self._stored(p["id"]))
            me = self._stored(info["id"])
        parent_gallery = self._gallery(parents)
        picture = str(self._thumbs([me])[0]) if isinstance(me.obj, Generation) else None
        return info, parent_gallery, [s.id for s in parents], picture

    @shows_errors
    @on_model_thread
    def rerender(self, ref: str, progress: Any = gr.Progress()) -> str:
        """Render a stored generation afresh into outputs/renders/; returns the PNG (it carries the recipe)."""
        with self._library:
            item = self._stored(ref)
        gen = self._generation(item)
        self._loaded(gen.model, progress)
        (path,) = self.session.render_to([item], self._out_dir("renders"),
                                         step_callback(progress, f"rendering with {gen.model}"))
        return str(path)

    @shows_errors
    def export(self, ref: str, fmt: str = "safetensors") -> str:
        """Export to outputs/exports/<label>.safetensors or .latent (ComfyUI, VAE latents); returns the file."""
        if fmt not in ("safetensors", "latent"):
            raise StudioError(f"unknown export format {fmt!r}: use safetensors or latent")
        with self._library:
            item = self._stored(ref)
            path = self.output_path("exports", f"{item.label}.{fmt}")
            return str(self.session.export(item.id, path))

    @shows_errors
    def delete(self, ref: str) -> str:
        """Remove an object (and its cached thumbnail); objects made from it keep their lineage ids."""
        with self._library:
            object_id = self.session.library.remove(self.session.library.resolve(ref))
        (self.thumbs / f"{object_id}.png").unlink(missing_ok=True)
        return object_id

    @shows_errors
    @on_model_thread  # a .latent names a model, which may load here
    def import_upload(self, path: str | None, name: str | None = None, model: str | None = None
                      ) -> tuple[list[dict[str, Any]], dict[str, Any] | None, str | None]:
        """Import a studio PNG (its recipe comes back), a .safetensors or a ComfyUI .latent (needs a model).

        Returns (summaries of what was stored, the PNG's recipe, a picture of the first generation).
        """
        if not path:
            raise StudioError("upload a file first")
        from studio import formats

        path = Path(path)
        recipe = formats.read_png(path)[1] if path.suffix.lower() == ".png" else None
        spec = self._model(model) if path.suffix == ".latent" else None
        with self._library:
            items = self.session.import_file(path, optional_name(name), spec)
        gens = [s for s in items if isinstance(s.obj, Generation)]
        picture = str(self._thumbs(gens[:1])[0]) if gens else None
        return [self._summary(s) for s in items], recipe, picture

    @shows_errors
    @on_model_thread
    def encode_upload(self, path: str | None, model: str | None = None, name: str | None = None,
                      progress: Any = gr.Progress()) -> dict[str, Any]:
        """Encode an uploaded picture into the model's VAE space (where the model has one) and store it."""
        if not path:
            raise StudioError("upload a picture first")
        spec = self._model(model)
        self._loaded(spec, progress)
        with self._library:
            stored = self.session.encode_image(path, spec, optional_name(name))
        return self._summary(stored)

    @shows_errors
    @on_model_thread
    def invert_upload(self, path: str | None, model: str | None = None, prompt: str | None = "",
                      steps: Any = None, name: str | None = None, progress: Any = gr.Progress()
                      ) -> tuple[dict[str, Any], str, str]:
        """Invert an uploaded picture into a stored generation (DDIM inversion, or GAN projection into w),
        so vectors can edit it; returns (its summary, the re-rendered picture, a PSNR line)."""
        if not path:
            raise StudioError("upload a picture first")
        steps = None if steps in (None, "", 0) else whole(steps, "steps", 1, 10_000)
        spec = self._model(model)
        self._loaded(spec, progress)
        if progress is not None:
            progress(0, desc=f"inverting with {spec}")
        with self._library:
            stored = self.session.invert(path, spec, str(prompt or ""), steps, optional_name(name))
        (picture,) = self.session.render_to([stored], self._out_dir("inversions"),
                                            step_callback(progress, "re-rendering"))
        score = self.session.reconstruction_psnr(path, picture)
        line = (f"Stored **{stored.label}**: it re-renders the picture at {score:.2f} dB PSNR. "
                f"Apply a vector to it in the Attributes tab.")
        return self._summary(stored), str(picture), line

    # ---- Interpolate ----

    @shows_errors
    @on_model_thread
    def interpolate(self, keyframes: Any, frames: Any = 12, method: str = "slerp", easing: str = "ease-in-out",
                    fps: Any = 8, progress: Any = gr.Progress()
                    ) -> tuple[list[tuple[str, str]], str, str, list[dict[str, Any]]]:
        """Frames between two or more keyframes, evaluated as ``slerp(@a, @b, t)`` and rendered in one batch.

        Returns (the strip, a GIF, an MP4, one {expr, t} per frame: the state for storing a frame).
        """
        refs = refs_of(keyframes, "keyframes")
        frames = whole(frames, "frames", 2, MAX_FRAMES)
        fps = real(fps, "fps", 1, 60)
        with self._library:
            keys = [self._stored(r) for r in refs]
        models = {k.obj.model for k in keys if isinstance(k.obj, Generation)}
        for m in models:
            self._loaded(m, progress)
        out = self._out_dir("interpolations", "-".join(k.label for k in keys[:3]))
        with self._library:
            made = self.session.render_interpolation(refs, out, frames, method, easing, fps,
                                                     progress=step_callback(progress, "rendering frames"))
        paths, plan, gif, mp4 = made["frames"], made["plan"], made["gif"], made["mp4"]
        strip = [(str(p), f"{i}: t={plan[i]['t']:.2f}") for i, p in enumerate(paths)]
        return strip, str(gif), str(mp4), plan

    @shows_errors
    def store_frame(self, plan: list[dict[str, Any]] | None, index: Any, name: str | None = None
                    ) -> dict[str, Any]:
        """Store one frame of the last interpolation (by index), optionally named."""
        if not plan:
            raise StudioError("interpolate first, then pick a frame to store")
        index = whole(index, "frame", 0, len(plan) - 1)
        with self._library:
            stored = self.session.evaluate(plan[index]["expr"], name=optional_name(name),
                                           bindings={"t": plan[index]["t"]})
        return self._summary(stored)

    # ---- Attributes ----

    def _vectors(self):
        lab = getattr(self.session, "vectors", None)
        if lab is None:
            raise StudioError("this build of the studio has no vector workbench (studio.vectorlab)")
        return lab

    @shows_errors
    def roles_of(self, refs: Any) -> list[str]:
        """The roles a vector can be built in from these items (their generations' roles, or 'latent')."""
        with self._library:
            objs = [self.session.library.get(r) for r in refs_of(refs, "items")]
        roles: list[str] = []
        for o in objs:
            for role in (o.roles if isinstance(o, Generation) else ["latent"]):
                if role not in roles:
                    roles.append(role)
        return roles

    @shows_errors
    @on_model_thread
    def build_vector(self, set_a: Any, set_b: Any, role: str | None = None, name: str | None = None,
                     method: str = "mean", attribute: str | None = None, progress: Any = gr.Progress()
                     ) -> dict[str, Any]:
        """A vector from set A to set B: mean(B) - mean(A) (or a linear boundary) in one role; stored.

        ``attribute`` (NAME:FROM:TO, e.g. style:noto:twemoji) says what it edits, for scoring.
        """
        a, b = refs_of(set_a, "set A"), refs_of(set_b, "set B")
        role = None if role in (None, "", "default", "latent") else role
        what = parse_attribute(attribute)
        with self._library:
            stored = self._vectors().from_sets(a, b, method=method, role=role, name=optional_name(name),
                                               attribute=what)
        return self._summary(stored)

    @staticmethod
    def definitions() -> list[str]:
        """The prompt-pair definitions shipped in prompts/vectors/ (file stems)."""
        return sorted(p.stem for p in DEFINITIONS.glob("*.yaml")) if DEFINITIONS.is_dir() else []

    @shows_errors
    def definition_fields(self, definition: str | None) -> tuple[str, str, str, str, str]:
        """A shipped definition as the form's fields: from, to, templates (one per line), attribute, name."""
        from studio.vectorlab import load_definition

        if not isinstance(definition, str) or definition not in self.definitions():
            raise StudioError(f"unknown definition {definition!r}; choose one of: {', '.join(self.definitions())}")
        spec = load_definition(DEFINITIONS / f"{definition}.yaml")
        a = spec.get("attribute") or {}
        attribute = f"{a['name']}:{a['from']}:{a['to']}" if a else ""
        return spec["from"], spec["to"], "\n".join(spec["templates"]), attribute, str(spec.get("name") or definition)

    @shows_errors
    @on_model_thread
    def prompt_vector(self, model: str | None, from_phrase: str | None, to_phrase: str | None,
                      templates: str | None, attribute: str | None = None, name: str | None = None,
                      progress: Any = gr.Progress()) -> dict[str, Any]:
        """A text-space vector: the mean embedding difference of the templates filled with the two phrases."""
        lines = [t.strip() for t in str(templates or "").splitlines() if t.strip()]
        definition: dict[str, Any] = {"from": from_phrase or "", "to": to_phrase or "", "templates": lines}
        if (what := parse_attribute(attribute)) is not None:
            definition["attribute"] = what
        spec = self._model(model)
        self._loaded(spec, progress)
        with self._library:
            stored = self._vectors().from_prompts(definition, spec, optional_name(name))
        return self._summary(stored)

    @shows_errors
    @on_model_thread
    def discover_vectors(self, model: str | None, space: str = "w", k: Any = 6, prefix: str | None = None,
                         prompts: str | None = None, progress: Any = gr.Progress()) -> list[list[Any]]:
        """Principal directions (GANSpace) of sampled w, or of the embeddings of ``prompts`` (one per line;
        empty: the emoji prompts of prompts/emoji_prompts.txt); stored (as PREFIX0, PREFIX1, ... when a
        prefix is given); one row per direction."""
        k = whole(k, "k", 1, 64)
        lines = [t.strip() for t in str(prompts or "").splitlines() if t.strip()]
        if space == "text" and not lines:
            from studio.scoring import emoji_prompts

            lines = emoji_prompts()
        if len(lines) > MAX_PROMPTS:
            raise StudioError(f"{len(lines)} prompts; at most {MAX_PROMPTS}")
        spec = self._model(model)
        self._loaded(spec, progress)
        with self._library:
            rows = self._vectors().discover(spec, space, k, prefix=optional_name(prefix),
                                            prompts=lines or None)
        return [[s.label, s.id, round(100 * ratio, 2)] for s, ratio in rows]

    @shows_errors
    def condition_vector(self, vector: str | None, others: Any, name: str | None = None) -> dict[str, Any]:
        """VECTOR without its components along ``others`` (InterFaceGAN's conditional manipulation); stored."""
        if not isinstance(vector, str) or not vector.strip():
            raise StudioError("pick the vector to condition")
        on = refs_of(others, "directions to remove")
        if not on:
            raise StudioError("pick at least one direction to remove")
        with self._library:
            stored = self._vectors().condition(vector.strip(), on, optional_name(name))
            out = self._summary(stored)
            out["cosine_before"] = stored.obj.meta.get("cosine_before")
        return out

    @staticmethod
    def can_score() -> bool:
        """Whether vectors can be scored here: the scoring module, the emoji-judge's weights, matplotlib."""
        import importlib.util

        if not importlib.util.find_spec("studio.scoring") or not importlib.util.find_spec("matplotlib"):
            return False
        from pipelines.registry import (
            EMBEDDED,  # not the judge itself: that would import torch to draw the page
        )

        return (EMBEDDED / "emoji-judge" / "model.safetensors").is_file()

    @shows_errors
    @on_model_thread
    def score_vector(self, vector: str, strengths: str = "0, 0.5, 1, 1.5, 2", samples: Any = 12, seed: Any = 1000,
                     sdedit: Any = 0, truncation: Any = None,
                     progress: Any = gr.Progress()) -> tuple[str, str, list[list[Any]]]:
        """Judge a vector's edits over a strength sweep: (the score plot, an example strip, one row per strength).

        ``sdedit`` (diffusion, 0 = off): render the edits from the source pictures noised to this
        strength; ``truncation`` (GAN, empty = the model's own): psi of the sources and edits."""
        from studio import scoring

        if not isinstance(vector, str) or not vector.strip():
            raise StudioError("pick a vector to score")
        try:
            values = [float(x) for x in str(strengths).replace(";", ",").split(",") if x.strip()]
        except ValueError:
            raise StudioError(f"strengths must be comma-separated numbers, got {strengths!r}") from None
        if not values or len(values) > MAX_SWEEP or not all(math.isfinite(v) for v in values):
            raise StudioError(f"give 1 to {MAX_SWEEP} finite strengths, e.g. 0, 1, 2")
        samples = whole(samples, "samples", 1, 256)
        seed = whole(seed, "seed", 0, 2**63 - 1)
        sdedit = real(sdedit or 0, "SDEdit strength", 0.0, 1.0) or None
        psi = "" if truncation is None else str(truncation).strip()
        settings = {"truncation": real(psi, "truncation", -2.0, 2.0)} if psi else None
        with self._library:
            result = scoring.score_vector(self.session, vector, values, samples, seed, None,
                                          self._out_dir("scores"), step_callback(progress, "rendering the sweep"),
                                          sdedit, settings)
        rows = [[r["strength"], round(r["flip_rate"], 3), round(r["preservation"], 3), round(r["pixel_change"], 4),
                 r["n"]] for r in result["rows"]]
        return result["plot"], result["strip"], rows

    @shows_errors
    @on_model_thread
    def apply_vector(self, vector: str, targets: Any, strength: Any = 1.0, sweep_from: Any = -1.0,
                     sweep_to: Any = 1.0, sweep_count: Any = 5, mode: str = "latent", name: str | None = None,
                     progress: Any = gr.Progress()
                     ) -> tuple[list[tuple[str, str]], list[tuple[str, str]], list[dict[str, Any]]]:
        """target + strength * vector for each target (stored, named NAME or NAME-1...), and a sweep strip.

        The sweep applies strengths evenly from ``sweep_from`` to ``sweep_to`` to the first target
        (stored unnamed, with lineage). Every picture is rendered in one batch.
        """
        if not isinstance(vector, str) or not vector.strip():
            raise StudioError("pick a vector")
        goals = refs_of(targets, "targets")
        if not goals:
            raise StudioError("pick at least one target to apply the vector to")
        strength = real(strength, "strength", -100, 100)
        n = whole(sweep_count, "sweep points", 0, MAX_SWEEP)
        lo, hi = real(sweep_from, "sweep start", -100, 100), real(sweep_to, "sweep end", -100, 100)
        sweep = [lo + (hi - lo) * i / (n - 1) for i in range(n)] if n > 1 else ([lo] if n == 1 else [])
        name = optional_name(name)
        lab = self._vectors()
        names = numbered_names(name, len(goals))
        with self._library:
            for n in names:  # every result name free before the first target is edited
                if n is not None:
                    self.session.library.check_free(n)
            applied = []
            for t, n in zip(goals, names, strict=True):
                applied += lab.apply(t, vector, [strength], mode=mode, name=n)
            swept = lab.apply(goals[0], vector, sweep, mode=mode) if sweep else []
        everything = applied + swept
        out = self._out_dir("attributes")
        paths = self.session.render_to(everything, out, step_callback(progress, "rendering"),
                                       filenames=[f"{i:03d}.png" for i in range(len(everything))])
        results = [(str(p), s.label) for s, p in zip(applied, paths)]
        strip = [(str(p), f"s={v:+.2f}") for v, p in zip(sweep, paths[len(applied):])]
        return results, strip, [self._summary(s) for s in applied]

    # ---- Recipe ----

    @live_check
    def check_expression(self, source: str | None) -> str:
        """Live validation, as Markdown: what the expression gives, or the core's message with a caret."""
        if not source or not source.strip():
            return "Type an expression, e.g. `slerp(@a, @b, 0.5)` or `@scene + 0.8 * @day_to_night`."
        try:
            with self._library:
                what = self.session.check_expression(source)
        except ExpressionError as exc:
            pointer = exc.pointer()
            return f"✗ {md_escape(str(exc))}" + (f"\n```\n{pointer}\n```" if pointer else "")
        except StudioError as exc:
            return f"✗ {md_escape(str(exc))}"
        return f"✓ {md_escape(what)}"

    @shows_errors
    @on_model_thread
    def render_expression(self, source: str | None, name: str | None = None, progress: Any = gr.Progress()
                          ) -> tuple[str | None, dict[str, Any]]:
        """Evaluate an expression, store the result (named if asked), render it if it is a generation."""
        source = text_or_none(source, "the expression")
        if not source or not source.strip():
            raise StudioError("type an expression first")
        with self._library:
            stored = self.session.evaluate(source.strip(), name=optional_name(name))
        if not isinstance(stored.obj, Generation):
            return None, {**self._summary(stored), "note": "stored; a lone latent or vector has no picture"}
        self._loaded(stored.obj.model, progress)
        (path,) = self._thumbs([stored], progress)
        return str(path), self._summary(stored)

    @shows_errors
    def load_recipe(self, path: str | None) -> tuple[str, str]:
        """The text of an uploaded recipe file and what checking it found (it loads even when invalid, to fix)."""
        from studio.recipe import MAX_RECIPE_BYTES

        if not path:
            raise StudioError("upload a recipe file first")
        path = Path(text_or_none(path, "the recipe file") or "")
        if not path.is_file():
            raise StudioError(f"no recipe file at {path.name or path}")
        if path.stat().st_size > MAX_RECIPE_BYTES:
            raise StudioError(f"{path.name} is larger than {MAX_RECIPE_BYTES // 1024} KiB; not a recipe")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise StudioError(f"{path.name} is not a text file") from None
        return text, self.check_recipe(text)

    @live_check
    def check_recipe(self, text: str | None) -> str:
        """Markdown: whether the recipe text parses, and what it will do."""
        from studio.recipe import Recipe

        try:
            r = Recipe.parse(text or "", "recipe")
        except StudioError as exc:
            return f"✗ {md_escape(str(exc))}"
        points = sum(len(x.points()) for x in r.renders)
        return (f"✓ {len(r.inputs)} input(s), {len(r.let)} let(s), {len(r.renders)} render(s), "
                f"{points} picture(s)" + (f", model {r.model}" if r.model else ""))

    @shows_errors
    def save_recipe(self, text: str | None, filename: str | None = "recipe.yaml") -> str:
        """Check a recipe and write it to outputs/recipes/<filename> for download."""
        from studio.recipe import Recipe

        filename = (filename or "recipe.yaml").strip()
        if not filename.endswith((".yaml", ".yml")):
            filename += ".yaml"
        Recipe.parse(text or "", filename)
        path = self.output_path("recipes", filename)
        path.write_text(text or "", encoding="utf-8")
        return str(path)

    @shows_errors
    @on_model_thread
    def run_recipe(self, text: str | None, progress: Any = gr.Progress()
                   ) -> tuple[list[tuple[str, str]], dict[str, Any]]:
        """Run a recipe (YAML text): sample its inputs, evaluate, render every sweep point in batches."""
        from studio.recipe import Recipe, run
        from studio.session import DEFAULT_MODEL

        recipe = Recipe.parse(text or "", "recipe")
        with self._library:
            models = {spec.get("model") or recipe.model or DEFAULT_MODEL
                      for spec in recipe.inputs.values() if "ref" not in spec}
            models |= {self.session.library.record(spec["ref"]).model
                       for spec in recipe.inputs.values() if "ref" in spec} - {None}
        out = self._out_dir("recipes")
        for m in models:
            self._loaded(m, progress)
        with self._library:
            result = run(self.session, recipe, out, step_callback(progress, "rendering"))
        points = [(name, p) for name, pts in result.renders.items() for p, _ in pts]
        gallery = [(str(path), " ".join(f"{k}={v:g}" for k, v in p.items()) or name)
                   for path, (name, p) in zip(result.files, points)]
        info = {"folder": str(out), "images": len(result.files),
                "inputs": {k: s.id for k, s in result.inputs.items()},
                "lets": {k: s.id for k, s in result.lets.items()},
                "renders": {k: [s.id for _, s in pts] for k, pts in result.renders.items()}}
        return gallery, info

    def last_results(self, ids: list[str] | None) -> list[str]:
        """This session's last generated ids (per-user state), for scripts that check isolation."""
        return list(ids or [])



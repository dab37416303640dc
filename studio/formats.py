"""File formats: the self-describing safetensors file of every stored object, ComfyUI ``.latent``
files, and PNGs that carry their generation.

Nothing here unpickles: tensors are read with safetensors, headers with ``json``.
"""

from __future__ import annotations

import base64
import json
import os
import re
import struct
import warnings
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

from studio.errors import StudioError, printable
from studio.lazy import torch
from studio.objects import Generation, Latent, Lineage, StoredObject, Vector, check_finite
from studio.space import Space

FORMAT = "latent-studio"
VERSION = 1
MAX_HEADER = 16 * 1024 * 1024  # a safetensors header larger than this is not one of ours
MAX_HEADER_DEPTH = 32  # JSON nesting: ours is about 6 deep; json and later readers recurse once per level
MAX_INT_DIGITS = 20  # a header integer (seed, offset, shape) fits 64 bits; longer ones are not ours
OBJECT_ID = re.compile(r"[0-9a-f]{64}")  # a sha256 content id, as a lineage names its parents
MAX_IMAGE_PIXELS = 4096 * 4096  # a picture read (import, encode, invert) is at most a 4096 px render
PNG_KEY = "latent-studio"  # text chunk with the readable recipe
PNG_DATA_KEY = "latent-studio-generation"  # compressed chunk with the generation's file, base64

COMFY_KEY = "latent_tensor"
COMFY_MARKER = "latent_format_version_0"


def _tensor_header(x: Latent | Vector) -> dict[str, Any]:
    return {"space": x.space.to_json(), "meta": x.meta,
            "lineage": x.lineage.to_json() if x.lineage else None}


def to_bytes(obj: StoredObject, created: float | None = None) -> bytes:
    """Serialize an object to one safetensors file whose metadata describes it completely."""
    header: dict[str, Any] = {"format": FORMAT, "version": VERSION, "kind": obj.kind, "id": obj.id,
                              "created": created, "meta": obj.meta,
                              "lineage": obj.lineage.to_json() if obj.lineage else None}
    if isinstance(obj, Generation):
        tensors = {f"role.{r}": lat.tensor for r, lat in obj.roles.items()}
        header.update(model=obj.model, settings=obj.settings,
                      roles={r: _tensor_header(lat) for r, lat in obj.roles.items()})
    else:
        tensors = {"tensor": obj.tensor}
        header["space"] = obj.space.to_json()
        if isinstance(obj, Vector):
            header["method"] = obj.method
    metadata = {FORMAT: json.dumps(header, sort_keys=True)}
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata)


def _small_int(digits: str) -> int:
    """json's reader of integers, refusing the long ones no header of ours holds."""
    if len(digits.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(digits)} digits")
    return int(digits)


def _too_deep(value: Any) -> bool:
    """Whether JSON data nests more than MAX_HEADER_DEPTH levels (walked without recursion)."""
    todo = [(value, 1)]
    while todo:
        v, depth = todo.pop()
        if isinstance(v, (dict, list)):
            if depth > MAX_HEADER_DEPTH:
                return True
            todo.extend((c, depth + 1) for c in (v.values() if isinstance(v, dict) else v))
    return False


def _json(text: str | bytes) -> Any:
    """JSON from a file header: ValueError for text that is not JSON or UTF-8, nests absurdly deep or
    holds integers of more than MAX_INT_DIGITS digits (Python's json would recurse, or build them, without
    a bound)."""
    try:
        value = json.loads(text, parse_int=_small_int)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    if _too_deep(value):
        raise ValueError(f"nested more than {MAX_HEADER_DEPTH} levels deep")
    return value


def read_header(data: bytes, what: str = "file") -> dict[str, str]:
    """The ``__metadata__`` of a safetensors blob, checking its framing first."""
    what = printable(what)
    if len(data) < 8:
        raise StudioError(f"{what} is not a safetensors file (only {len(data)} bytes)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > MAX_HEADER or 8 + n > len(data):
        raise StudioError(f"{what} is not a safetensors file, or it is truncated (header of {n} bytes)")
    try:
        header = _json(data[8 : 8 + n])
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors too
        raise StudioError(f"{what} is not a safetensors file (unreadable header: {printable(exc, 80)})") from None
    if not isinstance(header, dict):
        raise StudioError(f"{what} is not a safetensors file (unreadable header)")
    meta = header.get("__metadata__") or {}
    return meta if isinstance(meta, dict) else {}  # safetensors itself refuses any other kind on load


def load_tensors(data: bytes, what: str = "file") -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load

        return load(data)
    except Exception as exc:  # safetensors raises its own error types for every kind of damage
        raise StudioError(f"{printable(what)} is damaged or truncated: {printable(exc, 200)}") from None


def studio_header(data: bytes, what: str = "file") -> dict[str, Any]:
    """The Latent Studio header of a file written by ``to_bytes`` (its first bytes are enough), checked."""
    what = printable(what)
    meta = read_header(data, what)
    if FORMAT not in meta:
        raise StudioError(f"{what} is a safetensors file but not one written by Latent Studio")
    if not isinstance(meta[FORMAT], str):
        raise StudioError(f"{what} has an unreadable Latent Studio header")
    try:
        header = _json(meta[FORMAT])
    except ValueError as exc:
        raise StudioError(f"{what} has an unreadable Latent Studio header ({printable(exc, 80)})") from None
    if (not isinstance(header, dict) or header.get("format") != FORMAT
            or not isinstance(header.get("version"), int)):
        raise StudioError(f"{what} has an unreadable Latent Studio header")
    if header["version"] > VERSION:
        raise StudioError(f"{what} was written by a newer Latent Studio (format {header['version']})")
    return header


def from_bytes(data: bytes, what: str = "file") -> tuple[StoredObject, dict[str, Any]]:
    """Read an object written by ``to_bytes``; returns (object, header). Every check fails cleanly."""
    what = printable(what)
    header = studio_header(data, what)
    tensors = load_tensors(data, what)
    try:
        stated_id = _field(header, "id", str, None)
        obj = _build(header, tensors)
    except StudioError as exc:
        raise StudioError(f"{what}: {exc}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:  # a field missing, or of a wrong JSON type
        raise StudioError(f"{what} has a malformed Latent Studio header ({printable(repr(exc), 200)})") from None
    if stated_id and stated_id != obj.id:
        raise StudioError(f"{what} is corrupt: its content does not match its id {printable(stated_id[:12])}")
    return obj, header


def _malformed(key: str, wanted: str, value: Any) -> StudioError:
    return StudioError(f"malformed Latent Studio header: {key!r} should be {wanted}, not {type(value).__name__}")


def _field(header: dict, key: str, kind: type, default: Any, name: str | None = None) -> Any:
    """A header field of the JSON type the reader needs (``default`` when absent); anything else is damage.
    ``name``: how the message names the field (default ``key``; e.g. ``roles.z.meta`` for a nested one)."""
    value = header.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, kind):
        wanted = {dict: "a mapping", str: "a string", int: "a whole number"}[kind]
        raise _malformed(name or key, wanted, value)
    return value


def _meta(header: dict, where: str = "") -> dict[str, Any]:
    """An object's metadata; the seed and prompt, which the index lists and searches, of their own types."""
    meta = _field(header, "meta", dict, {}, f"{where}meta")
    for key, kind in (("seed", int), ("prompt", str)):
        _field(meta, key, kind, None, f"{where}meta.{key}")
    return meta


def _lineage(header: dict, where: str = "") -> Lineage | None:
    """An object's lineage (op, params, parent ids), each of the JSON type the index stores it as."""
    data = _field(header, "lineage", dict, None, f"{where}lineage")
    if not data:
        return None
    where = f"{where}lineage."
    op = data.get("op")
    if not isinstance(op, str):
        raise _malformed(f"{where}op", "a string", op)
    params = _field(data, "params", dict, {}, f"{where}params")
    _field(params, "expr", str, None, f"{where}params.expr")  # the index searches it as text
    parents = data.get("parents") or []
    if not isinstance(parents, list):
        raise _malformed(f"{where}parents", "a list of object ids", parents)
    for p in parents:
        if not isinstance(p, str) or not OBJECT_ID.fullmatch(p):
            raise StudioError(f"malformed Latent Studio header: {where + 'parents'!r} should be a list of object "
                              f"ids (64 hex digits), not one holding {printable(repr(p), 40)}")
    return Lineage(op, dict(params), tuple(parents))


def _build(header: dict, tensors: dict[str, torch.Tensor]) -> StoredObject:
    kind = _field(header, "kind", str, None)
    lineage = _lineage(header)
    meta = _meta(header)
    if kind == "generation":
        roles = {}
        for role, h in _field(header, "roles", dict, {}).items():
            if not isinstance(h, dict):
                raise StudioError(f"malformed Latent Studio header: role {printable(repr(role), 40)} is not described")
            t = tensors[f"role.{role}"]
            roles[role] = Latent(t, Space.from_json(h["space"]), _meta(h, f"roles.{role}."),
                                 _lineage(h, f"roles.{role}."))
        model = header["model"]
        if not isinstance(model, str):
            raise StudioError(f"malformed Latent Studio header: 'model' should be a string, "
                              f"not {type(model).__name__}")
        return Generation(roles, model, _field(header, "settings", dict, {}), meta, lineage)
    space = Space.from_json(header["space"])
    if kind == "latent":
        return Latent(tensors["tensor"], space, meta, lineage)
    if kind == "vector":
        return Vector(tensors["tensor"], space, _field(header, "method", str, "unknown"), meta, lineage)
    raise StudioError(f"unknown object kind {printable(repr(kind), 40)}")


def read_file_header(path: Path) -> dict[str, Any]:
    """A stored object's header, read without its tensors (only the file's first bytes)."""
    try:
        with open(path, "rb") as f:
            start = f.read(8)
            size = struct.unpack("<Q", start)[0] if len(start) == 8 else 0
            data = start + f.read(min(size, MAX_HEADER))
    except OSError as exc:
        raise StudioError(f"cannot read {path}: {exc.strerror}") from None
    return studio_header(data, str(path))


def read_file(path: Path | str) -> tuple[StoredObject, dict[str, Any]]:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise StudioError(f"cannot read {path}: {exc.strerror}") from None
    return from_bytes(data, str(path))


# ---- ComfyUI interop ------------------------------------------------------------------------------


def to_comfy(latent: Latent) -> bytes:
    """A ComfyUI ``.latent`` file: ``latent_tensor`` [1, C, h, w] (unscaled VAE latent) + the v0 marker."""
    if latent.space.kind != "vae":
        raise StudioError(f"only VAE-space latents export to ComfyUI .latent files; this one is in {latent.space}")
    if latent.meta.get("scale", "unscaled") != "unscaled":
        raise StudioError("this VAE latent has scaling applied; ComfyUI .latent files hold unscaled latents")
    from safetensors.torch import save

    return save({COMFY_KEY: latent.tensor.unsqueeze(0).contiguous(), COMFY_MARKER: torch.tensor([])})


def from_comfy(data: bytes, what: str = "file") -> list[torch.Tensor]:
    """Tensors [C, h, w] from a ComfyUI ``.latent`` file (one per batch item), unscaled; the caller assigns the space."""
    read_header(data, what)
    tensors = load_tensors(data, what)
    if COMFY_KEY not in tensors:
        raise StudioError(f"{what} is not a ComfyUI latent file (no '{COMFY_KEY}' tensor)")
    t = tensors[COMFY_KEY]
    if t.ndim != 4:
        raise StudioError(f"{what}: expected a [batch, channels, height, width] latent, got shape {tuple(t.shape)}")
    if 0 in t.shape:  # a batch of none, or latents with no cells: nothing that could be rendered
        raise StudioError(f"{what} holds no latent values (shape {tuple(t.shape)}); nothing to import")
    if COMFY_MARKER not in tensors:
        # Files from before the marker store scaled latents; ComfyUI divides by SD1's 0.18215.
        # Guessing that multiplier is exactly what we refuse to do.
        raise StudioError(f"{what} is an old-format ComfyUI latent (no '{COMFY_MARKER}' marker) whose scale "
                          "is unknown; re-save it with a current ComfyUI")
    t = t.float()
    check_finite(t, what)
    return list(t.unbind(0))


# ---- PNGs that carry their generation ---------------------------------------------------------------


def save_png(image: Image.Image, path: Path, generation: Generation, recipe: dict[str, Any]) -> Path:
    """Write a PNG whose text chunks carry the readable recipe and the generation itself."""
    info = PngImagePlugin.PngInfo()
    info.add_text(PNG_KEY, json.dumps(recipe, sort_keys=True))
    info.add_text(PNG_DATA_KEY, base64.b64encode(to_bytes(generation)).decode("ascii"), zip=True)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        image.save(tmp, format="PNG", pnginfo=info)
        tmp.replace(path)
    except OSError as exc:  # an unwritable or vanished folder: say where, not a traceback
        tmp.unlink(missing_ok=True)
        raise StudioError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


def read_image(path: str | os.PathLike, what: str = "image") -> tuple[Image.Image, dict[str, str]]:
    """An RGB picture from a file and its text chunks (a PNG's metadata), refusing what is not a
    picture, is larger than MAX_IMAGE_PIXELS or only claims to be in its header (a decompression bomb),
    and metadata beyond Pillow's limits. Every failure is one StudioError line; Pillow's warnings are
    turned into that error, never printed."""
    shown = printable(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.width * im.height > MAX_IMAGE_PIXELS:
                    raise StudioError(f"{shown} is {im.width}x{im.height} pixels; the limit is "
                                      f"{MAX_IMAGE_PIXELS} pixels")
                im.load()
                text = dict(getattr(im, "text", {}) or {})
                return im.convert("RGB"), text
    except FileNotFoundError:
        raise StudioError(f"no such file: {shown}") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        # raised while the header is read, before its size can be asked; it claims more than Pillow's own limit
        raise StudioError(f"{shown} claims more than {Image.MAX_IMAGE_PIXELS} pixels; the limit is "
                          f"{MAX_IMAGE_PIXELS} pixels") from None
    except ValueError as exc:
        if "MAX_TEXT" in str(exc):  # Pillow's limits on text chunks: one too large once inflated, or too many
            raise StudioError(f"{shown} is not a readable {what}: its metadata is larger than the reader allows "
                              f"({printable(exc, 120)})") from None
        raise StudioError(f"{shown} is not a readable {what}: {printable(exc, 200)}") from None
    except (OSError, SyntaxError, struct.error, EOFError) as exc:
        raise StudioError(f"{shown} is not a readable {what}: {printable(exc, 200)}") from None


def read_png(path: Path) -> tuple[Generation, dict[str, Any]]:
    """The generation and recipe a studio PNG carries."""
    shown = printable(path)
    text = read_image(path, "PNG")[1]
    if PNG_DATA_KEY not in text:
        raise StudioError(f"{shown} was not made by Latent Studio (no recipe in its metadata)")
    try:
        data = base64.b64decode(text[PNG_DATA_KEY], validate=True)
    except ValueError:
        raise StudioError(f"{shown} has a damaged recipe chunk") from None
    obj, _ = from_bytes(data, f"the generation inside {shown}")
    if not isinstance(obj, Generation):
        raise StudioError(f"{shown} carries a {obj.kind}, not a generation")
    # The readable recipe is a copy for people and other tools; the data chunk checked above is
    # what counts, so a readable chunk that is not a JSON mapping is ignored, not fatal.
    try:
        recipe = _json(text.get(PNG_KEY, "{}"))
    except ValueError:
        recipe = {}
    return obj, recipe if isinstance(recipe, dict) else {}

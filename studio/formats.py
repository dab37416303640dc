"""File formats: the self-describing safetensors file of every stored object, ComfyUI ``.latent``
files, and PNGs that carry their generation.

Nothing here unpickles: tensors are read with safetensors, headers with ``json``.
"""

from __future__ import annotations

import base64
import json
import struct
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

from studio.errors import StudioError
from studio.lazy import torch
from studio.objects import Generation, Latent, Lineage, StoredObject, Vector, check_finite
from studio.space import Space

FORMAT = "latent-studio"
VERSION = 1
MAX_HEADER = 16 * 1024 * 1024  # a safetensors header larger than this is not one of ours
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


def read_header(data: bytes, what: str = "file") -> dict[str, str]:
    """The ``__metadata__`` of a safetensors blob, checking its framing first."""
    if len(data) < 8:
        raise StudioError(f"{what} is not a safetensors file (only {len(data)} bytes)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > MAX_HEADER or 8 + n > len(data):
        raise StudioError(f"{what} is not a safetensors file, or it is truncated (header of {n} bytes)")
    try:
        header = json.loads(data[8 : 8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StudioError(f"{what} is not a safetensors file (unreadable header)") from exc
    if not isinstance(header, dict):
        raise StudioError(f"{what} is not a safetensors file (unreadable header)")
    meta = header.get("__metadata__") or {}
    return meta if isinstance(meta, dict) else {}  # safetensors itself refuses any other kind on load


def load_tensors(data: bytes, what: str = "file") -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load

        return load(data)
    except Exception as exc:  # safetensors raises its own error types for every kind of damage
        raise StudioError(f"{what} is damaged or truncated: {exc}") from None


def studio_header(data: bytes, what: str = "file") -> dict[str, Any]:
    """The Latent Studio header of a file written by ``to_bytes`` (its first bytes are enough), checked."""
    meta = read_header(data, what)
    if FORMAT not in meta:
        raise StudioError(f"{what} is a safetensors file but not one written by Latent Studio")
    try:
        header = json.loads(meta[FORMAT])
    except (TypeError, json.JSONDecodeError) as exc:
        raise StudioError(f"{what} has an unreadable Latent Studio header") from exc
    if (not isinstance(header, dict) or header.get("format") != FORMAT
            or not isinstance(header.get("version"), int)):
        raise StudioError(f"{what} has an unreadable Latent Studio header")
    if header["version"] > VERSION:
        raise StudioError(f"{what} was written by a newer Latent Studio (format {header['version']})")
    return header


def from_bytes(data: bytes, what: str = "file") -> tuple[StoredObject, dict[str, Any]]:
    """Read an object written by ``to_bytes``; returns (object, header). Every check fails cleanly."""
    header = studio_header(data, what)
    tensors = load_tensors(data, what)
    try:
        obj = _build(header, tensors)
    except StudioError as exc:
        raise StudioError(f"{what}: {exc}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:  # a field missing, or of a wrong JSON type
        raise StudioError(f"{what} has a malformed Latent Studio header ({exc!r})") from None
    if header.get("id") and header["id"] != obj.id:
        raise StudioError(f"{what} is corrupt: its content does not match its id {header['id'][:12]}")
    return obj, header


def _field(header: dict, key: str, kind: type, default: Any) -> Any:
    """A header field of the JSON type the reader needs (``default`` when absent); anything else is damage."""
    value = header.get(key)
    if value is None:
        return default
    if not isinstance(value, kind):
        wanted = {dict: "mapping", str: "string"}[kind]
        raise StudioError(f"malformed Latent Studio header: {key!r} should be a {wanted}, "
                          f"not {type(value).__name__}")
    return value


def _build(header: dict, tensors: dict[str, torch.Tensor]) -> StoredObject:
    kind = header["kind"]
    lineage = Lineage.from_json(_field(header, "lineage", dict, None))
    meta = _field(header, "meta", dict, {})
    if kind == "generation":
        roles = {}
        for role, h in _field(header, "roles", dict, {}).items():
            if not isinstance(h, dict):
                raise StudioError(f"malformed Latent Studio header: role {role!r} is not described")
            t = tensors[f"role.{role}"]
            roles[role] = Latent(t, Space.from_json(h["space"]), _field(h, "meta", dict, {}),
                                 Lineage.from_json(_field(h, "lineage", dict, None)))
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
    raise StudioError(f"unknown object kind {kind!r}")


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


def read_png(path: Path) -> tuple[Generation, dict[str, Any]]:
    """The generation and recipe a studio PNG carries."""
    try:
        with Image.open(path) as im:
            im.load()
            text = dict(getattr(im, "text", {}) or {})
    except (OSError, SyntaxError) as exc:
        raise StudioError(f"{path} is not a readable PNG: {exc}") from None
    if PNG_DATA_KEY not in text:
        raise StudioError(f"{path} was not made by Latent Studio (no recipe in its metadata)")
    try:
        data = base64.b64decode(text[PNG_DATA_KEY], validate=True)
    except ValueError:
        raise StudioError(f"{path} has a damaged recipe chunk") from None
    obj, _ = from_bytes(data, f"the generation inside {path}")
    if not isinstance(obj, Generation):
        raise StudioError(f"{path} carries a {obj.kind}, not a generation")
    # The readable recipe is a copy for people and other tools; the data chunk checked above is
    # what counts, so a readable chunk that is not a JSON mapping is ignored, not fatal.
    try:
        recipe = json.loads(text.get(PNG_KEY, "{}"))
    except json.JSONDecodeError:
        recipe = {}
    return obj, recipe if isinstance(recipe, dict) else {}

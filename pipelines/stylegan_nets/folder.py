"""Latent Studio's own folder format for StyleGAN generators: ``config.json`` + ``model.safetensors``.

Scope: converting the generator of a StyleGAN network file (what ``reader.read_network_file`` reads: an
NVIDIA StyleGAN2/StyleGAN3 pickle's ``G_ema``, or rosinality's ``g_ema`` weights with ``latent_avg``)
into a folder that loads without any pickle, and loading such a folder back. Only the generator is kept;
discriminators, training copies and optimiser states are dropped.

The folder holds what the builders in ``sg2``/``sg3`` read, so a converted folder is built by exactly the
same code as the original file and gives bit-identical outputs:

- NVIDIA networks: the ``PersistentModule`` tree of ``G_ema`` without its tensors (class names,
  constructor arguments, plain attributes, the names, shapes and dtypes of each module's parameters and
  buffers, ``null`` for a ``None`` buffer, children recursively), in ``config.json`` under ``generator``;
  the tensors in ``model.safetensors`` under their dotted ``state_dict`` names.
- rosinality networks: the ``g_ema`` tensors under their own names plus ``latent_avg`` (when the file
  has one) in ``model.safetensors``, and their names/shapes and ``lr_mlp`` in ``config.json``.

Values JSON cannot tell apart are tagged: ``{"$tuple": [...]}``, ``{"$set": [...]}``,
``{"$frozenset": [...]}``, ``{"$ndarray": {"dtype", "shape", "data"}}``, and ``{"$dict": [[k, v], ...]}``
for dicts whose keys are not plain strings (or start with ``$``). Non-finite floats are written as
JSON's common ``NaN`` / ``Infinity`` extension. Every problem with a folder is a one-line ``StudioError``.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from pipelines.stylegan_nets.reader import (
    PersistentModule,
    network_kind,
    read_network_file,
    rosinality_weights,
)
from pipelines.stylegan_nets.sg2 import StyleGAN2Generator
from pipelines.stylegan_nets.sg3 import StyleGAN3Generator
from studio.errors import StudioError

FOLDER_ARCHITECTURE = "latent-studio-stylegan-network"  # the marker in config.json
FORMAT_VERSION = 1  # bumped when the layout of config.json changes incompatibly
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
NETWORK_KINDS = ("nvidia-stylegan2", "nvidia-stylegan3", "rosinality-stylegan2")
FACTS = ("z_dim", "w_dim", "c_dim", "num_ws", "img_resolution", "img_channels")  # for humans, checked on load
ROSINALITY_LR_MLP = 0.01  # the mapping's learning-rate multiplier that ``sg2.load_stylegan`` uses
LATENT_AVG = "latent_avg"  # the safetensors name of rosinality's truncation centre
MAX_CONFIG_BYTES = 64 << 20  # a config.json is a few hundred KiB even for 1024px networks

# dtypes safetensors stores, by the names config.json uses
_DTYPES = {str(d).removeprefix("torch."): d for d in (
    torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32, torch.int16,
    torch.int8, torch.uint8, torch.bool)}
_NDARRAY_DTYPE = re.compile(r"[<>|=]?[biuf][0-9]{1,2}")  # plain numeric numpy dtypes, as ``dtype.str``
_MODULE_KEYS = ("class_name", "init_args", "init_kwargs", "attrs", "parameters", "buffers", "modules")


class _Unconvertible(ValueError):
    """The network holds something this format cannot record; the message says what and where."""


class _Malformed(ValueError):
    """A folder's content is damaged or inconsistent; the message says what."""


def _quote(text: Any, limit: int = 200) -> str:
    """Untrusted text for a one-line message: repr escapes newlines and control characters."""
    text = str(text)
    return repr(text if len(text) <= limit else text[:limit] + "...")


# ----------------------------------------------------------------------------------------------------
# Plain values <-> JSON


def _encode_value(value: Any, where: str) -> Any:
    """A plain value (what the reader puts in init args, kwargs and attrs) as JSON data, tagged where
    JSON alone would lose its type (tuples must come back as tuples: records are compared and read as is)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list):
        return [_encode_value(v, where) for v in value]
    if isinstance(value, tuple):
        return {"$tuple": [_encode_value(v, where) for v in value]}
    if isinstance(value, (set, frozenset)):
        tag = "$frozenset" if isinstance(value, frozenset) else "$set"
        return {tag: [_encode_value(v, where) for v in value]}
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in value):
            return {k: _encode_value(v, f"{where}[{k!r}]") for k, v in value.items()}
        return {"$dict": [[_encode_value(k, where), _encode_value(v, where)] for k, v in value.items()]}
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        return {"$ndarray": {"dtype": value.dtype.str, "shape": list(value.shape),
                             "data": value.reshape(-1).tolist()}}
    raise _Unconvertible(f"{where} holds a {type(value).__name__}, which the folder format cannot record")


def _decode_value(data: Any, where: str) -> Any:
    """The inverse of ``_encode_value``."""
    if data is None or isinstance(data, (bool, int, float, str)):
        return data
    if isinstance(data, list):
        return [_decode_value(v, where) for v in data]
    if not isinstance(data, dict):
        raise _Malformed(f"config.json: {where} holds a {type(data).__name__}")
    if not any(k.startswith("$") for k in data):
        return {k: _decode_value(v, f"{where}[{k!r}]") for k, v in data.items()}
    if len(data) != 1:
        raise _Malformed(f"config.json: {where} mixes a '$' tag with other keys")
    tag, body = next(iter(data.items()))
    if tag == "$ndarray":
        return _decode_ndarray(body, where)
    if not isinstance(body, list):
        raise _Malformed(f"config.json: {where}: the body of {_quote(tag)} is not a list")
    items = [_decode_value(v, where) for v in body]
    try:
        if tag == "$tuple":
            return tuple(items)
        if tag in ("$set", "$frozenset"):
            return set(items) if tag == "$set" else frozenset(items)
        if tag == "$dict":
            if not all(isinstance(p, list) and len(p) == 2 for p in items):
                raise _Malformed(f"config.json: {where}: a '$dict' entry is not a [key, value] pair")
            return dict(items)
    except TypeError as e:  # unhashable set elements or dict keys
        raise _Malformed(f"config.json: {where}: {_quote(e)}") from None
    raise _Malformed(f"config.json: {where} has the unknown tag {_quote(tag)}")


def _decode_ndarray(body: Any, where: str) -> np.ndarray:
    if not isinstance(body, dict) or not {"dtype", "shape", "data"} <= set(body):
        raise _Malformed(f"config.json: {where}: an '$ndarray' lacks its dtype, shape or data")
    dtype, shape, data = body["dtype"], body["shape"], body["data"]
    if not isinstance(dtype, str) or not _NDARRAY_DTYPE.fullmatch(dtype):
        raise _Malformed(f"config.json: {where}: an '$ndarray' has the dtype {_quote(dtype)}")
    shape = _shape(shape, f"config.json: {where}: an '$ndarray'")
    if not isinstance(data, list) or len(data) != math.prod(shape) \
            or not all(isinstance(v, (bool, int, float)) for v in data):
        raise _Malformed(f"config.json: {where}: an '$ndarray' does not hold {math.prod(shape)} numbers")
    try:
        return np.array(data, dtype=np.dtype(dtype)).reshape(shape)
    except (TypeError, ValueError, OverflowError) as e:
        raise _Malformed(f"config.json: {where}: an '$ndarray' cannot be built ({_quote(e)})") from None


def _shape(value: Any, what: str) -> list[int]:
    if not isinstance(value, list) or not all(type(n) is int and n >= 0 for n in value):
        raise _Malformed(f"{what} has a shape that is not a list of sizes")
    return value


# ----------------------------------------------------------------------------------------------------
# Tensors <-> their records in config.json


def _tensor_spec(t: torch.Tensor, name: str) -> dict:
    dtype = str(t.dtype).removeprefix("torch.")
    if dtype not in _DTYPES:
        raise _Unconvertible(f"the tensor {name!r} is {dtype}, which safetensors cannot store")
    return {"shape": list(t.shape), "dtype": dtype}


def _stored(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy with its own storage: the reader's tensors may be views of shared storages,
    which safetensors refuses to write."""
    return t.detach().to("cpu").clone(memory_format=torch.contiguous_format)


def _take_tensor(tensors: dict[str, torch.Tensor], used: set[str], name: str, spec: Any,
                 where: str) -> torch.Tensor:
    """The tensor ``name`` of model.safetensors, checked against its record ``spec`` in config.json."""
    if not isinstance(spec, dict) or not {"shape", "dtype"} <= set(spec):
        raise _Malformed(f"config.json: the record of tensor {name!r} lacks its shape or dtype")
    shape = _shape(spec["shape"], f"config.json: tensor {name!r}")
    if not isinstance(spec["dtype"], str) or spec["dtype"] not in _DTYPES:
        raise _Malformed(f"config.json: tensor {name!r} has the unknown dtype {_quote(spec['dtype'])}")
    t = tensors.get(name)
    if t is None:
        raise _Malformed(f"{WEIGHTS_NAME} lacks the tensor {name!r} ({where})")
    if list(t.shape) != shape:
        raise _Malformed(f"{WEIGHTS_NAME}: tensor {name!r} has shape {list(t.shape)}, config.json says {shape}")
    if t.dtype != _DTYPES[spec["dtype"]]:
        raise _Malformed(f"{WEIGHTS_NAME}: tensor {name!r} is {str(t.dtype).removeprefix('torch.')}, "
                         f"config.json says {spec['dtype']}")
    used.add(name)
    return t


# ----------------------------------------------------------------------------------------------------
# NVIDIA: the PersistentModule tree <-> JSON + tensors


def _check_name(name: Any, where: str, error: type[ValueError] = _Unconvertible) -> str:
    # Dotted state_dict names are the tensors' keys, so a name holding a dot would be ambiguous.
    if not isinstance(name, str) or not name or "." in name:
        raise error(f"{where} has a part named {_quote(name)}, which is not a plain name")
    return name


def _encode_tensor_table(table: dict, prefix: str, tensors: dict[str, torch.Tensor], where: str) -> dict:
    out: dict[str, dict | None] = {}
    for name, t in table.items():
        key = prefix + _check_name(name, where)
        if t is None:
            out[name] = None
            continue
        if key in tensors:
            raise _Unconvertible(f"{where} names the tensor {key!r} twice")
        out[name] = _tensor_spec(t, key)
        tensors[key] = _stored(t)
    return out


def _encode_module(m: PersistentModule, prefix: str, tensors: dict[str, torch.Tensor]) -> dict:
    """One module as JSON data; its tensors go to ``tensors`` under their dotted state_dict names."""
    where = f"module {prefix[:-1]!r}" if prefix else "the generator"
    modules: dict[str, dict | None] = {}
    for name, child in m.modules.items():
        name = _check_name(name, where)
        modules[name] = None if child is None else _encode_module(child, f"{prefix}{name}.", tensors)
    return {
        "class_name": m.class_name,
        "init_args": [_encode_value(v, f"{where} init_args") for v in m.init_args],
        "init_kwargs": _encode_value(m.init_kwargs, f"{where} init_kwargs"),
        "attrs": _encode_value(m.attrs, f"{where} attrs"),
        "parameters": _encode_tensor_table(m.parameters, prefix, tensors, where),
        "buffers": _encode_tensor_table(m.buffers, prefix, tensors, where),
        "modules": modules,
    }


def _decode_tensor_table(data: Any, prefix: str, tensors: dict[str, torch.Tensor], used: set[str],
                         where: str) -> dict[str, torch.Tensor | None]:
    if not isinstance(data, dict):
        raise _Malformed(f"config.json: the tensors of {where} are not a JSON object")
    return {_check_name(name, where, _Malformed):
            None if spec is None else _take_tensor(tensors, used, prefix + name, spec, where)
            for name, spec in data.items()}


def _decode_module(node: Any, prefix: str, tensors: dict[str, torch.Tensor], used: set[str]) -> PersistentModule:
    """The inverse of ``_encode_module``: the record, with its tensors taken from model.safetensors."""
    where = f"module {prefix[:-1]!r}" if prefix else "the generator"
    if not isinstance(node, dict):
        raise _Malformed(f"config.json: {where} is not a JSON object")
    missing = [k for k in _MODULE_KEYS if k not in node]
    if missing:
        raise _Malformed(f"config.json: {where} lacks {', '.join(map(repr, missing))}")
    if not isinstance(node["class_name"], str) or not isinstance(node["init_args"], list):
        raise _Malformed(f"config.json: {where} has a malformed class_name or init_args")
    init_kwargs = _decode_value(node["init_kwargs"], f"{where} init_kwargs")
    attrs = _decode_value(node["attrs"], f"{where} attrs")
    if not isinstance(init_kwargs, dict) or not isinstance(attrs, dict):
        raise _Malformed(f"config.json: the init_kwargs or attrs of {where} are not a JSON object")
    if not isinstance(node["modules"], dict):
        raise _Malformed(f"config.json: the modules of {where} are not a JSON object")
    return PersistentModule(
        class_name=node["class_name"],
        init_args=tuple(_decode_value(v, f"{where} init_args") for v in node["init_args"]),
        init_kwargs=init_kwargs,
        attrs=attrs,
        parameters=_decode_tensor_table(node["parameters"], prefix, tensors, used, where),
        buffers=_decode_tensor_table(node["buffers"], prefix, tensors, used, where),
        modules={_check_name(name, where, _Malformed):
                 None if child is None else _decode_module(child, f"{prefix}{name}.", tensors, used)
                 for name, child in node["modules"].items()},
    )


# ----------------------------------------------------------------------------------------------------
# rosinality: g_ema weights + latent_avg <-> JSON + tensors


def _encode_rosinality(obj: dict, tensors: dict[str, torch.Tensor]) -> dict:
    state, latent_avg = rosinality_weights(obj)
    if LATENT_AVG in state:
        raise _Unconvertible(f"the g_ema weights hold a tensor named {LATENT_AVG!r}, the name kept for "
                             "the truncation centre")
    weights = {name: _tensor_spec(t, name) for name, t in state.items()}
    tensors.update({name: _stored(t) for name, t in state.items()})
    avg_spec = None
    if latent_avg is not None:
        avg_spec = _tensor_spec(latent_avg, LATENT_AVG)
        tensors[LATENT_AVG] = _stored(latent_avg)
    return {"weights": weights, "latent_avg": avg_spec, "lr_mlp": ROSINALITY_LR_MLP}


def _decode_rosinality(data: Any, tensors: dict[str, torch.Tensor], used: set[str]) -> dict:
    """A reader-like checkpoint dict: {'g_ema': state_dict, 'latent_avg': tensor or None}."""
    if not isinstance(data, dict) or not {"weights", "latent_avg", "lr_mlp"} <= set(data):
        raise _Malformed("config.json: the rosinality generator lacks 'weights', 'latent_avg' or 'lr_mlp'")
    if not isinstance(data["weights"], dict):
        raise _Malformed("config.json: the rosinality 'weights' are not a JSON object")
    state = {name: _take_tensor(tensors, used, name, spec, "the g_ema weights")
             for name, spec in data["weights"].items()}
    spec = data["latent_avg"]
    avg = None if spec is None else _take_tensor(tensors, used, LATENT_AVG, spec, "the truncation centre")
    return {"g_ema": state, "latent_avg": avg}


def _lr_mlp(data: dict) -> float:
    lr = data["lr_mlp"]
    if type(lr) not in (int, float) or not math.isfinite(lr) or lr <= 0:
        raise _Malformed(f"config.json: lr_mlp is {_quote(lr)}, not a positive number")
    return float(lr)


# ----------------------------------------------------------------------------------------------------
# Building: the same calls as ``sg2.load_stylegan``


def _build(kind: str, obj: dict, lr_mlp: float = ROSINALITY_LR_MLP) -> nn.Module:
    if kind == "nvidia-stylegan2":
        g = StyleGAN2Generator.from_persistent(obj["G_ema"])
    elif kind == "nvidia-stylegan3":
        g = StyleGAN3Generator.from_persistent(obj["G_ema"])
    else:
        state, avg = rosinality_weights(obj)
        g = StyleGAN2Generator.from_rosinality(state, avg, lr_mlp=lr_mlp)
    return g.eval().requires_grad_(False)


def _facts(g: nn.Module) -> dict[str, int]:
    return {name: int(getattr(g, name)) for name in FACTS}


# ----------------------------------------------------------------------------------------------------
# Saving


def _check_target(folder: Path) -> None:
    shown = _quote(folder)
    if folder.is_symlink():
        raise StudioError(f"cannot convert into {shown}: it is a symbolic link")
    if folder.exists():
        if not folder.is_dir():
            raise StudioError(f"cannot convert into {shown}: it exists and is not a folder")
        if any(folder.iterdir()):
            raise StudioError(f"cannot convert into {shown}: the folder exists and is not empty")


def _fsync(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    """Make a rename durable; folders cannot be opened this way everywhere, so this is best effort."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _missing_parents(folder: Path) -> list[Path]:
    """The folder's ancestors that do not exist yet, deepest first (removed again if writing fails)."""
    return [p for p in folder.parents if not p.exists()]


def _write_atomically(folder: Path, config: dict, tensors: dict[str, torch.Tensor]) -> None:
    """Write both files into a hidden sibling folder, then rename it into place: readers never see a
    half-written network folder, and a failure leaves nothing behind."""
    created = _missing_parents(folder)
    tmp: Path | None = None
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".partial", dir=folder.parent))
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"architecture": FOLDER_ARCHITECTURE})
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")
        for name in (WEIGHTS_NAME, CONFIG_NAME):
            _fsync(tmp / name)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private
        _check_target(folder)
        if folder.exists():  # an empty folder: renaming over it is not portable, so it goes first
            folder.rmdir()
        os.rename(tmp, folder)
        tmp = None
        _fsync_dir(folder.parent)
    except OSError as e:
        raise StudioError(f"cannot write the network folder {_quote(folder)}: {_quote(e)}") from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
            for parent in created:
                try:
                    parent.rmdir()
                except OSError:
                    break


def save_network_folder(network: str | os.PathLike | dict, folder: str | os.PathLike, *,
                        source: str | None = None) -> Path:
    """Convert a StyleGAN network file (or the dict ``read_network_file`` returned for it) into the
    network folder ``folder`` (config.json + model.safetensors) and return its path.

    ``source`` is the original file's name recorded in config.json (default: the name of ``network``
    when it is a path; only the name, never the folder it was in). ``folder`` must not exist or be
    empty. The generator is built once before anything is written, so a network the builders cannot
    run is refused up front.
    """
    folder = Path(folder)
    _check_target(folder)  # before reading a possibly large file
    if isinstance(network, dict):
        obj = network
    else:
        obj = read_network_file(network)
        source = Path(network).name if source is None else source
    if source is not None and not isinstance(source, str):
        raise StudioError("the source of a network folder must be a file name")
    kind = network_kind(obj)
    tensors: dict[str, torch.Tensor] = {}
    try:
        if kind == "rosinality-stylegan2":
            generator = _encode_rosinality(obj, tensors)
        else:
            generator = _encode_module(obj["G_ema"], "", tensors)
    except _Unconvertible as e:
        raise StudioError(f"cannot convert {_quote(source or 'the network')}: {e}") from None
    facts = _facts(_build(kind, obj))
    config = {"architecture": FOLDER_ARCHITECTURE, "format_version": FORMAT_VERSION, "network": kind,
              "source": None if source is None else Path(source).name, **facts, "generator": generator}
    _write_atomically(folder, config, tensors)
    return folder


# ----------------------------------------------------------------------------------------------------
# Loading


def _read_config(folder: Path) -> Any:
    """The JSON in folder/config.json (any JSON value)."""
    path = folder / CONFIG_NAME
    if not folder.is_dir():
        raise _Malformed("it is not a folder")
    if not path.is_file():
        raise _Malformed(f"it has no {CONFIG_NAME}")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise _Malformed(f"its {CONFIG_NAME} is larger than {MAX_CONFIG_BYTES >> 20} MiB")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise _Malformed(f"{CONFIG_NAME} is not valid JSON ({_quote(e)})") from None
    except OSError as e:
        raise _Malformed(f"{CONFIG_NAME} cannot be read ({_quote(e)})") from None


def _check_config(config: Any) -> dict:
    """The top level of config.json, with its marker, version, kind, source and facts checked."""
    if not isinstance(config, dict):
        raise _Malformed(f"{CONFIG_NAME} does not hold a JSON object")
    if config.get("architecture") != FOLDER_ARCHITECTURE:
        raise _Malformed(f"{CONFIG_NAME} is not a StyleGAN network folder config "
                         f"(architecture {_quote(config.get('architecture'))})")
    missing = [k for k in ("format_version", "network", "source", *FACTS, "generator") if k not in config]
    if missing:
        raise _Malformed(f"{CONFIG_NAME} lacks {', '.join(map(repr, missing))}")
    if config["format_version"] != FORMAT_VERSION or type(config["format_version"]) is not int:
        raise _Malformed(f"{CONFIG_NAME} has format version {_quote(config['format_version'])}; this "
                         f"version of Latent Studio reads version {FORMAT_VERSION}")
    if config["network"] not in NETWORK_KINDS:
        raise _Malformed(f"{CONFIG_NAME} names the unknown network kind {_quote(config['network'])} "
                         f"(known: {', '.join(NETWORK_KINDS)})")
    if config["source"] is not None and not isinstance(config["source"], str):
        raise _Malformed(f"{CONFIG_NAME}: 'source' is not a file name")
    for name in FACTS:
        if type(config[name]) is not int or config[name] < 0:
            raise _Malformed(f"{CONFIG_NAME}: {name!r} is {_quote(config[name])}, not a size")
    return config


def _read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    path = folder / WEIGHTS_NAME
    if not path.is_file():
        raise _Malformed(f"it has no {WEIGHTS_NAME}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise _Malformed(f"{WEIGHTS_NAME} is truncated or corrupt ({_quote(e)})") from None


def _read_folder(folder: Path) -> tuple[dict, dict]:
    """(checked config, reader-like network dict) of a network folder; _Malformed on any problem."""
    config = _check_config(_read_config(folder))
    tensors = _read_tensors(folder)
    used: set[str] = set()
    try:
        if config["network"] == "rosinality-stylegan2":
            obj = _decode_rosinality(config["generator"], tensors, used)
        else:
            obj = {"G_ema": _decode_module(config["generator"], "", tensors, used)}
    except RecursionError:
        raise _Malformed(f"{CONFIG_NAME} nests too deeply") from None
    extra = sorted(set(tensors) - used)
    if extra:
        raise _Malformed(f"{WEIGHTS_NAME} holds tensors that {CONFIG_NAME} does not name: "
                         f"{', '.join(map(_quote, extra[:4]))}{' ...' if len(extra) > 4 else ''}")
    # The recorded kind must be the one the content shows, or the wrong builder would run.
    try:
        found = network_kind(obj)
    except StudioError as e:
        raise _Malformed(str(e)) from None
    if found != config["network"]:
        raise _Malformed(f"{CONFIG_NAME} says the network is {config['network']!r}, but it holds a {found!r}")
    return config, obj


def _folder_error(folder: Path, reason: object) -> StudioError:
    return StudioError(f"cannot load the network folder {_quote(folder)}: {reason}")


def is_network_folder(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds a config.json carrying this format's marker (its content is not checked)."""
    try:
        config = _read_config(Path(folder))
    except (_Malformed, OSError):
        return False
    return isinstance(config, dict) and config.get("architecture") == FOLDER_ARCHITECTURE


def read_network_folder(folder: str | os.PathLike) -> dict:
    """A network folder as ``read_network_file`` would give its original file (generator only):
    ``{'G_ema': PersistentModule}`` for NVIDIA networks, ``{'g_ema': state_dict, 'latent_avg': tensor or
    None}`` for rosinality ones. Reads JSON and safetensors only; one-line StudioError on any problem."""
    folder = Path(folder)
    try:
        return _read_folder(folder)[1]
    except _Malformed as e:
        raise _folder_error(folder, e) from None


def load_network_folder(folder: str | os.PathLike) -> nn.Module:
    """The generator stored in a network folder (``StyleGAN2Generator`` or ``StyleGAN3Generator``, eval
    mode, no gradients), built by the same builders as the original file; never unpickles anything."""
    folder = Path(folder)
    try:
        config, obj = _read_folder(folder)
        lr_mlp = _lr_mlp(config["generator"]) if config["network"] == "rosinality-stylegan2" else ROSINALITY_LR_MLP
    except _Malformed as e:
        raise _folder_error(folder, e) from None
    try:
        g = _build(config["network"], obj, lr_mlp)
    except StudioError as e:
        raise _folder_error(folder, e) from None
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, RuntimeError, OverflowError) as e:
        # a hand-edited config can give the builders values of the wrong type
        raise _folder_error(folder, f"the network cannot be built ({type(e).__name__}: {_quote(e)})") from None
    facts = _facts(g)
    wrong = [f"{k} {config[k]} (the network has {v})" for k, v in facts.items() if config[k] != v]
    if wrong:
        raise _folder_error(folder, f"{CONFIG_NAME} records {', '.join(wrong)}")
    return g

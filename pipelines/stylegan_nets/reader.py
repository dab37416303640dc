"""A safe reader for StyleGAN network files: NVIDIA network pickles and torch.save checkpoints.

Scope: turn a file into plain data (dicts, lists, tuples, tensors, small numpy values and
``PersistentModule`` records) without running any code that the file names. Three containers are read:

- an NVIDIA network pickle (stylegan2-ada-pytorch, stylegan3): a plain pickle, protocol 2-5, whose
  modules are "persistent objects" carrying their class source (ignored here, never executed) and whose
  tensors are nested legacy torch.save blobs;
- a zip-format torch.save checkpoint (``<folder>/data.pkl`` plus ``<folder>/data/<key>`` storages);
- a legacy (non-zip) torch.save checkpoint: magic number, protocol, system info, the pickled object,
  the storage keys, then each storage's raw bytes.

Every pickle goes through ``_RestrictedUnpickler``: ``find_class`` resolves only an allowlist of globals,
each mapped to a stand-in written here (tensor rebuilds that check bounds, numpy values built from
dtype/shape/bytes, plain records for persistent modules and argparse namespaces), and BUILD only sets the
state of those stand-ins. Anything else is refused with a one-line ``StudioError`` naming the global.
"""

from __future__ import annotations

import _compat_pickle
import io
import math
import os
import pickle
import re
import struct
import sys
import types
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from studio.errors import StudioError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # first object of a legacy torch.save file
LEGACY_PROTOCOL = 1001  # second object of a legacy torch.save file
MAX_NESTING = 2  # how deep torch.save blobs may nest inside one another (NVIDIA pickles use 1)

# ----------------------------------------------------------------------------------------------------
# Records returned to callers


@dataclass
class PersistentModule:
    """One module of an NVIDIA network pickle, as plain data (its class is named, never imported)."""

    class_name: str  # e.g. 'training.networks.Generator'
    init_args: tuple = ()  # positional constructor arguments, as recorded by the pickle
    init_kwargs: dict = field(default_factory=dict)  # keyword constructor arguments (EasyDicts become dicts)
    attrs: dict = field(default_factory=dict)  # other plain attributes (numpy scalars -> float/int)
    parameters: dict[str, torch.Tensor | None] = field(default_factory=dict)  # own parameters, by name
    buffers: dict[str, torch.Tensor | None] = field(default_factory=dict)  # own buffers, by name
    modules: dict[str, PersistentModule | None] = field(default_factory=dict)  # child modules, by name

    def state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """Every tensor of the tree under dotted names, in torch's order (own params, buffers, children)."""
        out: dict[str, torch.Tensor] = {}
        for table in (self.parameters, self.buffers):
            out.update({prefix + name: t for name, t in table.items() if t is not None})
        for name, child in self.modules.items():
            if child is not None:
                out.update(child.state_dict(prefix + name + "."))
        return out

    def child(self, dotted: str) -> PersistentModule:
        """The submodule at a dotted path such as 'synthesis.b4.conv1'; StudioError if absent."""
        node = self
        for part in dotted.split("."):
            nxt = node.modules.get(part)
            if nxt is None:
                raise StudioError(f"the network {self.class_name!r} has no submodule {dotted!r}")
            node = nxt
        return node

    @property
    def short_name(self) -> str:
        """The class name without its module path, e.g. 'SynthesisLayer'."""
        return self.class_name.rsplit(".", 1)[-1]


class ArgsRecord(types.SimpleNamespace):
    """Stand-in for ``argparse.Namespace`` (training options saved in checkpoints): attributes only."""

    def as_dict(self) -> dict:
        return dict(vars(self))


# ----------------------------------------------------------------------------------------------------
# Stand-ins for the allowed globals


class _CorruptFile(ValueError):
    """Raised by stand-ins on malformed content; turned into a StudioError naming the file."""


@dataclass
class _Storage:
    """A torch storage as a flat tensor (shared by every tensor that views it)."""

    data: torch.Tensor  # [numel], of the storage's dtype
    filled: bool = True  # False while a legacy file's bytes are still to be read


@dataclass(frozen=True)
class _StorageType:
    """Stand-in for a typed storage class such as ``torch.FloatStorage``: only its dtype matters."""

    name: str  # e.g. 'FloatStorage'
    dtype: torch.dtype  # element type of the storage


_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool, "ComplexFloatStorage": torch.complex64, "ComplexDoubleStorage": torch.complex128,
}


def _int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(type(v) is int for v in value):
        raise _CorruptFile(f"a tensor {what} is not a tuple of integers")
    return tuple(value)


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any, requires_grad: Any = False,
                    backward_hooks: Any = None, metadata: Any = None) -> torch.Tensor:
    """A view of ``storage`` with the given geometry, after checking that it stays inside the storage."""
    if not isinstance(storage, _Storage):
        raise _CorruptFile("a tensor does not refer to a storage")
    size, stride = _int_tuple(size, "size"), _int_tuple(stride, "stride")
    if len(size) != len(stride) or type(storage_offset) is not int or storage_offset < 0:
        raise _CorruptFile("a tensor has an inconsistent size, stride or offset")
    if any(n < 0 for n in size) or any(s < 0 for s in stride):
        raise _CorruptFile("a tensor has a negative size or stride")
    if 0 in size:
        return torch.empty(size, dtype=storage.data.dtype)
    last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= storage.data.numel():
        raise _CorruptFile("a tensor reaches past the end of its storage")
    return storage.data.as_strided(size, stride, storage_offset)


def _rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None,
                       state: Any = None) -> torch.Tensor:
    """A parameter becomes its plain tensor (hooks and extra state are dropped)."""
    if not isinstance(data, torch.Tensor):
        raise _CorruptFile("a parameter holds no tensor")
    return data


_DTYPE_CODE = re.compile(r"[biufc][0-9]{1,2}")


def _numpy_dtype(code: Any, align: Any = False, copy: Any = False) -> np.dtype:
    """``numpy.dtype('f8', False, True)`` for plain numeric codes only (no objects, no records)."""
    if not isinstance(code, str) or not _DTYPE_CODE.fullmatch(code):
        shown = _quote(code) if isinstance(code, str) else f"of a {type(code).__name__}"
        raise _CorruptFile(f"numpy dtype {shown} is not a plain numeric type")
    try:
        return np.dtype(code)
    except TypeError as e:
        raise _CorruptFile(f"numpy dtype {code!r} is not known") from e


def _as_bytes(data: Any) -> bytes:
    if isinstance(data, str):  # protocol-2 pickles from Python 2 carry bytes as latin-1 text
        return data.encode("latin-1")
    if not isinstance(data, (bytes, bytearray)):
        raise _CorruptFile("numpy data is not bytes")
    return bytes(data)


def _numpy_scalar(dtype: Any, data: Any = b"") -> np.generic:
    """``numpy.core.multiarray.scalar(dtype, bytes)``: one value read from its bytes."""
    if not isinstance(dtype, np.dtype) or dtype.kind not in "biufc":
        raise _CorruptFile("a numpy scalar has no plain numeric dtype")
    raw = _as_bytes(data)
    if len(raw) != dtype.itemsize:
        raise _CorruptFile("a numpy scalar has the wrong number of bytes")
    return np.frombuffer(raw, dtype=dtype, count=1)[0]


class _ArrayStub:
    """Stand-in for ``numpy.ndarray`` before BUILD gives it (version, shape, dtype, fortran, bytes)."""

    def build(self, state: Any) -> np.ndarray:
        if not isinstance(state, tuple) or len(state) != 5:
            raise _CorruptFile("a numpy array has a malformed state")
        _version, shape, dtype, fortran, data = state
        shape = _int_tuple(shape, "shape")
        if not isinstance(dtype, np.dtype) or dtype.kind not in "biufc" or any(n < 0 for n in shape):
            raise _CorruptFile("a numpy array has no plain numeric dtype")
        raw = _as_bytes(data)
        count = math.prod(shape)
        if len(raw) != count * dtype.itemsize:
            raise _CorruptFile("a numpy array has the wrong number of bytes")
        flat = np.frombuffer(raw, dtype=dtype, count=count)
        return flat.reshape(shape, order="F" if fortran else "C").copy()


def _numpy_reconstruct(subtype: Any, shape: Any = (0,), code: Any = b"b") -> _ArrayStub:
    """``numpy.core.multiarray._reconstruct(ndarray, (0,), b'b')``: an empty array waiting for BUILD."""
    if subtype is not _ArrayStub:
        raise _CorruptFile("numpy reconstruction of something other than ndarray")
    return _ArrayStub()


def _codecs_encode(text: Any, encoding: Any = "utf-8") -> bytes:
    """``_codecs.encode(str, 'latin1')``, the way protocol-2 pickles spell bytes."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _CorruptFile("bytes spelled with an unexpected encoding")
    return text.encode("latin-1")


def _plain(value: Any) -> Any:
    """Numpy scalars -> Python numbers, integer arrays -> tuples/lists, containers recursively."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "biu":
            return tuple(value.tolist()) if value.ndim == 1 else value.tolist()
        return value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _table(state: dict, key: str, kind: type, what: str) -> dict:
    table = state.get(key) or {}
    if not isinstance(table, dict):
        raise _CorruptFile(f"a persistent module's {key} is not a dict")
    for name, value in table.items():
        if not isinstance(name, str) or not (value is None or isinstance(value, kind)):
            raise _CorruptFile(f"a persistent module's {key} holds something other than {what}")
    return dict(table)


def _reconstruct_persistent_obj(meta: Any) -> PersistentModule:
    """``torch_utils.persistence._reconstruct_persistent_obj(meta)`` as a record; ``module_src`` is ignored."""
    if not isinstance(meta, dict) or meta.get("type") != "class":
        raise _CorruptFile("a persistent object is not a class instance")
    class_name, state = meta.get("class_name"), meta.get("state")
    if not isinstance(class_name, str) or not isinstance(state, dict):
        raise _CorruptFile("a persistent object lacks its class name or state")
    init_args, init_kwargs = state.get("_init_args", ()), state.get("_init_kwargs", {})
    if not isinstance(init_args, (tuple, list)) or not isinstance(init_kwargs, dict):
        raise _CorruptFile("a persistent object has malformed constructor arguments")
    attrs = {k: _plain(v) for k, v in state.items()
             if isinstance(k, str) and not k.startswith("_") and k != "training"}
    return PersistentModule(
        class_name=class_name,
        init_args=_plain(tuple(init_args)),
        init_kwargs=_plain(init_kwargs),
        attrs=attrs,
        parameters=_table(state, "_parameters", torch.Tensor, "tensors"),
        buffers=_table(state, "_buffers", torch.Tensor, "tensors"),
        modules=_table(state, "_modules", PersistentModule, "persistent modules"),
    )


_LOAD_FROM_BYTES = object()  # marker: resolved per unpickler, since nested blobs need its context

_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("dnnlib.util", "EasyDict"): dict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _LOAD_FROM_BYTES,
    ("collections", "OrderedDict"): OrderedDict,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy", "dtype"): _numpy_dtype,
    ("numpy", "ndarray"): _ArrayStub,
    ("argparse", "Namespace"): ArgsRecord,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("_codecs", "encode"): _codecs_encode,
    **{("torch", name): _StorageType(name, dtype) for name, dtype in _STORAGE_DTYPES.items()},
}



# ----------------------------------------------------------------------------------------------------
# The restricted unpickler


def _quote(text: Any, limit: int = 300) -> str:
    """Untrusted text for a one-line message: quoted, control characters escaped, at most ``limit`` chars."""
    text = str(text)
    return repr(text if len(text) <= limit else text[:limit] + "...")


class _Refused(Exception):
    """The file names something this reader does not allow; carries the one-line reason."""


class _RestrictedUnpickler(pickle._Unpickler):
    """A pickle reader that resolves only ``_ALLOWED_GLOBALS`` and BUILDs only their stand-ins.

    It is the pure-Python unpickler, so that BUILD (which would call ``__setstate__`` on any object)
    can be restricted as well as global lookup. ``storages`` answers torch.save persistent ids.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: BinaryIO, reader: _FileReader, storages: _StorageTable | None = None):
        super().__init__(file, encoding="latin1")
        self._reader = reader
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if self.proto < 3:  # protocol-2 pickles spell globals with Python 2 names ('__builtin__.set')
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            else:
                module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        stand_in = _ALLOWED_GLOBALS.get((module, name))
        if stand_in is None:
            raise _Refused(f"it names the global {_quote(f'{module}.{name}')}, which this reader does not "
                           "allow (a network file needs only tensors and settings)")
        if stand_in is _LOAD_FROM_BYTES:
            return self._reader.load_from_bytes
        return stand_in

    def persistent_load(self, pid: Any) -> Any:
        if self._storages is None:
            raise _CorruptFile("a persistent id in a file that is not a torch.save checkpoint")
        return self._storages.lookup(pid)

    def _load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, _ArrayStub):
            self._replace_top(inst, inst.build(state))
        elif isinstance(inst, np.dtype):
            self._replace_top(inst, _dtype_with_state(inst, state))
        elif type(inst) in (OrderedDict, ArgsRecord):
            if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
                raise _CorruptFile(f"a {type(inst).__name__} has a malformed state")
            inst.__dict__.update(state)
        else:
            raise _Refused(f"it sets the state of a {_quote(type(inst).__name__)} object, which this reader "
                           "does not allow")

    dispatch[pickle.BUILD[0]] = _load_build

    def _replace_top(self, old: Any, new: Any) -> None:
        """Swap a stand-in for what it built, on the stack and in the memo (it was memoised before BUILD)."""
        self.stack[-1] = new
        last = len(self.memo) - 1
        for key in range(last, max(last - 64, -1), -1):  # MEMOIZE numbers entries 0, 1, 2, ...
            if self.memo.get(key) is old:
                self.memo[key] = new
                return
        for key, value in self.memo.items():
            if value is old:
                self.memo[key] = new


def _dtype_with_state(dtype: np.dtype, state: Any) -> np.dtype:
    """numpy's dtype state (version, byteorder, subarray, names, fields, ...): only byte order is used."""
    if not isinstance(state, tuple) or len(state) < 5 or any(s is not None for s in state[2:5]):
        raise _CorruptFile("a numpy dtype has a structured or malformed state")
    order = state[1]
    if order not in ("<", ">", "|", "="):
        raise _CorruptFile("a numpy dtype has an unknown byte order")
    return dtype if order in ("|", "=") else dtype.newbyteorder(order)


# ----------------------------------------------------------------------------------------------------
# torch.save storages


def _read_into(file: BinaryIO, tensor: torch.Tensor) -> None:
    """Fill a contiguous tensor with the next bytes of ``file`` (little-endian host)."""
    view = memoryview(tensor.view(torch.uint8).numpy()) if tensor.numel() else memoryview(b"")
    done = 0
    while done < len(view):
        got = file.readinto(view[done:])
        if not got:
            raise EOFError("storage data ends early")
        done += got


class _StorageTable:
    """Answers a torch.save persistent id ('storage', type, key, location, numel[, view]) with a _Storage."""

    def __init__(self, zip_file: zipfile.ZipFile | None, prefix: str, max_bytes: int):
        self._zip = zip_file  # zip checkpoints: storages are read on first use
        self._prefix = prefix  # '<folder>/' of the zip entries
        self._max_bytes = max_bytes  # no storage may claim more bytes than the file has
        self.by_key: dict[str, _Storage] = {}

    def lookup(self, pid: Any) -> _Storage:
        if not isinstance(pid, tuple) or len(pid) not in (5, 6) or pid[0] != "storage":
            raise _CorruptFile("a persistent id that is not a storage")
        storage_type, key, _location, numel = pid[1:5]
        view = pid[5] if len(pid) == 6 else None
        if not isinstance(storage_type, _StorageType) or not isinstance(key, str) or type(numel) is not int:
            raise _CorruptFile("a malformed storage id")
        storage = self.by_key.get(key) or self._new(storage_type.dtype, key, numel)
        if view is None:
            return storage
        return self._view(storage, view)

    def _new(self, dtype: torch.dtype, key: str, numel: int) -> _Storage:
        itemsize = torch.empty(0, dtype=dtype).element_size()
        if numel < 0 or numel * itemsize > self._max_bytes:
            raise _CorruptFile("a storage claims more bytes than the file holds")
        data = torch.empty(numel, dtype=dtype)
        if self._zip is None:
            storage = _Storage(data, filled=False)
        else:
            if not re.fullmatch(r"[0-9A-Za-z_]+", key):
                raise _CorruptFile("a storage key is not a plain name")
            name = f"{self._prefix}data/{key}"
            if self._zip.getinfo(name).file_size != numel * itemsize:
                raise _CorruptFile("a storage entry has the wrong size")
            with self._zip.open(name) as entry:
                _read_into(entry, data)
            storage = _Storage(data)
        self.by_key[key] = storage
        return storage

    @staticmethod
    def _view(storage: _Storage, view: Any) -> _Storage:
        if not isinstance(view, tuple) or len(view) != 3:
            raise _CorruptFile("a malformed storage view")
        _view_key, offset, size = view
        if type(offset) is not int or type(size) is not int or offset < 0 or size < 0 \
                or offset + size > storage.data.numel():
            raise _CorruptFile("a storage view reaches past its storage")
        return _Storage(storage.data[offset:offset + size], storage.filled)

    def fill_legacy(self, file: BinaryIO, keys: Any) -> None:
        """Read a legacy file's storage bytes: for each key, an int64 element count, then the data."""
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise _CorruptFile("the storage key list is malformed")
        for key in keys:
            storage = self.by_key.get(key)
            if storage is None:
                raise _CorruptFile("the file lists a storage that no tensor uses")
            header = file.read(8)
            if len(header) != 8:
                raise EOFError("storage header ends early")
            (count,) = struct.unpack("<q", header)
            if count != storage.data.numel():
                raise _CorruptFile("a storage holds a different number of elements than its id says")
            _read_into(file, storage.data)
            storage.filled = True
        if not all(s.filled for s in self.by_key.values()):
            raise _CorruptFile("some storages have no data")


# ----------------------------------------------------------------------------------------------------
# Containers


class _FileReader:
    """Reads one file; nested torch.save blobs (NVIDIA tensors) come back through ``load_from_bytes``."""

    def __init__(self, size: int):
        self.size = size  # bytes in the file, the bound for any storage
        self.depth = 0  # current nesting of torch.save blobs

    def unpickle(self, file: BinaryIO, storages: _StorageTable | None = None) -> Any:
        return _RestrictedUnpickler(file, self, storages).load()

    def load_from_bytes(self, blob: Any) -> Any:
        """``torch.storage._load_from_bytes(b)``: a nested legacy torch.save blob, read with the same rules."""
        if not isinstance(blob, (bytes, bytearray)):
            raise _CorruptFile("a nested torch.save blob is not bytes")
        if self.depth >= MAX_NESTING:
            raise _CorruptFile("torch.save blobs nest too deeply")
        self.depth += 1
        try:
            file = io.BytesIO(blob)
            magic = self.unpickle(file)
            if magic != LEGACY_MAGIC:
                raise _CorruptFile("a nested torch.save blob lacks its magic number")
            return self.read_legacy_rest(file, len(blob))
        finally:
            self.depth -= 1

    def read_legacy_rest(self, file: BinaryIO, size: int) -> Any:
        """A legacy torch.save stream after its magic number."""
        if self.unpickle(file) != LEGACY_PROTOCOL:
            raise _CorruptFile("the torch.save protocol version is not 1001")
        sys_info = self.unpickle(file)
        if not isinstance(sys_info, dict):
            raise _CorruptFile("the torch.save system info is malformed")
        if sys_info.get("little_endian", True) is not True:
            raise _CorruptFile("the file was written on a big-endian machine")
        storages = _StorageTable(None, "", size)
        obj = self.unpickle(file, storages)
        storages.fill_legacy(file, self.unpickle(file))
        return obj

    def read_zip(self, path: Path) -> Any:
        with zipfile.ZipFile(path) as zf:
            pickles = [n for n in zf.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
            if len(pickles) != 1:
                raise _CorruptFile("the zip file holds no single data.pkl, so it is not a torch.save checkpoint")
            prefix = pickles[0][: -len("data.pkl")]
            if prefix + "byteorder" in zf.namelist() and zf.read(prefix + "byteorder").strip() != b"little":
                raise _CorruptFile("the checkpoint was written on a big-endian machine")
            storages = _StorageTable(zf, prefix, self.size)
            with zf.open(pickles[0]) as f:
                return self.unpickle(f, storages)

    def read_pickle(self, path: Path) -> tuple[Any, str]:
        """A plain pickle, or a legacy torch.save file (whose first pickle is the magic number)."""
        with open(path, "rb") as f:
            first = self.unpickle(f)
            if type(first) is int and first == LEGACY_MAGIC:
                return self.read_legacy_rest(f, self.size), "torch-legacy"
            return first, "pickle"


def _read_checked(path: Path) -> tuple[Any, str]:
    """(object, container) of any supported file; one-line StudioErrors for everything that goes wrong."""
    shown = _quote(path)
    if not path.is_file():
        raise StudioError(f"no network file at {shown}")
    if sys.byteorder != "little":
        raise StudioError("reading network files needs a little-endian machine")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        raise StudioError(f"cannot read {shown}: the file is empty")
    if len(head) < 2:
        raise StudioError(f"cannot read {shown}: the file is too short to be a network file")
    reader = _FileReader(size)
    try:
        if head.startswith(b"PK"):
            return reader.read_zip(path), "torch-zip"
        if head[0] == 0x80 and 2 <= head[1] <= 5:
            return reader.read_pickle(path)
    except _Refused as e:
        raise StudioError(f"refusing to load {shown}: {e}") from None
    except StudioError:
        raise
    except _CorruptFile as e:
        raise StudioError(f"cannot read {shown}: the file is corrupt ({e})") from None
    except (EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
        raise StudioError(f"cannot read {shown}: the file is truncated or corrupt ({_quote(e)})") from None
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError,
            RuntimeError, MemoryError, RecursionError, struct.error, UnicodeDecodeError, OSError) as e:
        raise StudioError(f"cannot read {shown}: the file is corrupt ({type(e).__name__}: {_quote(e)})") from None
    raise StudioError(f"cannot read {shown}: it is neither a network pickle nor a torch.save checkpoint")


def read_network_file(path: str | os.PathLike) -> dict:
    """Read a StyleGAN network file into plain data, running no code that the file names.

    NVIDIA pickles give their top-level dict ('G', 'D', 'G_ema', ...) with every module a
    ``PersistentModule``; torch.save checkpoints give their dict (rosinality: 'g_ema', 'latent_avg',
    and for train checkpoints also 'g', 'd', 'args' as an ``ArgsRecord``, optimiser states, 'ada_aug_p').
    """
    path = Path(path)
    obj, container = _read_checked(path)
    if not isinstance(obj, dict):
        raise StudioError(f"cannot use {_quote(path)}: it holds a {_quote(type(obj).__name__)}, not a dict of networks")
    if container == "pickle" and not isinstance(obj.get("G_ema"), PersistentModule):
        keys = ", ".join(_quote(k) for k in list(obj)[:12])
        raise StudioError(f"cannot use {_quote(path)}: the pickle holds no 'G_ema' network (its keys: {keys or 'none'})")
    return obj


def _is_rosinality_state(obj: Any) -> bool:
    return isinstance(obj, dict) and "input.input" in obj and "style.1.weight" in obj and "conv1.conv.weight" in obj


def network_kind(obj: dict) -> str:
    """'nvidia-stylegan2', 'nvidia-stylegan3' or 'rosinality-stylegan2', judged from the generator's content.

    NVIDIA pickles record bare class names ('Generator'), and a stylegan3 pickle holds a StyleGAN2
    discriminator, so the kind comes from the layout of ``G_ema.synthesis``: StyleGAN2 has blocks
    'b4', 'b8', ...; StyleGAN3 has a 'SynthesisInput' named 'input' and layers 'L0_<size>_<channels>', ...
    """
    g = obj.get("G_ema") if isinstance(obj, dict) else None
    if isinstance(g, PersistentModule):
        synthesis = g.modules.get("synthesis")
        names = set(synthesis.modules) if synthesis is not None else set()
        if synthesis is not None and g.short_name == "Generator":
            source = synthesis.modules.get("input")
            if source is not None and source.short_name == "SynthesisInput" and "L0" in {n.split("_")[0] for n in names}:
                return "nvidia-stylegan3"
            if "b4" in names:
                return "nvidia-stylegan2"
        raise StudioError(f"the generator {_quote(g.class_name)} is neither a StyleGAN2 nor a StyleGAN3 generator")
    if isinstance(obj, dict) and (_is_rosinality_state(obj.get("g_ema")) or _is_rosinality_state(obj)):
        return "rosinality-stylegan2"
    raise StudioError("the file holds no StyleGAN generator ('G_ema' network or rosinality 'g_ema' weights)")


def rosinality_weights(obj: dict) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """(g_ema state_dict, latent_avg or None) of a rosinality checkpoint (or of a bare g_ema state_dict)."""
    state = obj.get("g_ema") if _is_rosinality_state(obj.get("g_ema")) else obj
    if not _is_rosinality_state(state):
        raise StudioError("the checkpoint holds no rosinality 'g_ema' weights")
    avg = obj.get("latent_avg", obj.get("dlatent_avg")) if state is not obj else None
    if avg is not None and not isinstance(avg, torch.Tensor):
        raise StudioError("the checkpoint's 'latent_avg' is not a tensor")
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    return tensors, avg

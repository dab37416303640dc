"""StyleGAN2 generators trained by this project: their folder format and what export needs.

Scope: a generator made by ``StyleGAN2Generator.create`` (see ``sg2.py``) is stored as a folder of two
files, ``config.json`` (the marker ``latent-studio-stylegan2-v2``, every ``StyleGAN2Settings`` field,
plus the caller's own top-level entries such as ``labels`` and ``default_settings``) and
``model.safetensors`` (the generator's ``state_dict`` in float32, fixed noise and truncation centres
included). ``save_sg2_folder`` / ``load_sg2_folder`` write and read it, ``is_sg2_folder`` recognises it,
``read_sg2_extra`` gives the caller's entries back. ``exact_w_averages`` replaces the centres tracked
during training by exact means, before export. Every problem with a folder is a one-line StudioError.

(Network files converted from NVIDIA or rosinality checkpoints have their own folder format, in
``folder.py``; this one records settings, not a pickle's module tree.)
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, fields
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pipelines.common import read_json_config
from pipelines.stylegan_nets.sg2 import StyleGAN2Generator, StyleGAN2Settings, _load_exactly, one_hot_classes
from studio.errors import StudioError

ARCHITECTURE = "latent-studio-stylegan2-v2"  # the marker in config.json: "this folder is a created StyleGAN2"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
SETTINGS_FIELDS = tuple(f.name for f in fields(StyleGAN2Settings))


def _one_line(reason: object) -> str:
    return " ".join(str(reason).split())


def _atomic_write(path: Path, write) -> None:
    """Write through a temp file in the same folder, fsync, then rename over ``path``."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_sg2_folder(G: StyleGAN2Generator, folder: str | os.PathLike, extra: dict | None = None) -> Path:
    """Write ``config.json`` and ``model.safetensors`` of a created generator into ``folder``.

    ``extra``: more top-level config entries (e.g. ``labels``, ``default_settings``), given back by
    ``read_sg2_extra``. Each file is replaced atomically, the weights first; other files in the folder
    (a model card, sample pictures) are left alone.
    """
    if not isinstance(G, StyleGAN2Generator) or G.settings is None:
        raise StudioError("only a generator made by StyleGAN2Generator.create (or loaded from such a folder) "
                          "can be saved as a StyleGAN2 folder; network files convert with stylegan_nets.folder")
    extra = dict(extra or {})
    clash = sorted(set(extra) & {"architecture", *SETTINGS_FIELDS})
    if clash:
        raise StudioError(f"extra config entries may not reuse the names of the generator's settings: {clash}")
    config = {"architecture": ARCHITECTURE, **asdict(G.settings), **extra}
    try:
        text = json.dumps(config, indent=2, allow_nan=False) + "\n"
    except (TypeError, ValueError) as exc:
        raise StudioError(f"the extra config entries cannot be written as JSON: {_one_line(exc)}") from None
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in G.state_dict().items()}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _atomic_write(folder / WEIGHTS_NAME, lambda p: save_file(state, str(p), metadata={"architecture": ARCHITECTURE}))
    _atomic_write(folder / CONFIG_NAME, lambda p: p.write_text(text, encoding="utf-8"))
    return folder


def _read_config(folder: Path) -> dict:
    path = folder / CONFIG_NAME
    data = read_json_config(path, "StyleGAN2")
    if data.get("architecture") != ARCHITECTURE:
        found = data.get("architecture")
        raise StudioError(f"{path} is not a {ARCHITECTURE} config (architecture={found!r})")
    return data


def is_sg2_folder(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds a config.json with this format's marker (the weights are not checked)."""
    try:
        _read_config(Path(folder))
    except StudioError:
        return False
    return True


def read_sg2_settings(folder: str | os.PathLike) -> StyleGAN2Settings:
    """The ``StyleGAN2Settings`` recorded in ``folder/config.json``; every field must be there."""
    data = _read_config(Path(folder))
    missing = [name for name in SETTINGS_FIELDS if name not in data]
    if missing:
        raise StudioError(f"{Path(folder) / CONFIG_NAME} lacks the StyleGAN2 settings {missing}")
    return StyleGAN2Settings(**{name: data[name] for name in SETTINGS_FIELDS})


def read_sg2_extra(folder: str | os.PathLike) -> dict:
    """The entries of ``folder/config.json`` that are not settings (e.g. ``labels``, ``default_settings``)."""
    data = _read_config(Path(folder))
    return {k: v for k, v in data.items() if k not in {"architecture", *SETTINGS_FIELDS}}


def load_sg2_folder(folder: str | os.PathLike) -> StyleGAN2Generator:
    """The generator of a folder written by ``save_sg2_folder``, in eval mode with gradients off.

    The tensors must match the layers the settings describe one to one, names and shapes.
    """
    folder = Path(folder)
    settings = read_sg2_settings(folder)
    path = folder / WEIGHTS_NAME
    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError, ValueError) as exc:
        raise StudioError(f"cannot read the StyleGAN2 weights {path}: {_one_line(exc)}") from None
    bad = sorted(k for k, v in tensors.items() if not v.is_floating_point())
    if bad:
        raise StudioError(f"{path}: tensors {bad[:4]} are not floating point")
    G = StyleGAN2Generator.from_settings(settings)
    _load_exactly(G, tensors, f"the tensors of {path}")
    return G.eval().requires_grad_(False)


@torch.no_grad()
def exact_w_averages(G: StyleGAN2Generator, per_class: int = 4096, seed: int = 1) -> None:
    """Set the truncation centres to exact means: each class's over ``per_class`` fresh z, ``w_avg``
    their mean (a conditional generator), or the mean w of ``per_class`` z (an unconditional one)."""
    m = G.mapping
    gen = torch.Generator().manual_seed(seed)
    dev = m.w_avg.device
    if not G.c_dim:
        m.w_avg.copy_(m.w_of(torch.randn(per_class, G.z_dim, generator=gen).to(dev)).mean(0))
        return
    if not m.has_class_centres:
        raise StudioError("this conditional generator keeps no per-class centres")
    for k in range(G.c_dim):
        z = torch.randn(per_class, G.z_dim, generator=gen).to(dev)
        c = one_hot_classes(torch.full((per_class,), k), G.c_dim).to(dev)
        m.w_avg_class[k] = m.w_of(z, c).mean(0)
    m.w_avg.copy_(m.w_avg_class.mean(0))

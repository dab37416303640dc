"""Small helpers the adapters share: weight fingerprints, pixel conversion, settings grouping."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from studio.checks import check_seed, check_text
from studio.errors import StudioError, printable
from studio.lazy import np, torch

if TYPE_CHECKING:
    from torch import nn


def weight_sample(module: nn.Module, n_values: int = 512) -> bytes:
    """A few KB of a module's weights (first and last tensors), as fp16 bytes.

    fp16 so that fp32 and fp16 copies of the same weights give the same fingerprint.
    """
    params = [p for p in module.parameters() if p.numel()]
    picked = [params[0], params[-1]] if params else []
    return b"".join(
        p.detach().flatten()[:n_values].to("cpu", torch.float16).numpy().tobytes() for p in picked
    )


def public_config(config: Any, keys: list[str] | None = None) -> dict:
    """A component's config as a plain dict, without private (``_``) entries; only ``keys`` if given."""
    data = dict(config.to_dict() if hasattr(config, "to_dict") else config)
    if keys is not None:
        return {k: data.get(k) for k in keys}
    return {k: v for k, v in data.items() if not k.startswith("_")}


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """[N, 3, H, W] in [-1, 1] -> RGB uint8 pictures."""
    pixels = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [Image.fromarray(a) for a in pixels.permute(0, 2, 3, 1).cpu().numpy()]


def from_pil(image: Image.Image) -> torch.Tensor:
    """An RGB picture -> [3, H, W] float32 in [-1, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32)  # [H, W, 3]
    return torch.from_numpy(array).permute(2, 0, 1) / 127.5 - 1


def batches(keys: list[dict], max_batch: int):
    """Yield (key, indices): items with identical keys (e.g. render settings), at most max_batch per batch."""
    groups: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(json.dumps(key, sort_keys=True, default=str), []).append(i)
    for key, indices in groups.items():
        for start in range(0, len(indices), max_batch):
            yield json.loads(key), indices[start : start + max_batch]


ANSI_STYLE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # terminal colours and bold, as torch's messages use


def one_line(exc: BaseException | str, limit: int = 300) -> str:
    """A library's message (diffusers, transformers, torch, huggingface_hub) as one short line: its first
    meaningful line, since what follows is advice, download chatter or a listing; a first line that only
    leads in (ends with ':') keeps the line after it. Control characters left are shown escaped."""
    lines = [" ".join(line.split()) for line in ANSI_STYLE.sub("", str(exc)).splitlines()]
    lines = [line for line in lines if line] or [type(exc).__name__ if isinstance(exc, BaseException) else ""]
    text = lines[0]
    if text.endswith(":") and len(lines) > 1:
        text = f"{text} {lines[1]}"
    return printable(text, limit)


MAX_CONFIG_BYTES = 64 << 20  # a config.json with a conditional model's vocabulary is a few hundred KiB


def read_json_config(path: Path, what: str) -> dict:
    """The JSON object in a model folder's config file; one StudioError line for anything else
    (unreadable, not UTF-8, not JSON, absurdly nested or large, integers of thousands of digits)."""
    shown = printable(path)
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ValueError(f"it is larger than {MAX_CONFIG_BYTES >> 20} MiB")
        data = json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:
        raise StudioError(f"cannot read the {what} config {shown}: it nests too deeply") from None
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise StudioError(f"cannot read the {what} config {shown}: {printable(exc, 200)}") from None
    if not isinstance(data, dict):
        raise StudioError(f"{shown} is not a {what} config (it holds a {type(data).__name__})")
    return data


MAX_SAFETENSORS_HEADER = 100 << 20  # what the safetensors library itself reads at most


def safetensors_damage(path: Path) -> str | None:
    """Why a weights file cannot be a whole safetensors file (not one, or cut short), from its framing
    alone (its first bytes and its size, never its tensors); None when the framing holds."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            start = f.read(8)
            n = int.from_bytes(start, "little") if len(start) == 8 else 0
            if len(start) < 8 or n > MAX_SAFETENSORS_HEADER or 8 + n > size:
                return "it is not a safetensors file, or it is truncated"
            header = json.loads(f.read(n))
    except OSError as exc:
        return f"it cannot be read ({exc.strerror or type(exc).__name__})"
    except (ValueError, RecursionError):  # not UTF-8, not JSON, or absurdly nested
        return "it is not a safetensors file (its header is not JSON)"
    try:
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (AttributeError, TypeError, KeyError, IndexError, ValueError):
        return "it is not a safetensors file (its header does not describe tensors)"
    if 8 + n + end != size:
        return f"it is truncated or damaged: its header describes {8 + n + end} bytes, the file has {size}"
    return None


def check_setting(settings: dict, name: str, low: float, high: float, integer: bool = False) -> None:
    """Refuse a setting that is not a number in [low, high]."""
    value = settings.get(name)
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not low <= value <= high:
        what = "an integer" if integer else "a number"
        raise StudioError(f"setting {name}={value!r} must be {what} between {low} and {high}")


def check_prompts(seeds: list[int], prompts: list[str] | None) -> list[str]:
    """One prompt per seed ("" when none are given); a single prompt pairs with every seed."""
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, (list, tuple)) or not seeds:
        raise StudioError(f"sampling needs a list of at least one seed, got {seeds!r}")
    for seed in seeds:
        check_seed(seed)
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, (list, tuple, type(None))):
        raise StudioError(f"prompts must be a list of text (one, or one per seed), got {prompts!r}")
    prompts = [""] if prompts is None else [check_text(p, "prompt") for p in prompts]
    if len(prompts) == 1:
        prompts = prompts * len(seeds)
    if len(prompts) != len(seeds):
        raise StudioError(
            f"got {len(prompts)} prompts for {len(seeds)} seeds; give one prompt, or one per seed"
        )
    return prompts


def offline_error(spec: str, exc: Exception) -> StudioError:
    """One sentence for a model that cannot be found locally: an invalid name, or a hub id not in the cache."""
    if type(exc).__name__ == "HFValidationError":
        return StudioError(
            f"unknown model {spec!r}: not a built-in model, an existing folder or checkpoint file, "
            "nor a valid Hugging Face repo id"
        )
    return StudioError(
        f"model {spec!r} is not available offline: not in the local Hugging Face cache and the hub "
        f"cannot be reached ({type(exc).__name__})"
    )


def check_pair(value: Any, name: str) -> list[int]:
    """A setting that is two whole numbers (an SDXL size or crop), as a list."""
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 16384 for v in value)):
        raise StudioError(f"setting {name}={str(value)[:80]} must be two whole numbers from 0 to 16384")
    return [int(v) for v in value]

"""The contract every model adapter keeps, and the device/dtype choice they share."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch
from PIL import Image

from studio.checks import check_text
from studio.errors import StudioError
from studio.objects import Generation, Latent
from studio.space import Space

Progress = Callable[[int, int], None]  # (done, total) steps


DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def pick_device(device: str | None = None, dtype: str | None = None) -> tuple[torch.device, torch.dtype]:
    """CUDA with fp16 (bf16 if asked) when present, CPU fp32 otherwise; an unknown or absent device is refused."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(check_text(device, "device"))
    except RuntimeError:  # a malformed name; torch's message would list every device type it knows
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda", "mps"):
        raise StudioError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps")
    if (dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count()) or (
            dev.type == "mps" and not torch.backends.mps.is_available()):
        raise StudioError(f"device {device!r} is not available on this machine; use cpu")
    if dtype is not None and (not isinstance(dtype, str) or dtype not in DTYPES):
        raise StudioError(f"unknown dtype {dtype!r}; use {', '.join(DTYPES)}")
    dt = DTYPES[dtype] if dtype else (torch.float16 if dev.type == "cuda" else torch.float32)
    return dev, dt


def cpu_generator(seed: int) -> torch.Generator:
    """Seeds draw on a CPU generator, one per item, so a seed means the same latent on every device."""
    return torch.Generator("cpu").manual_seed(int(seed))


class PipelineAdapter(ABC):
    """One model family behind one small contract.

    ``sample`` draws new generations from seeds (and prompts), ``render`` turns generations
    into pictures in batches, ``encode``/``decode`` cross between pictures and latents
    where the model has a way to.
    """

    spec: str  # the model spec as the user named it; stored in every generation
    family: str  # "diffusion" or "gan"

    @abstractmethod
    def spaces(self) -> dict[str, Space]:
        """Role -> space of the generations this model samples at its default settings."""

    @abstractmethod
    def default_settings(self) -> dict[str, Any]:
        """Render settings used when the caller gives none (steps, guidance, size, truncation...)."""

    @abstractmethod
    def sample(self, seeds: list[int], prompts: list[str] | None = None, **settings: Any) -> list[Generation]:
        """One generation per seed (prompts pair with seeds); nothing is rendered."""

    @abstractmethod
    def render(self, generations: list[Generation], progress: Progress | None = None) -> list[Image.Image]:
        """Pictures for the generations, computed in batches; same input, same device -> same pixels."""

    def encode(self, images: list[Image.Image]) -> list[Latent]:
        raise StudioError(f"model {self.spec} cannot encode images")

    def decode(self, latents: list[Latent]) -> list[Image.Image]:
        raise StudioError(f"model {self.spec} cannot decode latents")

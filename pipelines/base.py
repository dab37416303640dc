"""The contract every model adapter keeps, and the device/dtype choice they share."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, TypeVar

from PIL import Image

from studio.checks import check_text
from studio.errors import StudioError
from studio.lazy import torch
from studio.objects import Generation, Latent
from studio.space import Space

Progress = Callable[[int, int], None]  # (done, total) steps
C = TypeVar("C")


DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}  # names -> torch dtype names


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
    dt = getattr(torch, DTYPES[dtype]) if dtype else (torch.float16 if dev.type == "cuda" else torch.float32)
    return dev, dt


MAX_BATCH = 64  # items per denoiser call at most, however much memory is free
ACTIVATION_FACTOR = 128  # activation bytes per item ~ cells x widest channels x dtype bytes x this (see below)


def free_memory(device: torch.device) -> int | None:
    """Bytes free on ``device`` now: CUDA's own count, the system's available memory for the CPU (None if unknown)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def fitting_batch(device: torch.device, cells: int, width: int, dtype: torch.dtype, override: int | None = None) -> int:
    """How many items one call may take: ``override`` if given, else as many as half the free memory holds.

    An item's activations are estimated as its spatial ``cells`` x the network's widest ``width`` x
    the dtype's bytes x ``ACTIVATION_FACTOR``, a margin over what a render measures: emoji-diffusion
    (256 latent cells, widest 128 channels, fp32, guidance doubling the batch) grew the process's peak
    by 6.7 MiB per item over a batch of 32 on the CPU, where the estimate says 16 MiB.
    """
    if override is not None:
        return override
    free = free_memory(device)
    if free is None:
        return 8
    per_item = max(1, cells * width * dtype.itemsize * ACTIVATION_FACTOR)
    return max(1, min(MAX_BATCH, free // 2 // per_item))


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
    batch_override: int | None = None  # items per model call when set; else sized to the free memory

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
        """Pictures -> latents; only a ``VaeCoder`` can."""
        raise StudioError(f"model {self.spec} cannot encode images: it has no VAE")

    def decode(self, latents: list[Latent]) -> list[Image.Image]:
        """Latents -> pictures; only a ``VaeCoder`` can."""
        raise StudioError(f"model {self.spec} cannot decode latents: it has no VAE")


# -- optional capabilities ---------------------------------------------------------------------------
# An adapter declares what it can do beyond sample/render by inheriting these; a caller checks
# one with ``require`` (one message when the model lacks it), never by probing attributes.


class Capability:
    """Base of the optional capabilities; ``label`` names it in the message of a model without it."""

    label = "capability"


class TextConditioned(Capability):
    """Prompts become a ``text`` latent: the whole conditioning the denoiser needs, packed in ``text_space``."""

    label = "text encoder"
    text_space: Space

    @abstractmethod
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """[N, *text_space.shape] on the model's device: exactly what sampling stores for these prompts."""


class VaeCoder(Capability):
    """Pictures to and from a VAE latent space (``scale`` pixels per latent cell)."""

    label = "VAE"
    scale: int

    @abstractmethod
    def vae_space(self, height: int, width: int) -> Space:
        """Unscaled VAE latents of a height x width picture."""

    @abstractmethod
    def encode(self, images: list[Image.Image]) -> list[Latent]:
        """Pictures -> unscaled VAE latents."""

    @abstractmethod
    def decode(self, latents: list[Latent]) -> list[Image.Image]:
        """VAE latents -> pictures."""


class Invertible(Capability):
    """A picture -> a generation that re-renders it (diffusion inversion)."""

    label = "inversion"

    @abstractmethod
    def invert(self, image: Image.Image, prompt: str = "", steps: int = 100, refine: int = 3) -> Generation:
        """The noise (and text) that re-render ``image`` with the recorded deterministic scheduler."""


class SDEditable(Capability):
    """Renders a generation from an ``init`` picture latent noised to the ``sdedit`` setting (SDEdit)."""

    label = "SDEdit"

    @abstractmethod
    def sdedit_init(self, generation: Generation) -> Latent:
        """The unscaled VAE latent of ``generation``'s own picture: the init an SDEdit edit starts from."""


class HSpace(Capability):
    """The denoiser's bottleneck activations (Kwon et al.'s h-space), probed and shifted."""

    label = "h-space (a diffusion denoiser's bottleneck or middle block)"
    hspace_stride: int

    @abstractmethod
    def hspace_space(self, height: int | None = None, width: int | None = None) -> Space:
        """The bottleneck's space for a height x width picture."""

    @abstractmethod
    def hspace_of(self, generations: list[Generation], steps: int) -> list[Latent]:
        """Each generation's mean bottleneck activation over its first ``steps`` steps."""


class GanW(Capability):
    """A GAN's intermediate latent w: sampled for discovery, and found for a picture by projection."""

    label = "w space (a StyleGAN mapping network)"

    @abstractmethod
    def sample_w(self, n: int, seed: int = 0) -> torch.Tensor:
        """n untruncated w from seeded z, [n, w_dim] on the CPU."""

    @abstractmethod
    def project(self, image: Image.Image, steps: int = 300, progress: Progress | None = None,
                space: str = "w", **options: Any) -> Generation:
        """Optimise a w (or a w+) that re-renders ``image``."""

    @abstractmethod
    def to_wplus(self, generation: Generation) -> Generation:
        """The same picture as a generation in w+, one w per synthesis input (z mapped, w repeated)."""

    @abstractmethod
    def style_weights(self, layers: range | None = None) -> torch.Tensor:
        """The style affines of the synthesis inputs in ``layers`` (default all), stacked [S, w_dim]: SeFa's A."""


def require(adapter: PipelineAdapter, capability: type[C], purpose: str) -> C:
    """``adapter`` as having ``capability``, or one StudioError saying the model cannot do ``purpose``."""
    if not isinstance(adapter, capability):
        raise StudioError(f"model {adapter.spec} cannot {purpose}: it has no {capability.label}")
    return adapter  # type: ignore[return-value]

"""Model specs -> loaded adapters: built-in names, local folders, checkpoint files, hub ids (offline by default)."""

from __future__ import annotations

import difflib
from pathlib import Path

from pipelines.base import PipelineAdapter
from studio.errors import StudioError

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")  # original-layout single-file checkpoints
NETWORK_SUFFIXES = (".pkl", ".pt", ".pth")  # StyleGAN network pickles and checkpoints (read without running code)
MAX_SPEC = 1024  # characters: longer than any folder path or hub id
EMBEDDED = Path(__file__).parent / "embedded"  # where the shipped emoji models live
BUILTIN = {
    "emoji-diffusion": "small text-to-image diffusion model trained on openly licensed emoji art (embedded)",
    "emoji-gan": "small StyleGAN-style generator trained on openly licensed emoji art (embedded)",
    "tiny-sd": "tiny random-weight Stable Diffusion pipeline for tests (64x64, no download)",
    "tiny-sdxl": "tiny random-weight SDXL pipeline for tests (two text encoders, pooled text, 64x64)",
    "tiny-lcm": "tiny random-weight latent consistency model for tests (guidance-embedding UNet, 64x64)",
    "tiny-sd3": "tiny random-weight SD 3 pipeline for tests (CLIP-L + CLIP-G + T5, flow matching, 64x64)",
    "tiny-flux": "tiny random-weight Flux.1-dev pipeline for tests (T5 + CLIP, distilled guidance, 64x64)",
    "tiny-flux-schnell": "tiny random-weight Flux.1-schnell pipeline for tests (no guidance embedding, 64x64)",
    "tiny-pixart": "tiny random-weight PixArt-Sigma pipeline for tests (T5 with a mask, DiT, 64x64)",
    "tiny-gan": "tiny random-weight StyleGAN-style generator for tests (32x32, no download)",
}


OTHER_SPECS = [  # what a spec can name besides the built-in models, as `studio models` says it
    ("FOLDER | HUB-ID", "a diffusers pipeline: SD 1.x/2.x, SDXL and SDXL-Turbo, LCM, SD 3/3.5, Flux.1 (dev, schnell) "
                        "or PixArt-Sigma"),
    ("FILE.safetensors | .ckpt", "an original-layout SD 1.x, SD 2.x or SDXL base checkpoint (read offline)"),
    ("FOLDER", "a studio GAN: config.json + model.safetensors (its own, or a StyleGAN network 'studio convert' "
               "wrote)"),
    ("FILE.pkl | .pt | .pth", "an NVIDIA StyleGAN2/2-ADA/3 network pickle or a rosinality StyleGAN2 checkpoint "
                              "(read without running code from it)"),
]
TINY_DIFFUSION = {  # name -> (builder in pipelines.tiny, its arguments)
    "tiny-sd": ("build_tiny_sd", {}),
    "tiny-sdxl": ("build_tiny_sdxl", {}),
    "tiny-lcm": ("build_tiny_lcm", {}),
    "tiny-sd3": ("build_tiny_sd3", {}),
    "tiny-flux": ("build_tiny_flux", {}),
    "tiny-flux-schnell": ("build_tiny_flux", {"guidance_embeds": False}),
    "tiny-pixart": ("build_tiny_pixart", {}),
}


def list_models() -> list[tuple[str, str]]:
    """The models the studio knows by name, with one-line descriptions."""
    return list(BUILTIN.items())


def folder_kind(folder: Path) -> str | None:
    """'diffusion' for a diffusers folder, 'gan' for our StyleGAN folder, None otherwise."""
    if (folder / "model_index.json").is_file():
        return "diffusion"
    from pipelines.stylegan import ARCHITECTURE, read_config_json
    from pipelines.stylegan_nets import folder as network_folder
    from pipelines.stylegan_nets import training

    gans = (ARCHITECTURE, network_folder.FOLDER_ARCHITECTURE, training.ARCHITECTURE)
    if not (folder / "config.json").is_file():
        return None
    # a config.json that cannot be read is one error about it, not "neither kind of model"
    return "gan" if read_config_json(folder).get("architecture") in gans else None


def _load_folder(folder: Path, spec: str, device: str | None, dtype: str | None) -> PipelineAdapter:
    kind = folder_kind(folder)
    if kind == "diffusion":
        from pipelines.diffusion import DiffusionAdapter

        return DiffusionAdapter.from_pretrained(folder, device, dtype, spec=spec)
    if kind == "gan":
        from pipelines.gan import GanAdapter

        return GanAdapter.from_folder(folder, spec=spec, device=device, dtype=dtype)
    raise StudioError(
        f"folder {str(folder)!r} holds neither a diffusers model (model_index.json) nor a studio GAN (config.json)"
    )


def _load_hub(spec: str, device: str | None, dtype: str | None, download: bool) -> PipelineAdapter:
    """A hub id: find its snapshot in the local cache (or download it if allowed), then load by content."""
    from huggingface_hub import snapshot_download

    from pipelines.common import offline_error

    if download:  # let diffusers pick the files it needs; fall back to a GAN repo
        from pipelines.diffusion import DiffusionAdapter

        try:
            return DiffusionAdapter.from_pretrained(spec, device, dtype, download=True)
        except StudioError:
            from pipelines.gan import GanAdapter

            return GanAdapter.from_pretrained(spec, download=True, device=device, dtype=dtype)
    try:
        folder = Path(snapshot_download(spec, local_files_only=True))
    except Exception as exc:  # not cached, or not even a valid repo id: no network wait either way
        raise offline_error(spec, exc) from exc
    if folder_kind(folder) == "diffusion":  # by id, so diffusers resolves the snapshot's files itself
        from pipelines.diffusion import DiffusionAdapter

        return DiffusionAdapter.from_pretrained(spec, device, dtype)
    return _load_folder(folder, spec, device, dtype)


def load_adapter(
    spec: str, device: str | None = None, dtype: str | None = None, download: bool = False
) -> PipelineAdapter:
    """Turn a model spec into a loaded adapter: a built-in name, a folder, a .safetensors/.ckpt file or a hub id.

    Hub ids load from the local Hugging Face cache only, unless ``download`` is true.
    """
    if spec in TINY_DIFFUSION:
        from pipelines import tiny
        from pipelines.diffusion import DiffusionAdapter

        builder, kwargs = TINY_DIFFUSION[spec]
        return DiffusionAdapter(getattr(tiny, builder)(**kwargs), spec, device, dtype)
    if spec == "tiny-gan":
        from pipelines.tiny import build_tiny_gan

        return build_tiny_gan(device, dtype)
    if spec in ("emoji-diffusion", "emoji-gan"):
        folder = EMBEDDED / spec
        if not folder.is_dir():
            raise StudioError(
                f"the embedded weights of {spec!r} are not installed (expected the folder {folder})"
            )
        return _load_folder(folder, spec, device, dtype)
    if not isinstance(spec, str) or not spec.strip() or len(spec) > MAX_SPEC:
        shown = spec if not isinstance(spec, str) or len(spec) <= 60 else spec[:57] + "..."
        raise StudioError(f"{shown!r} is not a model spec: give a built-in name, a folder, a checkpoint file "
                          f"or a hub id (at most {MAX_SPEC} characters)")
    path = Path(spec).expanduser()
    try:
        is_dir, is_file = path.is_dir(), path.is_file()
    except OSError as exc:  # e.g. a path component longer than the file system allows
        raise StudioError(f"model spec {spec[:60]!r}... is not a usable path: {exc.strerror}") from None
    if is_dir or is_file:  # stored resolved, so a generation renders from any working folder
        spec = resolved_spec(spec)
    if is_dir:
        return _load_folder(Path(spec), spec, device, dtype)
    if is_file and path.suffix.lower() in CHECKPOINT_SUFFIXES:
        from pipelines.diffusion import DiffusionAdapter

        return DiffusionAdapter.from_single_file(spec, device, dtype, spec=spec)
    if is_file and path.suffix.lower() in NETWORK_SUFFIXES:
        from pipelines.gan import GanAdapter

        return GanAdapter.from_network_file(spec, spec=spec, device=device, dtype=dtype)
    if is_file:
        raise StudioError(f"{spec!r} is a file but not a model the studio reads: give a diffusers or studio GAN "
                          f"folder, a {' or '.join(CHECKPOINT_SUFFIXES)} checkpoint or a StyleGAN "
                          f"{' or '.join(NETWORK_SUFFIXES)} network")
    if path.suffix.lower() in CHECKPOINT_SUFFIXES + NETWORK_SUFFIXES:
        raise StudioError(f"model file {spec!r} does not exist")
    if spec.startswith((".", "/", "~")) or "\\" in spec:
        raise StudioError(f"model folder {spec!r} does not exist")
    near = nearest_builtin(spec)
    if near is not None:
        raise StudioError(f"unknown model {spec!r}; did you mean {near!r}? ('studio models' lists the built-in ones)")
    return _load_hub(spec, device, dtype, download)


def nearest_builtin(spec: str) -> str | None:
    """The built-in name a spec is a likely typo of (a hub id names its owner: 'owner/name' is never one)."""
    if "/" in spec:
        return None
    close = difflib.get_close_matches(spec.lower(), list(BUILTIN), n=1, cutoff=0.75)
    return close[0] if close else None


def local_kind(spec: str) -> str | None:
    """'diffusion' or 'gan' for a spec that names something on this machine (a built-in model that is
    installed, a model folder, a checkpoint file), read without loading it; None for anything else
    (a hub id, a typo), which only loading can tell."""
    if spec in TINY_DIFFUSION:
        return "diffusion"
    if spec == "tiny-gan":
        return "gan"
    if spec in ("emoji-diffusion", "emoji-gan"):
        return folder_kind(EMBEDDED / spec)
    if not isinstance(spec, str) or not spec.strip() or len(spec) > MAX_SPEC:
        return None
    path = Path(spec).expanduser()
    try:
        if path.is_dir():
            return folder_kind(path)
        if path.is_file() and path.suffix.lower() in CHECKPOINT_SUFFIXES:
            return "diffusion"
        if path.is_file() and path.suffix.lower() in NETWORK_SUFFIXES:
            return "gan"
    except (OSError, StudioError):  # an unreadable config is for loading to report
        pass
    return None


def resolved_spec(spec: str) -> str:
    """A folder or file spec as the absolute path it names (built-in names and hub ids are left as they are)."""
    if not isinstance(spec, str) or spec in BUILTIN:  # a non-text spec is refused by load_adapter
        return spec
    path = Path(spec).expanduser()
    try:
        return str(path.resolve()) if path.exists() else spec
    except (OSError, RuntimeError):
        return spec

"""Loader for the emoji data set that ``scripts/prepare_emoji.py`` builds.

The data set lives outside the repository, in a cache folder:

* ``--cache DIR`` / ``cache=`` argument, else
* ``$LATENT_STUDIO_DATA`` (the emoji cache folder itself), else
* ``$XDG_CACHE_HOME/latent-studio/emoji`` (``~/.cache/latent-studio/emoji``).

It holds ``emoji64.npz`` (``images``: uint8 ``[N, 64, 64, 3]``, RGB on white) and
``labels.json`` (one dict per image, same order). Use::

    from emoji_data import load_emoji, CATEGORIES, STYLES
    images, labels = load_emoji(split="train", size=32)

This module only needs numpy and pillow, so it can be imported from any training script
(put ``scripts/`` on ``sys.path`` or run the script from there).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from pipelines.emoji_labels import CATEGORIES, STYLES, category_phrase  # noqa: F401  (the class order of every model)

# One prompt per category: the rows of the diffusion model's sample grids (training and model card).
GRID_PROMPTS = [
    "grinning face, smileys and emotion",
    "woman, people and body",
    "cat face, animals and nature",
    "red apple, food and drink",
    "airplane, travel and places",
    "soccer ball, activities",
    "light bulb, objects",
    "no entry sign, symbols",
    "japan flag, flags",
]

SKIN_TONES: list[str] = ["light", "medium-light", "medium", "medium-dark", "dark"]
SPLITS: tuple[str, ...] = ("train", "heldout", "all")

IMAGES_FILE = "emoji64.npz"
LABELS_FILE = "labels.json"
NATIVE_SIZE = 64


class EmojiDataMissing(FileNotFoundError):
    """The prepared data set is not in the cache folder."""


def default_cache() -> Path:
    """The emoji cache folder: ``$LATENT_STUDIO_DATA`` or ``~/.cache/latent-studio/emoji``."""
    env = os.environ.get("LATENT_STUDIO_DATA")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "latent-studio" / "emoji"


def resolve_cache(cache: str | os.PathLike | None = None) -> Path:
    return Path(cache).expanduser() if cache else default_cache()


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Resize uint8 ``[N, H, W, 3]`` images to ``size`` px (box filter when it divides evenly)."""
    n, h, w, c = images.shape
    if size == h and size == w:
        return images
    if h == w and h % size == 0:
        f = h // size
        pooled = images.reshape(n, size, f, size, f, c).astype(np.float32).mean(axis=(2, 4))
        return np.clip(np.rint(pooled), 0, 255).astype(np.uint8)
    from PIL import Image

    out = np.empty((n, size, size, c), dtype=np.uint8)
    for i in range(n):
        out[i] = np.asarray(Image.fromarray(images[i]).resize((size, size), Image.Resampling.LANCZOS))
    return out


def load_emoji(
    cache: str | os.PathLike | None = None, split: str = "train", size: int = NATIVE_SIZE
) -> tuple[np.ndarray, list[dict]]:
    """Images and labels of one split.

    Returns ``(images, labels)``: uint8 ``[N, size, size, 3]`` RGB on a white background and
    one dict per image with ``name, caption, category, subcategory, style, skin_tone, split,
    unified``. ``split`` is ``"train"``, ``"heldout"`` (about 10% of the emoji, every style and
    skin tone of each) or ``"all"``; ``size`` resizes from the native 64 px (e.g. 32).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    if int(size) < 1:
        raise ValueError(f"size must be a positive number of pixels, not {size!r}")
    folder = resolve_cache(cache)
    images_path, labels_path = folder / IMAGES_FILE, folder / LABELS_FILE
    if not images_path.is_file() or not labels_path.is_file():
        raise EmojiDataMissing(
            f"the emoji data set is not in {folder} (no {IMAGES_FILE} / {LABELS_FILE}); "
            f"build it first with: python scripts/prepare_emoji.py" + (f" --cache {folder}" if cache else "")
        )
    with np.load(images_path, allow_pickle=False) as npz:
        images = npz["images"]
    with open(labels_path, encoding="utf-8") as f:
        labels = json.load(f)["images"]
    if len(labels) != len(images):
        raise EmojiDataMissing(
            f"{folder} is inconsistent ({len(images)} images, {len(labels)} labels); "
            "rebuild it with: python scripts/prepare_emoji.py --force"
        )
    if split != "all":
        keep = np.array([lab["split"] == split for lab in labels], dtype=bool)
        images = images[keep]
        labels = [lab for lab, k in zip(labels, keep, strict=True) if k]
    return resize_images(images, int(size)), labels


def label_arrays(labels: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Class ids ``(category [N], style [N])`` (int64) in the order of ``CATEGORIES``/``STYLES``."""
    cat = np.array([CATEGORIES.index(lab["category"]) for lab in labels], dtype=np.int64)
    sty = np.array([STYLES.index(lab["style"]) for lab in labels], dtype=np.int64)
    return cat, sty

#!/usr/bin/env python
"""Build the emoji data set that the embedded models train on.

The art comes from two npm packages by iamcal (emoji-data, MIT-licensed metadata), fetched with
the ordinary npm client (``npm pack``), never from a hard-coded address:

* ``emoji-datasource-google``  -- Noto Emoji images, Apache-2.0, Google   -> style ``noto``
* ``emoji-datasource-twitter`` -- Twemoji images, CC-BY-4.0, Twitter Inc and other
  contributors                                                             -> style ``twemoji``

(The Apple and Facebook sets are not openly licensed and are never fetched.)

Every emoji of the nine real categories (the "Component" category -- skin-tone swatches and
hair parts -- is dropped), in both styles, plus each skin-tone variation as an extra image with
its tone label, is composited onto white at 64x64 RGB. Exact duplicates within a style are kept
once. The train / held-out split is by emoji, not by image: a hash of the emoji's unified code
point sequence puts about 10% of the emoji (with all their styles and skin tones) in
``heldout``; an emoji that a newer one obsoletes shares that one's split.

Output, in the cache folder (outside the repository):

* ``emoji64.npz``  -- ``images``: uint8 ``[N, 64, 64, 3]``
* ``labels.json``  -- ``{"images": [{name, caption, category, subcategory, style, skin_tone,
  split, unified, base, short_names}, ...], "sources": ...}`` in the same order
* ``contact.png``  -- 16x16 grid of random train images, for a look
* ``LICENSES/``    -- the packages' licence texts and an attribution note

Usage::

    python scripts/prepare_emoji.py [--cache DIR] [--version 16.0.0] [--force]

The cache folder is ``--cache``, else ``$LATENT_STUDIO_DATA``, else
``~/.cache/latent-studio/emoji``. Load the result with ``scripts/emoji_data.py``.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from emoji_data import CATEGORIES, IMAGES_FILE, LABELS_FILE, STYLES, category_phrase, resolve_cache  # noqa: E402

DEFAULT_VERSION = "16.0.0"  # pinned so that the data set (and its split) is reproducible
SIZE = 64
HELDOUT_PER_MILLE = 100  # ~10% of the emoji are held out

# style -> (npm package, image-set folder inside img/, flag in emoji.json, licence, copyright holder)
SOURCES = {
    "noto": ("emoji-datasource-google", "google", "has_img_google", "Apache-2.0", "Google"),
    "twemoji": (
        "emoji-datasource-twitter",
        "twitter",
        "has_img_twitter",
        "CC-BY-4.0",
        "Twitter Inc and other contributors",
    ),
}
assert list(SOURCES) == STYLES

SKIN_TONE_NAMES = {
    "1F3FB": "light",
    "1F3FC": "medium-light",
    "1F3FD": "medium",
    "1F3FE": "medium-dark",
    "1F3FF": "dark",
}


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


# --------------------------------------------------------------------------- fetching


def npm_pack(package: str, version: str, dest: Path) -> Path:
    """The package tarball in ``dest``, fetched with ``npm pack`` unless it is already there."""
    dest.mkdir(parents=True, exist_ok=True)
    if version != "latest":
        existing = dest / f"{package}-{version}.tgz"
        if existing.is_file():
            return existing
    npm = shutil.which("npm")
    if npm is None:
        fail("npm is needed to fetch the emoji packages (install Node.js / npm, e.g. apt-get install npm)")
    print(f"fetching {package}@{version} with npm pack ...", flush=True)
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        proc = subprocess.run(
            [npm, "pack", f"{package}@{version}", "--json", "--silent"],
            cwd=tmp,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            fail(f"npm pack {package}@{version} failed:\n{proc.stderr.strip() or proc.stdout.strip()}")
        tgz = sorted(Path(tmp).glob("*.tgz"))
        if len(tgz) != 1:
            fail(f"npm pack {package}@{version} did not leave one tarball in {tmp}")
        target = dest / tgz[0].name
        os.replace(tgz[0], target)
    return target


def extract(tgz: Path, image_set: str, dest: Path) -> Path:
    """Extract ``emoji.json``, the licence and the 64 px single images; returns the package root."""
    root = dest / tgz.name.removesuffix(".tgz")
    marker = root / ".complete"
    if marker.is_file():
        return root
    if root.exists():
        shutil.rmtree(root)
    wanted_prefix = f"package/img/{image_set}/{SIZE}/"
    with tarfile.open(tgz, "r:gz") as tar:
        members = [
            m
            for m in tar.getmembers()
            if m.isfile()
            and (
                m.name in ("package/emoji.json", "package/LICENSE", "package/package.json")
                or (m.name.startswith(wanted_prefix) and m.name.endswith(".png"))
            )
        ]
        if not any(m.name == "package/emoji.json" for m in members):
            fail(f"{tgz.name} has no package/emoji.json: not the expected emoji-datasource layout")
        if not any(m.name.startswith(wanted_prefix) for m in members):
            fail(f"{tgz.name} has no {wanted_prefix}*.png images: not the expected layout")
        tar.extractall(root, members=members, filter="data")
    marker.write_text("ok\n")
    return root


# --------------------------------------------------------------------------- building


def split_of(key: str) -> str:
    h = int.from_bytes(hashlib.sha256(key.upper().encode("ascii")).digest()[:8], "big")
    return "heldout" if h % 1000 < HELDOUT_PER_MILLE else "train"


def composite(path: Path) -> np.ndarray:
    """RGB uint8 [64, 64, 3]: the (RGBA) emoji over white."""
    with Image.open(path) as im:
        im = im.convert("RGBA")
        if im.size != (SIZE, SIZE):
            im = im.resize((SIZE, SIZE), Image.Resampling.LANCZOS)
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, im).convert("RGB"), dtype=np.uint8)


def caption(name: str, category: str, style: str, skin_tone: str | None) -> str:
    parts = [name]
    if skin_tone and skin_tone != "default":
        parts.append(f"{skin_tone} skin tone")
    parts += [category_phrase(category), f"{style} style"]
    return ", ".join(parts)


def tone_label(key: str) -> str:
    """``1F3FB`` -> ``light``; ``1F3FB-1F3FF`` (two people) -> ``light, dark``."""
    return ", ".join(SKIN_TONE_NAMES[k] for k in key.upper().split("-"))


def plan(meta: list[dict], roots: dict[str, Path]) -> list[tuple[Path, dict]]:
    """(image file, label) for every image to build, in a fixed order."""
    items: list[tuple[Path, dict]] = []
    dropped = collections.Counter()
    for e in sorted(meta, key=lambda e: (e["sort_order"], e["unified"])):
        category = e["category"]
        if category not in CATEGORIES:
            dropped[category] += 1
            continue
        base = e["unified"].upper()
        split = split_of(e.get("obsoleted_by") or base)
        name = " ".join(e["name"].lower().split())
        variants = [(None if not e.get("skin_variations") else "default", e)]
        for key, v in sorted((e.get("skin_variations") or {}).items()):
            variants.append((tone_label(key), v))
        for style, (_pkg, image_set, flag, _lic, _who) in SOURCES.items():
            for tone, v in variants:
                if not v.get(flag, False):
                    continue
                path = roots[style] / "package" / "img" / image_set / str(SIZE) / v["image"]
                if not path.is_file():
                    continue
                items.append(
                    (
                        path,
                        {
                            "name": name,
                            "caption": caption(name, category, style, tone),
                            "category": category,
                            "subcategory": e["subcategory"],
                            "style": style,
                            "skin_tone": tone,
                            "split": split,
                            "unified": v["unified"].upper(),
                            "base": base,
                            "short_names": list(e.get("short_names") or []),
                        },
                    )
                )
    if dropped:
        print("dropped categories: " + ", ".join(f"{k} ({n} emoji)" for k, n in sorted(dropped.items())))
    return items


def contact_sheet(images: np.ndarray, labels: list[dict], path: Path, seed: int = 0, grid: int = 16) -> None:
    train = np.array([i for i, lab in enumerate(labels) if lab["split"] == "train"])
    pick = np.random.default_rng(seed).choice(train, size=min(grid * grid, len(train)), replace=False)
    sheet = np.full((grid * SIZE, grid * SIZE, 3), 255, dtype=np.uint8)
    for k, i in enumerate(pick):
        r, c = divmod(k, grid)
        sheet[r * SIZE : (r + 1) * SIZE, c * SIZE : (c + 1) * SIZE] = images[i]
    Image.fromarray(sheet).save(path)


def atomic_write_bytes(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def summary(labels: list[dict]) -> str:
    lines = [f"{len(labels)} images of {len({lab['base'] for lab in labels})} emoji"]
    for split in ("train", "heldout"):
        sel = [lab for lab in labels if lab["split"] == split]
        lines.append(f"  {split:8s} {len(sel):6d} images, {len({lab['base'] for lab in sel}):5d} emoji")
    lines.append(
        "  per style:   " + ", ".join(f"{s} {sum(lab['style'] == s for lab in labels)}" for s in STYLES)
    )
    toned = sum(1 for lab in labels if lab["skin_tone"] not in (None, "default"))
    lines.append(f"  skin-tone variations: {toned}")
    lines.append(f"  {'category':20s} {'train':>6s} {'heldout':>8s} {'emoji':>6s}")
    for c in CATEGORIES:
        sel = [lab for lab in labels if lab["category"] == c]
        tr = sum(lab["split"] == "train" for lab in sel)
        lines.append(f"  {c:20s} {tr:6d} {len(sel) - tr:8d} {len({lab['base'] for lab in sel}):6d}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--cache", help="cache folder (default: $LATENT_STUDIO_DATA or ~/.cache/latent-studio/emoji)"
    )
    ap.add_argument(
        "--version", default=DEFAULT_VERSION, help=f"npm package version (default {DEFAULT_VERSION})"
    )
    ap.add_argument("--force", action="store_true", help="rebuild even if the data set is already there")
    ap.add_argument("--seed", type=int, default=0, help="seed for the contact sheet's pick")
    args = ap.parse_args(argv)

    cache = resolve_cache(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    images_path, labels_path = cache / IMAGES_FILE, cache / LABELS_FILE
    if images_path.is_file() and labels_path.is_file() and not args.force:
        labels = json.loads(labels_path.read_text(encoding="utf-8"))["images"]
        print(f"data set already in {cache} (use --force to rebuild)")
        print(summary(labels))
        return 0

    roots: dict[str, Path] = {}
    metas: dict[str, list[dict]] = {}
    versions: dict[str, str] = {}
    for style, (pkg, image_set, *_rest) in SOURCES.items():
        tgz = npm_pack(pkg, args.version, cache / "npm")
        roots[style] = extract(tgz, image_set, cache / "src")
        metas[style] = json.loads((roots[style] / "package" / "emoji.json").read_text(encoding="utf-8"))
        versions[style] = json.loads((roots[style] / "package" / "package.json").read_text())["version"]
    # Both packages carry the same emoji.json (the image flags cover every set); take the
    # union by code point so that nothing only one of them lists is lost.
    meta_by_code = {e["unified"]: e for style in STYLES for e in metas[style]}
    items = plan(list(meta_by_code.values()), roots)

    images = np.empty((len(items), SIZE, SIZE, 3), dtype=np.uint8)
    labels: list[dict] = []
    seen: set[tuple[str, bytes]] = set()
    dups = 0
    for path, lab in tqdm(items, desc="compositing", unit="img"):
        img = composite(path)
        key = (lab["style"], hashlib.sha1(img.tobytes()).digest())
        if key in seen:
            dups += 1
            continue
        seen.add(key)
        images[len(labels)] = img
        labels.append(lab)
    images = images[: len(labels)]
    if dups:
        print(f"skipped {dups} images identical to an earlier one of the same style")

    sources = {
        style: {
            "npm_package": pkg,
            "version": versions[style],
            "image_licence": lic,
            "image_copyright": who,
            "metadata_licence": "MIT (iamcal/emoji-data, Cal Henderson)",
        }
        for style, (pkg, _set, _flag, lic, who) in SOURCES.items()
    }
    doc = {
        "format": 1,
        "size": SIZE,
        "categories": CATEGORIES,
        "styles": STYLES,
        "heldout_rule": f"sha256(unified of the emoji, or of the one obsoleting it)[:8] % 1000 < {HELDOUT_PER_MILLE}",
        "sources": sources,
        "images": labels,
    }
    atomic_write_bytes(images_path, lambda f: np.savez_compressed(f, images=images))
    atomic_write_bytes(labels_path, lambda f: f.write(json.dumps(doc, ensure_ascii=False, indent=0).encode()))

    lic_dir = cache / "LICENSES"
    lic_dir.mkdir(exist_ok=True)
    for style, (pkg, *_r) in SOURCES.items():
        shutil.copyfile(roots[style] / "package" / "LICENSE", lic_dir / f"{pkg}.LICENSE.txt")
    (lic_dir / "ATTRIBUTION.txt").write_text(
        "Noto Emoji images: Copyright Google, Apache License 2.0 (style 'noto').\n"
        "Twemoji images: Copyright Twitter Inc and other contributors, CC-BY-4.0 (style 'twemoji').\n"
        "Obtained via the npm packages emoji-datasource-google and emoji-datasource-twitter\n"
        "(iamcal/emoji-data by Cal Henderson, MIT-licensed metadata).\n"
        "Images were composited onto white and kept at 64x64 px; no other changes.\n"
    )

    contact_sheet(images, labels, cache / "contact.png", seed=args.seed)
    print(
        f"wrote {images_path} ({images_path.stat().st_size / 1e6:.1f} MB), {labels_path}, {cache / 'contact.png'}"
    )
    print(summary(labels))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

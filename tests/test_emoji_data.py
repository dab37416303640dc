"""The emoji data loader (scripts/emoji_data.py) on a small cache made here."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from emoji_data import CATEGORIES, STYLES, EmojiDataMissing, label_arrays, load_emoji  # noqa: E402


def make_cache(folder: Path, n: int = 6) -> np.ndarray:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)
    labels = [
        {
            "name": f"thing {i}",
            "caption": f"thing {i}, objects, noto style",
            "category": CATEGORIES[i % len(CATEGORIES)],
            "subcategory": "x",
            "style": STYLES[i % 2],
            "skin_tone": None,
            "split": "heldout" if i % 3 == 0 else "train",
            "unified": f"1F{i:03X}",
            "base": f"1F{i:03X}",
        }
        for i in range(n)
    ]
    np.savez_compressed(folder / "emoji64.npz", images=images)
    (folder / "labels.json").write_text(json.dumps({"images": labels}))
    return images


def test_splits_and_sizes(tmp_path):
    images = make_cache(tmp_path)
    all_im, all_lab = load_emoji(tmp_path, split="all")
    assert all_im.shape == (6, 64, 64, 3) and all_im.dtype == np.uint8
    assert np.array_equal(all_im, images)
    tr, tr_lab = load_emoji(tmp_path, split="train")
    ho, ho_lab = load_emoji(tmp_path, split="heldout", size=32)
    assert len(tr) + len(ho) == 6 and {lab["split"] for lab in ho_lab} == {"heldout"}
    assert ho.shape == (2, 32, 32, 3)
    assert np.allclose(ho[0].astype(float), images[0].reshape(32, 2, 32, 2, 3).mean(axis=(1, 3)), atol=0.51)
    assert load_emoji(tmp_path, split="all", size=48)[0].shape == (6, 48, 48, 3)
    cat, sty = label_arrays(tr_lab)
    assert cat.tolist() == [CATEGORIES.index(lab["category"]) for lab in tr_lab]
    assert set(sty.tolist()) <= {0, 1}


def test_missing_cache_says_how_to_build_it(tmp_path, monkeypatch):
    with pytest.raises(EmojiDataMissing, match="python scripts/prepare_emoji.py"):
        load_emoji(tmp_path / "nothing")
    monkeypatch.setenv("LATENT_STUDIO_DATA", str(tmp_path / "env"))
    with pytest.raises(EmojiDataMissing, match="env"):
        load_emoji()
    make_cache(tmp_path)
    with pytest.raises(ValueError, match="split"):
        load_emoji(tmp_path, split="test")

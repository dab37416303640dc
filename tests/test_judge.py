"""The emoji-judge: shapes, picture input, storage round trip, and the shipped weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.judge import (
    CATEGORIES,
    EMBEDDED_DIR,
    STYLES,
    EmojiJudge,
    JudgeConfig,
    JudgeError,
    load_judge,
)

TINY = JudgeConfig(stem_channels=4, channels=(8, 8), layers_per_stage=1)


def tiny() -> EmojiJudge:
    torch.manual_seed(0)
    return EmojiJudge(TINY).eval()


def test_heads_and_features_shapes_at_64_and_32_px():
    m = tiny()
    for size in (64, 32):
        c, s = m(torch.rand(3, 3, size, size) * 2 - 1)
        assert c.shape == (3, len(CATEGORIES)) and s.shape == (3, len(STYLES))
        assert m.features(torch.zeros(2, 3, size, size)).shape == (2, TINY.feature_dim)


def test_predict_pictures_and_tensors_agree():
    m = tiny()
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(3)]
    pics = [Image.fromarray(a) for a in arrays]
    out = m.predict(pics)
    assert len(out["category"]) == 3 and set(out["style"]) <= set(STYLES)
    assert out["category_probs"].shape == (3, len(CATEGORIES))
    assert torch.allclose(out["category_probs"].sum(-1), torch.ones(3), atol=1e-5)
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert torch.allclose(m.predict(x)["category_probs"], out["category_probs"], atol=1e-5)


def test_transparent_pictures_are_put_on_white():
    rgba = Image.new("RGBA", (32, 32), (255, 0, 0, 0))
    x = EmojiJudge.images_to_tensor([rgba])
    assert torch.allclose(x, torch.ones_like(x))
    with pytest.raises(JudgeError):
        EmojiJudge.images_to_tensor([])


def test_save_load_round_trip(tmp_path):
    m = tiny()
    m.save_pretrained(tmp_path / "judge")
    cfg = json.loads((tmp_path / "judge" / "config.json").read_text())
    assert cfg["format"] == "latent-studio/emoji-judge" and cfg["channels"] == [8, 8]
    back = load_judge(tmp_path / "judge")
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    for a, b in zip(m(x), back(x), strict=True):
        assert torch.allclose(a, b, atol=2e-2)  # weights are stored in fp16


def test_bad_folder_is_a_clear_error(tmp_path):
    with pytest.raises(JudgeError, match="train_judge.py"):
        load_judge(tmp_path)
    with pytest.raises(JudgeError, match=r"\[N, 3, H, W\]"):
        tiny()(torch.zeros(3, 64, 64))


def test_shipped_judge_is_small_loads_and_met_its_targets():
    assert (EMBEDDED_DIR / "model.safetensors").stat().st_size < 5_000_000
    judge = load_judge()
    assert judge.config.categories == CATEGORIES and judge.config.styles == STYLES
    white = Image.new("RGB", (64, 64), "white")
    assert len(judge.predict([white])["style"]) == 1
    metrics = json.loads((EMBEDDED_DIR / "metrics.json").read_text())["heldout"]
    assert metrics["style_accuracy"] >= 0.90 and metrics["category_accuracy"] >= 0.70


def test_shipped_judge_classifies_held_out_emoji():
    """18 held-out emoji (one per category x style) the judge never saw in training."""
    fixtures = Path(__file__).parent / "fixtures"
    meta = json.loads((fixtures / "heldout_emoji.json").read_text())["images"]
    sheet = Image.open(fixtures / "heldout_emoji.png").convert("RGB")
    images = [sheet.crop((64 * k, 0, 64 * k + 64, 64)) for k in range(len(meta))]
    verdict = load_judge().predict(images)
    categories = sum(v == m["category"] for v, m in zip(verdict["category"], meta))
    styles = sum(v == m["style"] for v, m in zip(verdict["style"], meta))
    assert (categories, styles) == (13, 16)  # 72% and 89% on this sample; see metrics.json for the full split

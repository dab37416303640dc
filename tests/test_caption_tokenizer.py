"""The word-level caption tokenizer that scripts/train_diffusion.py learns (byte-level BPE merges)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from train_diffusion import build_tokenizer, learn_merges  # noqa: E402

CAPTIONS = [
    "grinning cat face, smileys and emotion, twemoji style",
    "cat face, animals and nature, noto style",
    "red apple, food and drink, noto style",
    "sun behind cloud, travel and places, twemoji style",
]


def test_merges_are_learnt_most_frequent_pair_first():
    # "ab" twice, "ac" once: the pair (a, b</w>) comes first; ties go to the smaller pair.
    assert learn_merges(["ab ab ac"]) == ["a b</w>", "a c</w>"]
    assert learn_merges(["ba ca"]) == ["b a</w>", "c a</w>"]
    assert learn_merges(["ab ab ac"], limit=1) == ["a b</w>"]


def test_every_caption_word_is_one_token_and_unseen_words_fall_apart(tmp_path):
    tok = build_tokenizer(tmp_path / "tok", "words", CAPTIONS)
    assert tok.model_max_length == 32
    for caption in CAPTIONS:
        pieces = tok.tokenize(caption)
        assert all(p.endswith("</w>") for p in pieces), pieces
        assert "".join(p.replace("</w>", " ") for p in pieces).split() == caption.replace(",", " ,").split()
    assert tok.tokenize("Cat  FACE,") == ["cat</w>", "face</w>", ",</w>"]  # normalised like CLIP
    unseen = tok.tokenize("catapult")
    assert len(unseen) > 1 and "".join(unseen).replace("</w>", "") == "catapult"
    ids = tok("cat face", padding="max_length", max_length=32).input_ids
    assert len(ids) == 32 and ids[0] == tok.bos_token_id and ids[3] == tok.eos_token_id


def test_the_tokenizer_folder_round_trips(tmp_path):
    from transformers import CLIPTokenizer

    tok = build_tokenizer(tmp_path / "tok", "words", CAPTIONS)
    again = CLIPTokenizer.from_pretrained(tmp_path / "tok")
    assert len(again) == len(tok) == 256 * 2 + len(learn_merges(CAPTIONS)) + 2
    for caption in CAPTIONS + ["", "a moon"]:
        assert again(caption).input_ids == tok(caption).input_ids


@pytest.mark.parametrize("kind, length", [("chars", 96), ("words", 32)])
def test_prompt_length_per_tokenizer(tmp_path, kind, length):
    assert build_tokenizer(tmp_path / kind, kind, CAPTIONS).model_max_length == length

"""Write the CLIP BPE tokenizer files the single-file loader ships (pipelines/configs/*-tokenizer/).

CLIP's vocabulary is defined by its BPE merges: the 256 byte-level characters, the same with the
word-end marker ``</w>``, one token per merge for the first 49152 - 256 - 2 merges, then
``<|startoftext|>`` and ``<|endoftext|>`` (49408 tokens). The merges come from the
``bpe_simple_vocab_16e6.txt.gz`` file that the ``open_clip_torch`` package ships (MIT licence).
``clip-tokenizer/`` holds the vocabulary and SD 1.x's (and SDXL encoder 1's) settings, padding with
``<|endoftext|>``; ``open-clip-tokenizer/`` the settings of SD 2.x's (and SDXL encoder 2's), padding with "!".

    pip download --no-deps open_clip_torch -d /tmp/oc
    python scripts/make_clip_tokenizer.py /tmp/oc/open_clip_torch-*.whl
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines.tiny import byte_unicode_chars  # noqa: E402

VOCAB_SIZE = 49408
MAX_LENGTH = 77
MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"


def merges_from(source: Path) -> list[str]:
    """CLIP's merges, from the gz file itself or from the open_clip_torch wheel that holds it."""
    data = zipfile.ZipFile(source).read(MEMBER) if source.suffix == ".whl" else source.read_bytes()
    lines = gzip.decompress(data).decode("utf-8").split("\n")
    return lines[1 : VOCAB_SIZE - 256 * 2 - 2 + 1]  # the first line is a version header


def write_tokenizer(folder: Path, merges: list[str]) -> Path:
    """vocab.json, merges.txt and both tokenizer configs, in CLIP's order: printable bytes first."""
    chars = byte_unicode_chars()  # by byte value; CLIP lists the bytes that print as themselves first
    chars = [c for c in chars if ord(c) < 256] + [c for c in chars if ord(c) >= 256]
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(m + "\n" for m in merges))
    for pad, out in (("<|endoftext|>", folder), ("!", folder.parent / "open-clip-tokenizer")):
        out.mkdir(parents=True, exist_ok=True)
        config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": MAX_LENGTH, "bos_token": "<|startoftext|>",
                  "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": pad}
        (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", type=Path, help="open_clip_torch wheel, or bpe_simple_vocab_16e6.txt.gz")
    ap.add_argument("--out", type=Path, default=ROOT / "pipelines" / "configs" / "clip-tokenizer")
    args = ap.parse_args()
    folder = write_tokenizer(args.out, merges_from(args.source))
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(folder)
    ids = tok("a photo of a cat").input_ids
    assert len(tok) == VOCAB_SIZE and ids == [49406, 320, 1125, 539, 320, 2368, 49407], (len(tok), ids)
    print(f"wrote {folder} and its open-clip-tokenizer sibling: {len(tok)} tokens; 'a photo of a cat' -> {ids}")


if __name__ == "__main__":
    main()

"""Judge adherence of a conditional emoji GAN, through the studio's own adapter.

    python scripts/eval_gan.py                       # the embedded emoji-gan, 64 seeds per class
    python scripts/eval_gan.py --model /tmp/g/model --truncation 1.0 0.8 0.6 --per-class 32

For every class (category x style) it samples seeds 0..N-1 with ``category=`` / ``style=``
settings, renders them exactly as ``studio`` does (uint8 pictures), and asks the emoji-judge
(``pipelines/embedded/emoji-judge``) for each picture's category and style. Prints, per
truncation psi, top-1 agreement overall, per category and per style (a markdown table), and
writes the numbers as JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def evaluate(adapter, judge, per_class: int, psi: float, first_seed: int = 0) -> dict:
    voc = adapter.vocabulary
    gens, want_cat, want_sty = [], [], []
    seeds = list(range(first_seed, first_seed + per_class))
    for cat in voc.categories:
        for sty in voc.styles:
            gens += adapter.sample(seeds, category=cat, style=sty, truncation=psi)
            want_cat += [cat] * per_class
            want_sty += [sty] * per_class
    pred = judge.predict(adapter.render(gens))
    ok_c = [p == w for p, w in zip(pred["category"], want_cat, strict=True)]
    ok_s = [p == w for p, w in zip(pred["style"], want_sty, strict=True)]

    def mean(flags):
        return sum(flags) / max(1, len(flags))

    return {
        "truncation": psi,
        "samples": len(gens),
        "category_top1": mean(ok_c),
        "style_top1": mean(ok_s),
        "per_category": {
            c: mean([o for o, w in zip(ok_c, want_cat, strict=True) if w == c]) for c in voc.categories
        },
        "per_style": {
            s: mean([o for o, w in zip(ok_s, want_sty, strict=True) if w == s]) for s in voc.styles
        },
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="emoji-gan", help="model spec (default: the embedded emoji-gan)")
    p.add_argument("--judge", default=None, help="judge folder (default: the embedded emoji-judge)")
    p.add_argument("--per-class", type=int, default=64, help="seeds per class (18 classes)")
    p.add_argument("--truncation", type=float, nargs="+", default=[1.0, 0.8, 0.7, 0.6])
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)

    from pipelines.judge import load_judge
    from pipelines.registry import load_adapter

    adapter = load_adapter(args.model, device="cpu")
    if adapter.vocabulary is None:
        raise SystemExit(f"{args.model} is not a conditional GAN")
    judge = load_judge(args.judge)
    results = [evaluate(adapter, judge, args.per_class, psi) for psi in args.truncation]
    cats = adapter.vocabulary.categories
    print("| truncation | category top-1 | style top-1 | " + " | ".join(cats) + " |")
    print("|---" * (3 + len(cats)) + "|")
    for r in results:
        row = [f"{r['truncation']:.2f}", f"{r['category_top1']:.1%}", f"{r['style_top1']:.1%}"]
        row += [f"{r['per_category'][c]:.0%}" for c in cats]
        print("| " + " | ".join(row) + " |")
    for r in results:
        print(f"psi {r['truncation']}: style " + ", ".join(f"{k} {v:.1%}" for k, v in r["per_style"].items()))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

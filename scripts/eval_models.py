"""Evaluate the embedded generators against held-out real emoji, judged by emoji-judge.

For each generator (emoji-diffusion, emoji-gan), on samples made for every category x style:
  * adherence: the share of samples the judge classifies as the category / style asked for
    (diffusion prompts name an emoji of the category, "red apple, food and drink, noto style",
    from prompts/emoji_prompts.txt; also printed: "food and drink, noto style" alone, the
    condition the GAN gets; and, for reference, how often the judge reads real pictures of the
    prompts' emoji as their category; and, for a latent diffusion model, the same judge on the
    held-out pictures after a round trip through the model's VAE: what the latent space allows);
  * Fréchet distance of the judge's penultimate features to held-out real images, beside
    two references computed in the same run with the same sample count: real train vs
    held-out (the floor) and per-category mean images plus noise (the ceiling);
  * diversity: mean pairwise feature distance among samples of one prompt, beside the same
    for real images of that category.

    python scripts/eval_models.py                      # both models, 8 samples per class
    python scripts/eval_models.py --models emoji-gan --per-class 16 --grid-out out/
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from emoji_data import CATEGORIES, STYLES, category_phrase, load_emoji  # noqa: E402
from pipelines.judge import load_judge  # noqa: E402
from studio.scoring import emoji_prompts  # noqa: E402
from studio.session import Session  # noqa: E402


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets [N, D] (Heusel et al. 2017)."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # tr(sqrt(s1 s2)) = sum of sqrt of the eigenvalues of sqrt(s1) s2 sqrt(s1), which is symmetric
    vals, vecs = np.linalg.eigh(s1)
    root = (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh(root @ s2 @ root), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def pairwise(feats: np.ndarray) -> float:
    """Mean Euclidean distance over all pairs."""
    d = np.sqrt(((feats[:, None] - feats[None]) ** 2).sum(-1))
    n = len(feats)
    return float(d.sum() / (n * (n - 1)))


def to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1  # [N, 3, H, W]


@torch.no_grad()
def features(judge, images) -> np.ndarray:
    x = images if isinstance(images, torch.Tensor) else judge.images_to_tensor(images, judge.config.image_size)
    return torch.cat([judge.features(x[i : i + 256]).float() for i in range(0, len(x), 256)]).numpy()


def class_prompts(per_class: int) -> list[tuple[str, str, str]]:
    """(prompt, category, style) with per_class items for each category x style."""
    by_cat = {c: [p for p in emoji_prompts() if p.endswith(category_phrase(c))] for c in CATEGORIES}
    out = []
    for c in CATEGORIES:
        for s in STYLES:
            for i in range(per_class):
                base = by_cat[c][i % len(by_cat[c])] if by_cat[c] else category_phrase(c)
                out.append((f"{base}, {s} style", c, s))
    return out


def adherence(verdict: dict, jobs: list[tuple[str, str, str]]) -> tuple[float, float]:
    """Shares of samples judged as the (category, style) their job asked for."""
    cat = np.mean([v == c for v, (_, c, _) in zip(verdict["category"], jobs, strict=True)])
    sty = np.mean([v == s for v, (_, _, s) in zip(verdict["style"], jobs, strict=True)])
    return float(cat), float(sty)


def prompt_reference(judge, image_sets: list[np.ndarray], label_sets: list[list[dict]]) -> tuple[float, int]:
    """The judge's category accuracy on the real pictures (all styles and skin tones) of the emoji
    that prompts/emoji_prompts.txt names, and how many prompts name an emoji of the data set."""
    by_name: dict[str, list[tuple[np.ndarray, str]]] = {}
    for images, labels in zip(image_sets, label_sets, strict=True):
        for image, lab in zip(images, labels, strict=True):
            by_name.setdefault(lab["name"].lower(), []).append((image, lab["category"]))
    names = [p.rsplit(",", 1)[0].strip() for p in emoji_prompts()]  # "red apple, food and drink" -> "red apple"
    found = [by_name[name] for name in names if name in by_name]
    pictures = [x for items in found for x in items]
    verdict = judge.predict(to_tensor(np.stack([im for im, _ in pictures])))
    return float(np.mean([v == c for v, (_, c) in zip(verdict["category"], pictures, strict=True)])), len(found)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="emoji-diffusion,emoji-gan")
    ap.add_argument("--per-class", type=int, default=8, help="samples per category x style (18 classes)")
    ap.add_argument("--steps", type=int, default=20, help="denoising steps for diffusion")
    ap.add_argument("--guidance", type=float, default=None,
                    help="classifier-free guidance for diffusion (default: the model's own, from its studio.json)")
    ap.add_argument("--scheduler", default=None, help="diffusion scheduler (default: the model's own)")
    ap.add_argument("--diversity-n", type=int, default=16)
    ap.add_argument("--grid-out", default=None, help="folder for a contact sheet of each model's samples")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    judge = load_judge()
    train, train_labels = load_emoji(split="train")
    held, held_labels = load_emoji(split="heldout")
    rng = np.random.default_rng(args.seed)
    jobs = class_prompts(args.per_class)
    n = len(jobs)
    print(f"judge: {judge.config.feature_dim}-d features; held-out real images: {len(held)}; samples per model: {n}")

    # references, with the same sample count as each model
    f_held = features(judge, to_tensor(held))
    f_train = features(judge, to_tensor(train[rng.choice(len(train), n, replace=False)]))
    cats = np.array([CATEGORIES.index(lab["category"]) for lab in held_labels])
    means = {c: held[cats == c].astype(np.float32).mean(0) for c in range(len(CATEGORIES))}
    trivial = np.stack([np.clip(means[CATEGORIES.index(c)] + rng.normal(0, 40, means[0].shape), 0, 255)
                        for _, c, _ in jobs]).astype(np.uint8)
    f_trivial = features(judge, to_tensor(trivial))
    floor, ceiling = frechet(f_train, f_held), frechet(f_trivial, f_held)
    print(f"\nFréchet distance to held-out (judge features), n={n}:")
    print(f"  floor   real train vs held-out          : {floor:8.2f}")
    print(f"  ceiling per-category mean + noise        : {ceiling:8.2f}")

    # what the prompts can reach: the judge on real pictures of the emoji they name
    real_cat, named = prompt_reference(judge, [train, held], [train_labels, held_labels])
    print(f"  real pictures of the prompts' emoji ({named} of {len(emoji_prompts())} prompts name one): "
          f"category judged as labelled {real_cat:.1%}")

    held_judged = judge.predict(to_tensor(held))
    held_cat, held_sty = (float(np.mean([v == lab[k] for v, lab in zip(held_judged[k], held_labels, strict=True)]))
                          for k in ("category", "style"))
    print(f"  held-out real pictures judged as labelled: category {held_cat:.1%}, style {held_sty:.1%}")

    # diversity reference: every held-out real smiley, the same for every model
    div_real = pairwise(features(judge, to_tensor(held[cats == 0])))

    rows = []
    with tempfile.TemporaryDirectory() as home:
        session = Session(home)
        for model in args.models.split(","):
            t0 = time.perf_counter()
            adapter = session.adapter(model)
            settings = {"steps": args.steps} if adapter.family == "diffusion" else {}
            if adapter.family == "diffusion" and args.guidance is not None:
                settings["guidance"] = args.guidance
            if adapter.family == "diffusion" and args.scheduler:
                settings["scheduler"] = args.scheduler
            gens = adapter.sample([args.seed + i for i in range(n)], [p for p, _, _ in jobs], **settings)
            images = session.render(gens)
            verdict = judge.predict(images)
            cat_ok, sty_ok = adherence(verdict, jobs)
            per_cat = {c: np.mean([v == c for v, (_, cc, _) in zip(verdict["category"], jobs) if cc == c])
                       for c in CATEGORIES}
            if adapter.family == "diffusion":  # the GAN's condition: category and style only, no emoji name
                short = [f"{category_phrase(c)}, {s} style" for _, c, s in jobs]
                v2 = judge.predict(session.render(adapter.sample([args.seed + i for i in range(n)], short,
                                                                 **settings)))
                cat_short, sty_short = adherence(v2, jobs)
                trip = judge.predict(adapter.decode(adapter.encode([Image.fromarray(im) for im in held])))
                trip_cat, trip_sty = (float(np.mean([v == lab[k] for v, lab in zip(trip[k], held_labels, strict=True)]))
                                      for k in ("category", "style"))
            fd = frechet(features(judge, images), f_held)
            # diversity: one prompt, many seeds, against real images of that category
            prompt = "grinning face, smileys and emotion, twemoji style"
            div_gens = adapter.sample([10_000 + i for i in range(args.diversity_n)], [prompt] * args.diversity_n,
                                      **settings)
            div_model = pairwise(features(judge, session.render(div_gens)))
            took = time.perf_counter() - t0
            rows.append((model, cat_ok, sty_ok, fd, div_model, div_real))
            print(f"\n== {model} ({took:.0f} s)")
            print(f"  adherence: category top-1 {cat_ok:6.1%} (target >= 60%, chance {1 / len(CATEGORIES):.0%}), "
                  f"style {sty_ok:6.1%} (target >= 80%, chance 50%)")
            if adapter.family == "diffusion":
                print(f"  adherence to 'category, style' prompts (no emoji name): category {cat_short:6.1%}, "
                      f"style {sty_short:6.1%}")
                print(f"  held-out real pictures after a VAE round trip, judged as labelled: category {trip_cat:6.1%}, "
                      f"style {trip_sty:6.1%} (what the latent space allows)")
            print("  per category: " + ", ".join(f"{c.split(' ')[0]} {v:.0%}" for c, v in per_cat.items()))
            rel = (fd - floor) / (ceiling - floor)
            print(f"  Fréchet distance {fd:8.2f}  (floor {floor:.2f}, ceiling {ceiling:.2f}; "
                  f"{rel:.0%} of the way from floor to ceiling)")
            print(f"  diversity '{prompt}': {div_model:.3f} mean pairwise feature distance "
                  f"(real Smileys & Emotion: {div_real:.3f})")
            if args.grid_out:
                from studio.scoring import save_strip

                out = Path(args.grid_out)
                out.mkdir(parents=True, exist_ok=True)
                cols = [images[i::len(STYLES) * args.per_class][: len(CATEGORIES)] for i in range(min(8, n))]
                save_strip(cols, [""] * len(cols), out / f"{model}_eval_grid.png")
    print("\nsummary   model             category  style   FD     (floor, ceiling)   diversity (real)")
    for model, c, s, fd, dm, dr in rows:
        print(f"          {model:<16} {c:8.1%} {s:6.1%} {fd:7.2f} ({floor:.2f}, {ceiling:.2f})   {dm:.3f} ({dr:.3f})")


if __name__ == "__main__":
    main()

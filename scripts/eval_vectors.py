"""Attribute vectors and inversion on the embedded models: the figures behind the vectors issue.

  A. style (Noto -> Twemoji) and one more attribute per generator, scored by emoji-judge:
     emoji-gan: w-space mean differences (style; category Smileys -> Animals) and a linear
     boundary (style), without truncation and at psi 0.5, beside a reference that needs no
     vector: each source's own z rendered again with the Twemoji class;
     emoji-diffusion: text-space prompt pairs (prompts/vectors/noto_to_twemoji.yaml and
     sun_to_moon.yaml, the night-like attribute judged by the judge's sun/moon probe), beside the
     same noise rendered with the style phrase swapped; the style vector also rendered
     SDEdit-style (from the source picture noised to 0.7 and 0.85).
  B. conditional vs plain: a style vector built from sets confounded with category, before and
     after removing the category direction (InterFaceGAN's conditional manipulation), compared
     at matched flip rates.
  C. inversion: held-out emoji inverted (DDIM for diffusion, projection for the GAN) and
     re-rendered; PSNR against the originals.

    python scripts/eval_vectors.py --out out/vectors
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from studio.scoring import judged, load_judge, psnr, score_vector, source_generations, summary_table  # noqa: E402
from studio.session import Session  # noqa: E402


def best_row(result: dict, min_keep: float = 0.8) -> dict | None:
    """The edit (strength > 0) with the highest flip rate among those keeping the other attribute >= min_keep."""
    ok = [r for r in result["rows"] if r["preservation"] >= min_keep and r["strength"] > 0]
    return max(ok, key=lambda r: r["flip_rate"]) if ok else None


def report(title: str, result: dict) -> dict | None:
    print(f"\n-- {title}")
    print(summary_table(result))
    best = best_row(result)
    if best:
        print(f"   best with preservation >= 80%: strength {best['strength']:g}: flip {best['flip_rate']:.1%}, "
              f"kept {best['preservation']:.1%}  {'MEETS' if best['flip_rate'] >= 0.7 else 'below'} the 70% flip target")
    else:
        print("   no edit (strength > 0) keeps the other attribute >= 80%")
    return best


def gan_sets(session: Session, model: str, n: int, seed: int, **pairs) -> dict[str, list[str]]:
    """Stored w generations per named condition: pairs name -> list of (category, style) per item."""
    adapter = session.adapter(model)
    out = {}
    for name, classes in pairs.items():
        ids = []
        for i, (cat, sty) in enumerate(classes):
            (g,) = adapter.sample([seed + i], None, space="w", category=cat, style=sty)
            ids.append(session.library.put(g))
        out[name] = ids
    return out


def swap_reference(session: Session, model: str, n: int, seed: int = 1000, psi: float | None = None,
                   vector: str | None = None) -> dict:
    """The generator's own style change, no vector involved: the sources of ``score_vector`` (same
    seeds, Noto style) made again with Twemoji asked for instead. A GAN renders the same z with the
    Twemoji class of their category; a diffusion model (the sources of the prompt-pair ``vector``)
    the same noise with the template filled with the vector's "to" phrase. How often the judge
    still reads the same category there bounds what an edit of this generator can keep."""
    style = {"name": "style", "from": "noto", "to": "twemoji"}
    gan = session.adapter(model).family == "gan"
    if gan:
        settings = {"truncation": psi} if psi is not None else None
        base = source_generations(session, model, style, n, seed, space="z", settings=settings)
        swapped = [replace(g, settings={**g.settings, "style": "twemoji"}) for g in base]
    else:
        meta = session.get(vector).meta
        base, swapped = (source_generations(session, model, style, n, seed, templates=meta["templates"],
                                            source_phrase=meta[side]) for side in ("from", "to"))
    images = session.render(base + swapped)
    judge, _ = load_judge()
    before, after = judged(judge, {}, images[:n]), judged(judge, {}, images[n:])
    flip = float(np.mean([x == "twemoji" for x in after["style"]]))
    keep = float(np.mean([a == b for a, b in zip(after["category"], before["category"], strict=True)]))
    how = (f"the same z rendered with the Twemoji class, truncation {1 if psi is None else psi:g}" if gan
           else "the same noise with the prompt's style phrase swapped")
    print(f"\n-- reference, no vector: {how}, n={n}: flip {flip:.1%}, category kept {keep:.1%}")
    return {"flip_rate": flip, "preservation": keep, "n": n}


def real_pair_reference() -> dict:
    """What a perfect style edit would score: the judge on the real Noto and Twemoji pictures of one emoji
    (skin-tone variations left out). How often it reads the same category for both pictures bounds the
    category preservation any edit can show, as measured by this judge."""
    from PIL import Image

    from emoji_data import load_emoji

    judge, _ = load_judge()
    out = {}
    for split in ("heldout", "train"):
        images, labels = load_emoji(split=split)
        by_emoji: dict[str, dict[str, np.ndarray]] = {}
        for image, lab in zip(images, labels, strict=True):
            if not lab.get("skin_tone"):
                by_emoji.setdefault(lab["unified"], {})[lab["style"]] = image
        pairs = [d for d in by_emoji.values() if {"noto", "twemoji"} <= set(d)]
        noto, tw = (judged(judge, {}, [Image.fromarray(d[s]) for d in pairs]) for s in ("noto", "twemoji"))
        keep = float(np.mean([a == b for a, b in zip(noto["category"], tw["category"], strict=True)]))
        flip = float(np.mean([x == "twemoji" for x in tw["style"]]))
        print(f"-- reference, real pictures ({split}, {len(pairs)} emoji): the Twemoji picture of an emoji is "
              f"read as Twemoji {flip:.1%}, as the same category as its Noto picture {keep:.1%}")
        out[split] = {"flip_rate": flip, "preservation": keep, "pairs": len(pairs)}
    return out


def first_reaching(result: dict, flip: float) -> dict | None:
    """The row of the smallest strength whose flip rate reaches ``flip``: where to compare two vectors."""
    rows = sorted(result["rows"], key=lambda r: r["strength"])
    return next((r for r in rows if r["flip_rate"] >= flip and r["strength"] > 0), None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gan", default="emoji-gan")
    ap.add_argument("--diffusion", default="emoji-diffusion")
    ap.add_argument("--n", type=int, default=36, help="samples per strength")
    ap.add_argument("--sets", type=int, default=256, help="examples per set for set-based vectors")
    ap.add_argument("--truncation", default="1,0.5",
                    help="comma-separated truncation psi of the GAN sources and edits (part A)")
    ap.add_argument("--strengths", default="0,0.5,1,1.5,2,3")
    ap.add_argument("--invert", type=int, default=18, help="held-out emoji to invert per model")
    ap.add_argument("--project-steps", type=int, default=300)
    ap.add_argument("--ddim-steps", type=int, default=100)
    ap.add_argument("--only", choices=["gan", "diffusion"], default=None, help="evaluate one generator")
    ap.add_argument("--parts", default="vectors,inversion",
                    help="what to evaluate: vectors (A and B), inversion (C), or both")
    ap.add_argument("--out", default="out/vectors")
    args = ap.parse_args()
    strengths = [float(x) for x in args.strengths.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from emoji_data import CATEGORIES, STYLES

    summary: dict = {}
    with tempfile.TemporaryDirectory() as home:
        s = Session(home)
        t0 = time.perf_counter()
        run_gan, run_diffusion = args.only in (None, "gan"), args.only in (None, "diffusion")
        parts = set(args.parts.split(","))
        if "vectors" in parts:
            summary["real_pairs"] = real_pair_reference()
        # ---- A. GAN: w-space vectors from matched sets (same seeds and categories, the style differs)
        if run_gan and "vectors" in parts:
            cats = [CATEGORIES[i % len(CATEGORIES)] for i in range(args.sets)]
            sets = gan_sets(s, args.gan, args.sets, 0,
                            noto=[(c, "noto") for c in cats], twemoji=[(c, "twemoji") for c in cats],
                            smileys=[("Smileys & Emotion", STYLES[i % 2]) for i in range(args.sets)],
                            animals=[("Animals & Nature", STYLES[i % 2]) for i in range(args.sets)])
            s.vectors.from_sets(sets["noto"], sets["twemoji"], "mean", "w", "gan_style",
                                {"name": "style", "from": "noto", "to": "twemoji"})
            s.vectors.from_sets(sets["smileys"], sets["animals"], "mean", "w", "gan_category",
                                {"name": "category", "from": "Smileys & Emotion", "to": "Animals & Nature"})
            s.vectors.from_sets(sets["noto"], sets["twemoji"], "boundary", "w", "gan_style_boundary",
                                {"name": "style", "from": "noto", "to": "twemoji"})
            # truncation pulls each picture toward its class centre: cleaner classes, as StyleGAN's
            # edits are usually shown; a w vector added before it is scaled by psi, hence the wider sweep
            for psi in [float(x) for x in args.truncation.split(",")]:
                settings = {"truncation": psi}
                sweep = strengths if psi == 1 else sorted({*strengths, *(x / psi for x in strengths)})
                for vec, how in (("gan_style", "mean difference"), ("gan_style_boundary", "linear boundary")):
                    r = score_vector(s, vec, sweep, args.n, out=out / f"{vec}_psi{psi:g}", settings=settings)
                    summary[f"{vec}_psi{psi:g}"] = report(
                        f"{args.gan}: style noto -> twemoji (w, {how}), truncation {psi:g}", r)
                summary[f"gan_class_swap_psi{psi:g}"] = swap_reference(s, args.gan, args.n, psi=psi)
                r = score_vector(s, "gan_category", sweep, args.n, out=out / f"gan_category_psi{psi:g}",
                                 settings=settings)
                summary[f"gan_category_psi{psi:g}"] = report(
                    f"{args.gan}: category smileys -> animals (w, mean difference), truncation {psi:g}", r)

            # ---- B. conditional: a style vector learnt from sets confounded with category
            conf = gan_sets(s, args.gan, args.sets, 5000,
                            a=[("Smileys & Emotion", "noto")] * args.sets,
                            b=[("Animals & Nature", "twemoji")] * args.sets)
            s.vectors.from_sets(conf["a"], conf["b"], "mean", "w", "style_confounded",
                                {"name": "style", "from": "noto", "to": "twemoji"})
            s.vectors.condition("style_confounded", ["gan_category"], "style_conditioned")
            plain = score_vector(s, "style_confounded", strengths, args.n, out=out / "style_confounded")
            cond = score_vector(s, "style_conditioned", strengths, args.n, out=out / "style_conditioned")
            report("plain style vector from confounded sets (noto smileys vs twemoji animals)", plain)
            report("the same, conditioned on the smileys -> animals direction", cond)
            for level in (0.3, 0.4, 0.5, 0.7):
                p, c = first_reaching(plain, level), first_reaching(cond, level)
                if p and c:
                    print(f"   first strength reaching flip >= {level:.0%}: category kept {p['preservation']:.1%} "
                          f"(plain, s={p['strength']:g}) vs {c['preservation']:.1%} (conditional, s={c['strength']:g})")
            summary["conditional"] = {"plain": plain["rows"], "conditional": cond["rows"]}

        # ---- A. diffusion: text-space prompt-pair vectors
        if run_diffusion and "vectors" in parts:
            for definition, key in (("noto_to_twemoji.yaml", "diffusion_style"), ("sun_to_moon.yaml", "diffusion_sky")):
                st = s.vectors.from_prompts(ROOT / "prompts" / "vectors" / definition, args.diffusion, name=key)
                r = score_vector(s, st.name, strengths, args.n, out=out / key)
                a = r["attribute"]
                summary[key] = report(f"{args.diffusion}: {a['name']} {a['from']} -> {a['to']} (text, prompt pair)", r)
            summary["diffusion_prompt_swap"] = swap_reference(s, args.diffusion, args.n, vector="diffusion_style")
            # the same style vector rendered SDEdit-style from the source picture: the layout is kept
            for sd in (0.7, 0.85):
                r = score_vector(s, "diffusion_style", strengths, args.n, out=out / f"diffusion_style_sdedit{sd:g}",
                                 sdedit=sd)
                summary[f"diffusion_style_sdedit{sd:g}"] = report(
                    f"{args.diffusion}: style noto -> twemoji (text, prompt pair), SDEdit from strength {sd:g}", r)

        # ---- C. inversion of held-out emoji
        from PIL import Image

        from emoji_data import load_emoji

        images, labels = load_emoji(split="heldout")
        rng = np.random.default_rng(0)
        pick = rng.choice(len(images), args.invert, replace=False)
        inverting = "inversion" in parts
        for model in [m for m, on in ((args.diffusion, run_diffusion), (args.gan, run_gan)) if on and inverting]:
            adapter = s.adapter(model)
            scores = []
            for i in pick:
                picture = Image.fromarray(images[i])
                if adapter.family == "diffusion":
                    g = adapter.invert(picture, "", args.ddim_steps)
                else:
                    g = adapter.project(picture, args.project_steps, category=labels[i]["category"], style=labels[i]["style"])
                back = adapter.render([g])[0]
                size = back.size
                scores.append(psnr(np.asarray(picture.resize(size, Image.LANCZOS)), np.asarray(back)))
            target = 25 if adapter.family == "diffusion" else 18
            print(f"\n-- inversion, {model}: PSNR over {len(scores)} held-out emoji: mean {np.mean(scores):.2f} dB, "
                  f"median {np.median(scores):.2f}, min {np.min(scores):.2f} (target >= {target} dB)")
            summary[f"psnr_{model}"] = float(np.mean(scores))
        print(f"\n(total {time.perf_counter() - t0:.0f} s)")
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))


if __name__ == "__main__":
    main()

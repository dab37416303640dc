#!/usr/bin/env python
"""Evaluate the embedded emoji-diffusion model: judge adherence, the sample grid, speed.

* Adherence: for every category x style, prompts in the training captions' form
  ("<emoji name>[, <skin tone> skin tone], <category phrase>, <style> style") for emoji of the
  training split and, separately, for emoji the model never saw (the held-out split); the
  fraction of samples the emoji-judge classifies as the category / style asked for. Several
  guidance scales can be compared on the same generations (``--guidance 2,3,4``).
* The sample grid (``--grid``): rows = one prompt per category, columns = seeds in noto style
  then the same seeds in twemoji style, rendered with the model's default settings.
* Speed (``--speed``): a cold ``studio sample`` command (new process, new library) until its
  PNG is written, and a warm batch of 16 renders at the default settings.

    python scripts/eval_emoji_diffusion.py --guidance 1.5,2,3,4,5 --per-class 8
    python scripts/eval_emoji_diffusion.py --grid pipelines/embedded/emoji-diffusion/samples.png \\
        --metrics pipelines/embedded/emoji-diffusion/metrics.json --speed
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
if str(ROOT) not in sys.path:
    sys.path.insert(1, str(ROOT))

from emoji_data import CATEGORIES, GRID_PROMPTS, STYLES, load_emoji  # noqa: E402


def class_prompts(labels: list[dict], per_class: int, seed: int) -> list[tuple[str, str, str]]:
    """(caption, category, style): ``per_class`` captions of distinct emoji for every category x style."""
    rng = np.random.default_rng(seed)
    out = []
    for c in CATEGORIES:
        for s in STYLES:
            pool: dict[str, str] = {}
            for lab in labels:
                if lab["category"] == c and lab["style"] == s:
                    pool.setdefault(lab["base"], lab["caption"])  # one caption per emoji
            caps = sorted(pool.values())
            pick = rng.choice(len(caps), size=min(per_class, len(caps)), replace=False) if caps else []
            out += [(caps[i], c, s) for i in sorted(pick)]
    return out


def adherence(adapter, judge, jobs, guidances: list[float], seed: int, steps: int) -> dict:
    """Per guidance: the judge's category/style agreement with what each prompt asked for."""
    gens = adapter.sample([seed + i for i in range(len(jobs))], [p for p, _, _ in jobs], steps=steps)
    result = {}
    for g in guidances:
        for gen in gens:
            gen.settings["guidance"] = g
        t0 = time.perf_counter()
        images = adapter.render(gens)
        took = time.perf_counter() - t0
        v = judge.predict(images)
        cat_ok = np.array([p == c for p, (_, c, _) in zip(v["category"], jobs)])
        sty_ok = np.array([p == s for p, (_, _, s) in zip(v["style"], jobs)])
        cats = np.array([c for _, c, _ in jobs])
        stys = np.array([s for _, _, s in jobs])
        result[f"{g:g}"] = {
            "samples": len(jobs),
            "category": float(cat_ok.mean()),
            "style": float(sty_ok.mean()),
            "both": float((cat_ok & sty_ok).mean()),
            "category_by_class": {c: float(cat_ok[cats == c].mean()) for c in CATEGORIES if (cats == c).any()},
            "style_by_style": {s: float(sty_ok[stys == s].mean()) for s in STYLES if (stys == s).any()},
            "render_seconds": round(took, 1),
        }
        r = result[f"{g:g}"]
        print(f"  guidance {g:4g}: category {r['category']:.1%}  style {r['style']:.1%}  both {r['both']:.1%}  "
              f"({len(jobs)} samples, {took:.0f} s)  "
              + ", ".join(f"{c.split(' ')[0]} {a:.0%}" for c, a in r["category_by_class"].items()), flush=True)
    return result


def sample_grid(adapter, path: Path, seeds: list[int], scale: int = 2, **settings) -> None:
    """Rows = GRID_PROMPTS; columns = seeds in noto style, then the same seeds in twemoji style; labelled."""
    jobs = [(f"{row}, {s} style", seed) for row in GRID_PROMPTS for s in STYLES for seed in seeds]
    gens = adapter.sample([seed for _, seed in jobs], [p for p, _ in jobs], **settings)
    images = adapter.render(gens)
    side = images[0].size[0] * scale
    cols = len(STYLES) * len(seeds)
    label_w, head_h, gap = 230, 22, 4
    sheet = Image.new("RGB", (label_w + cols * (side + gap), head_h + len(GRID_PROMPTS) * (side + gap)), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for j, s in enumerate(STYLES):
        draw.text((label_w + j * len(seeds) * (side + gap) + 4, 4), f"{s} style, seeds {seeds[0]}-{seeds[-1]}",
                  fill="black", font=font)
    for i, row in enumerate(GRID_PROMPTS):
        y = head_h + i * (side + gap)
        draw.text((6, y + side // 2 - 6), row, fill="black", font=font)
        for j in range(cols):
            im = images[i * cols + j].resize((side, side), Image.Resampling.NEAREST)
            sheet.paste(im, (label_w + j * (side + gap), y))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, optimize=True)
    print(f"wrote {path}")


def speed(adapter, model: str) -> dict:
    """Cold command-line sample until its PNG exists; warm batch of 16 at the default settings."""
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        studio = Path(sys.executable).with_name("studio")
        cmd = [str(studio)] if studio.is_file() else [sys.executable, "-m", "studio.cli"]
        if model != "emoji-diffusion":
            cmd_model = ["--model", model]
        else:
            cmd_model = []
        colds = []
        for k in range(2):
            t0 = time.perf_counter()
            subprocess.run(cmd + ["--home", f"{tmp}/home{k}", "sample", *cmd_model, "--prompt", "smiling cat face",
                                  "--seed", str(3 + k), "--out", f"{tmp}/out{k}"],
                           check=True, capture_output=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
            colds.append(time.perf_counter() - t0)
            assert list(Path(f"{tmp}/out{k}").glob("*.png")), "no PNG written"
        out["cold_cli_first_png_seconds"] = [round(c, 2) for c in colds]
    gens = adapter.sample(list(range(16)), ["smiling cat face, twemoji style"] * 16)
    adapter.render(gens[:2])  # warm-up
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        adapter.render(gens)
        times.append(time.perf_counter() - t0)
    out["warm_batch16_seconds"] = [round(t, 2) for t in times]
    out["settings"] = {k: v for k, v in adapter.default_settings().items() if k != "negative_prompt"}
    out["threads"] = torch.get_num_threads()
    print(f"speed: cold CLI first PNG {out['cold_cli_first_png_seconds']} s; warm 16 renders {out['warm_batch16_seconds']} s")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="emoji-diffusion", help="model spec or folder")
    ap.add_argument("--guidance", default=None, help="comma-separated guidance scales (default: the model's)")
    ap.add_argument("--per-class", type=int, default=8, help="prompts per category x style (0: skip adherence)")
    ap.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    ap.add_argument("--grid", default=None, help="write the labelled sample grid here")
    ap.add_argument("--grid-seeds", default="0,1,2,3")
    ap.add_argument("--grid-guidance", type=float, default=None, help="guidance of the grid (default: the model's)")
    ap.add_argument("--speed", action="store_true", help="measure the cold command and a warm batch of 16")
    ap.add_argument("--metrics", default=None, help="write the results as JSON here")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from pipelines.judge import load_judge
    from pipelines.registry import load_adapter

    adapter = load_adapter(args.model, device="cpu")
    defaults = adapter.default_settings()
    steps = args.steps or defaults["steps"]
    guidances = [float(g) for g in args.guidance.split(",")] if args.guidance else [defaults["guidance"]]
    metrics: dict = {"model": args.model, "defaults": {k: defaults[k] for k in ("steps", "guidance", "scheduler",
                                                                               "height", "width")}}
    if args.per_class:
        judge = load_judge()
        _, train_labels = load_emoji(split="train", size=8)
        _, held_labels = load_emoji(split="heldout", size=8)
        for name, labels in (("train_emoji", train_labels), ("heldout_emoji", held_labels)):
            jobs = class_prompts(labels, args.per_class, args.seed)
            print(f"adherence, prompts of {name.replace('_', ' ')} ({len(jobs)} samples, {steps} steps):")
            metrics[f"adherence_{name}"] = adherence(adapter, judge, jobs, guidances, args.seed, steps)
    if args.grid:
        settings = {"steps": steps}
        if args.grid_guidance is not None:
            settings["guidance"] = args.grid_guidance
        sample_grid(adapter, Path(args.grid), [int(s) for s in args.grid_seeds.split(",")], **settings)
    if args.speed:
        metrics["speed"] = speed(adapter, args.model)
    if args.metrics:
        Path(args.metrics).write_text(json.dumps(metrics, indent=1) + "\n")
        print(f"wrote {args.metrics}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

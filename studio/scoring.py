"""Scoring attribute vectors with an independent judge: flip rate, preservation, pixel change.

For a vector whose attribute the judge knows (art style or category), ``score_vector`` samples
source items, applies the vector at a sweep of strengths, renders everything in batches and
asks the judge: did the edited attribute move to the target (flip rate), did the other one
stay (preservation), and how much did the pixels change.
"""

from __future__ import annotations

import functools
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from pipelines.base import VaeCoder, require
from studio import algebra
from studio.errors import StudioError
from studio.lazy import torch
from studio.objects import Generation, Vector
from studio.space import GAN_ROLES
from studio.store import make_folder
from studio.vectorlab import check_strengths

if TYPE_CHECKING:
    from studio.session import Session

PROMPTS = Path(__file__).resolve().parents[1] / "prompts" / "emoji_prompts.txt"
OTHER = {"style": "category", "category": "style"}


@dataclass
class ScoreRow:
    strength: float
    flip_rate: float  # edited items judged as the target value
    preservation: float  # edited items whose other attribute is judged as before
    pixel_change: float  # mean |edited - original| over pixels, in [0, 1]
    n: int


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two uint8 pictures."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def emoji_prompts(path: str | os.PathLike | None = None) -> list[str]:
    lines = Path(path or PROMPTS).read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


@functools.cache  # one judge per process: every scoring call and reference would load the same weights
def load_judge():
    """The emoji-judge and its attribute probes (eval mode, read-only)."""
    from pipelines.judge import load_judge as load
    from pipelines.judge import load_probes

    try:
        return load(), load_probes()
    except Exception as exc:  # missing folder or weights: say what to do
        raise StudioError(f"scoring needs the emoji-judge model (pipelines/embedded/emoji-judge): {exc}") from None


def judged(judge, probes: dict, images: list[Image.Image]) -> dict[str, list[str]]:
    """The judge's verdicts (category, style) plus one per attribute probe."""
    verdict = judge.predict(images)
    out = {"category": verdict["category"], "style": verdict["style"]}
    if probes:
        with torch.no_grad():
            f = judge.features(judge.images_to_tensor(images, judge.config.image_size)).float()
        for name, p in probes.items():
            out[name] = [p["to"] if s > 0 else p["from"] for s in (f @ p["weight"] + p["bias"]).tolist()]
    return out


def source_generations(session: Session, model: str, attribute: dict, n: int, seed: int,
                       prompts: list[str] | None = None, space: str | None = None,
                       templates: list[str] | None = None, source_phrase: str = "",
                       settings: dict[str, Any] | None = None) -> list[Generation]:
    """n generations showing the attribute's source value: prompts cycled, the source phrase appended
    (for a category edit: the prompts of the source category).

    ``space`` picks a GAN's role (``z`` or ``w``) so that a vector of that space applies;
    ``settings`` are the model's sampling settings (e.g. a GAN's ``truncation``), kept by the edits.
    """
    name, source = attribute.get("name"), attribute.get("from")
    adapter = session.adapter(model)
    if templates:  # a prompt-pair vector: its own templates with its "from" phrase
        texts = [templates[i % len(templates)].format(source_phrase) for i in range(n)]
    elif name == "style":
        prompts = prompts or emoji_prompts()
        texts = [f"{prompts[i % len(prompts)]}, {source} style" for i in range(n)]
    elif name == "category" and source:
        from pipelines.emoji_labels import category_phrase

        phrase = category_phrase(source)
        prompts = prompts or [p for p in emoji_prompts() if p.endswith(phrase)] or [phrase]
        texts = [prompts[i % len(prompts)] for i in range(n)]
    else:
        prompts = prompts or emoji_prompts()
        texts = [prompts[i % len(prompts)] for i in range(n)]
    options = {**(settings or {}), **({"space": space} if adapter.family == "gan" and space else {})}
    return adapter.sample([seed + i for i in range(n)], texts, **options)


def score_vector(session: Session, vector_ref: str, strengths: list[float], n: int = 36, seed: int = 1000,
                 model: str | None = None, out: str | os.PathLike | None = None,
                 progress: Any = None, sdedit: float | None = None,
                 settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Sweep strengths; returns the table rows and the paths of the plot and the example strip.

    ``sdedit`` (diffusion): render each edit SDEdit-style, from the source picture noised to this
    strength (as ``vectors apply --mode sdedit``), instead of from the source's own noise.
    ``settings``: sampling settings of the sources and their edits, e.g. ``{"truncation": 0.5}``.
    """
    v = session.get(vector_ref)
    if not isinstance(v, Vector):
        raise StudioError(f"{vector_ref} is a {v.kind}, not a vector")
    attribute = v.meta.get("attribute")
    attribute = attribute if isinstance(attribute, dict) else {}
    strengths = check_strengths(strengths)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 4096:
        raise StudioError(f"the number of samples must be a whole number from 1 to 4096, not {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise StudioError(f"the first seed must be a whole number >= 0, not {seed!r}")
    model = model or v.meta.get("model")
    family = session.adapter(model).family
    if settings and "truncation" in settings and family != "gan":
        raise StudioError(f"truncation is a GAN setting; {vector_ref} is scored on {model}, a {family} model")
    if sdedit is not None and (not 0 < sdedit <= 1 or family != "diffusion"):
        raise StudioError("sdedit scoring needs a diffusion model and a strength in (0, 1]")
    if out is not None:  # before the work: a folder that cannot be made fails now, not after the sweep
        out = make_folder(out)
    judge, probes = load_judge()
    key = attribute.get("name")
    if key not in OTHER and key not in probes:
        known = ", ".join(list(OTHER) + list(probes))
        raise StudioError(f"the judge knows the attributes {known}; {vector_ref} edits "
                          f"{key or 'an unnamed attribute'} (set its attribute when building it)")
    other = OTHER.get(key, "style")  # a probed attribute should leave the art style alone
    target = attribute.get("to")
    role = GAN_ROLES.get(v.space.kind)
    base = source_generations(session, model, attribute, n, seed, space=role,
                              templates=v.meta.get("templates"), source_phrase=v.meta.get("from", ""),
                              settings=settings)
    edited = {s: [algebra.add(g, algebra.scale(v, s)) for g in base] for s in strengths}
    if sdedit is None:
        images = session.render(base + [g for s in strengths for g in edited[s]], progress)
        base_img, rest = images[:n], images[n:]
    else:
        base_img = session.render(base)
        inits = require(session.adapter(model), VaeCoder, "score SDEdit edits").encode(base_img)
        edited = {s: [Generation({**g.roles, "init": init}, g.model, {**g.settings, "sdedit": float(sdedit)}, {},
                                 g.lineage) for g, init in zip(gens, inits, strict=True)]
                  for s, gens in edited.items()}
        rest = session.render([g for s in strengths for g in edited[s]], progress)
    verdict0 = judged(judge, probes, base_img)
    rows, strip = [], [base_img[: min(n, 6)]]
    for k, s in enumerate(strengths):
        ims = rest[k * n : (k + 1) * n]
        verdict = judged(judge, probes, ims)
        flip = np.mean([x == target for x in verdict[key]])
        keep = np.mean([a == b for a, b in zip(verdict[other], verdict0[other])])
        change = np.mean([np.abs(np.asarray(a, float) - np.asarray(b, float)).mean() / 255 for a, b in zip(ims, base_img)])
        rows.append(ScoreRow(float(s), float(flip), float(keep), float(change), n))
        strip.append(ims[: min(n, 6)])
    result: dict[str, Any] = {"vector": vector_ref, "attribute": attribute, "model": model, "sdedit": sdedit,
                              "settings": dict(settings or {}),
                              "baseline_" + key: float(np.mean([x == target for x in verdict0[key]])),
                              "rows": [asdict(r) for r in rows]}
    if out is not None:
        result["plot"] = str(plot_scores(rows, attribute, out / "score.png"))
        result["strip"] = str(save_strip(strip, ["original"] + [f"{s:g}" for s in strengths], out / "strip.png"))
    return result


def plot_scores(rows: list[ScoreRow], attribute: dict, path: Path) -> Path:
    """Flip rate and preservation (left axis) and pixel change (right axis) against strength."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = [r.strength for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    ax.plot(s, [r.flip_rate for r in rows], "o-", label=f"flip rate ({attribute.get('from')} -> {attribute.get('to')})")
    ax.plot(s, [r.preservation for r in rows], "s-", label=f"{OTHER.get(attribute['name'], 'style')} preserved")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("strength")
    ax.set_ylabel("fraction of samples")
    ax.grid(alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(s, [r.pixel_change for r in rows], "^--", color="gray", label="mean pixel change")
    ax2.set_ylabel("mean |change| (0..1)")
    lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    labels = ax.get_legend_handles_labels()[1] + ax2.get_legend_handles_labels()[1]
    ax.legend(lines, labels, loc="center right", fontsize=8)
    ax.set_title(f"vector: {attribute.get('name')} {attribute.get('from')} -> {attribute.get('to')}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def save_strip(columns: list[list[Image.Image]], titles: list[str], path: Path, cell: int = 64) -> Path:
    """A grid: one column per strength (first: the originals), one row per example."""
    from PIL import ImageDraw

    rows = max(len(c) for c in columns)
    pad = 14
    sheet = Image.new("RGB", (cell * len(columns), pad + cell * rows), "white")
    draw = ImageDraw.Draw(sheet)
    for j, (col, title) in enumerate(zip(columns, titles)):
        draw.text((j * cell + 2, 1), title, fill="black")
        for i, im in enumerate(col):
            sheet.paste(im.convert("RGB").resize((cell, cell), Image.LANCZOS), (j * cell, pad + i * cell))
    sheet.save(path)
    return path


def summary_table(result: dict[str, Any]) -> str:
    """The rows as a fixed-width table."""
    other = OTHER.get(result["attribute"].get("name"), "style")
    lines = [f"{'strength':>9} {'flip':>7} {other + ' kept':>14} {'pixel Δ':>8} {'n':>4}"]
    for r in result["rows"]:
        lines.append(f"{r['strength']:>9.2f} {r['flip_rate']:>7.1%} {r['preservation']:>14.1%} "
                     f"{r['pixel_change']:>8.3f} {r['n']:>4}")
    return "\n".join(lines)

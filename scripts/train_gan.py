"""Train the embedded ``emoji-gan``: a class-conditional StyleGAN2 generator on the emoji data set.

    # the shipped recipe (see the model card), 90 minutes of training in two resumed parts:
    # no auxiliary classifier up to step 9,000 (or 51 minutes, where the shipped run reached it),
    flock /tmp/latent-train.lock python scripts/train_gan.py --threads 1 --steps 30000 --stop-after 9000 --max-minutes 51
    # then the auxiliary classifier loss until 90 minutes of training in all
    flock /tmp/latent-train.lock python scripts/train_gan.py --threads 2 --steps 40000 --max-minutes 90 --aux-weight 0.5 --truncation 0.6
    python scripts/train_gan.py --export-only --truncation 1.0
    python scripts/train_gan.py --steps 50 --workdir /tmp/g --out /tmp/g/model   # a smoke run
    python scripts/train_gan.py --export-only      # re-export the last checkpoint (e.g. another --truncation)

What it does:

* data: ``scripts/emoji_data.py`` (``load_emoji(split="train", size=32)``), both art styles mixed;
  batches are class-balanced over the 18 classes (9 categories x 2 styles), because People & Body
  alone holds more than half of the pictures.
* model: the StyleGAN2 generator of ``pipelines/stylegan_nets/sg2.py`` (``StyleGAN2Generator.create``,
  the StyleGAN2-ADA layout: mapping z + embedded one-hot class -> w with tracked per-class w
  averages, modulated convolutions, FIR-filtered upsampling, per-layer noise, skip ToRGBs) and the
  projection Discriminator of ``pipelines/stylegan.py``, sized by the same resolution and channels.
* loss: non-saturating logistic loss, lazy R1 on real pictures every ``--r1-every`` steps
  (Adam's lr and betas of D adjusted for the lazy interval, as in StyleGAN2), Adam(0, 0.99);
  optionally (``--aux-weight``) an auxiliary classifier loss (AC-GAN): D also classifies real
  pictures by class and style, G is pushed toward fakes D reads as the class asked for.
* DiffAugment-style differentiable augmentation (colour + translation) of every picture D sees,
  real and fake alike (Zhao et al., "Differentiable Augmentation for Data-Efficient GAN Training", 2020).
* EMA of the generator weights (half-life ``--ema-kimg`` thousand pictures, ramped up): the EMA
  generator is what is exported.
* deterministic: one seed drives every random draw (all drawn from torch's CPU generator, so the
  same on CPU and CUDA); checkpoints (safetensors + state.json, including the RNG state and the
  Adam moments) let an interrupted run resume exactly where it stopped.
* progress: a tqdm bar, a line of figures every ``--log-every`` steps, a sample grid PNG every
  ``--sample-every`` steps (rows = categories, left half noto, right half twemoji), judge
  adherence every ``--eval-every`` steps when the emoji-judge is installed.
* export: the EMA generator, its w averages recomputed exactly over many z per class, the
  prompt vocabulary (frequent words of the emoji names per category, style words) and the default
  truncation, into ``--out`` (default ``pipelines/embedded/emoji-gan``) as a
  ``latent-studio-stylegan2-v2`` folder (``pipelines/stylegan_nets/training.py``) with ``samples.png``.

Checkpoints of the earlier generator (``pipelines/stylegan.py``) do not resume here: the default
``--workdir`` is a new one.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from emoji_data import CATEGORIES, STYLES, label_arrays, load_emoji  # noqa: E402
from pipelines.base import cpu_generator  # noqa: E402
from pipelines.stylegan import Discriminator, GeneratorConfig  # noqa: E402
from pipelines.stylegan_nets.sg2 import StyleGAN2Generator, StyleGAN2Settings, one_hot_classes  # noqa: E402
from pipelines.stylegan_nets.training import exact_w_averages, save_sg2_folder  # noqa: E402

NUM_CLASSES = len(CATEGORIES) * len(STYLES)  # class id = category * len(STYLES) + style
STOPWORDS = set(
    "a an and the of with in on at to for from by or as its it his her their face sign symbol "
    "skin tone light medium dark type 1 2 3 4 5 6 black white".split()
)
STYLE_WORDS = {
    "noto": {"noto": 1.0, "google": 1.0, "android": 1.0},
    "twemoji": {"twemoji": 1.0, "twitter": 1.0},
}
# The category names' own words (and their singulars) always point to their category.
CATEGORY_NAME_WORDS = {
    "Smileys & Emotion": ["smiley", "smileys", "emotion", "emoticon"],
    "People & Body": ["people", "person", "body"],
    "Animals & Nature": ["animal", "animals", "nature"],
    "Food & Drink": ["food", "drink"],
    "Travel & Places": ["travel", "place", "places"],
    "Activities": ["activity", "activities", "sport"],
    "Objects": ["object", "objects"],
    "Symbols": ["symbols"],
    "Flags": ["flag", "flags"],
}


# ---------------------------------------------------------------------------------------------- args


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", default=None, help="emoji data folder (default: ~/.cache/latent-studio/emoji)")
    p.add_argument("--split", default="train", choices=["train", "all"], help="data split to train on")
    p.add_argument(
        "--workdir",
        default=str(Path.home() / ".cache" / "latent-studio" / "runs" / "emoji-gan-sg2"),
        help="checkpoints, log.jsonl, sample grids (default: ~/.cache/latent-studio/runs/emoji-gan-sg2)",
    )
    p.add_argument(
        "--out", default=str(ROOT / "pipelines" / "embedded" / "emoji-gan"), help="exported model folder"
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--steps", type=int, default=9000, help="total training steps (one D and one G update each)"
    )
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--z-dim", type=int, default=128)
    p.add_argument("--w-dim", type=int, default=128)
    p.add_argument("--mapping-layers", type=int, default=2)
    p.add_argument(
        "--mapping-lr-mul", type=float, default=0.01, help="learning-rate multiplier of the mapping MLP"
    )
    p.add_argument(
        "--factorized",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="D's class projection = class + category + style vectors (G always embeds its one-hot class, "
        "the StyleGAN2 interface); experimental: the shipped model does not use it",
    )
    p.add_argument("--channel-base", type=int, default=1024)
    p.add_argument("--channel-max", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.0025, help="Adam learning rate of G and D")
    p.add_argument("--r1-gamma", type=float, default=0.03)
    p.add_argument("--r1-every", type=int, default=16, help="lazy R1 interval (steps)")
    p.add_argument("--ema-kimg", type=float, default=5.0, help="EMA half-life in thousands of pictures")
    p.add_argument("--ema-rampup", type=float, default=0.05, help="EMA half-life <= this x pictures seen")
    p.add_argument("--augment", default="translation,cutout", help="DiffAugment policy ('' = none)")
    p.add_argument(
        "--truncation", type=float, default=0.8, help="default truncation psi stored with the model"
    )
    p.add_argument(
        "--aux-weight", type=float, default=None,
        help="weight of an auxiliary classifier loss (AC-GAN): D learns class and style on real pictures, "
        "G is pushed toward fakes it reads as the class asked for (0 = off; default: the checkpoint's value, "
        "else 0; a run may switch it on when resumed)",
    )
    p.add_argument("--ckpt-every", type=int, default=500)
    p.add_argument("--sample-every", type=int, default=500)
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--eval-every", type=int, default=1000, help="judge adherence every N steps (0 = never)")
    p.add_argument(
        "--stop-after", type=int, default=None, help="stop (with a checkpoint) after this step; for tests"
    )
    p.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="stop training (checkpoint, then export) once this much training time has passed; the run is "
        "then exactly the run with --steps set to the step it reached",
    )
    p.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint in --workdir")
    p.add_argument("--export-only", action="store_true", help="export the last checkpoint and exit")
    p.add_argument("--pack", metavar="DIR", default=None,
                   help="copy the last checkpoint into DIR with its float tensors in fp16 (half the size, to "
                        "commit and continue in a later run: --workdir DIR resumes from it) and exit")
    return p.parse_args(argv)


def generator_settings(args) -> StyleGAN2Settings:
    return StyleGAN2Settings(
        z_dim=args.z_dim,
        w_dim=args.w_dim,
        c_dim=NUM_CLASSES,
        mapping_layers=args.mapping_layers,
        mapping_lr_mul=args.mapping_lr_mul,
        resolution=args.resolution,
        channel_base=args.channel_base,
        channel_max=args.channel_max,
    )


def discriminator_config(args) -> GeneratorConfig:
    """The sizes of the discriminator (``pipelines.stylegan.Discriminator`` reads them from a GeneratorConfig)."""
    return GeneratorConfig(
        z_dim=args.z_dim,
        w_dim=args.w_dim,
        mapping_layers=args.mapping_layers,
        mapping_lr_mul=args.mapping_lr_mul,
        resolution=args.resolution,
        channel_base=args.channel_base,
        channel_max=args.channel_max,
        num_classes=NUM_CLASSES,
        class_factors=[len(CATEGORIES), len(STYLES)] if args.factorized else [],
    )


# ---------------------------------------------------------------------------------------------- data


def load_data(args, device):
    """Pictures [N, 3, R, R] in [-1, 1] on ``device``, class ids [N], and per-class index lists."""
    images, labels = load_emoji(args.cache, split=args.split, size=args.resolution)
    cat, sty = label_arrays(labels)
    cls = torch.from_numpy(cat * len(STYLES) + sty)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    order = torch.argsort(cls, stable=True)
    counts = torch.bincount(cls, minlength=NUM_CLASSES)
    starts = torch.cumsum(counts, 0) - counts
    if (counts == 0).any():
        raise SystemExit(f"some classes have no pictures: {counts.tolist()}")
    return x.to(device), cls, order, starts, counts, labels


def class_balanced(batch: int, order, starts, counts):
    """Indices of a class-balanced batch: a uniform class, then a uniform picture of that class."""
    c = torch.randint(0, NUM_CLASSES, (batch,))
    pick = (torch.rand(batch) * counts[c]).long().clamp_max(counts[c] - 1)
    return order[starts[c] + pick], c


# ---------------------------------------------------------------------------------------------- augmentation


def augment(x: torch.Tensor, policy: list[str]) -> torch.Tensor:
    """DiffAugment: random per-picture colour (brightness, saturation, contrast) and translation (1/8 side).

    Differentiable in ``x``; random numbers come from torch's CPU generator (the same on every device).
    """
    n, _, h, w = x.shape
    dev = x.device

    def rand(*shape):
        return torch.rand(*shape).to(dev, x.dtype)

    if "color" in policy:
        x = x + (rand(n, 1, 1, 1) - 0.5)
        mean = x.mean(dim=1, keepdim=True)
        x = (x - mean) * (rand(n, 1, 1, 1) * 2) + mean
        mean = x.mean(dim=[1, 2, 3], keepdim=True)
        x = (x - mean) * (rand(n, 1, 1, 1) + 0.5) + mean
    if "translation" in policy:
        s = max(1, h // 8)
        dy = torch.randint(-s, s + 1, (n, 1, 1)).to(dev)
        dx = torch.randint(-s, s + 1, (n, 1, 1)).to(dev)
        gb, gy, gx = torch.meshgrid(
            torch.arange(n, device=dev),
            torch.arange(h, device=dev),
            torch.arange(w, device=dev),
            indexing="ij",
        )
        gy = (gy + dy + s).clamp(0, h + 2 * s - 1)
        gx = (gx + dx + s).clamp(0, w + 2 * s - 1)
        padded = F.pad(x, [s, s, s, s], value=1.0)  # white, like the emoji backgrounds
        x = padded.permute(0, 2, 3, 1)[gb, gy, gx].permute(0, 3, 1, 2).contiguous()
    if "cutout" in policy:
        ch, cw = h // 2, w // 2
        oy = torch.randint(0, h - ch + 1, (n, 1, 1)).to(dev)
        ox = torch.randint(0, w - cw + 1, (n, 1, 1)).to(dev)
        yy = torch.arange(h, device=dev)[None, :, None]
        xx = torch.arange(w, device=dev)[None, None, :]
        hole = (yy >= oy) & (yy < oy + ch) & (xx >= ox) & (xx < ox + cw)
        x = x * (~hole)[:, None].to(x.dtype)
    return x


# ---------------------------------------------------------------------------------------------- checkpoints


def optimizer_tensors(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    out = {}
    for idx, state in opt.state_dict()["state"].items():
        for key, value in state.items():
            out[f"{idx}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    return out


def load_optimizer_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    sd = opt.state_dict()
    state: dict[int, dict] = defaultdict(dict)
    for name, value in tensors.items():
        idx, key = name.split(".", 1)
        state[int(idx)][key] = value
    sd["state"] = dict(state)
    opt.load_state_dict(sd)


def save_checkpoint(workdir: Path, step: int, nets: dict, opts: dict, extra: dict) -> None:
    """Write into ``ckpt.tmp`` then swap it for ``ckpt``: an interrupted save leaves the old one."""
    tmp, final, old = workdir / "ckpt.tmp", workdir / "ckpt", workdir / "ckpt.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, net in nets.items():
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()},
            str(tmp / f"{name}.safetensors"),
        )
    for name, opt in opts.items():
        save_file(optimizer_tensors(opt), str(tmp / f"opt_{name}.safetensors"))
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state()
    save_file(rng, str(tmp / "rng.safetensors"))
    (tmp / "state.json").write_text(json.dumps({"step": step, **extra}, indent=2))
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def class_and_style_loss(logits: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the 18-way class logits, plus that of the style they imply (summed over categories)."""
    per_style = logits.reshape(len(logits), len(CATEGORIES), len(STYLES)).logsumexp(dim=1)  # [N, styles]
    return F.cross_entropy(logits, c) + F.cross_entropy(per_style, c % len(STYLES))


def pack_checkpoint(ckpt: Path, workdir: Path) -> int:
    """``ckpt`` as ``workdir/ckpt`` with float32 tensors in fp16 (Adam's step counts and the RNG state
    kept exact); resuming from it casts them back, so the run goes on, though not bit for bit."""
    out = workdir / "ckpt"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for path in sorted(ckpt.glob("*.safetensors")):
        tensors = load_file(str(path))
        save_file({k: v.half() if v.dtype == torch.float32 and not k.endswith(".step") else v
                   for k, v in tensors.items()}, str(out / path.name))
    shutil.copy(ckpt / "state.json", out / "state.json")
    return json.loads((ckpt / "state.json").read_text())["step"]


def find_checkpoint(workdir: Path) -> Path | None:
    for name in ("ckpt", "ckpt.old"):
        if (workdir / name / "state.json").is_file():
            return workdir / name
    return None


def load_checkpoint(ckpt: Path, nets: dict, opts: dict, device) -> dict:
    for name, net in nets.items():
        tensors = load_file(str(ckpt / f"{name}.safetensors"), device=str(device))
        new = sorted(set(net.state_dict()) - set(tensors))
        if name == "D" and new and all(k.startswith("aux.") for k in new):  # aux head switched on now
            print(f"D: starting the auxiliary classifier head fresh ({', '.join(new)})", flush=True)
            net.load_state_dict(tensors, strict=False)
        elif name != "D" and set(tensors) != set(net.state_dict()):
            raise SystemExit(
                f"{ckpt} holds another generator layout (the earlier pipelines/stylegan.py one?): "
                "resume it with that version of this script, or start anew with --fresh or another --workdir"
            )
        else:
            net.load_state_dict(tensors)
    for name, opt in opts.items():
        load_optimizer_tensors(opt, load_file(str(ckpt / f"opt_{name}.safetensors"), device=str(device)))
    rng = load_file(str(ckpt / "rng.safetensors"))
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.device(device).type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"])
    return json.loads((ckpt / "state.json").read_text())


# ---------------------------------------------------------------------------------------------- pictures and judge


GRID_SEEDS = 4  # columns per style in the grid


def grid_inputs(z_dim: int):
    """Fixed z and classes for the grid: row = category, columns = GRID_SEEDS noto then GRID_SEEDS twemoji."""
    g = torch.Generator().manual_seed(2024)
    z = torch.randn(GRID_SEEDS, z_dim, generator=g)
    zs, cs = [], []
    for ci in range(len(CATEGORIES)):
        for si in range(len(STYLES)):
            zs.append(z)
            cs.append(torch.full((GRID_SEEDS,), ci * len(STYLES) + si))
    return torch.cat(zs), torch.cat(cs)


def save_grid(images: torch.Tensor, rows: int, path: Path, scale: int = 2) -> None:
    """[N, 3, R, R] in [-1, 1] -> one PNG, ``rows`` rows, upscaled ``scale`` x (nearest) with 2 px gaps."""
    from PIL import Image

    n, _, r, _ = images.shape
    cols = n // rows
    pix = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    pix = pix.repeat_interleave(scale, 2).repeat_interleave(scale, 3).permute(0, 2, 3, 1).numpy()
    s, gap = r * scale, 2
    canvas = np.full((rows * (s + gap) + gap, cols * (s + gap) + gap, 3), 200, dtype=np.uint8)
    for i in range(n):
        y, x = divmod(i, cols)
        canvas[
            gap + y * (s + gap) : gap + y * (s + gap) + s, gap + x * (s + gap) : gap + x * (s + gap) + s
        ] = pix[i]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas).save(path)


def try_judge(device):
    try:
        from pipelines.judge import load_judge

        return load_judge(device=device)
    except Exception:
        return None


@torch.no_grad()
def judge_adherence(
    judge, G: StyleGAN2Generator, psi: float, per_class: int = 16, seed: int = 7, device="cpu"
) -> dict:
    """Judge top-1 agreement with the requested category / style over ``per_class`` samples per class."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(NUM_CLASSES * per_class, G.z_dim, generator=g).to(device)
    c = torch.arange(NUM_CLASSES).repeat_interleave(per_class).to(device)
    onehot = one_hot_classes(c, NUM_CLASSES).to(device)
    imgs = torch.cat(
        [
            G(z[i : i + 256], onehot[i : i + 256], truncation_psi=psi, noise_mode="const")
            for i in range(0, len(z), 256)
        ]
    )
    # Judge what the studio shows: pixels rounded to uint8, then back to [-1, 1].
    imgs = ((imgs.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1
    pred = judge.predict(imgs.float())
    cat_pred = pred["category_probs"].argmax(-1)
    sty_pred = pred["style_probs"].argmax(-1)
    cat_true = (c // len(STYLES)).cpu()
    sty_true = (c % len(STYLES)).cpu()
    per_cat = {
        CATEGORIES[i]: float((cat_pred[cat_true == i] == i).float().mean()) for i in range(len(CATEGORIES))
    }
    per_sty = {STYLES[i]: float((sty_pred[sty_true == i] == i).float().mean()) for i in range(len(STYLES))}
    return {
        "category_top1": float((cat_pred == cat_true).float().mean()),
        "style_top1": float((sty_pred == sty_true).float().mean()),
        "per_category": per_cat,
        "per_style": per_sty,
        "samples": int(len(z)),
        "truncation": psi,
    }


# ---------------------------------------------------------------------------------------------- export


def build_vocabulary(labels: list[dict], per_category: int = 600) -> dict:
    """Per category, the words of its emoji names (and short names) with weight P(category | word).

    Only words that point to the category at least half of the time are kept, the most frequent
    first, at most ``per_category``; the category name's own words always weigh 1.
    """
    seen, counts = set(), defaultdict(Counter)
    for lab in labels:
        key = (lab["category"], lab["name"])
        if key in seen:  # count each emoji once, not once per style and skin tone
            continue
        seen.add(key)
        words = set(re.findall(r"[a-z0-9]+", " ".join([lab["name"], *lab.get("short_names", [])]).lower()))
        for word in words - STOPWORDS:
            if len(word) > 1:
                counts[lab["category"]][word] += 1
    total = Counter()
    for cat in counts.values():
        total.update(cat)
    vocab = {}
    for cat in CATEGORIES:
        weight = {w: n / total[w] for w, n in counts[cat].items() if n / total[w] >= 0.5}
        top = sorted(weight, key=lambda w: (-counts[cat][w] * weight[w], w))[:per_category]
        words = {w: round(weight[w], 3) for w in sorted(top)}
        for w in CATEGORY_NAME_WORDS[cat]:
            words[w] = 1.0
        vocab[cat] = words
    return vocab


def all_labels(cache) -> list[dict]:
    """The labels of every picture (both splits): the vocabulary may know names it was not trained on."""
    from emoji_data import LABELS_FILE, resolve_cache

    with open(resolve_cache(cache) / LABELS_FILE, encoding="utf-8") as f:
        return json.load(f)["images"]


@torch.no_grad()
def studio_samples(G: StyleGAN2Generator, seeds: list[int], class_id: int, psi: float) -> torch.Tensor:
    """What the studio renders for ``seeds`` of one class: z drawn per seed on a CPU generator, w
    truncated toward the class's centre, fixed noise. [N, 3, R, R] in [-1, 1]."""
    z = torch.stack([torch.randn(G.z_dim, generator=cpu_generator(s)) for s in seeds])  # [N, z_dim]
    c = one_hot_classes(torch.full((len(seeds),), class_id), NUM_CLASSES)
    return G(z, c, truncation_psi=psi, noise_mode="const")


def export(G_ema: StyleGAN2Generator, args, step: int, seconds: float, metrics: dict | None) -> Path:
    import copy

    G = copy.deepcopy(G_ema).cpu().float().eval()
    exact_w_averages(G, per_class=4096, seed=1)
    extra = {
        "labels": {
            "categories": CATEGORIES,
            "styles": STYLES,
            "class_id": "category_index * len(styles) + style_index",
            "category_words": build_vocabulary(all_labels(args.cache)),
            "style_words": STYLE_WORDS,
            "unmatched": "a prompt that names no category (style) gets one chosen from the seed",
        },
        "default_settings": {"truncation": args.truncation},
        "training": {
            "script": "scripts/train_gan.py",
            "generator": "pipelines/stylegan_nets/sg2.py",
            "steps": step,
            "batch": args.batch,
            "seconds": round(seconds),
            "data_split": args.split,
        },
    }
    if metrics:
        extra["training"]["judge"] = {k: metrics[k] for k in ("category_top1", "style_top1", "truncation")}
    out = Path(args.out)
    save_sg2_folder(G, out, extra=extra)
    # The model card's grid: rows = categories, seeds 0-3 noto then twemoji, at the default truncation.
    seeds = list(range(GRID_SEEDS))
    x = torch.cat([studio_samples(G, seeds, class_id, args.truncation) for class_id in range(NUM_CLASSES)])
    save_grid(x, len(CATEGORIES), out / "samples.png", scale=2)
    return out


# ---------------------------------------------------------------------------------------------- training


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(args.seed)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    policy = [p for p in args.augment.split(",") if p]

    if args.pack:
        ckpt = find_checkpoint(workdir)
        if ckpt is None:
            raise SystemExit(f"no checkpoint in {workdir} to pack")
        print(f"packed step {pack_checkpoint(ckpt, Path(args.pack))} into {args.pack}")
        return
    x_all, _, order, starts, counts, _ = load_data(args, device)
    settings = generator_settings(args)
    ckpt = None if args.fresh else find_checkpoint(workdir)
    if args.aux_weight is None:
        trained = json.loads((ckpt / "state.json").read_text())["args"] if ckpt else {}
        args.aux_weight = float(trained.get("aux_weight") or 0.0)
    G = StyleGAN2Generator.create(settings).to(device)
    D = Discriminator(discriminator_config(args), aux=args.aux_weight > 0).to(device)
    G_ema = StyleGAN2Generator.from_settings(settings).to(device)
    G_ema.load_state_dict(G.state_dict())
    G.train(), D.train(), G_ema.eval().requires_grad_(False)
    ratio = args.r1_every / (args.r1_every + 1)  # lazy regularization: lr and betas as in StyleGAN2
    opt_G = torch.optim.Adam(G.parameters(), lr=args.lr, betas=(0.0, 0.99), eps=1e-8)
    opt_D = torch.optim.Adam(D.parameters(), lr=args.lr * ratio, betas=(0.0, 0.99**ratio), eps=1e-8)
    nets, opts = {"G": G, "D": D, "G_ema": G_ema}, {"G": opt_G, "D": opt_D}

    step, seconds, metrics = 0, 0.0, None
    if ckpt is not None:
        state = load_checkpoint(ckpt, nets, opts, device)
        step, seconds, metrics = state["step"], state.get("seconds", 0.0), state.get("metrics")
        print(f"resumed from {ckpt} at step {step} ({seconds:.0f} s trained so far)", flush=True)
    if args.export_only:
        if ckpt is None:
            raise SystemExit(f"no checkpoint in {workdir} to export")
        judge = try_judge(device)
        if judge is not None:
            metrics = judge_adherence(judge, G_ema, args.truncation, per_class=64, device=device)
            print(json.dumps(metrics, indent=1))
        print(f"exported to {export(G_ema, args, step, seconds, metrics)}")
        return

    print(
        f"emoji-gan: {len(x_all)} pictures at {args.resolution}px, {NUM_CLASSES} classes, "
        f"G {sum(p.numel() for p in G.parameters()) / 1e6:.2f}M / D {sum(p.numel() for p in D.parameters()) / 1e6:.2f}M "
        f"parameters, batch {args.batch}, {args.steps} steps on {device} ({torch.get_num_threads()} threads)",
        flush=True,
    )
    judge = try_judge(device) if args.eval_every else None
    grid_z, grid_c = grid_inputs(settings.z_dim)
    grid_c = one_hot_classes(grid_c, NUM_CLASSES)
    log = open(workdir / "log.jsonl", "a")
    stats = defaultdict(float)
    bar = tqdm(total=args.steps, initial=step, desc="emoji-gan", dynamic_ncols=True, mininterval=2.0)
    aux = args.aux_weight > 0
    t0, last = time.time() - seconds, time.time()
    last_step = step
    while step < args.steps:
        # --- one D update, then one G update on the same fakes
        idx, c_real = class_balanced(args.batch, order, starts, counts)
        real, c_real = x_all[idx.to(device)], c_real.to(device)
        z = torch.randn(args.batch, settings.z_dim).to(device)
        c_fake = torch.randint(0, NUM_CLASSES, (args.batch,))
        fake = G(z, one_hot_classes(c_fake, NUM_CLASSES).to(device), noise_mode="random")  # [B, 3, R, R]
        c_fake = c_fake.to(device)

        do_r1 = args.r1_gamma > 0 and step % args.r1_every == 0
        real_aug = augment(real, policy).detach().requires_grad_(do_r1)
        if aux:
            d_real, logits_real = D(real_aug, c_real, with_aux=True)
        else:
            d_real = D(real_aug, c_real)
        d_fake = D(augment(fake.detach(), policy), c_fake)
        loss_d = F.softplus(d_fake).mean() + F.softplus(-d_real).mean()
        stats["loss_d"] += loss_d.item()
        if aux:
            aux_d = class_and_style_loss(logits_real, c_real)
            loss_d = loss_d + args.aux_weight * aux_d
            stats["aux_d"] += aux_d.item()
        if do_r1:
            (grad,) = torch.autograd.grad(d_real.sum(), real_aug, create_graph=True)
            r1 = grad.square().sum(dim=[1, 2, 3]).mean()
            loss_d = loss_d + r1 * (args.r1_gamma / 2) * args.r1_every
            stats["r1"] += r1.item() * args.r1_every
        opt_D.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_D.step()

        D.requires_grad_(False)
        if aux:
            g_score, logits_fake = D(augment(fake, policy), c_fake, with_aux=True)
            aux_g = class_and_style_loss(logits_fake, c_fake)
            loss_g = F.softplus(-g_score).mean() + args.aux_weight * aux_g
            stats["aux_g"] += aux_g.item()
        else:
            loss_g = F.softplus(-D(augment(fake, policy), c_fake)).mean()
        opt_G.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_G.step()
        D.requires_grad_(True)

        # --- EMA of G (weights and buffers)
        step += 1
        nimg = step * args.batch
        ema_nimg = (
            min(args.ema_kimg * 1000, nimg * args.ema_rampup) if args.ema_rampup else args.ema_kimg * 1000
        )
        beta = 0.5 ** (args.batch / max(ema_nimg, 1e-8))
        with torch.no_grad():
            for p_ema, p in zip(G_ema.parameters(), G.parameters(), strict=True):
                p_ema.lerp_(p, 1 - beta)
            for b_ema, b in zip(G_ema.buffers(), G.buffers(), strict=True):
                b_ema.copy_(b)

        stats["loss_g"] += loss_g.item()
        stats["d_real"] += d_real.mean().item()
        stats["d_fake"] += d_fake.mean().item()
        stats["n"] += 1
        bar.update(1)

        if step % args.log_every == 0 or step == args.steps:
            now = time.time()
            n = stats.pop("n")
            row = {k: round(v / n, 4) for k, v in stats.items()}
            row.update(
                step=step,
                kimg=round(nimg / 1000, 1),
                sec=round(now - t0),
                steps_per_s=round((step - last_step) / (now - last), 3),
            )
            bar.set_postfix(d=row["loss_d"], g=row["loss_g"])
            tqdm.write(json.dumps(row))
            log.write(json.dumps(row) + "\n")
            log.flush()
            stats.clear()
            last, last_step = now, step
        if step % args.sample_every == 0 or step == args.steps:
            with torch.no_grad():
                imgs = G_ema(grid_z.to(device), grid_c.to(device), noise_mode="const")
            save_grid(imgs, len(CATEGORIES), workdir / "samples" / f"step{step:06d}.png")
        if judge is not None and (step % args.eval_every == 0 or step == args.steps):
            metrics = judge_adherence(judge, G_ema, args.truncation, device=device)
            short = {k: round(v, 3) for k, v in metrics.items() if k.endswith("top1")}
            tqdm.write(json.dumps({"step": step, "judge": short, "truncation": args.truncation}))
            log.write(json.dumps({"step": step, "judge": metrics}) + "\n")
            log.flush()
        stop = args.stop_after is not None and step >= args.stop_after
        out_of_time = args.max_minutes is not None and time.time() - t0 >= args.max_minutes * 60
        if step % args.ckpt_every == 0 or step == args.steps or stop or out_of_time:
            save_checkpoint(
                workdir,
                step,
                nets,
                opts,
                {"seconds": time.time() - t0, "metrics": metrics, "args": vars(args)},
            )
        if stop:
            bar.close()
            print(f"stopped after step {step} as asked; run again to resume", flush=True)
            return
        if out_of_time:
            tqdm.write(f"time limit of {args.max_minutes} min reached at step {step}: stopping here")
            break
    bar.close()
    seconds = time.time() - t0
    if judge is not None:
        metrics = judge_adherence(judge, G_ema, args.truncation, per_class=64, device=device)
        print(json.dumps(metrics, indent=1), flush=True)
    out = export(G_ema, args, step, seconds, metrics)
    print(f"trained {step} steps in {seconds / 60:.1f} min; exported the EMA generator to {out}", flush=True)


if __name__ == "__main__":
    main()

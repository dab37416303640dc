#!/usr/bin/env python
"""Train the emoji-judge (category + art style classifier) on the emoji data set.

Needs the data set from ``python scripts/prepare_emoji.py``. Trains on the ``train`` split,
reports accuracy on the ``heldout`` split (emoji never seen in training), and writes the
judge to ``pipelines/embedded/emoji-judge/`` (``config.json``, ``model.safetensors`` in fp16,
``metrics.json``).

Deterministic: the data order, the augmentation and dropout draw from generators seeded with
``(seed, epoch)``, so a run resumed from its checkpoint (written after every epoch as
``<checkpoint>.safetensors`` + ``<checkpoint>.json``) ends with the same weights as an
uninterrupted one on the same device. Runs unchanged on CPU or CUDA (``--device``).

    python scripts/train_judge.py --threads 1            # CPU, one thread
    python scripts/train_judge.py --resume               # go on from the last checkpoint
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
if str(ROOT) not in sys.path:
    sys.path.insert(1, str(ROOT))

from training import load_checkpoint, save_checkpoint, torch_device  # noqa: E402

from emoji_data import CATEGORIES, STYLES, EmojiDataMissing, label_arrays, load_emoji  # noqa: E402
from pipelines.judge import EmojiJudge, JudgeConfig  # noqa: E402

DEFAULT_OUT = ROOT / "pipelines" / "embedded" / "emoji-judge"
DEFAULT_CKPT = ROOT / "out" / "judge-train" / "checkpoint"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="Train the emoji-judge classifier.")
    ap.add_argument("--cache", help="emoji data cache folder (default: as scripts/prepare_emoji.py)")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="folder for the trained judge")
    ap.add_argument(
        "--checkpoint", default=str(DEFAULT_CKPT), help="checkpoint path stem (.safetensors/.json)"
    )
    ap.add_argument("--resume", action="store_true", help="continue from the checkpoint if there is one")
    ap.add_argument(
        "--stop-after", type=int, default=None, help="stop (checkpointed) after this epoch; --resume goes on"
    )
    ap.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if present)")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads for torch (default 1)")
    ap.add_argument("--epochs", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--weight-decay", type=float, default=5e-4)
    ap.add_argument("--label-smoothing", type=float, default=0.1)
    ap.add_argument("--style-weight", type=float, default=1.0, help="weight of the style loss")
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args(argv)


# --------------------------------------------------------------------------- data


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> uint8 [N, 3, H, W] (kept as bytes; scaled per batch)."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random scale (0.85-1.1), shift (+-4 px of 64) and horizontal flip; the border stays white."""
    n = x.shape[0]
    scale = torch.empty(n).uniform_(0.85, 1.10, generator=gen)
    shift = torch.empty(n, 2).uniform_(-0.125, 0.125, generator=gen)  # in [-1, 1] units: 4 px of 64
    flip = torch.rand(n, generator=gen) < 0.5
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = torch.where(flip, -1.0, 1.0) / scale
    theta[:, 1, 1] = 1.0 / scale
    theta[:, :, 2] = shift
    theta = theta.to(x.device, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # grid_sample pads with zeros: shift to white = 0 first, so the padding is white.
    return F.grid_sample(x - 1.0, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + 1.0


def scaled(xb: torch.Tensor) -> torch.Tensor:
    return xb.float() / 127.5 - 1.0


def sample_weights(labels: list[dict]) -> np.ndarray:
    """Each emoji counts once per style: its skin-tone variations share one unit of weight."""
    counts: dict[tuple[str, str], int] = {}
    for lab in labels:
        k = (lab["base"], lab["style"])
        counts[k] = counts.get(k, 0) + 1
    w = np.array([1.0 / counts[(lab["base"], lab["style"])] for lab in labels], dtype=np.float64)
    return (w / w.mean()).astype(np.float32)


# --------------------------------------------------------------------------- checkpoint


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(model: EmojiJudge, x: torch.Tensor, labels: list[dict], batch: int = 512) -> dict:
    cat_true, sty_true = label_arrays(labels)
    model.eval()
    cat_pred, sty_pred = [], []
    for i in range(0, len(x), batch):
        c, s = model(scaled(x[i : i + batch]))
        cat_pred.append(c.argmax(-1).cpu())
        sty_pred.append(s.argmax(-1).cpu())
    model.train()
    cp, sp = torch.cat(cat_pred).numpy(), torch.cat(sty_pred).numpy()
    cat_ok, sty_ok = cp == cat_true, sp == sty_true
    per_cat = {
        c: float(cat_ok[cat_true == i].mean()) for i, c in enumerate(CATEGORIES) if (cat_true == i).any()
    }
    w = sample_weights(labels)  # per-emoji view: skin-tone variations share one vote
    return {
        "images": len(labels),
        "emoji": len({lab["base"] for lab in labels}),
        "style_accuracy": float(sty_ok.mean()),
        "category_accuracy": float(cat_ok.mean()),
        "category_accuracy_per_emoji": float((cat_ok * w).sum() / w.sum()),
        "style_accuracy_per_emoji": float((sty_ok * w).sum() / w.sum()),
        "category_accuracy_balanced": float(np.mean(list(per_cat.values()))),
        "category_accuracy_by_class": per_cat,
        "category_confusion": np.bincount(cat_true * len(CATEGORIES) + cp, minlength=len(CATEGORIES) ** 2)
        .reshape(len(CATEGORIES), len(CATEGORIES))
        .tolist(),
    }


# --------------------------------------------------------------------------- training


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def lr_at(step: int, total: int, base: float) -> float:
    """Linear warm-up over the first 5% of steps, then cosine decay to zero."""
    warm = max(1, total // 20)
    if step < warm:
        return base * (step + 1) / warm
    return base * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch_device(args.threads, args.device)

    try:
        train_np, train_labels = load_emoji(args.cache, split="train", size=64)
        held_np, held_labels = load_emoji(args.cache, split="heldout", size=64)
    except EmojiDataMissing as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    assert list(JudgeConfig().categories) == CATEGORIES and list(JudgeConfig().styles) == STYLES
    x_train = to_tensor(train_np).to(device)
    x_held = to_tensor(held_np).to(device)
    cat_np, sty_np = label_arrays(train_labels)
    y_cat = torch.from_numpy(cat_np).to(device)
    y_sty = torch.from_numpy(sty_np).to(device)
    w_train = torch.from_numpy(sample_weights(train_labels)).to(device)
    print(f"train {len(train_labels)} images, held-out {len(held_labels)} images, device {device}")

    torch.manual_seed(args.seed)
    config = JudgeConfig()
    model = EmojiJudge(config).to(device)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
    )
    steps_per_epoch = math.ceil(len(train_labels) / args.batch_size)
    total_steps = steps_per_epoch * args.epochs
    run_key = {
        k: getattr(args, k)
        for k in ("epochs", "batch_size", "lr", "weight_decay", "label_smoothing", "style_weight", "seed")
    }
    run_key["config"] = config.to_dict()

    stem = Path(args.checkpoint)
    start_epoch, elapsed = 0, 0.0
    history: list[dict] = []
    if args.resume:
        state = load_checkpoint(stem, {"model": model}, opt)
        if state is not None:
            if state["run"] != json.loads(json.dumps(run_key)):
                print(
                    "error: the checkpoint was made with other settings; drop --resume or match them",
                    file=sys.stderr,
                )
                return 2
            start_epoch, elapsed, history = state["epoch"], state["elapsed_s"], state["history"]
            print(f"resumed from {stem} after epoch {start_epoch}")
        else:
            print(f"no checkpoint at {stem}; starting fresh")

    model.train()
    for epoch in range(start_epoch, args.epochs):
        t0 = time.time()
        gen = torch.Generator().manual_seed(args.seed * 100_003 + epoch)
        torch.manual_seed(args.seed * 100_003 + epoch)  # dropout
        perm = torch.randperm(len(train_labels), generator=gen).to(device)
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{args.epochs}", unit="batch", leave=False)
        tot = 0.0
        for b in bar:
            step = epoch * steps_per_epoch + b
            for g in opt.param_groups:
                g["lr"] = lr_at(step, total_steps, args.lr)
            idx = perm[b * args.batch_size : (b + 1) * args.batch_size]
            xb = augment(scaled(x_train[idx]), gen)
            c, s = model(xb)
            w = w_train[idx]
            loss_c = (
                F.cross_entropy(c, y_cat[idx], reduction="none", label_smoothing=args.label_smoothing) * w
            ).sum() / w.sum()
            loss_s = (
                F.cross_entropy(s, y_sty[idx], reduction="none", label_smoothing=args.label_smoothing) * w
            ).sum() / w.sum()
            loss = loss_c + args.style_weight * loss_s
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot += loss.item()
            bar.set_postfix(loss=f"{tot / (b + 1):.3f}")
        bar.close()
        elapsed += time.time() - t0
        m = evaluate(model, x_held, held_labels)
        history.append(
            {
                "epoch": epoch + 1,
                "loss": tot / steps_per_epoch,
                "heldout_style": m["style_accuracy"],
                "heldout_category": m["category_accuracy"],
            }
        )
        print(
            f"epoch {epoch + 1:3d}/{args.epochs}  loss {tot / steps_per_epoch:.3f}  held-out style "
            f"{m['style_accuracy']:.3f}  category {m['category_accuracy']:.3f} "
            f"(per emoji {m['category_accuracy_per_emoji']:.3f})  [{elapsed:.0f}s]",
            flush=True,
        )
        save_checkpoint(
            stem, {"model": model}, opt, {"run": run_key, "epoch": epoch + 1, "elapsed_s": elapsed, "history": history}
        )
        if args.stop_after is not None and epoch + 1 >= args.stop_after and epoch + 1 < args.epochs:
            print(f"stopped after epoch {epoch + 1}; checkpoint in {stem}.*; go on with --resume")
            return 0

    model.eval()
    out = Path(args.out)
    model.save_pretrained(out)
    final = EmojiJudge.from_pretrained(out, device=device)  # score what was stored (fp16 weights)
    m = evaluate(final, x_held, held_labels)
    m_train = evaluate(final, x_train, train_labels)
    metrics = {
        "heldout": m,
        "train": {k: m_train[k] for k in ("images", "emoji", "style_accuracy", "category_accuracy")},
        "training": {
            "command": " ".join(
                ["python", "scripts/train_judge.py", *(sys.argv[1:] if argv is None else argv)]
            ),
            **run_key,
            "device": str(device),
            "threads": torch.get_num_threads() if device.type == "cpu" else None,
            "hardware": (torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()),
            "train_seconds": round(elapsed, 1),
            "torch": torch.__version__,
            "history": history,
        },
        "parameters": sum(p.numel() for p in final.parameters()),
        "weights_bytes": (out / "model.safetensors").stat().st_size,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    print(
        f"wrote {out} ({metrics['weights_bytes'] / 1e6:.2f} MB weights, {metrics['parameters']} parameters)"
    )
    print(f"training time {elapsed / 60:.1f} min on {device}")
    print(f"held-out ({m['images']} images of {m['emoji']} unseen emoji):")
    print(f"  style accuracy     {m['style_accuracy']:.3f}")
    print(
        f"  category accuracy  {m['category_accuracy']:.3f}  (per emoji {m['category_accuracy_per_emoji']:.3f}, "
        f"class-balanced {m['category_accuracy_balanced']:.3f})"
    )
    for c, a in m["category_accuracy_by_class"].items():
        print(f"    {c:20s} {a:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Attribute probes for the judge: linear classifiers on its features for attributes it has no head for.

A probe separates real emoji whose names contain the "from" words from those with the "to"
words (e.g. sun -> moon), using the judge's penultimate features; ``studio vectors score``
uses it to judge edits of that attribute. Probes are saved beside the judge
(``pipelines/embedded/emoji-judge/probes.json`` + ``probes.safetensors``).

    python scripts/build_probes.py
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from emoji_data import load_emoji  # noqa: E402
from pipelines.judge import load_judge  # noqa: E402

JUDGE_DIR = Path(__file__).resolve().parents[1] / "pipelines" / "embedded" / "emoji-judge"
PROBES = {
    # attribute name: (from value, to value, words for "from", words for "to", names to leave out)
    "sky": ("sun", "moon", ["sun", "sunrise"], ["moon", "night"], ["moon cake", "moon viewing ceremony"]),
}


def matches(name: str, words: list[str]) -> bool:
    return any(re.search(rf"\b{w}\b", name) for w in words)


def fit(x: torch.Tensor, y: torch.Tensor, l2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-regularised logistic regression, [N, D] -> (weight [D], bias [])."""
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=300, line_search_fn="strong_wolfe")
    pos = y.mean()
    weights = torch.where(y > 0, 0.5 / pos, 0.5 / (1 - pos))  # balance the two sets

    def closure():
        opt.zero_grad()
        loss = (torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y, reduction="none") * weights).mean()
        loss = loss + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--l2", type=float, default=1e-3)
    args = ap.parse_args()
    torch.manual_seed(0)
    judge = load_judge()
    images, labels = load_emoji(split="all")
    x_all = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    tensors, meta = {}, {}
    for attr, (src, dst, from_words, to_words, skip) in PROBES.items():
        keep = [i for i, lab in enumerate(labels) if lab["name"] not in skip
                and (matches(lab["name"], from_words) != matches(lab["name"], to_words))]
        y = torch.tensor([1.0 if matches(labels[i]["name"], to_words) else 0.0 for i in keep], dtype=torch.float64)
        with torch.no_grad():
            feats = judge.features(x_all[keep]).double()
        mu, sd = feats.mean(0), feats.std(0).clamp_min(1e-6)
        xs = (feats - mu) / sd
        emoji = [labels[i]["base"] for i in keep]
        # leave-one-emoji-out accuracy: both styles of an emoji leave together
        correct = 0
        for e in sorted(set(emoji)):
            test = torch.tensor([k == e for k in emoji])
            w, b = fit(xs[~test], y[~test], args.l2)
            correct += int((((xs[test] @ w + b) > 0).double() == y[test]).sum())
        w, b = fit(xs, y, args.l2)
        acc = correct / len(keep)
        tensors[f"{attr}.weight"] = (w / sd).float()  # folded back onto raw features
        tensors[f"{attr}.bias"] = (b - (mu / sd) @ w).float().reshape(1)
        meta[attr] = {"from": src, "to": dst, "from_words": from_words, "to_words": to_words,
                      "images": {"from": int((y == 0).sum()), "to": int((y == 1).sum())},
                      "leave_one_emoji_out_accuracy": round(acc, 4)}
        print(f"probe {attr}: {src} ({int((y == 0).sum())} images) -> {dst} ({int((y == 1).sum())} images), "
              f"leave-one-emoji-out accuracy {acc:.1%}")
    save_file(tensors, JUDGE_DIR / "probes.safetensors")
    (JUDGE_DIR / "probes.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {JUDGE_DIR / 'probes.json'}")


if __name__ == "__main__":
    main()

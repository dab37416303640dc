#!/usr/bin/env python
"""Train the embedded ``emoji-diffusion`` model: a small text-to-image latent diffusion model.

Two stages, each resumable from its own checkpoint in ``--work`` (default ``out/emoji-diffusion``):

``--stage vae``
    An ``AutoencoderKL`` (64 px RGB -> 16x16x4 latents, three levels) trained with L1 + an
    edge (image-gradient) L1 term + a small KL term. At the end the latent ``scaling_factor``
    is set to 1/std of the training set's latents and the VAE is saved to ``WORK/vae``.

``--stage unet``
    A ``CLIPTextModel`` (fed by a ``CLIPTokenizer`` whose BPE merges are learnt from the training
    captions, ``--tokenizer words``, or one of single characters, ``--tokenizer chars``) and a
    ``UNet2DConditionModel`` with cross-attention, trained jointly on the emoji captions in the
    VAE's (scaled) latent space: v-prediction, cosine noise schedule, min-SNR loss weights,
    AdamW, EMA of both networks' weights, 10% caption dropout (the empty prompt is the
    unconditional one for classifier-free guidance), captions randomly shortened (category,
    style or skin tone left out) so short prompts work too, horizontal flips where a flip does
    not change the meaning. The end result, with the EMA weights, is written as a standard
    diffusers folder (``--out``, default ``pipelines/embedded/emoji-diffusion``; fp16 weights)
    plus a ``studio.json`` with the default render settings.

``--stage decoder`` (optional, after the UNet)
    The VAE's decoder (and post-quant conv) fine-tuned longer, with bigger batches, on posterior
    draws of the frozen encoder: the same loss as the VAE stage without the KL term. The latent
    space is unchanged, so the UNet needs no retraining; the VAE in ``--out`` is replaced (fp16).

Deterministic: every random draw of step ``k`` comes from a generator seeded with
``(seed, k)``, so a run stopped and resumed (``--stop-after K`` then ``--resume``) ends with the
same weights as an uninterrupted one on the same device. Runs unchanged on CPU or CUDA.

    python scripts/train_diffusion.py --stage vae  --steps 1500
    python scripts/train_diffusion.py --stage unet --steps 4000
    python scripts/train_diffusion.py --stage unet --steps 4000 --resume   # go on after a stop
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

# OpenMP threads that sleep at barriers instead of spinning: on a small shared CPU a spinning
# thread that lost its core stalls every other one (a 10x slowdown next to another busy process).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image
from tqdm import tqdm

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
if str(ROOT) not in sys.path:
    sys.path.insert(1, str(ROOT))

from training import load_checkpoint, lr_at, save_checkpoint, torch_device  # noqa: E402

from emoji_data import CATEGORIES, GRID_PROMPTS, EmojiDataMissing, category_phrase, load_emoji  # noqa: E402

DEFAULT_WORK = ROOT / "out" / "emoji-diffusion"
DEFAULT_OUT = ROOT / "pipelines" / "embedded" / "emoji-diffusion"
RESOLUTION = 64  # pixels
# Tokens per prompt, by tokenizer: every caption of the set fits (the longest is 90 characters and
# 24 words; each caption also has a start and an end token).
MAX_LENGTH = {"chars": 96, "words": 32}
# Categories whose pictures keep their meaning when mirrored (flags, arrows, letters do not).
FLIP_CATEGORIES = {c for c in CATEGORIES if c not in ("Flags", "Symbols")}
NO_FLIP_WORDS = re.compile(r"left|right")



def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="Train the emoji-diffusion VAE, UNet + text encoder, or the VAE's "
                                 "decoder alone.")
    ap.add_argument("--stage", choices=["vae", "unet", "decoder"], required=True)
    ap.add_argument("--cache", help="emoji data cache folder (default: as scripts/prepare_emoji.py)")
    ap.add_argument("--work", default=str(DEFAULT_WORK), help="folder for checkpoints, the VAE and sample grids")
    ap.add_argument("--out", default=str(DEFAULT_OUT),
                    help="diffusers folder the unet stage writes at the end (and the decoder stage updates)")
    ap.add_argument("--resume", action="store_true", help="continue from the stage's checkpoint if there is one")
    ap.add_argument("--stop-after", type=int, default=None, help="stop (checkpointed) after this step")
    ap.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if present)")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads for torch (default 2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps (vae 1500, unet 4000, decoder 1800)")
    ap.add_argument("--minutes", type=float, default=None,
                    help="instead of --steps: time a few steps first, then run as many as fit in this many "
                         "minutes (the number is printed and recorded; pass it as --steps to repeat the run)")
    ap.add_argument("--batch-size", type=int, default=None, help="(vae 8, unet 64, decoder 32)")
    ap.add_argument("--lr", type=float, default=None, help="peak learning rate (vae 1e-3, unet 1e-3, decoder 3e-4)")
    ap.add_argument("--ckpt-every", type=int, default=250, help="steps between checkpoints")
    ap.add_argument("--sample-every", type=int, default=1000, help="steps between sample grids (0: only at the end)")
    # VAE
    ap.add_argument("--vae-channels", default="32,64,64", help="AutoencoderKL block_out_channels")
    ap.add_argument("--kl-weight", type=float, default=5e-5, help="weight of the KL term (per-element means)")
    ap.add_argument("--edge-weight", type=float, default=0.5, help="weight of the image-gradient L1 term")
    # UNet + text encoder
    ap.add_argument("--unet-channels", default="32,64,128", help="UNet2DConditionModel block_out_channels")
    ap.add_argument("--text-width", type=int, default=128, help="text encoder hidden size")
    ap.add_argument("--text-layers", type=int, default=4, help="text encoder layers")
    ap.add_argument("--tokenizer", choices=["words", "chars"], default="words",
                    help="words: BPE merges learnt from the training captions until each of their words is one "
                         "token (unseen words fall apart into pieces); chars: single characters")
    ap.add_argument("--ema", type=float, default=0.998, help="EMA decay of the UNet and text encoder weights")
    ap.add_argument("--caption-dropout", type=float, default=0.1, help="fraction of empty captions (for CFG)")
    ap.add_argument("--name-dropout", type=float, default=0.0,
                    help="fraction of captions without the emoji's name (category and style only), so the "
                         "category phrase itself is learnt: prompts with unseen names lean on it")
    ap.add_argument("--min-snr", type=float, default=5.0, help="min-SNR-gamma loss weighting (0: off)")
    ap.add_argument("--balance", choices=["emoji", "category"], default="emoji",
                    help="sampling: every emoji equally often, or also every category equally often")
    ap.add_argument("--guidance", type=float, default=4.0, help="guidance scale stored in studio.json")
    return ap.parse_args(argv)


# --------------------------------------------------------------------------- small helpers


def ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def step_generator(seed: int, step: int) -> torch.Generator:
    """The CPU generator of one optimizer step: the same draws after a resume."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def sample_weights(labels: list[dict], balance: str = "emoji") -> torch.Tensor:
    """Sampling weights: each emoji counts once per style (its skin-tone variations share one unit);
    with ``balance="category"`` every category then gets the same total weight."""
    counts: dict[tuple[str, str], int] = {}
    for lab in labels:
        k = (lab["base"], lab["style"])
        counts[k] = counts.get(k, 0) + 1
    w = torch.tensor([1.0 / counts[(lab["base"], lab["style"])] for lab in labels], dtype=torch.float64)
    if balance == "category":
        total: dict[str, float] = {}
        for lab, x in zip(labels, w.tolist()):
            total[lab["category"]] = total.get(lab["category"], 0.0) + x
        w = w / torch.tensor([total[lab["category"]] for lab in labels], dtype=torch.float64)
    return w


def to_unit(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float [N, 3, H, W] in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def save_grid(images: torch.Tensor, path: Path, columns: int) -> None:
    """[N, 3, H, W] in [-1, 1] -> one PNG, ``columns`` pictures a row."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    n, _, h, w = x.shape
    rows = math.ceil(n / columns)
    grid = torch.full((3, rows * h, columns * w), 255, dtype=torch.uint8)
    for i in range(n):
        r, c = divmod(i, columns)
        grid[:, r * h : (r + 1) * h, c * w : (c + 1) * w] = x[i]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid.permute(1, 2, 0).numpy()).save(path)


def checkpoint_steps(stem: Path) -> int | None:
    """The step count a checkpoint's run was made for (None without a checkpoint)."""
    js = stem.with_name(stem.name + ".json")
    return json.loads(js.read_text())["run"]["steps"] if js.is_file() else None


def resolve_steps(args, stem: Path, default: int, time_step) -> int:
    """--steps, else the resumed run's steps, else as many as fit in --minutes, else the default."""
    if args.steps:
        return args.steps
    if args.resume and (n := checkpoint_steps(stem)) is not None:
        return n
    if args.minutes:
        time_step()  # warm-up
        t0 = time.perf_counter()
        for _ in range(3):
            time_step()
        per = (time.perf_counter() - t0) / 3
        n = max(10, int(args.minutes * 60 / per))
        print(f"{per:.3f} s/step measured: {n} steps fit in {args.minutes:g} min (same as --steps {n})")
        return n
    return default


def drop_build_paths(folder: Path) -> None:
    """Remove the ``_name_or_path`` diffusers records in configs (the training machine's work folder)."""
    for config in folder.rglob("config.json"):
        data = json.loads(config.read_text())
        if data.pop("_name_or_path", None) is not None:
            config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def save_progress(stem: Path, modules: dict, opt, run: dict, done: int, elapsed_s: float, history: list[dict],
                  **losses: float) -> None:
    """One line of the stage's history (step, losses, training seconds so far), then its checkpoint."""
    history.append({"step": done, **losses, "elapsed_s": round(elapsed_s, 1)})
    save_checkpoint(stem, modules, opt, {"run": run, "step": done, "elapsed_s": elapsed_s, "history": history})


def stopped(end: int, steps: int, stem: Path) -> bool:
    """True (and says how to go on) when a run stopped before its last step (``--stop-after``)."""
    if end < steps:
        print(f"stopped after step {end}; checkpoint in {stem}.*; go on with --resume")
    return end < steps


def check_run(state: dict, run: dict) -> None:
    """A resumed run must match the checkpoint's settings; only ``steps`` may grow (extending a run:
    the learning-rate schedule is then the longer run's from the checkpoint's step on)."""
    saved, asked = dict(state["run"]), json.loads(json.dumps(run))
    if saved.get("stage") == "unet":
        saved.setdefault("balance", "emoji")  # checkpoints from before --balance existed
        saved.setdefault("tokenizer", "chars")  # ... and before --tokenizer
        saved.setdefault("name_dropout", 0.0)  # ... and --name-dropout
    if saved.get("steps", 0) <= asked.get("steps", 0):
        saved["steps"] = asked.get("steps")
    if saved != asked:
        raise SystemExit("error: the checkpoint was made with other settings; drop --resume or match them")


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# --------------------------------------------------------------------------- VAE stage


def build_vae(channels: tuple[int, ...]):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(channels),
        up_block_types=("UpDecoderBlock2D",) * len(channels),
        block_out_channels=channels,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=RESOLUTION,
        mid_block_add_attention=False,  # fully convolutional: cheap, and no size-dependent attention
    )


def edge_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """L1 between the horizontal and vertical finite differences of two image batches."""
    dx = (a[..., :, 1:] - a[..., :, :-1]) - (b[..., :, 1:] - b[..., :, :-1])
    dy = (a[..., 1:, :] - a[..., :-1, :]) - (b[..., 1:, :] - b[..., :-1, :])
    return dx.abs().mean() + dy.abs().mean()


def picture_batch(x: torch.Tensor, weights: torch.Tensor, bs: int, gen: torch.Generator) -> torch.Tensor:
    """``bs`` pictures drawn by ``weights``, each mirrored with probability 1/2 (the VAE's batches)."""
    idx = torch.multinomial(weights, bs, replacement=True, generator=gen)
    flip = torch.rand(bs, generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], x[idx].flip(-1), x[idx])


@torch.no_grad()
def encode_all(vae, x: torch.Tensor, device, batch: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior means and standard deviations of all pictures, on the CPU."""
    means, stds = [], []
    for i in range(0, len(x), batch):
        d = vae.encode(x[i : i + batch].to(device)).latent_dist
        means.append(d.mean.float().cpu().contiguous())
        stds.append(d.std.float().cpu().contiguous())
    return torch.cat(means).contiguous(), torch.cat(stds).contiguous()


def train_vae(args, device) -> int:
    bs = args.batch_size or 8
    lr = args.lr or 1e-3
    channels = ints(args.vae_channels)
    work = Path(args.work)
    stem = work / "vae-checkpoint"
    train_np, train_labels = load_emoji(args.cache, split="train", size=RESOLUTION)
    held_np, _ = load_emoji(args.cache, split="heldout", size=RESOLUTION)
    x_train, x_held = to_unit(train_np), to_unit(held_np)
    weights = sample_weights(train_labels)

    bench: dict = {}

    def time_step():  # one step of a throwaway model on the same shapes
        if not bench:
            bench["v"] = build_vae(channels).to(device)
            bench["o"] = torch.optim.AdamW(bench["v"].parameters(), lr=lr)
        v, o = bench["v"], bench["o"]
        xb = x_train[:bs].to(device)
        p = v.encode(xb).latent_dist
        y = v.decode(p.sample()).sample
        ((y - xb).abs().mean() + edge_l1(y, xb) + p.kl().mean()).backward()
        o.step()

    steps = resolve_steps(args, stem, 1500, time_step)
    print(f"vae: {len(x_train)} training pictures, {steps} steps of {bs}, device {device}")

    torch.manual_seed(args.seed)
    vae = build_vae(channels).to(device).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    run = {"stage": "vae", "steps": steps, "batch_size": bs, "lr": lr, "seed": args.seed, "channels": channels,
           "kl_weight": args.kl_weight, "edge_weight": args.edge_weight}
    start, elapsed, history = 0, 0.0, []
    if args.resume and (state := load_checkpoint(stem, {"vae": vae}, opt)) is not None:
        check_run(state, run)
        start, elapsed, history = state["step"], state["elapsed_s"], state["history"]
        print(f"resumed from {stem} at step {start}")
    held_fixed = x_held[torch.linspace(0, len(x_held) - 1, 16).long()]
    end = min(steps, args.stop_after) if args.stop_after else steps
    bar = tqdm(range(start, end), desc="vae", unit="step", initial=start, total=steps, mininterval=5)
    t0, running = time.time(), None
    for step in bar:
        gen = step_generator(args.seed, step)
        x = picture_batch(x_train, weights, bs, gen).to(device)
        eps = torch.randn(bs, 4, RESOLUTION // 4, RESOLUTION // 4, generator=gen).to(device)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr, warm=min(100, steps // 10 + 1))
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * eps
        y = vae.decode(z).sample
        l1 = (y - x).abs().mean()
        edge = edge_l1(y, x)
        kl = 0.5 * (post.mean.pow(2) + post.var - 1.0 - post.logvar).mean()
        loss = l1 + args.edge_weight * edge + args.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        vals = torch.stack([loss, l1, edge, kl]).detach().cpu().tolist()
        running = vals if running is None else [0.98 * r + 0.02 * v for r, v in zip(running, vals)]
        bar.set_postfix(loss=f"{running[0]:.4f}", l1=f"{running[1]:.4f}", kl=f"{running[3]:.1f}", refresh=False)
        done = step + 1
        if done % args.ckpt_every == 0 or done == end:
            elapsed_now = elapsed + time.time() - t0
            save_progress(stem, {"vae": vae}, opt, run, done, elapsed_now, history,
                          loss=running[0], l1=running[1], edge=running[2], kl=running[3])
            if args.sample_every and (done % args.sample_every == 0 or done == end):
                vae.eval()
                with torch.no_grad():
                    rec = vae.decode(vae.encode(held_fixed.to(device)).latent_dist.mean).sample
                vae.train()
                save_grid(torch.cat([held_fixed, rec.cpu()]), work / "samples" / f"vae-{done:06d}.png", 16)
            elapsed, t0 = elapsed_now, time.time()
    bar.close()
    if stopped(end, steps, stem):
        return 0

    # Latent statistics: the scaling factor is 1 / std of the training latents (posterior means).
    vae.eval()
    mean, std = encode_all(vae, x_train, device)
    scaling = 1.0 / float(mean.std())
    vae.register_to_config(scaling_factor=scaling)
    with torch.no_grad():
        hm, _ = encode_all(vae, x_held, device)
        rec = torch.cat([vae.decode(hm[i : i + 128].to(device)).sample.cpu() for i in range(0, len(hm), 128)])
    held_l1 = float((rec - x_held).abs().mean())
    held_psnr = float(-10 * torch.log10(((rec - x_held) / 2).pow(2).mean(dim=(1, 2, 3))).mean())
    save_grid(torch.cat([held_fixed, rec[torch.linspace(0, len(x_held) - 1, 16).long()]]),
              work / "samples" / "vae-final.png", 16)
    vae.save_pretrained(work / "vae")
    stats = {
        "scaling_factor": scaling,
        "latent_mean_per_channel": mean.mean(dim=(0, 2, 3)).tolist(),
        "latent_std_per_channel": mean.std(dim=(0, 2, 3)).tolist(),
        "posterior_std_mean": float(std.mean()),
        "heldout_l1": held_l1,
        "heldout_psnr_db": held_psnr,
        "train_seconds": round(elapsed, 1),
        "device": str(device),
        "hardware": hardware(device),
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "parameters": sum(p.numel() for p in vae.parameters()),
        "run": run,
        "history": history,
    }
    (work / "vae" / "training.json").write_text(json.dumps(stats, indent=1) + "\n")
    print(f"vae: scaling_factor {scaling:.4f}; held-out L1 {held_l1:.4f}, PSNR {held_psnr:.2f} dB; "
          f"{elapsed / 60:.1f} min; saved {work / 'vae'}")
    return 0


def heldout_psnr(vae, x_held: torch.Tensor, device) -> float:
    """Mean PSNR (dB) of the VAE's reconstructions (posterior means) of the held-out pictures."""
    with torch.no_grad():
        hm, _ = encode_all(vae, x_held, device)
        rec = torch.cat([vae.decode(hm[i : i + 128].to(device)).sample.float().cpu().clamp(-1, 1)
                         for i in range(0, len(hm), 128)])
    return float(-10 * torch.log10(((rec - x_held) / 2).pow(2).mean(dim=(1, 2, 3))).mean())


def train_decoder(args, device) -> int:
    """Fine-tune the VAE's decoder with its encoder frozen: the latent space (and the UNet trained in
    it) stays valid while pictures decode sharper. Writes the VAE into ``--out`` (fp16)."""
    from diffusers import AutoencoderKL

    bs = args.batch_size or 32
    lr = args.lr or 3e-4
    work = Path(args.work)
    stem = work / "decoder-checkpoint"
    if not (work / "vae" / "config.json").is_file():
        raise SystemExit(f"error: no trained VAE in {work / 'vae'}; run --stage vae first")
    out = Path(args.out)
    if not (out / "unet" / "config.json").is_file():
        raise SystemExit(f"error: no model in {out}; run --stage unet first (the decoder is written into it)")
    vae_hash = hashlib.sha256((work / "vae" / "diffusion_pytorch_model.safetensors").read_bytes()).hexdigest()[:16]
    vae = AutoencoderKL.from_pretrained(work / "vae").to(device)
    vae.requires_grad_(False)
    params = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    for q in params:
        q.requires_grad_(True)
    train_np, train_labels = load_emoji(args.cache, split="train", size=RESOLUTION)
    held_np, _ = load_emoji(args.cache, split="heldout", size=RESOLUTION)
    x_train, x_held = to_unit(train_np), to_unit(held_np)
    weights = sample_weights(train_labels)
    steps = args.steps or 1800
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    run = {"stage": "decoder", "steps": steps, "batch_size": bs, "lr": lr, "seed": args.seed, "vae": vae_hash,
           "edge_weight": args.edge_weight}
    vae.eval()
    psnr_before = heldout_psnr(vae, x_held, device)
    start, elapsed, history = 0, 0.0, []
    if args.resume and (state := load_checkpoint(stem, {"decoder": vae}, opt)) is not None:
        check_run(state, run)
        start, elapsed, history = state["step"], state["elapsed_s"], state["history"]
        print(f"resumed from {stem} at step {start}")
    print(f"decoder: {len(x_train)} training pictures, {steps} steps of {bs}, device {device}; "
          f"held-out PSNR before {psnr_before:.2f} dB")
    end = min(steps, args.stop_after) if args.stop_after else steps
    bar = tqdm(range(start, end), desc="decoder", unit="step", initial=start, total=steps, mininterval=5)
    t0, running = time.time(), None
    vae.decoder.train()
    for step in bar:
        gen = step_generator(args.seed, step)
        x = picture_batch(x_train, weights, bs, gen).to(device)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr, warm=min(50, steps // 10 + 1))
        with torch.no_grad():
            post = vae.encode(x).latent_dist
            eps = torch.randn(post.mean.shape, generator=gen).to(device)
            z = post.mean + post.std * eps  # the decoder sees latents as the UNet's samples are: posterior draws
        y = vae.decode(z).sample
        loss = (y - x).abs().mean() + args.edge_weight * edge_l1(y, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        v = float(loss)
        running = v if running is None else 0.98 * running + 0.02 * v
        bar.set_postfix(loss=f"{running:.4f}", refresh=False)
        done = step + 1
        if done % args.ckpt_every == 0 or done == end:
            elapsed_now = elapsed + time.time() - t0
            save_progress(stem, {"decoder": vae}, opt, run, done, elapsed_now, history, loss=running)
            elapsed, t0 = elapsed_now, time.time()
    bar.close()
    if stopped(end, steps, stem):
        return 0

    vae.eval()
    psnr_after = heldout_psnr(vae, x_held, device)
    held_fixed = x_held[torch.linspace(0, len(x_held) - 1, 16).long()]
    with torch.no_grad():
        rec = vae.decode(vae.encode(held_fixed.to(device)).latent_dist.mean).sample.cpu()
    save_grid(torch.cat([held_fixed, rec]), work / "samples" / "decoder-final.png", 16)
    vae.save_pretrained(work / "vae-decoder")
    vae.to(torch.float16).save_pretrained(out / "vae")
    drop_build_paths(out)
    for f in (out / "vae").iterdir():
        os.chmod(f, 0o644)
    info = {"train_seconds": round(elapsed, 1), "device": str(device), "hardware": hardware(device),
            "threads": torch.get_num_threads() if device.type == "cpu" else None,
            "heldout_psnr_db_before": psnr_before, "heldout_psnr_db_after": psnr_after, "run": run,
            "history": history}
    (work / "vae-decoder" / "training.json").write_text(json.dumps(info, indent=1) + "\n")
    print(f"decoder: held-out PSNR {psnr_before:.2f} -> {psnr_after:.2f} dB; {elapsed / 60:.1f} min; "
          f"wrote {out / 'vae'}")
    return 0


# --------------------------------------------------------------------------- UNet stage


def learn_merges(texts: list[str], limit: int = 20_000) -> list[str]:
    """Byte-level BPE merges learnt from ``texts``, most frequent pair first (ties: the smaller
    pair), until every word of ``texts`` is a single token or ``limit`` merges are made.
    Words are split as the CLIP tokenizer splits them, so it applies the merges the same way."""
    from transformers import CLIPTokenizer

    from pipelines.tiny import write_char_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        backend = CLIPTokenizer.from_pretrained(write_char_tokenizer(tmp)).backend_tokenizer
    counts: dict[str, int] = {}
    for text in texts:
        for word, _ in backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(text)):
            counts[word] = counts.get(word, 0) + 1
    words = [[*w[:-1], w[-1] + "</w>"] for w in counts]
    freq = list(counts.values())
    merges: list[str] = []
    while len(merges) < limit:
        pairs: dict[tuple[str, str], int] = {}
        for w, f in zip(words, freq):
            for pair in zip(w, w[1:]):
                pairs[pair] = pairs.get(pair, 0) + f
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(f"{best[0]} {best[1]}")
        joined = best[0] + best[1]
        for k, w in enumerate(words):
            if len(w) < 2:
                continue
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(joined)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            words[k] = out
    return merges


def build_tokenizer(folder: Path, kind: str, captions: list[str]):
    """The prompt tokenizer, written to ``folder``: character-level, or BPE on the captions' words."""
    from transformers import CLIPTokenizer

    from pipelines.tiny import write_bpe_tokenizer, write_char_tokenizer

    if kind == "chars":
        return CLIPTokenizer.from_pretrained(write_char_tokenizer(folder, MAX_LENGTH[kind]))
    return CLIPTokenizer.from_pretrained(write_bpe_tokenizer(folder, learn_merges(captions), MAX_LENGTH[kind]))


def build_text_encoder(tokenizer, width: int, layers: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=width,
            intermediate_size=4 * width,
            num_hidden_layers=layers,
            num_attention_heads=max(1, width // 32),
            max_position_embeddings=tokenizer.model_max_length,
            projection_dim=width,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )


def build_unet(channels: tuple[int, ...], text_width: int):
    from diffusers import UNet2DConditionModel

    n = len(channels)
    down = ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1)
    up = ("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",)
    return UNet2DConditionModel(
        sample_size=RESOLUTION // 4,  # latent side; the x4 VAE gives 64 px pictures
        in_channels=4,
        out_channels=4,
        block_out_channels=channels,
        down_block_types=down,
        up_block_types=up,
        layers_per_block=1,
        cross_attention_dim=text_width,
        attention_head_dim=tuple(max(1, c // 32) for c in channels),  # diffusers: the number of heads
        norm_num_groups=16,
    )


def train_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        prediction_type="v_prediction",
        clip_sample=False,
    )


def inference_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        prediction_type="v_prediction",
        clip_sample=False,
        set_alpha_to_one=True,
        steps_offset=1,  # unused with "trailing" spacing; set so diffusers does not warn
        timestep_spacing="trailing",
    )


def caption_parts(lab: dict) -> tuple[str, str, str, str]:
    """(name part, skin-tone suffix, category phrase, style phrase) with caption = their join."""
    cat = category_phrase(lab["category"])
    style = f"{lab['style']} style"
    suffix = f", {cat}, {style}"
    cap = lab["caption"]
    assert cap.endswith(suffix), cap
    head = cap[: -len(suffix)]
    tone = ""
    if lab.get("skin_tone") and head.endswith(f", {lab['skin_tone']} skin tone"):
        tone = f", {lab['skin_tone']} skin tone"
        head = head[: -len(tone)]
    return head, tone, cat, style


def augment_caption(parts: tuple[str, str, str, str], u: list[float], dropout: float,
                    drop_name: bool = False) -> str:
    """The caption, or a shortened one (no category / style / skin tone), or "" (unconditional);
    with ``drop_name`` "category, style" (or the category) alone."""
    head, tone, cat, style = parts
    if u[0] < dropout:
        return ""
    if drop_name:
        return f"{cat}, {style}" if u[3] >= 0.25 else cat
    bits = [head + (tone if u[1] >= 0.15 else "")]
    if u[2] >= 0.25:
        bits.append(cat)
    if u[3] >= 0.25:
        bits.append(style)
    return ", ".join(bits)


class Ema:
    """Exponential moving average of a module's floating-point weights (with the usual warm-up)."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items()}

    @torch.no_grad()
    def update(self, module: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for k, v in module.state_dict().items():
            if v.is_floating_point():
                self.shadow[k].lerp_(v, 1 - d)
            else:
                self.shadow[k].copy_(v)

    def state_dict(self):
        return self.shadow

    def load_state_dict(self, state):
        for k, v in state.items():
            self.shadow[k].copy_(v)

    def copy_to(self, module: torch.nn.Module) -> None:
        module.load_state_dict(self.shadow)


class _EmaModule(torch.nn.Module):
    """Lets an Ema ride along in save_checkpoint/load_checkpoint."""

    def __init__(self, ema: Ema, device):
        super().__init__()
        self.ema = ema
        self._dummy = torch.nn.Parameter(torch.zeros(0, device=device), requires_grad=False)

    def state_dict(self, *a, **k):
        return self.ema.state_dict()

    def load_state_dict(self, state, strict=True):
        self.ema.load_state_dict(state)


def make_pipeline(vae, text_encoder, tokenizer, unet):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=inference_scheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def sample_grid(pipe, path: Path, guidance: float, seeds=(0, 1)) -> None:
    """Rows = GRID_PROMPTS; columns = seeds in noto style, then the same seeds in twemoji style."""
    pictures = []
    for prompt in GRID_PROMPTS:
        prompts = [f"{prompt}, {s} style" for s in ("noto", "twemoji") for _ in seeds]
        gens = [torch.Generator().manual_seed(s) for _ in ("noto", "twemoji") for s in seeds]
        noise = torch.stack([torch.randn(4, RESOLUTION // 4, RESOLUTION // 4, generator=g) for g in gens])
        out = pipe(prompt=prompts, latents=noise.to(pipe.device), num_inference_steps=20,
                   guidance_scale=guidance, output_type="pt").images  # [N, 3, H, W] in [0, 1]
        pictures.append(out.cpu() * 2 - 1)
    save_grid(torch.cat(pictures), path, 2 * len(seeds))


def train_unet(args, device) -> int:
    from diffusers import AutoencoderKL
    from safetensors.torch import load_file, save_file

    bs = args.batch_size or 64
    lr = args.lr or 1e-3
    work = Path(args.work)
    stem = work / "unet-checkpoint"
    if not (work / "vae" / "config.json").is_file():
        raise SystemExit(f"error: no trained VAE in {work / 'vae'}; run --stage vae first")
    vae = AutoencoderKL.from_pretrained(work / "vae").to(device).eval()
    vae.requires_grad_(False)
    scaling = vae.config.scaling_factor

    train_np, labels = load_emoji(args.cache, split="train", size=RESOLUTION)
    weights = sample_weights(labels, args.balance)
    # Latents of every picture and of its mirror image, computed once (cached by VAE weights).
    vae_hash = hashlib.sha256((work / "vae" / "diffusion_pytorch_model.safetensors").read_bytes()).hexdigest()[:16]
    cache = work / f"latents-{vae_hash}.safetensors"
    if cache.is_file():
        lat = load_file(str(cache))
    else:
        print("encoding the training pictures with the VAE ...")
        x = to_unit(train_np)
        m, s = encode_all(vae, x, device)
        mf, sf = encode_all(vae, x.flip(-1), device)
        lat = {"mean": m, "std": s, "mean_flip": mf, "std_flip": sf}
        save_file(lat, str(cache))
    can_flip = torch.tensor([lab["category"] in FLIP_CATEGORIES and not NO_FLIP_WORDS.search(lab["name"])
                             for lab in labels])
    parts = [caption_parts(lab) for lab in labels]
    tokenizer = build_tokenizer(work / "tokenizer", args.tokenizer, sorted({lab["caption"] for lab in labels}))
    max_length = tokenizer.model_max_length
    bench: dict = {}

    def time_step():  # one step of throwaway networks on the same shapes
        if not bench:
            bench["t"] = build_text_encoder(tokenizer, args.text_width, args.text_layers).to(device)
            bench["u"] = build_unet(ints(args.unet_channels), args.text_width).to(device)
            bench["o"] = torch.optim.AdamW(list(bench["u"].parameters()) + list(bench["t"].parameters()), lr=lr)
        ids = tokenizer([lab["caption"] for lab in labels[:bs]], padding="max_length", max_length=max_length,
                        truncation=True, return_tensors="pt").input_ids.to(device)
        z = lat["mean"][:bs].to(device)
        t = torch.randint(0, 1000, (bs,), device=device)
        loss = (bench["u"](z, t, bench["t"](ids)[0]).sample - z).pow(2).mean()
        bench["o"].zero_grad()
        loss.backward()
        bench["o"].step()

    steps = resolve_steps(args, stem, 4000, time_step)
    bench.clear()
    print(f"unet: {len(labels)} training pictures, {steps} steps of {bs}, device {device}, "
          f"scaling_factor {scaling:.4f}")

    torch.manual_seed(args.seed)
    text_encoder = build_text_encoder(tokenizer, args.text_width, args.text_layers).to(device).train()
    torch.manual_seed(args.seed + 1)
    unet = build_unet(ints(args.unet_channels), args.text_width).to(device).train()
    noise_sched = train_scheduler()
    alphas = noise_sched.alphas_cumprod.to(device)
    ema_unet, ema_text = Ema(unet, args.ema), Ema(text_encoder, args.ema)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.99))
    run = {"stage": "unet", "steps": steps, "batch_size": bs, "lr": lr, "seed": args.seed, "vae": vae_hash,
           "unet_channels": args.unet_channels, "text_width": args.text_width, "text_layers": args.text_layers,
           "ema": args.ema, "caption_dropout": args.caption_dropout, "min_snr": args.min_snr,
           "balance": args.balance, "tokenizer": args.tokenizer, "name_dropout": args.name_dropout}
    modules = {"unet": unet, "text": text_encoder, "ema_unet": _EmaModule(ema_unet, device),
               "ema_text": _EmaModule(ema_text, device)}
    start, elapsed, history = 0, 0.0, []
    if args.resume and (state := load_checkpoint(stem, modules, opt)) is not None:
        check_run(state, run)
        start, elapsed, history = state["step"], state["elapsed_s"], state["history"]
        print(f"resumed from {stem} at step {start}")
    n_unet = sum(p.numel() for p in unet.parameters())
    n_text = sum(p.numel() for p in text_encoder.parameters())
    print(f"unet {n_unet / 1e6:.2f}M parameters, text encoder {n_text / 1e6:.2f}M")
    token_cache: dict[str, list[int]] = {}

    def tokens(captions: list[str]) -> torch.Tensor:
        missing = [c for c in dict.fromkeys(captions) if c not in token_cache]
        if missing:
            ids = tokenizer(missing, padding="max_length", max_length=max_length, truncation=True).input_ids
            token_cache.update(zip(missing, ids))
        return torch.tensor([token_cache[c] for c in captions], device=device)

    def ema_pipeline():
        eu = build_unet(ints(args.unet_channels), args.text_width).to(device).eval()
        et = build_text_encoder(tokenizer, args.text_width, args.text_layers).to(device).eval()
        ema_unet.copy_to(eu)
        ema_text.copy_to(et)
        return make_pipeline(vae, et, tokenizer, eu)

    end = min(steps, args.stop_after) if args.stop_after else steps
    bar = tqdm(range(start, end), desc="unet", unit="step", initial=start, total=steps, mininterval=5)
    t0, running = time.time(), None
    for step in bar:
        gen = step_generator(args.seed, step)
        idx = torch.multinomial(weights, bs, replacement=True, generator=gen)
        flip = (torch.rand(bs, generator=gen) < 0.5) & can_flip[idx]
        u = torch.rand(bs, 4, generator=gen).tolist()
        f4 = flip[:, None, None, None]
        mean = torch.where(f4, lat["mean_flip"][idx], lat["mean"][idx])
        std = torch.where(f4, lat["std_flip"][idx], lat["std"][idx])
        z0 = (mean + std * torch.randn(mean.shape, generator=gen)) * scaling
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (bs,), generator=gen)
        # drawn last, so runs without name dropout keep their draws
        drop_name = ((torch.rand(bs, generator=gen) < args.name_dropout).tolist() if args.name_dropout > 0
                     else [False] * bs)
        z0, noise, t = z0.to(device), noise.to(device), t.to(device)
        captions = [augment_caption(parts[i], u[j], args.caption_dropout, drop_name[j])
                    for j, i in enumerate(idx.tolist())]
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr, warm=min(200, steps // 10 + 1))

        zt = noise_sched.add_noise(z0, noise, t)
        target = noise_sched.get_velocity(z0, noise, t)
        text = text_encoder(tokens(captions))[0]
        pred = unet(zt, t, text).sample
        per_item = (pred.float() - target.float()).pow(2).mean(dim=(1, 2, 3))
        if args.min_snr > 0:
            snr = alphas[t] / (1 - alphas[t])
            w = snr.clamp(max=args.min_snr) / (snr + 1)  # min-SNR-gamma for v-prediction
            per_item = per_item * w
        loss = per_item.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema_unet.update(unet, step)
        ema_text.update(text_encoder, step)
        v = float(loss)
        running = v if running is None else 0.99 * running + 0.01 * v
        bar.set_postfix(loss=f"{running:.4f}", refresh=False)
        done = step + 1
        if done % args.ckpt_every == 0 or done == end:
            elapsed_now = elapsed + time.time() - t0
            save_progress(stem, modules, opt, run, done, elapsed_now, history, loss=running)
            if args.sample_every and done % args.sample_every == 0 and done < steps:
                sample_grid(ema_pipeline(), work / "samples" / f"unet-{done:06d}.png", args.guidance)
            elapsed, t0 = elapsed_now, time.time()
    bar.close()
    if stopped(end, steps, stem):
        return 0

    # Export the EMA weights as a diffusers folder, fp16 on disk (loaded as fp32 on CPU).
    pipe = ema_pipeline()
    sample_grid(pipe, work / "samples" / "unet-final.png", args.guidance)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pipe.to(torch.float16)
    pipe.save_pretrained(out, safe_serialization=True)
    drop_build_paths(out)
    # The tokenizer as written for training (vocab.json + merges.txt), not a converted copy.
    for f in (out / "tokenizer").iterdir():
        f.unlink()
    for f in (work / "tokenizer").iterdir():
        (out / "tokenizer" / f.name).write_bytes(f.read_bytes())
    for f in out.rglob("*"):
        if f.is_file():
            os.chmod(f, 0o644)
    studio = {"steps": 20, "guidance": args.guidance}
    (out / "studio.json").write_text(json.dumps(studio, indent=1) + "\n")
    info = {
        "train_seconds": round(elapsed, 1),
        "device": str(device),
        "hardware": hardware(device),
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "unet_parameters": n_unet,
        "text_encoder_parameters": n_text,
        "run": run,
        "history": history,
    }
    (work / "unet-training.json").write_text(json.dumps(info, indent=1) + "\n")
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"unet: {elapsed / 60:.1f} min; wrote {out} ({size / 1e6:.1f} MB)")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch_device(args.threads, args.device)
    try:
        return {"vae": train_vae, "unet": train_unet, "decoder": train_decoder}[args.stage](args, device)
    except EmojiDataMissing as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())

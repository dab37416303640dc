"""The emoji-judge: a small CNN that tells an emoji picture's category and art style.

It is the project's yardstick for the embedded emoji models: ``predict`` scores pictures
(is this a flag? Noto or Twemoji?), ``features`` gives the penultimate activations for a
Fréchet distance or a perceptual loss. Pure torch; stored as a folder with ``config.json`` and
``model.safetensors`` (no pickles). Trained by ``scripts/train_judge.py``; the shipped weights
are in ``pipelines/embedded/emoji-judge/``.

Input: RGB in [-1, 1], ``[N, 3, H, W]``; any size other than ``config.image_size`` (64) is
resized to it first (so 32 px pictures are scaled up).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

FORMAT = "latent-studio/emoji-judge"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
EMBEDDED_DIR = Path(__file__).resolve().parent / "embedded" / "emoji-judge"

from pipelines.emoji_labels import CATEGORIES, STYLES  # noqa: E402  (the class order)


class JudgeError(ValueError):
    """A judge folder or an input the judge cannot use; the message says what is wrong."""


@dataclass
class JudgeConfig:
    # Side in pixels of the square RGB input the network works at; other sizes are resized.
    image_size: int = 64
    # Output channels of the stem convolution (3x3, stride 2: 64 px -> 32 px).
    stem_channels: int = 24
    # Channels of each stage; every stage after the first halves the resolution (32, 16, 8, 4 px).
    channels: tuple[int, ...] = (32, 64, 128, 192)
    # 3x3 conv-BN-SiLU layers per stage (the first of a stage does the stride-2 downsampling).
    layers_per_stage: int = 2
    # Dropout before the two linear heads (training only).
    dropout: float = 0.2
    # Class names of the category head, in output order.
    categories: list[str] = field(default_factory=lambda: list(CATEGORIES))
    # Class names of the art-style head, in output order.
    styles: list[str] = field(default_factory=lambda: list(STYLES))

    @property
    def feature_dim(self) -> int:
        """Length of the vector ``features`` returns."""
        return self.channels[-1]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> JudgeConfig:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if "channels" in known:
            known["channels"] = tuple(int(c) for c in known["channels"])
        return cls(**known)


def _conv(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.SiLU(inplace=True),
    )


class EmojiJudge(nn.Module):
    """CNN with a category head and an art-style head over shared pooled features."""

    def __init__(self, config: JudgeConfig | None = None):
        super().__init__()
        self.config = config = config or JudgeConfig()
        layers: list[nn.Module] = [_conv(3, config.stem_channels, 2)]
        cin = config.stem_channels
        for i, cout in enumerate(config.channels):
            for j in range(config.layers_per_stage):
                layers.append(_conv(cin, cout, 2 if (j == 0 and i > 0) else 1))
                cin = cout
        self.body = nn.Sequential(*layers)
        self.dropout = nn.Dropout(config.dropout)
        self.category_head = nn.Linear(cin, len(config.categories))
        self.style_head = nn.Linear(cin, len(config.styles))

    # ------------------------------------------------------------------ tensors

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise JudgeError(f"the judge takes RGB images as [N, 3, H, W], not {tuple(x.shape)}")
        p = next(self.parameters())
        x = x.to(device=p.device, dtype=p.dtype)
        s = self.config.image_size
        if x.shape[-2:] != (s, s):
            shrink = x.shape[-1] > s or x.shape[-2] > s
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=shrink)
        return x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features ``[N, feature_dim]`` (global-average-pooled last stage)."""
        return self.body(self._prepare(x)).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``(category [N, C], style [N, S])`` for images in [-1, 1]."""
        f = self.dropout(self.features(x))
        return self.category_head(f), self.style_head(f)

    # ------------------------------------------------------------------ pictures

    @staticmethod
    def images_to_tensor(images: list[Image.Image], size: int | None = None) -> torch.Tensor:
        """PIL images -> ``[N, 3, H, W]`` float in [-1, 1]; transparency is put on white."""
        arrays = []
        for im in images:
            if im.mode in ("RGBA", "LA", "P", "PA") or "transparency" in im.info:
                rgba = im.convert("RGBA")
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                im = Image.alpha_composite(white, rgba)
            im = im.convert("RGB")
            if size is not None and im.size != (size, size):
                im = im.resize((size, size), Image.Resampling.LANCZOS)
            arrays.append(np.asarray(im, dtype=np.uint8))
        if not arrays:
            raise JudgeError("no images to judge")
        if len({a.shape for a in arrays}) > 1:
            raise JudgeError("images of different sizes: pass size= to resize them to one")
        t = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float()
        return t / 127.5 - 1.0

    @torch.no_grad()
    def predict(self, images: list[Image.Image] | torch.Tensor, batch_size: int = 256) -> dict[str, Any]:
        """Category and style of each picture.

        ``images``: PIL images or a tensor ``[N, 3, H, W]`` in [-1, 1]. Returns a dict with
        ``category`` / ``style`` (names), ``category_confidence`` / ``style_confidence``
        (probability of the named class) and ``category_probs`` ``[N, C]`` /
        ``style_probs`` ``[N, S]`` (CPU float tensors).
        """
        if isinstance(images, torch.Tensor):
            x = images
        else:
            x = self.images_to_tensor(list(images), size=self.config.image_size)
        was_training = self.training
        self.eval()
        try:
            cat_p, sty_p = [], []
            for i in range(0, len(x), batch_size):
                c, s = self(x[i : i + batch_size])
                cat_p.append(c.float().softmax(-1).cpu())
                sty_p.append(s.float().softmax(-1).cpu())
        finally:
            self.train(was_training)
        cat, sty = torch.cat(cat_p), torch.cat(sty_p)
        cc, ci = cat.max(-1)
        sc, si = sty.max(-1)
        return {
            "category": [self.config.categories[i] for i in ci.tolist()],
            "category_confidence": cc.tolist(),
            "style": [self.config.styles[i] for i in si.tolist()],
            "style_confidence": sc.tolist(),
            "category_probs": cat,
            "style_probs": sty,
        }

    # ------------------------------------------------------------------ storage

    def save_pretrained(self, folder: str | os.PathLike, dtype: torch.dtype = torch.float16) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (float tensors stored as ``dtype``)."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {
            k: (v.detach().to("cpu", dtype) if v.is_floating_point() else v.detach().cpu()).contiguous()
            for k, v in self.state_dict().items()
        }
        tmp = folder / (WEIGHTS_FILE + ".tmp")
        save_file(state, str(tmp), metadata={"format": FORMAT})
        os.chmod(tmp, 0o644)  # safetensors may create the file private; these weights are shipped
        os.replace(tmp, folder / WEIGHTS_FILE)
        cfg = {"format": FORMAT, "format_version": FORMAT_VERSION, **self.config.to_dict()}
        tmp = folder / (CONFIG_FILE + ".tmp")
        tmp.write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, folder / CONFIG_FILE)
        return folder

    @classmethod
    def from_pretrained(
        cls, folder: str | os.PathLike | None = None, device: str | torch.device = "cpu"
    ) -> EmojiJudge:
        """Load a judge folder (default: the embedded ``emoji-judge``), in eval mode, fp32."""
        from safetensors.torch import load_file

        folder = Path(folder) if folder is not None else EMBEDDED_DIR
        cfg_path, w_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
        if not cfg_path.is_file() or not w_path.is_file():
            raise JudgeError(
                f"{folder} is not an emoji-judge folder (needs {CONFIG_FILE} and {WEIGHTS_FILE}); "
                "train one with: python scripts/train_judge.py"
            )
        try:
            raw = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise JudgeError(f"cannot read {cfg_path}: {e}") from None
        if raw.get("format") != FORMAT:
            raise JudgeError(f"{cfg_path} is not an emoji-judge config (format {raw.get('format')!r})")
        model = cls(JudgeConfig.from_dict(raw))
        state = load_file(str(w_path))
        own = model.state_dict()
        state = {k: v.to(own[k].dtype) if k in own else v for k, v in state.items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise JudgeError(
                f"{w_path} does not fit its config: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
            )
        return model.to(device).eval()


def load_judge(folder: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> EmojiJudge:
    """The emoji-judge from ``folder`` (default: the embedded one shipped with the package)."""
    return EmojiJudge.from_pretrained(folder, device=device)


def load_probes(folder: str | os.PathLike | None = None) -> dict[str, dict[str, Any]]:
    """Attribute probes shipped beside the judge (scripts/build_probes.py): name -> meta with weight and bias."""
    from safetensors.torch import load_file

    folder = Path(folder) if folder is not None else EMBEDDED_DIR
    meta_path, w_path = folder / "probes.json", folder / "probes.safetensors"
    if not meta_path.is_file() or not w_path.is_file():
        return {}
    tensors = load_file(w_path)
    probes = json.loads(meta_path.read_text())
    for name, meta in probes.items():
        meta["weight"], meta["bias"] = tensors[f"{name}.weight"], tensors[f"{name}.bias"]
    return probes

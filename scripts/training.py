"""What the judge and diffusion training scripts share: torch setup and resumable checkpoints
(and the diffusion stages' learning-rate schedule).

A checkpoint is two files next to each other: ``STEM.safetensors`` holds every module's tensors
(keys ``<prefix>.<name>``) and the optimizer's per-parameter state (``opt.<index>.<name>``);
``STEM.json`` holds the rest (step, run settings, history) and the optimizer's param groups.
Both are written through a temporary file and renamed, so a stop mid-write keeps the old pair.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch


def torch_device(threads: int, device: str | None) -> torch.device:
    """Set the CPU thread count and deterministic cuDNN; the device asked for, else CUDA when present."""
    torch.set_num_threads(max(1, threads))
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def lr_at(step: int, total: int, base: float, warm: int) -> float:
    """Linear warm-up over ``warm`` steps, then cosine decay to a tenth of the peak."""
    if step < warm:
        return base * (step + 1) / warm
    t = (step - warm) / max(1, total - warm)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def save_checkpoint(stem: Path, modules: dict[str, torch.nn.Module], opt, state: dict) -> None:
    """Module + optimizer tensors in ``stem.safetensors``, the rest in ``stem.json`` (atomic)."""
    from safetensors.torch import save_file

    stem.parent.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for prefix, module in modules.items():
        for k, v in module.state_dict().items():
            tensors[f"{prefix}.{k}"] = v.detach().cpu().contiguous()
    osd = opt.state_dict()
    for pid, pstate in osd["state"].items():
        for name, v in pstate.items():
            tensors[f"opt.{pid}.{name}"] = torch.as_tensor(v).detach().cpu().contiguous()
    tmp = stem.with_name(stem.name + ".safetensors.tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, stem.with_name(stem.name + ".safetensors"))
    tmp = stem.with_name(stem.name + ".json.tmp")
    tmp.write_text(json.dumps({**state, "param_groups": osd["param_groups"]}, indent=1))
    os.replace(tmp, stem.with_name(stem.name + ".json"))


def load_checkpoint(stem: Path, modules: dict[str, torch.nn.Module], opt) -> dict | None:
    from safetensors.torch import load_file

    js, st = stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".safetensors")
    if not js.is_file() or not st.is_file():
        return None
    state = json.loads(js.read_text())
    tensors = load_file(str(st))
    for prefix, module in modules.items():
        n = len(prefix) + 1
        module.load_state_dict({k[n:]: v for k, v in tensors.items() if k.startswith(prefix + ".")})
    dev = next(next(iter(modules.values())).parameters()).device
    opt_state: dict[int, dict] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, pid, name = k.split(".", 2)
            opt_state.setdefault(int(pid), {})[name] = v if name == "step" else v.to(dev)
    opt.load_state_dict({"state": opt_state, "param_groups": state.pop("param_groups")})
    return state

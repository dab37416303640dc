"""The GAN adapter: a StyleGAN-style generator behind the PipelineAdapter contract (spaces gan-z, gan-w)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from pipelines.base import PipelineAdapter, Progress, cpu_generator, pick_device
from pipelines.common import batches, check_number, check_prompts, offline_error, to_pil, weight_sample
from pipelines.stylegan import Generator, load_generator
from studio.errors import SpaceMismatch, StudioError
from studio.objects import Generation, Latent, Lineage
from studio.space import Space, fingerprint


class GanAdapter(PipelineAdapter):
    """Unconditional StyleGAN-style generator: sample z (or w = mapping(z)), render with truncation psi."""

    family = "gan"

    def __init__(self, generator: Generator, spec: str, device: str | None = None, dtype: str | None = None):
        # fp32 unless asked otherwise: the tiny and embedded GANs are cheap, and fp16 demodulation can overflow.
        self.device, self.dtype = pick_device(device, dtype or "fp32")
        self.generator = generator.eval().requires_grad_(False).to(self.device, self.dtype)
        self.spec, self.config = spec, generator.config
        fam = fingerprint("stylegan", asdict(self.config), weight_sample(self.generator))
        self.z_space = Space("gan-z", fam, (self.config.z_dim,))
        self.w_space = Space("gan-w", fam, (self.config.w_dim,))
        self.max_batch = 16 if self.device.type == "cpu" else 64

    @classmethod
    def from_folder(cls, folder: str | Path, spec: str | None = None, **device) -> GanAdapter:
        """Load ``config.json`` + ``model.safetensors`` from a folder."""
        return cls(load_generator(folder), spec or str(folder), **device)

    @classmethod
    def from_pretrained(cls, repo_id: str, download: bool = False, **device) -> GanAdapter:
        """Load a hub repo holding our GAN folder layout; offline unless ``download``."""
        from huggingface_hub import snapshot_download

        try:
            folder = snapshot_download(repo_id, local_files_only=not download)
        except Exception as exc:
            raise offline_error(repo_id, exc) from exc
        return cls.from_folder(folder, spec=repo_id, **device)

    def spaces(self) -> dict[str, Space]:
        return {"z": self.z_space, "w": self.w_space}

    def default_settings(self) -> dict[str, Any]:
        return {"truncation": 1.0, "resolution": self.config.resolution}

    def _settings(self, settings: dict) -> dict:
        merged = {**self.default_settings(), **settings}
        check_number(merged, "truncation", -2.0, 2.0)
        if merged["resolution"] != self.config.resolution:
            raise StudioError(
                f"model {self.spec} renders {self.config.resolution}px only, not {merged['resolution']}"
            )
        return merged

    @torch.no_grad()
    def sample(
        self, seeds: list[int], prompts: list[str] | None = None, space: str = "z", **settings: Any
    ) -> list[Generation]:
        """One generation per seed: z drawn on a CPU generator, or w = mapping(z) (untruncated) if space="w"."""
        if space not in ("z", "w"):
            raise StudioError(f"a GAN samples in space 'z' or 'w', not {space!r}")
        settings = self._settings(settings)
        prompts = check_prompts(seeds, prompts)
        z = torch.stack(
            [torch.randn(self.config.z_dim, generator=cpu_generator(s)) for s in seeds]
        )  # [N, z_dim]
        if space == "w":
            z = self.generator.mapping(z.to(self.device, self.dtype)).float().cpu()  # [N, w_dim]
        target = self.z_space if space == "z" else self.w_space
        out = []
        for seed, prompt, tensor in zip(seeds, prompts, z, strict=True):
            meta = {"seed": int(seed), "prompt": prompt, "model": self.spec, "generator_device": "cpu"}
            latent = Latent(
                tensor, target, dict(meta), Lineage("sample", {"seed": int(seed), "prompt": prompt})
            )
            out.append(Generation({space: latent}, self.spec, dict(settings), meta))
        return out

    def _check(self, gen: Generation) -> str:
        """The generation's one role ('z' or 'w'), checked against this model's spaces."""
        if len(gen.roles) != 1 or not set(gen.roles) <= {"z", "w"}:
            raise StudioError(f"a GAN generation has one role, 'z' or 'w'; got {sorted(gen.roles)}")
        role, latent = next(iter(gen.roles.items()))
        if latent.space != self.spaces()[role]:
            raise SpaceMismatch(
                f"model {self.spec} cannot render {latent.space}: it expects {self.spaces()[role]}"
            )
        return role

    @torch.no_grad()
    def render(self, generations: list[Generation], progress: Progress | None = None) -> list[Image.Image]:
        """Pictures in input order: (1) check spaces, (2) batch by settings, (3) map + truncate, (4) synthesize."""
        # 1. Every latent belongs to this model.
        roles = [self._check(g) for g in generations]
        images: list[Image.Image | None] = [None] * len(generations)
        done = 0
        # 2. Batches of identical settings and role.
        keys = [{**self._settings(g.settings), "role": r} for g, r in zip(generations, roles, strict=True)]
        for key, idx in batches(keys, self.max_batch):
            psi, role = float(key["truncation"]), key["role"]
            x = torch.stack([generations[i].roles[role].tensor for i in idx]).to(
                self.device, self.dtype
            )  # [N, D]
            # 3. z -> w with truncation, or truncate a stored w.
            g = self.generator
            w = g.mapping(x, psi) if role == "z" else g.mapping.truncate(x, psi)  # [N, w_dim]
            # 4. Synthesis with the fixed per-layer noise, then pixels.
            for i, image in zip(idx, to_pil(g.synthesis(w, noise_mode="const")), strict=True):  # [N, 3, R, R]
                images[i] = image
            done += len(idx)
            if progress:
                progress(done, len(generations))
        return images

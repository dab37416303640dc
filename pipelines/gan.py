"""The GAN adapter: a StyleGAN-style generator behind the PipelineAdapter contract (spaces gan-z, gan-w).

A conditional generator (``config.num_classes > 0``, e.g. the embedded ``emoji-gan``) maps
(z, class) -> w. Its folder's config.json holds a ``labels`` entry: the category and style
names (class id = category index * number of styles + style index) and small word lists that
turn a prompt into a class. Explicit settings ``category=`` / ``style=`` override the prompt; a
prompt that names no category (or no style) gets one chosen from the seed, so that seeds without
a prompt spread over all classes. The chosen names are kept in the generation's settings, so
rendering a z maps (z, class) -> w; a w sampled with ``space="w"`` has its class baked in (the
settings then only choose the class centre that truncation pulls toward).
"""

from __future__ import annotations

import random
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from pipelines.base import GanW, PipelineAdapter, Progress, cpu_generator, fitting_batch, pick_device
from pipelines.common import batches, check_prompts, check_setting, offline_error, to_pil, weight_sample
from pipelines.stylegan import Generator, load_generator, read_extra
from studio.errors import SpaceMismatch, StudioError
from studio.objects import Generation, Latent, Lineage
from studio.space import Space, fingerprint

WORD = re.compile(r"[a-z0-9]+")


class ClassVocabulary:
    """Prompt words -> (category, style) of a conditional GAN, from the ``labels`` entry of its config.json.

    ``labels`` = {"categories": [...], "styles": [...], "category_words": {category: {word: weight}},
    "style_words": {style: {word: weight}}}. A category's score is the sum of the weights of the
    prompt's words in its list (a plural also matches its singular); the best score wins, and no
    match at all means "choose from the seed".
    """

    def __init__(self, labels: dict, num_classes: int):
        try:
            self.categories = [str(c) for c in labels["categories"]]
            self.styles = [str(s) for s in labels["styles"]]
            self.category_words = {
                c: dict(labels.get("category_words", {}).get(c, {})) for c in self.categories
            }
            self.style_words = {s: dict(labels.get("style_words", {}).get(s, {})) for s in self.styles}
        except (KeyError, TypeError, AttributeError) as exc:
            raise StudioError(f"the GAN's labels entry in config.json is malformed: {exc}") from exc
        if len(self.categories) * len(self.styles) != num_classes:
            raise StudioError(
                f"the GAN has {num_classes} classes but its labels name {len(self.categories)} categories "
                f"x {len(self.styles)} styles"
            )

    def class_id(self, category: str, style: str) -> int:
        return self.categories.index(category) * len(self.styles) + self.styles.index(style)

    @staticmethod
    def _best(words: list[str], table: dict[str, dict[str, float]]) -> str | None:
        scores = {}
        for name, weights in table.items():
            total = 0.0
            for w in words:
                for form in (w, w[:-1] if w.endswith("s") else None, w[:-2] if w.endswith("es") else None):
                    if form and form in weights:
                        total += float(weights[form])
                        break
            scores[name] = total
        best = max(scores, key=lambda k: scores[k], default=None)  # first listed wins a tie
        return best if best is not None and scores[best] > 0 else None

    def from_prompt(self, prompt: str) -> tuple[str | None, str | None]:
        """(category, style) named by the prompt's words; None where the prompt names none."""
        words = WORD.findall(prompt.lower())
        return self._best(words, self.category_words), self._best(words, self.style_words)

    @staticmethod
    def pick(value: str, names: list[str], what: str) -> str:
        """``value`` as one of ``names``: exact, case-insensitive, or the unique name it starts."""
        if value in names:
            return value
        low = str(value).strip().lower()
        hits = [n for n in names if n.lower() == low] or [
            n for n in names if n.lower().startswith(low) and low
        ]
        if len(hits) != 1:
            raise StudioError(f"unknown {what} {value!r}; choose one of: {', '.join(names)}")
        return hits[0]

    def choose(self, seed: int, prompt: str, category: str | None, style: str | None) -> tuple[str, str]:
        """The class of one sample: explicit names first, then the prompt, then a seeded choice."""
        from_prompt = self.from_prompt(prompt)
        rng = random.Random(int(seed))  # the seed's own choice, independent of z
        seeded = (
            self.categories[rng.randrange(len(self.categories))],
            self.styles[rng.randrange(len(self.styles))],
        )
        cat = self.pick(category, self.categories, "category") if category else from_prompt[0] or seeded[0]
        sty = self.pick(style, self.styles, "style") if style else from_prompt[1] or seeded[1]
        return cat, sty


class GanAdapter(PipelineAdapter, GanW):
    """StyleGAN-style generator: sample z (or w = mapping(z[, class])), render with truncation psi.

    Unconditional models ignore prompts; conditional ones turn the prompt (or the settings
    ``category`` / ``style``) into a class label, see the module docstring.
    """

    family = "gan"

    def __init__(
        self,
        generator: Generator,
        spec: str,
        device: str | None = None,
        dtype: str | None = None,
        extra: dict | None = None,
    ):
        # fp32 unless asked otherwise: the tiny and embedded GANs are cheap, and fp16 demodulation can overflow.
        self.device, self.dtype = pick_device(device, dtype or "fp32")
        self.generator = generator.eval().requires_grad_(False).to(self.device, self.dtype)
        self.spec, self.config = spec, generator.config
        extra = extra or {}
        self.vocabulary = None
        if self.config.num_classes:
            if "labels" not in extra:
                raise StudioError(f"conditional GAN {spec} has no 'labels' entry in its config.json")
            self.vocabulary = ClassVocabulary(extra["labels"], self.config.num_classes)
        self._defaults = {"truncation": 1.0, **dict(extra.get("default_settings", {}))}
        config = asdict(self.config)
        if not config["num_classes"]:  # unconditional models keep the fingerprint they had before classes
            del config["num_classes"], config["class_factors"]
        fam = fingerprint("stylegan", config, weight_sample(self.generator))
        self.z_space = Space("gan-z", fam, (self.config.z_dim,))
        self.w_space = Space("gan-w", fam, (self.config.w_dim,))
        self.batch_override: int | None = None  # items per synthesis call, when set (else sized to free memory)

    @classmethod
    def from_folder(cls, folder: str | Path, spec: str | None = None, **device) -> GanAdapter:
        """Load ``config.json`` + ``model.safetensors`` from a folder."""
        return cls(load_generator(folder), spec or str(folder), extra=read_extra(folder), **device)

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
        return {"truncation": self._defaults["truncation"], "resolution": self.config.resolution}

    def resolve_settings(self, settings: dict) -> dict:
        """Defaults overlaid with ``settings``, refusing unknown or impossible values."""
        known = set(self.default_settings()) | {"category", "style"}
        unknown = set(settings) - known
        if unknown:
            raise StudioError(f"unknown setting(s) {', '.join(sorted(unknown))} for a GAN; expected "
                              f"{', '.join(sorted(known))}")
        merged = {**self.default_settings(), **settings}
        check_setting(merged, "truncation", -2.0, 2.0)
        if merged["resolution"] != self.config.resolution:
            raise StudioError(
                f"model {self.spec} renders {self.config.resolution}px only, not {merged['resolution']}"
            )
        if self.vocabulary is None:
            for key in ("category", "style"):
                if merged.get(key) is not None:
                    raise StudioError(f"model {self.spec} is unconditional: it takes no {key} setting")
                merged.pop(key, None)
        return merged

    def class_ids(self, settings_list: list[dict]) -> torch.Tensor | None:
        """Class ids [N] for generations' settings (None for an unconditional model)."""
        if self.vocabulary is None:
            return None
        ids = []
        for st in settings_list:
            if not st.get("category") or not st.get("style"):
                raise StudioError(f"model {self.spec} needs the settings category and style to render")
            v = self.vocabulary
            ids.append(
                v.class_id(
                    v.pick(st["category"], v.categories, "category"), v.pick(st["style"], v.styles, "style")
                )
            )
        return torch.tensor(ids, dtype=torch.long, device=self.device)

    @torch.no_grad()
    def sample(
        self, seeds: list[int], prompts: list[str] | None = None, space: str = "z", **settings: Any
    ) -> list[Generation]:
        """One generation per seed: z drawn on a CPU generator, or w = mapping(z[, class]) (untruncated) if space="w".

        A conditional model also chooses each item's class (settings ``category`` / ``style``,
        else the prompt's words, else the seed) and keeps it in the generation's settings.
        """
        if space not in ("z", "w"):
            raise StudioError(f"a GAN samples in space 'z' or 'w', not {space!r}")
        settings = self.resolve_settings(settings)
        prompts = check_prompts(seeds, prompts)
        per_item = [dict(settings) for _ in seeds]
        if self.vocabulary is not None:
            for st, seed, prompt in zip(per_item, seeds, prompts, strict=True):
                st["category"], st["style"] = self.vocabulary.choose(
                    seed, prompt, settings.get("category"), settings.get("style")
                )
        z = torch.stack(
            [torch.randn(self.config.z_dim, generator=cpu_generator(s)) for s in seeds]
        )  # [N, z_dim]
        if space == "w":
            c = self.class_ids(per_item)
            z = self.generator.mapping(z.to(self.device, self.dtype), c=c).float().cpu()  # [N, w_dim]
        target = self.z_space if space == "z" else self.w_space
        out = []
        for seed, prompt, tensor, st in zip(seeds, prompts, z, per_item, strict=True):
            meta = {"seed": int(seed), "prompt": prompt, "model": self.spec, "generator_device": "cpu"}
            latent = Latent(
                tensor, target, dict(meta), Lineage("sample", {"seed": int(seed), "prompt": prompt})
            )
            out.append(Generation({space: latent}, self.spec, st, meta))
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
        keys = [{**self.resolve_settings(g.settings), "role": r} for g, r in zip(generations, roles, strict=True)]
        c = self.config  # the largest feature map: cells x channels, over the resolutions
        size = fitting_batch(self.device, max(r * r * c.channels(r) for r in c.resolutions), 1, self.dtype,
                             self.batch_override)
        for key, idx in batches(keys, size):
            psi, role = float(key["truncation"]), key["role"]
            x = torch.stack([generations[i].roles[role].tensor for i in idx]).to(
                self.device, self.dtype
            )  # [N, D]
            # 3. z (+ class) -> w with truncation, or truncate a stored w (toward its class's centre).
            g = self.generator
            c = self.class_ids([key] * len(idx))  # [N] or None
            w = g.mapping(x, psi, c=c) if role == "z" else g.mapping.truncate(x, psi, c)  # [N, w_dim]
            # 4. Synthesis with the fixed per-layer noise, then pixels.
            for i, image in zip(idx, to_pil(g.synthesis(w, noise_mode="const")), strict=True):  # [N, 3, R, R]
                images[i] = image
            done += len(idx)
            if progress:
                progress(done, len(generations))
        return images

    # -- editing ---------------------------------------------------------------------------------------

    def sample_w(self, n: int, seed: int = 0) -> torch.Tensor:
        """n untruncated w from seeded z, classes spread evenly: the samples GANSpace's PCA runs on."""
        from pipelines.gan_edit import sample_w

        return sample_w(self, n, seed)

    def project(
        self,
        image: Image.Image,
        steps: int = 300,
        category: str | None = None,
        style: str | None = None,
        progress: Progress | None = None,
    ) -> Generation:
        """Project a picture into w (pixel loss plus the emoji judge's features where the judge is shipped)."""
        from pipelines.gan_edit import project

        features = None
        try:
            from pipelines.judge import load_judge

            judge = load_judge(device=self.device).requires_grad_(False)
            features = judge.features
        except Exception:  # no judge: pixels alone still project, less sharply
            features = None
        return project(self, image, steps, category, style, features, progress=progress)

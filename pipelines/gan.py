"""The GAN adapter: a StyleGAN generator behind the PipelineAdapter contract (spaces gan-z, gan-w, gan-w+).

The generator is any ``GanNetwork`` (``pipelines/gan_networks.py``): the studio's own (a folder of
config.json + model.safetensors), or an NVIDIA StyleGAN2/StyleGAN3 or rosinality StyleGAN2 network
read from its pickle or checkpoint without running code from it (or from the folder ``studio
convert`` makes of one). A generation holds one role: z, w (one w for every layer) or w+ (one w
per synthesis input, ``[num_ws, w_dim]``); truncation is a render setting.

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
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from pipelines.base import GanW, PipelineAdapter, Progress, cpu_generator, fitting_batch, pick_device
from pipelines.common import batches, check_prompts, check_setting, offline_error, to_pil
from pipelines.gan_networks import GanNetwork, ProjectNetwork, StyleGanNetwork
from pipelines.stylegan import load_generator, read_extra
from studio.checks import is_finite_number
from studio.errors import SpaceMismatch, StudioError
from studio.objects import Generation, Latent, Lineage
from studio.space import Space

WORD = re.compile(r"[a-z0-9]+")
ROLES = ("z", "w", "w+")  # the spaces a GAN generation may hold its one latent in
CLASS_SETTINGS = ("category", "style", "class")  # the studio's own conditional GANs take the first two


class ClassVocabulary:
    """Prompt words -> (category, style) of a conditional GAN, from the ``labels`` entry of its config.json.

    ``labels`` = {"categories": [...], "styles": [...], "category_words": {category: {word: weight}},
    "style_words": {style: {word: weight}}}. A category's score is the sum of the weights of the
    prompt's words in its list (a plural also matches its singular); the best score wins, and no
    match at all means "choose from the seed".
    """

    def __init__(self, labels: dict, num_classes: int):
        if not isinstance(labels, dict):
            raise StudioError(f"the GAN's labels entry in config.json is malformed: it is a {type(labels).__name__}, "
                              "not a mapping")
        self.categories = _names(labels, "categories")
        self.styles = _names(labels, "styles")
        self.category_words = _word_weights(labels, "category_words", self.categories)
        self.style_words = _word_weights(labels, "style_words", self.styles)
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

        def plain(text: str) -> str:  # "Food & Drink", "food and drink", "food-and-drink" read alike
            return " ".join(WORD.findall(str(text).lower().replace("&", " and ")))

        low = plain(value)
        hits = [n for n in names if plain(n) == low] or [
            n for n in names if plain(n).startswith(low) and low
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


def _names(labels: dict, key: str) -> list[str]:
    """labels[key]: the category or style names, plain one-line text (they are shown and matched as is)."""
    names = labels.get(key)
    if not isinstance(names, list) or not all(isinstance(n, str) and n.isprintable() for n in names):
        raise StudioError(f"the GAN's labels entry in config.json is malformed: {key!r} must be a list of names")
    return names


def _word_weights(labels: dict, key: str, names: list[str]) -> dict[str, dict[str, float]]:
    """labels[key]: per name, the prompt words that choose it with their weights (finite numbers)."""
    table = labels.get(key, {})
    out = {}
    for name in names:
        words = table.get(name, {}) if isinstance(table, dict) else None
        if not isinstance(words, dict) or not all(is_finite_number(w) for w in words.values()):
            raise StudioError(f"the GAN's labels entry in config.json is malformed: {key!r} must map each name "
                              "to a mapping of words to numbers")
        out[name] = dict(words)
    return out


class GanAdapter(PipelineAdapter, GanW):
    """StyleGAN generator: sample z (or w = mapping(z[, class]), or w+), render with truncation psi.

    Unconditional models ignore prompts. The studio's own conditional models turn the prompt (or
    the settings ``category`` / ``style``) into a class label, see the module docstring; other
    conditional networks take the setting ``class`` (an index), chosen from the seed when not given.
    """

    family = "gan"

    def __init__(
        self,
        network: GanNetwork,
        spec: str,
        device: str | None = None,
        dtype: str | None = None,
        extra: dict | None = None,
    ):
        # fp32 unless asked otherwise: the tiny and embedded GANs are cheap, and fp16 demodulation can overflow.
        self.device, self.dtype = pick_device(device, dtype or "fp32")
        network.module.eval().requires_grad_(False).to(self.device, self.dtype)
        self.network, self.spec = network, spec
        extra = extra or {}
        self.vocabulary = None  # the studio's own conditional GANs name their classes in config.json
        if network.num_classes and ("labels" in extra or isinstance(network, ProjectNetwork)):
            if "labels" not in extra:
                raise StudioError(f"conditional GAN {spec} has no 'labels' entry in its config.json")
            self.vocabulary = ClassVocabulary(extra["labels"], network.num_classes)
        defaults = extra.get("default_settings", {})
        if not isinstance(defaults, dict):
            raise StudioError(f"the GAN's default_settings entry in config.json must be a mapping of settings, "
                              f"not {type(defaults).__name__}")
        self._defaults = {"truncation": 1.0, **defaults}
        family = network.family()
        self.z_space = Space("gan-z", family, (network.z_dim,))
        self.w_space = Space("gan-w", family, (network.w_dim,))
        self.wplus_space = Space("gan-w+", family, (network.num_ws, network.w_dim))
        self.batch_override: int | None = None  # items per synthesis call, when set (else sized to free memory)

    @property
    def generator(self):
        """The torch module that holds the generator's weights."""
        return self.network.module

    @classmethod
    def from_folder(cls, folder: str | Path, spec: str | None = None, **device) -> GanAdapter:
        """Load ``config.json`` + ``model.safetensors`` from a folder: the studio's own GAN, or a converted network."""
        from pipelines.stylegan_nets.folder import is_network_folder, load_network_folder
        from pipelines.stylegan_nets.training import is_sg2_folder, load_sg2_folder, read_sg2_extra

        if is_network_folder(folder):
            return cls(StyleGanNetwork(load_network_folder(folder)), spec or str(folder), **device)
        if is_sg2_folder(folder):
            return cls(StyleGanNetwork(load_sg2_folder(folder)), spec or str(folder), extra=read_sg2_extra(folder),
                       **device)
        return cls(ProjectNetwork(load_generator(folder)), spec or str(folder), extra=read_extra(folder), **device)

    @classmethod
    def from_network_file(cls, path: str | Path, spec: str | None = None, **device) -> GanAdapter:
        """Load an NVIDIA network pickle or a rosinality checkpoint (read without running code from it)."""
        from pipelines.stylegan_nets.sg2 import load_stylegan

        return cls(StyleGanNetwork(load_stylegan(path)), spec or str(path), **device)

    @classmethod
    def from_pretrained(cls, repo_id: str, download: bool = False, **device) -> GanAdapter:
        """Load a hub repo holding our GAN folder layout; offline unless ``download``."""
        from huggingface_hub import snapshot_download

        try:
            folder = snapshot_download(repo_id, local_files_only=not download)
        except Exception as exc:
            raise offline_error(repo_id, exc) from exc
        return cls.from_folder(folder, spec=repo_id, **device)

    @property
    def resolution(self) -> int:
        return self.network.resolution

    @property
    def num_classes(self) -> int:
        return self.network.num_classes

    def spaces(self) -> dict[str, Space]:
        return {"z": self.z_space, "w": self.w_space, "w+": self.wplus_space}

    def default_settings(self) -> dict[str, Any]:
        return {"truncation": self._defaults["truncation"], "resolution": self.resolution}

    def class_settings(self) -> set[str]:
        """The settings that choose a class: category and style, class, or none."""
        if self.vocabulary is not None:
            return {"category", "style"}
        return {"class"} if self.num_classes else set()

    def resolve_settings(self, settings: dict) -> dict:
        """Defaults overlaid with ``settings``, refusing unknown or impossible values."""
        classes = self.class_settings()
        for key in CLASS_SETTINGS:
            if settings.get(key) is not None and key not in classes:
                raise StudioError(self._class_refusal(key))
        unknown = set(settings) - set(self.default_settings()) - set(CLASS_SETTINGS)
        if unknown:
            raise StudioError(f"unknown setting(s) {', '.join(sorted(unknown))} for a GAN; expected "
                              f"{', '.join(sorted(set(self.default_settings()) | classes))}")
        given = {k: v for k, v in settings.items() if k in classes or k not in CLASS_SETTINGS}
        merged = {**self.default_settings(), **given}
        check_setting(merged, "truncation", -2.0, 2.0)
        if merged["resolution"] != self.resolution:
            raise StudioError(f"model {self.spec} renders {self.resolution}px only, not {merged['resolution']}")
        if merged.get("class") is not None:
            check_setting(merged, "class", 0, self.num_classes - 1, integer=True)
        return merged

    def class_names(self) -> list[str]:
        """One label per class id, for pickers: "Food & Drink · noto" (the studio's own), "3" (others), or none."""
        if self.vocabulary is not None:
            v = self.vocabulary
            return [f"{c} · {s}" for c in v.categories for s in v.styles]  # class id = category x styles + style
        return [str(i) for i in range(self.num_classes)]

    def class_of(self, class_id: int) -> dict[str, Any]:
        """The settings that choose class ``class_id`` (see ``class_names``)."""
        check_setting({"class": class_id}, "class", 0, max(self.num_classes - 1, 0), integer=True)
        if self.vocabulary is not None:
            v = self.vocabulary
            return {"category": v.categories[class_id // len(v.styles)], "style": v.styles[class_id % len(v.styles)]}
        return {"class": class_id} if self.num_classes else {}

    def _class_refusal(self, key: str) -> str:
        if not self.num_classes:
            return f"model {self.spec} is unconditional: it takes no {key} setting"
        if self.vocabulary is None:
            return (f"model {self.spec} takes its class as an index, the setting class "
                    f"(0 to {self.num_classes - 1}), not {key}")
        return f"model {self.spec} takes its class as a category and a style, not the setting {key}"

    def class_ids(self, settings_list: list[dict]) -> torch.Tensor | None:
        """Class ids [N] for generations' settings (None for an unconditional model)."""
        if not self.num_classes:
            return None
        ids = []
        for st in settings_list:
            if self.vocabulary is None:
                if st.get("class") is None:
                    raise StudioError(f"model {self.spec} is conditional: it needs the setting class to render")
                ids.append(int(st["class"]))
                continue
            if not st.get("category") or not st.get("style"):
                raise StudioError(f"model {self.spec} needs the settings category and style to render")
            v = self.vocabulary
            ids.append(
                v.class_id(
                    v.pick(st["category"], v.categories, "category"), v.pick(st["style"], v.styles, "style")
                )
            )
        return torch.tensor(ids, dtype=torch.long, device=self.device)

    def _choose_class(self, st: dict, seed: int, prompt: str, settings: dict) -> None:
        """Fill one sample's class settings: given ones first, then the prompt's words, then the seed."""
        if self.vocabulary is not None:
            st["category"], st["style"] = self.vocabulary.choose(
                seed, prompt, settings.get("category"), settings.get("style")
            )
        elif self.num_classes and st.get("class") is None:
            st["class"] = random.Random(int(seed)).randrange(self.num_classes)  # the seed's own, independent of z

    @torch.no_grad()
    def sample(
        self, seeds: list[int], prompts: list[str] | None = None, space: str = "z", **settings: Any
    ) -> list[Generation]:
        """One generation per seed: z drawn on a CPU generator, or w = mapping(z[, class]) (untruncated) if
        space="w", or that w once per synthesis input if space="w+".

        A conditional model also chooses each item's class (see ``_choose_class``) and keeps it in
        the generation's settings.
        """
        if space not in ROLES:
            raise StudioError(f"a GAN samples in space 'z', 'w' or 'w+', not {space!r}")
        settings = self.resolve_settings(settings)
        prompts = check_prompts(seeds, prompts)
        per_item = [dict(settings) for _ in seeds]
        for st, seed, prompt in zip(per_item, seeds, prompts, strict=True):
            self._choose_class(st, seed, prompt, settings)
        z = torch.stack(
            [torch.randn(self.network.z_dim, generator=cpu_generator(s)) for s in seeds]
        )  # [N, z_dim]
        if space != "z":
            z = self.network.w(z.to(self.device, self.dtype), self.class_ids(per_item)).float().cpu()  # [N, w_dim]
            if space == "w+":
                z = z[:, None].repeat(1, self.network.num_ws, 1)  # [N, num_ws, w_dim]
        target = self.spaces()[space]
        out = []
        for seed, prompt, tensor, st in zip(seeds, prompts, z, per_item, strict=True):
            meta = {"seed": int(seed), "prompt": prompt, "model": self.spec, "generator_device": "cpu"}
            latent = Latent(
                tensor, target, dict(meta), Lineage("sample", {"seed": int(seed), "prompt": prompt})
            )
            out.append(Generation({space: latent}, self.spec, st, meta))
        return out

    def _check(self, gen: Generation) -> str:
        """The generation's one role ('z', 'w' or 'w+'), checked against this model's spaces."""
        if len(gen.roles) != 1 or not set(gen.roles) <= set(ROLES):
            raise StudioError(f"a GAN generation has one role, 'z', 'w' or 'w+'; got {sorted(gen.roles)}")
        role, latent = next(iter(gen.roles.items()))
        if latent.space != self.spaces()[role]:
            raise SpaceMismatch(
                f"model {self.spec} cannot render {latent.space}: it expects {self.spaces()[role]}"
            )
        return role

    def ws(self, generations: list[Generation], c: torch.Tensor | None = None) -> torch.Tensor:
        """Untruncated w+ [N, num_ws, w_dim] of generations of one role (z mapped, w repeated); ``c``: their
        class ids, where the caller has them (else read from their settings)."""
        role = self._check(generations[0])
        x = torch.stack([g.roles[role].tensor for g in generations]).to(self.device, self.dtype)
        if role == "z":
            if c is None:
                c = self.class_ids([self.resolve_settings(g.settings) for g in generations])
            x = self.network.w(x, c)
        return x if role == "w+" else x[:, None].expand(-1, self.network.num_ws, -1)

    def to_wplus(self, generation: Generation) -> Generation:
        """The same picture as a w+ generation (untruncated; its settings kept, truncation included)."""
        if self._check(generation) == "w+":
            return generation
        with torch.no_grad():
            ws = self.ws([generation])[0].float().cpu()  # [num_ws, w_dim]
        return Generation({"w+": Latent(ws, self.wplus_space, {"model": self.spec})}, self.spec,
                          dict(generation.settings), {})

    @torch.no_grad()
    def render(self, generations: list[Generation], progress: Progress | None = None) -> list[Image.Image]:
        """Pictures in input order: (1) check spaces, (2) batch by settings, (3) map + truncate, (4) synthesize."""
        # 1. Every latent belongs to this model.
        roles = [self._check(g) for g in generations]
        images: list[Image.Image | None] = [None] * len(generations)
        done = 0
        # 2. Batches of identical settings and role.
        keys = [{**self.resolve_settings(g.settings), "role": r} for g, r in zip(generations, roles, strict=True)]
        size = fitting_batch(self.device, self.network.activation_cells(), 1, self.dtype, self.batch_override)
        for key, idx in batches(keys, size):
            # 3. z (+ class) -> w, once per synthesis input, truncated toward the centre (the class's, where kept).
            c = self.class_ids([key] * len(idx))  # [N] or None: the batch shares its class settings
            ws = self.ws([generations[i] for i in idx], c)  # [N, num_ws, w_dim]
            ws = self.network.truncate(ws, float(key["truncation"]), c)
            # 4. Synthesis with the fixed per-layer noise, then pixels.
            for i, image in zip(idx, to_pil(self.network.synthesize(ws)), strict=True):  # [N, 3, R, R]
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

    def style_weights(self, layers: range | None = None) -> torch.Tensor:
        layers = range(self.network.num_ws) if layers is None else layers
        if not layers or layers.start < 0 or layers.stop > self.network.num_ws:
            raise StudioError(f"layers {layers.start}-{layers.stop - 1} are not among model {self.spec}'s "
                              f"synthesis inputs 0-{self.network.num_ws - 1}")
        return self.network.style_weights(layers).float().cpu()

    def project(
        self,
        image: Image.Image,
        steps: int = 300,
        progress: Progress | None = None,
        space: str = "w",
        **classes: Any,
    ) -> Generation:
        """Project a picture into w or w+ (pixel loss plus the emoji judge's features where the judge is shipped).

        ``classes``: a conditional model's class settings (category and style, or class).
        """
        from pipelines.gan_edit import project

        features = None
        if isinstance(self.network, ProjectNetwork):  # the judge knows emoji: a perceptual loss for emoji GANs
            try:
                from pipelines.judge import load_judge

                judge = load_judge(device=self.device).requires_grad_(False)
                features = judge.features
            except Exception:  # no judge: pixels alone still project, less sharply
                features = None
        return project(self, image, steps, classes, features, space=space, progress=progress)

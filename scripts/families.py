"""Every supported model family x every operation, as one table.

Builds the tiny random-weight model of each family (SD 1.x, SDXL, LCM, the StyleGAN-like GAN,
an SDXL diffusers folder, SD 1.5 and SDXL original-layout single files, SD 3, Flux.1 dev and
schnell, PixArt-Sigma) and runs each
operation on it through the public facade ``studio.session.Session``, as a user would: sample,
render, slerp, prompt-pair and from-sets vectors, apply (latent, h-space, SDEdit), invert,
score with the emoji judge, ComfyUI ``.latent`` round trip, and a cross-family check (a vector
of this family added to another family's generation must be refused, naming both spaces).

Each cell prints ``ok`` (with a figure where one means something), ``n/a [k]`` (the family has
no such capability; footnote k says why) or ``FAIL: <one line>``. The exit code is 1 if any
applicable cell failed. Progress goes to stderr, one line per family; the table to stdout.
The figures are random-weight models' and show only that something moved (see LEGEND).

    python scripts/families.py
    python scripts/families.py --families tiny-sd,tiny-gan --markdown
    python scripts/families.py --home /tmp/lib        # keep what it made in a library
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python scripts/families.py` from anywhere
    sys.path.insert(0, str(ROOT))

STEPS = 3  # denoising steps: enough for h-space probing over 2, few enough for a 2-core CPU
HSPACE_STEPS = 2
SIDE = 64  # picture side for every diffusion family (single files default to their full 512/1024 px)
DIFFUSION_SETTINGS = {"steps": STEPS, "height": SIDE, "width": SIDE}
ATTRIBUTE = {"name": "style", "from": "noto", "to": "twemoji"}  # an attribute the emoji judge knows
PROMPT_PAIR = {"from": "noto", "to": "twemoji", "templates": ["cat, {}", "dog, {}"], "attribute": ATTRIBUTE}
INVERT_STEPS = {"diffusion": 3, "gan": 10}  # DDIM inversion steps / GAN projection steps
LEGEND = ("figures: noise/z = the sampled latent's shape; norm = the vector's length; Δ = mean pixel change "
          "of the edit (0..1); dB = PSNR of the inversion's re-render; flip = the judge's flip rate at "
          "strength 1 (n=2); s = seconds for the row")
# Tiny models gain nothing from more threads, and on a busy 2-core machine a second thread makes
# every op wait for a core (a 64 px render went from 0.05 s to 5 s beside one other process).
THREADS = 1


# ---- cells ---------------------------------------------------------------------------------------

class NotApplicable(Exception):
    """The family lacks what the operation needs (its reason goes into a footnote)."""


class Blocked(Exception):
    """An operation this one builds on did not succeed."""


class CheckFailed(Exception):
    """The operation ran but its result is not what the studio promises."""


@dataclass
class Cell:
    status: str  # "ok", "n/a" or "FAIL"
    text: str = ""  # ok: a figure; n/a: the reason; FAIL: the one-line message


def one_line(exc: BaseException, limit: int = 160) -> str:
    """An exception as one line: the studio's own messages as they are, crashes with their type."""
    from studio.errors import StudioError

    text = " ".join(str(exc).split()) or type(exc).__name__
    if not isinstance(exc, (Blocked, CheckFailed, StudioError)):  # a crash: say what kind
        text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---- the families -----------------------------------------------------------------------------

def _tiny_sdxl_folder(work: Path) -> str:
    from pipelines.tiny import build_tiny_sdxl

    folder = work / "sdxl"
    build_tiny_sdxl().save_pretrained(folder)
    return str(folder)


def _single_file(layout: str, stem: str) -> Callable[[Path], str]:
    """A spec builder: a tiny pipeline of ``layout`` written as an original-layout checkpoint file."""

    def build(work: Path) -> str:
        from pipelines.single_file import save_original_layout
        from pipelines.tiny import build_tiny_checkpoint_pipeline

        return str(save_original_layout(build_tiny_checkpoint_pipeline(layout), work / f"{stem}.safetensors", layout))

    return build


@dataclass(frozen=True)
class Family:
    name: str
    spec: Callable[[Path], str]  # work folder -> model spec
    partner: str  # a family of other spaces, for the cross-family check


FAMILIES = {
    f.name: f for f in (
        Family("tiny-sd", lambda work: "tiny-sd", "tiny-sdxl"),
        Family("tiny-sdxl", lambda work: "tiny-sdxl", "tiny-sd"),
        Family("tiny-lcm", lambda work: "tiny-lcm", "tiny-sdxl"),  # shares tiny-sd's text encoder
        Family("tiny-gan", lambda work: "tiny-gan", "tiny-sd"),
        Family("sdxl-folder", _tiny_sdxl_folder, "tiny-sd"),
        Family("sd15-file", _single_file("SD 1.x", "sd15"), "tiny-sdxl"),
        Family("sd2-file", _single_file("SD 2.x", "sd2"), "tiny-sd"),
        Family("sdxl-file", _single_file("SDXL base", "sdxl"), "tiny-sd"),
        Family("tiny-sd3", lambda work: "tiny-sd3", "tiny-flux"),
        Family("tiny-flux", lambda work: "tiny-flux", "tiny-sd3"),  # both 16-channel VAE latents
        Family("tiny-flux-schnell", lambda work: "tiny-flux-schnell", "tiny-sd3"),  # dev's encoders: its text space
        Family("tiny-pixart", lambda work: "tiny-pixart", "tiny-sd"),  # SD's VAE layout, another T5 text
    )
}


# ---- one row: the state its operations share ---------------------------------------------------

@dataclass
class Row:
    family: Family
    session: Any  # studio.session.Session
    work: Path
    spec: str = ""
    adapter: Any = None
    cells: dict[str, Cell] = field(default_factory=dict)
    made: dict[str, Any] = field(default_factory=dict)  # what later operations build on

    def ref(self, what: str) -> str:
        """A library name for this row's ``what`` (rows share one library)."""
        return f"{self.family.name}-{what}"

    @property
    def kind(self) -> str:
        return self.adapter.family  # "diffusion" or "gan"

    def settings(self) -> dict[str, Any]:
        return dict(DIFFUSION_SETTINGS) if self.kind == "diffusion" else {}

    def need(self, *ops: str) -> None:
        """Go on only if each of ``ops`` made what this operation builds on (its cell may still have failed
        a later check: a sample that is stored but not reproducible still renders)."""
        for op in ops:
            if op not in self.made:
                cell = self.cells.get(op)
                raise Blocked(f"needs {op} ({cell.status if cell else 'not run'})")

    def capable(self, capability: type, reason: str) -> None:
        """Go on only if the adapter declares ``capability`` (pipelines.base); else the cell is n/a."""
        if not isinstance(self.adapter, capability):
            raise NotApplicable(reason)


def pixel_change(a: Image.Image, b: Image.Image) -> float:
    """Mean |a - b| over pixels, in [0, 1]."""
    return float(np.abs(np.asarray(a, float) - np.asarray(b, float)).mean() / 255)


def shape(space: Any) -> str:
    return "x".join(map(str, space.shape))


# ---- the operations --------------------------------------------------------------------------------

def op_sample(row: Row) -> str:
    """Two seeds stored as a-1, a-2; the first seed again gives the same id."""
    s = row.session
    prompt = "a cat" if row.kind == "diffusion" else None
    a, b = s.sample(row.spec, prompt, seed=1, count=2, name=row.ref("a"), **row.settings())
    row.made.update(sample=(a, b), a=a, b=b)  # stored: later operations go on even if a check below fails
    (again,) = s.sample(row.spec, prompt, seed=1, store=False, **row.settings())
    if again.id != a.id:
        raise CheckFailed(f"seed 1 gave {a.id[:12]} in a batch of 2 but {again.id[:12]} alone "
                          f"({differences(a.obj, again.obj)})")
    if a.id == b.id:
        raise CheckFailed("seeds 1 and 2 gave the same id")
    role = "noise" if row.kind == "diffusion" else "z"
    return f"{role} {shape(a.obj.roles[role].space)}"


def differences(a: Any, b: Any) -> str:
    """Where two generations differ: the roles whose tensors differ (with the largest difference), or the settings."""
    out = [f"{r} differs by up to {float((a.roles[r].tensor - b.roles[r].tensor).abs().max()):.2g}"
           for r in a.roles if r in b.roles and not a.roles[r].tensor.equal(b.roles[r].tensor)]
    if a.settings != b.settings:
        out.append("settings differ")
    return ", ".join(out) or "same tensors and settings"


def op_render(row: Row) -> str:
    """The first sample as a PNG that carries its generation."""
    row.need("sample")
    (path,) = row.session.render_refs([row.ref("a-1")], row.work / "render")
    with Image.open(path) as im:
        row.made["picture"], row.made["image"] = path, im.convert("RGB")
    row.made["render"] = path
    return f"{row.made['image'].width}x{row.made['image'].height}"


def op_slerp(row: Row) -> str:
    """slerp of the two samples: stored with both as parents."""
    row.need("sample")
    mid = row.session.evaluate(f"slerp(@{row.ref('a-1')}, @{row.ref('a-2')}, 0.5)", name=row.ref("mid"))
    parents = tuple(row.session.library.parents(mid.id))
    want = (row.made["a"].id, row.made["b"].id)
    if sorted(parents) != sorted(want) or mid.obj.lineage.op != "slerp":
        raise CheckFailed(f"lineage {mid.obj.lineage.op} {parents}, expected slerp of {want}")
    row.session.render([mid.obj])
    return "2 parents"


def op_prompt_pair(row: Row) -> str:
    """A text-space vector from a prompt pair averaged over templates."""
    from pipelines.base import TextConditioned

    row.capable(TextConditioned, "no text conditioning (an unconditional GAN has no prompt)")
    v = row.session.vectors.from_prompts(PROMPT_PAIR, row.spec, name=row.ref("pp"))
    if v.obj.space.kind != "text":
        raise CheckFailed(f"a prompt-pair vector in {v.obj.space}")
    row.made["prompt-pair"] = row.made["vector"] = v
    return f"norm {float(v.obj.tensor.norm()):.3g}"


def _sets(row: Row) -> tuple[list[str], list[str]]:
    """Two small stored sets (2 + 2): prompts dog/cat (diffusion), or w samples of other seeds (GAN)."""
    s, extra = row.session, ({"space": "w"} if row.kind == "gan" else {})
    a = s.sample(row.spec, "a dog" if row.kind == "diffusion" else None, seed=10, count=2, name=row.ref("setA"),
                 **row.settings(), **extra)
    b = s.sample(row.spec, "a cat" if row.kind == "diffusion" else None, seed=20, count=2, name=row.ref("setB"),
                 **row.settings(), **extra)
    return [x.id for x in a], [x.id for x in b]


def op_from_sets(row: Row) -> str:
    """A mean-difference vector between two sets: text space (diffusion) or w (GAN)."""
    row.made["sets"] = _sets(row)
    role = "text" if row.kind == "diffusion" else "w"
    v = row.session.vectors.from_sets(*row.made["sets"], role=role, name=row.ref("sets"), attribute=ATTRIBUTE)
    if v.obj.space.kind != ("text" if row.kind == "diffusion" else "gan-w"):
        raise CheckFailed(f"a {role} vector in {v.obj.space}")
    row.made["from-sets"] = v
    row.made.setdefault("vector", v)  # the GAN's vector for the later operations
    return f"{v.obj.space.kind} norm {float(v.obj.tensor.norm()):.3g}"


def op_apply_latent(row: Row) -> str:
    """target + s * vector for s in (0, 1): strength 0 is the target itself; 1 changes the picture."""
    row.need("from-sets" if row.kind == "gan" else "sample")  # the GAN's target is a w sample of set A
    target = row.made["sets"][0][0] if row.kind == "gan" else row.ref("a-1")
    if "vector" not in row.made:
        raise Blocked("needs a vector (prompt-pair and from-sets failed)")
    vector = row.made["vector"]
    edits = row.session.vectors.apply(target, vector.name, [0.0, 1.0], name=row.ref("edit"))
    if edits[0].id != row.session.library.resolve(target):
        raise CheckFailed("the strength-0 edit is not its source")
    before, after = row.session.render([e.obj for e in edits])
    return f"Δ {pixel_change(before, after):.3f}"


def op_apply_hspace(row: Row) -> str:
    """An h-space vector from the two sets, applied in mode hspace."""
    from pipelines.base import HSpace

    row.capable(HSpace, "no denoiser bottleneck (h-space is a diffusion model's)")
    row.need("from-sets", "render")
    hv = row.session.vectors.from_sets(*row.made["sets"], role="hspace", name=row.ref("hv"),
                                       hspace_steps=HSPACE_STEPS)
    (edit,) = row.session.vectors.apply(row.ref("a-1"), hv.name, [2.0], mode="hspace", name=row.ref("hedit"))
    (im,) = row.session.render([edit.obj])
    return f"Δ {pixel_change(row.made['image'], im):.3f}"


def op_apply_sdedit(row: Row) -> str:
    """The prompt-pair vector rendered SDEdit-style from the source picture noised to 0.5."""
    from pipelines.base import SDEditable

    row.capable(SDEditable, "no VAE picture to start from (SDEdit is a diffusion edit)")
    row.need("prompt-pair", "render")
    (edit,) = row.session.vectors.apply(row.ref("a-1"), row.made["vector"].name, [1.0], mode="sdedit",
                                        sdedit_strength=0.5, name=row.ref("sdedit"))
    if edit.obj.lineage.op != "sdedit" or "init" not in edit.obj.roles:
        raise CheckFailed(f"an SDEdit edit with op {edit.obj.lineage.op} and roles {sorted(edit.obj.roles)}")
    (im,) = row.session.render([edit.obj])
    return f"Δ {pixel_change(row.made['image'], im):.3f}"


def op_invert(row: Row) -> str:
    """The rendered picture -> a stored generation (DDIM inversion / GAN projection); PSNR of its re-render."""
    from studio.scoring import psnr

    row.need("render")
    gen = row.session.invert(row.made["picture"], row.spec, steps=INVERT_STEPS[row.kind], name=row.ref("inv"))
    (again,) = row.session.render_refs([row.ref("inv")], row.work / "invert")
    with Image.open(again) as im:
        image = im.convert("RGB")
    picture = row.made["image"].resize(image.size, Image.LANCZOS)
    if gen.obj.lineage.params.get("file") != Path(row.made["picture"]).name:
        raise CheckFailed(f"the inversion's lineage does not name the picture: {gen.obj.lineage.params}")
    at = "" if image.size == row.made["image"].size else f" at {image.width}x{image.height}"  # the model's size
    return f"{psnr(np.asarray(picture), np.asarray(image)):.1f} dB{at}"


def op_score(row: Row) -> str:
    """score_vector with the embedded emoji judge: n=2 sources at strengths 0 and 1."""
    from studio.scoring import score_vector

    row.need("prompt-pair" if row.kind == "diffusion" else "from-sets")
    settings = row.settings() or None
    result = score_vector(row.session, row.made["vector"].name, [0.0, 1.0], n=2, settings=settings)
    first, second = result["rows"]
    if first["pixel_change"] != 0.0:
        raise CheckFailed(f"strength 0 changed the pictures by {first['pixel_change']:.3f}")
    return f"flip {second['flip_rate']:.0%}"


def op_comfy(row: Row) -> str:
    """A picture encoded into VAE space, exported to a ComfyUI .latent, imported back: the same id."""
    from pipelines.base import VaeCoder

    row.capable(VaeCoder, "no VAE space (a GAN has no encoder)")
    row.need("render")
    s = row.session
    enc = s.encode_image(row.made["picture"], row.spec, name=row.ref("enc"))
    path = s.export(row.ref("enc"), row.work / f"{row.family.name}.latent")
    (back,) = s.import_file(path, model=row.spec)
    if back.id != enc.id:
        raise CheckFailed(f"imported as {back.id[:12]}, exported {enc.id[:12]}")
    return shape(enc.obj.space)


def op_cross(row: Row) -> str:
    """This family's vector added to a generation of another family: refused, naming both spaces."""
    from studio.errors import StudioError

    row.need("prompt-pair" if row.kind == "diffusion" else "from-sets")
    other = FAMILIES[row.family.partner]
    spec = other.spec(row.work)
    settings = dict(DIFFUSION_SETTINGS) if row.session.adapter(spec).family == "diffusion" else {}
    (target,) = row.session.sample(spec, "a cat", seed=3, name=row.ref("other"), **settings)
    vector = row.made["vector"]
    try:
        row.session.vectors.apply(target.name, vector.name, [1.0])
    except StudioError as exc:
        message = str(exc)
        theirs = [str(sp) for sp in target.obj.spaces.values()]
        if str(vector.obj.space) not in message or not any(t in message for t in theirs):
            raise CheckFailed(f"refused, but without naming both spaces: {one_line(exc)}") from None
        return f"vs {other.name}"
    raise CheckFailed(f"{vector.obj.space} vector added to a {other.name} generation "
                      f"({', '.join(map(str, target.obj.spaces.values()))})")


OPERATIONS: dict[str, Callable[[Row], str]] = {
    "sample": op_sample,
    "render": op_render,
    "slerp": op_slerp,
    "prompt-pair": op_prompt_pair,
    "from-sets": op_from_sets,
    "apply latent": op_apply_latent,
    "apply hspace": op_apply_hspace,
    "apply sdedit": op_apply_sdedit,
    "invert": op_invert,
    "score": op_score,
    "comfy .latent": op_comfy,
    "cross-family": op_cross,
}


# ---- running ----------------------------------------------------------------------------------------

@dataclass
class RowResult:
    family: str
    cells: dict[str, Cell]
    seconds: float


def run_cell(row: Row, op: str) -> Cell:
    try:
        return Cell("ok", OPERATIONS[op](row))
    except NotApplicable as exc:
        return Cell("n/a", str(exc))
    except Exception as exc:  # noqa: BLE001 - every failure becomes its cell's one line
        return Cell("FAIL", one_line(exc))


def run_family(family: Family, session: Any, work: Path) -> RowResult:
    """Build the family's model, then every operation in order; a model that fails fails every cell."""
    t0 = time.perf_counter()
    row = Row(family, session, work)
    try:
        row.spec = family.spec(work)
        row.adapter = session.adapter(row.spec)
    except Exception as exc:  # noqa: BLE001
        failed = Cell("FAIL", one_line(exc))
        return RowResult(family.name, dict.fromkeys(OPERATIONS, failed), time.perf_counter() - t0)
    for op in OPERATIONS:
        row.cells[op] = run_cell(row, op)
    return RowResult(family.name, row.cells, time.perf_counter() - t0)


def run_families(names: list[str], home: str | Path | None = None,
                 progress: Callable[[str], None] | None = None, threads: int = THREADS) -> list[RowResult]:
    """One row per family, in one library (``home``, else a temporary one), on ``threads`` torch threads."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        t0 = time.perf_counter()
        import diffusers  # noqa: F401 - once, outside the rows, so the first row's seconds are like the others'

        from studio.session import Session

        if progress:
            progress(f"imports: {time.perf_counter() - t0:.1f} s")
        with tempfile.TemporaryDirectory(prefix="studio-families-") as tmp:
            session = Session(Path(home) if home is not None else Path(tmp) / "library")
            try:
                return [_run_and_report(FAMILIES[name], session, Path(tmp) / "work" / name, progress)
                        for name in names]
            finally:
                session.library.close()
    finally:
        torch.set_num_threads(before)  # main() may run inside another program (a test)


def _run_and_report(family: Family, session: Any, work: Path, progress: Callable[[str], None] | None) -> RowResult:
    work.mkdir(parents=True)
    result = run_family(family, session, work)
    if progress:
        progress(progress_line(result))
    return result


def progress_line(result: RowResult) -> str:
    counts = {k: sum(c.status == k for c in result.cells.values()) for k in ("ok", "n/a", "FAIL")}
    return (f"{result.family}: {counts['ok']} ok, {counts['n/a']} n/a, {counts['FAIL']} FAIL "
            f"in {result.seconds:.1f} s")


# ---- the table ---------------------------------------------------------------------------------------

def table(results: list[RowResult], markdown: bool = False) -> str:
    """The family x operation table, then the footnotes of its n/a cells."""
    notes: list[str] = []  # distinct n/a reasons, numbered in order of first appearance

    def text(cell: Cell) -> str:
        if cell.status == "n/a":
            if cell.text not in notes:
                notes.append(cell.text)
            return f"n/a [{notes.index(cell.text) + 1}]"
        if cell.status == "FAIL":
            return f"FAIL: {cell.text}"
        return f"ok {cell.text}".strip()

    header = ["family", *OPERATIONS, "s"]
    rows = [[r.family, *(text(r.cells[op]) for op in OPERATIONS), f"{r.seconds:.1f}"] for r in results]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    else:
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    if notes:  # in Markdown as a list, so that each stays on its own line
        lines.append("")
        lines += [f"{'- ' if markdown else ''}[{i}] n/a: {note}" for i, note in enumerate(notes, 1)]
    lines += ["", LEGEND]
    return "\n".join(lines)


def failed(results: list[RowResult]) -> bool:
    return any(c.status == "FAIL" for r in results for c in r.cells.values())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Run every operation on the tiny model of every supported family; print the table.",
        epilog="Example: python scripts/families.py --families tiny-sd,tiny-gan --markdown",
    )
    parser.add_argument("--families", default=",".join(FAMILIES),
                        help=f"comma-separated rows to run (default: all: {','.join(FAMILIES)})")
    parser.add_argument("--home", help="library folder to keep the results in (default: a temporary one)")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table (for the README)")
    parser.add_argument("--threads", type=int, default=THREADS,
                        help=f"torch CPU threads (default {THREADS}: the tiny models gain nothing from more)")
    args = parser.parse_args(argv)
    args.families = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = [f for f in args.families if f not in FAMILIES]
    if args.threads < 1:
        parser.error(f"--threads takes a whole number of at least 1, not {args.threads}")
    if unknown or not args.families:
        parser.error(f"unknown family {', '.join(unknown) or '(none given)'}; choose from {', '.join(FAMILIES)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    results = run_families(args.families, args.home, lambda line: print(line, file=sys.stderr, flush=True),
                           args.threads)
    print(table(results, args.markdown))
    print(f"total {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 1 if failed(results) else 0


if __name__ == "__main__":
    sys.exit(main())

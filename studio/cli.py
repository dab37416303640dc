"""The ``studio`` command line: a thin layer that builds arguments, calls the Session, prints results."""

from __future__ import annotations

import json
import re
import sqlite3
import sys
from contextlib import contextmanager
from pathlib import Path

import click

from studio.errors import StudioError, printable
from studio.interpolation import EASINGS, METHODS
from studio.objects import Generation, Vector
from studio.session import DEFAULT_MODEL, FITS, Session, Stored, default_home
from studio.store import make_folder, set_aside_damaged_index
from studio.vectorlab import parse_attribute


class StudioGroup(click.Group):
    """Turns a StudioError anywhere below into one line on stderr and exit code 2.

    The line is escaped once more here (``printable``): a newline a message still carries, from text
    quoted in it unescaped, cannot start a second line that reads like another error.
    """

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except StudioError as exc:
            click.echo(f"error: {printable(exc)}", err=True)
            ctx.exit(2)
        except sqlite3.DatabaseError as exc:  # the index file itself is damaged
            click.echo(f"error: the library's index is damaged ({printable(exc)}); run 'studio latents check "
                       "--repair' to rebuild it from the object files (names and tags are lost)", err=True)
            ctx.exit(2)
        except click.UsageError as exc:  # a bad option or argument below: one line too, with where to look
            where = exc.ctx.command_path if exc.ctx else ctx.command_path
            click.echo(f"error: {printable(exc.format_message())} (see '{printable(where)} --help')", err=True)
            ctx.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)


@contextmanager
def progress_bar(desc: str, enabled: bool = True):
    """A tqdm bar on stderr fed by (done, total) callbacks; yields the callback."""
    from tqdm.auto import tqdm

    bar = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if not enabled:
            return
        if bar is None or bar.total != total:
            if bar is not None:
                bar.close()
            bar = tqdm(total=total, desc=desc, unit="step", file=sys.stderr, leave=False, disable=None)
        bar.n = done
        bar.refresh()

    try:
        yield update
    finally:
        if bar is not None:
            bar.close()


def _one_line(text: str) -> str:
    """Text for a table row: newlines and other control characters shown escaped, so one row stays one line."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


@contextmanager
def _output_folder(folder: str | Path | None):
    """Create an output folder up front, so a bad --out fails before anything is computed or stored;
    if the command then fails, the folders it created are removed again while still empty."""
    if folder is None:
        yield
        return
    folder = Path(folder)
    created = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
    make_folder(folder)
    try:
        yield
    except BaseException:
        for p in created:
            try:
                p.rmdir()  # only if empty
            except OSError:
                break
        raise


def _session(ctx: click.Context) -> Session:
    if "session" not in ctx.obj:
        ctx.obj["session"] = Session(ctx.obj.get("home"), device=ctx.obj.get("device"),
                                     batch_size=ctx.obj.get("batch_size"),
                                     notify=lambda message: click.echo(f"warning: {message}", err=True))
    return ctx.obj["session"]


def _print_stored(items: list[Stored], as_json: bool, paths: list[Path] | None = None) -> None:
    if as_json:
        rows = [{"id": s.id, "name": s.name, "kind": s.obj.kind, "path": str(p) if p else None}
                for s, p in zip(items, paths or [None] * len(items))]
        click.echo(json.dumps(rows, indent=2))
        return
    for s, p in zip(items, paths or [None] * len(items)):
        line = f"{s.id[:12]}  {s.name or '-':<16} {s.obj.kind}"
        click.echo(line + (f"  -> {p}" if p else ""))


@click.group(cls=StudioGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--home", type=click.Path(), envvar="STUDIO_HOME", show_envvar=True,
              help="Library folder (default: a per-user data folder).")
@click.option("--device", default=None, help="Torch device for models (default: cuda if present, else cpu).")
@click.option("--batch-size", type=click.IntRange(1, 1024), default=None,
              help="Items per model call when rendering (default: as many as half the free memory holds, at most 64).")
@click.version_option(package_name="latent-studio")
@click.pass_context
def main(ctx: click.Context, home: str | None, device: str | None, batch_size: int | None) -> None:
    """Latent Studio: generate images, store their latents, and do arithmetic on them.

    \b
    Examples:
      studio sample --model tiny-sd --prompt "a cat" --seed 1 --name a
      studio sample --model tiny-sd --prompt "a cat" --seed 2 --name b
      studio eval "slerp(@a, @b, 0.5)" --name mid --out mid.png
      studio latents show mid --json
      studio render prompts/recipes/interpolate.yaml --out out/
    """
    ctx.ensure_object(dict)
    ctx.obj.update(home=home, device=device, batch_size=batch_size)


@main.command()
@click.option("--model", "-m", default=None, help=f"Model spec (default: {DEFAULT_MODEL}); see 'studio models'.")
@click.option("--prompt", "-p", default=None, help="Text prompt (text-conditioned models).")
@click.option("--seed", "-s", type=int, default=None, help="First seed; items use seed, seed+1, ... (default: random).")
@click.option("-n", "--count", type=int, default=1, show_default=True, help="How many generations to draw.")
@click.option("--name", default=None, help="Name to store under (NAME-1, NAME-2, ... when -n > 1).")
@click.option("--tag", "tags", multiple=True, help="Tag to attach (repeatable).")
@click.option("--steps", type=int, default=None, help="Denoising steps (diffusion).")
@click.option("--guidance", type=float, default=None, help="Guidance scale (diffusion): classifier-free guidance; "
              "on Flux.1 dev the distilled guidance embedding, on LCM the guidance distilled into the UNet.")
@click.option("--true-cfg", type=float, default=None, help="Flux.1: true classifier-free guidance, a second pass "
              "with the negative prompt (above 1 to take effect).")
@click.option("--negative", default=None, help="Negative prompt that guidance steers away from (diffusion), "
              "e.g. 'noto style'.")
@click.option("--size", type=int, default=None, help="Image height and width in pixels (diffusion).")
@click.option("--scheduler", default=None, help="Diffusion sampler, e.g. EulerAncestralDiscreteScheduler (default: "
              "the model's own); a name that does not fit the model lists those that do.")
@click.option("--truncation", type=float, default=None, help="Truncation psi (GAN).")
@click.option("--space", type=click.Choice(["z", "w", "w+"]), default=None, help="Latent space to store (GAN; "
              "default z): w = mapping(z), w+ = that w once per synthesis layer, for style mixing.")
@click.option("--category", default=None, help="Category of a conditional emoji GAN (overrides the prompt), e.g. flags.")
@click.option("--style", default=None, help="Art style of a conditional emoji GAN (overrides the prompt): noto or "
              "twemoji.")
@click.option("--class", "class_", type=int, default=None, help="Class index of another conditional GAN (default: "
              "chosen by the seed).")
@click.option("--out", "-o", type=click.Path(file_okay=False), default=None, help="Also render PNGs into this folder.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.pass_context
def sample(ctx, model, prompt, seed, count, name, tags, steps, guidance, true_cfg, negative, size, scheduler,
           truncation, space, category, style, class_, out, as_json):
    """Draw new generations from seeds (and a prompt) and store them.

    \b
    Examples:
      studio sample --prompt "smiling cat face" --seed 3 --out out/
      studio sample --model tiny-gan --seed 1 -n 4 --name g --out out/
      studio sample --model ffhq.pkl --seed 1 --truncation 0.7 --out out/
      studio sample --model tiny-flux --prompt "a cat" --true-cfg 2 --negative blurry
    """
    settings = {k: v for k, v in {"steps": steps, "guidance": guidance, "true_cfg": true_cfg, "negative_prompt": negative,
                                  "height": size, "width": size, "scheduler": scheduler,
                                  "truncation": truncation, "space": space, "category": category,
                                  "style": style, "class": class_}.items() if v is not None}
    session = _session(ctx)
    with _output_folder(out):  # made before anything is stored
        items = session.sample(model, prompt, seed, count, name, tags, **settings)
        paths = None
        if out:
            with progress_bar("render", not as_json) as cb:
                paths = session.render_to(items, out, cb)
    _print_stored(items, as_json, paths)


@main.command(name="eval")
@click.argument("expression")
@click.option("--name", default=None, help="Name to store the result under.")
@click.option("--tag", "tags", multiple=True, help="Tag to attach (repeatable).")
@click.option("--out", "-o", type=click.Path(dir_okay=False), default=None, help="Render the result to this PNG.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.pass_context
def eval_(ctx, expression, name, tags, out, as_json):
    """Evaluate EXPRESSION over stored objects and store the result with its lineage.

    \b
    The language: @name or @idprefix, numbers, + - * /, parentheses and
    lerp(a, b, t), slerp(a, b, t), blend(a, b, t), mean(a, ...), normalize(x[, norm]),
    add(a, b), sub(a, b), scale(x, k).

    \b
    Examples:
      studio eval "slerp(@a, @b, 0.5)" --name mid --out mid.png
      studio eval "@scene + 0.8 * @day_to_night" --name night
    """
    session = _session(ctx)
    out = Path(out) if out else None
    if out and out.suffix.lower() != ".png":
        raise StudioError(f"--out names a PNG file; got {out}")
    with _output_folder(out.parent if out else None):  # checked before anything is stored
        if out:
            result = session.evaluate(expression, store=False).obj
            if not isinstance(result, Generation):  # known before storing: nothing is stored for a bad --out
                what = "a vector" if isinstance(result, Vector) else f"a lone {result.space.kind} latent"
                raise StudioError(f"--out renders a generation; '{expression}' gives {what}, which has no picture")
        stored = session.evaluate(expression, name=name, tags=tags)
        paths = None
        if out:
            with progress_bar("render", not as_json) as cb:
                paths = session.render_to([stored], out.parent, cb, filenames=[out.name])
    _print_stored([stored], as_json, paths)


@main.command()
@click.argument("network", type=click.Path(dir_okay=False))
@click.argument("folder", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def convert(network, folder, as_json):
    """Write a StyleGAN network (NVIDIA .pkl, rosinality .pt) as a safetensors + config.json FOLDER.

    The network is read without running code from it (its pickle's classes are never imported);
    FOLDER then works as --model FOLDER everywhere, with the same pictures, bit for bit.

    \b
    Examples:
      studio convert stylegan3-r-ffhqu-256x256.pkl models/ffhqu-r
      studio sample --model models/ffhqu-r --seed 1 --out out/
    """
    facts = Session.convert(network, folder)
    if as_json:
        click.echo(json.dumps(facts, indent=2))
        return
    what = f"{facts['c_dim']} classes" if facts["c_dim"] else "unconditional"
    click.echo(f"{facts['network']} ({facts['img_resolution']}px, z {facts['z_dim']}, w {facts['w_dim']}, "
               f"{facts['num_ws']} ws, {what}) -> {facts['folder']}")


@main.command()
@click.argument("image", type=click.Path(dir_okay=False))
@click.option("--model", "-m", default=None, help=f"Model whose VAE encodes (default: {DEFAULT_MODEL}).")
@click.option("--name", default=None, help="Name to store the latent under.")
@click.option("--fit", type=click.Choice(FITS), default="crop", show_default=True,
              help="A picture that is not square is centre-cropped, or padded with white, to a square.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.pass_context
def encode(ctx, image, model, name, fit, as_json):
    """Encode IMAGE into a model's VAE latent space (unscaled) and store it.

    \b
    Example:
      studio encode photo.png --model tiny-sd --name photo
      studio latents export photo photo.latent     # for ComfyUI
    """
    _print_stored([_session(ctx).encode_image(image, model, name, fit)], as_json)


@main.command()
@click.argument("keyframes", nargs=-1, required=True)
@click.option("--frames", "-f", type=int, default=12, show_default=True, help="Frames in all (2-120), keyframes "
              "included.")
@click.option("--method", type=click.Choice(METHODS), default="slerp", show_default=True,
              help="slerp: spherical for noise and GAN z, linear for prompt embeddings; lerp: linear for all.")
@click.option("--easing", type=click.Choice(list(EASINGS)), default="ease-in-out", show_default=True,
              help="How t moves within each pair of keyframes (ease-in-out slows down at every keyframe).")
@click.option("--fps", type=float, default=8, show_default=True, help="Frames per second of the animation.")
@click.option("--gif/--no-gif", default=True, show_default=True, help="Write animation.gif.")
@click.option("--mp4/--no-mp4", default=False, show_default=True, help="Write animation.mp4 (H.264).")
@click.option("--out", "-o", type=click.Path(file_okay=False), default="out/interpolation", show_default=True,
              help="Folder for frame_000.png, ... and the animation.")
@click.option("--json", "as_json", is_flag=True, help="Print the files and each frame's expression as JSON.")
@click.pass_context
def interpolate(ctx, keyframes, frames, method, easing, fps, gif, mp4, out, as_json):
    """Frames between two or more stored generations (KEYFRAMES: names or id prefixes), as PNGs and an
    animation; the same frames the UI's Interpolate tab draws. Nothing is stored: keep a frame with
    'studio eval' and the expression it prints.

    \b
    Examples:
      studio interpolate a b --frames 16 --out out/ab
      studio interpolate a b c a --frames 36 --easing linear --mp4 --out out/loop
    """
    session = _session(ctx)
    with _output_folder(out), progress_bar("render", not as_json) as cb:
        made = session.render_interpolation(list(keyframes), out, frames, method, easing, fps, gif, mp4, cb)
    if as_json:
        click.echo(json.dumps({"frames": [{"file": str(p), **step} for p, step in zip(made["frames"], made["plan"])],
                               "gif": made["gif"] and str(made["gif"]), "mp4": made["mp4"] and str(made["mp4"])},
                              indent=2))
        return
    for path, step in zip(made["frames"], made["plan"]):
        click.echo(f"{path}  {step['expr'].replace('t)', format(step['t'], 'g') + ')')}")
    for animation in (made["gif"], made["mp4"]):
        if animation:
            click.echo(str(animation))


@main.command()
@click.argument("targets", nargs=-1, required=True)
@click.option("--out", "-o", type=click.Path(file_okay=False), default="out", show_default=True,
              help="Folder for the PNGs.")
@click.option("--batch", type=click.IntRange(1, 1024), default=16, show_default=True,
              help="Generations per model call.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.pass_context
def render(ctx, targets, out, batch, as_json):
    """Render a recipe file (RECIPE.yaml) or stored generations (@REF ...) to PNGs.

    \b
    Examples:
      studio render prompts/recipes/interpolate.yaml --out out/
      studio render @mid @a --out out/
    """
    from studio.recipe import Recipe, run

    session = _session(ctx)
    if len(targets) == 1 and targets[0].endswith((".yaml", ".yml")):
        recipe = Recipe.load(targets[0])
        with progress_bar("render", not as_json) as cb:
            result = run(session, recipe, out, cb, batch=batch)
        items = [s for pts in result.renders.values() for _, s in pts]
        if as_json:
            click.echo(json.dumps({"files": [str(p) for p in result.files],
                                   "objects": [s.id for s in items],
                                   "lets": {k: s.id for k, s in result.lets.items()}}, indent=2))
        else:
            for p in result.files:
                click.echo(str(p))
            click.echo(f"{len(result.files)} image(s) in {out}", err=True)
        return
    with progress_bar("render", not as_json) as cb:
        paths = session.render_refs(list(targets), out, cb)
    if as_json:
        click.echo(json.dumps([str(p) for p in paths]))
    else:
        for p in paths:
            click.echo(str(p))


LS_PAGE = 50  # objects `latents ls` shows at a time


def _date(text: str | None, option: str) -> float | None:
    """An ISO date or date and time (local time) as a Unix time; one error for anything else."""
    if text is None:
        return None
    from datetime import datetime

    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise StudioError(f"{option} {text[:40]!r} is not a date: write 2026-12-01 or 2026-12-01T14:30") from None


@main.group()
def latents():
    """List, inspect, tag, remove, export and import stored objects."""


@latents.command(name="ls")
@click.option("--kind", type=click.Choice(["generation", "latent", "vector"]), default=None)
@click.option("--tag", default=None, help="Only objects with this tag.")
@click.option("--model", default=None, help="Only objects of this model spec.")
@click.option("--space", default=None, help="Only objects with a latent in this space: its kind (gan-w), its "
              "family (vae-35f64b0e) or both (gan-w[stylegan-1a2b3c4d]).")
@click.option("--name", "name_prefix", default=None, metavar="PREFIX", help="Only objects with a name that starts so.")
@click.option("--search", "text", default=None, help="Text to find in names, prompts, expressions or ids.")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help=f"Show at most this many (newest first; default {LS_PAGE}, a page).")
@click.option("--after", default=None, metavar="CURSOR", help="Go on after the page that printed this cursor.")
@click.option("--since", default=None, metavar="DATE", help="Only objects made on or after this date (2026-12-01, "
              "or 2026-12-01T14:30, local time).")
@click.option("--until", default=None, metavar="DATE", help="Only objects made before this date.")
@click.option("--all", "everything", is_flag=True, help="Show every object, not a page.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per line, for scripts.")
@click.pass_context
def latents_ls(ctx, kind, tag, model, space, name_prefix, text, limit, after, since, until, everything, as_json):
    """List stored objects, newest first, a page at a time.

    \b
    Examples:
      studio latents ls --tag day
      studio latents ls --name frame- --space gan-w
      studio latents ls --after 1764633600.25:3f2a...    # the next page, as the last one said
      studio latents ls --all --json > library.jsonl
    """
    if everything and limit:
        raise StudioError("give --all or --limit, not both")
    library = _session(ctx).library
    page = None if everything else (limit or LS_PAGE)
    times = {"since": _date(since, "--since"), "until": _date(until, "--until")}
    rows = library.ls(kind, tag, model, space, text, page + 1 if page else None, after=after, name=name_prefix,
                      **times)
    more = page is not None and len(rows) > page  # one row beyond the page says there is a next one
    rows = rows[:page] if page else rows
    for r in rows:
        if as_json:
            click.echo(json.dumps(r.to_json()))
            continue
        what = _one_line(r.summary.get("prompt") or r.summary.get("expr") or r.summary.get("method") or "")
        names = ",".join(r.names) or "-"
        tags = (" #" + " #".join(r.tags)) if r.tags else ""
        click.echo(f"{r.short_id}  {names:<16} {r.kind:<10} {r.model or '-':<16} {r.op or '-':<8} {what}{tags}")
    if more:
        total = library.count(kind, tag, model, space, text, name=name_prefix, **times)
        click.echo(f"{len(rows)} of {total} shown; the next page: studio latents ls --after {rows[-1].cursor} "
                   "(same filters), or --all", err=True)


@latents.command(name="show")
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.pass_context
def latents_show(ctx, ref, as_json):
    """Show one object's metadata and lineage."""
    info = _session(ctx).describe(ref)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"id       {info['id']}")
    click.echo(f"kind     {info['kind']}    names: {', '.join(info['names']) or '-'}    tags: {', '.join(info['tags']) or '-'}")
    if info.get("model"):
        click.echo(f"model    {info['model']}")
    for role, space in info["spaces"].items():
        click.echo(f"space    {role}: {space}")
    for key in ("seed", "prompt", "method"):
        if info.get(key) is not None:
            click.echo(f"{key:<8} {_one_line(str(info[key]))}")
    if info.get("settings"):
        click.echo("settings " + ", ".join(f"{k}={v}" for k, v in info["settings"].items()))
    lin = info["lineage"]
    if lin["op"]:
        params = _one_line(", ".join(f"{k}={v}" for k, v in lin["params"].items()))
        click.echo(f"made by  {lin['op']}({params})")
        for p in lin["parents"]:
            click.echo(f"  parent {p['id'][:12]}  {', '.join(p['names']) or ''}")


@latents.command(name="tag")
@click.argument("ref")
@click.argument("tag")
@click.pass_context
def latents_tag(ctx, ref, tag):
    """Attach TAG to an object."""
    click.echo(_session(ctx).library.tag(ref, tag)[:12])


@latents.command(name="untag")
@click.argument("ref")
@click.argument("tag")
@click.pass_context
def latents_untag(ctx, ref, tag):
    """Remove TAG from an object."""
    click.echo(_session(ctx).library.untag(ref, tag)[:12])


@latents.command(name="name")
@click.argument("ref")
@click.argument("name")
@click.pass_context
def latents_name(ctx, ref, name):
    """Give an object another NAME."""
    click.echo(_session(ctx).library.name(ref, name)[:12])


@latents.command(name="rm")
@click.argument("ref")
@click.pass_context
def latents_rm(ctx, ref):
    """Remove a name, or an object (objects made from it keep their lineage ids).

    An object with several names (identical content is stored once) loses only the name given;
    an id prefix, or its last name, removes the object itself.
    """
    lib = _session(ctx).library
    object_id = lib.remove(ref)
    if lib.exists(object_id):  # only the name went
        click.echo(f"removed the name {ref.removeprefix('@')} "
                   f"(the object stays: also named {', '.join(lib.names_of(object_id))})")
    else:
        click.echo(f"removed {object_id[:12]}")


@latents.command(name="export")
@click.argument("ref")
@click.argument("file", type=click.Path(dir_okay=False))
@click.pass_context
def latents_export(ctx, ref, file):
    """Export to FILE: .safetensors (self-describing) or .latent (ComfyUI, VAE latents)."""
    click.echo(str(_session(ctx).export(ref, file)))


@latents.command(name="import")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--name", default=None, help="Name to store under.")
@click.option("--model", default=None, help="Model whose VAE made a ComfyUI .latent file.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.pass_context
def latents_import(ctx, file, name, model, as_json):
    """Import a .safetensors file, a ComfyUI .latent, or a PNG made by the studio."""
    _print_stored(_session(ctx).import_file(file, name, model), as_json)


@latents.command(name="check")
@click.option("--repair", is_flag=True, help="Adopt object files left unindexed by a crash, drop names of "
              "objects that are gone, rebuild a damaged index (its names and tags are lost).")
@click.pass_context
def latents_check(ctx, repair):
    """Verify every stored file against its id, and the index against the files."""
    if repair:
        home = Path(ctx.obj["home"]).expanduser() if ctx.obj.get("home") else default_home()
        if set_aside := set_aside_damaged_index(home):  # before the library opens it
            damage, aside = set_aside
            click.echo(f"the index was damaged ({damage}); moved it to {aside.name} and rebuilt it from the files")
        click.echo(f"adopted {_session(ctx).library.reindex()} unindexed object(s)")
    lib = _session(ctx).library
    with progress_bar("check") as cb:
        problems = lib.check(cb)
    for p in problems:
        click.echo(p)
    click.echo(f"{len(lib)} object(s), {len(problems)} problem(s)")
    if problems:
        ctx.exit(1)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def models(as_json):
    """List the model specs the studio knows (hub ids and folders work too)."""
    rows = Session.models()
    if as_json:
        click.echo(json.dumps([{"spec": s, "description": d} for s, d in rows], indent=2))
        return
    for spec, desc in rows:
        mark = "*" if spec == DEFAULT_MODEL else " "
        click.echo(f"{mark} {spec:<18} {desc}")
    from pipelines.families import family_table
    from pipelines.registry import OTHER_SPECS

    click.echo("\nAlso:")
    for spec, desc in OTHER_SPECS:
        click.echo(f"  {spec:<26} {desc}")
    click.echo("\nDiffusion families (every one samples, renders, interpolates, makes and applies vectors in "
               "latent, h-space and SDEdit modes, inverts pictures, exports ComfyUI latents):")
    for pipeline, family, summary in family_table():
        click.echo(f"  {family:<13} {pipeline:<31} {summary}")


@main.command()
@click.option("--model", "-m", default=None,
              help=f"Model the studio opens with (default: {DEFAULT_MODEL}, or tiny-sd with a notice if it is missing).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", type=int, default=7860, show_default=True, help="Port to listen on.")
@click.option("--share", is_flag=True, help="Also open a temporary public gradio.live link (use with a login).")
@click.option("--auth", default=None, metavar="USER:PASS", help="Require this login.")
@click.option("--auth-file", type=click.Path(dir_okay=False), default=None,
              help="Require a login from this file of USER:PASS lines.")
@click.option("--max-upload", default="25mb", show_default=True, help="Largest file a browser may upload.")
@click.option("--queue-size", type=int, default=64, show_default=True,
              help="Requests that may wait; more are refused until the queue drains.")
@click.pass_context
def ui(ctx, model, host, port, share, auth, auth_file, max_upload, queue_size):
    """Start the studio in the browser (Gradio): generate, browse the library, interpolate, edit, run recipes.

    \b
    Examples:
      studio ui
      studio ui --model tiny-sd --port 7861
      studio ui --host 0.0.0.0 --auth-file logins.txt
    """
    from studio.ui import server  # gradio loads only for this command

    session = _session(ctx)
    server.own_temp_dir(session.library.home)
    server.launch(session, model, host, port, share, server.parse_auth(auth, auth_file), max_upload, queue_size,
                  echo=lambda line: click.echo(line, err=line.startswith(("warning", "notice"))))


# ---- vectors ----------------------------------------------------------------------------------------


def _floats(text: str) -> list[float]:
    try:
        if "_" in text:  # float() would read "1_000" as 1000
            raise ValueError(text)
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise StudioError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or not all(v == v and abs(v) != float("inf") for v in values):
        raise StudioError(f"expected comma-separated finite numbers, got {text!r}")
    return values


def _refs(session: Session, refs: tuple[str, ...], tag: str | None, what: str) -> list[str]:
    out = list(refs)
    if tag:
        out += [r.id for r in session.library.ls(tag=tag)]
    if not out:
        raise StudioError(f"set {what} is empty: give references with --{what.lower()} or a tag with --{what.lower()}-tag")
    return out


@main.group()
def vectors():
    """Make, condition, discover and apply attribute vectors."""


@vectors.command(name="from-sets")
@click.option("--a", "refs_a", multiple=True, help="A member of set A (repeatable).")
@click.option("--b", "refs_b", multiple=True, help="A member of set B (repeatable).")
@click.option("--a-tag", default=None, help="All objects with this tag join set A.")
@click.option("--b-tag", default=None, help="All objects with this tag join set B.")
@click.option("--method", type=click.Choice(["mean", "boundary"]), default="mean", show_default=True,
              help="mean difference, or the normal of a logistic-regression boundary (InterFaceGAN).")
@click.option("--role", default=None, help="Role of generations to use: text, noise, z, w, or hspace "
              "(UNet bottleneck or transformer middle block; default: text for diffusion, the GAN's latent otherwise).")
@click.option("--hspace-steps", type=int, default=5, show_default=True, help="Steps averaged for --role hspace.")
@click.option("--attribute", default=None, metavar="NAME:FROM:TO",
              help="What the vector edits, for scoring (e.g. style:noto:twemoji).")
@click.option("--name", default=None, help="Name to store the vector under.")
@click.pass_context
def vectors_from_sets(ctx, refs_a, refs_b, a_tag, b_tag, method, role, hspace_steps, attribute, name):
    """A direction from set A to set B of stored generations or latents (at least 2 in each set).

    \b
    Examples:
      studio vectors from-sets --a-tag day --b-tag night --name day_to_night
      studio vectors from-sets --a g1 --a g2 --b g3 --b g4 --method boundary --role w
    """
    session = _session(ctx)
    a = _refs(session, refs_a, a_tag, "A")
    b = _refs(session, refs_b, b_tag, "B")
    _print_stored([session.vectors.from_sets(a, b, method, role, name, parse_attribute(attribute), hspace_steps)],
                  False)


@vectors.command(name="from-prompts")
@click.argument("definition", type=click.Path(dir_okay=False))
@click.option("--model", "-m", default=None, help=f"Text-conditioned model (default: {DEFAULT_MODEL}).")
@click.option("--name", default=None, help="Name to store under (default: the definition's name).")
@click.pass_context
def vectors_from_prompts(ctx, definition, model, name):
    """A text-space vector from a prompt-pair definition (see prompts/vectors/).

    \b
    Example:
      studio vectors from-prompts prompts/vectors/day_to_night.yaml --model tiny-sd
    """
    _print_stored([_session(ctx).vectors.from_prompts(definition, model, name)], False)


@vectors.command(name="discover")
@click.option("--model", "-m", default=None,
              help=f"Model to explore (default: {DEFAULT_MODEL}, which has a text space but no w).")
@click.option("--space", type=click.Choice(["w", "text"]), default="w", show_default=True,
              help="w: sampled GAN w vectors; text: the prompt embeddings of --prompts.")
@click.option("-k", type=int, default=8, show_default=True, help="How many principal directions.")
@click.option("--samples", type=int, default=2000, show_default=True, help="Sampled w vectors (w space).")
@click.option("--prompts", "prompt_file", type=click.Path(dir_okay=False), default=None,
              help="Text file with one prompt per line (text space).")
@click.option("--prefix", default=None, help="Store the directions as PREFIX0, PREFIX1, ...")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the first sampled w (w space).")
@click.option("--method", type=click.Choice(["pca", "sefa"]), default="pca", show_default=True,
              help="pca: principal directions of samples (GANSpace); sefa: closed-form directions of a StyleGAN's "
                   "style weights (SeFa), no sampling.")
@click.option("--layers", default=None, metavar="A-B", help="SeFa: the synthesis inputs whose style weights to "
              "factorize, e.g. 0-3 for the coarse layers (default: all).")
@click.pass_context
def vectors_discover(ctx, model, space, k, samples, prompt_file, prefix, seed, method, layers):
    """Directions in w (GANSpace's PCA of sampled w, or SeFa) or in prompt embeddings, with their share.

    \b
    Examples:
      studio vectors discover --model emoji-gan -k 6 --prefix pc
      studio vectors discover --model ffhq.pkl --method sefa --layers 0-3 -k 5 --prefix coarse
      studio vectors discover --space text --prompts prompts/emoji_prompts.txt -k 4 --prefix tpc
    """
    prompts = None
    if prompt_file:
        try:
            text = Path(prompt_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise StudioError(f"cannot read prompts from {prompt_file}: {getattr(exc, 'strerror', None) or exc}") from None
        prompts = [line.strip() for line in text.splitlines() if line.strip()]
    rows = _session(ctx).vectors.discover(model, space, k, samples, prefix, prompts, seed, method, layers)
    share = "eigenvalue share" if method == "sefa" else "explained variance"
    for stored, ratio in rows:
        click.echo(f"{stored.id[:12]}  {stored.name or '-':<12} {share} {ratio:7.2%}")


@vectors.command(name="condition")
@click.argument("vector")
@click.option("--on", "others", multiple=True, required=True, help="A vector whose direction to remove (repeatable).")
@click.option("--name", default=None, help="Name to store the conditioned vector under.")
@click.pass_context
def vectors_condition(ctx, vector, others, name):
    """Remove from VECTOR its components along others (InterFaceGAN's conditional manipulation).

    \b
    Example:
      studio vectors condition style_w --on category_w --name style_only
    """
    _print_stored([_session(ctx).vectors.condition(vector, list(others), name)], False)


@vectors.command(name="apply")
@click.argument("target")
@click.argument("vector")
@click.option("--strength", "-s", "strengths", default="1", show_default=True,
              help="Strength, or a comma-separated sweep (e.g. -1,-0.5,0,0.5,1).")
@click.option("--mode", type=click.Choice(["latent", "hspace", "sdedit"]), default="latent", show_default=True,
              help="latent: add to the role in the vector's space; hspace: shift the h-space (UNet bottleneck, transformer middle block); "
                   "sdedit: re-render from the noised original picture.")
@click.option("--sdedit-strength", type=float, default=0.6, show_default=True,
              help="With --mode sdedit: how far the original picture is noised before re-rendering (0-1; "
                   "higher changes more).")
@click.option("--layers", default=None, metavar="A-B", help="GAN: move only these synthesis inputs (w+ rows, from "
              "0) by the w vector, as GANSpace edits a layer range; the result is a w+ generation.")
@click.option("--name", default=None, help="Name for the result (NAME-1, ... for a sweep).")
@click.option("--out", "-o", type=click.Path(file_okay=False), default=None, help="Render the results here.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.pass_context
def vectors_apply(ctx, target, vector, strengths, mode, sdedit_strength, layers, name, out, as_json):
    """TARGET + s * VECTOR for each strength s, stored with lineage (and rendered with --out).

    \b
    Examples:
      studio vectors apply scene day_to_night --strength 0.8 --name night --out out/
      studio vectors apply cat noto_to_twemoji -s 0,0.5,1,1.5 --out sweep/
      studio vectors apply face coarse0 -s -3,0,3 --layers 0-3 --out sweep/
    """
    session = _session(ctx)
    values = _floats(strengths)
    with _output_folder(out):  # made before anything is stored
        items = session.vectors.apply(target, vector, values, mode, name, sdedit_strength, layers)
        paths = None
        if out:
            with progress_bar("render", not as_json) as cb:
                paths = session.render_to(items, out, cb, filenames=sweep_filenames(items, target, vector, values))
    _print_stored(items, as_json, paths)


def sweep_filenames(items: list[Stored], target: str, vector: str, strengths: list[float]) -> list[str]:
    """PNG names that sort in the sweep's order and say each strength: NAME-1.png ... when named, else
    TARGET+VECTOR-01-s0.5.png ..."""
    if len(items) == 1 or items[0].name:
        return [f"{s.label}.png" for s in items]
    stem = re.sub(r"[^A-Za-z0-9_.+-]+", "_", f"{target}+{vector}")[:60]
    return [f"{stem}-{k:02d}-s{value:g}.png" for k, value in enumerate(strengths, 1)]


@vectors.command(name="score")
@click.argument("vector")
@click.option("--strengths", "-s", default="0,0.5,1,1.5,2", show_default=True, help="Comma-separated strengths.")
@click.option("-n", "count", type=int, default=36, show_default=True, help="Source samples per strength.")
@click.option("--seed", type=int, default=1000, show_default=True, help="First seed of the source samples.")
@click.option("--model", "-m", default=None, help="Model to sample from (default: the vector's).")
@click.option("--sdedit", "sdedit_strength", type=float, default=None,
              help="Diffusion: render the edits SDEdit-style from the source picture noised to this strength "
              "(0-1), as 'vectors apply --mode sdedit' does.")
@click.option("--truncation", type=float, default=None,
              help="GAN: truncation psi of the sources and their edits (default: the model's own).")
@click.option("--out", "-o", type=click.Path(file_okay=False), default="out/score", show_default=True,
              help="Folder for score.png (the curves) and strip.png (examples).")
@click.option("--json", "as_json", is_flag=True, help="Print the table and paths as JSON.")
@click.pass_context
def vectors_score(ctx, vector, strengths, count, seed, model, sdedit_strength, truncation, out, as_json):
    """Sweep strengths and judge the edits: flip rate, preservation of the other attribute, pixel change.

    The emoji-judge must know the vector's attribute (--attribute when it was made): style
    (noto/twemoji), category (e.g. "Smileys & Emotion") or a probe such as sky (sun/moon).

    \b
    Example:
      studio vectors score noto_to_twemoji --strengths 0,1,2,3 --out out/style
    """
    from studio.scoring import score_vector, summary_table

    session = _session(ctx)
    with progress_bar("score", not as_json) as cb:
        settings = {"truncation": truncation} if truncation is not None else None
        result = score_vector(session, vector, _floats(strengths), count, seed, model, out, cb, sdedit_strength,
                              settings)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    a = result["attribute"]
    click.echo(f"{vector}: {a['name']} {a['from']} -> {a['to']} on {result['model']}")
    click.echo(summary_table(result))
    click.echo(f"plot: {result['plot']}\nstrip: {result['strip']}")


@main.command()
@click.argument("image", type=click.Path(dir_okay=False))
@click.option("--model", "-m", default=None, help=f"Model to invert into (default: {DEFAULT_MODEL}).")
@click.option("--prompt", "-p", default="", help="Prompt to condition the inversion on (diffusion).")
@click.option("--steps", type=int, default=None, help="Inversion steps (diffusion, default 100: DDIM, or Euler "
              "steps of the flow ODE) or optimisation steps (GAN projection, default 300).")
@click.option("--category", default=None, help="Category of a conditional emoji GAN to project into.")
@click.option("--style", default=None, help="Style of a conditional emoji GAN to project into.")
@click.option("--class", "class_", type=int, default=None, help="Class index of another conditional GAN to project "
              "into.")
@click.option("--space", type=click.Choice(["w", "w+"]), default=None, help="GAN projection space: one w for "
              "every layer (default), or w+, one per layer, which reconstructs more closely and edits less cleanly.")
@click.option("--name", default=None, help="Name to store the inverted generation under.")
@click.option("--fit", type=click.Choice(FITS), default="crop", show_default=True,
              help="A picture that is not square is centre-cropped, or padded with white, to a square.")
@click.option("--out", "-o", type=click.Path(file_okay=False), default=None,
              help="Render the reconstruction here (and print its PSNR).")
@click.pass_context
def invert(ctx, image, model, prompt, steps, category, style, class_, space, name, fit, out):
    """Turn a picture into a stored generation that re-renders it, so it can be edited.

    \b
    Diffusion models: VAE encode, then DDIM inversion, or for flow-matching models (SD 3,
    Flux.1) the flow ODE integrated backwards, to the starting noise; each step refined by
    fixed-point iteration.
    GAN models: projection into w (or w+) by optimisation (pixel + perceptual loss).

    \b
    Examples:
      studio invert cat.png --name mycat --out out/
      studio vectors apply mycat noto_to_twemoji -s 1 --out out/
      studio invert face.png --model ffhq.pkl --space w+ --out out/
    """
    session = _session(ctx)
    stored = session.invert(image, model, prompt, steps, name, fit=fit, category=category, style=style,
                            space=space, **{"class": class_})
    paths = None
    if out:
        with progress_bar("render", True) as cb:
            paths = session.render_to([stored], out, cb)
        click.echo(f"reconstruction PSNR {session.reconstruction_psnr(image, paths[0], fit):.2f} dB", err=True)
    _print_stored([stored], False, paths)


if __name__ == "__main__":
    main()

"""The library at scale: listing, paging, filtering, counting and checking, at 10^3 ... 10^6 objects.

Each library holds a few real objects (files on disk, written through ``Library.put``) and is
filled up to its size with index rows alone: the index is what listing, paging, filtering and
counting read, and writing a million small files would measure the file system, not the studio.
Rows are inserted in one transaction with ``executemany``, with the shapes real ones have: one in
three named (``obj<i>``, and a batch of 100 ``frame-<n>`` midway), one in five tagged (``bench``;
one in a thousand also ``rare``), kinds, models and spaces mixed (one in a thousand in a rare space),
generations with prompts, ``created`` increasing; the triggers fill the tag, space and text indexes
as they do for real objects. ``check`` opens every file, so it is timed on a library whose objects
all have files (``--check-size``, default 10,000).

Columns: a page of 50 for each filter. "name page" is the frame batch's prefix; "broad name" a
prefix one name in nine starts with, all of them among the oldest fifth ("obj1..."); "search" is
text one generation in eight holds, made all along ("a cat"); "old search" text about one object
in ten holds, all made long ago ("number 7..."); "rare search" text one object holds. A name or
text page is looked for first among the newest 1,000 objects past the cursor, then in its index:
the cost of "broad name" and "old search" follows how many objects match.

For each size it prints the median of five runs, in milliseconds:

    python scripts/bench_library.py                      # 10^3, 10^4, 10^5, 10^6
    python scripts/bench_library.py --sizes 1000,100000 --ui-size 0

Then ``check`` per object, and the UI's Library tab (opened, searched, filtered by tag through its
handlers) on a library of ``--ui-size`` objects.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PAGE = 50  # rows in a page, as `studio latents ls` shows them


def timed(fn, repeat: int = 5) -> float:
    """Median wall time of ``fn`` in milliseconds."""
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out) * 1e3


def real_objects(lib, count: int) -> list[str]:
    """``count`` small latents stored the ordinary way (files on disk, names, tags)."""
    import torch

    from studio.objects import Latent
    from studio.space import Space

    space = Space("gan-z", "stylegan-bench", (16,))
    return [lib.put(Latent(torch.full(space.shape, float(i)), space, {"seed": i}), name=f"real{i}",
                    tags=["bench"]) for i in range(count)]


def fill_index(lib, size: int) -> None:
    """Index rows up to ``size`` objects, in one transaction (no files: see the module docstring)."""
    import hashlib

    have = len(lib)
    start = time.time() - size  # one second apart, oldest first
    objects, names, tags = [], [], []
    for i in range(have, size):
        batch = i - (have + size) // 2  # a batch of 100 named frames, midway
        frame = f"frame-{batch:03d}" if 0 <= batch < 100 else None
        object_id = hashlib.sha256(f"bench-{i}".encode()).hexdigest()
        kind = ("generation", "latent", "vector")[i % 3]
        spaces = {"noise": "noise[vae-bench](4x64x64)"} if kind == "generation" else {"tensor": "gan-z[sg-bench](16)"}
        if i % 1000 == 1:  # one in a thousand in a space of its own
            spaces = {"tensor": "gan-w[sg-rare](16)"}
        summary = {"prompt": f"prompt number {i}" + (", a cat" if i % 8 == 0 else "")} if kind == "generation" else {}
        objects.append((object_id, kind, f"model-{i % 4}", json.dumps(spaces), "sample", start + i,
                        json.dumps(summary)))
        if i % 3 == 0 or frame:
            names.append((frame or f"obj{i}", object_id))
        if i % 5 == 0:
            tags.append((object_id, "bench"))
        if i % 1000 == 0:
            tags.append((object_id, "rare"))
    with lib._tx() as db:
        db.executemany("INSERT OR IGNORE INTO objects VALUES (?, ?, ?, ?, ?, ?, ?)", objects)
        db.executemany("INSERT OR IGNORE INTO names VALUES (?, ?)", names)
        db.executemany("INSERT OR IGNORE INTO tags(id, tag) VALUES (?, ?)", tags)


def bench_size(size: int) -> dict[str, float]:
    from studio.session import Session

    with tempfile.TemporaryDirectory() as home:
        session = Session(home)
        lib = session.library
        real = real_objects(lib, 20)
        t0 = time.perf_counter()
        fill_index(lib, size)
        fill = time.perf_counter() - t0
        deep = lib.ls(limit=PAGE * 200 if size > PAGE * 200 else size // 2)[-1]  # a cursor deep in the list
        figures = {
            "fill s": fill,
            "first page": timed(lambda: lib.ls(limit=PAGE)),
            "deep page": timed(lambda: lib.ls(limit=PAGE, after=deep.cursor)),
            "tag page": timed(lambda: lib.ls(tag="bench", limit=PAGE)),
            "rare tag page": timed(lambda: lib.ls(tag="rare", limit=PAGE)),
            "model page": timed(lambda: lib.ls(model="model-1", limit=PAGE)),
            "space page": timed(lambda: lib.ls(space="gan-z", limit=PAGE)),
            "rare space": timed(lambda: lib.ls(space="gan-w", limit=PAGE)),
            "name page": timed(lambda: lib.ls(name="frame-", limit=PAGE)),
            "broad name": timed(lambda: lib.ls(name="obj1", limit=PAGE)),
            "search": timed(lambda: lib.ls(text="a cat", limit=PAGE)),
            "old search": timed(lambda: lib.ls(text="number 7", limit=PAGE)),
            "rare search": timed(lambda: lib.ls(text=f"number {size // 2 + 1}", limit=PAGE)),
            "count": timed(lambda: lib.count()),
            "tag count": timed(lambda: lib.count(tag="bench")),
            "show": timed(lambda: session.describe("real3")),
            "resolve": timed(lambda: lib.resolve("real7")),
        }
        session.library.close()
        del real
    return figures


def bench_check(size: int) -> float:
    """``latents check`` per object, in microseconds, on a library whose objects all have files."""
    from studio.store import Library

    with tempfile.TemporaryDirectory() as home:
        lib = Library(home)
        real_objects(lib, size)
        t0 = time.perf_counter()
        problems = lib.check()
        per = (time.perf_counter() - t0) / size * 1e6
        lib.close()
        assert not problems, problems[:3]
    return per


def bench_ui_library(size: int) -> dict[str, float]:
    """The UI's Library tab on a library of ``size`` objects (its newest 70 real tiny-sd generations, the
    rest index rows, older): opening it (thumbnails rendered, then cached), a text search, a tag."""
    from studio.session import Session
    from studio.ui.handlers import Studio

    with tempfile.TemporaryDirectory() as home:
        session = Session(home)
        fill_index(session.library, size - 70)
        with session.library._tx() as db:  # index rows older than the real generations, which the tab renders
            db.execute("UPDATE objects SET created = created - 1e7")
            db.execute("UPDATE tags SET created = created - 1e7")
        session.sample("tiny-sd", "a cat", seed=1, count=70, name="cat", steps=2)
        session.library.tag("cat-3", "mine")
        studio = Studio(session, "tiny-sd")
        t0 = time.perf_counter()
        studio.library_view(progress=None)
        figures = {"first open s": time.perf_counter() - t0,
                   "open ms": timed(lambda: studio.library_view(progress=None)),
                   "search ms": timed(lambda: studio.library_view(text="cat-4", progress=None)),
                   "search, no match ms": timed(lambda: studio.library_view(text="zzz", progress=None)),
                   "tag ms": timed(lambda: studio.library_view(tag="mine", progress=None))}
        session.library.close()
    return figures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,10000,100000,1000000", help="comma-separated library sizes")
    ap.add_argument("--check-size", type=int, default=10_000, help="objects (with files) for the check timing")
    ap.add_argument("--ui-size", type=int, default=100_000, help="objects for the UI Library tab timing (0: skip)")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = {size: bench_size(size) for size in sizes}
    columns = list(next(iter(rows.values())))
    print(f"library benchmark: a page is {PAGE} rows; times are medians of 5 runs in ms (fill: seconds)")
    print(f"{'objects':>9} " + " ".join(f"{c:>13}" for c in columns))
    for size, figures in rows.items():
        print(f"{size:>9} " + " ".join(f"{figures[c]:>13.2f}" for c in columns))
    if len(sizes) > 1:
        first, last = rows[sizes[0]], rows[sizes[-1]]
        growth = " ".join(f"{last[c] / first[c]:>12.1f}x" if first[c] else f"{'-':>13}" for c in columns)
        print(f"{'growth':>9} {growth}   ({sizes[-1] // sizes[0]}x the objects)")
    per = bench_check(args.check_size)
    print(f"check: {per:.0f} µs per object over {args.check_size} objects with files (target < 100)")
    if args.ui_size:
        ui = bench_ui_library(args.ui_size)
        print(f"UI Library tab at {args.ui_size} objects (target < 1 s): " +
              ", ".join(f"{k} {v:.3f}" if k.endswith(" s") else f"{k} {v:.1f}" for k, v in ui.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

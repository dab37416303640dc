"""The library: one self-describing safetensors file per object plus an SQLite index.

Files are named by content id and written atomically (temp file, fsync, rename); the index
(names, tags, lineage) changes in transactions, after the file is safely on disk. A crash
between the two leaves an orphan file and no dangling entry; ``reindex`` adopts orphans.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studio import formats
from studio.checks import check_int, check_path, check_tags
from studio.errors import StudioError, printable
from studio.objects import Generation, StoredObject, Vector

# used with fullmatch: "$" alone would also accept a name ending in a newline
NAME_RULE = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,63}")
TAG_RULE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:\-]{0,63}")
MIN_PREFIX = 4  # an id prefix shorter than this is never taken as a reference
ID_RULE = re.compile(r"[0-9a-f]{64}")  # a sha256 content id
ID_LIKE = re.compile(r"[0-9a-f]{7,}")  # a name like this would read as an id prefix
ID_PREFIX = re.compile(r"[0-9a-f]+")  # search text that may be the start of an id
WINDOW = 1000  # objects a name or text page is first looked for among, newest first (see Library.ls)
STALE_TMP_SECONDS = 3600  # a temporary file older than this is left over from a crash
_UMASK = os.umask(0o022)  # read once, at import (os.umask can only be read by setting it) ...
os.umask(_UMASK)  # ... and put back at once
FILE_MODE = 0o666 & ~_UMASK

SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, model TEXT, spaces TEXT NOT NULL,
    op TEXT, created REAL NOT NULL, summary TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS names (name TEXT PRIMARY KEY, id TEXT NOT NULL REFERENCES objects(id));
CREATE INDEX IF NOT EXISTS names_by_id ON names(id);
CREATE TABLE IF NOT EXISTS tags (id TEXT NOT NULL REFERENCES objects(id), tag TEXT NOT NULL, created REAL,
    PRIMARY KEY (id, tag));
CREATE TABLE IF NOT EXISTS parents (child TEXT NOT NULL, parent TEXT NOT NULL, position INTEGER NOT NULL,
    PRIMARY KEY (child, position));
CREATE INDEX IF NOT EXISTS parents_by_parent ON parents(parent);
CREATE INDEX IF NOT EXISTS objects_by_created ON objects(created DESC, id);
CREATE INDEX IF NOT EXISTS objects_by_kind ON objects(kind, created DESC, id);
CREATE INDEX IF NOT EXISTS objects_by_model ON objects(model, created DESC, id);
"""
# Listing reads newest first: a page walks an index and stops, whatever the library's size. A tag's
# rows carry their object's creation time (set by a trigger), so a page of one tag walks that tag alone;
# counts per kind are kept by triggers, so counting never reads every row. (Applied after the schema:
# a library made before them first gains the column they need.)
UPKEEP = """
CREATE INDEX IF NOT EXISTS tags_by_tag ON tags(tag, created DESC, id);
CREATE TRIGGER IF NOT EXISTS tags_created AFTER INSERT ON tags WHEN NEW.created IS NULL BEGIN
    UPDATE tags SET created = (SELECT created FROM objects WHERE id = NEW.id) WHERE id = NEW.id AND tag = NEW.tag;
END;
CREATE TABLE IF NOT EXISTS counts (kind TEXT PRIMARY KEY, n INTEGER NOT NULL);
CREATE TRIGGER IF NOT EXISTS objects_counted AFTER INSERT ON objects BEGIN
    INSERT INTO counts VALUES (NEW.kind, 1) ON CONFLICT(kind) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS objects_uncounted AFTER DELETE ON objects BEGIN
    UPDATE counts SET n = n - 1 WHERE kind = OLD.kind;
END;
"""
# Space and text filters read indexes of their own, kept by triggers. A space row per token of each
# of an object's spaces: its kind (gan-w), its family (vae-35f64b0e) and both (gan-w[sg-1a2b]), with
# the object's time, so a page of one space walks that space's rows alone, as a tag page does. Text is
# searched in a trigram full-text index of each object's summary (prompt, seed, expression) and names,
# so a search reads the rows that hold the text, not every row; its rows share the object's rowid.
SEARCH = """
CREATE TABLE IF NOT EXISTS space_tokens (id TEXT NOT NULL, token TEXT NOT NULL, created REAL NOT NULL,
    PRIMARY KEY (id, token));
CREATE INDEX IF NOT EXISTS space_tokens_by_token ON space_tokens(token, created DESC, id);
CREATE TRIGGER IF NOT EXISTS objects_spaces AFTER INSERT ON objects WHEN json_valid(NEW.spaces) BEGIN
    INSERT OR IGNORE INTO space_tokens SELECT NEW.id, token, NEW.created FROM (
        SELECT substr(value, 1, instr(value, '[') - 1) AS token FROM json_each(NEW.spaces)
        UNION SELECT substr(value, instr(value, '[') + 1, instr(value, ']') - instr(value, '[') - 1)
              FROM json_each(NEW.spaces) WHERE instr(value, ']') > instr(value, '[')
        UNION SELECT substr(value, 1, instr(value, ']')) FROM json_each(NEW.spaces)
    ) WHERE token != '';
END;
CREATE TRIGGER IF NOT EXISTS objects_unspaced AFTER DELETE ON objects BEGIN
    DELETE FROM space_tokens WHERE id = OLD.id;
END;
CREATE VIRTUAL TABLE IF NOT EXISTS search USING fts5(body, tokenize = 'trigram');
CREATE TRIGGER IF NOT EXISTS objects_searchable AFTER INSERT ON objects BEGIN
    INSERT INTO search(rowid, body) VALUES (NEW.rowid, NEW.summary);
END;
CREATE TRIGGER IF NOT EXISTS objects_unsearchable AFTER DELETE ON objects BEGIN
    DELETE FROM search WHERE rowid = OLD.rowid;
END;
CREATE TRIGGER IF NOT EXISTS names_searchable AFTER INSERT ON names BEGIN
    UPDATE search SET body = body || char(10) || NEW.name WHERE rowid = (SELECT rowid FROM objects WHERE id = NEW.id);
END;
CREATE TRIGGER IF NOT EXISTS names_unsearchable AFTER DELETE ON names BEGIN
    UPDATE search SET body = (SELECT summary FROM objects WHERE id = OLD.id)
        || coalesce((SELECT char(10) || group_concat(name, char(10)) FROM names WHERE id = OLD.id), '')
        WHERE rowid = (SELECT rowid FROM objects WHERE id = OLD.id);
END;
"""
# Fills the space and text indexes from the index itself (a library made before them, or a reindex).
REBUILD_SEARCH = """
DELETE FROM space_tokens;
INSERT OR IGNORE INTO space_tokens SELECT id, token, created FROM (
    SELECT o.id, o.created, substr(j.value, 1, instr(j.value, '[') - 1) AS token
        FROM objects o, json_each(CASE WHEN json_valid(o.spaces) THEN o.spaces ELSE '{}' END) j
    UNION SELECT o.id, o.created, substr(j.value, instr(j.value, '[') + 1, instr(j.value, ']') - instr(j.value, '[') - 1)
        FROM objects o, json_each(CASE WHEN json_valid(o.spaces) THEN o.spaces ELSE '{}' END) j
        WHERE instr(j.value, ']') > instr(j.value, '[')
    UNION SELECT o.id, o.created, substr(j.value, 1, instr(j.value, ']'))
        FROM objects o, json_each(CASE WHEN json_valid(o.spaces) THEN o.spaces ELSE '{}' END) j
) WHERE token != '';
DELETE FROM search;
INSERT INTO search(rowid, body) SELECT o.rowid, o.summary
    || coalesce((SELECT char(10) || group_concat(name, char(10)) FROM names n WHERE n.id = o.id), '') FROM objects o;
"""


def check_name(name: str) -> str:
    """Names are identifiers, never paths: letters, digits, '_', '.', '-', starting with a letter or '_'."""
    if not isinstance(name, str) or not NAME_RULE.fullmatch(name):
        raise StudioError(
            f"invalid name {name!r}: use up to 64 letters, digits, '_', '.' or '-', starting with a letter or '_'"
        )
    if ID_LIKE.fullmatch(name):  # names win over id prefixes, so this would hide an object's short id
        raise StudioError(f"invalid name {name!r}: 7 or more hex digits read as an id; add a letter beyond a-f")
    return name


def numbered_names(name: str | None, count: int) -> list[str | None]:
    """Names for ``count`` results: NAME for one, NAME-1, NAME-2, ... for several, None each without a name."""
    if name is None:
        return [None] * count
    return [name] if count == 1 else [f"{name}-{i + 1}" for i in range(count)]


def make_folder(folder: str | os.PathLike) -> Path:
    """An output folder, created if missing; one clear error when it cannot be."""
    folder = check_path(folder, "output folder")
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StudioError(f"cannot create output folder {printable(folder)}: {exc.strerror}") from None
    return Path(folder)


def index_damage(path: Path) -> str | None:
    """What SQLite finds wrong with an index file, or None when it is sound (or absent)."""
    if not path.is_file():
        return None
    try:
        con = sqlite3.connect(path)
        try:
            row = con.execute("PRAGMA quick_check").fetchone()
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        return str(exc)
    return None if row and row[0] == "ok" else str(row[0] if row else "no answer").strip().splitlines()[-1]


def set_aside_damaged_index(home: Path) -> tuple[str, Path] | None:
    """Move a damaged index out of the way (nothing is deleted), so the next Library rebuilds it from the
    object files; returns (what was wrong, where it went), or None when the index is sound."""
    damage = index_damage(home / "index.sqlite")
    if not damage:
        return None
    aside = home / f"index.sqlite.damaged-{int(time.time())}"
    (home / "index.sqlite").replace(aside)
    for extra in ("index.sqlite-wal", "index.sqlite-shm"):
        (home / extra).unlink(missing_ok=True)
    return damage, aside


def parse_cursor(cursor: str) -> tuple[float, str]:
    """A ``Record.cursor`` (``created:id``) as its two parts, or one error saying what a cursor looks like."""
    try:
        created, object_id = str(cursor).split(":", 1)
        if ID_RULE.fullmatch(object_id):
            return float(created), object_id
    except ValueError:
        pass
    raise StudioError(f"invalid cursor {str(cursor)[:80]!r}: a listing's cursor is CREATED:ID, as the last "
                      "page printed it")


def check_tag(tag: str) -> str:
    if not isinstance(tag, str) or not TAG_RULE.fullmatch(tag):
        raise StudioError(f"invalid tag {tag!r}: use up to 64 letters, digits, '_', '.', ':' or '-'")
    return tag


@dataclass(frozen=True)
class Record:
    """One row of the index: what ``latents ls`` shows without opening any file."""

    id: str
    kind: str
    model: str | None
    spaces: dict[str, str]  # role (or "tensor") -> str(space)
    op: str | None
    created: float
    names: tuple[str, ...]
    tags: tuple[str, ...]
    summary: dict[str, Any]  # seed, prompt, method...

    @property
    def short_id(self) -> str:
        return self.id[:12]

    @property
    def label(self) -> str:
        return self.names[0] if self.names else self.short_id

    @property
    def cursor(self) -> str:
        """Where a listing that ended on this row goes on from (``ls(after=...)``): ``created:id``."""
        return f"{self.created!r}:{self.id}"

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "model": self.model, "spaces": self.spaces, "op": self.op,
                "created": self.created, "names": list(self.names), "tags": list(self.tags), **self.summary}


def _spaces_of(obj: StoredObject) -> dict[str, str]:
    if isinstance(obj, Generation):
        return {role: str(lat.space) for role, lat in obj.roles.items()}
    return {obj.kind: str(obj.space)}


def _summary_of(obj: StoredObject) -> dict[str, Any]:
    keep = ("seed", "prompt", "method")
    out = {k: v for k, v in obj.meta.items() if k in keep}
    if getattr(obj, "method", None):
        out["method"] = obj.method
    if obj.lineage and "expr" in obj.lineage.params:
        out["expr"] = obj.lineage.params["expr"]
    return out


def _model_of(obj: StoredObject) -> str | None:
    model = obj.model if isinstance(obj, Generation) else obj.meta.get("model")
    return model if isinstance(model, str) else None  # an imported file's odd value is not indexed


def _describe_vector(v: Vector) -> str:
    attribute = v.meta.get("attribute")
    if isinstance(attribute, dict) and {"name", "from", "to"} <= set(attribute):
        attribute = f"{attribute['name']} {attribute['from']}->{attribute['to']}"
    return f"method {v.method}, attribute {attribute or '(none)'}"


def _json(text: str | None) -> dict[str, Any]:
    """An index column of JSON; a damaged one reads as empty (the object file is the truth)."""
    try:
        value = json.loads(text or "{}")
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _statements(script: str) -> list[str]:
    """The statements of a SQL script (a trigger's body stays whole), to run inside one transaction."""
    out, pending = [], ""
    for line in script.strip().splitlines():
        pending += line + "\n"
        if sqlite3.complete_statement(pending):
            out.append(pending)
            pending = ""
    return out


def _row_matches(name: str | None, text: str | None) -> tuple[list[str], list[Any]]:
    """Conditions (on ``objects o``) checking one row for a name prefix and ASCII text, without their indexes.

    They find what the indexes find (the trigram index folds ASCII case, as LIKE does)."""
    where, args = [], []
    if name:
        where.append("EXISTS (SELECT 1 FROM names n2 WHERE n2.id = o.id AND n2.name >= ? AND n2.name < ?)")
        args += _name_range(name)
    if text:
        condition, text_args = _text_condition(text, indexed=False)
        where.append(condition)
        args += text_args
    return where, args


def _name_range(prefix: str) -> list[str]:
    """The bounds of the names that start with ``prefix``, for a range of the names' own key."""
    return [prefix, prefix + "\U0010ffff"]


def _text_condition(text: str, indexed: bool) -> tuple[str, list[Any]]:
    """The condition (on ``objects o``) for objects whose summary or names hold ``text``, or whose id starts so.

    ``indexed``: three characters or more are looked up as a phrase of the trigram index (quoted:
    the text is matched literally, case-insensitively), so a search reads only the objects that
    hold the text; otherwise, and for shorter text, LIKE checks each row.
    """
    if indexed and len(text) >= 3:
        condition, args = "o.rowid IN (SELECT rowid FROM search WHERE search MATCH ?)", ['"' + text.replace('"', '""') + '"']
    else:
        pattern = f"%{_like(text)}%"
        condition = ("(o.summary LIKE ? ESCAPE '\\' OR EXISTS "
                     "(SELECT 1 FROM names n3 WHERE n3.id = o.id AND n3.name LIKE ? ESCAPE '\\'))")
        args = [pattern, pattern]
    prefix = text.lower()
    if ID_PREFIX.fullmatch(prefix):  # an id prefix: a range of the objects' own key
        return f"({condition} OR (o.id >= ? AND o.id <= ?))", [*args, prefix, prefix + "g"]
    return condition, args


def _like(text: str) -> str:
    """Text for a LIKE pattern, matched literally (escape character: backslash)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def atomic_write(path: Path, data: bytes) -> None:
    """Write bytes so that ``path`` holds either the old content or all of the new, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)  # mkstemp makes it private; the file should read like any other the user writes
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class Library:
    """The persistent collection of latents, generations and vectors under one folder."""

    def __init__(self, home: str | os.PathLike):
        self.home = check_path(home, "home").expanduser()
        self.objects_dir = self.home / "objects"
        try:
            self.objects_dir.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.home / "index.sqlite", isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(SCHEMA)
            if "created" not in {row[1] for row in self.db.execute("PRAGMA table_info(tags)")}:
                with self._tx() as db:  # a library made before tags carried their object's time
                    db.execute("ALTER TABLE tags ADD COLUMN created REAL")
                    db.execute("UPDATE tags SET created = (SELECT created FROM objects WHERE id = tags.id)")
            self.db.executescript(UPKEEP)
            if self.db.execute("SELECT 1 FROM counts LIMIT 1").fetchone() is None:
                with self._tx() as db:  # counts start from the index itself, in a library made before them
                    db.execute("INSERT INTO counts SELECT kind, count(*) FROM objects GROUP BY kind")
            fresh = self.db.execute("SELECT 1 FROM sqlite_master WHERE name = 'search'").fetchone() is None
            with self._tx() as db:
                for statement in _statements(SEARCH):
                    db.execute(statement)
                if fresh:  # a library made before the space and text indexes
                    for statement in _statements(REBUILD_SEARCH):
                        db.execute(statement)
        except (OSError, sqlite3.Error) as exc:
            raise StudioError(f"cannot open the library at {printable(self.home)}: {printable(exc)}") from None

    def close(self) -> None:
        self.db.close()

    # ---- paths and transactions ----

    def path_of(self, object_id: str) -> Path:
        return self.objects_dir / object_id[:2] / f"{object_id}.safetensors"

    def owns(self, path: str | os.PathLike) -> bool:
        """Whether ``path`` (symlinks resolved) is among the library's own files: the object folder or the index."""
        path = Path(path).resolve()
        return path.is_relative_to(self.objects_dir.resolve()) or (
            path.parent == self.home.resolve() and path.name.startswith("index.sqlite"))

    def _tx(self):
        return _Transaction(self.db)

    # ---- writing ----

    def put(self, obj: StoredObject, name: str | None = None, tags: Iterable[str] = ()) -> str:
        """Store an object (once per content id), then name and tag it; returns its id."""
        tags = [check_tag(t) for t in check_tags(tags)]
        object_id = obj.id
        if name is not None:
            self.check_free(name, object_id)
        for parent in obj.lineage.parents if obj.lineage else ():
            if not self.exists(parent):
                raise StudioError(f"parent {parent[:12]} of this object is not in the library")
        if self.exists(object_id):
            self._check_same_description(obj, object_id)
        created = time.time()
        # The index row is built before the file is written, so an object that cannot be
        # indexed leaves no file behind either.
        row = (object_id, obj.kind, _model_of(obj), json.dumps(_spaces_of(obj)),
               obj.lineage.op if obj.lineage else None, created, json.dumps(_summary_of(obj)))
        if not self.exists(object_id):
            atomic_write(self.path_of(object_id), formats.to_bytes(obj, created))
        with self._tx() as db:
            new = db.execute(
                "INSERT OR IGNORE INTO objects(id, kind, model, spaces, op, created, summary) VALUES (?,?,?,?,?,?,?)",
                row,
            ).rowcount
            if obj.lineage and new:  # the first derivation stored is the lineage, in the file and the index
                db.executemany("INSERT OR IGNORE INTO parents(child, parent, position) VALUES (?,?,?)",
                               [(object_id, p, i) for i, p in enumerate(obj.lineage.parents)])
            if name is not None:
                db.execute("INSERT OR IGNORE INTO names(name, id) VALUES (?, ?)", (name, object_id))
            db.executemany("INSERT OR IGNORE INTO tags(id, tag) VALUES (?, ?)", [(object_id, t) for t in tags])
        return object_id

    def _check_same_description(self, obj: StoredObject, object_id: str) -> None:
        """Refuse a vector whose content is stored already but described differently.

        The same content is stored once, with the description of its first making; handing back
        that object for a vector declared as another attribute or method would make later scoring
        judge the wrong attribute. Algebra results carry no metadata and declare nothing.
        """
        if not isinstance(obj, Vector) or not obj.meta:
            return
        stored = self.get(object_id)
        if not isinstance(stored, Vector):
            return
        if stored.method != obj.method or stored.meta.get("attribute") != obj.meta.get("attribute"):
            names = self.names_of(object_id)
            label = f"{object_id[:12]} ({', '.join(names)})" if names else object_id[:12]
            raise StudioError(
                f"this vector is already stored as {label} with {_describe_vector(stored)}, not "
                f"{_describe_vector(obj)}; the same content keeps one description: "
                f"remove it first (studio latents rm {object_id[:12]}) to store it anew")

    def name(self, ref: str, name: str) -> str:
        object_id = self.resolve(ref)
        self.check_free(name, object_id)
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO names(name, id) VALUES (?, ?)", (name, object_id))
        return object_id

    def tag(self, ref: str, tag: str) -> str:
        object_id = self.resolve(ref)
        check_tag(tag)
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO tags(id, tag) VALUES (?, ?)", (object_id, tag))
        return object_id

    def untag(self, ref: str, tag: str) -> str:
        object_id = self.resolve(ref)
        with self._tx() as db:
            gone = db.execute("DELETE FROM tags WHERE id = ? AND tag = ?", (object_id, tag)).rowcount
        if not gone:
            raise StudioError(f"{ref} has no tag {tag!r}")
        return object_id

    def remove(self, ref: str) -> str:
        """Forget a name or an object; returns the object's id.

        Identical content is stored once, so one object may carry several names. Given one of
        several names, only that name goes and the object stays (``exists(id)`` is still true,
        which is how a caller tells the two apart). Given an id prefix or the object's last name,
        the object goes: its index rows, then its file. Children keep their lineage ids.
        """
        object_id = self.resolve(ref)
        key = ref[1:] if ref.startswith("@") else ref
        with self._tx() as db:
            names = [r[0] for r in db.execute("SELECT name FROM names WHERE id = ?", (object_id,))]
            if key in names and len(names) > 1:
                db.execute("DELETE FROM names WHERE name = ?", (key,))
                return object_id
            for table, column in (("names", "id"), ("tags", "id"), ("parents", "child"), ("objects", "id")):
                db.execute(f"DELETE FROM {table} WHERE {column} = ?", (object_id,))
        self.path_of(object_id).unlink(missing_ok=True)
        return object_id

    # ---- reading ----

    def exists(self, object_id: str) -> bool:
        return self.db.execute("SELECT 1 FROM objects WHERE id = ?", (object_id,)).fetchone() is not None

    def resolve(self, ref: str) -> str:
        """The id a reference means: ``@name``, ``name``, or a unique id prefix (at least 4 hex digits)."""
        if not isinstance(ref, str):
            raise StudioError(f"a reference must be text (a name or an id prefix), got {ref!r}")
        if not ref.strip():
            raise StudioError("empty reference; give a name or an id prefix")
        key = ref[1:] if ref.startswith("@") else ref
        row = self.db.execute("SELECT id FROM names WHERE name = ?", (key,)).fetchone()
        if row:
            return row[0]
        if re.fullmatch(r"[0-9a-f]+", key) and len(key) >= MIN_PREFIX:
            rows = self.db.execute("SELECT id FROM objects WHERE id >= ? AND id < ? LIMIT 3",
                                   (key, key + "g")).fetchall()
            if len(rows) == 1:
                return rows[0][0]
            if len(rows) > 1:
                raise StudioError(f"id prefix {key!r} is ambiguous ({len(rows)}+ objects match); give more digits")
        if re.fullmatch(r"[0-9a-f]+", key) and len(key) < MIN_PREFIX:  # too short to be a prefix: say so
            raise StudioError(f"no stored object is named {key!r}; id prefixes need at least {MIN_PREFIX} digits")
        raise StudioError(f"no stored object is named or has an id starting with {key!r} "
                          f"(see 'studio latents ls')")

    def _read(self, object_id: str) -> tuple[StoredObject, dict[str, Any]]:
        """An object file, checked to hold the content its id names (a swapped file is refused)."""
        obj, header = formats.read_file(self.path_of(object_id))
        if obj.id != object_id:  # one hash of a small tensor: cheap next to reading the file
            raise StudioError(f"object {object_id[:12]} is damaged: its file holds different content "
                              f"(run 'studio latents check')")
        return obj, header

    def get(self, ref: str) -> StoredObject:
        return self._read(self.resolve(ref))[0]

    def header(self, ref: str) -> dict[str, Any]:
        """An object's file header, read without its tensors: a file swapped for another object's is refused
        by the id the header holds (``get`` and ``check`` also verify the content against it)."""
        object_id = self.resolve(ref)
        header = formats.read_file_header(self.path_of(object_id))
        if header.get("id", object_id) != object_id:
            raise StudioError(f"object {object_id[:12]} is damaged: its file holds different content "
                              f"(run 'studio latents check')")
        return header

    def ls(self, kind: str | None = None, tag: str | None = None, model: str | None = None,
           space: str | None = None, text: str | None = None, limit: int | None = None,
           ids: list[str] | None = None, after: str | None = None, since: float | None = None,
           until: float | None = None, name: str | None = None) -> list[Record]:
        """Index rows, newest first, filtered without opening a single object file.

        ``space`` is a space's kind (``gan-w``), family (``vae-35f64b0e``) or both (``gan-w[sg-1a2b]``);
        ``text`` is found in prompts, expressions, methods, names and id prefixes; ``name`` is a name
        prefix. ``limit`` rows at most; ``after`` (a ``Record.cursor``) goes on from where a page
        ended, so a page costs the same deep in a million objects as at the top; ``since``/``until``
        (Unix times) keep objects created in [since, until).
        """
        if limit is not None:
            check_int(limit, "limit", 1)
        # a tag's or a space's own rows, newest first, drive its listing; otherwise the objects' (see UPKEEP)
        source, order, drive = self._source(tag, space)
        where, args = self._filters(kind, None if drive else tag, model, space if drive == "tag" else None,
                                    None, ids)
        if drive:
            where.insert(0, f"k.{drive if drive == 'tag' else 'token'} = ?")
            args.insert(0, tag if drive == "tag" else space)
        if after is not None:
            created, last = parse_cursor(after)
            where.append(f"{order}.created <= ? AND ({order}.created < ? OR {order}.id > ?)")
            args += [created, created, last]
        for bound, op in ((since, ">="), (until, "<")):
            if bound is not None:
                if isinstance(bound, bool) or not isinstance(bound, (int, float)) or bound != bound:
                    raise StudioError(f"a time bound must be a number of seconds, not {bound!r}")
                where.append(f"{order}.created {op} ?")
                args.append(float(bound))
        if limit and not drive and (name or (text and text.isascii())):
            page = self._page_from_the_newest(where, args, name, text, limit)
            if page is not None:
                return page
        found, found_args = self._filters(None, None, None, None, text, None, name)
        where, args = where + found, args + found_args
        return self._records(f"FROM {source}" + (" WHERE " + " AND ".join(where) if where else "") +
                             f" ORDER BY {order}.created DESC, {order}.id" + (f" LIMIT {limit}" if limit else ""),
                             args)

    def _records(self, rest: str, args: list[Any]) -> list[Record]:
        """Records of ``SELECT ... FROM objects o ...`` (``rest``: the FROM clause on)."""
        sql = ("SELECT o.id, o.kind, o.model, o.spaces, o.op, o.created, o.summary, "
               "(SELECT group_concat(name, char(31)) FROM names n WHERE n.id = o.id), "
               "(SELECT group_concat(tag, char(31)) FROM tags t WHERE t.id = o.id) " + rest)
        return [Record(r[0], r[1], r[2], _json(r[3]), r[4], r[5],
                       tuple(sorted(r[7].split("\x1f"))) if r[7] else (),
                       tuple(sorted(r[8].split("\x1f"))) if r[8] else (), _json(r[6]))
                for r in self.db.execute(sql, args)]

    def _page_from_the_newest(self, where: list[str], args: list[Any], name: str | None, text: str | None,
                              limit: int) -> list[Record] | None:
        """A page of a name or text filter found among the next WINDOW objects in time order, or None.

        Their indexes find every object that matches, which costs as many rows as match: a name
        or a text that one object in nine holds is 100,000 rows in a million. Checked row by row
        on the time index, a page of them comes after a few hundred; so the next WINDOW objects
        (after ``where``: the other filters, the cursor, the time bounds) are checked first, and
        only when they hold less than a page do the indexes answer.
        """
        rows, row_args = _row_matches(name, text)
        inner = (f"SELECT * FROM objects o WHERE {' AND '.join(where) or '1'} "
                 f"ORDER BY o.created DESC, o.id LIMIT {WINDOW}")
        page = self._records(f"FROM ({inner}) o WHERE {' AND '.join(rows)} ORDER BY o.created DESC, o.id "
                             f"LIMIT {limit}", [*args, *row_args])
        return page if len(page) == limit else None

    @staticmethod
    def _source(tag: str | None, space: str | None) -> tuple[str, str, str | None]:
        """What a listing walks: (FROM clause, the alias whose time orders it, which filter drives it)."""
        if tag:
            return "tags k JOIN objects o ON o.id = k.id", "k", "tag"
        if space:
            return "space_tokens k JOIN objects o ON o.id = k.id", "k", "space"
        return "objects o", "o", None

    def count(self, kind: str | None = None, tag: str | None = None, model: str | None = None,
              space: str | None = None, text: str | None = None, name: str | None = None,
              since: float | None = None, until: float | None = None) -> int:
        """How many objects ``ls`` with these filters would list, counted in the index."""
        if since is not None or until is not None:  # a time range: counted on the time index
            where, args = self._filters(kind, tag, model, space, text, None, name)
            for bound, op in ((since, ">="), (until, "<")):
                if bound is not None:
                    where.append(f"o.created {op} ?")
                    args.append(float(bound))
            return self.db.execute("SELECT count(*) FROM objects o WHERE " + " AND ".join(where), args).fetchone()[0]
        if not (tag or model or space or text or name):  # the kept counts (see UPKEEP)
            sql = "SELECT coalesce(sum(n), 0) FROM counts" + (" WHERE kind = ?" if kind else "")
            return self.db.execute(sql, [kind] if kind else []).fetchone()[0]
        if tag and not (kind or model or space or text or name):  # the tag's own index holds the answer
            return self.db.execute("SELECT count(*) FROM tags WHERE tag = ?", (tag,)).fetchone()[0]
        if space and not (kind or model or tag or text or name):  # and the space's its
            return self.db.execute("SELECT count(*) FROM space_tokens WHERE token = ?", (space,)).fetchone()[0]
        where, args = self._filters(kind, tag, model, space, text, None, name)
        sql = "SELECT count(*) FROM objects o" + (" WHERE " + " AND ".join(where) if where else "")
        return self.db.execute(sql, args).fetchone()[0]

    def _filters(self, kind, tag, model, space, text, ids, name=None) -> tuple[list[str], list[Any]]:
        """SQL conditions (on ``objects o``) and their arguments for the listing filters."""
        where, args = [], []
        if ids is not None:
            where.append(f"o.id IN ({','.join('?' * len(ids))})")
            args += ids
        if kind:
            where.append("o.kind = ?")
            args.append(kind)
        if model:
            where.append("o.model = ?")
            args.append(model)
        if space:
            where.append("EXISTS (SELECT 1 FROM space_tokens s2 WHERE s2.id = o.id AND s2.token = ?)")
            args.append(space)
        if tag:
            where.append("EXISTS (SELECT 1 FROM tags t2 WHERE t2.id = o.id AND t2.tag = ?)")
            args.append(tag)
        if name:  # a prefix: a range of the names' own key (the cost follows the names it matches)
            where.append("o.id IN (SELECT id FROM names WHERE name >= ? AND name < ?)")
            args += _name_range(name)
        if text:
            found, found_args = _text_condition(text, indexed=True)
            where.append(found)
            args += found_args
        return where, args

    def record(self, ref: str) -> Record:
        rows = self.ls(ids=[self.resolve(ref)])
        if not rows:  # a name left pointing at an object that is gone
            raise StudioError(f"{ref} names an object that is not in the library "
                              "(run 'studio latents check --repair')")
        return rows[0]

    def parents(self, ref: str) -> list[str]:
        object_id = self.resolve(ref)
        return [r[0] for r in self.db.execute(
            "SELECT parent FROM parents WHERE child = ? ORDER BY position", (object_id,))]

    def children(self, ref: str) -> list[str]:
        object_id = self.resolve(ref)
        return [r[0] for r in self.db.execute("SELECT child FROM parents WHERE parent = ?", (object_id,))]

    def name_owner(self, name: str) -> str | None:
        """The id a name refers to, or None if the name is free."""
        row = self.db.execute("SELECT id FROM names WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def check_free(self, name: str, object_id: str | None = None) -> str:
        """A valid name that is free (or already names ``object_id``): checked before work is stored under it."""
        check_name(name)
        owner = self.name_owner(name)
        if owner is not None and owner != object_id:
            raise StudioError(f"the name {name!r} already refers to {owner[:12]}; "
                              f"pick another name or remove it first (studio latents rm {name})")
        return name

    def names_of(self, object_id: str) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT name FROM names WHERE id = ? ORDER BY name", (object_id,))]

    def __len__(self) -> int:
        return self.count()

    # ---- upkeep ----

    def check(self, progress: Callable[[int, int], None] | None = None) -> list[str]:
        """Open every indexed file and verify it; returns the problems found (empty when healthy).

        Each object is read and hashed once: its file must hold the content its id names. ``progress``
        is told (done, total) as the objects are read.
        """
        problems = []
        ids = [row[0] for row in self.db.execute("SELECT id FROM objects")]
        indexed = set(ids)
        folder = str(self.objects_dir)
        for done, object_id in enumerate(ids, 1):
            try:
                obj, header = formats.read_file(os.path.join(folder, object_id[:2], f"{object_id}.safetensors"))
                if (header.get("id") or obj.id) != object_id:  # read_file checked the header's id against the content
                    problems.append(f"{object_id[:12]}: content does not match its id")
            except StudioError as exc:
                problems.append(f"{object_id[:12]}: {exc}")
            if progress is not None and (done % 256 == 0 or done == len(ids)):
                progress(done, len(ids))
        for name, object_id in self.db.execute(
                "SELECT name, id FROM names WHERE id NOT IN (SELECT id FROM objects)").fetchall():
            problems.append(f"name {name!r} refers to {str(object_id)[:12]}, which is not in the index "
                            "('studio latents check --repair' keeps it if that object's file is on disk, "
                            "else drops it)")
        kept = dict(self.db.execute("SELECT kind, n FROM counts WHERE n != 0").fetchall())
        actual = dict(self.db.execute("SELECT kind, count(*) FROM objects GROUP BY kind").fetchall())
        if kept != actual:
            problems.append(f"the kept counts {kept} differ from the index's {actual} "
                            "('studio latents check --repair' recounts)")
        stray = self.db.execute("SELECT count(*) FROM search WHERE rowid NOT IN (SELECT rowid FROM objects)").fetchone()[0]
        unsearchable = self.db.execute(
            "SELECT count(*) FROM objects WHERE rowid NOT IN (SELECT rowid FROM search)").fetchone()[0]
        if stray or unsearchable:
            problems.append(f"the text index misses {unsearchable} objects and holds {stray} rows of none "
                            "('studio latents check --repair' rebuilds it)")
        problems += sorted(self._stray_files(indexed))
        return problems

    def _stray_files(self, indexed: set[str]) -> list[str]:
        """What lies in the object folder but is not one of the indexed objects' files."""
        out = []
        with os.scandir(self.objects_dir) as top:
            for entry in top:
                if not entry.is_dir():
                    out.append(f"objects/{entry.name}: not an object file of this library")
                    continue
                with os.scandir(entry.path) as inner:
                    for file in inner:
                        name = file.name
                        if name.startswith(".") and name.endswith(".tmp"):
                            continue  # a write in progress, or one a crash left (repair removes old ones)
                        stem = name.removesuffix(".safetensors")
                        if stem == name or not ID_RULE.fullmatch(stem) or entry.name != stem[:2] or file.is_dir():
                            out.append(f"objects/{entry.name}/{name}: not an object file of this library")
                        elif stem not in indexed:
                            out.append(f"{stem[:12]}: on disk but not in the index "
                                       "('studio latents check --repair' adopts it)")
        return out

    def reindex(self) -> int:
        """Adopt object files that are on disk but not indexed (left by a crash); returns how many."""
        adopted = 0
        for path in self.objects_dir.glob("*/*.safetensors"):
            object_id = path.stem
            if self.exists(object_id):
                continue
            try:
                obj, _ = formats.read_file(path)
            except StudioError:
                continue
            if obj.id == object_id:
                with self._tx() as db:
                    db.execute("INSERT OR IGNORE INTO objects(id, kind, model, spaces, op, created, summary) "
                               "VALUES (?,?,?,?,?,?,?)",
                               (object_id, obj.kind, _model_of(obj), json.dumps(_spaces_of(obj)),
                                obj.lineage.op if obj.lineage else None, path.stat().st_mtime,
                                json.dumps(_summary_of(obj))))
                adopted += 1
        with self._tx() as db:  # names and tags of objects that are gone
            db.execute("DELETE FROM names WHERE id NOT IN (SELECT id FROM objects)")
            db.execute("DELETE FROM tags WHERE id NOT IN (SELECT id FROM objects)")
            db.execute("DELETE FROM counts")
            db.execute("INSERT INTO counts SELECT kind, count(*) FROM objects GROUP BY kind")
            for statement in _statements(REBUILD_SEARCH):  # the space and text indexes, afresh
                db.execute(statement)
        stale = time.time() - STALE_TMP_SECONDS  # a newer one may be another process's write in progress
        for tmp in self.objects_dir.glob("*/.*.tmp"):
            with contextlib.suppress(OSError):
                if tmp.stat().st_mtime < stale:
                    tmp.unlink()
        return adopted


class _Transaction:
    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type, exc, tb) -> None:
        self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")

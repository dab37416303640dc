"""The README as a runnable first session: every bash and python block runs as written, in order.

The blocks run in one shell, in a scratch folder that holds the clone's files (linked, so the
README's relative paths resolve as in a clone) with a fresh home, so ``~/studio-lib`` is a new
library. The two set-up commands are the only blocks left out: CI runs them before the tests.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BLOCK = re.compile(r"^```(bash|python)\n(.*?)^```", re.S | re.M)
SET_UP = "scripts/setup.sh"
WRITTEN = {"out", "models"}  # what the README's commands write in the working folder


def blocks(text: str) -> list[tuple[str, str]]:
    """(language, code) of each runnable block, in order, the set-up commands left out."""
    return [(lang, code) for lang, code in BLOCK.findall(text) if SET_UP not in code]


def as_script(found: list[tuple[str, str]]) -> str:
    """One bash script: shell blocks as they are, python blocks fed to the venv's python."""
    parts = ["set -e -o pipefail"]
    for k, (lang, code) in enumerate(found):
        parts.append(f"echo '>>> README block {k + 1} ({lang})' >&2")
        parts.append(code if lang == "bash" else f"python - <<'README_PY'\n{code}README_PY")
    return "\n".join(parts) + "\n"


def test_the_readme_has_the_walk_through_blocks():
    found = blocks(README.read_text())
    text = "\n".join(code for _, code in found)
    assert len(found) >= 6
    for command in ("studio sample", "studio eval", "studio interpolate", "studio vectors from-sets",
                    "studio vectors score", "studio invert", "studio convert", "s.vectors.apply"):
        assert command in text, command
    assert "source .venv/bin/activate" in found[0][1]  # the first block puts `studio` on PATH
    assert "tiny-sd" not in text  # the walk-through draws with the embedded models, not random weights


def test_every_readme_block_runs_as_written(tmp_path):
    work, home = tmp_path / "clone", tmp_path / "home"
    work.mkdir()
    home.mkdir()
    for entry in ROOT.iterdir():  # the clone's files, as a user's working folder holds them
        if entry.name not in WRITTEN | {".git", ".venv"}:
            (work / entry.name).symlink_to(entry)
    (work / ".venv").symlink_to(Path(sys.prefix))
    env = {k: v for k, v in os.environ.items() if k not in ("STUDIO_HOME", "VIRTUAL_ENV")}
    env.update(HOME=str(home), MPLCONFIGDIR=str(tmp_path / "mpl"), OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "2"))
    script = as_script(blocks(README.read_text()))
    result = subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True,
                            timeout=1500)
    tail = (result.stdout[-3000:], result.stderr[-3000:])
    assert result.returncode == 0, tail
    assert "error:" not in result.stderr and "Traceback" not in result.stderr, tail
    # what the walk-through promises is there
    assert (work / "out" / "cat.png").is_file() and (work / "out" / "cat-apple" / "animation.gif").is_file()
    assert sorted(p.name for p in (work / "out" / "sweep").iterdir()) == [
        f"cat+noto_to_twemoji-0{k}-s{s}.png" for k, s in ((1, "0"), (2, "0.5"), (3, "1"), (4, "1.5"))]
    assert "slerp" in result.stdout and "reconstruction PSNR" in result.stderr
    assert (home / "studio-lib" / "index.sqlite").exists() or any((home / "studio-lib").iterdir())
    # and nothing the README does not show was written
    made = {p.name for p in work.iterdir() if not p.is_symlink()}
    assert made <= WRITTEN, made
    assert {p.name for p in home.iterdir()} <= {"studio-lib", ".cache", ".config"}, list(home.iterdir())


@pytest.mark.parametrize("text, expected", [
    ("```bash\nstudio ui\n```\n", [("bash", "studio ui\n")]),
    ("```bash\nbash scripts/setup.sh && x\n```\n```python\nprint(1)\n```\n", [("python", "print(1)\n")]),
    ("```text\nnot run\n```\n", []),
])
def test_blocks_are_found_by_their_fence(text, expected):
    assert blocks(text) == expected

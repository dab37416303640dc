"""scripts/families.py on tiny-sd and tiny-gan, and on the transformer families: every column present,
every applicable cell ok.

The whole table takes about a minute on a busy machine; the rows here keep this test short.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import families  # noqa: E402

GAN_NOT_APPLICABLE = {"prompt-pair", "apply hspace", "apply sdedit", "comfy .latent"}


def markdown_rows(text: str) -> tuple[list[str], dict[str, dict[str, str]]]:
    """The header and the rows (family -> column -> cell) of the script's Markdown table."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    split = lambda line: [c.strip() for c in line.strip().removeprefix("|").removesuffix("|").split(" | ")]  # noqa: E731
    header = split(lines[0])
    rows = [dict(zip(header, split(line), strict=True)) for line in lines[2:]]
    return header, {r["family"]: r for r in rows}


def test_every_operation_on_tiny_sd_and_tiny_gan(capsys, tmp_path):
    code = families.main(["--families", "tiny-sd,tiny-gan", "--markdown", "--home", str(tmp_path / "lib")])
    out = capsys.readouterr()
    header, rows = markdown_rows(out.out)
    assert header == ["family", *families.OPERATIONS, "s"]
    assert list(rows) == ["tiny-sd", "tiny-gan"]
    not_ok = {(family, op): cell for family, row in rows.items() for op, cell in row.items()
              if op in families.OPERATIONS and not cell.startswith(("ok", "n/a"))}
    assert not not_ok, not_ok
    not_applicable = {family: {op for op in families.OPERATIONS if row[op].startswith("n/a")}
                      for family, row in rows.items()}
    assert not_applicable == {"tiny-sd": set(), "tiny-gan": GAN_NOT_APPLICABLE}
    assert "[1] n/a: no text conditioning" in out.out  # each n/a has its footnote
    assert all(float(row["s"]) > 0 for row in rows.values())
    assert code == 0
    progress = [line for line in out.err.splitlines() if line.startswith(("tiny-sd:", "tiny-gan:"))]
    assert len(progress) == 2 and "|" not in out.err  # progress on stderr, the table on stdout only
    assert (tmp_path / "lib").is_dir()  # --home keeps what the run made


def test_every_operation_on_every_transformer_family(capsys):
    names = ["tiny-sd3", "tiny-flux", "tiny-flux-schnell", "tiny-pixart"]
    code = families.main(["--families", ",".join(names), "--markdown"])
    _, rows = markdown_rows(capsys.readouterr().out)
    assert list(rows) == names
    assert {(f, op): cell for f, row in rows.items() for op, cell in row.items()
            if op in families.OPERATIONS and not cell.startswith("ok")} == {}
    assert code == 0


def test_unknown_families_are_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        families.main(["--families", "tiny-sd,nope"])
    assert exc.value.code == 2 and "unknown family nope" in capsys.readouterr().err

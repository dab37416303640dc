"""DESIGN.md's import rules: the core is free of gradio and diffusers; pipelines never import gradio."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE = [p for p in (ROOT / "studio").rglob("*.py") if "ui" not in p.relative_to(ROOT / "studio").parts[:1]
        and p.name not in ("cli.py", "__main__.py")]


def imported_modules(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


def test_core_files_do_not_import_gradio_or_diffusers():
    assert CORE, "no core files found"
    offenders = {str(p.relative_to(ROOT)): sorted(imported_modules(p) & {"gradio", "diffusers", "transformers"})
                 for p in CORE}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_pipelines_never_import_gradio():
    offenders = [str(p) for p in (ROOT / "pipelines").rglob("*.py") if "gradio" in imported_modules(p)]
    assert offenders == []


def test_importing_the_core_loads_neither_at_runtime():
    modules = [f"studio.{p.relative_to(ROOT / 'studio').with_suffix('').as_posix().replace('/', '.')}"
               for p in CORE if p.name != "__init__.py"]
    code = "import sys\n" + "".join(f"import {m}\n" for m in modules) + \
        "print(sorted(m for m in ('gradio', 'diffusers', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_commands_that_need_no_tensor_answer_without_importing_torch(tmp_path):
    """`studio --version`, `models`, `latents ls` and `latents show` read no tensor: torch's import (most of a
    second) is left to the commands that compute."""
    from conftest import noise_latent
    from studio.store import Library

    lib = Library(tmp_path / "home")
    lib.put(noise_latent(1), name="n1")
    lib.close()
    code = (
        "import sys\nfrom click.testing import CliRunner\nfrom studio.cli import main\n"
        f"home = {str(tmp_path / 'home')!r}\n"
        "for args in (['--version'], ['models'], ['latents', 'ls'], ['latents', 'show', 'n1'], ['latents', 'ls', '--json']):\n"
        "    result = CliRunner().invoke(main, ['--home', home, *args])\n"
        "    assert result.exit_code == 0, (args, result.output)\n"
        "print(sorted(m for m in ('torch', 'numpy', 'diffusers', 'gradio') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"

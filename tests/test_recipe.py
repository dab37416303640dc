"""Recipes given bad input: one clear error line, nothing stored, no file outside --out."""

import json
import time

import pytest
from click.testing import CliRunner

from studio.cli import main
from studio.errors import StudioError
from studio.recipe import Recipe


def studio(home, *args, code=0):
    """Run one CLI command in-process; check its exit code; return the result."""
    result = CliRunner().invoke(main, ["--home", str(home), *args], catch_exceptions=False)
    assert result.exit_code == code, (result.exit_code, result.output, result.stderr)
    return result


def library_state(home):
    files = sorted(str(p.relative_to(home)) for p in (home / "objects").rglob("*") if p.is_file())
    rows = [json.loads(line) for line in studio(home, "latents", "ls", "--all", "--json").stdout.splitlines()]
    return files, rows


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A library with tiny-gan generations g1, g2 and a tiny-sd generation `a`."""
    home = tmp_path_factory.mktemp("recipes")
    studio(home, "sample", "--model", "tiny-gan", "--seed", "1", "--name", "g1")
    studio(home, "sample", "--model", "tiny-gan", "--seed", "2", "--name", "g2")
    studio(home, "sample", "--model", "tiny-sd", "--prompt", "a cat", "--seed", "1", "--steps", "2", "--name", "a")
    return home


def render_fails(home, tmp_path, text, words):
    """Render the recipe text: exit 2, one line naming ``words``, the library unchanged, nothing rendered."""
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    before = library_state(home)
    err = studio(home, "render", str(path), "--out", str(tmp_path / "out"), code=2).stderr
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert words in err, err
    assert library_state(home) == before
    assert not list((tmp_path / "out").glob("*.png")) if (tmp_path / "out").exists() else True
    return err


BOMB = """description:
  a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
  b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
  c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
  d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
  e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
  f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
  g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
  h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
renders: [{name: *h, expr: "@g1"}]
"""


def test_yaml_aliases_are_refused_at_once():
    start = time.monotonic()
    with pytest.raises(StudioError, match="may not use YAML anchors or aliases") as err:
        Recipe.parse(BOMB)
    assert time.monotonic() - start < 1 and len(str(err.value)) < 200
    with pytest.raises(StudioError, match="anchors or aliases"):
        Recipe.parse("inputs:\n  a: &s {seed: 1}\nrenders: [{expr: '@a'}]\n")


def test_deeply_nested_yaml_is_an_error_not_a_recursion_crash():
    with pytest.raises(StudioError, match="nested more than 32 levels"):
        Recipe.parse("renders: " + "[" * 20000 + "]" * 20000)


def test_long_values_are_shortened_in_messages():
    long = "x" * 5000
    for text in (f"renders:\n  - {{name: {long}, expr: '@g1'}}\n",
                 f"inputs:\n  c: {{seed: 1, space: [{long}]}}\nrenders: [{{expr: '@c'}}]\n",
                 f"renders: !{long} [{{expr: '@g1'}}]\n",
                 "renders:\n  - {expr: '" + "+".join(["@g1"] * 300) + " + (@g1'}\n"):
        with pytest.raises(StudioError) as err:
            Recipe.parse(text)
        assert len(str(err.value)) < 300 and "..." in str(err.value), str(err.value)


@pytest.mark.parametrize("text, words", [
    # a later step fails: the inputs and lets before it must not be stored
    ("model: tiny-gan\ninputs:\n  c1: {seed: 301}\n  c2: {seed: 302}\nlet:\n  bad: '@c1 / 0'\n"
     "renders: [{expr: '@c1'}]\n", "let.bad: division by zero"),
    ("model: tiny-gan\ninputs:\n  c1: {seed: 401}\n  c2: {seed: 1180591620717411303424}\n"
     "renders: [{expr: '@c1'}]\n", "inputs.c2: 'seed' must be between 0 and 2^63-1"),
    ("model: tiny-gan\ninputs:\n  c1: {seed: 201}\n  c2: {ref: '@nosuch'}\nrenders: [{expr: '@c1'}]\n",
     "inputs.c2: no stored object is named"),
    ("model: tiny-gan\ninputs:\n  c1: {seed: 501}\nrenders:\n  - {expr: '@c1 + @a'}\n",
     "renders[0] (render1): cannot add generations of two different spaces"),
    ("model: tiny-gan\ninputs:\n  c1: {seed: 502}\nlet: {m: '@c1 * 2'}\n"
     "renders: [{expr: '@m'}, {name: z, expr: 'slerp(@c1, @m, t)', sweep: {t: [0, 1.0e+9]}}]\n",
     "renders[1] (z): slerp's t must be between"),
    ("model: tiny-gan\ninputs:\n  c1: {seed: 503}\nrenders: [{expr: '@c1'}]\nsettings: {truncation: 9}\n",
     "inputs.c1: setting truncation=9 must be"),
    # field validation
    ("model: tiny-gan\ninputs:\n  c: {seed: 1, settings: 5}\nrenders: [{expr: '@c'}]\n",
     "inputs.c.settings: expected a mapping, got int"),
    ("inputs:\n  c: {seed: 1, model: 7}\nrenders: [{expr: '@c'}]\n", "inputs.c.model: expected a model spec string"),
    ("inputs:\n  c: {seed: 1, model: [x]}\nrenders: [{expr: '@c'}]\n", "inputs.c.model: expected a model spec"),
    ("inputs:\n  c: {ref: 123}\nrenders: [{expr: '@c'}]\n", "inputs.c: 'ref' must name a stored object"),
    ("settings: {1: 2}\nrenders: [{expr: '@g1'}]\n", "settings: invalid setting name 1"),
    ("renders:\n  - {name: sub, expr: '@g1 * t', sweep: {'a/b': [1]}}\n", "invalid variable name 'a/b'"),
    ("renders:\n  - {name: d, expr: '@g1'}\n  - {name: d, expr: '@g2'}\n",
     "renders[1]: another render is named 'd' already"),
    ("let:\n  q: '@q + @q'\n", "let.q refers to itself (@q)"),
    ("let:\n  p: '@r * 2'\n  r: '@p * 2'\n", "let.p uses @r, which is defined after it"),
    ("renders:\n  - {expr: 'lerp(@g1, @g2, t)', sweep: {t: [0.5], zz: [1, 2, 3]}}\n",
     "sweep variable(s) zz not used in expr"),
    ("renders:\n  - {expr: 'lerp(@g1, @g2, t) * u', sweep: {t: [0, 1], u: [0, 1]}}\n"
     "  - {expr: 'lerp(@g1, @g2, t)', sweep: {t: [0, 1]}}\n"
     "  - {expr: 'lerp(@g1, @g2, t)', sweep: {t: " + str(list(range(4091))) + "}}\n",
     "the recipe asks for more than 4096 pictures"),
    ("description: 2001-13-01\nrenders: [{expr: '@g1'}]\n", "month must be in 1..12"),
])
def test_bad_recipes_store_nothing(home, tmp_path, text, words):
    render_fails(home, tmp_path, text, words)


def test_a_render_without_a_picture_fails_before_anything_is_stored(home, tmp_path):
    picture = tmp_path / "p.png"
    from PIL import Image
    Image.new("RGB", (64, 64), (90, 90, 90)).save(picture)
    studio(home, "encode", str(picture), "--model", "tiny-sd", "--name", "lat")
    render_fails(home, tmp_path, "model: tiny-gan\ninputs: {c: {seed: 555}}\nlet: {m: '@c * 0.5'}\n"
                 "renders: [{expr: '@m'}, {name: l, expr: '@lat * 2'}]\n", "which has no picture")


def test_sweep_names_cannot_leave_the_out_folder(home, tmp_path):
    out = tmp_path / "deep" / "er" / "out"
    path = tmp_path / "trav.yaml"
    path.write_text("renders:\n  - {name: trav, expr: '@g1 * PWN', sweep: {'/../../../PWNED': [1]}}\n")
    err = studio(home, "render", str(path), "--out", str(out), code=2).stderr
    assert "invalid variable name '/../../../PWNED'" in err
    assert not [p for p in tmp_path.rglob("*PWN*")]


def test_a_good_recipe_stores_only_what_it_makes(home, tmp_path):
    path = tmp_path / "my walk.yaml"
    chain = "+".join(["@c1"] * 1200)  # a long flat chain, 1,199 operations deep
    path.write_text("model: tiny-gan\ninputs:\n  c1: {seed: 601}\n  c2: {seed: 602}\n  old: {ref: '@g1'}\n"
                    f"let:\n  m: 'slerp(@c1, @c2, 0.5)'\n  same: '@c1'\n  big: '{chain}'\n"
                    "renders:\n  - {name: s, expr: 'slerp(@c1, @m, t)', sweep: {t: [0, 1]}}\n"
                    "  - {name: o, expr: '@old'}\n  - {name: b, expr: '@big'}\n")
    before = {r["id"] for r in library_state(home)[1]}
    result = json.loads(studio(home, "render", str(path), "--out", str(tmp_path / "out"), "--json").stdout)
    assert sorted(p.rsplit("/", 1)[1] for p in result["files"]) == ["b_000.png", "o_000.png", "s_000_t=0.png",
                                                                    "s_001_t=1.png"]
    rows = {r["id"]: r for r in library_state(home)[1]}
    added = set(rows) - before
    # c1, c2, m and big; s at t=0 and t=1 are c1 and m again, b is big; @old is g1 itself
    assert len(added) == 4 and all(rows[i]["tags"] == ["recipe:my_walk"] for i in added)
    assert rows[result["objects"][2]]["names"] == ["g1"] and rows[result["objects"][2]]["tags"] == []

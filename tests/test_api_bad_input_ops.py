"""Bad input to the operations (models, expressions, vectors, recipes): one clear StudioError, nothing stored."""

import pytest
from PIL import Image

from conftest import TEXT, generation, vector
from pipelines.base import pick_device
from studio.errors import SpaceMismatch, StudioError
from studio.recipe import Recipe, run
from studio.session import Session


def names(session: Session):
    """What the library holds: ids with their names (and tags)."""
    return sorted((r.id, r.names, r.tags) for r in session.library.ls())


@pytest.fixture
def two(session):
    """Two stored test generations a and b, and a text-space vector vec."""
    session.library.put(generation(1), "a")
    session.library.put(generation(2), "b")
    session.library.put(vector(3, TEXT), "vec")
    return session


# ---- B4: device and dtype ----

def test_unknown_device_or_dtype_is_refused_naming_the_choices(home):
    for kwargs, words in (({"device": "nonsense"}, "unknown device 'nonsense'; use cpu, cuda, cuda:N or mps"),
                          ({"device": 5}, "device must be text, got 5"),
                          ({"dtype": "fp64"}, "unknown dtype 'fp64'; use fp32, fp16, bf16"),
                          ({"dtype": ["fp32"]}, r"unknown dtype \['fp32'\]; use fp32, fp16, bf16")):
        s = Session(home, **kwargs)
        for model in ("tiny-gan", "tiny-sd"):
            with pytest.raises(StudioError, match=words):
                s.sample(model, seed=1)
        assert names(s) == []
        s.library.close()
    with pytest.raises(StudioError, match="unknown device 'meta'"):
        pick_device("meta")
    assert pick_device("cpu", "bf16")[1].is_floating_point


def test_a_device_this_machine_lacks_is_refused():
    import torch

    absent = f"cuda:{torch.cuda.device_count()}"  # one past the last GPU: absent on every machine
    with pytest.raises(StudioError, match=f"device '{absent}' is not available on this machine; use cpu"):
        pick_device(absent)


# ---- B8: prompts reaching an adapter ----

def test_adapters_refuse_prompts_and_seeds_of_the_wrong_type(session):
    for model in ("tiny-gan", "tiny-sd"):
        adapter = session.adapter(model)
        with pytest.raises(StudioError, match="prompt must be text, got 5"):
            adapter.sample([1], [5])
        with pytest.raises(StudioError, match="prompt must be text, got None"):
            adapter.sample([1, 2], ["a cat", None])
        with pytest.raises(StudioError, match="prompts must be a list of text .*, got 'a cat'"):
            adapter.sample([1, 2], "a cat")
        with pytest.raises(StudioError, match="seed must be between 0 and 2\\^63-1, got -1"):
            adapter.sample([-1])
        with pytest.raises(StudioError, match="seed must be a whole number, got '7'"):
            adapter.sample(["7"])
        with pytest.raises(StudioError, match="sampling needs a list of at least one seed, got 7"):
            adapter.sample(7)
    with pytest.raises(StudioError, match=r"prompt must be text, got \['x'\]"):
        session.adapter("tiny-sd").invert(Image.new("RGB", (64, 64)), prompt=["x"], steps=2)
    assert names(session) == []


# ---- B9: settings of the wrong type ----

def test_a_scheduler_that_is_not_a_name_is_refused_with_the_choices(session):
    for value in (["DDIMScheduler"], 5, None):
        with pytest.raises(StudioError, match=f"unknown scheduler {value!r} for model tiny-sd \\(SD 1.x/2.x\\); "
                                              "choose one of DDIMScheduler, ".replace("[", r"\[").replace("]", r"\]")):
            session.sample("tiny-sd", "x", seed=1, scheduler=value)
    assert names(session) == []


# ---- B10, B11: the expression and its bindings ----

def test_an_expression_that_is_not_text_is_refused(two):
    before = names(two)
    for source in (5, None, b"@a", ["@a"]):
        with pytest.raises(StudioError, match=f"the expression must be text, got {source!r}"
                                              .replace("[", r"\[").replace("]", r"\]")):
            two.evaluate(source, name="x")
    assert names(two) == before


def test_bindings_must_map_names_to_finite_numbers(two):
    before = names(two)
    for bindings, words in (({"t": "x"}, "binding 't' must be a number, got 'x'"),
                            ({"t": "0.3"}, "binding 't' must be a number, got '0.3'"),
                            ({"t": [1]}, r"binding 't' must be a number, got \[1\]"),
                            ({"t": True}, "binding 't' must be a number, got True"),
                            ({"t": float("nan")}, "binding 't' must be a finite number, got nan"),
                            ({1: 0.5}, "a binding's name must be text, got 1"),
                            ("t", "bindings must be a mapping of variable names to numbers, got 't'")):
        with pytest.raises(StudioError, match=words):
            two.evaluate("lerp(@a, @b, t)", name="mid", bindings=bindings)
        with pytest.raises(StudioError, match=words):
            two.check_expression("lerp(@a, @b, t)", bindings=bindings)
    assert names(two) == before
    mid = two.evaluate("lerp(@a, @b, t)", name="mid", bindings={"t": 1})
    assert mid.obj.lineage.params == {"expr": "lerp(@a, @b, t)", "t": 1.0}
    assert isinstance(mid.obj.lineage.params["t"], float)
    # a binding the expression does not use is not recorded (it would overwrite the real t)
    fixed = two.evaluate("lerp(@a, @b, 0.5)", bindings={"t": 0.9, "expr": 2.0}, store=False)
    assert fixed.obj.lineage.params == {"expr": "lerp(@a, @b, 0.5)", "t": 0.5}


# ---- B16/C23: discovery's seed ----

def test_discovery_seed_is_checked_like_a_sampling_seed(session):
    for seed, words in ((2**70, "seed must be between 0 and 2\\^63-1"), (-1, "seed must be between 0 and 2\\^63-1"),
                        ("x", "seed must be a whole number, got 'x'"), (1.5, "seed must be a whole number")):
        with pytest.raises(StudioError, match=words):
            session.vectors.discover("tiny-gan", k=2, samples=50, seed=seed, prefix="pc")
    with pytest.raises(StudioError, match="prefix must be text, got 5"):
        session.vectors.discover("tiny-gan", k=2, samples=50, prefix=5)
    with pytest.raises(StudioError, match="the number of w samples must be between 2 and 100000, got 1"):
        session.adapter("tiny-gan").sample_w(1)
    assert names(session) == []
    assert len(session.vectors.discover("tiny-gan", k=2, samples=50, seed=2**63 - 1, prefix="pc")) == 2


# ---- B17: strengths ----

def test_strengths_are_a_number_or_a_list_of_numbers(two):
    before = names(two)
    for strengths, words in (("x", "strengths must be a number or a list of numbers, got 'x'"),
                             ({"s": 1}, "strengths must be a number or a list of numbers"),
                             (None, "strengths must be a number or a list of numbers, got None"),
                             ([1, "2"], "each strength must be a number, got '2'"),
                             ([0.5, float("inf")], "each strength must be a finite number, got inf"),
                             (True, "strengths must be a number or a list of numbers, got True")):
        with pytest.raises(StudioError, match=words):
            two.vectors.apply("a", "vec", strengths, name="edit")
    assert names(two) == before
    (one,) = two.vectors.apply("a", "vec", 5, name="edit")  # a single strength is a sweep of one
    assert one.obj.lineage.params["s"] == 5.0 and two.library.resolve("edit") == one.id


# ---- B18: recipes ----

RECIPE = "model: tiny-gan\ninputs: {c: {seed: 70}}\nrenders: [{name: r, expr: '@c * 2'}]\n"


def test_recipe_text_path_and_batch_are_checked(session, tmp_path):
    for text in (5, None, b"model: tiny-gan"):
        with pytest.raises(StudioError, match=f"a recipe must be text, got {text!r}"):
            Recipe.parse(text)
    with pytest.raises(StudioError, match="recipe path must be a non-empty file path, got 5"):
        Recipe.load(5)
    recipe = Recipe.parse(RECIPE)
    out = tmp_path / "out"
    for batch, words in ((0, "batch must be at least 1, got 0"), ("2", "batch must be a whole number, got '2'"),
                         (True, "batch must be a whole number, got True")):
        with pytest.raises(StudioError, match=words):
            run(session, recipe, out, batch=batch)
    with pytest.raises(StudioError, match="run takes a Recipe .*, got 'r.yaml'"):
        run(session, "r.yaml", out)
    assert names(session) == [] and not out.exists()
    assert len(run(session, recipe, out, batch=1).files) == 1


# ---- C19: generations that could never be rendered ----

def test_the_sdedit_setting_is_refused_when_sampling(session):
    words = "the sdedit setting needs an init picture, which a sampled generation has not"
    with pytest.raises(StudioError, match=words):
        session.sample("tiny-sd", "x", seed=11, sdedit=0.5)
    with pytest.raises(StudioError, match=words):
        session.sample("tiny-sd", "x", seed=11, sdedit=0.5, store=False)
    recipe = Recipe.parse("model: tiny-sd\nsettings: {sdedit: 0.5, steps: 2}\ninputs: {c: {seed: 70}}\n"
                          "let: {m: '@c * 1'}\n", "sd.yaml")
    with pytest.raises(StudioError, match="sd.yaml: inputs.c: " + words):
        run(session, recipe)
    assert names(session) == []


def test_an_hspace_vector_added_to_a_generation_of_another_size_is_refused(session):
    s = session
    s.sample("tiny-sd", "a dog", 10, count=2, name="dog", steps=2)
    s.sample("tiny-sd", "a cat", 20, count=2, name="cat", steps=2)
    s.sample("tiny-sd", "a cat", 5, name="big", steps=2, height=128, width=128)
    s.sample("tiny-gan", seed=1, name="g")
    s.vectors.from_sets(["dog-1", "dog-2"], ["cat-1", "cat-2"], role="hspace", hspace_steps=1, name="hv")
    before = names(s)
    for source in ("@big + @hv", "@big + 2 * @hv", "@big - @hv", "@big + (@hv + @hv)"):
        with pytest.raises(SpaceMismatch, match=r"vector in hspace\[unet-\w+\]\(64x4x4\) was made at another "
                                                r"picture size: this generation of tiny-sd has an h-space of 64x8x8"):
            s.evaluate(source, name="bighv")
    with pytest.raises(SpaceMismatch, match="to a generation of tiny-gan: h-space shifts edit diffusion generations"):
        s.evaluate("@g + @hv", name="ghv")
    assert names(s) == before
    assert set(s.evaluate("@dog-1 + 2 * @hv").obj.roles) == {"noise", "text", "hspace"}  # the size it was made for
    # vectors can be made at other sizes too, and fit generations of that size
    s.sample("tiny-sd", "a dog", 30, count=2, name="bigdog", steps=2, height=128, width=128)
    s.sample("tiny-sd", "a cat", 40, count=2, name="bigcat", steps=2, height=128, width=128)
    big_hv = s.vectors.from_sets(["bigdog-1", "bigdog-2"], ["bigcat-1", "bigcat-2"], role="hspace", hspace_steps=1)
    assert big_hv.obj.space.shape[1:] == (8, 8)
    assert "hspace" in s.evaluate("@big + @" + big_hv.id[:12]).obj.roles


# ---- C20: zero vectors ----

def test_vectors_without_a_direction_are_not_stored(session):
    with pytest.raises(StudioError, match="the direction from 'cat' to 'cat' .* is a zero vector"):
        session.vectors.from_prompts({"from": "cat", "to": "cat", "templates": ["a {}"]}, model="tiny-sd")
    with pytest.raises(StudioError, match=r"4 samples \(1 distinct\) give at most 0 directions; ask for fewer than k=2"):
        session.vectors.discover("tiny-sd", space="text", k=2, prompts=["x"] * 4, prefix="pc")
    with pytest.raises(StudioError, match=r"3 samples \(2 distinct\) give at most 1 directions"):
        session.vectors.discover("tiny-sd", space="text", k=2, prompts=["x", "y", "x"], prefix="pc")
    with pytest.raises(StudioError, match="prompts must be a list of text, got 'abcd'"):
        session.vectors.discover("tiny-sd", space="text", k=2, prompts="abcd", prefix="pc")
    assert names(session) == []
    ((pc0, ratio),) = session.vectors.discover("tiny-sd", space="text", k=1, prompts=["x", "y", "x"], prefix="pc")
    assert pc0.name == "pc0" and 0 < ratio <= 1


# ---- B14 (part): the definition of a prompt-pair vector, and sets of references ----

def test_vector_definitions_and_sets_of_the_wrong_type_are_refused(two):
    before = names(two)
    with pytest.raises(StudioError, match="a vector definition is a YAML file's path or a dict, got 5"):
        two.vectors.from_prompts(5, model="tiny-sd")
    with pytest.raises(StudioError, match="vector definition must be a non-empty file path, got ''"):
        two.vectors.from_prompts("", model="tiny-sd")
    with pytest.raises(StudioError, match="set A must be a list of names or id prefixes, got 'ab'"):
        two.vectors.from_sets("ab", ["a", "b"])
    with pytest.raises(StudioError, match="on must be a list of names or id prefixes, got 'vec'"):
        two.vectors.condition("vec", "vec")
    with pytest.raises(StudioError, match="attribute must be a mapping with the text fields name, from and to"):
        two.vectors.from_sets(["a", "b"], ["b", "a"], attribute="style")
    assert names(two) == before


def test_an_integer_beyond_float_range_is_refused_as_a_number(tmp_path):
    from studio.session import Session

    s = Session(tmp_path / "home")
    s.sample("tiny-gan", seed=1, name="a")
    with pytest.raises(StudioError, match="binding 't' must be a finite number, got an integer too large for a float"):
        s.evaluate("lerp(@a, @a, t)", bindings={"t": 10**400})
    with pytest.raises(StudioError, match="each strength must be a finite number, got an integer too large"):
        s.vectors.apply("a", "a", [10**5000])
    assert [r.names for r in s.library.ls()] == [("a",)]

"""The studio in headless Chromium: generate, name, interpolate, apply a vector, render a recipe by clicking.

Saves a screenshot of every tab into ``$UI_SCREENSHOTS`` (or the test's tmp folder). Uses
Debian's Chromium (``scripts/setup.sh --test`` installs it); skipped only where it is absent
and not in CI (``CI`` set): there a missing browser is a failure.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser
pytest.importorskip("gradio")
sync_api = pytest.importorskip("playwright.sync_api")

from studio.session import Session  # noqa: E402
from studio.ui import server  # noqa: E402
from studio.ui.handlers import Studio  # noqa: E402

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
WAIT = 90_000  # ms; a render on a busy 2-core machine can take a while
sync_api.expect.set_options(timeout=WAIT)  # the first generate also loads the model (it loads on first use)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def home_session(tmp_path_factory):
    session = Session(tmp_path_factory.mktemp("browser-home"))
    yield session
    session.library.close()


@pytest.fixture(scope="module")
def url(home_session):
    running = server.launch(home_session, "tiny-sd", port=free_port(), block=False, echo=lambda line: None)
    assert not home_session.loaded("tiny-sd")  # the page answers first; the model loads on first use
    yield running.local_url
    running.close()


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for the module (Playwright's sync API allows one instance at a time)."""
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"Chromium not found at {CHROMIUM}; run scripts/setup.sh --test")
        pytest.skip(f"Chromium not found at {CHROMIUM} (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


def open_studio(browser, url: str):
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(WAIT)
    page.goto(url)
    page.wait_for_selector("#generate-btn")
    return page


@pytest.fixture(scope="module")
def page(browser, url):
    page = open_studio(browser, url)
    yield page
    page.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("UI_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def fill(page, elem_id: str, text: str) -> None:
    page.locator(f"#{elem_id} textarea, #{elem_id} input").first.fill(text)


def set_number(page, elem_id: str, value: float) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Tab")


def choose(page, elem_id: str, *values: str) -> None:
    """Type values into a dropdown (custom values allowed: names and ids)."""
    box = page.locator(f"#{elem_id} input[role=combobox]")
    for v in values:
        box.click()
        box.fill(v)
        box.press("Enter")
    box.press("Escape")


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def images(page, elem_id: str):
    return page.locator(f"#{elem_id} img")


def generate_and_name(page, prompt: str, seed: int, names: list[str]) -> None:
    expect = sync_api.expect
    fill(page, "prompt", prompt)
    set_number(page, "seed", seed)
    set_number(page, "count", len(names))
    page.click("#generate-btn")
    expect(page.locator("#gen-status")).to_contain_text(f"seed{'s' if len(names) > 1 else ''} {seed}")
    for i, name in enumerate(names):
        page.locator(f"#gen-gallery button[aria-label='Thumbnail {i + 1} of {len(names)}']").first.click()
        expect(page.locator("#gen-selected textarea, #gen-selected input").first).not_to_have_value("")
        fill(page, "gen-name", name)
        page.click("#gen-save")
        expect(page.locator("#gen-status")).to_contain_text(name)


def build_and_apply(page, set_a: list[str], set_b: list[str], name: str, target: str, attribute: str = "") -> None:
    """Attributes tab: a vector from two named sets, applied to one target with the default sweep."""
    expect = sync_api.expect
    choose(page, "set-a", *set_a)
    choose(page, "set-b", *set_b)
    fill(page, "vec-name", name)
    if attribute:
        fill(page, "vec-attr", attribute)
    page.click("#build-btn")
    expect(page.locator("#vec-info")).to_contain_text(name)
    choose(page, "vector", name)
    choose(page, "targets", target)
    page.click("#apply-btn")
    expect(images(page, "applied")).to_have_count(1)
    expect(images(page, "sweep")).to_have_count(5)


def test_click_through_every_tab(page, shots, home_session):
    expect = sync_api.expect

    # Generate: two cats and two dogs, each named from the gallery
    generate_and_name(page, "a cat", 5, ["bcat", "bcat2"])
    # the first generate, made as the page opened, used the model's own settings, not the placeholders
    # the page showed while the model loaded (Generate waits for them)
    assert home_session.get("bcat").settings["steps"] == 4  # TINY_STEPS; the placeholder is 20
    generate_and_name(page, "a dog", 50, ["bdog", "bdog2"])
    expect(page.locator("#title")).to_contain_text("4 stored objects")
    page.screenshot(path=str(shots / "1-generate.png"), full_page=True)

    # Interpolate: cat -> dog in 6 frames, GIF and MP4
    open_tab(page, "Interpolate")
    choose(page, "keys", "bcat", "bdog")
    set_number(page, "frames", 6)
    page.click("#interp-btn")
    expect(images(page, "strip")).to_have_count(6)
    expect(images(page, "gif")).to_have_count(1)
    expect(page.locator("#mp4 video")).to_have_count(1)
    page.locator("#strip button[aria-label='Thumbnail 3 of 6']").first.click()
    fill(page, "frame-name", "bframe")
    page.click("#frame-store")
    expect(page.locator("#frame-info")).to_contain_text("bframe")
    expect(page.locator("#title")).to_contain_text("5 stored objects")
    page.screenshot(path=str(shots / "3-interpolate.png"), full_page=True)

    # Attributes: a cat -> dog vector from the named sets, applied to a cat with a sweep
    open_tab(page, "Attributes")
    build_and_apply(page, ["bcat", "bcat2"], ["bdog", "bdog2"], "catdog", "bcat", "style:noto:twemoji")
    if Studio.can_score():  # the judge's verdict on the vector, as a plot
        page.get_by_text("Score with the emoji-judge").click()
        fill(page, "score-strengths", "0, 1")
        set_number(page, "score-n", 2)
        page.click("#score-btn")
        expect(images(page, "score-plot")).to_have_count(1)
    page.screenshot(path=str(shots / "4-attributes.png"), full_page=True)

    # Recipe: live validation with the core's message, then render; then run the YAML recipe
    open_tab(page, "Recipe")
    fill(page, "expr", "slerp(@bcat, @bdog, 0.5")
    expect(page.locator("#expr-check")).to_contain_text("expected ')'")
    fill(page, "expr", "slerp(@bcat, @bdog, 0.5)")
    expect(page.locator("#expr-check")).to_contain_text("✓ generation of tiny-sd")
    fill(page, "expr-name", "bmid")
    page.click("#render-btn")
    expect(images(page, "expr-image")).to_have_count(1)
    expect(page.locator("#expr-info")).to_contain_text("bmid")
    page.click("#run-recipe")
    expect(images(page, "run-gallery")).to_have_count(5)
    page.screenshot(path=str(shots / "5-recipe.png"), full_page=True)

    # Library: everything stored so far, one opened with its lineage
    open_tab(page, "Library")
    fill(page, "lib-search", "bmid")
    page.click("#lib-search-btn")
    expect(images(page, "lib-gallery")).to_have_count(1)
    page.locator("#lib-gallery button.thumbnail-item").first.click()
    expect(page.locator("#lib-meta")).to_contain_text("slerp")
    expect(images(page, "lib-parents")).to_have_count(2)
    fill(page, "lib-search", "")
    page.click("#lib-search-btn")
    expect(page.locator("#lib-table")).to_contain_text("catdog")
    page.screenshot(path=str(shots / "2-library.png"), full_page=True)

    # ... and deleted, after a confirmation
    shown = images(page, "lib-gallery").count()
    page.click("#lib-delete")
    expect(page.locator("#lib-confirm")).to_be_visible()
    page.click("#lib-confirm")
    expect(images(page, "lib-gallery")).to_have_count(shown - 1)
    expect(page.locator("#lib-confirm")).to_be_hidden()

    # ... a page at a time: more objects than a page, and the next page, and back
    from conftest import noise_latent

    for i in range(70):
        home_session.library.put(noise_latent(5000 + i), name=f"pg-{i}")
    total = len(home_session.library)
    page.click("#lib-search-btn")
    expect(page.locator("#lib-footer")).to_have_text(f"Objects 1–60 of {total}, newest first")
    expect(page.locator("#lib-table")).to_contain_text("pg-69")
    page.click("#lib-older")
    expect(page.locator("#lib-footer")).to_have_text(f"Objects 61–{total} of {total}, newest first")
    expect(page.locator("#lib-table")).not_to_contain_text("pg-69")
    expect(page.locator("#lib-older")).to_be_disabled()
    page.screenshot(path=str(shots / "2-library-page-2.png"), full_page=True)
    page.click("#lib-newer")
    expect(page.locator("#lib-footer")).to_have_text(f"Objects 1–60 of {total}, newest first")
    expect(page.locator("#lib-newer")).to_be_disabled()


def folder_studio(browser, tmp_path_factory, name: str, pipe):
    """Another studio, started on a tiny pipeline saved as a folder, as `studio ui --model FOLDER` would be."""
    folder = tmp_path_factory.mktemp("models") / name
    pipe.save_pretrained(folder)
    session = Session(tmp_path_factory.mktemp(f"{name}-home"))
    running = server.launch(session, str(folder), port=free_port(), block=False, echo=lambda line: None)
    page = open_studio(browser, running.local_url)
    yield page, session
    page.close()
    running.close()
    session.library.close()


@pytest.fixture(scope="module")
def sdxl_page(browser, tmp_path_factory):
    from pipelines.tiny import build_tiny_sdxl

    yield from folder_studio(browser, tmp_path_factory, "tiny-sdxl", build_tiny_sdxl())


def test_an_sdxl_folder_generates_interpolates_and_applies_a_vector(sdxl_page, shots):
    expect = sync_api.expect
    page, session = sdxl_page
    generate_and_name(page, "a cat", 5, ["xcat", "xcat2"])
    generate_and_name(page, "a dog", 50, ["xdog", "xdog2"])
    stored = session.get("xcat")
    assert stored.roles["text"].space.parts[1][0] == "pooled" and stored.settings["target_size"] == [64, 64]
    page.screenshot(path=str(shots / "6-sdxl-generate.png"), full_page=True)

    open_tab(page, "Interpolate")
    choose(page, "keys", "xcat", "xdog")
    set_number(page, "frames", 4)
    page.click("#interp-btn")
    expect(images(page, "strip")).to_have_count(4)

    open_tab(page, "Attributes")
    build_and_apply(page, ["xcat", "xcat2"], ["xdog", "xdog2"], "xcatdog", "xcat")
    page.screenshot(path=str(shots / "7-sdxl-attributes.png"), full_page=True)
    vector = session.get("xcatdog")
    assert vector.space == session.adapter(stored.model).text_space


@pytest.fixture(scope="module")
def flux_page(browser, tmp_path_factory):
    """Flux.1 dev: distilled guidance, 16-channel latents packed for its transformer."""
    from pipelines.tiny import build_tiny_flux

    yield from folder_studio(browser, tmp_path_factory, "tiny-flux", build_tiny_flux())


def test_a_flux_folder_generates_interpolates_and_applies_a_vector(flux_page, shots):
    expect = sync_api.expect
    page, session = flux_page
    expect(page.locator("#guidance")).to_be_visible()
    expect(page.locator("#guidance")).to_contain_text("Distilled guidance")  # the family's name for it
    generate_and_name(page, "a cat", 5, ["fcat", "fcat2"])
    generate_and_name(page, "a dog", 50, ["fdog", "fdog2"])
    stored = session.get("fcat")
    assert stored.roles["noise"].space.shape == (16, 8, 8)
    assert [name for name, _ in stored.roles["text"].space.parts] == ["embeds", "pooled"]
    page.screenshot(path=str(shots / "8-flux-generate.png"), full_page=True)

    open_tab(page, "Interpolate")
    choose(page, "keys", "fcat", "fdog")
    set_number(page, "frames", 4)
    page.click("#interp-btn")
    expect(images(page, "strip")).to_have_count(4)

    open_tab(page, "Attributes")
    build_and_apply(page, ["fcat", "fcat2"], ["fdog", "fdog2"], "fcatdog", "fcat")
    page.screenshot(path=str(shots / "9-flux-attributes.png"), full_page=True)
    vector = session.get("fcatdog")
    assert vector.space == session.adapter(stored.model).text_space


@pytest.fixture(scope="module")
def pkl_page(browser, tmp_path_factory):
    """A studio started on an NVIDIA StyleGAN2-ADA pickle with 4 classes, as `studio ui --model net.pkl` would be."""
    network = Path(__file__).parent / "fixtures" / "stylegan" / "sg2ada_cond.pkl"
    session = Session(tmp_path_factory.mktemp("pkl-home"))
    running = server.launch(session, str(network), port=free_port(), block=False, echo=lambda line: None)
    page = open_studio(browser, running.local_url)
    yield page, session, str(network.resolve())
    page.close()
    running.close()
    session.library.close()


def test_a_pickle_generates_with_the_class_picked(pkl_page, shots):
    expect = sync_api.expect
    page, session, network = pkl_page
    expect(page.locator("#gan-class")).to_be_visible()
    expect(page.locator("#prompt")).to_be_hidden()
    choose(page, "gan-class", "2")
    set_number(page, "seed", 7)
    set_number(page, "count", 2)
    page.click("#generate-btn")
    expect(page.locator("#gen-status")).to_contain_text("seeds 7, 8")
    expect(images(page, "gen-gallery")).to_have_count(2)
    made = session.library.ls(model=network)
    assert len(made) == 2 and {session.get(r.id).settings["class"] for r in made} == {2}
    page.screenshot(path=str(shots / "10-pickle-generate.png"), full_page=True)

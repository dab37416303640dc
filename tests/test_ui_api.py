"""The studio served over HTTP: gradio_client drives the named endpoints; the server refuses what it must."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")
httpx = pytest.importorskip("httpx")

from studio import formats  # noqa: E402
from studio.errors import StudioError  # noqa: E402
from studio.session import Session  # noqa: E402
from studio.ui import server  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
UPLOAD_CAP = "1mb"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    session = Session(tmp_path_factory.mktemp("api-home"))
    said: list[str] = []
    running = server.launch(session, "tiny-sd", port=free_port(), max_file_size=UPLOAD_CAP, block=False,
                            echo=said.append)
    yield running
    running.close()
    session.library.close()


@pytest.fixture(scope="module")
def client(app):
    return gradio_client.Client(app.local_url, verbose=False)


def generate(client, prompt: str, seed: int, count: int = 1):
    return client.predict("tiny-sd", prompt, seed, count, 2, 7.5, 1.0, "", api_name="/generate")


def test_generate_and_interpolate_through_gradio_client(app, client):
    gallery, info = generate(client, "a cat", 11, 2)
    assert [i["seed"] for i in info] == [11, 12] and len(gallery) == 2
    gen, recipe = formats.read_png(gallery[0]["image"])  # the downloaded picture still carries its generation
    assert gen.id == info[0]["id"] == recipe["id"]
    client.predict(info[0]["id"], "api_cat", "", api_name="/name_item")
    client.predict(info[1]["id"], "api_dog", "", api_name="/name_item")
    strip, gif, mp4, = client.predict(["api_cat", "api_dog"], 5, "slerp", "ease-in-out", 6,
                                      api_name="/interpolate")
    assert len(strip) == 5 and gif.endswith(".gif") and Path(gif).stat().st_size > 0
    assert (mp4["video"] if isinstance(mp4, dict) else mp4).endswith(".mp4")
    assert len(app.studio.session.library.ls(kind="generation")) == 2  # frames are not stored


def test_each_client_has_its_own_state(app):
    a = gradio_client.Client(app.local_url, verbose=False)
    b = gradio_client.Client(app.local_url, verbose=False)
    ids_a = [i["id"] for i in generate(a, "left", 301)[1]]
    ids_b = [i["id"] for i in generate(b, "right", 302)[1]]
    assert ids_a != ids_b
    assert a.predict(api_name="/last_results") == ids_a
    assert b.predict(api_name="/last_results") == ids_b


def test_errors_reach_the_client_as_the_cores_message(client):
    with pytest.raises(gradio_client.exceptions.AppError, match=r"expected '\)', found the end of the expression"):
        client.predict("slerp(@api_cat, @api_dog", "", api_name="/render_expression")
    message = client.predict("slerp(@api_cat, @nobody, 0.5)", api_name="/check_expression")
    assert message.startswith("✗ no stored object is named") and "^" in message


def test_the_file_route_serves_outputs_and_nothing_else(app, client):
    base = app.local_url.rstrip("/")
    for path in ("/etc/passwd", str(app.studio.session.library.home / "index.sqlite"),
                 str(next(app.studio.session.library.objects_dir.glob("*/*.safetensors"))),
                 str(ROOT / "pyproject.toml")):
        r = httpx.get(f"{base}/gradio_api/file={path}")
        assert r.status_code in (403, 404), (path, r.status_code)
        assert b"root:" not in r.content
    thumb = next(app.studio.thumbs.glob("*.png"))  # a studio output is allowed
    assert httpx.get(f"{base}/gradio_api/file={thumb}").status_code == 200


def test_an_oversized_upload_is_refused(app):
    upload = f"{app.local_url.rstrip('/')}/gradio_api/upload"
    big = httpx.post(upload, files={"files": ("big.png", b"\0" * (2 * 1024 * 1024), "image/png")})
    assert big.status_code == 413
    small = httpx.post(upload, files={"files": ("small.txt", b"hello", "text/plain")})
    assert small.status_code == 200


def test_parse_auth(tmp_path):
    assert server.parse_auth(None, None) is None
    assert server.parse_auth("ann:s3:cret") == [("ann", "s3:cret")]
    f = tmp_path / "logins"
    f.write_text("# team\nann:one\n\nbob:two\n")
    assert server.parse_auth("eve:x", f) == [("eve", "x"), ("ann", "one"), ("bob", "two")]
    for bad in ("nopassword", ":x", "ann:"):
        with pytest.raises(StudioError, match="USER:PASS"):
            server.parse_auth(bad)


def test_a_login_is_required_when_asked(tmp_path):
    session = Session(tmp_path / "home")
    running = server.launch(session, "tiny-gan", port=free_port(), auth=[("ann", "pw")], block=False,
                            echo=lambda line: None)
    try:
        with pytest.raises(gradio_client.exceptions.AuthenticationError, match="credentials were not provided"):
            gradio_client.Client(running.local_url, verbose=False)
        c = gradio_client.Client(running.local_url, auth=("ann", "pw"), verbose=False)
        assert c.predict(api_name="/last_results") == []
        # the login page says nothing about the API; the page behind the login does
        import urllib.parse
        import urllib.request

        login_page = urllib.request.urlopen(running.local_url).read()
        assert b'"auth_required":true' in login_page and b"window.gradio_api_info = null;" in login_page
        assert b"named_endpoints" not in login_page and b"last_results" not in login_page
        jar = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
        jar.open(running.local_url + "login", urllib.parse.urlencode({"username": "ann", "password": "pw"}).encode())
        assert b"named_endpoints" in jar.open(running.local_url).read()
    finally:
        running.close()
        session.library.close()


def test_share_offline_keeps_the_local_ui_and_says_why(tmp_path):
    """`studio ui --share` where gradio.live is unreachable: a warning, and the local studio keeps serving."""
    port = free_port()
    dead = "http://127.0.0.1:9"  # nothing listens on the discard port: every outside request fails at once
    env = {**os.environ, "STUDIO_HOME": str(tmp_path / "home"), "HTTPS_PROXY": dead, "HTTP_PROXY": dead,
           "ALL_PROXY": dead, "https_proxy": dead, "http_proxy": dead, "all_proxy": dead,
           "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost", "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen([sys.executable, "-m", "studio.cli", "ui", "--model", "tiny-gan", "--port", str(port),
                             "--share"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.strip())
            if "--share failed" in line:
                break
        text = "\n".join(lines)
        assert "warning: --share without a login" in text, text
        assert "the public share link could not be created" in text and "keeps running locally" in text, text
        r = httpx.get(f"http://127.0.0.1:{port}/", timeout=10)
        assert r.status_code == 200 and "Latent Studio" in r.text
        config = httpx.get(f"http://127.0.0.1:{port}/config", timeout=10).json()
        assert json.dumps(config).count("tiny-gan") >= 1
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.parametrize("host, port, size, queue, message", [
    ("127.0.0.1", 70000, "25mb", 4, "--port must be a number from 1 to 65535, not 70000"),
    ("127.0.0.1", -1, "25mb", 4, "--port must be a number from 1 to 65535, not -1"),
    ("127.0.0.1", 7860, "lots", 4, "--max-upload takes a size such as 25mb"),
    ("127.0.0.1", 7860, "2.5mb", 4, "--max-upload takes a size such as 25mb"),
    ("127.0.0.1", 7860, "25mb", 0, "--queue-size must be at least 1"),
    ("999.1.1.1", 7860, "25mb", 4, "--host '999.1.1.1' is not an address of this machine"),
])
def test_serving_options_are_checked_before_anything_loads(host, port, size, queue, message):
    with pytest.raises(StudioError, match=message.replace(".", "\\.")):
        server.check_options(host, port, size, queue)
    server.check_options("127.0.0.1", 7860, "25 MB", 1)  # what gradio takes passes

"""Serving the studio: which model opens, login, share link, queue bounds, served folders, upload cap.

``launch`` is what ``studio ui`` calls; tests call it with ``block=False`` and close the app.
Only ``<STUDIO_HOME>/outputs`` and ``<STUDIO_HOME>/thumbs`` are allowed paths (plus gradio's own
upload cache, which ``studio ui`` moves under ``<STUDIO_HOME>/.ui-cache``); the library's object
files and index are blocked outright.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import os
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from studio.errors import StudioError
from studio.session import DEFAULT_MODEL, Session

FALLBACK_MODEL = "tiny-sd"  # builds from code: always there
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
MAX_UPLOAD = "25mb"  # pictures, recipes and latents are small; a bigger upload is a mistake or an attack
QUEUE_SIZE = 64  # waiting requests beyond this are refused ("queue full") instead of piling up
CONCURRENCY = 4  # requests worked on at once; model work among them runs one at a time, on the model thread
CACHE_CLEANUP = (3600, 24 * 3600)  # every hour, delete gradio cache files older than a day


@dataclass
class Running:
    """A launched studio: the Blocks, where it listens, and what was said about it."""

    demo: object
    studio: object
    local_url: str
    share_url: str | None = None
    messages: list[str] = field(default_factory=list)

    def close(self) -> None:
        self.demo.close()


def parse_auth(auth: str | None = None, auth_file: str | os.PathLike | None = None) -> list[tuple[str, str]] | None:
    """Logins from ``USER:PASS`` and/or a file of ``USER:PASS`` lines (blank lines and # comments skipped)."""
    entries: list[tuple[str, str]] = []
    lines: list[tuple[str, str]] = []
    if auth is not None:
        lines.append((auth, "--auth"))
    if auth_file is not None:
        try:
            text = Path(auth_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise StudioError(f"cannot read the auth file {auth_file}: {exc}") from None
        lines += [(line.strip(), f"{auth_file} line {i}") for i, line in enumerate(text.splitlines(), 1)
                  if line.strip() and not line.lstrip().startswith("#")]
        if not lines:
            raise StudioError(f"the auth file {auth_file} holds no USER:PASS line")
    for line, where in lines:
        user, sep, password = line.partition(":")
        if not sep or not user.strip() or not password:
            raise StudioError(f"{where}: expected USER:PASS")
        entries.append((user.strip(), password))
    return entries or None


def choose_model(session: Session, requested: str | None, now: bool = True) -> tuple[str, str | None, str | None]:
    """The model the UI opens with: the one asked for, or the default with a fallback.

    With ``now`` it is loaded here; without, only a model this machine holds (a built-in one that is
    installed, a folder, a file) is left for the caller to load in the background; a hub id still
    loads here, so that a typo ends the command at once.
    Returns (model spec, a notice for the page, why the default could not load).
    """
    if requested:
        if now or session.local_kind(requested) is None:
            session.adapter(requested)  # a StudioError here ends the command with its message
        return requested, None, None
    try:
        if now or session.local_kind(DEFAULT_MODEL) is None:
            session.adapter(DEFAULT_MODEL)
        return DEFAULT_MODEL, None, None
    except StudioError as exc:
        session.adapter(FALLBACK_MODEL)
        return FALLBACK_MODEL, (f"The default model {DEFAULT_MODEL} could not be loaded, so the studio opened with "
                                f"{FALLBACK_MODEL}: random weights, its pictures are noise. Pick another model "
                                "under Generate."), str(exc)


def own_temp_dir(home: Path) -> Path:
    """Keep gradio's upload/cache folder inside the studio's home (call before the app is built)."""
    folder = Path(home) / ".ui-cache"
    folder.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("GRADIO_TEMP_DIR", str(folder))
    return Path(os.environ["GRADIO_TEMP_DIR"])


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


SIZE_RULE = re.compile(r"[1-9]\d*\s*(b|kb|mb|gb|tb)", re.IGNORECASE)  # what gradio's parser takes


def check_options(host: str, port: int | None, max_file_size: str | int, queue_size: int) -> None:
    """The serving options, checked before anything loads, each with one plain message."""
    if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535):
        raise StudioError(f"--port must be a number from 1 to 65535, not {port!r}")
    if isinstance(max_file_size, str) and not SIZE_RULE.fullmatch(max_file_size.strip()):
        raise StudioError(f"--max-upload takes a size such as 25mb, 500kb or 1gb, not {max_file_size!r}")
    if isinstance(max_file_size, int) and max_file_size < 1:
        raise StudioError(f"--max-upload must be at least 1 byte, not {max_file_size}")
    if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 1:
        raise StudioError(f"--queue-size must be at least 1 (every request waits in the queue), not {queue_size!r}")
    try:
        socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError, ValueError) as exc:
        raise StudioError(f"--host {host!r} is not an address of this machine or a name it can resolve "
                          f"({getattr(exc, 'strerror', None) or exc})") from None


API_INFO = re.compile(rb"window\.gradio_api_info = .*?;</script>", re.S)
LOGIN_PAGE = b'"auth_required":true'


class NoApiBeforeLogin:
    """ASGI middleware: the login page Gradio serves to a visitor who has not logged in also embeds
    the API description (every endpoint and its parameters) that ``/gradio_api/info`` refuses them;
    this takes it out of that page. Pages for a logged-in user pass unchanged."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") not in ("GET", "HEAD") or scope.get("path") != "/":
            return await self.app(scope, receive, send)
        start: dict = {}
        body: list[bytes] = []

        async def hold(message):
            if message["type"] == "http.response.start":
                start.update(message)
                return None
            if message["type"] != "http.response.body":
                return await send(message)
            body.append(message.get("body", b""))
            if message.get("more_body"):
                return None
            page = b"".join(body)
            if LOGIN_PAGE in page:
                page = API_INFO.sub(b"window.gradio_api_info = null;</script>", page)
            headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
            headers.append((b"content-length", str(len(page)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": page if scope["method"] == "GET" else b""})

        await self.app(scope, receive, hold)


def launch(session: Session, model: str | None = None, host: str = DEFAULT_HOST, port: int | None = DEFAULT_PORT,
           share: bool = False, auth: list[tuple[str, str]] | None = None, max_file_size: str | int = MAX_UPLOAD,
           queue_size: int = QUEUE_SIZE, concurrency: int = CONCURRENCY, block: bool = True,
           echo: Callable[[str], None] = print, load_now: bool = False) -> Running:
    """Build and start the studio; with ``block`` serve until interrupted, else return the running app.

    The page answers before the model has loaded: a model on this machine loads on first use, when
    the page is first opened or a request needs it (``load_now`` loads it before serving), and the
    controls that depend on it settle when it is ready.
    """
    from starlette.middleware import Middleware

    from studio.ui.app import CSS, THEME, build
    from studio.ui.handlers import Studio

    check_options(host, port, max_file_size, queue_size)
    spec, notice, why = choose_model(session, model, now=load_now)
    studio = Studio(session, spec, notice)
    demo = build(studio)
    demo.delete_cache = CACHE_CLEANUP
    demo.queue(max_size=queue_size, default_concurrency_limit=concurrency)
    messages: list[str] = []

    def say(line: str) -> None:
        messages.append(line)
        echo(line)

    if notice:
        say(f"notice: {notice} ({why})")
    if share and not auth:
        say("warning: --share without a login makes this studio (its library, its models, your disk space) "
            "reachable by anyone who has the link; add --auth USER:PASS or --auth-file FILE")
    if not is_loopback(host) and not auth:
        say(f"warning: listening on {host} without a login; anyone on your network can use the studio")
    home = session.library.home
    gradio_said = io.StringIO()
    try:
        with contextlib.redirect_stdout(gradio_said):  # gradio prints its share failure; we say it plainly
            demo.launch(server_name=host, server_port=port, share=share, auth=auth,
                        auth_message="Latent Studio: log in", prevent_thread_lock=True, quiet=True,
                        show_error=False, allowed_paths=[str(studio.outputs), str(studio.thumbs)],
                        blocked_paths=[str(session.library.objects_dir), str(home / "index.sqlite")],
                        max_file_size=max_file_size, theme=THEME, css=CSS, ssr_mode=False,
                        enable_monitoring=False, mcp_server=False,
                        app_kwargs={"middleware": [Middleware(NoApiBeforeLogin)]} if auth else None)
    except OSError as exc:
        raise StudioError(f"cannot listen on {host}:{port}: {exc}") from None
    running = Running(demo, studio, demo.local_url, demo.share_url, messages)
    say(f"Latent Studio running at {demo.local_url} (model {spec}, library {home})")
    if share:
        if demo.share_url:
            say(f"public link: {demo.share_url}")
        else:
            why = next((line.strip() for line in gradio_said.getvalue().splitlines()
                        if "Could not create share link" in line), "")
            why = why.removeprefix("Could not create share link").strip(" .")
            if why.startswith(("Missing file", "Please check")):  # what gradio says when it is offline
                why = ""
            say("warning: --share failed: the public share link could not be created (the gradio.live tunnel "
                "could not be reached; this machine may be offline or behind a firewall"
                + (f"; gradio said: {why}" if why else "") + f"). The studio keeps running locally at "
                f"{demo.local_url}")
    if block:
        try:
            demo.block_thread()
        except KeyboardInterrupt:
            pass
        finally:
            demo.close()
    return running

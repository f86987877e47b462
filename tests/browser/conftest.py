"""Real-browser fixtures: Debian's Chromium driven by Selenium, sidecars with the web routes,
and little local HTTP servers that play the app's origin (allowed) or a foreign one.

Needs ``apt-get install -y chromium chromium-driver`` and ``pip install 'selenium>=4.20,<5'``.
Without them every test here is skipped with the reason, unless ``SIDECAR_REQUIRE_BROWSER=1``
(set it in CI) turns the skip into a failure.

Threads: each sidecar serves from its own thread (as in ``tests/conftest.py``), each page
server from another; Chromium and chromedriver are child processes shared by the session.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NoReturn

import pytest

from sidecar.config import DEFAULT_ORIGINS
from sidecar.web.pages import STATIC_DIR
from tests.conftest import RunningSidecar

PAGES_DIR = Path(__file__).with_name("pages")
ARTIFACTS_DIR = Path(__file__).resolve().parents[2] / "artifacts" / "browser"

CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,860",
)

INSTALL_HINT = "apt-get install -y chromium chromium-driver && pip install 'selenium>=4.20,<5'"


def _find(env: str, *names: str) -> str | None:
    if os.environ.get(env):
        return os.environ[env]
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


def _unavailable(reason: str) -> NoReturn:
    message = f"real-browser tests need Chromium: {reason} (install: {INSTALL_HINT})"
    if os.environ.get("SIDECAR_REQUIRE_BROWSER") == "1":
        pytest.fail(message + "; SIDECAR_REQUIRE_BROWSER=1 forbids skipping", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="package")
def driver() -> Iterator[Any]:
    """One headless Chromium for the tests of this package (a fresh profile in a temp dir);
    it quits when they are done, so later tests see no browser threads, sockets or load."""
    try:
        from selenium import webdriver
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _unavailable("the selenium package is not installed")
    chromium = _find("SIDECAR_CHROMIUM", "chromium", "chromium-browser")
    chromedriver = _find("SIDECAR_CHROMEDRIVER", "chromedriver")
    if chromium is None:
        _unavailable("no chromium executable on PATH")
    if chromedriver is None:
        _unavailable("no chromedriver executable on PATH")
    profile = tempfile.mkdtemp(prefix="sidecar-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (*CHROMIUM_ARGS, f"--user-data-dir={profile}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        browser = webdriver.Chrome(service=Service(chromedriver), options=options)
    except WebDriverException as exc:
        shutil.rmtree(profile, ignore_errors=True)
        _unavailable(f"Chromium did not start: {exc.msg or exc}")
    browser.set_script_timeout(30)
    browser.set_page_load_timeout(15)
    try:
        yield browser
    finally:
        browser.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def browser(driver: Any, page_server_factory: Any, web_sidecar_factory: Any) -> Iterator[Any]:
    """The shared browser on a blank page; its console is printed if the test fails.

    Depends on the server factories so that it is torn down first: the page (and its
    WebSocket) is gone before the servers stop, so nothing reconnects during teardown.
    """
    driver.get("about:blank")
    driver.get_log("browser")  # discard what earlier tests left
    yield driver
    driver.get("about:blank")  # closes the page's WebSockets before the sidecars stop
    for entry in driver.get_log("browser"):
        print(f"[console {entry['level']}] {entry['message']}")


# -- pages from another origin -------------------------------------------------------------


@dataclass
class PageServer:
    """A static HTTP server on 127.0.0.1 serving ``tests/browser/pages`` and the client."""

    server: ThreadingHTTPServer
    thread: threading.Thread

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def harness_url(self, client_url: str) -> str:
        """The harness page, importing ``sidecar-client.js`` from ``client_url``."""
        return f"{self.origin}/harness.html?client={client_url}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


#: Files served at the root of the page servers besides ``pages/``.
EXTRA_FILES = {
    "/sidecar-client.js": STATIC_DIR / "sidecar-client.js",
    "/client-vectors.json": Path(__file__).resolve().parents[1] / "data" / "client-vectors.json",
}


class _PageHandler(SimpleHTTPRequestHandler):
    """Serves ``pages/`` plus ``/sidecar-client.js`` (the shipped module) and the vectors."""

    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript"}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, directory=str(PAGES_DIR), **kwargs)

    def translate_path(self, path: str) -> str:
        extra = EXTRA_FILES.get(path.split("?", 1)[0])
        return str(extra) if extra is not None else super().translate_path(path)

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def page_server_factory() -> Iterator[Callable[[], PageServer]]:
    """Start static page servers (each a distinct origin); all are stopped at teardown."""
    started: list[PageServer] = []

    def start() -> PageServer:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _PageHandler)
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        started.append(PageServer(server, thread))
        return started[-1]

    yield start
    for page_server in started:
        page_server.close()


class _DirectoryHandler(SimpleHTTPRequestHandler):
    """Serves one directory (symlinks followed, as a file:// page would), with extra headers."""

    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript"}
    headers_to_add: dict[str, str] = {}

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        for name, value in self.headers_to_add.items():
            self.send_header(name, value)
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def directory_server_factory() -> Iterator[Callable[..., PageServer]]:
    """Serve a directory (``headers`` on every answer, e.g. a CSP); stopped at teardown."""
    started: list[PageServer] = []

    def start(directory: Path, headers: dict[str, str] | None = None) -> PageServer:
        handler = type(
            "Handler",
            (_DirectoryHandler,),
            {"headers_to_add": dict(headers or {})},
        )

        def make(*args: Any, **kwargs: Any) -> Any:
            return handler(*args, directory=str(directory), **kwargs)

        server = ThreadingHTTPServer(("127.0.0.1", 0), make)
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        started.append(PageServer(server, thread))
        return started[-1]

    yield start
    for page_server in started:
        page_server.close()


@pytest.fixture
def before_page_scripts(driver: Any) -> Iterator[Callable[[str], None]]:
    """Run a script in every new document before its own scripts (CDP), for this test only:
    what a preload script or Tauri's injected globals provide. A CSP does not apply to it."""
    added: list[str] = []

    def add(source: str) -> None:
        answer = driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": source})
        added.append(answer["identifier"])

    yield add
    for identifier in added:
        driver.execute_cdp_cmd(
            "Page.removeScriptToEvaluateOnNewDocument", {"identifier": identifier}
        )


# -- sidecars with the web routes ----------------------------------------------------------


@pytest.fixture
def web_sidecar_factory(
    sidecar_factory: Callable[..., RunningSidecar],
) -> Callable[..., RunningSidecar]:
    """Start sidecars (with their ``/client/*`` and ``/`` routes); ``extra_origins`` are allowed.

    ``port=`` a previous sidecar's port restarts "the same" sidecar (a new hub, so a new
    epoch). The handshake timeout is short (2 s) so that the request threads Chromium's idle
    keep-alive connections hold end soon after a test.
    """

    def start(*, extra_origins: tuple[str, ...] = (), **overrides: Any) -> RunningSidecar:
        options: dict[str, Any] = {
            "allowed_origins": DEFAULT_ORIGINS + extra_origins,
            "handshake_timeout": 2.0,
        }
        options.update(overrides)
        return sidecar_factory(**options)

    return start


def stop_sidecar(instance: RunningSidecar) -> None:
    """Stop ``instance`` now (clients get 1001), as its process would on SIGTERM."""
    instance.close()


def artifacts_dir() -> Path:
    """``artifacts/browser/`` at the repository root (git-ignored), created on demand."""
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS_DIR

"""The dashboard in a real browser: `detbench dashboard` on a free port against a synthetic store,
every page opened in headless Chromium, no Streamlit exception element on any of them.

Needs the Debian ``chromium`` package (/usr/bin/chromium, or $DETBENCH_CHROMIUM) and the
``playwright`` Python package; ``playwright install`` is never used.  Screenshots go to
``docs/screenshots/<page>.png`` when ``DETBENCH_SCREENSHOTS=1``, else to a temporary directory.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from urllib.parse import urlencode
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REAL_DB = os.environ.get("DETBENCH_SCREENSHOT_DB")
CHROMIUM = os.environ.get("DETBENCH_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
#: page name -> URL path (the default page lives at /); query strings exercise the URL filters
PAGES = {"overview": "/", "compare": "/compare", "trends": "/trends", "alignment": "/alignment",
         "details": "/details", "export": "/export"}
REGRESSED = "yolov8_n/onnxruntime/fp16/b1/s640/cuda:0/nms-none"  # see test_dashboard.build_store
FILTERED = {"compare": "?model=yolov8_n", "trends": "?" + urlencode({"cell": REGRESSED})}
CHARTED = ("overview", "compare", "trends", "details")
VIEWPORT = {"width": 1400, "height": 1000}
MAX_SHOT_HEIGHT = 3200


def _missing() -> str | None:
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        return f"no Chromium at {CHROMIUM} (apt-get install -y chromium, or set DETBENCH_CHROMIUM)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python package is not installed (pip install playwright)"
    for name in ("streamlit", "plotly"):
        try:
            __import__(name)
        except ImportError:
            return f"{name} is not installed (pip install -e '.[dashboard]')"
    return None


MISSING = _missing()
IN_CI = os.environ.get("CI", "").lower() == "true"
# Outside CI a machine without Chromium skips, saying why; in CI (CI=true) it fails (see `server`).
pytestmark = pytest.mark.skipif(MISSING is not None and not IN_CI, reason=MISSING or "")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dashboard_command(url: str, port: int) -> list[str]:
    return [sys.executable, "-m", "harness.cli", "dashboard", "--db", url, "--port", str(port)]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if MISSING is not None:  # only reached in CI: the browser test must run there
        pytest.fail(f"CI=true but the browser test cannot run: {MISSING}")
    from test_dashboard import build_store

    tmp = tmp_path_factory.mktemp("browser")
    if REAL_DB:  # e.g. a measured run, for the README's pictures
        shutil.copy(REAL_DB, tmp / "results.db")
    else:
        build_store(f"sqlite:///{tmp / 'results.db'}")
    yield from _serve("sqlite:///results.db", tmp)


@pytest.fixture
def empty_server(tmp_path):
    yield from _serve("sqlite:///never-created.db", tmp_path)


def _serve(url: str, tmp: Path):
    """`detbench dashboard --db url` run in ``tmp`` (relative SQLite URLs resolve there)."""
    port = _free_port()
    log = open(tmp / "dashboard.log", "w+")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(_dashboard_command(url, port), cwd=tmp, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/_stcore/health", timeout=2) as resp:
                    if resp.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                log.seek(0)
                pytest.fail(f"dashboard did not start (exit {proc.poll()}):\n{log.read()[-3000:]}")
            time.sleep(0.5)
        yield base
    finally:
        proc.terminate()  # the launcher forwards it to streamlit and waits for it
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        leaked = _group_alive(proc.pid)
        if leaked:  # nothing of this server's session may outlive the test
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    assert not leaked, "stopping the launcher left the streamlit server running"


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    if os.environ.get("DETBENCH_SCREENSHOTS") == "1":
        out = ROOT / "docs" / "screenshots"
        out.mkdir(parents=True, exist_ok=True)
        return out
    return tmp_path_factory.mktemp("screenshots")


def _settle(page, charts: bool = False) -> None:
    """Wait until the script run is over and the charts are drawn."""
    page.wait_for_selector('[data-testid="stMain"] h1', timeout=45_000)
    if charts:
        page.wait_for_selector('[data-testid="stPlotlyChart"] .main-svg', timeout=45_000)
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=45_000)
    page.wait_for_timeout(300)
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=\"stPlotlyChart\"]')]"
        ".every(c => c.querySelector('.main-svg'))", timeout=45_000)
    page.wait_for_timeout(700)


def _screenshot(page, path: Path) -> None:
    """The whole page: Streamlit scrolls inside its main container, so grow the viewport to fit."""
    height = page.evaluate(
        "() => { const m = document.querySelector('[data-testid=\"stMain\"]');"
        " return Math.max(m ? m.scrollHeight : 0, document.body.scrollHeight); }")
    page.set_viewport_size({"width": VIEWPORT["width"],
                            "height": int(min(max(height, VIEWPORT["height"]), MAX_SHOT_HEIGHT))})
    page.wait_for_timeout(800)  # plotly re-lays out on resize
    page.screenshot(path=str(path))
    page.set_viewport_size(VIEWPORT)


@pytest.mark.parametrize("name", list(PAGES))
def test_page_renders_without_error(server, browser, shots, name):
    page = browser.new_page(viewport=VIEWPORT)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(server + PAGES[name] + ("" if REAL_DB else FILTERED.get(name, "")))
        _settle(page, charts=name in CHARTED)
        assert page.locator('[data-testid="stException"]').count() == 0, \
            page.locator('[data-testid="stException"]').first.inner_text()
        assert "Page not found" not in page.content()
        assert not errors, errors
        if name in CHARTED:
            assert page.locator('[data-testid="stPlotlyChart"]').count() >= 1
        if REAL_DB:  # screenshots of a measured store: its content is not the fixture's
            pass
        elif name == "compare":  # the filter from the URL reached the sidebar and the page
            assert page.locator('[data-testid="stSidebar"]').get_by_text("yolov8_n").count() >= 1
            assert "18 of 36 cells" in page.inner_text('[data-testid="stMain"]')
        elif name == "trends":
            assert "Change points: median_ms" in page.inner_text('[data-testid="stMain"]')
        elif name == "alignment":
            assert page.get_by_text("No alignment data for this run").count() == 1
        _screenshot(page, shots / f"{name}.png")
    finally:
        page.close()


def test_filter_updates_the_url(server, browser):
    if REAL_DB:
        pytest.skip("the filter test needs the synthetic store's content (DETBENCH_SCREENSHOT_DB is set)")
    """Picking a backend in the sidebar shows in the URL, so the view can be shared."""
    page = browser.new_page(viewport=VIEWPORT)
    try:
        page.goto(server + "/")
        _settle(page, charts=True)
        page.locator('[data-testid="stSidebar"] [data-testid="stMultiSelect"]').nth(1).click()
        page.get_by_role("option", name="tensorrt").click()
        page.keyboard.press("Escape")
        page.wait_for_function("() => location.search.includes('backend=tensorrt')", timeout=20_000)
        page.get_by_text("12 of 36 cells").wait_for(timeout=20_000)
        _settle(page, charts=True)
        assert page.locator('[data-testid="stException"]').count() == 0
        assert "12 of 36 cells" in page.inner_text('[data-testid="stMain"]')
    finally:
        page.close()


def test_first_run_message_without_a_database(empty_server, browser, shots):
    page = browser.new_page(viewport=VIEWPORT)
    try:
        page.goto(empty_server + "/")
        _settle(page)
        assert page.locator('[data-testid="stException"]').count() == 0
        assert "detbench run matrices/demo.yaml" in page.inner_text('[data-testid="stMain"]')
        _screenshot(page, shots / "first-run.png")
    finally:
        page.close()

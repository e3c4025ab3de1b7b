"""The dashboard in a real browser: `detbench dashboard` on a free port, every page opened in
headless Chromium, no Streamlit exception element on any of them.

Stores: the synthetic one of ``test_dashboard.build_store`` (known values: the headline table is
checked against it, colours across filters), the measured H200 store
``benchmarks/results/gpu_fixture.db`` (batch 1/8: the b8 columns) and the measured H100 store
``benchmarks/results/h100/gpu_fixture.db`` (alignment records).  The real stores give the README's
screenshots: ``docs/screenshots/<page>.png`` when ``DETBENCH_SCREENSHOTS=1``, else a temporary
directory.  The overview's cold render time on a 108-cell store is printed (reported, never
asserted: see the README's Dashboard section).

Needs the Debian ``chromium`` package (/usr/bin/chromium, or $DETBENCH_CHROMIUM) and the
``playwright`` Python package; ``playwright install`` is never used.
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
from contextlib import contextmanager
from urllib.parse import urlencode
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
H200_DB = ROOT / "benchmarks" / "results" / "gpu_fixture.db"
H100_DB = ROOT / "benchmarks" / "results" / "h100" / "gpu_fixture.db"
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
    build_store(f"sqlite:///{tmp / 'results.db'}")
    yield from _serve("sqlite:///results.db", tmp)


def _real(tmp_path_factory, db: Path):
    """A copy of a measured store (the dashboard is read-only; the copy keeps it so anyway)."""
    tmp = tmp_path_factory.mktemp(db.parent.name)
    shutil.copy(db, tmp / "results.db")
    return _serve("sqlite:///results.db", tmp)


@pytest.fixture(scope="module")
def h200_server(tmp_path_factory):
    yield from _real(tmp_path_factory, H200_DB)


@pytest.fixture(scope="module")
def h100_server(tmp_path_factory):
    yield from _real(tmp_path_factory, H100_DB)


@pytest.fixture
def empty_server(tmp_path):
    yield from _serve("sqlite:///never-created.db", tmp_path)


#: base URL of a started dashboard -> the SQLite file it serves
SERVED: dict[str, Path] = {}


def _serve(url: str, tmp: Path):
    """`detbench dashboard --db url` run in ``tmp`` (relative SQLite URLs resolve there)."""
    port = _free_port()
    SERVED[f"http://127.0.0.1:{port}"] = tmp / url.removeprefix("sqlite:///")
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


def _screenshot(page, path: Path, width: int = VIEWPORT["width"]) -> None:
    """The whole page: Streamlit scrolls inside its main container, so grow the viewport to fit."""
    height = page.evaluate(
        "() => { const m = document.querySelector('[data-testid=\"stMain\"]');"
        " return Math.max(m ? m.scrollHeight : 0, document.body.scrollHeight); }")
    page.set_viewport_size({"width": width,
                            "height": int(min(max(height, VIEWPORT["height"]), MAX_SHOT_HEIGHT))})
    page.wait_for_timeout(800)  # plotly re-lays out on resize
    page.screenshot(path=str(path))
    page.set_viewport_size({"width": width, "height": VIEWPORT["height"]})


@pytest.mark.parametrize("name", list(PAGES))
def test_page_renders_without_error(server, browser, tmp_path, name):
    page = browser.new_page(viewport=VIEWPORT)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(server + PAGES[name] + FILTERED.get(name, ""))
        _settle(page, charts=name in CHARTED)
        _no_errors(page, errors)
        if name in CHARTED:
            assert page.locator('[data-testid="stPlotlyChart"]').count() >= 1
        if name == "compare":  # the filter from the URL reached the sidebar and the page
            assert page.locator('[data-testid="stSidebar"]').get_by_text("yolov8_n").count() >= 1
            assert "18 of 36 cells" in page.inner_text('[data-testid="stMain"]')
        elif name == "trends":
            assert "Change points: median_ms" in page.inner_text('[data-testid="stMain"]')
        elif name == "alignment":
            assert page.get_by_text("No alignment data for this run").count() == 1
        _screenshot(page, tmp_path / f"{name}.png")
    finally:
        page.close()


def _no_errors(page, errors: list[str]) -> None:
    assert page.locator('[data-testid="stException"]').count() == 0, \
        page.locator('[data-testid="stException"]').first.inner_text()
    assert "Page not found" not in page.content()
    assert not errors, errors


def test_filter_updates_the_url(server, browser):
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


# -- the headline table, b8 columns, colours (issue #14) -------------------------------------------


def _headline_tables(page) -> list[dict]:
    """Every headline table on the page: ``{"label": "batch B", "rows": [{column: text}]}``."""
    return page.evaluate("""() => [...document.querySelectorAll('table.detbench-headline')].map(t => {
        const head = [...t.querySelectorAll('thead th')].map(th => th.innerText.trim());
        const rows = [...t.querySelectorAll('tbody tr')].map(tr => {
            const cells = [...tr.querySelectorAll('td')];
            const out = {};
            head.forEach((h, i) => { out[h] = cells[i] ? cells[i].innerText.trim() : null; });
            out._swatch = cells[0] ? getComputedStyle(cells[0]).backgroundColor : null;
            return out; });
        return {label: 'batch ' + t.dataset.batch, rows}; })""")


def _num(text: str) -> float | None:
    text = text.replace("×", "").replace("%", "").replace(",", "").replace("−", "-").strip()
    return None if text in ("—", "") else float(text)


def _expected(cells, batch):
    """Straight from the store: per ok cell of ``batch``, ms per image, speed-up and ΔAP against
    the PyTorch fp32 nms-none cell of the same model and batch."""
    refs = {c.model: c for c in cells if (c.backend, c.precision, c.batch, c.nms, c.status)
            == ("pytorch", "fp32", batch, "none", "ok")}
    out = {}
    for c in cells:
        if c.batch != batch or c.status != "ok":
            continue
        ms = c.latency["median_ms"] / c.batch
        ref = refs[c.model]
        out[(c.model, f"{c.backend} · {c.precision}", c.nms)] = {
            "ms": ms, "speedup": (ref.latency["median_ms"] / ref.batch) / ms,
            "dAP": c.metrics["AP"] - ref.metrics["AP"], "AP": c.metrics["AP"]}
    return out


def _check_headline(tables, cells, batches):
    assert [t["label"].split(" · ")[0] for t in tables] == [f"batch {b}" for b in batches]
    for table, batch in zip(tables, batches):
        expected = _expected(cells, batch)
        models = {c.model for c in cells}
        seen = 0
        for row in table["rows"]:
            model = row.get("model") or next(iter(models))
            want = expected.get((model, row["backend · precision"], row.get("NMS") or "none"))
            if want is None:  # a failed/skipped cell: no numbers
                assert row["ms / image"] == "—"
                continue
            seen += 1
            assert _num(row["ms / image"]) == pytest.approx(want["ms"], rel=5e-3, abs=6e-4)
            assert _num(row["speed-up"]) == pytest.approx(want["speedup"], abs=0.006)
            assert _num(row["ΔAP"]) == pytest.approx(want["dAP"], abs=6e-5)
            assert _num(row["AP"]) == pytest.approx(want["AP"], abs=6e-5)
        assert seen == len(expected)
        ms = [_num(r["ms / image"]) for r in table["rows"] if r["ms / image"] != "—"
              and (r.get("model") or "") == (table["rows"][0].get("model") or "")
              and (r.get("NMS") or "none") == "none"]
        assert ms == sorted(ms)  # fastest first


def _store_cells(db: Path):
    from harness.store import Store

    store = Store(f"sqlite:///{db}", readonly=True)
    run = next(r for r in store.list_runs() if r.status == "finished")
    return store.cells(run.id)


def test_headline_table_matches_the_store(server, browser, tmp_path):
    from harness.store import Store

    page = browser.new_page(viewport=VIEWPORT)
    try:
        page.goto(server + "/")
        _settle(page, charts=True)
        tables = _headline_tables(page)
        cells = _store_cells(SERVED[server])
        _check_headline(tables, cells, [1, 4])
        starred = [(r["model"], r["backend · precision"]) for t in tables for r in t["rows"]
                   if r["note"].startswith("★")]
        assert starred == [("yolov8_n", "tensorrt · fp16"), ("yolox_s", "tensorrt · fp16")] * 2
        page.goto(server + "/?budget=2")  # int8 loses 1.7 AP points: inside a 2-point budget
        _settle(page, charts=True)
        b1 = _headline_tables(page)[0]["rows"]
        assert [r["backend · precision"] for r in b1 if r["note"].startswith("★")] == ["tensorrt · int8"] * 2
    finally:
        page.close()


def test_b8_columns_on_the_h200_store(h200_server, browser):
    # wide: the data grid only puts the columns in view into the DOM
    page = browser.new_page(viewport={"width": 2800, "height": VIEWPORT["height"]})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(h200_server + "/compare")
        _settle(page, charts=True)
        _no_errors(page, errors)
        cells = _store_cells(H200_DB)
        _check_headline(_headline_tables(page), cells, [1, 8])
        grid = page.evaluate("""() => [...document.querySelectorAll('[data-testid="stDataFrame"] table')]
            .map(t => [...t.querySelectorAll('th')].map(th => th.innerText.trim()))""")
        classic = next(h for h in grid if "b1 fp32 AP" in h)
        assert {"b8 fp32 AP", "b8 fp32 ms", "b8 fp16 ms", "b8 int8 AP", "b8 int8 ms"} <= set(classic)
        assert not any(h.startswith("b4 ") for h in classic)
        body = page.evaluate("""() => [...document.querySelectorAll('[data-testid="stDataFrame"] table')]
            .map(t => t.innerText)""")
        int8_b8 = next(c for c in cells if (c.backend, c.precision, c.batch) == ("onnxruntime", "int8", 8))
        assert any(f"{int8_b8.latency['median_ms']:.4f}"[:6] in text for text in body)
        with page.expect_download() as download:  # the dashboard's XLSX, made on click
            page.locator('[data-testid="stDownloadButton"]').get_by_text("XLSX").first.click()
        import io

        from openpyxl import load_workbook

        assert download.value.suggested_filename.endswith("-headline.xlsx")
        book = load_workbook(io.BytesIO(Path(download.value.path()).read_bytes()))
        sheet = book.worksheets[0]
        header = {r[0]: r[1] for r in sheet.iter_rows(max_row=8, values_only=True)}
        assert "NVIDIA H200" in header["hardware"] and "torch 2.11.0" in header["versions"]
        rows = list(sheet.iter_rows(values_only=True))
        top = next(i for i, r in enumerate(rows) if r and r[0] == "batch")  # the column row
        assert {r[0] for r in rows[top + 1:]} == {1, 8}  # b1 and b8 rows, numbers not text
        page.goto(h200_server + "/")
        _settle(page, charts=True)
        columns = page.evaluate("() => document.querySelector('.js-plotly-plot').data[0].x")
        assert columns == ["b1 · 320px", "b8 · 320px"]
        assert "NVIDIA H200" in page.inner_text('[data-testid="stMain"]')
    finally:
        page.close()


def _trace_colours(page) -> dict[str, str]:
    return page.evaluate("""() => { const out = {};
        for (const plot of document.querySelectorAll('.js-plotly-plot'))
            for (const t of plot.data)
                if (t.legendgroup && t.legendgroup !== 'symbols' && t.marker && typeof t.marker.color === 'string')
                    out[t.name] = t.marker.color;
        return out; }""")


def _rgb(hex_colour: str) -> str:
    h = hex_colour.lstrip("#")
    return f"rgb({int(h[0:2], 16)}, {int(h[2:4], 16)}, {int(h[4:6], 16)})"


def test_colours_stay_fixed_across_filters(server, browser):
    page = browser.new_page(viewport=VIEWPORT)
    try:
        page.goto(server + "/compare")
        _settle(page, charts=True)
        everything = _trace_colours(page)
        swatches = {r["backend · precision"]: r["_swatch"] for t in _headline_tables(page) for r in t["rows"]}
        assert len(everything) == 8 and len(set(everything.values())) == 8
        for config, colour in everything.items():  # the headline's swatch is the chart's colour
            assert swatches[config] == _rgb(colour), config
        page.goto(server + "/compare?precision=int8&backend=tensorrt&backend=onnxruntime")
        _settle(page, charts=True)
        filtered = _trace_colours(page)
        assert set(filtered) == {"onnxruntime · int8", "tensorrt · int8"}
        assert all(filtered[k] == everything[k] for k in filtered)
        page.goto(server + "/compare?backend=tensorrt")
        _settle(page, charts=True)
        trt = _trace_colours(page)
        assert set(trt) == {"tensorrt · fp32", "tensorrt · fp16", "tensorrt · int8"}
        assert all(trt[k] == everything[k] for k in trt)
    finally:
        page.close()


def test_unknown_run_in_the_link_warns(server, browser):
    page = browser.new_page(viewport=VIEWPORT)
    try:
        page.goto(server + "/?run=r20990101-000000-dead")
        _settle(page, charts=True)
        assert "r20990101-000000-dead" in page.inner_text('[data-testid="stMain"]')
        assert "does not exist" in page.inner_text('[data-testid="stMain"]')
    finally:
        page.close()


# -- the real stores: every page, screenshots for the README -----------------------------------------

REAL_PAGES = {"overview": "/", "compare": "/compare", "trends": "/trends", "details": "/details",
              "export": "/export"}


@pytest.mark.slow
def test_every_page_of_the_measured_stores(h200_server, h100_server, browser, shots):
    """Each page on the measured H200 store (alignment: the H100 store, which has alignment
    records), screenshotted; the overview also at 800 px wide."""
    visits = [(name, h200_server + path, VIEWPORT["width"]) for name, path in REAL_PAGES.items()]
    visits += [("alignment", h100_server + "/alignment", VIEWPORT["width"]),
               ("overview-800px", h200_server + "/", 800)]
    for name, url, width in visits:
        page = browser.new_page(viewport={"width": width, "height": VIEWPORT["height"]})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        try:
            page.goto(url)
            _settle(page, charts=name != "export")
            _no_errors(page, errors)
            text = page.inner_text('[data-testid="stMain"]')
            assert "NVIDIA H" in text, name  # the run header names the GPU on every page
            if name == "alignment":
                assert "Only 32 of 100 images were replayed" in text
                assert "per-class ΔAP vs the reference" in page.content()
            if name == "overview-800px":  # nothing wider than the window
                overflow = page.evaluate("() => document.querySelector('[data-testid=\"stMain\"]').scrollWidth")
                assert overflow <= width + 1
            _screenshot(page, shots / f"{name}.png", width=width)
        finally:
            page.close()


@pytest.mark.slow
def test_overview_cold_render_time_is_reported(tmp_path_factory, browser, capsys):
    """A 108-cell store (2 models × 9 configs × batch 1/2/4/8/16/32); the overview opened in a
    fresh browser context (no cached JavaScript) until the headline tables and the heatmap are
    drawn.  Reported, never asserted (timings on a shared 2-core machine mean little)."""
    from test_dashboard import build_store

    tmp = tmp_path_factory.mktemp("big")
    build_store(f"sqlite:///{tmp / 'results.db'}", runs=1, batches=(1, 2, 4, 8, 16, 32))
    times = []
    with contextmanager(_serve)("sqlite:///results.db", tmp) as base:
        for attempt in ("first load after server start", "fresh browser context, warm server"):
            context = browser.new_context(viewport=VIEWPORT)
            page = context.new_page()
            start = time.perf_counter()
            page.goto(base + "/")
            page.wait_for_selector("table.detbench-headline", timeout=90_000)
            _settle(page, charts=True)
            times.append((attempt, time.perf_counter() - start - 1.0))  # _settle idles 1.0 s
            assert "108 of 108 cells" in page.inner_text('[data-testid="stMain"]')
            context.close()
    with capsys.disabled():
        for attempt, seconds in times:
            print(f"\noverview cold render, 108-cell store ({attempt}): {seconds:.2f} s")


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

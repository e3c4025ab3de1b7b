"""What every page needs: the read-only store, the runs, the chosen run and the filtered cells.

The sidebar widgets are bound to URL query parameters (``bind="query-params"``), so the
URL of any view (``?run=...&backend=onnxruntime&batch=1``) reproduces it when shared.
Page-level choices use :func:`choice`, bound the same way.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import pandas as pd
import streamlit as st

from harness import report
from harness.errors import UserError
from harness.store import CellRecord, RunRecord, Store
from harness.store.engine import database_exists

from dashboard.analysis import cells_frame

DB_ENV = "DETBENCH_DB"
DEFAULT_DB = "sqlite:///results.db"
FILTERS = ("model", "backend", "precision", "batch")
FIRST_RUN = "detbench run matrices/demo.yaml"
LATEST = "latest"
_STATE = "detbench_context"
TTL_S = 5
#: a ``running`` run with no cell activity for this long is flagged as stale (its process
#: probably died; ``detbench run --resume`` finishes it)
STALE_S = 3600


def db_url(argv: list[str] | None = None) -> str:
    """``--db`` after the script's ``--`` (``streamlit run app.py -- --db URL``), else
    ``$DETBENCH_DB``, else ``sqlite:///results.db``."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--db")
    known, _ = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    return known.db or os.environ.get(DB_ENV) or DEFAULT_DB


@st.cache_resource(show_spinner=False)
def open_store(url: str) -> Store:
    return Store(url, readonly=True)


@st.cache_data(ttl=TTL_S, show_spinner=False)
def load_runs(url: str) -> list[RunRecord]:
    return open_store(url).list_runs()


@st.cache_data(ttl=TTL_S, show_spinner=False)
def load_cells(url: str, run_id: str) -> list[CellRecord]:
    return open_store(url).cells(run_id)


@st.cache_data(ttl=60, show_spinner=False)
def load_history(url: str, identity: tuple) -> list[dict[str, Any]]:
    model, backend, precision, batch, imgsz, device, nms = identity
    return open_store(url).history(model=model, backend=backend, precision=precision, batch=batch,
                                   imgsz=imgsz, device=device, nms=nms)


@st.cache_data(ttl=60, show_spinner=False)
def load_samples(url: str, cell_id: int) -> dict[str, list[float]]:
    store = open_store(url)
    return {series: store.latency_samples(cell_id, series) for series in ("model", "e2e")}


@st.cache_data(ttl=60, show_spinner=False)
def load_telemetry(url: str, cell_id: int) -> list[dict[str, Any]]:
    return open_store(url).telemetry_samples(cell_id)


@st.cache_data(ttl=60, show_spinner=False)
def load_class_ap(url: str, cell_id: int) -> list[dict[str, Any]]:
    return open_store(url).class_ap(cell_id)


@dataclass(frozen=True)
class Context:
    url: str
    store: Store
    runs: list[RunRecord]
    run: RunRecord
    cells: list[CellRecord]  # all cells of the run, plan order
    selected: list[CellRecord]  # those passing the sidebar filters
    frame: pd.DataFrame  # cells_frame(selected)
    filters: dict[str, list]

    missing_run: str | None = None  # a run id from the URL that the store does not have

    @property
    def run_label(self) -> str:
        return run_label(self.run)


def run_label(run: RunRecord) -> str:
    return f"{run.name} · {run.created_at:%Y-%m-%d %H:%M} · {run.id}"


def default_run(runs: list[RunRecord]) -> RunRecord:
    """What "latest" means: the newest finished run, else the newest run."""
    return next((r for r in runs if r.status == "finished"), runs[0])


def stale_for(run: RunRecord, cells: list[CellRecord], now: datetime | None = None) -> float | None:
    """Seconds since the last sign of life of a ``running`` run when that exceeds
    :data:`STALE_S` (and every cell's timeout), else None."""
    if run.status != "running":
        return None
    now = now or datetime.now(timezone.utc)
    times = [run.created_at, *(t for c in cells for t in (c.started_at, c.finished_at) if t)]
    idle = (now - max(times)).total_seconds()
    timeout = max([float((c.params or {}).get("timeout_s") or 0) for c in cells] or [0.0])
    return idle if idle > max(STALE_S, 2 * timeout) else None


def _ago(seconds: float) -> str:
    hours = seconds / 3600
    return f"{hours / 24:.0f} days" if hours >= 48 else f"{hours:.1f} h"


@dataclass(frozen=True)
class Unavailable:
    """Why there is nothing to show: ``first_run`` (no database / no runs yet) or another
    store problem (e.g. a schema behind this detbench) with its one-line reason."""

    url: str
    reason: str
    first_run: bool


def open_results(url: str) -> Store | Unavailable:
    try:
        store = open_store(url)
    except UserError as exc:
        first = not _exists(url) or "holds no detbench results" in str(exc)
        return Unavailable(url, str(exc), first)
    if store.is_empty():
        return Unavailable(url, f"database {url} has no runs yet", True)
    return store


def _exists(url: str) -> bool:
    try:
        return database_exists(url)
    except UserError:
        return False


def sidebar(url: str, store: Store) -> Context:
    """Render the sidebar filters and return the page context (also kept for the pages)."""
    runs = load_runs(url)
    if not runs:  # deleted since the emptiness check
        load_runs.clear()
        runs = store.list_runs()
    by_id = {r.id: r for r in runs}
    bar = st.sidebar
    bar.markdown("### Filters")
    asked = st.query_params.get("run")
    missing = asked if asked and asked != LATEST and asked not in by_id else None
    if missing:  # a shared link to a run this store doesn't have: say so, show the default
        st.session_state.pop("run", None)
        del st.query_params["run"]
    # no format_func on URL-bound widgets: the URL holds the displayed option text
    run_id = bar.selectbox("Run", [LATEST, *by_id], key="run", bind="query-params",
                           help="newest first; 'latest' is the newest finished run. Every choice "
                                "is kept in the URL, so a view can be shared; pick a run id to pin "
                                "it. The runs table on Overview lists GPU and caveats of each run.")
    run = default_run(runs) if run_id == LATEST else by_id[run_id]
    if missing:
        bar.warning(f"Run `{missing}` from the link is not in this store; showing "
                    f"{'the latest finished run' if run.status == 'finished' else 'the latest run'}.")
    cells = load_cells(url, run.id)
    hw = report.hardware(run, cells)
    flags = [f"⚠ random weights ({len(rnd)})" for rnd in [report.random_weights(cells)] if rnd]
    flags += [f"⚠ {len(u)} unstable" for u in [report.unstable(cells)] if u]
    bar.caption(f"**{run.name}** · {run.created_at:%Y-%m-%d %H:%M} UTC · {run.status}  \n"
                f"{hw['gpu'] or 'CPU only'}" + (f" · driver {hw['driver']}" if hw["gpu"] and hw["driver"] else "")
                + ("  \n" + " · ".join(flags) if flags else ""))
    stale = stale_for(run, cells)
    if stale:
        bar.warning(f"Stale: marked running but nothing happened for {_ago(stale)}.")
    filters: dict[str, list] = {}
    for name in FILTERS:
        options = sorted({getattr(c, name) for c in cells})
        if name in st.session_state:  # values of another run's cells would be invalid here
            st.session_state[name] = [v for v in st.session_state[name] if v in options]
        filters[name] = bar.multiselect(name.capitalize(), options, key=name, bind="query-params",
                                        placeholder="all")
    selected = [c for c in cells
                if all(not vals or getattr(c, name) in vals for name, vals in filters.items())]
    bar.divider()
    if bar.button("Reload results", help="re-read the store (data is cached for a few seconds)"):
        st.cache_data.clear()
        st.rerun()
    bar.caption(f"store `{url}` (read-only)")
    ctx = Context(url, store, runs, run, cells, selected, cells_frame(selected, cells), filters,
                  missing)
    st.session_state[_STATE] = ctx
    return ctx


def current() -> Context:
    """The context the app built for this rerun (pages call this)."""
    return st.session_state[_STATE]


def choice(label: str, options: list, key: str, *, multi: bool = False, container: Any = None,
           **kw: Any) -> Any:
    """A selectbox (or multiselect) bound to the query parameter ``key``; an invalid value
    from an earlier view falls back to the default instead of raising.  Options should be
    short strings: the URL holds them as shown (so no ``format_func``)."""
    where = container or st
    if key in st.session_state:
        value = st.session_state[key]
        if multi:
            st.session_state[key] = [v for v in value if v in options]
        elif value not in options:
            del st.session_state[key]
    widget = where.multiselect if multi else where.selectbox
    return widget(label, options, key=key, bind="query-params", **kw)


def filter_summary(ctx: Context) -> str:
    active = [f"{k} ∈ {{{', '.join(map(str, v))}}}" for k, v in ctx.filters.items() if v]
    shown = f"{len(ctx.selected)} of {len(ctx.cells)} cells"
    return f"{shown}" + (f" (filtered: {'; '.join(active)})" if active else "")


def header(title: str, ctx: Context) -> None:
    """Title, then the run in one line (name, id, status, hardware, versions) and its caveats."""
    st.title(title)
    hw = report.hardware(ctx.run, ctx.cells)
    machine = hw["gpu"] or (f"CPU only ({hw['cpu']})" if hw["cpu"] else "hardware not recorded")
    if hw["gpu"] and hw["driver"]:
        machine += f" · driver {hw['driver']}"
    st.caption(f"run **{ctx.run.name}** `{ctx.run.id}` · {ctx.run.status} · "
               f"{ctx.run.created_at:%Y-%m-%d %H:%M} UTC · **{machine}** · "
               f"{report.versions(ctx.run, ctx.cells) or 'versions not recorded'} · "
               f"{filter_summary(ctx)}")
    if ctx.missing_run:
        st.warning(f"Run `{ctx.missing_run}` (from the link) does not exist in this store: "
                   f"showing `{ctx.run.id}` instead.")
    stale = stale_for(ctx.run, ctx.cells)
    if stale:
        st.warning(f"This run is marked **running** but no cell started or finished for "
                   f"{_ago(stale)}: its process probably died. `detbench run --resume {ctx.run.id}` "
                   "finishes the missing cells.")
    rotated = [c for c in ctx.selected if report.is_rotated(c)]
    if rotated:  # #19: the same AP fields, another metric
        st.info(f"**Rotated boxes** in {len(rotated)} cell(s): their **AP / AP50 are rotated-IoU "
                "AP** (COCO-style 0.50:0.95 / 0.50 on rotated IoU, 101-point), not COCO bbox AP; "
                "the cells table adds DOTA's mAP50 (VOC-07 11-point and area).")
    rnd = report.random_weights(ctx.selected)
    if rnd:
        st.warning(f"**Random weights** in {len(rnd)} cell(s) "
                   f"({', '.join(sorted({c.model for c in rnd}))}): their AP is meaningless "
                   "(≈ 0); compare only latency.")
    shaky = report.unstable(ctx.selected)
    if shaky:
        st.warning(f"**Unstable latency** in {len(shaky)} of {len(ctx.selected)} cells "
                   "(coefficient of variation above `timing.cv_warn`: busy host, throttling or "
                   "unlocked clocks) — red outline in charts, ⚠ in tables. Their medians are "
                   "still usable, the tails are not.")

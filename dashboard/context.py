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
from typing import Any

import pandas as pd
import streamlit as st

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

    @property
    def run_label(self) -> str:
        return run_label(self.run)


def run_label(run: RunRecord) -> str:
    return f"{run.name} · {run.created_at:%Y-%m-%d %H:%M} · {run.id}"


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
    # no format_func on URL-bound widgets: the URL holds the displayed option text
    run_id = bar.selectbox("Run", [LATEST, *by_id], key="run", bind="query-params",
                           help="newest first. Every choice is kept in the URL, so a view can be "
                                "shared; pick a run id to pin it (else: whichever is latest)")
    run = runs[0] if run_id == LATEST else by_id[run_id]
    bar.caption(f"**{run.name}** · {run.created_at:%Y-%m-%d %H:%M} UTC · {run.status}")
    cells = load_cells(url, run.id)
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
    ctx = Context(url, store, runs, run, cells, selected, cells_frame(selected), filters)
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
    st.title(title)
    st.caption(f"run **{ctx.run.name}** `{ctx.run.id}` · {ctx.run.status} · {filter_summary(ctx)}")

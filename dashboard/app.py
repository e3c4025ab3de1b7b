"""detbench dashboard: ``detbench dashboard [--db URL] [--port N]``, or directly
``streamlit run dashboard/app.py -- --db sqlite:///results.db``.

Read-only on the results store, through ``harness.store.Store`` only.
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # streamlit puts only dashboard/ on the path
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from dashboard import context  # noqa: E402

PAGES = Path(__file__).parent / "views"  # not pages/: that name turns on Streamlit's legacy auto-pages
ICON = Path(__file__).parent / "static" / "icon.png"  # a local file: no icon fetched from the internet
PAGE_SPECS = (("overview.py", "Overview", ":material/grid_view:"),
              ("compare.py", "Compare", ":material/scatter_plot:"),
              ("trends.py", "Trends", ":material/trending_up:"),
              ("alignment.py", "Alignment", ":material/compare:"),
              ("details.py", "Run details", ":material/info:"),
              ("export.py", "Export", ":material/download:"))


#: compact static tables (one line per row, scrolling sideways when the window is narrow) and a
#: narrower sidebar below 1000 px, so the pages stay usable at 800 px
STYLE = """<style>
.detbench-scroll { overflow-x: auto; margin-bottom: 0.8rem; }
p.detbench-batch { margin: 0.2rem 0 0.35rem 0; }
table.detbench-headline { border-collapse: collapse; font-size: 0.875rem; font-variant-numeric: tabular-nums; }
table.detbench-headline th { text-align: left; font-weight: 400; color: rgba(49, 51, 63, 0.6); }
table.detbench-headline :is(th, td) { border: 1px solid rgba(49, 51, 63, 0.1); padding: 0.3rem 0.55rem;
  white-space: nowrap; }
table.detbench-headline td.swatch { width: 0.8rem; padding: 0; }
table.detbench-headline tr.best td:not(.swatch) { background: #dafbe1; font-weight: 600; }
[data-testid="stTable"], [data-testid="stTable"] > div { overflow-x: auto !important; }
[data-testid="stTableStyledTable"] { table-layout: auto !important; width: auto !important; }
[data-testid="stTable"] :is(th, td), [data-testid="stTable"] :is(th, td) * {
  white-space: nowrap !important; word-break: normal !important; }
[data-testid="stTable"] :is(th, td) { padding: 0.3rem 0.5rem !important; }
@media (max-width: 1000px) {
  section[data-testid="stSidebar"] { width: 210px !important; min-width: 210px !important; }
  [data-testid="stMainBlockContainer"] { padding-left: 1rem; padding-right: 1rem; }
}
</style>"""


def welcome(problem: context.Unavailable) -> None:
    st.title("detbench dashboard")
    if problem.first_run:
        st.info(f"**No benchmark results yet.** Run a matrix to fill the store, e.g.\n\n"
                f"```bash\n{context.FIRST_RUN}\n```\n\nthen reload this page "
                f"(start the dashboard with `--db URL` if your results live elsewhere).")
    else:
        st.warning("**The results store can't be read.**")
    st.caption(f"store `{problem.url}` — {problem.reason}")


def main() -> None:
    st.set_page_config(page_title="detbench", page_icon=str(ICON), layout="wide")
    st.html(STYLE)
    url = context.db_url()
    opened = context.open_results(url)
    if isinstance(opened, context.Unavailable):
        st.navigation([st.Page(lambda: welcome(opened), title="Welcome", url_path="welcome",
                               icon=":material/waving_hand:")], position="hidden").run()
        return
    context.sidebar(url, opened)
    pages = [st.Page(PAGES / name, title=title, icon=icon, default=i == 0)
             for i, (name, title, icon) in enumerate(PAGE_SPECS)]
    st.navigation(pages, position="top").run()


main()

"""The detbench results dashboard (Streamlit): ``detbench dashboard [--db URL] [--port N]``.

``app.py`` is the entry point (sidebar filters, navigation, page icon from
``static/``); ``views/`` holds one small module per page; ``context.py`` opens the
store read-only, keeps the filters in the URL and writes the run header;
``headline.py`` is the headline block of Overview and Compare; ``tables.py`` builds
tables through ``harness.report`` and the download buttons; ``analysis.py`` (cells
frame with speed-up/ΔAP, Pareto frontier, change points, alignment summary) and
``charts.py`` (Plotly figures, the fixed colour per backend · precision) are plain
functions with no Streamlit.
The dashboard reads results only through :class:`harness.store.Store`.
"""

"""The detbench results dashboard (Streamlit): ``detbench dashboard [--db URL] [--port N]``.

``app.py`` is the entry point (sidebar filters, navigation); ``pages/`` holds one
small module per page; ``context.py`` opens the store read-only and keeps the
filters in the URL; ``analysis.py`` (Pareto frontier, change points, alignment
lookup) and ``charts.py`` (Plotly figures) are plain functions with no Streamlit.
The dashboard reads results only through :class:`harness.store.Store`.
"""

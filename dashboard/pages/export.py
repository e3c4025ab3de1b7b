"""Export: any table of the dashboard as CSV, Markdown or HTML."""
import streamlit as st

from dashboard import context, tables


def main() -> None:
    ctx = context.current()
    context.header("Export", ctx)
    names = list(tables.TABLES)
    name = context.choice("Table", names, "table", format_func=lambda n: tables.TABLES[n][0])
    label, build = tables.TABLES[name]
    columns, rows = build(ctx)
    st.caption(f"{len(rows)} rows · the sidebar filters apply (except to “All runs”). "
               "The same row shapes as `detbench export`.")
    tables.download_buttons(name, columns, rows, title=f"detbench {ctx.run.id}: {label}",
                            stem=ctx.run.id)
    tables.show(columns, rows)


main()

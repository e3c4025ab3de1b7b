"""Export: any table of the dashboard as CSV, Markdown or HTML."""
import streamlit as st

from dashboard import context, tables


def main() -> None:
    ctx = context.current()
    context.header("Export", ctx)
    names = list(tables.TABLES)
    name = context.choice("Table", names, "table")
    label, build = tables.TABLES[name]
    columns, rows = build(ctx)
    st.caption(f"**{label}** · {len(rows)} rows · the sidebar filters apply (except to the runs "
               "table) · `cells` has the row shape of `detbench export`.")
    tables.download_buttons(name, columns, rows, title=f"detbench {ctx.run.id}: {label}",
                            stem=ctx.run.id)
    tables.show(columns, rows)


main()

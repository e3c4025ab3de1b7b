"""Export: any table of the dashboard as CSV, Markdown, HTML or XLSX, with the run header."""
import streamlit as st

from harness import report

from dashboard import context, tables


def main() -> None:
    ctx = context.current()
    context.header("Export", ctx)
    names = list(tables.TABLES)
    name = context.choice("Table", names, "table")
    label, build = tables.TABLES[name]
    columns, rows = build(ctx)
    st.caption(f"**{label}** · {len(rows)} rows · the sidebar filters apply (except to the runs "
               "table) · `cells` has the row shape of `detbench export` · every file starts with "
               "the run header (name, hardware, dates, versions, caveats).")
    header = report.run_header(ctx.run, ctx.cells)
    tables.download_buttons(name, columns, rows, title=f"detbench {ctx.run.id}: {label}",
                            stem=ctx.run.id, header=header)
    with st.expander("run header", expanded=False):
        st.table({"field": list(header), "value": list(header.values())})
    tables.show(columns, rows)


main()

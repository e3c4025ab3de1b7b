"""The ``detbench`` command: thin adapters over plain functions.

Every user error is a :class:`~harness.errors.UserError`, printed as one line
with exit code 2; cells that failed give exit code 3; ``check`` gives 4 on a confirmed regression;
bugs keep their traceback.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
from pathlib import Path

from harness.errors import UserError

DEFAULT_DB = "sqlite:///results.db"
EXIT_OK, EXIT_USER, EXIT_FAILED_CELLS, EXIT_REGRESSION = 0, 2, 3, 4


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="detbench", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def cmd(name, help_, db=True):  # only commands that open the store take --db
        sp = sub.add_parser(name, help=help_)
        if db:
            sp.add_argument("--db", default=os.environ.get("DETBENCH_DB", DEFAULT_DB),
                            help=f"SQLAlchemy URL of the results store (default {DEFAULT_DB})")
        return sp

    sp = cmd("plan", "print the cells a matrix expands to; runs nothing", db=False)
    sp.add_argument("matrix")
    sp.add_argument("--json", action="store_true")
    sp = cmd("run", "run every cell of a matrix (or resume a run)")
    sp.add_argument("matrix", nargs="?")
    sp.add_argument("--resume", metavar="RUN_ID", help="finish the unfinished cells of a run")
    sp.add_argument("--force", action="store_true", help="with --resume: rerun finished cells too")
    sp.add_argument("--cache-dir", default=os.environ.get("DETBENCH_CACHE", ".detbench"))
    sp.add_argument("--executor", choices=("local", "ray"), default="local",
                    help="where cells run: here, one after another (local), or as Ray tasks (ray)")
    sp.add_argument("--address", help="with --executor ray: auto (a cluster this machine belongs to), "
                    "ray://HOST:10001 or HOST:6379; default: start Ray on this machine")
    sp.add_argument("--cpus-per-cell", type=float, default=1.0,
                    help="with --executor ray: CPUs each cell reserves (CPU cells' threads)")
    sp = cmd("list", "runs in the store")
    sp.add_argument("--json", action="store_true")
    sp = cmd("show", "every cell of a run with its metrics")
    sp.add_argument("run_id")
    sp.add_argument("--json", action="store_true")
    sp = cmd("export", "a run's cells as CSV, Markdown, HTML, JSON or XLSX, with the run header")
    sp.add_argument("run_id")
    sp.add_argument("--format", choices=("csv", "md", "html", "json", "xlsx"), default="csv")
    sp.add_argument("-o", "--output")
    sp = cmd("compare", "why each cell's detections differ from its PyTorch fp32 reference")
    sp.add_argument("run_id")
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--recompute", action="store_true", help="redo the analysis from the cell files")
    sp = cmd("check", "judge a run against its series' history: exit 4 on a confirmed regression")
    sp.add_argument("run_id", nargs="?", default="latest")
    group = sp.add_mutually_exclusive_group()
    group.add_argument("--baseline", metavar="RUN", help="compare with this one run instead")
    group.add_argument("--history", metavar="N", type=int, help="earlier runs per series "
                       "(default: the matrix's check.history, 30)")
    sp.add_argument("--format", choices=("text", "md", "json", "junit"), default="text")
    sp.add_argument("-o", "--output", help="write the report here (exit code unchanged)")
    sp = cmd("ack", "acknowledge an expected change: the cells' series restart at RUN")
    sp.add_argument("run_id")
    sp.add_argument("--cell", action="append", metavar="GLOB",
                    help="cell keys to acknowledge (fnmatch pattern; repeatable; default all)")
    sp.add_argument("--reason", required=True, help="why the change is expected")
    sp.add_argument("--author", default=os.environ.get("USER"))
    sp = cmd("synth", "generate a synthetic COCO-format dataset", db=False)
    sp.add_argument("--out", required=True)
    sp.add_argument("--images", type=int, default=100)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--size", type=int, default=None,
                    help="image side in pixels (default 320; 256 with --rotated)")
    sp.add_argument("--max-objects", type=int, default=6)
    sp.add_argument("--rotated", action="store_true",
                    help="rotated shapes with rotated ground truth (rbox, DOTA labelTxt/; le90)")
    cmd("models", "the model names detbench knows", db=False)
    sp = cmd("dashboard", "the results dashboard (Streamlit, read-only) on http://127.0.0.1:PORT")
    sp.add_argument("--port", type=int, default=8501)
    sp = cmd("db", "store maintenance")
    sp.add_argument("action", choices=("upgrade", "status"))
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except UserError as exc:
        print(f"detbench: error: {exc}", file=sys.stderr)
        return EXIT_USER
    except KeyboardInterrupt:  # before a run exists (cmd_run reports its own interruptions)
        print("detbench: interrupted", file=sys.stderr)
        return 130


def _store(args, **kw):
    from harness.store import Store

    return Store(args.db, **kw)


def cmd_plan(args) -> int:
    from harness.cli_views import print_plan
    from harness.models import onnx_source
    from harness.runner.orchestrator import plan

    planned = plan(args.matrix)
    m, cells, contracts = planned.matrix, planned.cells, planned.contracts
    if args.json:
        print(json.dumps({"matrix": args.matrix, "backends": _availability(),
                          "cells": [_plan_entry(c) for c in cells],
                          "onnx_models": {name: {"contract": c.as_dict(), "inferred": c.inferred}
                                          for name, c in contracts.items()}}, indent=2))
    else:
        print_plan(m, cells, _availability())
        onnx_source.print_contracts(contracts)
        _print_ultralytics(m)
    return EXIT_OK


def _print_ultralytics(m) -> None:
    from harness.models import ultralytics_source as us

    for spec in m.models:
        if spec.ultralytics is not None:
            python = us.interpreter(spec.ultralytics.model_dump())
            version = us.exporter_version(python)
            how = f"ultralytics {version}" if version else f"NOT INSTALLED for {python}: its cells will be skipped"
            print(f"ultralytics model {spec.name}: {spec.ultralytics.model}, exported to ONNX inside each cell "
                  f"by {how}; then run as yolo_raw v8 (letterbox 114, RGB, /255, names from the export)")


def _plan_entry(cell: dict) -> dict:
    from harness.matrix import AXES

    return {"key": cell["key"], **{k: cell[k] for k in AXES}, "skip_reason": cell["skip_reason"],
            "box_type": cell.get("box_type", "horizontal")}


def _availability() -> dict:
    from harness.backends import BACKENDS

    return {name: dict(zip(("available", "reason"), b.available())) for name, b in BACKENDS.items()}


def cmd_run(args) -> int:
    from harness.cli_views import RunProgress, print_summary
    from harness.runner import orchestrator
    from harness.store.engine import shown

    if bool(args.matrix) == bool(args.resume):
        raise UserError("give a matrix file to start a run, or --resume RUN_ID to finish one")
    if args.force and not args.resume:
        raise UserError("--force reruns the cells of an existing run: use it with --resume RUN_ID")
    # the matrix (ONNX models included) is validated before the store is opened: an invalid one
    # creates no database
    planned = orchestrator.plan(args.matrix) if args.matrix else None
    executor = _executor(args)
    store = _store(args)
    cache = Path(args.cache_dir).resolve()
    if args.resume:
        run_id = store.get_run(args.resume).id
    else:
        run_id = orchestrator.create_run(store, args.matrix, cache, planned)
    received: list[int] = []
    try:
        with _sigterm_as_interrupt(received), RunProgress() as progress:
            def on_event(kind: str, data: dict) -> None:
                if kind == "start":  # printed once the run's lock is held: a refusal is one line
                    print(f"run {run_id}  (store {shown(args.db)})", file=sys.stderr)
                progress.event(kind, data)

            orchestrator.execute(store, run_id, cache, force=args.force, on_event=on_event,
                                 executor=executor)
    except KeyboardInterrupt:
        how = "terminated (SIGTERM)" if received else "interrupted"
        print(f"detbench: {how}; run {run_id} is marked interrupted and its unfinished cells pending: "
              f"resume with `detbench run --resume {run_id} --db {shown(args.db)}`", file=sys.stderr)
        return 128 + (signal.SIGTERM if received else signal.SIGINT)
    cells = store.cells(run_id)
    print_summary(store.get_run(run_id), cells)
    return EXIT_FAILED_CELLS if any(c.status == "failed" for c in cells) else EXIT_OK


@contextlib.contextmanager
def _sigterm_as_interrupt(received: list[int]):
    """SIGTERM (a scheduler's stop, `kill`) is handled like Ctrl-C; ``received`` collects it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, _frame):
        received.append(signum)
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _executor(args):
    """The Ray executor, connected (after checking the store answers, so nothing is written
    when either is unreachable); None for the local executor."""
    from harness.runner import executors
    from harness.store.engine import check_reachable

    if args.executor == "ray":
        check_reachable(args.db)
    return executors.make(args.executor, address=args.address, cpus_per_cell=args.cpus_per_cell)


def cmd_list(args) -> int:
    from harness.cli_views import print_runs

    runs = _store(args, readonly=True).list_runs()
    if args.json:
        print(json.dumps([r.to_dict() for r in runs], indent=2, default=str))
    else:
        print_runs(runs)
    return EXIT_OK


def cmd_show(args) -> int:
    from harness import report
    from harness.cli_views import print_summary

    store = _store(args, readonly=True)
    run = store.get_run(args.run_id)
    cells = store.cells(run.id)
    if args.json:
        print(report.to_json(run, cells))
    else:
        print_summary(run, cells)
    return EXIT_OK


def cmd_export(args) -> int:
    from harness import report

    if args.format == "xlsx" and not args.output:
        raise UserError("--format xlsx writes a binary workbook: give a file with -o FILE.xlsx")
    store = _store(args, readonly=True)
    run = store.get_run(args.run_id)
    cells = store.cells(run.id)
    alignments = store.alignments(run.id) if args.format == "json" else None
    out = report.export_run(args.format, run, cells, alignments)
    if args.output:
        from harness.fileio import write_output

        write_output(args.output, out if isinstance(out, bytes) else out.encode(), what="-o")
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(out)
    return EXIT_OK


def cmd_compare(args) -> int:
    from harness.runner import compare

    store = _store(args)
    run = store.get_run(args.run_id)
    records = compare.alignments_for(store, run.id, recompute=args.recompute)
    if args.json:
        print(compare.to_json(run.id, records))
    else:
        compare.print_table(run.id, records)
    return EXIT_OK


def cmd_check(args) -> int:
    from harness.check.render import FORMATS
    from harness.check.verdict import check

    report = check(_store(args, readonly=True), args.run_id, baseline=args.baseline,
                   history=args.history)
    text = FORMATS[args.format](report)
    if args.output:
        from harness.fileio import write_output

        write_output(args.output, text.encode(), what="-o")
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return report.exit_code


def cmd_ack(args) -> int:
    from fnmatch import fnmatchcase

    from harness.check.series import series_id

    if not args.reason.strip():
        raise UserError("--reason is empty: say why the change is expected (it is shown on "
                        "the Trends page and in later checks)")
    store = _store(args, readonly=True)
    run = store.get_run(args.run_id)
    cells = [c for c in store.cells(run.id) if not args.cell
             or any(fnmatchcase(c.key, pattern) for pattern in args.cell)]
    entries = [{"cell_key": c.key, "series": series_id(c, run.environment)} for c in cells]
    entries = [e for e in entries if e["series"]]
    if not entries:
        wanted = ", ".join(args.cell or ["*"])
        raise UserError(f"no finished cell of run {run.id} matches --cell {wanted}: "
                        f"`detbench show {run.id}` lists its cell keys")
    store.close()
    acks = _store(args).add_acks(run.id, entries, metric="all", reason=args.reason.strip(),
                                 author=args.author)
    print(f"acknowledged {len(acks)} cell(s) at run {run.id}: {args.reason.strip()}")
    return EXIT_OK


def cmd_synth(args) -> int:
    if args.rotated:
        from harness.data.synth_rotated import generate
    else:
        from harness.data.synth import generate

    if args.images <= 0:
        raise UserError(f"--images must be positive, got {args.images}")
    size = args.size if args.size is not None else (256 if args.rotated else 320)
    min_size = 32 if args.rotated else 16
    if size < min_size:
        raise UserError(f"--size must be at least {min_size}, got {size}")
    if args.max_objects < 1:
        raise UserError(f"--max-objects must be at least 1, got {args.max_objects}")
    ann = generate(args.out, images=args.images, seed=args.seed, size=size,
                   max_objects=args.max_objects)
    extra = f" (DOTA labels in {Path(ann).parent / 'labelTxt'}/)" if args.rotated else ""
    print(f"wrote {args.images} images and {ann}{extra}")
    return EXIT_OK


def cmd_models(args) -> int:
    from harness.models.table import MODELS, ROTATED_MODELS

    for name, cfg in MODELS.items():
        print(f"{name:16s} mmyolo::{cfg}")
    for name, cfg in ROTATED_MODELS.items():  # needs mmrotate (scripts/install.sh) and a rotated dataset
        print(f"{name:16s} mmyolo::{cfg}  (rotated)")
    return EXIT_OK


def cmd_db(args) -> int:
    from harness import store as st

    if args.action == "upgrade":
        st.upgrade(args.db)
    print(f"{args.db}: revision {st.current_revision(args.db)} (head {st.head_revision()})")
    return EXIT_OK


def cmd_dashboard(args) -> int:
    from harness.dashboard_cli import launch

    return launch(args.db, args.port)


COMMANDS = {"check": cmd_check, "ack": cmd_ack, "compare": cmd_compare, "plan": cmd_plan, "run": cmd_run, "list": cmd_list, "show": cmd_show,
            "export": cmd_export, "synth": cmd_synth, "models": cmd_models, "db": cmd_db,
            "dashboard": cmd_dashboard}

if __name__ == "__main__":
    sys.exit(main())

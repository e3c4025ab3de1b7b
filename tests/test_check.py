"""detbench check / ack on synthetic stores with known histories (no GPU, no models)."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from junitparser import JUnitXml

from harness import cli
from harness.check import detect, render
from harness.check.verdict import check
from harness.store import Store

REPO = Path(__file__).resolve().parents[1]
KEYS = ("yolov8_n/pytorch/fp32/b1/s640/cuda/nms-none", "yolov8_n/onnxruntime/int8/b1/s640/cuda/nms-none")
MATRIX = "name: nightly\ncheck: {min_magnitude: 0.05}\n"


def _plan(key, cuda_graph=False, rotated=False):
    model, backend, precision, b, s, device, nms = key.split("/")
    params = {"timing": {"cuda_graph": cuda_graph, "e2e": False}, "eval": {"score_thr": None},
              "dataset": {"limit": None, "synth": {"images": 10, "seed": 2, "size": 320}},
              **({"box_type": "rotated"} if rotated else {})}
    return dict(key=key, model=model, backend=backend, precision=precision, batch=int(b[1:]),
                imgsz=int(s[1:]), device=device, nms=nms.removeprefix("nms-"), params=params)


def _provenance(driver="580.1"):
    return {"gpu_name": "NVIDIA H200", "driver": driver, "torch": "2.11",
            "checkpoint_hash": "c" * 64, "annotations_hash": "a" * 64, "eval": {"score_thr": 0.001}}


def add_run(store, nights, *, status="ok", ap=0.6, matrix=MATRIX, cuda_graph=False,
            driver="580.1", samples=True, seed=0, keys=KEYS, git_sha="abc", rotated=False):
    """One run; ``nights`` is the latency level (ms) of every cell."""
    cells = [_plan(k, cuda_graph, rotated) for k in keys]
    run_id = store.create_run(name="nightly", matrix_path=None, matrix_hash="h", matrix_yaml=matrix,
                              git_sha=git_sha, detbench_version="0.1.0",
                              environment={"packages": {"torch": "2.11"}, "cpu": "x"}, cells=cells)
    rng = np.random.default_rng(seed)
    for cell in store.cells(run_id):
        values = nights * (1 + 0.01 * rng.standard_normal(200))
        if status == "ok":
            kind = {"box_type": "rotated"} if rotated else {}
            store.record_result(cell.id, status="ok", metrics={"AP": ap, "AP50": ap + 0.2, **kind},
                                latency={"median_ms": float(np.median(values))},
                                provenance=_provenance(driver),
                                samples={"model": values.tolist()} if samples else None)
        else:
            store.record_result(cell.id, status="failed", stage="build", error="boom")
    store.finish_run(run_id, "finished")
    return run_id


@pytest.fixture
def store(tmp_path):
    with Store(f"sqlite:///{tmp_path / 'r.db'}") as s:
        yield s


def _states(report, metric="latency"):
    return {f.cell: f.state for f in report.findings if f.metric == metric}


def test_steady_history_is_ok_and_a_run_against_itself_has_no_regression(store):
    ids = [add_run(store, 5.0, seed=i) for i in range(8)]
    report = check(store)
    assert report.exit_code == 0
    assert set(_states(report).values()) == {"ok"} and set(_states(report, "AP").values()) == {"ok"}
    itself = check(store, ids[-1], baseline=ids[-1])
    assert itself.exit_code == 0
    assert {f.state for f in itself.findings} == {"ok"}


def test_step_is_suspect_after_one_night_confirmed_after_two(store):
    for i in range(8):
        add_run(store, 5.0, seed=i)
    add_run(store, 5.5, seed=100, driver="590.2")
    first = check(store)
    assert set(_states(first).values()) == {"suspect"} and first.exit_code == 0
    bad = add_run(store, 5.5, seed=101, driver="590.2")
    second = check(store)
    assert set(_states(second).values()) == {"confirmed"} and second.exit_code == 4
    latency = [f for f in second.findings if f.metric == "latency"][0]
    assert latency.first_bad_run == store.list_runs()[1].id != bad
    assert latency.change == pytest.approx(0.10, abs=0.01)
    assert {"field": "driver", "before": "580.1", "after": "590.2"} in latency.provenance_diff
    md = render.to_markdown(second)
    assert "confirmed" in md and "driver: 580.1 → 590.2" in md and "+10." in md


def test_regression_stays_confirmed_until_acknowledged(store, capsys):
    for i in range(8):
        add_run(store, 5.0, seed=i)
    step = [add_run(store, 5.5, seed=100 + i) for i in range(6)]
    assert check(store).exit_code == 4  # six nights later: still red
    url = store.url
    assert cli.main(["ack", step[0], "--reason", "new driver", "--db", url]) == 0
    assert "acknowledged 2 cell(s)" in capsys.readouterr().out
    acks = store.acks()
    assert len(acks) == 2 and acks[0].reason == "new driver" and acks[0].run_id == step[0]
    report = check(store)
    assert report.exit_code == 0 and set(_states(report).values()) == {"ok"}


def test_accuracy_drop_beyond_tolerance(store):
    for i in range(3):
        add_run(store, 5.0, seed=i)
    add_run(store, 5.0, seed=10, ap=0.597)  # -0.003: beyond fp32's 0.002, within int8's 0.005
    states = _states(check(store), "AP")
    assert states == {KEYS[0]: "suspect", KEYS[1]: "ok"}
    add_run(store, 5.0, seed=11, ap=0.597)
    report = check(store)
    assert _states(report, "AP") == {KEYS[0]: "confirmed", KEYS[1]: "ok"} and report.exit_code == 4


def test_matrix_sets_tolerance(store):
    matrix = MATRIX + "  ap_tolerance: {fp32: 0.01, int8: 0.01}\n"
    matrix = "name: nightly\ncheck:\n  ap_tolerance: {fp32: 0.01, int8: 0.01}\n"
    for i in range(3):
        add_run(store, 5.0, seed=i, matrix=matrix)
    for i in range(2):
        add_run(store, 5.0, seed=10 + i, ap=0.597, matrix=matrix)
    assert set(_states(check(store), "AP").values()) == {"ok"}


def test_status_regression_new_cells_and_insufficient_data(store):
    add_run(store, 5.0, seed=0, keys=KEYS[:1])
    add_run(store, 5.0, seed=1)
    report = check(store)
    assert _states(report, "status")[KEYS[1]] == "new"
    assert _states(report)[KEYS[0]] == "insufficient data" and report.exit_code == 0
    add_run(store, 5.0, status="failed")
    failed = check(store)
    assert _states(failed, "status") == {KEYS[0]: "confirmed", KEYS[1]: "confirmed"}
    assert failed.exit_code == 4
    add_run(store, 5.0, status="failed")
    assert set(_states(check(store), "status").values()) == {"failing"}


def test_eager_and_cuda_graph_runs_are_different_series(store):
    for i in range(6):
        add_run(store, 7.94, seed=i)
    add_run(store, 1.18, seed=50, cuda_graph=True)
    report = check(store)
    assert set(_states(report, "status").values()) == {"new"}
    assert report.exit_code == 0 and not _states(report)
    for i in range(6):
        add_run(store, 7.94, seed=60 + i)  # the eager series continues untouched
    assert set(_states(check(store)).values()) == {"ok"}


def test_run_without_samples_is_skipped_with_a_warning(store):
    for i in range(6):
        add_run(store, 5.0, seed=i)
    broken = add_run(store, 5.0, seed=9, samples=False)
    add_run(store, 5.0, seed=10)
    report = check(store)
    assert report.exit_code == 0
    assert any(broken in w and "no model latency samples" in w for w in report.warnings)


def test_baseline_from_another_matrix_lists_cells_without_series(store):
    other = add_run(store, 5.0, keys=("yolov8_s/pytorch/fp32/b1/s640/cuda/nms-none",))
    add_run(store, 5.0)
    report = check(store, baseline=other)
    assert sorted(report.no_series) == sorted(KEYS)
    assert "no series in the baseline run" in render.to_text(report)


def test_baseline_mode_two_run_test(store):
    base = add_run(store, 5.0, seed=1)
    add_run(store, 5.6, seed=2)
    report = check(store, baseline=base)
    assert set(_states(report).values()) == {"confirmed"} and report.exit_code == 4
    finding = [f for f in report.findings if f.metric == "latency"][0]
    assert finding.pvalue < 1e-6 and finding.two_run["ci_low"] > 1.05


def test_junit_output_parses(store, tmp_path):
    for i in range(6):
        add_run(store, 5.0, seed=i)
    for i in range(2):
        add_run(store, 5.6, seed=20 + i)
    report = check(store)
    path = tmp_path / "check.xml"
    path.write_text(render.to_junit(report))
    xml = JUnitXml.fromfile(str(path))
    cases = [case for suite in xml for case in suite]
    assert len(cases) == len(report.findings)
    failed = {(c.classname, c.name) for c in cases if not c.is_passed}
    assert failed == {(k, "latency") for k in KEYS}
    assert xml.failures == 2 and xml.tests == len(report.findings)


def test_cli_formats_and_exit_codes(store, tmp_path):
    url = store.url
    for i in range(6):
        add_run(store, 5.0, seed=i)
    assert cli.main(["check", "--db", url]) == 0
    out = tmp_path / "r.json"
    assert cli.main(["check", "latest", "--format", "json", "-o", str(out), "--db", url]) == 0
    data = json.loads(out.read_text())
    assert data["exit_code"] == 0 and data["mode"] == "history" and data["findings"]
    for i in range(2):
        add_run(store, 6.0, seed=30 + i)
    md = tmp_path / "r.md"
    assert cli.main(["check", "--format", "md", "-o", str(md), "--db", url]) == 4
    assert md.read_text().startswith("## detbench check: ❌ confirmed regression")
    assert cli.main(["check", "--history", "10", "--db", url]) == 4
    assert cli.main(["check", "--history", "3", "--db", url]) == 0  # too little: insufficient data


@pytest.mark.parametrize("argv, message", [
    (["check", "r2099"], "no run 'r2099'"),
    (["check", "--baseline", "nope"], "no run 'nope'"),
    (["check", "--history", "1"], "--history must be at least 2"),
    (["ack", "latest", "--reason", " "], "--reason is empty"),
    (["ack", "latest", "--reason", "x", "--cell", "nothing*"], "no finished cell"),
])
def test_bad_input_is_one_line_exit_2(store, argv, message):
    add_run(store, 5.0)
    proc = subprocess.run([sys.executable, "-m", "harness.cli", *argv, "--db", store.url],
                          cwd=REPO, capture_output=True, text=True,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]


def test_unknown_database_writes_nothing(tmp_path):
    missing = tmp_path / "none.db"
    assert cli.main(["check", "--db", f"sqlite:///{missing}"]) == 2
    assert not missing.exists()


def test_detector_rule_units():
    flat = [1.0, 1.01, 0.99, 1.0, 1.02, 0.98, 1.0]
    assert detect.latency_verdict(flat).state == "ok"
    assert detect.latency_verdict(flat[:3]).state == "insufficient data"
    assert detect.latency_verdict(flat + [1.03]).state == "ok"        # below 5 %: not a regression
    assert detect.latency_verdict(flat + [1.2]).state == "suspect"
    assert detect.latency_verdict(flat + [1.2, 1.2]).state == "confirmed"
    assert detect.latency_verdict(flat + [0.8]).state == "improved"
    assert detect.accuracy_verdict([0.6, 0.6, 0.598], 0.002).state == "ok"  # exactly the tolerance


def test_older_run_is_judged_on_the_runs_before_it(store):
    for i in range(8):
        add_run(store, 5.0, seed=i)
    first_bad = add_run(store, 5.5, seed=100)
    add_run(store, 5.5, seed=101)
    assert set(_states(check(store, first_bad)).values()) == {"suspect"}  # not the later night


def test_alignment_matched_pct_and_class_flips(store):
    def run_with(matched, flips, seed):
        run_id = add_run(store, 5.0, seed=seed)
        for cell in store.cells(run_id):
            store.record_alignment(cell.id, {"matched_pct": matched, "class_flips": flips})
        return run_id

    for i in range(3):
        run_with(99.5, 0, i)
    run_with(97.0, 4, 10)
    states = {f.metric: f.state for f in check(store).findings if f.cell == KEYS[0]}
    assert states["matched %"] == "suspect" and states["class flips"] == "suspect"
    run_with(97.0, 4, 11)
    report = check(store)
    flips = [f for f in report.findings if f.cell == KEYS[0] and f.metric == "class flips"][0]
    assert flips.state == "confirmed" and (flips.before, flips.after) == (0, 4)
    assert report.exit_code == 4


def test_junit_has_the_schema_attributes(store):
    import xml.etree.ElementTree as ET

    for i in range(6):
        add_run(store, 5.0, seed=i)
    add_run(store, 5.0, status="failed")
    root = ET.fromstring(render.to_junit(check(store)))
    assert root.tag == "testsuites"
    for suite in root.iter("testsuite"):
        assert {"name", "tests", "failures", "errors"} <= set(suite.attrib)
        cases = suite.findall("testcase")
        assert int(suite.get("tests")) == len(cases)
        assert int(suite.get("failures")) == sum(c.find("failure") is not None for c in cases) == 2
        for case in cases:
            assert case.get("name") and case.get("classname")
            failure = case.find("failure")
            if failure is not None:
                assert failure.get("message") and "ok -> failed" in failure.get("message")


@pytest.mark.parametrize("check_section, message", [
    ({"min_magnitud": 0.1}, "check.min_magnitud: unknown key 'min_magnitud' — did you mean 'min_magnitude'?"),
    ({"min_magnitude": 2}, "check.min_magnitude: "),
    ({"ap_tolerance": {"int8": -1}}, "ap_tolerance.int8 must be >= 0"),
])
def test_matrix_check_section_errors_name_the_key(check_section, message):
    from harness import matrix as mx
    from harness.errors import UserError

    data = {"models": [{"name": "yolov8_n", "checkpoint": "random"}], "backends": ["pytorch"],
            "dataset": {"synth": {"images": 2}}, "check": check_section}
    with pytest.raises(UserError, match="m.yaml: ") as err:
        mx.parse(data, "m.yaml")
    assert message in str(err.value)
    if "min_magnitude: " in message:
        assert "less than 1" in str(err.value)


def test_nightly_matrix_parses_with_its_check_section():
    from harness import matrix as mx

    m, _ = mx.load(REPO / "matrices" / "nightly.yaml")
    assert m.check.min_magnitude == 0.05 and m.check.ap_tolerance["int8"] == 0.005
    assert m.check.confirm_nights == 2


def test_rotated_ap_is_never_compared_with_horizontal_ap(store):
    """#19: a rotated cell's AP (rotated IoU) starts its own series, in history and baseline mode,
    and horizontal series keep the ids they had before #19."""
    from harness.check import series
    from harness.check.verdict import _Context, _rule, settings_of

    horizontal = [add_run(store, 5.0, seed=i) for i in range(6)]
    rotated = add_run(store, 5.0, seed=9, ap=0.2, rotated=True)  # same keys, much lower AP
    report = check(store, rotated)
    assert report.exit_code == 0
    assert not [f for f in report.findings if f.metric in ("AP", "AP50")]
    assert {f.detail for f in report.findings} == {"first run of this series"}
    base = check(store, rotated, baseline=horizontal[-1])
    assert not [f for f in base.findings if f.metric in ("AP", "AP50")]
    assert sorted(base.no_series) == sorted(KEYS)
    h_cell, r_cell = store.cells(horizontal[-1])[0], store.cells(rotated)[0]
    assert "box_type" not in series.plan_identity(h_cell)  # unchanged ids for horizontal cells
    assert series.plan_id(h_cell) != series.plan_id(r_cell)
    # the guard below the series: rows of another box type never enter an AP history
    run = store.get_run(rotated)
    ctx = _Context(store, run, settings_of(run), _rule(settings_of(run), None))
    rows = [ctx._row_of(c) for c in (h_cell, r_cell)]
    assert ctx._same_box_type(r_cell, rows) == rows[1:]
    assert "other than rotated boxes" in ctx.warnings[0]

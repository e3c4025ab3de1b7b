"""The Trends page on a synthetic store with a known history: series identity, change markers,
acknowledgements, the provenance diff at a change, overlay of several cells."""
import base64
import json
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("STREAMLIT_BROWSER_GATHER_USAGE_STATS", "false")
from streamlit.testing.v1 import AppTest  # noqa: E402

from harness import cli  # noqa: E402
from harness.store import Store  # noqa: E402
from test_check import KEYS, add_run  # noqa: E402

APP = Path(__file__).resolve().parents[1] / "dashboard" / "app.py"
TIMEOUT = 60


@pytest.fixture(scope="module")
def db_url(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('trends') / 'r.db'}"
    with Store(url) as store:
        for i in range(6):
            add_run(store, 5.0, seed=i)
        step = add_run(store, 6.0, seed=50, driver="590.2", git_sha="def")
        add_run(store, 6.0, seed=51, driver="590.2", git_sha="def")
    assert cli.main(["ack", step, "--cell", KEYS[0], "--reason", "driver 590 expected",
                     "--db", url]) == 0
    return url


def _open(url, monkeypatch, **params):
    monkeypatch.setenv("DETBENCH_DB", url)
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    for k, v in params.items():
        at.query_params[k] = v
    at.run()
    at.switch_page("views/trends.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _spec(chart):
    return json.loads(chart.proto.spec)


def _values(array):
    """Plotly's JSON holds numeric arrays as base64 ``bdata``."""
    if isinstance(array, dict):
        return np.frombuffer(base64.b64decode(array["bdata"]), dtype=array["dtype"]).tolist()
    return list(array)


def test_change_marker_ack_and_provenance_diff(db_url, monkeypatch):
    at = _open(db_url, monkeypatch, cell=KEYS[0], metrics="median ms")
    charts = at.get("plotly_chart")
    assert len(charts) == 1
    spec = _spec(charts[0])
    names = [t.get("name") for t in spec["data"]]
    assert KEYS[0] in names and any(n and n.startswith("change") for n in names)
    marker = next(t for t in spec["data"] if (t.get("name") or "").startswith("change"))
    line = next(t for t in spec["data"] if t.get("name") == KEYS[0])
    assert _values(marker["x"]) == [_values(line["x"])[6]]  # the first run at 6 ms
    assert any("ack: driver 590 expected" in a.get("text", "") for a in spec["layout"]["annotations"])
    assert any("Change points" in w.value and "median_ms" in w.value for w in at.warning)
    diffs = [df.value for df in at.dataframe if "field" in df.value.columns]
    assert diffs and {"driver", "git_sha"} <= set(diffs[0]["field"])
    row = diffs[0].set_index("field").loc["driver"]
    assert (row["before"], row["after"]) == ("580.1", "590.2")
    acks = [df.value for df in at.dataframe if "reason" in df.value.columns]
    assert acks and acks[0]["reason"].tolist() == ["driver 590 expected"]


def test_overlay_draws_several_cells_and_verdicts(db_url, monkeypatch):
    at = _open(db_url, monkeypatch, cell=KEYS[0], metrics="median ms")
    at.multiselect(key="overlay").set_value([KEYS[1]]).run()
    spec = _spec(at.get("plotly_chart")[0])
    lines = [t["name"] for t in spec["data"] if t.get("mode") == "lines+markers"]
    assert lines == [KEYS[0], KEYS[1]]
    verdicts = [df.value for df in at.dataframe if "verdict" in df.value.columns][0]
    by_cell = dict(zip(verdicts["cell"], verdicts["verdict"]))
    # KEYS[0] was acknowledged at the step: too little history since; KEYS[1] is a regression
    assert by_cell == {KEYS[0]: "insufficient data", KEYS[1]: "confirmed"}
    assert any("confirmed" in e.value and KEYS[1] in e.value for e in at.error)


def test_cuda_graph_run_starts_its_own_series(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'g.db'}"
    with Store(url) as store:
        for i in range(4):
            add_run(store, 7.94, seed=i)
        add_run(store, 1.18, seed=9, cuda_graph=True)
    at = _open(url, monkeypatch, cell=KEYS[0], metrics="median ms")
    spec = _spec(at.get("plotly_chart")[0])
    line = next(t for t in spec["data"] if t.get("name") == KEYS[0])
    values = _values(line["y"])
    assert len(values) == 1 and values[0] == pytest.approx(1.18, rel=0.02)

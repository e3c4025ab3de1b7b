"""Every results store committed under benchmarks/results opens at this code's schema head:
`detbench show` works on each, and opening it changes nothing (readonly)."""
from __future__ import annotations

import hashlib
import json

import pytest

from conftest import ROOT, run_cli

STORES = sorted((ROOT / "benchmarks" / "results").rglob("*.db"))


def test_there_are_committed_stores():
    assert len(STORES) >= 4, STORES


@pytest.mark.parametrize("path", STORES, ids=[str(p.relative_to(ROOT)) for p in STORES])
def test_committed_store_opens_with_show_and_the_store_api(path):
    from harness.store import Store, current_revision, head_revision

    url = f"sqlite:///{path}"
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    assert current_revision(url) == head_revision(), (
        f"{path} is behind the schema head: run `detbench db upgrade --db {url}` (then "
        "`PRAGMA journal_mode=DELETE`) and commit it")
    with Store(url, readonly=True) as store:
        runs = store.list_runs()
        assert runs and all(store.cells(run.id) for run in runs)
    for run in runs:
        shown = run_cli("show", run.id, "--db", url, "--json", timeout=120)
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["run"]["id"] == run.id
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    assert not path.with_name(path.name + "-wal").exists()


def test_device_wheels_pin_what_the_committed_gpu_stores_record():
    """scripts/fetch_device_wheels.sh fetches, for the GPU scripts, the versions the committed
    GPU runs recorded in their environment, every one with a sha256."""
    import re

    from harness.store import Store

    pins = {}
    for name in ("device_wheels.txt", "device_wheels_ort.txt"):
        for line in (ROOT / "scripts" / name).read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                match = re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+) --hash=sha256:([0-9a-f]{64})", line)
                assert match, line
                pins[match[1].lower()] = match[2]
    recorded = {}
    for path in STORES:
        with Store(f"sqlite:///{path}", readonly=True) as store:
            for run in store.list_runs():  # GPU runs only: a CPU run records this machine's packages
                if any(c.device.startswith("cuda") for c in store.cells(run.id)):
                    recorded.update(run.environment.get("packages", {}))
    for package in ("mmcv-lite", "mmengine", "mmdet", "mmyolo", "pycocotools", "onnxruntime-gpu"):
        assert pins[package] == recorded[package], package
    assert "onnxslim" not in pins  # the committed runs exported without it

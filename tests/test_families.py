"""All seven mmyolo families run through the whole pipeline on CPU with random weights."""
from __future__ import annotations

import pytest

from conftest import has_module, run_cli
from harness.models.table import MODELS

pytestmark = pytest.mark.skipif(not has_module("mmyolo"), reason="needs the mmyolo stack (extra 'mmyolo')")


@pytest.mark.slow  # one cell per family on CPU (~60 s on 2 cores)
def test_every_family_runs_in_a_cpu_matrix(tmp_path):
    models = "\n".join(f"  - {{name: {name}, checkpoint: random}}" for name in MODELS)
    (tmp_path / "m.yaml").write_text(f"""
name: families
models:
{models}
backends: [pytorch]
batch_sizes: [2]
image_sizes: [96]
dataset: {{synth: {{images: 2, seed: 4, size: 128}}}}
timing: {{warmup: 1, iterations: 2}}
""")
    r = run_cli("run", "m.yaml", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    from harness.store import Store

    store = Store(f"sqlite:///{tmp_path}/results.db", readonly=True)
    cells = store.cells(store.get_run("latest").id)
    assert sorted(c.model for c in cells) == sorted(MODELS)
    for c in cells:
        assert c.status == "ok", (c.key, c.stage, c.error, c.log_tail)
        assert c.latency["n"] == 2 and c.latency["median_ms"] > 0
        assert c.provenance["eval"]["iou_thr"] > 0
        assert set(c.metrics) >= {"AP", "AP50", "AR100"}

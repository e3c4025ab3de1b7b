"""What a check finds: one :class:`Finding` per cell x metric, gathered in a :class:`Report`."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

EXIT_REGRESSION = 4
NEW, FAILING, REGRESSION_STATES = "new", "failing", ("confirmed",)
#: order of findings in reports: worst first
SEVERITY = {"confirmed": 0, "suspect": 1, "insufficient data": 2, "new": 3, "failing": 4,
            "improved": 5, "ok": 6}


@dataclass
class Finding:
    cell: str
    series: str | None
    metric: str
    state: str
    before: float | None = None
    after: float | None = None
    change: float | None = None           # relative for latency, absolute for accuracy
    pvalue: float | None = None
    first_bad_run: str | None = None
    baseline_run: str | None = None
    baseline_runs: int = 0
    detail: str = ""
    two_run: dict | None = None
    provenance_diff: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Report:
    run: dict
    mode: str                               # "history" or "baseline"
    baseline: str | None
    settings: dict
    findings: list[Finding]
    warnings: list[str]
    no_series: list[str]

    @property
    def exit_code(self) -> int:
        return EXIT_REGRESSION if any(f.state in REGRESSION_STATES for f in self.findings) else 0

    def to_dict(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for f in self.findings:
            counts[f.state] = counts.get(f.state, 0) + 1
        return {"run": self.run, "mode": self.mode, "baseline": self.baseline,
                "settings": self.settings, "exit_code": self.exit_code, "counts": counts,
                "warnings": self.warnings, "no_series": self.no_series,
                "findings": [f.to_dict() for f in self.findings]}

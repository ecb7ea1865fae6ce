"""What every benchmark returns, and how it is printed."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field


@dataclass
class Result:
    bench: str  # which benchmark (failover, sweep, api, provision, memory)
    name: str  # the figure
    value: float
    unit: str  # "x" for a ratio, "s", "MB", ...
    target: str  # e.g. "<= 1.25"
    ok: bool | None  # None: reported, no target
    raw: dict = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        return "-" if self.ok is None else ("PASS" if self.ok else "MISS")

    def line(self) -> str:
        value = f"{self.value:.3f}" if abs(self.value) < 100 else f"{self.value:.0f}"
        return f"[{self.verdict:4}] {self.bench}: {self.name} = {value} {self.unit} (target {self.target})"


def say(*parts) -> None:
    print(*parts, flush=True)


def median(values):
    return statistics.median(values) if values else float("nan")


def percentile(values, q: float) -> float:
    """The q-th percentile (0-100), nearest rank."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, int(round(q / 100 * len(ordered) + 0.5)) - 1))
    return ordered[rank]


def table(results: list[Result]) -> str:
    rows = [("benchmark", "figure", "value", "target", "verdict")]
    for r in results:
        value = f"{r.value:.3f} {r.unit}" if abs(r.value) < 100 else f"{r.value:.0f} {r.unit}"
        rows.append((r.bench, r.name, value, r.target, r.verdict))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = []
    for n, row in enumerate(rows):
        lines.append("| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |")
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)

"""Results of a benchmark run: rows of the table, facts, every single run; markdown rendering."""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.measure import MB, Run


@dataclass
class Row:
    step: str
    ours: Run | None
    baseline_name: str
    baseline: Run | None
    target: str
    limit_ratio: float | None = None  # ours/baseline must be <= this
    limit_seconds: float | None = None  # ours must take <= this
    limit_rss_mb: float | None = None  # ours peak RSS must be <= this
    baseline_seconds: float | None = None  # when the baseline is a sum of runs
    note: str = ""
    error: str = ""

    @property
    def base_s(self) -> float | None:
        if self.baseline_seconds is not None:
            return self.baseline_seconds
        return self.baseline.seconds if self.baseline else None

    @property
    def ratio(self) -> float | None:
        if self.ours is None or not self.base_s:
            return None
        return self.ours.seconds / self.base_s

    @property
    def met(self) -> str:
        if self.error:
            return "error"
        checks = []
        if self.limit_ratio is not None:
            checks.append(self.ratio is not None and self.ratio <= self.limit_ratio)
        if self.limit_seconds is not None:
            checks.append(self.ours is not None and self.ours.seconds <= self.limit_seconds)
        if self.limit_rss_mb is not None:
            checks.append(self.ours is not None and self.ours.rss / MB <= self.limit_rss_mb)
        if not checks:
            return "(context)"
        return "yes" if all(checks) else "**no**"


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    details: list[str] = field(default_factory=list)
    facts: list[str] = field(default_factory=list)

    def detail(self, label: str, runs: list[Run]) -> None:
        parts = [f"{r.seconds:.3f}s/{r.rss / MB:.0f}MB/cpu {r.cpu:.2f}s/wall {r.wall:.2f}s/load {r.load1:.2f}"
                 for r in runs]
        self.details.append(f"- {label}: " + "; ".join(parts))

    def fact(self, text: str) -> None:
        self.facts.append(text)
        print(f"  {text}", flush=True)


def fmt_s(v: float | None) -> str:
    return "—" if v is None else f"{v:.3f}"


def table(rows: list[Row]) -> str:
    head = ["step", "ours (s)", "ours peak RSS (MB)", "baseline", "baseline (s)", "ratio", "target", "met?"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for r in rows:
        if r.error and r.ours is None:
            cells = [r.step, "—", "—", r.baseline_name, "—", "—", r.target, f"error: {r.error}"]
        else:
            cells = [
                r.step,
                fmt_s(r.ours.seconds if r.ours else None),
                f"{r.ours.rss / MB:.0f}" if r.ours else "—",
                r.baseline_name,
                fmt_s(r.base_s),
                "—" if r.ratio is None else f"{r.ratio:.2f}×",
                r.target,
                f"error: {r.error}" if r.error else r.met,
            ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def markdown(title: str, header: list[str], report: Report) -> str:
    return "\n".join([
        f"# {title}",
        "",
        *header,
        "",
        table(report.rows),
        "",
        "## Facts",
        "",
        *(f"- {f}" for f in report.facts),
        "",
        "## Every run",
        "",
        "time / peak RSS / CPU user+sys of the whole process tree / wall clock from spawn to exit (includes "
        "interpreter start-up and imports for Python workers) / 1-min load average before the run",
        "",
        *report.details,
        "",
    ])

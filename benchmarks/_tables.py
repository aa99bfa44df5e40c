"""Reading the committed benchmark tables back: the Markdown tables of ``benchmarks/results/``,
their machine lines, the series per graph, and where each sparse graph becomes faster than dense
(the crossover summary). :mod:`plots` draws what this module reads.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import _common
from _common import parse_time

__all__ = [
    "PASSES",
    "Crossover",
    "column_series",
    "display_path",
    "crossover_summary",
    "find_crossovers",
    "machine_line",
    "read_machine",
    "read_table",
    "table_series",
]

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = _common.RESULTS_DIR
#: Headings of the two passes in graphs.md, keyed by the pass name used in the summary.
PASSES = {
    "training step": "Training step (forward + backward, train)",
    "inference": "Inference (forward, no_grad, eval)",
}
DENSE, DENSE_KERNEL = "dense", "dense (all pairs)"
#: Series: label -> (N values, plotted values); a plot keeps one per panel title.
Series = dict[str, tuple[list[int], list[float]]]


def read_table(path: Path | str, heading: str) -> list[dict[str, str]]:
    """The rows of the first Markdown table under ``## heading``, as header -> cell strings.

    Args:
        path (Path): a results file.
        heading (str): the second-level heading's text, exactly (without ``## ``).

    Raises:
        ValueError: "heading: expected one of 'Machine', 'Results' in r.md, got 'Result'"
            (no such heading), or "heading 'Setup': expected a table below it in r.md, found
            none".
    """
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    headings = [line[3:].strip() for line in lines if line.startswith("## ")]
    if heading not in headings:
        found = ", ".join(repr(h) for h in headings)
        raise ValueError(f"heading: expected one of {found} in {path}, got {heading!r}")
    start = next(
        i for i, line in enumerate(lines) if line.startswith("## ") and line[3:].strip() == heading
    )
    table: list[list[str]] = []
    for line in lines[start + 1 :]:
        if line.startswith("## "):
            break
        if line.lstrip().startswith("|"):
            table.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif table:
            break
    if len(table) < 2:
        raise ValueError(f"heading {heading!r}: expected a table below it in {path}, found none")
    header, body = table[0], table[2:]  # table[1] is the |---|---:| separator
    return [dict(zip(header, row)) for row in body]


def read_machine(path: Path | str) -> dict[str, str]:
    """The ``## Machine`` list of a results file: ``{"CPU": "AMD EPYC", "cores": ...}``."""
    info: dict[str, str] = {}
    section = None
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
        elif section == "Machine" and line.startswith("- ") and ": " in line:
            key, value = line[2:].split(": ", 1)
            info[key] = value
    return info


def machine_line(path: Path | str) -> str:
    """CPU and threads of a results file: ``"CPU AMD EPYC, 2 logical cores, torch threads 1"``."""
    info = read_machine(path)
    cores = info.get("cores", "cores unknown").replace(" logical", " logical cores")
    return f"CPU {info.get('CPU', 'unknown')}, {cores}"


def display_path(path: Path | str) -> str:
    """A path relative to the repository when inside it (footnotes, summary header)."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def table_series(
    rows: Sequence[dict[str, str]],
    label_col: str,
    value_col: str,
    parse: Callable[[str], float | int | None] = parse_time,
    *,
    n_col: str = "N",
    scale: float = 1.0,
) -> Series:
    """Group a table's rows by ``label_col`` into (N, value / scale) series, skipping ``—``."""
    out: Series = {}
    for row in rows:
        value = parse(row[value_col])
        if value is None:
            continue
        ns, values = out.setdefault(row[label_col], ([], []))
        ns.append(int(row[n_col].replace(",", "")))
        values.append(value / scale)
    return out


def column_series(
    rows: Sequence[dict[str, str]],
    value_col: str,
    parse: Callable[[str], float | int | None] = parse_time,
    *,
    n_col: str = "N",
) -> tuple[list[int], list[float]]:
    """One column of a table against N, skipping ``—`` cells."""
    pairs = [(int(row[n_col].replace(",", "")), parse(row[value_col])) for row in rows]
    kept = [(n, float(v)) for n, v in pairs if v is not None]
    return [n for n, _ in kept], [v for _, v in kept]


@dataclass
class Crossover:
    """Where one sparse graph (or kernel) becomes faster than the dense reference.

    Attributes:
        pass_name (str): ``"training step"``, ``"inference"``, ``"forward"``, ...
        graph (str): the table's label (``"KNN(16)"``).
        n (int or None): smallest measured N with time < dense time at that N; None if never.
        ratio (float or None): time / dense at ``n``.
        estimate (float or None): N where the time/dense ratio crosses 1, interpolated in
            log-log between the last slower and the first faster measured N (None when the
            graph is already faster at the smallest N, or never).
        measured (list of int): the N at which both it and dense were measured.
        slower_again (list of int): N above ``n`` at which it is slower than dense again.
    """

    pass_name: str
    graph: str
    n: int | None
    ratio: float | None
    estimate: float | None
    measured: list[int] = field(default_factory=list)
    slower_again: list[int] = field(default_factory=list)

    def describe(self) -> str:
        """One line: ``"training step: KNN(16) faster than dense from N=4096 (0.475x)"``."""
        if self.n is None:
            top = max(self.measured, default=0)
            return f"{self.pass_name}: {self.graph} never faster in the measured range (N ≤ {top})"
        text = (
            f"{self.pass_name}: {self.graph} faster than dense from N={self.n} ({self.ratio:.3g}×)"
        )
        if self.estimate is not None:
            text += f", crossing ≈ N={self.estimate:.0f}"
        if self.slower_again:
            text += f"; slower again at N={', '.join(map(str, self.slower_again))}"
        return text


def find_crossovers(
    rows: Sequence[dict[str, str]],
    pass_name: str,
    *,
    reference: str = DENSE,
    label_col: str = "graph",
    time_col: str = "time",
) -> list[Crossover]:
    """The crossover of every label but ``reference`` in a (N, label, time) table.

    Only the N at which the reference was measured count; ties are not "faster".
    """
    series = table_series(rows, label_col, time_col)
    if reference not in series:
        labels = ", ".join(repr(s) for s in series)
        raise ValueError(f"reference: expected one of {labels}, got {reference!r}")
    dense = dict(zip(*series[reference]))
    out = []
    for label, (ns, times) in series.items():
        if label == reference:
            continue
        ratios = [(n, t / dense[n]) for n, t in sorted(zip(ns, times)) if n in dense]
        first = next((i for i, (_, r) in enumerate(ratios) if r < 1), None)
        if first is None:
            out.append(Crossover(pass_name, label, None, None, None, [n for n, _ in ratios]))
            continue
        n, ratio = ratios[first]
        estimate = None
        if first > 0:
            (n0, r0), (n1, r1) = ratios[first - 1], ratios[first]
            frac = math.log(r0) / (math.log(r0) - math.log(r1))
            estimate = math.exp(math.log(n0) + frac * (math.log(n1) - math.log(n0)))
        slower = [m for m, r in ratios[first + 1 :] if r >= 1]
        out.append(Crossover(pass_name, label, n, ratio, estimate, [m for m, _ in ratios], slower))
    return out


def crossover_summary(graphs_md: Path | str = RESULTS_DIR / "graphs.md") -> list[Crossover]:
    """The crossovers of every sparse graph in ``graphs.md``, training step then inference."""
    return [
        c
        for name, heading in PASSES.items()
        for c in find_crossovers(read_table(graphs_md, heading), name)
    ]

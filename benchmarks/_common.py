"""Shared pieces of the nlgraph benchmarks: flags, machine description, tables, results files.

Every ``benchmarks/<area>.py`` parses its flags with :func:`make_parser`, times the methods it
compares with :func:`interleaved_medians` (alternating, in one process, so drifts in clock speed
or allocator state hit all methods alike) and writes ``benchmarks/results/<area>.md`` with
:func:`write_results`: the machine, versions, allocator settings, tables and the exact command.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from nlgraph._measure import allocator_settings, format_bytes, format_seconds, machine_info
from nlgraph._measure import load_average as load_average  # used as _common.load_average
from nlgraph.pairwise import MODES

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def make_parser(area: str, description: str) -> argparse.ArgumentParser:
    """The flags every benchmark takes: ``--quick``, ``--only MODE``, ``--repeat``, ``--out``."""
    parser = argparse.ArgumentParser(prog=f"benchmarks/{area}.py", description=description)
    parser.add_argument(
        "--quick", action="store_true", help="a tiny subset for smoke tests (implies --repeat 2)"
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=MODES,
        metavar="MODE",
        help=f"run only this mode (repeatable); one of {', '.join(MODES)}",
    )
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per case (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per case")
    parser.add_argument(
        "--out",
        type=Path,
        default=RESULTS_DIR / f"{area}.md",
        help=f"markdown results file (default: benchmarks/results/{area}.md)",
    )
    return parser


def interleaved_medians(
    fns: dict[str, Callable[[], Any]], *, warmup: int = 1, repeat: int = 5
) -> dict[str, float]:
    """Median seconds of each function, run in turn (a, b, a, b, ...) in this process.

    Args:
        fns (dict): label -> call without arguments.
        warmup (int): untimed rounds first.
        repeat (int): timed rounds; each round calls every function once.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


#: Short formats shared with the CLI demo: seconds and bytes (``—`` for a skipped measurement).
fmt_time = format_seconds
fmt_bytes = format_bytes


def fmt_ratio(value: float | None) -> str:
    """A ratio with three significant digits (``—`` when one side was skipped)."""
    if value is None:
        return "—"
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub markdown table; numbers are right-aligned, everything else left-aligned."""
    rows = [[str(c) for c in row] for row in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]

    def numeric(i: int) -> bool:
        return bool(rows) and all(r[i][:1].isdigit() or r[i] == "—" for r in rows)

    def line(cells: Sequence[str]) -> str:
        out = []
        for i, c in enumerate(cells):
            out.append(c.rjust(widths[i]) if numeric(i) else c.ljust(widths[i]))
        return "| " + " | ".join(out) + " |"

    sep = (
        "|"
        + "|".join(
            ("-" * (w + 1) + ":") if numeric(i) else ("-" * (w + 2)) for i, w in enumerate(widths)
        )
        + "|"
    )
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])


def command_line(area: str, argv: Sequence[str] | None = None) -> str:
    """The command that reproduces the results, allocator variables included.

    Args:
        area (str): the benchmark's name (``"dense"`` for ``benchmarks/dense.py``).
        argv (list of str, optional): its flags (default: ``sys.argv[1:]``).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    env = " ".join(f"{k}={v}" for k, v in allocator_settings().items())
    cmd = f"python benchmarks/{area}.py {shlex.join(args)}".rstrip()
    return f"{env} {cmd}".strip()


def write_results(
    out: Path,
    title: str,
    sections: Sequence[tuple[str, str]],
    command: str,
    info: dict[str, str] | None = None,
) -> Path:
    """Write a markdown results file: title, machine, sections (heading, body), command.

    Args:
        out (Path): the file to write (its folder is created).
        title (str): first-level heading.
        sections (list): (heading, markdown body) pairs, in order.
        command (str): the exact command, shown in a code block.
        info (dict, optional): machine description (default: :func:`machine_info`).

    Returns:
        Path: ``out``.
    """
    info = machine_info() if info is None else info
    parts = [f"# {title}", "", "Generated by the benchmark; do not edit by hand.", ""]
    parts += ["## Machine", ""] + [f"- {k}: {v}" for k, v in info.items()] + [""]
    for heading, body in sections:
        parts += [f"## {heading}", "", body.rstrip(), ""]
    parts += ["## Command", "", "```sh", command, "```", ""]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(parts))
    return out

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


#: Seconds per time unit written by :func:`fmt_time` (``ms``, ``s``), plus finer ones.
_TIME_UNITS = {"ns": 1e-9, "µs": 1e-6, "us": 1e-6, "ms": 1e-3, "s": 1.0}
#: Bytes per memory unit written by :func:`fmt_bytes`.
_BYTE_UNITS = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4}


def _split_quantity(text: str, units: dict[str, float], what: str) -> tuple[float, float] | None:
    """``"35.4 ms"`` -> (35.4, 1e-3); None for ``"—"``; ValueError for anything else."""
    text = text.strip()
    if text in ("—", "-", ""):
        return None
    number, _, unit = text.partition(" ")
    if unit not in units:
        raise ValueError(
            f"{what}: expected a number and one of {', '.join(units)} (or '—'), got {text!r}"
        )
    try:
        return float(number), units[unit]
    except ValueError:
        raise ValueError(f"{what}: expected a number before {unit!r}, got {text!r}") from None


def parse_time(text: str) -> float | None:
    """Seconds from a :func:`fmt_time` string: ``"35.4 ms"`` -> 0.0354; ``"—"`` -> None.

    The inverse of :func:`fmt_time` up to its rounding (3 significant digits).

    Raises:
        ValueError: "time: expected a number and one of ns, µs, us, ms, s (or '—'), got '35 m'"
    """
    parts = _split_quantity(text, _TIME_UNITS, "time")
    return None if parts is None else parts[0] * parts[1]


def parse_bytes(text: str) -> int | None:
    """Bytes from a :func:`fmt_bytes` string: ``"2.39 MiB"`` -> 2506097; ``"—"`` -> None.

    The inverse of :func:`fmt_bytes` up to its rounding (3 significant digits; the result is
    rounded to whole bytes).

    Raises:
        ValueError: "bytes: expected a number and one of B, KiB, MiB, GiB, TiB (or '—'), got '2 MB'"
    """
    parts = _split_quantity(text, _BYTE_UNITS, "bytes")
    return None if parts is None else round(parts[0] * parts[1])

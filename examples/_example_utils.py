"""Shared pieces of the training examples: common flags, progress bars, seeds, results headers.

Not an example itself (``tests/test_examples.py`` skips files starting with ``_``). The examples
import it as ``_example_utils``: ``python examples/<name>.py`` puts ``examples/`` on
``sys.path``, and the example test does the same.

Every training example
- takes ``--out-dir`` (default :data:`OUT_DIR`, under the working directory, never the tracked
  ``examples/results/``; regenerate those with ``--out-dir examples/results``), ``--quick`` (a
  run of seconds, the example test runs it), ``--quiet`` (no progress bars), ``--threads`` and
  ``--seeds`` (:func:`add_common_args`);
- writes ``<out-dir>/<name>.md`` whose first lines say the command, the seeds, the machine and
  the wall time (:func:`run_lines`), and reports mean ± std over the seeds (:func:`mean_std`).
"""

from __future__ import annotations

import argparse
import resource
import shlex
import statistics
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import torch

from nlgraph._measure import allocator_settings, machine_info

#: Default results folder, relative to the working directory.
OUT_DIR = "nlgraph-results"

T = TypeVar("T")


def add_common_args(parser: argparse.ArgumentParser, *, seeds: int = 3, threads: int = 1) -> None:
    """Add ``--out-dir``, ``--quick``, ``--quiet``, ``--threads`` and ``--seeds`` to ``parser``."""
    parser.add_argument(
        "--out-dir", type=Path, default=Path(OUT_DIR),
        help=f"folder for the results table and figure (default: ./{OUT_DIR})",
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="a run of seconds (the smoke test)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "--threads", type=int, default=threads,
        help=f"torch CPU threads (default {threads}; timings are stable with 1)",
    )  # fmt: skip
    parser.add_argument(
        "--seeds", type=int, default=seeds,
        help=f"seeds 0..N-1 for each model (default {seeds}; mean ± std over them)",
    )  # fmt: skip


def setup(args: argparse.Namespace) -> None:
    """Apply ``--threads`` and create ``--out-dir``."""
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    torch.set_num_threads(args.threads)
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)


def progress(
    iterable: Iterable[T], *, quiet: bool, desc: str, total: int | None = None
) -> Iterator[T]:
    """A tqdm progress bar over ``iterable`` (plain iteration with ``quiet``)."""
    if quiet:
        yield from iterable
        return
    from tqdm import tqdm

    yield from tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True)


def mean_std(values: Sequence[float], digits: int = 1) -> str:
    """``"m ± s"`` over seeds (sample std), or the single value for one seed."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, in MiB (Linux ``ru_maxrss`` is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_lines(
    script: str, argv: Sequence[str] | None, seeds: int | Sequence[int], wall_s: float
) -> list[str]:
    """Markdown bullet lines: command, seeds, machine and versions, allocator, wall time.

    ``seeds``: the number of seeds (0 to seeds - 1) or the seeds themselves.
    """
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    args = list(sys.argv[1:] if argv is None else argv)
    info = machine_info()
    allocator = info["allocator"]
    prefix = "".join(f"{k}={v} " for k, v in allocator_settings().items())
    command = f"{prefix}python examples/{script} {shlex.join(args)}".rstrip()
    return [
        f"- command: `{command}`",
        f"- seeds: {', '.join(str(s) for s in seed_list)} (model init and batch order)",
        f"- machine: {info['CPU']}, {info['cores']}; Python {info['python']}, "
        f"torch {info['torch']}, nlgraph {info['nlgraph']}",
        f"- allocator: {allocator}",
        f"- load average (1 min) at the end: {info['load average (1 min) at start']}",
        f"- date: {info['date']}",
        f"- wall time: {wall_s:.0f} s ({wall_s / 60:.1f} min)",
    ]

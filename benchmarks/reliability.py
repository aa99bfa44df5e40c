"""Reliability report: what the suite checks, collected in one file (issue 13 §4).

Runs the checks that produce figures and gathers the rest from the results files they write:

- **property cases per kernel**: ``tests/test_properties.py`` under pytest with
  ``NLGRAPH_PROPERTY_RECORD`` set, so that every aggregation case records the kernels it compared
  with the fp64 reference; the pytest summary line of the whole file;
- **gradcheck coverage**: the functions of ``tests/`` (tests and their helpers) that call
  ``gradcheck`` or ``gradgradcheck`` (a static scan of the test sources), per file;
- **mixed precision**: the error table of ``benchmarks/results/amp.md`` (``benchmarks/amp.py``);
- **compile**: the eager/compiled table of ``benchmarks/results/compile.md``
  (``benchmarks/compile.py``);
- **DDP**: the DDP equivalence test run with ``-s``, its printed max |DDP - one process|;
- **fuzz**: :func:`tests.test_fuzz.fuzz_counts`: wrong inputs tried per entry point and the
  exceptions they raised, by type.

Writes ``benchmarks/results/reliability.md``. ``--quick`` skips the property and DDP runs (the
static parts and the fuzz counts only, a few seconds).
"""

from __future__ import annotations

import ast
import collections
import os
import re
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import _common

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
RESULTS = ROOT / "benchmarks" / "results"


def _pytest(args: list[str], env: dict[str, str] | None = None) -> str:
    """Run pytest in a subprocess from the repository root; its combined output."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args]
    done = subprocess.run(
        cmd, cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True
    )
    return done.stdout + done.stderr


def _summary(output: str) -> str:
    """The pytest summary line ("N passed, ... in T s") of ``output``."""
    lines = [ln for ln in output.splitlines() if re.search(r"\d+ (passed|failed)", ln)]
    return lines[-1].strip("= ") if lines else "no summary (see the run's output)"


def property_cases() -> tuple[str, str]:
    """(table of aggregation cases per kernel, the property file's pytest summary)."""
    with tempfile.NamedTemporaryFile("r", suffix=".txt", delete=False) as f:
        record = f.name
    try:
        out = _pytest(["tests/test_properties.py"], {"NLGRAPH_PROPERTY_RECORD": record})
        counts: collections.Counter[str] = collections.Counter()
        cases = 0
        for line in Path(record).read_text().splitlines():
            cases += 1
            counts.update(line.split())
    finally:
        os.unlink(record)
    rows = [(kernel, counts[kernel]) for kernel in sorted(counts)]
    table = _common.markdown_table(["kernel", "cases compared with the fp64 reference"], rows)
    return f"{cases} drawn aggregation cases (hypothesis profile `ci`).\n\n{table}", _summary(out)


def gradcheck_coverage() -> str:
    """Per test file, the functions (tests and their helpers) that call gradcheck or
    gradgradcheck."""
    rows = []
    for path in sorted(TESTS.rglob("test_*.py")):
        tree = ast.parse(path.read_text())
        hits: dict[str, set[str]] = collections.defaultdict(set)
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef):  # tests and their helpers
                continue
            for node in ast.walk(fn):
                name = getattr(node, "id", None) or getattr(node, "attr", None)
                if name in ("gradcheck", "gradgradcheck"):
                    hits[name].add(fn.name)
        if hits:
            rel = path.relative_to(ROOT).as_posix()
            rows.append(
                (
                    f"`{rel}`",
                    len(hits["gradcheck"]),
                    len(hits["gradgradcheck"]),
                    ", ".join(sorted(hits["gradcheck"] | hits["gradgradcheck"])),
                )
            )
    return _common.markdown_table(
        ["file", "gradcheck callers", "gradgradcheck callers", "functions"], rows
    )


def _section(path: Path, heading: str) -> str:
    """The body of section ``## heading`` of a results file (or a note that it is missing)."""
    if not path.exists():
        return f"`{path.relative_to(ROOT)}` not found: run its benchmark."
    text = path.read_text()
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    if match is None:
        return f"no section '{heading}' in `{path.relative_to(ROOT)}`."
    return match.group(1).strip() + f"\n\n(from `{path.relative_to(ROOT)}`)"


def ddp_figure() -> str:
    """The DDP equivalence test's printed figure and its summary."""
    out = _pytest(["tests/test_distributed.py", "-k", "ddp_two", "-s"])
    found = re.search(r"max \|DDP - one process\| over the parameters: (\S+)", out)
    figure = found.group(1) if found else "not printed (skipped or failed: see the summary)"
    return (
        "2 processes (gloo, 1 thread each) x 3 SGD steps on halves of a batch vs one process on "
        "the whole batch; a CNN with a dense and a k-NN `NonLocalBlock2d` (norm=None: "
        "SyncBatchNorm needs CUDA).\n\n"
        f"- max |DDP - one process| over the parameters: {figure} (tolerance 1e-5)\n"
        f"- pytest: {_summary(out)}"
    )


def fuzz_table() -> str:
    """Totals of :func:`tests.test_fuzz.fuzz_counts` by outcome, and the failing entry points."""
    sys.path.insert(0, str(ROOT))
    from tests.test_fuzz import fuzz_counts

    with warnings.catch_warnings():  # from_reference's mode/scale warnings on wrong inputs
        warnings.simplefilter("ignore")
        counts = fuzz_counts()
    total: collections.Counter[str] = collections.Counter()
    for c in counts.values():
        total.update(c)
    kinds = sorted(set(total) - {"tried", "FAIL"})
    rows = [("inputs tried", total["tried"])] + [(k, total[k]) for k in kinds]
    rows.append(("findings (wrong type, or the argument not named)", total["FAIL"]))
    failing = sorted(name for name, c in counts.items() if c["FAIL"])
    return (
        f"{len(counts)} public entry points, one argument perturbed at a time.\n\n"
        + _common.markdown_table(["outcome", "count"], rows)
        + f"\n\nEntry points with findings ({len(failing)}, strict xfails in "
        "`tests/test_fuzz.py`): " + (", ".join(f"`{n}`" for n in failing) or "none")
    )


def main(argv: list[str] | None = None) -> int:
    parser = _common.make_parser("reliability", __doc__.splitlines()[0])
    args = parser.parse_args(argv)
    sections = []
    if args.quick:
        sections.append(("Property cases per kernel", "skipped (`--quick`)"))
    else:
        table, summary = property_cases()
        sections.append(
            ("Property cases per kernel", f"{table}\n\n`tests/test_properties.py`: {summary}")
        )
    sections.append(("Gradcheck coverage", gradcheck_coverage()))
    sections.append(
        ("Mixed precision (bf16 autocast vs fp64)", _section(RESULTS / "amp.md", "autocast bf16"))
    )
    sections.append(
        ("Compile speed-ups (eager vs torch.compile)", _section(RESULTS / "compile.md", "Results"))
    )
    sections.append(("DDP equivalence", "skipped (`--quick`)" if args.quick else ddp_figure()))
    sections.append(("Fuzz", fuzz_table()))
    out = _common.write_results(
        args.out, "Reliability report", sections, _common.command_line("reliability", argv)
    )
    print(out.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

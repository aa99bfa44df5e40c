"""Every example runs (examples are generated-data scripts; they must never rot).

An example is a script with ``main(argv: list[str] | None = None)``. A training example also
defines ``SMOKE_ARGS``: the arguments of a miniature run (seconds) that exercises every code
path of the full run; the test runs that miniature and never the full experiment.
"""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "examples"
#: The example scripts; ``_*.py`` are helpers they share (``_example_utils.py``).
EXAMPLES = sorted(p for p in EXAMPLES_DIR.glob("*.py") if not p.name.startswith("_"))


@pytest.fixture(autouse=True)
def _examples_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """``python examples/x.py`` puts examples/ on sys.path; runpy does not."""
    monkeypatch.syspath_prepend(str(EXAMPLES_DIR))


def test_there_are_examples() -> None:
    assert EXAMPLES, "examples/ holds no script"


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs(
    path: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = runpy.run_path(str(path), run_name="example")
    assert callable(module.get("main")), f"{path.name} defines no main(argv)"
    smoke = module.get("SMOKE_ARGS")
    if smoke is None:
        module["main"]()
    else:
        # Miniature runs write their tables and plots under tmp_path, never examples/results.
        module["main"]([*smoke, "--out-dir", str(tmp_path)])
        assert any(tmp_path.iterdir()), f"{path.name} wrote no result file"
    out = capsys.readouterr().out
    assert out.strip(), f"{path.name} printed nothing"
    if path.name == "quickstart.py":
        assert "round trip max |difference|: 0.0" in out


@pytest.mark.slow
def test_knn_graphs_quick_reports_every_row(tmp_path: Path) -> None:
    """examples/knn_graphs.py --quick: every row of the experiment (baseline, dense, exact,
    clustered, each refresh period) lands in the table, with the trade-off and ivf sentences
    and the plot."""
    path = Path(__file__).resolve().parents[1] / "examples" / "knn_graphs.py"
    module = runpy.run_path(str(path), run_name="example")
    module["main"](["--quick", "--quiet", "--refresh", "2", "3", "--out-dir", str(tmp_path)])
    md = (tmp_path / "knn_graphs.md").read_text()
    for row in ("baseline", "dense", "knn", "knn-ivf", "knn-T2", "knn-T3"):
        assert f"| `{row}` |" in md, row
    assert "refresh_every=3" in md
    assert "search='ivf'" in md
    assert "Refresh schedule" in md and "Clustered vs exact search" in md
    assert "| exact | - | 100% | 100.0% |" in md  # the search-quality table
    assert md.count("| 100% | 100.0% |") == 2  # probing every list is exact
    assert (tmp_path / "knn_graphs.png").stat().st_size > 0


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_results_default_to_the_working_directory(path: Path) -> None:
    """An example's default --out-dir is a folder under the working directory, never the
    repository's tracked examples/results/ (those are regenerated with --out-dir explicitly)."""
    module = runpy.run_path(str(path), run_name="example")
    if "OUT_DIR" not in module:
        assert module.get("SMOKE_ARGS") is None, f"{path.name} writes results but has no OUT_DIR"
        return
    out = Path(module["OUT_DIR"])
    assert not out.is_absolute()
    assert "examples" not in out.parts and out.resolve() != path.parent / "results"


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_training_examples_share_the_flags(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every training example (one with ``SMOKE_ARGS``) has ``--help``, ``--quick`` (the
    miniature run) and ``--out-dir``."""
    module = runpy.run_path(str(path), run_name="example")
    if module.get("SMOKE_ARGS") is None:
        return
    with pytest.raises(SystemExit) as exit_info:
        module["main"](["--help"])
    assert exit_info.value.code == 0
    usage = capsys.readouterr().out
    for flag in ("--quick", "--out-dir"):
        assert flag in usage, f"{path.name} --help lacks {flag}"

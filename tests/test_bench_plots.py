"""Tests of benchmarks/plots.py (crossover plots from the committed results), _tables.py (the
tables read back) and the unit parsers."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLOTS = ROOT / "benchmarks" / "plots.py"
RESULTS = ROOT / "benchmarks" / "results"

pytestmark = pytest.mark.skipif(
    not (PLOTS.is_file() and (RESULTS / "graphs.md").is_file()),
    reason="needs the source checkout's benchmarks/",
)
pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def plots():
    spec = importlib.util.spec_from_file_location("_bench_plots", PLOTS)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def generated(plots, tmp_path_factory):
    """One CLI run into a temporary folder: (folder, exit code)."""
    out = tmp_path_factory.mktemp("plots")
    code = plots.main(["--out-dir", str(out / "img"), "--out", str(out / "crossover.md")])
    return out, code


def _cells(plots, unit_cols):
    """Every non-empty cell of the given columns in the committed results tables."""
    tables = [("graphs.md", heading) for heading in plots.PASSES.values()] + [
        ("knn.md", "Results"),
        ("graphs.md", plots.KNN_BUILD_HEADING),
    ]
    tables += [("kernels.md", heading) for heading in plots.KERNEL_PASSES.values()]
    cells = []
    for name, heading in tables:
        for row in plots.read_table(RESULTS / name, heading):
            cells += [row[c] for c in unit_cols if c in row and row[c] != "—"]
    return cells


def test_parsers_invert_the_table_cells(plots):
    common = plots._common
    times = _cells(plots, ["time", "ivf build", "exact build"])
    sizes = _cells(plots, ["peak memory", "largest alloc", "ivf peak"])
    assert len(times) > 50 and len(sizes) > 50
    for cell in times:
        assert common.fmt_time(plots.parse_time(cell)) == cell
    for cell in sizes:
        assert common.fmt_bytes(plots.parse_bytes(cell)) == cell


@pytest.mark.parametrize("exponent", [x / 7 for x in range(-60, 15)])
def test_parse_time_round_trip_within_rounding(plots, exponent):
    seconds = 10.0**exponent
    back = plots.parse_time(plots._common.fmt_time(seconds))
    assert math.isclose(back, seconds, rel_tol=5.01e-3), (seconds, back)


@pytest.mark.parametrize("nbytes", [0, 1, 1023, 1024, 1500, 2**20, 2_506_097, 10**9, 3 * 2**40])
def test_parse_bytes_round_trip_within_rounding(plots, nbytes):
    back = plots.parse_bytes(plots._common.fmt_bytes(nbytes))
    assert back == nbytes if nbytes < 1024 else math.isclose(back, nbytes, rel_tol=5.01e-3)


def test_parsers_examples_and_errors(plots):
    assert plots.parse_time("35.4 ms") == pytest.approx(0.0354)
    assert plots.parse_time("1.20 s") == pytest.approx(1.2)
    assert plots.parse_bytes("2.39 MiB") == round(2.39 * 2**20)
    assert plots.parse_time("—") is None and plots.parse_bytes("—") is None
    with pytest.raises(ValueError, match=r"^time: expected a number and one of"):
        plots.parse_time("35 min")
    with pytest.raises(ValueError, match=r"^bytes: expected a number before 'MiB'"):
        plots.parse_bytes("x MiB")


MD = """# Title

## Machine

- CPU: Test CPU
- cores: 4 logical, torch threads 3

## Other

| N | graph | time |
|--:|-------|-----:|
| 1 | x     | 1 ms |

## Results

Some text first.

|    N | graph   |   time | peak memory |
|-----:|---------|-------:|------------:|
| 1024 | dense   | 2.5 ms |    1.00 MiB |
| 4096 | KNN(16) |      — |      512 KiB |

- a note
"""


def test_read_table_and_machine(plots, tmp_path):
    path = tmp_path / "r.md"
    path.write_text(MD)
    assert plots.read_table(path, "Results") == [
        {"N": "1024", "graph": "dense", "time": "2.5 ms", "peak memory": "1.00 MiB"},
        {"N": "4096", "graph": "KNN(16)", "time": "—", "peak memory": "512 KiB"},
    ]
    assert plots.read_table(path, "Other") == [{"N": "1", "graph": "x", "time": "1 ms"}]
    assert sys.modules["_tables"].read_machine(path) == {
        "CPU": "Test CPU",
        "cores": "4 logical, torch threads 3",
    }
    assert plots.machine_line(path) == "CPU Test CPU, 4 logical cores, torch threads 3"
    with pytest.raises(ValueError, match=r"^heading: expected one of 'Machine', 'Other'"):
        plots.read_table(path, "Result")
    with pytest.raises(ValueError, match=r"^heading 'Machine': expected a table"):
        plots.read_table(path, "Machine")


def _synthetic(plots, tmp_path):
    """A graphs.md-like file: A crosses at 4096, B never, C at 1024 but slower again at 4096."""
    times = {
        "dense": [1e-3, 16e-3, 256e-3],
        "A": [2e-3, 8e-3, 32e-3],
        "B": [5e-3, 80e-3, 1.0],
        "C": [0.5e-3, 20e-3, 100e-3],
    }
    rows = [
        [n, graph, plots._common.fmt_time(ts[i])]
        for i, n in enumerate((1024, 4096, 16384))
        for graph, ts in times.items()
    ]
    rows.append([65536, "A", "1.00 s"])  # no dense here: ignored by the crossover
    table = plots._common.markdown_table(["N", "graph", "time"], rows)
    path = tmp_path / "graphs.md"
    sections = "\n\n".join(f"## {heading}\n\n{table}\n" for heading in plots.PASSES.values())
    path.write_text(
        f"# Synthetic\n\n## Machine\n\n- CPU: X\n- cores: 1 logical, torch threads 1\n\n{sections}"
    )
    return path


def test_crossover_summary_names_the_right_n(plots, tmp_path):
    summary = plots.crossover_summary(_synthetic(plots, tmp_path))
    assert [c.pass_name for c in summary] == ["training step"] * 3 + ["inference"] * 3
    found = {c.graph: c for c in summary[:3]}
    assert found["A"].n == 4096 and found["A"].ratio == pytest.approx(0.5)
    # log-log interpolation: ratio 2 at 1024, 0.5 at 4096 -> crosses 1 halfway, at 2048
    assert found["A"].estimate == pytest.approx(2048)
    assert found["A"].measured == [1024, 4096, 16384] and found["A"].slower_again == []
    assert found["B"].n is None and "never faster in the measured range (N ≤ 16384)" in (
        found["B"].describe()
    )
    assert found["C"].n == 1024 and found["C"].estimate is None
    assert found["C"].slower_again == [4096]


def test_summary_markdown_header_and_rows(plots, tmp_path):
    text = plots.summary_markdown(_synthetic(plots, tmp_path))
    assert "Generated by benchmarks/plots.py from " in text and "do not edit by hand" in text
    assert "| training step | A " in text and "never in the measured range" in text


def test_cli_writes_pngs_and_summary(plots, generated):
    out, code = generated
    assert code == 0
    for name in ("crossover_train", "crossover_inference", "crossover_memory", "knn_build"):
        data = (out / "img" / f"{name}.png").read_bytes()
        assert data.startswith(b"\x89PNG") and 1000 < len(data) < 80 * 1024, (name, len(data))
    summary = (out / "crossover.md").read_text()
    assert summary.startswith("# Crossovers")
    assert "Generated by benchmarks/plots.py from benchmarks/results/graphs.md" in summary


def test_plotted_data_equal_the_table_and_bytes_repeat(plots, generated, tmp_path):
    out, _ = generated
    plot = plots.plot_time_crossover(
        "training step", RESULTS / "graphs.md", tmp_path / "crossover_train.png"
    )
    rows = plots.read_table(RESULTS / "graphs.md", plots.PASSES["training step"])
    times = plot.series["time"]
    assert set(times) == {row["graph"] for row in rows}
    for row in rows:
        ns, values = times[row["graph"]]
        assert values[ns.index(int(row["N"]))] == plots.parse_time(row["time"])
    top = plot.figure.axes[0]
    for line in top.get_lines():
        graph = line.get_label().split(": faster")[0]
        if graph in times:
            assert list(line.get_xdata()) == times[graph][0]
            assert list(line.get_ydata()) == times[graph][1]
    # a second drawing writes the same bytes (no timestamps or software tags)
    assert plot.path.read_bytes() == (out / "img" / "crossover_train.png").read_bytes()


def test_memory_plot_is_in_mib_of_the_table(plots, tmp_path):
    plot = plots.plot_memory(RESULTS / "graphs.md", tmp_path / "m.png")
    rows = plots.read_table(RESULTS / "graphs.md", plots.PASSES["inference"])
    series = plot.series["inference"]
    for row in rows:
        ns, values = series[row["graph"]]
        assert values[ns.index(int(row["N"]))] == plots.parse_bytes(row["peak memory"]) / 2**20


def test_committed_plots_and_summary_are_current(generated):
    """docs/img/*.png and benchmarks/results/crossover.md are what the committed tables draw:
    rerun ``python benchmarks/plots.py`` after a benchmark rewrites its table."""
    out, _ = generated
    stale = [
        png.name
        for png in sorted((out / "img").glob("*.png"))
        if png.read_bytes() != (ROOT / "docs" / "img" / png.name).read_bytes()
    ]
    assert not stale, f"docs/img is stale: {stale}; run python benchmarks/plots.py"

    def body(path):  # the recorded command names the output paths: compare what precedes it
        return path.read_text().split("## Command")[0]

    assert body(out / "crossover.md") == body(RESULTS / "crossover.md")

"""Tests of the command line (info, demo, bench), the dense benchmark and the naive baseline."""

from __future__ import annotations

import importlib.util
import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import nlgraph
from nlgraph import NonLocalBlock1d, NonLocalBlock2d, NonLocalBlock3d, cli
from nlgraph._naive import naive_from_block
from nlgraph.pairwise import MODES

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "dense.py"
ENV = {**os.environ, "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "1099511627776"}


def test_info_prints_versions(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"nlgraph                  : {nlgraph.__version__}" in out
    assert torch.__version__ in out
    for key in ("torch_geometric", "CPU threads", "CUDA", "allocator"):
        assert key in out
    # every optional backend, and whether it imports here (find_spec as the independent check)
    for dist, module in (("torch-scatter", "torch_scatter"), ("faiss", "faiss"),
                         ("triton", "triton"), ("matplotlib", "matplotlib")):  # fmt: skip
        line = next(ln for ln in out.splitlines() if ln.startswith(f"{dist} importable"))
        installed = importlib.util.find_spec(module) is not None
        assert line.split(" : ")[1].startswith("yes" if installed else "no"), line


def test_info_hints_at_the_allocator_when_unset(capsys, monkeypatch):
    for key in [k for k in os.environ if k.startswith("MALLOC_")] + ["LD_PRELOAD"]:
        monkeypatch.delenv(key, raising=False)
    cli.main(["info"])
    assert "hint: " in capsys.readouterr().out
    monkeypatch.setenv("MALLOC_MMAP_MAX_", "0")
    cli.main(["info"])
    out = capsys.readouterr().out
    assert "MALLOC_MMAP_MAX_=0" in out and "hint: " not in out


def test_info_explains_the_kernel_auto_runs(capsys, monkeypatch):
    """``info --n`` names the kernel that ``nonlocal_aggregate`` actually runs for the full
    graph and a k-NN graph (recorded by wrapping every kernel's ``apply``), and why a kernel
    was declined."""
    from nlgraph.graphs import RegularGraph
    from nlgraph.ops import KERNELS, nonlocal_aggregate

    ran: list[str] = []
    for name, kernel in KERNELS.items():
        original = kernel.apply

        def record(inp, _name=name, _original=original):
            ran.append(_name)
            return _original(inp)

        monkeypatch.setattr(kernel, "apply", staticmethod(record))
    assert cli.main(["info", "--n", "64", "--k", "4", "--channels", "8"]) == 0
    out = capsys.readouterr().out
    q = torch.randn(1, 64, 8)
    graph = RegularGraph(torch.randint(0, 64, (1, 64, 4)), 64)
    for label, g in (("full graph", "full"), ("k-NN graph (k=4)", graph)):
        ran.clear()
        nonlocal_aggregate(q, q, q, "embedded_gaussian", graph=g)
        line = next(line for line in out.splitlines() if f"aggregate, {label}" in line)
        assert ran and line.split(": ", 1)[1].startswith(f"{ran[0]} ("), (line, ran)
    # Half precision: csr declines (with the dtype as the reason) and regular runs.
    rows = cli.explain_choices(64, 4, 8, dtype="float16")
    text = "\n".join(f"{a} : {b}" for a, b in rows)
    assert "aggregate, k-NN graph (k=4) : regular" in text
    assert "csr declined: dtype=torch.float16" in text
    # A small key set (8·k keys or fewer): the clustered search probes every list (exact).
    assert "50% of the keys scanned" in text  # N = 64, k = 4: 4 of 8 lists
    exact = dict(cli.explain_choices(64, 16, 8))["KNN(k, search='ivf')"]
    assert "probing every list is the exact search" in exact


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["info", "--n", "0"], "--n: expected a positive int, got 0"),
        (["info", "--n", "8", "--dtype", "int8"], "--dtype: expected a floating dtype"),
        (["info", "--n", "8", "--device", "nope"], "--device: expected a device"),
    ],
)
def test_info_refuses_bad_choices(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "usage: nlgraph info" in err  # the subcommand's usage, not the top-level one


def test_demo_errors_print_the_demo_usage(capsys):
    with pytest.raises(SystemExit):
        cli.main(["demo", "--size", "0"])
    err = capsys.readouterr().err
    assert "usage: nlgraph demo" in err and "--size: expected a positive int, got 0" in err


@pytest.fixture(autouse=True)
def _run_in_tmp(tmp_path, monkeypatch):
    """The demo writes ./nlgraph-demo/ under the working directory: keep it out of the repo."""
    monkeypatch.chdir(tmp_path)


def test_demo_saves_the_attention_picture_and_prints_its_path(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    assert cli.main(["demo", "--size", "4", "--channels", "8", "--quick"]) == 0
    default = Path("nlgraph-demo") / "attention.png"
    assert f"saved the attention of one query: {default}" in capsys.readouterr().out
    assert (tmp_path / default).stat().st_size > 0
    out = tmp_path / "elsewhere"
    assert (
        cli.main(["demo", "--size", "4", "--channels", "8", "--quick", "--out-dir", str(out)]) == 0
    )
    assert (out / "attention.png").stat().st_size > 0


def test_demo_small_passes_and_prints_every_mode(capsys):
    assert cli.main(["demo", "--size", "12", "--quick"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    for mode in MODES:
        row = next(line for line in lines if line.startswith(mode + " "))
        assert len(row.split("|")) == 8, row
    assert "max abs error" in out and "within 0.001" in out


def test_demo_fails_when_the_error_exceeds_the_tolerance(capsys, monkeypatch):
    monkeypatch.setattr(cli, "DEMO_ATOL", -1.0)
    assert cli.main(["demo", "--size", "4", "--channels", "8", "--quick"]) == 1
    assert "FAILED" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["demo", "--size", "0"], ["info", "--bogus"], []])
def test_bad_arguments_exit_with_usage(argv):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2


def test_bench_without_a_checkout_explains_how_to_run(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(cli, "_bench_script", lambda area="dense": tmp_path / "missing.py")
    assert cli.main(["bench", "--quick"]) == 2
    assert "benchmarks/dense.py" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.skipif(not BENCH.is_file(), reason="needs the source checkout's benchmarks/")
def test_dense_benchmark_quick_writes_results(tmp_path):
    out = tmp_path / "dense.md"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--out", str(out)],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = out.read_text()
    for heading in ("## Machine", "## Forward (no_grad, eval)", "## Forward+backward (train)",
                    "## Targets", "## Command"):  # fmt: skip
        assert heading in text
    for mode in MODES:
        assert f"| {mode} " in text
    assert "MALLOC_MMAP_MAX_=0" in text and "--quick" in text
    assert "NOT MEASURED" in text  # the targets need the full run


@pytest.mark.slow
@pytest.mark.skipif(not BENCH.is_file(), reason="needs the source checkout's benchmarks/")
def test_cli_bench_forwards_flags(tmp_path):
    out = tmp_path / "dense.md"
    proc = subprocess.run(
        [sys.executable, "-m", "nlgraph", "bench", "--quick", "--only", "dot_product",
         "--out", str(out)],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = out.read_text()
    assert "| dot_product " in text and "| gaussian " not in text


@pytest.mark.skipif(not BENCH.is_file(), reason="needs the source checkout's benchmarks/")
def test_cli_bench_writes_under_the_working_directory(tmp_path, capsys):
    """Regression: ``nlgraph bench --quick`` without --out, even run from another directory,
    overwrote the checkout's tracked benchmarks/results/dense.md with a quick run. In-process
    (the autouse fixture runs it in tmp_path); one mode, N = 1024, no warm-up: about a second."""
    tracked = ROOT / "benchmarks" / "results" / "dense.md"
    before = tracked.read_bytes() if tracked.is_file() else None
    quick = ["bench", "--quick", "--only", "dot_product", "--warmup", "0"]
    assert cli.main(quick) == 0
    out = tmp_path / "nlgraph-bench" / "dense.md"
    text = out.read_text()
    assert "| dot_product " in text and "| gaussian " not in text
    assert "- device: cpu" in text  # the results record the device
    captured = capsys.readouterr()
    assert str(out) in captured.out
    assert "## Forward (no_grad, eval)" in captured.out  # the tables are printed too
    assert "dense:" not in captured.err  # no progress bar when stderr is not a terminal
    assert (tracked.read_bytes() if tracked.is_file() else None) == before


def test_cli_bench_passes_its_flags_on(tmp_path, monkeypatch):
    """The flags given go to benchmarks/dense.py, with --out from --out-dir (relative to the
    working directory) or --out itself."""
    seen: list[list[str]] = []
    monkeypatch.setattr(cli, "bench", lambda args, area: seen.append(list(args)) or 0)
    argv = ["bench", "--quick", "--only", "gaussian", "--only", "dot_product", "--repeat", "3"]
    assert cli.main([*argv, "--warmup", "0", "--device", "cpu", "--out-dir", "runs/a"]) == 0
    assert cli.main(["bench", "--out", "x.md"]) == 0
    assert cli.main(["bench"]) == 0
    assert seen == [
        ["--quick", "--only", "gaussian", "--only", "dot_product", "--repeat", "3",
         "--warmup", "0", "--device", "cpu", "--out", str(tmp_path / "runs" / "a" / "dense.md")],
        ["--out", str(tmp_path / "x.md")],
        ["--out", str(tmp_path / "nlgraph-bench" / "dense.md")],
    ]  # fmt: skip


def test_cli_bench_runs_each_area_in_turn(tmp_path, monkeypatch, capsys):
    """AREA arguments: each script once, in the benchmarks' order, its results file under
    --out-dir; the device goes only to the scripts that take one; a progress line per area."""
    seen: list[tuple[str, list[str]]] = []
    monkeypatch.setattr(cli, "bench", lambda args, area: seen.append((area, list(args))) or 0)
    assert cli.main(["bench", "kernels", "graphs", "kernels", "--quick", "--device", "cpu"]) == 0
    out = tmp_path / "nlgraph-bench"
    assert seen == [
        ("graphs", ["--quick", "--out", str(out / "graphs.md")]),
        ("kernels", ["--quick", "--out", str(out / "kernels.md")]),
    ]
    assert capsys.readouterr().err.splitlines() == ["bench [1/2]: graphs", "bench [2/2]: kernels"]
    seen.clear()
    assert cli.main(["bench", "all"]) == 0
    cpu_areas = [a for a in cli.BENCH_AREAS if a != "gpu"]
    assert [area for area, _ in seen] == cpu_areas


def test_bench_areas_for_a_cuda_device(capsys):
    """``all`` with a CUDA device runs the areas that take a device (gpu included); a CPU-only
    area named with a CUDA device is an error. Only the device's type is read: no GPU needed."""
    usage = cli._parser().get_default("_subparsers")["bench"]
    assert cli._bench_areas(["all"], "cuda", usage) == ["dense", "objects", "gpu"]
    assert cli._bench_areas([], None, usage) == ["dense"]
    with pytest.raises(SystemExit):
        cli._bench_areas(["graphs"], "cuda:0", usage)
    assert "--device: expected the CPU for graphs (only dense, objects, gpu take a device)" in (
        capsys.readouterr().err
    )


def test_cli_bench_help_lists_its_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bench", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: nlgraph bench")
    for flag in ("--quick", "--only", "--repeat", "--warmup", "--device", "--out-dir", "--out"):
        assert flag in out, flag
    assert "./nlgraph-bench" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--only", "dotproduct"], "--only: expected one of gaussian, embedded_gaussian, "),
        (["--repeat", "0"], "--repeat: expected an int >= 1, got 0"),
        (["--device", "tpu"], "--device: expected a device such as cpu or cuda:0, got 'tpu'"),
        (["dens"], "AREA: expected one of dense, graphs, kernels, "),
        (["dense", "knn", "--out", "x.md"], "--out: expected a single AREA (use --out-dir"),
    ],
)
def test_cli_bench_bad_flags_exit_2_with_the_bench_usage(argv, message, capsys, monkeypatch):
    monkeypatch.setattr(cli, "bench", lambda *a: pytest.fail("the benchmark must not run"))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bench", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: nlgraph bench") and message in err.splitlines()[-1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_cli_bench_cuda_without_cuda(capsys, monkeypatch):
    monkeypatch.setattr(cli, "bench", lambda args: pytest.fail("the benchmark must not run"))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bench", "--quick", "--device", "cuda"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: nlgraph bench" in err
    assert err.splitlines()[-1] == (
        "nlgraph bench: error: --device: expected cpu (no CUDA device is available here), "
        "got 'cuda'"
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
@pytest.mark.skipif(not BENCH.is_file(), reason="needs the source checkout's benchmarks/")
def test_dense_benchmark_refuses_cuda_without_cuda(capsys, tmp_path):
    """benchmarks/dense.py run directly checks --device too (one line, exit 2)."""
    with pytest.raises(SystemExit) as exit_info:
        cli.bench(["--quick", "--device", "cuda", "--out", str(tmp_path / "dense.md")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: benchmarks/dense.py" in err and "--device: expected cpu (no CUDA" in err
    assert not (tmp_path / "dense.md").exists()


CASES = [
    (NonLocalBlock1d, (2, 6, 9)),
    (NonLocalBlock2d, (2, 6, 5, 7)),
    (NonLocalBlock3d, (1, 6, 2, 4, 5)),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("cls", "shape"), CASES, ids=["1d", "2d", "3d"])
def test_naive_baseline_matches_the_block(cls, shape, mode):
    """The demo's and benchmark's baseline computes what the block computes (float64)."""
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64)
    for sub, place, norm in itertools.product((True, False), ("after", "before"), ("batch", None)):
        scale = "inner" if mode == "embedded_gaussian" else None
        block = cls(6, 3, mode=mode, sub_sample=sub, pool_placement=place, norm=norm,
                    scale=scale, zero_init=False, dtype=torch.float64).eval()  # fmt: skip
        expected = block(x)
        for chunk in (None, 4):
            got = naive_from_block(block, query_chunk=chunk)(x)
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


GRAPHS_BENCH = ROOT / "benchmarks" / "graphs.py"


def test_demo_prints_the_sparse_section(capsys):
    assert cli.main(["demo", "--size", "12", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "sparse graphs:" in out
    lines = out.splitlines()
    for label, kind in (("full", "exact"), ("KNN(144)", "exact"), ("KNN(16)", "approximation"),
                        ("Window(2)", "approximation")):  # fmt: skip
        row = next(line for line in lines if line.startswith(label + " "))
        cells = [c.strip() for c in row.split("|")]
        assert len(cells) == 5 and cells[1] == kind, row
        if kind == "exact":
            assert float(cells[2]) <= cli.DEMO_ATOL, row
    assert "exact graphs within 0.001" in out


def test_demo_sparse_small_map_knn16_is_exact(capsys):
    """With N = 16 keys, KNN(16) keeps every key and must reproduce the dense output."""
    assert cli.demo_sparse(4, 8, warmup=0, repeat=1, seed=0)
    row = next(r for r in capsys.readouterr().out.splitlines() if r.startswith("KNN(16) "))
    assert [c.strip() for c in row.split("|")][1] == "exact", row


@pytest.mark.slow
@pytest.mark.skipif(not GRAPHS_BENCH.is_file(), reason="needs the source checkout's benchmarks/")
def test_graphs_benchmark_quick_writes_results(tmp_path):
    out = tmp_path / "graphs.md"
    proc = subprocess.run(
        [sys.executable, str(GRAPHS_BENCH), "--quick", "--out", str(out)],
        cwd=ROOT, env={**ENV, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = out.read_text()
    for heading in ("## Machine", "## Training step (forward + backward, train)",
                    "## Inference (forward, no_grad, eval)", "## NonLocalConv vs TransformerConv",
                    "## k-NN graph builder vs cdist + topk", "## Targets", "## Command"):  # fmt: skip
        assert heading in text
    graph_cells = [
        cells[2].strip()
        for line in text.splitlines()
        if len(cells := line.split("|")) == 8 and cells[1].strip() == "1024"
    ]
    for method in ("dense", "KNN(16)", "KNN(16) reused", "Window(2)"):
        assert graph_cells.count(method) == 2, method  # one row per pass at N=1024
    assert "| 1024 | nlgraph (torch)" in text and (tmp_path / "knn.md").is_file()
    assert "NOT MEASURED: KNN(16) training step at N=16384" in text  # needs the full run
    assert "NonLocalConv" in text and "--quick" in text

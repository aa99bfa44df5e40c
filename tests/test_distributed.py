"""Training beyond one process and one step (issue 13 §3).

- DDP: ``examples/ddp_train.py`` on 2 processes (gloo, 1 thread each) takes the same 3 SGD
  steps as one process on the concatenated batch, for the dense and the k-NN block.
- Chunked queries: a block's aggregation over slices of the queries against every key equals
  the one-shot aggregation, forward and backward.
- Neighbour mini-batching: ``NeighborLoader`` over a k-NN graph feeding ``NonLocalConv`` layers
  trains, and with every neighbour sampled a 1-layer model's seed outputs equal the
  full-graph layer's.
"""

from __future__ import annotations

import importlib.util
import os
import runpy
import socket
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from nlgraph import NonLocalBlock2d
from nlgraph.graphs import KNN, RegularGraph, knn_graph
from nlgraph.nn import NonLocalConv
from nlgraph.ops import nonlocal_aggregate

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "ddp_train.py"
SCALE_BENCH = ROOT / "benchmarks" / "scale.py"
WORLD_SIZE = 2
#: Seconds the two DDP processes may take, imports included, before the test fails.
DDP_TIMEOUT = 120.0
#: A tiny run: 3 steps of a global batch of 8 (4 per process), 16x16 images, k = 4.
DDP_ARGS: list[str] = [
    "--train-images", "24", "--test-images", "8", "--size", "16", "--epochs", "1",
    "--steps", "3", "--batch-size", "8", "--width", "8", "--knn", "4", "--norm", "none",
    "--lr", "0.5", "--device", "cpu", "--threads", "1", "--quiet",
]  # fmt: skip
ATOL = RTOL = 1e-5


# ---------------------------------------------------------------------------------- DDP
def _ddp_unavailable() -> str | None:
    """Why a 2-process gloo run cannot happen here, or None."""
    if not EXAMPLE.is_file():
        return "needs the source checkout's examples/ddp_train.py"
    if not torch.distributed.is_available():
        return "torch.distributed is not available in this build of torch"
    if not torch.distributed.is_gloo_available():
        return "the gloo backend is not available in this build of torch"
    try:
        torch.multiprocessing.get_context("spawn")
    except ValueError as exc:
        return f"multiprocessing cannot spawn processes: {exc}"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ddp_worker(rank: int, world_size: int, port: int, argv: list[str]) -> None:
    """One process of the run: the environment torchrun would set, then the example's main."""
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )  # fmt: skip
    if sys.platform.startswith("linux"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    runpy.run_path(str(EXAMPLE), run_name="ddp_train")["main"](argv)


def _run_ddp(argv: list[str]) -> None:
    ctx = torch.multiprocessing.start_processes(
        _ddp_worker, args=(WORLD_SIZE, _free_port(), argv), nprocs=WORLD_SIZE, join=False,
        start_method="spawn",
    )  # fmt: skip
    deadline = time.monotonic() + DDP_TIMEOUT
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            pytest.fail(f"the {WORLD_SIZE} DDP processes did not finish in {DDP_TIMEOUT:.0f} s")


def _changed(before: dict[str, Tensor], after: dict[str, Tensor], prefix: str) -> list[str]:
    return [k for k in after if k.startswith(prefix) and not torch.equal(before[k], after[k])]


@pytest.mark.slow
@pytest.mark.skipif(_ddp_unavailable() is not None, reason=str(_ddp_unavailable()))
def test_ddp_two_processes_equal_one_process_on_the_whole_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    example = runpy.run_path(str(EXAMPLE), run_name="ddp_train")
    ddp_file, single_file = tmp_path / "ddp.pt", tmp_path / "single.pt"
    _run_ddp([*DDP_ARGS, "--save", str(ddp_file), "--out-dir", str(tmp_path / "ddp")])
    threads = torch.get_num_threads()
    try:
        example["main"]([*DDP_ARGS, "--save", str(single_file), "--out-dir", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    ddp, single = torch.load(ddp_file), torch.load(single_file)
    assert ddp.keys() == single.keys()
    # The initial weights, for checking that training moved both blocks.
    torch.manual_seed(0)
    init = example["NonLocalCNN"](8, 4, "none").state_dict()
    for block in ("dense.", "sparse."):
        moved = _changed(init, single, block)
        assert {f"{block}{n}.weight" for n in ("theta", "phi", "g", "w_z")} <= set(moved)
    worst = max((ddp[k] - single[k]).abs().max().item() for k in single)
    for k in single:
        torch.testing.assert_close(ddp[k], single[k], atol=ATOL, rtol=RTOL, msg=lambda m: m)
    assert worst <= ATOL, f"max |DDP - one process| = {worst:.3g}"
    print(f"max |DDP - one process| over the parameters: {worst:.3g}")
    assert "processes: 2, backend gloo" in (tmp_path / "ddp" / "ddp_train.md").read_text()


# ---------------------------------------------------------------------------------- chunks
CHUNK = 24


def _chunked(block: NonLocalBlock2d, x: Tensor, chunk: int) -> Tensor:
    """The block's y over query slices of ``chunk`` rows against every key (the recipe of
    docs/distributed.md)."""
    query, key, value = block.embed(x)
    graph = block.build_graph(x, query.detach(), key.detach())
    pieces = []
    for start in range(0, query.shape[1], chunk):
        rows = slice(start, start + chunk)
        if isinstance(graph, RegularGraph):
            mask = None if graph.mask is None else graph.mask[:, rows]
            sub: str | RegularGraph = RegularGraph(graph.index[:, rows], graph.num_keys, mask)
        else:
            assert graph == "full", graph
            sub = "full"
        pieces.append(nonlocal_aggregate(query[:, rows], key, value, block.pairwise(), graph=sub))
    return torch.cat(pieces, dim=1)


@pytest.mark.parametrize("graph", ["full", KNN(6)], ids=["dense", "knn"])
def test_chunked_queries_equal_one_shot(graph: Any) -> None:
    torch.manual_seed(0)
    block = NonLocalBlock2d(8, graph=graph, zero_init=False)
    x = torch.randn(2, 8, 10, 10, requires_grad=True)
    query, key, value = block.embed(x)
    built = block.build_graph(x, query.detach(), key.detach())
    assert (built == "full") == (graph == "full")
    one_shot = nonlocal_aggregate(query, key, value, block.pairwise(), graph=built)
    chunked = _chunked(block, x, CHUNK)
    torch.testing.assert_close(chunked, one_shot, atol=ATOL, rtol=RTOL)
    weights = torch.randn_like(one_shot)
    (g_one,) = torch.autograd.grad((one_shot * weights).sum(), x)
    (g_chunk,) = torch.autograd.grad((chunked * weights).sum(), x)
    torch.testing.assert_close(g_chunk, g_one, atol=ATOL, rtol=RTOL)


# ---------------------------------------------------------------------------------- loader
def _scale_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_bench_scale", SCALE_BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    if not SCALE_BENCH.is_file():
        pytest.skip("needs the source checkout's benchmarks/scale.py")
    return _scale_bench()


NODES, K, FEATURES, CLASSES = 600, 6, 8, 4


def _graph_data(seed: int = 0) -> Any:
    from torch_geometric.data import Data

    g = torch.Generator().manual_seed(seed)
    centres = 3 * torch.randn(CLASSES, FEATURES, generator=g)
    y = torch.randint(CLASSES, (NODES,), generator=g)
    x = centres[y] + torch.randn(NODES, FEATURES, generator=g)
    return Data(x=x, edge_index=knn_graph(x, K), y=y, num_nodes=NODES)


SAMPLERS = ["torch", "pyg"]


def _loader(bench: ModuleType, data: Any, fanout: list[int], sampler: str, **kw: Any) -> Any:
    from torch_geometric.loader import NeighborLoader

    if sampler == "pyg":
        if not bench.pyg_sampling_available():
            pytest.skip("PyG's neighbour sampling needs pyg-lib or torch-sparse")
        return NeighborLoader(data, fanout, **kw)
    return NeighborLoader(
        data, fanout, neighbor_sampler=bench.TorchNeighborSampler(data, fanout), **kw
    )


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_neighbor_loader_all_neighbours_equals_the_full_graph_layer(
    bench: ModuleType, sampler: str
) -> None:
    torch.manual_seed(0)
    data = _graph_data()
    conv = NonLocalConv(FEATURES, 4)
    with torch.no_grad():
        full = conv(data.x, data.edge_index)
        seen = torch.zeros(NODES, dtype=torch.bool)
        for batch in _loader(bench, data, [-1], sampler, batch_size=128, shuffle=True):
            n = batch.batch_size
            assert batch.edge_index.shape[1] == n * K  # every in-edge of every seed
            out = conv(batch.x, batch.edge_index)[:n]
            torch.testing.assert_close(out, full[batch.n_id[:n]], atol=ATOL, rtol=RTOL)
            seen[batch.n_id[:n]] = True
    assert bool(seen.all())


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_neighbor_loader_trains_two_nonlocal_conv_layers(bench: ModuleType, sampler: str) -> None:
    torch.manual_seed(0)
    data = _graph_data()
    model = bench.NodeClassifier(FEATURES, 8, CLASSES)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)

    def full_loss() -> float:
        with torch.no_grad():
            return float(F.cross_entropy(model(data.x, data.edge_index), data.y))

    before = full_loss()
    loader = _loader(bench, data, [3, 3], sampler, batch_size=100, shuffle=True)
    steps = 0
    for _ in range(2):
        for batch in loader:
            n = batch.batch_size
            assert torch.equal(batch.n_id[:n], batch.input_id)
            loss = F.cross_entropy(model(batch.x, batch.edge_index)[:n], batch.y[:n])
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
    assert steps == 12
    after = full_loss()
    assert after < 0.7 * before, (before, after)


def test_torch_sampler_respects_the_fanout(bench: ModuleType) -> None:
    torch.manual_seed(0)
    data = _graph_data()
    sampler = bench.TorchNeighborSampler(data, [2, 3])
    from torch_geometric.sampler import NodeSamplerInput

    seeds = torch.arange(10, 50)
    out = sampler.sample_from_nodes(NodeSamplerInput(None, seeds))
    assert torch.equal(out.node[: seeds.numel()], seeds)
    assert out.node.unique().numel() == out.node.numel()
    assert out.num_sampled_edges == [2 * seeds.numel(), 3 * out.num_sampled_nodes[1]]
    # Every sampled edge is an edge of the graph, j -> i with i on the previous hop.
    edges = set(map(tuple, data.edge_index.t().tolist()))
    glob = torch.stack([out.node[out.row], out.node[out.col]]).t().tolist()
    assert all(tuple(e) in edges for e in glob)
    hop1 = out.col[: out.num_sampled_edges[0]]
    assert bool((hop1 < seeds.numel()).all())
    # The edge ids point at the same edges in the input's order (PyG maps them through perm).
    perm = sampler.perm if sampler.perm is not None else torch.arange(data.edge_index.shape[1])
    torch.testing.assert_close(
        data.edge_index[:, perm[out.edge]], torch.stack([out.node[out.row], out.node[out.col]])
    )

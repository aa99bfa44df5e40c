"""No host reads in the forward and backward of the modules: nothing that would synchronise a
CUDA stream or break a ``torch.compile`` graph (``.item()``, ``bool(t)``, ``nonzero``, boolean
indexing, ``bincount``, ``tolist``; see :mod:`tests.host_reads`).

Counted over one forward and backward, on the warm path a training loop runs (the block's
graph spec builds in the forward; a prebuilt graph has been used once). On CUDA the same runs
execute under ``torch.cuda.set_sync_debug_mode("error")``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import pytest
import torch

from nlgraph import NonLocalBlock2d, ObjectRelation
from nlgraph.graphs import KNN, COOGraph, EdgeIndex, Window
from tests.helpers import with_device
from tests.host_reads import count_host_reads


@contextlib.contextmanager
def _no_sync(device: str) -> Iterator[None]:
    if device != "cuda":
        yield
        return
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(0)


def _reads(device: str, step: Callable[[], torch.Tensor]) -> list[str]:
    step().sum().backward()  # warm: caches filled, lazy imports done
    with _no_sync(device):
        return count_host_reads(lambda: step().sum().backward())


@with_device
@pytest.mark.parametrize(
    "graph", ["full", Window(2), KNN(8), KNN(8, metric="l2"), "edge_index"], ids=str
)
def test_block_forward_backward_reads_nothing(device: str, graph) -> None:
    x = torch.randn(2, 16, 12, 12, device=device, requires_grad=True)
    if graph == "edge_index":  # a user edge set over the 36 pooled keys
        graph = torch.stack([torch.randint(0, 36, (300,)), torch.arange(300) % 144])
    block = NonLocalBlock2d(16, graph=graph, zero_init=False).to(device)
    assert _reads(device, lambda: block(x)) == []


@with_device
def test_prebuilt_graphs_read_nothing(device: str) -> None:
    x = torch.randn(2, 16, 12, 12, device=device, requires_grad=True)
    block = NonLocalBlock2d(16, graph=KNN(8), zero_init=False).to(device)
    regular = block.build_graph(x)
    assert _reads(device, lambda: block(x, graph=regular)) == []
    src = torch.randint(0, 36, (400,), device=device)
    dst = torch.arange(400, device=device) % 144
    order = torch.argsort(dst, stable=True)
    sorted_edges = torch.stack([src[order], dst[order]])
    known = COOGraph(sorted_edges, 144, 36, query_sorted=True)
    assert count_host_reads(lambda: block(x, graph=known).sum().backward()) == []
    unknown = COOGraph(sorted_edges, 144, 36)  # sortedness learnt on first use (one read)
    first = count_host_reads(lambda: block(x, graph=unknown).sum().backward())
    assert first == ["_local_scalar_dense"]
    assert _reads(device, lambda: block(x, graph=unknown)) == []


@with_device
def test_nonlocal_conv_reads_nothing(device: str) -> None:
    from torch_geometric import EdgeIndex as PygEdgeIndex

    from nlgraph import NonLocalConv

    conv = NonLocalConv(16).to(device)
    x = torch.randn(50, 16, device=device, requires_grad=True)
    edges = torch.stack([torch.randint(0, 50, (400,)), torch.arange(400) // 8]).to(device)
    assert _reads(device, lambda: conv(x, edges)) == []  # the same edge_index each step
    # A PyG EdgeIndex that knows it is sorted by target needs no read even the first time.
    pyg = PygEdgeIndex(edges, sparse_size=(50, 50), sort_order="col")
    assert count_host_reads(lambda: conv(x, pyg).sum().backward()) == []


@with_device
def test_object_relation_knn_reads_at_most_two(device: str) -> None:
    rel = ObjectRelation(64, num_heads=4, graph=8).to(device)
    x = torch.randn(40, 64, device=device, requires_grad=True)
    boxes = torch.rand(40, 4, device=device) * 50
    boxes[:, 2:] += boxes[:, :2] + 1
    batch = torch.arange(40, device=device) // 20
    reads = count_host_reads(lambda: rel(x, boxes, batch).sum().backward())
    assert len(reads) <= 2, reads  # the image sizes of the batch


def test_edge_index_spec_keeps_one_prepared_graph() -> None:
    """The spec prepares the graph once per input size (range check, CSR pattern)."""
    from nlgraph.graphs import GraphContext

    spec = EdgeIndex(torch.tensor([[0, 1, 2], [0, 0, 1]]))
    ctx = GraphContext(num_queries=3, num_keys=4, device=torch.device("cpu"))
    assert spec.build(ctx) is spec.build(ctx)
    other = GraphContext(num_queries=3, num_keys=5, device=torch.device("cpu"))
    assert spec.build(other) is not spec.build(ctx)

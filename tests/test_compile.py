"""``torch.compile`` and ``torch.export`` of the non-local blocks.

Compiled (inductor, ``fullgraph=True``, ``dynamic=False``) against eager on a copy of the same
block: outputs and the gradients of the input and of every parameter, float32, atol = rtol =
1e-5, in training mode (BatchNorm batch statistics) and in evaluation mode. ``fullgraph=True``
makes any graph break an error, so these runs also show that the graph specs build inside the
traced forward: the exact k-NN scan and its tie-aware top-k (no host read), the window (built
once per map size, a constant of the graph) and the range check of a prebuilt graph (an in-graph
``torch._assert_async``).

COO graphs (an ``edge_index`` spec or a prebuilt :class:`~nlgraph.graphs.COOGraph`) take the
``coo`` kernel under ``torch.compile`` (the ``csr`` kernel declines: sparse tensors do not
compile). They trace without graph breaks too: the ``EdgeIndex`` spec skips its per-size cache
while compiling (its key, the tensor's version counter, is data-dependent there) and makes the
graph in the traced code. They are still compiled with ``fullgraph=False`` here, the contract
for COO graphs, which may break the graph in the future: a ``COOGraph(query_sorted=None)`` that
reaches the ``csr`` kernel in eager learns its sortedness with one host read.

Compilation on CPU runs inductor's C++ compiler, several seconds per graph: maps are tiny,
``torch._dynamo.reset()`` runs around every test, recompilation counts use the cheap
``CompileCounter`` backend, and the slowest cases are marked ``slow``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch._dynamo.testing import CompileCounter

from nlgraph import NonLocalBlock1d, NonLocalBlock2d, NonLocalBlock3d
from nlgraph.graphs import KNN, COOGraph, RegularGraph, Window

#: float32 compiled vs eager: inductor fuses and reorders sums, so entries differ by rounding
#: relative to the scale of the terms summed. A parameter's gradient sums B·N terms of the
#: size of the largest gradient entry, through the BatchNorm's backward, and some sum to zero
#: exactly (the bias of g before the softmax and the BatchNorm), so gradients are compared at
#: the scale of the largest gradient of the block, within GRAD_TOL (7e-4 at a scale of 67
#: seen). In float64 compiled and eager agree to 1e-12 relative.
TOL = 1e-5
GRAD_TOL = 3e-5


def _assert_close(
    got: Tensor, want: Tensor, what: str, scale: float | None = None, tol: float = TOL
) -> None:
    """``got`` equals ``want`` within ``tol``, relative and absolute at ``scale`` (default: the
    largest |want|), at least 1."""
    scale = max(1.0, float(want.abs().max()) if scale is None else scale)
    torch.testing.assert_close(got, want, atol=tol * scale, rtol=tol, msg=lambda m: f"{what}: {m}")


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> Iterator[None]:
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _step(fn: Any, block: nn.Module, x: Tensor, **kwargs: Any) -> tuple[Tensor, dict[str, Tensor]]:
    """Output of ``fn`` (``block`` or its compiled form) and the gradients of ``x`` and of every
    parameter of ``block`` after one backward."""
    x = x.detach().clone().requires_grad_(True)
    out = fn(x, **kwargs)
    out.backward(torch.linspace(-1.0, 1.0, out.numel()).view_as(out))
    grads = {"x": x.grad}
    grads.update({n: p.grad for n, p in block.named_parameters() if p.grad is not None})
    return out.detach(), grads


def _assert_compiled_matches(
    block: nn.Module,
    x: Tensor,
    *,
    fullgraph: bool = True,
    modes: tuple[bool, ...] = (True, False),
    **kwargs: Any,
) -> None:
    """The compiled block (on a copy) gives the eager outputs and gradients, in training
    (``True``) and evaluation mode (``False``, a second compilation)."""
    compiled_block = copy.deepcopy(block)
    compiled = torch.compile(compiled_block, fullgraph=fullgraph, dynamic=False)
    for training in modes:
        block.train(training)
        compiled_block.train(training)
        block.zero_grad()
        compiled_block.zero_grad()
        want, want_grads = _step(block, block, x, **kwargs)
        got, got_grads = _step(compiled, compiled_block, x, **kwargs)
        _assert_close(got, want, "output")
        assert got_grads.keys() == want_grads.keys()
        scale = max(float(g.abs().max()) for g in want_grads.values())
        for name, grad in want_grads.items():
            _assert_close(got_grads[name], grad, f"grad of {name}", scale, GRAD_TOL)
    if isinstance(getattr(block, "norm", None), nn.BatchNorm2d):  # the same statistics kept
        torch.testing.assert_close(compiled_block.norm.running_mean, block.norm.running_mean)


def _block(graph: Any = "full", **kwargs: Any) -> NonLocalBlock2d:
    torch.manual_seed(0)
    return NonLocalBlock2d(8, graph=graph, zero_init=False, **kwargs)


def _x(*shape: int) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(
    "graph",
    [
        pytest.param("full", id="full"),
        pytest.param(KNN(4), id="knn"),
        pytest.param(KNN(4, metric="l2"), id="knn-l2", marks=pytest.mark.slow),
        pytest.param(Window(1), id="window"),
    ],
)
def test_block2d_compiles_fullgraph(graph: Any) -> None:
    """The graph spec runs inside the compiled forward (KNN rebuilt at every call)."""
    _assert_compiled_matches(_block(graph), _x(2, 8, 6, 6))


@pytest.mark.slow
def test_knn_block_compiles_without_sub_sampling() -> None:
    """A short last block of the exact scan (80 queries in blocks of 24) and the grouped
    top-k (N' = 80 keys in 10 groups)."""
    block = _block(KNN(4, block_size=24), sub_sample=False)
    _assert_compiled_matches(block, _x(2, 8, 8, 10), modes=(True,))


def test_prebuilt_regular_graph_compiles() -> None:
    """A RegularGraph passed to forward: one from ``build_graph`` (range-checked by
    construction) and one made by hand (range-checked in the graph)."""
    block, x = _block(KNN(4)), _x(2, 8, 6, 6)
    built = block.build_graph(x)
    assert isinstance(built, RegularGraph)
    _assert_compiled_matches(block, x, graph=built)
    torch._dynamo.reset()  # a new graph object of the same sizes would not recompile
    by_hand = RegularGraph(built.index.clone(), built.num_keys)
    _assert_compiled_matches(block, x, graph=by_hand, modes=(True,))


@pytest.mark.slow
@pytest.mark.parametrize("dims", [1, 3])
def test_block1d_3d_compile(dims: int) -> None:
    """Spot checks: a 1-D block rebuilding its k-NN graph, a 3-D block with a window."""
    torch.manual_seed(0)
    if dims == 1:
        block: nn.Module = NonLocalBlock1d(8, graph=KNN(3), zero_init=False)
        x = _x(2, 8, 12)
    else:
        block, x = NonLocalBlock3d(8, graph=Window(1), zero_init=False), _x(2, 8, 2, 4, 4)
    _assert_compiled_matches(block, x, modes=(True,))


@pytest.mark.slow
def test_coo_graphs_compile() -> None:
    """An edge_index spec and a prebuilt COOGraph (see the module docstring for the breaks)."""
    edges = torch.stack([torch.randint(0, 9, (60,)), torch.arange(60) % 36])
    x = _x(2, 8, 6, 6)
    _assert_compiled_matches(_block(edges), x, fullgraph=False)
    torch._dynamo.reset()
    _assert_compiled_matches(_block(), x, fullgraph=False, graph=COOGraph(edges, 36, 9))


def _frames(block: nn.Module, inputs: list[Tensor], graph: Any = None) -> int:
    """Frames compiled over ``inputs`` (``CompileCounter``: traced, run eagerly)."""
    counter = CompileCounter()
    compiled = torch.compile(block, backend=counter, fullgraph=True, dynamic=False)
    for x in inputs:
        g = graph(x) if graph is not None else None
        compiled(x.requires_grad_(True), graph=g).sum().backward()
    return counter.frame_count


@pytest.mark.parametrize("graph", ["full", KNN(4), Window(1)], ids=str)
def test_no_recompilation_per_call(graph: Any) -> None:
    """New inputs of a seen shape reuse the compiled graph; one compilation per map size."""
    inputs = [_x(2, 8, 6, 6), _x(2, 8, 6, 6) + 1, _x(2, 8, 8, 10), _x(2, 8, 6, 6) * 2]
    inputs.append(_x(2, 8, 8, 10) - 1)
    assert _frames(_block(graph), inputs) == 2


def test_prebuilt_graph_no_recompilation_per_call() -> None:
    """A fresh RegularGraph object at every call (of the same sizes) reuses the compiled graph."""
    block = _block(KNN(4))
    inputs = [_x(2, 8, 6, 6) + i for i in range(3)]
    assert _frames(block, inputs, graph=lambda x: block.build_graph(x)) == 1


class _WithGraph(nn.Module):
    """A block whose prebuilt graph is given as its index tensor (export takes tensors)."""

    def __init__(self, block: nn.Module, num_keys: int) -> None:
        super().__init__()
        self.block, self.num_keys = block, num_keys

    def forward(self, x: Tensor, index: Tensor) -> Tensor:
        return self.block(x, graph=RegularGraph(index, self.num_keys))


@pytest.mark.parametrize("graph", ["full", KNN(4), "prebuilt"])
def test_export(graph: Any) -> None:
    """``torch.export.export`` of the dense block, of a block rebuilding its k-NN graph, and of
    a block given a RegularGraph: the exported program gives the eager output, also on a new
    input."""
    block = _block(KNN(4) if graph == "prebuilt" else graph).eval()
    x, other = _x(2, 8, 6, 6), _x(2, 8, 6, 6) * 2 + 1
    if graph == "prebuilt":
        built = block.build_graph(x)
        assert isinstance(built, RegularGraph)
        module: nn.Module = _WithGraph(block, built.num_keys)
        program = torch.export.export(module, (x, built.index))
        for inp in (x, other):
            g = block.build_graph(inp)
            assert isinstance(g, RegularGraph)
            want = block(inp, graph=g)
            _assert_close(program.module()(inp, g.index), want, "exported output")
        return
    program = torch.export.export(block, (x,))
    for inp in (x, other):
        _assert_close(program.module()(inp), block(inp), "exported output")

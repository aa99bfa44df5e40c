"""Property-based tests (hypothesis) against the independent float64 references of
``tests/helpers.py``, gradient checks that fill the gaps of the per-module test files, and
extreme inputs.

- :func:`test_aggregate_equals_reference`: ``nonlocal_aggregate`` on every kernel of
  ``KERNELS`` that supports the drawn input equals :func:`reference_aggregate` (fp64), over
  random batch sizes, widths, the four modes, logit scales and graphs (full, random
  RegularGraph shared or per sample with padding, k up to beyond N', random COOGraph with
  duplicate edges, self-loops, isolated queries, a single node and no edge at all). The
  ``triton`` kernel runs the same property in Triton's interpreter with a handful of examples.
- :func:`test_block_equals_reference`: NonLocalBlock1d/2d/3d in eval mode equals
  :func:`reference_block` over dims, modes, sub-sampling, pool placement, scales, norms and
  graphs (full, k-NN with three metrics, window, a user edge_index), the graph entering the
  reference as an independently built neighbour mask.
- gradcheck / gradgradcheck in float64 for every kernel, the blocks (every mode, the
  concatenation fast path, k-NN and window graphs), latent blocks in every mode, and the
  documented double-backward limits of the ``once_differentiable`` Functions.
- extreme logits (about ±1e4) and NaN/inf propagation.

Hypothesis settings come from the profile loaded in ``tests/conftest.py`` ("ci" by default,
``HYPOTHESIS_PROFILE=dev`` for more examples). Failing examples found by hypothesis are kept
below as explicit ``@example`` regression cases.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from torch import Tensor
from torch.autograd import gradcheck, gradgradcheck

from nlgraph import NonLocalBlock1d, NonLocalBlock2d, NonLocalBlock3d
from nlgraph.graphs import KNN, COOGraph, Latent, RegularGraph, Window
from nlgraph.ops import KERNELS, AggregateInputs, nonlocal_aggregate
from nlgraph.pairwise import Pairwise
from tests.helpers import (
    DEFAULT_POOL,
    MODES,
    SOFTMAX_MODES,
    block_reference_args,
    needs_package,
    randomise_block_,
    reference_aggregate,
    reference_block,
)

F64 = torch.float64
BLOCKS: dict[int, type[torch.nn.Module]] = {
    1: NonLocalBlock1d,
    2: NonLocalBlock2d,
    3: NonLocalBlock3d,
}
#: Kernels run by the main aggregation property; "triton" (slow in the interpreter) has its own.
FAST_KERNELS = tuple(name for name in KERNELS if name != "triton")
GRAPH_KINDS = (
    "full",
    "regular",
    "regular_masked",
    "regular_per_sample",
    "coo",
    "coo_loops_dups_isolated",
    "coo_empty",
)
#: Kernels whose backward is a ``once_differentiable`` custom autograd Function: no double
#: backward (PyTorch raises "trying to differentiate twice a function that was marked with
#: @once_differentiable").
ONCE_DIFFERENTIABLE = ("regular", "csr", "triton")


# --------------------------------------------------------------------------- case builders
def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(gen: torch.Generator, *shape: int, scale: float = 1.0) -> Tensor:
    return torch.randn(*shape, generator=gen, dtype=F64) * scale


def _pairwise(mode: str, cq: int, scale: float, gen: torch.Generator) -> tuple[Pairwise, dict]:
    """The Pairwise under test and the matching keyword arguments of the reference."""
    if mode == "concatenation":
        cw = _randn(gen, 2 * cq)
        return Pairwise(mode, concat_weight=cw), {"concat_u": cw[:cq], "concat_w": cw[cq:]}
    s = scale if mode in SOFTMAX_MODES else 1.0
    return Pairwise(mode, scale=s), {"scale": s}


Edges = list[tuple[Tensor, Tensor]]  # per sample (or one shared): (source keys, target queries)


def _random_graph(
    kind: str, b: int, n: int, m: int, k: int, gen: torch.Generator
) -> tuple[str | RegularGraph | COOGraph, Edges | None]:
    """A graph of ``kind`` and its edge list (``None`` for the full graph), per graph of G."""
    if kind == "full":
        return "full", None
    if kind.startswith("regular"):
        g = b if kind == "regular_per_sample" else 1
        index = torch.randint(0, m, (g, n, k), generator=gen)  # repeats keys: duplicates
        mask = None
        if kind != "regular":
            mask = torch.rand(g, n, k, generator=gen) > 0.35
            mask[:, 0] = False  # query 0 has no neighbour
        graph = RegularGraph(index, m, mask)
        rows = torch.arange(n).repeat_interleave(k)
        edges = []
        for i in range(g):
            keep = torch.ones(n * k, dtype=torch.bool) if mask is None else mask[i].reshape(-1)
            edges.append((index[i].reshape(-1)[keep], rows[keep]))
        return graph, edges
    if kind == "coo_empty":
        ei = torch.zeros(2, 0, dtype=torch.long)
        return COOGraph(ei, n, m), [(ei[0], ei[1])]
    e = int(torch.randint(0, 3 * n + 1, (1,), generator=gen))
    src = torch.randint(0, m, (e,), generator=gen)
    dst = torch.randint(0, n, (e,), generator=gen)
    if kind == "coo_loops_dups_isolated":
        loops = torch.arange(min(n, m))
        src, dst = torch.cat([src, loops]), torch.cat([dst, loops])  # self-loops
        src, dst = torch.cat([src, src[:3]]), torch.cat([dst, dst[:3]])  # duplicate edges
        keep = dst != n - 1  # the last query is isolated
        src, dst = src[keep], dst[keep]
        perm = torch.randperm(src.numel(), generator=gen)
        src, dst = src[perm], dst[perm]
    return COOGraph(torch.stack([src, dst]), n, m), [(src, dst)]


def _reference_on_edges(
    q: Tensor, k: Tensor, v: Tensor, mode: str, edges: Edges | None, kw: dict
) -> Tensor:
    """The reference over an edge list: every edge is its own key column (so a repeated edge
    counts twice), plus one never-used column so that an empty edge set is still a valid input
    of :func:`reference_aggregate` (every query then gets 0)."""
    if edges is None:
        return reference_aggregate(q, k, v, mode, mask=None, **kw)[0]
    n, out = q.shape[1], []
    for i in range(q.shape[0]):
        src, dst = edges[i] if len(edges) > 1 else edges[0]
        src = torch.cat([src, src.new_zeros(1)])
        mask = dst[None, :] == torch.arange(n)[:, None]
        mask = torch.cat([mask, mask.new_zeros(n, 1)], 1)
        y, _ = reference_aggregate(
            q[i : i + 1], k[i : i + 1, src], v[i : i + 1, src], mode, mask=mask, **kw
        )
        out.append(y)
    return torch.cat(out)


def _tol(kernel: str) -> dict[str, float]:
    cls = KERNELS[kernel]
    return {"atol": cls.ATOL[F64], "rtol": cls.RTOL[F64]}


#: benchmarks/reliability.py sets this to a file: every property case appends the kernels it
#: checked (one line per case), to count the cases run per kernel.
RECORD_ENV = "NLGRAPH_PROPERTY_RECORD"


def _record(kernels: list[str]) -> None:
    path = os.environ.get(RECORD_ENV)
    if path:
        with open(path, "a") as f:
            f.write(" ".join(kernels) + "\n")


def _check_aggregate(
    b: int,
    n: int,
    m: int,
    cq: int,
    cv: int,
    mode: str,
    scale: float,
    kind: str,
    k: int,
    seed: int,
    kernels: tuple[str, ...],
) -> list[str]:
    """Run the drawn case on every supporting kernel of ``kernels``; return the names run."""
    gen = _generator(seed)
    q, kk, v = _randn(gen, b, n, cq), _randn(gen, b, m, cq), _randn(gen, b, m, cv)
    pw, kw = _pairwise(mode, cq, scale, gen)
    graph, edges = _random_graph(kind, b, n, m, k, gen)
    want = _reference_on_edges(q, kk, v, mode, edges, kw)
    inp = AggregateInputs(q, kk, v, pw, graph)
    ran = []
    for name in kernels:
        if not KERNELS[name].supports(inp):
            continue
        got = nonlocal_aggregate(q, kk, v, pw, graph=graph, backend=name)
        assert got.shape == (b, n, cv) and got.dtype == F64
        torch.testing.assert_close(got, want, **_tol(name), msg=lambda s, name=name: f"{name}: {s}")
        ran.append(name)
    _record(ran)
    return ran


# --------------------------------------------------------------------------- (a) aggregation
_sizes = {
    "b": st.integers(1, 3),
    "n": st.integers(1, 7),
    "m": st.integers(1, 7),
    "cq": st.integers(1, 4),
    "cv": st.integers(1, 3),
    "mode": st.sampled_from(MODES),
    "scale": st.sampled_from([1.0, 0.125, 0.7, 3.0]),
    "kind": st.sampled_from(GRAPH_KINDS),
    "k": st.integers(1, 9),
    "seed": st.integers(0, 2**16),
}


@given(**_sizes)
@example(b=1, n=1, m=1, cq=1, cv=1, mode="gaussian", scale=1.0, kind="full", k=1, seed=0)
@example(b=1, n=1, m=1, cq=1, cv=1, mode="concatenation", scale=1.0, kind="coo_empty", k=1, seed=0)
@example(
    b=2, n=5, m=3, cq=2, cv=2, mode="embedded_gaussian", scale=0.7, kind="regular", k=9, seed=1
)
@example(
    b=3, n=6, m=4, cq=3, cv=2, mode="dot_product", scale=1.0, kind="coo_loops_dups_isolated",
    k=1, seed=2,
)  # fmt: skip
@example(
    b=2, n=4, m=5, cq=2, cv=3, mode="concatenation", scale=1.0, kind="regular_per_sample",
    k=3, seed=3,
)  # fmt: skip
def test_aggregate_equals_reference(
    b: int, n: int, m: int, cq: int, cv: int, mode: str, scale: float, kind: str, k: int, seed: int
) -> None:
    """Every kernel that supports the input (dense, regular, coo, csr) gives the fp64
    reference's y, at the kernel's declared float64 tolerance; at least one kernel runs."""
    ran = _check_aggregate(b, n, m, cq, cv, mode, scale, kind, k, seed, FAST_KERNELS)
    assert ran, "no kernel supports the drawn input"


@pytest.mark.parametrize("kind", ["regular", "regular_masked", "coo"])
def test_csr_more_edges_than_pairs(kind: str) -> None:
    """Regression: a graph with more edges than query-key pairs (a key repeated in a row) crashed
    ``auto`` in the csr kernel (torch.sparse.sampled_addmm). csr now declines such graphs (from
    shapes alone) and ``auto`` gives the reference's numbers through regular/coo."""
    b, n, m, k = 1, 5, 3, 9
    gen = _generator(0)
    q, kk, v = _randn(gen, b, n, 2), _randn(gen, b, m, 2), _randn(gen, b, m, 2)
    graph, edges = _random_graph(kind, b, n, m, k, gen)
    if kind == "coo":
        src, dst = torch.randint(0, m, (3 * n * m,), generator=gen), torch.arange(n).repeat(3 * m)
        graph, edges = COOGraph(torch.stack([src, dst]), n, m), [(src, dst)]
    want = _reference_on_edges(q, kk, v, "embedded_gaussian", edges, {"scale": 1.0})
    inp = AggregateInputs(q, kk, v, Pairwise("embedded_gaussian"), graph)
    assert any("duplicates" in why for why in KERNELS["csr"].not_supported_reasons(inp))
    got = nonlocal_aggregate(q, kk, v, "embedded_gaussian", graph=graph)
    torch.testing.assert_close(got, want, **_tol("csr"))


@needs_package("triton")
@settings(max_examples=4, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    b=st.integers(1, 2),
    n=st.integers(1, 4),
    m=st.integers(1, 4),
    cq=st.integers(1, 3),
    cv=st.integers(1, 2),
    mode=st.sampled_from(MODES),
    kind=st.sampled_from(GRAPH_KINDS[1:]),
    k=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
@example(b=1, n=1, m=1, cq=1, cv=1, mode="gaussian", kind="coo_empty", k=1, seed=0)
def test_triton_aggregate_equals_reference(
    b: int,
    n: int,
    m: int,
    cq: int,
    cv: int,
    mode: str,
    kind: str,
    k: int,
    seed: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The fused ``triton`` kernel, in Triton's interpreter (TRITON_INTERPRET=1), gives the fp64
    reference's y on random sparse graphs (a handful of examples: the interpreter is slow)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    ran = _check_aggregate(b, n, m, cq, cv, mode, 0.7, kind, k, seed, ("triton",))
    assert ran == ["triton"]


# --------------------------------------------------------------------------- (b) blocks
def _knn_mask(k: int, metric: str) -> Callable[[Tensor, Tensor], Tensor]:
    """The k-NN neighbour mask, from its definition: the k keys with the largest q·k (``logit``),
    the smallest Euclidean distance (``l2``) or the largest cosine; ties to the lower index."""

    def mask(q: Tensor, key: Tensor) -> Tensor:
        if metric == "logit":
            score = torch.einsum("bnc,bmc->bnm", q, key)
        elif metric == "l2":
            score = -torch.cdist(q, key)
        else:
            qn = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-300)
            kn = key / key.norm(dim=-1, keepdim=True).clamp_min(1e-300)
            score = torch.einsum("bnc,bmc->bnm", qn, kn)
        kk = min(k, key.shape[1])
        order = torch.sort(-score, dim=-1, stable=True).indices[..., :kk]
        out = torch.zeros(score.shape, dtype=torch.bool)
        return out.scatter_(-1, order, True)

    return mask


def _window_mask(
    shape: tuple[int, ...], pool: tuple[int, ...], radius: int, dilation: int
) -> Tensor:
    """(N, N') window mask: key cell within Chebyshev distance r·d of the query's pooled cell
    (clamped onto the key map) on the dilation-d lattice through it."""
    key_shape = tuple(s // p for s, p in zip(shape, pool))
    qc = torch.cartesian_prod(*(torch.arange(s) for s in shape)).reshape(-1, len(shape))
    kc = torch.cartesian_prod(*(torch.arange(s) for s in key_shape)).reshape(-1, len(shape))
    cell = torch.minimum(qc // torch.tensor(pool), torch.tensor(key_shape) - 1)
    diff = kc[None, :, :] - cell[:, None, :]
    return ((diff.abs() <= radius * dilation) & (diff % dilation == 0)).all(-1)


_SPATIAL_MAX = {1: 9, 2: 5, 3: 3}


@st.composite
def _spatial(draw: st.DrawFn, dims: int) -> tuple[int, ...]:
    return tuple(draw(st.integers(1, _SPATIAL_MAX[dims])) for _ in range(dims))


@given(
    dims=st.sampled_from([1, 2, 3]),
    data=st.data(),
    b=st.integers(1, 3),
    c=st.integers(1, 4),
    inter=st.integers(1, 3),
    mode=st.sampled_from(MODES),
    sub_sample=st.booleans(),
    placement=st.sampled_from(["after", "before"]),
    norm=st.sampled_from(["batch", None]),
    scale=st.sampled_from([None, "inner", "input", 0.3]),
    kind=st.sampled_from(["full", "knn", "window", "edge_index"]),
    k=st.integers(1, 12),
    metric=st.sampled_from(["logit", "l2", "cosine"]),
    radius=st.integers(0, 2),
    dilation=st.integers(1, 2),
    seed=st.integers(0, 2**16),
)
@example(
    dims=2, data=None, b=1, c=1, inter=1, mode="gaussian", sub_sample=True, placement="after",
    norm=None, scale=None, kind="knn", k=1, metric="logit", radius=0, dilation=1, seed=0,
)  # fmt: skip
@example(
    dims=3, data=None, b=2, c=3, inter=2, mode="embedded_gaussian", sub_sample=True,
    placement="before", norm="batch", scale="inner", kind="window", k=1, metric="l2", radius=1,
    dilation=2, seed=1,
)  # fmt: skip
@example(
    dims=1, data=None, b=1, c=2, inter=3, mode="concatenation", sub_sample=False,
    placement="after", norm="batch", scale=None, kind="edge_index", k=1, metric="l2", radius=1,
    dilation=1, seed=2,
)  # fmt: skip
def test_block_equals_reference(
    dims: int,
    data: Any,
    b: int,
    c: int,
    inter: int,
    mode: str,
    sub_sample: bool,
    placement: str,
    norm: str | None,
    scale: str | float | None,
    kind: str,
    k: int,
    metric: str,
    radius: int,
    dilation: int,
    seed: int,
) -> None:
    """A randomised NonLocalBlock{1,2,3}d in eval mode equals :func:`reference_block` built from
    its raw weights; sparse graphs enter the reference as an independently built mask."""
    gen = _generator(seed)
    pool = DEFAULT_POOL[dims]
    spatial = data.draw(_spatial(dims)) if data is not None else (3,) * dims
    if sub_sample:  # the map must leave at least one key
        spatial = tuple(max(s, p) for s, p in zip(spatial, pool))
    if mode != "embedded_gaussian":
        scale = None
    key_shape = tuple(s // p for s, p in zip(spatial, pool)) if sub_sample else spatial
    n, n_keys = math.prod(spatial), math.prod(key_shape)
    mask: Tensor | Callable[[Tensor, Tensor], Tensor] | None = None
    graph: Any = "full"
    if kind == "knn":
        graph, mask = KNN(k, metric=metric), _knn_mask(k, metric)
    elif kind == "window":
        graph = Window(radius, dilation)
        mask = _window_mask(spatial, pool if sub_sample else (1,) * dims, radius, dilation)
    elif kind == "edge_index":
        pairs = torch.rand(n, n_keys, generator=gen) < 0.4  # unique edges, some queries isolated
        dst, src = pairs.nonzero().t()
        graph, mask = torch.stack([src, dst]), pairs
    torch.manual_seed(seed)
    block = BLOCKS[dims](
        c, inter, mode=mode, sub_sample=sub_sample, pool_placement=placement, scale=scale,
        norm=norm, zero_init=False, graph=graph, dtype=F64,
    )  # fmt: skip
    randomise_block_(block).eval()
    x = _randn(gen, b, c, *spatial)
    with torch.no_grad():
        z = block(x)
        want, _ = reference_block(x, **block_reference_args(block, scale), mask=mask)
    assert z.shape == x.shape
    torch.testing.assert_close(z, want, atol=1e-9, rtol=1e-9)


# --------------------------------------------------------------------------- gradients
def _grad_case(
    kernel: str, mode: str
) -> tuple[Tensor, Tensor, Tensor, Pairwise, dict, str | RegularGraph, Edges | None]:
    """Tiny float64 leaves and a graph the kernel runs: the full graph for ``dense``, else a
    padded RegularGraph with a repeated key and a query without neighbours."""
    gen = _generator(5)
    b, n, m, cq, cv = 2, 4, 3, 2, 2
    q, k, v = (t.requires_grad_() for t in (_randn(gen, b, n, cq), _randn(gen, b, m, cq),
                                             _randn(gen, b, m, cv)))  # fmt: skip
    pw, kw = _pairwise(mode, cq, 0.8, gen)
    if kernel == "dense":
        return q, k, v, pw, kw, "full", None
    index = torch.tensor([[[0, 0], [1, 2], [2, 1], [0, 2]]])
    mask = torch.tensor([[[False, False], [True, True], [True, False], [True, True]]])
    graph = RegularGraph(index, m, mask)
    src, dst = index[0][mask[0]], torch.arange(n).repeat_interleave(2)[mask[0].reshape(-1)]
    return q, k, v, pw, kw, graph, [(src, dst)]


def _grad_inputs(q: Tensor, k: Tensor, v: Tensor, pw: Pairwise) -> tuple[Tensor, ...]:
    if pw.concat_weight is None:
        return q, k, v
    return q, k, v, pw.concat_weight.detach().clone().requires_grad_()


def _agg_fn(pw: Pairwise, graph: Any, kernel: str) -> Callable[..., Tensor]:
    def fn(q: Tensor, k: Tensor, v: Tensor, cw: Tensor | None = None) -> Tensor:
        p = pw if cw is None else Pairwise(pw.mode, concat_weight=cw)
        return nonlocal_aggregate(q, k, v, p, graph=graph, backend=kernel)

    return fn


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kernel", list(KERNELS))
def test_kernel_gradcheck(kernel: str, mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every kernel's first derivatives (q, k, v and the concatenation weight) match finite
    differences in float64, after its values match the reference (triton: interpreter, tiny)."""
    if kernel == "triton":
        pytest.importorskip("triton")
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    q, k, v, pw, kw, graph, edges = _grad_case(kernel, mode)
    fn = _agg_fn(pw, graph, kernel)
    inputs = _grad_inputs(q, k, v, pw)
    torch.testing.assert_close(
        fn(*inputs), _reference_on_edges(q, k, v, mode, edges, kw), **_tol(kernel)
    )
    assert gradcheck(fn, inputs, fast_mode=True)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kernel", list(KERNELS))
def test_kernel_double_backward(kernel: str, mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Second derivatives where the kernel has them, a clear RuntimeError where it has not.

    - ``regular``, ``csr``, ``triton``: their backward is a ``once_differentiable`` custom
      Function; differentiating it again raises PyTorch's "trying to differentiate twice a
      function that was marked with @once_differentiable".
    - ``dense`` softmax modes (CPU): PyTorch's fused flash-attention CPU backward has no
      derivative ("derivative for aten::_scaled_dot_product_flash_attention_for_cpu_backward is
      not implemented").
    - ``coo`` (every mode) and ``dense`` dot product / concatenation (plain autograd ops):
      gradgradcheck passes.
    """
    if kernel == "triton":
        pytest.importorskip("triton")
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    q, k, v, pw, _, graph, _ = _grad_case(kernel, mode)
    fn = _agg_fn(pw, graph, kernel)
    inputs = _grad_inputs(q, k, v, pw)
    if kernel in ONCE_DIFFERENTIABLE:
        grads = torch.autograd.grad(fn(*inputs).square().sum(), inputs, create_graph=True)
        with pytest.raises(RuntimeError, match="differentiate twice"):
            sum(g.square().sum() for g in grads).backward()
    elif kernel == "dense" and mode in SOFTMAX_MODES:
        grads = torch.autograd.grad(fn(*inputs).square().sum(), inputs, create_graph=True)
        with pytest.raises(RuntimeError, match="derivative for .* is not implemented"):
            sum(g.square().sum() for g in grads).backward()
    else:
        assert gradgradcheck(fn, inputs, fast_mode=True)


def _block_gradcheck(block: torch.nn.Module, x: Tensor) -> None:
    """gradcheck (fast mode: a random directional derivative per input) of the block's output
    with respect to ``x`` and every parameter."""
    names = [name for name, _ in block.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in block.parameters())

    def fn(x: Tensor, *ps: Tensor) -> Tensor:
        return torch.func.functional_call(block, dict(zip(names, ps)), (x,))

    assert gradcheck(fn, (x.requires_grad_(), *params), fast_mode=True)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dims", [1, 2, 3])
def test_block_gradcheck_full_graph(dims: int, mode: str) -> None:
    """NonLocalBlock{1,2,3}d (dense kernel; the concatenation fast path with its projection
    weight) in train mode: gradients of the input and every parameter match finite differences,
    after the output matches the reference."""
    block = BLOCKS[dims](2, 2, mode=mode, zero_init=False, dtype=F64)
    randomise_block_(block).train()
    x = torch.randn(2, 2, *{1: (4,), 2: (2, 2), 3: (1, 2, 2)}[dims], dtype=F64)
    want, _ = reference_block(x, **block_reference_args(block))
    torch.testing.assert_close(block(x), want, atol=1e-10, rtol=1e-10)
    _block_gradcheck(block, x)


@pytest.mark.parametrize(
    ("mode", "graph", "backend"),
    [
        ("gaussian", "knn", "regular"),
        ("embedded_gaussian", "window", "csr"),
        ("dot_product", "knn", "coo"),
        ("concatenation", "window", "regular"),
        ("embedded_gaussian", "knn", "csr"),
        ("concatenation", "knn", "coo"),
    ],
)
def test_block_gradcheck_sparse_graphs(mode: str, graph: str, backend: str) -> None:
    """A block over a k-NN or window graph on each sparse kernel: values equal the masked
    reference, gradients (input and parameters) match finite differences."""
    spec = KNN(2) if graph == "knn" else Window(1)
    block = NonLocalBlock1d(
        2, 2, mode=mode, sub_sample=False, zero_init=False, graph=spec, backend=backend, dtype=F64
    )
    randomise_block_(block).train()
    x = torch.randn(1, 2, 5, dtype=F64)
    mask = _knn_mask(2, "logit") if graph == "knn" else _window_mask((5,), (1,), 1, 1)
    want, _ = reference_block(x, **block_reference_args(block), mask=mask)
    torch.testing.assert_close(block(x), want, atol=1e-10, rtol=1e-10)
    _block_gradcheck(block, x)


@pytest.mark.parametrize("mode", MODES)
def test_latent_block_gradcheck_every_mode(mode: str) -> None:
    """``latent=Latent(M)`` in every mode (tests/nn/test_latent_block.py checks only the
    embedded Gaussian): gradients of the input and every parameter match finite differences."""
    block = NonLocalBlock2d(2, 2, mode=mode, latent=Latent(2), zero_init=False, dtype=F64)
    randomise_block_(block).train()
    _block_gradcheck(block, torch.randn(2, 2, 2, 4, dtype=F64))


def test_object_relation_double_backward_raises() -> None:
    """ObjectRelation's geometry weights run through a ``once_differentiable`` Function
    (object_relation._EmbeddedGeometryLinear): double backward raises PyTorch's clear error."""
    from nlgraph import ObjectRelation

    torch.manual_seed(0)
    rel = ObjectRelation(4, num_heads=2, key_channels=4, geo_channels=8).double()
    x = torch.randn(3, 4, dtype=F64, requires_grad=True)
    xy = torch.rand(3, 2, dtype=F64) * 10
    boxes = torch.cat([xy, xy + 1 + torch.rand(3, 2, dtype=F64) * 5], 1)
    weight = rel.get_parameter("geo.weight")
    _, gw = torch.autograd.grad(rel(x, boxes).square().sum(), (x, weight), create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        gw.square().sum().backward()


# --------------------------------------------------------------------------- extreme inputs
@given(
    mode=st.sampled_from(SOFTMAX_MODES),
    sign=st.sampled_from([1.0, -1.0]),
    offset=st.booleans(),
    kind=st.sampled_from(["full", "regular_masked", "coo"]),
    seed=st.integers(0, 2**16),
)
@example(mode="embedded_gaussian", sign=-1.0, offset=True, kind="full", seed=0)
def test_large_logits_are_stable(
    mode: str, sign: float, offset: bool, kind: str, seed: int
) -> None:
    """Logits of about ±1e4 (large q and k in the Gaussian modes; with ``offset`` every logit of
    a row near -1e4 or +1e4, which overflows or underflows an unshifted exp) give finite outputs
    equal to the fp64 reference on every kernel: the softmax is stabilised."""
    gen = _generator(seed)
    b, n, m, c = 2, 5, 4, 3
    q, k = _randn(gen, b, n, c, scale=60.0), _randn(gen, b, m, c, scale=60.0)
    if offset:
        q = q + 100.0
        k = sign * (k + 100.0)
    v = _randn(gen, b, m, 2)
    graph, edges = _random_graph(kind, b, n, m, 3, gen)
    pw = Pairwise(mode)
    want = _reference_on_edges(q, k, v, mode, edges, {"scale": 1.0})
    assert torch.isfinite(want).all()
    inp = AggregateInputs(q, k, v, pw, graph)
    for name in FAST_KERNELS:
        if KERNELS[name].supports(inp):
            got = nonlocal_aggregate(q, k, v, pw, graph=graph, backend=name)
            assert torch.isfinite(got).all(), name
            torch.testing.assert_close(got, want, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kernel", FAST_KERNELS)
def test_non_finite_key_propagates_locally(kernel: str, mode: str, bad: float) -> None:
    """A NaN or ±inf in one key's embedding (and its value) neither raises nor hangs. On a sparse
    graph it stays local: every query that is not connected to that key gets exactly the
    reference output computed without it (finite). In the softmax and dot-product modes a NaN
    key makes every connected query's output NaN. (Which rows a ±inf key poisons, and in the
    concatenation mode whether a NaN key whose ReLU(u·q + w·k) is cut off reaches its query, is
    left unspecified: dense fast paths and gathers legitimately differ there.)"""
    gen = _generator(11)
    b, n, m, c = 2, 6, 5, 3
    q, k, v = _randn(gen, b, n, c), _randn(gen, b, m, c), _randn(gen, b, m, 2)
    pw, kw = _pairwise(mode, c, 1.0, gen)
    if kernel == "dense":
        graph: Any = "full"
        connected = torch.ones(n, dtype=torch.bool)
        edges = None
    else:  # every key in every row's slots, the mask keeping the edges (all sparse kernels)
        pairs = torch.rand(n, m, generator=gen) < 0.5
        pairs[:, 0] = False
        pairs[1, 0] = pairs[4, 0] = True  # key 0 (the bad one) feeds queries 1 and 4 only
        pairs[2, 3] = True  # query 2 is connected, but not to the bad key
        graph = RegularGraph(torch.arange(m).expand(1, n, m).contiguous(), m, pairs[None])
        dst, src = pairs.nonzero().t()
        edges = [(src, dst)]
        connected = pairs[:, 0]
    k_bad, v_bad = k.clone(), v.clone()
    k_bad[0, 0, :] = bad
    v_bad[0, 0, :] = bad
    y = nonlocal_aggregate(q, k_bad, v_bad, pw, graph=graph, backend=kernel)
    assert y.shape == (b, n, 2)
    want = _reference_on_edges(q, k, v, mode, edges, kw)  # the bad key is nobody's here
    torch.testing.assert_close(y[0, ~connected], want[0, ~connected], **_tol(kernel))
    torch.testing.assert_close(y[1], want[1], **_tol(kernel))  # other samples are untouched
    if math.isnan(bad) and mode != "concatenation":
        assert torch.isnan(y[0, connected]).all()

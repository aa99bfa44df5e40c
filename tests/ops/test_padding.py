"""Padding slots and unreferenced keys filled with NaN change no output and no gradient
(xformers' out-of-bounds test): every kernel, every mode, with and without ``edge_bias``.

A RegularGraph's padding slots nominally point at key 0, which no real edge uses; key 0 and
value 0 (and the bias of the padding slots) are NaN. A kernel that gathered key 0 for a padding
slot and multiplied it by a zero weight would turn the output NaN.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from nlgraph import Pairwise, nonlocal_aggregate
from nlgraph.graphs import RegularGraph
from nlgraph.ops import KERNELS
from tests.helpers import MODES, reference_aggregate

F64 = torch.float64
B, N, M, K, C, CV = 2, 9, 8, 4, 5, 3


def _graph() -> tuple[RegularGraph, torch.Tensor]:
    """Real neighbours among keys 1..M-1, padding slots on key 0; query 2 has none."""
    gen = torch.Generator().manual_seed(0)
    index = torch.stack([1 + torch.randperm(M - 1, generator=gen)[:K] for _ in range(N)])
    mask = torch.rand(N, K, generator=gen) > 0.35
    mask[2] = False
    index = index.masked_fill(~mask, 0)
    dense = torch.zeros(N, M, dtype=torch.bool)
    for i in range(N):
        dense[i, index[i, mask[i]]] = True
    return RegularGraph(index.unsqueeze(0), M, mask.unsqueeze(0)), dense


@pytest.mark.parametrize("backend", [name for name in KERNELS if name != "dense"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bias", [False, True])
def test_nan_padding_changes_nothing(
    backend: str, mode: str, bias: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if bias and mode not in ("gaussian", "embedded_gaussian"):
        pytest.skip("edge_bias: softmax modes only")
    if backend == "triton":  # CPU tensors: Triton's interpreter
        if importlib.util.find_spec("triton") is None:
            pytest.skip("needs the optional package 'triton'")
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    graph, dense = _graph()
    cw = torch.randn(2 * C, dtype=F64)
    pw = Pairwise(mode, scale=0.7 if mode == "embedded_gaussian" else 1.0, concat_weight=cw)
    q = torch.randn(B, N, C, dtype=F64, requires_grad=True)
    k = torch.randn(B, M, C, dtype=F64)
    v = torch.randn(B, M, CV, dtype=F64)
    k[:, 0], v[:, 0] = float("nan"), float("nan")  # only padding slots point here
    k.requires_grad_(True)
    v.requires_grad_(True)
    beta = None
    if bias:
        beta = torch.randn(B, N, K, dtype=F64)
        beta[:, ~graph.mask[0]] = float("nan")  # the bias of padding slots is never read
        beta.requires_grad_(True)
        if backend == "coo":  # a COO graph lists the real edges only
            beta = beta[:, graph.mask[0]].detach().requires_grad_(True)
    g = graph.to_coo() if backend == "coo" else graph
    y = nonlocal_aggregate(q, k, v, pw, graph=g, backend=backend, edge_bias=beta)
    assert bool(torch.isfinite(y).all())
    kw = dict(scale=pw.scale, concat_u=cw[:C], concat_w=cw[C:])
    if beta is None:
        want, _ = reference_aggregate(q, k.nan_to_num(0.0), v.nan_to_num(0.0), mode,
                                      mask=dense.expand(B, -1, -1), **kw)  # fmt: skip
        torch.testing.assert_close(y, want, atol=1e-10, rtol=1e-10)
    grads = torch.autograd.grad(y.square().sum(), [t for t in (q, k, v, beta) if t is not None])
    for grad in grads:
        assert bool(torch.isfinite(grad).all())
    assert torch.equal(grads[1][:, 0], torch.zeros(B, C, dtype=F64))  # key 0: no real edge
    assert torch.equal(grads[2][:, 0], torch.zeros(B, CV, dtype=F64))

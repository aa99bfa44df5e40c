"""Mixed precision: every kernel and the blocks under ``torch.autocast`` and on half inputs.

Each kernel case feeds half-precision q, k, v (made by ``nn.Linear`` inside
``torch.autocast("cpu", dtype=torch.bfloat16)``, or plain bfloat16/float16 tensors), runs forward
and backward, and compares y and dq, dk, dv with :func:`tests.helpers.reference_aggregate` in
float64 *on the same rounded inputs*, so only the error the kernel adds is measured. Errors are
normwise: max |x - ref| <= tol * max |ref| (elementwise relative errors are meaningless next to
entries that cancel to ~0).

Tolerances (``TOL``, normwise). One unit in the last place (ulp) is 2^-8 = 3.9e-3 relative in
bfloat16 and 2^-11 = 4.9e-4 in float16. With the softmax, normalisation and sums in float32,
y carries its final rounding (half an ulp per entry) plus, on ``dense``, the rounding of the
per-edge weights that fused attention multiplies with v: measured <= 3.7e-3 (bfloat16; triton
6.8e-3) and <= 4.1e-4 (float16; triton 8.6e-4) in ``benchmarks/results/amp.md``, so y is
checked at 1e-2 / 2e-3 (2.5 / 4 ulps). Gradients chain more rounded products (g, w, v, the
softmax's g·y; the triton kernel's backward takes g·y from the y it stored in the input dtype):
measured <= 7.2e-3 (bfloat16; triton 2.1e-2) and <= 9.7e-4 (float16), checked at 3e-2 / 5e-3
(triton bfloat16 5e-2): about 4x the measured maxima, which move with the seed and shape.
Before the fixes (softmax and segment sums in bfloat16, concatenation halves rounded to
bfloat16) the concatenation gradients were off by 0.1-0.3 (edges flipping across the ReLU
kink), far outside these bounds.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest
import torch
from torch import Tensor

from nlgraph import NonLocalBlock2d, NonLocalConv, Pairwise, nonlocal_aggregate
from nlgraph.graphs import KNN, Window
from nlgraph.ops import AggregateInputs, select_kernel
from nlgraph.ops._segment import Segments, normalise_rows, normalise_segments
from nlgraph.ops.dispatch import KERNELS
from nlgraph.ops.kernels._scatter import segment_sum
from tests.helpers import (
    KERNEL_GRAPH_RUNS,
    MODES,
    block_reference_args,
    graph_to,
    masked_graph,
    randomise_block_,
    reference_aggregate,
    reference_block,
)

B, N, M, K, C, CV = 2, 24, 16, 6, 8, 8
BF16, F16, F64 = torch.bfloat16, torch.float16, torch.float64
SETTINGS = ["autocast", "bf16", "fp16"]
#: (y, gradients) normwise tolerances per kernel and setting (module docstring).
TOL: dict[str, tuple[float, float]] = {
    "autocast": (1e-2, 3e-2),
    "bf16": (1e-2, 3e-2),
    "fp16": (2e-3, 5e-3),
}
TRITON_TOL: dict[str, tuple[float, float]] = {**TOL, "autocast": (1e-2, 5e-2), "bf16": (1e-2, 5e-2)}
RUNS = list(KERNEL_GRAPH_RUNS)
HAS_TRITON = importlib.util.find_spec("triton") is not None


@pytest.fixture(autouse=True)
def _interpret(monkeypatch: pytest.MonkeyPatch) -> None:
    """Triton's interpreter for CPU tensors (read when the triton kernels are first built)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def _graph(kind: str, gen: torch.Generator, n: int = N, m: int = M) -> tuple[Any, Tensor]:
    """A graph with distinct neighbours and its (N, N') mask; query 0 has no neighbour."""
    return masked_graph(kind, n, m, K, gen)


def _pairwise(mode: str, gen: torch.Generator) -> Pairwise:
    if mode == "concatenation":  # a float32 parameter, as in the blocks
        return Pairwise(mode, concat_weight=torch.randn(2 * C, generator=gen) / C**0.5)
    return Pairwise(mode, C**-0.5 if mode == "embedded_gaussian" else 1.0)


def _inputs(
    setting: str, gen: torch.Generator, n: int = N, m: int = M
) -> tuple[Tensor, Tensor, Tensor]:
    """Half-precision leaf q, k, v: autocast's output of nn.Linear, or plain casts."""
    raw = [torch.randn(B, rows, w, generator=gen) for rows, w in ((n, C), (m, C), (m, CV))]
    if setting == "autocast":
        layers = [torch.nn.Linear(t.shape[-1], t.shape[-1], bias=False) for t in raw]
        with torch.autocast("cpu", dtype=BF16):
            out = [layer(t) for layer, t in zip(layers, raw)]
        assert all(t.dtype == BF16 for t in out)
    else:
        out = [t.to(BF16 if setting == "bf16" else F16) for t in raw]
    q, k, v = (t.detach().requires_grad_() for t in out)
    return q, k, v


def _assert_close(name: str, x: Tensor, ref: Tensor, tol: float) -> None:
    assert torch.isfinite(x).all(), f"{name}: not finite"
    err = float((x.detach().double() - ref.detach()).abs().max())
    scale = float(ref.abs().max())
    assert err <= tol * scale, f"{name}: max abs error {err:.3g} > {tol} * max |ref| {scale:.3g}"


def _run(kernel: str, kind: str, mode: str, setting: str, n: int = N, m: int = M) -> None:
    gen = torch.Generator().manual_seed(0)
    graph, mask = _graph(kind, gen, n, m)
    pw = _pairwise(mode, gen)
    q, k, v = _inputs(setting, gen, n, m)
    why = KERNELS[kernel].not_supported_reasons(AggregateInputs(q, k, v, pw, graph))
    if why:
        pytest.skip(f"{kernel}: {'; '.join(why)}")
    grad = torch.randn(B, n, CV, generator=gen)
    if setting == "autocast":
        with torch.autocast("cpu", dtype=BF16):
            y = nonlocal_aggregate(q, k, v, pw, graph=graph, backend=kernel)
    else:
        y = nonlocal_aggregate(q, k, v, pw, graph=graph, backend=kernel)
    assert y.dtype == v.dtype
    y.backward(grad.to(y.dtype))
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    u = w = None
    if pw.concat_weight is not None:
        u, w = pw.concat_weight.double().chunk(2)
    y_ref, _ = reference_aggregate(q64, k64, v64, mode, pw.logit_scale, u, w, mask)
    y_ref.backward(grad.double())
    tol_y, tol_g = (TRITON_TOL if kernel == "triton" else TOL)[setting]
    _assert_close("y", y, y_ref, tol_y)
    for name, t, ref in (("dq", q, q64), ("dk", k, k64), ("dv", v, v64)):
        assert t.grad is not None and ref.grad is not None
        _assert_close(name, t.grad, ref.grad, tol_g)


#: Triton on plain half inputs is covered by tests/ops/test_triton_kernel.py; here autocast only.
CASES = [
    (kernel, kind, mode, setting)
    for kernel, kind in RUNS
    for mode in MODES
    for setting in (["autocast"] if kernel == "triton" else SETTINGS)
]


@pytest.mark.parametrize(
    ("kernel", "kind", "mode", "setting"), CASES, ids=["-".join(c) for c in CASES]
)
def test_kernel_half_precision_matches_fp64(
    kernel: str, kind: str, mode: str, setting: str
) -> None:
    if kernel != "triton":
        _run(kernel, kind, mode, setting)
    elif not HAS_TRITON:
        pytest.skip("needs the optional package 'triton' (nlgraph[triton])")
    else:
        _run(kernel, kind, mode, setting, n=12, m=8)  # tiny: Triton's interpreter is slow


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [F16, BF16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("kernel", "kind"), RUNS, ids=[f"{k}-{g}" for k, g in RUNS])
def test_kernel_autocast_cuda(
    kernel: str, kind: str, mode: str, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # compiled triton kernels on the GPU
    if kernel == "triton" and not HAS_TRITON:
        pytest.skip("needs the optional package 'triton' (nlgraph[triton])")
    gen = torch.Generator().manual_seed(0)
    graph, mask = _graph(kind, gen)
    pw = _pairwise(mode, gen)
    q, k, v = (
        torch.randn(B, r, w, generator=gen, device="cpu").cuda()
        for r, w in ((N, C), (M, C), (M, CV))
    )
    layers = [torch.nn.Linear(t.shape[-1], t.shape[-1], bias=False).cuda() for t in (q, k, v)]
    with torch.autocast("cuda", dtype=dtype):
        q, k, v = (layer(t) for layer, t in zip(layers, (q, k, v)))
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    graph = graph_to(graph, "cuda")
    why = KERNELS[kernel].not_supported_reasons(AggregateInputs(q, k, v, pw, graph))
    if why:
        pytest.skip(f"{kernel}: {'; '.join(why)}")
    with torch.autocast("cuda", dtype=dtype):
        y = nonlocal_aggregate(q, k, v, pw, graph=graph, backend=kernel)
    grad = torch.randn(B, N, CV, generator=gen).cuda()
    y.backward(grad.to(y.dtype))
    q64, k64, v64 = (t.detach().cpu().double().requires_grad_() for t in (q, k, v))
    u = w = None
    if pw.concat_weight is not None:
        u, w = pw.concat_weight.double().chunk(2)
    y_ref, _ = reference_aggregate(q64, k64, v64, mode, pw.logit_scale, u, w, mask.cpu())
    y_ref.backward(grad.cpu().double())
    setting = "bf16" if dtype == BF16 else "fp16"
    tol_y, tol_g = (TRITON_TOL if kernel == "triton" else TOL)[setting]
    _assert_close("y", y.cpu(), y_ref, tol_y)
    for t in (q, k, v):
        assert t.grad is not None and torch.isfinite(t.grad).all()
    assert v.grad is not None and v64.grad is not None
    _assert_close("dv", v.grad.cpu(), v64.grad, tol_g)


# --------------------------------------------------------------------------- float32 inside
def test_softmax_of_half_logits_is_float32() -> None:
    # Bitwise: the half-precision normalisation is the float32 one, rounded once.
    logits = (torch.randn(4, 50) * 8).to(BF16)
    mask = torch.rand(4, 50) > 0.3
    for kind in ("softmax", "mean"):
        got = normalise_rows(kind, logits, mask)
        assert got.dtype == BF16
        assert torch.equal(got, normalise_rows(kind, logits.float(), mask).to(BF16))
    index = torch.randint(0, 5, (200,))
    seg = Segments(index, 5)
    flat = (torch.randn(200) * 8).to(BF16)
    for kind in ("softmax", "mean"):
        got = normalise_segments(kind, flat, seg)
        assert torch.equal(got, normalise_segments(kind, flat.float(), seg).to(BF16))


def test_segment_sum_accumulates_in_float32() -> None:
    # 4096 terms of 1/3 into one row (exact sum 1365.3). A bfloat16 running sum, e.g. CUDA's
    # atomic adds, stalls at 128 (1/3 is below half an ulp there); the float32 accumulator must
    # give the exact sum to one final bfloat16 rounding.
    src = torch.full((4096, 1), 1 / 3, dtype=BF16)
    got = segment_sum(src, torch.zeros(4096, dtype=torch.long), 1)
    exact = src.double().sum()
    assert got.dtype == BF16
    assert abs(float(got) - float(exact)) <= 2**-8 * float(exact)  # one bfloat16 rounding


@pytest.mark.parametrize("kind", ["regular", "coo"])
def test_auto_routes_half_precision_away_from_csr(kind: str) -> None:
    gen = torch.Generator().manual_seed(0)
    graph, _ = _graph(kind, gen)
    q, k, v = _inputs("autocast", gen)
    inp = AggregateInputs(q, k, v, Pairwise("embedded_gaussian"), graph)
    assert KERNELS["csr"].not_supported_reasons(inp)
    assert select_kernel(inp).NAME == ("regular" if kind == "regular" else "coo")
    inp32 = AggregateInputs(q.float(), k.float(), v.float(), Pairwise("embedded_gaussian"), graph)
    assert select_kernel(inp32).NAME == "csr"


# --------------------------------------------------------------------------- blocks
#: Whole-block tolerance (normwise, z): x and every weight are rounded to bfloat16 by the
#: autocast convolutions (u = 2^-9 each), which moves the logits by ~u·|s| and the output by a
#: few u of its scale; measured <= 1.2e-2 here, checked at 3e-2 (the kernels' bound above).
BLOCK_TOL = 3e-2


def _edge_mask(attn: Any, batch: int, n: int, m: int) -> Tensor:
    """(B, N, N') bool: the edges the block actually used (from its Attention)."""
    mask = torch.zeros(batch, n, m, dtype=torch.bool)
    for s in range(batch):
        ei = attn.edges(s)[0]
        mask[s, ei[1], ei[0]] = True
    return mask


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("graph", ["full", "knn", "window"])
def test_block_under_autocast_matches_fp64(graph: str, mode: str) -> None:
    torch.manual_seed(0)
    spec: Any = {"full": "full", "knn": KNN(4), "window": Window(1, 1)}[graph]
    block = NonLocalBlock2d(6, 4, mode=mode, zero_init=False, graph=spec)
    randomise_block_(block).eval()
    x = torch.randn(2, 6, 5, 6, requires_grad=True)  # N = 30 queries, N' = 6 pooled keys
    with torch.autocast("cpu", dtype=BF16):
        z = block(x)
        _, attn = block(x, return_attention=True)
    z.float().square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for p in block.parameters():
        assert p.grad is None or torch.isfinite(p.grad).all()
    mask = None if graph == "full" else _edge_mask(attn, 2, 30, 6)
    with torch.no_grad():
        ref, _ = reference_block(x.detach(), **block_reference_args(block), mask=mask)
    _assert_close("z", z.float(), ref, BLOCK_TOL)


@pytest.mark.parametrize("mode", MODES)
def test_nonlocal_conv_under_autocast_matches_fp64(mode: str) -> None:
    # The float64 copy of the same layer is checked against an independent reference in
    # tests/nn/test_nonlocal_conv.py; here it is the yardstick for the autocast run.
    torch.manual_seed(0)
    conv = NonLocalConv(6, 4, mode=mode, norm=None)
    with torch.no_grad():
        for p in conv.parameters():
            p.copy_(torch.randn_like(p) * 0.4)
    x = torch.randn(30, 6, requires_grad=True)
    keep = torch.rand(30, 30) < 0.3
    keep[0] = False  # an isolated target
    dst, src = keep.nonzero(as_tuple=True)
    edge_index = torch.stack([src, dst])
    with torch.autocast("cpu", dtype=BF16):
        out = conv(x, edge_index)
    out.float().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    conv64 = NonLocalConv(6, 4, mode=mode, norm=None, dtype=F64)
    conv64.load_state_dict({k: v.double() for k, v in conv.state_dict().items()})
    with torch.no_grad():
        ref = conv64(x.detach().double(), edge_index)
    _assert_close("out", out.float(), ref, BLOCK_TOL)

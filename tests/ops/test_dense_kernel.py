"""The dense kernel: fast paths, gradients, fused-kernel selection, memory and determinism."""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode

from nlgraph import Pairwise, nonlocal_aggregate
from nlgraph.ops import AggregateInputs, DenseKernel, Kernel
from nlgraph.ops.kernels.dense import (
    concatenation_sorted,
    dot_product_reassociated,
    softmax_fused,
)
from tests.helpers import MODES, reference_aggregate

F64 = torch.float64
FLASH = "aten::_scaled_dot_product_flash_attention_for_cpu"
MATH = "aten::_scaled_dot_product_attention_math"


def _tensors(b, n, m, cq, cv, dtype=F64, grad=False):
    ts = (torch.randn(b, n, cq, dtype=dtype), torch.randn(b, m, cq, dtype=dtype))
    ts += (torch.randn(b, m, cv, dtype=dtype),)
    return tuple(t.requires_grad_(grad) for t in ts)


def _pairwise(mode: str, cw: torch.Tensor | None, scale: float = 0.37) -> Pairwise:
    if mode == "concatenation":
        return Pairwise(mode, concat_weight=cw)
    return Pairwise(mode, scale=scale if mode == "embedded_gaussian" else 1.0)


def _reference(q, k, v, mode, cw, scale=0.37):
    kw = {}
    if mode == "concatenation":
        kw = dict(concat_u=cw[: q.shape[-1]], concat_w=cw[q.shape[-1] :])
    elif mode == "embedded_gaussian":
        kw = dict(scale=scale)
    return reference_aggregate(q, k, v, mode, **kw)[0]


# --------------------------------------------------------------------------- declarations
def test_capabilities() -> None:
    assert issubclass(DenseKernel, Kernel)
    assert DenseKernel.NAME == "dense"
    assert DenseKernel.SUPPORTED_GRAPHS == ("full",)
    assert set(DenseKernel.SUPPORTED_MODES) == set(MODES)
    assert DenseKernel.SUPPORTS_RETURN_ATTENTION and DenseKernel.IS_DETERMINISTIC
    assert DenseKernel.REQUIRES is None
    for dtype in DenseKernel.SUPPORTED_DTYPES:
        assert dtype in DenseKernel.ATOL and dtype in DenseKernel.RTOL
    assert DenseKernel.ATOL[F64] <= 1e-10


def test_not_supported_reasons() -> None:
    q, k, v = _tensors(1, 4, 3, 2, 2)
    ok = AggregateInputs(q, k, v, Pairwise("dot_product"))
    assert DenseKernel.not_supported_reasons(ok) == [] and DenseKernel.supports(ok)
    bad = AggregateInputs(q, k, v, Pairwise("dot_product"), graph="knn")
    assert DenseKernel.not_supported_reasons(bad) == ["graph='knn' (supported: full)"]
    assert not DenseKernel.supports(bad)


# --------------------------------------------------------------------------- fast paths
@pytest.mark.parametrize(("cq", "cv"), [(8, 8), (16, 3), (3, 16)])
def test_softmax_fused_matches_reference(cq, cv) -> None:
    q, k, v = _tensors(2, 33, 7, cq, cv)
    ref = reference_aggregate(q, k, v, "embedded_gaussian", scale=0.6)[0]
    torch.testing.assert_close(softmax_fused(q, k, v, 0.6), ref, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize(("n", "m", "c", "cv"), [(50, 40, 4, 3), (50, 1, 32, 32), (2, 3, 16, 16)])
def test_dot_product_both_orders(n, m, c, cv) -> None:
    # The first case takes q (kᵀv); the last two the direct (q kᵀ) v order.
    q, k, v = _tensors(2, n, m, c, cv)
    ref = reference_aggregate(q, k, v, "dot_product")[0]
    torch.testing.assert_close(dot_product_reassociated(q, k, v), ref, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("shift", [0.0, 100.0, -100.0], ids=["mixed", "all_active", "all_zero"])
def test_concatenation_sorted_extremes(shift) -> None:
    # Every query's threshold at the start, the end and in the middle of the sorted keys.
    a, b = torch.randn(2, 20, dtype=F64) + shift, torch.randn(2, 9, dtype=F64)
    v = torch.randn(2, 9, 4, dtype=F64)
    ref = torch.einsum("bnm,bmc->bnc", torch.relu(a[:, :, None] + b[:, None, :]), v) / 9
    torch.testing.assert_close(concatenation_sorted(a, b, v), ref, atol=1e-10, rtol=1e-10)
    if shift < 0:
        assert torch.equal(concatenation_sorted(a, b, v), torch.zeros_like(ref))


def test_concatenation_ties_and_exact_zero() -> None:
    # Repeated key terms and pairs with a_i + b_j exactly 0.
    b = torch.tensor([[-1.0, 0.5, 0.5, 2.0, -1.0, 0.0]], dtype=F64)
    a = torch.tensor([[1.0, -0.5, 0.0, -2.0, 3.0, -3.0]], dtype=F64)
    v = torch.randn(1, 6, 3, dtype=F64)
    ref = torch.einsum("bnm,bmc->bnc", torch.relu(a[:, :, None] + b[:, None, :]), v) / 6
    torch.testing.assert_close(concatenation_sorted(a, b, v), ref, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["float32", "float64"])
def test_softmax_large_logits_stable(dtype) -> None:
    # Logits in the thousands (raw-input Gaussian on large activations): no overflow.
    q, k, v = _tensors(2, 40, 12, 16, 4, dtype=dtype)
    q, k = q * 20, k * 20
    y = nonlocal_aggregate(q, k, v, "gaussian")
    assert torch.isfinite(y).all()
    ref = reference_aggregate(q, k, v, "gaussian")[0]
    torch.testing.assert_close(
        y.double(), ref, atol=DenseKernel.ATOL[dtype], rtol=DenseKernel.RTOL[dtype]
    )


# --------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("cq", "cv"), [(3, 3), (4, 2), (2, 4)])
def test_gradcheck(mode, cq, cv) -> None:
    q, k, v = _tensors(2, 5, 4, cq, cv, grad=True)
    cw = torch.randn(2 * cq, dtype=F64, requires_grad=True)

    def fn(q, k, v, cw):
        return nonlocal_aggregate(q, k, v, _pairwise(mode, cw))

    assert gradcheck(fn, (q, k, v, cw), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("n", "m", "cq", "cv"), [(63, 12, 8, 8), (30, 1, 6, 4), (25, 25, 3, 7)])
def test_fast_gradients_match_reference(mode, n, m, cq, cv) -> None:
    q, k, v = _tensors(2, n, m, cq, cv, grad=True)
    cw = torch.randn(2 * cq, dtype=F64, requires_grad=True)
    upstream = torch.randn(2, n, cv, dtype=F64)
    leaves = (q, k, v, cw) if mode == "concatenation" else (q, k, v)
    y = nonlocal_aggregate(q, k, v, _pairwise(mode, cw))
    fast = torch.autograd.grad(y, leaves, upstream)
    ref = torch.autograd.grad(_reference(q, k, v, mode, cw), leaves, upstream)
    for name, got, want in zip("qkvw", fast, ref):
        torch.testing.assert_close(got, want, atol=1e-9, rtol=1e-9, msg=f"grad of {name}")


# --------------------------------------------------------------------------- fused kernel
def _profiled_op_names(fn) -> set[str]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {e.name for e in prof.events()}


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["float32", "float64"])
@pytest.mark.parametrize(
    ("mode", "cq", "cv"),
    [("embedded_gaussian", 16, 16), ("gaussian", 32, 16), ("gaussian", 8, 24)],
)
def test_flash_kernel_is_used(mode, cq, cv, dtype) -> None:
    q, k, v = _tensors(2, 64, 16, cq, cv, dtype=dtype, grad=True)
    pw = _pairwise(mode, None)

    def run():
        nonlocal_aggregate(q, k, v, pw).sum().backward()

    names = _profiled_op_names(run)
    assert FLASH in names, sorted(n for n in names if "attention" in n)
    assert FLASH + "_backward" in names
    assert MATH not in names


class _NumelRecorder(TorchDispatchMode):
    """Records the shape of every tensor any ATen op returns."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[str, tuple[int, ...]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.shapes.append((str(func), tuple(t.shape)))
        return out


@pytest.mark.parametrize("mode", MODES)
def test_no_quadratic_allocation(mode) -> None:
    n = m = 512
    q, k, v = _tensors(1, n, m, 8, 8, dtype=torch.float32, grad=True)
    cw = torch.randn(16, requires_grad=True)
    rec = _NumelRecorder()
    with rec:
        y = nonlocal_aggregate(q, k, v, _pairwise(mode, cw))
        after_forward = len(rec.shapes)
        y.sum().backward()
    # The recorder saw the forward and the backward ops.
    assert any(shape == (1, n, 8) for _, shape in rec.shapes[:after_forward])
    assert len(rec.shapes) > after_forward and q.grad is not None
    big = [(op, s) for op, s in rec.shapes if torch.Size(s).numel() >= n * m]
    assert not big, big


def test_recorder_sees_quadratic_allocation() -> None:
    # Positive control: return_attention builds the (B, N, N') weights on purpose.
    q, k, v = _tensors(1, 64, 64, 8, 8, dtype=torch.float32)
    rec = _NumelRecorder()
    with rec:
        nonlocal_aggregate(q, k, v, "dot_product", return_attention=True)
    assert any(s == (1, 64, 64) for _, s in rec.shapes)


# --------------------------------------------------------------------------- determinism
@pytest.mark.parametrize("mode", MODES)
def test_bitwise_repeatable(mode) -> None:
    assert DenseKernel.IS_DETERMINISTIC
    q, k, v = _tensors(2, 63, 12, 8, 8, dtype=torch.float32, grad=True)
    cw = torch.randn(16, requires_grad=True)
    runs = []
    for _ in range(2):
        y = nonlocal_aggregate(q, k, v, _pairwise(mode, cw))
        grads = torch.autograd.grad(y.square().sum(), (q, k, v))
        runs.append((y, *grads))
    for first, second in zip(*runs):
        assert torch.equal(first, second)


# --------------------------------------------------------------------------- query split
@pytest.mark.parametrize("cq, cv", [(8, 8), (12, 6)])
def test_query_split_for_backward_is_exact_and_fused(cq, cv) -> None:
    """With grad on CPU and B < threads the queries are split into chunks for the fused
    backward; outputs and gradients must still equal the reference, through the flash kernel."""
    from nlgraph.ops.kernels.dense import _query_splits

    old = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        q, k, v = _tensors(1, 1001, 77, cq, cv, grad=True)
        assert _query_splits(q, k, v) == 3  # min(ceil(4 / B), N // 256) = min(4, 3)
        with torch.no_grad():
            assert _query_splits(q, k, v) == 1
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            y = softmax_fused(q, k, v, 0.37)
            g = torch.randn_like(y)
            grads = torch.autograd.grad(y, (q, k, v), g)
        names = {e.name for e in prof.events()}
        assert FLASH in names and FLASH + "_backward" in names and MATH not in names
    finally:
        torch.set_num_threads(old)
    y_ref = _reference(q, k, v, "embedded_gaussian", None)
    ref_grads = torch.autograd.grad(y_ref, (q, k, v), g)
    assert y.shape == (1, 1001, cv)
    torch.testing.assert_close(y, y_ref, atol=1e-10, rtol=1e-10)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)

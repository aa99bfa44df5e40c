"""nonlocal_aggregate: values against the fp64 reference, attention output, dispatch, errors."""

from __future__ import annotations

import pytest
import torch

from nlgraph import Attention, Pairwise, nonlocal_aggregate
from nlgraph.ops import (
    KERNELS,
    AggregateInputs,
    COOKernel,
    CSRKernel,
    DenseKernel,
    RegularKernel,
    TritonKernel,
    select_kernel,
)
from tests.helpers import MODES, SOFTMAX_MODES, reference_aggregate, with_device

F64 = torch.float64

# (B, N, N', Cq, Cv): odd sizes, N' = 1, Cq > Cv (Gaussian mode: Cq = C, Cv = C'), Cv > Cq.
SHAPES = [
    (1, 63, 12, 8, 8),
    (3, 63, 12, 16, 8),
    (2, 63, 12, 4, 10),
    (2, 17, 1, 5, 3),
    (2, 1, 9, 3, 5),
    (2, 40, 40, 6, 6),
]


def make_case(
    mode: str,
    shape: tuple[int, int, int, int, int],
    dtype: torch.dtype = F64,
    device: str = "cpu",
    scale: float = 0.37,
    requires_grad: bool = False,
):
    """Random q, k, v, a Pairwise for ``mode`` and the matching reference keyword arguments."""
    b, n, m, cq, cv = shape
    kw = dict(dtype=dtype, device=device)
    q, k, v = (
        torch.randn(b, n, cq, **kw),
        torch.randn(b, m, cq, **kw),
        torch.randn(b, m, cv, **kw),
    )
    for t in (q, k, v):
        t.requires_grad_(requires_grad)
    if mode == "concatenation":
        cw = torch.randn(2 * cq, **kw).requires_grad_(requires_grad)
        return q, k, v, Pairwise(mode, concat_weight=cw), dict(concat_u=cw[:cq], concat_w=cw[cq:])
    if mode == "embedded_gaussian":
        return q, k, v, Pairwise(mode, scale=scale), dict(scale=scale)
    return q, k, v, Pairwise(mode), {}


def skip_unless_supported(backend: str, q, k, v, pw) -> type:
    """The kernel named ``backend``; skips the test with its reasons when it cannot run."""
    kernel = KERNELS[backend]
    reasons = kernel.not_supported_reasons(AggregateInputs(q, k, v, pw))
    if reasons:
        pytest.skip(f"{backend}: {'; '.join(reasons)}")
    return kernel


@with_device
@pytest.mark.parametrize("backend", sorted(KERNELS))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("mode", MODES)
def test_fp64_matches_reference(mode, shape, backend, device) -> None:
    q, k, v, pw, ref_kw = make_case(mode, shape, device=device)
    kernel = skip_unless_supported(backend, q, k, v, pw)
    y = nonlocal_aggregate(q, k, v, pw, backend=backend)
    ref, _ = reference_aggregate(q, k, v, mode, **ref_kw)
    assert y.shape == (shape[0], shape[1], shape[4]) and y.dtype == F64
    torch.testing.assert_close(y, ref, atol=kernel.ATOL[F64], rtol=kernel.RTOL[F64])


@pytest.mark.parametrize("mode", ["gaussian", "embedded_gaussian", "dot_product"])
def test_mode_string_means_scale_one(mode) -> None:
    q, k, v, _, _ = make_case(mode, (2, 11, 7, 4, 3))
    ref, _ = reference_aggregate(q, k, v, mode, scale=1.0)
    torch.testing.assert_close(nonlocal_aggregate(q, k, v, mode), ref, atol=1e-10, rtol=1e-10)


@with_device
@pytest.mark.parametrize("shape", SHAPES[:4], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("mode", MODES)
def test_return_attention_matches_reference(mode, shape, device) -> None:
    q, k, v, pw, ref_kw = make_case(mode, shape, device=device)
    y, attn = nonlocal_aggregate(q, k, v, pw, return_attention=True)
    ref_y, ref_w = reference_aggregate(q, k, v, mode, **ref_kw)
    assert isinstance(attn, Attention)
    w = attn.to_dense()
    assert w.shape == (shape[0], shape[1], shape[2])
    torch.testing.assert_close(w, ref_w, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(y, ref_y, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(y, w @ v, atol=1e-12, rtol=1e-12)
    # Same result as the fast path.
    torch.testing.assert_close(y, nonlocal_aggregate(q, k, v, pw), atol=1e-10, rtol=1e-10)
    if mode in SOFTMAX_MODES:
        torch.testing.assert_close(w.sum(-1), torch.ones_like(w[..., 0]), atol=1e-12, rtol=0)
        assert w.min() >= 0 and w.max() <= 1


def test_return_attention_false_returns_tensor() -> None:
    q, k, v, pw, _ = make_case("dot_product", (1, 4, 3, 2, 2))
    assert isinstance(nonlocal_aggregate(q, k, v, pw, return_attention=False), torch.Tensor)


@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.bfloat16, torch.float16], ids=lambda d: str(d)[6:]
)
@pytest.mark.parametrize("backend", sorted(KERNELS))
@pytest.mark.parametrize("shape", [(2, 63, 12, 8, 8), (2, 63, 12, 16, 8), (1, 30, 30, 4, 10)])
@pytest.mark.parametrize("mode", MODES)
def test_low_precision_at_declared_tolerance(mode, shape, backend, dtype) -> None:
    q, k, v, pw, ref_kw = make_case(mode, shape, dtype=dtype, scale=0.25)
    if mode == "gaussian":  # raw-input logits: keep them O(1) as in a trained network
        q, k = q * 0.5, k * 0.5
    kernel = skip_unless_supported(backend, q, k, v, pw)
    y = nonlocal_aggregate(q, k, v, pw, backend=backend)
    assert y.dtype == dtype
    ref, _ = reference_aggregate(q, k, v, mode, **ref_kw)
    torch.testing.assert_close(y.double(), ref, atol=kernel.ATOL[dtype], rtol=kernel.RTOL[dtype])


@pytest.mark.parametrize("mode", MODES)
def test_permutation_invariance(mode) -> None:
    # Permuting the keys (with their values) changes nothing; permuting queries permutes y.
    q, k, v, pw, _ = make_case(mode, (2, 13, 9, 5, 3))
    y = nonlocal_aggregate(q, k, v, pw)
    kp, qp = torch.randperm(9), torch.randperm(13)
    torch.testing.assert_close(nonlocal_aggregate(q, k[:, kp], v[:, kp], pw), y)
    torch.testing.assert_close(nonlocal_aggregate(q[:, qp], k, v, pw), y[:, qp])


@pytest.mark.parametrize("mode", MODES)
def test_non_contiguous_inputs(mode) -> None:
    # Transposed, sliced and broadcast (stride-0) views give the same result as copies.
    q = torch.randn(2, 6, 21, dtype=F64).transpose(1, 2)[:, ::2]  # (2, 11, 6)
    k = torch.randn(1, 7, 6, dtype=F64).expand(2, 7, 6)
    v = torch.randn(2, 3, 7, dtype=F64).transpose(1, 2)
    _, _, _, pw, ref_kw = make_case(mode, (2, 11, 7, 6, 3))
    assert not (q.is_contiguous() or k.is_contiguous() or v.is_contiguous())
    ref, _ = reference_aggregate(q, k, v, mode, **ref_kw)
    torch.testing.assert_close(nonlocal_aggregate(q, k, v, pw), ref, atol=1e-10, rtol=1e-10)


def test_empty_query_set_and_empty_batch() -> None:
    for mode in MODES:
        q, k, v, pw, _ = make_case(mode, (2, 0, 4, 3, 5))
        assert nonlocal_aggregate(q, k, v, pw).shape == (2, 0, 5)
        q, k, v, pw, _ = make_case(mode, (0, 6, 4, 3, 5))
        assert nonlocal_aggregate(q, k, v, pw).shape == (0, 6, 5)


# --------------------------------------------------------------------------- dispatch
def _inputs(graph: str = "full", mode: str = "embedded_gaussian") -> AggregateInputs:
    q, k, v, pw, _ = make_case(mode, (1, 5, 3, 2, 2))
    return AggregateInputs(q, k, v, pw, graph)


def test_kernel_registry() -> None:
    assert KERNELS == {
        "dense": DenseKernel,
        "regular": RegularKernel,
        "coo": COOKernel,
        "csr": CSRKernel,
        "triton": TritonKernel,
    }


def test_auto_picks_dense() -> None:
    assert select_kernel(_inputs()) is DenseKernel
    assert select_kernel(_inputs(), "dense") is DenseKernel


@pytest.mark.parametrize("mode", MODES)
def test_backend_dense_equals_auto(mode) -> None:
    q, k, v, pw, _ = make_case(mode, (2, 9, 4, 3, 2))
    assert torch.equal(
        nonlocal_aggregate(q, k, v, pw, backend="dense"), nonlocal_aggregate(q, k, v, pw)
    )


@pytest.mark.parametrize("backend", ["nope", "Dense", "", "ell"])
def test_unknown_backend(backend) -> None:
    q, k, v, pw, _ = make_case("dot_product", (1, 4, 3, 2, 2))
    with pytest.raises(
        ValueError,
        match=r"^backend: expected one of 'auto', 'dense', 'regular', 'coo', 'csr', 'triton', got",
    ):
        nonlocal_aggregate(q, k, v, pw, backend=backend)


def test_unknown_graph() -> None:
    q, k, v, pw, _ = make_case("dot_product", (1, 4, 3, 2, 2))
    with pytest.raises(
        ValueError, match=r"^graph: expected 'full', a RegularGraph or a COOGraph, got 'knn'"
    ):
        nonlocal_aggregate(q, k, v, pw, graph="knn")


def test_no_kernel_for_inputs() -> None:
    inp = _inputs(graph="knn")  # not validated: exercises dispatch on its own
    with pytest.raises(NotImplementedError, match=r"^backend: no kernel supports") as info:
        select_kernel(inp, "auto")
    assert "dense: graph='knn'" in str(info.value)
    with pytest.raises(ValueError, match=r"^backend: 'dense' cannot run these inputs: graph='knn'"):
        select_kernel(inp, "dense")


# --------------------------------------------------------------------------- bad input
def _good():
    q, k, v, pw, _ = make_case("embedded_gaussian", (2, 6, 4, 3, 5))
    return dict(query=q, key=k, value=v, pairwise=pw)


def _call(**changes):
    kw = _good()
    kw.update(changes)
    return nonlocal_aggregate(kw.pop("query"), kw.pop("key"), kw.pop("value"), **kw)


@pytest.mark.parametrize(
    ("changes", "error", "match"),
    [
        (dict(query=torch.randn(6, 3, dtype=F64)), ValueError, r"^query: expected a 3-D tensor"),
        (dict(key=torch.randn(1, 2, 4, 3, dtype=F64)), ValueError, r"^key: expected a 3-D"),
        (dict(value=torch.randn(4, 5, dtype=F64)), ValueError, r"^value: expected a 3-D"),
        (
            dict(query=torch.ones(2, 6, 3, dtype=torch.long)),
            TypeError,
            r"^query: expected a floating",
        ),
        (dict(key=torch.ones(2, 4, 3, dtype=torch.int32)), TypeError, r"^key: expected a floating"),
        (
            dict(value=torch.ones(2, 4, 5, dtype=torch.bool)),
            TypeError,
            r"^value: expected a floating",
        ),
        (dict(query=[[1.0]]), TypeError, r"^query: expected a torch.Tensor, got list"),
        (dict(value=torch.randn(2, 4, 5)), TypeError, r"^query/key/value: expected one dtype"),
        (
            dict(query=torch.randn(3, 6, 3, dtype=F64)),
            ValueError,
            r"^query/key/value: expected the same batch size",
        ),
        (
            dict(key=torch.randn(2, 4, 2, dtype=F64)),
            ValueError,
            r"^query/key: expected the same channel count",
        ),
        (
            dict(value=torch.randn(2, 3, 5, dtype=F64)),
            ValueError,
            r"^key/value: expected the same number of keys",
        ),
        (
            dict(key=torch.randn(2, 0, 3, dtype=F64), value=torch.randn(2, 0, 5, dtype=F64)),
            ValueError,
            r"^key: expected at least one key",
        ),
        (dict(pairwise=3), TypeError, r"^pairwise: expected an nlgraph.pairwise.Pairwise"),
        (dict(pairwise="bogus"), ValueError, r"^mode: expected one of"),
        (dict(pairwise="concatenation"), ValueError, r"^concat_weight: expected"),
        (
            dict(pairwise=Pairwise("concatenation", concat_weight=torch.randn(4, dtype=F64))),
            ValueError,
            r"^concat_weight: expected shape \(6,\) = \(2\*Cq,\), got shape \(4,\)",
        ),
        (
            dict(pairwise=Pairwise("concatenation", concat_weight=torch.randn(1, 6, dtype=F64))),
            ValueError,
            r"^concat_weight: expected shape \(6,\)",
        ),
        (  # a meta tensor has no values to aggregate (and another device than key/value)
            dict(query=torch.randn(2, 6, 3, dtype=F64, device="meta")),
            ValueError,
            r"^query: expected a tensor with values \(cpu or cuda\), got a meta tensor",
        ),
        (dict(graph="knn"), ValueError, r"^graph: expected"),
        (dict(backend="nope"), ValueError, r"^backend: expected"),
    ],
    ids=lambda x: "" if not isinstance(x, str) else x[:30],
)
def test_bad_input(changes, error, match) -> None:
    with pytest.raises(error, match=match):
        _call(**changes)


def test_mixed_dtype_message_lists_every_tensor() -> None:
    with pytest.raises(TypeError) as info:
        _call(value=torch.randn(2, 4, 5))
    msg = str(info.value)
    for name in ("query: shape (2, 6, 3)", "key: shape (2, 4, 3)", "value: shape (2, 4, 5)"):
        assert name in msg
    assert "torch.float32" in msg and "torch.float64" in msg

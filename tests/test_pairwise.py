"""nlgraph.pairwise: scale resolution, Pairwise validation and the dense formulas."""

from __future__ import annotations

import math

import pytest
import torch

from nlgraph.pairwise import MODES, SOFTMAX_MODES, Pairwise, edge_logits_backward, resolve_scale
from tests.helpers import reference_aggregate, reference_scores, reference_weights

F64 = torch.float64


@pytest.mark.parametrize("mode", MODES)
def test_normaliser_and_edge_logits_follow_the_paper(mode: str) -> None:
    """Softmax for the Gaussians, division by |N(i)| otherwise; the edge logits s·raw,
    raw or ReLU(raw), and their gradient by autograd."""
    pw = Pairwise(mode, scale=0.5, concat_weight=torch.ones(4, dtype=F64))
    assert pw.normaliser == ("softmax" if mode in ("gaussian", "embedded_gaussian") else "mean")
    assert pw.is_softmax == (mode in SOFTMAX_MODES)
    raw = torch.tensor([-2.0, 0.5, 3.0], dtype=F64, requires_grad=True)
    expected = {"concatenation": raw.relu(), "dot_product": raw}.get(mode, raw * 0.5)
    got = pw.edge_logits(raw)
    torch.testing.assert_close(got, expected)
    grad = torch.tensor([1.0, -2.0, 3.0], dtype=F64)
    (want,) = torch.autograd.grad(expected, raw, grad)
    torch.testing.assert_close(edge_logits_backward(mode, pw.logit_scale, grad, raw), want)


@pytest.mark.parametrize(
    ("scale", "expected"),
    [
        (None, 1.0),
        ("inner", 1 / math.sqrt(32)),
        ("input", 1 / math.sqrt(256)),
        (0.37, 0.37),
        (2, 2.0),
        (1e-3, 1e-3),
    ],
)
def test_resolve_scale_values(scale, expected) -> None:
    got = resolve_scale(scale, 256, 32)
    assert isinstance(got, float)
    assert got == pytest.approx(expected, rel=1e-15)


def test_resolve_scale_inner_vs_input_differ() -> None:
    assert resolve_scale("inner", 64, 8) == pytest.approx(8**-0.5)
    assert resolve_scale("input", 64, 8) == pytest.approx(64**-0.5)


@pytest.mark.parametrize("scale", ["outer", "INNER", "", "sqrt"])
def test_resolve_scale_bad_string(scale) -> None:
    with pytest.raises(ValueError, match=r"^scale: expected one of 'inner', 'input', got"):
        resolve_scale(scale, 8, 4)


@pytest.mark.parametrize("scale", [0, 0.0, -1.0, math.inf, -math.inf, math.nan])
def test_resolve_scale_bad_value(scale) -> None:
    with pytest.raises(ValueError, match=r"^scale: expected a positive finite float"):
        resolve_scale(scale, 8, 4)


@pytest.mark.parametrize("scale", [True, False, [1.0], b"1.0", torch.tensor(1.0)])
def test_resolve_scale_bad_type(scale) -> None:
    with pytest.raises(TypeError, match=r"^scale: expected None, 'inner', 'input'"):
        resolve_scale(scale, 8, 4)


# --------------------------------------------------------------------------- Pairwise
@pytest.mark.parametrize("mode", ["embeded_gaussian", "Gaussian", "dot", "", None])
def test_pairwise_unknown_mode(mode) -> None:
    with pytest.raises(ValueError, match=r"^mode: expected one of 'gaussian', 'embedded_gaussian'"):
        Pairwise(mode)


def test_pairwise_concatenation_needs_weight() -> None:
    with pytest.raises(ValueError, match=r"^concat_weight: expected a \(2C',\) tensor"):
        Pairwise("concatenation")


@pytest.mark.parametrize("mode", MODES)
def test_pairwise_is_softmax(mode) -> None:
    pw = Pairwise(mode, concat_weight=torch.ones(4))
    assert pw.is_softmax == (mode in SOFTMAX_MODES)
    assert pw.scale == 1.0


def test_pairwise_is_frozen() -> None:
    pw = Pairwise("dot_product")
    with pytest.raises(AttributeError):
        pw.mode = "gaussian"  # type: ignore[misc]


def test_concat_terms_split_query_half_first() -> None:
    q, k = torch.randn(2, 5, 3, dtype=F64), torch.randn(2, 4, 3, dtype=F64)
    cw = torch.randn(6, dtype=F64)
    a, b = Pairwise("concatenation", concat_weight=cw).concat_terms(q, k)
    assert a.shape == (2, 5) and b.shape == (2, 4)
    torch.testing.assert_close(a, torch.einsum("bnc,c->bn", q, cw[:3]))
    torch.testing.assert_close(b, torch.einsum("bmc,c->bm", k, cw[3:]))


def _pairwise(mode: str, c: int, scale: float) -> tuple[Pairwise, dict]:
    if mode == "concatenation":
        cw = torch.randn(2 * c, dtype=F64)
        return Pairwise(mode, concat_weight=cw), dict(concat_u=cw[:c], concat_w=cw[c:])
    if mode == "embedded_gaussian":
        return Pairwise(mode, scale=scale), dict(scale=scale)
    return Pairwise(mode), {}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("n", "m"), [(7, 5), (6, 1), (1, 9)])
def test_dense_scores_and_weights_vs_reference(mode, n, m) -> None:
    c = 4
    q, k = torch.randn(3, n, c, dtype=F64), torch.randn(3, m, c, dtype=F64)
    pw, ref_kw = _pairwise(mode, c, scale=0.37)
    scores = pw.dense_scores(q, k)
    ref = reference_scores(q, k, mode, **ref_kw)
    assert scores.shape == (3, n, m)
    torch.testing.assert_close(scores, ref, atol=1e-12, rtol=1e-12)
    weights = pw.normalise_dense(scores)
    torch.testing.assert_close(weights, reference_weights(ref, mode), atol=1e-12, rtol=1e-12)
    if mode in SOFTMAX_MODES:
        torch.testing.assert_close(weights.sum(-1), torch.ones(3, n, dtype=F64))
        assert weights.min() >= 0 and weights.max() <= 1


def test_dense_scores_scale_only_for_softmax_modes() -> None:
    q, k = torch.randn(1, 4, 3, dtype=F64), torch.randn(1, 5, 3, dtype=F64)
    plain = q @ k.transpose(1, 2)
    torch.testing.assert_close(
        Pairwise("embedded_gaussian", scale=0.5).dense_scores(q, k), plain * 0.5
    )
    # A scale given to the dot product does not scale its scores.
    torch.testing.assert_close(Pairwise("dot_product", scale=0.5).dense_scores(q, k), plain)


def test_normalise_dense_divides_by_key_count() -> None:
    s = torch.randn(2, 3, 7, dtype=F64)
    torch.testing.assert_close(Pairwise("dot_product").normalise_dense(s), s / 7)


def test_concat_weight_cast_to_input_dtype() -> None:
    q, k = torch.randn(1, 3, 2, dtype=F64), torch.randn(1, 4, 2, dtype=F64)
    pw = Pairwise("concatenation", concat_weight=torch.randn(4, dtype=torch.float32))
    assert pw.dense_scores(q, k).dtype == F64


@pytest.mark.parametrize("mode", MODES)
def test_reference_mask_against_loops(mode) -> None:
    """The test reference itself: masked rows by explicit loops, an empty row gives 0."""
    q, k = torch.randn(2, 4, 3, dtype=F64), torch.randn(2, 5, 3, dtype=F64)
    v = torch.randn(2, 5, 2, dtype=F64)
    cw = torch.randn(6, dtype=F64)
    mask = torch.rand(2, 4, 5) < 0.5
    mask[0, 1] = False
    mask[1, 2] = True
    y, w = reference_aggregate(q, k, v, mode, 0.7, cw[:3], cw[3:], mask)
    for b in range(2):
        for i in range(4):
            js = [j for j in range(5) if mask[b, i, j]]
            if not js:
                assert not y[b, i].any() and not w[b, i].any()
                continue
            if mode == "concatenation":
                f = [max(float(q[b, i] @ cw[:3] + k[b, j] @ cw[3:]), 0.0) for j in js]
            else:
                f = [float(q[b, i] @ k[b, j]) for j in js]
            if mode in SOFTMAX_MODES:
                e = [math.exp(0.7 * x) for x in f]
                a = [x / sum(e) for x in e]
            else:
                a = [x / len(js) for x in f]
            want = sum(aj * v[b, j] for aj, j in zip(a, js))
            torch.testing.assert_close(y[b, i], want, atol=1e-12, rtol=1e-12)

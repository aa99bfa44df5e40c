r"""The ``dense`` kernel: all pairs, with exact fast paths and no N×N' tensor.

- Softmax modes (Gaussian, embedded Gaussian): :func:`torch.nn.functional.scaled_dot_product_attention`
  on contiguous (B, P, N/P, d) tensors, so PyTorch's fused (flash) kernel runs with O(N·d)
  memory. The fused CPU kernel needs equal query and value widths; when they differ (Gaussian
  mode: queries/keys are the C raw channels, values C') the narrower side is zero-padded,
  which changes neither the logits nor the kept output columns.
- Dot product: :math:`y = q\,(k^\top v) / N'` — a (Cq, Cv) matrix instead of (N, N'); the
  direct order is used when it is cheaper (tiny N').
- Concatenation: :math:`y_i = \frac{1}{N'}\sum_{j:\,b_j > -a_i} (a_i + b_j)\,v_j
  = \frac{1}{N'}\bigl[a_i\,S_v(t_i) + S_{bv}(t_i)\bigr]` with the keys sorted by
  :math:`b` ascending, :math:`S_v, S_{bv}` suffix sums of :math:`v` and :math:`b\,v` and
  :math:`t_i` the first sorted key with :math:`b > -a_i` (a binary search). O((N + N') log N')
  work, O((N + N')·Cv) memory; autograd through sort, gathers and cumulative sums gives the
  exact gradient (the ReLU kink has measure zero). Half precision runs in float32 (a running
  sum over N' keys in bfloat16 would round at every step).
- ``edge_bias`` (softmax modes): the (B, N, N') bias is SDPA's additive ``attn_mask``, one
  head per sample (no query split). A query whose every bias is :math:`-\infty` has no edge
  left: it gets y_i = 0 and no gradient, as on every kernel (SDPA alone returns NaN there, and
  its backward spreads the NaN to every key). Such rows run with a zero bias and their output
  is zeroed.
- ``return_attention=True`` builds the (B, N, N') weights with the shared normalisation of
  :mod:`nlgraph.ops._segment` and multiplies them with v.

Mixed precision: under :func:`torch.autocast` (or with half-precision inputs) the softmax modes
run PyTorch's fused attention in half precision, which keeps the logits' maximum, the
exponential sums and the weighted sums in float32; the dot product's matrix products accumulate
in float32 inside the BLAS; concatenation computes in float32; ``return_attention`` normalises in
float32 (:mod:`nlgraph.ops._segment`). On CUDA, SDPA's backward and ``cumsum`` are not bitwise
repeatable by default: under ``torch.use_deterministic_algorithms(True)`` PyTorch picks its
deterministic attention backward, and raises its usual error for ``cumsum`` (concatenation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ...attention import Attention
from ...pairwise import MODES, Pairwise
from ..inputs import AggregateInputs
from .base import Kernel, wide_operands

__all__ = ["DenseKernel", "concatenation_sorted", "dot_product_reassociated", "softmax_fused"]


#: The thread count when nlgraph was imported: what a ``torch.compile`` trace uses (a constant
#: of the compiled graph; ``torch.get_num_threads()`` would break the graph). Decorating with
#: ``torch.compiler.assume_constant_result`` would import torch._dynamo with nlgraph.
_IMPORT_THREADS = torch.get_num_threads()


def _num_threads() -> int:
    """``torch.get_num_threads()``, or its value at import while ``torch.compile`` traces (the
    split it sizes is exact for any value: only speed depends on it)."""
    if torch.compiler.is_compiling():
        return _IMPORT_THREADS
    return torch.get_num_threads()


def _query_splits(q: Tensor, k: Tensor, v: Tensor) -> int:
    """How many query chunks ("heads") to give the fused CPU kernel.

    PyTorch's CPU flash-attention backward parallelises over batch × heads only: with B = 1 and
    one head it is a single task, several times slower than it needs to be (and it collapses
    when the cores are shared). Splitting the queries into P chunks that each see every key is
    exact and gives the backward P tasks. Decided from shapes, device, thread count and grad
    mode only (never tensor values).
    """
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if q.device.type != "cpu" or not needs_grad:
        return 1
    batch, n = q.shape[0], q.shape[1]
    threads = _num_threads()
    if batch == 0 or batch >= threads:  # an empty batch: nothing to split
        return 1
    return max(1, min(-(-threads // batch), n // 256))


def softmax_fused(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    scale: float,
    bias: Tensor | None = None,
    bias_finite: bool = False,
) -> Tensor:
    """softmax(scale·q kᵀ + bias) v through fused SDPA.

    q, k: (B, N|N', d), v: (B, N', dv), bias: (B or 1, N, N') or ``None`` → (B, N, dv). A row
    whose bias is -inf everywhere gives 0 (no edge left) unless ``bias_finite`` promises that no
    bias entry is -inf (then the guard, which copies the bias, is skipped).
    """
    d, dv = q.shape[-1], v.shape[-1]
    if dv < d:
        v = F.pad(v, (0, d - dv))
    elif d < dv:
        q, k = F.pad(q, (0, dv - d)), F.pad(k, (0, dv - d))
    if bias is not None:
        empty = None
        if not bias_finite:  # a row without any finite bias: run it with bias 0, zero its output
            empty = torch.isneginf(bias).all(-1, keepdim=True)  # (B or 1, N, 1)
            bias = bias.masked_fill(empty, 0.0)
        out = F.scaled_dot_product_attention(
            q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), attn_mask=bias.unsqueeze(1), scale=scale
        )
        out = out.squeeze(1)[..., :dv]
        return out if empty is None else out.masked_fill(empty, 0.0)
    batch, n, width = q.shape
    parts = _query_splits(q, k, v)
    rows = -(-n // parts)
    # (B, P, ceil(N/P), d), contiguous in the last dim: the layout the fused kernel accepts (a
    # strided view silently falls back to the N×N' math path). Keys/values are shared by the P
    # query chunks; autograd sums their gradients.
    q4 = F.pad(q, (0, 0, 0, rows * parts - n)).reshape(batch, parts, rows, width).contiguous()
    k4 = k.unsqueeze(1).expand(-1, parts, -1, -1).contiguous()
    v4 = v.unsqueeze(1).expand(-1, parts, -1, -1).contiguous()
    out = F.scaled_dot_product_attention(q4, k4, v4, scale=scale)
    return out.reshape(batch, parts * rows, width)[:, :n, :dv]


def dot_product_reassociated(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """(q kᵀ / N') v computed in the cheaper order; no N×N' tensor when Cq < N'."""
    n, m, d, dv = q.shape[1], k.shape[1], q.shape[2], v.shape[2]
    if m * d * dv + n * d * dv <= n * m * (d + dv):
        return q @ (k.transpose(1, 2) @ v) / m
    return (q @ k.transpose(1, 2)) @ v / m


def concatenation_sorted(a: Tensor, b: Tensor, v: Tensor) -> Tensor:
    r"""mean_j ReLU(a_i + b_j) v_j for a (B, N), b (B, N'), v (B, N', dv) → (B, N, dv).

    Half precision is computed in float32 (suffix sums over N' keys) and rounded once.
    """
    dtype = v.dtype
    if dtype in (torch.float16, torch.bfloat16):
        a, b, v = a.float(), b.float(), v.float()
    m = b.shape[1]
    b_sorted, order = torch.sort(b, dim=1)
    v_sorted = torch.gather(v, 1, order.unsqueeze(-1).expand_as(v))
    zero = v.new_zeros(v.shape[0], 1, v.shape[2])
    # Suffix sums S[t] = sum_{j >= t} (sorted order), with S[N'] = 0: shape (B, N' + 1, dv).
    s_v = torch.cat([v_sorted.flip(1).cumsum(1).flip(1), zero], dim=1)
    s_bv = torch.cat([(b_sorted.unsqueeze(-1) * v_sorted).flip(1).cumsum(1).flip(1), zero], dim=1)
    # t_i: first sorted key with b_j > -a_i, i.e. a_i + b_j > 0.
    t = torch.searchsorted(b_sorted.detach().contiguous(), (-a).detach().contiguous(), right=True)
    idx = t.unsqueeze(-1).expand(-1, -1, v.shape[2])
    y = a.unsqueeze(-1) * torch.gather(s_v, 1, idx) + torch.gather(s_bv, 1, idx)
    return (y / m).to(dtype)


class DenseKernel(Kernel):
    """All pairs (the full graph) through the exact fast paths of this module."""

    NAME = "dense"
    SUPPORTED_GRAPHS = ("full",)
    SUPPORTED_MODES = MODES
    SUPPORTS_RETURN_ATTENTION = True
    SUPPORTS_EDGE_BIAS = True
    # Under torch.use_deterministic_algorithms(True) (module docstring; base.Kernel).
    IS_DETERMINISTIC = True

    @classmethod
    def apply(cls, inp: AggregateInputs) -> tuple[Tensor, Attention | None]:
        q, k, v, pw = inp.query, inp.key, inp.value, inp.pairwise
        if inp.return_attention:
            scores = pw.dense_scores(q, k)
            if inp.edge_bias is not None:
                scores = scores + inp.edge_bias
            weights = pw.normalise_dense(scores)
            return weights @ v, Attention(weights)
        return cls._fast(pw, q, k, v, inp.edge_bias, inp.bias_finite), None

    @staticmethod
    def _fast(
        pw: Pairwise, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, bias_finite: bool
    ) -> Tensor:
        if pw.is_softmax:
            return softmax_fused(q, k, v, pw.scale, bias, bias_finite)
        if pw.mode == "dot_product":
            return dot_product_reassociated(q, k, v)
        a, b = wide_operands(pw, q, k)  # float32 halves for half precision
        return concatenation_sorted(a, b, v)

r"""The ``coo`` kernel: any ``edge_index``, segment softmax / segment mean by target.

For edges :math:`(j \to i)` of a :class:`~nlgraph.graphs.COOGraph` shared by the batch:

.. math::
    s_e = f(q_{i_e}, k_{j_e}),\quad
    w_e = \frac{\exp(s_e - m_{i_e})}{\sum_{e': i_{e'} = i_e} \exp(s_{e'} - m_{i_e})}
    \ \text{(Gaussian modes)},\quad
    w_e = \frac{s_e}{\deg(i_e)}\ \text{(dot product, concatenation)},\quad
    y_i = \sum_{e: i_e = i} w_e\, v_{j_e}

(``edge_bias`` :math:`\beta_e`, softmax modes: :math:`s_e \to s_e + \beta_e`), with
:math:`m_i` the largest logit into query i (stabilisation, no gradient): the segment
normalisation of :mod:`nlgraph.ops._segment` over the COO query index. A query without
incoming edges (or with all of them at a :math:`-\infty` bias) gets :math:`y_i = 0`. Duplicate
edges count as many times as they appear. The segment sums and maxima run on torch-scatter when
it is installed (``pip install nlgraph[scatter]``), else on plain PyTorch (``scatter_reduce``,
``index_add``), with the same numbers; gathers by ``index_select``; autograd; memory O(B·E·C);
no host reads.

Half precision (float16, bfloat16: plain inputs, or the outputs of layers run under
:func:`torch.autocast`) is computed in float32 throughout: the per-edge dot products, the
segment softmax / mean and the weighted sums; y and the returned weights are rounded to the
input dtype once at the end (autograd casts the gradients back). Autocast is off inside
(:func:`~nlgraph.ops.kernels.base.autocast_off`): the concatenation halves a, b are float32
too (their sign decides the ReLU).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...attention import Attention
from ...graphs.base import COOGraph, RegularGraph
from ...pairwise import MODES, Pairwise
from .._segment import Segments, accumulation_dtype, normalise_segments
from ..inputs import AggregateInputs
from ._scatter import segment_sum
from .base import Kernel, autocast_off

__all__ = ["COOKernel", "coo_edge_weights"]


def _flat_edges(graph: COOGraph, batch: int, num_keys: int) -> tuple[Tensor, Tensor]:
    """Source and target rows of every edge of every sample, into tensors flattened to
    (B·N', ·) and (B·N, ·): gathers and scatters then run along dim 0 (their fast path)."""
    src, dst = graph.edge_index
    if batch == 1:
        return src, dst
    offsets = torch.arange(batch, device=src.device).unsqueeze(1)
    return (src + offsets * num_keys).reshape(-1), (dst + offsets * graph.num_queries).reshape(-1)


def coo_edge_weights(
    pw: Pairwise, q: Tensor, k: Tensor, graph: COOGraph, bias: Tensor | None = None
) -> Tensor:
    """(B, E) normalised weights of every edge of ``graph``; ``bias`` (B, E) adds to the logits."""
    b, n, m = q.shape[0], graph.num_queries, graph.num_keys
    src, dst = _flat_edges(graph, b, m)
    qo, ko = pw.operands(q, k)
    if pw.mode == "concatenation":  # the scalar halves a (B, N), b (B, N')
        raw = qo.reshape(-1).index_select(0, dst) + ko.reshape(-1).index_select(0, src)
    else:
        qf, kf = qo.reshape(b * n, -1), ko.reshape(b * m, -1)
        raw = (qf.index_select(0, dst) * kf.index_select(0, src)).sum(-1)
    logits = pw.edge_logits(raw)
    if bias is not None:
        logits = logits + bias.reshape(-1)
    return normalise_segments(pw.normaliser, logits, Segments(dst, b * n)).view(b, -1)


class COOKernel(Kernel):
    """Any edge set (:class:`~nlgraph.graphs.COOGraph`) by gather, segment normalise, scatter."""

    NAME = "coo"
    SUPPORTED_GRAPHS = ("full", "regular", "coo")
    SUPPORTED_MODES = MODES
    SUPPORTS_RETURN_ATTENTION = True
    SUPPORTS_EDGE_BIAS = True
    # index_add and index_select's backward use atomics on CUDA; under
    # torch.use_deterministic_algorithms(True) PyTorch runs them deterministically and
    # _scatter leaves torch-scatter (base.Kernel.IS_DETERMINISTIC).
    IS_DETERMINISTIC = True

    @classmethod
    def not_supported_reasons(cls, inp: AggregateInputs) -> list[str]:
        reasons = super().not_supported_reasons(inp)
        graph = inp.graph
        if isinstance(graph, RegularGraph) and graph.index.shape[0] != 1:
            reasons.append("a RegularGraph with one graph per sample (coo needs a shared graph)")
        return reasons

    @classmethod
    def apply(cls, inp: AggregateInputs) -> tuple[Tensor, Attention | None]:
        with autocast_off(inp.value.device):
            return cls._apply(inp)

    @classmethod
    def _apply(cls, inp: AggregateInputs) -> tuple[Tensor, Attention | None]:
        """:meth:`apply` outside autocast."""
        graph = inp.coo_graph()
        dtype = inp.value.dtype
        acc = accumulation_dtype(dtype)  # float32 for half precision (module docstring)
        q, k, v = inp.query.to(acc), inp.key.to(acc), inp.value.to(acc)
        bias = inp.coo_bias()
        b, m, cv = v.shape
        src, dst = _flat_edges(graph, b, m)
        w = coo_edge_weights(inp.pairwise, q, k, graph, None if bias is None else bias.to(acc))
        msg = w.reshape(-1, 1) * v.reshape(b * m, cv).index_select(0, src)
        y = segment_sum(msg, dst, b * graph.num_queries)
        y = y.view(b, graph.num_queries, cv).to(dtype)
        attn = Attention.from_coo(w.to(dtype), graph) if inp.return_attention else None
        return y, attn

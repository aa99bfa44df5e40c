r"""The ``coo`` kernel: any ``edge_index``, segment softmax / segment mean by target.

For edges :math:`(j \to i)` of a :class:`~nlgraph.graphs.COOGraph` shared by the batch:

.. math::
    s_e = f(q_{i_e}, k_{j_e}),\quad
    w_e = \frac{\exp(s_e - m_{i_e})}{\sum_{e': i_{e'} = i_e} \exp(s_{e'} - m_{i_e})}
    \ \text{(Gaussian modes)},\quad
    w_e = \frac{s_e}{\deg(i_e)}\ \text{(dot product, concatenation)},\quad
    y_i = \sum_{e: i_e = i} w_e\, v_{j_e}

with :math:`m_i` the largest logit into query i (stabilisation, no gradient). A query without
incoming edges gets :math:`y_i = 0`. Duplicate edges count as many times as they appear. Plain
PyTorch (``index_select``, ``scatter_reduce``, ``index_add``) and autograd; memory O(B·E·C).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...attention import Attention
from ...graphs.base import COOGraph
from ...pairwise import MODES, Pairwise
from ..inputs import AggregateInputs
from .base import Kernel

__all__ = ["COOKernel", "coo_edge_weights"]


def coo_edge_weights(pw: Pairwise, q: Tensor, k: Tensor, graph: COOGraph) -> Tensor:
    """(B, E) normalised weights of every edge of ``graph``."""
    src, dst = graph.edge_index
    b, n = q.shape[0], graph.num_queries
    if pw.mode == "concatenation":
        a, bk = pw.concat_terms(q, k)
        s = torch.relu(a.index_select(1, dst) + bk.index_select(1, src))
    else:
        s = (q.index_select(1, dst) * k.index_select(1, src)).sum(-1)
    if not pw.is_softmax:
        deg = torch.bincount(dst, minlength=n).clamp_min(1).to(s.dtype)
        return s / deg.index_select(0, dst)
    if pw.scale != 1.0:
        s = s * pw.scale
    top = torch.full((b, n), float("-inf"), dtype=s.dtype, device=s.device)
    top = top.scatter_reduce(1, dst.expand(b, -1), s.detach(), "amax")
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    e = torch.exp(s - top.index_select(1, dst))
    den = e.new_zeros(b, n).index_add(1, dst, e)
    return e / den.index_select(1, dst).clamp_min(torch.finfo(e.dtype).tiny)


class COOKernel(Kernel):
    """Any edge set (:class:`~nlgraph.graphs.COOGraph`) by gather, segment normalise, scatter."""

    NAME = "coo"
    SUPPORTED_GRAPHS = ("full", "regular", "coo")
    SUPPORTED_MODES = MODES
    SUPPORTS_RETURN_ATTENTION = True
    IS_DETERMINISTIC = False  # index_add / scatter are atomic on CUDA

    @classmethod
    def not_supported_reasons(cls, inp: AggregateInputs) -> list[str]:
        reasons = super().not_supported_reasons(inp)
        graph = inp.graph
        if inp.graph_kind == "regular" and graph.index.shape[0] != 1:
            reasons.append("a RegularGraph with one graph per sample (coo needs a shared graph)")
        return reasons

    @classmethod
    def apply(cls, inp: AggregateInputs) -> tuple[Tensor, Attention | None]:
        graph = inp.coo_graph()
        src, dst = graph.edge_index
        v = inp.value
        w = coo_edge_weights(inp.pairwise, inp.query, inp.key, graph)
        msg = w.unsqueeze(-1) * v.index_select(1, src)
        y = v.new_zeros(v.shape[0], graph.num_queries, v.shape[-1]).index_add(1, dst, msg)
        attn = Attention.from_coo(w, graph) if inp.return_attention else None
        return y, attn

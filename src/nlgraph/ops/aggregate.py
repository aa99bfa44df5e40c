"""The one aggregation entry point every nlgraph module calls."""

from __future__ import annotations

from typing import Literal, overload

from torch import Tensor

from ..attention import Attention
from ..graphs.base import COOGraph, RegularGraph
from ..pairwise import Pairwise
from .dispatch import select_kernel
from .inputs import AggregateInputs

__all__ = ["aggregate", "nonlocal_aggregate"]


@overload
def nonlocal_aggregate(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    pairwise: Pairwise | str,
    *,
    graph: str | RegularGraph | COOGraph = ...,
    backend: str = ...,
    return_attention: Literal[False] = ...,
    edge_bias: Tensor | None = ...,
) -> Tensor: ...


@overload
def nonlocal_aggregate(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    pairwise: Pairwise | str,
    *,
    graph: str | RegularGraph | COOGraph = ...,
    backend: str = ...,
    return_attention: Literal[True],
    edge_bias: Tensor | None = ...,
) -> tuple[Tensor, Attention]: ...


@overload
def nonlocal_aggregate(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    pairwise: Pairwise | str,
    *,
    graph: str | RegularGraph | COOGraph = ...,
    backend: str = ...,
    return_attention: bool,
    edge_bias: Tensor | None = ...,
) -> Tensor | tuple[Tensor, Attention]: ...


def nonlocal_aggregate(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    pairwise: Pairwise | str,
    *,
    graph: str | RegularGraph | COOGraph = "full",
    backend: str = "auto",
    return_attention: bool = False,
    edge_bias: Tensor | None = None,
) -> Tensor | tuple[Tensor, Attention]:
    r"""Aggregate values over a graph with a non-local pairwise function.

    Wang et al., "Non-local Neural Networks", CVPR 2018, https://arxiv.org/abs/1711.07971.

    .. math::
        y_i = \frac{1}{C_i} \sum_{j \in N(i)} f(q_i, k_j)\, v_j

    with :math:`f` and :math:`C_i` given by ``pairwise`` (:class:`nlgraph.pairwise.Pairwise`)
    and :math:`N(i)` by ``graph`` (``"full"``: every key, so :math:`|N(i)| = N'`). With
    ``edge_bias`` :math:`\beta` (softmax modes only) the weights become

    .. math::
        w_{ij} = \frac{\exp(s\, q_i\cdot k_j + \beta_{ij})}
                      {\sum_{j' \in N(i)} \exp(s\, q_i\cdot k_{j'} + \beta_{ij'})},

    i.e. :math:`f(q_i, k_j) = e^{\beta_{ij}}\, e^{s\, q_i\cdot k_j}`: a per-edge prior
    multiplies the appearance term (relation networks' geometric weight, relative position
    biases). :math:`\beta = -\infty` drops an edge; a query whose edges are all dropped, like a
    query without edges, gets :math:`y_i = 0` (and no gradient) on every kernel.

    Args:
        query (Tensor): q, (B, N, Cq). For the Gaussian mode the raw input x.
        key (Tensor): k, (B, N', Cq).
        value (Tensor): v, (B, N', Cv).
        pairwise (Pairwise or str): the pairwise function; a mode string means
            ``Pairwise(mode)`` (scale 1; ``"concatenation"`` needs a Pairwise with its weight).
        graph (str, RegularGraph or COOGraph): the edge set: ``"full"`` (all pairs), a
            :class:`~nlgraph.graphs.RegularGraph` (up to k keys per query, padded) or a
            :class:`~nlgraph.graphs.COOGraph` (any ``edge_index``, shared by the batch). Index
            ranges are checked here (this reads the index values). (default: ``"full"``)
        backend (str): ``"auto"`` or a kernel NAME (``"dense"``, ``"regular"``, ``"coo"``,
            ``"csr"``, ``"triton"``). ``"auto"`` takes the dense kernel for the full graph and
            the ``"csr"`` sparse-matrix kernel for a RegularGraph or COOGraph in float32/float64
            (the fastest sparse kernel at every size measured on CPU,
            ``benchmarks/results/kernels.md``); in half precision or under ``torch.compile`` a
            RegularGraph goes to ``"regular"`` and a COOGraph to ``"coo"``. ``"triton"`` (the
            fused GPU kernel, optional extra ``triton``) runs only when named, so far.
            (default: ``"auto"``)
            Every input is validated here (shapes, dtypes, devices, the graph's index range:
            once per graph object and without a host read, see
            :func:`nlgraph._validate.check_index_range`); the modules, which build consistent
            inputs themselves, call the unvalidated :func:`aggregate`.
        return_attention (bool): also return the weights as an
            :class:`nlgraph.attention.Attention` (on the full graph this builds the (B, N, N')
            matrix).
            (default: ``False``)
        edge_bias (Tensor, optional): an additive logit per edge, differentiable, for the
            softmax modes: (B or 1, N, N') on the full graph, (B or 1, N, k) on a RegularGraph
            (padding slots ignored), (B or 1, E) on a COOGraph in ``edge_index`` order. Same
            dtype and device as ``query``. (default: ``None``)

    Returns:
        Tensor: y, (B, N, Cv); or ``(y, attn)`` with ``return_attention=True``.

    Raises:
        TypeError: a non-float tensor, mixed dtypes or a bad ``pairwise``.
        ValueError: inconsistent shapes or devices, an unknown graph, mode or backend, or a
            backend that cannot run the inputs.

    Example:
        >>> q, k, v = torch.randn(2, 100, 16), torch.randn(2, 25, 16), torch.randn(2, 25, 8)
        >>> nonlocal_aggregate(q, k, v, "embedded_gaussian").shape
        torch.Size([2, 100, 8])
    """
    if isinstance(pairwise, str):
        try:
            pairwise = Pairwise(pairwise)
        except ValueError as exc:  # also name the argument the caller passed
            raise ValueError(f"{exc} (from pairwise={pairwise!r})") from None
    inp = AggregateInputs(query, key, value, pairwise, graph, bool(return_attention), edge_bias)
    inp.validate()
    y, attn = aggregate(inp, backend)
    if return_attention:
        assert attn is not None
        return y, attn
    return y


def aggregate(inp: AggregateInputs, backend: str = "auto") -> tuple[Tensor, Attention | None]:
    """Run already consistent inputs on the chosen kernel: ``(y, attn or None)``.

    The modules' path into the kernels: no validation beyond the kernel choice (see
    :func:`nonlocal_aggregate` for the checked public entry point, shapes and semantics).
    """
    return select_kernel(inp, backend).apply(inp)

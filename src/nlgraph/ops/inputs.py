"""The bundle of inputs that :func:`nlgraph.ops.nonlocal_aggregate` hands to a kernel."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .._validate import check_float_tensor, describe
from ..graphs.base import COOGraph, RegularGraph, trusted
from ..pairwise import Pairwise

__all__ = ["AggregateInputs"]


@dataclass(frozen=True, eq=False)
class AggregateInputs:
    """Query/key/value embeddings, the pairwise function and the graph, checked once.

    Shapes:
        - query: (B, N, Cq); key: (B, N', Cq); value: (B, N', Cv)
    """

    query: Tensor
    key: Tensor
    value: Tensor
    pairwise: Pairwise
    graph: str | RegularGraph | COOGraph = "full"
    return_attention: bool = False
    edge_bias: Tensor | None = None
    #: The caller guarantees ``edge_bias`` has no -inf (e.g. a floored log-weight): no query can
    #: lose all its edges, so the dense kernel skips its empty-row guard (a copy of the bias).
    bias_finite: bool = False

    def bias_shape(self) -> tuple[int, ...]:
        """The shape ``edge_bias`` must have for this graph, with G = 1 or B leading."""
        g = self.graph
        if isinstance(g, RegularGraph):
            return (self.num_queries, g.k)
        if isinstance(g, COOGraph):
            return (g.num_edges,)
        return (self.num_queries, self.num_keys)

    def batched_bias(self) -> Tensor | None:
        """``edge_bias`` expanded to B leading (a view), or ``None``."""
        if self.edge_bias is None:
            return None
        return self.edge_bias.expand(self.query.shape[0], *self.edge_bias.shape[1:])

    def coo_bias(self) -> Tensor | None:
        """(B, E) ``edge_bias`` in the edge order of :meth:`coo_graph`, or ``None``."""
        bias = self.batched_bias()
        if bias is None or isinstance(self.graph, COOGraph):
            return bias
        bias = bias.reshape(bias.shape[0], -1)  # full or regular: (query, slot) row-major
        if isinstance(self.graph, RegularGraph) and self.graph.mask is not None:
            bias = bias[:, self.graph.mask[0].reshape(-1)]
        return bias

    @property
    def graph_kind(self) -> str:
        """``"full"``, ``"regular"`` or ``"coo"``."""
        if isinstance(self.graph, RegularGraph):
            return "regular"
        if isinstance(self.graph, COOGraph):
            return "coo"
        return self.graph if isinstance(self.graph, str) else type(self.graph).__name__

    def regular_graph(self) -> RegularGraph:
        """The graph as a :class:`RegularGraph` (the full graph: every key in every row)."""
        if isinstance(self.graph, RegularGraph):
            return self.graph
        if isinstance(self.graph, COOGraph):
            return self.graph.to_regular()
        n, m = self.num_queries, self.num_keys
        index = torch.arange(m, device=self.key.device).expand(1, n, m)
        return trusted(RegularGraph(index, m))

    def coo_graph(self) -> COOGraph:
        """The graph as a :class:`COOGraph` (a regular graph must be shared by the batch)."""
        if isinstance(self.graph, COOGraph):
            return self.graph
        return self.regular_graph().to_coo(0)

    @property
    def num_queries(self) -> int:
        """N, the number of queries."""
        return self.query.shape[1]

    @property
    def num_keys(self) -> int:
        """N', the number of keys."""
        return self.key.shape[1]

    def validate(self) -> None:
        """Raise ``TypeError``/``ValueError`` naming the argument on any inconsistency."""
        for name in ("query", "key", "value"):
            t = check_float_tensor(name, getattr(self, name))
            if t.dim() != 3:
                raise ValueError(f"{name}: expected a 3-D tensor (B, *, C), got {describe(t)}")
        q, k, v = self.query, self.key, self.value
        listing = f"query: {describe(q)}\n  key: {describe(k)}\n  value: {describe(v)}"
        if not (q.dtype == k.dtype == v.dtype):
            raise TypeError(f"query/key/value: expected one dtype, got\n  {listing}")
        if not (q.device == k.device == v.device):
            raise ValueError(f"query/key/value: expected one device, got\n  {listing}")
        if not (q.shape[0] == k.shape[0] == v.shape[0]):
            raise ValueError(f"query/key/value: expected the same batch size B, got\n  {listing}")
        if q.shape[2] != k.shape[2]:
            raise ValueError(f"query/key: expected the same channel count Cq, got\n  {listing}")
        if k.shape[1] != v.shape[1]:
            raise ValueError(f"key/value: expected the same number of keys N', got\n  {listing}")
        if k.shape[1] == 0:
            raise ValueError(f"key: expected at least one key (N' >= 1), got\n  {listing}")
        if not isinstance(self.pairwise, Pairwise):
            raise TypeError(
                f"pairwise: expected an nlgraph.pairwise.Pairwise or a mode string, "
                f"got {type(self.pairwise).__name__}"
            )
        cw = self.pairwise.concat_weight
        if self.pairwise.mode == "concatenation" and (
            cw is None or cw.dim() != 1 or cw.shape[0] != 2 * q.shape[2]
        ):
            got = "None" if cw is None else describe(cw)
            raise ValueError(
                f"concat_weight: expected shape ({2 * q.shape[2]},) = (2*Cq,), got {got}"
            )
        self.validate_graph()
        self._validate_bias()

    def _validate_bias(self) -> None:
        bias = self.edge_bias
        if bias is None:
            return
        if not isinstance(bias, Tensor):
            raise TypeError(f"edge_bias: expected a Tensor or None, got {type(bias).__name__}")
        if not self.pairwise.is_softmax:
            raise ValueError(
                "edge_bias: only the softmax modes ('gaussian', 'embedded_gaussian') take a logit "
                f"bias, got mode={self.pairwise.mode!r}"
            )
        q, b = self.query, self.query.shape[0]
        if bias.dtype != q.dtype or bias.device != q.device:
            raise TypeError(
                f"edge_bias: expected dtype {q.dtype} on {q.device} (as query), got {describe(bias)}"
            )
        want = self.bias_shape()
        if bias.dim() != len(want) + 1 or bias.shape[0] not in (1, b) or bias.shape[1:] != want:
            lead = "1" if b == 1 else f"1 or {b}"
            raise ValueError(
                f"edge_bias: expected shape ({lead}, {', '.join(map(str, want))}) for a "
                f"{self.graph_kind} graph, got {describe(bias)}"
            )

    def validate_graph(self) -> None:
        """Check the graph against the embeddings: kind, sizes, batch, device, index range (the
        range once per graph object, without a host read)."""
        g, n, m, b = self.graph, self.num_queries, self.num_keys, self.query.shape[0]
        if isinstance(g, str):
            if g != "full":
                raise ValueError(f"graph: expected 'full', a RegularGraph or a COOGraph, got {g!r}")
            return
        if not isinstance(g, (RegularGraph, COOGraph)):
            raise TypeError(
                f"graph: expected 'full', a RegularGraph or a COOGraph, got {type(g).__name__}"
            )
        if g.num_keys != m or g.num_queries != n:
            raise ValueError(
                f"graph: expected {n} queries and {m} keys (from query/key), "
                f"got {g.num_queries} queries and {g.num_keys} keys"
            )
        if isinstance(g, RegularGraph) and g.index.shape[0] not in (1, b):
            raise ValueError(
                f"graph: expected a RegularGraph index of shape (1 or {b}, {n}, k), "
                f"got {tuple(g.index.shape)}"
            )
        dev = g.index.device if isinstance(g, RegularGraph) else g.edge_index.device
        if dev != self.query.device:
            raise ValueError(f"graph: expected device {self.query.device}, got {dev}")
        g.check_range()

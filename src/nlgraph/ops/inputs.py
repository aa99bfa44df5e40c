"""The bundle of inputs that :func:`nlgraph.ops.nonlocal_aggregate` hands to a kernel."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .._validate import check_choice, check_float_tensor, describe
from ..pairwise import Pairwise

__all__ = ["GRAPHS", "AggregateInputs"]

#: Graph specifications understood in this release.
GRAPHS: tuple[str, ...] = ("full",)


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
    graph: str = "full"
    return_attention: bool = False

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
        check_choice("graph", self.graph, GRAPHS)

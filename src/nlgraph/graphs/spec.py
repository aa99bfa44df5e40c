r"""Graph specs: one interface between the modules and every kind of edge set.

A module holds a *spec* (what kind of graph it wants) and, in every forward, asks it for the
*graph* of the current input: ``spec.build(ctx)``, where the :class:`GraphContext` carries
everything a spec may need (the embeddings, the map shapes, the pooling, the device, boxes). The
result is ``"full"`` (all pairs: the dense kernels), a :class:`~nlgraph.graphs.RegularGraph` or a
:class:`~nlgraph.graphs.COOGraph`. A new graph kind is a new :class:`GraphSpec` subclass; no
module changes.

Query and key spaces. Queries are the N positions of the input map (or the nodes, or the
boxes). Keys are the N' positions of the key map, which is the input map max-pooled by
``pool_size`` when a block sub-samples (``sub_sample=True``, the default of the non-local
blocks), else the input map itself. Every index a spec produces follows this: row 0 of an
``edge_index`` indexes keys in [0, N'), row 1 queries in [0, N).

Sharing one graph. A spec holds no state of its own: by default every ``build`` makes the
graph of the given input. To share one graph between blocks or steps, build it once and pass it
explicitly, e.g. ``g = block.build_graph(x)`` then ``block(x, graph=g)`` and
``other(x, graph=g)``: the graph is a visible value.

Per-module state. A module also hands its spec a :class:`GraphState` of its own
(``ctx.state``, with ``ctx.training``), where a spec may keep what it carries from call to call
*for that module*: the clustered k-NN's warm-start centroids, or the graph kept between
rebuilds by ``KNN(refresh_every=T)`` (in training mode only, and keyed by the input's shape,
device and dtype, so a batch of another shape never gets it). The state is a cache: it is not
pickled, copied or saved in a ``state_dict``, and ``module.reset_graph_state()`` (or a new
module) starts it afresh.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .._validate import check_edge_index
from .base import COOGraph, RegularGraph

__all__ = ["EdgeIndex", "Full", "Graph", "GraphContext", "GraphSpec", "GraphState", "as_spec"]

#: What a spec builds: ``"full"`` (all pairs), a RegularGraph or a COOGraph.
Graph = str | RegularGraph | COOGraph


class GraphState(dict):
    """A module's storage for its graph spec (see the module docstring): a plain ``dict`` that is
    neither pickled nor copied (``pickle``/``copy.deepcopy`` give an empty one), so a saved or
    cloned module never carries another input's graph."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (GraphState, ())

    def __deepcopy__(self, memo: dict[int, Any]) -> GraphState:
        return GraphState()

    def __copy__(self) -> GraphState:
        return GraphState()


@dataclass(frozen=True, eq=False)
class GraphContext:
    """Everything a :class:`GraphSpec` may build a graph from.

    Attributes:
        num_queries (int): N.
        num_keys (int): N'.
        device (torch.device): where the graph's tensors must live.
        batch_size (int): B, the samples of the batch (a per-sample graph has B of them).
        query (Tensor, optional): (B, N, Cq) query embeddings (θ x; x in the Gaussian mode).
        key (Tensor, optional): (B, N', Cq) key embeddings.
        spatial (tuple of int, optional): the query map's shape S (N = prod S).
        key_spatial (tuple of int, optional): the key map's shape (N' = prod), after pooling.
        pool_size (tuple of int, optional): the max-pool (kernel = stride) that made the key
            map; ``None`` when the keys are the query positions themselves.
        boxes (Tensor, optional): (R, 4) boxes, for box graphs.
        batch (Tensor, optional): (R,) image (or graph) index of each node.
        state (GraphState, optional): the calling module's storage for its spec (warm starts,
            a kept graph); ``None``: the spec keeps nothing between calls.
        training (bool): whether the calling module is in training mode (a graph is kept
            between rebuilds only then).
    """

    num_queries: int
    num_keys: int
    device: torch.device
    batch_size: int = 1
    query: Tensor | None = None
    key: Tensor | None = None
    spatial: tuple[int, ...] | None = None
    key_spatial: tuple[int, ...] | None = None
    pool_size: tuple[int, ...] | None = None
    boxes: Tensor | None = None
    batch: Tensor | None = None
    state: GraphState | None = None
    training: bool = False

    def key_space(self) -> str:
        """A phrase naming the key positions, for error messages."""
        if self.pool_size is None or self.spatial is None or self.key_spatial is None:
            return f"the {self.num_keys} keys"
        return (
            f"the {self.num_keys} = {_shape(self.key_spatial)} key positions left by sub_sample's "
            f"max-pool with pool_size {self.pool_size} of the {_shape(self.spatial)} input"
        )


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


class GraphSpec:
    """Base class of the graph specs (see the module docstring).

    Subclasses implement :meth:`build`; they may override :meth:`check_dims` to refuse a module
    of the wrong dimensionality at construction.
    """

    def build(self, ctx: GraphContext) -> Graph:
        """The graph of the input described by ``ctx``."""
        raise NotImplementedError

    def check_dims(self, dims: int) -> None:
        """Raise ``ValueError`` if a ``dims``-D module cannot use this spec (default: any)."""


class Full(GraphSpec):
    """All pairs: every query sees every key (the dense non-local block). ``"full"`` is accepted
    wherever a spec is, and means this."""

    def build(self, ctx: GraphContext) -> Graph:
        """Always ``"full"``."""
        return "full"

    def __repr__(self) -> str:
        return "'full'"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Full) or other == "full"

    def __hash__(self) -> int:
        return hash("full")


@dataclass(frozen=True, eq=False, repr=False)
class EdgeIndex(GraphSpec):
    r"""A user edge set: a PyG ``edge_index`` shared by every sample of the batch.

    Row 0 holds the key (source) j of every edge, row 1 its query (target) i: the message
    flows j → i, PyG's ``source_to_target`` convention. **Which positions the rows index**:
    queries are the N positions of the input map, flattened in C order (last axis fastest); keys
    are the N' positions of the *key map*, which for a block with ``sub_sample=True`` (the
    default) is the input max-pooled by ``pool_size`` (e.g. a 16x16 map has N = 256 queries but
    N' = 64 keys with the default 2x2 pool). An ``edge_index`` over input positions on both
    rows therefore needs ``sub_sample=False``; the range error says so.

    The index range is checked once per input size without reading the values back
    (``torch._assert_async``), and the :class:`~nlgraph.graphs.COOGraph` is built once per
    input size and device, so the ``csr`` kernel's sparse pattern is prepared once.

    Args:
        edge_index (Tensor): (2, E) int64; duplicates count as many times as they appear.
        query_sorted (bool, optional): ``edge_index[1]`` is known to be non-decreasing (see
            :class:`~nlgraph.graphs.COOGraph`). (default: ``None``, found out on first use)

    Example:
        >>> spec = EdgeIndex(torch.tensor([[0, 1, 1], [0, 0, 2]]))
        >>> ctx = GraphContext(num_queries=3, num_keys=2, device=torch.device("cpu"))
        >>> spec.build(ctx).num_edges
        3
    """

    edge_index: Tensor
    query_sorted: bool | None = None
    _graphs: dict[Any, COOGraph] = field(default_factory=dict, init=False, compare=False)

    def __post_init__(self) -> None:
        check_edge_index("edge_index", self.edge_index)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_graphs": {}}  # prepared graphs are a cache, not state

    def build(self, ctx: GraphContext) -> Graph:
        """The COOGraph of these edges for ``ctx``'s N queries and N' keys, on its device.

        Raises:
            IndexError: an index outside [0, N) (queries) or [0, N') (keys); the message names
                the key space (and the ``sub_sample`` pooling behind it).
        """
        ei = self.edge_index
        if torch.compiler.is_compiling():
            # Traced: the cache key's version counter is data-dependent for torch.compile, and
            # the CSR pattern it keeps is not used there (sparse tensors do not compile), so the
            # graph is made in the traced code, its range check an in-graph assertion.
            return self._make(ei, ctx)
        key = (ctx.num_queries, ctx.num_keys, ctx.device, ei._version)
        graph = self._graphs.get(key)
        if graph is None:
            graph = self._make(ei, ctx)
            self._graphs.clear()  # one input size at a time: no unbounded growth
            self._graphs[key] = graph
        return graph

    def _make(self, edge_index: Tensor, ctx: GraphContext) -> COOGraph:
        """The range-checked COOGraph of ``edge_index`` on ``ctx``'s device."""
        hint = ""
        if ctx.pool_size is not None and math.prod(ctx.pool_size) > 1:
            hint = (
                f"; the keys are {ctx.key_space()} (an edge_index over the "
                f"{ctx.num_queries} input positions needs sub_sample=False)"
            )
        graph = COOGraph(
            edge_index.to(ctx.device), ctx.num_queries, ctx.num_keys, self.query_sorted
        )
        graph.check_range(hint)
        return graph

    def __repr__(self) -> str:
        return f"EdgeIndex(E={self.edge_index.shape[1]})"


def as_spec(graph: Any, name: str = "graph") -> GraphSpec:
    """``graph`` as a :class:`GraphSpec`: ``"full"`` → :class:`Full`, a (2, E) int64 tensor →
    :class:`EdgeIndex`, a spec as is; ``ValueError`` otherwise (``TypeError``/``ValueError``
    from :class:`EdgeIndex` for a malformed tensor)."""
    if isinstance(graph, GraphSpec):
        return graph
    if isinstance(graph, Tensor):
        try:
            return EdgeIndex(graph)
        except (TypeError, ValueError) as err:
            raise type(err)(str(err).replace("edge_index:", f"{name}:", 1)) from None
    if isinstance(graph, str) and graph == "full":
        return Full()
    raise ValueError(
        f"{name}: expected 'full', a KNN, Window, TemporalGroups or EdgeIndex spec (any "
        f"nlgraph.graphs.GraphSpec), or an edge_index tensor, got {graph!r}"
    )

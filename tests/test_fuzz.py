"""Fuzzing the public entry points with wrong inputs, one argument at a time.

Every callable in ``__all__`` of ``nlgraph`` and its subpackages is either in :data:`ENTRIES`
(with a small table of *valid* base arguments) or in :data:`NOT_FUZZED` (with the reason). For
each entry and each of its arguments, :func:`wrong_values` derives wrong values from the base
value's kind: tensors of the wrong rank, length, dtype (int, bool, complex) or device
("meta"); ``None``; strings; negative, zero and huge ints; floats where ints are expected; NaN
and inf scalars. Module classes are fuzzed twice: their constructor, and ``forward`` of a module
built from the base arguments.

A call may succeed (a value that happens to be acceptable is counted as "accepted"), or raise
``ValueError``, ``TypeError`` or ``IndexError`` (the documented error types) whose message names
the perturbed argument. Anything else is a failure: another exception type (a RuntimeError from
deep inside torch, an AssertionError, ...) or a message that does not name the argument. The only
exceptions are :data:`ALLOWED` (documented, justified cases) and entries marked
``xfail(strict=True)`` in :data:`KNOWN_HOLES` (holes in files this test's author may not edit).

``python tests/test_fuzz.py --report`` prints how many inputs were tried and the outcomes by
exception type, per entry point.
"""

from __future__ import annotations

import math
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch import Tensor

F64 = torch.float64


# --------------------------------------------------------------------------- the table
def _t(*shape: int, dtype: torch.dtype = F64) -> Tensor:
    return torch.randn(*shape, dtype=dtype)


def _boxes(r: int) -> Tensor:
    xy = torch.rand(r, 2, dtype=F64) * 10
    return torch.cat([xy, xy + 1 + torch.rand(r, 2, dtype=F64) * 4], 1)


def _edges() -> Tensor:
    return torch.tensor([[0, 1, 2, 3], [1, 0, 3, 2]])


@dataclass
class Entry:
    """One entry point: ``make(**kwargs)`` is the call; ``base()`` gives valid kwargs."""

    name: str
    make: Callable[..., Any]
    base: Callable[[], dict[str, Any]]
    #: Arguments (``"name"``) or single wrong values (``"name=label"``) not tried, with the
    #: reason (e.g. a device option whose strings are all valid, or a known hang).
    skip: dict[str, str] = field(default_factory=dict)


def _entries() -> list[Entry]:
    import nlgraph
    from nlgraph import compat, graphs, nn, nodes, ops
    from nlgraph.pairwise import Pairwise

    def block_kw(dims: int) -> dict[str, Any]:
        return dict(
            in_channels=4, inter_channels=2, mode="embedded_gaussian", sub_sample=True,
            pool_size=None, pool_placement="after", scale=None, norm="batch", zero_init=True,
            out_bias=True, weight_init="pytorch", norm_eps=1e-5, norm_momentum=0.1,
            graph="full", latent=None, backend="auto", dtype=F64,
        )  # fmt: skip

    def forward_of(cls: Any, ctor: dict[str, Any]) -> Callable[..., Any]:
        def call(**kw: Any) -> Any:
            torch.manual_seed(0)
            return cls(**ctor)(**kw)

        return call

    shapes = {1: (6,), 2: (4, 4), 3: (2, 4, 4)}
    out = []
    for dims, cls in ((1, nlgraph.NonLocalBlock1d), (2, nlgraph.NonLocalBlock2d),
                      (3, nlgraph.NonLocalBlock3d)):  # fmt: skip
        out.append(Entry(cls.__name__, cls, lambda d=dims: block_kw(d)))
        out.append(
            Entry(
                f"{cls.__name__}.forward",
                forward_of(cls, block_kw(dims)),
                lambda d=dims: dict(x=_t(2, 4, *shapes[d]), return_attention=False, graph=None),
            )
        )
    conv_kw = dict(in_channels=4, inter_channels=2, mode="embedded_gaussian", scale=None,
                   norm=None, residual=True, bias=True, dtype=F64)  # fmt: skip
    out += [
        Entry(
            "nonlocal_aggregate",
            nlgraph.nonlocal_aggregate,
            lambda: dict(
                query=_t(2, 5, 3),
                key=_t(2, 4, 3),
                value=_t(2, 4, 2),
                pairwise="embedded_gaussian",
                graph="full",
                backend="auto",
                return_attention=False,
                edge_bias=None,
            ),  # fmt: skip
        ),
        Entry(
            "Pairwise", Pairwise, lambda: dict(mode="dot_product", scale=1.0, concat_weight=None)
        ),
        Entry("Attention", nlgraph.Attention, lambda: dict(dense=torch.rand(2, 3, 4, dtype=F64))),
        Entry("NonLocalConv", nn.NonLocalConv, lambda: dict(conv_kw)),
        Entry(
            "NonLocalConv.forward",
            forward_of(nn.NonLocalConv, conv_kw),
            lambda: dict(x=_t(4, 4), edge_index=_edges(), return_attention_weights=None),
        ),
        Entry(
            "ObjectRelation",
            nn.ObjectRelation,
            lambda: dict(
                in_channels=8,
                num_heads=2,
                key_channels=8,
                geo_channels=8,
                graph=None,
                geometry="official",
                backend="auto",
            ),  # fmt: skip
        ),
        Entry(
            "ObjectRelation.forward",
            forward_of(
                nn.ObjectRelation, dict(in_channels=8, num_heads=2, key_channels=8, geo_channels=8)
            ),  # fmt: skip
            lambda: dict(
                x=_t(4, 8, dtype=torch.float32),
                boxes=_boxes(4).float(),
                batch=torch.tensor([0, 0, 1, 1]),
                edge_index=None,
                return_attention=False,
            ),  # fmt: skip
        ),
        Entry(
            "GlobalReasoning",
            nn.GlobalReasoning,
            lambda: dict(
                in_channels=4,
                num_nodes=2,
                node_channels=2,
                normalize=False,
                graph_form="code",
                norm="batch",
                zero_init=True,
                norm_eps=1e-4,
                norm_momentum=0.1,
                dtype=F64,
            ),  # fmt: skip
        ),
        Entry(
            "GlobalReasoning.forward",
            forward_of(nn.GlobalReasoning, dict(in_channels=4, num_nodes=2, dtype=F64)),
            lambda: dict(x=_t(2, 4, 3, 3), batch=None, num_graphs=None),
        ),
        Entry(
            "RelationNetwork",
            nn.RelationNetwork,
            lambda: dict(
                in_channels=4,
                hidden_channels=4,
                out_channels=None,
                cond_channels=0,
                g_layers=2,
                f_layers=1,
                aggregation="sum",
                readout="graph",
                graph="full",
                self_loops=True,
                chunk_size=64,
                checkpoint=False,
                dtype=F64,
            ),  # fmt: skip
        ),
        Entry("make_divisible", nn.make_divisible, lambda: dict(value=20.0, divisor=8)),
        Entry(
            "KNN",
            graphs.KNN,
            lambda: dict(
                k=2,
                metric="logit",
                block_size=None,
                search="auto",
                n_clusters=None,
                n_probe=None,
                refresh_every=1,
                seed=0,
                warm_start=True,
            ),  # fmt: skip
        ),
        Entry(
            "KNN.build",
            lambda **kw: graphs.KNN(2).build(**kw),
            lambda: dict(ctx=_t(2, 5, 3), key=_t(2, 4, 3)),
        ),  # fmt: skip
        Entry("BoxKNN", graphs.BoxKNN, lambda: dict(k=2, metric="center")),
        Entry(
            "COOGraph",
            graphs.COOGraph,
            lambda: dict(edge_index=_edges(), num_queries=4, num_keys=4, query_sorted=None),
        ),
        Entry("EdgeIndex", graphs.EdgeIndex, lambda: dict(edge_index=_edges(), query_sorted=None)),
        Entry("Latent", graphs.Latent, lambda: dict(num_nodes=2, normalize=True)),
        Entry(
            "RegularGraph",
            graphs.RegularGraph,
            lambda: dict(index=torch.zeros(1, 3, 2, dtype=torch.long), num_keys=2, mask=None),
        ),
        Entry("Window", graphs.Window, lambda: dict(radius=1, dilation=1)),
        Entry("TemporalGroups", graphs.TemporalGroups, lambda: dict(group_size=2)),
        Entry(
            "box_geometry",
            graphs.box_geometry,
            lambda: dict(boxes=_boxes(4), edge_index=_edges(), eps=1e-3),
        ),  # fmt: skip
        Entry(
            "box_graph",
            graphs.box_graph,
            lambda: dict(boxes=_boxes(4), batch=None, k=2, metric="center"),
        ),  # fmt: skip
        Entry("box_iou", graphs.box_iou, lambda: dict(a=_boxes(3), b=_boxes(2))),
        Entry(
            "from_edge_index",
            graphs.from_edge_index,
            lambda: dict(edge_index=_edges(), num_queries=4, num_keys=4),
        ),  # fmt: skip
        Entry(
            "full_edge_index",
            graphs.full_edge_index,
            lambda: dict(num_queries=3, num_keys=2, device=None),  # fmt: skip
            skip={"device": "any device string is passed to torch.device"},
        ),
        Entry(
            "geometry_embedding",
            graphs.geometry_embedding,
            lambda: dict(geometry=_t(5, 4), dim=8, wave_length=1000.0, scale=100.0),
        ),  # fmt: skip
        Entry(
            "grid_positions",
            graphs.grid_positions,
            lambda: dict(shape=(2, 3), dtype=torch.float32, device=None),  # fmt: skip
            skip={"device": "any device string is passed to torch.device"},
        ),
        Entry(
            "ivf_knn",
            graphs.ivf_knn,
            lambda: dict(
                query=_t(1, 6, 2),
                key=_t(1, 8, 2),
                k=2,
                metric="logit",
                n_clusters=2,
                n_probe=1,
                iters=None,
                generator=None,
                centroids=None,
                exclude=None,
                order="index",
            ),  # fmt: skip
        ),
        Entry(
            "knn",
            graphs.knn,
            lambda: dict(
                x=_t(6, 2),
                y=_t(5, 2),
                k=2,
                batch_x=None,
                batch_y=None,
                cosine=False,
                num_workers=1,
                batch_size=None,
                metric=None,
                block_size=None,
                backend="torch",
                search="auto",
                n_clusters=None,
                n_probe=None,
            ),  # fmt: skip
        ),
        Entry(
            "knn_graph",
            graphs.knn_graph,
            lambda: dict(
                x=_t(6, 2),
                k=2,
                batch=None,
                loop=False,
                flow="source_to_target",
                cosine=False,
                num_workers=1,
                batch_size=None,
                metric=None,
                block_size=None,
                backend="torch",
                search="auto",
                n_clusters=None,
                n_probe=None,
            ),  # fmt: skip
        ),
        Entry(
            "knn_recall",
            graphs.knn_recall,
            lambda: dict(approx=_edges(), exact=_edges(), query_row=1),
        ),  # fmt: skip
        Entry(
            "to_edge_index",
            graphs.to_edge_index,
            lambda: dict(graph=_edges(), sample=0, num_queries=None, num_keys=None),
        ),  # fmt: skip
        Entry(
            "window_offsets", graphs.window_offsets, lambda: dict(radius=1, dilation=1, dims=2)
        ),  # fmt: skip
        Entry(
            "AggregateInputs.validate",
            lambda **kw: ops.AggregateInputs(**kw).validate(),
            lambda: dict(
                query=_t(2, 5, 3),
                key=_t(2, 4, 3),
                value=_t(2, 4, 2),
                pairwise=Pairwise("dot_product"),
                graph="full",
                return_attention=False,
                edge_bias=None,
            ),  # fmt: skip
        ),
        Entry(
            "select_kernel",
            ops.select_kernel,
            lambda: dict(
                inp=ops.AggregateInputs(
                    _t(2, 5, 3), _t(2, 4, 3), _t(2, 4, 2), Pairwise("dot_product")
                ),
                backend="auto",
            ),  # fmt: skip
        ),
        Entry(
            "from_reference",
            compat.from_reference,
            lambda: dict(
                state_dict=nlgraph.NonLocalBlock2d(4).to_reference("alexhex7"),
                layout="alexhex7",
                dims=2,
                mode=None,
                sub_sample=None,
                prefix=None,
            ),  # fmt: skip
        ),
        Entry(
            "to_reference",
            compat.to_reference,
            lambda: dict(block=nlgraph.NonLocalBlock2d(4), layout="alexhex7", prefix=None),
        ),  # fmt: skip
        Entry("check_boxes", nodes.check_boxes, lambda: dict(boxes=_boxes(3), name="boxes")),
        Entry(
            "check_batch",
            nodes.check_batch,
            lambda: dict(
                batch=torch.tensor([0, 0, 1]), num_boxes=3, device="cpu", name="batch", num_images=2
            ),  # fmt: skip
            skip={
                "device": "any device string is passed to torch.device",
                "name": "the name to report, any string",
            },  # fmt: skip
        ),
        Entry(
            "roi_features",
            nodes.roi_features,
            lambda: dict(
                feature_map=_t(2, 3, 8, 8),
                boxes=_boxes(3),
                batch=torch.tensor([0, 1, 1]),
                output_size=2,
                spatial_scale=0.5,
                sampling_ratio=2,
                aligned=True,
            ),  # fmt: skip
        ),
    ]
    for entry in out:
        if entry.name == "check_boxes":
            entry.skip["name"] = "the name to report, any string"
    return out


#: Callables of the public ``__all__`` lists that are not fuzzed, with the reason.
NOT_FUZZED: dict[str, str] = {
    "NonLocalBlockNd": "abstract base class (dims = 0); fuzzed through NonLocalBlock1d/2d/3d",
    "NonLocalBlockLike": "a typing.Protocol",
    "GraphSpec": "abstract base class of the graph specs",
    "GraphState": "a plain dict subclass (module storage), no validation by design",
    "GraphContext": "an internal bundle built by the modules; its consumers are fuzzed",
    "Full": "takes no arguments",
    "Kernel": "abstract base class of the kernels; they are fuzzed through nonlocal_aggregate",
    "COOKernel": "kernels never validate (nonlocal_aggregate does, and is fuzzed)",
    "CSRKernel": "kernels never validate (nonlocal_aggregate does, and is fuzzed)",
    "DenseKernel": "kernels never validate (nonlocal_aggregate does, and is fuzzed)",
    "RegularKernel": "kernels never validate (nonlocal_aggregate does, and is fuzzed)",
    "TritonKernel": "kernels never validate (nonlocal_aggregate does, and is fuzzed)",
    "data_to_feature_map": "takes a torch_geometric Data object (tests/graphs/test_convert.py)",
    "feature_map_to_data": "builds torch_geometric Data (tests/graphs/test_convert.py)",
    "KNNGraph": "a torch_geometric transform (tests/test_transforms.py)",
}

#: (entry, argument, wrong-value label) -> why that outcome is acceptable.
ALLOWED: dict[tuple[str, str, str], str] = {}

#: entry -> reason, for holes in files outside tests/ and the validators this file may fix.
KNOWN_HOLES: dict[str, str] = {}


# --------------------------------------------------------------------------- wrong values
def wrong_values(value: Any) -> Iterator[tuple[str, Any]]:
    """``(label, wrong value)`` pairs derived from a valid base value's kind."""
    common: list[tuple[str, Any]] = [("None", None), ("str", "nonsense"), ("nan", math.nan)]
    if isinstance(value, Tensor):
        yield from common
        yield "int 3", 3
        yield "int64", value.long()
        yield "bool", value.bool()
        yield "complex64", value.to(torch.complex64)
        yield "meta", value.to("meta")
        yield "rank+1", value.unsqueeze(0)
        if value.dim() >= 1:
            yield "rank-1", value.reshape(-1) if value.dim() > 1 else value[0]
            if value.numel():
                yield "length+1", torch.cat([value, value.narrow(0, 0, 1)])
                yield "last+1", torch.cat([value, value.narrow(-1, 0, 1)], -1)
        if value.is_floating_point():
            yield "float16", value.half()
        else:
            yield "float64", value.double()
        return
    if isinstance(value, bool):
        yield from common
        yield "int 2", 2
        yield "float 1.0", 1.0
        return
    if isinstance(value, int):
        yield from common
        yield "int -1", -1
        yield "int 0", 0
        yield "int 2**62", 2**62
        yield "float 2.5", 2.5
        yield "bool True", True
        yield "str '3'", "3"
        return
    if isinstance(value, float):
        yield from common
        yield from (("-1.0", -1.0), ("0.0", 0.0), ("inf", math.inf), ("complex", 1j))
        return
    if isinstance(value, str):
        yield "None", None
        yield "str", "nonsense"
        yield "empty str", ""
        yield "int 3", 3
        yield "bytes", value.encode()
        return
    if isinstance(value, tuple):
        yield from common
        yield "empty tuple", ()
        yield "(0,)*", (0,) * len(value)
        yield "(-1,)*", (-1,) * len(value)
        yield "floats", tuple(float(v) + 0.5 for v in value)
        yield "longer", (*value, 2)
        return
    if isinstance(value, torch.dtype):
        yield "int64", torch.int64
        yield "str", "float32"
        yield "int 3", 3
        return
    if value is None:
        yield "str", "nonsense"
        yield "int -1", -1
        yield "nan", math.nan
        yield "int tensor", torch.ones(2, 2, dtype=torch.long)
        yield "float tensor", torch.ones(2, 2, dtype=F64)
        yield "complex tensor", torch.ones(2, dtype=torch.complex64)
        return
    yield from common
    yield "int 3", 3


# --------------------------------------------------------------------------- running
@dataclass
class Outcome:
    entry: str
    argument: str
    label: str
    kind: str  # "accepted", an exception type name
    ok: bool
    message: str = ""


def run_entry(entry: Entry) -> list[Outcome]:
    """Call ``entry`` once per (argument, wrong value); classify each outcome."""
    outcomes = []
    torch.manual_seed(0)
    names = list(entry.base())
    for arg in names:
        if arg in entry.skip:
            continue
        base_value = entry.base()[arg]
        for label, wrong in wrong_values(base_value):
            if f"{arg}={label}" in entry.skip:
                continue
            kwargs = entry.base()
            kwargs[arg] = wrong
            try:
                entry.make(**kwargs)
            except (ValueError, TypeError, IndexError) as exc:
                named = arg in str(exc)
                allowed = (entry.name, arg, label) in ALLOWED
                outcomes.append(
                    Outcome(entry.name, arg, label, type(exc).__name__, named or allowed, str(exc))
                )
            except Exception as exc:  # noqa: BLE001 - every other type is a finding
                allowed = (entry.name, arg, label) in ALLOWED
                outcomes.append(
                    Outcome(entry.name, arg, label, type(exc).__name__, allowed, str(exc))
                )
            else:
                outcomes.append(Outcome(entry.name, arg, label, "accepted", True))
    return outcomes


def fuzz_counts(entries: list[Entry] | None = None) -> dict[str, Counter[str]]:
    """Per entry point, how many wrong inputs were tried and the outcomes by exception type
    (``"accepted"``: no exception; ``"FAIL"``: findings, any type)."""
    counts: dict[str, Counter[str]] = {}
    for entry in entries if entries is not None else _entries():
        c: Counter[str] = Counter()
        for o in run_entry(entry):
            c["tried"] += 1
            c[o.kind] += 1
            if not o.ok:
                c["FAIL"] += 1
        counts[entry.name] = c
    return counts


def report(entries: list[Entry] | None = None) -> str:
    """A plain-text table of :func:`fuzz_counts` with a total line."""
    counts = fuzz_counts(entries)
    kinds = sorted({k for c in counts.values() for k in c} - {"tried", "FAIL"})
    cols = ["tried", *kinds, "FAIL"]
    width = max(len(n) for n in counts) + 2
    lines = [f"{'entry point':<{width}}" + "".join(f"{c:>12}" for c in cols)]
    total: Counter[str] = Counter()
    for name, c in counts.items():
        total.update(c)
        lines.append(f"{name:<{width}}" + "".join(f"{c[k]:>12}" for k in cols))
    lines.append(f"{'TOTAL':<{width}}" + "".join(f"{total[k]:>12}" for k in cols))
    return "\n".join(lines)


# --------------------------------------------------------------------------- tests
def _public_callables() -> set[str]:
    import inspect

    import nlgraph
    from nlgraph import compat, graphs, nn, nodes, ops, transforms

    names = set()
    for mod in (nlgraph, nn, graphs, ops, compat, nodes, transforms):
        for name in mod.__all__:
            obj = getattr(mod, name)
            if callable(obj) and not inspect.ismodule(obj):
                names.add(name)
    return names


def test_every_public_callable_is_fuzzed_or_listed() -> None:
    """The table covers ``__all__``: a new public callable must be added to ENTRIES or to
    NOT_FUZZED (with its reason)."""
    fuzzed = {e.name.split(".")[0] for e in _entries()}
    missing = _public_callables() - fuzzed - set(NOT_FUZZED)
    assert not missing, f"add these to ENTRIES or NOT_FUZZED: {sorted(missing)}"


def _params() -> list[Any]:
    out = []
    for entry in _entries():
        marks = []
        if entry.name in KNOWN_HOLES:
            marks.append(pytest.mark.xfail(strict=True, reason=KNOWN_HOLES[entry.name]))
        out.append(pytest.param(entry.name, id=entry.name, marks=marks))
    return out


@pytest.mark.parametrize("name", _params())
def test_wrong_inputs_raise_named_errors(name: str) -> None:
    """Every wrong input to ``name`` is accepted or raises ValueError/TypeError/IndexError naming
    the perturbed argument (findings listed in the failure message)."""
    (entry,) = [e for e in _entries() if e.name == name]
    outcomes = run_entry(entry)
    assert outcomes, "nothing was tried"
    bad = [o for o in outcomes if not o.ok]
    listed = "\n".join(
        f"  {o.argument}={o.label}: {o.kind}: {o.message.splitlines()[0][:160] if o.message else ''}"
        for o in bad
    )
    assert not bad, f"{len(bad)} of {len(outcomes)} wrong inputs misreported:\n{listed}"


def test_valid_base_arguments_are_accepted() -> None:
    """The base arguments of every entry are valid (so each perturbation tests one argument)."""
    for entry in _entries():
        torch.manual_seed(0)
        entry.make(**entry.base())


if __name__ == "__main__":
    if "--report" in sys.argv:
        print(report())
    else:
        print("usage: python tests/test_fuzz.py --report")

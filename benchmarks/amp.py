"""Errors of every aggregation kernel in mixed precision, against a float64 reference.

For every kernel (``dense`` on the full graph; ``regular``, ``coo``, ``csr`` and ``triton`` on a
masked RegularGraph with one query without neighbours; ``coo`` and ``triton`` also on an unsorted
COOGraph with an isolated query) and every mode, three settings:

- ``autocast bf16``: float32 inputs projected by ``nn.Linear`` layers inside
  ``torch.autocast("cpu", dtype=torch.bfloat16)``, so the kernel receives the bfloat16 tensors
  autocast produces and runs inside the autocast region (the blocks' situation);
- ``bf16``, ``fp16``: plain half-precision inputs, no autocast.

Each case runs forward and backward (upstream gradient g ~ N(0, 1)) and compares y and the
gradients dq, dk, dv of the kernel's inputs with :func:`tests.helpers.reference_aggregate`
evaluated in float64 on the same (already rounded) inputs: the table isolates the error the
kernel adds, not the rounding of its inputs. Errors: ``abs`` = max |x - ref|, ``rel`` =
max |x - ref| / max |ref| (normwise, so near-zero entries do not blow it up). ``csr`` declines
half precision (``backend="auto"`` routes such inputs to ``regular``/``coo``), shown as such.
``triton`` runs in Triton's interpreter on CPU (TRITON_INTERPRET=1, set here when unset), always
at the ``--quick`` shape (the interpreter is slow).

Run ``python benchmarks/amp.py [--quick] [--only MODE] [--out FILE]``; results go to
``benchmarks/results/amp.md``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")  # read when the triton kernels are first built

import torch

ROOT = Path(__file__).resolve().parent
sys.path[:0] = [str(ROOT), str(ROOT.parent)]

import _common  # noqa: E402

from nlgraph import Pairwise, nonlocal_aggregate  # noqa: E402
from nlgraph.graphs import COOGraph, RegularGraph  # noqa: E402
from nlgraph.ops import AggregateInputs  # noqa: E402
from nlgraph.ops.dispatch import KERNELS  # noqa: E402
from nlgraph.pairwise import MODES  # noqa: E402
from tests.helpers import KERNEL_GRAPH_RUNS, masked_graph, reference_aggregate  # noqa: E402

SETTINGS = ("autocast bf16", "bf16", "fp16")
#: (kernel, graph kind) rows of the table.
RUNS = KERNEL_GRAPH_RUNS


@dataclass(frozen=True)
class Shape:
    """B, N queries, N' keys, k neighbours per query, channels C (query/key) and Cv (value)."""

    batch: int
    n: int
    m: int
    k: int
    c: int
    cv: int

    def __str__(self) -> str:
        return f"B={self.batch} N={self.n} N'={self.m} k={self.k} C={self.c} Cv={self.cv}"


FULL = Shape(2, 256, 256, 16, 32, 32)
QUICK = Shape(2, 48, 32, 8, 16, 16)


def make_graph(
    kind: str, shape: Shape, gen: torch.Generator
) -> tuple[str | RegularGraph | COOGraph, torch.Tensor]:
    """The graph and its (N, N') neighbour mask (distinct neighbours, so the mask is exact)."""
    return masked_graph(kind, shape.n, shape.m, shape.k, gen)


def pairwise(mode: str, c: int, gen: torch.Generator) -> Pairwise:
    """The mode's pairwise function: the usual C^-1/2 temperature for the embedded Gaussian, a
    random float32 projection (a parameter, as in the blocks) for concatenation."""
    if mode == "concatenation":
        return Pairwise(mode, concat_weight=torch.randn(2 * c, generator=gen) / c**0.5)
    return Pairwise(mode, c**-0.5 if mode == "embedded_gaussian" else 1.0)


def errors(x: torch.Tensor | None, ref: torch.Tensor) -> tuple[float, float]:
    """(max abs error, normwise relative error) of ``x`` against the float64 ``ref``."""
    if x is None:
        return float("nan"), float("nan")
    err = float((x.detach().double() - ref.detach()).abs().max())
    return err, err / max(float(ref.abs().max()), 1e-300)


def run_case(
    kernel: str, kind: str, mode: str, setting: str, shape: Shape, seed: int = 0
) -> dict[str, tuple[float, float]] | str:
    """Errors of y, dq, dk, dv for one case, or the kernel's reasons when it declines."""
    gen = torch.Generator().manual_seed(seed)
    graph, mask = make_graph(kind, shape, gen)
    pw = pairwise(mode, shape.c, gen)
    b, n, m, c, cv = shape.batch, shape.n, shape.m, shape.c, shape.cv
    raw = [torch.randn(b, rows, w, generator=gen) for rows, w in ((n, c), (m, c), (m, cv))]
    grad = torch.randn(b, n, cv, generator=gen)
    if setting == "autocast bf16":
        layers = [torch.nn.Linear(t.shape[-1], t.shape[-1], bias=False) for t in raw]
        for layer in layers:
            with torch.no_grad():
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) / c**0.5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            q, k, v = (layer(t) for layer, t in zip(layers, raw))
    else:
        dtype = torch.bfloat16 if setting == "bf16" else torch.float16
        q, k, v = (t.to(dtype) for t in raw)
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    reasons = KERNELS[kernel].not_supported_reasons(AggregateInputs(q, k, v, pw, graph))
    if reasons:
        return "; ".join(reasons)
    if setting == "autocast bf16":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = nonlocal_aggregate(q, k, v, pw, graph=graph, backend=kernel)
    else:
        y = nonlocal_aggregate(q, k, v, pw, graph=graph, backend=kernel)
    y.backward(grad.to(y.dtype))
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    u = w = None
    if pw.concat_weight is not None:
        u, w = pw.concat_weight.double().chunk(2)
    y_ref, _ = reference_aggregate(q64, k64, v64, mode, pw.logit_scale, u, w, mask)
    y_ref.backward(grad.double())
    return {
        "y": errors(y, y_ref),
        "dq": errors(q.grad, q64.grad),
        "dk": errors(k.grad, k64.grad),
        "dv": errors(v.grad, v64.grad),
    }


def fmt(x: float) -> str:
    """Two significant digits in scientific notation (``—`` for NaN)."""
    return "—" if x != x else f"{x:.1e}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run every case, print and write the markdown table. Returns 0."""
    parser = _common.make_parser("amp", __doc__.split("\n", 1)[0])
    args = parser.parse_args(argv)
    shape = QUICK if args.quick else FULL
    modes = args.only or list(MODES)
    info = _common.machine_info()
    print("\n".join(f"{k}: {v}" for k, v in info.items()), flush=True)
    sections = []
    declined: dict[str, str] = {}
    for setting in SETTINGS:
        rows = []
        for kernel, kind in RUNS:
            case_shape = QUICK if kernel == "triton" else shape
            for mode in modes:
                res = run_case(kernel, kind, mode, setting, case_shape)
                if isinstance(res, str):
                    declined[f"{kernel} ({kind}), {setting}"] = res
                    continue
                cells = [fmt(v) for name in ("y", "dq", "dk", "dv") for v in res[name]]
                rows.append([kernel, kind, mode, *cells])
                print(f"{setting:<14} {kernel:<8} {kind:<8} {mode:<18} "
                      + " ".join(cells), flush=True)  # fmt: skip
        headers = ["kernel", "graph", "mode"] + [
            f"{t} {e}" for t in ("y", "dq", "dk", "dv") for e in ("abs", "rel")
        ]
        sections.append((f"{setting}", _common.markdown_table(headers, rows)))
    setup = (
        f"CPU, shape {shape} (`triton`: Triton's interpreter at {QUICK}). Errors against "
        "`tests.helpers.reference_aggregate` in float64 on the same rounded inputs; `abs` = "
        "max |x - ref|, `rel` = max |x - ref| / max |ref|. `autocast bf16`: inputs made by "
        "`nn.Linear` under `torch.autocast('cpu', dtype=torch.bfloat16)`, kernel called inside "
        "the region; `bf16`/`fp16`: plain inputs. One unit in the last place of y is 2^-8 = "
        "3.9e-3 (bfloat16) or 2^-11 = 4.9e-4 (float16) relative. Concatenation gradients "
        "hinge on the sign of the pre-activation a_i + b_j: the kernels compute the halves a, b "
        "in float32, and where a kernel rounds them to half precision first, the edges whose sum "
        "changes sign each move a whole term of dq/dk (normwise errors of 0.1-0.3 in bfloat16)."
    )
    sections.insert(0, ("Setup", setup))
    if declined:
        notes = "\n".join(f"- `{name}`: {why}" for name, why in declined.items())
        sections.append(("Declined", notes + "\n\n`backend=\"auto\"` routes these inputs "
                         "to `regular` (RegularGraph) or `coo` (COOGraph)."))  # fmt: skip
    out = _common.write_results(
        args.out, "Mixed-precision errors against float64", sections,
        _common.command_line("amp", argv), info,
    )  # fmt: skip
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

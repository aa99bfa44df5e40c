"""Run inside a fresh venv holding the built nlgraph wheel with every optional extra
(``make extras-check``): each extra installed, imports, and the feature of nlgraph it serves
works from the wheel. Not collected by pytest (no ``test_`` prefix).

- ``scatter``: nlgraph's segment primitive runs on torch-scatter and equals plain torch;
- ``faiss``: ``knn_graph(..., backend="faiss")`` equals the torch search;
- ``triton``: the package imports (its kernels need a GPU, or the interpreter: the suite);
- ``viz``: ``nlgraph.viz.attention_map`` draws with matplotlib's Agg backend;
- ``docs``: mkdocs, mkdocs-material and mkdocstrings' Python handler import;
- ``dev``: the test and lint tools and the comparison packages import.
"""

from __future__ import annotations

import importlib
import sys

import nlgraph

#: Each extra and the modules it must bring.
EXTRAS: dict[str, tuple[str, ...]] = {
    "scatter": ("torch_scatter",),
    "faiss": ("faiss",),
    "triton": ("triton",),
    "viz": ("matplotlib",),
    "docs": ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"),
    "dev": ("pytest", "hypothesis", "ruff", "mypy", "mmcv", "scipy", "tqdm"),
}


def _check_features() -> None:
    import torch

    from nlgraph.graphs import knn_graph
    from nlgraph.ops.kernels import _scatter

    # scatter: the segment sums run on torch-scatter and equal index_add.
    assert _scatter.backend(torch.device("cpu")) == "torch_scatter", _scatter.backend()
    src, index = torch.randn(50, 3, dtype=torch.float64), torch.randint(0, 7, (50,))
    expected = torch.zeros(7, 3, dtype=torch.float64).index_add(0, index, src)
    assert torch.allclose(_scatter.segment_sum(src, index, 7), expected)
    # faiss: the same k-NN graph as the torch search.
    x = torch.randn(200, 8)
    a, b = knn_graph(x, 5, backend="faiss"), knn_graph(x, 5)
    assert torch.equal(a[0].view(200, 5).sort(1).values, b[0].view(200, 5).sort(1).values)
    # viz: a heatmap drawn off-screen.
    import matplotlib

    matplotlib.use("Agg")
    from nlgraph.viz import attention_map

    _, attn = nlgraph.NonLocalBlock2d(4, sub_sample=False)(
        torch.randn(1, 4, 5, 5), return_attention=True
    )
    assert attention_map(attn, (2, 2)) is not None


def main() -> int:
    where = nlgraph.__file__ or ""
    if "site-packages" not in where:
        print(f"FAIL: nlgraph imported from {where}, not from the installed wheel")
        return 1
    missing = []
    for extra, modules in EXTRAS.items():
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception as exc:  # noqa: BLE001 - report every failure
                missing.append(f"{extra}: {name} ({type(exc).__name__}: {exc})")
    if missing:
        print("FAIL: extras that did not install or import:\n  " + "\n  ".join(missing))
        return 1
    _check_features()
    print(
        f"nlgraph {nlgraph.__version__} with every extra OK from {where}: "
        f"{', '.join(EXTRAS)}; python {sys.version.split()[0]}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Import hygiene: the core does not drag PyG in, imports change no global state, and the
packages' import graph has no cycle between ``nlgraph.nn`` and ``nlgraph.compat``."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import warnings
from pathlib import Path

import torch

SRC = Path(__file__).resolve().parents[1] / "src" / "nlgraph"


def _fresh(code: str) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON object."""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_core_imports_without_pyg_and_pyg_parts_load_on_use() -> None:
    """``import nlgraph.ops`` (which runs ``nlgraph/__init__``) and the other core packages
    import neither torch_geometric nor networkx and leave the warning filters alone; the PyG
    parts (NonLocalConv, the transforms, the Data conversions) load PyG when first used."""
    got = _fresh(
        "import json, sys, warnings, numpy, torch; before = list(warnings.filters); "
        "import nlgraph.ops; ops = 'torch_geometric' in sys.modules; "
        "import nlgraph, nlgraph.graphs, nlgraph.nn, nlgraph.compat; "
        "core = {'ops': ops, 'pyg': 'torch_geometric' in sys.modules, "
        "'nx': 'networkx' in sys.modules, 'filters': warnings.filters == before}; "
        "conv = nlgraph.NonLocalConv(8); from nlgraph.nn import NonLocalConv; "
        "from nlgraph.graphs import feature_map_to_data; "
        "print(json.dumps({**core, 'after': 'torch_geometric' in sys.modules, "
        "'same': type(conv) is NonLocalConv, 'transforms': hasattr(nlgraph.transforms, 'KNNGraph')}))"
    )
    assert got == {
        "ops": False, "pyg": False, "nx": False, "filters": True,
        "after": True, "same": True, "transforms": True,
    }  # fmt: skip


def test_csr_kernel_warns_nothing() -> None:
    """PyTorch's sparse-CSR "beta" warning is silenced inside the kernel only."""
    from nlgraph import nonlocal_aggregate
    from nlgraph.graphs import RegularGraph

    q, k, v = torch.randn(1, 6, 3), torch.randn(1, 5, 3), torch.randn(1, 5, 2)
    graph = RegularGraph(torch.randint(0, 5, (1, 6, 2)), 5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        nonlocal_aggregate(q, k, v, "embedded_gaussian", graph=graph, backend="csr")
        warnings.warn("sparse CSR tensor support is in beta state", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["sparse CSR tensor support is in beta state"]


def _imports(path: Path) -> set[str]:
    """The nlgraph modules a source file imports at module level (TYPE_CHECKING excluded)."""
    package = ".".join(path.relative_to(SRC.parent).with_suffix("").parts)
    if path.name == "__init__.py":
        package = package.rsplit(".", 1)[0]
        base = package
    else:
        base = package.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.parse(path.read_text()).body:  # module level only
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parts = base.split(".")
                root = ".".join(parts[: len(parts) - node.level + 1])
                found.add(f"{root}.{node.module}" if node.module else root)
            elif node.module and node.module.startswith("nlgraph"):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("nlgraph")}
    return found


def test_compat_does_not_import_nn() -> None:
    """``nlgraph.nn`` depends on ``nlgraph.compat`` (the weight layouts), never the reverse:
    the converters see blocks through the NonLocalBlockLike protocol."""
    for path in sorted((SRC / "compat").glob("*.py")):
        bad = [m for m in _imports(path) if m.startswith("nlgraph.nn")]
        assert not bad, f"{path.name} imports {bad}"
    assert any(m.startswith("nlgraph.compat") for m in _imports(SRC / "nn" / "nonlocal_block.py"))


def test_graphs_knn_names_the_function() -> None:
    import nlgraph.graphs as graphs

    assert callable(graphs.knn) and callable(graphs.knn_graph)
    assert not hasattr(graphs.knn, "__path__") and not isinstance(graphs.knn, type(sys))

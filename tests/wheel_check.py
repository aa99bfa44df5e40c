"""Run inside a fresh venv holding only the built nlgraph wheel and its required dependencies
(``make wheel-check``): the package imports from the wheel, every public module loads, and no
optional extra was installed with it. Not collected by pytest (no ``test_`` prefix)."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from importlib import metadata

import nlgraph

MODULES = ("nlgraph.nn", "nlgraph.graphs", "nlgraph.ops", "nlgraph.compat", "nlgraph.viz",
           "nlgraph.nodes", "nlgraph.transforms", "nlgraph.cli")  # fmt: skip
#: Packages of the optional extras (scatter, faiss, triton, viz/examples, bench, dev); tqdm
#: is not one: torch-geometric requires it.
OPTIONAL = ("torch_scatter", "faiss", "triton", "matplotlib", "scipy", "pytest", "mmcv")


def main() -> int:
    where = nlgraph.__file__ or ""
    if "site-packages" not in where:
        print(f"FAIL: nlgraph imported from {where}, not from the installed wheel")
        return 1
    if metadata.version("nlgraph") != nlgraph.__version__:
        print(f"FAIL: metadata {metadata.version('nlgraph')} != __version__ {nlgraph.__version__}")
        return 1
    for name in MODULES:
        importlib.import_module(name)
    extra = [name for name in OPTIONAL if importlib.util.find_spec(name) is not None]
    if extra:
        print(f"FAIL: optional packages installed with the plain wheel: {', '.join(extra)}")
        return 1
    import torch

    z = nlgraph.NonLocalBlock2d(8)(torch.randn(1, 8, 6, 6))
    print(f"nlgraph {nlgraph.__version__} wheel OK from {where}: {tuple(z.shape)}; "
          f"python {sys.version.split()[0]}, torch {torch.__version__}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

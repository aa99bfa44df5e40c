"""Root pytest configuration: the namespace every docstring example runs in.

``--doctest-modules`` (see pyproject.toml) runs the ``>>>`` examples of ``src/nlgraph``; they may
use ``torch`` and every public nlgraph name without importing them, as the docs show them.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _doctest_namespace(doctest_namespace: dict[str, Any]) -> None:
    import nlgraph
    from nlgraph import graphs, nn

    doctest_namespace["torch"] = torch
    doctest_namespace["nlgraph"] = nlgraph
    for module in (nlgraph, nn, graphs):
        for name in module.__all__:
            if name != "transforms":
                doctest_namespace.setdefault(name, getattr(module, name))

"""mkdocs hooks of the docs site (mkdocs.yml, ``hooks:``).

The pages link to measured results outside ``docs/`` (``../examples/results/*.md`` and their
figures, ``../benchmarks/results/*.md``, a few scripts) so that they also read well on the
repository page. The site serves those files under the same names without the ``../``, and the
links are rewritten to match, so ``--strict`` checks them like any other link.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
#: Folders outside docs/ whose files the pages link to, and the files served from each.
OUTSIDE = {
    "examples/results": ("*.md", "*.png"),
    "benchmarks/results": ("*.md",),
    "examples": ("*.py",),
    "benchmarks": ("*.py", "README.md"),
}
_LINK_RE = re.compile(r"(\]\()((?:\.\./)+)((?:examples|benchmarks)/)")


def on_files(files: Files, config: Any, **kwargs: Any) -> Files:
    """Serve the result tables, figures and scripts the pages link to."""
    for folder, patterns in OUTSIDE.items():
        for pattern in patterns:
            for path in sorted((ROOT / folder).glob(pattern)):
                uri = f"{folder}/{path.name}"
                files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    """``../examples/...`` from a page in docs/ becomes ``examples/...`` (one ``../`` less)."""

    def sub(match: re.Match[str]) -> str:
        return match[1] + match[2][3:] + match[3]

    if page.file.src_uri.startswith(("examples/", "benchmarks/")):
        return markdown
    return _LINK_RE.sub(sub, markdown)

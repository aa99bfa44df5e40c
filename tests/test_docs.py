"""The documentation: the mkdocs site builds with ``--strict`` (every public name in the API
reference, every link and cross-reference resolved, no docstring warning), public names are
documented and typed, the code of every page runs, and relative links and anchors resolve."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import re
import subprocess
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
#: Pages whose ```python blocks are executed, each page in one namespace, in order: all of them.
RUNNABLE_PAGES = tuple(sorted(p.name for p in DOCS.glob("*.md") if "```python" in p.read_text()))
ALLOWED_UNANNOTATED = {"self", "cls"}
#: The modules the API reference documents (docs/api/*.md), most specific first.
MODULES = (
    "nlgraph.nn",
    "nlgraph.graphs",
    "nlgraph.nodes",
    "nlgraph.transforms",
    "nlgraph.ops",
    "nlgraph.pairwise",
    "nlgraph.compat",
    "nlgraph.attention",
    "nlgraph.viz",
    "nlgraph",
)
_PACKAGE = ROOT / "src" / "nlgraph"


@dataclass
class Entry:
    """One public name: the module that exports it and the object."""

    module: str
    name: str
    obj: Any

    @property
    def qualname(self) -> str:
        return f"{self.module}.{self.name}"


ENTRIES = [
    Entry(m, n, getattr(importlib.import_module(m), n))
    for m in MODULES
    for n in importlib.import_module(m).__all__
]


def _unique(entries: list[Entry]) -> list[Entry]:
    """One entry per object, under its first (most specific) exporting module."""
    first: dict[int, Entry] = {}
    for e in entries:
        first.setdefault(id(e.obj), e)
    return list(first.values())


CLASSES = _unique([e for e in ENTRIES if inspect.isclass(e.obj)])
ROUTINES = _unique([e for e in ENTRIES if inspect.isroutine(e.obj)])


def _ids(entries: list[Entry]) -> list[str]:
    return [e.qualname for e in entries]


def _comment_doc(module: ModuleType, name: str) -> str:
    """The ``#:`` comment lines right above ``name = ...`` (or ``name: T = ...``) in ``module``."""
    try:
        lines = inspect.getsource(module).splitlines()
    except (OSError, TypeError):
        return ""
    pattern = re.compile(rf"^{re.escape(name)}\s*[:=]")
    for i, line in enumerate(lines):
        if pattern.match(line):
            doc = []
            while i > 0 and lines[i - 1].lstrip().startswith("#:"):
                i -= 1
                doc.insert(0, lines[i].lstrip()[2:].strip())
            return " ".join(doc)
    return ""


def _docstring_of(entry: Entry) -> str:
    """The object's docstring, or for data the ``#:`` comment above its assignment in any
    nlgraph module that holds it (what the site's griffe extension shows)."""
    if inspect.ismodule(entry.obj) or inspect.isclass(entry.obj) or inspect.isroutine(entry.obj):
        return inspect.cleandoc(entry.obj.__doc__ or "")
    owners = [importlib.import_module(entry.module)] + [
        sys.modules[m]
        for m in sorted(sys.modules)
        if m.startswith("nlgraph") and getattr(sys.modules[m], entry.name, None) is entry.obj
    ]
    return next((d for d in (_comment_doc(o, entry.name) for o in owners) if d), "")


def _member_function(raw: Any) -> Any:
    """The function behind a method, classmethod, staticmethod or property (its getter)."""
    if isinstance(raw, property):
        return raw.fget
    return getattr(raw, "__func__", raw)


def _public_members(cls: type) -> list[tuple[str, Any]]:
    """Public methods and properties of ``cls`` written in nlgraph's source (inherited ones
    included), except overrides of a non-nlgraph base's methods other than ``forward``."""
    members = []
    for name in sorted(dir(cls)):
        if name.startswith("_"):
            continue
        owner = next((k for k in cls.__mro__ if name in k.__dict__), None)
        if owner is None or not owner.__module__.startswith("nlgraph"):
            continue
        raw = owner.__dict__[name]
        if not (isinstance(raw, (property, classmethod, staticmethod)) or inspect.isfunction(raw)):
            continue
        # PyG's MessagePassing writes generated methods (collect, propagate...) into subclasses.
        code = getattr(_member_function(raw), "__code__", None)
        if code is not None and not Path(code.co_filename).resolve().is_relative_to(_PACKAGE):
            continue
        foreign = any(
            name in k.__dict__ and not k.__module__.startswith("nlgraph") for k in cls.__mro__
        )
        if not foreign or name == "forward":
            members.append((name, raw))
    return members


# --- the site -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The docs site, built once by ``mkdocs build --strict`` (what ``make docs`` runs)."""
    for name in ("mkdocs", "material", "mkdocstrings_handlers.python"):
        pytest.importorskip(name, reason="the docs extra (pip install nlgraph[docs])")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    # Not -q: it hides the warnings, and --strict then has none to count.
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}{proc.stderr}"
    return out


def _inventory(site: Path) -> set[str]:
    """The object names of the site's ``objects.inv`` (Sphinx inventory v2, zlib body)."""
    raw = (site / "objects.inv").read_bytes().split(b"\n", 4)[4]
    return {line.split(" ", 1)[0] for line in zlib.decompress(raw).decode().splitlines()}


def _load_extension() -> ModuleType:
    pytest.importorskip("griffe", reason="the docs extra (pip install nlgraph[docs])")
    spec = importlib.util.spec_from_file_location("nlgraph_docs_griffe", DOCS / "_griffe_rest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_api_pages_render_the_documented_modules() -> None:
    """docs/api/*.md render exactly MODULES, each in the nav, and the griffe extension links
    names to the same modules."""
    rendered = {
        m
        for p in (DOCS / "api").glob("*.md")
        for m in re.findall(r"^::: ([\w.]+)", p.read_text(), re.M)
    }
    assert rendered == set(MODULES)
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in (DOCS / "api").glob("*.md"):
        assert f"api/{page.name}" in nav, f"docs/api/{page.name} is not in the nav"
    assert _load_extension().DOCUMENTED == MODULES


def test_every_page_is_in_the_nav() -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in DOCS.glob("*.md"):
        assert re.search(rf": {re.escape(page.name)}$", nav, re.M), f"{page.name} not in the nav"


@pytest.mark.parametrize("entry", ENTRIES, ids=_ids(ENTRIES))
def test_public_name_is_in_the_api_reference(site: Path, entry: Entry) -> None:
    """Every name of every documented ``__all__`` has an entry (an anchor) in the site."""
    if entry.name == "__version__":
        assert "`nlgraph.__version__`" in (DOCS / "api" / "index.md").read_text()
        return
    names = _inventory(site)
    target = entry.obj.__name__ if inspect.ismodule(entry.obj) else entry.qualname
    assert target in names, f"{entry.qualname} is not in the API reference"


def test_api_pages_render_math_tables_and_links(site: Path) -> None:
    """The reST of the docstrings reached the site as MathJax, tables and links: no raw role
    or directive is left on any API page."""
    pages = {p: p.read_text() for p in (site / "api").rglob("index.html")}
    assert len(pages) == len(MODULES)
    for path, html in pages.items():
        for raw in (".. math::", ":math:`", ":class:`", ":func:`", ":meth:`", "``"):
            assert raw not in html, f"{path.relative_to(site)} shows {raw!r}"
    pairwise = pages[site / "api" / "pairwise" / "index.html"]
    assert 'class="arithmatex"' in pairwise and "<table>" in pairwise
    assert r"\vert N(i)\vert" in pairwise  # "|" inside math, not an escaped table bar
    nn = pages[site / "api" / "nn" / "index.html"]
    assert 'href="../graphs/#nlgraph.graphs.KNN"' in nn  # :class:`~nlgraph.graphs.KNN`


def test_rest_to_markdown() -> None:
    """The griffe extension's conversion of one docstring, against hand-written Markdown."""
    import griffe

    ext = _load_extension()
    pkg = griffe.load("nlgraph", search_paths=[str(ROOT / "src")])
    public = ext.public_names(pkg)
    doc = inspect.cleandoc(
        """Summary with ``code``, :math:`C'^{-1/2}`, :class:`~nlgraph.Attention` and
        :func:`torch.softmax`.

        .. math::
            y_i = x_i

        ====  =====
        a     :math:`|b|`
        ====  =====
        1     2
        ====  =====
        """
    )
    md = ext.rest_to_markdown(doc, pkg, public, pkg["nn"])
    assert "`code`" in md and "$C'^{-1/2}$" in md
    assert "[`Attention`][nlgraph.attention.Attention]" in md  # first documented module
    assert "`torch.softmax()`" in md and "][torch" not in md  # foreign: code, no link
    assert "$$\ny_i = x_i\n$$" in md
    assert "| a | $\\vert b\\vert$ |\n|---|---|\n| 1 | 2 |" in md


def test_a_stale_reference_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    """A role naming an nlgraph object that does not exist is logged as a warning, which
    ``mkdocs build --strict`` turns into a failure."""
    import griffe

    ext = _load_extension()
    pkg = griffe.load("nlgraph", search_paths=[str(ROOT / "src")])
    with caplog.at_level("WARNING"):
        md = ext.rest_to_markdown(":func:`nlgraph.graphs.no_such_builder`", pkg, {}, pkg)
    assert "`nlgraph.graphs.no_such_builder()`" in md
    assert "names no object" in caplog.text


@pytest.mark.parametrize("entry", ENTRIES, ids=_ids(ENTRIES))
def test_public_name_has_a_docstring(entry: Entry) -> None:
    if entry.name.startswith("__") and entry.name.endswith("__"):
        pytest.skip("dunder metadata")
    assert _docstring_of(entry).strip(), f"{entry.qualname}: missing docstring (or '#:' comment)"


@pytest.mark.parametrize("entry", CLASSES, ids=_ids(CLASSES))
def test_public_methods_have_docstrings(entry: Entry) -> None:
    missing = [
        name
        for name, _ in _public_members(entry.obj)
        if not inspect.getdoc(getattr(entry.obj, name))
    ]
    assert not missing, f"{entry.qualname}: public members without a docstring: {missing}"


def _unannotated(func: object, skip_first: bool) -> list[str]:
    params = list(inspect.signature(func).parameters.values())
    if skip_first and params:
        params = params[1:]
    return [
        p.name
        for p in params
        if p.annotation is p.empty
        and p.name not in ALLOWED_UNANNOTATED
        and p.kind is not p.VAR_KEYWORD
    ]


@pytest.mark.parametrize("entry", ROUTINES, ids=_ids(ROUTINES))
def test_public_functions_have_type_hints(entry: Entry) -> None:
    assert not _unannotated(entry.obj, skip_first=False), entry.qualname


@pytest.mark.parametrize("entry", CLASSES, ids=_ids(CLASSES))
def test_public_classes_have_type_hints(entry: Entry) -> None:
    cls = entry.obj
    problems = {}
    init_owner = next(k for k in cls.__mro__ if "__init__" in k.__dict__)
    protocol = getattr(cls, "_is_protocol", False)  # typing.Protocol's own placeholder __init__
    if init_owner.__module__.startswith("nlgraph") and not protocol:
        bad = _unannotated(init_owner.__dict__["__init__"], skip_first=True)
        if bad:
            problems["__init__"] = bad
    for name, raw in _public_members(cls):
        bad = _unannotated(_member_function(raw), skip_first=not isinstance(raw, staticmethod))
        if bad:
            problems[name] = bad
    assert not problems, f"{entry.qualname}: parameters without type hints: {problems}"


def _slug(heading: str) -> str:
    """The anchor of a heading (GitHub's and the site's toc): lower case, punctuation dropped,
    spaces to hyphens."""
    return re.sub(r"[^a-z0-9 _-]", "", heading.lower()).replace(" ", "-")


def _headings_slugs(text: str) -> set[str]:
    return {_slug(h.replace("`", "")) for h in re.findall(r"^#+ (.+)$", text, re.M)}


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.md")))
def test_links_resolve(page: str) -> None:
    text = (DOCS / page).read_text()
    slugs = _headings_slugs(text)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://")):
            continue
        path, _, anchor = target.partition("#")
        dest = (DOCS / path).resolve() if path else DOCS / page
        assert dest.exists(), f"{page}: broken link {target}"
        if anchor and dest.suffix == ".md":
            dest_slugs = slugs if not path else _headings_slugs(dest.read_text())
            assert anchor in dest_slugs, f"{page}: no heading for anchor #{anchor}"


def _python_blocks(path: Path) -> list[str]:
    """The ```python blocks of a Markdown file, in order."""
    return re.findall(r"^```python\n(.*?)^```", path.read_text(), re.M | re.S)


def _missing_requirements(block: str) -> list[str]:
    """Modules named on a first line ``# requires: a, b`` that are not installed."""
    first = block.splitlines()[0] if block else ""
    if not first.startswith("# requires:"):
        return []
    names = [n.strip() for n in first.split(":", 1)[1].split(",") if n.strip()]
    return [n for n in names if importlib.util.find_spec(n) is None]


def _run_blocks(path: Path) -> None:
    """Execute every ```python block of ``path`` in order, in one namespace; a block whose first
    line is ``# requires: pkg`` is skipped when ``pkg`` is not installed."""
    label = path.relative_to(ROOT).as_posix()
    blocks = _python_blocks(path)
    assert blocks, f"{label} has no examples"
    if any("from_reference" in b or "to_reference" in b for b in blocks):
        pytest.importorskip("nlgraph.compat")
    namespace: dict[str, object] = {"__name__": f"docs_{path.stem}"}
    for i, block in enumerate(blocks):
        if _missing_requirements(block):
            continue
        try:
            exec(compile(block, f"{label}[block {i}]", "exec"), namespace)
        except Exception as exc:  # pragma: no cover - the message is the point
            raise AssertionError(f"{label}, python block {i} failed: {exc!r}") from exc


@pytest.mark.parametrize("page", RUNNABLE_PAGES)
def test_examples_run(page: str) -> None:
    """Every ```python block of the page runs (in order, one namespace)."""
    _run_blocks(DOCS / page)


def test_readme_examples_run() -> None:
    """The README's ```python blocks run as written, top to bottom, in one namespace."""
    _run_blocks(README)


def test_readme_bash_block_stays_first() -> None:
    """The README opens with the ``make demo`` / ``make test`` bash block, not Python."""
    first = re.search(r"^```(\w+)\n(.*?)^```", README.read_text(), re.M | re.S)
    assert first is not None and first.group(1) == "bash"
    assert "make demo" in first.group(2) and "make test" in first.group(2)


#: Each experiment script of examples/ and its documentation page (table, figure, runtime).
EXPERIMENTS = {
    "relational_detection": "relational_detection.md",
    "sort_of_clevr": "sort_of_clevr.md",
    "knn_graphs": "knn_graphs.md",
    "video_action": "video_action.md",
    "segmentation": "segmentation.md",
    "captioning": "captioning.md",
    "point_cloud": "point_cloud.md",
    "ddp_train": "distributed.md",
}
RUNTIME = re.compile(r"Runtime: about ([\d.]+) minutes")


def test_every_training_example_has_a_page() -> None:
    """Every example with a miniature run (``SMOKE_ARGS``: a training example) is listed in
    EXPERIMENTS, has its page, and the experiments overview links the page."""
    overview = (DOCS / "experiments.md").read_text()
    for path in sorted((ROOT / "examples").glob("*.py")):
        if path.name.startswith("_") or "SMOKE_ARGS" not in path.read_text():
            continue
        assert path.stem in EXPERIMENTS, f"{path.name} has no docs page in EXPERIMENTS"
        page = EXPERIMENTS[path.stem]
        assert (DOCS / page).exists(), page
        assert f"({page}" in overview, f"docs/experiments.md does not link {page}"


def _first_table(text: str) -> list[str]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return lines[start:end]


@pytest.mark.parametrize("name", [n for n in EXPERIMENTS if n != "ddp_train"])
def test_experiment_page_shows_the_measured_table_and_runtime(name: str) -> None:
    """The page carries the results file's table verbatim (no stale copy), its figure, and the
    same runtime as the example's docstring; that runtime is within the results file's measured
    wall time, rounded up to whole minutes."""
    page = (DOCS / EXPERIMENTS[name]).read_text()
    results = (ROOT / "examples" / "results" / f"{name}.md").read_text()
    table = _first_table(results)
    assert "\n".join(table) in page, f"docs/{EXPERIMENTS[name]} lacks the table of {name}.md"
    assert f"../examples/results/{name}.png" in page
    doc = RUNTIME.search((ROOT / "examples" / f"{name}.py").read_text())
    assert doc is not None, f"examples/{name}.py states no 'Runtime: about N minutes'"
    assert f"about {doc.group(1)} minutes" in page, f"docs/{EXPERIMENTS[name]}: other runtime"
    wall = re.search(r"wall time: (\d+) s", results)
    assert wall is not None, f"{name}.md states no wall time"
    minutes = int(wall.group(1)) / 60
    assert abs(float(doc.group(1)) - minutes) <= max(1.0, 0.2 * minutes), (name, minutes)


def test_changelog_names_the_current_version() -> None:
    """CHANGELOG.md has a section for ``nlgraph.__version__``."""
    import nlgraph

    text = (ROOT / "CHANGELOG.md").read_text()
    assert re.search(rf"^## {re.escape(nlgraph.__version__)}\b", text, re.M), nlgraph.__version__

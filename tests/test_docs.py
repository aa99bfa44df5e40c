"""The documentation: docs/api.md is current, public names are documented and typed, the
examples in the docs run, and relative links and anchors resolve."""

from __future__ import annotations

import importlib.util
import inspect
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
#: Pages whose ```python blocks are executed, each page in one namespace, in order.
RUNNABLE_PAGES = (
    "index.md",
    "nonlocal_block.md",
    "presets.md",
    "nodes.md",
    "glore.md",
    "objects.md",
)
ALLOWED_UNANNOTATED = {"self", "cls"}


def _load_gen_api() -> ModuleType:
    spec = importlib.util.spec_from_file_location("nlgraph_gen_api", DOCS / "gen_api.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while decorating
    spec.loader.exec_module(module)
    return module


gen = _load_gen_api()
ENTRIES = gen.collect()


def _unique(entries: list) -> list:
    """One entry per object, under its first (most specific) exporting module."""
    first: dict[int, object] = {}
    for e in entries:
        first.setdefault(id(e.obj), e)
    return list(first.values())


CLASSES = _unique([e for e in ENTRIES if inspect.isclass(e.obj)])
ROUTINES = _unique([e for e in ENTRIES if inspect.isroutine(e.obj)])


def _ids(entries: list) -> list[str]:
    return [e.qualname for e in entries]


def test_api_md_is_up_to_date() -> None:
    expected = gen.render()
    current = gen.API_PATH.read_text()
    assert current == expected, "docs/api.md is stale: run `python docs/gen_api.py`"
    assert gen.main(["--check"]) == 0


def test_check_mode_detects_a_stale_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stale = tmp_path / "api.md"
    stale.write_text(gen.render() + "\nedited by hand\n")
    monkeypatch.setattr(gen, "API_PATH", stale)
    assert gen.main(["--check"]) == 1
    assert gen.main([]) == 0  # regenerates the file
    assert gen.main(["--check"]) == 0


def test_every_documented_module_is_covered() -> None:
    names = {e.module for e in ENTRIES}
    for required in ("nlgraph", "nlgraph.nn", "nlgraph.ops", "nlgraph.pairwise"):
        assert required in names
    assert any(e.qualname == "nlgraph.attention.Attention" for e in ENTRIES)
    try:
        compat = importlib.import_module("nlgraph.compat")
    except ImportError:
        return
    if hasattr(compat, "__all__"):
        assert "nlgraph.compat" in names


@pytest.mark.parametrize("entry", ENTRIES, ids=_ids(ENTRIES))
def test_public_name_appears_in_api_md(entry) -> None:
    text = gen.API_PATH.read_text()
    if inspect.ismodule(entry.obj):
        assert f"## `{entry.obj.__name__}`" in text or f"`{entry.name}`" in text
        return
    exported_as = {f"`{e.qualname}`" for e in ENTRIES if e.obj is entry.obj}
    assert any(f"### {q}" in text for q in exported_as), f"{entry.qualname} has no entry"
    assert f"`{entry.name}`" in text or f"`{entry.qualname}`" in text


@pytest.mark.parametrize("entry", ENTRIES, ids=_ids(ENTRIES))
def test_public_name_has_a_docstring(entry) -> None:
    if entry.name.startswith("__") and entry.name.endswith("__"):
        pytest.skip("dunder metadata")
    module = importlib.import_module(entry.module)
    doc = gen.docstring_of(module, entry.name, entry.obj)
    assert doc.strip(), f"{entry.qualname}: missing docstring (or '#:' comment for data)"


@pytest.mark.parametrize("entry", CLASSES, ids=_ids(CLASSES))
def test_public_methods_have_docstrings(entry) -> None:
    missing = [
        name for name, _ in gen.public_members(entry.obj) if not gen.member_doc(entry.obj, name)
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
def test_public_functions_have_type_hints(entry) -> None:
    assert not _unannotated(entry.obj, skip_first=False), entry.qualname


@pytest.mark.parametrize("entry", CLASSES, ids=_ids(CLASSES))
def test_public_classes_have_type_hints(entry) -> None:
    cls = entry.obj
    problems = {}
    init_owner = next(k for k in cls.__mro__ if "__init__" in k.__dict__)
    protocol = getattr(cls, "_is_protocol", False)  # typing.Protocol's own placeholder __init__
    if init_owner.__module__.startswith("nlgraph") and not protocol:
        bad = _unannotated(init_owner.__dict__["__init__"], skip_first=True)
        if bad:
            problems["__init__"] = bad
    for name, raw in gen.public_members(cls):
        fn = gen.member_function(raw)
        bad = _unannotated(fn, skip_first=not isinstance(raw, staticmethod))
        if bad:
            problems[name] = bad
    assert not problems, f"{entry.qualname}: parameters without type hints: {problems}"


def test_docstring_conversion() -> None:
    doc = inspect.cleandoc(
        """Summary with ``code`` and :math:`C'^{-1/2}` and :class:`~nlgraph.Attention`.

        .. math::
            y_i = x_i

        Args:
            a (int): first line
                continued.
            b (str): second.

        Example:
            >>> 1 + 1
            2
        """
    )
    md = gen.docstring_to_markdown(doc)
    assert "`code`" in md and "$C'^{-1/2}$" in md and "`nlgraph.Attention`" in md
    assert "```math\ny_i = x_i\n```" in md
    assert "- `a` (int): first line continued." in md and "- `b` (str): second." in md
    assert "```python\n>>> 1 + 1\n2\n```" in md


def test_signatures_keep_source_annotations() -> None:
    def f(x: int, *, y: str | None = None, **kw: object) -> float:  # pragma: no cover
        return 0.0

    assert (
        gen.format_signature("f", f) == "f(x: int, *, y: str | None = None, **kw: object) -> float"
    )


def _headings_slugs(text: str) -> set[str]:
    return {gen._slug(h.replace("`", "")) for h in re.findall(r"^#+ (.+)$", text, re.M)}


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

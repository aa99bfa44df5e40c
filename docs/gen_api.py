"""Generate docs/api.md from nlgraph's docstrings and signatures.

Usage:
    python docs/gen_api.py            # rewrite docs/api.md
    python docs/gen_api.py --check    # exit 1 if docs/api.md differs from what would be written

The reference covers every name in ``nlgraph.__all__``, ``nlgraph.nn.__all__``,
``nlgraph.ops.__all__``, ``nlgraph.pairwise.__all__``, ``nlgraph.compat.__all__`` (when that
module exists and imports), ``nlgraph.attention.__all__`` and ``nlgraph.viz.__all__``. Each
object is documented once, in the most specific module that exports it; the top-level section
lists every name with a link.
Google-style docstrings (Args, Returns, Raises, Shapes, Attributes, Example) and the reST bits
they contain (``code``, :math:`...`, :class:`...`, ``.. math::``, simple tables) are turned
into Markdown. The output depends only on nlgraph's source, never on addresses or the clock.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import importlib.util
import inspect
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = ["API_PATH", "MODULES", "Entry", "collect", "docstring_of", "main", "render"]

#: Where the reference is written.
API_PATH = Path(__file__).resolve().parent / "api.md"
if importlib.util.find_spec("nlgraph") is None:  # a source checkout without `pip install -e .`
    sys.path.insert(0, str(API_PATH.parents[1] / "src"))
#: Modules whose ``__all__`` is documented, most specific first (objects land in the first one).
MODULES: tuple[str, ...] = (
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
OPTIONAL_MODULES: frozenset[str] = frozenset({"nlgraph.compat"})
SECTIONS = r"Args|Arguments|Returns|Return|Raises|Shapes|Shape|Attributes|Examples?|Notes?|Yields"
_SECTION_RE = re.compile(rf"^({SECTIONS}):\s*$")
_ROLE_RE = re.compile(r":(math|class|func|meth|mod|attr|data|obj|exc):`~?([^`]+)`")
_TABLE_RE = re.compile(r"^=+( +=+)+\s*$")
_ITEM_RE = re.compile(r"^(\**[A-Za-z_][\w.]*(?:, ?[A-Za-z_][\w.]*)*)( \([^)]*\))?:(\s|$)")


@dataclass
class Entry:
    """One documented public name: where it is exported and the object itself."""

    module: str
    name: str
    obj: Any

    @property
    def qualname(self) -> str:
        """The dotted public name, e.g. ``nlgraph.nn.NonLocalBlock2d``."""
        return f"{self.module}.{self.name}"


def load_modules() -> dict[str, ModuleType]:
    """Import the documented modules; an optional one that is missing or broken is skipped."""
    mods = {}
    for name in MODULES:
        try:
            mods[name] = importlib.import_module(name)
        except Exception:
            if name not in OPTIONAL_MODULES:
                raise
            continue
        if name in OPTIONAL_MODULES and not hasattr(mods[name], "__all__"):
            del mods[name]
    return mods


def collect(mods: dict[str, ModuleType] | None = None) -> list[Entry]:
    """Every exported name of every documented module, in ``MODULES`` then ``__all__`` order."""
    mods = load_modules() if mods is None else mods
    return [Entry(m, n, getattr(mods[m], n)) for m in MODULES if m in mods for n in mods[m].__all__]


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


def docstring_of(module: ModuleType, name: str, obj: Any) -> str:
    """The documentation of ``module.name``: the object's own docstring, or for data the ``#:``
    comment above its assignment (searched in every loaded nlgraph module holding the object)."""
    if name == "__version__":
        return "The package version (PEP 440 string)."
    if _kind(obj) != "data":
        return inspect.cleandoc(obj.__doc__ or "")
    owners = [module] + [
        sys.modules[m]
        for m in sorted(sys.modules)
        if m.startswith("nlgraph") and getattr(sys.modules[m], name, None) is obj
    ]
    for owner in owners:
        doc = _comment_doc(owner, name)
        if doc:
            return doc
    return ""


def _annotation(ann: Any) -> str:
    return ann if isinstance(ann, str) else inspect.formatannotation(ann)


def format_signature(name: str, obj: Any, prefix: str = "", drop_first: bool = False) -> str:
    """``name(params) -> ret`` with annotations as written in the source, wrapped when long;
    ``drop_first`` leaves out ``self``."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return f"{prefix}{name}"
    if inspect.isclass(obj) and not sig.parameters:
        return f"{prefix}{name}"
    params, star_done = [], False
    for p in list(sig.parameters.values())[int(drop_first) :]:
        if p.kind is p.KEYWORD_ONLY and not star_done:
            params.append("*")
        star_done = star_done or p.kind in (p.KEYWORD_ONLY, p.VAR_POSITIONAL)
        text = {p.VAR_POSITIONAL: "*", p.VAR_KEYWORD: "**"}.get(p.kind, "") + p.name
        if p.annotation is not p.empty:
            text += f": {_annotation(p.annotation)}"
        if p.default is not p.empty:
            text += f" = {p.default!r}" if p.annotation is not p.empty else f"={p.default!r}"
        params.append(text)
    ret = ""
    if sig.return_annotation is not sig.empty and not inspect.isclass(obj):
        ret = f" -> {_annotation(sig.return_annotation)}"
    one_line = f"{prefix}{name}({', '.join(params)}){ret}"
    if len(one_line) <= 88:
        return one_line
    body = "".join(f"    {p},\n" for p in params)
    return f"{prefix}{name}(\n{body}){ret}"


def _inline(text: str) -> str:
    """reST inline markup to Markdown: roles, ``literals``."""
    text = _ROLE_RE.sub(lambda m: f"${m[2]}$" if m[1] == "math" else f"`{m[2]}`", text)
    return text.replace("``", "`")


def _take_block(lines: list[str], i: int) -> tuple[list[str], int]:
    """The indented (or blank) lines from ``i`` on, dedented; and the index after them."""
    block = []
    while i < len(lines) and (not lines[i].strip() or lines[i].startswith(" ")):
        block.append(lines[i])
        i += 1
    while block and not block[-1].strip():
        block.pop()
    return inspect.cleandoc("\n".join(block)).splitlines() if block else [], i


def _section_items(body: list[str], title: str) -> list[str]:
    """Google-style items: a ``name (type):`` line or a ``- `` bullet at indent 0 starts one;
    other lines continue it. Returns/Yields bodies without bullets are a single item."""
    items: list[str] = []
    single = title in ("Returns", "Return", "Yields")
    for line in body:
        if not line.strip():
            continue
        bullet = line.startswith("- ")
        starts = bullet or (not single and not line.startswith(" ") and _ITEM_RE.match(line))
        if starts or not items:
            text = line.strip()[2:] if bullet else line.strip()
            named = None if bullet or single else _ITEM_RE.match(text)
            if named:  # `name` (type): ... so that **kwargs is not read as emphasis
                text = f"`{named[1]}`{text[len(named[1]) :]}"
            items.append(text)
        else:
            items[-1] += " " + line.strip()
    return items


def docstring_to_markdown(doc: str) -> str:
    """Convert a cleaned Google/reST docstring to Markdown."""
    lines, out, i = doc.splitlines(), [], 0
    while i < len(lines):
        line, stripped = lines[i], lines[i].strip()
        section = _SECTION_RE.match(stripped) if not line.startswith(" ") else None
        if stripped.startswith(".. math::"):
            first = stripped[len(".. math::") :].strip()
            body, i = _take_block(lines, i + 1)
            math = [first] if first else []
            out += ["", "```math", *math, *body, "```", ""]
            continue
        if _TABLE_RE.match(stripped):
            table = []
            while i < len(lines) and lines[i].strip():
                table.append(lines[i])
                i += 1
            out += ["", "```text", *table, "```", ""]
            continue
        if section and i + 1 < len(lines) and lines[i + 1].startswith(" "):
            title = section[1]
            body, i = _take_block(lines, i + 1)
            out += ["", f"**{title}**", ""]
            if title.startswith("Example"):
                out += ["```python", *body, "```", ""]
            else:
                out += [f"- {_inline(item)}" for item in _section_items(body, title)] + [""]
            continue
        if section:
            out += ["", f"**{section[1]}**", ""]
        else:
            out.append(_inline(line))
        i += 1
    text = "\n".join(out)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _data_summary(obj: Any) -> str:
    if isinstance(obj, dict):
        keys = ", ".join(f"`{k!r}`" for k in obj)
        return f"`dict` with keys {keys}"
    text = repr(obj)
    simple = isinstance(obj, (str, int, float, tuple, frozenset, type(None)))
    if simple and len(text) <= 120 and " at 0x" not in text:
        return f"`{text}`"
    return f"`{type(obj).__name__}`"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^a-z0-9 _-]", "", heading.lower()).replace(" ", "-")


_PACKAGE = Path(importlib.import_module("nlgraph").__file__).resolve().parent


def public_members(cls: type) -> list[tuple[str, Any]]:
    """Public methods and properties of ``cls`` defined in nlgraph, inherited ones included,
    except overrides of a non-nlgraph base (``extra_repr``...) other than ``forward``."""
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
        # PyG's MessagePassing writes generated methods (collect, propagate...) into subclasses
        # when it is first instantiated: keep only functions written in nlgraph's source.
        code = getattr(member_function(raw), "__code__", None)
        if code is not None and not Path(code.co_filename).resolve().is_relative_to(_PACKAGE):
            continue
        foreign = any(
            name in k.__dict__ and not k.__module__.startswith("nlgraph") for k in cls.__mro__
        )
        if foreign and name != "forward":
            continue
        members.append((name, raw))
    return members


def member_function(raw: Any) -> Any:
    """The function behind a method, classmethod, staticmethod or property (its getter)."""
    if isinstance(raw, property):
        return raw.fget
    return getattr(raw, "__func__", raw)


def member_doc(cls: type, name: str) -> str:
    """The docstring of ``cls.name``, inherited from a base class when the override has none."""
    return inspect.getdoc(getattr(cls, name)) or ""


def _kind(obj: Any) -> str:
    kinds = (
        (inspect.ismodule, "module"),
        (inspect.isclass, "class"),
        (inspect.isroutine, "function"),
    )
    return next((name for test, name in kinds if test(obj)), "data")


def _summary(doc: str) -> str:
    first = doc.split("\n\n")[0].replace("\n", " ").strip()
    return _inline(first).replace("|", "\\|")


def _render_entry(e: Entry, doc: str, seen_members: dict[int, str]) -> list[str]:
    title = e.qualname
    out = [f"### `{title}`", ""]
    kind = _kind(e.obj)
    if kind == "data":
        out += [f"*data* — {_data_summary(e.obj)}", ""]
    elif kind in ("class", "function"):
        prefix = "class " if kind == "class" else ""
        out += ["```python", format_signature(e.name, e.obj, prefix), "```", ""]
    out += [docstring_to_markdown(doc) or "*(no docstring)*", ""]
    if kind != "class":
        return out
    shared: list[str] = []
    for name, raw in public_members(e.obj):
        fn = member_function(raw)
        anchor = f"{e.name}.{name}"
        if id(fn) in seen_members:
            seen = seen_members[id(fn)]
            shared.append(f"[`{seen}`](#{_slug(seen)})")
            continue
        seen_members[id(fn)] = anchor
        out += [f"#### `{anchor}`", ""]
        if isinstance(raw, property):
            ret = inspect.signature(fn).return_annotation
            ann = "" if ret is inspect.Signature.empty else f": {_annotation(ret)}"
            out += ["```python", f"property {name}{ann}", "```", ""]
        else:
            prefix = {classmethod: "classmethod ", staticmethod: "staticmethod "}.get(type(raw), "")
            first = not isinstance(raw, staticmethod)
            sig = format_signature(name, fn, prefix, drop_first=first)
            out += ["```python", sig, "```", ""]
        out += [docstring_to_markdown(member_doc(e.obj, name)) or "*(no docstring)*", ""]
    if shared:
        out += [f"Methods documented above: {', '.join(shared)}.", ""]
    return out


def render() -> str:
    """The full text of docs/api.md."""
    mods = load_modules()
    entries = collect(mods)
    home: dict[int, Entry] = {}
    for e in entries:
        if id(e.obj) in home or (inspect.ismodule(e.obj) and e.obj.__name__ in mods):
            continue
        if e.module != "nlgraph" or not any(
            x.obj is e.obj for x in entries if x.module != "nlgraph"
        ):
            home[id(e.obj)] = e
    out = [
        "# API reference",
        "",
        "Generated by `python docs/gen_api.py` from the docstrings and signatures of the public",
        "names; do not edit by hand (`python docs/gen_api.py --check` tells whether it is stale).",
        "Each object is described once, under the most specific module that exports it.",
        "",
        "## `nlgraph`",
        "",
        _summary(inspect.cleandoc(mods["nlgraph"].__doc__ or "")),
        "",
        "| name | kind | summary |",
        "|---|---|---|",
    ]
    for e in (x for x in entries if x.module == "nlgraph"):
        if inspect.ismodule(e.obj) and e.obj.__name__ in mods:
            link = f"#{_slug(e.obj.__name__)}"
        else:
            link = f"#{_slug(home[id(e.obj)].qualname)}"
        label = f"[`{e.name}`]({link})" if link else f"`{e.name}`"
        doc = docstring_of(mods[e.module], e.name, e.obj)
        out.append(f"| {label} | {_kind(e.obj)} | {_summary(doc)} |")
    out.append("")
    seen_members: dict[int, str] = {}
    for modname in ("nlgraph", *(m for m in MODULES if m != "nlgraph")):
        if modname not in mods:
            continue
        mine = [e for e in entries if home.get(id(e.obj)) is e and e.module == modname]
        if modname != "nlgraph":
            out += [f"## `{modname}`", ""]
            out += [docstring_to_markdown(inspect.cleandoc(mods[modname].__doc__ or "")), ""]
        for e in mine:
            doc = docstring_of(mods[e.module], e.name, e.obj)
            out += _render_entry(e, doc, seen_members)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write docs/api.md, or with ``--check`` report whether it is stale (exit status 1)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/api.md is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = API_PATH.read_text() if API_PATH.exists() else ""
        if current == text:
            return 0
        diff = difflib.unified_diff(
            current.splitlines(), text.splitlines(), "docs/api.md", "generated", lineterm="", n=1
        )
        print("docs/api.md is stale; run `python docs/gen_api.py`:", file=sys.stderr)
        print("\n".join(list(diff)[:40]), file=sys.stderr)
        return 1
    API_PATH.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

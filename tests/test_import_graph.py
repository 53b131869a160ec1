"""The layering, read from the source: every import of every module (ast, nothing executed).

Imports at any level count: at the top, inside functions, under `if TYPE_CHECKING:`. A package's `__init__`
importing its own submodules does not (that is how a package exposes them). The rules: no circle inside
glmcore, glmcore never imports glmtui or textual, no screen imports the CLI (glmtui.cli, glmtui.commands),
generic code reaches a model family only through `glmcore.models` (the registry and the interface), and a
family imports only the ground floor below it, so imports go family → generic only.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("glmcore", "glmtui")
CLI = ("glmtui.cli", "glmtui.commands")
FAMILY_PACKAGES = tuple(
    f"glmcore.models.{folder.name}"
    for folder in sorted((ROOT / "glmcore" / "models").iterdir())
    if (folder / "__init__.py").is_file()
)
GROUND_FLOOR = (
    "glmcore.decoding",
    "glmcore.errors",
    "glmcore.examples",
    "glmcore.models.family",
    "glmcore.models.fused",
    "glmcore.models.head",
    "glmcore.models.shards",
    "glmcore.tool_calls",
)
"""The generic modules a family builds on; they import no family, no registry and nothing above them."""


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {
        module_name(path): path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))
    }


def imported_names(path: Path, name: str, known: dict[str, Path]) -> set[str]:
    """Every module `path` imports: `from a import b` is a.b when that is a module, else a."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in known else base)
    if is_package:
        found = {target for target in found if not target.startswith(name + ".")}
    return found - {name}


@functools.cache
def import_graph() -> dict[str, set[str]]:
    """Read once per session (every test only reads it)."""
    known = modules()
    return {name: imported_names(path, name, known) for name, path in known.items()}


def within(names: tuple[str, ...]):
    """A test for module names that are one of `names` or inside one of them."""
    return lambda target: any(target == name or target.startswith(name + ".") for name in names)


def cycles(graph: dict[str, set[str]], package: str) -> list[list[str]]:
    """Each strongly connected group of two or more modules of `package` (Tarjan): the circles, by members."""
    inside = within((package,))
    nodes = [node for node in graph if inside(node)]
    edges = {
        node: sorted(target for target in graph[node] if inside(target) and target in graph) for node in nodes
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in nodes:
        if node not in index:
            visit(node)
    return groups


def test_the_graph_is_read_from_every_level_of_a_module() -> None:
    graph = import_graph()
    # At the top, inside a function (compare's lazy load_model) and under TYPE_CHECKING (Run): all seen.
    assert {"glmcore.data", "glmcore.models.loading", "glmcore.runs"} <= graph["glmcore.evaluate"]
    assert "glmcore.models.loading" not in graph["glmcore"]  # glmcore/__init__.py's own submodule
    # A package importing its own submodules is not an edge; importing from another package is.
    assert "glmcore.models.family" not in graph["glmcore.models"]
    assert "glmcore.models" in graph["glmcore.models.loading"]


def test_the_circle_finder_finds_a_circle() -> None:
    assert cycles({"p.a": {"p.b"}, "p.b": {"p.c"}, "p.c": {"p.a"}, "p.d": {"p.a"}}, "p") == [
        ["p.a", "p.b", "p.c"]
    ]
    assert cycles({"p.a": {"p.b"}, "p.b": set()}, "p") == []


def test_no_circle_inside_glmcore() -> None:
    assert cycles(import_graph(), "glmcore") == []


def test_no_circle_inside_glmtui() -> None:
    # The app imports every screen; the screens type it through glmtui.screens.base.Workbench, never importing it.
    assert cycles(import_graph(), "glmtui") == []


def test_glmcore_never_imports_the_app_or_textual() -> None:
    is_app = within(("glmtui", "textual", "textual_plotext"))
    offenders = {
        name: sorted(filter(is_app, targets))
        for name, targets in import_graph().items()
        if name.split(".")[0] == "glmcore" and any(map(is_app, targets))
    }
    assert offenders == {}


def test_no_screen_imports_the_cli() -> None:
    is_cli = within(CLI)
    offenders = {
        name: sorted(filter(is_cli, targets))
        for name, targets in import_graph().items()
        if name.startswith("glmtui.screens") and any(map(is_cli, targets))
    }
    assert offenders == {}


def family_imports_of_generic_code(graph: dict[str, set[str]]) -> dict[str, list[str]]:
    """Each module outside the family packages that imports one of them, with the family modules it imports
    (the registry, glmcore/models/__init__.py, imports its own submodules: no edge)."""
    is_family = within(FAMILY_PACKAGES)
    return {
        name: sorted(filter(is_family, targets))
        for name, targets in graph.items()
        if not is_family(name) and any(map(is_family, targets))
    }


def test_generic_code_reaches_a_family_only_through_the_registry(tmp_path: Path) -> None:
    assert {"glmcore.models.chatglm6b", "glmcore.models.chatglm2", "glmcore.models.chatglm3"} <= set(
        FAMILY_PACKAGES
    )
    assert family_imports_of_generic_code(import_graph()) == {}
    # A family imported inside a function counts; the registry and the interface do not.
    lazy = tmp_path / "lazy.py"
    lazy.write_text(
        "def load():\n    from glmcore.models import family_of\n    from glmcore.models.chatglm2 import detect\n",
        encoding="utf-8",
    )
    graph = {"glmcore.lazy": imported_names(lazy, "glmcore.lazy", modules())}
    assert family_imports_of_generic_code(graph) == {"glmcore.lazy": ["glmcore.models.chatglm2"]}


def test_families_import_only_the_ground_floor_below_them() -> None:
    graph = import_graph()
    is_family, is_ground = within(FAMILY_PACKAGES), within(GROUND_FLOOR)

    offenders = {
        name: sorted(
            target
            for target in targets
            if target.startswith("glmcore") and not (is_family(target) or is_ground(target))
        )
        for name, targets in graph.items()
        if is_family(name)
    }
    assert {name: targets for name, targets in offenders.items() if targets} == {}


def test_the_ground_floor_reaches_no_family_and_no_registry() -> None:
    graph = import_graph()
    upward = {
        name: sorted(
            target for target in graph[name] if target.startswith("glmcore") and target not in GROUND_FLOOR
        )
        for name in GROUND_FLOOR
        if name != "glmcore.models.family"  # the interface: it reads the registry it describes
    }
    assert {name: targets for name, targets in upward.items() if targets} == {}

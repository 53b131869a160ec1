"""docs/architecture.md names only things that exist: every file path, module, class and function it writes
in backticks is looked up in the source (ast, nothing imported or executed). README.md and the other docs: their
paths, `glmcore.`/`glmtui.` names and the tests they cite.

What is looked up: a path under glmcore/, glmtui/, docs/ or tests/; a dotted name under `glmcore.` or
`glmtui.` (a module, then a name defined in it, then a member of that class); a class name (`RunStore`,
`Run.status()`: then its member); a call (`family_for(model_dir)`: a function of that name). Plain words,
settings and commands (`pre_seq_len`, `glmtui train --detach`) are not names and are left alone.
"""

from __future__ import annotations

import ast
import functools
import re
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURE = ROOT / "docs" / "architecture.md"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SOURCES = ("glmcore", "glmtui", "tests")
PATH_ROOTS = ("glmcore/", "glmtui/", "docs/", "tests/")
HEAD = re.compile(r"[A-Za-z_][\w.]*")


class Index:
    """What the source defines: each module's top-level names, each class's members, every function name."""

    def __init__(self) -> None:
        self.modules: dict[str, set[str]] = {}
        self.members: dict[str, set[str]] = defaultdict(set)
        self.bases: dict[str, set[str]] = defaultdict(set)
        self.functions: set[str] = set()
        self.imported: set[str] = set()
        """Names imported anywhere (transformers' `EarlyStoppingCallback`): they exist too."""
        for package in SOURCES:
            for path in sorted((ROOT / package).rglob("*.py")):
                parts = path.relative_to(ROOT).with_suffix("").parts
                name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
                self.modules[name] = self._read(ast.parse(path.read_text(encoding="utf-8")))

    def _read(self, tree: ast.Module) -> set[str]:
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                self.functions.add(node.name)
            elif isinstance(node, ast.ClassDef):
                self.members[node.name] |= {
                    name for statement in node.body for name in defined_names(statement)
                } | instance_attributes(node)
                self.bases[node.name] |= {base.id for base in node.bases if isinstance(base, ast.Name)}
            elif isinstance(node, ast.Import | ast.ImportFrom):
                self.imported |= {(alias.asname or alias.name).split(".")[-1] for alias in node.names}
        return {name for statement in tree.body for name in defined_names(statement)}

    def has_member(self, cls: str, member: str) -> bool:
        seen, todo = set(), [cls]
        while todo:
            current = todo.pop()
            if member in self.members.get(current, ()):
                return True
            seen.add(current)
            todo += [base for base in self.bases.get(current, ()) if base not in seen]
        return False

    def problem(self, token: str) -> str | None:
        """Why `token` (a backticked text) names nothing that exists; None when it exists or names no code."""
        if token.startswith(PATH_ROOTS) and not re.search(r"[<*\s]", token):
            return None if (ROOT / token).exists() else "no such file"
        head = HEAD.match(token)
        if head is None:
            return None
        name, rest = head.group(0).rstrip("."), token[head.end() :]
        if rest and not rest.startswith("("):
            return None  # a command, a setting, a phrase
        parts = name.split(".")
        if parts[0] in ("glmcore", "glmtui"):
            return self._dotted(parts)
        if parts[0][0].isupper() and not parts[0].isupper():
            defined = parts[0] in self.members or any(parts[0] in names for names in self.modules.values())
            if not defined and parts[0] not in self.imported:
                return "no such class"
            missing = [part for part in parts[1:2] if not self.has_member(parts[0], part)]
            return f"{parts[0]} has no {missing[0]}" if missing else None
        if len(parts) == 1 and rest.startswith("("):
            return None if parts[0] in self.functions else "no such function"
        return None

    def _dotted(self, parts: list[str]) -> str | None:
        for cut in range(len(parts), 0, -1):
            module = ".".join(parts[:cut])
            if module in self.modules:
                break
        else:
            return "no such module"
        rest = parts[cut:]
        if not rest:
            return None
        if rest[0] not in self.modules[module] and ".".join(parts[: cut + 1]) not in self.modules:
            return f"{module} defines no {rest[0]}"
        if len(rest) > 1 and rest[0] in self.members and not self.has_member(rest[0], rest[1]):
            return f"{rest[0]} has no {rest[1]}"
        return None


def instance_attributes(cls: ast.ClassDef) -> set[str]:
    """The `self.name = ...` attributes a class's methods set."""
    return {
        target.attr
        for node in ast.walk(cls)
        if isinstance(node, ast.Assign | ast.AnnAssign)
        for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
        if isinstance(target, ast.Attribute)
        and isinstance(target.value, ast.Name)
        and target.value.id == "self"
    }


def defined_names(statement: ast.stmt) -> list[str]:
    if isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return [statement.name]
    if isinstance(statement, ast.Assign):
        return [target.id for target in statement.targets if isinstance(target, ast.Name)]
    if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
        return [statement.target.id]
    if isinstance(statement, ast.Import | ast.ImportFrom):
        return [(alias.asname or alias.name).split(".")[0] for alias in statement.names]
    if isinstance(statement, ast.If | ast.Try):
        return [name for inner in statement.body for name in defined_names(inner)]
    return []


@functools.cache
def index() -> Index:
    return Index()


def backticked(text: str) -> list[str]:
    """Each `...` span of the Markdown outside fenced code blocks."""
    prose = re.sub(r"^```.*?^```", "", text, flags=re.DOTALL | re.MULTILINE)
    return re.findall(r"`([^`\n]+)`", prose)


def test_every_name_architecture_md_writes_exists() -> None:
    tokens = backticked(ARCHITECTURE.read_text(encoding="utf-8"))
    assert len(tokens) > 100
    problems = {token: problem for token in tokens if (problem := index().problem(token))}
    assert problems == {}


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: path.name)
def test_every_path_and_module_a_doc_writes_exists(doc: Path) -> None:
    """The other docs name other libraries' classes and functions too, so only what is surely ours is looked up
    there: a path under glmcore/, glmtui/, docs/ or tests/, and a `glmcore.` or `glmtui.` name."""
    ours = PATH_ROOTS + ("glmcore.", "glmtui.")
    tokens = [token for token in backticked(doc.read_text(encoding="utf-8")) if token.startswith(ours)]
    problems = {token: problem for token in tokens if (problem := index().problem(token))}
    assert problems == {}


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: path.name)
def test_every_test_a_doc_names_exists(doc: Path) -> None:
    """reliability.md and the others cite their evidence as `test_file.py::test_name`: both must still exist."""
    text = doc.read_text(encoding="utf-8")
    test_files = {path.name for path in (ROOT / "tests").rglob("test_*.py")}
    missing = sorted(
        {name for name in re.findall(r"\b(test_\w+\.py)\b", text) if name not in test_files}
        | {name for name in re.findall(r"::(test_\w+)", text) if name not in index().functions}
    )
    assert missing == []


@pytest.mark.parametrize(
    "made_up",
    [
        "glmcore.runs.checkpoint_unproblem",
        "glmcore.nowhere",
        "RunWarehouse",
        "Run.teleport()",
        "glmcore/verified.py",
        "family_guess(model_dir)",
        "glmcore.runs.Run.teleport",
    ],
)
def test_a_made_up_name_is_caught(made_up: str) -> None:
    assert index().problem(made_up)


@pytest.mark.parametrize(
    "real",
    [
        "glmcore.runs.RunStore",
        "RunStore",
        "Run.status()",
        "glmcore/verify.py",
        "family_for(model_dir)",
        "glmcore",
    ],
)
def test_a_real_name_passes(real: str) -> None:
    assert index().problem(real) is None

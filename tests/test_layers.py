"""The package's layer rules (docs: architecture.md; README "Layout"), checked on the source.

Every module of ``sdclr/`` is parsed with :mod:`ast` (nothing is imported). An import of an
``sdclr`` module may only go down the layers below, never sideways between the two packages
of one layer, never upwards; there is no import cycle among the modules; and no ``from
sdclr`` / ``import sdclr`` sits inside a function or class outside ``cli/`` (optional
third-party imports such as wandb or matplotlib may stay lazy). ``__init__`` files hold only a
docstring, and the shims kept for old module paths only re-export from ``cli``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sdclr"

#: layer of each subpackage (or top-level module); a module may import its own subpackage
#: and any subpackage of a lower layer.
LAYERS = {
    "errors": -1,  # the error types import nothing of sdclr; utils may raise them
    "utils": 0,
    "augment": 1,
    "config": 2,
    "models": 3,
    "losses": 3,
    "data": 3,
    "methods": 4,
    "eval": 4,
    "train": 5,
    "cli": 6,
}
#: report is beside the stack: it reads only JSON, imports only these, and only cli imports it
REPORT_MAY_IMPORT = {"utils", "errors", "report"}
#: old module paths kept for one release; they may only re-export from cli
SHIMS = {"__main__", "bench", "splits", "runner"}


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = modules()


def resolve(module: str, node: ast.ImportFrom) -> str:
    """The absolute module name of a ``from`` import (relative ones resolved)."""
    if node.level == 0:
        return node.module or ""
    is_pkg = MODULES[module].name == "__init__.py"
    base = module.split(".")
    base = base if is_pkg else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def sdclr_imports(
    module: str, source: str | None = None, known: set[str] | dict | None = None
) -> list[tuple[str, int, bool]]:
    """(imported sdclr module, line, nested in a function or class) for every import of
    ``module`` (its file, or ``source``); ``known``: the package's modules."""
    known = MODULES if known is None else known
    if source is None:
        source = MODULES[module].read_text()
    tree = ast.parse(source, module)
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, nested: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = nested or isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)
            )
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.split(".")[0] == "sdclr":
                        found.append((alias.name, child.lineno, nested))
            elif isinstance(child, ast.ImportFrom):
                target = resolve(module, child)
                if target.split(".")[0] == "sdclr":
                    for alias in child.names:  # `from sdclr.x import y` may import module y
                        sub = f"{target}.{alias.name}"
                        found.append((sub if sub in known else target, child.lineno, nested))
            visit(child, inner)

    visit(tree, False)
    return found


def part(module: str) -> str:
    """The subpackage (or top-level module) of ``sdclr.<part>...``; '' for the root."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


Imports = dict[str, list[tuple[str, int, bool]]]


def package_imports() -> Imports:
    return {m: sdclr_imports(m) for m in MODULES}


def edges(imports: Imports) -> dict[str, set[str]]:
    return {m: {t for t, _, _ in found if t in imports and t != m} for m, found in imports.items()}


def violations(imports: Imports) -> list[str]:
    """One line per import that breaks a rule; ``imports`` covers every module."""
    bad = []
    for module, found in imports.items():
        src = part(module)
        for target, line, nested in found:
            dst = part(target)
            where = f"{module}:{line}"
            if nested and src != "cli":
                bad.append(f"{where}: `{target}` imported inside a function (outside cli/)")
            if target not in imports and target != "sdclr":
                bad.append(f"{where}: `{target}` is not a module of the package")
                continue
            if src == dst or src == "":
                continue
            if src in SHIMS:
                if dst != "cli":
                    bad.append(f"{where}: the shim {module} imports {target}, not cli")
                continue
            if src == "report":
                if dst not in REPORT_MAY_IMPORT:
                    bad.append(f"{where}: report imports {target} (only utils and errors)")
                continue
            if dst == "report":
                if src != "cli":
                    bad.append(f"{where}: {module} imports report (only cli may)")
                continue
            if dst in SHIMS:
                bad.append(f"{where}: {module} imports the shim {target}")
                continue
            if src not in LAYERS or dst not in LAYERS:
                bad.append(f"{where}: {module} -> {target}: a package outside the layer table")
                continue
            if LAYERS[dst] > LAYERS[src]:
                bad.append(f"{where}: {module} imports {target}, a higher layer")
            elif LAYERS[dst] == LAYERS[src]:
                bad.append(f"{where}: {module} imports {target}, a sibling of its layer")
    return bad


def cycles(imports: Imports) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan)."""
    graph = edges(imports)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            strong(v)
    return out


def test_the_tree_has_every_layer():
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert packages == set(LAYERS) - {"errors"} | {"report"}


def test_imports_only_go_down_the_layers():
    assert violations(package_imports()) == []


def test_no_import_cycles():
    assert cycles(package_imports()) == []


@pytest.mark.parametrize("init", sorted(PACKAGE.rglob("__init__.py")), ids=str)
def test_init_files_hold_only_a_docstring(init):
    body = ast.parse(init.read_text()).body
    assert body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
    rest = body[1:]
    if init.parent == PACKAGE:  # the package root may say its version
        rest = [n for n in rest if not _assigns(n, "__version__")]
    assert rest == [], f"{init} holds more than a docstring"


def _assigns(node: ast.stmt, name: str) -> bool:
    return isinstance(node, ast.Assign) and any(
        isinstance(t, ast.Name) and t.id == name for t in node.targets
    )


@pytest.mark.parametrize("shim", sorted(SHIMS))
def test_shims_hold_no_logic(shim):
    """An old module path: a docstring, imports from cli, ``__all__`` and the ``__main__``
    guard calling what it imported; no definitions."""
    tree = ast.parse((PACKAGE / f"{shim}.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # docstring
        if isinstance(node, ast.ImportFrom):
            assert (node.module or "").startswith("sdclr.cli."), ast.dump(node)
            continue
        if isinstance(node, ast.Import):
            assert all(a.name == "sys" for a in node.names), ast.dump(node)
            continue
        if _assigns(node, "__all__"):
            continue
        if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
            for stmt in node.body:
                assert isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call), (
                    f"{shim}.py: only a call under the __main__ guard"
                )
            continue
        raise AssertionError(f"{shim}.py holds logic: {ast.unparse(node)[:80]}")


# --- the checker itself -------------------------------------------------------------------


def fake_package(sources: dict[str, str]) -> Imports:
    return {m: sdclr_imports(m, src, set(sources)) for m, src in sources.items()}


BASE = {
    "sdclr.utils.io": "",
    "sdclr.errors": "",
    "sdclr.models.pruning": "from sdclr.utils.io import natural_key\n",
    "sdclr.eval.knn": "",
    "sdclr.report.build": "",
}


def test_the_checker_passes_a_clean_package_and_names_each_broken_rule():
    assert violations(fake_package(BASE)) == []
    cases = {
        "import sdclr.eval.knn\n": "a sibling of its layer",
        "from sdclr.eval import knn\n": "a sibling of its layer",
        "def f():\n    from sdclr.utils.io import REPO\n": "inside a function",
        "from sdclr.report.build import main\n": "only cli may",
        "from sdclr.nowhere import x\n": "not a module of the package",
    }
    for source, message in cases.items():
        found = violations(fake_package({**BASE, "sdclr.methods.simclr": source}))
        assert len(found) == 1 and message in found[0], (source, found)
    up = violations(fake_package({**BASE, "sdclr.utils.io": "from sdclr.models import pruning\n"}))
    assert len(up) == 1 and "a higher layer" in up[0]
    report = violations(fake_package({**BASE, "sdclr.report.build": "import sdclr.eval.knn\n"}))
    assert len(report) == 1 and "only utils and errors" in report[0]


def test_the_checker_resolves_relative_imports():
    node = ast.parse("from ..utils import io").body[0]
    assert resolve("sdclr.eval.knn", node) == "sdclr.utils"
    node = ast.parse("from .metrics import summarize").body[0]
    assert resolve("sdclr.eval.knn", node) == "sdclr.eval.metrics"


def test_the_checker_finds_a_cycle():
    sources = {
        **BASE,
        "sdclr.utils.a": "from sdclr.utils import b\n",
        "sdclr.utils.b": "import sdclr.utils.a\n",
    }
    assert cycles(fake_package(BASE)) == []
    assert cycles(fake_package(sources)) == [["sdclr.utils.a", "sdclr.utils.b"]]

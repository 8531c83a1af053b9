"""The layers of docs/architecture.md: every import points down (or across one layer), and no
module imports itself back through others.

Imports are read from the source with :mod:`ast` (module level, inside functions and under
``TYPE_CHECKING`` alike), so a lazy import that points up fails here as well.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

#: Bottom to top; a module belongs to the layer of its longest matching prefix.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "ground",
        (
            "retain.errors",
            "retain.version",
            "retain.registry",
            "retain.atomic_files",
            "retain.tensor_files",
            "retain.distributed",
            "retain.metrics",
            "retain.metrics_capability",
            "retain.output_dirs",
            "retain.schema",
            "retain.paired_statistics",
        ),
    ),
    ("records", ("retain.records",)),
    ("assets", ("retain.assets",)),
    ("data", ("retain.data",)),
    ("evaluation", ("retain.evaluation",)),
    ("strategy contract", ("retain.strategies.base",)),
    ("diagnostics", ("retain.diagnostics",)),
    ("strategies", ("retain.strategies",)),
    ("training", ("retain.training",)),
    ("report", ("retain.report",)),
    ("experiment", ("retain.experiment",)),
    ("interface", ("retain", "retain.cli", "retain.cli_experiment", "retain.cli_diagnose")),
]

#: Upward edges that are part of the design, with the reason.
ALLOWED = {
    ("retain.strategies.base", "retain.strategies.catalog"): (
        "the strategy registry imports the built-in strategies on its first lookup"
    ),
}


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted((SRC / "retain").rglob("*.py")):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The retain modules ``path`` imports (``from a import b`` counts ``a.b`` when it is one)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in known else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name in known}


def layer(module: str) -> int:
    best, rank = -1, -1
    for k, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), k
    assert rank >= 0, f"{module} is in no layer; add it to LAYERS"
    return rank


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(path, known) - {name} for name, path in known.items()}


def test_every_module_has_a_layer() -> None:
    for module in modules():
        layer(module)


def test_imports_point_down() -> None:
    upward = [
        f"{a} ({LAYERS[layer(a)][0]}) imports {b} ({LAYERS[layer(b)][0]})"
        for a, targets in graph().items()
        for b in sorted(targets)
        if layer(b) > layer(a) and (a, b) not in ALLOWED
    ]
    assert not upward, "imports that point up a layer:\n" + "\n".join(sorted(upward))


def test_no_import_cycles() -> None:
    edges = {a: {b for b in targets if (a, b) not in ALLOWED} for a, targets in graph().items()}
    cycles = _cycles(edges)
    assert not cycles, f"modules that import each other: {cycles}"


def test_the_checker_sees_an_upward_import_even_inside_a_function(tmp_path: Path) -> None:
    source = tmp_path / "loop.py"
    source.write_text("def f():\n    from retain.experiment.runner import run_experiment\n")
    (found,) = imports(source, modules())
    assert found == "retain.experiment.runner"
    assert layer(found) > layer("retain.training.loop")
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c"]]


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]
    children: defaultdict[str, set[str]] = defaultdict(set, edges)

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(children[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_function_of_the_experiment_layer_is_over_60_lines() -> None:
    """The orchestration layer stays readable: each step of a command is a named function."""
    long = []
    for path in sorted((SRC / "retain" / "experiment").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                assert node.end_lineno is not None
                size = node.end_lineno - node.lineno + 1
                if size > 60:
                    long.append(f"{path.name}:{node.lineno} {node.name} ({size} lines)")
    assert not long, long


def test_reports_read_typed_records_not_dicts() -> None:
    """The report layer reads records by attribute: no ``.get(`` on results (the figure
    captions, a constant table, are the one mapping it looks up)."""
    found = []
    for path in sorted((SRC / "retain" / "report").glob("*.py")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if ".get(" in line and "captions.get(" not in line:
                found.append(f"{path.name}:{number}: {line.strip()}")
    assert not found, "\n".join(found)

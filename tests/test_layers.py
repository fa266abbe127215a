"""The package's layers depend only downwards, and no two modules import each other.

Every ``import`` statement of every module under ``src/dmlkit`` is read with :mod:`ast`:
module-level ones and those inside functions (lazy imports are still dependencies); a package's
``__init__`` importing its submodules counts as an edge from the package to each submodule.
Not counted: imports under ``if TYPE_CHECKING:`` (never executed; annotations only) and
Python's implicit import of a parent package when a submodule is imported (not a choice the
code makes).

The layers, lowest first, are those of docs/architecture.md; a module may import its own layer
(without cycles) and any lower one.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).parents[1] / "src"

# Lowest first. A name stands for that module and everything below it (``dmlkit.data`` is the
# data package with all its modules); the most specific name wins.
LAYERS: list[tuple[str, ...]] = [
    # leaves: the package docstring, error types, the name table, the config schema
    ("dmlkit", "dmlkit.errors", "dmlkit.registry", "dmlkit.machine", "dmlkit.config"),
    # pure functions of logits; batches: dict batches and model outputs, losses by logits rank
    ("dmlkit.losses", "dmlkit.online_losses", "dmlkit.sequence_losses", "dmlkit.batches"),
    # networks, metrics, datasets, optimizers by name and LR schedules
    ("dmlkit.models", "dmlkit.metrics", "dmlkit.data", "dmlkit.optim"),
    ("dmlkit.cohort",),  # K peers with their optimizers
    # the update order of one step (and dmlkit.step for users' loops)
    ("dmlkit.methods", "dmlkit.online_methods", "dmlkit.loop"),
    ("dmlkit.distributed",),  # the cohort and the step spread over processes
    ("dmlkit.engine",),  # trainer, checkpoints, evaluation, run directory
    ("dmlkit.analysis",),  # reading finished runs
    ("dmlkit.experiments",),  # named recipes of many runs, their reports
    # entry points (the dml command, dmlkit.fit) and test fixtures
    (
        "dmlkit.cli",
        "dmlkit.cli_use",
        "dmlkit.cli_analysis",
        "dmlkit.cli_summary",
        "dmlkit.bench",
        "dmlkit.api",
        "dmlkit.watch",
        "dmlkit.integrations",
        "dmlkit.testing",
    ),
]

# Known upward edges that another change removes; each must still exist (a stale entry fails).
PENDING: set[tuple[str, str]] = set()


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((SRC / "dmlkit").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The dmlkit modules that ``name`` imports anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING")
        for inner in ast.walk(node)
    }
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:  # ``from pkg import submodule`` imports the submodule
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in modules else target)
    return {m for m in found if m in modules and m != name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _layer(module: str) -> int:
    best, best_len = None, -1
    for i, names in enumerate(LAYERS):
        for n in names:
            if (module == n or module.startswith(n + ".")) and len(n) > best_len:
                best, best_len = i, len(n)
    assert best is not None, f"{module} has no layer: add it to LAYERS in {__file__}"
    return best


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_module_has_a_layer():
    for module in _modules():
        _layer(module)


def test_no_import_cycles():
    graph = _graph()
    for a, b in PENDING:
        graph[a].discard(b)
    cycles = _cycles(graph)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_layers_depend_only_downwards():
    graph = _graph()
    upward = sorted((a, b) for a, deps in graph.items() for b in deps if _layer(b) > _layer(a))
    assert set(upward) >= PENDING, f"stale PENDING entries: {sorted(PENDING - set(upward))}"
    unexpected = [f"{a} -> {b}" for a, b in upward if (a, b) not in PENDING]
    assert not unexpected, "lower layer imports a higher one: " + ", ".join(unexpected)


def test_the_reader_sees_what_the_code_imports():
    # The checks above are only as good as the import reader: it must see lazy imports inside
    # functions and a package __init__ importing its submodules.
    graph = _graph()
    assert "dmlkit.engine.checkpoint" in graph["dmlkit.engine.trainer"]  # module level
    assert "dmlkit.engine.trainer" in graph["dmlkit.cli"]  # inside cmd_train
    assert "dmlkit.data.cifar100" in graph["dmlkit.data"]  # __init__ -> submodule


def test_the_trainer_knows_no_method_by_name():
    # The README's promise: the trainer does not know about the update order (or any other
    # method's rule). A method name in the trainer or the distributed layer would be such a rule.
    from dmlkit.methods import METHODS

    modules = _modules()
    for name, path in modules.items():
        if name != "dmlkit.engine.trainer" and not name.startswith("dmlkit.distributed"):
            continue
        strings = {
            node.value
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
        }
        named = sorted(strings & set(METHODS.names()))
        assert not named, f"{name} names methods {named}: let the method class answer instead"

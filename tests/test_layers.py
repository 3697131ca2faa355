"""The layer table of docs/architecture.md, enforced: no module imports a higher layer.

Imports under ``if TYPE_CHECKING:`` are exempt (they never run). Imports inside
functions count: a lazy import still ties the layers together at run time.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "backrun"

# Lowest first; a module may import its own layer or any lower one. Each entry
# is a dotted module name relative to ``backrun`` or a package prefix ending in ".".
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("records", ("errors", "clock", "jobs", "workerinfo", "limits", "locking")),
    ("encoding", ("serialization",)),
    ("attempt context", ("context", "middleware")),
    (
        "policies",
        (
            "retries",
            "payload_values",
            "handlers",
            "enqueueing",
            "settings",
            "schedules",
            "followups",
            "versions",
        ),
    ),
    ("storage", ("storage.",)),
    (
        "execution",
        (
            "isolation",
            "scheduler",
            "results",
            "attempts",
            "supervisor",
            "pool_view",
            "worker",
            "idle_wait",
            "signals",
            "claims",
            "uniqueness",
        ),
    ),
    ("observability", ("observability.",)),
    ("composition", ("periodic", "enqueuer", "engine", "__init__")),
    ("integrations", ("testing", "logformat", "joblog", "web.", "cli.", "__main__")),
    ("frameworks", ("contrib.",)),
]


def layer_of(module: str) -> int:
    for index, (_, members) in enumerate(LAYERS):
        for member in members:
            if module == member or (member.endswith(".") and module.startswith(member)):
                return index
            if member.endswith(".") and module == member[:-1]:
                return index
    raise LookupError(module)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def _under_type_checking(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def backrun_imports(
    path: Path, source: str | None = None, *, typing_only: bool = False
) -> list[tuple[int, str]]:
    """(line, imported backrun module) for every run-time import in ``path``.

    With ``typing_only``, the imports under ``if TYPE_CHECKING:`` instead.
    """
    tree = ast.parse(path.read_text() if source is None else source)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    if package == ["__init__"]:
        package = []
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if _under_type_checking(node, parents) != typing_only:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            elif node.module and node.module.split(".")[0] == "backrun":
                target = node.module.partition(".")[2]
            else:
                continue
            names = [f"{target}.{a.name}" if target else a.name for a in node.names]
            for name in names:
                # "from . import jobs" names a module; "from .jobs import Job" a member.
                found.append((node.lineno, name if _is_module(name) else target or "__init__"))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "backrun":
                    found.append((node.lineno, alias.name.partition(".")[2] or "__init__"))
    return found


def _is_module(dotted: str) -> bool:
    path = PACKAGE / dotted.replace(".", "/")
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


MODULES = sorted(p for p in PACKAGE.rglob("*.py"))


def test_every_module_has_a_layer() -> None:
    unplaced = []
    for path in MODULES:
        try:
            layer_of(module_name(path))
        except LookupError:
            unplaced.append(module_name(path))
    assert unplaced == [], f"add these modules to LAYERS and docs/architecture.md: {unplaced}"


@pytest.mark.parametrize("path", MODULES, ids=module_name)
def test_no_module_imports_a_higher_layer(path: Path) -> None:
    own = layer_of(module_name(path))
    upward = [
        f"line {line}: imports {target} ({LAYERS[layer_of(target)][0]})"
        for line, target in backrun_imports(path)
        if layer_of(target) > own
    ]
    assert upward == [], f"{module_name(path)} ({LAYERS[own][0]}) reaches up: {upward}"


@pytest.mark.parametrize("path", MODULES, ids=module_name)
def test_no_type_checking_import_reaches_a_higher_layer(path: Path) -> None:
    # Typing-only imports never run, but an upward one is still a cycle in the
    # design: lower layers name what they need with a narrow Protocol instead.
    own = layer_of(module_name(path))
    upward = [
        f"line {line}: imports {target} for typing"
        for line, target in backrun_imports(path, typing_only=True)
        if layer_of(target) > own
    ]
    assert upward == [], f"{module_name(path)} ({LAYERS[own][0]}) reaches up: {upward}"


def test_the_checker_sees_an_upward_import() -> None:
    # The check must be able to fail: a records module importing the worker,
    # lazily and absolutely, and a TYPE_CHECKING import it must let pass.
    jobs = PACKAGE / "jobs.py"
    source = (
        jobs.read_text()
        + "\ndef late():\n    from .worker import Worker\n    import backrun.engine\n"
        + "if TYPE_CHECKING:\n    from .supervisor import Supervisor\n"
    )
    targets = [target for _, target in backrun_imports(jobs, source)]
    assert "worker" in targets
    assert "engine" in targets
    assert "supervisor" not in targets
    assert [t for _, t in backrun_imports(jobs, source, typing_only=True)] == ["supervisor"]
    assert all(layer_of(t) > layer_of("jobs") for t in ("worker", "engine"))


def test_only_the_json_layout_knows_the_fields_of_a_name() -> None:
    """No slicing or ``~``-splitting of file names outside ``storage/jsonfile/layout.py``."""
    import re

    slicing = re.compile(r"""\bname\[\d*:\d*\]|\.(?:r?split|r?partition)\(["']~["']""")
    offenders = [
        f"{path.name}:{number}"
        for path in sorted((PACKAGE / "storage" / "jsonfile").glob("*.py"))
        if path.name != "layout.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if slicing.search(line)
    ]
    assert offenders == []

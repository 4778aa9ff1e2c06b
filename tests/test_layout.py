"""The house holds its shape: no import cycles, the torch rooms never reach MLflow or DVC, no module over 250
lines and no stage over 120 (docs/layout.md)."""

from __future__ import annotations

import ast

import pytest

from tests.helpers import ROOT

TORCH_ROOMS = ("imgcls.data", "imgcls.model", "imgcls.engine", "imgcls.evaluation")


def modules() -> dict[str, set[str]]:
    """Every module of stages/ and imgcls/, with the names it imports (anywhere in it, functions included,
    except under `if TYPE_CHECKING:`)."""
    found = {}
    for path in sorted([*ROOT.glob("stages/*.py"), *ROOT.glob("imgcls/**/*.py")]):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        tree = ast.parse(path.read_text())
        hidden = {
            id(node)
            for branch in ast.walk(tree)
            if isinstance(branch, ast.If) and "TYPE_CHECKING" in ast.unparse(branch.test)
            for node in ast.walk(branch)
        }
        imported = set()
        for node in ast.walk(tree):
            if id(node) in hidden:
                continue
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
        found[name] = imported
    return found


def ours(graph: dict[str, set[str]], name: str) -> set[str]:
    return {module for module in graph[name] if module in graph}


def test_no_module_imports_one_that_imports_it_back():
    graph = modules()
    state: dict[str, int] = {}

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for dep in ours(graph, name):
            assert state.get(dep) != 1, f"import cycle: {' -> '.join([*path, dep])}"
            if dep not in state:
                visit(dep, [*path, dep])
        state[name] = 2

    for name in graph:
        if name not in state:
            visit(name, [name])


@pytest.mark.parametrize("room", TORCH_ROOMS)
def test_torch_rooms_never_reach_mlflow_or_dvc(room):
    graph = modules()
    for start in (name for name in graph if name.startswith(room)):
        seen, queue = set(), [start]
        while queue:
            name = queue.pop()
            if name in seen:
                continue
            seen.add(name)
            outside = {m for m in graph[name] if m.split(".")[0] in ("mlflow", "dvc")}
            assert not outside, f"{start} reaches {sorted(outside)} through {name}"
            queue += ours(graph, name)


def test_no_module_over_250_lines_and_no_stage_over_120():
    lines = {
        path.relative_to(ROOT).as_posix(): len(path.read_text().splitlines())
        for path in [*ROOT.glob("stages/*.py"), *ROOT.glob("imgcls/**/*.py")]
    }
    assert {path: n for path, n in lines.items() if n > 250} == {}
    assert {path: n for path, n in lines.items() if path.startswith("stages/") and n > 120} == {}

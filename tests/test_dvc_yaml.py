"""dvc.yaml is the contract: each stage declares every module it runs, and exactly the fixed outputs the code
writes (stages.layout); inputs come from params."""

import ast
import re

import yaml

from stages import layout
from stages.workspace import declared_outputs
from tests.conftest import ROOT


def stage_modules(name: str, seen: set[str] | None = None) -> set[str]:
    """`stages.<name>` and every stages.* module it imports or names as a file, transitively."""
    seen = set() if seen is None else seen
    if name in seen:
        return seen
    seen.add(name)
    for node in ast.walk(ast.parse((ROOT / "stages" / f"{name}.py").read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("stages"):
            targets = [a.name for a in node.names] if node.module == "stages" else [node.module.split(".")[1]]
            for target in targets:
                stage_modules(target, seen)
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.endswith(".py")
              and (ROOT / "stages" / node.value).is_file()):
            stage_modules(node.value[:-3], seen)  # a module MLflow runs by file name (models-from-code)
    return seen


def test_every_imported_module_is_a_dep():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert list(stages) == ["prepare", "pretrain", "train", "evaluate", "export"]
    for name, stage in stages.items():
        assert stage["cmd"] == f"python -m stages.{name}"
        declared = {d[len("stages/"):-3] for d in stage["deps"] if d.startswith("stages/")}
        assert declared == stage_modules(name), name


def test_outputs_are_the_layouts_and_no_param_moves_them():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        assert sorted(declared_outputs(ROOT / "dvc.yaml", name)) == sorted(layout.outputs(name)), name
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind) or []:
                path = next(iter(entry)) if isinstance(entry, dict) else entry
                assert "$" not in path, f"{name}: output {path} comes from params; DVC would delete wherever it points"
                cached = entry[path].get("cache", True) if isinstance(entry, dict) else True
                assert (path in layout.CACHED[name]) == cached, f"{name}: {path} cache: {cached}"
    inputs = re.findall(r"\$\{(\w+\.\w+)\}", (ROOT / "dvc.yaml").read_text())
    assert sorted(set(inputs)) == ["prepare.data", "prepare.test_data", "pretrain.data"]

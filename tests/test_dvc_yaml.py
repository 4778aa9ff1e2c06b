"""dvc.yaml is the contract: each stage declares every module it runs and every path comes from params."""

import ast
import re

import yaml

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


def test_paths_come_from_params():
    text = (ROOT / "dvc.yaml").read_text()
    literal = re.findall(r"^\s+- ((?:data|models|metrics|plots)/\S+)", text, re.M)
    assert literal == [], f"write these paths in params.yaml and use ${{...}}: {literal}"

"""dvc.yaml is the contract: each stage declares every module it runs, and exactly the fixed outputs the code
writes (imgcls.config.layout); inputs come from params."""

import ast
import re

import yaml

from imgcls.config import layout
from imgcls.workspace import declared_outputs
from tests.helpers import ROOT


def stage_code(stage: str) -> set[str]:
    """The files `python -m stages.<stage>` may run: its module and every stages/imgcls module imported on the
    way, at any depth (imports inside functions too)."""
    seen, queue = set(), [f"stages.{stage}"]
    while queue:
        name = queue.pop()
        path = ROOT / (name.replace(".", "/") + ".py")
        if name in seen or not path.is_file():
            continue
        seen.add(name)
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.ImportFrom)
                and node.module
                and node.module.split(".")[0] in ("stages", "imgcls")
            ):
                queue += [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            elif isinstance(node, ast.Import):
                queue += [
                    alias.name for alias in node.names if alias.name.split(".")[0] in ("stages", "imgcls")
                ]
    return {name.replace(".", "/") + ".py" for name in seen}


def test_every_imported_module_is_a_dep():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert list(stages) == ["prepare", "pretrain", "train", "evaluate", "export"]
    for name, stage in stages.items():
        assert stage["cmd"] == f"python -m stages.{name}"
        declared = {d for d in stage["deps"] if d.startswith(("stages/", "imgcls/"))}
        assert declared == stage_code(name), name


def test_outputs_are_the_layouts_and_no_param_moves_them():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        assert sorted(declared_outputs(ROOT / "dvc.yaml", name)) == sorted(layout.outputs(name)), name
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind) or []:
                path = next(iter(entry)) if isinstance(entry, dict) else entry
                assert "$" not in path, (
                    f"{name}: output {path} comes from params; DVC would delete wherever it points"
                )
                cached = entry[path].get("cache", True) if isinstance(entry, dict) else True
                assert (path in layout.CACHED[name]) == cached, f"{name}: {path} cache: {cached}"
    inputs = re.findall(r"\$\{(\w+\.\w+)\}", (ROOT / "dvc.yaml").read_text())
    assert sorted(set(inputs)) == ["prepare.data", "prepare.test_data", "pretrain.data"]

"""The export as an MLflow model: models-from-code (imgcls/serving/served_model.py runs it, no pickle), with
only the modules serving imports, the export's files as its artifact, a signature and an input example;
saved to a folder, or logged as an MLflow 3 model of the run it came from."""

from __future__ import annotations

import ast
import shutil
import tempfile
from pathlib import Path


def served_model_args(export_dir: Path, scratch: Path, example_image: bytes) -> dict:
    """What MLflow needs to save the export as a pyfunc model: models-from-code
    (imgcls/serving/served_model.py runs it, no pickle) with only the modules serving imports, the export's
    files as its artifact, its signature and an input example."""
    import shutil

    import pandas
    from mlflow.models import infer_signature

    from imgcls.serving.model import ImageClassifier

    example = pandas.DataFrame({"image": [example_image]})
    loaded = ImageClassifier()
    loaded.load(export_dir)
    staged = scratch / "export"  # the artifact's name in the model: not the partial folder's
    shutil.copytree(export_dir, staged)
    code = serving_code(scratch / "code")
    return {
        "python_model": str(PACKAGE / "serving" / "served_model.py"),
        "artifacts": {"export_dir": str(staged)},
        "code_paths": [str(code)],
        "pip_requirements": pinned_requirements(code),
        "input_example": example,
        "signature": infer_signature(example, loaded.predict(None, example)),
    }


PACKAGE = Path(__file__).resolve().parents[1]  # imgcls/


def imported_names(path: Path) -> list[str]:
    """Every module the Python file `path` imports, by absolute name; `from m import x` names m and m.x (x may
    be a module)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names += [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
    return names


def serving_code(target: Path) -> Path:
    """A copy of the package holding only the modules the served model imports, at any depth (not the stages,
    the training code or the commands): target/imgcls, for MLflow's code_paths."""
    wanted, queue = set(), ["imgcls.serving.served_model"]
    while queue:
        name = queue.pop()
        path = PACKAGE.parent / (name.replace(".", "/") + ".py")
        if name in wanted or not path.is_file():
            continue
        wanted.add(name)
        queue += [module for module in imported_names(path) if module.startswith("imgcls")]
    for name in wanted:
        parts = name.split(".")
        for depth in range(1, len(parts)):  # every package on the way needs its __init__.py
            init = Path(*parts[:depth], "__init__.py")
            (target / init).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(PACKAGE.parent / init, target / init)
        shutil.copy(
            PACKAGE.parent / (name.replace(".", "/") + ".py"), target / (name.replace(".", "/") + ".py")
        )
    return target / "imgcls"


def pinned_requirements(code: Path) -> list[str]:
    """The distributions the served code imports (beyond the standard library and itself), pinned to the
    versions installed here, local labels such as +cpu dropped as MLflow does. Declared, not inferred:
    MLflow's inference loads the model in a second Python (seconds per export) and, from an editable install,
    names this project, which no index holds, while it missed torch and onnxruntime."""
    import sys
    from importlib.metadata import packages_distributions, version

    imported = {module.split(".")[0] for path in code.rglob("*.py") for module in imported_names(path)}
    third_party = sorted(imported - set(sys.stdlib_module_names) - {"__future__", code.name})
    distributions = packages_distributions()
    missing = [name for name in third_party if name not in distributions]
    if missing:
        raise RuntimeError(f"the served model imports {missing}, which no installed distribution provides")
    # several may provide one package (mlflow, mlflow-skinny): the one of its own name when installed
    names = sorted({name if name in distributions[name] else distributions[name][0] for name in third_party})
    return [f"{name}=={version(name).split('+')[0]}" for name in names]


def save_served_model(export_dir: Path, target: Path, example_image: bytes) -> None:
    """The export as an MLflow pyfunc model in the folder `target`."""
    import mlflow

    with tempfile.TemporaryDirectory() as scratch:
        mlflow.pyfunc.save_model(target, **served_model_args(export_dir, Path(scratch), example_image))


def log_served_model(export_dir: Path, run_id: str, name: str, example_image: bytes, tags: dict) -> str:
    """The export as an MLflow 3 logged model of `run_id`, returning its id: its own entity, linked to the run
    (the runs table's Models column and the model page show it), carrying the run's params and its metrics of
    step 0 (the test metrics evaluate logged)."""
    import mlflow
    from mlflow.models import Model

    # MLflow files a logged model under the process's current experiment, not its run's: make it the run's
    mlflow.set_experiment(experiment_id=mlflow.MlflowClient().get_run(run_id).info.experiment_id)
    with tempfile.TemporaryDirectory() as scratch:
        logged = Model.log(
            artifact_path=None,
            name=name,
            flavor=mlflow.pyfunc,
            run_id=run_id,
            tags=tags,
            **served_model_args(export_dir, Path(scratch), example_image),
        )
    return logged.model_id

"""The README and docs/ say only what is so: every param they name is in params.yaml (and every param has its
line in docs/params.md), every `python -m imgcls` and `dvc` command they show parses with the real command's
own parser, and every link and page they point to exists."""

from __future__ import annotations

import importlib
import re
import shlex

import pytest
import yaml

from tests.helpers import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SECTIONS = ("model", "runtime", "tracking", "prepare", "pretrain", "train", "evaluate", "export")
# `section.key` read in prose: not a file name (model.onnx), a module (stages.train) or a path (models/export)
PARAM = re.compile(rf"(?<![\w./-])((?:{'|'.join(SECTIONS)})(?:\.[a-z][a-z0-9_]*)+)(?![\w/(-]|\.[a-z])")
FILE_SUFFIXES = {"pt", "pt2", "onnx", "json", "md", "py", "csv", "yaml", "lock", "db", "png", "html", "pth"}


def leaves(data: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in data.items():
        keys.add(prefix + key)
        if isinstance(value, dict):
            keys |= leaves(value, f"{prefix}{key}.")
    return keys


def params_named(text: str) -> set[str]:
    return {name for name in PARAM.findall(text) if name.rsplit(".", 1)[1] not in FILE_SUFFIXES}


def commands(text: str) -> list[list[str]]:
    """Each command the page shows: lines of its bash blocks (continuations joined, comments dropped, `&&`
    chains split, leading VAR=value dropped) and inline `python -m imgcls ...` / `dvc ...` spans."""
    found = []
    lines = [
        line
        for block in re.findall(r"```bash\n(.*?)```", text, re.S)
        for line in block.replace("\\\n", " ").splitlines()
    ]
    lines += re.findall(r"`((?:python -m imgcls|python -m stages\.audit|dvc) [^`]*)`", text)
    for line in lines:
        for part in re.split(r"&&|;", line):
            words = shlex.split(re.sub(r"<[^>]+>", "x", part), comments=True)
            while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                words = words[1:]
            if words[:3] == ["python", "-m", "stages.audit"]:
                found.append(["python", "-m", "imgcls", "audit", *words[3:]])  # checked like imgcls' own
            elif words[:3] == ["python", "-m", "imgcls"] or words[:1] == ["dvc"]:
                found.append(words)
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_param_a_page_names_is_in_params_yaml(page):
    known = leaves(yaml.safe_load((ROOT / "params.yaml").read_text()))
    assert params_named(page.read_text()) - known == set()


def test_every_param_has_its_line_in_the_reference():
    keys = leaves(yaml.safe_load((ROOT / "params.yaml").read_text()))
    values = {key for key in keys if key.count(".") >= 1 and not key.endswith(".distributed")}
    reference = (ROOT / "docs" / "params.md").read_text()
    assert {key for key in values if f"| `{key}` |" not in reference} == set()


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_command_a_page_shows_parses(page):
    from dvc.cli.parser import get_main_parser

    from imgcls.__main__ import COMMANDS

    commands_shown = {**COMMANDS, "audit": "stages.audit"}
    dvc = get_main_parser()
    [subcommands] = [action.choices for action in dvc._actions if action.dest == "cmd"]
    for words in commands(page.read_text()):
        name, rest = (words[1], words[2:]) if words[0] == "dvc" else (words[3], words[4:])
        assert name in (subcommands if words[0] == "dvc" else commands_shown), words
        if not rest:  # a command named in prose (`dvc pull`): it exists
            continue
        if words[0] == "dvc":
            dvc.parse_args(words[1:])  # raises, printing the word it refused, if it does not parse
        else:
            importlib.import_module(commands_shown[name]).argument_parser().parse_args(rest)


def test_the_commands_are_found():
    """The extraction itself: a page of known commands gives them back, and a wrong option fails."""
    page = "```bash\nMLFLOW_TRACKING_URI=x python -m imgcls serve models:/m/1 \\\n  --port 5001  # comment\n"
    page += "git add a && dvc exp run -S train.lr=0.1\n```\nand `python -m imgcls lineage --relocate-store`"
    assert commands(page) == [
        ["python", "-m", "imgcls", "serve", "models:/m/1", "--port", "5001"],
        ["dvc", "exp", "run", "-S", "train.lr=0.1"],
        ["python", "-m", "imgcls", "lineage", "--relocate-store"],
    ]
    from imgcls.serving.server import argument_parser

    with pytest.raises(SystemExit):
        argument_parser().parse_args(["models:/m/1", "--prot", "5001"])
    prose = "`train.lr`, train.distributed.nnodes, models/model.pt, model.onnx, stages.train"
    assert params_named(prose) == {
        "train.lr",
        "train.distributed.nnodes",
    }


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_link_points_to_a_page_and_heading_that_exist(page):
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if target.startswith("http"):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.is_file(), f"{page.name} links to {target}"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", linked.read_text(), re.M)
            slugs = {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in headings}
            assert anchor in slugs, f"{page.name} links to #{anchor}, not a heading of {linked.name}"


def test_docs_named_in_code_and_config_exist():
    sources = [ROOT / "pyproject.toml", ROOT / "params.yaml", ROOT / "dvc.yaml", *ROOT.glob("imgcls/**/*.py")]
    named = {m for path in sources for m in re.findall(r"docs/[\w-]+\.md", path.read_text())}
    assert named and {m for m in named if not (ROOT / m).is_file()} == set()


def test_readme_is_for_the_first_hour():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 220


def test_every_module_has_its_row_in_the_layout_page():
    page = (ROOT / "docs" / "layout.md").read_text()
    rows = set(re.findall(r"^\| `([^`]+\.py)` \|", page, re.M))
    modules = {p.relative_to(ROOT).as_posix() for p in ROOT.glob("stages/*.py")} | {
        p.relative_to(ROOT / "imgcls").as_posix() for p in ROOT.glob("imgcls/**/*.py")
    }
    modules = {m for m in modules if not m.endswith("__init__.py")}
    assert modules - rows == set() and rows - modules == set()

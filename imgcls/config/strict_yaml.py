"""YAML read strictly: a key given twice in one mapping is refused (PyYAML keeps the last one silently), and
`1e-4` is a number, as YAML 1.2 and DVC read it (PyYAML's YAML 1.1 wants `1.0e-4`)."""

from __future__ import annotations

import re

import yaml


class StrictLoader(yaml.SafeLoader):
    """yaml.safe_load that refuses a key given twice in one mapping (PyYAML keeps the last one silently), and
    reads `1e-4` as a number, as YAML 1.2 and DVC do (PyYAML's YAML 1.1 wants `1.0e-4`)."""


def _unique_mapping(loader: StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"key `{key}` appears twice in one section (lines {seen[key]} and {line}), and only "
                "one would count; keep one",
                key_node.start_mark,
            )
        seen[key] = line
    return loader.construct_mapping(node, deep=deep)


def read_yaml(text: str):
    """YAML text as Python values, strictly (`StrictLoader`)."""
    return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)
StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)

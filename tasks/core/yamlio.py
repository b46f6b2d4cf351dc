"""The YAML reader every config file goes through: safe, bounded, errors that name the file.

Also the one translation of a pydantic ValidationError into a ConfigError (file, field, value).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from tasks.core.errors import ConfigError

MAX_YAML_BYTES = 1024 * 1024  # real config files are a few KB; a bigger one is the wrong file
MAX_YAML_NODES = 100_000  # values once aliases are expanded: a "billion laughs" file has ~10**9
MAX_YAML_DEPTH = 64  # nesting levels; real configs use fewer than 10


class YamlLimitError(yaml.MarkedYAMLError):
    """A YAML document over one of the reader's limits (nesting, aliases, duplicate keys)."""


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader with limits: time and memory stay bounded whatever the file holds.

    PyYAML has no such options (nor has ruamel.yaml), so they are added here: nesting depth
    is checked while composing (the composer recurses), alias expansion is counted on the
    composed graph before any Python object is built, recursive aliases are refused, and so
    are duplicate keys (PyYAML would silently keep the last one).
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node:
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise YamlLimitError(problem=f"nested more than {MAX_YAML_DEPTH} levels deep; "
                                             "flatten the structure",
                                     problem_mark=self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def get_single_node(self) -> yaml.Node | None:
        node = super().get_single_node()
        if node is not None:
            _expanded_size(node, {}, set())
        return node

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[tuple[str, str]] = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = (key_node.tag, key_node.value)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"duplicate key {key_node.value!r}; keep only one of them", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _expanded_size(node: yaml.Node, sizes: dict[int, tuple[int, int]], active: set[int]) -> tuple[int, int]:
    """(values, depth) of `node` with every alias expanded; raises over the limits or on a cycle."""
    if id(node) in sizes:
        return sizes[id(node)]
    if id(node) in active:
        raise YamlLimitError(problem="an alias refers to an anchor that contains it (a recursive "
                                     "structure); zpipe configs are trees", problem_mark=node.start_mark)
    active.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        children = list(node.value)
    elif isinstance(node, yaml.MappingNode):
        children = [part for pair in node.value for part in pair]
    else:
        children = []
    count, depth = 1, 1
    for child in children:
        child_count, child_depth = _expanded_size(child, sizes, active)
        count, depth = count + child_count, max(depth, child_depth + 1)
        if count > MAX_YAML_NODES or depth > MAX_YAML_DEPTH:
            limit = (f"more than {MAX_YAML_NODES} values" if count > MAX_YAML_NODES
                     else f"nested more than {MAX_YAML_DEPTH} levels deep")
            raise YamlLimitError(problem=f"{limit} once aliases (*name) are expanded (an alias "
                                         "bomb?); use fewer aliases", problem_mark=node.start_mark)
    active.discard(id(node))
    sizes[id(node)] = (count, depth)
    return count, depth


def load_yaml_text(text: str) -> Any:
    """Parse one YAML document with the safe loader and the limits above (raises yaml.YAMLError)."""
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def read_yaml(path: Path) -> dict[str, Any]:
    """Read one YAML mapping (at most MAX_YAML_BYTES); errors name the file and the line."""
    if not path.is_file():
        raise ConfigError(str(path), None, "file not found; check the path")
    size = path.stat().st_size
    if size > MAX_YAML_BYTES:
        raise ConfigError(str(path), None, f"file is {size} bytes; a zpipe config is at most "
                                            f"{MAX_YAML_BYTES} bytes (1 MiB): check that it is the "
                                            "right file, or split it")
    try:
        data = load_yaml_text(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), None, f"not UTF-8 text ({exc.reason} at byte {exc.start}); "
                                            "save it as UTF-8 (is it a binary file?)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        if "could not determine a constructor" in problem:
            problem += " (zpipe reads plain YAML only: remove the tag)"
        raise ConfigError(str(path), None, f"invalid YAML{where}: {problem}") from None
    if data is None:
        raise ConfigError(str(path), None, "the file is empty; a zpipe config is a YAML mapping "
                                            "that starts with `kind:` (brand, campaign, prompts, "
                                            "settings or source)")
    if not isinstance(data, dict):
        raise ConfigError(str(path), None, "must be a YAML mapping with a `kind:` key, not a "
                                            f"{type(data).__name__}", type(data).__name__)
    return data


def from_validation_error(path: Path, exc: ValidationError) -> ConfigError:
    errors = exc.errors(include_url=False)
    first = errors[0]
    field = ".".join(str(p) for p in first["loc"]) or None
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        message = "unknown field; remove it or check its spelling"
    if len(errors) > 1:
        more = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors[1:5]
        )
        message += f" (and {len(errors) - 1} more: {more})"
    value = first.get("input") if first["type"] != "missing" else None
    if isinstance(value, dict | list):
        value = None  # a whole sub-tree is noise; the field path says where
    return ConfigError(str(path), field, message, value)

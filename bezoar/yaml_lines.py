"""YAML read with the line of every key, so that every problem can be reported as `FILE:LINE: key: what`."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from bezoar.config_base import expand_env
from bezoar.errors import ConfigError, located


def _to_python(node: yaml.Node, path: tuple, lines: dict[tuple, int]) -> Any:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        result = {}
        for key_node, value_node in node.value:
            key = key_node.value
            if not isinstance(key, str):  # `? [a, b]`: YAML allows it, a recipe has no such key
                raise yaml.MarkedYAMLError(problem="a key must be a plain name, not a list or mapping",
                                           problem_mark=key_node.start_mark)
            if key in result:  # YAML itself lets the last one win silently
                raise yaml.MarkedYAMLError(problem=f"key '{key}' repeats line {lines[path + (key,)]}",
                                           problem_mark=key_node.start_mark)
            lines[path + (key,)] = key_node.start_mark.line + 1
            result[key] = _to_python(value_node, path + (key,), lines)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_to_python(item, path + (i,), lines) for i, item in enumerate(node.value)]
    value = yaml.SafeLoader.construct_object(yaml.SafeLoader(""), node, deep=True)
    return expand_env(value) if isinstance(value, str) else value


def parse_yaml(path: Path) -> tuple[dict, dict[tuple, int]]:
    """The YAML as plain data plus a map from key path to line number."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"{path}: cannot read ({error.strerror})") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start}); save it as UTF-8") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        lines: dict[tuple, int] = {}
        data = _to_python(node, (), lines) if node is not None else {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigError(one_line(located(path, mark.line + 1 if mark else None, f"not valid YAML: {problem}"))) from None
    if not isinstance(data, dict):
        raise ConfigError(located(path, 1, "a recipe must be a mapping of sections (run, models, steps)"))
    return data, lines


def one_line(text: str) -> str:
    """A key or value holding a line break or control character must not split its problem's line."""
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)

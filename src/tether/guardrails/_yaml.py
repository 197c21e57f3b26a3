"""A YAML loader that remembers line numbers and refuses duplicate keys.

Policy lint errors must name a line; PyYAML's safe loader knows the lines but
drops them, and silently keeps the last of two duplicate keys. Plain scalars
follow YAML 1.2's core schema, not PyYAML's 1.1 rules: `NO` and `on` stay
strings (not booleans), `12:30` stays a string (not 750), and `.nan` / `.inf`
are not numbers.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from tether.errors import PolicyError


class LineDict(dict[str, Any]):
    """A mapping that knows the line it starts on and the line of each key."""

    line: int = 0
    key_lines: dict[str, int]


class CoreLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 core-schema plain scalars (see the module doc)."""


_RETYPED = {"tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"}
CoreLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in _RETYPED]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
CoreLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
CoreLoader.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"), list("-+0123456789"))


def _core_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    # 1.2 core: `08` is eight and `010` is ten (1.1 read a leading 0 as octal and failed on 8 and 9).
    text = str(loader.construct_scalar(node))
    if text.startswith(("0x", "0o")):
        return int(text[2:], 16 if text[1] == "x" else 8)
    return int(text, 10)


CoreLoader.add_constructor("tag:yaml.org,2002:int", _core_int)  # type: ignore[arg-type]
CoreLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)$|^[-+]?(?:\.[0-9]+|[0-9]+\.[0-9]*)$"),
    list("-+.0123456789"),
)


def load_scalar(text: str) -> Any:
    """One value (a number, string, bool, null or flow list) by the same rules."""
    return yaml.load(text, Loader=CoreLoader)  # noqa: S506 - a SafeLoader subclass


class _Loader(CoreLoader):
    pass


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> LineDict:
    out = LineDict()
    out.line = node.start_mark.line + 1
    out.key_lines = {}
    loader.flatten_mapping(node)
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if not isinstance(key, str):
            raise PolicyError(f"line {line}: mapping keys must be strings, got {key!r}")
        if key in out:
            raise PolicyError(f"line {line}: duplicate key {key!r}")
        out[key] = loader.construct_object(value_node, deep=True)
        out.key_lines[key] = line
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)  # type: ignore[arg-type]


def load(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except PolicyError as e:
        raise PolicyError(f"{source}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "?"
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise PolicyError(f"{source}:{where.removeprefix('line ')}: malformed YAML: {problem}") from None

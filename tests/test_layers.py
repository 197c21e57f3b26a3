"""Layers point one way: no module imports a layer above its own (DESIGN.md, "The layers").

Every import counts: at the top, inside functions, under TYPE_CHECKING, relative ones.
Imports by string (importlib, entry points) are not seen; they name user workflows."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"

# From the top; modules in one group may import each other. "tether" is the package
# itself (tether/__init__.py re-exports every layer), so only the top may import it;
# tether/errors.py (and a future tether/types.py) sit under everything.
ORDER = [
    {"cli", "server", "mcp", "adapters", "__main__", "tether"},
    {"workflows", "evals"},
    {"orchestration"},
    {"guardrails"},
    {"tools"},
    {"models", "memory"},
    {"record"},
    {"errors", "types"},
]
RANK = {name: len(ORDER) - i for i, group in enumerate(ORDER) for name in group}

# (file, imported module) pairs tolerated while a redesign removes them; keep it empty.
ALLOWED_FOR_NOW: set[tuple[str, str]] = set()


def _layer(module: str) -> str | None:
    """The layer of a tether module: its first part after `tether` (None outside tether)."""
    parts = module.split(".")
    if parts[0] != "tether":
        return None
    return parts[1] if len(parts) > 1 else "tether"


def _imports(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in the file, wherever it stands."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join([*base, node.module] if node.module else base)
            # `from tether import tools` imports the subpackage: count it as such.
            if target == "tether" or (node.level and not node.module):
                found += [(node.lineno, f"{target}.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, target))
    return found


def _upward_imports() -> dict[tuple[str, str], list[str]]:
    """(file, imported module) -> ["file:line ..."] for each import of a higher layer."""
    out: dict[tuple[str, str], list[str]] = {}
    for path in sorted((SRC / "tether").rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        module = ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        mine = _layer(module)
        assert mine in RANK, f"{rel}: layer {mine!r} is not in ORDER; place it there"
        for line, target in _imports(path, module):
            theirs = _layer(target)
            if theirs is None or theirs == mine:
                continue
            if RANK.get(theirs, len(ORDER) + 1) > RANK[mine]:  # an unknown layer counts as above
                out.setdefault((rel, target), []).append(f"{rel}:{line} ({mine}) imports {target} ({theirs})")
    return out


def test_no_module_imports_a_higher_layer() -> None:
    found = _upward_imports()
    bad = [where for key, lines in sorted(found.items()) if key not in ALLOWED_FOR_NOW for where in lines]
    assert not bad, "lower layers must not import higher ones:\n" + "\n".join(bad)


def test_allowed_for_now_holds_only_live_violations() -> None:
    gone = sorted(ALLOWED_FOR_NOW - set(_upward_imports()))
    assert not gone, f"no longer imported, delete from ALLOWED_FOR_NOW: {gone}"


def test_the_checker_sees_every_kind_of_import(tmp_path: Path) -> None:
    path = tmp_path / "tether" / "record" / "x.py"
    path.parent.mkdir(parents=True)
    path.write_text(
        "import tether.cli\n"
        "from ..orchestration import engine\n"
        "from .. import server\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from tether.guardrails import policy\n"
        "def f():\n"
        "    from tether.tools.tool import Tool\n"
    )
    assert sorted(_imports(path, "tether.record.x")) == [
        (1, "tether.cli"), (2, "tether.orchestration"), (3, "tether.server"), (4, "typing"),
        (6, "tether.guardrails"), (8, "tether.tools.tool"),
    ]

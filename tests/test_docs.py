"""The Python in README.md and docs/*.md runs, so a documented example cannot rot.

Every ```python (or ```py) block of a file runs in order in one namespace, the way a
reader pastes them: a later block sees the names an earlier one made. Each file runs in
its own temporary folder (conftest's `_in_tmp`), offline, on the default embedded SQLite
database (`.tether/tether.db` in that folder). Blocks are found and run by pytest-examples
(pydantic's): `assert`s are rewritten by pytest, a `print` must be followed by its output as
`#>` comments, which are checked, and a failure names the markdown line.

A block that cannot run here is marked, visibly, right before its fence:

    <!-- not run: needs OPENAI_API_KEY -->

Such blocks are counted against NOT_RUN below, so a new exception needs a change here too.
Shell blocks (```sh, indented command lines) and the code in docstrings are not Python
examples and are not run.
"""

from __future__ import annotations

import ast
import re
import sys
import traceback
from pathlib import Path
from typing import Any

import pytest
import pytest_examples.run_code
from pytest_examples import CodeExample, EvalExample, find_examples

from tether import Database, Runtime

ROOT = Path(__file__).resolve().parent.parent
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NOT_RUN: dict[str, int] = {}  # file -> number of blocks marked `<!-- not run: ... -->`; keep it empty
_MARK = re.compile(r"<!--[ \t]*not run:[ \t]*(?P<why>[^\n]*?\S)[ \t]*-->\s*\Z")


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def examples(path: Path) -> list[tuple[CodeExample, str | None]]:
    """The file's Python blocks in order, each with the reason it is not run (None: it runs)."""
    text = path.read_text("utf-8")
    found = []
    for ex in find_examples(path):
        # The text before the block's fence line; a marker must be the last thing in it.
        before = text[: ex.start_index].rsplit("\n", 2)[0] if ex.start_index else ""
        m = _MARK.search(before)
        found.append((ex, m.group("why") if m else None))
    return found


def _markdown_line(e: BaseException, ex: CodeExample) -> int:
    """The markdown line of the example's innermost frame in `e`'s traceback."""
    line = None
    for frame, lineno in traceback.walk_tb(e.__traceback__):
        if Path(frame.f_code.co_filename).name == f"{ex.module_name}.py":
            line = lineno
    return ex.start_line + line if line is not None else ex.start_line


def test_the_readme_has_python_examples() -> None:
    # Guards the collector itself: if it found nothing, every test below would pass vacuously.
    assert len(examples(ROOT / "README.md")) >= 2


def test_not_run_markers_are_counted() -> None:
    marked = {_rel(p): n for p in FILES if (n := sum(why is not None for _, why in examples(p)))}
    assert marked == NOT_RUN, "a block marked `<!-- not run: ... -->` must be listed in NOT_RUN (and be rare)"


@pytest.mark.parametrize("path", FILES, ids=_rel)
def test_python_blocks_run(path: Path, eval_example: EvalExample, monkeypatch: pytest.MonkeyPatch) -> None:
    found = examples(path)
    runnable = [ex for ex, why in found if why is None]
    if not runnable:
        assert _rel(path) != "README.md"
        return
    # Each file's examples must check something, not only run: at least one assert in them.
    assert any(isinstance(n, ast.Assert) for ex in runnable for n in ast.walk(ast.parse(ex.source))), (
        f"{_rel(path)}: its Python examples assert nothing, so they could pass without showing what they claim"
    )
    for var in ("TETHER_DB", "TETHER_MODEL", "TETHER_ROUTER", "TETHER_POLICY", "TETHER_COST_CEILING_USD"):
        monkeypatch.delenv(var, raising=False)  # the examples run on tether's defaults
    # pytest-examples runs each block as module `__main__`; put pytest's own back afterwards
    # (multiprocessing in later tests looks it up).
    monkeypatch.setitem(sys.modules, "__main__", sys.modules["__main__"])
    eval_example.set_config(line_length=120)  # how long a `#>` output line may be before pytest-examples wraps it
    # pytest-examples 0.0.18 re-raises an example's exception with frames it forges (ctypes) to
    # point at the markdown; on Python 3.11 their line table is wrong and pytest then crashes
    # (INTERNALERROR) instead of reporting the failure. Keep the real traceback, and name the
    # markdown line in a note.
    monkeypatch.setattr(pytest_examples.run_code, "create_example_traceback", lambda *args: None)
    namespace: dict[str, Any] = {}
    try:
        for ex in runnable:
            try:
                namespace = {**namespace, **eval_example.run_print_check(ex, module_globals=namespace)}
            except Exception as e:
                e.add_note(f"in the example at {_rel(path)}:{_markdown_line(e, ex)}")
                raise
    finally:
        for value in namespace.values():  # close what the examples opened: runtimes, then databases
            if isinstance(value, Runtime):
                value.close()
        for value in namespace.values():
            if isinstance(value, Database):
                value.dispose()

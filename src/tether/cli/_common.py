"""What every command shares: --db, JSON output, one-line errors."""

from __future__ import annotations

import functools
import json
import os
import sys
import tempfile
from collections.abc import Callable
from typing import Any, TypeVar

import click

from tether.errors import TetherError
from tether.record.db import Database, database_from_env

F = TypeVar("F", bound=Callable[..., Any])

db_option = click.option(
    "--db", "db_url", metavar="URL", default=None,
    help="Database URL (default: $TETHER_DB or sqlite:///.tether/tether.db).",
)  # fmt: skip
json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object for machines.")


def open_db(url: str | None, *, create: bool = False) -> Database:
    """Read-only and deciding commands never create a database; they need one."""
    return database_from_env(url, create=create)


def fail(message: str, code: int = 1) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def one_line_errors(fn: F) -> F:
    """Expected errors become `error: ...` on stderr and exit 1; nothing else prints a traceback either."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TetherError as e:
            fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit):
            raise
        except Exception as e:  # noqa: BLE001 - a bug still gets one line and a non-zero exit
            fail(f"internal error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", code=70)

    return wrapper  # type: ignore[return-value]


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False, default=str))


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json_object(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text, parse_constant=_no_constants)
    except ValueError as e:
        if not isinstance(e, json.JSONDecodeError):
            raise TetherError(f"{what} is not valid JSON: {e}") from None
        raise TetherError(f"{what} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    if not isinstance(value, dict):
        raise TetherError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def write_atomic(path: str, data: bytes) -> None:
    """Write beside the target and rename: a failed write leaves no half file."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tether-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


class Progress:
    """A progress bar on stderr for long commands: only on a terminal, never with --json."""

    def __init__(self, label: str, *, enabled: bool = True) -> None:
        self.label = label
        self.enabled = enabled and sys.stderr.isatty()
        self._bar: Any = None

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or total <= 0:
            return
        if self._bar is None:
            self._bar = click.progressbar(length=total, label=self.label, file=sys.stderr, show_pos=True, show_eta=True)
            self._bar.__enter__()
        self._bar.update(done - self._bar.pos)
        if done >= total:
            self._bar.__exit__(None, None, None)
            self._bar = None

"""Secret isolation: tools get upstream credentials from a secret store, and no secret
handed out is ever written: every value a store returns is remembered, and the
journal, the ledger, traces, prompts and error messages are scrubbed of it
before they are written (`<secret>` in its place).

Backends: the environment (`TETHER_SECRET_<NAME>`) and a folder of files (one
file per secret, readable only by its owner).

It lives in record because record scrubs what it writes (traces) and models read
their keys from these stores; `tether.tools.secrets` re-exports it for tools.
"""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path
from typing import Any, Protocol

from tether.errors import ToolError

_handed_out: set[str] = set()
_lock = threading.Lock()
_MIN_LEN = 6  # shorter values are too likely to be ordinary text to scrub safely


class SecretError(ToolError):
    pass


class SecretStore(Protocol):
    def get(self, name: str) -> str: ...


def _remember(name: str, value: str) -> str:
    if len(value) < _MIN_LEN:  # it could not be told from ordinary text in what is written, so it is never handed out
        raise SecretError(f"secret {name!r} is {len(value)} characters; secrets shorter than {_MIN_LEN} are refused "
                          "(they cannot be scrubbed reliably from records)")  # fmt: skip
    with _lock:
        _handed_out.add(value)
    return value


class EnvSecrets:
    def __init__(self, prefix: str = "TETHER_SECRET_") -> None:
        self.prefix = prefix

    def get(self, name: str) -> str:
        value = os.environ.get(self.prefix + name.upper())
        if not value:
            raise SecretError(f"secret {name!r} is not set (${self.prefix}{name.upper()})")
        return _remember(name, value)


class FileSecrets:
    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def get(self, name: str) -> str:
        if not name.replace("_", "").replace("-", "").isalnum():
            raise SecretError(f"secret name {name!r} may only hold letters, digits, - and _")
        path = self.folder / name
        try:
            mode = path.stat().st_mode
        except FileNotFoundError:
            raise SecretError(f"secret {name!r} not found in {self.folder}") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise SecretError(f"secret file {path} is readable by others; chmod 600 it")
        return _remember(name, path.read_text(encoding="utf-8").strip())


def scrub(value: Any) -> Any:
    """`value` with every secret handed out so far replaced by `<secret>` (strings, dicts, lists)."""
    if not _handed_out:
        return value
    if isinstance(value, str):
        for s in _handed_out:
            if s in value:
                value = value.replace(s, "<secret>")
        return value
    if isinstance(value, dict):  # keys too: a tool may key its result by a token
        return {scrub(k) if isinstance(k, str) else k: scrub(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub(v) for v in value]
    return value

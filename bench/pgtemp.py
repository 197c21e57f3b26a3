"""A throwaway PostgreSQL server from the machine's own binaries (for bench/ and tests/).

initdb into a temporary folder, a free port on 127.0.0.1, pg_ctl start/stop.
PostgreSQL refuses to run as root, so as root the server runs as the `postgres`
(or `nobody`) user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


def find_bin() -> Path | None:
    """The newest PostgreSQL bin folder holding initdb, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


def find_pgvector_bin() -> Path | None:
    """A PostgreSQL bin folder whose server has the pgvector extension, or None.

    The machine's own first (a `postgresql-NN-pgvector` package), else the PostgreSQL
    build with pgvector bundled in the `pgserver` wheel (a test dependency), whose
    binaries TempPostgres runs like any other.
    """
    for initdb in sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: -int(Path(p).parts[-3])):
        root = Path(initdb).parent.parent
        if (root / "lib" / "vector.so").exists():
            return root / "bin"
    import importlib.util

    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(list(spec.submodule_search_locations)[0]) / "pginstall"
    if (root / "bin" / "initdb").exists() and (root / "lib" / "postgresql" / "vector.so").exists():
        return root / "bin"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TempPostgres:
    def __init__(self, bin_dir: Path | None = None) -> None:
        found = bin_dir or find_bin()
        if found is None:
            raise RuntimeError("no PostgreSQL binaries (initdb) under /usr/lib/postgresql/*/bin or on PATH")
        self.bin = found
        self.dir = Path(tempfile.mkdtemp(prefix="tether-pg-"))
        self.port = _free_port()
        self.user: str | None = None
        if os.geteuid() == 0:
            self.user = next(u for u in ("postgres", "nobody") if _has_user(u))
            os.chown(self.dir, pwd.getpwnam(self.user).pw_uid, -1)
            if not _runs_as(self.bin, self.user):
                # Binaries inside a checkout the server's user cannot enter (a venv under /root, say,
                # like pgserver's): a copy of the install in the server's own folder.
                self.bin = _copy_install(self.bin.parent, self.dir / "pkg")

    def _run(self, *args: str) -> None:
        subprocess.run([str(self.bin / args[0]), *args[1:]], check=True, capture_output=True, user=self.user,
                       cwd=self.dir)  # fmt: skip

    def start(self) -> TempPostgres:
        data = self.dir / "data"
        self._run("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        # fsync off: a throwaway server for tests; crash-safety of PostgreSQL itself is not what is measured.
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300"
        self._run("pg_ctl", "-D", str(data), "-o", opts, "-l", str(self.dir / "log"), "-w", "start")
        return self

    def create_db(self, name: str) -> str:
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)
        return self.url(name)

    def url(self, name: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.dir / "data"), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def _copy_install(root: Path, into: Path) -> Path:
    """Copy a PostgreSQL install (ROOT/bin, lib, share) keeping the layout its binaries' RPATH
    expects: a wheel's vendored libraries sit beside its package (pgserver/pginstall and pgserver.libs)."""
    package = root.parent
    shutil.copytree(root, into / package.name / root.name, symlinks=True)
    libs = package.parent / f"{package.name}.libs"
    if libs.is_dir():
        shutil.copytree(libs, into / libs.name, symlinks=True)
    return into / package.name / root.name / "bin"


def _runs_as(bin_dir: Path, user: str) -> bool:
    try:
        subprocess.run([str(bin_dir / "initdb"), "--version"], check=True, capture_output=True, user=user)
        return True
    except (OSError, subprocess.CalledProcessError):
        return False


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False

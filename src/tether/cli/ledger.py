"""`tether ledger verify|export`."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any

import click

from tether.cli._common import (
    Progress,
    db_option,
    echo_json,
    fail,
    json_option,
    one_line_errors,
    open_db,
    write_atomic,
)
from tether.errors import LedgerError
from tether.record.db import timestamp
from tether.record.ledger import Ledger, read_export, verify_entries, verify_partial
from tether.record.signing import (
    check_manifest,
    load_signing_key,
    make_manifest,
    public_key_text,
    read_manifest,
)


@click.group()
def ledger() -> None:
    """The append-only, hash-chained action ledger."""


@ledger.command()
@db_option
@click.option("--file", "export_file", type=click.Path(dir_okay=False, exists=True),
              help="Verify a JSONL export instead of the database.")  # fmt: skip
@click.option("--manifest", "manifest_file", type=click.Path(dir_okay=False),
              help="With --file: also check this signed manifest (default FILE.manifest.json when --pubkey is given).")  # fmt: skip
@click.option("--pubkey", "pinned_key", default=None, help="With --file: the manifest must be signed by this key.")
@json_option
@one_line_errors
def verify(db_url: str | None, export_file: str | None, manifest_file: str | None, pinned_key: str | None,
           as_json: bool) -> None:  # fmt: skip
    """Check the hash chain; exit 1 naming the first bad entry."""
    if export_file:
        if manifest_file or pinned_key:
            check_manifest(read_manifest(manifest_file or export_file + ".manifest.json"),
                           Path(export_file).read_bytes(), pinned_key)  # fmt: skip
        with open(export_file, encoding="utf-8") as f:
            entries = list(read_export(f, export_file))
        if not entries:
            raise LedgerError(f"{export_file}: no ledger entries")
        full = [e.seq for e in entries] == list(range(1, len(entries) + 1))
        report = verify_entries(entries) if full else verify_partial(entries)
        if report.ok and not full and not as_json:
            click.echo(f"partial export (entries {entries[0].seq}..{entries[-1].seq}, {len(entries)} of them): "
                       "each entry's hash holds; chain links checked where entries are consecutive")  # fmt: skip
    else:
        report = Ledger(open_db(db_url)).verify()
    if as_json:
        echo_json({"ok": report.ok, "entries": report.entries, "first_bad": report.first_bad,
                   "problem": report.problem, "head": report.head_hash})  # fmt: skip
        if not report.ok:
            sys.exit(1)
        return
    if not report.ok:
        fail(report.message())
    click.echo(report.message())


@ledger.command()
@db_option
@click.option("--out", "out", type=click.Path(dir_okay=False), default="-", show_default=True,
              help="Write JSONL here ('-' for stdout); a file also gets OUT.manifest.json, signed.")  # fmt: skip
@click.option("--run", "run_id", default=None, help="Only the entries of one run.")
@one_line_errors
def export(db_url: str | None, out: str, run_id: str | None) -> None:
    """Write the ledger as JSON Lines for auditors (verify it with `ledger verify --file`)."""
    db = open_db(db_url)
    led = Ledger(db)
    if out == "-":
        led.export(sys.stdout, run_id)
        return
    buf = io.StringIO()
    n = led.export(buf, run_id, progress=Progress("exporting ledger"))
    data = buf.getvalue().encode()
    entries = list(read_export(buf.getvalue().splitlines(), out)) if n else []
    first = (entries[0].seq, entries[0].hash) if entries else None
    last = (entries[-1].seq, entries[-1].hash) if entries else None
    manifest = make_manifest(data, n, first, last, signing_key(db), timestamp())
    # Both written beside their targets and renamed: a failed export leaves no half file.
    write_atomic(out, data)
    write_atomic(out + ".manifest.json", (json.dumps(manifest, indent=1) + "\n").encode())
    click.echo(f"wrote {n} entries to {out} and a signed manifest to {out}.manifest.json", err=True)


@ledger.command()
@db_option
@one_line_errors
def pubkey(db_url: str | None) -> None:
    """Print the public key export manifests are signed with (for auditors to pin)."""
    click.echo(public_key_text(signing_key(open_db(db_url))))


def signing_key(db: Any) -> Any:
    return load_signing_key(db.key_folder)



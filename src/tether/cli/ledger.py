"""`tether ledger verify|export`."""

from __future__ import annotations

import sys

import click

from tether.cli._common import db_option, echo_json, fail, json_option, one_line_errors, open_db
from tether.errors import LedgerError
from tether.record.ledger import Ledger, read_export, verify_entries, verify_partial


@click.group()
def ledger() -> None:
    """The append-only, hash-chained action ledger."""


@ledger.command()
@db_option
@click.option("--file", "export_file", type=click.Path(dir_okay=False, exists=True),
              help="Verify a JSONL export instead of the database.")  # fmt: skip
@json_option
@one_line_errors
def verify(db_url: str | None, export_file: str | None, as_json: bool) -> None:
    """Check the hash chain; exit 1 naming the first bad entry."""
    if export_file:
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
              help="Write JSONL here ('-' for stdout).")  # fmt: skip
@click.option("--run", "run_id", default=None, help="Only the entries of one run.")
@one_line_errors
def export(db_url: str | None, out: str, run_id: str | None) -> None:
    """Write the ledger as JSON Lines for auditors (verify it with `ledger verify --file`)."""
    led = Ledger(open_db(db_url))
    if out == "-":
        led.export(sys.stdout, run_id)
        return
    import os
    import tempfile

    # Written beside the target and renamed: a failed export leaves no half file.
    folder = os.path.dirname(os.path.abspath(out))
    fd, tmp = tempfile.mkstemp(prefix=".tether-export-", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            n = led.export(f, run_id)
        os.replace(tmp, out)
    except BaseException:
        os.unlink(tmp)
        raise
    click.echo(f"wrote {n} entries to {out}", err=True)

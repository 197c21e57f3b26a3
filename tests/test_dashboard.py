"""The dashboard in headless Chromium (Debian's, driven by Playwright): sign in with a key,
approve a waiting refund, watch its run finish; verify the ledger; throw a kill switch."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from _server import LiveServer, add_ticket, refund_customers, waiting_refund
from click.testing import CliRunner

from tether.cli import cli
from tether.orchestration.runtime import Runtime
from tether.record.db import Database
from tether.server.app import create_app
from tether.server.keys import create_key
from tether.workflows.triage import systems
from tether.workflows.triage.flow import workflow

CHROMIUM = "/usr/bin/chromium"
GOLDEN = Path(__file__).resolve().parents[1] / "evals" / "support_triage.jsonl"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]  # fmt: skip

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason=f"no Debian chromium at {CHROMIUM} (apt-get install -y chromium; CI installs it)")  # fmt: skip


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    db = Database(f"sqlite:///{tmp_path_factory.mktemp('dash') / 'tether.db'}")
    cid = refund_customers(db)[0]
    waiting = waiting_refund(db, "T-dash-refund", cid)
    add_ticket(db, "T-dash-card", "C0002", "I think my card was stolen yesterday, please block it")
    rt = Runtime(db)
    try:
        rt.start(workflow, {"ticket_id": "T-dash-card"}, started_by="intake")
    finally:
        rt.close()
    keys = {"alice": create_key(db, name="alice", role="approver", tools="payments.*")[0],
            "root": create_key(db, name="root", role="admin")[0]}  # fmt: skip
    server = LiveServer(create_app(db))
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield {"db": db, "url": server.url, "keys": keys, "waiting": waiting, "browser": browser}
        finally:
            browser.close()
            server.stop()
            db.dispose()


def _page(site: dict[str, Any], who: str | None) -> Any:
    page = site["browser"].new_page(viewport={"width": 1280, "height": 860})
    page.errors = []  # a script error anywhere fails the test that made it
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.goto(site["url"] + "/")
    if who:
        page.fill("#key", site["keys"][who])
        page.click("#login-form button")
        page.wait_for_selector("#tabs button")
    return page


def test_sign_in_approve_a_waiting_refund_and_watch_the_run_finish(site: dict[str, Any], tmp_path: Path) -> None:
    page = _page(site, None)
    page.screenshot(path=tmp_path / "0-login.png")
    page.fill("#key", "tth_000000000000_not-a-real-key")
    page.click("#login-form button")
    page.wait_for_selector("#login-msg .msg.bad")
    assert "unknown API key" in page.inner_text("#login-msg")

    page.fill("#key", site["keys"]["alice"])
    page.click("#login-form button")
    card = page.wait_for_selector(".approval")  # an approver lands on the inbox
    text = card.inner_text()
    assert "payments.refund" in text and "refund_requires_approval" in text and "T-dash-refund" in text
    assert "risk score" in text and [t for t in page.locator("#tabs button").all_inner_texts()] == ["Runs", "Approvals", "Evals"]
    page.screenshot(path=tmp_path / "1-inbox.png", full_page=True)
    if os.environ.get("TETHER_SCREENSHOTS"):  # a folder, e.g. docs/ when refreshing the README's picture
        shutil.copy(tmp_path / "1-inbox.png", Path(os.environ["TETHER_SCREENSHOTS"]) / "dashboard-inbox.png")

    card.query_selector(".reason").fill("receipt checked by phone")
    card.query_selector("button[data-do=approve]").click()
    done = page.wait_for_selector("#decided .msg.ok")
    assert "approved by alice" in done.inner_text() and "completed" in done.inner_text()
    page.screenshot(path=tmp_path / "2-approved.png", full_page=True)

    page.click("#decided a")  # the run's timeline
    page.wait_for_selector("text=Timeline")
    body = page.inner_text("main")
    assert site["waiting"].run_id in body and "refund_issued" in body and "approved by alice" in body
    assert "payments.refund" in body and "receipt checked by phone" in body
    page.screenshot(path=tmp_path / "3-timeline.png", full_page=True)
    if os.environ.get("TETHER_SCREENSHOTS"):
        shutil.copy(tmp_path / "3-timeline.png", Path(os.environ["TETHER_SCREENSHOTS"]) / "dashboard-timeline.png")
    with site["db"].read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(systems.refunds)).scalar() == 1
    assert page.errors == []
    page.close()


def test_runs_ledger_costs_and_kill_switch_as_admin(site: dict[str, Any], tmp_path: Path) -> None:
    page = _page(site, "root")
    page.click("#tabs button[data-tab=runs]")
    page.select_option("select[name=status]", "completed")
    page.click("#filters button")
    page.wait_for_selector("#list table")
    statuses = page.locator("#list td .pill").all_inner_texts()
    assert statuses and set(statuses) == {"completed"}
    page.screenshot(path=tmp_path / "4-runs.png", full_page=True)

    page.click("#tabs button[data-tab=ledger]")
    page.click("#verify")
    assert page.wait_for_selector("#verify-result").inner_text().startswith("ledger ok:")
    page.screenshot(path=tmp_path / "5-ledger.png")

    page.click("#tabs button[data-tab=costs]")
    assert page.wait_for_selector("#no-cost").inner_text().startswith("no cost data")

    page.click("#tabs button[data-tab=workflows]")
    page.wait_for_selector("[data-wf=support_triage] button[data-do=kill]")
    page.once("dialog", lambda d: d.accept("refund replies misfire"))
    page.click("[data-wf=support_triage] button[data-do=kill]")
    assert "killed: refund replies misfire" in page.wait_for_selector("[data-wf=support_triage] .pill.s-halted").inner_text()
    page.screenshot(path=tmp_path / "6-killed.png")
    page.click("[data-wf=support_triage] button[data-do=restore]")
    page.wait_for_selector("[data-wf=support_triage] button[data-do=kill]")

    page.click("#tabs button[data-tab=evals]")
    page.wait_for_selector("text=No eval results stored yet")
    url = site["db"].url.render_as_string(hide_password=False)
    res = CliRunner().invoke(cli, ["eval", str(GOLDEN), "--limit", "3", "--db", url, "--json"])
    assert res.exit_code == 0, res.stderr
    page.click("#tabs button[data-tab=runs]")
    page.click("#tabs button[data-tab=evals]")
    page.wait_for_selector("text=Accuracy by route")
    text = page.inner_text("main")
    assert "support_triage.jsonl · 3 cases" in text and "task success" in text and "gate passed" in text
    assert page.locator("main .bar").count() >= 5  # the charts
    page.screenshot(path=tmp_path / "7-evals.png", full_page=True)
    assert page.errors == []
    page.close()

"""Records in real Chromium: the auditor exports Partner A's evidence bundle, downloads it, and the
verification page confirms it; an export in progress updates itself until its download appears."""

from __future__ import annotations

import json
import re
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone
from playwright.sync_api import Page, expect

from records.models import SealedRecord
from tests.browser.conftest import PHONE, login, screenshot

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "records"


@pytest.mark.usefixtures("active")
def test_the_auditor_exports_a_bundle_and_the_verify_page_confirms_it(page: Page, live_server, auditor):
    login(page, live_server, auditor.email)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Records").click()
    expect(page.get_by_role("heading", name="Records", exact=True)).to_be_visible()
    page.get_by_label("Partner organisation").select_option(label="Partner A")
    screenshot(page, "records-01-home")
    page.get_by_role("button", name="Export evidence bundle").click()

    # Tasks run in-process in tests, so the export is ready when the page arrives.
    expect(page.get_by_role("heading", name=re.compile(r"Evidence bundle #\d+"))).to_be_visible()
    download_link = page.get_by_test_id("record-download")
    expect(download_link).to_be_visible()
    screenshot(page, "records-02-bundle-ready")
    with page.expect_download() as info:
        download_link.click()
    download = info.value
    assert re.fullmatch(r"evidence-partner-a-\d{8}T\d{4}Z\.pdf", download.suggested_filename)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    saved = ARTIFACTS / "evidence-bundle.pdf"
    download.save_as(saved)

    page.get_by_role("link", name="Verify a record").first.click()
    page.get_by_label("Record (PDF)").set_input_files(str(saved))
    page.get_by_role("button", name="Verify").click()
    verdict = page.get_by_test_id("verdict")
    expect(verdict).to_contain_text("Verified")
    expect(verdict).to_contain_text("evidence bundle for Partner A")
    expect(verdict).to_contain_text("Partner A Research Institute")
    screenshot(page, "records-03-verified")

    # The first page, as a person opening the file would see it.
    first_page = ARTIFACTS / "bundle-page-1"
    command = ["pdftoppm", "-png", "-r", "80", "-f", "1", "-l", "1", "-singlefile", str(saved), str(first_page)]
    subprocess.run(command, check=True, timeout=60)
    assert (ARTIFACTS / "bundle-page-1.png").stat().st_size > 10_000

    # A changed copy is refused, saying why.
    changed = bytearray(saved.read_bytes())
    changed[len(changed) // 2] ^= 0x01
    tampered = ARTIFACTS / "evidence-bundle-changed.pdf"
    tampered.write_bytes(bytes(changed))
    page.get_by_label("Record (PDF)").set_input_files(str(tampered))
    page.get_by_role("button", name="Verify").click()
    expect(page.get_by_test_id("verdict")).to_contain_text("Not verified")
    page.set_viewport_size(PHONE)
    screenshot(page, "records-04-not-verified-phone")


def test_an_export_in_progress_shows_progress_then_its_download(page: Page, live_server, auditor, partner_a):
    record = SealedRecord.objects.create(
        kind="evidence_bundle", organization=partner_a, created_by=auditor, status="running", progress=40
    )
    SealedRecord.objects.filter(pk=record.pk).update(progress_note="Laying out page 3")
    login(page, live_server, auditor.email)
    page.goto(f"{live_server.url}/records/{record.pk}/")
    expect(page.get_by_text("Laying out page 3")).to_be_visible()
    expect(page.locator("progress")).to_have_attribute("value", "40")
    screenshot(page, "records-05-progress")
    SealedRecord.objects.filter(pk=record.pk).update(progress=75, progress_note="Laying out page 9")
    expect(page.get_by_text("Laying out page 9")).to_be_visible()  # htmx polled; no reload
    SealedRecord.objects.filter(pk=record.pk).update(status="failed", error="A worker ran out of memory.")
    expect(page.get_by_text("A worker ran out of memory.")).to_be_visible()


@pytest.fixture(autouse=True)
def _artifacts_folder() -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)


@pytest.mark.usefixtures("active")
def test_the_auditor_filters_the_audit_log_by_days_and_is_told_when_the_range_is_backwards(
    page: Page, live_server, auditor
):
    login(page, live_server, auditor.email)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Audit log").click()
    today = timezone.now().date()
    page.get_by_label("Action").select_option("agreement.countersigned")
    page.locator("#id_created_after").fill(today.isoformat())
    page.locator("#id_created_before").fill(today.isoformat())
    page.get_by_role("button", name="Filter").click()
    rows = page.locator("table tbody tr")
    expect(rows).to_have_count(1)  # today's one countersignature, by legal
    expect(rows.first).to_contain_text("agreement.countersigned")
    expect(rows.first).to_contain_text("legal@lab.example")
    assert f"created_after={today.isoformat()}" in page.url
    # An event opens on its data as JSON and its whole hash, which copies in one click.
    rows.first.get_by_text("data & hash").click()
    data = json.loads(rows.first.locator("pre.json").inner_text())
    assert data["side"] == "lab"
    event_hash = rows.first.locator("code[id^=hash-]")
    assert re.fullmatch(r"[0-9a-f]{64}", event_hash.inner_text())
    box = event_hash.bounding_box()
    assert box is not None and box["x"] + box["width"] <= page.viewport_size["width"], "the hash runs off the page"
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_server.url)
    copy = rows.first.locator(f"button[data-copy={event_hash.get_attribute('id')}]")
    copy.click()
    expect(copy).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == event_hash.inner_text()
    screenshot(page, "audit-log-filtered")

    page.locator("#id_created_before").fill((today - timedelta(days=1)).isoformat())
    page.get_by_role("button", name="Filter").click()
    expect(page.locator(".field.has-error")).to_contain_text("The end date is before the start date.")
    expect(page.get_by_text("No events match these filters.")).to_be_visible()
    screenshot(page, "audit-log-backwards-range")

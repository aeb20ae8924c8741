"""Findings and incidents in real Chromium: a partner researcher submits a finding with a PDF, a cited job and
the obligation it fulfils; legal asks for changes, the researcher revises, legal accepts. The lab admin's
incident queue and the kill switch from an incident."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone
from playwright.sync_api import Browser, Page, expect

from agreements.models import Obligation
from inference.models import GenerationJob, Sample
from models_registry.models import Checkpoint
from research.models import Finding, Incident
from research.services import incidents
from tests.browser.conftest import DESKTOP, PHONE, TIMEOUT_MS, login, screenshot
from tests.browser.test_personas import assert_fits_width
from tests.builders import make_job

PAPER = b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


@pytest.fixture(autouse=True)
def findings_dir(settings, tmp_path) -> Path:
    settings.FINDINGS_DIR = tmp_path / "findings"
    return settings.FINDINGS_DIR


@pytest.fixture
def job(active, researcher_a) -> GenerationJob:
    job = make_job(
        active.grants.get(checkpoint__slug="gpt2"),
        researcher_a,
        status=GenerationJob.Status.SUCCEEDED,
        tokens_generated=12,
    )
    text = "The minister said on Tuesday that the new rules would apply from March."
    Sample.objects.create(job=job, index=0, text=text, token_count=12, sha256=hashlib.sha256(text.encode()).hexdigest())
    return job


@pytest.fixture
def second_page(browser: Browser, live_server) -> Iterator[Page]:
    """Legal's browser: its own cookies and session."""
    context = browser.new_context(viewport=DESKTOP, base_url=live_server.url)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    yield page
    context.close()


def test_a_researcher_submits_a_finding_and_legal_asks_for_changes_then_accepts(
    page: Page, second_page: Page, live_server, researcher_a, legal, active, job, tmp_path, findings_dir
):
    obligation = Obligation.objects.get(agreement=active, kind=Obligation.Kind.FINDINGS_REPORT, checkpoint__slug="gpt2")
    paper = tmp_path / "detection-study.pdf"
    paper.write_bytes(PAPER)
    not_a_pdf = tmp_path / "detection-study-draft.pdf"
    not_a_pdf.write_bytes(b"PK\x03\x04 a word document renamed")

    login(page, live_server, researcher_a.email)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Findings").click()
    page.get_by_role("link", name="New finding").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("New finding")
    page.get_by_label("Title").fill("Headlines make gpt2 samples convincing")
    page.get_by_label("Category").select_option(label="Human detection and susceptibility")
    page.get_by_label("GPT-2 Small").check()
    page.get_by_label("Summary").fill(
        "## What we found\n\n61% of 240 raters took **gpt2** samples for news when the prompt was a headline."
        "\n\n<script>alert('x')</script>\n\n![tracker](http://evil.example/x.png)"
    )
    page.get_by_label(f"Job #{job.pk}").check()
    page.get_by_label("Fulfils obligation").select_option(value=str(obligation.pk))
    page.get_by_label("PDF attachments").set_input_files(str(not_a_pdf))
    page.get_by_role("button", name="Submit finding").click()

    # Refused next to the field, everything else kept as typed.
    expect(page.locator(".field.has-error")).to_contain_text("detection-study-draft.pdf is not a PDF")
    expect(page.get_by_label("Title")).to_have_value("Headlines make gpt2 samples convincing")
    expect(page.get_by_label(f"Job #{job.pk}")).to_be_checked()
    assert not Finding.objects.exists()
    assert_fits_width(page, DESKTOP["width"])
    screenshot(page, "finding-form-error")

    page.get_by_label("PDF attachments").set_input_files(str(paper))
    page.get_by_role("button", name="Submit finding").click()
    finding = Finding.objects.get()
    expect(page).to_have_url(f"{live_server.url}/findings/{finding.pk}/")
    expect(page.locator(".messages")).to_contain_text(f"{finding.reference} submitted")
    expect(page.locator(".messages")).to_contain_text(f"It fulfils {obligation.reference}")
    summary = page.get_by_test_id("summary")
    expect(summary.get_by_role("heading", name="What we found")).to_be_visible()
    assert summary.locator("script, img").count() == 0
    expect(page.get_by_role("link", name=f"Job #{job.pk}")).to_have_attribute("href", f"/jobs/{job.pk}/")
    expect(page.locator("main")).to_contain_text(job.samples.get().sha256)
    attachment = finding.attachments.get()
    expect(page.locator("main")).to_contain_text(attachment.sha256)
    assert attachment.sha256 == hashlib.sha256(PAPER).hexdigest()
    with page.expect_download() as download:
        page.get_by_role("link", name="detection-study.pdf").click()
    assert Path(download.value.path()).read_bytes() == PAPER
    assert_fits_width(page, DESKTOP["width"])
    screenshot(page, "finding-detail-submitted")

    # Legal asks for changes, with a comment.
    login(second_page, live_server, legal.email)
    second_page.goto(f"/findings/{finding.pk}/")
    second_page.get_by_role("button", name="Request changes").click()
    expect(second_page.locator("#review .field.has-error")).to_contain_text("Write what should change")
    second_page.get_by_label("Comment").fill("Say how the raters were recruited and paid.")
    second_page.get_by_role("button", name="Request changes").click()
    expect(second_page.locator("#finding-status")).to_have_text("changes requested")

    # The researcher revises.
    page.reload()
    expect(page.locator(".notice")).to_contain_text("The lab asked for changes")
    page.get_by_role("link", name="Revise and resubmit").click()
    expect(page.locator("aside")).to_contain_text("Say how the raters were recruited and paid.")
    page.get_by_label("Summary").fill(
        "## What we found\n\n61% of 240 raters, recruited from a paid panel, took **gpt2** samples for news."
    )
    page.get_by_label("Note to the lab").fill("Added how raters were recruited.")
    page.get_by_role("button", name="Resubmit").click()
    expect(page.locator("#finding-status")).to_have_text("submitted")

    # Legal accepts.
    second_page.reload()
    second_page.get_by_role("button", name="Accept").click()
    expect(second_page.locator("#finding-status")).to_have_text("accepted")
    history = second_page.get_by_test_id("history")
    for step in ("Submitted", "Requested changes", "Resubmitted", "Accepted"):
        expect(history).to_contain_text(step)
    screenshot(second_page, "finding-detail-accepted")
    second_page.set_viewport_size(PHONE)
    assert_fits_width(second_page, PHONE["width"])
    screenshot(second_page, "finding-detail-phone")
    obligation.refresh_from_db()
    assert obligation.fulfilment == f"finding {finding.reference}"

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Findings").click()
    expect(page.locator("main table")).to_contain_text(finding.reference)
    expect(page.locator("main table")).to_contain_text("accepted")
    screenshot(page, "finding-list")


def test_the_lab_admin_works_the_incident_queue_and_withdraws_a_checkpoint(
    page: Page, live_server, lab_admin, researcher_a, active
):
    gpt2 = Checkpoint.objects.get(slug="gpt2")
    for title, severity in [
        ("Prompts shared on a public forum", Incident.Severity.LOW),
        ("Samples posted as real product reviews", Incident.Severity.CRITICAL),
        ("An API token committed to a public repository", Incident.Severity.HIGH),
    ]:
        incidents.incident_report(
            actor=researcher_a,
            title=title,
            description="Found by our own monitoring; the details are in the attached report.",
            discovered_at=timezone.now() - timedelta(hours=4),
            severity=severity,
            checkpoints=[gpt2],
        )
    critical = Incident.objects.get(severity=Incident.Severity.CRITICAL)

    login(page, live_server, lab_admin.email)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Incidents").click()
    rows = page.get_by_test_id("incident-queue").locator("tbody tr")
    expect(rows).to_have_count(3)
    expect(rows.first).to_contain_text("critical")
    expect(rows.nth(1)).to_contain_text("high")
    assert_fits_width(page, DESKTOP["width"])
    screenshot(page, "incident-queue")
    page.set_viewport_size(PHONE)
    assert_fits_width(page, PHONE["width"])
    screenshot(page, "incident-queue-phone")
    page.set_viewport_size(DESKTOP)

    rows.first.get_by_role("link", name=critical.reference).click()
    page.get_by_label("Reason").fill("Samples used to fake reviews at scale")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Withdraw (kill switch)").click()
    expect(page.locator(".messages")).to_contain_text(f"gpt2 is withdrawn, with {critical.reference} as the reason.")
    expect(page.locator("main")).to_contain_text("Checkpoint withdrawn")
    expect(page.get_by_role("button", name="Withdraw (kill switch)")).to_have_count(0)  # nothing left to pull
    screenshot(page, "incident-detail-withdrawn")
    gpt2.refresh_from_db()
    assert gpt2.status == Checkpoint.Status.WITHDRAWN
    assert gpt2.status_reason == f"Incident {critical.reference}: Samples used to fake reviews at scale"

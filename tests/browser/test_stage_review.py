"""A stage review in real Chromium: the lab admin reads gpt2-large's evidence (charts with their numbers),
is told off for a decision without a rationale, records "release to named partners", and the registry
page then shows the decision. Screenshots at 1280x800 and at phone width, checked for overflow."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import Page, expect

from accounts import services as accounts
from agreements.models import Agreement, Obligation
from inference.models import GenerationJob
from research.models import Finding, Incident, ReleaseDecision
from tests.browser.conftest import DESKTOP, PHONE, SCREENSHOT_DIR, login, screenshot
from tests.browser.test_accessibility import _blocking
from tests.builders import make_job, signatory_of
from tests.research.test_releases import RATIONALE, activate

SLUG = "gpt2-large"


@pytest.fixture
def evidence(gpt2_stages, published_version, lab_admin, legal, partner_a, partner_b, researcher_a, researcher_b):
    """Partners C and B tried gpt2-large early (C in good standing, B with a findings report overdue);
    A holds gpt2 only and is the one to release to next; D has no agreement."""
    c = accounts.organization_create(
        actor=None, name="Partner C", legal_name="Partner C Laboratoire SAS", jurisdiction="France"
    )
    accounts.organization_create(actor=None, name="Partner D", legal_name="Partner D Ltd", jurisdiction="Ireland")
    activate(legal, partner_a, published_version, ["gpt2"], days_ago=50)
    agreement_b = activate(legal, partner_b, published_version, ["gpt2", SLUG], days_ago=50, quota=4_000)
    agreement_c = activate(legal, c, published_version, ["gpt2", SLUG], days_ago=50, quota=6_000)
    yesterday = timezone.now() - timedelta(days=1)
    Obligation.objects.filter(organization=partner_b, kind=Obligation.Kind.FINDINGS_REPORT).update(
        due_at=yesterday, original_due_at=yesterday
    )
    researcher_c = signatory_of(c)
    statuses = [GenerationJob.Status.SUCCEEDED] * 5 + [GenerationJob.Status.FAILED, GenerationJob.Status.CANCELLED]
    for agreement, who, scale in ((agreement_b, researcher_b, 300), (agreement_c, researcher_c, 700)):
        grant = agreement.grants.get(checkpoint__slug=SLUG)
        for day in range(1, 48, 2):
            status = statuses[day % len(statuses)]
            tokens = scale * (1 + day % 5) if status == GenerationJob.Status.SUCCEEDED else 0
            make_job(
                grant, who, status=status, tokens_generated=tokens, created_at=timezone.now() - timedelta(days=day)
            )
    large = agreement_c.grants.get(checkpoint__slug=SLUG).checkpoint
    for organization, author, category, status in (
        (c, researcher_c, Finding.Category.DETECTABILITY, Finding.Status.ACCEPTED),
        (c, researcher_c, Finding.Category.MISUSE, Finding.Status.ACKNOWLEDGED),
        (partner_b, researcher_b, Finding.Category.DETECTION, Finding.Status.CHANGES_REQUESTED),
    ):
        finding = Finding.objects.create(
            organization=organization,
            author=author,
            title=f"{Finding.Category(category).label} at 774M",
            category=category,
            summary="s",
            summary_html="<p>s</p>",
            status=status,
        )
        finding.checkpoints.set([large])
    incident = Incident.objects.create(
        organization=partner_b,
        reporter=researcher_b,
        title="Generated reviews posted to a shop",
        description="d",
        discovered_at=timezone.now() - timedelta(days=6),
        created_at=timezone.now() - timedelta(days=5),
        severity=Incident.Severity.MEDIUM,
        status=Incident.Status.RESOLVED,
        outcome="The account was closed and the samples removed.",
        resolved_at=timezone.now() - timedelta(days=2),
        resolved_by=lab_admin,
    )
    incident.checkpoints.set([large])
    return large


def no_sideways_scroll(page: Page) -> None:
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= page.viewport_size["width"], f"the page is {width}px wide at {page.viewport_size['width']}px"


def test_the_lab_admin_reviews_the_evidence_and_releases_to_a_named_partner(
    page: Page, live_server, lab_admin, partner_a, evidence
):
    login(page, live_server, lab_admin.email)
    page.goto(f"{live_server.url}/stage-reviews/")
    expect(page.get_by_role("heading", name="Stage reviews")).to_be_visible()
    page.get_by_role("link", name="GPT-2 Large").click()

    expect(page.get_by_role("heading", name="Stage review: GPT-2 Large")).to_be_visible()
    charts = page.locator("svg[role=img]")
    expect(charts).to_have_count(6)
    expect(page.get_by_role("img", name=f"Tokens generated on {SLUG} per day, by partner")).to_be_visible()
    tokens = page.get_by_role("img", name=f"Tokens generated on {SLUG} per day, by partner")
    assert tokens.bounding_box()["width"] > 450  # drawn at a legible size, not squeezed
    no_sideways_scroll(page)
    assert _blocking(page) == []  # axe-core: no serious or critical violation
    screenshot(page, "stage-review-01-desktop")

    # Each chart's numbers are a table away.
    page.get_by_text("The numbers").first.click()
    expect(page.get_by_role("columnheader", name="Partner C")).to_be_visible()

    # Partner B is listed but cannot be chosen, and the page says why.
    expect(page.get_by_text("not in good standing: Findings report on gpt2")).to_be_visible()
    expect(page.get_by_role("checkbox", name="Partner B", exact=False)).to_be_disabled()

    decide = page.locator("#decide")
    decide.get_by_label("Release to named partners in good standing").check()
    decide.get_by_role("checkbox", name="Partner A", exact=True).check()
    page.once("dialog", lambda dialog: dialog.accept())  # "Record this decision on gpt2-large? ..."
    decide.get_by_role("button", name="Record decision").click()
    rationale_field = page.locator(".field.has-error")
    expect(rationale_field).to_contain_text("Give the rationale for this decision in at least a sentence")
    expect(page.get_by_label("Rationale")).to_be_focused()  # the page opens at the error, not at its top
    expect(page.get_by_role("checkbox", name="Partner A", exact=True)).to_be_checked()  # what was chosen is kept
    assert not ReleaseDecision.objects.exists()
    screenshot(page, "stage-review-02-no-rationale")
    page.screenshot(path=str(SCREENSHOT_DIR / "stage-review-02-no-rationale-viewport.png"))  # what the eye sees

    page.get_by_label("Rationale").fill(RATIONALE)
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#decide").get_by_role("button", name="Record decision").click()
    decision = ReleaseDecision.objects.get()
    amendment = Agreement.objects.get(amends__isnull=False, organization=partner_a)
    expect(page.locator(".messages")).to_contain_text(f"{decision.reference} recorded")
    expect(page.locator(".messages")).to_contain_text(f"{amendment.reference} for Partner A")
    screenshot(page, "stage-review-03-decided")

    page.get_by_role("link", name="Registry page").click()
    registry = page.get_by_test_id("registry-release-decisions")
    expect(registry).to_contain_text(decision.reference)
    expect(registry).to_contain_text("Release to named partners in good standing")
    expect(registry).to_contain_text("detection study found no misuse at the 355M stage")
    no_sideways_scroll(page)
    assert _blocking(page) == []
    screenshot(page, "stage-review-04-registry")

    page.set_viewport_size(PHONE)
    page.goto(f"{live_server.url}/checkpoints/{SLUG}/stage-review/")
    no_sideways_scroll(page)
    screenshot(page, "stage-review-05-phone")
    page.goto(f"{live_server.url}/checkpoints/{SLUG}/")
    no_sideways_scroll(page)
    screenshot(page, "stage-review-06-registry-phone")
    page.set_viewport_size(DESKTOP)

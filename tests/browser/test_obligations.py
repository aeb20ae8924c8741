"""Obligations in real Chromium: a paused partner sees why and what to do, the lab lists every partner's and
extends one with a reason (an error first), and legal edits a draft's obligation terms beside its text."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import Page, expect

from agreements import services
from agreements.models import Obligation
from tests.browser.conftest import DESKTOP, PHONE, login, screenshot
from tests.builders import OBLIGATION_TERMS_CLAUSE


def fits_width(page: Page, width: int) -> None:
    scroll_width = page.evaluate("document.documentElement.scrollWidth")
    assert scroll_width <= width, f"{page.url} is {scroll_width}px wide on a {width}px screen"


@pytest.fixture
def paused(gpt2_stages, make_agreement, partner_a, partner_b, researcher_a, legal, auditor) -> Obligation:
    """Partner A's findings report on gpt2 was due ten days ago; Partner B is in good standing."""
    agreement = make_agreement(
        partner_a, ["gpt2", "gpt2-medium"], effective=timezone.now().date() - timedelta(days=100)
    )
    signatory = partner_a.memberships.get(role="signatory").user
    medium = agreement.obligations.get(kind="findings_report", checkpoint__slug="gpt2-medium")
    services.obligation_fulfil(actor=signatory, obligation=medium, fulfilment="finding F-00001")
    make_agreement(partner_b, ["gpt2"])
    return agreement.obligations.get(kind="findings_report", checkpoint__slug="gpt2")


def test_a_paused_partner_sees_what_is_overdue_and_how_to_resume(page: Page, live_server, researcher_a, paused):
    login(page, live_server, researcher_a.email)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Obligations").click()
    expect(page.get_by_role("heading", name="Obligations", exact=True)).to_be_visible()
    banner = page.get_by_test_id("access-paused")
    expect(banner).to_contain_text(f"Access paused: Findings report on gpt2 ({paused.reference}) was due on")
    for name in (
        f"Submit a finding that fulfils {paused.reference}",
        f"Submit the finding that fulfils {paused.reference}",
    ):
        link = page.get_by_role("link", name=name)  # in the banner, and the page's primary action
        expect(link).to_have_attribute("href", re.compile(rf"/findings/new/\?obligation={paused.pk}$"))
    expect(page.get_by_test_id("obligations-overdue")).to_contain_text(paused.reference)
    expect(page.get_by_test_id("obligations-fulfilled")).to_contain_text("finding F-00001")
    expect(page.get_by_text("Partner B")).to_have_count(0)
    screenshot(page, "obligations-01-partner-paused")
    page.set_viewport_size(PHONE)
    fits_width(page, PHONE["width"])
    screenshot(page, "obligations-02-partner-paused-phone")
    page.set_viewport_size(DESKTOP)

    page.get_by_role("link", name="Details of " + paused.reference).click()
    expect(page.get_by_role("heading", name=re.compile(paused.reference))).to_be_visible()
    expect(page.get_by_test_id("access-paused")).to_contain_text("access is paused")
    expect(page.get_by_role("link", name="Submit the finding that fulfils it")).to_be_visible()
    expect(page.get_by_role("button", name=re.compile("Extend"))).to_have_count(0)
    screenshot(page, "obligations-03-partner-detail")


def test_the_lab_lists_every_partners_and_extends_one_with_a_reason(page: Page, live_server, legal, paused):
    login(page, live_server, legal.email)
    page.goto(f"{live_server.url}/obligations/")
    expect(page.get_by_test_id("obligations-overdue")).to_contain_text("Partner A")
    expect(page.get_by_test_id("obligations-open")).to_contain_text("Partner B")
    screenshot(page, "obligations-04-lab-list")
    page.get_by_label("Organisation").select_option(label="Partner A")
    page.get_by_label("State").select_option(label="Overdue")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("table").get_by_text("Partner B")).to_have_count(0)
    expect(page.get_by_test_id("obligations-overdue")).to_contain_text(paused.reference)
    screenshot(page, "obligations-05-lab-list-filtered")

    page.get_by_role("link", name=paused.reference).click()
    expect(page.get_by_role("heading", name="Extend the due date")).to_be_visible()
    screenshot(page, "obligations-06-detail-extend-form")

    # No reason, and a day before the current due date: both said next to their fields.
    page.get_by_label("New due date").fill((paused.due_at - timedelta(days=1)).date().isoformat())
    page.get_by_role("button", name=f"Extend {paused.reference}").click()
    expect(page.locator(".field.has-error")).to_have_count(2)
    expect(page.get_by_text("Give a reason (at least a few words)")).to_be_visible()
    expect(page.get_by_text(re.compile(r"Choose a day after the current due date"))).to_be_visible()
    screenshot(page, "obligations-07-extension-error")
    paused.refresh_from_db()
    assert paused.extended_at is None

    new_day = (timezone.now() + timedelta(days=21)).date()
    page.get_by_label("New due date").fill(new_day.isoformat())
    page.get_by_label("Reason").fill("The partner's annotators were delayed; agreed by email on 3 March.")
    page.get_by_role("button", name=f"Extend {paused.reference}").click()
    expect(page.get_by_text(f"{paused.reference} extended to {new_day:%Y-%m-%d}")).to_be_visible()
    expect(page.get_by_test_id("extension")).to_contain_text("annotators were delayed")
    expect(page.get_by_test_id("access-paused")).to_have_count(0)
    screenshot(page, "obligations-08-extended")
    page.set_viewport_size(PHONE)
    fits_width(page, PHONE["width"])
    screenshot(page, "obligations-09-extended-phone")
    paused.refresh_from_db()
    assert paused.extension_reason.startswith("The partner's annotators")


def test_the_auditor_reads_an_obligation_and_is_offered_no_extension(page: Page, live_server, auditor, paused):
    login(page, live_server, auditor.email)
    page.goto(f"{live_server.url}/obligations/{paused.pk}/")
    expect(page.get_by_test_id("access-paused")).to_be_visible()
    expect(page.get_by_role("heading", name="Extend the due date")).to_have_count(0)
    expect(page.get_by_text("Legal or a lab admin may extend the due date")).to_be_visible()
    screenshot(page, "obligations-10-auditor-detail")
    page.get_by_role("link", name=paused.agreement.reference).first.click()
    obligations = page.get_by_test_id("agreement-obligations")
    expect(obligations).to_contain_text(paused.reference)
    expect(obligations).to_contain_text(f"Final report under {paused.agreement.reference}")
    obligations.scroll_into_view_if_needed()
    screenshot(page, "obligations-14-agreement-detail")


def test_legal_edits_the_obligation_terms_beside_the_text(page: Page, live_server, legal, published_version):
    draft = services.template_version_new_draft(actor=legal, template=published_version.template)
    login(page, live_server, legal.email)
    page.goto(f"{live_server.url}/templates/versions/{draft.pk}/")
    terms = page.get_by_test_id("obligation-terms")
    expect(terms).to_be_visible()
    terms.get_by_label("Findings report due (days)").fill("45")
    expect(page.locator("#preview")).to_contain_text("no later than 45 days after its Access")
    terms.get_by_label("Incidents reported within (hours)").fill("1000")
    page.get_by_role("button", name="Save draft").click()
    expect(page.get_by_text("Enter a whole number of hours from 1 to 720")).to_be_visible()
    screenshot(page, "obligations-11-editor-term-error")
    page.get_by_test_id("obligation-terms").get_by_label("Incidents reported within (hours)").fill("48")
    page.get_by_role("button", name="Save draft").click()
    expect(page.get_by_text("Draft v2 saved.")).to_be_visible()
    draft.refresh_from_db()
    assert (draft.findings_report_days, draft.incident_report_hours) == (45, 48)
    screenshot(page, "obligations-12-editor-terms")
    page.goto(f"{live_server.url}/templates/{draft.template.pk}/compare/?left={published_version.pk}&right={draft.pk}")
    expect(page.get_by_test_id("term-changes")).to_contain_text("Findings report due (days)")
    screenshot(page, "obligations-13-diff-terms")


def test_changing_an_obligation_term_alone_marks_the_draft_unsaved(page: Page, live_server, legal):
    v1 = services.template_version_publish(
        actor=legal,
        version=services.template_create(
            actor=legal, name="Terms only", body="# Terms\n\nFor {{ purpose }}.\n" + OBLIGATION_TERMS_CLAUSE
        ),
    )
    draft = services.template_version_new_draft(actor=legal, template=v1.template)
    login(page, live_server, legal.email)
    page.goto(f"{live_server.url}/templates/versions/{draft.pk}/")
    expect(page.get_by_text("Unsaved changes.")).to_be_hidden()
    page.get_by_label("Findings report due (days)").fill("60")
    expect(page.get_by_text("Unsaved changes.")).to_be_visible()
    page.get_by_label("Findings report due (days)").fill(str(draft.findings_report_days))
    expect(page.get_by_text("Unsaved changes.")).to_be_hidden()

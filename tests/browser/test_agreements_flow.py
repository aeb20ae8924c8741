"""The agreement pages in real Chromium: draft with live preview, publish, create, send, sign, countersign."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import date

import pytest
from django.contrib.sessions.backends.db import SessionStore
from playwright.sync_api import Browser, Page, expect

from agreements import services
from agreements.models import Agreement, Signature, TemplateVersion
from models_registry.models import Checkpoint
from tests.browser.conftest import DESKTOP, PHONE, TIMEOUT_MS, login, screenshot
from tests.builders import OBLIGATION_TERMS_CLAUSE
from tests.conftest import PASSWORD

# Partner A and its signatory exist; so do the GPT-2 checkpoints (re-created here because a
# live-server test flushes the tables the migration filled).
STAGES = [
    ("gpt2", "GPT-2 Small", "124M", 124_439_808, 12, 768, 12),
    ("gpt2-medium", "GPT-2 Medium", "355M", 354_823_168, 24, 1024, 16),
]


@pytest.fixture
def checkpoints(db) -> list[Checkpoint]:
    rows = []
    for slug, name, size, params, n_layer, n_embd, n_head in STAGES:
        checkpoint, _ = Checkpoint.objects.get_or_create(
            slug=slug,
            defaults={
                "display_name": name,
                "size_label": size,
                "parameter_count": params,
                "n_layer": n_layer,
                "n_embd": n_embd,
                "n_head": n_head,
                "released_on": "2019-02-14",
            },
        )
        rows.append(checkpoint)
    return rows


@pytest.fixture
def second_page(browser: Browser, live_server) -> Iterator[Page]:
    """Another person's browser: its own cookies and session."""
    context = browser.new_context(viewport=DESKTOP, base_url=live_server.url)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    yield page
    context.close()


def age_sign_in(page: Page, minutes: int = 10) -> None:
    """Make the browser's sign-in look `minutes` old, as if the person had been reading for a while."""
    session_key = next(c["value"] for c in page.context.cookies() if c["name"] == "sessionid")
    session = SessionStore(session_key=session_key)
    records = session["account_authentication_methods"]
    for record in records:
        record["at"] = time.time() - minutes * 60
    session["account_authentication_methods"] = records
    session.save()


def fits_width(page: Page, width: int) -> None:
    scroll_width = page.evaluate("document.documentElement.scrollWidth")
    assert scroll_width <= width, f"{page.url} is {scroll_width}px wide on a {width}px screen"


def reauthenticate_and_sign(page: Page, full_name: str, title: str, button: str, shot: str) -> None:
    expect(page.get_by_role("heading", name="1. Confirm it is you")).to_be_visible()
    expect(page.get_by_text("Signing needs a fresh confirmation")).to_be_visible()
    expect(page.get_by_role("button", name=button)).to_be_disabled()
    screenshot(page, f"{shot}-a-needs-reauthentication")

    page.get_by_role("link", name="Use your password").click()
    expect(page.get_by_role("heading", name="Confirm Access")).to_be_visible()
    page.get_by_placeholder("Password").fill(PASSWORD)
    page.get_by_role("button", name="Confirm").click()

    expect(page).to_have_url(re.compile(r"/agreements/\d+/sign/$"))
    expect(page.locator(".confirmed")).to_contain_text("Confirmed with your password")
    # The browser filled in its own time zone for the record.
    expect(page.locator("#id_time_zone")).not_to_have_value("")
    page.get_by_label(re.compile("agree to sign electronically")).check()
    page.get_by_label("Full name").fill(full_name)
    page.get_by_label("Title").fill(title)
    screenshot(page, f"{shot}-b-ready-to-sign")
    page.get_by_role("button", name=button).click()


def test_legal_drafts_publishes_sends_and_both_sides_sign(
    page, second_page, live_server, legal, partner_a, signer_a, checkpoints
):
    partner_a.address = "1 Research Park\nWilmington, DE 19801"
    partner_a.save()
    # --- Legal drafts the template, watching the live preview --------------------------------------
    login(page, live_server, legal.email)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Templates").click()
    expect(page.get_by_role("heading", name="Agreement templates")).to_be_visible()
    page.get_by_role("link", name="New template").first.click()
    expect(page).to_have_title(re.compile("New agreement template"))
    page.get_by_label("Name").fill("GPT-2 Model Sharing Agreement")

    preview = page.locator("#preview")
    expect(preview.locator("h1")).to_have_text("GPT-2 Model Sharing Agreement")
    expect(preview).to_contain_text("Example Research Institute Ltd")  # sample values in the preview
    source = page.get_by_label("Agreement text (Markdown)")
    source.press("Control+End")
    source.press_sequentially("\n\n## Contacts\n\nQuestions go to {{ lab.contact }}.", delay=5)
    # An unknown placeholder shows up in the preview with its line number, without saving.
    problems = preview.locator(".preview-problems")
    expect(problems).to_contain_text("unknown placeholder {{ lab.contact }}")
    expect(problems).to_contain_text(re.compile(r"Line \d+"))
    expect(preview.locator("h2", has_text="Contacts")).to_be_visible()
    fits_width(page, DESKTOP["width"])
    screenshot(page, "agreements-01-editor-problem")

    # Fix it with the toolbar's placeholder list instead of typing.
    for _ in "{{ lab.contact }}.":
        source.press("Backspace")
    page.locator("[data-placeholder='lab.legal_name']").click()
    source.press_sequentially(".")
    expect(preview.locator(".preview-ok")).to_contain_text("No problems")
    expect(preview).to_contain_text("Questions go to Example AI Lab, Inc..")
    screenshot(page, "agreements-02-editor-live-preview")

    page.set_viewport_size(PHONE)
    fits_width(page, PHONE["width"])
    screenshot(page, "agreements-03-editor-phone")
    page.set_viewport_size(DESKTOP)

    page.get_by_role("button", name="Create template (draft v1)").click()
    expect(page.locator(".messages")).to_contain_text("created with draft v1")
    expect(page.get_by_role("button", name="Save and publish v1")).to_be_enabled()
    screenshot(page, "agreements-03b-draft-saved")
    page.once("dialog", lambda dialog: dialog.accept())  # "Publish v1? ... it can never change."
    page.get_by_role("button", name="Save and publish v1").click()
    expect(page.get_by_test_id("version-sha256")).to_be_visible()
    version = TemplateVersion.objects.get(template__name="GPT-2 Model Sharing Agreement")
    assert version.status == TemplateVersion.Status.PUBLISHED
    assert "Questions go to {{ lab.legal_name }}." in version.body
    expect(page.get_by_test_id("version-sha256")).to_have_text(version.sha256)
    expect(page.locator("textarea")).to_have_count(0)  # published versions are read-only
    screenshot(page, "agreements-04-template-published")

    # --- Legal creates Partner A's agreement and sends it -------------------------------------------
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Agreements").click()
    page.get_by_role("link", name="New agreement").click()
    page.get_by_label("Organisation").select_option(label="Partner A")
    page.get_by_label("Template version").select_option(label="GPT-2 Model Sharing Agreement · v1 (latest)")
    page.get_by_label(re.compile("GPT-2 Small")).check()
    page.get_by_label(re.compile("GPT-2 Medium")).check()
    page.get_by_label("Daily token quota").fill("40,000")
    page.get_by_label("Research purpose").fill("Measuring how well readers tell GPT-2 samples from news articles.")
    screenshot(page, "agreements-05-new-agreement-form")
    page.get_by_role("button", name="Create draft").click()

    expect(page.locator(".page-head h1")).to_contain_text("MPA-")
    expect(page.locator(".page-head .badge")).to_have_text("Draft")
    document = page.locator(".document-card .agreement-document")
    expect(document).to_contain_text("Partner A Research Institute")
    expect(document).to_contain_text("GPT-2 Medium")
    expect(document).to_contain_text("40,000")
    expect(document).to_contain_text("1 Research Park, Wilmington, DE 19801")
    expect(page.get_by_test_id("missing-values")).to_have_count(0)
    screenshot(page, "agreements-06-draft-preview")

    page.get_by_role("button", name="Send for signature").click()
    expect(page.locator(".page-head .badge")).to_have_text("Out for signature")
    agreement = Agreement.objects.get()
    expect(page.get_by_test_id("document-sha256")).to_have_text(agreement.document_sha256)
    screenshot(page, "agreements-07-sent")

    # --- The signatory confirms it is them and signs ------------------------------------------------
    login(second_page, live_server, signer_a.email)
    age_sign_in(second_page)
    waiting = second_page.locator(".card", has=second_page.get_by_role("heading", name="Waiting for your signature"))
    expect(waiting).to_contain_text(agreement.reference)
    screenshot(second_page, "agreements-08-signatory-home")
    waiting.get_by_role("link", name="Review and sign").click()
    expect(second_page.get_by_test_id("document-sha256")).to_have_text(agreement.document_sha256)
    expect(second_page.locator("#consent-text")).to_contain_text("I agree to sign this agreement electronically")
    reauthenticate_and_sign(
        second_page, "Sofia Signer", "Director of Research", "Sign for Partner A", "agreements-09-sign"
    )
    expect(second_page.locator(".page-head .badge")).to_have_text("Signed by partner")
    expect(second_page.locator(".messages")).to_contain_text("You signed")
    screenshot(second_page, "agreements-10-partner-signed")

    second_page.set_viewport_size(PHONE)
    second_page.goto(f"{live_server.url}/agreements/{agreement.pk}/")
    fits_width(second_page, PHONE["width"])
    screenshot(second_page, "agreements-11-partner-signed-phone")

    # --- Legal countersigns the same way; the agreement is active -----------------------------------
    age_sign_in(page)
    page.goto(f"{live_server.url}/")
    countersign = page.locator(".card", has=page.get_by_role("heading", name="Agreements", exact=True))
    expect(countersign).to_contain_text("Waiting for your countersignature")
    screenshot(page, "agreements-12-legal-home")
    countersign.get_by_role("link", name="Countersign").click()
    reauthenticate_and_sign(
        page, "Lena Legal", "General Counsel", "Countersign for the lab", "agreements-13-countersign"
    )
    expect(page.locator(".page-head .badge")).to_have_text("Active")
    expect(page.locator(".signature-record")).to_have_count(2)
    fits_width(page, DESKTOP["width"])
    screenshot(page, "agreements-14-active")

    agreement.refresh_from_db()
    assert agreement.status == Agreement.Status.ACTIVE
    signatures = {s.side: s for s in Signature.objects.filter(agreement=agreement)}
    assert signatures["partner"].reauth_method == "password" and signatures["lab"].reauth_method == "password"
    assert signatures["partner"].document_sha256 == agreement.document_sha256
    assert signatures["partner"].time_zone  # what the browser reported
    assert "Chrome" in signatures["lab"].user_agent


def test_versions_diff_lists_and_decline_pages_work_on_desktop_and_phone(
    page, second_page, live_server, legal, partner_a, signer_a, partner_b, checkpoints
):
    body = (
        "# Short agreement\n\nBetween {{ lab.legal_name }} and {{ organization.legal_name }}.\n\n"
        "The licence is non-exclusive.\n\n{{ checkpoints }}\n\n{{ signature.partner }}\n"
    ) + OBLIGATION_TERMS_CLAUSE
    v1 = services.template_version_publish(
        actor=legal, version=services.template_create(actor=legal, name="Short agreement", body=body)
    )
    v2 = services.template_version_new_draft(actor=legal, template=v1.template)
    services.template_version_save(
        actor=legal, version=v2, body=body.replace("non-exclusive", "exclusive") + "\nGoverned by English law.\n"
    )
    sent = services.agreement_send(
        actor=legal,
        agreement=services.agreement_create(
            actor=legal,
            organization=partner_a,
            terms=services.AgreementTerms(
                template_version=v1,
                checkpoints=checkpoints,
                effective_date=date.today(),
                term_months=12,
                daily_token_quota=50_000,
                purpose="Studying the detectability of synthetic text in news corpora.",
            ),
        ),
    )

    login(page, live_server, legal.email)
    page.goto(f"{live_server.url}/templates/")
    expect(page.get_by_role("link", name="v2 · draft")).to_be_visible()
    screenshot(page, "agreements-20-template-list")
    page.get_by_role("link", name="Short agreement").click()
    expect(page.get_by_role("link", name="Edit draft v2")).to_be_visible()
    screenshot(page, "agreements-21-template-detail")
    page.get_by_role("button", name="Compare side by side").click()
    expect(page.locator("tr.diff-replace del")).to_have_text("non-")
    expect(page.locator("tr.diff-insert ins", has_text="Governed")).to_have_text("Governed by English law.")
    screenshot(page, "agreements-22-diff")
    page.get_by_role("link", name="Jump to the first change").click()
    expect(page).to_have_url(re.compile(r"#change-1$"))
    page.get_by_role("link", name="Show the whole document").click()
    expect(page.get_by_role("link", name="Show only the changes")).to_be_visible()
    page.set_viewport_size(PHONE)
    fits_width(page, PHONE["width"])
    screenshot(page, "agreements-23-diff-phone")
    page.set_viewport_size(DESKTOP)

    page.goto(f"{live_server.url}/agreements/")
    page.get_by_label("Status").select_option(label="Out for signature")
    page.get_by_role("button", name="Filter").click()
    expect(page.get_by_role("link", name=sent.reference)).to_be_visible()
    screenshot(page, "agreements-24-list-lab")

    login(second_page, live_server, signer_a.email)
    second_page.set_viewport_size(PHONE)
    second_page.goto(f"{live_server.url}/agreements/")
    expect(second_page.get_by_role("link", name=sent.reference)).to_be_visible()
    expect(second_page.get_by_label("Organisation")).to_have_count(0)  # partners see only their own
    fits_width(second_page, PHONE["width"])
    screenshot(second_page, "agreements-25-list-partner-phone")
    second_page.goto(f"{live_server.url}/agreements/{sent.pk}/sign/")
    fits_width(second_page, PHONE["width"])
    screenshot(second_page, "agreements-26-sign-phone")
    second_page.get_by_role("link", name="Decline to sign").click()
    second_page.get_by_role("button", name="Decline the agreement").click()
    expect(second_page.locator(".field.has-error")).to_contain_text("Give a reason")
    screenshot(second_page, "agreements-27-decline-needs-reason")
    second_page.get_by_label("Why are you declining?").fill("The purpose is narrower than our study needs.")
    second_page.get_by_role("button", name="Decline the agreement").click()
    expect(second_page.locator(".page-head .badge")).to_have_text("Declined")
    fits_width(second_page, PHONE["width"])
    screenshot(second_page, "agreements-28-declined-phone")


def test_publishing_publishes_the_text_on_screen_after_asking_and_retiring_asks_first(page, live_server, legal):
    v1 = services.template_version_publish(
        actor=legal,
        version=services.template_create(
            actor=legal, name="Short agreement", body="# Short\n\nFor {{ purpose }}.\n" + OBLIGATION_TERMS_CLAUSE
        ),
    )
    draft = services.template_version_new_draft(actor=legal, template=v1.template)
    login(page, live_server, legal.email)
    page.goto(f"{live_server.url}/templates/versions/{draft.pk}/")
    source = page.get_by_label("Agreement text (Markdown)")
    source.press("Control+End")
    source.press_sequentially("\nGoverned by English law.\n")
    expect(page.get_by_text("Unsaved changes.")).to_be_visible()

    # The sticky Save bar never covers the text box, so the line being typed stays in sight.
    box, bar = source.bounding_box(), page.locator(".sticky-actions").bounding_box()
    assert box and bar and box["y"] + box["height"] <= bar["y"], (box, bar)
    screenshot(page, "agreements-30-editor-unsaved")

    page.once("dialog", lambda dialog: dialog.dismiss())  # changed their mind: nothing happens
    page.get_by_role("button", name="Save and publish v2").click()
    expect(page.get_by_text("Unsaved changes.")).to_be_visible()
    draft.refresh_from_db()
    assert draft.status == TemplateVersion.Status.DRAFT and "English law" not in draft.body

    questions = []
    page.once("dialog", lambda dialog: (questions.append(dialog.message), dialog.accept()))
    page.get_by_role("button", name="Save and publish v2").click()
    expect(page.get_by_test_id("version-sha256")).to_be_visible()
    assert "Publish v2?" in questions[0] and "never change" in questions[0]
    draft.refresh_from_db()
    assert draft.status == TemplateVersion.Status.PUBLISHED and "Governed by English law." in draft.body
    expect(page.get_by_test_id("version-sha256")).to_have_text(draft.sha256)

    page.once("dialog", lambda dialog: dialog.dismiss())
    page.get_by_role("button", name="Retire v2").click()
    expect(page.get_by_role("button", name="Retire v2")).to_be_visible()
    draft.refresh_from_db()
    assert draft.status == TemplateVersion.Status.PUBLISHED, "a dismissed confirmation retires nothing"

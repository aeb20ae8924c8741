"""Accessibility in real Chromium: axe-core on every page each persona can reach, and signing by keyboard.

Each persona signs in and the test follows every link it is shown, from the home page and the
navigation down to the detail pages, plus the pages a link never leads to (the 403 and 404 pages,
the signed-out pages). axe-core must find no serious or critical violation on any of them.
"""

from __future__ import annotations

import re
from collections import Counter
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
from axe_playwright_python.sync_playwright import Axe
from django.utils import timezone
from playwright.sync_api import Browser, Error, Locator, Page, expect

from accounts import services as accounts
from accounts.models import Organization
from agreements import services
from agreements.models import AccessGrant, Agreement
from inference.models import GenerationJob, Sample
from models_registry.models import Checkpoint
from records import services as records
from records.models import SealedRecord
from tests.browser.conftest import DESKTOP, TIMEOUT_MS, login, screenshot
from tests.browser.test_agreements_flow import age_sign_in
from tests.builders import DEFAULT_TEMPLATE, draft_agreement, make_job, sign
from tests.conftest import PASSWORD

BLOCKING = {"serious", "critical"}
# Links that download a file, stream a fragment for htmx, or leave the product's own pages.
NOT_PAGES = re.compile(
    r"^/(admin|api|static|media)/|/(download|pdf|live|status|logout)/$|^/records/agreements/\d+/$|^/healthz"
)
# A list may link to many rows of one kind; a few of each kind show every state the data has.
PER_KIND = 2
PAGES_PER_PERSONA = 60
PERSONAS = [
    "lab_admin",
    "legal",
    "auditor",
    "admin_a",
    "signer_a",
    "researcher_a",
    "admin_b",
    "signer_b",
    "researcher_b",
]
# A page each persona is refused (403): partners never see the audit log; lab staff never queue jobs.
FORBIDDEN = {Organization.Kind.LAB: "/jobs/new/", Organization.Kind.PARTNER: "/audit/"}

axe = Axe()


@pytest.fixture
def a_busy_lab(
    gpt2_stages,
    legal,
    auditor,
    lab_admin,
    partner_a,
    admin_a,
    signer_a,
    researcher_a,
    partner_b,
    admin_b,
    signer_b,
    researcher_b,
):
    """Partner A with an active agreement (sealed), one waiting for its signature, one waiting for the
    lab's countersignature, a draft; a template with a published and a draft version; jobs with
    samples; access requests in each state; an API token. Partner B has nothing yet."""
    small = list(Checkpoint.objects.filter(slug__in=["gpt2", "gpt2-medium"]).order_by("parameter_count"))
    v1 = services.template_version_publish(
        actor=legal,
        version=services.template_create(actor=legal, name="GPT-2 Model Sharing Agreement", body=DEFAULT_TEMPLATE),
    )
    v2 = services.template_version_new_draft(actor=legal, template=v1.template)
    services.template_version_save(
        actor=legal, version=v2, body=DEFAULT_TEMPLATE + "\n\n## Publication\n\nFindings are shared first.\n"
    )

    active = services.agreement_send(actor=legal, agreement=draft_agreement(legal, partner_a, v1, small))
    sign(signer_a, active)
    active.refresh_from_db()
    sign(legal, active)
    active.refresh_from_db()
    assert active.status == Agreement.Status.ACTIVE
    sent = services.agreement_send(actor=legal, agreement=draft_agreement(legal, partner_a, v1, small[:1]))
    partner_signed = services.agreement_send(actor=legal, agreement=draft_agreement(legal, partner_a, v1, small[1:]))
    sign(signer_a, partner_signed)
    draft_agreement(legal, partner_a, v1, small, purpose="Comparing detectors of synthetic text.")

    grant = AccessGrant.objects.filter(agreement=active).order_by("pk").first()
    done = make_job(grant, researcher_a, status=GenerationJob.Status.SUCCEEDED, tokens_generated=40)
    # Long enough that the prompt scrolls in its own box.
    done.prompt = "In a shocking finding, scientists discovered a herd of unicorns in a remote valley.\n" * 30
    done.save()
    Sample.objects.create(
        job=done, index=0, text="The unicorns spoke perfect English. " * 8, token_count=40, sha256="0" * 64
    )
    make_job(grant, researcher_a)

    large = list(Checkpoint.objects.filter(slug="gpt2-large"))
    pending = services.access_request_create(
        actor=researcher_a, checkpoints=large, purpose="Scaling study of detector accuracy on larger models."
    )
    xl = list(Checkpoint.objects.filter(slug="gpt2-xl"))
    rejected = services.access_request_create(
        actor=admin_a, checkpoints=xl, purpose="Scaling study on the largest model."
    )
    services.access_request_reject(actor=legal, access_request=rejected, reason="The 1.5B model is not released yet.")
    records.record_export_request(actor=auditor, kind=SealedRecord.Kind.AUDIT_LOG_CSV)
    accounts.api_token_create(actor=None, user=researcher_a)
    accounts.invitation_create(actor=admin_a, organization=partner_a, email="new@partner-a.example", role="researcher")
    return {"active": active, "sent": sent, "partner_signed": partner_signed, "pending": pending}


def _blocking(page: Page) -> list[str]:
    results = axe.run(page)
    problems = []
    for violation in results.response["violations"]:
        if violation["impact"] not in BLOCKING:
            continue
        targets = "; ".join(" ".join(node["target"]) for node in violation["nodes"][:5])
        path = urlsplit(page.url).path + (f"?{urlsplit(page.url).query}" if urlsplit(page.url).query else "")
        problems.append(f"{path}: {violation['id']} ({violation['impact']}, {len(violation['nodes'])}x): {targets}")
    return problems


def _kind(path: str) -> str:
    return re.sub(r"\d+", "N", path)


def _links(page: Page) -> list[str]:
    hrefs = page.eval_on_selector_all("a[href]", "links => links.map(a => a.href)")
    found = []
    for href in hrefs:
        url = urlsplit(href)
        if url.netloc != urlsplit(page.url).netloc or NOT_PAGES.search(url.path):
            continue
        # Filters and sorting reuse the page they are on; the template comparison needs its versions.
        found.append(url.path + (f"?{url.query}" if url.query and "/compare/" in url.path else ""))
    return found


def _visit_all(page: Page, live_server, seeds: list[str]) -> tuple[list[str], list[str]]:
    """Visits the seeds and every page linked from them, breadth first; returns (visited, problems)."""
    queue, queued, kinds = list(seeds), set(seeds), Counter()
    visited, problems = [], []
    while queue and len(visited) < PAGES_PER_PERSONA:
        path = queue.pop(0)
        try:
            page.goto(f"{live_server.url}{path}")
        except Error as exc:  # a link that turned out to be a download
            if "Download is starting" in str(exc) or "ERR_ABORTED" in str(exc):
                continue
            raise
        visited.append(path)
        problems += _blocking(page)
        for link in _links(page):
            if link in queued or kinds[_kind(link)] >= PER_KIND:
                continue
            queued.add(link)
            kinds[_kind(link)] += 1
            queue.append(link)
    return visited, problems


def test_no_page_has_a_serious_or_critical_accessibility_violation_for_any_persona(
    browser: Browser, live_server, request, a_busy_lab
):
    everyone: dict[str, list[str]] = {}
    problems: dict[str, list[str]] = {}  # violation on a page -> the personas who met it
    active = a_busy_lab["active"]
    for persona in [*PERSONAS, "signed out"]:
        context = browser.new_context(viewport=DESKTOP, base_url=live_server.url)
        context.set_default_timeout(TIMEOUT_MS)
        page = context.new_page()
        if persona == "signed out":
            seeds = ["/accounts/login/", "/no-such-page/"]
        else:
            user = request.getfixturevalue(persona)
            login(page, live_server, user.email)
            seeds = ["/", FORBIDDEN[user.organization.kind], "/no-such-page/"]
            if user.organization == active.organization or user.organization.kind == Organization.Kind.LAB:
                seeds.append(f"/agreements/{active.pk}/")  # signed by both sides: the fullest detail page
        everyone[persona], found = _visit_all(page, live_server, seeds)
        for problem in found:
            problems.setdefault(problem, []).append(persona)
        context.close()

    total = sum(len(pages) for pages in everyone.values())
    report = [f"{problem} [{', '.join(personas)}]" for problem, personas in problems.items()]
    assert not report, f"{len(report)} serious or critical violations on {total} pages:\n" + "\n".join(report)
    # The walk reached the pages this test is about, not just the home pages.
    expected = {
        "legal": ["/templates/N/compare/?left=N&right=N", "/templates/versions/N/", "/agreements/N/sign/"],
        "signer_a": ["/agreements/N/sign/", "/agreements/N/decline/", "/access-requests/N/"],
        "researcher_a": ["/jobs/N/", "/jobs/new/", "/account/tokens/"],
        "auditor": ["/audit/", "/audit/verify/", "/records/", "/records/N/", "/verify/"],
        "lab_admin": ["/organizations/N/", "/checkpoints/gptN/", "/accounts/password/change/"],
    }
    for persona, kinds in expected.items():
        missed = set(kinds) - {_kind(path) for path in everyone[persona]}
        assert not missed, f"{persona} never reached {missed}; visited {everyone[persona]}"


def _tab_to(page: Page, target: Locator, limit: int = 80) -> None:
    """Press Tab until `target` has the keyboard focus, as a person using only the keyboard would."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        if target.evaluate("element => element === document.activeElement"):
            return
    raise AssertionError(f"Tab never reached {target}")


def test_a_signatory_signs_with_the_keyboard_alone(page: Page, live_server, signer_a, a_busy_lab):
    sent = a_busy_lab["sent"]
    login(page, live_server, signer_a.email)
    age_sign_in(page)
    page.goto(f"{live_server.url}/")

    waiting = page.locator(".card", has=page.get_by_role("heading", name="Waiting for your signature"))
    _tab_to(page, waiting.get_by_role("link", name="Review and sign").first)
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(rf"/agreements/{sent.pk}/sign/$"))
    expect(page.get_by_role("heading", name="1. Confirm it is you")).to_be_visible()
    assert not _blocking(page), _blocking(page)
    # The document scrolls in its own pane; the keyboard reaches it and scrolls it.
    _tab_to(page, page.get_by_role("region", name="Agreement text", exact=True))
    page.keyboard.press("PageDown")
    screenshot(page, "a11y-sign-keyboard-a-document-focused")

    _tab_to(page, page.get_by_role("link", name="Use your password"))
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Confirm Access")).to_be_visible()
    _tab_to(page, page.get_by_placeholder("Password"))
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")

    expect(page).to_have_url(re.compile(rf"/agreements/{sent.pk}/sign/$"))
    expect(page.locator(".confirmed")).to_contain_text("Confirmed with your password")
    consent = page.get_by_label(re.compile("agree to sign electronically"))
    _tab_to(page, consent)
    page.keyboard.press("Space")
    expect(consent).to_be_checked()
    _tab_to(page, page.get_by_label("Full name"))
    page.keyboard.press("Control+A")
    page.keyboard.type("Sofia Signer")
    _tab_to(page, page.get_by_label("Title"))
    page.keyboard.type("Director of Research")
    button = page.get_by_role("button", name="Sign for Partner A")
    _tab_to(page, button)
    # The focused control is visibly marked.
    outline = button.evaluate("b => getComputedStyle(b).outlineStyle")
    assert outline != "none", "the focused button shows no focus ring"
    screenshot(page, "a11y-sign-keyboard-b-ready")
    page.keyboard.press("Enter")

    expect(page.locator(".page-head .badge")).to_have_text("Signed by partner")
    sent.refresh_from_db()
    assert sent.status == Agreement.Status.PARTNER_SIGNED
    assert sent.signatures.get().signer == signer_a
    assert timezone.now() - sent.signatures.get().signed_at < timedelta(minutes=1)

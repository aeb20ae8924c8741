"""Each persona signs in through the real login form and finds its own home page and navigation."""

from __future__ import annotations

import re

import pytest
from django.core import mail
from playwright.sync_api import Page, expect

from accounts import services
from accounts.models import Invitation, Role, User
from tests.browser.conftest import PHONE, login, screenshot
from tests.conftest import PASSWORD

# Navigation grows as features land, so each persona lists the places it must see and those that
# would leak another role's work to it, rather than the whole menu.
LAB_ADMIN_NAV = (["Home", "Organisations", "Templates", "Audit log"], ["My organisation"])
LEGAL_NAV = (["Home", "Organisations", "Templates", "Audit log"], ["My organisation"])
AUDITOR_NAV = (["Home", "Organisations", "Audit log"], ["My organisation", "Templates"])
PARTNER_NAV = (["Home", "My organisation"], ["Organisations", "Templates", "Audit log"])

# persona fixture: (first name in the greeting, role badge, text only that role's home shows, (nav shown, nav hidden))
PERSONAS = {
    "lab_admin": ("Ada", "Lab admin", "You run the organisations, users and checkpoints", LAB_ADMIN_NAV),
    "legal": ("Lena", "Legal", "You draft, send and countersign model-sharing agreements", LEGAL_NAV),
    "auditor": ("Otto", "Auditor", "You can read everything and change nothing", AUDITOR_NAV),
    "admin_a": ("Amir", "Partner admin", "You manage your organisation's people and access", PARTNER_NAV),
    "signer_a": ("Sofia", "Partner signatory", "Waiting for your signature", PARTNER_NAV),
    "researcher_a": ("Ravi", "Partner researcher", "You request access to checkpoints", PARTNER_NAV),
}


def nav_labels(page: Page) -> list[str]:
    return [text.strip() for text in page.get_by_role("navigation", name="Main").get_by_role("link").all_inner_texts()]


def assert_nav(page: Page, nav: tuple[list[str], list[str]]) -> None:
    shown, hidden = nav
    labels = nav_labels(page)
    assert labels[0] == "Home"
    assert [label for label in labels if label in shown] == shown, labels
    assert not set(labels) & set(hidden), labels


def assert_fits_width(page: Page, width: int) -> None:
    # A page wider than the screen makes people scroll sideways to find the rest of it.
    scroll_width = page.evaluate("document.documentElement.scrollWidth")
    assert scroll_width <= width, f"page is {scroll_width}px wide on a {width}px screen"


@pytest.mark.parametrize("persona", list(PERSONAS))
def test_each_persona_signs_in_and_sees_its_own_home_page(page, live_server, request, persona):
    user = request.getfixturevalue(persona)
    first_name, role_label, role_text, nav = PERSONAS[persona]

    login(page, live_server, user.email)

    expect(page.get_by_role("heading", level=1)).to_have_text(f"Welcome, {first_name}")
    expect(page.locator("main")).to_contain_text(role_text)
    expect(page.locator(".userbox .role")).to_have_text(role_label)
    expect(page.locator(".userbox")).to_contain_text(user.full_name)
    assert_nav(page, nav)
    expect(page.get_by_role("link", name="Home", exact=True)).to_have_attribute("aria-current", "page")
    assert_fits_width(page, 1280)
    screenshot(page, f"home-{persona}")


def test_a_partner_home_page_fits_a_phone_screen(page, live_server, signer_a):
    login(page, live_server, signer_a.email)
    page.set_viewport_size(PHONE)

    expect(page.get_by_role("heading", level=1)).to_have_text("Welcome, Sofia")
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()
    # The user's name is hidden on small screens to make room; the role badge stays.
    expect(page.locator(".userbox .role")).to_be_visible()
    screenshot(page, "home-signer_a-phone")
    assert_fits_width(page, PHONE["width"])


def test_the_login_page_is_styled_and_asks_for_email_and_password(page, live_server):
    page.goto(f"{live_server.url}/accounts/login/")

    expect(page).to_have_title(re.compile("Sign in", re.IGNORECASE))
    expect(page.get_by_label("Email")).to_be_visible()
    expect(page.get_by_label(re.compile(r"^Password:?$"))).to_be_visible()
    # The stylesheet loaded: the sign-in button has the brand colour, not the browser's grey.
    background = page.get_by_role("button", name="Sign in").evaluate("b => getComputedStyle(b).backgroundColor")
    assert background == "rgb(47, 79, 216)"
    screenshot(page, "login")


def test_a_wrong_password_shows_an_error_on_the_login_page(page, live_server, lab_admin):
    page.goto(f"{live_server.url}/accounts/login/")
    page.get_by_label("Email").fill(lab_admin.email)
    page.get_by_label(re.compile(r"^Password:?$")).fill("not the password")
    page.get_by_role("button", name="Sign in").click()

    expect(page).to_have_url(f"{live_server.url}/accounts/login/")
    error = page.locator("form").get_by_role("alert")
    expect(error).to_be_visible()
    expect(error).to_contain_text("password you specified are not correct")
    expect(page.get_by_label("Email")).to_have_value(lab_admin.email)
    expect(page.get_by_role("button", name="Sign out")).to_have_count(0)
    screenshot(page, "login-wrong-password")


def test_lab_admin_creates_an_organisation_and_invites_its_first_user(page, live_server, settings, lab_admin):
    settings.SITE_URL = live_server.url
    login(page, live_server, lab_admin.email)

    page.get_by_role("link", name="New organisation").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("New organisation")
    page.get_by_label(re.compile(r"^Name:?$")).fill("Partner C")
    page.get_by_label("Legal name").fill("Partner C Research Cooperative")
    page.get_by_label("Jurisdiction").fill("Netherlands")
    page.get_by_label("Contact email").fill("office@partner-c.example")
    screenshot(page, "organisation-new")
    page.get_by_role("button", name="Save").click()

    expect(page.locator(".messages")).to_contain_text("Partner C created. Invite its first users below.")
    expect(page.get_by_role("heading", level=1)).to_contain_text("Partner C")
    expect(page.locator("main")).to_contain_text("Partner C Research Cooperative · Netherlands")
    expect(page.get_by_text("No members yet. Invite the first one.")).to_be_visible()

    page.get_by_label("Email").fill("Carla@Partner-C.example")
    page.get_by_label("Role").select_option(label="Partner signatory")
    page.get_by_role("button", name="Send invitation").click()

    expect(page.locator(".messages")).to_contain_text("Invitation emailed to carla@partner-c.example.")
    pending = page.locator(".card", has=page.get_by_role("heading", name="Pending invitations"))
    row = pending.get_by_role("row", name=re.compile("carla@partner-c.example"))
    expect(row).to_contain_text("Partner signatory")
    expect(row).to_contain_text(lab_admin.email)
    expect(row.get_by_role("button", name="Withdraw")).to_be_visible()
    screenshot(page, "organisation-created-invitation-pending")

    assert [m.to for m in mail.outbox] == [["carla@partner-c.example"]]
    assert "/invitations/accept/" in mail.outbox[0].body
    assert Invitation.objects.get(email="carla@partner-c.example").status == "pending"


def test_an_invited_person_opens_the_emailed_link_and_creates_their_account(page, live_server, settings, admin_a):
    settings.SITE_URL = live_server.url
    services.invitation_create(
        actor=admin_a, organization=admin_a.organization, email="rina@partner-a.example", role=Role.RESEARCHER
    )
    (email,) = mail.outbox
    assert email.to == ["rina@partner-a.example"]
    link = re.search(r"^(http\S+/invitations/accept/\S+/)$", email.body, re.MULTILINE).group(1)

    page.goto(link)
    expect(page.get_by_role("heading", level=1)).to_have_text("Join Partner A")
    expect(page.locator("main")).to_contain_text("Partner researcher")
    expect(page.locator("main")).to_contain_text("rina@partner-a.example")
    page.get_by_label("Full name").fill("Rina Researcher")
    page.get_by_label(re.compile(r"^Password:?$")).fill(PASSWORD)
    page.get_by_label("Password (again)").fill(PASSWORD)
    screenshot(page, "invitation-accept")
    page.get_by_role("button", name="Create my account").click()

    expect(page).to_have_url(f"{live_server.url}/")
    expect(page.locator(".messages")).to_contain_text("Welcome to ModelPact, Rina.")
    expect(page.get_by_role("heading", level=1)).to_have_text("Welcome, Rina")
    expect(page.locator(".userbox .role")).to_have_text("Partner researcher")
    assert_nav(page, PARTNER_NAV)
    screenshot(page, "invitation-accepted-home")
    assert User.objects.get(email="rina@partner-a.example").membership.organization == admin_a.organization

    # The link works once: a second visit, even signed out, explains it was used.
    page.get_by_role("button", name="Sign out").click()
    page.goto(link)
    expect(page.get_by_role("heading", level=1)).to_have_text("Invitation not usable")
    expect(page.locator("main")).to_contain_text("already been used")


def test_signing_out_returns_to_the_login_page_and_closes_the_session(page, live_server, researcher_a):
    login(page, live_server, researcher_a.email)

    page.get_by_role("button", name="Sign out").click()

    expect(page).to_have_url(f"{live_server.url}/accounts/login/")
    expect(page.locator(".messages")).to_contain_text("You have signed out.")
    expect(page.get_by_role("navigation", name="Main")).to_have_count(0)
    screenshot(page, "signed-out")
    page.goto(f"{live_server.url}/")
    expect(page).to_have_url(re.compile(r"/accounts/login/\?next=/$"))


def test_a_partner_admin_manages_their_team_on_a_phone(page, live_server, admin_a, signer_a, researcher_a):
    login(page, live_server, admin_a.email)
    page.set_viewport_size(PHONE)

    page.get_by_role("link", name="My organisation").click()

    expect(page.get_by_role("heading", level=1)).to_contain_text("Partner A")
    expect(page.get_by_role("row", name=re.compile(signer_a.email))).to_contain_text("Partner signatory")
    screenshot(page, "my-organisation-admin_a-phone")
    assert_fits_width(page, PHONE["width"])

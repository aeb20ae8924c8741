"""Obligation pages for every persona: partners see their own (and a banner while paused), lab staff every
partner's with filters, legal and lab admins extend with a reason, auditors read, outsiders get 404."""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine
from django.template.loader import render_to_string
from django.urls import reverse

from agreements import selectors
from agreements.models import Obligation

pytestmark = pytest.mark.django_db

LAB = ["lab_admin", "legal", "auditor"]
PARTNER_A = ["admin_a", "signer_a", "researcher_a"]
PARTNER_B = ["admin_b", "signer_b", "researcher_b"]


def text_of(response) -> str:
    return response.content.decode()


@pytest.fixture
def report(active) -> Obligation:
    return Obligation.objects.get(agreement=active, kind="findings_report", checkpoint__slug="gpt2")


@pytest.fixture
def other_report(make_agreement, partner_b) -> Obligation:
    agreement = make_agreement(partner_b, ["gpt2"])
    return Obligation.objects.get(agreement=agreement, kind="findings_report")


def extend(client, obligation, **data):
    return client.post(reverse("obligation_extend", args=[obligation.pk]), data)


# --- Who sees what ---------------------------------------------------------------------------------------


def test_anonymous_visitors_are_sent_to_sign_in(client, report):
    for url in (reverse("obligation_list"), reverse("obligation_detail", args=[report.pk])):
        response = client.get(url)
        assert response.status_code == 302 and "/accounts/login/" in response["Location"]


@pytest.mark.parametrize("persona", PARTNER_A)
def test_partners_see_their_own_obligations_only(client, request, everyone, persona, report, other_report):
    client.force_login(request.getfixturevalue(persona))
    page = text_of(client.get(reverse("obligation_list")))
    assert report.reference in page and "Findings report on gpt2-medium" in page
    assert other_report.reference not in page and "Partner B" not in page
    assert 'name="organization"' not in page  # partners only ever see their own
    assert client.get(reverse("obligation_detail", args=[report.pk])).status_code == 200


@pytest.mark.parametrize("persona", PARTNER_B)
def test_an_outsider_gets_404_for_another_organisations_obligation(client, request, everyone, persona, report):
    client.force_login(request.getfixturevalue(persona))
    assert client.get(reverse("obligation_detail", args=[report.pk])).status_code == 404
    assert extend(client, report, due_on="2030-01-01", reason="Please extend.").status_code == 404
    assert report.reference not in text_of(client.get(reverse("obligation_list")))


@pytest.mark.parametrize("persona", LAB)
def test_lab_staff_see_every_partners_obligations(client, request, everyone, persona, report, other_report):
    client.force_login(request.getfixturevalue(persona))
    page = text_of(client.get(reverse("obligation_list")))
    assert report.reference in page and other_report.reference in page
    assert "Partner A" in page and "Partner B" in page
    detail = text_of(client.get(reverse("obligation_detail", args=[report.pk])))
    assert (f'action="{reverse("obligation_extend", args=[report.pk])}"' in detail) == (persona != "auditor")


def test_the_lab_filters_by_organisation_kind_and_state(client, legal, report, other_report):
    client.force_login(legal)
    url = reverse("obligation_list")
    page = text_of(client.get(url, {"organization": "Partner B"}))
    assert other_report.reference in page and report.reference not in page
    page = text_of(client.get(url, {"kind": "final_report"}))
    assert "Final report under" in page and report.reference not in page
    with time_machine.travel(report.due_at + timedelta(days=1), tick=False):
        client.force_login(legal)
        page = text_of(client.get(url, {"state": "overdue"}))
    assert report.reference in page and "Final report under" not in page
    response = client.get(url, {"state": "late", "organization": "Nobody"})
    assert response.status_code == 400
    page = text_of(response)
    assert "Choose a state from the list." in page and "Choose an organisation from the list." in page


def test_the_list_groups_by_state_what_needs_doing_first(client, signer_a, active, report):
    Obligation.objects.filter(pk=report.pk).update(fulfilled_at=report.created_at, fulfilment="finding F-1")
    with time_machine.travel(report.due_at - timedelta(days=3), tick=False):
        client.force_login(signer_a)
        page = text_of(client.get(reverse("obligation_list")))
    due_soon, open_, fulfilled = (
        page.index('data-testid="obligations-due_soon"'),
        page.index('data-testid="obligations-open"'),
        page.index('data-testid="obligations-fulfilled"'),
    )
    assert due_soon < open_ < fulfilled
    assert "Due within 14 days" in page and '<span class="badge warn">' in page and "finding F-1" in page


# --- The pause banner --------------------------------------------------------------------------------


def test_a_paused_partner_is_told_what_is_overdue_and_how_to_resume(client, researcher_a, active, report):
    with time_machine.travel(report.due_at + timedelta(days=2), tick=False):
        client.force_login(researcher_a)
        page = text_of(client.get(reverse("obligation_list")))
        detail = text_of(client.get(reverse("obligation_detail", args=[report.pk])))
    assert 'data-testid="access-paused"' in page
    assert f"Access paused: {report.description} ({report.reference}) was due on" in page
    assert report.due_at.strftime("%-d %b %Y") in page
    assert f'href="/findings/new/?obligation={report.pk}"' in page
    assert "The pause does not extend the term" in page
    assert "access is paused" in detail and f'href="/findings/new/?obligation={report.pk}"' in detail


def test_no_banner_while_nothing_is_overdue(client, researcher_a, report):
    client.force_login(researcher_a)
    assert 'data-testid="access-paused"' not in text_of(client.get(reverse("obligation_list")))


# --- Extending from the page ---------------------------------------------------------------------------


@pytest.mark.parametrize("persona", ["auditor", "researcher_a", "signer_a", "admin_a"])
def test_auditors_and_partners_cannot_extend(client, request, everyone, persona, report):
    client.force_login(request.getfixturevalue(persona))
    response = extend(client, report, due_on=(report.due_at + timedelta(days=10)).date(), reason="Please extend.")
    assert response.status_code == 403
    report.refresh_from_db()
    assert report.extended_at is None


def test_legal_extends_from_the_detail_page(client, legal, report):
    client.force_login(legal)
    new_day = (report.due_at + timedelta(days=21)).date()
    response = extend(client, report, due_on=new_day.isoformat(), reason="The partner's dataset arrived late.")
    assert response.status_code == 302 and response["Location"] == reverse("obligation_detail", args=[report.pk])
    page = text_of(client.get(response["Location"]))
    assert f"{report.reference} extended to {new_day:%Y-%m-%d}" in page
    assert "Reason: The partner&#x27;s dataset arrived late." in page
    assert f"originally {report.original_due_at:%-d %b %Y}" in page


@pytest.mark.parametrize(
    ("data", "field_message"),
    [
        ({"due_on": "", "reason": "Late data."}, "Choose the new due date."),
        ({"due_on": "tomorrow", "reason": "Late data."}, "Enter a date, like 2027-03-31."),
        ({"due_on": "2020-01-01", "reason": "Late data."}, "Choose a day after the current due date"),
        ({"due_on": "+30", "reason": ""}, "Give a reason (at least a few words)"),
    ],
    ids=["no-date", "not-a-date", "earlier", "no-reason"],
)
def test_an_extension_error_is_shown_next_to_the_field_and_nothing_changes(client, legal, report, data, field_message):
    if data["due_on"] == "+30":
        data = {**data, "due_on": (report.due_at + timedelta(days=30)).date().isoformat()}
    client.force_login(legal)
    response = extend(client, report, **data)
    assert response.status_code == 400
    page = text_of(response)
    assert field_message in page and 'class="field has-error"' in page
    report.refresh_from_db()
    assert report.extended_at is None and report.due_at == report.original_due_at


def test_an_obligation_fulfilled_meanwhile_cannot_be_extended(client, legal, signer_a, report):
    from agreements import services

    services.obligation_fulfil(actor=signer_a, obligation=report, fulfilment="finding F-1")
    client.force_login(legal)
    response = extend(client, report, due_on=(report.due_at + timedelta(days=5)).date(), reason="Late data.")
    assert response.status_code == 302
    assert "is already fulfilled" in text_of(client.get(response["Location"]))


# --- The agreement page and the home card ----------------------------------------------------------------


@pytest.mark.parametrize("persona", ["legal", "auditor", "signer_a"])
def test_the_agreement_page_lists_its_obligations(client, request, everyone, persona, active, report):
    client.force_login(request.getfixturevalue(persona))
    page = text_of(client.get(reverse("agreement_detail", args=[active.pk])))
    assert 'data-testid="agreement-obligations"' in page
    assert report.reference in page and f"Final report under {active.reference}" in page


def test_the_nav_links_to_obligations(client, researcher_a, auditor):
    for user in (researcher_a, auditor):
        client.force_login(user)
        assert f'href="{reverse("obligation_list")}">Obligations</a>' in text_of(client.get(reverse("home")))


def test_the_home_card_tells_a_paused_partner_and_the_lab(researcher_a, legal, active, report):
    with time_machine.travel(report.due_at + timedelta(days=1), tick=False):
        partner = render_to_string("agreements/_home_obligations.html", selectors.obligation_home(user=researcher_a))
        lab = render_to_string("agreements/_home_obligations.html", selectors.obligation_home(user=legal))
    assert "Access paused" in partner and report.reference in partner
    assert (
        "<strong>2</strong> reports overdue, pausing access for 1 partner." in lab
        and report.reference in lab
        and "Partner A" in lab
    )
    calm = render_to_string("agreements/_home_obligations.html", selectors.obligation_home(user=researcher_a))
    assert "Access paused" not in calm and "Nothing due in the next two weeks" in calm

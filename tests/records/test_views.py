"""The audit log in the browser: lab roles only, filters, pagination, and the verification page."""

from __future__ import annotations

import pytest
from django.urls import reverse

from accounts import services

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("persona", ["admin_a", "signer_a", "researcher_a"])
def test_partners_are_refused_the_audit_log(client, request, persona):
    client.force_login(request.getfixturevalue(persona))
    assert client.get(reverse("audit_event_list")).status_code == 403
    assert client.get(reverse("audit_verify")).status_code == 403


@pytest.mark.parametrize("persona", ["legal", "auditor", "lab_admin"])
def test_lab_roles_browse_the_log(client, request, persona, partner_a):
    client.force_login(request.getfixturevalue(persona))
    page = client.get(reverse("audit_event_list")).content.decode()
    assert "organization.created" in page
    assert "Partner A" in page


def test_filters_narrow_the_log(client, auditor, lab_admin, partner_a, partner_b):
    services.invitation_create(actor=lab_admin, organization=partner_b, email="n@partner-b.example", role="researcher")
    client.force_login(auditor)
    page = client.get(reverse("audit_event_list"), {"organization": partner_b.pk, "action": "invitation.sent"})
    rows = page.context["page"].object_list
    assert [e.action for e in rows] == ["invitation.sent"]
    by_actor = client.get(reverse("audit_event_list"), {"actor": "admin@lab.example"}).context["page"].object_list
    assert {e.actor_email for e in by_actor} == {"admin@lab.example"}
    today = rows[0].created_at.date().isoformat()
    in_range = client.get(reverse("audit_event_list"), {"created_after": today, "created_before": today}).context[
        "page"
    ]
    assert in_range.paginator.count >= 1
    before = client.get(reverse("audit_event_list"), {"created_before": "2000-01-01"}).context["page"]
    assert before.paginator.count == 0


def test_bad_filters_get_messages_not_errors(client, auditor):
    client.force_login(auditor)
    response = client.get(
        reverse("audit_event_list"),
        {"created_after": "2026-02-30", "action": "nope", "created_before": "yesterday", "organization": "abc"},
    )
    assert response.status_code == 400
    page = response.content.decode()
    assert "Enter a valid date" in page
    assert "Choose an action from the list" in page


def test_the_log_is_paginated_50_a_page(client, auditor, lab_admin):
    for n in range(60):
        services.organization_create(actor=lab_admin, name=f"Org {n}", legal_name=f"Org {n}")
    client.force_login(auditor)
    first = client.get(reverse("audit_event_list")).context["page"]
    assert len(first.object_list) == 50
    second = client.get(reverse("audit_event_list"), {"page": 2}).context["page"]
    assert second.object_list[0].seq == first.object_list[49].seq - 1


def test_verify_page_reports_an_intact_chain(client, auditor, partner_a):
    client.force_login(auditor)
    assert "Intact" in client.get(reverse("audit_verify")).content.decode()

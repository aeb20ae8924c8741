"""GET /api/v1/obligations/: partners their organisation's, lab staff (auditors too) every partner's, with
filters; the state and whether it pauses access, as the pages show them."""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine

from agreements.models import Obligation
from tests.api.conftest import client_with, error_of, token_for

pytestmark = pytest.mark.django_db

URL = "/api/v1/obligations/"


@pytest.fixture
def report(active) -> Obligation:
    return Obligation.objects.get(agreement=active, kind="findings_report", checkpoint__slug="gpt2")


@pytest.fixture
def other_report(make_agreement, partner_b) -> Obligation:
    return Obligation.objects.get(agreement=make_agreement(partner_b, ["gpt2"]), kind="findings_report")


def rows(user, **params) -> list[dict]:
    response = client_with(token_for(user)).get(URL, params)
    assert response.status_code == 200, response.json()
    return response.json()["results"]


def test_a_partner_lists_its_own_obligations_with_their_state(researcher_a, active, report, other_report):
    listed = rows(researcher_a)
    assert {row["organization"] for row in listed} == {"Partner A"}
    assert len(listed) == 3  # gpt2 and gpt2-medium findings reports, and the final report
    row = next(row for row in listed if row["id"] == report.pk)
    assert row == {
        "id": report.pk,
        "reference": report.reference,
        "organization": "Partner A",
        "kind": "findings_report",
        "description": "Findings report on gpt2",
        "agreement": active.reference,
        "checkpoint": "gpt2",
        "due_at": report.due_at.isoformat().replace("+00:00", "Z"),
        "original_due_at": report.original_due_at.isoformat().replace("+00:00", "Z"),
        "state": "open",
        "pauses_access": True,
        "reminded_at": None,
        "overdue_at": None,
        "fulfilled_at": None,
        "fulfilment": "",
        "fulfilled_late": False,
        "extended_at": None,
        "extension_reason": "",
    }
    final = next(row for row in listed if row["kind"] == "final_report")
    assert final["checkpoint"] is None


@pytest.mark.parametrize("persona", ["auditor", "legal", "lab_admin"])
def test_lab_staff_list_every_partners_and_filter_by_organisation(request, persona, report, other_report):
    user = request.getfixturevalue(persona)
    assert {row["organization"] for row in rows(user)} == {"Partner A", "Partner B"}
    assert {row["id"] for row in rows(user, organization="Partner B", kind="findings_report")} == {other_report.pk}


def test_a_partner_cannot_name_another_organisation(researcher_a, report, other_report):
    response = client_with(token_for(researcher_a)).get(URL, {"organization": "Partner B"})
    assert response.status_code == 400
    assert "Choose an organisation from the list." in str(error_of(response))
    assert [row["organization"] for row in rows(researcher_a, organization="Partner A")] == ["Partner A"] * 3


def test_the_state_filter_follows_the_clock(researcher_a, report):
    with time_machine.travel(report.due_at + timedelta(hours=1), tick=False):
        key = token_for(researcher_a)
        overdue = client_with(key).get(URL, {"state": "overdue"}).json()["results"]
        due_soon = client_with(key).get(URL, {"state": "due_soon"}).json()["results"]
    assert {row["kind"] for row in overdue} == {"findings_report"} and len(overdue) == 2
    assert all(row["state"] == "overdue" for row in overdue)
    assert due_soon == []
    response = client_with(token_for(researcher_a)).get(URL, {"state": "late", "kind": "report"})
    assert response.status_code == 400
    assert set(error_of(response)["details"]) >= {"state", "kind"}


def test_an_outsider_with_no_agreement_lists_nothing(researcher_b, report):
    assert rows(researcher_b) == []


def test_anonymous_callers_are_refused(report):
    response = client_with(None).get(URL)
    assert response.status_code == 401 and error_of(response)["code"]


def test_the_list_page_and_api_make_the_same_queries_for_few_and_many_rows(client, legal, active, report):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    key = token_for(legal)
    client.force_login(legal)

    def queries() -> tuple[int, int]:
        with CaptureQueriesContext(connection) as api:
            assert client_with(key).get(URL).status_code == 200
        with CaptureQueriesContext(connection) as page:
            assert client.get("/obligations/").status_code == 200
        return len(api), len(page)

    few = queries()
    for n in range(20):  # more rows of every state, as years of incident reports would add
        Obligation.objects.create(
            agreement=active,
            organization=active.organization,
            kind="incident_report",
            description=f"Report of incident {n}",
            due_at=report.due_at,
            original_due_at=report.due_at,
            fulfilled_at=report.created_at if n % 2 else None,
        )
    assert queries() == few

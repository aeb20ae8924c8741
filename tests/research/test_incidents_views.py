"""The incident pages for every persona: the queue, the report form, one incident with the kill switch and
the resolution; and the incidents API."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from agreements.models import AccessGrant
from models_registry.models import Checkpoint
from research.models import Incident
from tests.api import conftest as api_conftest
from tests.api.conftest import error_of
from tests.research.test_incidents_services import DESCRIPTION, report

pytestmark = pytest.mark.django_db
api = api_conftest.api  # the API clients' fixture


def form(**overrides) -> dict:
    data = {
        "title": "Samples posted as real reviews",
        "description": DESCRIPTION,
        "discovered_at": (timezone.now() - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M"),
        "severity": "high",
        "checkpoints": [str(Checkpoint.objects.get(slug="gpt2").pk)],
    }
    data.update(overrides)
    return data


@pytest.fixture
def incident(researcher_a, active) -> Incident:
    return report(researcher_a)


def test_the_lab_admins_queue_shows_open_incidents_first_and_the_most_severe_first(
    client, lab_admin, legal, researcher_a, active
):
    low = report(researcher_a, title="A low one", severity=Incident.Severity.LOW)
    critical = report(researcher_a, title="A critical one", severity=Incident.Severity.CRITICAL)
    closed = report(researcher_a, title="A closed critical one", severity=Incident.Severity.CRITICAL)
    from research.services.incidents import incident_resolve

    incident_resolve(actor=legal, incident=closed, outcome="Handled with the partner.")
    client.force_login(lab_admin)
    page = client.get(reverse("incident_list"))
    html = page.content.decode()
    assert page.status_code == 200
    assert html.index(critical.reference) < html.index(low.reference) < html.index(closed.reference)
    assert "<strong>2</strong> open" in html


def test_partners_see_their_own_incidents_only(client, researcher_a, researcher_b, incident):
    client.force_login(researcher_a)
    assert incident.reference in client.get(reverse("incident_list")).content.decode()
    client.force_login(researcher_b)
    assert incident.reference not in client.get(reverse("incident_list")).content.decode()
    assert client.get(reverse("incident_detail", args=[incident.pk])).status_code == 404
    assert client.post(reverse("incident_act", args=[incident.pk]), {}).status_code == 404
    assert client.post(reverse("incident_resolve", args=[incident.pk]), {}).status_code == 404


def test_a_partner_reports_an_incident_through_the_form(client, researcher_a, active):
    client.force_login(researcher_a)
    page = client.get(reverse("incident_create"))
    assert page.status_code == 200 and "Partner organisation" not in page.content.decode()
    response = client.post(reverse("incident_create"), form())
    incident = Incident.objects.get()
    assert response.status_code == 302 and response["Location"] == reverse("incident_detail", args=[incident.pk])
    assert incident.organization == researcher_a.membership.organization and incident.obligation is not None
    page = client.get(response["Location"])
    assert "reported in time" in page.content.decode()
    assert "Embargo or withdraw" not in page.content.decode() and "Resolve" not in page.content.decode()


def test_an_incident_discovered_in_the_future_is_refused_next_to_the_field(client, researcher_a, active):
    client.force_login(researcher_a)
    later = (timezone.now() + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")
    response = client.post(reverse("incident_create"), form(discovered_at=later))
    assert response.status_code == 400
    assert "cannot be in the future" in str(response.context["form"].errors["discovered_at"])
    assert not Incident.objects.exists()


def test_legal_reports_one_naming_the_partner(client, legal, partner_a, active):
    client.force_login(legal)
    response = client.post(reverse("incident_create"), form())
    assert response.status_code == 400 and "Name the partner organisation" in response.content.decode()
    response = client.post(reverse("incident_create"), form(organization=str(partner_a.pk)))
    assert response.status_code == 302 and Incident.objects.get().organization == partner_a


def test_the_auditor_reads_incidents_but_changes_nothing(client, auditor, incident):
    client.force_login(auditor)
    assert client.get(reverse("incident_list")).status_code == 200
    page = client.get(reverse("incident_detail", args=[incident.pk]))
    assert page.status_code == 200 and "Withdraw (kill switch)" not in page.content.decode()
    assert client.get(reverse("incident_create")).status_code == 403
    gpt2 = Checkpoint.objects.get(slug="gpt2")
    act = {"checkpoint": str(gpt2.pk), "action": "withdraw", "reason": "Misuse"}
    assert client.post(reverse("incident_act", args=[incident.pk]), act).status_code == 403
    assert client.post(reverse("incident_resolve", args=[incident.pk]), {"outcome": "Done."}).status_code == 403
    incident.refresh_from_db()
    assert incident.status == Incident.Status.OPEN and incident.action == ""


def test_legal_resolves_but_does_not_pull_the_kill_switch(client, legal, incident):
    client.force_login(legal)
    page = client.get(reverse("incident_detail", args=[incident.pk]))
    assert "Withdraw (kill switch)" not in page.content.decode() and "Resolve INC-" in page.content.decode()
    gpt2 = Checkpoint.objects.get(slug="gpt2")
    act = {"checkpoint": str(gpt2.pk), "action": "withdraw", "reason": "Misuse"}
    assert client.post(reverse("incident_act", args=[incident.pk]), act).status_code == 403
    response = client.post(reverse("incident_resolve", args=[incident.pk]), {"outcome": ""})
    assert response.status_code == 400 and "Say what the lab concluded." in response.content.decode()
    response = client.post(reverse("incident_resolve", args=[incident.pk]), {"outcome": "Access ended for them."})
    assert response.status_code == 302
    incident.refresh_from_db()
    assert incident.status == Incident.Status.RESOLVED


def test_a_lab_admin_withdraws_the_checkpoint_from_the_incident_in_one_step(client, lab_admin, incident):
    gpt2 = Checkpoint.objects.get(slug="gpt2")
    client.force_login(lab_admin)
    page = client.get(reverse("incident_detail", args=[incident.pk]))
    assert 'data-confirm="Withdraw the chosen checkpoint?' in page.content.decode()
    act = {"checkpoint": str(gpt2.pk), "action": "withdraw", "reason": "Samples used for fraud"}
    response = client.post(reverse("incident_act", args=[incident.pk]), act)
    assert response.status_code == 302
    gpt2.refresh_from_db()
    incident.refresh_from_db()
    assert gpt2.status == Checkpoint.Status.WITHDRAWN and incident.action == Incident.Action.WITHDRAWN
    assert not AccessGrant.objects.filter(checkpoint=gpt2, revoked_at=None).exists()
    page = client.get(response["Location"])
    assert f"gpt2 is withdrawn, with {incident.reference} as the reason." in page.content.decode()
    # Pulled again (a second tab): refused, saying why.
    response = client.post(reverse("incident_act", args=[incident.pk]), act)
    assert response.status_code == 409 and "already led to checkpoint withdrawn" in response.content.decode()


def test_acting_on_a_checkpoint_withdrawn_elsewhere_says_why_next_to_the_form(client, lab_admin, researcher_a, active):
    from inference.services import checkpoint_withdraw

    gpt2 = Checkpoint.objects.get(slug="gpt2")
    incident = report(researcher_a)
    checkpoint_withdraw(actor=lab_admin, checkpoint=gpt2, reason="Withdrawn from the registry page")
    client.force_login(lab_admin)
    act = {"checkpoint": str(gpt2.pk), "action": "withdraw", "reason": "Samples used for fraud"}
    response = client.post(reverse("incident_act", args=[incident.pk]), act)
    assert response.status_code == 400 and "gpt2 is already withdrawn." in response.content.decode()
    incident.refresh_from_db()
    assert incident.action == ""


# --- API ------------------------------------------------------------------------------------------------


def test_a_partner_reports_through_the_api(api, researcher_a, active):
    body = {
        "title": "Samples posted as reviews",
        "description": DESCRIPTION,
        "discovered_at": (timezone.now() - timedelta(hours=1)).isoformat(),
        "severity": "medium",
        "checkpoints": ["gpt2"],
    }
    response = api(researcher_a).post("/api/v1/incidents/", body, format="json")
    assert response.status_code == 201, response.json()
    data = response.json()
    assert data["reference"].startswith("INC-") and data["organization"] == "Partner A"
    assert data["obligation"].startswith("OBL-") and data["reported_late"] is False
    listed = api(researcher_a).get("/api/v1/incidents/", {"severity": "medium"}).json()["results"]
    assert [row["id"] for row in listed] == [data["id"]]


def test_the_api_refuses_a_discovery_in_the_future(api, researcher_a, active):
    body = {
        "title": "From the future",
        "description": DESCRIPTION,
        "discovered_at": (timezone.now() + timedelta(days=2)).isoformat(),
        "severity": "low",
        "checkpoints": ["gpt2"],
    }
    response = api(researcher_a).post("/api/v1/incidents/", body, format="json")
    assert response.status_code == 400
    assert "cannot be in the future" in error_of(response)["details"]["discovered_at"][0]
    assert not Incident.objects.exists()


def test_the_auditor_cannot_report_through_the_api(api, auditor, partner_a, gpt2_stages):
    response = api(auditor).post("/api/v1/incidents/", {"organization": partner_a.pk}, format="json")
    assert response.status_code == 403 and error_of(response)["code"] == "permission_denied"

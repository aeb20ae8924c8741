"""The webhooks API: admins manage their endpoints; others are refused, outsiders find nothing."""

from __future__ import annotations

import pytest

from agreements import services as agreement_services
from tests.api.conftest import client_with, error_of, token_for
from tests.webhooks.conftest import register
from webhooks.models import Delivery

pytestmark = pytest.mark.django_db


@pytest.fixture
def api():
    """api(user) is a client with a fresh token of that user's."""
    return lambda user: client_with(token_for(user))


BODY = {"url": "https://hooks.partner.example/in", "events": ["agreement.sent", "job.failed"], "description": "CI"}


def test_a_partner_admin_registers_and_lists_endpoints(api, admin_a):
    client = api(admin_a)
    created = client.post("/api/v1/webhooks/", BODY, format="json")
    assert created.status_code == 201, created.json()
    body = created.json()
    assert body["secret"].startswith("whsec_") and body["organization"] == "Partner A" and body["status"] == "active"
    listed = client.get("/api/v1/webhooks/").json()["results"]
    assert [row["id"] for row in listed] == [body["id"]] and "secret" not in listed[0]
    assert "secret" not in client.get(f"/api/v1/webhooks/{body['id']}/").json()


@pytest.mark.parametrize(
    "change,field",
    [
        ({"url": "http://hooks.partner.example/in"}, "url"),
        ({"url": "https://169.254.169.254/latest/"}, "url"),
        ({"url": "https://internal.example/in"}, "url"),
        ({"events": ["agreement.sent", "nope"]}, "events"),
        ({"events": []}, "events"),
        ({"url": 5}, "url"),
    ],
)
def test_bad_registrations_are_400_naming_the_field(api, admin_a, change, field):
    response = api(admin_a).post("/api/v1/webhooks/", {**BODY, **change}, format="json")
    assert response.status_code == 400
    assert field in error_of(response)["details"]


def test_outsiders_get_404_and_other_roles_403(api, admin_a, admin_b, researcher_a, auditor, lab_admin):
    endpoint, _ = register(admin_a)
    url = f"/api/v1/webhooks/{endpoint.pk}/"
    assert api(admin_b).get(url).status_code == 404
    assert api(admin_b).post(url + "rotate-secret/").status_code == 404
    assert api(admin_b).get(url + "deliveries/").status_code == 404
    assert api(admin_b).get("/api/v1/webhooks/").json()["results"] == []
    for user in (researcher_a, auditor):
        assert error_of(api(user).get(url))["code"] == "permission_denied"
        assert api(user).post("/api/v1/webhooks/", BODY, format="json").status_code == 403
    assert api(lab_admin).get(url).status_code == 200


def test_rotate_and_resend(api, admin_a, admin_b, legal, draft):
    endpoint, old = register(admin_a)
    client = api(admin_a)
    rotated = client.post(f"/api/v1/webhooks/{endpoint.pk}/rotate-secret/").json()
    assert rotated["secret"] != old and rotated["previous_secret_valid_until"]
    agreement_services.agreement_send(actor=legal, agreement=draft)
    log = client.get(f"/api/v1/webhooks/{endpoint.pk}/deliveries/").json()["results"]
    assert log[0]["type"] == "agreement.sent" and log[0]["event_id"].startswith("msg_")
    delivery = Delivery.objects.get()
    assert api(admin_b).post(f"/api/v1/webhook-deliveries/{delivery.pk}/resend/").status_code == 404
    response = client.post(f"/api/v1/webhook-deliveries/{delivery.pk}/resend/")
    assert response.status_code == 202 and response.json()["event_id"] == log[0]["event_id"]


def test_the_schema_documents_webhooks(admin_a):
    schema = client_with(token_for(admin_a)).get("/api/schema/?format=json").json()
    assert {
        "/api/v1/webhooks/",
        "/api/v1/webhooks/{id}/rotate-secret/",
        "/api/v1/webhook-deliveries/{id}/resend/",
    } <= set(schema["paths"])
    assert "secret" in schema["components"]["schemas"]["EndpointWithSecret"]["properties"]

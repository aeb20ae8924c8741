"""The webhook pages: admins register and manage endpoints; other roles are refused, outsiders find nothing."""

from __future__ import annotations

import pytest

from agreements import services as agreement_services
from audit.models import AuditEvent
from tests.conftest import PASSWORD
from tests.webhooks.conftest import register
from webhooks.models import Delivery, WebhookEndpoint

pytestmark = pytest.mark.django_db


def signed_in(client, user):
    client.login(email=user.email, password=PASSWORD)
    return client


def test_a_partner_admin_registers_on_the_page_and_sees_the_secret_once(client, admin_a):
    signed_in(client, admin_a)
    assert client.get("/webhooks/").status_code == 200
    response = client.post("/webhooks/", {"url": "https://hooks.partner.example/in", "events": ["agreement.sent"]})
    assert response.status_code == 201
    endpoint = WebhookEndpoint.objects.get()
    assert b"whsec_" in response.content
    assert b"whsec_" not in client.get(f"/webhooks/{endpoint.pk}/").content


def test_registration_errors_show_next_to_the_field(client, admin_a):
    signed_in(client, admin_a)
    response = client.post("/webhooks/", {"url": "https://169.254.169.254/", "events": ["agreement.sent"]})
    assert response.status_code == 400 and b"metadata" in response.content
    assert not WebhookEndpoint.objects.exists()


def test_others_are_refused_and_outsiders_find_nothing(client, admin_a, admin_b, researcher_a, auditor):
    endpoint, _ = register(admin_a)
    for user in (researcher_a, auditor):
        signed_in(client, user)
        assert client.get("/webhooks/").status_code == 403
        assert client.get(f"/webhooks/{endpoint.pk}/").status_code == 403
    signed_in(client, admin_b)
    assert client.get(f"/webhooks/{endpoint.pk}/").status_code == 404
    assert client.post(f"/webhooks/{endpoint.pk}/rotate-secret/").status_code == 404
    assert b"hooks.partner.example" not in client.get("/webhooks/").content


def test_rotate_resend_and_enable_are_posts_and_audited(client, admin_a, legal, draft):
    endpoint, _ = register(admin_a)
    agreement_services.agreement_send(actor=legal, agreement=draft)
    signed_in(client, admin_a)
    assert client.get(f"/webhooks/{endpoint.pk}/rotate-secret/").status_code == 405
    assert b"whsec_" in client.post(f"/webhooks/{endpoint.pk}/rotate-secret/").content
    delivery = Delivery.objects.get()
    assert client.post(f"/webhooks/deliveries/{delivery.pk}/resend/").status_code == 302
    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(status="disabled")
    assert client.post(f"/webhooks/{endpoint.pk}/enable/").status_code == 302
    assert WebhookEndpoint.objects.get(pk=endpoint.pk).status == "active"
    actions = set(AuditEvent.objects.values_list("action", flat=True))
    assert {"webhook.secret_rotated", "webhook.delivery_resent", "webhook.endpoint_enabled"} <= actions


def test_the_lab_admin_sees_every_endpoint(client, admin_a, admin_b, lab_admin):
    register(admin_a, url="https://a.example/in")
    register(admin_b, url="https://b.example/in")
    signed_in(client, lab_admin)
    page = client.get("/webhooks/").content
    assert b"a.example" in page and b"b.example" in page and b"Every organisation" in page

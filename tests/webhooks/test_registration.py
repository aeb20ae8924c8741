"""Registering endpoints: clear refusals for URLs and events that cannot work, and who may register."""

from __future__ import annotations

import pytest
from django.core.exceptions import PermissionDenied, ValidationError

from audit.models import AuditEvent
from tests.webhooks.conftest import register
from webhooks import services
from webhooks.models import WebhookEndpoint

pytestmark = pytest.mark.django_db


def url_error(actor, url: str) -> str:
    with pytest.raises(ValidationError) as caught:
        register(actor, url=url)
    return " ".join(caught.value.message_dict["url"])


def test_a_partner_admin_registers_an_endpoint_and_sees_its_secret_once(admin_a):
    endpoint, secret = register(admin_a, description="Our CI", events=["job.failed", "agreement.sent", "job.failed"])
    assert secret.startswith("whsec_") and len(secret) > 40
    assert endpoint.organization == admin_a.organization and endpoint.events == ["agreement.sent", "job.failed"]
    stored = WebhookEndpoint.objects.filter(pk=endpoint.pk).values()[0]
    assert secret not in str(stored), "the secret is stored encrypted"
    event = AuditEvent.objects.get(action="webhook.endpoint_created")
    assert secret not in str(event.data) and event.organization == admin_a.organization


def test_an_http_url_is_refused_in_production(admin_a, settings):
    settings.DEBUG = False
    assert "https://" in url_error(admin_a, "http://hooks.partner.example/in")


@pytest.mark.parametrize(
    "url,why",
    [
        ("https://127.0.0.1/in", "loopback"),
        ("https://[::1]/in", "loopback"),
        ("https://169.254.169.254/latest/meta-data/", "metadata"),
        ("https://internal.example/in", "loopback"),
        ("https://metadata.example/in", "metadata"),
        ("https://mixed.example/in", "private"),
        ("https://10.1.2.3/in", "private"),
        ("https://[::ffff:127.0.0.1]/in", "loopback"),
    ],
)
def test_urls_pointing_inside_are_refused(admin_a, url, why):
    assert why in url_error(admin_a, url)


def test_private_targets_are_allowed_only_when_the_setting_says_so(admin_a, settings):
    settings.WEBHOOKS_ALLOW_PRIVATE_TARGETS = True
    endpoint, _ = register(admin_a, url="https://127.0.0.1:8443/in")
    assert endpoint.pk


@pytest.mark.parametrize(
    "url", ["", "hooks.example/in", "ftp://hooks.example/in", "https:///in", "https://u:p@hooks.example/"]
)
def test_malformed_urls_are_refused(admin_a, url):
    assert url_error(admin_a, url)


def test_unknown_events_are_named(admin_a):
    with pytest.raises(ValidationError) as caught:
        register(admin_a, events=["agreement.sent", "agreement.exploded"])
    assert "agreement.exploded" in caught.value.message_dict["events"][0]
    with pytest.raises(ValidationError):
        services.endpoint_create(actor=admin_a, url="https://hooks.partner.example/in", events=[])


def test_only_admins_register(researcher_a, signer_a, legal, auditor):
    for user in (researcher_a, signer_a, legal, auditor):
        with pytest.raises(PermissionDenied):
            register(user)


def test_a_partner_admin_cannot_register_for_another_organisation(admin_a, partner_b):
    with pytest.raises(PermissionDenied):
        register(admin_a, organization=partner_b)


def test_a_lab_admin_registers_for_one_organisation_or_all(lab_admin, partner_b):
    one, _ = register(lab_admin, organization=partner_b)
    every, _ = register(lab_admin)
    assert one.organization == partner_b and every.organization is None

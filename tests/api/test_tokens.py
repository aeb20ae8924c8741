"""API tokens: created after a fresh reauthentication and shown once, hashed at rest, expiring, revocable."""

from __future__ import annotations

import re
from datetime import timedelta
from io import StringIO

import pytest
import time_machine
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone
from knox.crypto import hash_token
from knox.models import AuthToken

from audit.models import AuditEvent
from tests.api.conftest import client_with, error_of, token_for
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db
TOKENS = "/account/tokens/"


def sign_in(client, user) -> None:
    """Through allauth, so the session records when the user last proved who they are."""
    response = client.post(reverse("account_login"), {"login": user.email, "password": PASSWORD})
    assert response.status_code == 302, response.content.decode()


def created_key(response) -> str:
    keys = re.findall(r'value="(mp_[0-9a-f]{64})"', response.content.decode())
    assert len(keys) == 1, "the new token is shown exactly once on the page"
    return keys[0]


def test_a_token_is_created_after_reauthenticating_shown_once_and_works(client, researcher_a):
    sign_in(client, researcher_a)
    with time_machine.travel(timezone.now() + timedelta(minutes=6)):
        stale = client.get(TOKENS).content.decode()
        assert f"{reverse('account_reauthenticate')}?next=%2Faccount%2Ftokens%2F" in stale
        refused = client.post(TOKENS, {"expiry_days": 30})
        assert refused.status_code == 400 and "Confirm it is you" in refused.content.decode()
        assert not AuthToken.objects.exists()

        reauth = client.post(f"{reverse('account_reauthenticate')}?next={TOKENS}", {"password": PASSWORD})
        assert reauth["Location"] == TOKENS
        response = client.post(TOKENS, {"expiry_days": 30})
        assert response.status_code == 200 and response["Cache-Control"].startswith("max-age=0")
        key = created_key(response)
        assert key not in client.get(TOKENS).content.decode(), "shown once"

    token = AuthToken.objects.get()
    assert token.user == researcher_a and token.digest == hash_token(key) and key not in token.digest
    assert round((token.expiry - token.created) / timedelta(days=1)) == 30
    event = AuditEvent.objects.filter(action="api_token.created").get()
    assert event.actor_email == researcher_a.email and event.data["token"] == token.token_key
    assert event.data["via"] == "web" and key not in str(event.data)
    assert client_with(key).get("/api/v1/checkpoints/").status_code == 200


def test_the_tokens_page_lists_tokens_and_is_in_the_navigation(client, researcher_a, auditor):
    token_for(researcher_a, expiry_days=7)
    client.force_login(researcher_a)
    page = client.get(TOKENS).content.decode()
    token = AuthToken.objects.get()
    assert token.token_key in page and "Your tokens" in page
    assert f'href="{TOKENS}"' in page and "API tokens" in page
    client.force_login(auditor)
    assert "API tokens" in client.get(reverse("home")).content.decode()


def test_revoking_a_token_refuses_it_at_once_and_is_audited(client, researcher_a):
    key = token_for(researcher_a)
    api = client_with(key)
    assert api.get("/api/v1/jobs/").status_code == 200
    client.force_login(researcher_a)
    token = AuthToken.objects.get()
    response = client.post(reverse("api_token_revoke", args=[token.token_key]))
    assert response.status_code == 302 and not AuthToken.objects.exists()
    refused = api.get("/api/v1/jobs/")
    assert refused.status_code == 401 and error_of(refused)["code"] == "authentication_failed"
    assert refused["WWW-Authenticate"] == "Token"
    event = AuditEvent.objects.get(action="api_token.revoked")
    assert event.data == {"token": token.token_key, "owner": researcher_a.email}


def test_a_partner_admin_revokes_a_colleagues_token_but_not_another_organisations(
    client, researcher_a, admin_a, admin_b
):
    token_for(researcher_a)
    token = AuthToken.objects.get()
    client.force_login(admin_b)
    assert client.post(reverse("api_token_revoke", args=[token.token_key])).status_code == 404
    assert token.token_key not in client.get(TOKENS).content.decode()
    client.force_login(admin_a)
    assert token.token_key in client.get(TOKENS).content.decode()
    assert client.post(reverse("api_token_revoke", args=[token.token_key])).status_code == 302
    assert not AuthToken.objects.exists()


def test_a_researcher_cannot_revoke_a_colleagues_token(client, researcher_a, signer_a):
    token_for(signer_a)
    client.force_login(researcher_a)
    key = AuthToken.objects.get().token_key
    assert client.post(reverse("api_token_revoke", args=[key])).status_code == 404
    assert AuthToken.objects.exists()


def test_an_expired_token_is_refused(researcher_a):
    api = client_with(token_for(researcher_a, expiry_days=1))
    assert api.get("/api/v1/checkpoints/").status_code == 200
    with time_machine.travel(timezone.now() + timedelta(days=1, seconds=1)):
        response = api.get("/api/v1/checkpoints/")
    assert response.status_code == 401 and error_of(response)["code"] == "authentication_failed"


def test_a_deactivated_users_token_stops_working(researcher_a):
    api = client_with(token_for(researcher_a))
    researcher_a.is_active = False
    researcher_a.save()
    assert api.get("/api/v1/checkpoints/").status_code == 401


def test_no_token_is_401_with_the_scheme_to_use(client):
    response = client.get("/api/v1/checkpoints/")
    assert response.status_code == 401 and response["WWW-Authenticate"] == "Token"
    assert error_of(response)["code"] == "not_authenticated"


def test_operators_print_a_token_with_the_command(researcher_a):
    out, err = StringIO(), StringIO()
    call_command("token_create", "Researcher@Partner-A.example", "--expiry-days", "10", stdout=out, stderr=err)
    key = out.getvalue().strip()
    assert re.fullmatch(r"mp_[0-9a-f]{64}", key)
    token = AuthToken.objects.get()
    assert token.digest == hash_token(key) and round((token.expiry - token.created) / timedelta(days=1)) == 10
    assert AuditEvent.objects.get(action="api_token.created").data["via"] == "command"
    assert client_with(key).get("/api/v1/checkpoints/").status_code == 200


def test_session_clients_must_send_the_csrf_token(researcher_a):
    from rest_framework.test import APIClient

    browser = APIClient(enforce_csrf_checks=True)
    browser.force_login(researcher_a)
    assert browser.get("/api/v1/checkpoints/").status_code == 200
    refused = browser.post("/api/v1/access-requests/", {}, format="json")
    assert refused.status_code == 403 and "CSRF" in error_of(refused)["message"]


def test_throttling_is_per_token_with_retry_after(settings, researcher_a):
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {"api": "3/min"}}
    first, second = client_with(token_for(researcher_a)), client_with(token_for(researcher_a))
    assert [first.get("/api/v1/checkpoints/").status_code for _ in range(3)] == [200, 200, 200]
    throttled = first.get("/api/v1/checkpoints/")
    assert throttled.status_code == 429
    error = error_of(throttled)
    assert error["code"] == "throttled" and 1 <= int(throttled["Retry-After"]) <= 60
    assert error["details"]["retry_after_seconds"] == int(throttled["Retry-After"])
    assert second.get("/api/v1/checkpoints/").status_code == 200, "each token has its own budget"


def test_a_token_header_that_is_not_utf8_is_401_not_a_server_error(researcher_a):
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token mp_\xe9\xff")
    response = client.get("/api/v1/checkpoints/")
    assert response.status_code == 401 and error_of(response)["code"] == "authentication_failed"

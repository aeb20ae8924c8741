"""Deactivating a user revokes their API tokens for good: reactivating them does not bring the tokens back."""

from __future__ import annotations

import pytest
from django.core.exceptions import PermissionDenied
from django.urls import reverse
from knox.models import AuthToken

from accounts import services
from audit import events
from audit.models import AuditEvent
from tests.api.conftest import client_with, error_of, token_for

pytestmark = pytest.mark.django_db

CHECKPOINTS = "/api/v1/checkpoints/"


def test_a_reactivated_users_old_token_stays_revoked(admin_a, researcher_a, signer_a):
    old = token_for(researcher_a)
    colleague = token_for(signer_a)
    assert client_with(old).get(CHECKPOINTS).status_code == 200

    services.user_set_active(actor=admin_a, user=researcher_a, active=False)
    assert not AuthToken.objects.filter(user=researcher_a).exists(), "revoked in the deactivation's transaction"
    services.user_set_active(actor=admin_a, user=researcher_a, active=True)

    response = client_with(old).get(CHECKPOINTS)
    assert response.status_code == 401
    assert error_of(response) == {
        "code": "authentication_failed",
        "message": "Invalid token: unknown, revoked or expired.",
        "details": {},
    }
    assert client_with(colleague).get(CHECKPOINTS).status_code == 200, "other users' tokens are untouched"
    assert client_with(token_for(researcher_a)).get(CHECKPOINTS).status_code == 200, "new tokens work"


def test_each_revoked_token_is_audited_with_the_deactivation(admin_a, researcher_a):
    first, second = (services.api_token_create(actor=None, user=researcher_a)[0] for _ in range(2))
    services.user_set_active(actor=admin_a, user=researcher_a, active=False)
    revoked = AuditEvent.objects.filter(action=events.API_TOKEN_REVOKED).order_by("seq")
    assert [event.data for event in revoked] == [
        {"token": token.token_key, "owner": researcher_a.email, "reason": "user deactivated"}
        for token in (first, second)
    ]
    assert all(event.actor_email == admin_a.email for event in revoked)
    deactivated = AuditEvent.objects.get(action=events.USER_DEACTIVATED)
    assert deactivated.data == {"api_tokens_revoked": [first.token_key, second.token_key]}
    assert deactivated.seq > revoked.last().seq


def test_tokens_left_from_before_are_revoked_on_reactivation(admin_a, researcher_a):
    # A user deactivated before deactivation revoked tokens still has them; reactivating clears them.
    old = token_for(researcher_a)
    researcher_a.is_active = False
    researcher_a.save(update_fields=["is_active"])
    services.user_set_active(actor=admin_a, user=researcher_a, active=True)
    assert client_with(old).get(CHECKPOINTS).status_code == 401
    event = AuditEvent.objects.get(action=events.API_TOKEN_REVOKED)
    assert event.data["reason"] == "user reactivated"


def test_deactivating_from_the_members_page_revokes_the_tokens(client, admin_a, researcher_a):
    old = token_for(researcher_a)
    client.force_login(admin_a)
    url = reverse("membership_update", args=[researcher_a.membership.pk])
    assert client.post(url, {"action": "deactivate"}).status_code == 302
    assert client.post(url, {"action": "reactivate"}).status_code == 302
    assert client_with(old).get(CHECKPOINTS).status_code == 401


def test_a_refused_deactivation_revokes_nothing(admin_a, researcher_b):
    key = token_for(researcher_b)
    with pytest.raises(PermissionDenied):
        services.user_set_active(actor=admin_a, user=researcher_b, active=False)
    assert client_with(key).get(CHECKPOINTS).status_code == 200
    assert not AuditEvent.objects.filter(action=events.API_TOKEN_REVOKED).exists()

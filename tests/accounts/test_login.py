"""Signing in: email and password, a lock after repeated failures, optional TOTP."""

from __future__ import annotations

import pytest
import time_machine
from allauth.mfa.totp.internal.auth import TOTP, generate_totp_secret, hotp_value
from django.urls import reverse
from django.utils import timezone

from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db
LOGIN = reverse("account_login")


def attempt(client, email: str, password: str):
    return client.post(LOGIN, {"login": email, "password": password})


def test_demo_style_login_and_logout(client, legal):
    response = attempt(client, "legal@lab.example", PASSWORD)
    assert response.status_code == 302
    assert "Welcome" in client.get("/").content.decode()
    client.post(reverse("account_logout"))
    assert client.get("/").status_code == 302


def test_a_wrong_password_says_so_on_the_form(client, legal):
    response = attempt(client, "legal@lab.example", "wrong password")
    assert response.status_code == 200
    assert "email address and/or password you specified are not correct" in response.content.decode()


def test_the_sixth_attempt_after_five_wrong_passwords_is_locked_even_with_the_right_one(client, legal):
    for _ in range(5):
        assert "not correct" in attempt(client, "legal@lab.example", "wrong password").content.decode()
    locked = attempt(client, "legal@lab.example", PASSWORD)
    assert locked.status_code == 200
    assert "Too many failed login attempts" in locked.content.decode()
    assert "_auth_user_id" not in client.session


def test_the_lock_lifts_after_the_cool_off(client, legal):
    for _ in range(5):
        attempt(client, "legal@lab.example", "wrong password")
    with time_machine.travel(timezone.now() + timezone.timedelta(minutes=6)):
        assert attempt(client, "legal@lab.example", PASSWORD).status_code == 302


def test_five_wrong_passwords_for_one_person_do_not_lock_another(client, legal, auditor):
    for _ in range(5):
        attempt(client, "legal@lab.example", "wrong password")
    assert attempt(client, "auditor@lab.example", PASSWORD).status_code == 302


def test_a_deactivated_user_cannot_sign_in(client, admin_a, researcher_a):
    from accounts.services import user_set_active

    user_set_active(actor=admin_a, user=researcher_a, active=False)
    response = attempt(client, "researcher@partner-a.example", PASSWORD)
    assert "_auth_user_id" not in client.session
    assert response.status_code in (200, 302)
    assert client.get("/").status_code == 302


def test_totp_two_factor_is_asked_for_once_enabled(client, researcher_a):
    secret = generate_totp_secret()
    TOTP.activate(researcher_a, secret)
    response = attempt(client, "researcher@partner-a.example", PASSWORD)
    assert response.status_code == 302
    assert response["Location"] == reverse("mfa_authenticate")
    assert client.get("/").status_code == 302  # not signed in yet

    wrong = client.post(reverse("mfa_authenticate"), {"code": "000000"})
    assert "Incorrect code" in wrong.content.decode()
    import time

    code = format(hotp_value(secret, int(time.time()) // 30), "06d")
    assert client.post(reverse("mfa_authenticate"), {"code": code}).status_code == 302
    assert client.get("/").status_code == 200

"""Pages for organisations and members: wrong roles get 403, other organisations 404, bad input a message."""

from __future__ import annotations

import pytest
from django.urls import reverse

from accounts.models import Invitation, Organization, Role

pytestmark = pytest.mark.django_db


def test_home_redirects_anonymous_visitors_to_login(client):
    response = client.get("/")
    assert response.status_code == 302
    assert reverse("account_login") in response["Location"]


@pytest.mark.parametrize(
    ("persona", "text"),
    [
        ("lab_admin", "You run the organisations"),
        ("legal", "You draft, send and countersign"),
        ("auditor", "read everything and change nothing"),
        ("admin_a", "manage your organisation"),
        ("signer_a", "Waiting for your signature"),
        ("researcher_a", "run sample-generation jobs"),
    ],
)
def test_each_persona_has_its_own_home_page(client, request, persona, text):
    client.force_login(request.getfixturevalue(persona))
    response = client.get("/")
    assert response.status_code == 200
    assert text in response.content.decode()


@pytest.mark.parametrize("persona", ["admin_a", "signer_a", "researcher_a"])
def test_partners_cannot_list_organisations(client, request, persona):
    client.force_login(request.getfixturevalue(persona))
    assert client.get(reverse("organization_list")).status_code == 403


@pytest.mark.parametrize("persona", ["lab_admin", "legal", "auditor"])
def test_lab_staff_list_organisations(client, request, persona, partner_a, partner_b):
    client.force_login(request.getfixturevalue(persona))
    page = client.get(reverse("organization_list")).content.decode()
    assert "Partner A" in page and "Partner B" in page


@pytest.mark.parametrize("persona", ["legal", "auditor", "admin_a", "researcher_a"])
def test_only_lab_admins_open_the_new_organisation_form(client, request, persona):
    client.force_login(request.getfixturevalue(persona))
    assert client.get(reverse("organization_create")).status_code == 403
    assert client.post(reverse("organization_create"), {"name": "X", "legal_name": "X"}).status_code == 403
    assert not Organization.objects.filter(name="X").exists()


def test_lab_admin_creates_an_organisation_through_the_form(client, lab_admin):
    client.force_login(lab_admin)
    response = client.post(
        reverse("organization_create"),
        {"name": "Acme", "legal_name": "Acme Research Ltd", "jurisdiction": "Scotland", "contact_email": ""},
    )
    org = Organization.objects.get(name="Acme")
    assert response["Location"] == reverse("organization_detail", args=[org.pk])


def test_a_duplicate_organisation_name_shows_next_to_the_field(client, lab_admin, partner_a):
    client.force_login(lab_admin)
    response = client.post(reverse("organization_create"), {"name": "Partner A", "legal_name": "Dup"})
    assert response.status_code == 200
    assert "already exists" in response.content.decode()
    assert Organization.objects.filter(name="Partner A").count() == 1


def test_partner_user_sees_own_organisation_but_not_another(client, researcher_a, partner_a, partner_b):
    client.force_login(researcher_a)
    assert client.get(reverse("organization_detail", args=[partner_a.pk])).status_code == 200
    assert client.get(reverse("organization_detail", args=[partner_b.pk])).status_code == 404
    assert client.get(reverse("my_organization")).status_code == 200


def test_partner_admin_cannot_act_on_another_organisations_members(client, admin_a, researcher_b, partner_b):
    client.force_login(admin_a)
    url = reverse("membership_update", args=[researcher_b.membership.pk])
    assert client.post(url, {"action": "deactivate"}).status_code == 404
    researcher_b.refresh_from_db()
    assert researcher_b.is_active
    response = client.post(
        reverse("invitation_create", args=[partner_b.pk]), {"email": "x@y.example", "role": "researcher"}
    )
    assert response.status_code == 404


def test_researcher_cannot_invite_into_own_organisation(client, researcher_a, partner_a):
    client.force_login(researcher_a)
    response = client.post(
        reverse("invitation_create", args=[partner_a.pk]), {"email": "x@y.example", "role": "researcher"}
    )
    assert response.status_code == 403
    assert not Invitation.objects.exists()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"email": "not an email", "role": "researcher"}, "Enter a valid email address"),
        ({"email": "researcher@partner-a.example", "role": "researcher"}, "already has an account"),
        ({"email": "new@partner-a.example", "role": "overlord"}, "Choose one of the roles listed"),
    ],
)
def test_bad_invitations_show_a_message_next_to_the_field(client, admin_a, researcher_a, partner_a, data, message):
    client.force_login(admin_a)
    response = client.post(reverse("invitation_create", args=[partner_a.pk]), data)
    assert response.status_code == 400
    assert message in response.content.decode()
    assert not Invitation.objects.exists()


def test_invitation_link_flow(client, admin_a, partner_a, django_capture_on_commit_callbacks):
    from django.core import mail

    client.force_login(admin_a)
    with django_capture_on_commit_callbacks(execute=True):
        client.post(
            reverse("invitation_create", args=[partner_a.pk]), {"email": "new@partner-a.example", "role": "signatory"}
        )
    link = next(line for line in mail.outbox[0].body.splitlines() if "/invitations/accept/" in line)
    path = link.split("127.0.0.1:8000")[-1]
    client.logout()

    mismatch = client.post(path, {"full_name": "New", "password1": "a long enough password", "password2": "different"})
    assert "The two passwords differ" in mismatch.content.decode()

    response = client.post(
        path, {"full_name": "New Person", "password1": "a long enough password", "password2": "a long enough password"}
    )
    assert response.status_code == 302
    assert client.get("/").status_code == 200
    client.logout()
    reused = client.get(path)
    assert reused.status_code == 410
    assert "already been used" in reused.content.decode()


def test_lab_admin_only_reaches_the_django_admin(client, lab_admin, legal, researcher_a):
    client.force_login(lab_admin)
    assert client.get("/admin/").status_code == 200
    assert client.get("/admin/accounts/organization/").status_code == 200
    for user in (legal, researcher_a):
        client.force_login(user)
        assert client.get("/admin/").status_code in (302, 403)
    client.logout()
    response = client.get("/admin/", follow=True)
    assert response.redirect_chain[-1][0].startswith(reverse("account_login"))


def test_admin_is_read_only(client, lab_admin, partner_a):
    client.force_login(lab_admin)
    assert client.get("/admin/accounts/organization/add/").status_code == 403
    response = client.post(f"/admin/accounts/organization/{partner_a.pk}/delete/", {"post": "yes"})
    assert response.status_code == 403
    assert Organization.objects.filter(pk=partner_a.pk).exists()


def test_unknown_pages_use_the_product_404(client, researcher_a):
    client.force_login(researcher_a)
    response = client.get("/organizations/999999/")
    assert response.status_code == 404
    assert "Page not found" in response.content.decode()


def test_role_form_refuses_unknown_role(client, admin_a, researcher_a):
    client.force_login(admin_a)
    response = client.post(
        reverse("membership_update", args=[researcher_a.membership.pk]),
        {"action": "role", "role": "legal"},
        follow=True,
    )
    assert "Choose one of the roles listed" in response.content.decode()
    researcher_a.membership.refresh_from_db()
    assert researcher_a.membership.role == Role.RESEARCHER

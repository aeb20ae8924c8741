"""Organisations, invitations and members: who may do what, and what bad input gets."""

from __future__ import annotations

import pytest
import time_machine
from django.core import mail
from django.core.exceptions import PermissionDenied, ValidationError
from django.utils import timezone

from accounts import services
from accounts.models import Invitation, Membership, Organization, Role, User
from audit.models import AuditEvent

pytestmark = pytest.mark.django_db


def last_action() -> str:
    return AuditEvent.objects.order_by("-seq").first().action


def test_lab_admin_creates_an_organisation_and_it_is_audited(lab_admin):
    org = services.organization_create(actor=lab_admin, name="Acme", legal_name="Acme Research Ltd")
    assert org.kind == Organization.Kind.PARTNER
    assert last_action() == "organization.created"


@pytest.mark.parametrize("persona", ["legal", "auditor", "admin_a", "researcher_a"])
def test_only_lab_admins_create_organisations(request, persona):
    user = request.getfixturevalue(persona)
    with pytest.raises(PermissionDenied):
        services.organization_create(actor=user, name="Acme", legal_name="Acme Ltd")
    assert not Organization.objects.filter(name="Acme").exists()


def test_duplicate_organisation_name_is_refused(lab_admin, partner_a):
    with pytest.raises(ValidationError) as excinfo:
        services.organization_create(actor=lab_admin, name="partner a", legal_name="Other")
    assert "already exists" in str(excinfo.value)


def test_a_second_lab_is_refused(lab_admin):
    with pytest.raises(ValidationError, match="already a lab"):
        services.organization_create(actor=lab_admin, name="Lab 2", legal_name="Lab 2", kind="lab")


def test_invitation_emails_a_one_time_link(lab_admin, partner_a, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        invitation, token = services.invitation_create(
            actor=lab_admin, organization=partner_a, email="New.Person@Partner-A.example", role=Role.RESEARCHER
        )
    assert invitation.email == "new.person@partner-a.example"
    assert invitation.token_hash != token  # only the hash is stored
    assert len(mail.outbox) == 1
    assert mail.outbox[0].to == ["new.person@partner-a.example"]
    assert f"/invitations/accept/{token}/" in mail.outbox[0].body
    assert last_action() == "invitation.sent"


def test_accepting_creates_the_user_in_the_organisation_once(lab_admin, partner_a):
    _, token = services.invitation_create(
        actor=lab_admin, organization=partner_a, email="new@partner-a.example", role=Role.SIGNATORY
    )
    user = services.invitation_accept(token=token, full_name="New Person", password="a long enough password")
    assert user.membership.organization == partner_a
    assert user.membership.role == Role.SIGNATORY
    assert user.check_password("a long enough password")
    with pytest.raises(ValidationError, match="already been used"):
        services.invitation_accept(token=token, full_name="Again", password="a long enough password")
    assert User.objects.filter(email="new@partner-a.example").count() == 1


def test_an_expired_invitation_is_refused_and_creates_nothing(lab_admin, partner_a):
    _, token = services.invitation_create(
        actor=lab_admin, organization=partner_a, email="late@partner-a.example", role=Role.RESEARCHER
    )
    with (
        time_machine.travel(timezone.now() + timezone.timedelta(days=8)),
        pytest.raises(ValidationError, match="expired"),
    ):
        services.invitation_accept(token=token, full_name="Late", password="a long enough password")
    assert not User.objects.filter(email="late@partner-a.example").exists()


def test_a_weak_password_is_refused_and_the_link_still_works(lab_admin, partner_a):
    _, token = services.invitation_create(
        actor=lab_admin, organization=partner_a, email="weak@partner-a.example", role=Role.RESEARCHER
    )
    with pytest.raises(ValidationError) as excinfo:
        services.invitation_accept(token=token, full_name="Weak", password="123")
    assert "password1" in excinfo.value.error_dict
    assert not User.objects.filter(email="weak@partner-a.example").exists()
    services.invitation_accept(token=token, full_name="Weak", password="now a much better one")


def test_an_unknown_token_is_refused(db):
    with pytest.raises(ValidationError, match="not valid"):
        services.invitation_from_token("nope")


@pytest.mark.parametrize(
    ("email", "role", "field", "message"),
    [
        ("not-an-email", Role.RESEARCHER, "email", "not a valid email"),
        ("researcher@partner-a.example", Role.RESEARCHER, "email", "already has an account"),
        ("x@partner-a.example", "overlord", "role", "Unknown role"),
        ("x@partner-a.example", Role.LEGAL, "role", "partner user can be"),
    ],
)
def test_bad_invitations_are_refused_with_a_message_on_the_field(
    lab_admin, partner_a, researcher_a, email, role, field, message
):
    with pytest.raises(ValidationError) as excinfo:
        services.invitation_create(actor=lab_admin, organization=partner_a, email=email, role=role)
    assert field in excinfo.value.error_dict
    assert message in " ".join(excinfo.value.message_dict[field])
    assert Invitation.objects.count() == 0


def test_a_pending_invitation_blocks_a_second_one_until_it_expires(lab_admin, partner_a):
    services.invitation_create(actor=lab_admin, organization=partner_a, email="p@partner-a.example", role="researcher")
    with pytest.raises(ValidationError, match="pending invitation"):
        services.invitation_create(
            actor=lab_admin, organization=partner_a, email="p@partner-a.example", role="researcher"
        )
    with time_machine.travel(timezone.now() + timezone.timedelta(days=8)):
        services.invitation_create(
            actor=lab_admin, organization=partner_a, email="p@partner-a.example", role="researcher"
        )
    assert Invitation.objects.filter(email="p@partner-a.example", revoked_at__isnull=False).count() == 1


def test_partner_admin_invites_to_own_organisation_only(admin_a, partner_a, partner_b):
    services.invitation_create(actor=admin_a, organization=partner_a, email="mine@partner-a.example", role="researcher")
    with pytest.raises(PermissionDenied):
        services.invitation_create(actor=admin_a, organization=partner_b, email="theirs@b.example", role="researcher")


@pytest.mark.parametrize("persona", ["signer_a", "researcher_a", "legal", "auditor"])
def test_other_roles_cannot_invite(request, persona, partner_a):
    with pytest.raises(PermissionDenied):
        services.invitation_create(
            actor=request.getfixturevalue(persona),
            organization=partner_a,
            email="x@partner-a.example",
            role="researcher",
        )


def test_partner_admin_changes_roles_and_deactivates_in_own_organisation(admin_a, researcher_a, researcher_b):
    membership = services.membership_change_role(actor=admin_a, membership=researcher_a.membership, role=Role.SIGNATORY)
    assert membership.role == Role.SIGNATORY
    assert last_action() == "user.role_changed"
    services.user_set_active(actor=admin_a, user=researcher_a, active=False)
    researcher_a.refresh_from_db()
    assert not researcher_a.is_active
    with pytest.raises(PermissionDenied):
        services.user_set_active(actor=admin_a, user=researcher_b, active=False)
    with pytest.raises(ValidationError):
        services.membership_change_role(actor=admin_a, membership=admin_a.membership, role=Role.RESEARCHER)


def test_a_user_belongs_to_exactly_one_organisation(partner_a, partner_b, researcher_a):
    from django.db import IntegrityError, transaction

    with pytest.raises(IntegrityError), transaction.atomic():
        Membership.objects.create(user=researcher_a, organization=partner_b, role=Role.RESEARCHER)

"""Every write to organisations, users and invitations. Each is atomic and audited."""

from __future__ import annotations

import secrets
from collections.abc import Collection, Iterable
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.mail import send_mail
from django.core.validators import validate_email
from django.db import transaction
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from knox.models import AuthToken
from knox.settings import knox_settings

from accounts.models import (
    ESSENTIAL_KINDS,
    Invitation,
    Membership,
    Notification,
    NotificationKind,
    NotificationOptOut,
    Organization,
    Role,
    User,
    hash_token,
)
from accounts.permissions import REAUTH_WINDOW, require_role, role_of
from accounts.selectors import api_token_manageable, notification_recipients, notification_settings
from audit import events
from audit.services import audit_append
from core.tasks import task_send_on_commit


def _require_manager_of(actor: User, organization: Organization) -> None:
    """Lab admins manage every organisation's users; a partner admin only their own."""
    role = role_of(actor)
    if role == Role.LAB_ADMIN:
        return
    if role == Role.PARTNER_ADMIN and actor.membership.organization_id == organization.pk:
        return
    raise PermissionDenied("Only a lab admin or this organisation's admin can manage its users.")


def _check_role_fits(organization: Organization, role: str) -> None:
    if role not in Role.values:
        raise ValidationError({"role": f"Unknown role {role!r}."})
    if role not in Role.for_kind(organization.kind):
        allowed = ", ".join(r.label for r in Role.for_kind(organization.kind))
        raise ValidationError({"role": f"A {organization.get_kind_display().lower()} user can be: {allowed}."})


@transaction.atomic
def organization_create(
    *,
    actor: User | None,
    name: str,
    legal_name: str,
    kind: str = Organization.Kind.PARTNER,
    jurisdiction: str = "",
    address: str = "",
    contact_email: str = "",
) -> Organization:
    """Create an organisation. `actor` is None only for set-up commands (seed_demo)."""
    if actor is not None:
        require_role(actor, Role.LAB_ADMIN)
    name, legal_name = name.strip(), legal_name.strip()
    if not name:
        raise ValidationError({"name": "Give the organisation a name."})
    if Organization.objects.filter(name__iexact=name).exists():
        raise ValidationError({"name": f"An organisation called {name!r} already exists."})
    if kind not in Organization.Kind.values:
        raise ValidationError({"kind": f"Unknown kind {kind!r}."})
    if kind == Organization.Kind.LAB and Organization.objects.filter(kind=kind).exists():
        raise ValidationError({"kind": "There is already a lab; new organisations are partners."})
    organization = Organization.objects.create(
        name=name,
        legal_name=legal_name or name,
        kind=kind,
        jurisdiction=jurisdiction.strip(),
        address=address.strip(),
        contact_email=contact_email.strip().lower(),
    )
    audit_append(
        actor=actor,
        action=events.ORGANIZATION_CREATED,
        target=organization,
        data={"name": organization.name, "legal_name": organization.legal_name, "kind": organization.kind},
    )
    return organization


@transaction.atomic
def organization_update(*, actor: User, organization: Organization, **fields: str) -> Organization:
    require_role(actor, Role.LAB_ADMIN)
    editable = {"legal_name", "jurisdiction", "address", "contact_email"}
    unknown = set(fields) - editable
    if unknown:
        raise ValidationError(f"These fields cannot be changed here: {', '.join(sorted(unknown))}.")
    changes = {}
    for field, value in fields.items():
        value = value.strip()
        if getattr(organization, field) != value:
            changes[field] = {"from": getattr(organization, field), "to": value}
            setattr(organization, field, value)
    if not organization.legal_name:
        raise ValidationError({"legal_name": "The legal name cannot be empty."})
    if changes:
        organization.save(update_fields=list(changes))
        audit_append(actor=actor, action=events.ORGANIZATION_UPDATED, target=organization, data=changes)
    return organization


@transaction.atomic
def user_create(
    *,
    actor: User | None,
    organization: Organization,
    email: str,
    role: str,
    password: str | None,
    full_name: str = "",
) -> User:
    """Create a user with a membership. Used by invitation acceptance and set-up commands."""
    email = _clean_email(email)
    _check_role_fits(organization, role)
    if User.objects.filter(email__iexact=email).exists():
        raise ValidationError({"email": f"A user with the email {email} already exists."})
    user = User.objects.create_user(email=email, password=password, full_name=full_name.strip())
    Membership.objects.create(user=user, organization=organization, role=role)
    audit_append(
        actor=actor or user,
        action=events.USER_CREATED,
        target=user,
        organization=organization,
        data={"email": email, "role": role},
    )
    return user


def _clean_email(email: str) -> str:
    email = (email or "").strip().lower()
    try:
        validate_email(email)
    except ValidationError:
        raise ValidationError({"email": f"{email or 'An empty value'} is not a valid email address."}) from None
    return email


@transaction.atomic
def invitation_create(*, actor: User, organization: Organization, email: str, role: str) -> tuple[Invitation, str]:
    """Invite a person by email; returns the invitation and its one-time token."""
    _require_manager_of(actor, organization)
    email = _clean_email(email)
    _check_role_fits(organization, role)
    if not organization.active:
        raise ValidationError("This organisation is deactivated; reactivate it before inviting users.")
    if User.objects.filter(email__iexact=email).exists():
        raise ValidationError({"email": f"{email} already has an account."})
    now = timezone.now()
    pending = Invitation.objects.select_for_update().filter(email=email, accepted_at=None, revoked_at=None).first()
    if pending is not None:
        if not pending.is_expired:
            raise ValidationError({"email": f"{email} already has a pending invitation; revoke it to send a new one."})
        pending.revoked_at = now
        pending.save(update_fields=["revoked_at"])
    token = secrets.token_urlsafe(32)
    invitation = Invitation.objects.create(
        organization=organization,
        email=email,
        role=role,
        token_hash=hash_token(token),
        invited_by=actor,
        expires_at=now + timedelta(days=settings.INVITATION_TTL_DAYS),
    )
    audit_append(
        actor=actor,
        action=events.INVITATION_SENT,
        target=invitation,
        data={"email": email, "role": role, "expires_at": invitation.expires_at.isoformat()},
    )
    task_send_on_commit("accounts.tasks.send_invitation_email", invitation.pk, token)
    return invitation, token


@transaction.atomic
def invitation_revoke(*, actor: User, invitation: Invitation) -> Invitation:
    _require_manager_of(actor, invitation.organization)
    if not invitation.is_open:
        raise ValidationError(f"This invitation is already {invitation.status}.")
    invitation.revoked_at = timezone.now()
    invitation.save(update_fields=["revoked_at"])
    audit_append(actor=actor, action=events.INVITATION_REVOKED, target=invitation, data={"email": invitation.email})
    return invitation


def invitation_from_token(token: str) -> Invitation:
    """The open, unexpired invitation for a token, or a ValidationError that says why not."""
    invitation = Invitation.objects.select_related("organization").filter(token_hash=hash_token(token)).first()
    if invitation is None:
        raise ValidationError("This invitation link is not valid. Check that you copied the whole link.")
    if invitation.accepted_at:
        raise ValidationError("This invitation has already been used. Sign in with your email and password.")
    if invitation.revoked_at:
        raise ValidationError("This invitation was withdrawn. Ask your administrator for a new one.")
    if invitation.is_expired:
        raise ValidationError("This invitation has expired. Ask your administrator to send a new one.")
    return invitation


@transaction.atomic
def invitation_accept(*, token: str, full_name: str, password: str) -> User:
    """Create the invited person's account; the link works once."""
    invitation = invitation_from_token(token)
    # Lock the row: two clicks on the same link must not create two accounts.
    invitation = Invitation.objects.select_for_update().get(pk=invitation.pk)
    if not invitation.is_open:
        raise ValidationError("This invitation has already been used. Sign in with your email and password.")
    if not full_name.strip():
        raise ValidationError({"full_name": "Enter your full name."})
    probe = User(email=invitation.email, full_name=full_name)
    try:
        validate_password(password, user=probe)
    except ValidationError as exc:
        raise ValidationError({"password1": exc.messages}) from None
    user = user_create(
        actor=None,
        organization=invitation.organization,
        email=invitation.email,
        role=invitation.role,
        password=password,
        full_name=full_name,
    )
    invitation.accepted_at = timezone.now()
    invitation.save(update_fields=["accepted_at"])
    audit_append(actor=user, action=events.INVITATION_ACCEPTED, target=invitation, data={"email": user.email})
    return user


@transaction.atomic
def membership_change_role(*, actor: User, membership: Membership, role: str) -> Membership:
    _require_manager_of(actor, membership.organization)
    _check_role_fits(membership.organization, role)
    if membership.user_id == actor.pk:
        raise ValidationError({"role": "You cannot change your own role; ask another admin."})
    old = membership.role
    if old != role:
        membership.role = role
        membership.save(update_fields=["role"])
        audit_append(
            actor=actor,
            action=events.USER_ROLE_CHANGED,
            target=membership.user,
            organization=membership.organization,
            data={"from": old, "to": role},
        )
    return membership


@transaction.atomic
def user_set_active(*, actor: User, user: User, active: bool) -> User:
    """Deactivate (signs the user out everywhere: no new logins) or reactivate a user.

    Deactivating revokes the user's API tokens in the same transaction: an inactive user's token is
    refused anyway, but reactivating must not bring old tokens back to life. Reactivating revokes any
    left from before tokens were revoked this way; the user creates new ones.
    """
    _require_manager_of(actor, user.membership.organization)
    if user.pk == actor.pk:
        raise ValidationError("You cannot deactivate yourself.")
    if user.is_active != active:
        user.is_active = active
        user.save(update_fields=["is_active"])
        revoked = _api_tokens_revoke_all(
            actor=actor, user=user, reason="user reactivated" if active else "user deactivated"
        )
        audit_append(
            actor=actor,
            action=events.USER_REACTIVATED if active else events.USER_DEACTIVATED,
            target=user,
            organization=user.membership.organization,
            data={"api_tokens_revoked": revoked} if revoked else None,
        )
    return user


@transaction.atomic
def user_set_password(*, actor: User | None, user: User, password: str) -> User:
    """Set-up commands only (seed_demo --password); people change theirs through allauth."""
    user.set_password(password)
    user.save(update_fields=["password"])
    audit_append(actor=actor, action=events.USER_PASSWORD_SET, target=user, organization=user.organization)
    return user


# --- API tokens ------------------------------------------------------------------------------------
# django-rest-knox AuthTokens: bound to one user, stored only as a SHA-512 digest, shown once, expiring,
# several per user. A token acts with its user's role and organisation, so deactivating the user or
# changing their role takes effect on the token at once.

API_TOKEN_EXPIRY_DAYS_MAX = 3650
# Enough for every pipeline a person runs; a leak of many forgotten tokens is the risk above it.
API_TOKENS_LIVE_PER_USER = 20


def api_token_default_expiry_days() -> int:
    ttl: timedelta = knox_settings.TOKEN_TTL
    return max(1, ttl.days)


@transaction.atomic
def api_token_create(
    *,
    actor: User | None,
    user: User,
    expiry_days: int | None = None,
    reauthenticated_at: datetime | None = None,
) -> tuple[AuthToken, str]:
    """Create a token for `user`; returns it and the key, which is never shown again.

    From the web, `actor` is the user, who must have confirmed their identity in the last five minutes.
    `actor=None` is an operator at the command line (`manage.py token_create`).
    """
    now = timezone.now()
    if actor is not None:
        if actor.pk != user.pk:
            raise PermissionDenied("People create API tokens for themselves only.")
        if reauthenticated_at is None or now - reauthenticated_at > REAUTH_WINDOW:
            raise ValidationError(
                "Confirm it is you (password or authenticator code) in the last 5 minutes, then create the token."
            )
    if not user.is_active or role_of(user) is None:
        raise ValidationError(f"{user.email} is deactivated or has no role in an organisation; a token would not work.")
    days = api_token_default_expiry_days() if expiry_days is None else expiry_days
    if not 1 <= days <= API_TOKEN_EXPIRY_DAYS_MAX:
        raise ValidationError({"expiry_days": f"A token lasts 1 to {API_TOKEN_EXPIRY_DAYS_MAX:,} days."})
    live = AuthToken.objects.select_for_update().filter(user=user, expiry__gt=now)
    if len(live) >= API_TOKENS_LIVE_PER_USER:
        raise ValidationError(f"{user.email} has {API_TOKENS_LIVE_PER_USER} live tokens; revoke one you no longer use.")
    token, key = AuthToken.objects.create(user=user, expiry=timedelta(days=days))
    audit_append(
        actor=actor,
        action=events.API_TOKEN_CREATED,
        target=user,
        data={"token": token.token_key, "expires_at": token.expiry.isoformat(), "via": "web" if actor else "command"},
    )
    return token, key


def _api_tokens_revoke_all(*, actor: User, user: User, reason: str) -> list[str]:
    """Delete every token of `user`, one audited revocation each; returns their key prefixes."""
    tokens = list(AuthToken.objects.select_for_update().filter(user=user).order_by("created"))
    for token in tokens:
        audit_append(
            actor=actor,
            action=events.API_TOKEN_REVOKED,
            target=user,
            organization=user.membership.organization,
            data={"token": token.token_key, "owner": user.email, "reason": reason},
        )
    AuthToken.objects.filter(pk__in=[token.pk for token in tokens]).delete()
    return [token.token_key for token in tokens]


@transaction.atomic
def api_token_revoke(*, actor: User, token: AuthToken) -> None:
    """Revoke at once: the next request with the token is 401."""
    if role_of(actor) is None or (token.user_id != actor.pk and not api_token_manageable(actor, token)):
        raise PermissionDenied("Only the token's owner or an admin of their organisation can revoke it.")
    audit_append(
        actor=actor,
        action=events.API_TOKEN_REVOKED,
        target=token.user,
        data={"token": token.token_key, "owner": token.user.email},
    )
    AuthToken.objects.filter(digest=token.digest).delete()


# --- Notifications ----------------------------------------------------------------------------------
# Each notice is written in the transaction of the change it tells of (a rolled-back change tells
# nobody) and emailed once after it commits. Notices are not audited one by one: the change they tell
# of already is, and the audit chain is for what people and the system did, not for what they were told.


@transaction.atomic
def notifications_record(
    *, users: Iterable[User], kind: str, title: str, body: str, url: str, dedupe_key: str
) -> list[Notification]:
    """Store the notice for each active user who has not switched its kind off; returns those not yet emailed.

    The same `dedupe_key` for the same user is stored once: a repeated call (a redelivered task) adds
    nothing, and returns a row again only while its email has not gone out.
    """
    if kind not in NotificationKind.values:
        raise ValueError(f"Unknown notification kind {kind!r}.")
    if not url.startswith("/") or url.startswith("//"):
        raise ValueError(f"A notification links to a path on this site, not {url!r}.")
    recipients = notification_recipients(users=list(users), kind=kind)
    if not recipients:
        return []
    now = timezone.now()
    Notification.objects.bulk_create(
        [
            Notification(
                user=user, kind=kind, title=title[:200], body=body, url=url, dedupe_key=dedupe_key, created_at=now
            )
            for user in recipients
        ],
        ignore_conflicts=True,  # the notice is already there: the unique (user, dedupe_key) says so
    )
    return list(
        Notification.objects.filter(user__in=recipients, dedupe_key=dedupe_key, emailed_at=None)
        .select_related("user")
        .order_by("user__email")
    )


def notifications_send(
    *, users: Iterable[User], kind: str, title: str, body: str, url: str, dedupe_key: str
) -> list[Notification]:
    """Store the notice (notifications_record) and email each new one once the transaction commits."""
    notifications = notifications_record(users=users, kind=kind, title=title, body=body, url=url, dedupe_key=dedupe_key)
    for notification in notifications:
        task_send_on_commit("accounts.tasks.email_notification", notification.pk)
    return notifications


def notification_email(*, notification: Notification) -> bool:
    """Email one notice, at most once; False when it was emailed already (or its reader left).

    Claim first with a conditional UPDATE: a task redelivered under acks_late, or two workers at
    once, find the row claimed and send nothing. A failed send gives the claim back, so the retry
    can send it.
    """
    claimed_at = timezone.now()
    claimed = Notification.objects.filter(pk=notification.pk, emailed_at=None, user__is_active=True).update(
        emailed_at=claimed_at
    )
    if not claimed:
        return False
    notification = Notification.objects.select_related("user").get(pk=notification.pk)
    context = {
        "notification": notification,
        "url": settings.SITE_URL + notification.url,
        "settings_url": settings.SITE_URL + reverse("notification_settings"),
    }
    try:
        send_mail(
            subject=notification.title,
            message=render_to_string("accounts/email/notification.txt", context),
            from_email=None,
            recipient_list=[notification.user.email],
        )
    except Exception:
        Notification.objects.filter(pk=notification.pk, emailed_at=claimed_at).update(emailed_at=None)
        raise
    return True


def notification_mark_read(*, user: User, notification: Notification) -> Notification:
    """Mark one of the user's own notices read. Not audited: it changes only what that person sees."""
    if notification.user_id != user.pk:
        raise PermissionDenied("People mark only their own notifications read.")
    if notification.read_at is None:
        notification.read_at = timezone.now()
        Notification.objects.filter(pk=notification.pk, read_at=None).update(read_at=notification.read_at)
    return notification


def notifications_mark_all_read(*, user: User) -> int:
    """Mark every unread notice of the user read; returns how many were unread."""
    return Notification.objects.filter(user=user, read_at=None).update(read_at=timezone.now())


@transaction.atomic
def notification_settings_set(*, actor: User, enabled: Collection[str]) -> list[str]:
    """Switch the actor's optional kinds on (those in `enabled`) or off (the rest); returns the kinds now off.

    Essential kinds cannot be switched off; naming one is harmless, naming an unknown kind is refused.
    """
    offered = {setting.kind for setting in notification_settings(user=actor)}
    unknown = sorted(set(enabled) - offered)
    if unknown:
        raise ValidationError(
            {"enabled": f"{', '.join(unknown)} is not a notification you receive; choose from the list."}
        )
    wanted_off = sorted(kind for kind in offered - set(enabled) if kind not in ESSENTIAL_KINDS)
    before = sorted(NotificationOptOut.objects.filter(user=actor).values_list("kind", flat=True))
    if wanted_off != before:
        NotificationOptOut.objects.filter(user=actor).exclude(kind__in=wanted_off).delete()
        NotificationOptOut.objects.bulk_create(
            [NotificationOptOut(user=actor, kind=kind) for kind in wanted_off], ignore_conflicts=True
        )
        audit_append(
            actor=actor,
            action=events.NOTIFICATION_SETTINGS_CHANGED,
            target=actor,
            organization=actor.organization,
            data={"switched_off": wanted_off, "before": before},
        )
    return wanted_off

"""Every read of organisations and users, scoped to what the asking user may see."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Count, Q, QuerySet
from django.http import Http404
from knox.models import AuthToken

from accounts.models import (
    ESSENTIAL_KINDS,
    KIND_AUDIENCE,
    LAB_ROLES,
    Invitation,
    Membership,
    Notification,
    NotificationKind,
    NotificationOptOut,
    Organization,
    Role,
    User,
)
from accounts.permissions import require_role, role_of


def organization_list(*, user: User) -> QuerySet[Organization]:
    """All organisations, for lab staff only (partners never see each other)."""
    require_role(user, *LAB_ROLES)
    return Organization.objects.annotate(
        member_count=Count("memberships", filter=Q(memberships__user__is_active=True))
    ).order_by("kind", "name")


def organization_get(*, user: User, pk: int) -> Organization:
    """One organisation: lab staff see any; a partner user only their own (others are 404)."""
    role = role_of(user)
    if role is None:
        raise Http404
    organization = Organization.objects.filter(pk=pk).first()
    if organization is None:
        raise Http404
    if role not in LAB_ROLES and user.membership.organization_id != organization.pk:
        raise Http404
    return organization


def membership_list(*, user: User, organization: Organization) -> QuerySet[Membership]:
    organization_get(user=user, pk=organization.pk)
    return Membership.objects.filter(organization=organization).select_related("user").order_by("user__email")


def membership_get(*, user: User, pk: int) -> Membership:
    membership = Membership.objects.select_related("user", "organization").filter(pk=pk).first()
    if membership is None:
        raise Http404
    organization_get(user=user, pk=membership.organization_id)
    return membership


def invitation_list(*, user: User, organization: Organization) -> QuerySet[Invitation]:
    """Open invitations; only those who manage the organisation's users see them."""
    organization_get(user=user, pk=organization.pk)
    if not can_manage_users(user, organization):
        return Invitation.objects.none()
    return Invitation.objects.filter(organization=organization, accepted_at=None, revoked_at=None).select_related(
        "invited_by"
    )


def invitation_get(*, user: User, pk: int) -> Invitation:
    invitation = Invitation.objects.select_related("organization").filter(pk=pk).first()
    if invitation is None:
        raise Http404
    organization_get(user=user, pk=invitation.organization_id)
    return invitation


def can_manage_users(user: User, organization: Organization) -> bool:
    role = role_of(user)
    return role == Role.LAB_ADMIN or (role == Role.PARTNER_ADMIN and user.membership.organization_id == organization.pk)


def lab_organization() -> Organization | None:
    return Organization.objects.filter(kind=Organization.Kind.LAB).first()


def api_token_list(*, user: User) -> QuerySet[AuthToken]:
    """The user's own tokens, newest first (expired ones too, until knox clears them)."""
    tokens: QuerySet[AuthToken] = AuthToken.objects.filter(user=user)  # knox ships no type hints
    return tokens.order_by("-created", "-token_key")


def api_token_managed_list(*, user: User) -> QuerySet[AuthToken]:
    """Other people's tokens this user may revoke: a partner admin's organisation's; a lab admin's, all."""
    role = role_of(user)
    tokens: QuerySet[AuthToken] = AuthToken.objects.exclude(user=user)  # knox ships no type hints
    tokens = tokens.select_related("user__membership__organization")
    if role == Role.LAB_ADMIN:
        return tokens.order_by("user__email", "-created")
    if role == Role.PARTNER_ADMIN:
        organization_id = user.membership.organization_id
        return tokens.filter(user__membership__organization_id=organization_id).order_by("user__email", "-created")
    return tokens.none()


def api_token_get(*, user: User, key: str) -> AuthToken:
    """One token by its public prefix: the user's own, or one they manage; anything else is 404."""
    token = AuthToken.objects.select_related("user__membership__organization").filter(token_key=key).first()
    if token is None or role_of(user) is None:
        raise Http404
    if token.user_id != user.pk and not api_token_manageable(user, token):
        raise Http404
    return token


def api_token_manageable(user: User, token: AuthToken) -> bool:
    membership = getattr(token.user, "membership", None)
    return membership is not None and can_manage_users(user, membership.organization)


# --- Notifications: a person sees their own, and nobody else's --------------------------------------

HOME_NOTIFICATIONS = 5


def notification_list(*, user: User) -> QuerySet[Notification]:
    """The user's own notifications, newest first."""
    return Notification.objects.filter(user=user).order_by("-created_at", "-pk")


def notification_get(*, user: User, pk: int) -> Notification:
    """One of the user's own notifications; anyone else's is 404, as if it did not exist."""
    notification = Notification.objects.filter(user=user, pk=pk).first()
    if notification is None:
        raise Http404
    return notification


def notification_home(*, user: User) -> dict[str, object]:
    """The home page's panel: the latest few, and how many are unread in all."""
    notifications = notification_list(user=user)
    return {
        "notifications": list(notifications[:HOME_NOTIFICATIONS]),
        "unread_notification_count": notifications.filter(read_at=None).count(),
    }


@dataclass(frozen=True)
class NotificationSetting:
    kind: str
    label: str
    essential: bool
    enabled: bool


def notification_settings(*, user: User) -> list[NotificationSetting]:
    """The kinds this user's role receives, essential ones first, each with whether it is on."""
    role = role_of(user)
    if role is None:
        raise Http404
    off = set(NotificationOptOut.objects.filter(user=user).values_list("kind", flat=True))
    settings = [
        NotificationSetting(
            kind=kind.value, label=kind.label, essential=kind in ESSENTIAL_KINDS, enabled=kind.value not in off
        )
        for kind in NotificationKind
        if role in KIND_AUDIENCE[kind]
    ]
    return sorted(settings, key=lambda s: not s.essential)


def notification_recipients(*, users: list[User], kind: str) -> list[User]:
    """Those of `users` who are active and have not switched `kind` off (essential kinds reach everyone active)."""
    active = [user for user in dict.fromkeys(users) if user.is_active]
    if kind in ESSENTIAL_KINDS or not active:
        return active
    off = set(NotificationOptOut.objects.filter(user__in=active, kind=kind).values_list("user_id", flat=True))
    return [user for user in active if user.pk not in off]

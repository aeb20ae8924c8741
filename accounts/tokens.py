"""API tokens: the reads and the audited writes behind the API tokens page and `manage.py token_create`.

Tokens are django-rest-knox AuthTokens: bound to one user, stored only as a SHA-512 digest, shown once,
expiring, several per user. A token acts with its user's role and organisation, so deactivating the
user or changing their role takes effect on the token at once.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import QuerySet
from django.http import Http404
from django.utils import timezone
from knox.models import AuthToken
from knox.settings import knox_settings

from accounts.models import Role, User
from accounts.permissions import REAUTH_WINDOW, role_of
from accounts.selectors import can_manage_users
from audit import events
from audit.services import audit_record

EXPIRY_DAYS_MAX = 3650
# Enough for every pipeline a person runs; a leak of many forgotten tokens is the risk above it.
LIVE_TOKENS_PER_USER = 20


def default_expiry_days() -> int:
    return max(1, knox_settings.TOKEN_TTL.days)


# --- Reads ------------------------------------------------------------------------------------------


def api_token_list(*, user: User) -> QuerySet[AuthToken]:
    """The user's own tokens, newest first (expired ones too, until knox clears them)."""
    return AuthToken.objects.filter(user=user).order_by("-created", "-token_key")


def api_token_managed_list(*, user: User) -> QuerySet[AuthToken]:
    """Other people's tokens this user may revoke: a partner admin's organisation's; a lab admin's, all."""
    role = role_of(user)
    tokens = AuthToken.objects.exclude(user=user).select_related("user__membership__organization")
    if role == Role.LAB_ADMIN:
        return tokens.order_by("user__email", "-created")
    if role == Role.PARTNER_ADMIN:
        organization_id = user.membership.organization_id
        return tokens.filter(user__membership__organization_id=organization_id).order_by("user__email", "-created")
    return AuthToken.objects.none()


def api_token_get(*, user: User, key: str) -> AuthToken:
    """One token by its public prefix: the user's own, or one they manage; anything else is 404."""
    token = AuthToken.objects.select_related("user__membership__organization").filter(token_key=key).first()
    if token is None or role_of(user) is None:
        raise Http404
    if token.user_id != user.pk and not _manages(user, token):
        raise Http404
    return token


def _manages(user: User, token: AuthToken) -> bool:
    membership = getattr(token.user, "membership", None)
    return membership is not None and can_manage_users(user, membership.organization)


# --- Writes -----------------------------------------------------------------------------------------


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
    days = default_expiry_days() if expiry_days is None else expiry_days
    if not 1 <= days <= EXPIRY_DAYS_MAX:
        raise ValidationError({"expiry_days": f"A token lasts 1 to {EXPIRY_DAYS_MAX:,} days."})
    live = AuthToken.objects.select_for_update().filter(user=user, expiry__gt=now)
    if len(live) >= LIVE_TOKENS_PER_USER:
        raise ValidationError(f"{user.email} has {LIVE_TOKENS_PER_USER} live tokens; revoke one you no longer use.")
    token, key = AuthToken.objects.create(user=user, expiry=timedelta(days=days))
    audit_record(
        actor=actor,
        action=events.API_TOKEN_CREATED,
        target=user,
        data={"token": token.token_key, "expires_at": token.expiry.isoformat(), "via": "web" if actor else "command"},
    )
    return token, key


@transaction.atomic
def api_token_revoke(*, actor: User, token: AuthToken) -> None:
    """Revoke at once: the next request with the token is 401."""
    if role_of(actor) is None or (token.user_id != actor.pk and not _manages(actor, token)):
        raise PermissionDenied("Only the token's owner or an admin of their organisation can revoke it.")
    audit_record(
        actor=actor,
        action=events.API_TOKEN_REVOKED,
        target=token.user,
        data={"token": token.token_key, "owner": token.user.email},
    )
    AuthToken.objects.filter(digest=token.digest).delete()

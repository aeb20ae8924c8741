"""Role checks shared by every app's services and selectors."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied

from accounts.models import LAB_ROLES, PARTNER_ROLES, Role

# How recently someone must have proved who they are (password or authenticator code) to sign an
# agreement or create an API token; allauth's reauthentication uses the same window.
REAUTH_WINDOW = timedelta(seconds=settings.ACCOUNT_REAUTHENTICATION_TIMEOUT)


def role_of(user: Any) -> str | None:
    if user is None or not getattr(user, "is_authenticated", False) or not user.is_active:
        return None
    membership = getattr(user, "membership", None)
    return membership.role if membership else None


def has_role(user: Any, *roles: str) -> bool:
    return role_of(user) in roles


def require_role(user: Any, *roles: str) -> None:
    """Raise PermissionDenied (a 403 in views) unless the user holds one of the roles."""
    if not has_role(user, *roles):
        allowed = ", ".join(Role(r).label for r in roles)
        raise PermissionDenied(f"This needs one of these roles: {allowed}.")


def is_lab_staff(user: Any) -> bool:
    return role_of(user) in LAB_ROLES


def is_partner(user: Any) -> bool:
    return role_of(user) in PARTNER_ROLES

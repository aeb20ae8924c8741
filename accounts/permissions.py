"""Role checks shared by every app's services and selectors."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any, cast

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest

from accounts.models import Role, User

if TYPE_CHECKING:
    from rest_framework.request import Request

# How recently someone must have proved who they are (password or authenticator code) to sign an
# agreement or create an API token; allauth's reauthentication uses the same window.
REAUTH_WINDOW = timedelta(seconds=settings.ACCOUNT_REAUTHENTICATION_TIMEOUT)


def request_user(request: HttpRequest | Request) -> User:
    """The signed-in user of a view behind login_required (or an API view behind IsAuthenticated)."""
    return cast(User, request.user)


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

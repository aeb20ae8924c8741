"""The API's view of accounts: token authentication and the role a write needs."""

from __future__ import annotations

from hmac import compare_digest
from typing import Any

from django.utils import timezone
from knox.auth import TokenAuthentication as KnoxTokenAuthentication
from knox.crypto import hash_token
from knox.models import AuthToken
from knox.settings import CONSTANTS
from rest_framework import exceptions
from rest_framework.permissions import BasePermission

from accounts.permissions import require_role


class TokenAuthentication(KnoxTokenAuthentication):
    """knox's token authentication, two queries lighter on every request, and robust to odd bytes.

    The user's membership and its organisation (role and scope: what every selector and service asks)
    come with the token in one statement, which saves a third query wherever the organisation is read
    (submitting a job, for one). Only the presented token is checked for expiry; knox also sweeps the
    user's other tokens each time, which the API tokens page shows as expired instead. A key that is
    not UTF-8 is an invalid token (401), where knox raises UnicodeDecodeError (500).
    """

    def authenticate_credentials(self, token: bytes) -> tuple[Any, AuthToken]:
        key = token.decode("utf-8", errors="replace")
        now = timezone.now()
        candidates = AuthToken.objects.filter(token_key=key[: CONSTANTS.TOKEN_KEY_LENGTH])
        for auth_token in candidates.select_related("user__membership__organization"):
            if auth_token.expiry is not None and auth_token.expiry < now:
                continue
            if compare_digest(hash_token(key), auth_token.digest):
                return self.validate_user(auth_token)
        raise exceptions.AuthenticationFailed("Invalid token: unknown, revoked or expired.")


class RoleRequired(BasePermission):
    """Refuse a write (403) before parsing its body when the caller's role may never make it.

    The service checks the role again; this only makes the answer not depend on the body.
    `RoleRequired.to("POST", *roles)` builds the class for a view's permission_classes.
    """

    methods: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()

    @classmethod
    def to(cls, method: str, *roles: str) -> type[RoleRequired]:
        return type("RoleRequired", (cls,), {"methods": (method,), "roles": roles})

    def has_permission(self, request: Any, view: Any) -> bool:
        if request.method in self.methods:
            require_role(request.user, *self.roles)  # PermissionDenied names the roles that may
        return True

"""Signing as the Standard Webhooks specification says, and keeping secrets encrypted at rest.

A secret is `whsec_` + base64 of 32 random bytes. Each request carries `webhook-id` (the event's id,
the same on every attempt), `webhook-timestamp` (seconds) and `webhook-signature`: space-separated
`v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, one per secret in force (two while an old secret
is still valid after a rotation). Receivers verify with any Standard Webhooks library.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from cryptography.fernet import Fernet
from django.conf import settings

SECRET_PREFIX = "whsec_"


def secret_generate() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def _fernet() -> Fernet:
    # Derived from SECRET_KEY: changing SECRET_KEY means rotating every endpoint's secret.
    key = hashlib.sha256(b"modelpact.webhooks.secret:" + settings.SECRET_KEY.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(key))


def secret_encrypt(secret: str) -> str:
    return _fernet().encrypt(secret.encode()).decode()


def secret_decrypt(token: str) -> str:
    return _fernet().decrypt(token.encode()).decode()


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """One `v1,<base64>` signature of the message with one secret."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def signed_headers(secrets_in_force: list[str], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(signature(s, msg_id, timestamp, body) for s in secrets_in_force),
    }

"""The base of every refusal a service raises on purpose, and what HTTP says about it.

A service raises a DomainError subclass (the access choke point's refusal, an idempotency conflict);
the API's one exception handler turns any of them into `{"error": {code, message, details}}` with
the error's status and headers, without knowing the app it came from. HTML views catch them by
class and show the message.
"""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """A refusal with a stable code for programs and a message for people."""

    status: int = 400
    code: str = "invalid"

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details or {}

    @property
    def headers(self) -> dict[str, str]:
        """Extra response headers (Retry-After, for instance); none by default."""
        return {}

"""Carries the request's IP address to audit_append without threading it through every service."""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar

from django.http import HttpRequest, HttpResponse

current_ip: ContextVar[str | None] = ContextVar("audit_current_ip", default=None)


def client_ip(request: HttpRequest) -> str | None:
    # REMOTE_ADDR is the proxy's address behind a reverse proxy; deployments that
    # terminate TLS at a proxy set it from X-Forwarded-For there (see README).
    return request.META.get("REMOTE_ADDR") or None


class AuditContextMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        token = current_ip.set(client_ip(request))
        try:
            return self.get_response(request)
        finally:
            current_ip.reset(token)

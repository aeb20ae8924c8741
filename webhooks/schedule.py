"""The webhook settings as values, read from django.conf at each use (tests change them)."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings


def retry_window() -> timedelta:
    """How long a delivery is retried before it gives up (24 hours)."""
    return timedelta(hours=settings.WEBHOOKS_RETRY_HOURS)


def disable_after() -> timedelta:
    """How long an endpoint may keep failing before it is disabled (5 days)."""
    return timedelta(days=settings.WEBHOOKS_DISABLE_AFTER_DAYS)


def backoff(attempts: int) -> timedelta:
    """The wait after the n-th failed attempt: 10 s, 20 s, 40 s, ... doubling, at most an hour."""
    seconds = settings.WEBHOOKS_RETRY_BASE_SECONDS * 2 ** max(0, attempts - 1)
    return timedelta(seconds=min(seconds, 3600))

"""System checks that `manage.py check --deploy` runs: production settings that cannot work."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register


@register(Tags.security, deploy=True)
def shared_cache_check(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """With DEBUG off there are several web processes: the login lock and throttles must be shared."""
    if settings.DEBUG or getattr(settings, "REDIS_URL", None):
        return []
    backend = str(settings.CACHES["default"]["BACKEND"])
    if not backend.endswith("LocMemCache"):
        return []
    return [
        Error(
            "REDIS_URL is not set, so the cache is each process's own memory: the sign-in lock (five wrong "
            "passwords) and the API throttle would count per process, and with several web workers an attacker "
            "gets several times the attempts.",
            hint="Set REDIS_URL to the Redis that web workers share, e.g. redis://redis.internal:6379/1.",
            id="modelpact.E001",
        )
    ]


@register(Tags.security, deploy=True)
def webhook_targets_check(app_configs: Any = None, **kwargs: Any) -> list[Warning]:
    """Private webhook targets are for development and tests: in production they open the internal network."""
    if settings.DEBUG or not getattr(settings, "WEBHOOKS_ALLOW_PRIVATE_TARGETS", False):
        return []
    return [
        Warning(
            "WEBHOOKS_ALLOW_PRIVATE_TARGETS is on: a partner admin can register a webhook that makes this "
            "server send requests to loopback, private or cloud metadata addresses.",
            hint="Unset WEBHOOKS_ALLOW_PRIVATE_TARGETS (it is off by default) outside development and tests.",
            id="modelpact.W001",
        )
    ]

"""How apps above audit hear of every change as it is recorded, without audit importing them.

An app registers a callback in its AppConfig.ready() (webhooks turns some actions into outgoing
events). `audit_append` calls each callback with the new events (those appended together, in order)
inside the caller's transaction, so a change that rolls back takes what the callbacks wrote with it;
callbacks queue their work on commit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from audit.models import AuditEvent

AuditCallback = Callable[[list["AuditEvent"]], object]  # what a callback returns is ignored

_subscribers: list[AuditCallback] = []


def subscribe(callback: AuditCallback) -> None:
    """Call `callback(events)` for the audit events appended from now on, as they are appended."""
    if callback not in _subscribers:
        _subscribers.append(callback)


def unsubscribe(callback: AuditCallback) -> None:
    if callback in _subscribers:
        _subscribers.remove(callback)


def events_appended(events: list[AuditEvent]) -> None:
    for callback in list(_subscribers):
        callback(events)

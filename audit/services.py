"""Writing the audit log: every service calls audit_append inside its own transaction."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.db import connection, models, transaction
from django.utils import timezone

from audit.hooks import events_appended
from audit.middleware import current_ip
from audit.models import GENESIS_HASH, AuditEvent, ChainHead

if TYPE_CHECKING:
    from django.contrib.auth.base_user import AbstractBaseUser
    from django.contrib.auth.models import AnonymousUser


def _normalise(data: dict[str, Any] | None) -> dict[str, Any]:
    # Store exactly what JSON round-trips to, so the hash computed now matches
    # the hash recomputed from the row read back later.
    normalised: dict[str, Any] = json.loads(json.dumps(data or {}, default=str))
    return normalised


# Any constant will do, as long as nothing else takes the same advisory lock: "mp-audit" as an integer.
AUDIT_APPEND_LOCK = int.from_bytes(b"mp-audit", "big")


def audit_append(
    *,
    actor: AbstractBaseUser | AnonymousUser | None,
    action: str,
    target: models.Model | None = None,
    organization: models.Model | None = None,
    data: dict[str, Any] | None = None,
    ip: str | None = None,
) -> AuditEvent:
    """Append one event to the chain, in the caller's transaction.

    `actor` is whoever acted (None for the system); `organization` defaults to the target's, then
    the actor's.

    Appenders queue up for the rest of the transaction, so each reads the head its
    predecessor committed. The database's insert trigger then checks that the event
    extends the head and moves the head: the chain cannot fork, and the app never
    writes the head itself.
    """
    entry = AuditEntry(action=action, target=target, organization=organization, data=data)
    [event] = audit_append_many(actor=actor, entries=[entry], ip=ip)
    return event


@dataclass(frozen=True)
class AuditEntry:
    """One event of audit_append_many: what happened, to what, for which organisation."""

    action: str
    target: models.Model | None = None
    organization: models.Model | None = None
    data: dict[str, Any] | None = None


def audit_append_many(
    *,
    actor: AbstractBaseUser | AnonymousUser | None,
    entries: list[AuditEntry],
    ip: str | None = None,
) -> list[AuditEvent]:
    """Append several events by one actor, in order, in the caller's transaction: one event per entry,
    as audit_append would write them one by one, but under one lock and in one INSERT (a worker
    starting a batch of jobs records each job's start this way)."""
    if not entries:
        return []
    actor_user = actor if getattr(actor, "pk", None) else None
    actor_email = getattr(actor, "email", "") or ""
    ip = ip if ip is not None else current_ip.get()
    # No savepoint: an audit row stands or falls with the caller's transaction anyway.
    with transaction.atomic(savepoint=False):
        head_seq, head_hash = _lock_and_read_head()
        appended: list[AuditEvent] = []
        for entry in entries:
            target, organization = entry.target, entry.organization
            if organization is None and target is not None:
                organization = _organization_of(target)
            if organization is None and actor is not None and getattr(actor, "is_authenticated", False):
                organization = getattr(actor, "organization", None)
            head_seq += 1
            # The plugin types the foreign keys as accounts' models, which audit must not import.
            event = AuditEvent(  # type: ignore[misc]
                seq=head_seq,
                created_at=timezone.now(),
                actor=actor_user,
                actor_email=actor_email,
                organization=organization,
                action=entry.action,
                target_type=target._meta.label_lower if target is not None else "",
                target_id=str(target.pk) if target is not None else "",
                target_repr=str(target)[:300] if target is not None else "",
                data=_normalise(entry.data),
                ip=ip,
                prev_hash=head_hash,
            )
            event.hash = head_hash = event.compute_hash()
            appended.append(event)
        # The insert trigger checks and moves the head row by row, in this order.
        AuditEvent.objects.bulk_create(appended)
        # Subscribers write in this same transaction: a change that rolls back leaves nothing behind.
        events_appended(appended)
    return appended


def _lock_and_read_head() -> tuple[int, str]:
    """Hold the append lock until this transaction ends, then read the head it guards.

    PostgreSQL: an advisory lock, since SELECT ... FOR UPDATE on the head needs UPDATE
    privilege, which the app's role does not have. Both statements go in one round trip; each
    takes its own snapshot, so the head is read after the lock is held and sees what the previous
    appender committed. SQLite: no lock to take, the IMMEDIATE transaction already holds the
    database's only write lock.
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT pg_advisory_xact_lock(%s); SELECT seq, hash FROM {ChainHead._meta.db_table} WHERE id = 1",
                [AUDIT_APPEND_LOCK],
            )
            cursor.nextset()
            row = cursor.fetchone()
    else:
        row = ChainHead.objects.filter(pk=1).values_list("seq", "hash").first()
    return (row[0], row[1]) if row else (0, GENESIS_HASH)


def _organization_of(target: models.Model) -> models.Model | None:
    """The organisation an event is about: the target itself, or the one it belongs to.

    By label, not by class: the audit log stands below every other app and imports none of them.
    """
    if target._meta.label_lower == "accounts.organization":
        return target
    return getattr(target, "organization", None)

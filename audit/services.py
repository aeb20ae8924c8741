"""Writing the audit log. Every service calls audit_record inside its own transaction."""

from __future__ import annotations

import json
from typing import Any

from django.db import models, transaction
from django.utils import timezone

from audit.middleware import current_ip
from audit.models import AuditEvent, ChainHead


def _normalise(data: dict[str, Any] | None) -> dict[str, Any]:
    # Store exactly what JSON round-trips to, so the hash computed now matches
    # the hash recomputed from the row read back later.
    return json.loads(json.dumps(data or {}, default=str))


def audit_record(
    *,
    actor: Any | None,
    action: str,
    target: models.Model | None = None,
    organization: Any | None = None,
    data: dict[str, Any] | None = None,
    ip: str | None = None,
) -> AuditEvent:
    """Append one event to the chain, in the caller's transaction.

    The head row is locked for the rest of the transaction, so concurrent writers
    append one after the other and the chain never forks.
    """
    if organization is None and target is not None:
        organization = _organization_of(target)
    if organization is None and actor is not None and getattr(actor, "is_authenticated", False):
        organization = actor.organization
    with transaction.atomic():
        head, _ = ChainHead.objects.select_for_update().get_or_create(pk=1)
        event = AuditEvent(
            seq=head.seq + 1,
            created_at=timezone.now(),
            actor=actor if getattr(actor, "pk", None) else None,
            actor_email=getattr(actor, "email", "") or "",
            organization=organization,
            action=action,
            target_type=target._meta.label_lower if target is not None else "",
            target_id=str(target.pk) if target is not None else "",
            target_repr=str(target)[:300] if target is not None else "",
            data=_normalise(data),
            ip=ip if ip is not None else current_ip.get(),
            prev_hash=head.hash,
        )
        event.hash = event.compute_hash()
        event.save()
        head.seq, head.hash = event.seq, event.hash
        head.save(update_fields=["seq", "hash"])
    return event


def _organization_of(target: models.Model) -> Any | None:
    from accounts.models import Organization

    if isinstance(target, Organization):
        return target
    return getattr(target, "organization", None)

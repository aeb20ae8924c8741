"""The append-only, hash-chained audit log.

Each event's hash is SHA-256(prev_hash + canonical JSON of the event), so editing,
deleting, inserting or reordering a row breaks the chain from that row on. The
chain's head (last seq and hash) is kept in its own table: a truncated tail
leaves the head pointing past the last row.

The database keeps the head, not the app: a trigger (migration 0004) refuses an event
that does not extend the head and moves the head itself. On PostgreSQL the app's own
role may only read and append these tables (`app_role_privileges`, applied by
core.db_roles), and signed checkpoints of the head outside the database
(audit.checkpoints) catch a history rewritten by someone who holds the database.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC
from typing import Any

from django.conf import settings
from django.db import models
from django.utils import timezone

GENESIS_HASH = "0" * 64


class AppendOnlyError(Exception):
    """Raised when code tries to change or remove an audit event."""


class AuditEventQuerySet(models.QuerySet["AuditEvent"]):
    def update(self, **kwargs: Any) -> int:
        raise AppendOnlyError("Audit events are append-only; they cannot be updated.")

    def delete(self) -> tuple[int, dict[str, int]]:
        raise AppendOnlyError("Audit events are append-only; they cannot be deleted.")


class AuditEvent(models.Model):
    seq = models.BigIntegerField(unique=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    actor_email = models.CharField(max_length=254, blank=True)
    organization = models.ForeignKey(
        "accounts.Organization", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    action = models.CharField(max_length=64, db_index=True)
    target_type = models.CharField(max_length=64, blank=True)
    target_id = models.CharField(max_length=64, blank=True)
    target_repr = models.CharField(max_length=300, blank=True)
    data = models.JSONField(default=dict, blank=True)
    ip = models.GenericIPAddressField(null=True, blank=True)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64, unique=True)

    objects = AuditEventQuerySet.as_manager()
    # What the app's PostgreSQL role may do with this table (core.db_roles grants exactly this).
    app_role_privileges = ("SELECT", "INSERT")

    class Meta:
        ordering = ["-seq"]
        indexes = [models.Index(fields=["target_type", "target_id"])]

    def __str__(self) -> str:
        return f"#{self.seq} {self.action}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            raise AppendOnlyError("Audit events are append-only; an existing event cannot be saved.")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        raise AppendOnlyError("Audit events are append-only; they cannot be deleted.")

    def canonical_json(self) -> str:
        """The exact bytes that are hashed: every field but the hashes, sorted keys, no spaces."""
        payload = {
            "seq": self.seq,
            "time": self.created_at.astimezone(UTC).isoformat(timespec="microseconds"),
            "actor_id": self.actor_id,
            "actor_email": self.actor_email,
            "organization_id": self.organization_id,
            "action": self.action,
            "target_type": self.target_type,
            "target_id": self.target_id,
            "target_repr": self.target_repr,
            "data": self.data,
            "ip": self.ip,
        }
        return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)

    def compute_hash(self) -> str:
        return hashlib.sha256((self.prev_hash + self.canonical_json()).encode()).hexdigest()


class ChainHead(models.Model):
    """The last seq and hash of the chain: one row, moved only by the database's insert trigger.

    The app reads it; it never writes it (its PostgreSQL role may not).
    """

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    seq = models.BigIntegerField(default=0)
    hash = models.CharField(max_length=64, default=GENESIS_HASH)

    app_role_privileges = ("SELECT",)

    class Meta:
        constraints = [models.CheckConstraint(condition=models.Q(id=1), name="single_chain_head")]

    def __str__(self) -> str:
        return f"head #{self.seq}"

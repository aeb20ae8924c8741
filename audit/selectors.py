"""Reading the audit log: the filtered list for the audit page, and chain verification."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from django.db.models import QuerySet

from accounts.models import Role, User
from accounts.permissions import require_role
from audit.models import GENESIS_HASH, AuditEvent, ChainHead

AUDIT_READERS = (Role.LAB_ADMIN, Role.LEGAL, Role.AUDITOR)


def audit_event_list(
    *,
    user: User,
    organization_id: int | None = None,
    actor_email: str | None = None,
    action: str | None = None,
    date_from: date | None = None,
    date_to: date | None = None,
) -> QuerySet[AuditEvent]:
    """Events newest first; only lab admins, legal and auditors may read the log."""
    require_role(user, *AUDIT_READERS)
    events = AuditEvent.objects.select_related("organization").order_by("-seq")
    if organization_id:
        events = events.filter(organization_id=organization_id)
    if actor_email:
        events = events.filter(actor_email__iexact=actor_email.strip())
    if action:
        events = events.filter(action=action) if not action.endswith(".") else events.filter(action__startswith=action)
    if date_from:
        events = events.filter(created_at__gte=_start_of(date_from))
    if date_to:
        events = events.filter(created_at__lt=_start_of(date_to) + timedelta(days=1))
    return events


def _start_of(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


@dataclass(frozen=True)
class ChainReport:
    ok: bool
    events: int
    head_seq: int
    head_hash: str
    first_bad_seq: int | None = None
    problem: str = ""


def audit_chain_verify() -> ChainReport:
    """Walk the whole chain in seq order and report the first row that does not fit.

    Catches an edited row (its hash no longer matches), a deleted or inserted row
    (a gap or an unexpected seq, or a prev_hash that doesn't link), a reordering
    (seq is part of the hashed content) and a truncated tail (the separately kept
    head points past the last row).
    """
    head = ChainHead.objects.filter(pk=1).first()
    head_seq, head_hash = (head.seq, head.hash) if head else (0, GENESIS_HASH)
    expected_seq, prev_hash, count = 1, GENESIS_HASH, 0
    rows = AuditEvent.objects.order_by("seq").iterator(chunk_size=2000)
    for event in rows:
        count += 1
        if event.seq != expected_seq:
            kind = "missing (deleted?)" if event.seq > expected_seq else "duplicated or out of order"
            return _bad(expected_seq, f"event #{expected_seq} is {kind}; found #{event.seq}", count, head)
        if event.prev_hash != prev_hash:
            return _bad(event.seq, f"event #{event.seq} does not link to the event before it", count, head)
        if event.compute_hash() != event.hash:
            return _bad(event.seq, f"event #{event.seq} was changed after it was written", count, head)
        prev_hash = event.hash
        expected_seq += 1
    last_seq = expected_seq - 1
    if last_seq != head_seq or prev_hash != head_hash:
        if last_seq < head_seq:
            problem = f"the chain ends at #{last_seq} but its head records #{head_seq}: events were removed"
            return _bad(last_seq + 1, problem, count, head)
        problem = f"the head records #{head_seq} but the chain goes on to #{last_seq}: events were added"
        return _bad(head_seq + 1, problem, count, head)
    return ChainReport(ok=True, events=count, head_seq=head_seq, head_hash=head_hash)


def _bad(seq: int, problem: str, count: int, head: ChainHead | None) -> ChainReport:
    return ChainReport(
        ok=False,
        events=count,
        head_seq=head.seq if head else 0,
        head_hash=head.hash if head else GENESIS_HASH,
        first_bad_seq=seq,
        problem=problem,
    )


def audit_chain_head() -> ChainHead:
    return ChainHead.objects.get(pk=1)

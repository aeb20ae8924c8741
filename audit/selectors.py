"""Reading the audit chain: verifying it end to end and its head. Browsing the log, scoped by role,
is records.selectors.audit_event_list (the auditor's workspace)."""

from __future__ import annotations

from dataclasses import dataclass

from audit.checkpoints import Checkpoint, CheckpointSet, checkpoints_load
from audit.models import GENESIS_HASH, AuditEvent, ChainHead


@dataclass(frozen=True)
class ChainReport:
    ok: bool
    events: int
    head_seq: int
    head_hash: str
    first_bad_seq: int | None = None
    problem: str = ""
    checkpoints: int = 0  # signed checkpoints the rows were checked against
    checkpoint_problems: tuple[str, ...] = ()  # checkpoint files that could not be trusted
    latest_checkpoint: str = ""  # "#12, the signed checkpoint of 2026-12-01T10:00Z"


def audit_chain_verify() -> ChainReport:
    """Walk the whole chain in seq order and report the first row that does not fit.

    Catches an edited row (its hash no longer matches), a deleted or inserted row
    (a gap or an unexpected seq, or a prev_hash that doesn't link), a reordering
    (seq is part of the hashed content) and a truncated tail (the separately kept
    head points past the last row). Then the signed checkpoints written outside the
    database: an event they name must still have exactly the signed hash, which catches
    a history rewritten and re-hashed by someone holding the database, head included.
    A checkpoint file whose signature does not verify is reported too.
    """
    signed = checkpoints_load()
    expected: dict[int, list[Checkpoint]] = {}
    for checkpoint in signed.checkpoints:
        expected.setdefault(checkpoint.seq, []).append(checkpoint)
    head = ChainHead.objects.filter(pk=1).first()
    head_seq, head_hash = (head.seq, head.hash) if head else (0, GENESIS_HASH)
    result = _Walk(head=head, signed=signed)
    expected_seq, prev_hash = 1, GENESIS_HASH
    rows = AuditEvent.objects.order_by("seq").iterator(chunk_size=2000)
    for event in rows:
        result.count += 1
        if event.seq != expected_seq:
            kind = "missing (deleted?)" if event.seq > expected_seq else "duplicated or out of order"
            return result.bad(expected_seq, f"event #{expected_seq} is {kind}; found #{event.seq}")
        if event.prev_hash != prev_hash:
            return result.bad(event.seq, f"event #{event.seq} does not link to the event before it")
        if event.compute_hash() != event.hash:
            return result.bad(event.seq, f"event #{event.seq} was changed after it was written")
        for checkpoint in expected.get(event.seq, ()):
            if checkpoint.hash != event.hash:
                return result.bad(event.seq, f"event #{event.seq} differs from {checkpoint.label}")
            result.matched += 1
        prev_hash = event.hash
        expected_seq += 1
    last_seq = expected_seq - 1
    if last_seq != head_seq or prev_hash != head_hash:
        if last_seq < head_seq:
            problem = f"the chain ends at #{last_seq} but its head records #{head_seq}: events were removed"
            return result.bad(last_seq + 1, problem)
        problem = f"the head records #{head_seq} but the chain goes on to #{last_seq}: events were added"
        return result.bad(head_seq + 1, problem)
    beyond = [checkpoint for checkpoint in signed.checkpoints if checkpoint.seq > last_seq]
    if beyond:
        problem = (
            f"event #{beyond[0].seq} is missing: the chain ends at #{last_seq}, but {beyond[0].label} "
            f"records #{beyond[0].seq}: events were removed"
        )
        return result.bad(last_seq + 1, problem)
    if signed.problems:
        return result.bad(None, "; ".join(signed.problems))
    return result.report(ok=True)


@dataclass
class _Walk:
    """What audit_chain_verify has seen so far, to report wherever it stops."""

    head: ChainHead | None
    signed: CheckpointSet
    count: int = 0
    matched: int = 0

    def bad(self, seq: int | None, problem: str) -> ChainReport:
        return self.report(ok=False, first_bad_seq=seq, problem=problem)

    def report(self, *, ok: bool, first_bad_seq: int | None = None, problem: str = "") -> ChainReport:
        latest = self.signed.latest
        return ChainReport(
            ok=ok,
            events=self.count,
            head_seq=self.head.seq if self.head else 0,
            head_hash=self.head.hash if self.head else GENESIS_HASH,
            first_bad_seq=first_bad_seq,
            problem=problem,
            checkpoints=self.matched,
            checkpoint_problems=tuple(self.signed.problems),
            latest_checkpoint=f"#{latest.seq}, {latest.label}" if latest else "",
        )


def audit_chain_head() -> ChainHead:
    return ChainHead.objects.get(pk=1)

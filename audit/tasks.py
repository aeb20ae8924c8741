"""The audit chain's own scheduled work. Thin and idempotent."""

from __future__ import annotations

from celery import shared_task

from audit.checkpoints import checkpoint_write


@shared_task  # type: ignore[untyped-decorator]  # celery ships no type hints
def write_chain_checkpoint() -> int | None:
    """Hourly: sign the chain head and store it outside the database. Writes nothing when the head
    has not moved, so a redelivered or doubled run is harmless. A chain that does not extend the
    last checkpoint raises (and is logged by the worker): that is tampering, not something to retry."""
    checkpoint = checkpoint_write()
    return checkpoint.seq if checkpoint else None

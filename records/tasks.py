"""Sealing agreement records and making exports. Thin, idempotent, by id: each task claims its
record first, so a redelivered message finds it claimed (or done) and returns."""

from __future__ import annotations

from celery import shared_task

from accounts.models import User
from records.services import record_export_run, record_seal_agreement, record_seal_stage_review


@shared_task(autoretry_for=(ConnectionError, TimeoutError), retry_backoff=True, max_retries=5)
def seal_agreement_record(agreement_id: int, occasion: str, actor_id: int | None = None) -> str | None:
    """Queued when an agreement becomes active ("activated") and when it ends ("ended")."""
    actor = User.objects.filter(pk=actor_id).first() if actor_id else None
    record = record_seal_agreement(agreement_id=agreement_id, occasion=occasion, actor=actor)
    return record.status if record else None


@shared_task(autoretry_for=(ConnectionError, TimeoutError), retry_backoff=True, max_retries=5)
def run_record_export(record_id: int) -> str | None:
    record = record_export_run(record_id=record_id)
    return record.status if record else None


@shared_task(autoretry_for=(ConnectionError, TimeoutError), retry_backoff=True, max_retries=5)
def seal_stage_review(decision_id: int, actor_id: int | None = None) -> str | None:
    """Queued when a release decision is recorded (and by "Seal now" when its sealing failed)."""
    actor = User.objects.filter(pk=actor_id).first() if actor_id else None
    record = record_seal_stage_review(decision_id=decision_id, actor=actor)
    return record.status if record else None

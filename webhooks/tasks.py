"""Celery tasks for webhooks (queue `default`). Thin: the services claim, send and record."""

from __future__ import annotations

from celery import shared_task

from webhooks import services


@shared_task(ignore_result=True, acks_late=True)
def deliver(delivery_id: int) -> str:
    """One attempt at one delivery. Claimed first, so a redelivered message sends nothing twice;
    a failure is retried by the sweep when its backoff is over, not by Celery."""
    return services.delivery_attempt(delivery_id=delivery_id)


@shared_task(ignore_result=True)
def sweep_deliveries() -> dict[str, int]:
    """Send due retries and what a broker outage kept back; disable endpoints failing for 5 days."""
    return services.deliveries_sweep()

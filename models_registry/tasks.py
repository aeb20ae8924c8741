from celery import shared_task


@shared_task(ignore_result=True)
def grants_revoke_expired() -> int:
    """Hourly: revoke grants past their end. Idempotent: a revoked grant is not picked up again."""
    from models_registry.services import grants_revoke_expired as revoke

    return revoke()

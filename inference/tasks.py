from celery import shared_task
from django.utils import timezone


@shared_task(bind=True, ignore_result=True)
def worker_heartbeat(self) -> str:
    """Record that a worker is alive; beat sends it every minute."""
    from inference.models import WorkerHeartbeat

    hostname = self.request.hostname or "unknown"
    WorkerHeartbeat.objects.update_or_create(hostname=hostname, defaults={"last_seen": timezone.now()})
    return hostname

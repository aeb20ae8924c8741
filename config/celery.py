"""The Celery application: queues `default` and `gpu`, configured from Django settings."""

import os
from typing import Any

from celery import Celery, states
from celery.signals import task_postrun, task_prerun
from django.db import close_old_connections, connections
from kombu import Queue
from psycopg.pq import TransactionStatus

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
# Weights always load from local folders; nothing may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

app = Celery("modelpact")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.task_queues = (Queue("default"), Queue("gpu"))
# Celery's Django fixup closes the database connection before and after every task unless told to
# reuse it, so each task paid for a new PostgreSQL connection and a server process with cold caches:
# half of a generation job's fixed cost. Workers keep their connection as the web tier does
# (CONN_MAX_AGE, CONN_HEALTH_CHECKS); the two handlers below say when it goes. The fixup still
# recycles it after this many tasks.
app.conf.update(CELERY_DB_REUSE_MAX=1000)
app.autodiscover_tasks()


@task_prerun.connect
def _database_before_task(task: Any = None, **kwargs: Any) -> None:
    """As at the start of a request: drop a connection past CONN_MAX_AGE; health-check it on first use."""
    if not _eager(task):
        close_old_connections()


@task_postrun.connect
def _database_after_task(task: Any = None, state: str | None = None, **kwargs: Any) -> None:
    """Close the connection unless the task succeeded and left it idle, then as at a request's end.

    A time limit that interrupts a statement leaves the connection busy or inside a transaction, and
    Django cannot tell that from a good connection: the next task would fail on it.
    """
    if _eager(task):
        return  # ran inside the caller's own request or test, on its connection
    for conn in connections.all(initialized_only=True):
        if conn.connection is not None and (state != states.SUCCESS or not connection_idle(conn)):
            conn.close()
    close_old_connections()


def connection_idle(conn: Any) -> bool:
    """Whether a connection is outside any transaction, with no statement running on it."""
    if conn.in_atomic_block:
        return False
    if conn.vendor != "postgresql":
        return True  # SQLite: close_old_connections closes it after every task anyway (CONN_MAX_AGE 0)
    return bool(conn.connection.info.transaction_status == TransactionStatus.IDLE)


def _eager(task: Any) -> bool:
    return bool(getattr(getattr(task, "request", None), "is_eager", False))

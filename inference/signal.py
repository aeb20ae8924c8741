"""Signals on Redis pub/sub: a job finished (clients wait on it), a job was queued (running batches wake).

The database stays the truth. The signal only wakes whoever waits, so they need not poll: a
publish that is lost (Redis down, nobody subscribed yet) costs a waiter at most its fallback poll,
never a wrong answer. Publishing is best effort and never fails the job that finished.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

import redis
from django.conf import settings
from django.db import transaction
from redis.exceptions import RedisError

from inference.models import GenerationJob

logger = logging.getLogger(__name__)

CHANNEL_PREFIX = "modelpact:job:"
QUEUED_PREFIX = "modelpact:queued:"
# Waiting without Redis (or after it fails): how often the row is read again.
FALLBACK_POLL_S = 0.25
# After a failed publish, skip publishing for this long: a Redis that is down must not slow every
# job by a connect timeout.
_BACKOFF_S = 5.0
# Short socket timeouts: the signal is an optimisation, a slow Redis must not hold a worker.
_CONNECT_TIMEOUT_S = 0.25
_SOCKET_TIMEOUT_S = 0.5

_clients: dict[str, redis.Redis] = {}
_publish_paused_until: dict[str, float] = {}


def channel(job_id: int) -> str:
    return f"{CHANNEL_PREFIX}{job_id}"


def _url() -> str | None:
    """REDIS_URL when set, else a Redis broker's URL; None when there is no Redis to use."""
    url: str | None = getattr(settings, "REDIS_URL", None)
    if not url:
        broker = getattr(settings, "CELERY_BROKER_URL", "") or ""
        url = broker if broker.startswith(("redis://", "rediss://", "unix://")) else None
    return url


def _client() -> redis.Redis | None:
    url = _url()
    if url is None:
        return None
    client = _clients.get(url)
    if client is None:
        client = redis.Redis.from_url(
            url, socket_connect_timeout=_CONNECT_TIMEOUT_S, socket_timeout=_SOCKET_TIMEOUT_S, health_check_interval=30
        )
        _clients[url] = client
    return client


def publish_finished(job_id: int, status: str) -> None:
    """Tell waiters that `job_id` is finished; a Redis error is logged, never raised."""
    _publish(channel(job_id), status, f"job #{job_id} finished")


def publish_queued(checkpoint_id: int, job_id: int) -> None:
    """Tell running batches of this checkpoint that a job is waiting for a row; best effort."""
    _publish(f"{QUEUED_PREFIX}{checkpoint_id}", str(job_id), f"job #{job_id} is queued")


def _publish(name: str, message: str, what: str) -> None:
    url = _url()
    client = _client()
    if url is None or client is None or time.monotonic() < _publish_paused_until.get(url, 0.0):
        return
    try:
        client.publish(name, message)
    except (RedisError, OSError) as exc:
        _publish_paused_until[url] = time.monotonic() + _BACKOFF_S
        logger.warning("Could not signal that %s (%s: %s)", what, type(exc).__name__, exc)


class QueuedWatch:
    """A running batch's ear for newly queued jobs of its checkpoint, checked between decoding steps.

    `arrived()` never blocks: it reads what Redis has already pushed. Without Redis it always says
    False, and the batch relies on its periodic look at the queue (INFERENCE_JOIN_POLL_INTERVAL).
    """

    def __init__(self, checkpoint_id: int) -> None:
        self._pubsub: Any = None
        client = _client()
        if client is None:
            return
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(f"{QUEUED_PREFIX}{checkpoint_id}")
        except (RedisError, OSError) as exc:
            logger.info("Running batches look for queued jobs by polling: cannot subscribe (%s)", exc)
            _close(pubsub)
            return
        self._pubsub = pubsub

    def arrived(self) -> bool:
        """Whether a job was queued since the last call."""
        if self._pubsub is None:
            return False
        seen = False
        try:
            while (message := self._pubsub.get_message(timeout=0)) is not None:
                seen = seen or message.get("type") == "message"
        except (RedisError, OSError) as exc:
            logger.info("Running batches look for queued jobs by polling: Redis failed (%s)", exc)
            self.close()
            return True  # something may have been missed: look once
        return seen

    def close(self) -> None:
        _close(self._pubsub)
        self._pubsub = None


def job_finished_on_commit(job_id: int, status: str) -> None:
    """Publish once the transaction that finished the job commits (at once outside a transaction)."""
    transaction.on_commit(lambda: publish_finished(job_id, status))


def _is_finished(job_id: int) -> bool:
    status = GenerationJob.objects.filter(pk=job_id).values_list("status", flat=True).first()
    return status is None or status in GenerationJob.FINISHED  # a job that does not exist never will be


def job_wait_finished(job_id: int, timeout_s: float, *, poll_s: float = FALLBACK_POLL_S) -> bool:
    """Wait up to `timeout_s` for the job to reach a final state; True if it has.

    Subscribes first, then reads the row, so a job that finishes in between is not missed. Without
    Redis (or when it fails mid-wait) the row is read again every `poll_s`.
    """
    deadline = time.monotonic() + max(0.0, timeout_s)
    pubsub = _subscribe(job_id, deadline)
    try:
        if _is_finished(job_id):
            return True
        while (left := deadline - time.monotonic()) > 0:
            if pubsub is not None:
                try:
                    message = pubsub.get_message(timeout=min(left, _SOCKET_TIMEOUT_S * 2))
                except (RedisError, OSError) as exc:
                    logger.info("Waiting for job #%s by polling: Redis failed (%s)", job_id, exc)
                    _close(pubsub)
                    pubsub = None
                    if _is_finished(job_id):  # it may have finished while the connection was failing
                        return True
                    continue
                if message is not None and message.get("type") == "message" and _is_finished(job_id):
                    return True
            else:
                time.sleep(min(poll_s, left))
                if _is_finished(job_id):
                    return True
        return _is_finished(job_id)
    finally:
        _close(pubsub)


def _subscribe(job_id: int, deadline: float) -> Any:
    """A pubsub subscribed to the job's channel, confirmed by Redis; None when Redis is not usable."""
    client = _client()
    if client is None:
        return None
    pubsub = client.pubsub()
    try:
        pubsub.subscribe(channel(job_id))
        # Only once Redis confirms is every later publish delivered: wait for it before reading the row.
        while time.monotonic() < deadline + _SOCKET_TIMEOUT_S:
            message = pubsub.get_message(timeout=_SOCKET_TIMEOUT_S)
            if message is not None and message.get("type") == "subscribe":
                return pubsub
        raise TimeoutError("no subscribe confirmation")
    except (RedisError, OSError) as exc:
        logger.info("Waiting for job #%s by polling: cannot subscribe (%s)", job_id, exc)
        _close(pubsub)
        return None


def _close(pubsub: Any) -> None:
    if pubsub is None:
        return
    with contextlib.suppress(RedisError, OSError):
        pubsub.close()

"""Webhooks through Redis and a real Celery worker process: a committed change reaches the receiver
once, signed; a receiver that was down gets it from the retry once it is back."""

from __future__ import annotations

import time

import pytest
from standardwebhooks import Webhook

from core.tasks import task_send
from models_registry import services as registry
from tests.inference.test_worker import Worker
from tests.webhooks.conftest import register
from webhooks.models import Delivery

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("real_broker")]


@pytest.fixture
def webhook_worker(tmp_path, settings):
    worker = Worker(tmp_path)
    # Every host of one deployment has the same SECRET_KEY: endpoint secrets are encrypted with it.
    worker.env["SECRET_KEY"] = settings.SECRET_KEY
    worker.env.update(
        WEBHOOKS_ALLOW_PRIVATE_TARGETS="true", WEBHOOKS_RETRY_BASE_SECONDS="1", WEBHOOKS_TIMEOUT_SECONDS="2"
    )
    worker.start()
    yield worker
    worker.stop()


def wait_for(condition, worker: Worker, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out; worker log:\n{worker.log.read_text()[-3000:]}")


def test_a_real_worker_delivers_a_committed_change_once_and_signed(
    webhook_worker, receiver, lab_admin, gpt2_stages, checkpoints
):
    endpoint, secret = register(lab_admin, url=receiver.url, events=["checkpoint.embargoed"])
    registry.checkpoint_embargo(actor=lab_admin, checkpoint=checkpoints["gpt2-xl"], reason="Red-team review.")
    wait_for(lambda: Delivery.objects.filter(endpoint=endpoint, status="succeeded").exists(), webhook_worker)
    (request,) = receiver.requests
    payload = Webhook(secret).verify(request["body"], request["headers"])
    assert payload["type"] == "checkpoint.embargoed" and payload["data"]["checkpoint"]["slug"] == "gpt2-xl"


def test_a_receiver_that_was_down_gets_the_event_from_the_retry(
    webhook_worker, receiver, lab_admin, gpt2_stages, checkpoints
):
    endpoint, _ = register(lab_admin, url=receiver.url, events=["checkpoint.embargoed"])
    receiver.mode = "error"
    registry.checkpoint_embargo(actor=lab_admin, checkpoint=checkpoints["gpt2-xl"], reason="Red-team review.")
    wait_for(
        lambda: Delivery.objects.filter(endpoint=endpoint, attempts=1).exclude(status="sending").exists(),
        webhook_worker,
    )
    receiver.mode = "ok"
    time.sleep(1.5)  # the first backoff (WEBHOOKS_RETRY_BASE_SECONDS=1) is over
    task_send("webhooks.tasks.sweep_deliveries")  # what beat sends every WEBHOOKS_SWEEP_SECONDS
    wait_for(lambda: Delivery.objects.filter(endpoint=endpoint, status="succeeded").exists(), webhook_worker)
    ids = [r["headers"]["webhook-id"] for r in receiver.requests]
    assert len(ids) >= 2 and len(set(ids)) == 1, "retried with the same id until it got through"

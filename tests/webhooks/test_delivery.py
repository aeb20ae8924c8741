"""Delivering to a real receiver on 127.0.0.1: signed so Standard Webhooks libraries verify it, retried
with backoff, bounded against receivers that fail, hang or flood, and never sent inside our network."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest
import time_machine
from django.utils import timezone
from standardwebhooks import Webhook

from accounts.models import Notification
from agreements import services as agreement_services
from tests.webhooks.conftest import register
from webhooks import services
from webhooks.models import Delivery, WebhookEndpoint

pytestmark = pytest.mark.django_db


@pytest.fixture
def hooked(receiver, admin_a):
    """Partner A's endpoint at the local receiver, with its secret."""
    endpoint, secret = register(admin_a, url=receiver.url, events=["agreement.sent", "agreement.signed"])
    return endpoint, secret


@pytest.fixture
def delivery(hooked, legal, draft) -> Delivery:
    agreement_services.agreement_send(actor=legal, agreement=draft)  # on-commit sends do not run here
    return Delivery.objects.get(endpoint=hooked[0])


def test_a_delivery_verifies_with_the_standard_webhooks_library(hooked, receiver, delivery, draft):
    assert services.delivery_attempt(delivery_id=delivery.pk) == "delivered"
    (request,) = receiver.requests
    payload = Webhook(hooked[1]).verify(request["body"], request["headers"])
    assert payload["type"] == "agreement.sent" and payload["data"]["agreement"]["id"] == draft.pk
    assert request["headers"]["webhook-id"] == delivery.event.message_id
    delivery.refresh_from_db()
    assert delivery.status == "succeeded" and delivery.last_status_code == 200 and delivery.attempts == 1


def test_the_webhook_id_is_the_same_on_every_attempt(hooked, receiver, delivery):
    receiver.mode = "error"
    assert services.delivery_attempt(delivery_id=delivery.pk) == "retry"
    receiver.mode = "ok"
    with time_machine.travel(timezone.now() + timedelta(minutes=1)):
        assert services.delivery_attempt(delivery_id=delivery.pk) == "delivered"
    ids = {r["headers"]["webhook-id"] for r in receiver.requests}
    assert ids == {delivery.event.message_id} and len(receiver.requests) == 2


def test_after_a_rotation_both_secrets_verify_for_a_day(hooked, receiver, delivery, admin_a):
    endpoint, old = hooked
    _, new = services.endpoint_rotate_secret(actor=admin_a, endpoint=endpoint)
    services.delivery_attempt(delivery_id=delivery.pk)
    request = receiver.requests[-1]
    Webhook(old).verify(request["body"], request["headers"])
    Webhook(new).verify(request["body"], request["headers"])
    assert services.secrets_in_force(
        WebhookEndpoint.objects.get(pk=endpoint.pk), timezone.now() + timedelta(hours=25)
    ) == [new]


def test_a_500_is_retried_with_growing_waits(receiver, delivery):
    receiver.mode = "error"
    waits = []
    now = timezone.now()
    for _ in range(4):
        with time_machine.travel(now, tick=False):
            assert services.delivery_attempt(delivery_id=delivery.pk) == "retry"
        delivery.refresh_from_db()
        waits.append((delivery.next_attempt_at - now).total_seconds())
        now = delivery.next_attempt_at
    assert waits == [10, 20, 40, 80]
    assert delivery.last_status_code == 500 and "receiver broke" in delivery.response_excerpt and delivery.attempts == 4


def test_a_receiver_that_hangs_is_cut_off_at_the_timeout(receiver, delivery):
    receiver.mode = "hang"
    started = time.monotonic()
    assert services.delivery_attempt(delivery_id=delivery.pk) == "retry"
    assert time.monotonic() - started < 2.5
    delivery.refresh_from_db()
    assert delivery.last_status_code is None and "No answer within 1 s" in delivery.last_error


def test_a_10_mb_answer_is_read_only_to_64_kb(receiver, delivery):
    receiver.mode = "huge"
    started = time.monotonic()
    assert services.delivery_attempt(delivery_id=delivery.pk) == "delivered"
    assert time.monotonic() - started < 2
    delivery.refresh_from_db()
    assert delivery.last_status_code == 200 and len(delivery.response_excerpt) <= 1000


def test_redirects_are_not_followed(receiver, delivery):
    receiver.mode = "redirect"
    assert services.delivery_attempt(delivery_id=delivery.pk) == "retry"
    delivery.refresh_from_db()
    assert delivery.last_status_code == 302 and len(receiver.requests) == 1


def test_a_private_target_is_refused_at_send_time(receiver, delivery, settings):
    settings.WEBHOOKS_ALLOW_PRIVATE_TARGETS = False  # as in production: 127.0.0.1 is refused, even if registered
    assert services.delivery_attempt(delivery_id=delivery.pk) == "retry"
    delivery.refresh_from_db()
    assert "loopback" in delivery.last_error and receiver.requests == []


def test_a_secret_sealed_under_another_secret_key_fails_the_attempt_saying_so(receiver, delivery, settings):
    settings.SECRET_KEY = "a-different-key-on-this-host-" + "x" * 40
    assert services.delivery_attempt(delivery_id=delivery.pk) == "retry"
    delivery.refresh_from_db()
    assert receiver.requests == [] and delivery.status == "pending" and delivery.attempts == 1
    assert "SECRET_KEY" in delivery.last_error and "rotate the secret" in delivery.last_error


def test_a_claimed_delivery_is_not_sent_twice(receiver, delivery):
    assert services.delivery_claim(delivery_id=delivery.pk)
    assert services.delivery_attempt(delivery_id=delivery.pk) == "skipped"
    assert receiver.requests == []


def test_after_24_hours_the_endpoint_is_failing_and_after_5_days_disabled(receiver, delivery, admin_a):
    receiver.mode = "error"
    start = timezone.now()
    with time_machine.travel(start, tick=False) as clock:
        outcomes = []
        while not outcomes or outcomes[-1] == "retry":
            delivery.refresh_from_db()
            clock.move_to(max(delivery.next_attempt_at, timezone.now()))
            outcomes.append(services.delivery_attempt(delivery_id=delivery.pk))
        assert outcomes[-1] == "gave_up" and 20 < len(outcomes) < 40
        assert timezone.now() - start <= timedelta(hours=24)
        endpoint = WebhookEndpoint.objects.get(pk=delivery.endpoint_id)
        assert endpoint.status == "failing"
        notice = Notification.objects.get(user=admin_a, kind="webhook_failing")
        assert "failing" in notice.title
        clock.move_to(endpoint.failing_since + timedelta(days=4))
        assert services.deliveries_sweep()["disabled"] == 0
        clock.move_to(endpoint.failing_since + timedelta(days=5, seconds=1))
        assert services.deliveries_sweep()["disabled"] == 1
    endpoint.refresh_from_db()
    assert endpoint.status == "disabled"
    assert Notification.objects.filter(user=admin_a, kind="webhook_failing").count() == 2


def test_a_success_brings_a_failing_endpoint_back(hooked, receiver, delivery):
    WebhookEndpoint.objects.filter(pk=hooked[0].pk).update(status="failing", failing_since=timezone.now())
    assert services.delivery_attempt(delivery_id=delivery.pk) == "delivered"
    assert WebhookEndpoint.objects.get(pk=hooked[0].pk).status == "active"


def test_resend_sends_the_same_event_again_and_is_audited(
    receiver, delivery, admin_a, django_capture_on_commit_callbacks
):
    services.delivery_attempt(delivery_id=delivery.pk)
    with django_capture_on_commit_callbacks(execute=True):
        services.delivery_resend(actor=admin_a, delivery=delivery)
    assert len(receiver.requests) == 2
    assert receiver.requests[0]["headers"]["webhook-id"] == receiver.requests[1]["headers"]["webhook-id"]
    assert json.loads(receiver.requests[1]["body"])["type"] == "agreement.sent"


def test_committed_changes_are_delivered_by_the_worker_and_the_sweep(
    hooked, receiver, legal, draft, django_capture_on_commit_callbacks
):
    """The task runs once the change commits (eager here); the sweep picks up whatever is still due."""
    with django_capture_on_commit_callbacks(execute=True):
        agreement_services.agreement_send(actor=legal, agreement=draft)
    assert len(receiver.requests) == 1
    Delivery.objects.update(status="pending", next_attempt_at=timezone.now())  # as if a message was lost
    with django_capture_on_commit_callbacks(execute=True):
        assert services.deliveries_sweep()["queued"] == 1
    assert len(receiver.requests) == 2

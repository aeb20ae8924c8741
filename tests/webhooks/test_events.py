"""Events from the audit log: written with the change that caused them, to the endpoints that may hear them."""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from agreements import services as agreement_services
from inference import services as inference_services
from models_registry import services as registry_services
from tests.webhooks.conftest import register
from webhooks.models import Delivery, WebhookEvent

pytestmark = pytest.mark.django_db


@pytest.fixture
def endpoints(admin_a, admin_b, lab_admin, partner_a):
    events = ["agreement.sent", "agreement.signed", "agreement.active", "grant.created", "checkpoint.embargoed"]
    return {
        "a": register(admin_a, url="https://a.example/in", events=events)[0],
        "b": register(admin_b, url="https://b.example/in", events=events)[0],
        "lab_all": register(lab_admin, url="https://lab.example/all", events=events)[0],
        "lab_a": register(lab_admin, url="https://lab.example/a", events=["agreement.sent"], organization=partner_a)[0],
        "a_jobs_only": register(admin_a, url="https://a.example/jobs", events=["job.failed"])[0],
    }


def receivers(event: WebhookEvent) -> set[str]:
    return {d.endpoint.url for d in event.deliveries.select_related("endpoint")}


def test_an_agreement_sent_reaches_its_organisation_and_the_lab_only(
    endpoints, legal, draft, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks() as queued:
        agreement_services.agreement_send(actor=legal, agreement=draft)
    event = WebhookEvent.objects.get(type="agreement.sent")
    assert receivers(event) == {"https://a.example/in", "https://lab.example/all", "https://lab.example/a"}
    assert event.organization == draft.organization
    data = event.payload["data"]["agreement"]
    assert data["id"] == draft.pk and data["reference"] == draft.reference and data["status"] == "out_for_signature"
    assert event.payload["type"] == "agreement.sent" and "Partner B" not in str(event.payload)
    assert len(queued) >= 3, "each delivery is queued once the change commits"


def test_activation_sends_signed_active_and_grant_events(endpoints, active):
    types = sorted(WebhookEvent.objects.values_list("type", flat=True))
    assert types.count("agreement.signed") == 1 and types.count("agreement.active") == 1
    assert types.count("grant.created") == 2  # the two demo checkpoints
    grant = WebhookEvent.objects.filter(type="grant.created").first()
    assert set(grant.payload["data"]["grant"]) >= {"id", "checkpoint", "agreement", "starts_at", "ends_at", "live"}
    assert not Delivery.objects.filter(endpoint=endpoints["b"]).exists()


def test_checkpoint_news_reaches_every_partner_that_asked(endpoints, lab_admin, small_checkpoints):
    registry_services.checkpoint_embargo(
        actor=lab_admin, checkpoint=small_checkpoints[0], reason="Safety review of samples"
    )
    event = WebhookEvent.objects.get(type="checkpoint.embargoed")
    assert receivers(event) == {"https://a.example/in", "https://b.example/in", "https://lab.example/all"}
    checkpoint = event.payload["data"]["checkpoint"]
    assert set(checkpoint) == {"slug", "display_name", "status", "status_reason"}
    assert checkpoint["slug"] == "gpt2" and checkpoint["status"] == "embargoed"


def test_a_change_that_rolls_back_sends_nothing(endpoints, legal, draft):
    with pytest.raises(RuntimeError), transaction.atomic():
        agreement_services.agreement_send(actor=legal, agreement=draft)
        raise RuntimeError("something later in the same transaction failed")
    assert not WebhookEvent.objects.exists() and not Delivery.objects.exists()


def test_nothing_is_stored_when_nobody_listens(legal, draft):
    agreement_services.agreement_send(actor=legal, agreement=draft)
    assert not WebhookEvent.objects.exists()


def test_disabled_endpoints_get_no_new_events(endpoints, legal, draft):
    endpoints["a"].status = "disabled"
    endpoints["a"].save()
    agreement_services.agreement_send(actor=legal, agreement=draft)
    assert "https://a.example/in" not in receivers(WebhookEvent.objects.get(type="agreement.sent"))


def test_an_overdue_report_and_its_extension_reach_only_its_organisation(admin_a, admin_b, lab_admin, legal, active):
    types = ["obligation.due_soon", "obligation.overdue", "obligation.resolved"]
    register(admin_a, url="https://a.example/obligations", events=types)
    register(admin_b, url="https://b.example/obligations", events=types)
    register(lab_admin, url="https://lab.example/obligations", events=types)
    report = active.obligations.filter(kind="findings_report").order_by("due_at").first()
    with time_machine.travel(report.due_at + timedelta(hours=1)):
        agreement_services.obligations_check_due()
        agreement_services.obligation_extend(
            actor=legal, obligation=report, due_on=(report.due_at + timedelta(days=14)).date(), reason="Ethics review"
        )
    # Both checkpoints' findings reports fell due the same day; one event each.
    overdue_events = {
        e.payload["data"]["obligation"]["reference"]: e for e in WebhookEvent.objects.filter(type="obligation.overdue")
    }
    assert len(overdue_events) == active.grants.count()
    overdue = overdue_events[report.reference]
    assert receivers(overdue) == {"https://a.example/obligations", "https://lab.example/obligations"}
    data = overdue.payload["data"]["obligation"]
    assert data["reference"] == report.reference and data["pauses_access"] is True and data["state"] == "overdue"
    resolved = WebhookEvent.objects.get(type="obligation.resolved")
    assert resolved.payload["data"]["resolution"] == "extended"
    assert resolved.payload["data"]["obligation"]["extension_reason"] == "Ethics review"


def test_jobs_ending_together_each_send_their_event_after_one_endpoint_lookup(
    admin_a, researcher_a, active, gpt2, monkeypatch
):
    monkeypatch.setattr(inference_services, "enqueue_job", lambda job: None)
    endpoint = register(admin_a, url="https://a.example/jobs", events=["job.succeeded"])[0]
    params = inference_services.JobParams(
        prompt="The partner shall", max_new_tokens=4, temperature=0.0, top_k=0, top_p=1.0, num_samples=1, seed=None
    )
    jobs = [inference_services.job_submit(actor=researcher_a, checkpoint=gpt2, params=params) for _ in range(3)]
    claimed = inference_services.jobs_claim(worker="w1", device="cpu", rows=8, job_id=jobs[0].pk)
    results = [
        inference_services.JobResult(job=job, samples=[(0, "text", 1)], prompt_tokens=3, cancelled=False,
                                     batch_size=3, timings={})
        for job in claimed
    ]  # fmt: skip
    with CaptureQueriesContext(connection) as storing:
        inference_services.jobs_complete(results=results, worker="w1", device="cpu")
    lookups = [q for q in storing.captured_queries if 'FROM "webhooks_webhookendpoint"' in q["sql"]]
    assert len(lookups) == 1
    events = list(WebhookEvent.objects.filter(type="job.succeeded").order_by("audit_seq"))
    assert [e.payload["data"]["job"]["id"] for e in events] == [job.pk for job in jobs]
    assert all(receivers(e) == {endpoint.url} for e in events)

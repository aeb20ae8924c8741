"""From audit events to webhook events: which actions are sent, what they carry, who hears them.

`events_from_audit` is subscribed to the audit log (audit.hooks) in WebhooksConfig.ready(). It runs
inside the transaction of the change: the WebhookEvent and one Delivery per matching endpoint commit
with the change or not at all, and the delivery tasks are queued once it commits. A broker that is
down loses nothing: the beat sweep sends what is due.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from django.db import models
from django.utils import timezone
from rest_framework.utils.encoders import JSONEncoder

from agreements.api import AccessRequestSerializer, AgreementSerializer, GrantSerializer, ObligationSerializer
from agreements.models import AccessGrant, AccessRequest, Agreement, Obligation
from audit import events as actions
from audit.models import AuditEvent
from inference.api import JobSummarySerializer
from inference.models import GenerationJob
from models_registry.models import Checkpoint
from research.api.findings import FindingSerializer
from research.models import Finding
from webhooks.models import Delivery, WebhookEndpoint, WebhookEvent
from webhooks.schedule import retry_window
from webhooks.services import delivery_enqueue

# audit action -> webhook event type
EVENT_FOR_ACTION: dict[str, str] = {
    actions.AGREEMENT_SENT: "agreement.sent",
    actions.AGREEMENT_SIGNED: "agreement.signed",
    actions.AGREEMENT_COUNTERSIGNED: "agreement.active",
    actions.AGREEMENT_EXPIRED: "agreement.ended",
    actions.AGREEMENT_TERMINATED: "agreement.ended",
    actions.AGREEMENT_SUPERSEDED: "agreement.ended",
    actions.ACCESS_REQUEST_APPROVED: "access_request.decided",
    actions.ACCESS_REQUEST_REJECTED: "access_request.decided",
    actions.GRANT_CREATED: "grant.created",
    actions.GRANT_REVOKED: "grant.revoked",
    actions.CHECKPOINT_EMBARGOED: "checkpoint.embargoed",
    actions.CHECKPOINT_WITHDRAWN: "checkpoint.withdrawn",
    actions.JOB_SUCCEEDED: "job.succeeded",
    actions.JOB_FAILED: "job.failed",
    actions.JOB_CANCELLED: "job.cancelled",
    actions.OBLIGATION_REMINDED: "obligation.due_soon",
    actions.OBLIGATION_OVERDUE: "obligation.overdue",
    actions.OBLIGATION_FULFILLED: "obligation.resolved",
    actions.OBLIGATION_EXTENDED: "obligation.resolved",
    actions.FINDING_REVIEWED: "finding.reviewed",
    actions.FINDING_PUBLICATION_REVIEWED: "finding.publication_reviewed",
}
# Events about the registry, which every partner sees: they reach every endpoint that asks for them.
SHARED_TYPES = frozenset({"checkpoint.embargoed", "checkpoint.withdrawn"})


def _agreement(audit: AuditEvent) -> dict[str, Any]:
    agreement = Agreement.objects.select_related("organization", "template_version__template", "amends").get(
        pk=audit.target_id
    )
    data: dict[str, Any] = {"agreement": AgreementSerializer(agreement).data}
    if audit.action in (actions.AGREEMENT_EXPIRED, actions.AGREEMENT_TERMINATED, actions.AGREEMENT_SUPERSEDED):
        data["reason"] = audit.action.split(".", 1)[1]  # expired, terminated, superseded
    return data


def _access_request(audit: AuditEvent) -> dict[str, Any]:
    access_request = AccessRequest.objects.select_related("organization", "requester", "decided_by", "amendment").get(
        pk=audit.target_id
    )
    decision = "approved" if audit.action == actions.ACCESS_REQUEST_APPROVED else "rejected"
    return {"decision": decision, "access_request": AccessRequestSerializer(access_request).data}


def _grant(audit: AuditEvent) -> dict[str, Any]:
    grant = AccessGrant.objects.select_related("organization", "checkpoint", "agreement").get(pk=audit.target_id)
    return {"grant": GrantSerializer(grant, context={"now": timezone.now()}).data}


def _checkpoint(audit: AuditEvent) -> dict[str, Any]:
    checkpoint = Checkpoint.objects.get(pk=audit.target_id)
    # What the checkpoint list shows every partner; nothing about who holds it.
    return {
        "checkpoint": {
            "slug": checkpoint.slug,
            "display_name": checkpoint.display_name,
            "status": checkpoint.status,
            "status_reason": checkpoint.status_reason,
        }
    }


def _job(audit: AuditEvent) -> dict[str, Any]:
    job = GenerationJob.objects.select_related("checkpoint", "grant__agreement", "organization", "requester").get(
        pk=audit.target_id
    )
    return {"job": JobSummarySerializer(job).data}


def _obligation(audit: AuditEvent) -> dict[str, Any]:
    obligation = Obligation.objects.select_related("organization", "agreement", "checkpoint").get(pk=audit.target_id)
    data: dict[str, Any] = {"obligation": ObligationSerializer(obligation, context={"now": timezone.now()}).data}
    if audit.action in (actions.OBLIGATION_FULFILLED, actions.OBLIGATION_EXTENDED):
        data["resolution"] = "fulfilled" if audit.action == actions.OBLIGATION_FULFILLED else "extended"
    return data


def _finding(audit: AuditEvent) -> dict[str, Any]:
    finding = (
        Finding.objects.select_related("organization", "author", "obligation")
        .prefetch_related("checkpoints")
        .get(pk=audit.target_id)
    )
    return {"finding": FindingSerializer(finding).data, "review": audit.data}


PAYLOAD_FOR_TARGET: dict[str, Callable[[AuditEvent], dict[str, Any]]] = {
    Agreement._meta.label_lower: _agreement,
    AccessRequest._meta.label_lower: _access_request,
    AccessGrant._meta.label_lower: _grant,
    Checkpoint._meta.label_lower: _checkpoint,
    GenerationJob._meta.label_lower: _job,
    Obligation._meta.label_lower: _obligation,
    Finding._meta.label_lower: _finding,
}


def _json(data: dict[str, Any]) -> dict[str, Any]:
    """Dates, decimals and UUIDs as the API writes them, so the stored payload is what is sent."""
    result: dict[str, Any] = json.loads(json.dumps(data, cls=JSONEncoder))
    return result


def endpoints_for(event_type: str, organization_id: int | None) -> list[WebhookEndpoint]:
    """Enabled endpoints that asked for this event and may hear it.

    The event list is matched here, not in SQL: a JSON `contains` lookup exists on PostgreSQL but not
    on SQLite (the one-machine default), and an organisation has a handful of endpoints at most.
    """
    endpoints = WebhookEndpoint.objects.exclude(status=WebhookEndpoint.Status.DISABLED)
    if event_type not in SHARED_TYPES:
        # Lab endpoints with no organisation hear every organisation; others only their own.
        endpoints = endpoints.filter(models.Q(organization=None) | models.Q(organization_id=organization_id))
    return [endpoint for endpoint in endpoints if event_type in endpoint.events]


def events_from_audit(audits: list[AuditEvent]) -> list[WebhookEvent]:
    """The audit subscriber: record the webhook events and their deliveries, queue them on commit.

    Events appended together (a batch of jobs ending at one step) look their endpoints up once per
    event type and organisation."""
    endpoints: dict[tuple[str, int | None], list[WebhookEndpoint]] = {}
    recorded = []
    for audit in audits:
        event_type = EVENT_FOR_ACTION.get(audit.action)
        if event_type is None or audit.target_type not in PAYLOAD_FOR_TARGET or not audit.target_id:
            continue
        organization_id = None if event_type in SHARED_TYPES else audit.organization_id
        key = (event_type, organization_id)
        if key not in endpoints:
            endpoints[key] = endpoints_for(event_type, organization_id)
        if endpoints[key]:  # nobody listens: store nothing
            recorded.append(_record(audit, event_type, organization_id, endpoints[key]))
    return recorded


def _record(
    audit: AuditEvent, event_type: str, organization_id: int | None, endpoints: list[WebhookEndpoint]
) -> WebhookEvent:
    now = timezone.now()
    event = WebhookEvent(type=event_type, organization_id=organization_id, audit_seq=audit.seq, created_at=now)
    event.payload = {
        "type": event_type,
        "timestamp": now.isoformat().replace("+00:00", "Z"),
        "data": _json(PAYLOAD_FOR_TARGET[audit.target_type](audit)),
    }
    event.save()
    deliveries = Delivery.objects.bulk_create(
        [
            Delivery(
                event=event, endpoint=endpoint, next_attempt_at=now, retry_until=now + retry_window(), created_at=now
            )
            for endpoint in endpoints
        ]
    )
    for delivery in deliveries:
        delivery_enqueue(delivery.pk)
    return event

"""Webhook endpoints, the events they are sent, and one delivery per event and endpoint."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone

# The events a receiver can subscribe to, in the order the pages list them.
EVENT_TYPES: tuple[tuple[str, str], ...] = (
    ("agreement.sent", "An agreement is sent for signature"),
    ("agreement.signed", "The partner signs an agreement"),
    ("agreement.active", "An agreement becomes active (countersigned)"),
    ("agreement.ended", "An agreement ends: expired, terminated or superseded"),
    ("access_request.decided", "An access request is approved or rejected"),
    ("grant.created", "An access grant is created"),
    ("grant.revoked", "An access grant is revoked"),
    ("checkpoint.embargoed", "A checkpoint is embargoed"),
    ("checkpoint.withdrawn", "A checkpoint is withdrawn"),
    ("job.succeeded", "A generation job succeeds"),
    ("job.failed", "A generation job fails"),
    ("job.cancelled", "A generation job is cancelled"),
    ("obligation.due_soon", "A report the organisation owes is due within the reminder window"),
    ("obligation.overdue", "A report is overdue (a findings or final report pauses access)"),
    ("obligation.resolved", "An obligation is fulfilled or its due date extended (paused access resumes)"),
    ("finding.reviewed", "The lab acknowledges, asks for changes to or accepts a finding"),
    ("finding.publication_reviewed", "The lab answers a pre-publication review"),
)
EVENT_NAMES: tuple[str, ...] = tuple(name for name, _ in EVENT_TYPES)


class WebhookEndpoint(models.Model):
    """A receiver's URL and the events it wants.

    A partner's endpoint hears its own organisation's events (and checkpoint news, which every partner
    sees); a lab endpoint names one organisation, or none for every organisation's events.
    """

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        FAILING = "failing", "Failing"
        DISABLED = "disabled", "Disabled"

    organization = models.ForeignKey(
        "accounts.Organization",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="webhook_endpoints",
        help_text="Whose events it hears; empty for every organisation's (lab endpoints only).",
    )
    owner_organization = models.ForeignKey(
        "accounts.Organization", on_delete=models.PROTECT, related_name="+", help_text="Who manages it."
    )
    url = models.URLField(max_length=500)
    events = models.JSONField(default=list)
    description = models.CharField(max_length=200, blank=True)
    # Encrypted with a key derived from SECRET_KEY (webhooks.signing); never logged, shown once.
    secret_encrypted = models.TextField()
    previous_secret_encrypted = models.TextField(blank=True)
    previous_secret_expires_at = models.DateTimeField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    failing_since = models.DateTimeField(null=True, blank=True)
    disabled_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(status__in=["active", "failing", "disabled"]), name="webhook_status_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"webhook #{self.pk} {self.url}"

    @property
    def is_enabled(self) -> bool:
        return self.status != self.Status.DISABLED


class WebhookEvent(models.Model):
    """One thing that happened, as receivers see it. Its id is the webhook-id of every attempt."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    type = models.CharField(max_length=40, db_index=True)
    organization = models.ForeignKey(
        "accounts.Organization",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="Whose event it is; empty for news every partner may hear (checkpoints).",
    )
    payload = models.JSONField(default=dict)
    audit_seq = models.BigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.type} {self.message_id}"

    @property
    def message_id(self) -> str:
        return f"msg_{self.id.hex}"


class Delivery(models.Model):
    """One event to one endpoint: tried until the receiver answers 2xx, or for 24 hours."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        SENDING = "sending", "Sending"
        SUCCEEDED = "succeeded", "Delivered"
        FAILED = "failed", "Gave up"

    event = models.ForeignKey(WebhookEvent, on_delete=models.CASCADE, related_name="deliveries")
    endpoint = models.ForeignKey(WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    retry_until = models.DateTimeField(help_text="After this, a failed attempt gives up.")
    claimed_until = models.DateTimeField(null=True, blank=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_latency_ms = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=300, blank=True)
    response_excerpt = models.TextField(blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["event", "endpoint"], name="delivery_once_per_event_and_endpoint"),
            models.CheckConstraint(
                condition=models.Q(status__in=["pending", "sending", "succeeded", "failed"]),
                name="delivery_status_valid",
            ),
        ]
        indexes = [models.Index(fields=["status", "next_attempt_at"])]

    def __str__(self) -> str:
        return f"delivery #{self.pk} ({self.status})"

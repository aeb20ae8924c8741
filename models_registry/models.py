"""The GPT-2 checkpoints, partners' requests for them, and the grants that signed agreements create."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


class Checkpoint(models.Model):
    class Status(models.TextChoices):
        AVAILABLE = "available", "Available"
        EMBARGOED = "embargoed", "Embargoed"
        WITHDRAWN = "withdrawn", "Withdrawn"

    slug = models.SlugField(max_length=64, unique=True)
    display_name = models.CharField(max_length=100)
    size_label = models.CharField(max_length=16, help_text="e.g. 124M")
    parameter_count = models.BigIntegerField(help_text="Parameters of the released model.")
    n_layer = models.PositiveIntegerField()
    n_embd = models.PositiveIntegerField()
    n_head = models.PositiveIntegerField()
    n_ctx = models.PositiveIntegerField(default=1024)
    vocab_size = models.PositiveIntegerField(default=50257)
    released_on = models.DateField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.AVAILABLE)
    status_reason = models.TextField(blank=True)
    # What is actually on disk: real imported weights, or a tiny demo build.
    weights_path = models.CharField(max_length=500, blank=True)
    weights_sha256 = models.CharField(max_length=64, blank=True)
    weights_parameter_count = models.BigIntegerField(null=True, blank=True)
    weights_context = models.PositiveIntegerField(null=True, blank=True)
    is_demo = models.BooleanField(default=False)
    weights_registered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["parameter_count"]

    def __str__(self) -> str:
        return self.slug

    @property
    def label(self) -> str:
        return f"{self.display_name} ({self.size_label})"

    @property
    def has_weights(self) -> bool:
        return bool(self.weights_path and self.weights_sha256)

    @property
    def context_length(self) -> int:
        """The context a job may fill: the weights' own when registered, else the released model's."""
        return self.weights_context or self.n_ctx


class AccessRequest(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        APPROVED = "approved", "Approved"
        REJECTED = "rejected", "Rejected"
        WITHDRAWN = "withdrawn", "Withdrawn"

    organization = models.ForeignKey("accounts.Organization", on_delete=models.PROTECT, related_name="access_requests")
    requester = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    checkpoints = models.ManyToManyField(Checkpoint, related_name="access_requests")
    purpose = models.TextField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    created_at = models.DateTimeField(default=timezone.now)
    decided_at = models.DateTimeField(null=True, blank=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    decision_reason = models.TextField(blank=True)
    amendment = models.ForeignKey(
        "agreements.Agreement", null=True, blank=True, on_delete=models.SET_NULL, related_name="access_requests"
    )

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"Access request #{self.pk} by {self.organization}"


class AccessGrant(models.Model):
    """The right of one organisation to use one checkpoint, created by an active agreement."""

    organization = models.ForeignKey("accounts.Organization", on_delete=models.PROTECT, related_name="grants")
    checkpoint = models.ForeignKey(Checkpoint, on_delete=models.PROTECT, related_name="grants")
    agreement = models.ForeignKey("agreements.Agreement", on_delete=models.PROTECT, related_name="grants")
    starts_at = models.DateTimeField()
    ends_at = models.DateTimeField()
    daily_token_quota = models.PositiveIntegerField()
    created_at = models.DateTimeField(default=timezone.now)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoke_reason = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["agreement", "checkpoint"], name="one_grant_per_agreement_checkpoint"),
            models.CheckConstraint(
                condition=models.Q(ends_at__gt=models.F("starts_at")), name="grant_ends_after_start"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.organization} → {self.checkpoint}"

    def is_live(self, now=None) -> bool:
        now = now or timezone.now()
        return self.revoked_at is None and self.starts_at <= now < self.ends_at

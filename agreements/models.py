"""Agreement templates and their versions, per-organisation agreements and signatures, and what a signed
agreement allows: access grants, the requests that lead to them, and the daily usage ledger."""

from __future__ import annotations

import calendar
from datetime import date, datetime

from django.conf import settings
from django.db import models
from django.utils import timezone


class InvalidTransition(Exception):
    """The agreement's current state does not allow the requested step."""


class AgreementTemplate(models.Model):
    name = models.CharField(max_length=200, unique=True)
    description = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.PROTECT, related_name="+")

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class TemplateVersion(models.Model):
    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        PUBLISHED = "published", "Published"
        RETIRED = "retired", "Retired"

    template = models.ForeignKey(AgreementTemplate, on_delete=models.PROTECT, related_name="versions")
    number = models.PositiveIntegerField()
    body = models.TextField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DRAFT)
    sha256 = models.CharField(max_length=64, blank=True, help_text="SHA-256 of the body, fixed at publication.")
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.PROTECT, related_name="+")
    updated_at = models.DateTimeField(default=timezone.now)
    published_at = models.DateTimeField(null=True, blank=True)
    published_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    retired_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["template", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["template", "number"], name="one_version_number_per_template"),
            models.UniqueConstraint(
                fields=["template"], condition=models.Q(status="draft"), name="one_draft_per_template"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.template.name} v{self.number}"

    @property
    def label(self) -> str:
        return f"v{self.number}"

    @property
    def is_draft(self) -> bool:
        return self.status == self.Status.DRAFT


def add_months(day: date, months: int) -> date:
    """The same day `months` later, clamped to the month's end (31 Jan + 1 month = 28/29 Feb)."""
    month_index = day.month - 1 + months
    year, month = day.year + month_index // 12, month_index % 12 + 1
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


class Agreement(models.Model):
    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        OUT_FOR_SIGNATURE = "out_for_signature", "Out for signature"
        PARTNER_SIGNED = "partner_signed", "Signed by partner"
        ACTIVE = "active", "Active"
        EXPIRED = "expired", "Expired"
        TERMINATED = "terminated", "Terminated"
        VOIDED = "voided", "Voided"
        DECLINED = "declined", "Declined"
        SUPERSEDED = "superseded", "Superseded"

    # The lifecycle, in one table: step -> (states it may start from, state it leads to).
    TRANSITIONS: dict[str, tuple[tuple[str, ...], str]] = {
        "send": ((Status.DRAFT,), Status.OUT_FOR_SIGNATURE),
        "partner_sign": ((Status.OUT_FOR_SIGNATURE,), Status.PARTNER_SIGNED),
        "countersign": ((Status.PARTNER_SIGNED,), Status.ACTIVE),
        "decline": ((Status.OUT_FOR_SIGNATURE,), Status.DECLINED),
        "void": ((Status.DRAFT, Status.OUT_FOR_SIGNATURE), Status.VOIDED),
        "terminate": ((Status.ACTIVE,), Status.TERMINATED),
        "expire": ((Status.ACTIVE, Status.OUT_FOR_SIGNATURE, Status.PARTNER_SIGNED), Status.EXPIRED),
        "supersede": ((Status.ACTIVE,), Status.SUPERSEDED),
    }
    TERMINAL = (Status.EXPIRED, Status.TERMINATED, Status.VOIDED, Status.DECLINED, Status.SUPERSEDED)

    organization = models.ForeignKey("accounts.Organization", on_delete=models.PROTECT, related_name="agreements")
    template_version = models.ForeignKey(TemplateVersion, on_delete=models.PROTECT, related_name="agreements")
    status = models.CharField(max_length=24, choices=Status.choices, default=Status.DRAFT, db_index=True)
    checkpoints = models.ManyToManyField("models_registry.Checkpoint", related_name="agreements")
    effective_date = models.DateField()
    term_months = models.PositiveIntegerField()
    daily_token_quota = models.PositiveIntegerField()
    purpose = models.TextField()
    amends = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="amendments")
    replaces_amended = models.BooleanField(
        default=True, help_text="When this amendment becomes active, the agreement it amends is superseded."
    )
    # Frozen at send: exactly the bytes that are signed.
    document_html = models.TextField(blank=True)
    document_sha256 = models.CharField(max_length=64, blank=True)

    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    sent_at = models.DateTimeField(null=True, blank=True)
    signature_due_at = models.DateTimeField(null=True, blank=True)
    last_reminder_at = models.DateTimeField(null=True, blank=True)
    reminders_sent = models.PositiveIntegerField(default=0)
    first_viewed_at = models.DateTimeField(null=True, blank=True)
    partner_signed_at = models.DateTimeField(null=True, blank=True)
    activated_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    end_reason = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(condition=models.Q(term_months__gte=1), name="agreement_term_positive"),
            models.CheckConstraint(condition=models.Q(daily_token_quota__gte=1), name="agreement_quota_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.reference} ({self.organization})"

    @property
    def reference(self) -> str:
        return f"MPA-{self.pk:05d}" if self.pk else "MPA-new"

    @property
    def end_date(self) -> date:
        return add_months(self.effective_date, self.term_months)

    @property
    def is_terminal(self) -> bool:
        return self.status in self.TERMINAL

    @property
    def is_editable(self) -> bool:
        return self.status == self.Status.DRAFT

    def can(self, step: str) -> bool:
        sources, _ = self.TRANSITIONS[step]
        return self.status in sources

    def transition(self, step: str) -> None:
        """Move to the step's target state, or raise InvalidTransition saying why not."""
        sources, target = self.TRANSITIONS[step]
        if self.status not in sources:
            raise InvalidTransition(
                f"Agreement {self.reference} is {self.get_status_display().lower()}; it cannot be {_PAST_TENSE[step]}."
            )
        self.status = target


_PAST_TENSE = {
    "send": "sent",
    "partner_sign": "signed by the partner",
    "countersign": "countersigned",
    "decline": "declined",
    "void": "voided",
    "terminate": "terminated",
    "expire": "expired",
    "supersede": "superseded",
}


class Signature(models.Model):
    class Side(models.TextChoices):
        PARTNER = "partner", "Partner"
        LAB = "lab", "Lab"

    agreement = models.ForeignKey(Agreement, on_delete=models.PROTECT, related_name="signatures")
    signer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="signatures")
    side = models.CharField(max_length=8, choices=Side.choices)
    full_name = models.CharField(max_length=200)
    title = models.CharField(max_length=200)
    signer_email = models.EmailField()
    consent_text = models.TextField()
    consent_sha256 = models.CharField(max_length=64)
    document_sha256 = models.CharField(max_length=64, help_text="The document hash the signer was shown.")
    signed_at = models.DateTimeField(default=timezone.now)
    ip = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=500, blank=True)
    time_zone = models.CharField(max_length=64, blank=True)
    reauth_method = models.CharField(max_length=32)
    reauth_at = models.DateTimeField()

    class Meta:
        ordering = ["signed_at"]
        constraints = [models.UniqueConstraint(fields=["agreement", "side"], name="one_signature_per_side")]

    def __str__(self) -> str:
        return f"{self.full_name} for {self.get_side_display()} on {self.agreement.reference}"


class AccessRequest(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        APPROVED = "approved", "Approved"
        REJECTED = "rejected", "Rejected"
        WITHDRAWN = "withdrawn", "Withdrawn"

    organization = models.ForeignKey("accounts.Organization", on_delete=models.PROTECT, related_name="access_requests")
    requester = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    checkpoints = models.ManyToManyField("models_registry.Checkpoint", related_name="access_requests")
    purpose = models.TextField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    created_at = models.DateTimeField(default=timezone.now)
    decided_at = models.DateTimeField(null=True, blank=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    decision_reason = models.TextField(blank=True)
    amendment = models.ForeignKey(
        Agreement, null=True, blank=True, on_delete=models.SET_NULL, related_name="access_requests"
    )

    class Meta:
        # Moved here from the registry with its data: the table keeps its name.
        db_table = "models_registry_accessrequest"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"Access request #{self.pk} by {self.organization}"


class AccessGrant(models.Model):
    """The right of one organisation to use one checkpoint, created by an active agreement."""

    organization = models.ForeignKey("accounts.Organization", on_delete=models.PROTECT, related_name="grants")
    checkpoint = models.ForeignKey("models_registry.Checkpoint", on_delete=models.PROTECT, related_name="grants")
    agreement = models.ForeignKey(Agreement, on_delete=models.PROTECT, related_name="grants")
    starts_at = models.DateTimeField()
    ends_at = models.DateTimeField()
    daily_token_quota = models.PositiveIntegerField()
    created_at = models.DateTimeField(default=timezone.now)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoke_reason = models.TextField(blank=True)

    class Meta:
        db_table = "models_registry_accessgrant"
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["agreement", "checkpoint"], name="one_grant_per_agreement_checkpoint"),
            models.CheckConstraint(
                condition=models.Q(ends_at__gt=models.F("starts_at")), name="grant_ends_after_start"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.organization} → {self.checkpoint}"

    def is_live(self, now: datetime | None = None) -> bool:
        now = now or timezone.now()
        return self.revoked_at is None and self.starts_at <= now < self.ends_at


class GrantUsage(models.Model):
    """Tokens charged to one grant on one UTC day: the ledger the daily quota is checked against.

    Submission reserves a job's most it can generate; the job's end settles the reservation to what
    it generated (or releases it). Rows are locked while they change, so two submissions at once
    cannot both fit into the last of a quota.
    """

    grant = models.ForeignKey(AccessGrant, on_delete=models.PROTECT, related_name="usage")
    day = models.DateField(help_text="The UTC day the tokens count against.")
    tokens_reserved = models.PositiveBigIntegerField(default=0, help_text="Queued and running jobs' most.")
    tokens_used = models.PositiveBigIntegerField(default=0, help_text="What finished jobs generated.")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["grant", "day"], name="one_usage_row_per_grant_day")]

    def __str__(self) -> str:
        return f"{self.grant} on {self.day}: {self.tokens_charged:,} tokens"

    @property
    def tokens_charged(self) -> int:
        return self.tokens_reserved + self.tokens_used

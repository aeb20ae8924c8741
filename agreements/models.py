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


# The range each obligation term may take (both ends included): a day to a year, an hour to 30 days.
# The editor's fields, the save and publish services and a database constraint all hold to these.
OBLIGATION_TERM_RANGES: dict[str, tuple[int, int]] = {
    "findings_report_days": (1, 365),
    "incident_report_hours": (1, 720),
    "final_report_days": (1, 365),
    "prepublication_review_days": (1, 365),
}


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

    # What a partner owes under agreements made from this version. Structured, so the obligations are
    # scheduled from them; each has a placeholder, so the signed document states the same numbers.
    findings_report_days = models.PositiveIntegerField(
        default=90, help_text="A findings report is due this many days after each checkpoint's grant starts."
    )
    incident_report_hours = models.PositiveIntegerField(
        default=72, help_text="Misuse or security incidents are reported within this many hours of discovery."
    )
    final_report_days = models.PositiveIntegerField(
        default=30, help_text="The final report is due this many days before the term ends."
    )
    prepublication_review_days = models.PositiveIntegerField(
        default=30, help_text="A paper is shared with the lab this many days before it is published."
    )

    class Meta:
        ordering = ["template", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["template", "number"], name="one_version_number_per_template"),
            models.UniqueConstraint(
                fields=["template"], condition=models.Q(status="draft"), name="one_draft_per_template"
            ),
            models.CheckConstraint(
                condition=models.Q(
                    findings_report_days__range=OBLIGATION_TERM_RANGES["findings_report_days"],
                    incident_report_hours__range=OBLIGATION_TERM_RANGES["incident_report_hours"],
                    final_report_days__range=OBLIGATION_TERM_RANGES["final_report_days"],
                    prepublication_review_days__range=OBLIGATION_TERM_RANGES["prepublication_review_days"],
                ),
                name="template_obligation_terms_in_range",
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

    @property
    def obligation_terms(self) -> dict[str, int]:
        """The four terms by field name, in OBLIGATION_TERM_RANGES' order."""
        return {name: getattr(self, name) for name in OBLIGATION_TERM_RANGES}


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


class Obligation(models.Model):
    """Something an active agreement asks of its partner by a date, scheduled when it becomes active.

    Report obligations (findings, final report) pause the organisation's access while overdue: the
    access choke point refuses with `obligation_overdue` until the report arrives or the lab extends
    the due date with a reason. Incident and pre-publication obligations are recorded as they arise
    (a report, a paper shared) and show whether the partner kept to the agreed notice.
    """

    class Kind(models.TextChoices):
        FINDINGS_REPORT = "findings_report", "Findings report"
        INCIDENT_REPORT = "incident_report", "Incident report"
        FINAL_REPORT = "final_report", "Final report"
        PREPUBLICATION_REVIEW = "prepublication_review", "Pre-publication review"

    # Kinds whose lapse pauses access: the reports the lab's release decisions wait on.
    PAUSING_KINDS = (Kind.FINDINGS_REPORT, Kind.FINAL_REPORT)
    # An open obligation due within this many days is "due soon".
    DUE_SOON_DAYS = 14
    # What state() returns, in the order pages group them: what needs doing first.
    STATES = {
        "overdue": "Overdue",
        "due_soon": f"Due within {DUE_SOON_DAYS} days",
        "open": "Open",
        "fulfilled": "Fulfilled",
        "waived": "Waived",
    }

    agreement = models.ForeignKey(Agreement, on_delete=models.PROTECT, related_name="obligations")
    organization = models.ForeignKey("accounts.Organization", on_delete=models.PROTECT, related_name="obligations")
    kind = models.CharField(max_length=24, choices=Kind.choices)
    checkpoint = models.ForeignKey(
        "models_registry.Checkpoint", null=True, blank=True, on_delete=models.PROTECT, related_name="obligations"
    )
    description = models.CharField(max_length=300, help_text="What is owed, in words partners and auditors read.")
    due_at = models.DateTimeField(db_index=True, help_text="When it is due now, after any extension.")
    original_due_at = models.DateTimeField(help_text="When the agreement first made it due.")
    created_at = models.DateTimeField(default=timezone.now)
    reminded_at = models.DateTimeField(null=True, blank=True, help_text="When the reminder before the due date went.")
    overdue_at = models.DateTimeField(null=True, blank=True, help_text="When it was found overdue (and access paused).")
    fulfilled_at = models.DateTimeField(null=True, blank=True)
    fulfilled_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    fulfilment = models.CharField(
        max_length=300, blank=True, help_text="What fulfilled it, e.g. a finding's reference."
    )
    extended_at = models.DateTimeField(null=True, blank=True)
    extended_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    extension_reason = models.TextField(blank=True)
    waived_at = models.DateTimeField(null=True, blank=True)
    waive_reason = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["due_at", "pk"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(due_at__gte=models.F("original_due_at")), name="obligation_due_never_earlier"
            ),
            models.CheckConstraint(
                condition=models.Q(extended_at=None) | ~models.Q(extension_reason=""),
                name="obligation_extension_has_reason",
            ),
        ]
        indexes = [
            models.Index(
                fields=["organization", "due_at"],
                condition=models.Q(fulfilled_at=None, waived_at=None),
                name="obligation_open_by_org",
            )
        ]

    def __str__(self) -> str:
        return f"{self.reference}: {self.description}"

    @property
    def reference(self) -> str:
        return f"OBL-{self.pk:05d}" if self.pk else "OBL-new"

    @property
    def is_open(self) -> bool:
        return self.fulfilled_at is None and self.waived_at is None

    @property
    def pauses_access(self) -> bool:
        return self.kind in self.PAUSING_KINDS

    def is_overdue(self, now: datetime | None = None) -> bool:
        return self.is_open and self.due_at <= (now or timezone.now())

    @property
    def fulfilled_late(self) -> bool:
        return self.fulfilled_at is not None and self.fulfilled_at > self.due_at

    def state(self, now: datetime | None = None) -> str:
        """fulfilled, waived, overdue, due_soon (within DUE_SOON_DAYS) or open: what pages colour it by."""
        now = now or timezone.now()
        if self.fulfilled_at is not None:
            return "fulfilled"
        if self.waived_at is not None:
            return "waived"
        if self.due_at <= now:
            return "overdue"
        if (self.due_at - now).days < self.DUE_SOON_DAYS:
            return "due_soon"
        return "open"

    def state_label(self, now: datetime | None = None) -> str:
        return self.STATES[self.state(now)]

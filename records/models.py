"""Sealed records: the PDFs (and CSV exports) ModelPact made, sealed with the lab's key and stored."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


class SealedRecord(models.Model):
    """A PDF we rendered, sealed with the lab's key and stored, or an export being made.

    Its SHA-256 is what the verification page looks up: a file whose hash we never issued
    is not one of our records, however valid its seal looks. Long exports start as a
    pending row that a task fills in, reporting progress as it goes.
    """

    class Kind(models.TextChoices):
        AGREEMENT_RECORD = "agreement_record", "Agreement record"
        EVIDENCE_BUNDLE = "evidence_bundle", "Evidence bundle"
        AUDIT_LOG_PDF = "audit_log_pdf", "Audit log (PDF)"
        AUDIT_LOG_CSV = "audit_log_csv", "Audit log (CSV)"
        STAGE_REVIEW_RECORD = "stage_review_record", "Stage review record"

    class Status(models.TextChoices):
        PENDING = "pending", "Queued"
        RUNNING = "running", "Being made"
        READY = "ready", "Ready"
        FAILED = "failed", "Failed"

    class Occasion(models.TextChoices):
        """Why an agreement record was sealed: the agreement became active, or it ended."""

        ACTIVATED = "activated", "Agreement activated"
        ENDED = "ended", "Agreement ended"

    kind = models.CharField(max_length=24, choices=Kind.choices)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING, db_index=True)
    progress = models.PositiveSmallIntegerField(default=0, help_text="Percent done, for long exports.")
    progress_note = models.CharField(max_length=200, blank=True)
    agreement = models.ForeignKey(
        "agreements.Agreement", null=True, blank=True, on_delete=models.PROTECT, related_name="sealed_records"
    )
    occasion = models.CharField(max_length=16, choices=Occasion.choices, blank=True)
    release_decision = models.ForeignKey(
        "research.ReleaseDecision",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="sealed_records",
        help_text="The release decision a stage review record seals.",
    )
    organization = models.ForeignKey(
        "accounts.Organization", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    filters = models.JSONField(default=dict, blank=True, help_text="The audit-page filters of an audit log export.")
    file_path = models.CharField(max_length=300, blank=True, help_text="Relative to RECORDS_DIR.")
    filename = models.CharField(max_length=200, blank=True, help_text="The name a download is saved as.")
    size_bytes = models.PositiveBigIntegerField(null=True, blank=True)
    unsealed_sha256 = models.CharField(max_length=64, blank=True, help_text="The rendered PDF before sealing.")
    sha256 = models.CharField(max_length=64, null=True, blank=True, help_text="The stored file, as sealed.")
    cert_sha256 = models.CharField(max_length=64, blank=True, help_text="SHA-256 of the sealing certificate.")
    chain_head_seq = models.BigIntegerField(null=True, blank=True)
    chain_head_hash = models.CharField(max_length=64, blank=True)
    sealed_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        # The table keeps the name it had when records lived in the audit app: moving the model
        # moved no data (migrations audit 0005 and records 0001 change Django's state only).
        db_table = "audit_sealedrecord"
        ordering = ["-created_at", "-id"]
        constraints = [
            # A CSV carries no seal, so two identical exports are identical files; every sealed
            # PDF is unique (its seal holds the signing time).
            models.UniqueConstraint(
                fields=["sha256"], condition=~models.Q(kind="audit_log_csv"), name="one_record_per_sealed_sha256"
            ),
            models.UniqueConstraint(
                fields=["agreement", "occasion"],
                condition=models.Q(kind="agreement_record"),
                name="one_agreement_record_per_occasion",
            ),
            models.CheckConstraint(
                condition=models.Q(kind="agreement_record", agreement__isnull=False)
                | ~models.Q(kind="agreement_record"),
                name="agreement_record_has_agreement",
            ),
            models.UniqueConstraint(
                fields=["release_decision"],
                condition=models.Q(kind="stage_review_record"),
                name="one_stage_review_record_per_decision",
            ),
            models.CheckConstraint(
                condition=models.Q(kind="stage_review_record", release_decision__isnull=False)
                | ~models.Q(kind="stage_review_record"),
                name="stage_review_record_has_decision",
            ),
            models.CheckConstraint(condition=models.Q(progress__lte=100), name="record_progress_percent"),
        ]
        indexes = [models.Index(fields=["sha256"], name="sealed_record_sha256")]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} #{self.pk}"

    @property
    def is_ready(self) -> bool:
        return self.status == self.Status.READY

    @property
    def is_finished(self) -> bool:
        return self.status in (self.Status.READY, self.Status.FAILED)

    @property
    def is_sealed_record(self) -> bool:
        """Sealed on an occasion (an agreement's milestone, a release decision), not exported on request."""
        return self.kind in (self.Kind.AGREEMENT_RECORD, self.Kind.STAGE_REVIEW_RECORD)

    @property
    def is_pdf(self) -> bool:
        return self.kind != self.Kind.AUDIT_LOG_CSV

    @property
    def content_type(self) -> str:
        return "application/pdf" if self.is_pdf else "text/csv; charset=utf-8"

    @property
    def subject(self) -> str:
        """What the record is about, in words: 'MPA-00003 (activated)', 'Partner A', 'audit log'."""
        if self.kind == self.Kind.AGREEMENT_RECORD and self.agreement is not None:
            return f"{self.agreement.reference} ({self.get_occasion_display().lower()})"
        if self.kind == self.Kind.STAGE_REVIEW_RECORD and self.release_decision is not None:
            decision = self.release_decision
            return f"{decision.reference} ({decision.checkpoint.slug}: {decision.get_decision_display().lower()})"
        if self.kind == self.Kind.EVIDENCE_BUNDLE and self.organization is not None:
            return f"evidence bundle for {self.organization.name}"
        return "audit log export"

"""What partners learn and report back, and the lab's decisions on the next stage that it informs.

Findings and incidents come from partner organisations (incidents from the lab too); release
decisions are the lab's, one checkpoint at a time, made on the evidence the stage review gathers.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


class Finding(models.Model):
    """A partner's research result on released checkpoints, reviewed by the lab."""

    class Category(models.TextChoices):
        MISUSE = "misuse_potential", "Misuse potential"
        DETECTION = "human_detection", "Human detection and susceptibility"
        BIAS = "bias", "Bias"
        DETECTABILITY = "detectability", "Detectability"
        CAPABILITY = "capability", "Capability"
        OTHER = "other", "Other"

    class Status(models.TextChoices):
        SUBMITTED = "submitted", "Submitted"
        ACKNOWLEDGED = "acknowledged", "Acknowledged"
        CHANGES_REQUESTED = "changes_requested", "Changes requested"
        ACCEPTED = "accepted", "Accepted"

    class PublicationReview(models.TextChoices):
        NONE = "", "No publication planned"
        PENDING = "pending", "Awaiting the lab's review"
        NO_OBJECTION = "no_objection", "No objection"
        OBJECTION = "objection", "Objection"

    organization = models.ForeignKey("accounts.Organization", on_delete=models.PROTECT, related_name="findings")
    author = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="findings")
    title = models.CharField(max_length=200)
    category = models.CharField(max_length=24, choices=Category.choices)
    checkpoints = models.ManyToManyField("models_registry.Checkpoint", related_name="findings")
    summary = models.TextField(help_text="Markdown, as the author wrote it.")
    summary_html = models.TextField(help_text="The summary rendered and sanitised: what pages and records show.")
    cited_jobs = models.ManyToManyField("inference.GenerationJob", blank=True, related_name="cited_by_findings")
    obligation = models.ForeignKey(
        "agreements.Obligation",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="findings",
        help_text="The report obligation this finding fulfils, if any.",
    )
    status = models.CharField(max_length=24, choices=Status.choices, default=Status.SUBMITTED, db_index=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    updated_at = models.DateTimeField(default=timezone.now)

    # Intended publication: sharing it opens a pre-publication review the lab answers within the agreed days.
    publication_venue = models.CharField(max_length=200, blank=True)
    publication_date = models.DateField(null=True, blank=True)
    publication_review = models.CharField(
        max_length=16, choices=PublicationReview.choices, default=PublicationReview.NONE, blank=True
    )
    publication_review_due_at = models.DateTimeField(null=True, blank=True)
    publication_reviewed_at = models.DateTimeField(null=True, blank=True)
    publication_reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    publication_review_reasons = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(publication_date=None) | ~models.Q(publication_venue=""),
                name="finding_publication_has_venue",
            ),
            models.CheckConstraint(
                condition=~models.Q(publication_review="objection") | ~models.Q(publication_review_reasons=""),
                name="finding_objection_has_reasons",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.reference}: {self.title}"

    @property
    def reference(self) -> str:
        return f"F-{self.pk:05d}" if self.pk else "F-new"

    @property
    def plans_publication(self) -> bool:
        return self.publication_date is not None


class FindingAttachment(models.Model):
    """A PDF attached to a finding, stored under FINDINGS_DIR and only ever downloaded, never shown inline."""

    finding = models.ForeignKey(Finding, on_delete=models.PROTECT, related_name="attachments")
    filename = models.CharField(max_length=200, help_text="The uploaded name, cleaned; what a download saves as.")
    file_path = models.CharField(max_length=300, help_text="Relative to FINDINGS_DIR.")
    size_bytes = models.PositiveBigIntegerField()
    sha256 = models.CharField(max_length=64)
    uploaded_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    uploaded_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["uploaded_at", "pk"]

    def __str__(self) -> str:
        return f"{self.filename} ({self.sha256[:12]})"


class FindingReview(models.Model):
    """One step in a finding's review history: who did what, when, and what they said."""

    class Action(models.TextChoices):
        SUBMITTED = "submitted", "Submitted"
        ACKNOWLEDGED = "acknowledged", "Acknowledged"
        CHANGES_REQUESTED = "changes_requested", "Requested changes"
        RESUBMITTED = "resubmitted", "Resubmitted"
        ACCEPTED = "accepted", "Accepted"
        NO_OBJECTION = "no_objection", "No objection to publication"
        OBJECTION = "objection", "Objected to publication"

    finding = models.ForeignKey(Finding, on_delete=models.PROTECT, related_name="reviews")
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    action = models.CharField(max_length=24, choices=Action.choices)
    comment = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at", "pk"]

    def __str__(self) -> str:
        return f"{self.finding.reference} {self.get_action_display().lower()}"


class Incident(models.Model):
    """Misuse or a security incident, reported by a partner (or by the lab about a partner)."""

    class Severity(models.TextChoices):
        LOW = "low", "Low"
        MEDIUM = "medium", "Medium"
        HIGH = "high", "High"
        CRITICAL = "critical", "Critical"

    class Status(models.TextChoices):
        OPEN = "open", "Open"
        RESOLVED = "resolved", "Resolved"

    class Action(models.TextChoices):
        NONE = "", "None"
        EMBARGOED = "embargoed", "Checkpoint embargoed"
        WITHDRAWN = "withdrawn", "Checkpoint withdrawn"

    organization = models.ForeignKey("accounts.Organization", on_delete=models.PROTECT, related_name="incidents")
    reporter = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    title = models.CharField(max_length=200)
    description = models.TextField(help_text="What happened, as the reporter wrote it (plain text).")
    discovered_at = models.DateTimeField()
    severity = models.CharField(max_length=16, choices=Severity.choices)
    checkpoints = models.ManyToManyField("models_registry.Checkpoint", related_name="incidents")
    obligation = models.OneToOneField(
        "agreements.Obligation",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="incident",
        help_text="The reporting obligation this report fulfilled (partners' reports under an agreement).",
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN, db_index=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    action = models.CharField(max_length=16, choices=Action.choices, default=Action.NONE, blank=True)
    action_checkpoint = models.ForeignKey(
        "models_registry.Checkpoint", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    action_at = models.DateTimeField(null=True, blank=True)
    action_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    outcome = models.TextField(blank=True, help_text="What the lab concluded when it resolved the incident.")
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(discovered_at__lte=models.F("created_at")), name="incident_discovered_before_report"
            ),
            models.CheckConstraint(
                condition=models.Q(status="open") | ~models.Q(outcome=""), name="incident_resolution_has_outcome"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.reference}: {self.title}"

    @property
    def reference(self) -> str:
        return f"INC-{self.pk:05d}" if self.pk else "INC-new"


class ReleaseDecision(models.Model):
    """The lab's decision on a checkpoint's next stage, with its rationale and the evidence it rested on."""

    class Decision(models.TextChoices):
        KEEP_EMBARGOED = "keep_embargoed", "Keep embargoed"
        RELEASE_TO_PARTNERS = "release_to_partners", "Release to named partners in good standing"
        RELEASE_TO_ALL_PARTNERS = "release_to_all_partners", "Release to all partners"
        PUBLIC_RELEASE = "public_release", "Public release"

    checkpoint = models.ForeignKey("models_registry.Checkpoint", on_delete=models.PROTECT, related_name="decisions")
    decision = models.CharField(max_length=32, choices=Decision.choices)
    rationale = models.TextField()
    partners = models.ManyToManyField("accounts.Organization", blank=True, related_name="release_decisions")
    amendments = models.ManyToManyField("agreements.Agreement", blank=True, related_name="release_decisions")
    evidence = models.JSONField(default=dict, help_text="The stage review's summary as the decision saw it.")
    evidence_sha256 = models.CharField(max_length=64)
    decided_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    decided_at = models.DateTimeField(default=timezone.now, db_index=True)
    supersedes = models.OneToOneField(
        "self",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="superseded_by",
        help_text="The checkpoint's previous decision, which this one was made knowing.",
    )

    class Meta:
        ordering = ["-decided_at", "-pk"]
        constraints = [
            models.CheckConstraint(condition=~models.Q(rationale=""), name="release_decision_has_rationale"),
            # Two decisions made at once from the same view of the evidence: the second one fails here.
            models.UniqueConstraint(
                fields=["checkpoint"], condition=models.Q(supersedes=None), name="one_first_decision_per_checkpoint"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.reference}: {self.checkpoint.slug} {self.get_decision_display().lower()}"

    @property
    def reference(self) -> str:
        return f"RD-{self.pk:05d}" if self.pk else "RD-new"

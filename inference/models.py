"""Generation jobs and their samples."""

from django.db import models
from django.utils import timezone


class GenerationJob(models.Model):
    """One sample-generation request; the database, not the broker, is the truth about it."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    FINISHED = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)

    organization = models.ForeignKey("accounts.Organization", on_delete=models.PROTECT, related_name="jobs")
    requester = models.ForeignKey("accounts.User", on_delete=models.PROTECT, related_name="jobs")
    checkpoint = models.ForeignKey("models_registry.Checkpoint", on_delete=models.PROTECT, related_name="jobs")
    grant = models.ForeignKey("agreements.AccessGrant", on_delete=models.PROTECT, related_name="jobs")
    prompt = models.TextField()
    max_new_tokens = models.PositiveIntegerField()
    temperature = models.FloatField()
    top_k = models.PositiveIntegerField(default=0)
    top_p = models.FloatField(default=1.0)
    num_samples = models.PositiveSmallIntegerField(default=1)
    seed = models.BigIntegerField(null=True, blank=True)
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)
    request_fingerprint = models.CharField(max_length=64, blank=True)

    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED, db_index=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    last_enqueued_at = models.DateTimeField(null=True, blank=True)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)

    prompt_tokens = models.PositiveIntegerField(default=0)
    tokens_generated = models.PositiveIntegerField(default=0)
    progress_tokens = models.PositiveIntegerField(default=0)
    worker = models.CharField(max_length=255, blank=True)
    device = models.CharField(max_length=32, blank=True)
    batch_size = models.PositiveSmallIntegerField(null=True, blank=True)
    timings = models.JSONField(default=dict, blank=True)
    error_code = models.CharField(max_length=64, blank=True)
    error_message = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "idempotency_key"],
                condition=models.Q(idempotency_key__isnull=False),
                name="one_job_per_idempotency_key",
            ),
            models.CheckConstraint(
                condition=models.Q(max_new_tokens__gte=1, max_new_tokens__lte=512), name="job_max_new_tokens_range"
            ),
            models.CheckConstraint(
                condition=models.Q(num_samples__gte=1, num_samples__lte=8), name="job_num_samples_range"
            ),
        ]
        indexes = [models.Index(fields=["organization", "created_at"]), models.Index(fields=["status", "checkpoint"])]

    def __str__(self) -> str:
        return f"Job #{self.pk} ({self.get_status_display()})"

    @property
    def expected_tokens(self) -> int:
        return self.max_new_tokens * self.num_samples

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED

    @property
    def carries_watermark(self) -> bool:
        """Sampled jobs are watermarked; greedy ones (temperature 0) have no choice to bias, so cannot be."""
        return self.temperature > 0

    @property
    def charged_tokens(self) -> int:
        """What the job counts against the daily quota: reserved while pending, actual once finished."""
        return self.tokens_generated if self.is_finished else self.expected_tokens


class Sample(models.Model):
    job = models.ForeignKey(GenerationJob, on_delete=models.CASCADE, related_name="samples")
    index = models.PositiveSmallIntegerField()
    text = models.TextField()
    token_count = models.PositiveIntegerField()
    sha256 = models.CharField(max_length=64)
    # How the sample was watermarked ("" for greedy samples, which cannot carry one) and which
    # lab key did it: the key id names the key without revealing it.
    watermark_scheme = models.CharField(max_length=64, blank=True)
    watermark_key_id = models.CharField(max_length=16, blank=True)

    class Meta:
        ordering = ["job", "index"]
        constraints = [models.UniqueConstraint(fields=["job", "index"], name="one_sample_per_index")]

    def __str__(self) -> str:
        return f"Sample {self.index} of job #{self.job_id}"


class SampleFingerprint(models.Model):
    """One kept shingle hash of a sample's text (inference.shingles): the near-duplicate index.

    The primary key (hash, sample) is the lookup index: a lookup by hash reads only the index, and
    indexing a sample twice adds nothing.
    """

    pk = models.CompositePrimaryKey("hash", "sample")
    hash = models.BigIntegerField()
    sample = models.ForeignKey(Sample, on_delete=models.CASCADE, related_name="fingerprints")

    def __str__(self) -> str:
        return f"Fingerprint {self.hash} of sample {self.sample_id}"

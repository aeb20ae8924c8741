"""The GPT-2 checkpoints, partners' requests for them, and the grants that signed agreements create."""

from __future__ import annotations

from django.db import models


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
    public_since = models.DateTimeField(
        null=True, blank=True, help_text="Released to the public: any organisation with an active agreement may use it."
    )
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
        """How pages and emails name a checkpoint: its display name and size, with the slug that grants,
        jobs and the API use ("GPT-2 Large (774M) · gpt2-large")."""
        return f"{self.display_name} ({self.size_label}) · {self.slug}"

    @property
    def has_weights(self) -> bool:
        return bool(self.weights_path and self.weights_sha256)

    @property
    def context_length(self) -> int:
        """The context a job may fill: the weights' own when registered, else the released model's."""
        return self.weights_context or self.n_ctx

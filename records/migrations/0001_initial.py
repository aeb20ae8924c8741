"""SealedRecord, moved here from the audit app on its existing table (audit_sealedrecord).

Only Django's state changes: the table, its rows, constraints and indexes were made by
audit/migrations/0003_sealedrecord.py and are left exactly as they are.
"""

import django.db.models.deletion
import django.utils.timezone
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        ("accounts", "0001_initial"),
        ("agreements", "0002_initial"),
        # Audit lets go of the model first, so it is never in two apps' state at once.
        ("audit", "0005_sealedrecord_moved_to_records"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="SealedRecord",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        (
                            "kind",
                            models.CharField(
                                choices=[
                                    ("agreement_record", "Agreement record"),
                                    ("evidence_bundle", "Evidence bundle"),
                                    ("audit_log_pdf", "Audit log (PDF)"),
                                    ("audit_log_csv", "Audit log (CSV)"),
                                ],
                                max_length=24,
                            ),
                        ),
                        (
                            "status",
                            models.CharField(
                                choices=[
                                    ("pending", "Queued"),
                                    ("running", "Being made"),
                                    ("ready", "Ready"),
                                    ("failed", "Failed"),
                                ],
                                db_index=True,
                                default="pending",
                                max_length=16,
                            ),
                        ),
                        (
                            "progress",
                            models.PositiveSmallIntegerField(default=0, help_text="Percent done, for long exports."),
                        ),
                        ("progress_note", models.CharField(blank=True, max_length=200)),
                        (
                            "occasion",
                            models.CharField(
                                blank=True,
                                choices=[("activated", "Agreement activated"), ("ended", "Agreement ended")],
                                max_length=16,
                            ),
                        ),
                        (
                            "filters",
                            models.JSONField(
                                blank=True, default=dict, help_text="The audit-page filters of an audit log export."
                            ),
                        ),
                        (
                            "file_path",
                            models.CharField(blank=True, help_text="Relative to RECORDS_DIR.", max_length=300),
                        ),
                        (
                            "filename",
                            models.CharField(blank=True, help_text="The name a download is saved as.", max_length=200),
                        ),
                        ("size_bytes", models.PositiveBigIntegerField(blank=True, null=True)),
                        (
                            "unsealed_sha256",
                            models.CharField(blank=True, help_text="The rendered PDF before sealing.", max_length=64),
                        ),
                        (
                            "sha256",
                            models.CharField(
                                blank=True, help_text="The stored file, as sealed.", max_length=64, null=True
                            ),
                        ),
                        (
                            "cert_sha256",
                            models.CharField(
                                blank=True, help_text="SHA-256 of the sealing certificate.", max_length=64
                            ),
                        ),
                        ("chain_head_seq", models.BigIntegerField(blank=True, null=True)),
                        ("chain_head_hash", models.CharField(blank=True, max_length=64)),
                        ("sealed_at", models.DateTimeField(blank=True, null=True)),
                        ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
                        ("started_at", models.DateTimeField(blank=True, null=True)),
                        ("error", models.TextField(blank=True)),
                        (
                            "agreement",
                            models.ForeignKey(
                                blank=True,
                                null=True,
                                on_delete=django.db.models.deletion.PROTECT,
                                related_name="sealed_records",
                                to="agreements.agreement",
                            ),
                        ),
                        (
                            "created_by",
                            models.ForeignKey(
                                blank=True,
                                null=True,
                                on_delete=django.db.models.deletion.PROTECT,
                                related_name="+",
                                to=settings.AUTH_USER_MODEL,
                            ),
                        ),
                        (
                            "organization",
                            models.ForeignKey(
                                blank=True,
                                null=True,
                                on_delete=django.db.models.deletion.PROTECT,
                                related_name="+",
                                to="accounts.organization",
                            ),
                        ),
                    ],
                    options={
                        "db_table": "audit_sealedrecord",
                        "ordering": ["-created_at", "-id"],
                        "indexes": [models.Index(fields=["sha256"], name="sealed_record_sha256")],
                        "constraints": [
                            models.UniqueConstraint(
                                condition=models.Q(("kind", "audit_log_csv"), _negated=True),
                                fields=("sha256",),
                                name="one_record_per_sealed_sha256",
                            ),
                            models.UniqueConstraint(
                                condition=models.Q(("kind", "agreement_record")),
                                fields=("agreement", "occasion"),
                                name="one_agreement_record_per_occasion",
                            ),
                            models.CheckConstraint(
                                condition=models.Q(
                                    models.Q(("agreement__isnull", False), ("kind", "agreement_record")),
                                    models.Q(("kind", "agreement_record"), _negated=True),
                                    _connector="OR",
                                ),
                                name="agreement_record_has_agreement",
                            ),
                            models.CheckConstraint(
                                condition=models.Q(("progress__lte", 100)), name="record_progress_percent"
                            ),
                        ],
                    },
                ),
            ],
            database_operations=[],
        ),
    ]

"""Access grants and requests move from models_registry to agreements, keeping their tables and rows.

The state moves here (SeparateDatabaseAndState: no table is touched); models_registry 0003 forgets
them once inference's foreign key points here. The daily usage ledger is new.
"""

import django.db.models.deletion
import django.utils.timezone
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0001_initial"),
        ("agreements", "0002_initial"),
        ("models_registry", "0002_gpt2_stages"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[],
            state_operations=[
                migrations.CreateModel(
                    name="AccessRequest",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        ("purpose", models.TextField()),
                        (
                            "status",
                            models.CharField(
                                choices=[
                                    ("pending", "Pending"),
                                    ("approved", "Approved"),
                                    ("rejected", "Rejected"),
                                    ("withdrawn", "Withdrawn"),
                                ],
                                default="pending",
                                max_length=16,
                            ),
                        ),
                        ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
                        ("decided_at", models.DateTimeField(blank=True, null=True)),
                        ("decision_reason", models.TextField(blank=True)),
                        (
                            "amendment",
                            models.ForeignKey(
                                blank=True,
                                null=True,
                                on_delete=django.db.models.deletion.SET_NULL,
                                related_name="access_requests",
                                to="agreements.agreement",
                            ),
                        ),
                        (
                            "decided_by",
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
                                on_delete=django.db.models.deletion.PROTECT,
                                related_name="access_requests",
                                to="accounts.organization",
                            ),
                        ),
                        (
                            "requester",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.PROTECT,
                                related_name="+",
                                to=settings.AUTH_USER_MODEL,
                            ),
                        ),
                        (
                            "checkpoints",
                            models.ManyToManyField(related_name="access_requests", to="models_registry.checkpoint"),
                        ),
                    ],
                    options={
                        "db_table": "models_registry_accessrequest",
                        "ordering": ["-created_at"],
                    },
                ),
                migrations.CreateModel(
                    name="AccessGrant",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        ("starts_at", models.DateTimeField()),
                        ("ends_at", models.DateTimeField()),
                        ("daily_token_quota", models.PositiveIntegerField()),
                        ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
                        ("revoked_at", models.DateTimeField(blank=True, null=True)),
                        ("revoke_reason", models.TextField(blank=True)),
                        (
                            "agreement",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.PROTECT,
                                related_name="grants",
                                to="agreements.agreement",
                            ),
                        ),
                        (
                            "organization",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.PROTECT,
                                related_name="grants",
                                to="accounts.organization",
                            ),
                        ),
                        (
                            "checkpoint",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.PROTECT,
                                related_name="grants",
                                to="models_registry.checkpoint",
                            ),
                        ),
                    ],
                    options={
                        "db_table": "models_registry_accessgrant",
                        "ordering": ["-created_at"],
                        "constraints": [
                            models.UniqueConstraint(
                                fields=("agreement", "checkpoint"), name="one_grant_per_agreement_checkpoint"
                            ),
                            models.CheckConstraint(
                                condition=models.Q(("ends_at__gt", models.F("starts_at"))),
                                name="grant_ends_after_start",
                            ),
                        ],
                    },
                ),
            ],
        ),
        migrations.CreateModel(
            name="GrantUsage",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("day", models.DateField(help_text="The UTC day the tokens count against.")),
                (
                    "tokens_reserved",
                    models.PositiveBigIntegerField(default=0, help_text="Queued and running jobs' most."),
                ),
                ("tokens_used", models.PositiveBigIntegerField(default=0, help_text="What finished jobs generated.")),
                (
                    "grant",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT, related_name="usage", to="agreements.accessgrant"
                    ),
                ),
            ],
            options={
                "constraints": [models.UniqueConstraint(fields=("grant", "day"), name="one_usage_row_per_grant_day")],
            },
        ),
    ]

"""A database made by the release before the layered apps migrates forward with every row kept.

Grants and access requests moved from models_registry to agreements, sealed records from audit to
records (their tables stay, only Django's state moves), and the daily usage ledger is filled from
the jobs already run. The test builds that older database with the older migrations' own models,
fills it, migrates to today's schema and reads everything back through today's models.
"""

from __future__ import annotations

import importlib
from datetime import timedelta

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

# The schema the previous release left behind.
BEFORE = [
    ("accounts", "0001_initial"),
    ("agreements", "0002_initial"),
    ("models_registry", "0002_gpt2_stages"),
    ("inference", "0003_generationjob_checkpoint_generationjob_grant_and_more"),
    ("audit", "0004_chain_head_maintained_by_the_database"),
    ("records", None),
]

pytestmark = pytest.mark.django_db(transaction=True)


def _migrate(targets: list[tuple[str, str | None]] | None = None):
    """Migrate to `targets` (the newest of everything when None); returns the models as of then."""
    executor = MigrationExecutor(connection)
    targets = targets or executor.loader.graph.leaf_nodes()
    executor.migrate(targets)
    executor.loader.build_graph()
    return executor.loader.project_state([t for t in targets if t[1] is not None]).apps


def test_rows_of_the_previous_schema_survive_the_move_to_layers():
    old = _migrate(BEFORE)
    Organization = old.get_model("accounts", "Organization")
    User = old.get_model("accounts", "User")
    Checkpoint = old.get_model("models_registry", "Checkpoint")
    AccessGrant = old.get_model("models_registry", "AccessGrant")
    AccessRequest = old.get_model("models_registry", "AccessRequest")
    AgreementTemplate = old.get_model("agreements", "AgreementTemplate")
    TemplateVersion = old.get_model("agreements", "TemplateVersion")
    Agreement = old.get_model("agreements", "Agreement")
    GenerationJob = old.get_model("inference", "GenerationJob")
    SealedRecord = old.get_model("audit", "SealedRecord")

    now = timezone.now()
    partner = Organization.objects.create(name="Partner A", legal_name="Partner A Ltd", kind="partner")
    user = User.objects.create(email="researcher@partner-a.example")
    # A transactional test before this one may have flushed the stages the data migration seeds.
    importlib.import_module("models_registry.migrations.0002_gpt2_stages").add_stages(old, None)
    gpt2 = Checkpoint.objects.get(slug="gpt2")
    template = AgreementTemplate.objects.create(name="Agreement")
    version = TemplateVersion.objects.create(template=template, number=1, body="Body", status="published")
    agreement = Agreement.objects.create(
        organization=partner,
        template_version=version,
        status="active",
        effective_date=now.date(),
        term_months=12,
        daily_token_quota=50_000,
        purpose="Measuring detectability of generated text.",
        activated_at=now,
        created_by=user,
    )
    grant = AccessGrant.objects.create(
        organization=partner,
        checkpoint=gpt2,
        agreement=agreement,
        starts_at=now - timedelta(days=1),
        ends_at=now + timedelta(days=300),
        daily_token_quota=50_000,
    )
    request = AccessRequest.objects.create(organization=partner, requester=user, purpose="More of the same, please.")
    request.checkpoints.set([gpt2])
    job_fields = {
        "organization": partner,
        "requester": user,
        "checkpoint": gpt2,
        "grant": grant,
        "prompt": "Hi",
        "temperature": 1.0,
    }
    GenerationJob.objects.create(
        **job_fields, status="succeeded", max_new_tokens=64, num_samples=2, tokens_generated=90
    )
    GenerationJob.objects.create(**job_fields, status="queued", max_new_tokens=100, num_samples=3)
    record = SealedRecord.objects.create(
        kind="agreement_record", agreement=agreement, occasion="activated", sha256="ab" * 32
    )
    export = SealedRecord.objects.create(
        kind="audit_log_csv", filters={"action": "job.", "date_from": "2026-01-01", "date_to": "2026-01-31"}
    )

    _migrate()  # forward to the newest migration of every app
    from agreements.models import AccessGrant as Grant
    from agreements.models import AccessRequest as Request
    from agreements.models import GrantUsage
    from agreements.selectors import tokens_charged_today
    from inference.models import GenerationJob as Job
    from records.models import SealedRecord as Record

    moved_grant = Grant.objects.get(pk=grant.pk)
    assert (moved_grant.agreement_id, moved_grant.checkpoint.slug) == (agreement.pk, "gpt2")
    assert list(Request.objects.get(pk=request.pk).checkpoints.values_list("slug", flat=True)) == ["gpt2"]
    assert Job.objects.filter(grant=moved_grant).count() == 2
    assert Record.objects.get(pk=record.pk).agreement_id == agreement.pk
    # An audit log export keeps its filters under the names every list uses now.
    assert Record.objects.get(pk=export.pk).filters == {
        "action": "job.",
        "created_after": "2026-01-01",
        "created_before": "2026-01-31",
    }
    # The ledger reads what the jobs charged: 90 generated plus 300 still reserved.
    usage = GrantUsage.objects.get(grant=moved_grant)
    assert (usage.tokens_used, usage.tokens_reserved) == (90, 300)
    assert tokens_charged_today(organization=moved_grant.organization, checkpoint=moved_grant.checkpoint) == 390

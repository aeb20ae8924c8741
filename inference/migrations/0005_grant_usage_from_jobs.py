"""Fill the daily usage ledger (agreements.GrantUsage) from the jobs already run, so quotas read the
same after the upgrade: per grant and UTC day of submission, unfinished jobs reserve their most,
finished ones count what they generated."""

from collections import defaultdict
from datetime import UTC

from django.db import migrations

FINISHED = {"succeeded", "failed", "cancelled"}


def fill_ledger(apps, schema_editor):
    GenerationJob = apps.get_model("inference", "GenerationJob")
    GrantUsage = apps.get_model("agreements", "GrantUsage")
    totals = defaultdict(lambda: [0, 0])  # (grant, day) -> [reserved, used]
    jobs = GenerationJob.objects.values_list(
        "grant_id", "created_at", "status", "max_new_tokens", "num_samples", "tokens_generated"
    )
    for grant_id, created_at, status, max_new_tokens, num_samples, generated in jobs.iterator():
        row = totals[(grant_id, created_at.astimezone(UTC).date())]
        if status in FINISHED:
            row[1] += generated or 0
        else:
            row[0] += max_new_tokens * num_samples
    GrantUsage.objects.bulk_create(
        [
            GrantUsage(grant_id=grant_id, day=day, tokens_reserved=reserved, tokens_used=used)
            for (grant_id, day), (reserved, used) in totals.items()
        ],
        batch_size=1000,
    )


def empty_ledger(apps, schema_editor):
    apps.get_model("agreements", "GrantUsage").objects.all().delete()


class Migration(migrations.Migration):
    dependencies = [
        ("agreements", "0003_access_grants_and_requests"),
        ("inference", "0004_grant_moved_to_agreements"),
    ]

    operations = [migrations.RunPython(fill_ledger, empty_ledger)]

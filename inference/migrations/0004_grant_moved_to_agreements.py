"""GenerationJob.grant now points at agreements.AccessGrant: the same table, so only the state changes."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("agreements", "0003_access_grants_and_requests"),
        ("inference", "0003_generationjob_checkpoint_generationjob_grant_and_more"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[],
            state_operations=[
                migrations.AlterField(
                    model_name="generationjob",
                    name="grant",
                    field=models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT, related_name="jobs", to="agreements.accessgrant"
                    ),
                ),
            ],
        ),
    ]

"""Access grants and requests now belong to agreements (agreements 0003); the tables stay as they are."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("models_registry", "0002_gpt2_stages"),
        ("agreements", "0003_access_grants_and_requests"),
        ("inference", "0004_grant_moved_to_agreements"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[],
            state_operations=[
                migrations.DeleteModel(name="AccessGrant"),
                migrations.DeleteModel(name="AccessRequest"),
            ],
        ),
    ]

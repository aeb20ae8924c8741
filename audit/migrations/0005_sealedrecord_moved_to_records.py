"""SealedRecord moved to the records app: Django forgets it here, the table stays as it is.

records/migrations/0001_initial.py picks the model up again on the same table
(audit_sealedrecord), so no row, constraint or index is touched.
"""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("audit", "0004_chain_head_maintained_by_the_database"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.DeleteModel(name="SealedRecord")],
            database_operations=[],
        ),
    ]

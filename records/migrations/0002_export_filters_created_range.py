"""Audit log exports store their date filters as created_after / created_before, the names every list
filter uses (pages and API); exports made before keep their filters under the new names."""

from django.db import migrations

RENAMES = {"date_from": "created_after", "date_to": "created_before"}


def rename(apps, schema_editor, renames=RENAMES):
    SealedRecord = apps.get_model("records", "SealedRecord")
    for record in SealedRecord.objects.exclude(filters={}).only("pk", "filters"):
        if any(old in record.filters for old in renames):
            filters = {renames.get(key, key): value for key, value in record.filters.items()}
            SealedRecord.objects.filter(pk=record.pk).update(filters=filters)


def rename_back(apps, schema_editor):
    rename(apps, schema_editor, {new: old for old, new in RENAMES.items()})


class Migration(migrations.Migration):
    dependencies = [("records", "0001_initial")]

    operations = [migrations.RunPython(rename, rename_back)]

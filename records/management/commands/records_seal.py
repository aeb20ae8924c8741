"""Seal, now and in this process, the records an agreement is owed and does not have yet."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from agreements.models import Agreement
from records.models import SealedRecord
from records.selectors import record_file_path
from records.services import record_seal_agreement


class Command(BaseCommand):
    help = (
        "Seal the missing records of active and ended agreements (all of them, or those named), as the "
        "worker does when an agreement becomes active or ends. Exit 1 if any could not be sealed."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("agreement_ids", nargs="*", type=int, help="Agreement ids; default: every agreement.")

    def handle(self, *args: Any, agreement_ids: list[int], **options: Any) -> None:
        agreements = Agreement.objects.filter(activated_at__isnull=False).order_by("pk")
        if agreement_ids:
            agreements = agreements.filter(pk__in=agreement_ids)
        failed = []
        for agreement in agreements:
            occasions = [SealedRecord.Occasion.ACTIVATED] + (
                [SealedRecord.Occasion.ENDED] if agreement.ended_at else []
            )
            for occasion in occasions:
                record = record_seal_agreement(agreement_id=agreement.pk, occasion=occasion)
                if record is not None and record.is_ready:
                    self.stdout.write(
                        f"Sealed record of {agreement.reference} ({occasion}): {record_file_path(record)}"
                    )
                elif record is not None:
                    failed.append(f"{agreement.reference} ({occasion}): {record.error}")
        if failed:
            raise CommandError("Not sealed: " + "; ".join(failed))

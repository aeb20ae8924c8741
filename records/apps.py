from __future__ import annotations

from typing import TYPE_CHECKING

from django.apps import AppConfig

from agreements import hooks
from core.tasks import task_send_on_commit

if TYPE_CHECKING:
    from agreements.models import Agreement


def _seal_on_milestone(agreement: Agreement, occasion: hooks.Occasion) -> None:
    """An agreement became active or ended: seal its record once that change is committed."""
    task_send_on_commit("records.tasks.seal_agreement_record", agreement.pk, occasion)


class RecordsConfig(AppConfig):
    """Sealed records, evidence bundles, exports and their verification; the auditor's workspace."""

    name = "records"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        hooks.subscribe(_seal_on_milestone)

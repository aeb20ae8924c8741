from django.contrib import admin

from accounts.admin import ReadOnlyAdmin
from records.models import SealedRecord


@admin.register(SealedRecord)
class SealedRecordAdmin(ReadOnlyAdmin):
    list_display = (
        "pk",
        "kind",
        "status",
        "agreement",
        "occasion",
        "release_decision",
        "organization",
        "sealed_at",
        "sha256",
    )
    list_filter = ("kind", "status")
    search_fields = ("sha256", "filename")

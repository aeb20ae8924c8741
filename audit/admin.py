from django.contrib import admin

from accounts.admin import ReadOnlyAdmin
from audit.models import AuditEvent, SealedRecord


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ("seq", "created_at", "action", "actor_email", "organization", "target_repr")
    list_filter = ("action",)
    search_fields = ("actor_email", "target_repr")


@admin.register(SealedRecord)
class SealedRecordAdmin(ReadOnlyAdmin):
    list_display = ("pk", "kind", "status", "agreement", "occasion", "organization", "sealed_at", "sha256")
    list_filter = ("kind", "status")
    search_fields = ("sha256", "filename")

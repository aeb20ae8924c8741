from django.contrib import admin

from accounts.admin import ReadOnlyAdmin
from audit.models import AuditEvent


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ("seq", "created_at", "action", "actor_email", "organization", "target_repr")
    list_filter = ("action",)
    search_fields = ("actor_email", "target_repr")

from django.contrib import admin

from accounts.admin import ReadOnlyAdmin
from inference.models import GenerationJob, Sample


class SampleInline(admin.TabularInline):
    model = Sample
    fields = ("index", "token_count", "sha256", "text")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(GenerationJob)
class GenerationJobAdmin(ReadOnlyAdmin):
    list_display = ("pk", "organization", "checkpoint", "status", "created_at", "tokens_generated", "worker")
    list_filter = ("status", "checkpoint", "organization")
    list_select_related = ("organization", "checkpoint")
    inlines = [SampleInline]

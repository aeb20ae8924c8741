"""Read-only admin views of findings, incidents and release decisions, for investigations."""

from django.contrib import admin

from accounts.admin import ReadOnlyAdmin
from research.models import Finding, FindingAttachment, FindingReview, Incident, ReleaseDecision

# --- findings and incidents ---


class _ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


class FindingAttachmentInline(_ReadOnlyInline):
    model = FindingAttachment
    fields = ("filename", "size_bytes", "sha256", "file_path", "uploaded_by", "uploaded_at")
    readonly_fields = fields


class FindingReviewInline(_ReadOnlyInline):
    model = FindingReview
    fields = ("created_at", "action", "actor", "comment")
    readonly_fields = fields


@admin.register(Finding)
class FindingAdmin(ReadOnlyAdmin):
    list_display = ("reference", "title", "organization", "category", "status", "publication_review", "created_at")
    list_filter = ("status", "category", "publication_review", "organization")
    list_select_related = ("organization",)
    search_fields = ("title",)
    inlines = [FindingAttachmentInline, FindingReviewInline]


@admin.register(Incident)
class IncidentAdmin(ReadOnlyAdmin):
    list_display = ("reference", "title", "organization", "severity", "status", "action", "created_at")
    list_filter = ("status", "severity", "action", "organization")
    list_select_related = ("organization",)
    search_fields = ("title",)


# --- end findings and incidents ---

# --- releases ---


@admin.register(ReleaseDecision)
class ReleaseDecisionAdmin(ReadOnlyAdmin):
    list_display = ("reference", "checkpoint", "decision", "decided_by", "decided_at", "evidence_sha256")
    list_filter = ("decision", "checkpoint")
    list_select_related = ("checkpoint", "decided_by")
    search_fields = ("rationale", "evidence_sha256")


# --- end releases ---

from django.contrib import admin

from accounts.admin import ReadOnlyAdmin
from models_registry.models import AccessGrant, AccessRequest, Checkpoint


@admin.register(Checkpoint)
class CheckpointAdmin(ReadOnlyAdmin):
    list_display = ("slug", "display_name", "size_label", "status", "is_demo", "weights_sha256")
    list_filter = ("status", "is_demo")


@admin.register(AccessRequest)
class AccessRequestAdmin(ReadOnlyAdmin):
    list_display = ("pk", "organization", "requester", "status", "created_at", "decided_at")
    list_filter = ("status", "organization")
    list_select_related = ("organization", "requester")


@admin.register(AccessGrant)
class AccessGrantAdmin(ReadOnlyAdmin):
    list_display = ("organization", "checkpoint", "agreement", "starts_at", "ends_at", "revoked_at")
    list_filter = ("checkpoint", "organization")
    list_select_related = ("organization", "checkpoint", "agreement")

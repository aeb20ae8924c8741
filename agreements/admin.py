from django.contrib import admin

from accounts.admin import ReadOnlyAdmin
from agreements.models import (
    AccessGrant,
    AccessRequest,
    Agreement,
    AgreementTemplate,
    GrantUsage,
    Obligation,
    Signature,
    TemplateVersion,
)


@admin.register(AgreementTemplate)
class AgreementTemplateAdmin(ReadOnlyAdmin):
    list_display = ("name", "created_at", "created_by")
    search_fields = ("name",)


@admin.register(TemplateVersion)
class TemplateVersionAdmin(ReadOnlyAdmin):
    list_display = ("template", "number", "status", "sha256", "published_at")
    list_filter = ("status",)
    list_select_related = ("template",)


@admin.register(Agreement)
class AgreementAdmin(ReadOnlyAdmin):
    list_display = ("reference", "organization", "status", "effective_date", "term_months", "sent_at", "activated_at")
    list_filter = ("status", "organization")
    list_select_related = ("organization",)
    search_fields = ("organization__name", "document_sha256")


@admin.register(Signature)
class SignatureAdmin(ReadOnlyAdmin):
    list_display = ("agreement", "side", "full_name", "signer_email", "signed_at", "reauth_method")
    list_filter = ("side",)
    list_select_related = ("agreement",)


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


@admin.register(GrantUsage)
class GrantUsageAdmin(ReadOnlyAdmin):
    list_display = ("grant", "day", "tokens_reserved", "tokens_used")
    list_filter = ("day",)
    list_select_related = ("grant__organization", "grant__checkpoint")


@admin.register(Obligation)
class ObligationAdmin(ReadOnlyAdmin):
    list_display = ("reference", "organization", "kind", "due_at", "original_due_at", "fulfilled_at", "waived_at")
    list_filter = ("kind", "organization")
    list_select_related = ("organization",)
    search_fields = ("description", "fulfilment", "extension_reason")

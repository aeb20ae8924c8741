"""The Django admin: read-only, for lab admins, behind the normal login.

Changes go through the app's pages so they pass the services and the audit log.
"""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.utils.http import urlencode

from accounts.models import Invitation, Membership, Organization, Role, User
from accounts.permissions import has_role


def _is_lab_admin(request: HttpRequest) -> bool:
    return has_role(request.user, Role.LAB_ADMIN)


def _admin_login(request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect("home")
    next_url = request.GET.get("next", reverse("admin:index"))
    return redirect(f"{reverse('account_login')}?{urlencode({'next': next_url})}")


# The default site is patched in place (its URLs are the ones in use); the stubs treat methods as read-only.
admin.site.has_permission = _is_lab_admin  # type: ignore[method-assign]
admin.site.login = _admin_login  # type: ignore[method-assign]
admin.site.site_header = "ModelPact administration (read-only)"
admin.site.site_title = "ModelPact admin"


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_module_permission(self, request: HttpRequest) -> bool:
        return _is_lab_admin(request)

    def has_view_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return _is_lab_admin(request)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Organization)
class OrganizationAdmin(ReadOnlyAdmin):
    list_display = ("name", "legal_name", "kind", "jurisdiction", "active")
    list_filter = ("kind", "active")
    search_fields = ("name", "legal_name")


@admin.register(User)
class UserAdmin(ReadOnlyAdmin):
    list_display = ("email", "full_name", "is_active", "last_login")
    search_fields = ("email", "full_name")
    exclude = ("password",)


@admin.register(Membership)
class MembershipAdmin(ReadOnlyAdmin):
    list_display = ("user", "organization", "role")
    list_filter = ("role", "organization")
    list_select_related = ("user", "organization")


@admin.register(Invitation)
class InvitationAdmin(ReadOnlyAdmin):
    list_display = ("email", "organization", "role", "created_at", "expires_at", "accepted_at", "revoked_at")
    exclude = ("token_hash",)

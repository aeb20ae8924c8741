"""Pages for the persona home, organisations, members and invitations."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import urlencode

from allauth.account.adapter import get_adapter
from allauth.account.internal.flows.login import get_authentication_records
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.forms import Form
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from accounts import selectors, services
from accounts.forms import (
    AcceptInvitationForm,
    InvitationForm,
    NotificationSettingsForm,
    OrganizationEditForm,
    OrganizationForm,
    RoleForm,
    TokenCreateForm,
)
from accounts.models import Role
from accounts.permissions import REAUTH_WINDOW, request_user, require_role, role_of


def apply_validation_error(form: Form, error: ValidationError) -> None:
    """Show a service's ValidationError next to the fields it names (or above the form)."""
    if hasattr(error, "error_dict"):
        for field, errors in error.error_dict.items():
            form.add_error(field if field in form.fields else None, errors)
    else:
        form.add_error(None, error)


def recent_authentication(request: HttpRequest) -> tuple[str | None, datetime | None]:
    """How and when this session last proved who it is, if within the reauthentication window.

    allauth records every password or authenticator-code check in the session, at sign-in and at
    reauthentication alike; the latest one counts.
    """
    records = [r for r in get_authentication_records(request, request.user) if isinstance(r, dict) and "at" in r]
    if not records:
        return None, None
    latest = max(records, key=lambda r: float(r["at"]))
    at = datetime.fromtimestamp(float(latest["at"]), tz=UTC)
    if timezone.now() - at > REAUTH_WINDOW:
        return None, None
    method = str(latest.get("method", ""))
    if method == "mfa":
        method = str(latest.get("type") or "mfa")  # "totp" or "recovery_codes"
    return method or None, at


def reauthentication_links(request: HttpRequest) -> list[dict[str, str]]:
    """The ways this user can confirm their identity (password, authenticator code), back to this page."""
    query = urlencode({"next": request.get_full_path()})
    methods = get_adapter(request).get_reauthentication_methods(request.user)
    links = [{"label": str(m["description"]), "url": f"{m['url']}?{query}"} for m in methods]
    return links or [{"label": "Use your password", "url": f"{reverse('account_reauthenticate')}?{query}"}]


@login_required
def organization_list(request: HttpRequest) -> HttpResponse:
    organizations = selectors.organization_list(user=request_user(request))
    return render(request, "accounts/organization_list.html", {"organizations": organizations})


@login_required
def organization_create(request: HttpRequest) -> HttpResponse:
    require_role(request.user, Role.LAB_ADMIN)
    form = OrganizationForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            organization = services.organization_create(actor=request_user(request), **form.cleaned_data)
        except ValidationError as exc:
            apply_validation_error(form, exc)
        else:
            messages.success(request, f"{organization.name} created. Invite its first users below.")
            return redirect("organization_detail", pk=organization.pk)
    return render(request, "accounts/organization_form.html", {"form": form, "title": "New organisation"})


@login_required
def organization_edit(request: HttpRequest, pk: int) -> HttpResponse:
    organization = selectors.organization_get(user=request_user(request), pk=pk)
    require_role(request.user, Role.LAB_ADMIN)
    initial = {f: getattr(organization, f) for f in ("legal_name", "jurisdiction", "address", "contact_email")}
    form = OrganizationEditForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            services.organization_update(actor=request_user(request), organization=organization, **form.cleaned_data)
        except ValidationError as exc:
            apply_validation_error(form, exc)
        else:
            messages.success(request, "Organisation details saved.")
            return redirect("organization_detail", pk=organization.pk)
    context = {"form": form, "title": f"Edit {organization.name}", "organization": organization}
    return render(request, "accounts/organization_form.html", context)


@login_required
def my_organization(request: HttpRequest) -> HttpResponse:
    if role_of(request.user) is None:
        raise Http404
    return organization_detail(request, request_user(request).membership.organization_id)


@login_required
def organization_detail(request: HttpRequest, pk: int, invite_form: InvitationForm | None = None) -> HttpResponse:
    organization = selectors.organization_get(user=request_user(request), pk=pk)
    can_manage = selectors.can_manage_users(request_user(request), organization)
    members = selectors.membership_list(user=request_user(request), organization=organization)
    page = Paginator(members, 50).get_page(request.GET.get("page"))
    context = {
        "organization": organization,
        "members": page,
        "invitations": selectors.invitation_list(user=request_user(request), organization=organization),
        "can_manage": can_manage,
        "can_edit": role_of(request.user) == Role.LAB_ADMIN,
        "invite_form": invite_form or InvitationForm(organization=organization),
        "roles": Role.for_kind(organization.kind),
    }
    status = 400 if invite_form is not None and invite_form.errors else 200
    return render(request, "accounts/organization_detail.html", context, status=status)


@login_required
@require_POST
def invitation_create(request: HttpRequest, pk: int) -> HttpResponse:
    organization = selectors.organization_get(user=request_user(request), pk=pk)
    form = InvitationForm(request.POST, organization=organization)
    if form.is_valid():
        try:
            invitation, _token = services.invitation_create(
                actor=request_user(request), organization=organization, **form.cleaned_data
            )
        except ValidationError as exc:
            apply_validation_error(form, exc)
        else:
            messages.success(request, f"Invitation emailed to {invitation.email}.")
            return redirect("organization_detail", pk=organization.pk)
    if not selectors.can_manage_users(request_user(request), organization):
        require_role(request.user, Role.LAB_ADMIN)  # raises 403 with a clear message
    return organization_detail(request, organization.pk, invite_form=form)


@login_required
@require_POST
def invitation_revoke(request: HttpRequest, pk: int) -> HttpResponse:
    invitation = selectors.invitation_get(user=request_user(request), pk=pk)
    try:
        services.invitation_revoke(actor=request_user(request), invitation=invitation)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        messages.success(request, f"Invitation for {invitation.email} withdrawn.")
    return redirect("organization_detail", pk=invitation.organization_id)


@login_required
@require_POST
def membership_update(request: HttpRequest, pk: int) -> HttpResponse:
    """Change a member's role, or deactivate / reactivate them."""
    membership = selectors.membership_get(user=request_user(request), pk=pk)
    action = request.POST.get("action")
    try:
        if action == "role":
            form = RoleForm(request.POST, organization=membership.organization)
            if not form.is_valid():
                raise ValidationError(form.errors["role"])  # type: ignore[arg-type]  # an ErrorList is a list
            services.membership_change_role(
                actor=request_user(request), membership=membership, role=form.cleaned_data["role"]
            )
            messages.success(request, f"{membership.user.email} is now {membership.get_role_display()}.")
        elif action in ("deactivate", "reactivate"):
            services.user_set_active(actor=request_user(request), user=membership.user, active=action == "reactivate")
            messages.success(request, f"{membership.user.email} {action}d.")
        else:
            messages.error(request, "Unknown action.")
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    return redirect("organization_detail", pk=membership.organization_id)


def invitation_accept(request: HttpRequest, token: str) -> HttpResponse:
    try:
        invitation = services.invitation_from_token(token)
    except ValidationError as exc:
        return render(request, "accounts/invitation_invalid.html", {"message": exc.messages[0]}, status=410)
    if request.user.is_authenticated:
        messages.info(request, "You are signed in already; sign out to accept an invitation for someone else.")
        return redirect("home")
    form = AcceptInvitationForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            user = services.invitation_accept(
                token=token, full_name=form.cleaned_data["full_name"], password=form.cleaned_data["password1"]
            )
        except ValidationError as exc:
            apply_validation_error(form, exc)
        else:
            login(request, user, backend="django.contrib.auth.backends.ModelBackend")
            messages.success(request, f"Welcome to ModelPact, {user.get_short_name()}.")
            return redirect("home")
    return render(request, "accounts/invitation_accept.html", {"form": form, "invitation": invitation})


# --- API tokens: list, create (after a fresh reauthentication, shown once) and revoke --------------


@never_cache
@login_required
def token_list(request: HttpRequest) -> HttpResponse:
    """GET lists the tokens; POST creates one and shows its key on this response only."""
    if role_of(request.user) is None:
        raise Http404
    form = TokenCreateForm(request.POST or None)
    new_key = None
    status = 200
    reauth_method, reauth_at = recent_authentication(request)
    if request.method == "POST":
        if form.is_valid():
            try:
                _token, new_key = services.api_token_create(
                    actor=request_user(request),
                    user=request_user(request),
                    expiry_days=form.cleaned_data["expiry_days"],
                    reauthenticated_at=reauth_at,
                )
            except ValidationError as exc:
                form.add_error(None, exc)
        if new_key is None:
            status = 400
    now = timezone.now()
    own = list(selectors.api_token_list(user=request_user(request)))
    context = {
        "form": form,
        "new_key": new_key,
        "own_tokens": own,
        "managed_tokens": list(selectors.api_token_managed_list(user=request_user(request))),
        "now": now,
        "reauth_at": reauth_at,
        "reauth_method": reauth_method,
        "reauth_expires": reauth_at + REAUTH_WINDOW if reauth_at else None,
        "reauth_links": [] if reauth_at else reauthentication_links(request),
        "api_base": request.build_absolute_uri("/api/v1/"),
    }
    return render(request, "accounts/api_tokens.html", context, status=status)


@login_required
@require_POST
def token_revoke(request: HttpRequest, key: str) -> HttpResponse:
    token = selectors.api_token_get(user=request_user(request), key=key)
    owner = token.user
    services.api_token_revoke(actor=request_user(request), token=token)
    whose = "Your token" if owner.pk == request.user.pk else f"{owner.email}'s token"
    messages.success(request, f"{whose} {key}… is revoked; requests with it are now refused.")
    return redirect("api_token_list")


# --- Notifications: each person's own list, opened and marked read; their settings ------------------


@login_required
def notification_list(request: HttpRequest) -> HttpResponse:
    if role_of(request.user) is None:
        raise Http404
    notifications = selectors.notification_list(user=request_user(request))
    page = Paginator(notifications, 50).get_page(request.GET.get("page"))
    unread = notifications.filter(read_at=None).count()
    return render(request, "accounts/notification_list.html", {"page": page, "unread": unread})


@login_required
def notification_open(request: HttpRequest, pk: int) -> HttpResponse:
    """Follow a notice's link, marking it read; another person's notice is 404."""
    notification = selectors.notification_get(user=request_user(request), pk=pk)
    services.notification_mark_read(user=request_user(request), notification=notification)
    # Stored links are paths on this site; checked again so a bad row can never send anyone elsewhere.
    if not url_has_allowed_host_and_scheme(notification.url, allowed_hosts={request.get_host()}):
        return redirect("notification_list")
    return redirect(notification.url)


@login_required
@require_POST
def notifications_mark_all_read(request: HttpRequest) -> HttpResponse:
    if role_of(request.user) is None:
        raise Http404
    count = services.notifications_mark_all_read(user=request_user(request))
    messages.success(
        request, f"{count} notification{'s' if count != 1 else ''} marked read." if count else "Nothing is unread."
    )
    return redirect("home" if request.POST.get("next") == "home" else "notification_list")


@login_required
def notification_settings(request: HttpRequest) -> HttpResponse:
    """Switch off the kinds of notice that are not essential; essential ones are listed as always on."""
    settings_ = selectors.notification_settings(user=request_user(request))
    optional = [(s.kind, s.label) for s in settings_ if not s.essential]
    initial = {"enabled": [s.kind for s in settings_ if not s.essential and s.enabled]}
    form = NotificationSettingsForm(request.POST or None, optional=optional, initial=initial)
    status = 200
    if request.method == "POST":
        if form.is_valid():
            try:
                off = services.notification_settings_set(
                    actor=request_user(request), enabled=form.cleaned_data["enabled"]
                )
            except ValidationError as exc:
                apply_validation_error(form, exc)
            else:
                messages.success(
                    request,
                    f"Saved. {len(off)} kind{'s' if len(off) != 1 else ''} of notification switched off."
                    if off
                    else "Saved. You receive every kind of notification.",
                )
                return redirect("notification_settings")
        status = 400
    context = {"form": form, "essential": [s for s in settings_ if s.essential], "optional": optional}
    return render(request, "accounts/notification_settings.html", context, status=status)

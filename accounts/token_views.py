"""The API tokens page: list, create (after a fresh reauthentication, shown once) and revoke."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from accounts import selectors, services
from accounts.permissions import REAUTH_WINDOW, role_of
from accounts.views import reauthentication_links, recent_authentication


class TokenCreateForm(forms.Form):
    expiry_days = forms.TypedChoiceField(
        label="Expires after",
        coerce=int,
        choices=[(7, "7 days"), (30, "30 days"), (90, "90 days"), (365, "1 year")],
    )

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        default = services.api_token_default_expiry_days()
        choices = dict(self.fields["expiry_days"].choices)
        choices.setdefault(default, f"{default} days")
        self.fields["expiry_days"].choices = sorted(choices.items())
        self.fields["expiry_days"].initial = default


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
                    actor=request.user,
                    user=request.user,
                    expiry_days=form.cleaned_data["expiry_days"],
                    reauthenticated_at=reauth_at,
                )
            except ValidationError as exc:
                form.add_error(None, exc)
        if new_key is None:
            status = 400
    now = timezone.now()
    own = list(selectors.api_token_list(user=request.user))
    context = {
        "form": form,
        "new_key": new_key,
        "own_tokens": own,
        "managed_tokens": list(selectors.api_token_managed_list(user=request.user)),
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
    token = selectors.api_token_get(user=request.user, key=key)
    owner = token.user
    services.api_token_revoke(actor=request.user, token=token)
    whose = "Your token" if owner.pk == request.user.pk else f"{owner.email}'s token"
    messages.success(request, f"{whose} {key}… is revoked; requests with it are now refused.")
    return redirect("api_token_list")

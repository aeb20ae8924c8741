"""Pages for webhooks: the list with the registration form, one endpoint with its delivery log, and
the POST actions (rotate the secret, resend a delivery, enable a disabled endpoint)."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from accounts.models import Role
from accounts.permissions import request_user, role_of
from accounts.views import apply_validation_error
from webhooks import selectors, services
from webhooks.forms import EndpointForm
from webhooks.models import EVENT_TYPES, WebhookEndpoint

DELIVERIES_PER_PAGE = 25


def _form(request: HttpRequest) -> EndpointForm:
    user = request_user(request)
    organizations = (
        list(selectors.endpoint_organization_choices(user=user)) if role_of(user) == Role.LAB_ADMIN else None
    )
    return EndpointForm(request.POST or None, organizations=organizations)


@login_required
def webhook_list(request: HttpRequest) -> HttpResponse:
    """Partner admins: their organisation's endpoints. Lab admins: every endpoint. Both register here."""
    user = request_user(request)
    endpoints = selectors.endpoint_list(user=user)
    form = _form(request)
    if request.method == "POST" and form.is_valid():
        organization = None
        if form.cleaned_data.get("organization"):
            organization = (
                selectors.endpoint_organization_choices(user=user).filter(pk=form.cleaned_data["organization"]).first()
            )
        try:
            endpoint, secret = services.endpoint_create(
                actor=user,
                url=form.cleaned_data["url"],
                events=form.cleaned_data["events"],
                description=form.cleaned_data["description"],
                organization=organization,
            )
        except ValidationError as exc:
            apply_validation_error(form, exc)
        else:
            messages.success(request, "Endpoint registered. Copy its signing secret now: it is shown this once.")
            return _detail(request, endpoint, new_secret=secret, status=201)
    status = 400 if form.errors else 200
    return render(request, "webhooks/endpoint_list.html", {"endpoints": endpoints, "form": form}, status=status)


def _detail(
    request: HttpRequest, endpoint: WebhookEndpoint, *, new_secret: str = "", status: int = 200
) -> HttpResponse:
    user = request_user(request)
    deliveries = selectors.delivery_list(user=user, endpoint=endpoint)
    page = Paginator(deliveries, DELIVERIES_PER_PAGE).get_page(request.GET.get("page"))
    labels = dict(EVENT_TYPES)
    context = {
        "endpoint": endpoint,
        "page": page,
        "new_secret": new_secret,
        "event_labels": [(name, labels.get(name, name)) for name in endpoint.events],
    }
    return render(request, "webhooks/endpoint_detail.html", context, status=status)


@login_required
def webhook_detail(request: HttpRequest, pk: int) -> HttpResponse:
    return _detail(request, selectors.endpoint_get(user=request_user(request), pk=pk))


@login_required
@require_POST
def webhook_rotate_secret(request: HttpRequest, pk: int) -> HttpResponse:
    endpoint = selectors.endpoint_get(user=request_user(request), pk=pk)
    endpoint, secret = services.endpoint_rotate_secret(actor=request_user(request), endpoint=endpoint)
    messages.success(request, "New signing secret made. The old one stays valid for 24 hours; copy the new one now.")
    return _detail(request, endpoint, new_secret=secret)


@login_required
@require_POST
def webhook_enable(request: HttpRequest, pk: int) -> HttpResponse:
    endpoint = selectors.endpoint_get(user=request_user(request), pk=pk)
    services.endpoint_enable(actor=request_user(request), endpoint=endpoint)
    messages.success(request, "Endpoint enabled; what it missed is being sent.")
    return redirect("webhook_detail", pk=endpoint.pk)


@login_required
@require_POST
def delivery_resend(request: HttpRequest, pk: int) -> HttpResponse:
    delivery = selectors.delivery_get(user=request_user(request), pk=pk)
    try:
        services.delivery_resend(actor=request_user(request), delivery=delivery)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        messages.success(request, f"Delivery of {delivery.event.type} queued again, with the same webhook-id.")
    return redirect("webhook_detail", pk=delivery.endpoint_id)

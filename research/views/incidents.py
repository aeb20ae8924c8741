"""Pages for incidents: the lab's queue (partners: their own reports), the report form, and one incident with
the one-step kill switch and the resolution."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from accounts.models import LAB_ROLES, PARTNER_ROLES, Role
from accounts.permissions import request_user, require_role, role_of
from accounts.views import apply_validation_error
from core.errors import DomainError
from models_registry.models import Checkpoint
from research.forms.incidents import IncidentActForm, IncidentForm, IncidentResolveForm
from research.models import Incident
from research.selectors import incidents as selectors
from research.services import incidents as services

INCIDENTS_PER_PAGE = 25


@login_required
def incident_list(request: HttpRequest) -> HttpResponse:
    """Lab staff: the queue, open first and most severe first. Partners: their organisation's reports."""
    user = request_user(request)
    filters = selectors.IncidentFilter(request.GET or None, queryset=selectors.incident_queue(user=user))
    form = filters.form
    is_lab = role_of(user) in LAB_ROLES
    if not is_lab:
        del form.fields["organization"]
    incidents = filters.qs.none() if form.errors else filters.qs
    page = Paginator(incidents, INCIDENTS_PER_PAGE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    context = {
        "form": form,
        "page": page,
        "query": query.urlencode(),
        "is_lab": is_lab,
        "can_report": selectors.incident_report_offered(user=user),
        "open_count": selectors.incident_list(user=user).filter(status=Incident.Status.OPEN).count(),
        "filtered": bool(filters.is_bound and any(form.data.get(name) for name in form.fields)),
    }
    return render(request, "research/incident_list.html", context, status=400 if form.errors else 200)


@login_required
def incident_create(request: HttpRequest) -> HttpResponse:
    require_role(request.user, *selectors.INCIDENT_REPORTERS)
    names_organization = role_of(request.user) not in PARTNER_ROLES
    initial = {}
    if request.GET.get("checkpoint"):
        initial["checkpoints"] = list(Checkpoint.objects.filter(slug=request.GET["checkpoint"]))
    form = IncidentForm(request.POST or None, initial=initial, names_organization=names_organization)
    status = 200
    if request.method == "POST":
        status = 400
        if form.is_valid():
            data = form.cleaned_data
            try:
                incident = services.incident_report(
                    actor=request_user(request),
                    title=data["title"],
                    description=data["description"],
                    discovered_at=data["discovered_at"],
                    severity=data["severity"],
                    checkpoints=list(data["checkpoints"]),
                    organization=data.get("organization"),
                )
            except ValidationError as exc:
                apply_validation_error(form, exc)
            else:
                done = f"{incident.reference} reported; the lab's admins and legal are told at once."
                if incident.obligation is not None and incident.obligation.fulfilled_late:
                    done += " It came later than the agreement asks; the obligation records that."
                messages.success(request, done)
                return redirect("incident_detail", pk=incident.pk)
    context = {"form": form, "names_organization": names_organization}
    return render(request, "research/incident_form.html", context, status=status)


@login_required
def incident_detail(request: HttpRequest, pk: int) -> HttpResponse:
    incident = selectors.incident_get(user=request_user(request), pk=pk)
    return _detail_page(request, incident)


def _detail_page(
    request: HttpRequest,
    incident: Incident,
    *,
    act_form: IncidentActForm | None = None,
    resolve_form: IncidentResolveForm | None = None,
    refusal: str = "",
    status: int = 200,
) -> HttpResponse:
    user = request_user(request)
    context: dict[str, Any] = {
        "incident": incident,
        "can_act": selectors.incident_can_act(user=user, incident=incident),
        "can_resolve": selectors.incident_can_resolve(user=user, incident=incident),
        "act_form": act_form or IncidentActForm(incident=incident),
        "resolve_form": resolve_form or IncidentResolveForm(),
        "refusal": refusal,
        "is_lab": role_of(user) in LAB_ROLES,
    }
    return render(request, "research/incident_detail.html", context, status=status)


@login_required
@require_POST
def incident_act(request: HttpRequest, pk: int) -> HttpResponse:
    """Embargo or withdraw one of the incident's checkpoints, the incident named as the reason (lab admins)."""
    incident = selectors.incident_get(user=request_user(request), pk=pk)
    require_role(request.user, Role.LAB_ADMIN)
    form = IncidentActForm(request.POST, incident=incident)
    if form.is_valid():
        data = form.cleaned_data
        try:
            incident = services.incident_act(
                actor=request_user(request),
                incident=incident,
                checkpoint=data["checkpoint"],
                action=data["action"],
                reason=data["reason"],
            )
        except DomainError as exc:
            fresh = selectors.incident_get(user=request_user(request), pk=pk)
            return _detail_page(request, fresh, act_form=form, refusal=exc.message, status=exc.status)
        except ValidationError as exc:
            apply_validation_error(form, exc)
        else:
            slug = incident.action_checkpoint.slug if incident.action_checkpoint else ""
            done = "withdrawn" if incident.action == Incident.Action.WITHDRAWN else "embargoed"
            messages.success(request, f"{slug} is {done}, with {incident.reference} as the reason.")
            return redirect("incident_detail", pk=incident.pk)
    return _detail_page(request, incident, act_form=form, status=400)


@login_required
@require_POST
def incident_resolve(request: HttpRequest, pk: int) -> HttpResponse:
    incident = selectors.incident_get(user=request_user(request), pk=pk)
    require_role(request.user, *selectors.INCIDENT_HANDLERS)
    form = IncidentResolveForm(request.POST)
    if form.is_valid():
        try:
            incident = services.incident_resolve(
                actor=request_user(request), incident=incident, outcome=form.cleaned_data["outcome"]
            )
        except DomainError as exc:
            fresh = selectors.incident_get(user=request_user(request), pk=pk)
            return _detail_page(request, fresh, resolve_form=form, refusal=exc.message, status=exc.status)
        except ValidationError as exc:
            apply_validation_error(form, exc)
        else:
            messages.success(request, f"{incident.reference} resolved.")
            return redirect("incident_detail", pk=incident.pk)
    return _detail_page(request, incident, resolve_form=form, status=400)

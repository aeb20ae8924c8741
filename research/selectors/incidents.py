"""Every read of incidents, scoped at one point: partners see their organisation's, lab staff every one."""

from __future__ import annotations

import django_filters
from django.db.models import Case, IntegerField, Prefetch, QuerySet, Value, When
from django.http import Http404

from accounts.models import LAB_ROLES, PARTNER_ROLES, Organization, Role, User
from accounts.permissions import role_of
from core.filters import CreatedRangeFilterSet
from models_registry.models import Checkpoint
from research.models import Incident

# Most severe first: the order of the lab's queue and of the home page's counts.
SEVERITY_ORDER = (
    Incident.Severity.CRITICAL,
    Incident.Severity.HIGH,
    Incident.Severity.MEDIUM,
    Incident.Severity.LOW,
)
INCIDENT_REPORTERS = (*PARTNER_ROLES, Role.LAB_ADMIN, Role.LEGAL)
INCIDENT_HANDLERS = (Role.LAB_ADMIN, Role.LEGAL)


def incident_list(*, user: User) -> QuerySet[Incident]:
    """Newest first, each with its organisation, reporter and checkpoints."""
    role = role_of(user)
    if role is None:
        raise Http404
    incidents = Incident.objects.select_related(
        "organization", "reporter", "action_checkpoint", "action_by", "resolved_by", "obligation"
    ).prefetch_related(Prefetch("checkpoints", queryset=Checkpoint.objects.order_by("parameter_count")))
    if role in PARTNER_ROLES:
        incidents = incidents.filter(organization_id=user.membership.organization_id)
    elif role not in LAB_ROLES:
        raise Http404
    return incidents.order_by("-created_at", "-pk")


class IncidentFilter(CreatedRangeFilterSet):
    """The incidents list's filters: the page's form and GET /api/v1/incidents/'s query parameters."""

    status = django_filters.ChoiceFilter(
        choices=Incident.Status.choices,
        empty_label="Any state",
        label="State",
        error_messages={"invalid_choice": "Choose a state from the list."},
    )
    severity = django_filters.ChoiceFilter(
        choices=Incident.Severity.choices,
        empty_label="Any severity",
        error_messages={"invalid_choice": "Choose a severity from the list."},
    )
    checkpoint = django_filters.ModelChoiceFilter(
        field_name="checkpoints",
        queryset=Checkpoint.objects.order_by("parameter_count"),
        to_field_name="slug",
        empty_label="All checkpoints",
        label="Checkpoint",
        help_text="A checkpoint slug, e.g. gpt2.",
        error_messages={"invalid_choice": "Choose a checkpoint from the list."},
    )
    organization = django_filters.ModelChoiceFilter(
        queryset=Organization.objects.filter(kind=Organization.Kind.PARTNER).order_by("name"),
        empty_label="All partners",
        label="Partner",
        help_text="A partner organisation's id (lab staff; partners see only their own incidents anyway).",
        error_messages={"invalid_choice": "Choose a partner from the list."},
    )

    class Meta:
        model = Incident
        fields = ["status", "severity", "checkpoint", "organization"]


def incident_queue(*, user: User) -> QuerySet[Incident]:
    """The lab's queue: open incidents first, the most severe first, then the newest."""
    rank = Case(
        *[When(severity=severity, then=Value(index)) for index, severity in enumerate(SEVERITY_ORDER)],
        default=Value(len(SEVERITY_ORDER)),
        output_field=IntegerField(),
    )
    is_resolved = Case(When(status=Incident.Status.OPEN, then=Value(0)), default=Value(1), output_field=IntegerField())
    return incident_list(user=user).order_by(is_resolved, rank, "-created_at", "-pk")


def incident_get(*, user: User, pk: int) -> Incident:
    """One incident; another organisation's is 404, as if it did not exist."""
    incident = incident_list(user=user).filter(pk=pk).first()
    if incident is None:
        raise Http404
    return incident


def incident_can_act(*, user: User, incident: Incident) -> bool:
    """Only lab admins pull the kill switch, while the incident is open and has not led to a withdrawal yet."""
    return (
        role_of(user) == Role.LAB_ADMIN
        and incident.status == Incident.Status.OPEN
        and incident.action != Incident.Action.WITHDRAWN
    )


def incident_can_resolve(*, user: User, incident: Incident) -> bool:
    return role_of(user) in INCIDENT_HANDLERS and incident.status == Incident.Status.OPEN


def incident_report_offered(*, user: User) -> bool:
    return role_of(user) in INCIDENT_REPORTERS

"""Incidents: misuse or a security incident reported by a partner (or by the lab about one), the kill switch
pulled from it in one step, and its resolution. Each write is one transaction with one audit event of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from accounts.models import PARTNER_ROLES, NotificationKind, Organization, Role, User
from accounts.permissions import require_role, role_of
from accounts.services import notifications_send
from agreements import services as agreements
from agreements.models import Obligation
from audit import events
from audit.services import audit_append
from core.validators import strip_invisible, visible_length
from inference.services import checkpoint_withdraw
from models_registry.models import Checkpoint
from models_registry.services import checkpoint_embargo
from research.models import Incident
from research.selectors.findings import active_agreement
from research.selectors.incidents import INCIDENT_HANDLERS, INCIDENT_REPORTERS
from research.services.findings import FindingStateChanged

TITLE_MAX_CHARS = 200
DESCRIPTION_MAX_CHARS = 20_000
TEXT_MAX_CHARS = 4_000
# The first GPT-2 stage was released in February 2019: nothing could be discovered about it before.
EARLIEST_DISCOVERY = datetime(2019, 1, 1, tzinfo=UTC)
# Room for the kill switch's own prefix ("Incident INC-00004: ") within its 2,000-character reason.
ACTION_REASON_MAX_CHARS = 1_900


class IncidentStateChanged(FindingStateChanged):
    """The incident was resolved or acted on by someone else first: nothing was changed."""


def _clean(errors: dict[str, str], field: str, text: object, *, what: str, low: int, high: int) -> str:
    if not isinstance(text, str):
        errors[field] = f"{what} must be text."
        return ""
    text = strip_invisible(text.replace("\r\n", "\n"))
    if "\x00" in text:
        errors[field] = f"{what} contains a NUL character; remove it and send it again."
    elif visible_length(text) < low:
        errors[field] = f"{what} needs at least {low} characters."
    elif len(text) > high:
        errors[field] = f"Keep {what.lower()} to {high:,} characters (it has {len(text):,})."
    return text


@transaction.atomic
def incident_report(
    *,
    actor: User,
    title: str,
    description: str,
    discovered_at: datetime,
    severity: str,
    checkpoints: Sequence[Checkpoint],
    organization: Organization | None = None,
) -> Incident:
    """Report misuse or a security incident. Partners report their own organisation's; the lab's admins and
    legal report one about a partner they name.

    A partner's report under an active agreement records the incident-report obligation it meets, due the
    agreed hours after discovery: whether it came in time stays on that obligation.
    """
    require_role(actor, *INCIDENT_REPORTERS)
    role = role_of(actor)
    errors: dict[str, str] = {}
    if role in PARTNER_ROLES:
        if organization is not None and organization.pk != actor.membership.organization_id:
            raise PermissionDenied("Partners report incidents of their own organisation only.")
        organization = actor.membership.organization
    elif organization is None or organization.kind != Organization.Kind.PARTNER:
        errors["organization"] = "Name the partner organisation the incident concerns."
    title = _clean(errors, "title", title, what="The title", low=3, high=TITLE_MAX_CHARS)
    description = _clean(errors, "description", description, what="The description", low=20, high=DESCRIPTION_MAX_CHARS)
    if severity not in Incident.Severity.values:
        errors["severity"] = "Choose a severity from the list."
    checkpoints = list(dict.fromkeys(checkpoints))
    if not checkpoints:
        errors["checkpoints"] = "Choose the checkpoints the incident concerns."
    now = timezone.now()
    if not isinstance(discovered_at, datetime) or timezone.is_naive(discovered_at):
        errors["discovered_at"] = "Give the date and time of discovery, with its time zone (UTC if unsure)."
    elif discovered_at > now:
        errors["discovered_at"] = f"The discovery cannot be in the future (it is now {now:%Y-%m-%d %H:%M} UTC)."
    elif discovered_at < EARLIEST_DISCOVERY:
        errors["discovered_at"] = "The discovery cannot be before 2019, when the first checkpoint was released."
    if errors:
        raise ValidationError(errors)
    assert organization is not None  # a lab reporter without one was refused above

    incident = Incident.objects.create(
        organization=organization,
        reporter=actor,
        title=title,
        description=description,
        discovered_at=discovered_at,
        severity=severity,
        created_at=now,
    )
    incident.checkpoints.set(checkpoints)
    agreement = active_agreement(organization_id=organization.pk) if role in PARTNER_ROLES else None
    if agreement is not None:
        hours = agreement.template_version.incident_report_hours
        incident.obligation = agreements.obligation_record_kept(
            actor=actor,
            agreement=agreement,
            kind=Obligation.Kind.INCIDENT_REPORT,
            due_at=discovered_at + timedelta(hours=hours),
            description=f"Report of {incident.reference} within {hours} hours of its discovery",
            fulfilment=f"incident {incident.reference} reported on {now:%Y-%m-%d %H:%M} UTC",
        )
        incident.save(update_fields=["obligation"])
    late = incident.obligation is not None and incident.obligation.fulfilled_late
    audit_append(
        actor=actor,
        action=events.INCIDENT_REPORTED,
        target=incident,
        data={
            "incident": incident.reference,
            "title": title,
            "severity": severity,
            "checkpoints": [c.slug for c in checkpoints],
            "discovered_at": discovered_at.isoformat(),
            "obligation": incident.obligation.reference if incident.obligation else None,
            "late": late,
        },
    )
    by = f"{actor.get_full_name()} of {actor.membership.organization.name}"
    notifications_send(
        users=User.objects.filter(is_active=True, membership__role__in=INCIDENT_HANDLERS),
        kind=NotificationKind.INCIDENT_REPORTED,
        title=f"{incident.get_severity_display()} incident {incident.reference} at {organization.name}: {title}"[:200],
        body=f"{by} reported it on {', '.join(c.slug for c in checkpoints)}, discovered "
        f"{discovered_at.astimezone(UTC):%Y-%m-%d %H:%M} UTC."
        + (" It was reported later than the agreement asks." if late else ""),
        url=reverse("incident_detail", args=[incident.pk]),
        dedupe_key=f"incident.reported:{incident.pk}",
    )
    return incident


INCIDENT_ACTIONS = {"embargo": Incident.Action.EMBARGOED, "withdraw": Incident.Action.WITHDRAWN}


@transaction.atomic
def incident_act(*, actor: User, incident: Incident, checkpoint: Checkpoint, action: str, reason: str) -> Incident:
    """Embargo or withdraw one of the incident's checkpoints in one step, with the incident as the reason.

    The kill switch (models_registry's embargo, inference's withdrawal: grants revoked, queued jobs cancelled)
    runs in this transaction: if it refuses (the checkpoint is already withdrawn), nothing is written.
    """
    require_role(actor, Role.LAB_ADMIN)
    if action not in INCIDENT_ACTIONS:
        raise ValidationError({"action": "Choose embargo or withdraw."})
    errors: dict[str, str] = {}
    reason = _clean(errors, "reason", reason, what="The reason", low=5, high=ACTION_REASON_MAX_CHARS)
    if errors:
        raise ValidationError(errors)
    incident = Incident.objects.select_for_update().get(pk=incident.pk)
    if incident.status != Incident.Status.OPEN:
        raise IncidentStateChanged(f"{incident.reference} is already resolved; the kill switch is not pulled from it.")
    if incident.action == Incident.Action.WITHDRAWN or (incident.action and action == "embargo"):
        raise IncidentStateChanged(
            f"{incident.reference} already led to {incident.get_action_display().lower()} "
            f"({incident.action_checkpoint.slug if incident.action_checkpoint else ''})."
        )
    if not incident.checkpoints.filter(pk=checkpoint.pk).exists():
        raise ValidationError({"checkpoint": f"{checkpoint.slug} is not one of {incident.reference}'s checkpoints."})
    because = f"Incident {incident.reference}: {reason}"
    data: dict[str, object] = {"incident": incident.reference, "action": action, "checkpoint": checkpoint.slug}
    if action == "embargo":
        checkpoint_embargo(actor=actor, checkpoint=checkpoint, reason=because)
    else:
        done = checkpoint_withdraw(actor=actor, checkpoint=checkpoint, reason=because)
        data.update(
            grants_revoked=done.grants_revoked, jobs_cancelled=done.jobs_cancelled, jobs_stopping=done.jobs_stopping
        )
    incident.action = INCIDENT_ACTIONS[action]
    incident.action_checkpoint = checkpoint
    incident.action_at = timezone.now()
    incident.action_by = actor
    incident.save(update_fields=["action", "action_checkpoint", "action_at", "action_by"])
    audit_append(actor=actor, action=events.INCIDENT_ACTED_ON, target=incident, data={**data, "reason": reason})
    return incident


@transaction.atomic
def incident_resolve(*, actor: User, incident: Incident, outcome: str) -> Incident:
    """Close an incident with what the lab concluded, which the partner and auditors read."""
    require_role(actor, *INCIDENT_HANDLERS)
    errors: dict[str, str] = {}
    outcome = _clean(errors, "outcome", outcome, what="The outcome", low=5, high=TEXT_MAX_CHARS)
    if errors:
        raise ValidationError(errors)
    incident = Incident.objects.select_for_update().get(pk=incident.pk)
    if incident.status != Incident.Status.OPEN:
        raise IncidentStateChanged(f"{incident.reference} is already resolved.")
    incident.status = Incident.Status.RESOLVED
    incident.outcome = outcome
    incident.resolved_at = timezone.now()
    incident.resolved_by = actor
    incident.save(update_fields=["status", "outcome", "resolved_at", "resolved_by"])
    audit_append(
        actor=actor,
        action=events.INCIDENT_RESOLVED,
        target=incident,
        data={"incident": incident.reference, "outcome": outcome, "action": incident.action or None},
    )
    return incident

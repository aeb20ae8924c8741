"""Incidents through the services: reports and the obligation they meet, the one-step kill switch, resolution."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.utils import timezone

from accounts.models import Notification, NotificationKind
from agreements.models import AccessGrant, Obligation
from audit import events
from audit.models import AuditEvent
from inference.models import GenerationJob
from inference.services import checkpoint_withdraw
from models_registry.models import Checkpoint
from research.models import Incident
from research.services import incidents as services
from research.services.incidents import IncidentStateChanged
from tests.builders import make_job

pytestmark = pytest.mark.django_db

DESCRIPTION = "A contractor posted 2,000 gpt2 samples to a forum as if they were real product reviews."


def report(actor, **overrides) -> Incident:
    fields = {
        "title": "Samples posted as real reviews",
        "description": DESCRIPTION,
        "discovered_at": timezone.now() - timedelta(hours=3),
        "severity": Incident.Severity.HIGH,
        "checkpoints": [Checkpoint.objects.get(slug="gpt2")],
    }
    fields.update(overrides)
    return services.incident_report(actor=actor, **fields)


def test_a_partner_reports_an_incident_and_the_obligation_it_meets_is_recorded(
    researcher_a, lab_admin, legal, auditor, active, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        incident = report(researcher_a)
    assert incident.organization == researcher_a.membership.organization and incident.status == Incident.Status.OPEN
    obligation = incident.obligation
    assert obligation.kind == Obligation.Kind.INCIDENT_REPORT and obligation.agreement == active
    hours = active.template_version.incident_report_hours
    assert obligation.due_at == incident.discovered_at + timedelta(hours=hours)
    assert obligation.fulfilled_at is not None and not obligation.fulfilled_late
    event = AuditEvent.objects.get(action=events.INCIDENT_REPORTED)
    assert event.data["obligation"] == obligation.reference and event.data["late"] is False
    told = Notification.objects.filter(kind=NotificationKind.INCIDENT_REPORTED)
    assert set(told.values_list("user__email", flat=True)) == {lab_admin.email, legal.email}
    assert told.first().is_essential


def test_a_late_report_shows_on_its_obligation(researcher_a, active):
    hours = active.template_version.incident_report_hours
    incident = report(researcher_a, discovered_at=timezone.now() - timedelta(hours=hours + 5))
    assert incident.obligation.fulfilled_late
    assert AuditEvent.objects.get(action=events.INCIDENT_REPORTED).data["late"] is True


def test_a_partner_without_an_active_agreement_reports_without_an_obligation(researcher_b, gpt2_stages):
    incident = report(researcher_b)
    assert incident.obligation is None and incident.organization.name == "Partner B"


def test_an_incident_discovered_in_the_future_is_refused(researcher_a, active):
    with pytest.raises(ValidationError) as refused:
        report(researcher_a, discovered_at=timezone.now() + timedelta(minutes=5))
    assert "cannot be in the future" in refused.value.message_dict["discovered_at"][0]
    assert not Incident.objects.exists()
    assert not Obligation.objects.filter(kind=Obligation.Kind.INCIDENT_REPORT).exists()


def test_an_incident_discovered_before_2019_is_refused(researcher_a, active):
    with pytest.raises(ValidationError) as refused:
        report(researcher_a, discovered_at=datetime(2018, 12, 31, 23, 0, tzinfo=UTC))
    assert "before 2019" in refused.value.message_dict["discovered_at"][0]
    assert not Incident.objects.exists()


def test_each_bad_field_is_named_at_once(researcher_a, active):
    with pytest.raises(ValidationError) as refused:
        report(researcher_a, title="", description="Too short", severity="apocalyptic", checkpoints=[])
    assert set(refused.value.message_dict) == {"title", "description", "severity", "checkpoints"}


@pytest.mark.parametrize("persona", ["lab_admin", "legal"])
def test_the_lab_reports_an_incident_naming_the_partner(request, persona, partner_a, active):
    actor = request.getfixturevalue(persona)
    with pytest.raises(ValidationError) as refused:
        report(actor)
    assert "organization" in refused.value.message_dict
    incident = report(actor, organization=partner_a)
    assert incident.organization == partner_a and incident.reporter == actor
    assert incident.obligation is None  # the partner did not report it: no obligation was met


def test_a_partner_cannot_report_for_another_organisation(researcher_b, partner_a, gpt2_stages):
    with pytest.raises(PermissionDenied):
        report(researcher_b, organization=partner_a)


def test_auditors_cannot_report(auditor, partner_a, gpt2_stages):
    with pytest.raises(PermissionDenied):
        report(auditor, organization=partner_a)


# --- The kill switch, from an incident ------------------------------------------------------------------


def test_withdrawing_from_an_incident_revokes_grants_cancels_jobs_and_links_the_incident(
    researcher_a, lab_admin, active
):
    gpt2 = Checkpoint.objects.get(slug="gpt2")
    queued = make_job(active.grants.get(checkpoint=gpt2), researcher_a)
    incident = report(researcher_a, severity=Incident.Severity.CRITICAL)

    incident = services.incident_act(
        actor=lab_admin, incident=incident, checkpoint=gpt2, action="withdraw", reason="Samples used for fraud"
    )

    gpt2.refresh_from_db()
    queued.refresh_from_db()
    assert gpt2.status == Checkpoint.Status.WITHDRAWN
    assert gpt2.status_reason == f"Incident {incident.reference}: Samples used for fraud"
    assert not AccessGrant.objects.filter(checkpoint=gpt2, revoked_at=None).exists()
    assert queued.status == GenerationJob.Status.CANCELLED and incident.reference in queued.error_message
    assert (incident.action, incident.action_checkpoint, incident.action_by) == ("withdrawn", gpt2, lab_admin)
    acted = AuditEvent.objects.get(action=events.INCIDENT_ACTED_ON)
    assert acted.data["grants_revoked"] == 1 and acted.data["jobs_cancelled"] == 1
    withdrawn = AuditEvent.objects.get(action=events.CHECKPOINT_WITHDRAWN)
    assert withdrawn.seq < acted.seq and withdrawn.data["reason"].startswith(f"Incident {incident.reference}:")


def test_embargoing_from_an_incident_keeps_the_grants(researcher_a, lab_admin, active):
    gpt2 = Checkpoint.objects.get(slug="gpt2")
    incident = services.incident_act(
        actor=lab_admin, incident=report(researcher_a), checkpoint=gpt2, action="embargo", reason="Pending review"
    )
    gpt2.refresh_from_db()
    assert gpt2.status == Checkpoint.Status.EMBARGOED and incident.action == Incident.Action.EMBARGOED
    assert AccessGrant.objects.filter(checkpoint=gpt2, revoked_at=None).exists()
    # An embargo may be escalated to a withdrawal, not repeated.
    with pytest.raises(IncidentStateChanged):
        services.incident_act(actor=lab_admin, incident=incident, checkpoint=gpt2, action="embargo", reason="Again")
    incident = services.incident_act(
        actor=lab_admin, incident=incident, checkpoint=gpt2, action="withdraw", reason="Confirmed misuse"
    )
    assert incident.action == Incident.Action.WITHDRAWN


def test_acting_on_a_withdrawn_checkpoint_is_refused_and_nothing_is_written(researcher_a, lab_admin, active):
    gpt2 = Checkpoint.objects.get(slug="gpt2")
    checkpoint_withdraw(actor=lab_admin, checkpoint=gpt2, reason="Withdrawn earlier")
    incident = report(researcher_a)
    before = AuditEvent.objects.count()
    with pytest.raises(ValidationError) as refused:
        services.incident_act(actor=lab_admin, incident=incident, checkpoint=gpt2, action="withdraw", reason="Again")
    assert refused.value.messages == ["gpt2 is already withdrawn."]
    with pytest.raises(ValidationError) as refused:
        services.incident_act(actor=lab_admin, incident=incident, checkpoint=gpt2, action="embargo", reason="Pause")
    assert refused.value.messages == ["gpt2 is withdrawn; it cannot be embargoed."]
    incident.refresh_from_db()
    gpt2.refresh_from_db()
    assert incident.action == "" and incident.action_checkpoint is None
    assert gpt2.status_reason == "Withdrawn earlier"
    assert AuditEvent.objects.count() == before


@pytest.mark.parametrize("persona", ["legal", "auditor", "researcher_a"])
def test_only_lab_admins_pull_the_kill_switch(request, persona, researcher_a, active):
    incident = report(researcher_a)
    with pytest.raises(PermissionDenied):
        services.incident_act(
            actor=request.getfixturevalue(persona),
            incident=incident,
            checkpoint=Checkpoint.objects.get(slug="gpt2"),
            action="withdraw",
            reason="Misuse",
        )
    assert Checkpoint.objects.get(slug="gpt2").status == Checkpoint.Status.AVAILABLE


def test_the_checkpoint_must_be_one_the_incident_concerns(researcher_a, lab_admin, active):
    incident = report(researcher_a)
    with pytest.raises(ValidationError) as refused:
        services.incident_act(
            actor=lab_admin,
            incident=incident,
            checkpoint=Checkpoint.objects.get(slug="gpt2-xl"),
            action="withdraw",
            reason="Misuse",
        )
    assert "gpt2-xl is not one of" in refused.value.message_dict["checkpoint"][0]
    assert Checkpoint.objects.get(slug="gpt2-xl").status == Checkpoint.Status.AVAILABLE


def test_a_reason_is_required_to_act(researcher_a, lab_admin, active):
    with pytest.raises(ValidationError) as refused:
        services.incident_act(
            actor=lab_admin,
            incident=report(researcher_a),
            checkpoint=Checkpoint.objects.get(slug="gpt2"),
            action="withdraw",
            reason="",
        )
    assert "reason" in refused.value.message_dict


# --- Resolution ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("persona", ["lab_admin", "legal"])
def test_resolving_needs_an_outcome_and_happens_once(request, persona, researcher_a, active):
    actor = request.getfixturevalue(persona)
    incident = report(researcher_a)
    with pytest.raises(ValidationError) as refused:
        services.incident_resolve(actor=actor, incident=incident, outcome=" ")
    assert "outcome" in refused.value.message_dict
    resolved = services.incident_resolve(actor=actor, incident=incident, outcome="The contractor's access was ended.")
    assert resolved.status == Incident.Status.RESOLVED and resolved.resolved_by == actor
    with pytest.raises(IncidentStateChanged) as refused:
        services.incident_resolve(actor=actor, incident=incident, outcome="Resolved again.")
    assert refused.value.message == f"{incident.reference} is already resolved."
    assert AuditEvent.objects.filter(action=events.INCIDENT_RESOLVED).count() == 1


@pytest.mark.parametrize("persona", ["auditor", "researcher_a"])
def test_only_the_labs_admins_and_legal_resolve(request, persona, researcher_a, active):
    incident = report(researcher_a)
    with pytest.raises(PermissionDenied):
        services.incident_resolve(actor=request.getfixturevalue(persona), incident=incident, outcome="Closed it.")

"""Obligations: scheduled from the agreement's terms when it becomes active, an overdue report pauses the
organisation's access (at submission and in the worker) until it is fulfilled or the lab extends it, and
the beat reminds and records each due date once. Every step is audited."""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine
from django.core import mail
from django.core.exceptions import PermissionDenied, ValidationError
from django.utils import timezone

from accounts.models import Notification, NotificationKind
from agreements import selectors, services
from agreements.models import AccessGrant, Agreement, GrantUsage, Obligation
from agreements.selectors import access_check
from agreements.tasks import check_obligations
from audit.models import AuditEvent
from audit.selectors import audit_chain_verify
from core.time import day_start
from inference import engine, tasks
from inference.models import GenerationJob
from inference.services import JobParams, job_submit
from models_registry.models import Checkpoint
from tests.api.conftest import client_with, job_body, token_for
from tests.builders import sign

pytestmark = pytest.mark.django_db

MINUTE = timedelta(minutes=1)


def findings_report(agreement: Agreement, slug: str = "gpt2") -> Obligation:
    return Obligation.objects.get(organization=agreement.organization, kind="findings_report", checkpoint__slug=slug)


def final_report(agreement: Agreement) -> Obligation:
    return Obligation.objects.get(agreement=agreement, kind="final_report")


def only_the_gpt2_report_owed(agreement: Agreement) -> Obligation:
    """The partner delivered its report on gpt2-medium (and its final report) on time: only gpt2's is left."""
    signatory = agreement.organization.memberships.get(role="signatory").user
    for delivered in (findings_report(agreement, "gpt2-medium"), final_report(agreement)):
        services.obligation_fulfil(actor=signatory, obligation=delivered, fulfilment=f"report {delivered.reference}")
    return findings_report(agreement)


def audited(action: str, obligation: Obligation) -> list[AuditEvent]:
    return list(
        AuditEvent.objects.filter(action=action, target_type="agreements.obligation", target_id=str(obligation.pk))
    )


def activate_amendment(legal, agreement: Agreement, extra: list[str]) -> Agreement:
    amendment = services.agreement_amend(
        actor=legal, agreement=agreement, extra_checkpoints=list(Checkpoint.objects.filter(slug__in=extra))
    )
    amendment = services.agreement_send(actor=legal, agreement=amendment)
    sign(agreement.organization.memberships.get(role="signatory").user, amendment)
    amendment.refresh_from_db()
    sign(legal, amendment)
    amendment.refresh_from_db()
    return amendment


# --- Scheduling at activation ------------------------------------------------------------------------


def test_activation_schedules_a_findings_report_per_checkpoint_and_a_final_report(active):
    version = active.template_version
    starts = day_start(active.effective_date)
    obligations = list(active.obligations.order_by("kind", "checkpoint__parameter_count"))

    assert [(o.kind, o.checkpoint.slug if o.checkpoint else None) for o in obligations] == [
        ("final_report", None),
        ("findings_report", "gpt2"),
        ("findings_report", "gpt2-medium"),
    ]
    for report in obligations[1:]:
        grant = AccessGrant.objects.get(agreement=active, checkpoint=report.checkpoint)
        assert report.due_at == grant.starts_at + timedelta(days=version.findings_report_days)
        assert report.due_at == starts + timedelta(days=90) == report.original_due_at
        assert report.description == f"Findings report on {report.checkpoint.slug}"
    assert obligations[0].due_at == day_start(active.end_date) - timedelta(days=version.final_report_days)
    assert all(o.is_open and o.pauses_access and o.organization == active.organization for o in obligations)
    (event,) = AuditEvent.objects.filter(action="obligation.scheduled", target_id=str(active.pk))
    assert sorted(row["reference"] for row in event.data["obligations"]) == sorted(o.reference for o in obligations)


def test_the_schedule_follows_the_versions_terms(legal, partner_a, signer_a, small_checkpoints):
    from tests.builders import DEFAULT_TEMPLATE, draft_agreement

    terms = services.ObligationTerms(
        findings_report_days=30, incident_report_hours=24, final_report_days=60, prepublication_review_days=14
    )
    draft = services.template_create(actor=legal, name="Strict", body=DEFAULT_TEMPLATE, terms=terms)
    version = services.template_version_publish(actor=legal, version=draft)
    agreement = services.agreement_send(
        actor=legal, agreement=draft_agreement(legal, partner_a, version, small_checkpoints)
    )
    sign(signer_a, agreement)
    agreement.refresh_from_db()
    sign(legal, agreement)

    starts, ends = day_start(agreement.effective_date), day_start(agreement.end_date)
    assert findings_report(agreement).due_at == starts + timedelta(days=30)
    assert final_report(agreement).due_at == ends - timedelta(days=60)
    # The signed document states the same numbers.
    agreement.refresh_from_db()
    assert "no later than 30 days after its Access" in agreement.document_html
    assert "within 24 hours of discovering it" in agreement.document_html


def test_a_replacing_amendment_takes_over_open_reports_without_restarting_the_clock(legal, active):
    gpt2_report = findings_report(active, "gpt2")
    original_due = gpt2_report.due_at
    old_final = final_report(active)
    with time_machine.travel(timezone.now() + timedelta(days=20), tick=False):
        amendment = activate_amendment(legal, active, ["gpt2-large"])
    active.refresh_from_db()
    assert active.status == Agreement.Status.SUPERSEDED

    gpt2_report.refresh_from_db()
    assert gpt2_report.agreement == amendment and gpt2_report.due_at == original_due  # not restarted
    large = findings_report(amendment, "gpt2-large")
    large_grant = AccessGrant.objects.get(agreement=amendment, checkpoint__slug="gpt2-large")
    assert large.agreement == amendment and large.due_at == large_grant.starts_at + timedelta(days=90)
    assert Obligation.objects.filter(organization=active.organization, kind="findings_report").count() == 3

    old_final.refresh_from_db()
    assert old_final.waived_at is not None and amendment.reference in old_final.waive_reason
    assert final_report(amendment).is_open
    assert len(audited("obligation.waived", old_final)) == 1
    (scheduled,) = AuditEvent.objects.filter(action="obligation.scheduled", target_id=str(amendment.pk))
    assert gpt2_report.reference in scheduled.data["taken_over"]
    assert [row["reference"] for row in scheduled.data["obligations"]] == [
        large.reference,
        final_report(amendment).reference,
    ]


def test_a_publicly_released_checkpoint_is_owed_no_findings_report(legal, partner_a, signer_a, published_version):
    from tests.builders import draft_agreement

    Checkpoint.objects.filter(slug="gpt2").update(public_since=timezone.now())
    checkpoints = list(Checkpoint.objects.filter(slug__in=["gpt2", "gpt2-medium"]))
    agreement = services.agreement_send(
        actor=legal, agreement=draft_agreement(legal, partner_a, published_version, checkpoints)
    )
    sign(signer_a, agreement)
    agreement.refresh_from_db()
    sign(legal, agreement)
    assert agreement.grants.count() == 2
    assert sorted(o.checkpoint.slug for o in agreement.obligations.filter(kind="findings_report")) == ["gpt2-medium"]


def test_ending_an_agreement_waives_what_is_not_yet_due_and_keeps_what_is_overdue(legal, active):
    report = findings_report(active)
    with time_machine.travel(report.due_at + timedelta(days=2), tick=False):
        services.agreement_terminate(actor=legal, agreement=active, reason="Breach of the labelling clause.")
    report.refresh_from_db()
    assert report.is_open  # overdue when the agreement ended: still owed
    final = final_report(active)
    assert final.waived_at is not None and "ended (terminated)" in final.waive_reason
    assert len(audited("obligation.waived", final)) == 1
    # Nobody is reminded of what is no longer owed.
    with time_machine.travel(final.due_at - timedelta(days=3), tick=False):
        assert final.reference not in services.obligations_check_due()["reminded"]


# --- The pause across a due date -------------------------------------------------------------------------


def test_access_pauses_the_minute_a_report_is_due_and_the_term_stays(partner_a, active, small_checkpoints):
    report = findings_report(active)
    gpt2 = small_checkpoints[0]
    end_date, grant_ends = active.end_date, active.grants.get(checkpoint=gpt2).ends_at

    before = access_check(organization=partner_a, checkpoint=gpt2, now=report.due_at - MINUTE)
    assert before.allowed
    for moment in (report.due_at, report.due_at + timedelta(days=3)):
        decision = access_check(organization=partner_a, checkpoint=gpt2, now=moment)
        assert not decision.allowed and decision.code == "obligation_overdue"
        assert report.reference in decision.message and report.description in decision.message
        assert f"{report.due_at:%Y-%m-%d %H:%M} UTC" in decision.message
    # Every checkpoint pauses, not only the one the report is about.
    medium = access_check(organization=partner_a, checkpoint=small_checkpoints[1], now=report.due_at + MINUTE)
    assert medium.code == "obligation_overdue"
    active.refresh_from_db()
    assert active.end_date == end_date and active.grants.get(checkpoint=gpt2).ends_at == grant_ends


def test_another_organisations_overdue_report_does_not_pause_this_one(partner_b, make_agreement, active):
    other = make_agreement(partner_b, ["gpt2"])
    gpt2 = Checkpoint.objects.get(slug="gpt2")
    mine = only_the_gpt2_report_owed(active)
    services.obligation_fulfil(
        actor=active.organization.memberships.get(role="signatory").user, obligation=mine, fulfilment="finding F-1"
    )
    later = findings_report(other).due_at + MINUTE
    assert access_check(organization=active.organization, checkpoint=gpt2, now=later).allowed
    assert access_check(organization=partner_b, checkpoint=gpt2, now=later).code == "obligation_overdue"


@pytest.fixture
def no_generation(monkeypatch) -> list[int]:
    """Jobs are queued but never handed to Celery (which runs eagerly in tests)."""
    queued: list[int] = []
    monkeypatch.setattr("inference.services.enqueue_job", lambda job: queued.append(job.pk))
    return queued


def test_job_submission_through_the_api_is_refused_while_paused_and_writes_no_job(
    researcher_a, active, gpt2, no_generation
):
    report = findings_report(active)
    with time_machine.travel(report.due_at - MINUTE, tick=False):
        client = client_with(token_for(researcher_a))  # a token made then, still valid after the due date
        assert client.post("/api/v1/jobs/", job_body(), format="json").status_code == 202
    assert GenerationJob.objects.count() == 1
    with time_machine.travel(report.due_at + MINUTE, tick=False):
        response = client.post("/api/v1/jobs/", job_body(prompt="After the due date"), format="json")
    assert response.status_code == 403
    error = response.json()["error"]
    assert error["code"] == "access_denied" and error["details"]["reason"] == "obligation_overdue"
    assert report.reference in error["message"] and f"{report.due_at:%Y-%m-%d %H:%M} UTC" in error["message"]
    assert GenerationJob.objects.count() == 1
    refusal = AuditEvent.objects.filter(action="access.refused").latest("seq")
    assert refusal.data["code"] == "obligation_overdue"


def test_fulfilling_the_report_resumes_access_by_itself(
    signer_a, legal, researcher_a, active, gpt2, no_generation, django_capture_on_commit_callbacks
):
    report = only_the_gpt2_report_owed(active)
    with time_machine.travel(report.due_at + timedelta(days=2), tick=False):
        client = client_with(token_for(researcher_a))
        assert client.post("/api/v1/jobs/", job_body(), format="json").status_code == 403
        mail.outbox.clear()
        with django_capture_on_commit_callbacks(execute=True):
            services.obligation_fulfil(actor=signer_a, obligation=report, fulfilment="finding F-00001")
        assert client.post("/api/v1/jobs/", job_body(), format="json").status_code == 202
    report.refresh_from_db()
    assert report.fulfilled_late and report.fulfilled_by == signer_a and report.fulfilment == "finding F-00001"
    assert len(audited("obligation.fulfilled", report)) == 1
    resumed = Notification.objects.filter(kind=NotificationKind.ACCESS_PAUSED, title__startswith="Access resumed")
    assert {n.user for n in resumed} >= {researcher_a, legal}
    assert any("Access resumed for Partner A" in m.subject for m in mail.outbox)


def test_an_extension_resumes_access_and_leaves_the_term_unchanged(legal, partner_a, active, small_checkpoints):
    report = only_the_gpt2_report_owed(active)
    gpt2 = small_checkpoints[0]
    end_date = active.end_date
    paused_at = report.due_at + timedelta(days=1)
    with time_machine.travel(paused_at, tick=False):
        assert access_check(organization=partner_a, checkpoint=gpt2).code == "obligation_overdue"
        new_day = (paused_at + timedelta(days=14)).date()
        services.obligation_extend(
            actor=legal, obligation=report, due_on=new_day, reason="The partner's lead author is on leave."
        )
        assert access_check(organization=partner_a, checkpoint=gpt2).allowed
    report.refresh_from_db()
    assert report.due_at == day_start(new_day) and report.original_due_at < report.due_at
    assert report.extended_by == legal and report.extension_reason == "The partner's lead author is on leave."
    (event,) = audited("obligation.extended", report)
    assert event.actor == legal and event.data["reason"] == report.extension_reason and event.data["was_overdue"]
    # Paused again once the new date passes.
    assert access_check(organization=partner_a, checkpoint=gpt2, now=report.due_at).code == "obligation_overdue"
    active.refresh_from_db()
    assert active.end_date == end_date


def test_the_worker_refuses_a_queued_job_once_its_organisation_is_paused(researcher_a, active, gpt2, monkeypatch):
    report = findings_report(active)

    def must_not_run(*args, **kwargs):
        raise AssertionError("a paused organisation's job must not reach the engine")

    with time_machine.travel(report.due_at - MINUTE, tick=False):
        params = JobParams(
            prompt="Queued before the due date",
            max_new_tokens=8,
            temperature=0.0,
            top_k=0,
            top_p=1.0,
            num_samples=2,
            seed=None,
        )
        monkeypatch.setattr("inference.services.enqueue_job", lambda job: None)  # the worker picks it up later
        job = job_submit(actor=researcher_a, checkpoint=gpt2, params=params)
        usage = GrantUsage.objects.get(grant=job.grant)
        assert usage.tokens_reserved == job.expected_tokens > 0
    monkeypatch.setattr(engine, "generate", must_not_run)
    with time_machine.travel(report.due_at + MINUTE, tick=False):
        tasks.run_job.apply(args=[job.pk])
    job.refresh_from_db()
    assert job.status == GenerationJob.Status.FAILED and job.error_code == "access_denied"
    assert job.error_message.startswith("Access is paused: Findings report on gpt2")
    assert report.reference in job.error_message
    assert not job.samples.exists() and job.tokens_generated == 0
    usage.refresh_from_db()
    assert usage.tokens_reserved == 0 and usage.tokens_used == 0  # the reservation is released
    refusal = AuditEvent.objects.filter(action="access.refused").latest("seq")
    assert refusal.data["code"] == "obligation_overdue" and refusal.actor is None


# --- Extensions: only the lab, with a reason, to a later day ---------------------------------------------


@pytest.mark.parametrize(
    ("days", "reason", "field", "message"),
    [
        (14, "", "reason", "Give a reason"),
        (14, "   ", "reason", "Give a reason"),
        (-1, "The partner asked for more time.", "due_on", "Choose a day after the current due date"),
        (0, "The partner asked for more time.", "due_on", "Choose a day after the current due date"),
        (400, "The partner asked for more time.", "due_on", "at most 365 days ahead"),
    ],
    ids=["no-reason", "blank-reason", "earlier", "same-day", "too-far"],
)
def test_a_bad_extension_is_refused_and_nothing_changes(legal, active, days, reason, field, message):
    report = findings_report(active)
    due_on = (report.due_at + timedelta(days=days)).date()
    with pytest.raises(ValidationError) as excinfo:
        services.obligation_extend(actor=legal, obligation=report, due_on=due_on, reason=reason)
    assert message in " ".join(excinfo.value.message_dict[field])
    unchanged = Obligation.objects.get(pk=report.pk)
    assert unchanged.due_at == report.due_at and unchanged.extended_at is None and unchanged.extension_reason == ""
    assert not audited("obligation.extended", report)


def test_an_extension_to_a_past_day_is_refused_even_after_the_due_date(legal, active):
    report = findings_report(active)
    with time_machine.travel(report.due_at + timedelta(days=10), tick=False):
        with pytest.raises(ValidationError) as excinfo:
            services.obligation_extend(
                actor=legal, obligation=report, due_on=(report.due_at + timedelta(days=5)).date(), reason="Too late."
            )
        earliest = (timezone.now() + timedelta(days=1)).date()
    assert f"{earliest:%Y-%m-%d} or later" in excinfo.value.message_dict["due_on"][0]


@pytest.mark.parametrize("persona", ["auditor", "signer_a", "researcher_a", "admin_a", "admin_b"])
def test_only_legal_and_lab_admins_extend(request, persona, active):
    report = findings_report(active)
    with pytest.raises(PermissionDenied):
        services.obligation_extend(
            actor=request.getfixturevalue(persona),
            obligation=report,
            due_on=(report.due_at + timedelta(days=10)).date(),
            reason="We would like more time.",
        )
    report.refresh_from_db()
    assert report.extended_at is None and not audited("obligation.extended", report)


def test_a_lab_admin_extends_and_the_partner_is_told_the_new_date(
    lab_admin, researcher_a, active, django_capture_on_commit_callbacks
):
    report = findings_report(active)
    new_day = (report.due_at + timedelta(days=30)).date()
    with django_capture_on_commit_callbacks(execute=True):
        services.obligation_extend(actor=lab_admin, obligation=report, due_on=new_day, reason="Dataset delayed.")
    notice = Notification.objects.get(user=researcher_a, kind=NotificationKind.OBLIGATION_DUE)
    assert f"{new_day:%Y-%m-%d}" in notice.title and "Dataset delayed." in notice.body
    assert notice.url == f"/obligations/{report.pk}/"


# --- Fulfilling ------------------------------------------------------------------------------------------


def test_only_the_owing_organisation_fulfils_and_only_once(legal, signer_a, signer_b, active):
    report = findings_report(active)
    for outsider in (signer_b, legal):
        with pytest.raises(PermissionDenied):
            services.obligation_fulfil(actor=outsider, obligation=report, fulfilment="finding F-9")
    with pytest.raises(ValidationError, match="Say what fulfils"):
        services.obligation_fulfil(actor=signer_a, obligation=report, fulfilment="  ")
    report.refresh_from_db()
    assert report.is_open
    services.obligation_fulfil(actor=signer_a, obligation=report, fulfilment="finding F-1")
    with pytest.raises(ValidationError, match="already fulfilled"):
        services.obligation_fulfil(actor=signer_a, obligation=report, fulfilment="finding F-2")
    report.refresh_from_db()
    assert report.fulfilment == "finding F-1" and not report.fulfilled_late
    assert len(audited("obligation.fulfilled", report)) == 1


# --- Reminders and overdue notices (beat) ---------------------------------------------------------------


def test_the_beat_reminds_once_per_due_date_then_records_the_lapse_once(
    everyone, legal, lab_admin, active, django_capture_on_commit_callbacks
):
    report = findings_report(active)
    medium = findings_report(active, "gpt2-medium")
    partner_people = sorted(u.email for u in (everyone["admin_a"], everyone["signer_a"], everyone["researcher_a"]))
    mail.outbox.clear()

    with time_machine.travel(report.due_at - timedelta(days=10), tick=False):
        assert services.obligations_check_due() == {"reminded": [], "overdue": []}  # not yet within 7 days

    with time_machine.travel(report.due_at - timedelta(days=3), tick=False):
        with django_capture_on_commit_callbacks(execute=True):
            first = check_obligations()
        with django_capture_on_commit_callbacks(execute=True):
            again = check_obligations()
    assert sorted(first["reminded"]) == sorted([report.reference, medium.reference]) and first["overdue"] == []
    assert again == {"reminded": [], "overdue": []}
    reminders = [m for m in mail.outbox if m.subject == f"Due on {report.due_at:%Y-%m-%d}: {report.description}"]
    assert sorted(address for m in reminders for address in m.to) == partner_people  # once each, partner only
    assert "pauses until it is" in reminders[0].body
    assert len(audited("obligation.reminded", report)) == 1

    mail.outbox.clear()
    with time_machine.travel(report.due_at + MINUTE, tick=False):
        with django_capture_on_commit_callbacks(execute=True):
            lapsed = check_obligations()
        with django_capture_on_commit_callbacks(execute=True):
            assert check_obligations() == {"reminded": [], "overdue": []}
    assert sorted(lapsed["overdue"]) == sorted([report.reference, medium.reference])
    paused = [m for m in mail.outbox if m.subject.startswith("Access paused for Partner A: Findings report on gpt2 ")]
    assert sorted(address for m in paused for address in m.to) == sorted(
        [*partner_people, legal.email, lab_admin.email]
    )
    report.refresh_from_db()
    assert report.overdue_at is not None
    (event,) = audited("obligation.overdue", report)
    assert event.actor is None and event.data["access_paused"] is True
    assert audit_chain_verify().ok


def test_an_extended_report_is_reminded_again_before_its_new_date(legal, active):
    report = findings_report(active)
    with time_machine.travel(report.due_at - timedelta(days=3), tick=False):
        assert report.reference in services.obligations_check_due()["reminded"]
        services.obligation_extend(
            actor=legal, obligation=report, due_on=(report.due_at + timedelta(days=30)).date(), reason="More data."
        )
        assert report.reference not in services.obligations_check_due()["reminded"]
    report.refresh_from_db()
    with time_machine.travel(report.due_at - timedelta(days=2), tick=False):
        assert report.reference in services.obligations_check_due()["reminded"]
    assert len(audited("obligation.reminded", report)) == 2


def test_a_fulfilled_report_is_neither_reminded_nor_overdue(signer_a, active):
    report = findings_report(active)
    services.obligation_fulfil(actor=signer_a, obligation=report, fulfilment="finding F-1")
    with time_machine.travel(report.due_at - timedelta(days=3), tick=False):
        assert report.reference not in services.obligations_check_due()["reminded"]
    with time_machine.travel(report.due_at + MINUTE, tick=False):
        assert report.reference not in services.obligations_check_due()["overdue"]
        assert selectors.overdue_obligation(organization=active.organization) != report


# --- Home ------------------------------------------------------------------------------------------------


def test_the_home_summary_says_who_is_paused(researcher_a, researcher_b, auditor, active):
    report = findings_report(active)
    with time_machine.travel(report.due_at + timedelta(days=1), tick=False):
        partner = selectors.obligation_home(user=researcher_a)
        lab = selectors.obligation_home(user=auditor)
        outsider = selectors.obligation_home(user=researcher_b)
    assert partner["obligation_paused_by"] == report
    assert report in partner["obligations_attention"]
    assert lab["obligations_overdue_count"] == 2 and lab["obligations_paused_organizations"] == 1
    assert lab["obligations_overdue"][0] == report
    assert outsider["obligation_paused_by"] is None and outsider["obligations_attention"] == []

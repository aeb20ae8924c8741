"""Registry writes: the kill switch, embargoes, access requests and the expiry sweep."""

from __future__ import annotations

import unicodedata
from datetime import timedelta

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.utils import timezone

from agreements import services as access
from agreements.models import AccessGrant, AccessRequest, Agreement, Obligation
from agreements.selectors import access_check
from agreements.tasks import revoke_expired_grants
from audit import events
from audit.models import AuditEvent
from inference import services as jobs
from inference.models import GenerationJob
from models_registry import services
from models_registry.models import Checkpoint
from tests.builders import PURPOSE, make_job, months_ago, signatory_of

pytestmark = pytest.mark.django_db


# --- The kill switch ------------------------------------------------------------------------------


def test_withdrawing_a_checkpoint_revokes_its_grants_and_cancels_its_queued_jobs_and_nothing_else(
    lab_admin, partner_a, partner_b, researcher_a, researcher_b, checkpoints, make_agreement
):
    agreement_a = make_agreement(partner_a, ["gpt2", "gpt2-medium"])
    agreement_b = make_agreement(partner_b, ["gpt2"])
    small_a = agreement_a.grants.get(checkpoint__slug="gpt2")
    medium_a = agreement_a.grants.get(checkpoint__slug="gpt2-medium")
    small_b = agreement_b.grants.get()
    queued_a = make_job(small_a, researcher_a)
    queued_b = make_job(small_b, researcher_b)
    running = make_job(small_a, researcher_a, status=GenerationJob.Status.RUNNING)
    done = make_job(small_a, researcher_a, status=GenerationJob.Status.SUCCEEDED, tokens_generated=40)
    other = make_job(medium_a, researcher_a)

    jobs.checkpoint_withdraw(actor=lab_admin, checkpoint=checkpoints["gpt2"], reason="memorised personal data")

    assert Checkpoint.objects.get(slug="gpt2").status == Checkpoint.Status.WITHDRAWN
    for grant in (small_a, small_b):
        grant.refresh_from_db()
        assert grant.revoked_at is not None
        assert grant.revoke_reason == "checkpoint gpt2 withdrawn: memorised personal data"
    medium_a.refresh_from_db()
    assert medium_a.revoked_at is None, "other checkpoints' grants are untouched"

    for job in (queued_a, queued_b):
        job.refresh_from_db()
        assert job.status == GenerationJob.Status.CANCELLED
        assert job.error_code == "checkpoint_withdrawn"
        assert "memorised personal data" in job.error_message
        assert job.finished_at is not None
    running.refresh_from_db()
    assert running.status == GenerationJob.Status.RUNNING and running.cancel_requested_at is not None
    done.refresh_from_db()
    assert done.status == GenerationJob.Status.SUCCEEDED
    other.refresh_from_db()
    assert other.status == GenerationJob.Status.QUEUED

    withdrawal = AuditEvent.objects.get(action=events.CHECKPOINT_WITHDRAWN)
    assert withdrawal.data["reason"] == "memorised personal data"
    assert sorted(withdrawal.data["grants_revoked"]) == sorted([small_a.pk, small_b.pk])
    assert sorted(withdrawal.data["jobs_cancelled"]) == sorted([queued_a.pk, queued_b.pk])
    assert AuditEvent.objects.filter(action=events.GRANT_REVOKED).count() == 2
    assert access_check(organization=partner_a, checkpoint=checkpoints["gpt2-medium"]).allowed


def test_withdrawing_needs_a_reason(lab_admin, checkpoints):
    with pytest.raises(ValidationError) as exc:
        jobs.checkpoint_withdraw(actor=lab_admin, checkpoint=checkpoints["gpt2"], reason="  ")
    assert "Give a reason" in exc.value.message_dict["reason"][0]
    assert Checkpoint.objects.get(slug="gpt2").status == Checkpoint.Status.AVAILABLE


@pytest.mark.parametrize("persona", ["legal", "auditor", "admin_a"])
def test_only_the_lab_admin_pulls_the_kill_switch(request, persona, checkpoints):
    with pytest.raises(PermissionDenied):
        jobs.checkpoint_withdraw(
            actor=request.getfixturevalue(persona), checkpoint=checkpoints["gpt2"], reason="because I can"
        )
    with pytest.raises(PermissionDenied):
        services.checkpoint_embargo(actor=request.getfixturevalue(persona), checkpoint=checkpoints["gpt2"])


def test_an_embargo_pauses_access_and_a_restore_brings_it_back(lab_admin, partner_a, checkpoints, make_agreement):
    make_agreement(partner_a, ["gpt2"])
    services.checkpoint_embargo(actor=lab_admin, checkpoint=checkpoints["gpt2"], reason="safety review")
    assert access_check(organization=partner_a, checkpoint=Checkpoint.objects.get(slug="gpt2")).code == "embargoed"
    assert AccessGrant.objects.filter(revoked_at=None).count() == 1, "an embargo keeps grants"
    services.checkpoint_restore(actor=lab_admin, checkpoint=checkpoints["gpt2"])
    assert access_check(organization=partner_a, checkpoint=Checkpoint.objects.get(slug="gpt2")).allowed
    actions = list(AuditEvent.objects.order_by("seq").values_list("action", flat=True))
    assert actions[-2:] == [events.CHECKPOINT_EMBARGOED, events.CHECKPOINT_RESTORED]


def test_a_kill_switch_that_fails_half_way_changes_nothing(
    lab_admin, researcher_a, partner_a, checkpoints, make_agreement, monkeypatch
):
    grant = make_agreement(partner_a, ["gpt2"]).grants.get()
    queued = make_job(grant, researcher_a)

    def broken_audit(**kwargs):
        raise RuntimeError("the audit chain could not be written")

    monkeypatch.setattr(jobs, "audit_append", broken_audit)  # its last write, after grants and jobs
    with pytest.raises(RuntimeError):
        jobs.checkpoint_withdraw(actor=lab_admin, checkpoint=checkpoints["gpt2"], reason="memorised personal data")
    grant.refresh_from_db()
    queued.refresh_from_db()
    assert Checkpoint.objects.get(slug="gpt2").status == Checkpoint.Status.AVAILABLE
    assert grant.revoked_at is None and queued.status == GenerationJob.Status.QUEUED


def test_status_changes_that_make_no_sense_are_refused(lab_admin, checkpoints):
    with pytest.raises(ValidationError, match="gpt2 is already available"):
        services.checkpoint_restore(actor=lab_admin, checkpoint=checkpoints["gpt2"])
    jobs.checkpoint_withdraw(actor=lab_admin, checkpoint=checkpoints["gpt2"], reason="unsafe outputs found")
    with pytest.raises(ValidationError, match="gpt2 is withdrawn; it cannot be embargoed"):
        services.checkpoint_embargo(actor=lab_admin, checkpoint=checkpoints["gpt2"])
    with pytest.raises(ValidationError, match="already withdrawn"):
        jobs.checkpoint_withdraw(actor=lab_admin, checkpoint=checkpoints["gpt2"], reason="unsafe outputs found")


# --- Expiry sweep ------------------------------------------------------------------------------------


def test_the_hourly_sweep_revokes_only_grants_past_their_end(partner_a, partner_b, make_agreement):
    old = make_agreement(partner_a, ["gpt2"], effective=months_ago(13), term_months=12)
    current = make_agreement(partner_b, ["gpt2"])
    assert revoke_expired_grants.delay().get() == 1
    expired = old.grants.get()
    assert expired.revoked_at is not None and expired.revoke_reason == "expired"
    assert current.grants.get().revoked_at is None
    event = AuditEvent.objects.filter(action=events.GRANT_REVOKED).get()
    assert event.organization == partner_a and event.data["reason"] == "expired"
    assert revoke_expired_grants.delay().get() == 0, "a second run changes nothing"


# --- Access requests ----------------------------------------------------------------------------------


def request_access(user, *slugs: str, purpose: str = PURPOSE) -> AccessRequest:
    return access.access_request_create(
        actor=user, checkpoints=list(Checkpoint.objects.filter(slug__in=slugs)), purpose=purpose
    )


@pytest.mark.parametrize("persona", ["admin_a", "signer_a", "researcher_a"])
def test_any_partner_user_requests_checkpoints_for_a_purpose(request, persona, partner_a, checkpoints):
    user = request.getfixturevalue(persona)
    access_request = request_access(user, "gpt2-large", "gpt2-xl")
    assert access_request.organization == partner_a
    assert access_request.status == AccessRequest.Status.PENDING
    assert sorted(access_request.checkpoints.values_list("slug", flat=True)) == ["gpt2-large", "gpt2-xl"]
    event = AuditEvent.objects.get(action=events.ACCESS_REQUEST_CREATED)
    assert event.organization == partner_a and event.data["checkpoints"] == ["gpt2-large", "gpt2-xl"]


@pytest.mark.parametrize(
    ("purpose", "message"),
    [
        ("", "at least 20 characters"),
        ("Research.", "at least 20 characters"),
        ("x" * 4001, "Keep the purpose to 4,000 characters (it has 4,001)"),
    ],
)
def test_the_purpose_must_be_20_to_4000_characters(researcher_a, checkpoints, purpose, message):
    with pytest.raises(ValidationError) as exc:
        request_access(researcher_a, "gpt2-large", purpose=purpose)
    assert message in exc.value.message_dict["purpose"][0]
    assert not AccessRequest.objects.exists()


def test_a_purpose_of_exactly_20_or_4000_characters_is_accepted(researcher_a, checkpoints):
    request_access(researcher_a, "gpt2", purpose="x" * 20)
    request_access(researcher_a, "gpt2-large", purpose="y" * 4000)
    assert AccessRequest.objects.count() == 2


def test_requests_for_embargoed_or_withdrawn_checkpoints_say_so(lab_admin, researcher_a, checkpoints):
    services.checkpoint_embargo(actor=lab_admin, checkpoint=checkpoints["gpt2-large"])
    jobs.checkpoint_withdraw(actor=lab_admin, checkpoint=checkpoints["gpt2-xl"], reason="unsafe outputs found")
    with pytest.raises(ValidationError) as exc:
        request_access(researcher_a, "gpt2-medium", "gpt2-large", "gpt2-xl")
    assert exc.value.message_dict["checkpoints"] == [
        "gpt2-large is embargoed and cannot be requested.",
        "gpt2-xl is withdrawn and cannot be requested.",
    ]
    assert not AccessRequest.objects.exists()


def test_a_request_needs_a_checkpoint(researcher_a, checkpoints):
    with pytest.raises(ValidationError) as exc:
        request_access(researcher_a)
    assert exc.value.message_dict["checkpoints"] == ["Choose at least one checkpoint."]


def test_a_checkpoint_already_pending_for_the_organisation_is_not_requested_twice(
    researcher_a, signer_a, researcher_b, checkpoints
):
    first = request_access(researcher_a, "gpt2-large")
    with pytest.raises(ValidationError, match=f"gpt2-large is already requested \\(request #{first.pk} is pending\\)"):
        request_access(signer_a, "gpt2-large", "gpt2-xl")
    request_access(researcher_b, "gpt2-large")  # another organisation is independent


@pytest.mark.parametrize("persona", ["lab_admin", "legal", "auditor"])
def test_lab_staff_do_not_request_access(request, persona, checkpoints):
    with pytest.raises(PermissionDenied):
        request_access(request.getfixturevalue(persona), "gpt2")


def test_a_pending_request_can_be_withdrawn_once_by_its_organisation(researcher_a, admin_a, researcher_b, checkpoints):
    access_request = request_access(researcher_a, "gpt2-large")
    with pytest.raises(PermissionDenied):
        access.access_request_withdraw(actor=researcher_b, access_request=access_request)
    access.access_request_withdraw(actor=admin_a, access_request=access_request)
    access_request.refresh_from_db()
    assert access_request.status == AccessRequest.Status.WITHDRAWN
    with pytest.raises(ValidationError, match="already withdrawn"):
        access.access_request_withdraw(actor=researcher_a, access_request=access_request)


def test_a_rejection_carries_a_reason_and_the_partner_may_apply_again(legal, researcher_a, checkpoints):
    access_request = request_access(researcher_a, "gpt2-xl")
    with pytest.raises(ValidationError, match="Give a reason"):
        access.access_request_reject(actor=legal, access_request=access_request, reason="no")
    access.access_request_reject(
        actor=legal, access_request=access_request, reason="gpt2-xl is reserved for safety partners this quarter."
    )
    access_request.refresh_from_db()
    assert access_request.status == AccessRequest.Status.REJECTED
    assert access_request.decided_by == legal
    assert access_request.decision_reason == "gpt2-xl is reserved for safety partners this quarter."
    assert AuditEvent.objects.filter(action=events.ACCESS_REQUEST_REJECTED, organization=access_request.organization)

    again = request_access(researcher_a, "gpt2-xl")
    assert again.status == AccessRequest.Status.PENDING


@pytest.mark.parametrize("persona", ["auditor", "admin_a", "researcher_a"])
def test_only_legal_and_lab_admins_decide_on_requests(request, persona, researcher_a, checkpoints):
    access_request = request_access(researcher_a, "gpt2-large")
    actor = request.getfixturevalue(persona)
    with pytest.raises(PermissionDenied):
        access.access_request_approve(actor=actor, access_request=access_request)
    with pytest.raises(PermissionDenied):
        access.access_request_reject(actor=actor, access_request=access_request, reason="not this time, sorry")


def test_approval_opens_a_prefilled_draft_amendment_of_the_active_agreement(
    legal, partner_a, researcher_a, checkpoints, make_agreement
):
    active = make_agreement(partner_a, ["gpt2", "gpt2-medium"])
    access_request = request_access(researcher_a, "gpt2-large")

    access_request = access.access_request_approve(actor=legal, access_request=access_request)

    assert access_request.status == AccessRequest.Status.APPROVED
    amendment = access_request.amendment
    assert amendment.status == Agreement.Status.DRAFT
    assert amendment.amends == active
    assert amendment.organization == partner_a
    assert sorted(amendment.checkpoints.values_list("slug", flat=True)) == ["gpt2", "gpt2-large", "gpt2-medium"]
    event = AuditEvent.objects.get(action=events.ACCESS_REQUEST_APPROVED)
    assert event.data == {"checkpoints": ["gpt2-large"], "agreement": amendment.reference}
    # Approval grants nothing until the amendment is signed.
    assert access_check(organization=partner_a, checkpoint=checkpoints["gpt2-large"]).code == "not_yet_active"


def test_approval_without_an_agreement_opens_a_first_draft(legal, partner_b, researcher_b, published_template):
    access_request = request_access(researcher_b, "gpt2")
    amendment = access.access_request_approve(actor=legal, access_request=access_request).amendment
    assert amendment.status == Agreement.Status.DRAFT and amendment.amends is None
    assert list(amendment.checkpoints.values_list("slug", flat=True)) == ["gpt2"]
    assert amendment.purpose == PURPOSE


def test_a_request_whose_checkpoint_was_embargoed_since_cannot_be_approved(
    lab_admin, legal, researcher_a, checkpoints, published_template
):
    access_request = request_access(researcher_a, "gpt2-large")
    services.checkpoint_embargo(actor=lab_admin, checkpoint=checkpoints["gpt2-large"])
    with pytest.raises(ValidationError, match="gpt2-large is embargoed"):
        access.access_request_approve(actor=legal, access_request=access_request)
    access_request.refresh_from_db()
    assert access_request.status == AccessRequest.Status.PENDING
    assert not Agreement.objects.exists()


def test_a_decided_request_cannot_be_decided_again(legal, researcher_a, checkpoints):
    access_request = request_access(researcher_a, "gpt2-large")
    access.access_request_reject(actor=legal, access_request=access_request, reason="Please narrow the purpose.")
    with pytest.raises(ValidationError, match="already rejected"):
        access.access_request_approve(actor=legal, access_request=access_request)


def test_grants_expire_at_the_agreement_end_not_before(partner_a, checkpoints, make_agreement):
    agreement = make_agreement(partner_a, ["gpt2"], effective=timezone.now().date() - timedelta(days=1))
    grant = agreement.grants.get()
    # The partner delivers the findings report and the final report the agreement asks for: only the
    # term decides (an overdue report would pause access before the end; tests/agreements/test_obligations.py).
    signatory = signatory_of(partner_a)
    reports = agreement.obligations.order_by("due_at")
    assert [o.kind for o in reports] == [Obligation.Kind.FINDINGS_REPORT, Obligation.Kind.FINAL_REPORT]
    for report in reports:
        access.obligation_fulfil(actor=signatory, obligation=report, fulfilment=f"report on {report.description}")
    just_before = grant.ends_at - timedelta(seconds=1)
    assert access_check(organization=partner_a, checkpoint=checkpoints["gpt2"], now=just_before).allowed
    late = access_check(organization=partner_a, checkpoint=checkpoints["gpt2"], now=grant.ends_at)
    assert late.code == "expired"


@pytest.mark.parametrize(
    "purpose",
    ["\u200b" * 25, "\u2060" * 10 + "\ufeff" * 10 + "\u00ad" * 10, "x" + "\u200b" * 40 + "y", "\u0301" * 30],
    ids=["zero-width-spaces", "joiners-bom-soft-hyphens", "two-letters-padded", "bare-accents"],
)
def test_only_visible_characters_count_towards_the_20(researcher_a, checkpoints, purpose):
    with pytest.raises(ValidationError) as exc:
        request_access(researcher_a, "gpt2-large", purpose=purpose)
    assert exc.value.message_dict["purpose"][0].startswith("Describe the research purpose in at least 20 characters.")
    assert not AccessRequest.objects.exists()
    assert not AuditEvent.objects.filter(action=events.ACCESS_REQUEST_CREATED).exists()


def test_a_purpose_in_any_script_or_with_accents_counts_what_a_reader_sees(researcher_a, checkpoints):
    accented = "Évaluer la détectabilité des textes générés"  # sent with combining accents (NFD)
    request_access(researcher_a, "gpt2", purpose=unicodedata.normalize("NFD", accented))
    request_access(researcher_a, "gpt2-large", purpose="研究生成文本的可检测性以及人类读者如何区分它们和新闻")
    assert AccessRequest.objects.count() == 2

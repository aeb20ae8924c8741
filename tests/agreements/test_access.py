"""The access choke point: one function says whether an organisation may use a checkpoint now, and why not."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from agreements import services as access
from agreements.models import Agreement
from agreements.selectors import access_check, tokens_charged_today
from audit import events
from audit.models import AuditEvent
from inference import services as jobs
from inference.models import GenerationJob
from models_registry import services
from tests.builders import end_agreement, make_job, months_ago

pytestmark = pytest.mark.django_db


def check(organization, checkpoint, **kwargs):
    return access_check(organization=organization, checkpoint=checkpoint, **kwargs)


def test_an_active_agreement_allows_its_checkpoints_with_the_full_quota(partner_a, checkpoints, make_agreement):
    agreement = make_agreement(partner_a, ["gpt2", "gpt2-medium"], quota=50_000)
    decision = check(partner_a, checkpoints["gpt2"])
    assert decision.allowed
    assert decision.code == "ok"
    assert decision.grant.agreement == agreement
    assert decision.quota_left == 50_000


def test_without_any_agreement_the_refusal_names_the_checkpoint(partner_a, checkpoints):
    decision = check(partner_a, checkpoints["gpt2-large"])
    assert not decision.allowed
    assert decision.grant is None
    assert decision.code == "no_agreement"
    assert decision.message == "no active agreement grants gpt2-large"


def test_an_agreement_for_other_checkpoints_does_not_grant_this_one(partner_a, checkpoints, make_agreement):
    make_agreement(partner_a, ["gpt2"])
    decision = check(partner_a, checkpoints["gpt2-large"])
    assert (decision.code, decision.message) == ("no_agreement", "no active agreement grants gpt2-large")


def test_another_organisations_agreement_grants_nothing(partner_a, partner_b, checkpoints, make_agreement):
    make_agreement(partner_a, ["gpt2"])
    assert check(partner_b, checkpoints["gpt2"]).code == "no_agreement"


def test_an_agreement_out_for_signature_is_not_yet_active(partner_a, checkpoints, make_agreement):
    agreement = make_agreement(partner_a, ["gpt2-large"], status=Agreement.Status.OUT_FOR_SIGNATURE)
    decision = check(partner_a, checkpoints["gpt2-large"])
    assert not decision.allowed
    assert decision.code == "not_yet_active"
    assert decision.message == (
        f"agreement {agreement.reference} granting gpt2-large is out for signature, not yet active"
    )


def test_a_grant_whose_term_has_not_started_is_not_yet_active(partner_a, checkpoints, make_agreement):
    start = timezone.now().date() + timedelta(days=10)
    agreement = make_agreement(partner_a, ["gpt2"], effective=start)
    decision = check(partner_a, checkpoints["gpt2"])
    assert decision.code == "not_yet_active"
    assert decision.message == f"access to gpt2 under {agreement.reference} starts on {start:%Y-%m-%d} (UTC)"
    # On its first day it works.
    on_the_day = datetime.combine(start, datetime.min.time(), tzinfo=UTC) + timedelta(hours=1)
    assert check(partner_a, checkpoints["gpt2"], now=on_the_day).allowed


def test_a_grant_past_its_end_is_refused_before_the_hourly_sweep_revokes_it(partner_a, checkpoints, make_agreement):
    agreement = make_agreement(partner_a, ["gpt2"], effective=months_ago(13), term_months=12)
    grant = agreement.grants.get()
    assert grant.revoked_at is None, "the sweep has not run yet"
    decision = check(partner_a, checkpoints["gpt2"])
    assert not decision.allowed
    assert decision.code == "expired"
    assert decision.message == f"access to gpt2 under {agreement.reference} expired on {grant.ends_at:%Y-%m-%d} (UTC)"


def test_an_expired_agreement_refuses_as_expired(partner_a, checkpoints, make_agreement):
    agreement = make_agreement(partner_a, ["gpt2"], effective=months_ago(13), term_months=12)
    end_agreement(agreement, "expire", "reached its end date")
    decision = check(partner_a, checkpoints["gpt2"])
    assert decision.code == "expired"
    assert "expired on" in decision.message and "gpt2" in decision.message


def test_a_terminated_agreement_refuses_at_once(partner_a, checkpoints, make_agreement, legal):
    agreement = make_agreement(partner_a, ["gpt2", "gpt2-medium"])
    end_agreement(agreement, "terminate", "breach of the acceptable-use clause", actor=legal)
    for slug in ("gpt2", "gpt2-medium"):
        decision = check(partner_a, checkpoints[slug])
        assert not decision.allowed
        assert decision.code == "terminated"
        assert decision.message == f"agreement {agreement.reference} that granted {slug} was terminated"


def test_a_superseded_agreement_names_the_amendment_that_dropped_the_checkpoint(
    partner_a, checkpoints, make_agreement, legal
):
    original = make_agreement(partner_a, ["gpt2", "gpt2-medium"])
    amendment = make_agreement(partner_a, ["gpt2", "gpt2-large"], amends=original)
    end_agreement(original, "supersede", f"superseded by {amendment.reference}", actor=legal)

    dropped = check(partner_a, checkpoints["gpt2-medium"])
    assert dropped.code == "superseded"
    assert dropped.message == (
        f"agreement {original.reference} that granted gpt2-medium was superseded by {amendment.reference}, "
        "which does not grant it"
    )
    kept = check(partner_a, checkpoints["gpt2"])
    assert kept.allowed and kept.grant.agreement == amendment
    assert check(partner_a, checkpoints["gpt2-large"]).allowed


def test_an_embargoed_checkpoint_is_refused_even_with_a_live_grant(partner_a, checkpoints, make_agreement, lab_admin):
    make_agreement(partner_a, ["gpt2"])
    services.checkpoint_embargo(actor=lab_admin, checkpoint=checkpoints["gpt2"], reason="red-team review in progress")
    checkpoints["gpt2"].refresh_from_db()
    decision = check(partner_a, checkpoints["gpt2"])
    assert not decision.allowed
    assert decision.code == "embargoed"
    assert decision.message == "checkpoint gpt2 is embargoed: red-team review in progress"


def test_a_withdrawn_checkpoint_is_refused_with_the_reason(partner_a, checkpoints, make_agreement, lab_admin):
    make_agreement(partner_a, ["gpt2-xl"])
    jobs.checkpoint_withdraw(actor=lab_admin, checkpoint=checkpoints["gpt2-xl"], reason="memorised personal data found")
    checkpoints["gpt2-xl"].refresh_from_db()
    decision = check(partner_a, checkpoints["gpt2-xl"])
    assert not decision.allowed
    assert decision.code == "withdrawn"
    assert decision.message == "checkpoint gpt2-xl is withdrawn: memorised personal data found"


def test_a_revoked_grant_of_an_active_agreement_says_revoked(partner_a, checkpoints, make_agreement, lab_admin):
    make_agreement(partner_a, ["gpt2"])
    jobs.checkpoint_withdraw(actor=lab_admin, checkpoint=checkpoints["gpt2"], reason="weights leaked publicly")
    services.checkpoint_restore(actor=lab_admin, checkpoint=checkpoints["gpt2"])
    checkpoints["gpt2"].refresh_from_db()
    decision = check(partner_a, checkpoints["gpt2"])
    assert decision.code == "revoked"
    assert decision.message.endswith("was revoked: checkpoint gpt2 withdrawn: weights leaked publicly")


def test_a_used_up_quota_is_refused_until_midnight_utc(partner_a, researcher_a, checkpoints, make_agreement):
    agreement = make_agreement(partner_a, ["gpt2"], quota=50_000)
    grant = agreement.grants.get()
    make_job(grant, researcher_a, status=GenerationJob.Status.SUCCEEDED, max_new_tokens=500, tokens_generated=30_000)
    make_job(grant, researcher_a, status=GenerationJob.Status.SUCCEEDED, max_new_tokens=500, tokens_generated=20_000)
    decision = check(partner_a, checkpoints["gpt2"])
    assert not decision.allowed
    assert decision.code == "quota_exceeded"
    assert decision.message == "daily token quota of 50,000 used; resets at 00:00 UTC"
    assert decision.quota_left == 0
    assert decision.grant == grant
    tomorrow = timezone.now() + timedelta(days=1)
    assert check(partner_a, checkpoints["gpt2"], now=tomorrow).quota_left == 50_000


def test_a_job_bigger_than_what_is_left_is_refused(partner_a, researcher_a, checkpoints, make_agreement):
    grant = make_agreement(partner_a, ["gpt2"], quota=1_000).grants.get()
    make_job(grant, researcher_a, status=GenerationJob.Status.SUCCEEDED, tokens_generated=900)
    assert check(partner_a, checkpoints["gpt2"], tokens=100).allowed
    decision = check(partner_a, checkpoints["gpt2"], tokens=512)
    assert decision.code == "quota_exceeded"
    assert decision.quota_left == 100
    assert decision.message == (
        "this needs up to 512 tokens but 100 of the daily token quota of 1,000 are left; resets at 00:00 UTC"
    )


def test_queued_and_running_jobs_reserve_their_full_length(partner_a, researcher_a, checkpoints, make_agreement):
    grant = make_agreement(partner_a, ["gpt2"], quota=10_000).grants.get()
    make_job(grant, researcher_a, status=GenerationJob.Status.QUEUED, max_new_tokens=512, num_samples=8)
    make_job(grant, researcher_a, status=GenerationJob.Status.RUNNING, max_new_tokens=100, num_samples=2)
    make_job(grant, researcher_a, status=GenerationJob.Status.CANCELLED, max_new_tokens=512, tokens_generated=7)
    make_job(grant, researcher_a, status=GenerationJob.Status.FAILED, max_new_tokens=512, tokens_generated=0)
    assert tokens_charged_today(organization=partner_a, checkpoint=checkpoints["gpt2"]) == 4096 + 200 + 7
    assert check(partner_a, checkpoints["gpt2"]).quota_left == 10_000 - 4303


def test_yesterdays_jobs_and_other_checkpoints_do_not_count(partner_a, researcher_a, checkpoints, make_agreement):
    agreement = make_agreement(partner_a, ["gpt2", "gpt2-medium"], quota=1_000, effective=months_ago(1))
    small, medium = agreement.grants.order_by("checkpoint__parameter_count")
    yesterday = timezone.now() - timedelta(days=1)
    make_job(small, researcher_a, status=GenerationJob.Status.SUCCEEDED, tokens_generated=1_000, created_at=yesterday)
    make_job(medium, researcher_a, status=GenerationJob.Status.SUCCEEDED, tokens_generated=1_000)
    assert check(partner_a, checkpoints["gpt2"]).quota_left == 1_000
    assert check(partner_a, checkpoints["gpt2-medium"]).code == "quota_exceeded"


def test_the_worker_rechecks_a_queued_job_without_counting_its_own_reservation(
    partner_a, researcher_a, checkpoints, make_agreement
):
    grant = make_agreement(partner_a, ["gpt2"], quota=4_096).grants.get()
    job = make_job(grant, researcher_a, max_new_tokens=512, num_samples=8)
    assert check(partner_a, checkpoints["gpt2"], tokens=job.expected_tokens).code == "quota_exceeded"
    # Its tokens were reserved at submission: the worker asks only whether the grant still holds.
    assert [j.pk for j in jobs.jobs_claim(job_id=job.pk, worker="w1", device="cpu", rows=64)] == [job.pk]


def test_refusals_are_audited_by_the_caller(partner_a, researcher_a, checkpoints):
    decision = check(partner_a, checkpoints["gpt2-large"])
    access.access_refusal_log(
        actor=researcher_a, organization=partner_a, checkpoint=checkpoints["gpt2-large"], decision=decision
    )
    event = AuditEvent.objects.get(action=events.ACCESS_REFUSED)
    assert event.organization == partner_a
    assert event.actor == researcher_a
    assert event.data["code"] == "no_agreement"
    assert event.data["message"] == "no active agreement grants gpt2-large"


def test_the_workers_recheck_with_the_jobs_grant_still_names_what_is_missing(
    partner_a, partner_b, checkpoints, make_agreement, lab_admin
):
    grant = make_agreement(partner_a, ["gpt2"]).grants.get()
    assert check(partner_a, checkpoints["gpt2"], check_quota=False, known_grant=grant).grant == grant
    # Another organisation's grant answers nothing for this one.
    assert check(partner_b, checkpoints["gpt2"], check_quota=False, known_grant=grant).code == "no_agreement"
    jobs.checkpoint_withdraw(actor=lab_admin, checkpoint=checkpoints["gpt2"], reason="weights leaked publicly")
    services.checkpoint_restore(actor=lab_admin, checkpoint=checkpoints["gpt2"])
    checkpoints["gpt2"].refresh_from_db()
    grant.refresh_from_db()
    decision = check(partner_a, checkpoints["gpt2"], check_quota=False, known_grant=grant)
    assert decision.code == "revoked" and not decision.allowed


def test_a_submission_counts_today_on_every_grant_of_the_checkpoint(
    partner_a, researcher_a, checkpoints, make_agreement
):
    # An amendment adds a second live grant of gpt2; tokens used under the first count against both.
    first = make_agreement(partner_a, ["gpt2"], quota=1_000)
    second = make_agreement(partner_a, ["gpt2"], quota=1_200, amends=first)
    make_job(first.grants.get(), researcher_a, status=GenerationJob.Status.SUCCEEDED, tokens_generated=1_000)
    refused = access.usage_reserve(organization=partner_a, checkpoint=checkpoints["gpt2"], tokens=300)
    assert (refused.code, refused.quota_left, refused.grant) == ("quota_exceeded", 200, second.grants.get())
    allowed = access.usage_reserve(organization=partner_a, checkpoint=checkpoints["gpt2"], tokens=200)
    assert allowed.allowed and allowed.quota_left == 200
    assert tokens_charged_today(organization=partner_a, checkpoint=checkpoints["gpt2"]) == 1_200


def test_a_submission_reads_its_grants_quota_from_the_row_it_locks(
    partner_a, researcher_a, checkpoints, make_agreement, django_assert_num_queries
):
    grant = make_agreement(partner_a, ["gpt2"], quota=1_000).grants.get()
    make_job(grant, researcher_a, status=GenerationJob.Status.RUNNING, max_new_tokens=300, num_samples=2)
    # The grant with whether access is paused, the locked ledger row, and the reservation written to it.
    with django_assert_num_queries(3):
        decision = access.usage_reserve(organization=partner_a, checkpoint=checkpoints["gpt2"], tokens=400)
    assert decision.allowed and decision.quota_left == 400
    assert access.usage_reserve(organization=partner_a, checkpoint=checkpoints["gpt2"], tokens=1).quota_left == 0

"""Release decisions through the service, and the stage review's evidence on a small known dataset.

The world (stage_world): gpt2-large, the next stage, is embargoed. Partner A and Partner C hold active
agreements for gpt2 and are in good standing; Partner B holds one too but its findings report on gpt2
is overdue; Partner D has no agreement at all.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, timedelta

import pytest
import time_machine
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import connection
from django.http import Http404
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts import services as accounts
from accounts.models import Notification, NotificationKind, Organization, User
from agreements import services as agreement_services
from agreements.models import AccessGrant, Agreement, Obligation
from audit import events
from audit.models import AuditEvent
from inference.models import GenerationJob
from models_registry import services as registry
from models_registry.models import Checkpoint
from records.models import SealedRecord
from research.models import Finding, Incident, ReleaseDecision
from research.selectors.releases import (
    evidence_canonical_json,
    evidence_sha256,
    review_window,
    stage_review,
    stage_review_summary,
)
from research.services.releases import DecisionConflict, release_decide
from tests.builders import draft_agreement, make_job, sign, signatory_of

pytestmark = pytest.mark.django_db

RATIONALE = "Partner A's detection study found no misuse at the 355M stage; release 774M to it next."


@dataclass
class World:
    lab_admin: User
    a: Organization
    b: Organization
    c: Organization
    d: Organization
    agreement_a: Agreement
    agreement_b: Agreement
    agreement_c: Agreement
    large: Checkpoint
    gpt2: Checkpoint


def activate(legal, organization, version, slugs: list[str], *, days_ago: int = 20, quota: int = 50_000) -> Agreement:
    """An agreement drafted, sent, signed and countersigned `days_ago` (its grants start that day)."""
    if not organization.address:
        organization.address = "1 Research Way, Cambridge CB2 1TN"
        organization.save(update_fields=["address"])
    then = timezone.now() - timedelta(days=days_ago)
    checkpoints = list(Checkpoint.objects.filter(slug__in=slugs))
    signatory = signatory_of(organization)
    with time_machine.travel(then, tick=False):
        agreement = draft_agreement(
            legal, organization, version, checkpoints, effective_date=then.date(), daily_token_quota=quota
        )
        agreement = agreement_services.agreement_send(actor=legal, agreement=agreement)
        sign(signatory, agreement)
        agreement.refresh_from_db()
        sign(legal, agreement)
    agreement.refresh_from_db()
    return agreement


def stage_world(legal, version, lab_admin, partner_a, partner_b) -> World:
    """The world above, built through the services (the overdue due date is moved back by hand)."""
    agreement_a = activate(legal, partner_a, version, ["gpt2"], quota=1_000)
    agreement_b = activate(legal, partner_b, version, ["gpt2"], quota=2_000)
    c = accounts.organization_create(
        actor=None, name="Partner C", legal_name="Partner C Labs SAS", jurisdiction="France"
    )
    d = accounts.organization_create(actor=None, name="Partner D", legal_name="Partner D Ltd", jurisdiction="Ireland")
    agreement_c = activate(legal, c, version, ["gpt2"])
    yesterday = timezone.now() - timedelta(days=1)
    Obligation.objects.filter(organization=partner_b, kind=Obligation.Kind.FINDINGS_REPORT).update(
        due_at=yesterday, original_due_at=yesterday
    )
    large = registry.checkpoint_embargo(
        actor=lab_admin, checkpoint=Checkpoint.objects.get(slug="gpt2-large"), reason="awaiting the stage review"
    )
    return World(
        lab_admin=lab_admin,
        a=partner_a,
        b=partner_b,
        c=c,
        d=d,
        agreement_a=agreement_a,
        agreement_b=agreement_b,
        agreement_c=agreement_c,
        large=large,
        gpt2=Checkpoint.objects.get(slug="gpt2"),
    )


@pytest.fixture
def world(published_version, lab_admin, legal, auditor, partner_a, partner_b, researcher_a, researcher_b) -> World:
    return stage_world(legal, published_version, lab_admin, partner_a, partner_b)


def decide(world: World, decision: str, *, checkpoint=None, partners=(), after=None, rationale=RATIONALE, actor=None):
    return release_decide(
        actor=actor or world.lab_admin,
        checkpoint=checkpoint or world.large,
        decision=decision,
        rationale=rationale,
        partners=list(partners),
        after=after,
    )


def nothing_written(world: World, events_before: int, agreements_before: int) -> None:
    assert not ReleaseDecision.objects.exists()
    assert AuditEvent.objects.count() == events_before
    assert Agreement.objects.count() == agreements_before
    assert Checkpoint.objects.get(pk=world.large.pk).status == Checkpoint.Status.EMBARGOED


# --- Each decision and its effect ----------------------------------------------------------------------


def test_releasing_to_a_named_partner_lifts_the_embargo_and_drafts_its_amendment(
    world, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        decision = decide(world, "release_to_partners", partners=[world.a])

    world.large.refresh_from_db()
    assert world.large.status == Checkpoint.Status.AVAILABLE
    amendment = decision.amendments.get()
    assert amendment.organization == world.a and amendment.amends == world.agreement_a
    assert amendment.status == Agreement.Status.DRAFT  # legal sends it; the partner signs as today
    assert set(amendment.checkpoints.values_list("slug", flat=True)) == {"gpt2", "gpt2-large"}
    assert list(decision.partners.all()) == [world.a]
    assert decision.rationale == RATIONALE and decision.decided_by == world.lab_admin
    assert decision.supersedes is None

    event = AuditEvent.objects.get(action=events.RELEASE_DECIDED)
    assert event.target_id == str(decision.pk)
    assert event.data["partners"] == ["Partner A"]
    assert event.data["amendments"] == {amendment.reference: "Partner A"}
    assert event.data["evidence_sha256"] == decision.evidence_sha256
    assert event.data["checkpoint_status"] == {"before": "embargoed", "after": "available"}
    # Nobody else was granted anything, and the sealed record was made once the decision committed.
    assert not AccessGrant.objects.filter(checkpoint=world.large).exists()
    record = SealedRecord.objects.get(kind=SealedRecord.Kind.STAGE_REVIEW_RECORD, release_decision=decision)
    assert record.status == SealedRecord.Status.READY, record.error


def test_the_stored_evidence_hashes_to_its_sha256_in_canonical_form(world):
    decision = decide(world, "keep_embargoed")
    decision.refresh_from_db()  # as stored (jsonb reorders keys; the canonical form does not care)
    assert hashlib.sha256(evidence_canonical_json(decision.evidence)).hexdigest() == decision.evidence_sha256
    assert decision.evidence["checkpoint"] == "gpt2-large"
    assert {p["name"] for p in decision.evidence["partners"]} == {"Partner A", "Partner B", "Partner C", "Partner D"}
    assert "rationale" not in str(decision.evidence)  # counts, not texts


def test_the_people_concerned_are_told(world, researcher_a, researcher_b, legal, auditor):
    decision = decide(world, "release_to_partners", partners=[world.a])
    told = set(Notification.objects.filter(kind=NotificationKind.RELEASE_DECIDED).values_list("user__email", flat=True))
    assert {researcher_a.email, legal.email, auditor.email, world.lab_admin.email} <= told
    assert researcher_b.email not in told
    partner_notice = Notification.objects.get(user=researcher_a)
    assert decision.amendments.get().reference in partner_notice.body
    assert "Partner C" not in partner_notice.body  # a partner hears only its own part


def test_a_partner_already_holding_a_live_grant_is_skipped_and_said_so(world):
    decision = decide(world, "release_to_partners", checkpoint=world.gpt2, partners=[world.a, world.c])
    assert not decision.amendments.exists()
    skipped = AuditEvent.objects.get(action=events.RELEASE_DECIDED).data["skipped"]
    assert skipped == {
        "Partner A": f"already holds a live grant under {world.agreement_a.reference}",
        "Partner C": f"already holds a live grant under {world.agreement_c.reference}",
    }


def test_releasing_to_all_partners_amends_every_partner_in_good_standing(world):
    decision = decide(world, "release_to_all_partners")
    assert {a.organization.name for a in decision.amendments.all()} == {"Partner A", "Partner C"}
    assert {o.name for o in decision.partners.all()} == {"Partner A", "Partner C"}
    assert not Agreement.objects.filter(organization__in=[world.b, world.d], amends__isnull=False).exists()


def test_keeping_an_available_checkpoint_embargoed_embargoes_it(world):
    medium = Checkpoint.objects.get(slug="gpt2-medium")
    decision = decide(world, "keep_embargoed", checkpoint=medium)
    medium.refresh_from_db()
    assert medium.status == Checkpoint.Status.EMBARGOED
    assert decision.reference in medium.status_reason
    assert AuditEvent.objects.filter(action=events.CHECKPOINT_EMBARGOED, target_id=str(medium.pk)).exists()


def test_a_withdrawn_checkpoint_is_refused_anything_but_keeping_it_embargoed(world):
    from inference.services import checkpoint_withdraw

    checkpoint_withdraw(actor=world.lab_admin, checkpoint=world.large, reason="Misuse found in the wild.")
    for decision in ("release_to_partners", "release_to_all_partners", "public_release"):
        partners = [world.a] if decision == "release_to_partners" else []
        with pytest.raises(ValidationError) as refused:
            decide(world, decision, partners=partners)
        assert "withdrawn" in str(refused.value.message_dict["decision"])
    kept = decide(world, "keep_embargoed")
    world.large.refresh_from_db()
    assert kept.decision == "keep_embargoed" and world.large.status == Checkpoint.Status.WITHDRAWN


def test_a_public_release_restores_marks_public_and_grants_every_active_agreement(world):
    decide(world, "public_release")
    world.large.refresh_from_db()
    assert world.large.status == Checkpoint.Status.AVAILABLE and world.large.public_since is not None
    granted = set(AccessGrant.objects.filter(checkpoint=world.large).values_list("organization__name", flat=True))
    assert granted == {"Partner A", "Partner B", "Partner C"}
    assert AuditEvent.objects.filter(action=events.CHECKPOINT_RELEASED_PUBLICLY, target_id=str(world.large.pk)).exists()
    assert AuditEvent.objects.get(action=events.RELEASE_DECIDED).data["public_grants"] == 3


# --- What is refused, with nothing written -------------------------------------------------------------


def test_a_partner_not_in_good_standing_is_refused_by_name_and_why(world):
    before = (AuditEvent.objects.count(), Agreement.objects.count())
    with pytest.raises(ValidationError) as refused:
        decide(world, "release_to_partners", partners=[world.a, world.b, world.d])
    message = " ".join(refused.value.message_dict["partners"])
    assert "Partner B (Findings report on gpt2" in message and "overdue since" in message
    assert "Partner D (no active agreement)" in message
    assert "Partner A" not in message
    nothing_written(world, *before)


def test_releasing_to_named_partners_needs_at_least_one(world):
    with pytest.raises(ValidationError) as refused:
        decide(world, "release_to_partners")
    assert refused.value.message_dict["partners"] == ["Choose the partners in good standing to release to."]


@pytest.mark.parametrize("rationale", ["", "   ", "Release it.", "\u200b" * 40])
def test_a_decision_without_a_real_rationale_is_refused(world, rationale):
    before = (AuditEvent.objects.count(), Agreement.objects.count())
    with pytest.raises(ValidationError) as refused:
        decide(world, "release_to_partners", partners=[world.a], rationale=rationale)
    assert "at least a sentence" in refused.value.message_dict["rationale"][0]
    nothing_written(world, *before)


def test_an_unknown_decision_is_refused(world):
    with pytest.raises(ValidationError) as refused:
        decide(world, "release_to_everyone")
    assert "keep_embargoed" in refused.value.message_dict["decision"][0]


def test_a_second_decision_made_on_stale_evidence_is_refused_with_nothing_written(world):
    first = decide(world, "keep_embargoed")
    before = (AuditEvent.objects.count(), Agreement.objects.count())
    # A second lab admin opened the review before the first decision and decides on what they saw.
    with pytest.raises(DecisionConflict) as conflict:
        decide(world, "release_to_partners", partners=[world.a], after=None)
    assert conflict.value.status == 409 and conflict.value.code == "decision_conflict"
    assert first.reference in conflict.value.message and "Nothing was recorded" in conflict.value.message
    assert ReleaseDecision.objects.count() == 1
    assert (AuditEvent.objects.count(), Agreement.objects.count()) == before

    second = decide(world, "release_to_partners", partners=[world.a], after=first)
    assert second.supersedes == first
    with pytest.raises(DecisionConflict):
        decide(world, "keep_embargoed", after=first)  # `first` is no longer the latest
    assert ReleaseDecision.objects.count() == 2


@pytest.mark.parametrize("persona", ["legal", "auditor", "admin_a", "signer_a", "researcher_b"])
def test_only_lab_admins_decide(request, world, persona):
    with pytest.raises(PermissionDenied):
        decide(world, "keep_embargoed", actor=request.getfixturevalue(persona))
    assert not ReleaseDecision.objects.exists()


# --- The evidence on a small known dataset ----------------------------------------------------------


def on_day(days_ago: int):
    return timezone.now() - timedelta(days=days_ago)


def test_the_evidence_counts_usage_jobs_findings_incidents_and_obligations(world, researcher_a, researcher_b, auditor):
    gpt2 = world.gpt2
    grant_a = world.agreement_a.grants.get(checkpoint=gpt2)
    grant_b = world.agreement_b.grants.get(checkpoint=gpt2)
    succeeded, failed = GenerationJob.Status.SUCCEEDED, GenerationJob.Status.FAILED
    make_job(grant_a, researcher_a, status=succeeded, tokens_generated=300, created_at=on_day(2))
    make_job(grant_a, researcher_a, status=succeeded, tokens_generated=200, created_at=on_day(2))
    make_job(grant_a, researcher_a, status=failed, tokens_generated=0, created_at=on_day(9))
    make_job(grant_b, researcher_b, status=succeeded, tokens_generated=50, created_at=on_day(2))
    make_job(grant_a, researcher_a, status=succeeded, tokens_generated=999, created_at=on_day(70))  # before the window
    other = world.agreement_a.grants.exclude(checkpoint=gpt2).first()
    assert other is None  # A holds gpt2 only: nothing on another checkpoint counts

    finding = Finding.objects.create(
        organization=world.a,
        author=researcher_a,
        title="Detectors miss short samples",
        category=Finding.Category.DETECTABILITY,
        summary="s",
        summary_html="<p>s</p>",
        status=Finding.Status.ACCEPTED,
    )
    finding.checkpoints.set([gpt2])
    elsewhere = Finding.objects.create(
        organization=world.b,
        author=researcher_b,
        title="About the large model",
        category=Finding.Category.BIAS,
        summary="s",
        summary_html="<p>s</p>",
    )
    elsewhere.checkpoints.set([world.large])
    incident = Incident.objects.create(
        organization=world.b,
        reporter=researcher_b,
        title="Spam campaign",
        description="d",
        discovered_at=on_day(3),
        created_at=on_day(2),
        severity=Incident.Severity.HIGH,
    )
    incident.checkpoints.set([gpt2])
    a_report = Obligation.objects.get(organization=world.a, kind=Obligation.Kind.FINDINGS_REPORT)
    Obligation.objects.filter(pk=a_report.pk).update(fulfilled_at=timezone.now(), fulfilment=finding.reference)

    review = stage_review(user=auditor, checkpoint=gpt2)
    rows = {p.organization.name: p for p in review.partners}
    days = review.days
    assert days == review_window(timezone.now()) and days[0].weekday() == 0 and len(days) >= 50

    two_days_ago = on_day(2).astimezone(UTC).date()
    a, b = rows["Partner A"], rows["Partner B"]
    assert a.tokens_by_day[days.index(two_days_ago)] == 500
    assert b.tokens_by_day[days.index(two_days_ago)] == 50
    assert (a.tokens_used, b.tokens_used, rows["Partner C"].tokens_used) == (500, 50, 0)
    # Each grant started 20 days ago: 21 days of quota (today included) in the window.
    assert (a.quota_capacity, b.quota_capacity) == (21 * 1_000, 21 * 2_000)
    assert a.quota_use == pytest.approx(500 / 21_000)
    assert (a.jobs, b.jobs) == (3, 1)

    weeks = {row.week: row.counts for row in review.jobs_by_week}
    monday = two_days_ago - timedelta(days=two_days_ago.weekday())
    nine_days_ago = on_day(9).astimezone(UTC).date()
    assert weeks[monday]["succeeded"] == 3
    assert weeks[nine_days_ago - timedelta(days=nine_days_ago.weekday())]["failed"] == 1
    assert review.jobs_total == 4 and len(review.jobs_by_week) == 8

    assert [f.title for f in review.findings] == ["Detectors miss short samples"]
    assert a.findings["accepted"] == 1 and b.findings_total == 0
    categories = {row.key: row.counts for row in review.findings_by_category}
    assert categories["detectability"]["accepted"] == 1 and categories["bias"]["submitted"] == 0
    assert [i.title for i in review.incidents_open] == ["Spam campaign"] and b.incidents_open == 1

    assert a.obligations == {"fulfilled": 1, "fulfilled_late": 0, "overdue": 0, "open": 1, "waived": 0}
    assert b.obligations == {"fulfilled": 0, "fulfilled_late": 0, "overdue": 1, "open": 1, "waived": 0}
    assert (a.good_standing, b.good_standing, rows["Partner D"].good_standing) == (True, False, False)
    assert "Findings report on gpt2" in b.standing_note and rows["Partner D"].standing_note == "no active agreement"
    assert a.live_grant == grant_a and rows["Partner D"].live_grant is None

    summary = stage_review_summary(review)
    assert summary["tokens_used"] == 550 and summary["jobs"]["by_status"]["succeeded"] == 3
    assert summary["findings"]["by_status"]["accepted"] == 1 and summary["incidents"]["open"] == 1
    assert evidence_sha256(summary) == evidence_sha256(stage_review_summary(review))  # stable


def test_the_review_costs_the_same_queries_however_much_data(world, researcher_a, auditor):
    grant = world.agreement_a.grants.get(checkpoint=world.gpt2)

    def grow(n: int) -> None:
        for i in range(n):
            make_job(grant, researcher_a, status="succeeded", tokens_generated=10, created_at=on_day(i % 40))
            finding = Finding.objects.create(
                organization=world.a,
                author=researcher_a,
                title=f"Finding {i}",
                category=Finding.Category.OTHER,
                summary="s",
                summary_html="<p>s</p>",
            )
            finding.checkpoints.set([world.gpt2])
            incident = Incident.objects.create(
                organization=world.a,
                reporter=researcher_a,
                title=f"Incident {i}",
                description="d",
                discovered_at=on_day(1),
                severity="low",
            )
            incident.checkpoints.set([world.gpt2])
        decide(world, "keep_embargoed", checkpoint=world.gpt2, after=ReleaseDecision.objects.first())

    counts = []
    for n in (1, 10):
        grow(n)
        with CaptureQueriesContext(connection) as queries:
            review = stage_review(user=auditor, checkpoint=world.gpt2)
            stage_review_summary(review)
        counts.append(len(queries))
    assert counts[0] == counts[1], counts


@pytest.mark.parametrize("persona", ["admin_a", "researcher_b"])
def test_partners_cannot_read_a_stage_review(request, world, persona):
    with pytest.raises(Http404):
        stage_review(user=request.getfixturevalue(persona), checkpoint=world.large)

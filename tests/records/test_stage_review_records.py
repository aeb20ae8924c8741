"""Stage review records (a release decision sealed as a PDF) and what an organisation's evidence bundle
says of its obligations, findings, incidents and the release decisions that concerned it."""

from __future__ import annotations

import hashlib
import io
import json
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from pypdf import PdfReader

from agreements.models import Obligation
from audit import events
from audit.models import AuditEvent
from records.models import SealedRecord
from records.selectors import evidence_bundle_data, evidence_ledger_json, record_file_bytes, record_verify
from records.services import record_export_request, record_export_run, record_seal_stage_review
from records.tasks import seal_stage_review
from research.models import Finding, FindingAttachment, FindingReview, Incident, ReleaseDecision
from research.selectors.releases import evidence_canonical_json
from research.services.releases import release_decide
from tests.records.conftest import pdf_text
from tests.research.test_releases import RATIONALE, World, stage_world

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(published_version, lab_admin, legal, auditor, partner_a, partner_b, researcher_a, researcher_b) -> World:
    return stage_world(legal, published_version, lab_admin, partner_a, partner_b)


@pytest.fixture
def decision(world) -> ReleaseDecision:
    """Release gpt2-large to Partner A (the test's transaction never commits: nothing is sealed yet)."""
    return release_decide(
        actor=world.lab_admin,
        checkpoint=world.large,
        decision="release_to_partners",
        rationale=RATIONALE,
        partners=[world.a],
        after=None,
    )


@pytest.fixture
def sealed(decision) -> SealedRecord:
    """What the task queued on commit does (run in-process here)."""
    assert seal_stage_review.delay(decision.pk).get() == "ready"
    return SealedRecord.objects.get(kind=SealedRecord.Kind.STAGE_REVIEW_RECORD, release_decision=decision)


def test_the_sealed_stage_review_record_verifies_and_states_the_decision(world, decision, sealed):
    assert sealed.status == SealedRecord.Status.READY, sealed.error
    data = record_file_bytes(sealed)
    verdict = record_verify(data)
    assert verdict.ok and verdict.record == sealed
    assert f"{decision.reference} (gpt2-large: release to named partners in good standing)" in verdict.reason

    text = pdf_text(data)
    amendment = decision.amendments.get()
    for expected in [
        f"{decision.reference}: release decision on gpt2-large",
        "Release to named partners in good standing",
        "detection study found no misuse at the 355M stage",
        f"Ada Admin ({world.lab_admin.email}), lab admin",
        f"{decision.decided_at:%Y-%m-%d %H:%M:%S} UTC",
        decision.evidence_sha256,
        "recomputed from the stored summary: it matches",
        f"{amendment.reference} for Partner A",
        f"Audit chain head #{sealed.chain_head_seq}",
        sealed.chain_head_hash,
    ]:
        assert expected in text, expected

    attachment = json.loads(PdfReader(io.BytesIO(data)).attachments["release-decision.json"][0])
    assert attachment["evidence_sha256"] == decision.evidence_sha256
    canonical = attachment["evidence_canonical_json"].encode()
    assert hashlib.sha256(canonical).hexdigest() == decision.evidence_sha256
    assert canonical == evidence_canonical_json(attachment["evidence"])
    assert attachment["decision"]["amendments"] == [amendment.reference]
    assert events.RELEASE_DECIDED in {event["action"] for event in attachment["events"]}

    sealed_event = AuditEvent.objects.get(action=events.RECORD_SEALED, target_id=str(sealed.pk))
    assert sealed_event.data["release_decision"] == decision.reference
    assert sealed_event.data["sha256"] == sealed.sha256


def test_a_redelivered_sealing_task_does_nothing(decision, sealed):
    assert seal_stage_review.delay(decision.pk).get() == "ready"  # the second delivery
    assert record_seal_stage_review(decision_id=decision.pk) == sealed
    assert SealedRecord.objects.filter(release_decision=decision).count() == 1
    assert AuditEvent.objects.filter(action=events.RECORD_SEALED, target_id=str(sealed.pk)).count() == 1
    assert record_export_run(record_id=sealed.pk) is None  # not an export: the export task leaves it alone


@pytest.mark.parametrize("persona", ["auditor", "legal", "lab_admin"])
def test_lab_staff_download_the_record_from_the_decision_link(client, request, decision, sealed, persona):
    client.force_login(request.getfixturevalue(persona))
    response = client.get(reverse("stage_review_record", args=[decision.pk]))
    assert response.status_code == 200 and response["Content-Type"] == "application/pdf"
    assert hashlib.sha256(response.content).hexdigest() == sealed.sha256
    assert f'filename="{decision.reference}-gpt2-large-stage-review.pdf"' in response["Content-Disposition"]
    home = client.get(reverse("records_home")).content.decode()
    assert "Stage review records" in home and decision.reference in home


@pytest.mark.parametrize("persona", ["admin_a", "researcher_a", "researcher_b"])
def test_partners_cannot_reach_stage_review_records(client, request, decision, sealed, persona):
    client.force_login(request.getfixturevalue(persona))
    assert client.get(reverse("stage_review_record", args=[decision.pk])).status_code == 404
    assert client.post(reverse("stage_review_record_seal", args=[decision.pk])).status_code == 404
    assert client.get(reverse("record_detail", args=[sealed.pk])).status_code == 403
    assert client.get(reverse("record_download", args=[sealed.pk])).status_code == 403


def test_a_record_not_sealed_yet_says_so_and_can_be_sealed(client, world, auditor, django_capture_on_commit_callbacks):
    decision = release_decide(  # committed without running the on-commit sealing
        actor=world.lab_admin, checkpoint=world.large, decision="keep_embargoed", rationale=RATIONALE, after=None
    )
    client.force_login(auditor)
    response = client.get(reverse("stage_review_record", args=[decision.pk]))
    assert response.status_code == 404 and "No sealed record yet" in response.content.decode()
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("stage_review_record_seal", args=[decision.pk]))
    assert response.status_code == 302
    assert SealedRecord.objects.get(release_decision=decision).status == SealedRecord.Status.READY
    response = client.post(reverse("stage_review_record_seal", args=[decision.pk]), follow=True)
    assert "already sealed" in response.content.decode()


# --- The evidence bundle ------------------------------------------------------------------------------


def add_research(world: World, researcher_a, legal, n: int = 1) -> None:
    """Findings (reviewed, with an attachment) and incidents of Partner A's, n of each."""
    for i in range(n):
        finding = Finding.objects.create(
            organization=world.a,
            author=researcher_a,
            title=f"Headlines fool raters {i}",
            category=Finding.Category.DETECTION,
            summary="s",
            summary_html="<p>s</p>",
            status=Finding.Status.ACCEPTED,
        )
        finding.checkpoints.set([world.gpt2])
        FindingReview.objects.create(finding=finding, actor=researcher_a, action="submitted")
        FindingReview.objects.create(finding=finding, actor=legal, action="accepted", comment="Thorough work.")
        FindingAttachment.objects.create(
            finding=finding,
            filename=f"paper-{i}.pdf",
            file_path=f"x/{i}.pdf",
            size_bytes=1234,
            sha256=f"{i:064x}",
            uploaded_by=researcher_a,
        )
        incident = Incident.objects.create(
            organization=world.a,
            reporter=researcher_a,
            title=f"Samples reposted as news {i}",
            description="d",
            discovered_at=timezone.now() - timedelta(hours=5),
            severity=Incident.Severity.MEDIUM,
        )
        incident.checkpoints.set([world.gpt2])


def test_the_bundle_holds_obligations_findings_incidents_and_release_decisions(
    world, decision, researcher_a, legal, auditor, django_capture_on_commit_callbacks
):
    add_research(world, researcher_a, legal)
    report = Obligation.objects.get(organization=world.a, kind=Obligation.Kind.FINDINGS_REPORT)
    later = report.due_at + timedelta(days=14)
    Obligation.objects.filter(pk=report.pk).update(
        due_at=later, extended_at=timezone.now(), extended_by=world.lab_admin, extension_reason="Data access delayed."
    )
    with django_capture_on_commit_callbacks(execute=True):
        record = record_export_request(actor=auditor, kind=SealedRecord.Kind.EVIDENCE_BUNDLE, organization=world.a)
    record.refresh_from_db()
    assert record.status == SealedRecord.Status.READY, record.error
    data = record_file_bytes(record)
    assert record_verify(data).ok
    text = pdf_text(data)
    finding = Finding.objects.get(organization=world.a)
    for expected in [
        "Obligations",
        report.reference,
        f"{later:%Y-%m-%d %H:%M}",  # due now
        f"{report.original_due_at:%Y-%m-%d %H:%M}",  # first due
        "Data access delayed.",
        finding.reference,
        "Accepted by legal@lab.example: Thorough work.",
        "0" * 63 + "0",  # the attachment's SHA-256
        "Samples reposted as news 0",
        decision.reference,
        "named as a partner",
        f"amendment {decision.amendments.get().reference} drafted",
        decision.evidence_sha256,
    ]:
        assert expected in text, expected

    ledger = json.loads(PdfReader(io.BytesIO(data)).attachments["evidence-ledger.json"][0])
    obligation = next(o for o in ledger["obligations"] if o["reference"] == report.reference)
    assert obligation["extension_reason"] == "Data access delayed." and obligation["state"] == "open"
    assert ledger["findings"][0]["attachments"][0]["sha256"] == "0" * 64
    assert [r["action"] for r in ledger["findings"][0]["reviews"]] == ["submitted", "accepted"]
    assert ledger["incidents"][0]["severity"] == "medium"
    [row] = ledger["release_decisions"]
    assert row["reference"] == decision.reference and row["named"] is True
    assert row["amendments"] == [decision.amendments.get().reference]


def test_a_bundle_of_an_organisation_no_decision_named_lists_none(world, decision):
    data = evidence_bundle_data(world.c.pk)
    assert data["release_decisions"] == []
    assert json.loads(evidence_ledger_json(data))["release_decisions"] == []


def test_the_bundle_costs_the_same_queries_however_much_research(world, decision, researcher_a, legal):
    counts = []
    for n in (1, 8):
        add_research(world, researcher_a, legal, n)
        with CaptureQueriesContext(connection) as queries:
            evidence_ledger_json(evidence_bundle_data(world.a.pk))
        counts.append(len(queries))
    assert counts[0] == counts[1], counts

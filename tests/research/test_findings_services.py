"""Findings through the services: who may submit and review, what is refused whole, what is stored and told.

Partner A has an active agreement for gpt2 and gpt2-medium (tests/builders.py), with the obligations its
activation scheduled; Partner B has none and is the outsider.
"""

from __future__ import annotations

import hashlib
import re
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.http import Http404
from django.utils import timezone

from accounts.models import Notification, NotificationKind
from agreements import services as agreement_services
from agreements.models import Agreement, Obligation
from agreements.selectors import access_check
from audit import events
from audit.models import AuditEvent
from inference.models import GenerationJob, Sample
from inference.services import checkpoint_withdraw
from models_registry.models import Checkpoint
from research.models import Finding, FindingAttachment, FindingReview
from research.services import findings as services
from research.services.findings import FindingStateChanged
from tests.builders import draft_agreement, end_agreement, make_job, sign, signatory_of

pytestmark = pytest.mark.django_db

SUMMARY = "Samples of gpt2 are mistaken for news articles by 61% of raters when the prompt is a headline."


def pdf(name: str = "paper.pdf", body: bytes = b"1.7\n% a short paper\n%%EOF\n") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, b"%PDF-" + body, content_type="application/pdf")


@pytest.fixture(autouse=True)
def findings_dir(settings, tmp_path) -> Path:
    settings.FINDINGS_DIR = tmp_path / "findings"
    return settings.FINDINGS_DIR


@pytest.fixture
def job_a(active, researcher_a) -> GenerationJob:
    """A job of Partner A's that succeeded, with two samples."""
    job = make_job(
        active.grants.get(checkpoint__slug="gpt2"),
        researcher_a,
        status=GenerationJob.Status.SUCCEEDED,
        tokens_generated=16,
        num_samples=2,
    )
    for index in range(2):
        text = f"Sample {index} of the study."
        Sample.objects.create(
            job=job, index=index, text=text, token_count=8, sha256=hashlib.sha256(text.encode()).hexdigest()
        )
    return job


def activate(legal, organization, version, slugs: list[str]) -> Agreement:
    """An active agreement for `organization`, drafted, sent, signed and countersigned through the services."""
    agreement = draft_agreement(legal, organization, version, list(Checkpoint.objects.filter(slug__in=slugs)))
    agreement = agreement_services.agreement_send(actor=legal, agreement=agreement)
    sign(signatory_of(organization), agreement)
    agreement.refresh_from_db()
    sign(legal, agreement)
    agreement.refresh_from_db()
    return agreement


@pytest.fixture
def active_b(legal, partner_b, signer_b, published_version, small_checkpoints) -> Agreement:
    partner_b.address = "Unter den Linden 1, 10117 Berlin"
    partner_b.save()
    return activate(legal, partner_b, published_version, ["gpt2"])


@pytest.fixture
def job_b(active_b, researcher_b) -> GenerationJob:
    """Partner B's own job, under its own agreement."""
    return make_job(active_b.grants.get(), researcher_b, status=GenerationJob.Status.SUCCEEDED, tokens_generated=8)


@pytest.fixture
def findings_report(active) -> Obligation:
    return Obligation.objects.get(agreement=active, kind=Obligation.Kind.FINDINGS_REPORT, checkpoint__slug="gpt2")


def submit(actor, **overrides) -> Finding:
    fields = {
        "title": "Headlines make gpt2 samples convincing",
        "category": Finding.Category.DETECTION,
        "checkpoints": [Checkpoint.objects.get(slug="gpt2")],
        "summary": SUMMARY,
        "cited_job_ids": [],
    }
    fields.update(overrides)
    return services.finding_submit(actor=actor, **fields)


def nothing_written(findings_dir: Path) -> None:
    assert not Finding.objects.exists()
    assert not FindingAttachment.objects.exists()
    assert not AuditEvent.objects.filter(action=events.FINDING_SUBMITTED).exists()
    assert not findings_dir.exists() or not any(p.is_file() for p in findings_dir.rglob("*"))


# --- Submitting ----------------------------------------------------------------------------------------


def test_a_partner_researcher_submits_a_finding_citing_its_own_job(
    researcher_a, legal, lab_admin, auditor, job_a, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        finding = submit(researcher_a, cited_job_ids=[job_a.pk])
    assert finding.status == Finding.Status.SUBMITTED
    assert finding.organization == researcher_a.membership.organization
    assert list(finding.cited_jobs.all()) == [job_a]
    assert [c.slug for c in finding.checkpoints.all()] == ["gpt2"]
    assert "<p>Samples of gpt2" in finding.summary_html
    assert list(finding.reviews.values_list("action", flat=True)) == [FindingReview.Action.SUBMITTED]
    event = AuditEvent.objects.get(action=events.FINDING_SUBMITTED)
    assert event.data["cited_jobs"] == [job_a.pk] and event.data["finding"] == finding.reference
    told = set(
        Notification.objects.filter(kind=NotificationKind.FINDING_SUBMITTED).values_list("user__email", flat=True)
    )
    assert told == {legal.email, lab_admin.email}  # not the auditor, who reviews nothing


def test_signatories_and_partner_admins_submit_findings_too(signer_a, admin_a, active):
    assert submit(signer_a).author == signer_a
    assert submit(admin_a).author == admin_a


@pytest.mark.parametrize("persona", ["legal", "lab_admin", "auditor"])
def test_the_lab_does_not_submit_findings(request, persona, active, findings_dir):
    with pytest.raises(PermissionDenied):
        submit(request.getfixturevalue(persona))
    nothing_written(findings_dir)


def test_a_finding_citing_another_organisations_job_is_refused_and_nothing_is_written(
    researcher_a, job_a, job_b, findings_dir
):
    with pytest.raises(Http404):
        submit(researcher_a, cited_job_ids=[job_a.pk, job_b.pk], attachments=[pdf()])
    nothing_written(findings_dir)


def test_a_finding_citing_a_job_that_does_not_exist_is_refused_the_same_way(researcher_a, job_a, findings_dir):
    with pytest.raises(Http404) as refused:
        submit(researcher_a, cited_job_ids=[job_a.pk + 1000])
    assert str(refused.value) == f"No job of your organisation numbered #{job_a.pk + 1000}."
    nothing_written(findings_dir)


def test_a_finding_about_a_checkpoint_never_granted_is_refused(researcher_a, active, findings_dir):
    with pytest.raises(ValidationError) as refused:
        submit(researcher_a, checkpoints=[Checkpoint.objects.get(slug="gpt2-xl")])
    assert "never held a grant for gpt2-xl" in refused.value.message_dict["checkpoints"][0]
    nothing_written(findings_dir)


def test_a_finding_about_a_checkpoint_whose_grant_was_revoked_is_accepted(researcher_a, active, lab_admin):
    checkpoint_withdraw(actor=lab_admin, checkpoint=Checkpoint.objects.get(slug="gpt2"), reason="Misuse found")
    assert submit(researcher_a).pk  # held a grant once: what it learnt still counts


def test_each_bad_field_is_named_at_once(researcher_a, active, findings_dir):
    with pytest.raises(ValidationError) as refused:
        submit(researcher_a, title=" ", category="gossip", checkpoints=[], summary="Too short.")
    assert set(refused.value.message_dict) == {"title", "category", "checkpoints", "summary"}
    nothing_written(findings_dir)


# --- The summary ------------------------------------------------------------------------------------------


def test_scripts_and_remote_images_are_stripped_from_the_summary(researcher_a, active):
    summary = (
        "## Results\n\nRaters were <b>fooled</b>.\n\n<script>alert('x')</script>\n\n![x](http://evil/x.png)\n\n"
        'See <img src="http://evil/y.png" onerror="alert(1)"> and [paper](javascript:alert(1)).'
    )
    finding = submit(researcher_a, summary=summary)
    stored = finding.summary_html
    assert "<h2>Results</h2>" in stored and "Raters were fooled." in stored
    # Raw HTML is dropped (a script block with its content), images too: only the allowlist's elements remain.
    elements = re.findall(r"<([a-z0-9]+)([^>]*)>", stored)
    assert {name for name, _ in elements} <= {"h2", "p"}, elements
    assert "script>" not in stored and "alert('x')" not in stored
    assert "evil" not in stored and "img" not in stored and 'href="javascript' not in stored
    assert finding.summary == summary  # what the author wrote is kept as written


def test_links_keep_http_and_mailto_and_are_marked_nofollow(researcher_a, active):
    finding = submit(researcher_a, summary="See [the data](https://example.org/data) or [mail us](mailto:a@b.example).")
    assert '<a href="https://example.org/data" rel="noopener nofollow noreferrer">the data</a>' in finding.summary_html
    assert 'href="mailto:a@b.example"' in finding.summary_html


def test_a_summary_over_50000_characters_is_refused(researcher_a, active, findings_dir):
    with pytest.raises(ValidationError) as refused:
        submit(researcher_a, summary="word " * 10_001)
    assert refused.value.message_dict["summary"] == ["Keep a summary to 50,000 characters (it has 50,004)."]
    nothing_written(findings_dir)


# --- Attachments ----------------------------------------------------------------------------------------


def test_a_pdf_attachment_is_stored_with_its_sha256(researcher_a, active, findings_dir):
    upload = pdf("Detection study (final).pdf")
    content = upload.read()
    finding = submit(researcher_a, attachments=[upload])
    (attachment,) = finding.attachments.all()
    assert attachment.sha256 == hashlib.sha256(content).hexdigest()
    assert attachment.size_bytes == len(content)
    assert attachment.filename == "Detection_study_final.pdf"
    assert (findings_dir / attachment.file_path).read_bytes() == content
    assert attachment.file_path.startswith(f"{finding.reference}/")
    assert not list(findings_dir.rglob("*.part"))  # written whole, then renamed


def test_a_file_that_is_not_a_pdf_is_refused_whatever_its_name(researcher_a, active, findings_dir):
    png = SimpleUploadedFile("paper.pdf", b"\x89PNG\r\n\x1a\n" + b"0" * 100, content_type="application/pdf")
    with pytest.raises(ValidationError) as refused:
        submit(researcher_a, attachments=[png])
    assert refused.value.message_dict["attachments"] == [
        "paper.pdf is not a PDF (its content does not start with %PDF-). Attach PDFs only."
    ]
    nothing_written(findings_dir)


def test_an_attachment_of_20_mb_and_one_byte_is_refused(settings, researcher_a, active, findings_dir):
    limit = settings.FINDING_ATTACHMENT_MAX_BYTES
    assert limit == 20 * 1024 * 1024
    with pytest.raises(ValidationError) as refused:
        submit(researcher_a, attachments=[pdf(body=b"0" * (limit - 5 + 1))])
    assert "each PDF may be at most 20 MB (20,971,520 bytes)" in refused.value.message_dict["attachments"][0]
    nothing_written(findings_dir)
    finding = submit(researcher_a, attachments=[pdf(body=b"0" * (limit - 5))])  # exactly 20 MB is fine
    assert finding.attachments.get().size_bytes == limit


def test_more_than_five_attachments_are_refused(researcher_a, active, findings_dir):
    with pytest.raises(ValidationError) as refused:
        submit(researcher_a, attachments=[pdf(f"{n}.pdf") for n in range(6)])
    assert refused.value.message_dict["attachments"] == ["Attach at most 5 PDFs to a finding."]
    nothing_written(findings_dir)


def test_files_written_before_a_failure_are_removed_with_the_transaction(
    monkeypatch, researcher_a, active, findings_dir
):
    def fail(**kwargs):
        raise RuntimeError("the audit chain is unreachable")

    monkeypatch.setattr(services, "audit_append", fail)  # after the files are written
    with pytest.raises(RuntimeError):
        submit(researcher_a, attachments=[pdf("a.pdf"), pdf("b.pdf")])
    nothing_written(findings_dir)


# --- Obligations ------------------------------------------------------------------------------------------


def test_a_finding_fulfils_its_obligation_and_paused_access_resumes(researcher_a, active, findings_report):
    yesterday = timezone.now() - timedelta(days=1)
    Obligation.objects.filter(pk=findings_report.pk).update(due_at=yesterday, original_due_at=yesterday)
    organization, gpt2 = researcher_a.membership.organization, Checkpoint.objects.get(slug="gpt2")
    assert access_check(organization=organization, checkpoint=gpt2).code == "obligation_overdue"

    finding = submit(researcher_a, obligation=findings_report)

    findings_report.refresh_from_db()
    assert finding.obligation == findings_report
    assert findings_report.fulfilled_by == researcher_a and findings_report.fulfilment == f"finding {finding.reference}"
    assert findings_report.fulfilled_late
    assert access_check(organization=organization, checkpoint=gpt2).allowed


def test_an_obligation_already_fulfilled_cannot_be_fulfilled_again(researcher_a, active, findings_report, findings_dir):
    submit(researcher_a, obligation=findings_report)
    with pytest.raises(ValidationError) as refused:
        submit(researcher_a, obligation=findings_report, attachments=[pdf()])
    assert refused.value.message_dict["obligation"] == [
        "Choose an open report obligation of your organisation, or none."
    ]
    assert Finding.objects.count() == 1 and not FindingAttachment.objects.exists()


def test_another_organisations_obligation_is_refused(researcher_b, active_b, findings_report):
    with pytest.raises(ValidationError) as refused:
        submit(researcher_b, obligation=findings_report)
    assert "obligation" in refused.value.message_dict
    findings_report.refresh_from_db()
    assert findings_report.is_open


# --- A planned publication ---------------------------------------------------------------------------------


def test_a_planned_publication_opens_a_review_due_in_the_agreed_days(researcher_a, active):
    days = active.template_version.prepublication_review_days
    publish_on = timezone.now().date() + timedelta(days=days + 10)
    before = timezone.now()
    finding = submit(researcher_a, publication_venue="ACL 2027", publication_date=publish_on)
    assert finding.publication_review == Finding.PublicationReview.PENDING
    assert before + timedelta(days=days) <= finding.publication_review_due_at <= timezone.now() + timedelta(days=days)
    kept = Obligation.objects.get(kind=Obligation.Kind.PREPUBLICATION_REVIEW)
    assert kept.organization == finding.organization and kept.agreement == active
    assert kept.due_at.date() == publish_on - timedelta(days=days) and kept.due_at.hour == 0
    assert kept.fulfilled_at is not None and not kept.fulfilled_late
    assert kept.fulfilment.startswith(f"finding {finding.reference} shared on ")
    assert AuditEvent.objects.get(action=events.FINDING_SUBMITTED).data["publication"]["obligation"] == kept.reference


def test_a_publication_date_too_soon_is_refused_naming_the_days_and_the_earliest_date(
    researcher_a, active, findings_dir
):
    days = active.template_version.prepublication_review_days
    earliest = timezone.now().date() + timedelta(days=days + 1)
    with pytest.raises(ValidationError) as refused:
        submit(researcher_a, publication_venue="arXiv", publication_date=earliest - timedelta(days=1))
    (message,) = refused.value.message_dict["publication_date"]
    assert (
        f"at least {days} days before" in message and f"earliest publication date now is {earliest:%Y-%m-%d}" in message
    )
    nothing_written(findings_dir)
    assert not Obligation.objects.filter(kind=Obligation.Kind.PREPUBLICATION_REVIEW).exists()
    assert submit(researcher_a, publication_venue="arXiv", publication_date=earliest).publication_review == "pending"


def test_a_venue_needs_a_date_and_a_date_a_venue(researcher_a, active):
    with pytest.raises(ValidationError) as refused:
        submit(researcher_a, publication_venue="NeurIPS")
    assert "publication_date" in refused.value.message_dict
    with pytest.raises(ValidationError) as refused:
        submit(researcher_a, publication_date=timezone.now().date() + timedelta(days=200))
    assert "publication_venue" in refused.value.message_dict


def test_a_publication_is_refused_without_an_active_agreement(researcher_b, active_b):
    end_agreement(active_b, "terminate", "terminated for the test")
    with pytest.raises(ValidationError) as refused:
        submit(researcher_b, publication_venue="ACL", publication_date=timezone.now().date() + timedelta(days=300))
    assert "no active agreement" in refused.value.message_dict["publication_date"][0]


# --- The lab's review -----------------------------------------------------------------------------------------


def test_legal_acknowledges_asks_for_changes_and_accepts_the_revision(
    researcher_a, legal, lab_admin, active, django_capture_on_commit_callbacks
):
    finding = submit(researcher_a)
    with django_capture_on_commit_callbacks(execute=True):
        services.finding_review(actor=legal, finding=finding, action="acknowledge", comment="")
        services.finding_review(
            actor=legal, finding=finding, action="request_changes", comment="Say how many raters took part."
        )
    finding.refresh_from_db()
    assert finding.status == Finding.Status.CHANGES_REQUESTED
    told = Notification.objects.filter(kind=NotificationKind.FINDING_REVIEWED, user=researcher_a)
    assert [n.title for n in told.order_by("pk")] == [
        f"The lab acknowledged {finding.reference}",
        f"The lab asks for changes to {finding.reference}",
    ]
    assert "Say how many raters took part." in told.order_by("pk").last().body

    services.finding_revise(
        actor=researcher_a,
        finding=finding,
        summary=SUMMARY + " 240 raters took part.",
        note="Added the raters.",
        attachments=[pdf()],
    )
    finding.refresh_from_db()
    assert finding.status == Finding.Status.SUBMITTED and finding.attachments.count() == 1
    services.finding_review(actor=lab_admin, finding=finding, action="accept", comment="Thank you.")
    finding.refresh_from_db()
    assert finding.status == Finding.Status.ACCEPTED
    assert list(finding.reviews.values_list("action", flat=True)) == [
        "submitted",
        "acknowledged",
        "changes_requested",
        "resubmitted",
        "accepted",
    ]
    actions = list(
        AuditEvent.objects.filter(action__startswith="finding.").order_by("seq").values_list("action", flat=True)
    )
    assert actions == [
        events.FINDING_SUBMITTED,
        events.FINDING_REVIEWED,
        events.FINDING_REVIEWED,
        events.FINDING_RESUBMITTED,
        events.FINDING_REVIEWED,
    ]


def test_requesting_changes_needs_a_comment(researcher_a, legal, active):
    finding = submit(researcher_a)
    with pytest.raises(ValidationError) as refused:
        services.finding_review(actor=legal, finding=finding, action="request_changes", comment="  ")
    assert "comment" in refused.value.message_dict
    finding.refresh_from_db()
    assert finding.status == Finding.Status.SUBMITTED and finding.reviews.count() == 1


def test_a_stale_review_is_refused_and_changes_nothing(researcher_a, legal, lab_admin, active):
    finding = submit(researcher_a)
    seen_by_legal = Finding.objects.get(pk=finding.pk)  # legal's page, loaded before the lab admin acted
    services.finding_review(actor=lab_admin, finding=finding, action="accept", comment="")
    with pytest.raises(FindingStateChanged) as refused:
        services.finding_review(actor=legal, finding=seen_by_legal, action="acknowledge", comment="")
    assert refused.value.status == 409
    assert refused.value.message == f"{finding.reference} is already accepted; it cannot be acknowledged."
    assert finding.reviews.count() == 2
    assert AuditEvent.objects.filter(action=events.FINDING_REVIEWED).count() == 1


@pytest.mark.django_db(transaction=True)
def test_two_reviewers_at_once_cannot_both_move_the_same_finding(gpt2_stages, researcher_a, legal, lab_admin, active):
    finding = submit(researcher_a)
    barrier = threading.Barrier(2)
    outcomes: dict[str, str] = {}

    def review(actor, action: str, comment: str) -> None:
        try:
            barrier.wait()
            services.finding_review(actor=actor, finding=finding, action=action, comment=comment)
            outcomes[action] = "done"
        except FindingStateChanged as exc:
            outcomes[action] = exc.message
        finally:
            connection.close()

    threads = [
        threading.Thread(target=review, args=(legal, "accept", "")),
        threading.Thread(target=review, args=(lab_admin, "request_changes", "Name the raters' recruitment.")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(outcomes) == 2 and list(outcomes.values()).count("done") == 1, outcomes
    (refusal,) = [outcome for outcome in outcomes.values() if outcome != "done"]
    assert refusal.startswith(f"{finding.reference} is ")
    finding.refresh_from_db()
    assert finding.reviews.exclude(action="submitted").count() == 1


@pytest.mark.parametrize("persona", ["researcher_a", "auditor"])
def test_only_legal_and_lab_admins_review(request, persona, researcher_a, active):
    finding = submit(researcher_a)
    with pytest.raises(PermissionDenied):
        services.finding_review(actor=request.getfixturevalue(persona), finding=finding, action="accept")
    with pytest.raises(PermissionDenied):
        services.finding_publication_review(actor=request.getfixturevalue(persona), finding=finding, objection=False)


def test_a_finding_is_revised_only_when_changes_were_asked_for(researcher_a, legal, active):
    finding = submit(researcher_a)
    with pytest.raises(FindingStateChanged) as refused:
        services.finding_revise(actor=researcher_a, finding=finding, summary=SUMMARY + " More.")
    assert "waiting for the lab's review" in refused.value.message


def test_another_organisation_cannot_revise(researcher_a, researcher_b, legal, active):
    finding = submit(researcher_a)
    services.finding_review(actor=legal, finding=finding, action="request_changes", comment="More detail please.")
    with pytest.raises(PermissionDenied):
        services.finding_revise(actor=researcher_b, finding=finding, summary=SUMMARY + " Changed.")


def test_a_revision_keeps_to_five_attachments_in_all(researcher_a, legal, active):
    finding = submit(researcher_a, attachments=[pdf(f"{n}.pdf") for n in range(4)])
    services.finding_review(actor=legal, finding=finding, action="request_changes", comment="Add the appendix.")
    with pytest.raises(ValidationError) as refused:
        services.finding_revise(actor=researcher_a, finding=finding, summary=SUMMARY, attachments=[pdf(), pdf()])
    assert refused.value.message_dict["attachments"] == [
        "Attach at most 5 PDFs to a finding (4 attached already, so 1 more)."
    ]
    finding.refresh_from_db()
    assert finding.status == Finding.Status.CHANGES_REQUESTED and finding.attachments.count() == 4


# --- The pre-publication review --------------------------------------------------------------------------


@pytest.fixture
def paper(researcher_a, active) -> Finding:
    days = active.template_version.prepublication_review_days
    return submit(
        researcher_a, publication_venue="ACL 2027", publication_date=timezone.now().date() + timedelta(days=days + 5)
    )


def test_the_lab_answers_no_objection(legal, researcher_a, paper, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        services.finding_publication_review(actor=legal, finding=paper, objection=False)
    paper.refresh_from_db()
    assert paper.publication_review == Finding.PublicationReview.NO_OBJECTION
    assert paper.publication_reviewed_by == legal and paper.status == Finding.Status.SUBMITTED
    assert Notification.objects.get(user=researcher_a).title == f"No objection to publishing {paper.reference}"
    assert AuditEvent.objects.get(action=events.FINDING_PUBLICATION_REVIEWED).data["late"] is False


def test_an_objection_needs_reasons_and_the_partner_reads_them(legal, researcher_a, paper):
    with pytest.raises(ValidationError) as refused:
        services.finding_publication_review(actor=legal, finding=paper, objection=True, reasons="")
    assert "reasons" in refused.value.message_dict
    services.finding_publication_review(
        actor=legal, finding=paper, objection=True, reasons="Section 4 reproduces unreleased prompts."
    )
    paper.refresh_from_db()
    assert paper.publication_review == Finding.PublicationReview.OBJECTION
    assert paper.publication_review_reasons == "Section 4 reproduces unreleased prompts."
    assert paper.reviews.last().action == FindingReview.Action.OBJECTION


def test_a_publication_is_answered_once(legal, lab_admin, paper):
    services.finding_publication_review(actor=legal, finding=paper, objection=False)
    with pytest.raises(FindingStateChanged) as refused:
        services.finding_publication_review(actor=lab_admin, finding=paper, objection=True, reasons="Too late now.")
    assert refused.value.message == (
        f"{paper.reference} is already answered (no objection); there is no pre-publication review to answer."
    )


def test_a_finding_without_a_planned_publication_has_nothing_to_answer(legal, researcher_a, active):
    finding = submit(researcher_a)
    with pytest.raises(FindingStateChanged):
        services.finding_publication_review(actor=legal, finding=finding, objection=False)

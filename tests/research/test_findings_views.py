"""The findings pages for every persona: the list, the form and its refusals next to the fields, one finding
with the lab's review forms, the revision, and attachment downloads."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone

from agreements.models import Obligation
from audit import events
from audit.models import AuditEvent
from models_registry.models import Checkpoint
from research.models import Finding, FindingAttachment
from research.selectors.findings import research_home
from research.services import findings as services
from tests.research import test_findings_services as shared
from tests.research.test_findings_services import SUMMARY, pdf, submit

pytestmark = pytest.mark.django_db

# Fixtures shared with the services tests.
active_b = shared.active_b
findings_dir = shared.findings_dir
findings_report = shared.findings_report
job_a = shared.job_a
job_b = shared.job_b


def form(gpt2: Checkpoint, **overrides) -> dict:
    data = {
        "title": "Headlines make gpt2 samples convincing",
        "category": Finding.Category.DETECTION,
        "checkpoints": [str(gpt2.pk)],
        "summary": SUMMARY,
        "publication_venue": "",
        "publication_date": "",
    }
    data.update(overrides)
    return data


@pytest.fixture
def gpt2(active) -> Checkpoint:
    return Checkpoint.objects.get(slug="gpt2")


@pytest.fixture
def finding(researcher_a, active) -> Finding:
    return submit(researcher_a, attachments=[pdf("study.pdf")])


# --- The list ------------------------------------------------------------------------------------------


def test_partners_list_their_own_findings_and_the_lab_lists_every_partners(
    client, researcher_a, researcher_b, legal, auditor, finding
):
    client.force_login(researcher_a)
    page = client.get(reverse("finding_list"))
    assert page.status_code == 200 and finding.reference in page.content.decode()
    assert "Partner</label>" not in page.content.decode()  # no partner filter for partners
    client.force_login(researcher_b)
    page = client.get(reverse("finding_list"))
    assert page.status_code == 200 and finding.reference not in page.content.decode()
    for reader in (legal, auditor):
        client.force_login(reader)
        page = client.get(reverse("finding_list"), {"status": "submitted", "checkpoint": "gpt2"})
        assert page.status_code == 200 and finding.reference in page.content.decode()
        assert "1</strong> waits for the lab" in page.content.decode()


def test_a_bad_filter_is_answered_next_to_it(client, legal, finding):
    client.force_login(legal)
    page = client.get(reverse("finding_list"), {"status": "lost"})
    assert page.status_code == 400 and "Choose a state from the list." in page.content.decode()


# --- The form ------------------------------------------------------------------------------------------


def test_the_form_offers_the_organisations_checkpoints_jobs_and_open_obligations(
    client, researcher_a, job_a, findings_report
):
    client.force_login(researcher_a)
    page = client.get(reverse("finding_create"), {"obligation": findings_report.pk})
    html = page.content.decode()
    assert page.status_code == 200
    assert f'value="{job_a.pk}"' in html and f"Job #{job_a.pk}" in html
    assert f'<option value="{findings_report.pk}" selected>{findings_report.reference}' in html
    assert "gpt2-medium" in html and "gpt2-xl" not in html
    assert 'enctype="multipart/form-data"' in html


@pytest.mark.parametrize("persona", ["legal", "lab_admin", "auditor"])
def test_the_lab_gets_no_finding_form(request, client, persona, active):
    client.force_login(request.getfixturevalue(persona))
    assert client.get(reverse("finding_create")).status_code == 403
    assert client.post(reverse("finding_create"), {}).status_code == 403


def test_a_researcher_submits_a_finding_with_a_pdf_a_job_and_an_obligation(
    client, researcher_a, gpt2, job_a, findings_report
):
    client.force_login(researcher_a)
    upload = pdf("results.pdf")
    data = form(gpt2, cited_jobs=[str(job_a.pk)], obligation=str(findings_report.pk), attachments=[upload])
    response = client.post(reverse("finding_create"), data)
    finding = Finding.objects.get()
    assert response.status_code == 302 and response["Location"] == reverse("finding_detail", args=[finding.pk])
    assert list(finding.cited_jobs.all()) == [job_a] and finding.attachments.get().filename == "results.pdf"
    findings_report.refresh_from_db()
    assert findings_report.fulfilment == f"finding {finding.reference}"
    page = client.get(response["Location"])
    assert f"{finding.reference} submitted" in page.content.decode()
    assert f"fulfils {findings_report.reference}".lower() in page.content.decode().lower()


def test_a_form_citing_another_organisations_job_is_404_and_writes_nothing(client, researcher_a, gpt2, job_b):
    client.force_login(researcher_a)
    response = client.post(reverse("finding_create"), form(gpt2, cited_jobs=[str(job_b.pk)], attachments=[pdf()]))
    assert response.status_code == 404
    assert not Finding.objects.exists() and not FindingAttachment.objects.exists()


@pytest.mark.parametrize(
    "overrides,field,message",
    [
        ({"title": ""}, "title", "Give the finding a title."),
        ({"category": ""}, "category", "Choose a category."),
        ({"checkpoints": []}, "checkpoints", "Choose the checkpoints this finding is about."),
        ({"summary": "Too short."}, "summary", "Write a summary of at least 20 characters."),
        ({"publication_venue": "ACL"}, "publication_date", "Give the date you intend to publish at this venue."),
        ({"publication_date": "someday"}, "publication_date", "Enter a date, such as 2027-03-01."),
    ],
)
def test_each_bad_input_is_answered_next_to_its_field(client, researcher_a, gpt2, overrides, field, message):
    client.force_login(researcher_a)
    response = client.post(reverse("finding_create"), form(gpt2, **overrides))
    assert response.status_code == 400
    assert message in str(response.context["form"].errors[field])
    assert message in response.content.decode()
    assert not Finding.objects.exists()


def test_a_non_pdf_attachment_is_refused_next_to_the_field(client, researcher_a, gpt2, findings_dir):
    from django.core.files.uploadedfile import SimpleUploadedFile

    client.force_login(researcher_a)
    fake = SimpleUploadedFile("paper.pdf", b"<html>not a pdf</html>", content_type="application/pdf")
    response = client.post(reverse("finding_create"), form(gpt2, attachments=[fake]))
    assert response.status_code == 400
    assert "paper.pdf is not a PDF" in str(response.context["form"].errors["attachments"])
    assert not Finding.objects.exists() and not findings_dir.exists()


def test_a_publication_date_too_soon_names_the_earliest_date_next_to_the_field(client, researcher_a, gpt2, active):
    days = active.template_version.prepublication_review_days
    earliest = timezone.now().date() + timedelta(days=days + 1)
    client.force_login(researcher_a)
    data = form(gpt2, publication_venue="arXiv", publication_date=(earliest - timedelta(days=3)).isoformat())
    response = client.post(reverse("finding_create"), data)
    assert response.status_code == 400
    assert f"the earliest publication date now is {earliest:%Y-%m-%d}" in str(
        response.context["form"].errors["publication_date"]
    )


def test_an_upload_declaring_more_than_five_full_attachments_is_refused_unread(client, researcher_a, gpt2):
    client.force_login(researcher_a)
    response = client.post(
        reverse("finding_create"), form(gpt2), CONTENT_LENGTH=str(5 * 20 * 1024 * 1024 + 2 * 1024 * 1024)
    )
    assert response.status_code == 413
    assert "attach at most 5 PDFs" in response.content.decode()
    assert not Finding.objects.exists()


# --- One finding --------------------------------------------------------------------------------------


def test_the_finding_page_shows_the_summary_jobs_samples_attachments_and_history(
    client, researcher_a, legal, auditor, job_a
):
    finding = submit(researcher_a, cited_job_ids=[job_a.pk], attachments=[pdf("study.pdf")])
    attachment = finding.attachments.get()
    for reader in (researcher_a, legal, auditor):
        client.force_login(reader)
        page = client.get(reverse("finding_detail", args=[finding.pk]))
        html = page.content.decode()
        assert page.status_code == 200
        assert "<p>Samples of gpt2 are mistaken" in html
        assert reverse("job_detail", args=[job_a.pk]) in html
        for sample in job_a.samples.all():
            assert sample.sha256 in html
        assert (
            attachment.sha256 in html
            and reverse("finding_attachment_download", args=[finding.pk, attachment.pk]) in html
        )
        assert "Submitted</strong> by Ravi Researcher" in html
    client.force_login(legal)
    assert "Your review" in client.get(reverse("finding_detail", args=[finding.pk])).content.decode()
    client.force_login(auditor)
    assert "Your review" not in client.get(reverse("finding_detail", args=[finding.pk])).content.decode()


def test_the_outsider_gets_404_for_every_finding_page(client, researcher_b, finding):
    attachment = finding.attachments.get()
    client.force_login(researcher_b)
    for url in (
        reverse("finding_detail", args=[finding.pk]),
        reverse("finding_revise", args=[finding.pk]),
        reverse("finding_attachment_download", args=[finding.pk, attachment.pk]),
    ):
        assert client.get(url).status_code == 404, url
    for url in (reverse("finding_review", args=[finding.pk]), reverse("finding_publication_review", args=[finding.pk])):
        assert client.post(url, {"action": "accept", "answer": "no_objection"}).status_code == 404, url
    finding.refresh_from_db()
    assert finding.status == Finding.Status.SUBMITTED


def test_the_auditor_reads_but_cannot_review(client, auditor, finding):
    client.force_login(auditor)
    assert client.post(reverse("finding_review", args=[finding.pk]), {"action": "accept"}).status_code == 403
    assert (
        client.post(reverse("finding_publication_review", args=[finding.pk]), {"answer": "no_objection"}).status_code
        == 403
    )
    finding.refresh_from_db()
    assert finding.status == Finding.Status.SUBMITTED


def test_legal_requests_changes_with_a_comment_and_the_partner_revises(client, legal, researcher_a, finding):
    client.force_login(legal)
    url = reverse("finding_review", args=[finding.pk])
    response = client.post(url, {"action": "request_changes", "comment": ""})
    assert response.status_code == 400 and "Write what should change" in response.content.decode()
    response = client.post(url, {"action": "request_changes", "comment": "Say how raters were recruited."})
    assert response.status_code == 302
    finding.refresh_from_db()
    assert finding.status == Finding.Status.CHANGES_REQUESTED

    client.force_login(researcher_a)
    page = client.get(reverse("finding_revise", args=[finding.pk]))
    assert page.status_code == 200 and "Say how raters were recruited." in page.content.decode()
    response = client.post(
        reverse("finding_revise", args=[finding.pk]),
        {"title": finding.title, "summary": SUMMARY + " Raters came from a panel.", "note": "Added recruitment."},
    )
    assert response.status_code == 302
    finding.refresh_from_db()
    assert finding.status == Finding.Status.SUBMITTED and "panel" in finding.summary_html


def test_the_lab_cannot_open_the_revision_form(client, legal, finding):
    client.force_login(legal)
    assert client.get(reverse("finding_revise", args=[finding.pk])).status_code == 403


def test_a_finding_not_sent_back_is_not_revised(client, researcher_a, finding):
    client.force_login(researcher_a)
    response = client.get(reverse("finding_revise", args=[finding.pk]))
    assert response.status_code == 302 and response["Location"] == reverse("finding_detail", args=[finding.pk])


def test_a_stale_review_is_a_409_that_says_why(client, legal, lab_admin, finding):
    services.finding_review(actor=lab_admin, finding=finding, action="accept")
    client.force_login(legal)
    response = client.post(reverse("finding_review", args=[finding.pk]), {"action": "acknowledge", "comment": ""})
    assert response.status_code == 409
    assert f"{finding.reference} is already accepted; it cannot be acknowledged." in response.content.decode()


def test_legal_answers_a_planned_publication(client, legal, researcher_a, active):
    days = active.template_version.prepublication_review_days
    paper = submit(researcher_a, publication_venue="ACL", publication_date=timezone.now().date() + timedelta(days + 3))
    client.force_login(legal)
    page = client.get(reverse("finding_detail", args=[paper.pk]))
    assert "Answer the planned publication" in page.content.decode()
    url = reverse("finding_publication_review", args=[paper.pk])
    response = client.post(url, {"answer": "objection", "reasons": ""})
    assert response.status_code == 400 and "reasons for the objection" in response.content.decode()
    response = client.post(url, {"answer": "objection", "reasons": "Section 4 quotes unreleased prompts."})
    assert response.status_code == 302
    paper.refresh_from_db()
    assert paper.publication_review == Finding.PublicationReview.OBJECTION
    assert client.post(url, {"answer": "no_objection"}).status_code == 409


# --- Attachment downloads -----------------------------------------------------------------------------


@pytest.mark.parametrize("persona", ["researcher_a", "signer_a", "legal", "lab_admin", "auditor"])
def test_an_attachment_downloads_as_a_sandboxed_pdf_and_is_audited(request, client, persona, finding):
    attachment = finding.attachments.get()
    reader = request.getfixturevalue(persona)
    client.force_login(reader)
    response = client.get(reverse("finding_attachment_download", args=[finding.pk, attachment.pk]))
    assert response.status_code == 200
    content = b"".join(response.streaming_content)
    assert hashlib.sha256(content).hexdigest() == attachment.sha256
    assert response["Content-Type"] == "application/pdf"
    assert response["Content-Disposition"] == 'attachment; filename="study.pdf"'
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Content-Security-Policy"].startswith("sandbox")
    event = AuditEvent.objects.get(action=events.FINDING_ATTACHMENT_DOWNLOADED)
    assert event.actor == reader and event.data["sha256"] == attachment.sha256


def test_a_missing_attachment_file_is_404_not_500(client, researcher_a, finding, findings_dir):
    attachment = finding.attachments.get()
    (findings_dir / attachment.file_path).unlink()
    client.force_login(researcher_a)
    assert client.get(reverse("finding_attachment_download", args=[finding.pk, attachment.pk])).status_code == 404
    assert not AuditEvent.objects.filter(action=events.FINDING_ATTACHMENT_DOWNLOADED).exists()


def test_an_attachment_is_reached_only_through_its_own_finding(client, researcher_a, finding):
    other = submit(researcher_a)
    client.force_login(researcher_a)
    url = reverse("finding_attachment_download", args=[other.pk, finding.attachments.get().pk])
    assert client.get(url).status_code == 404


# --- Home cards ---------------------------------------------------------------------------------------


def test_the_home_cards_show_the_partners_findings_and_the_labs_queue(researcher_a, legal, auditor, finding):
    partner = render_to_string("research/_home_findings.html", research_home(user=researcher_a))
    assert finding.reference in partner and "New finding" in partner
    for lab_user in (legal, auditor):
        lab = render_to_string("research/_home_findings.html", research_home(user=lab_user))
        assert "<strong>1</strong> finding waits for review" in lab and finding.reference in lab
        incidents = render_to_string("research/_home_incidents.html", research_home(user=lab_user))
        assert "No open incidents." in incidents


def test_the_obligation_card_lists_what_a_partner_owes(researcher_a, findings_report):
    # Only open report obligations are offered: the incident and pre-publication kinds are recorded kept.
    assert set(Obligation.objects.filter(organization=findings_report.organization).values_list("kind", flat=True)) <= {
        Obligation.Kind.FINDINGS_REPORT,
        Obligation.Kind.FINAL_REPORT,
    }

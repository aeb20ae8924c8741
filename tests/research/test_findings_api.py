"""POST and GET /api/v1/findings/, GET /api/v1/findings/{id}/: JSON or multipart, refusals in the one error shape."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from research.models import Finding, FindingAttachment
from research.services import findings as services
from tests.api import conftest as api_conftest
from tests.api.conftest import error_of
from tests.research import test_findings_services as shared
from tests.research.test_findings_services import SUMMARY, pdf, submit

pytestmark = pytest.mark.django_db
api = api_conftest.api  # the API clients' fixture

# Fixtures shared with the services tests.
active_b = shared.active_b
findings_dir = shared.findings_dir
findings_report = shared.findings_report
job_a = shared.job_a
job_b = shared.job_b


def body(**overrides) -> dict:
    data = {
        "title": "Headlines make gpt2 samples convincing",
        "category": "human_detection",
        "checkpoints": ["gpt2"],
        "summary": SUMMARY,
    }
    data.update(overrides)
    return data


def test_a_partner_submits_a_finding_as_json(api, researcher_a, job_a, findings_report):
    response = api(researcher_a).post(
        "/api/v1/findings/", body(cited_jobs=[job_a.pk], obligation=findings_report.pk), format="json"
    )
    assert response.status_code == 201, response.json()
    data = response.json()
    finding = Finding.objects.get()
    assert response["Location"] == f"/api/v1/findings/{finding.pk}/"
    assert data["reference"] == finding.reference and data["status"] == "submitted"
    assert data["cited_jobs"] == [job_a.pk] and data["checkpoints"] == ["gpt2"]
    assert data["obligation"] == findings_report.reference
    assert data["summary_html"].startswith("<p>Samples of gpt2")
    assert [review["action"] for review in data["reviews"]] == ["submitted"]


def test_a_partner_submits_a_finding_with_pdfs_as_multipart(api, researcher_a, active):
    first, second = pdf("a.pdf", b"1.4 first"), pdf("b.pdf", b"1.4 second")
    expected = [hashlib.sha256(upload.read()).hexdigest() for upload in (first, second)]
    first.seek(0)
    second.seek(0)
    days = active.template_version.prepublication_review_days
    publish_on = (timezone.now().date() + timedelta(days=days + 2)).isoformat()
    response = api(researcher_a).post(
        "/api/v1/findings/",
        {**body(), "attachments": [first, second], "publication_venue": "arXiv", "publication_date": publish_on},
        format="multipart",
    )
    assert response.status_code == 201, response.json()
    data = response.json()
    assert [a["sha256"] for a in data["attachments"]] == expected
    assert [a["size_bytes"] for a in data["attachments"]] == [len(b"%PDF-1.4 first"), len(b"%PDF-1.4 second")]
    assert data["publication_review"] == "pending" and data["publication_review_due_at"]


def test_citing_another_organisations_job_is_404_and_nothing_is_written(api, researcher_a, job_a, job_b):
    response = api(researcher_a).post(
        "/api/v1/findings/",
        {**body(), "cited_jobs": [job_a.pk, job_b.pk], "attachments": [pdf()]},
        format="multipart",
    )
    assert response.status_code == 404 and error_of(response)["code"] == "not_found"
    assert not Finding.objects.exists() and not FindingAttachment.objects.exists()


def test_a_non_pdf_is_400_naming_the_field(api, researcher_a, active):
    fake = SimpleUploadedFile("paper.pdf", b"GIF89a....", content_type="application/pdf")
    response = api(researcher_a).post("/api/v1/findings/", {**body(), "attachments": [fake]}, format="multipart")
    assert response.status_code == 400
    assert error_of(response)["details"]["attachments"] == [
        "paper.pdf is not a PDF (its content does not start with %PDF-). Attach PDFs only."
    ]
    assert not Finding.objects.exists()


def test_a_declared_upload_over_the_limit_is_413_unread(api, researcher_a, active):
    response = api(researcher_a).post(
        "/api/v1/findings/",
        {**body(), "attachments": [pdf()]},
        format="multipart",
        CONTENT_LENGTH=str(5 * 20 * 1024 * 1024 + 2 * 1024 * 1024),
    )
    assert response.status_code == 413 and error_of(response)["code"] == "request_too_large"
    assert not Finding.objects.exists()


def test_a_summary_with_a_script_is_stored_without_it(api, researcher_a, active):
    summary = SUMMARY + "\n\n<script>alert(1)</script>\n\n![tracker](https://evil.example/pixel.png)"
    response = api(researcher_a).post("/api/v1/findings/", body(summary=summary), format="json")
    assert response.status_code == 201
    html = response.json()["summary_html"]
    assert "<script" not in html and "<img" not in html and "evil.example" not in html


def test_the_lab_lists_and_filters_every_partners_findings(api, researcher_a, legal, auditor, partner_a, active):
    accepted = submit(researcher_a, title="Accepted one")
    services.finding_review(actor=legal, finding=accepted, action="accept")
    pending = submit(researcher_a, title="Pending one")
    for reader in (legal, auditor):
        client = api(reader)
        rows = client.get("/api/v1/findings/").json()["results"]
        assert [row["id"] for row in rows] == [pending.pk, accepted.pk]
        rows = client.get("/api/v1/findings/", {"status": "accepted", "organization": partner_a.pk}).json()["results"]
        assert [row["id"] for row in rows] == [accepted.pk]
    response = api(legal).get("/api/v1/findings/", {"category": "gossip"})
    assert response.status_code == 400 and "category" in error_of(response)["details"]


def test_one_finding_with_its_reviews_and_attachments(api, researcher_a, legal, auditor, active):
    finding = submit(researcher_a, attachments=[pdf("study.pdf")])
    services.finding_review(actor=legal, finding=finding, action="request_changes", comment="Add the raters.")
    for reader in (researcher_a, auditor):
        data = api(reader).get(f"/api/v1/findings/{finding.pk}/").json()
        assert data["status"] == "changes_requested"
        assert [(r["action"], r["comment"]) for r in data["reviews"]] == [
            ("submitted", ""),
            ("changes_requested", "Add the raters."),
        ]
        (attachment,) = data["attachments"]
        assert attachment["filename"] == "study.pdf" and attachment["sha256"] == finding.attachments.get().sha256


def test_the_outsider_gets_404_for_another_organisations_finding(api, researcher_a, researcher_b, active):
    finding = submit(researcher_a)
    response = api(researcher_b).get(f"/api/v1/findings/{finding.pk}/")
    assert response.status_code == 404 and error_of(response)["code"] == "not_found"
    assert api(researcher_b).get("/api/v1/findings/").json()["results"] == []


@pytest.mark.parametrize("persona", ["auditor", "legal"])
def test_the_lab_cannot_submit_findings(request, api, persona, active):
    response = api(request.getfixturevalue(persona)).post("/api/v1/findings/", body(), format="json")
    assert response.status_code == 403 and error_of(response)["code"] == "permission_denied"

"""Records in the browser: who downloads what, exports with progress, and the verification page."""

from __future__ import annotations

import csv
import hashlib
import io
import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from django.utils import timezone
from pypdf import PdfReader

from agreements import services as agreements
from agreements.models import AccessGrant
from audit.models import AuditEvent
from audit.services import audit_append
from inference.models import GenerationJob, Sample
from records import selectors
from records.models import SealedRecord
from records.selectors import record_file_bytes
from records.services import record_seal_agreement
from tests.audit.test_chain import behind_the_apps_back
from tests.records.conftest import pdf_text

pytestmark = pytest.mark.django_db

WEIGHTS_SHA256 = "ab" * 32


@pytest.fixture
def sealed(active) -> SealedRecord:
    return record_seal_agreement(agreement_id=active.pk, occasion="activated")


@pytest.fixture
def job(active, researcher_a) -> GenerationJob:
    """A finished job as the worker leaves it: samples with hashes and a completion event."""
    grant = AccessGrant.objects.get(agreement=active, checkpoint__slug="gpt2")
    job = GenerationJob.objects.create(
        organization=active.organization,
        requester=researcher_a,
        checkpoint=grant.checkpoint,
        grant=grant,
        prompt="The history of staged model release",
        max_new_tokens=24,
        temperature=0.7,
        top_k=40,
        top_p=0.9,
        num_samples=2,
        seed=1234,
        status=GenerationJob.Status.SUCCEEDED,
        prompt_tokens=6,
        tokens_generated=41,
        finished_at=timezone.now(),
    )
    for index, (text, tokens) in enumerate([("began in 2019.", 20), ("is a story of caution.", 21)]):
        Sample.objects.create(
            job=job,
            index=index,
            text=text,
            token_count=tokens,
            sha256=hashlib.sha256(text.encode()).hexdigest(),
            watermark_scheme="green-list-v1",
            watermark_key_id="0123abcd4567",
        )
    audit_append(
        actor=None,
        action="job.succeeded",
        target=job,
        organization=job.organization,
        data={"weights_sha256": WEIGHTS_SHA256, "tokens_generated": 41},
    )
    return job


def export(client, django_capture_on_commit_callbacks, url: str, data: dict) -> SealedRecord:
    """Post an export and let its task run (in-process) when the request's transaction commits."""
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(url, data)
    assert response.status_code == 302, response.content.decode()[:2000]
    record = SealedRecord.objects.order_by("-pk").first()
    assert response.url == reverse("record_detail", args=[record.pk])
    record.refresh_from_db()
    return record


# --- Who may download and export ------------------------------------------------------------------


@pytest.mark.parametrize("persona", ["admin_a", "signer_a", "researcher_a", "auditor", "legal"])
def test_partners_and_the_lab_download_an_agreement_record(client, request, persona, active, sealed):
    user = request.getfixturevalue(persona)
    client.force_login(user)
    response = client.get(reverse("agreement_record", args=[active.pk]))
    assert response.status_code == 200
    assert response["Content-Type"] == "application/pdf"
    assert f'filename="{active.reference}-record-activated.pdf"' in response["Content-Disposition"]
    assert hashlib.sha256(response.content).hexdigest() == sealed.sha256
    downloaded = AuditEvent.objects.filter(action="record.downloaded").latest("seq")
    assert downloaded.actor_email == user.email and downloaded.data["sha256"] == sealed.sha256


@pytest.mark.parametrize("persona", ["admin_b", "signer_b", "researcher_b"])
def test_another_organisations_record_is_not_found(client, request, persona, active, sealed):
    client.force_login(request.getfixturevalue(persona))
    assert client.get(reverse("agreement_record", args=[active.pk])).status_code == 404
    assert client.get(reverse("record_download", args=[sealed.pk])).status_code == 404
    assert client.get(reverse("record_detail", args=[sealed.pk])).status_code == 404
    assert not AuditEvent.objects.filter(action="record.downloaded").exists()


@pytest.mark.parametrize("persona", ["admin_a", "signer_a", "researcher_a", "researcher_b"])
def test_only_lab_roles_export_bundles_and_audit_logs(client, request, persona, partner_a, auditor):
    client.force_login(request.getfixturevalue(persona))
    assert client.get(reverse("records_home")).status_code == 403
    assert client.post(reverse("record_export_bundle"), {"organization": partner_a.pk}).status_code == 403
    assert client.post(reverse("record_export_audit_log"), {"format": "csv"}).status_code == 403
    bundle = SealedRecord.objects.create(kind="evidence_bundle", organization=partner_a, created_by=auditor)
    assert client.get(reverse("record_detail", args=[bundle.pk])).status_code == 403
    assert client.get(reverse("record_download", args=[bundle.pk])).status_code == 403
    assert SealedRecord.objects.count() == 1


def test_signed_out_visitors_are_sent_to_sign_in(client, sealed):
    for url in (reverse("record_verify"), reverse("records_home"), reverse("record_download", args=[sealed.pk])):
        response = client.get(url)
        assert response.status_code == 302 and "/accounts/login/" in response.url


def test_navigation_offers_records_to_the_lab_and_verification_to_everyone(client, auditor, researcher_a):
    client.force_login(auditor)
    page = client.get(reverse("home")).content.decode()
    assert 'href="/records/"' in page and 'href="/verify/"' in page
    client.force_login(researcher_a)
    page = client.get(reverse("home")).content.decode()
    assert 'href="/records/"' not in page and 'href="/verify/"' in page


# --- Exports --------------------------------------------------------------------------------------


def test_the_auditor_exports_an_evidence_bundle(
    client, django_capture_on_commit_callbacks, auditor, legal, partner_a, active, job
):
    agreements.agreement_terminate(actor=legal, agreement=active, reason="The research finished early.")
    client.force_login(auditor)
    record = export(
        client, django_capture_on_commit_callbacks, reverse("record_export_bundle"), {"organization": partner_a.pk}
    )
    assert record.status == "ready", record.error
    page = client.get(reverse("record_detail", args=[record.pk])).content.decode()
    assert "Download the sealed PDF" in page and record.sha256 in page

    response = client.get(reverse("record_download", args=[record.pk]))
    assert response.status_code == 200 and response["Content-Type"] == "application/pdf"
    assert selectors.record_verify(response.content).ok
    text = pdf_text(response.content)
    for expected in [
        "Evidence: Partner A Research Institute",
        f"Exported by Otto Auditor ({auditor.email})",
        "Generation jobs 1, 2 samples, 41 tokens generated",
        f"Certificate of completion: {active.reference}",
        "Sofia Signer, Director of Research",
        "Grant history",
        f"agreement {active.reference} The research finished early.",  # the revoke reason
        "Job ledger",
        f"#{job.pk}",
        job.requester.email,
        WEIGHTS_SHA256,
        "max_new_tokens 24",
        "temperature 0.7",
        "seed 1234",
        hashlib.sha256(job.prompt.encode()).hexdigest(),
        *(sample.sha256 for sample in job.samples.all()),
        "generated 41",
        "watermark green-list-v1, key 0123abcd4567",
    ]:
        assert expected in text, expected
    ledger = json.loads(PdfReader(io.BytesIO(response.content)).attachments["evidence-ledger.json"][0])
    assert ledger["jobs"][0]["weights_sha256"] == WEIGHTS_SHA256
    assert ledger["jobs"][0]["samples"][0]["watermark_key_id"] == "0123abcd4567"
    assert ledger["grants"][0]["revoke_reason"].endswith("The research finished early.")

    actions = list(
        AuditEvent.objects.filter(target_type="records.sealedrecord", target_id=str(record.pk))
        .order_by("seq")
        .values_list("action", "actor_email")
    )
    assert actions == [
        ("record.export_requested", auditor.email),
        ("record.exported", auditor.email),
        ("record.downloaded", auditor.email),
    ]


def test_a_bundle_needs_a_partner(client, auditor, lab):
    client.force_login(auditor)
    response = client.post(reverse("record_export_bundle"), {"organization": lab.pk})
    assert response.status_code == 400
    assert "Select a valid choice" in response.content.decode()
    response = client.post(reverse("record_export_bundle"), {})
    assert "Choose the partner organisation to export evidence for." in response.content.decode()
    assert not SealedRecord.objects.exists()


def test_the_audit_log_csv_holds_what_the_audit_page_lists(
    client, django_capture_on_commit_callbacks, legal, partner_a, active
):
    client.force_login(legal)
    filters = {"organization": partner_a.pk, "action": "agreement.signed", "format": "csv"}
    record = export(client, django_capture_on_commit_callbacks, reverse("record_export_audit_log"), filters)
    assert record.status == "ready" and record.kind == "audit_log_csv"
    assert record.filters == {"organization_id": partner_a.pk, "action": "agreement.signed"}
    rows = list(csv.DictReader(io.StringIO(record_file_bytes(record).decode())))
    listed = list(audit_page(client, {"organization": partner_a.pk, "action": "agreement.signed"}))
    assert [int(row["seq"]) for row in rows] == sorted(e.seq for e in listed) and rows
    assert {row["action"] for row in rows} == {"agreement.signed"}
    assert rows[0]["hash"] == AuditEvent.objects.get(seq=rows[0]["seq"]).hash

    url = reverse("record_export_audit_log")
    unfiltered = export(client, django_capture_on_commit_callbacks, url, {"format": "csv"})
    everything = list(csv.DictReader(io.StringIO(record_file_bytes(unfiltered).decode())))
    assert len(everything) >= len(rows) + 5


def test_a_genuine_csv_export_is_recognised_on_the_verify_page_not_called_unverified(
    client, django_capture_on_commit_callbacks, auditor, active
):
    client.force_login(auditor)
    record = export(client, django_capture_on_commit_callbacks, reverse("record_export_audit_log"), {"format": "csv"})
    data = record_file_bytes(record)
    upload = SimpleUploadedFile("audit-log.csv", data, content_type="text/csv")
    html = client.post(reverse("record_verify"), {"file": upload}).content.decode()
    assert "Unchanged export" in html and "Issued by ModelPact, not sealed" in html
    assert f"#{record.pk}" in html and "Not verified" not in html and "verdict-warn" in html

    changed = SimpleUploadedFile("audit-log.csv", data + b"1,forged\n", content_type="text/csv")
    html = client.post(reverse("record_verify"), {"file": changed}).content.decode()
    assert "Not verified" in html and "Unchanged export" not in html


def audit_page(client, query: dict):
    return client.get(reverse("audit_event_list"), query).context["page"].paginator.object_list


def test_csv_cells_that_look_like_formulas_are_kept_as_text(
    client, django_capture_on_commit_callbacks, lab_admin, auditor
):
    from accounts import services as accounts

    accounts.organization_create(actor=lab_admin, name="=HYPERLINK(1)", legal_name="@SUM(A1)")
    client.force_login(auditor)
    record = export(client, django_capture_on_commit_callbacks, reverse("record_export_audit_log"), {"format": "csv"})
    content = record_file_bytes(record).decode()
    assert "'=HYPERLINK(1)" in content and ",=HYPERLINK" not in content


def test_the_audit_log_pdf_states_the_chain_head_and_verification(
    client, django_capture_on_commit_callbacks, auditor, partner_a
):
    client.force_login(auditor)
    url = reverse("record_export_audit_log")
    filters = {"format": "pdf", "action": "organization.created"}
    record = export(client, django_capture_on_commit_callbacks, url, filters)
    assert record.status == "ready", record.error
    text = pdf_text(record_file_bytes(record))
    assert f"Audit chain head #{record.chain_head_seq} {record.chain_head_hash}" in text
    assert "audit_verify Passed all" in text and "Action: organization.created" in text
    assert selectors.record_verify(record_file_bytes(record)).ok

    first = AuditEvent.objects.order_by("seq").first()
    behind_the_apps_back("UPDATE audit_auditevent SET actor_email = %s WHERE seq = %s", ["mallory@x", first.seq])
    broken = export(client, django_capture_on_commit_callbacks, url, {"format": "pdf"})
    text = pdf_text(record_file_bytes(broken))
    assert f"audit_verify Failed at event #{first.seq}" in text and "chain BROKEN at export" in text


def test_an_audit_log_pdf_over_the_limit_is_refused_with_advice(client, monkeypatch, auditor, partner_a):
    monkeypatch.setattr(selectors, "AUDIT_LOG_PDF_MAX_EVENTS", 2)
    client.force_login(auditor)
    response = client.post(reverse("record_export_audit_log"), {"format": "pdf"})
    assert response.status_code == 400
    assert "Narrow the filters, or export CSV." in response.content.decode()
    assert not SealedRecord.objects.exists()


def test_the_audit_page_offers_exports_with_its_filters(client, auditor, partner_a):
    client.force_login(auditor)
    page = client.get(reverse("audit_event_list"), {"action": "organization.created"}).content.decode()
    assert reverse("record_export_audit_log") in page
    assert 'name="action" value="organization.created"' in page


def test_an_export_shows_progress_until_it_is_ready(client, auditor, partner_a):
    record = SealedRecord.objects.create(kind="evidence_bundle", organization=partner_a, created_by=auditor)
    client.force_login(auditor)
    panel = client.get(reverse("record_status", args=[record.pk])).content.decode()
    assert "hx-get" in panel and "Queued" in panel and "<progress" in panel
    SealedRecord.objects.filter(pk=record.pk).update(status="running", progress=42, progress_note="Laying out page 7")
    panel = client.get(reverse("record_status", args=[record.pk])).content.decode()
    assert "Laying out page 7" in panel and 'value="42"' in panel and "hx-get" in panel
    SealedRecord.objects.filter(pk=record.pk).update(status="failed", error="Rendering took longer than 1 s.")
    panel = client.get(reverse("record_status", args=[record.pk])).content.decode()
    assert "hx-get" not in panel and "Rendering took longer" in panel


def test_a_redelivered_export_task_does_nothing(client, django_capture_on_commit_callbacks, auditor, partner_a):
    from records.tasks import run_record_export

    client.force_login(auditor)
    record = export(client, django_capture_on_commit_callbacks, reverse("record_export_audit_log"), {"format": "csv"})
    assert run_record_export.delay(record.pk).get() == "ready"
    assert AuditEvent.objects.filter(action="record.exported").count() == 1


def test_the_lab_seals_an_agreement_activated_before_records_existed(
    client, django_capture_on_commit_callbacks, auditor, researcher_a, active
):
    client.force_login(researcher_a)
    assert client.get(reverse("agreement_record", args=[active.pk])).status_code == 404
    client.force_login(auditor)
    missing = client.get(reverse("agreement_record", args=[active.pk]))
    assert missing.status_code == 404 and "Seal" in missing.content.decode()
    assert active.reference in client.get(reverse("records_home")).content.decode()
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("agreement_record_seal", args=[active.pk]))
    assert response.status_code == 302
    record = SealedRecord.objects.get(agreement=active)
    assert record.status == "ready" and record.created_by == auditor
    sealed_event = AuditEvent.objects.get(action="record.sealed")
    assert sealed_event.actor_email == auditor.email
    assert client.get(reverse("agreement_record", args=[active.pk])).status_code == 200


# --- Verification page ----------------------------------------------------------------------------


def upload(client, content: bytes, name: str = "record.pdf"):
    return client.post(reverse("record_verify"), {"file": SimpleUploadedFile(name, content, "application/pdf")})


def test_any_signed_in_user_verifies_a_record(client, researcher_b, active, sealed):
    client.force_login(researcher_b)
    assert client.get(reverse("record_verify")).status_code == 200
    page = upload(client, record_file_bytes(sealed)).content.decode()
    assert "Verified" in page and active.reference in page and sealed.sha256 in page
    assert f"{sealed.sealed_at:%Y-%m-%d %H:%M:%S} UTC" in page


def test_the_page_says_why_a_file_is_not_verified(client, researcher_a, sealed):
    client.force_login(researcher_a)
    changed = bytearray(record_file_bytes(sealed))
    changed[len(changed) // 2] ^= 1
    page = upload(client, bytes(changed)).content.decode()
    assert "Not verified" in page and "Verified</span> An untouched" not in page
    page = upload(client, b"just text", "notes.txt").content.decode()
    assert "This is not a PDF file." in page
    response = client.post(reverse("record_verify"), {})
    assert response.status_code == 400 and "Choose the PDF to check." in response.content.decode()


def test_an_upload_over_20_mb_is_refused(client, researcher_a):
    client.force_login(researcher_a)
    response = upload(client, b"%PDF-1.7\n" + b"0" * (20 * 1024 * 1024 + 1))
    assert response.status_code in (400, 413)
    assert "20 MB" in response.content.decode()

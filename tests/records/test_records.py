"""Sealed agreement records: what the certificate says, what is embedded, and how sealing behaves."""

from __future__ import annotations

import hashlib
import io
import json
import re

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from pypdf import PdfReader

from agreements import services as agreements
from agreements.models import AccessGrant
from audit.models import AuditEvent
from records import pdf
from records.models import SealedRecord
from records.selectors import record_file_bytes, record_file_path, record_verify
from records.services import record_seal_agreement
from records.tasks import seal_agreement_record
from tests.builders import sign
from tests.records.conftest import pdf_text

pytestmark = pytest.mark.django_db


def utc(moment) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC"


@pytest.fixture
def completed(legal, signer_a, sent):
    """Sent, opened by the partner's signatory, signed and countersigned: every time on the certificate."""
    agreements.agreement_mark_viewed(actor=signer_a, agreement=sent)
    sent.refresh_from_db()
    sign(signer_a, sent, user_agent="Mozilla/5.0 (X11; Linux) Firefox/140.0", time_zone="America/New_York")
    sent.refresh_from_db()
    sign(legal, sent, ip="198.51.100.20", user_agent="Mozilla/5.0 (Macintosh) Safari/19", time_zone="Europe/London")
    sent.refresh_from_db()
    return sent


@pytest.fixture
def sealed(completed) -> SealedRecord:
    """What the hook does when the agreement becomes active (the task runs in-process here)."""
    assert seal_agreement_record.delay(completed.pk, "activated").get() == "ready"
    return SealedRecord.objects.get(agreement=completed, occasion="activated")


def test_the_certificate_carries_every_field(completed, sealed):
    text = pdf_text(record_file_bytes(sealed))
    agreement = completed
    version = agreement.template_version
    expected = [
        f"Certificate of completion: {agreement.reference}",
        f"{agreement.reference} (id {agreement.pk})",
        "Partner A Research Institute (Partner A), Delaware",
        f"{version.template.name} v{version.number}",
        version.sha256,
        agreement.document_sha256,
        "every signer was shown exactly this hash",
        f"Sent for signature {utc(agreement.sent_at)}",
        f"First viewed by the partner {utc(agreement.first_viewed_at)}",
        f"Signed by the partner {utc(agreement.partner_signed_at)}",
        f"Countersigned by the lab {utc(agreement.activated_at)}",
        f"Audit chain head #{sealed.chain_head_seq} {sealed.chain_head_hash}",
        sealed.cert_sha256,
    ]
    for signature in agreement.signatures.all():
        side = "Signed for Partner A Research Institute" if signature.side == "partner" else "Countersigned for the lab"
        expected += [
            f"{signature.full_name}, {signature.title}",
            side,
            signature.signer_email,
            f"Signed {utc(signature.signed_at)} (signer's time zone: {signature.time_zone})",
            f"consent text SHA-256 {signature.consent_sha256}",
            f"Reauthentication {signature.reauth_method} at {utc(signature.reauth_at)}",
            f"IP address {signature.ip}",
            f"User agent {signature.user_agent}",
            f"Document as signed {signature.document_sha256}",
        ]
    for grant in AccessGrant.objects.filter(agreement=agreement).select_related("checkpoint"):
        expected.append(f"{grant.checkpoint.slug} {grant.starts_at:%Y-%m-%d %H:%M} {grant.ends_at:%Y-%m-%d %H:%M}")
    missing = [item for item in expected if item not in text]
    assert not missing, f"not on the certificate: {missing}"
    # The signed document itself comes first, exactly as frozen, its signature blocks filled in.
    assert text.index("The signed document") < text.index("Certificate of completion")
    assert "GPT-2 Model Sharing Agreement" in text
    document = text[text.index("The signed document") : text.index("Certificate of completion")]
    assert "Signed electronically by Sofia Signer" in document and "Signed electronically by Lena Legal" in document
    assert "Signature: ____" not in document


def test_the_embedded_events_match_the_database_and_rehash(completed, sealed):
    reader = PdfReader(io.BytesIO(record_file_bytes(sealed)))
    (attachment,) = reader.attachments["agreement-events.json"]
    embedded = json.loads(attachment)["events"]
    grant_ids = {str(pk) for pk in AccessGrant.objects.filter(agreement=completed).values_list("pk", flat=True)}
    stored = [
        e
        for e in AuditEvent.objects.order_by("seq")
        if (e.target_type, e.target_id) == ("agreements.agreement", str(completed.pk))
        or (e.target_type in ("agreements.accessgrant", "models_registry.accessgrant") and e.target_id in grant_ids)
    ]
    assert [e["seq"] for e in embedded] == [e.seq for e in stored]
    assert {"agreement.sent", "agreement.viewed", "agreement.signed", "agreement.countersigned", "grant.created"} <= {
        e["action"] for e in embedded
    }
    for row, event in zip(embedded, stored, strict=True):
        assert row["hash"] == event.hash and row["prev_hash"] == event.prev_hash
        assert row["data"] == event.data and row["actor_email"] == event.actor_email
        # The attachment alone is enough to recompute each event's hash.
        payload = {k: v for k, v in row.items() if k not in ("hash", "prev_hash")}
        canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert hashlib.sha256((row["prev_hash"] + canonical).encode()).hexdigest() == row["hash"]


def test_records_are_pdf_a_3b_with_only_the_bundled_fonts(sealed):
    reader = PdfReader(io.BytesIO(record_file_bytes(sealed)))
    xmp = reader.trailer["/Root"]["/Metadata"].get_object().get_data().decode()
    assert re.search(r'pdfaid:part(>|=")3', xmp) and re.search(r'pdfaid:conformance(>|=")B', xmp), xmp
    # Sealing left WeasyPrint's metadata alone, so the XMP and the info dictionary still agree.
    assert str(reader.metadata["/Producer"]).startswith("WeasyPrint") and "pyHanko" not in xmp
    fonts = {}
    for page in reader.pages:
        for font in (page["/Resources"].get("/Font") or {}).values():
            font = font.get_object()
            if "/DescendantFonts" in font:  # composite (Type0) fonts keep the descriptor one level down
                font = font["/DescendantFonts"][0].get_object()
            descriptor = font["/FontDescriptor"].get_object()
            fonts[str(font["/BaseFont"])] = "/FontFile2" in descriptor or "/FontFile3" in descriptor
    assert fonts and all(name.split("+")[-1].startswith("ModelPact-") for name in fonts), fonts
    assert all(fonts.values()), "every font is embedded"


def test_sealing_is_stored_audited_and_done_once(completed, sealed, records_dir):
    again = seal_agreement_record.delay(completed.pk, "activated").get()
    assert again == "ready"
    assert SealedRecord.objects.filter(agreement=completed).count() == 1
    content = record_file_path(sealed).read_bytes()
    assert record_file_path(sealed).is_relative_to(records_dir)
    assert hashlib.sha256(content).hexdigest() == sealed.sha256
    assert sealed.unsealed_sha256 and sealed.unsealed_sha256 != sealed.sha256
    (event,) = AuditEvent.objects.filter(action="record.sealed")
    assert event.target_id == str(sealed.pk) and event.organization_id == completed.organization_id
    assert event.data["sha256"] == sealed.sha256 and event.data["unsealed_sha256"] == sealed.unsealed_sha256
    assert event.data["agreement"] == completed.reference
    # The chain head on the certificate is the one before the seal's own event.
    assert sealed.chain_head_seq == event.seq - 1


def test_an_ended_agreement_gets_a_second_record_saying_why(legal, completed, sealed):
    agreements.agreement_terminate(actor=legal, agreement=completed, reason="The partner closed its lab.")
    ended = record_seal_agreement(agreement_id=completed.pk, occasion="ended")
    assert ended.status == "ready" and ended.pk != sealed.pk and ended.sha256 != sealed.sha256
    text = pdf_text(record_file_bytes(ended))
    completed.refresh_from_db()
    assert f"Ended (terminated) {utc(completed.ended_at)}" in text
    assert "The partner closed its lab." in text
    assert "terminated" in text and "Agreement ended" in text
    # Both records stay verifiable.
    assert record_verify(record_file_bytes(sealed)).ok and record_verify(record_file_bytes(ended)).ok


def test_countersigning_and_terminating_seal_the_records_once_committed(
    legal, signer_a, sent, django_capture_on_commit_callbacks
):
    """Agreements ask for their records through agreements.hooks; records answers by queueing the seal."""
    sign(signer_a, sent)
    sent.refresh_from_db()
    assert not SealedRecord.objects.exists()
    with django_capture_on_commit_callbacks(execute=True):
        sign(legal, sent)
    sent.refresh_from_db()
    assert sent.status == "active"
    record = SealedRecord.objects.get(agreement=sent, occasion="activated")
    assert record.status == "ready" and record_verify(record_file_bytes(record)).ok

    with django_capture_on_commit_callbacks(execute=True):
        agreements.agreement_terminate(actor=legal, agreement=sent, reason="The partner closed its lab.")
    ended = SealedRecord.objects.get(agreement=sent, occasion="ended")
    assert ended.status == "ready" and "The partner closed its lab." in pdf_text(record_file_bytes(ended))


def test_agreements_that_never_became_active_get_no_record(sent):
    assert seal_agreement_record.delay(sent.pk, "activated").get() is None
    assert seal_agreement_record.delay(sent.pk, "ended").get() is None
    assert not SealedRecord.objects.exists()


def test_without_a_key_production_refuses_to_seal(settings, completed):
    settings.DEBUG = False
    for path in pdf.seal_key_paths():
        path.unlink()
    record = record_seal_agreement(agreement_id=completed.pk, occasion="activated")
    assert record.status == "failed"
    assert "RECORDS_KEY_PATH" in record.error and "DEBUG is off" in record.error
    assert AuditEvent.objects.filter(action="record.seal_failed", target_id=str(record.pk)).exists()
    # Once the operator installs a key, a redelivered task seals it.
    call_command("records_keygen")
    assert record_seal_agreement(agreement_id=completed.pk, occasion="activated").status == "ready"


def test_in_development_a_missing_key_is_made_on_first_use(settings, completed):
    settings.DEBUG = True
    key_path, cert_path = pdf.seal_key_paths()
    key_path.unlink()
    cert_path.unlink()
    record = record_seal_agreement(agreement_id=completed.pk, occasion="activated")
    assert record.status == "ready" and key_path.is_file() and cert_path.is_file()
    assert oct(key_path.stat().st_mode)[-3:] == "600"
    generated = AuditEvent.objects.get(action="record.key_generated")
    assert generated.data["cert_sha256"] == record.cert_sha256


def test_the_commands_verify_and_rotating_the_key_keeps_old_records_valid(sealed, tmp_path, capsys):
    good = tmp_path / "record.pdf"
    good.write_bytes(record_file_bytes(sealed))
    call_command("records_verify", str(good))
    assert "Verified" in capsys.readouterr().out

    changed = bytearray(good.read_bytes())
    changed[len(changed) // 3] ^= 0x20
    bad = tmp_path / "changed.pdf"
    bad.write_bytes(bytes(changed))
    with pytest.raises(CommandError) as refused:
        call_command("records_verify", str(bad))
    assert refused.value.returncode == 1 and "Not verified" in str(refused.value)

    with pytest.raises(CommandError, match="already exists"):
        call_command("records_keygen")
    call_command("records_keygen", "--force")
    assert pdf.seal_cert_sha256() != sealed.cert_sha256
    call_command("records_verify", str(good))  # sealed with the old key, still ours
    assert AuditEvent.objects.filter(action="record.key_generated").count() == 1

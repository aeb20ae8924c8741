"""Verification: an untouched sealed record of ours passes; every kind of tampering is named.

The byte edits run against one sealed PDF in memory through record_verify, the function behind the
page, the command and the API.
"""

from __future__ import annotations

import io
import random
from collections import Counter

import pytest
from pyhanko.pdf_utils import generic
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.sign import signers

from records import pdf
from records.models import SealedRecord
from records.selectors import record_file_bytes, record_verify
from records.services import record_seal_agreement

pytestmark = pytest.mark.django_db

NOT_OURS = {
    "too_large",
    "not_pdf",
    "unreadable",
    "no_seal",
    "other_key",
    "seal_invalid",
    "bytes_changed",
    "incremental_update",
    "unknown_hash",
}


@pytest.fixture
def record(active) -> SealedRecord:
    return record_seal_agreement(agreement_id=active.pk, occasion="activated")


@pytest.fixture
def original(record) -> bytes:
    return record_file_bytes(record)


def unsealed_revision(sealed: bytes, record: SealedRecord) -> bytes:
    """The rendered PDF before sealing: the sealed file's first revision, found by its stored hash."""
    end = 0
    while (end := sealed.find(b"%%EOF", end) + 5) > 4:
        for candidate in (sealed[:end], sealed[: end + 1]):
            if pdf.sha256_bytes(candidate) == record.unsealed_sha256:
                return candidate
    raise AssertionError("the first revision is not the PDF that was rendered")


def test_an_untouched_record_is_verified_with_what_and_when(active, record, original):
    result = record_verify(original)
    assert result.ok and result.code == ""
    assert result.record == record and result.sealed_at == record.sealed_at
    assert active.reference in result.reason and "sealed" in result.reason


def test_200_random_single_byte_edits_are_each_caught(original):
    rng = random.Random(20261127)
    codes = Counter()
    for _ in range(200):
        changed = bytearray(original)
        position = rng.randrange(len(changed))
        changed[position] = (changed[position] + rng.randrange(1, 256)) % 256
        result = record_verify(bytes(changed))
        assert not result.ok, f"an edit at byte {position} went unnoticed"
        assert result.code in NOT_OURS and result.reason
        codes[result.code] += 1
    # Most edits break the seal itself; the rest (in its zero padding, say) are caught by the hash.
    assert codes["bytes_changed"] + codes["seal_invalid"] + codes["unreadable"] > 100, codes


def test_an_incremental_update_appended_after_sealing_is_caught(original):
    writer = IncrementalPdfFileWriter(io.BytesIO(original))
    info = writer.root
    info["/ModelPactNote"] = generic.TextStringObject("approved, honestly")
    writer.update_root()
    output = io.BytesIO()
    writer.write(output)
    appended = output.getvalue()
    assert appended.startswith(original) and len(appended) > len(original)

    result = record_verify(appended)
    assert not result.ok and result.code == "incremental_update"
    assert "appended after sealing" in result.reason


def test_a_copy_resealed_with_another_key_is_caught(tmp_path, monkeypatch, record, original):
    key, cert = tmp_path / "other-key.pem", tmp_path / "other-cert.pem"
    pdf.generate_seal_key(key, cert, common_name="Not the lab")
    other = signers.SimpleSigner.load(str(key), str(cert))
    first_revision = unsealed_revision(original, record)

    resealed = pdf.seal_pdf(first_revision, reason="a forgery", signer=other).pdf
    result = record_verify(resealed)
    assert not result.ok and result.code == "other_key"
    assert "not the lab's" in result.reason

    # A second seal on top of ours: our seal no longer covers the file. (pyHanko itself refuses to
    # sign after our no-changes certification; a forger's tool would not.)
    monkeypatch.setattr(signers.PdfSigner, "_enforce_certification_constraints", lambda self, reader: None)
    writer = IncrementalPdfFileWriter(io.BytesIO(original))
    meta = signers.PdfSignatureMetadata(field_name="Countersealed", md_algorithm="sha256")
    stacked = signers.PdfSigner(meta, signer=other).sign_pdf(writer).getvalue()
    assert record_verify(stacked).code in {"incremental_update", "other_key"}

    # Sealed again with the lab's own key, but never issued: the hash is unknown.
    again = pdf.seal_pdf(first_revision, reason="again").pdf
    result = record_verify(again)
    assert not result.ok and result.code == "unknown_hash"


def test_a_truncated_file_is_caught(original):
    for cut in (len(original) // 2, len(original) - 40, 2000):
        result = record_verify(original[:cut])
        assert not result.ok and result.code in NOT_OURS - {"unknown_hash"}


def test_other_files_are_named_for_what_they_are(records_dir):
    assert record_verify(b"name,email\nAda,ada@example.org\n").code == "not_pdf"
    assert record_verify(b"%PDF-1.7\n" + b"\0" * (20 * 1024 * 1024)).code == "too_large"
    plain = pdf.render_pdf("<p>An unsealed PDF</p>").pdf
    result = record_verify(plain)
    assert result.code == "no_seal" and "no seal" in result.reason

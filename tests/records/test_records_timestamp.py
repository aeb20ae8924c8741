"""Timestamped seals (PAdES B-T): a local RFC 3161 server, and what a seal does when that server fails."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from asn1crypto import keys, tsp
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from django.conf import settings as django_settings
from django.core.management import call_command
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.sign.general import load_cert_from_pemder
from pyhanko.sign.timestamps.dummy_client import DummyTimeStamper
from pyhanko.sign.validation.pdf_embedded import async_validate_pdf_signature
from pyhanko_certvalidator import ValidationContext

from audit.models import AuditEvent
from records import pdf
from records.models import SealedRecord
from records.selectors import record_file_bytes, record_verify
from records.tasks import seal_agreement_record
from tests.builders import sign

pytestmark = pytest.mark.django_db


# --- A timestamp server on 127.0.0.1 ----------------------------------------------------------


def _tsa_identity() -> tuple[asn1_x509.Certificate, keys.PrivateKeyInfo]:
    """An RSA key and a certificate for timestamping only (extendedKeyUsage timeStamping, critical)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "Test Timestamp Authority"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test TSA"),
        ]
    )
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_der = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return asn1_x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER)), keys.PrivateKeyInfo.load(key_der)


@dataclass
class TimestampServer:
    """What the server does (`mode`: ok, error, html or hang) and what it was asked."""

    url: str
    cert: asn1_x509.Certificate
    stamper: DummyTimeStamper
    mode: str = "ok"
    requests: list[str] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)


class _Handler(BaseHTTPRequestHandler):
    server: ThreadingHTTPServer

    def do_POST(self) -> None:
        tsa: TimestampServer = self.server.tsa  # type: ignore[attr-defined]
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        tsa.requests.append(self.headers.get("Content-Type", ""))
        if tsa.mode == "hang":
            tsa.release.wait(30)
            return
        if tsa.mode == "error":
            self.send_response(500)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if tsa.mode == "html":
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", "11")
            self.end_headers()
            self.wfile.write(b"<p>hi!</p>\n")
            return
        answer = tsa.stamper.request_tsa_response(tsp.TimeStampReq.load(body)).dump()
        self.send_response(200)
        self.send_header("Content-Type", "application/timestamp-reply")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def tsa(settings) -> Iterator[TimestampServer]:
    """A local RFC 3161 responder, named in RECORDS_TSA_URL for this test."""
    cert, key = _tsa_identity()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    state = TimestampServer(
        url=f"http://127.0.0.1:{server.server_address[1]}/tsa", cert=cert, stamper=DummyTimeStamper(cert, key)
    )
    server.tsa = state  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    settings.RECORDS_TSA_URL = state.url
    yield state
    state.release.set()
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def completed(legal, signer_a, sent):
    sign(signer_a, sent)
    sent.refresh_from_db()
    sign(legal, sent)
    sent.refresh_from_db()
    return sent


def _seal(agreement) -> SealedRecord:
    """Through the task, as the activation hook queues it."""
    seal_agreement_record.delay(agreement.pk, "activated").get()
    return SealedRecord.objects.get(agreement=agreement, occasion="activated")


def _timestamp_tokens(data: bytes) -> list:
    """The signature timestamp tokens (SignedData) in the seal's unsigned attributes."""
    signer_info = PdfFileReader(io.BytesIO(data)).embedded_signatures[0].signer_info
    attributes = signer_info["unsigned_attrs"] if signer_info["unsigned_attrs"].native else []
    return [
        token["content"]
        for attribute in attributes
        if attribute["type"].native == "signature_time_stamp_token"
        for token in attribute["values"]
    ]


def _validate(data: bytes, *trusted: asn1_x509.Certificate):
    embedded = PdfFileReader(io.BytesIO(data)).embedded_signatures[0]
    context = ValidationContext(trust_roots=list(trusted), allow_fetching=False)
    return asyncio.run(async_validate_pdf_signature(embedded, signer_validation_context=context))


# --- A timestamp on every seal -----------------------------------------------------------------


def test_with_a_timestamp_server_the_seal_carries_its_token(tsa, completed, tmp_path, capsys):
    before = datetime.now(UTC) - timedelta(seconds=1)
    record = _seal(completed)
    assert record.status == "ready", record.error
    assert tsa.requests and set(tsa.requests) == {"application/timestamp-query"}

    data = record_file_bytes(record)
    seal_cert = load_cert_from_pemder(str(django_settings.RECORDS_CERT_PATH))
    # The token sits in the signature's unsigned attributes, signed by our test TSA.
    (token,) = _timestamp_tokens(data)
    assert tsa.cert.sha256 in {c.chosen.sha256 for c in token["certificates"]}
    status = _validate(data, seal_cert, tsa.cert)
    stamp = status.timestamp_validity
    assert stamp is not None and stamp.intact and stamp.valid and stamp.trusted
    assert stamp.signing_cert.sha256 == tsa.cert.sha256
    assert before <= stamp.timestamp <= datetime.now(UTC) + timedelta(seconds=1)
    assert status.intact and status.valid and status.bottom_line

    # Still ours by the verify service and the command; the seal check reads the TSA's time.
    verdict = record_verify(data)
    assert verdict.ok and verdict.record == record, verdict.reason
    assert pdf.inspect_seal(data, our_cert_sha256s={record.cert_sha256}).signed_at == stamp.timestamp
    copy = tmp_path / "record.pdf"
    copy.write_bytes(data)
    call_command("records_verify", str(copy))
    assert "Verified" in capsys.readouterr().out


def test_without_a_timestamp_server_the_seal_has_no_token(settings, completed):
    settings.RECORDS_TSA_URL = ""
    record = _seal(completed)
    assert record.status == "ready", record.error
    data = record_file_bytes(record)
    status = _validate(data, load_cert_from_pemder(str(settings.RECORDS_CERT_PATH)))
    assert _timestamp_tokens(data) == [] and status.timestamp_validity is None
    assert status.intact and status.valid


# --- A timestamp server that fails ------------------------------------------------------------


def _assert_failed_and_nothing_written(record: SealedRecord, records_dir: Path) -> None:
    assert record.status == "failed"
    assert not record.file_path and not record.sha256 and record.sealed_at is None
    assert not [p for p in records_dir.rglob("*") if p.is_file() and p.suffix in (".pdf", ".part")]
    assert not AuditEvent.objects.filter(action="record.sealed").exists()
    failed = AuditEvent.objects.get(action="record.seal_failed", target_id=str(record.pk))
    assert "timestamp server" in failed.data["error"]


def test_a_timestamp_server_error_fails_the_seal_and_names_the_server(tsa, completed, records_dir):
    tsa.mode = "error"
    record = _seal(completed)
    assert f"The timestamp server {tsa.url} (RECORDS_TSA_URL) answered HTTP 500" in record.error, record.error
    _assert_failed_and_nothing_written(record, records_dir)

    # Once the server answers again, a redelivered task seals the record.
    tsa.mode = "ok"
    record = _seal(completed)
    assert record.status == "ready" and record.error == ""
    assert len(_timestamp_tokens(record_file_bytes(record))) == 1


def test_a_timestamp_server_that_does_not_answer_fails_the_seal_in_time(tsa, completed, records_dir, monkeypatch):
    monkeypatch.setattr(pdf, "TSA_TIMEOUT", 1.0)
    tsa.mode = "hang"
    started = time.monotonic()
    record = _seal(completed)
    assert time.monotonic() - started < 15
    assert f"The timestamp server {tsa.url} (RECORDS_TSA_URL) did not answer within 1 s" in record.error, record.error
    _assert_failed_and_nothing_written(record, records_dir)


def test_a_server_that_is_not_a_timestamp_server_fails_the_seal(tsa, completed, records_dir):
    tsa.mode = "html"
    record = _seal(completed)
    assert f"The timestamp server {tsa.url} (RECORDS_TSA_URL) did not answer with a timestamp" in record.error
    assert "text/html" in record.error
    _assert_failed_and_nothing_written(record, records_dir)


def test_credentials_in_the_server_address_stay_out_of_the_error(settings, tsa, completed):
    tsa.mode = "error"
    settings.RECORDS_TSA_URL = tsa.url.replace("http://", "http://stamp:s3cret@") + "?key=s3cret"
    record = _seal(completed)
    assert record.status == "failed" and "s3cret" not in record.error
    assert f"The timestamp server {tsa.url} (RECORDS_TSA_URL)" in record.error, record.error


def test_an_unreachable_timestamp_server_fails_the_seal(settings, tsa, completed):
    settings.RECORDS_TSA_URL = "http://127.0.0.1:9/tsa"  # the discard port: nothing listens
    record = _seal(completed)
    assert record.status == "failed"
    assert "The timestamp server http://127.0.0.1:9/tsa (RECORDS_TSA_URL) could not be reached" in record.error


# --- Sealing needs no `requests` ---------------------------------------------------------------


def test_sealing_with_a_timestamp_imports_no_requests(tsa, settings):
    """A production install has no `requests` (only the dev requirements bring it): with the import
    blocked, a fresh process still seals a PDF against the timestamp server."""
    script = textwrap.dedent(
        """
        import io, sys
        sys.modules["requests"] = None  # any `import requests` now raises ImportError
        import django
        django.setup()
        from pyhanko.pdf_utils.reader import PdfFileReader
        from records import pdf
        sealed = pdf.seal_pdf(pdf.render_pdf("<p>A record</p>").pdf, reason="no requests")
        unsigned = PdfFileReader(io.BytesIO(sealed.pdf)).embedded_signatures[0].signer_info["unsigned_attrs"]
        assert sealed.timestamped and "signature_time_stamp_token" in [a["type"].native for a in unsigned]
        loaded = [name for name in sys.modules if name.split(".")[0] == "requests" and sys.modules[name] is not None]
        loaded += [name for name in sys.modules if name.endswith("requests_client")]
        print("sealed with a timestamp; requests modules loaded:", loaded)
        """
    )
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "RECORDS_TSA_URL": tsa.url,
        "RECORDS_DIR": str(settings.RECORDS_DIR),
        "RECORDS_KEY_PATH": str(settings.RECORDS_KEY_PATH),
        "RECORDS_CERT_PATH": str(settings.RECORDS_CERT_PATH),
    }
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=django_settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "sealed with a timestamp; requests modules loaded: []" in done.stdout
    assert tsa.requests

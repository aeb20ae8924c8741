"""Rendering, sealing and checking our PDF records. No database access here.

- render_pdf: WeasyPrint, PDF/A-3b, bundled fonts, attachments, within a time limit, through a URL
  fetcher that serves only the project's own static files: no file://, no network, no data: URLs.
- seal_pdf: a PAdES B-B certification signature with the lab's key (B-T with a timestamp server).
- inspect_seal: what a file's seal says (whose key, intact, covering the whole file).

WeasyPrint and pyHanko take seconds to import, so the rest of the app imports this module only
where it renders or verifies.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import mimetypes
import signal
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, SupportsInt, cast
from urllib.parse import urlsplit

from django.conf import settings

logger = logging.getLogger(__name__)
# WeasyPrint logs every step and page it lays out to this logger; the hook below uses those lines to
# enforce the time limit and report progress, and keeps them out of the log. Set up before WeasyPrint
# is imported: it parses its own stylesheets (and logs) at import.
PROGRESS_LOGGER = logging.getLogger("weasyprint.progress")
PROGRESS_LOGGER.setLevel(logging.INFO)  # the hook only sees records the logger lets through
PROGRESS_LOGGER.propagate = False

from weasyprint import HTML, Attachment  # noqa: E402
from weasyprint.urls import URLFetcher, URLFetcherResponse  # noqa: E402

# Templates name our static files as mpstatic:css/records.css; nothing else is fetched.
STATIC_SCHEME = "mpstatic"
STATIC_SUFFIXES = {".css", ".ttf", ".otf", ".woff", ".woff2", ".png", ".jpg", ".jpeg"}
STATIC_MAX_BYTES = 5 * 1024 * 1024
MAX_VERIFY_BYTES = 20 * 1024 * 1024
SEAL_FIELD = "ModelPactSeal"


class RecordError(Exception):
    """Rendering or sealing a record failed; the message says why, for the export page."""


class RenderTimeout(RecordError):
    pass


class SealKeyMissing(RecordError):
    pass


class _Deadline(BaseException):
    # BaseException: WeasyPrint catches Exception around every fetch and layout step.
    pass


# --- Fetching: our static files only ----------------------------------------------------------


class StaticOnlyFetcher(URLFetcher):
    """Serves mpstatic:<path> from STATICFILES_DIRS and refuses every other URL.

    Refused URLs are kept in `refused` (and logged), so tests and callers can see what a document
    tried to reach. Files are read directly: nothing is opened through urllib, so no redirect,
    proxy or scheme handler can be reached.
    """

    def __init__(self) -> None:
        super().__init__(timeout=1, allowed_protocols=[STATIC_SCHEME], allow_redirects=False)
        self.refused: list[str] = []
        self.served: list[str] = []
        self.roots = [Path(root).resolve() for root in settings.STATICFILES_DIRS]

    def fetch(self, url: str, headers: dict | None = None) -> URLFetcherResponse:
        _check_deadline()
        path = self._resolve(url)
        if path is None:
            self.refused.append(url[:300])
            logger.warning("Record rendering refused to fetch %.120s", url)
            raise ValueError(f"refused: only {STATIC_SCHEME}: URLs of our own static files are allowed")
        self.served.append(url)
        mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if path.suffix == ".ttf":
            mime = "font/ttf"
        return URLFetcherResponse(url, body=path.read_bytes(), headers={"Content-Type": mime})

    def _resolve(self, url: str) -> Path | None:
        prefix = f"{STATIC_SCHEME}:"
        if not url.startswith(prefix):
            return None
        relative = url[len(prefix) :].lstrip("/")
        if not relative or any(c in relative for c in "?#%\\\0") or ".." in relative.split("/"):
            return None
        for root in self.roots:
            candidate = (root / relative).resolve()
            if not candidate.is_relative_to(root) or candidate.suffix.lower() not in STATIC_SUFFIXES:
                continue
            if candidate.is_file() and candidate.stat().st_size <= STATIC_MAX_BYTES:
                return candidate
        return None


# --- Rendering, within a time limit ------------------------------------------------------------

_render_state: ContextVar[tuple[float, Callable[[int], None] | None] | None] = ContextVar(
    "record_render_state", default=None
)


def _check_deadline() -> None:
    state = _render_state.get()
    if state is not None and time.monotonic() > state[0]:
        raise _Deadline


class _ProgressHook(logging.Filter):
    """WeasyPrint logs each step and each page it lays out: check the deadline there, report pages.

    Returns False so the step-by-step lines never reach the log.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        state = _render_state.get()
        if state is None:
            return False
        _check_deadline()
        on_page, args = state[1], record.args
        page_line = str(record.msg).startswith("Step 5 - Creating layout - Page")
        if on_page is not None and page_line and isinstance(args, tuple) and args:
            on_page(int(cast(SupportsInt, args[0])))
        return False


PROGRESS_LOGGER.addFilter(_ProgressHook())


@contextmanager
def _time_limit(seconds: float, on_page: Callable[[int], None] | None) -> Iterator[None]:
    """Stop rendering after `seconds`: checked at every step, page and fetch, in any thread.

    In the main thread (the solo Celery worker, commands) a timer signal also interrupts a
    single long step; threads (the web server) rely on the checks and the task's time limit.
    """
    token = _render_state.set((time.monotonic() + seconds, on_page))
    use_alarm = threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGALRM) in (
        signal.SIG_DFL,
        None,
    )
    if use_alarm:

        def _on_alarm(signum: int, frame: Any) -> None:
            # Fire again shortly: a signal that lands in a finaliser is swallowed there.
            signal.setitimer(signal.ITIMER_REAL, 0.1)
            raise _Deadline

        signal.signal(signal.SIGALRM, _on_alarm)
        signal.setitimer(signal.ITIMER_REAL, seconds + 0.5)
    try:
        yield
    finally:
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
        _render_state.reset(token)


@dataclass
class Rendered:
    pdf: bytes
    refused: list[str] = field(default_factory=list)
    served: list[str] = field(default_factory=list)
    pages: int = 0


@dataclass(frozen=True)
class PdfAttachment:
    name: str
    data: bytes
    description: str


def render_pdf(
    html: str,
    *,
    attachments: list[PdfAttachment] | tuple[PdfAttachment, ...] = (),
    timeout: float | None = None,
    on_page: Callable[[int], None] | None = None,
) -> Rendered:
    """HTML to a PDF/A-3b document with our fonts and the given files attached (AFRelationship Data)."""
    fetcher = StaticOnlyFetcher()
    limit = timeout if timeout is not None else settings.RECORDS_RENDER_TIMEOUT
    now = datetime.now(UTC)
    try:
        with _time_limit(limit, on_page):
            document = HTML(string=html, url_fetcher=fetcher).render()
            files = [
                Attachment(
                    string=item.data,
                    name=item.name,
                    description=item.description,
                    relationship="Data",
                    created=now,
                    modified=now,
                    url_fetcher=fetcher,
                )
                for item in attachments
            ]
            pdf = document.write_pdf(pdf_variant="pdf/a-3b", attachments=files)
    except _Deadline:
        raise RenderTimeout(
            f"Rendering took longer than {limit:g} s and was stopped (RECORDS_RENDER_TIMEOUT)."
        ) from None
    return Rendered(pdf=pdf, refused=fetcher.refused, served=fetcher.served, pages=len(document.pages))


def render_bare(html: str) -> bytes:
    """WeasyPrint alone on the same HTML and fetcher: the benchmark's baseline."""
    return HTML(string=html, url_fetcher=StaticOnlyFetcher()).write_pdf()


# --- The sealing key --------------------------------------------------------------------------


def generate_seal_key(key_path: Path, cert_path: Path, *, common_name: str = "ModelPact development seal") -> str:
    """A P-256 key and a ten-year self-signed certificate for sealing; returns the certificate's SHA-256.

    P-256 rather than RSA: pyHanko reloads the key for every signature, and loading (validating)
    an RSA key costs about 0.2 s each time, an ECDSA key almost nothing.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ModelPact"),
        ]
    )
    now = datetime.now(UTC)
    usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=True,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .sign(key, hashes.SHA256())
    )
    key_path.parent.mkdir(parents=True, exist_ok=True)
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    key_path.write_bytes(key_bytes)
    key_path.chmod(0o600)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def seal_key_paths() -> tuple[Path, Path]:
    return Path(settings.RECORDS_KEY_PATH), Path(settings.RECORDS_CERT_PATH)


def ensure_seal_key() -> str | None:
    """Make sure a sealing key exists; in development make one. Returns the new cert's SHA-256, if made."""
    key_path, cert_path = seal_key_paths()
    if key_path.is_file() and cert_path.is_file():
        return None
    if not settings.DEBUG:
        raise SealKeyMissing(
            f"No sealing key: RECORDS_KEY_PATH ({key_path}) and RECORDS_CERT_PATH ({cert_path}) must name the "
            "lab's PEM key and certificate. Records are not sealed with a generated key when DEBUG is off."
        )
    return generate_seal_key(key_path, cert_path)


_signer_cache: dict[tuple, Any] = {}


def _signer() -> Any:
    """The lab's signer, loaded once per process (and again when the files change)."""
    from pyhanko.sign import signers

    key_path, cert_path = seal_key_paths()
    try:
        cache_key = (str(key_path), str(cert_path), key_path.stat().st_mtime_ns, cert_path.stat().st_mtime_ns)
    except FileNotFoundError:
        raise SealKeyMissing(f"The sealing key or certificate is missing ({key_path}, {cert_path}).") from None
    signer = _signer_cache.get(cache_key)
    if signer is None:
        signer = signers.SimpleSigner.load(str(key_path), str(cert_path))
        if signer is None:
            raise SealKeyMissing(f"Could not read the sealing key {key_path} or certificate {cert_path} (PEM).")
        _check_key_matches(signer)
        _signer_cache.clear()
        _signer_cache[cache_key] = signer
    return signer


def _check_key_matches(signer: Any) -> None:
    from cryptography.hazmat.primitives import serialization

    private = serialization.load_der_private_key(signer.signing_key.dump(), password=None)
    public = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if public != signer.signing_cert.public_key.dump():
        raise SealKeyMissing("RECORDS_KEY_PATH does not hold the private key of the certificate in RECORDS_CERT_PATH.")


def seal_cert_sha256() -> str:
    """SHA-256 of the configured sealing certificate (DER). Reads only the certificate: web hosts
    that verify records need no private key."""
    from pyhanko.sign.general import load_cert_from_pemder

    cert_path = seal_key_paths()[1]
    try:
        return load_cert_from_pemder(str(cert_path)).sha256.hex()
    except (OSError, ValueError) as exc:
        raise SealKeyMissing(f"Cannot read the sealing certificate {cert_path}: {exc}") from None


# --- Sealing ----------------------------------------------------------------------------------


def _run(factory: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run one of pyHanko's coroutines from sync code, even where this thread already runs a loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


@dataclass(frozen=True)
class Sealed:
    pdf: bytes
    sealed_at: datetime
    cert_sha256: str
    timestamped: bool


# Each request to the timestamp server (pyHanko makes two per seal: one to size the signature, one
# for the token) gets this long before the seal fails, so a server that hangs cannot hold a worker.
TSA_TIMEOUT = 20.0


class TimestampFailed(RecordError):
    pass


def seal_pdf(pdf: bytes, *, reason: str, signer: Any = None) -> Sealed:
    """Seal with the lab's key: a certification signature that permits no later change (DocMDP 1).

    With RECORDS_TSA_URL the signature also carries the timestamp server's token (PAdES B-T).
    `signer` is for tests that need a copy sealed with some other key.
    """
    from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
    from pyhanko.sign import fields, signers

    signer = signer or _signer()
    tsa_url = settings.RECORDS_TSA_URL
    meta = signers.PdfSignatureMetadata(
        field_name=SEAL_FIELD,
        subfilter=fields.SigSeedSubFilter.PADES,
        md_algorithm="sha256",
        reason=reason[:200],
        certify=True,
        docmdp_permissions=fields.MDPPerm.NO_CHANGES,
    )
    sealed_at = datetime.now(UTC)

    class KeepMetadataWriter(IncrementalPdfFileWriter):
        def _update_meta(self) -> None:
            # pyHanko would rewrite the XMP metadata from scratch and drop WeasyPrint's PDF/A
            # identification (pdfaid): keep the document's metadata exactly as rendered.
            pass

    async def sign() -> io.BytesIO:
        writer = KeepMetadataWriter(io.BytesIO(pdf))
        if not tsa_url:
            return await signers.PdfSigner(meta, signer=signer).async_sign_pdf(writer)
        # aiohttp, not requests: it is what pyHanko itself depends on, so a production install has
        # it. The HTTP client belongs to this event loop and is closed before the loop ends.
        import aiohttp

        async with aiohttp.ClientSession() as client:
            timestamper = _timestamper(tsa_url, client)
            return await signers.PdfSigner(meta, signer=signer, timestamper=timestamper).async_sign_pdf(writer)

    try:
        output = _run(sign)
    except RecordError:
        raise
    except Exception as exc:
        raise RecordError(f"Sealing failed: {exc}") from exc
    return Sealed(
        pdf=output.getvalue(),
        sealed_at=sealed_at,
        cert_sha256=signer.signing_cert.sha256.hex(),
        timestamped=bool(tsa_url),
    )


def _timestamper(url: str, client: Any) -> Any:
    """pyHanko's aiohttp timestamp client, posting through `client`; its failures name the server."""
    from pyhanko.sign.timestamps.aiohttp_client import HTTPTimeStamper

    class RecordTimeStamper(HTTPTimeStamper):
        async def async_timestamp(self, message_digest: bytes, md_algorithm: str) -> Any:
            try:
                return await super().async_timestamp(message_digest, md_algorithm)
            except Exception as exc:
                raise TimestampFailed(_timestamp_failure(url, exc)) from exc

    return RecordTimeStamper(url, session=client, timeout=TSA_TIMEOUT)


def _timestamp_failure(url: str, exc: BaseException) -> str:
    """What went wrong with the timestamp server, for the record's error (no credentials shown)."""
    import aiohttp
    from pyhanko.sign.timestamps import TimestampRequestError

    parts = urlsplit(url)
    shown = parts._replace(netloc=parts.netloc.rpartition("@")[2], query="", fragment="").geturl()
    server = f"The timestamp server {shown} (RECORDS_TSA_URL)"
    causes: list[BaseException] = []
    cause: BaseException | None = exc
    while cause is not None and len(causes) < 10:
        causes.append(cause)
        cause = cause.__cause__ or cause.__context__
    for cause in causes:
        if isinstance(cause, TimeoutError):
            return f"{server} did not answer within {TSA_TIMEOUT:g} s; the record was not sealed."
        if isinstance(cause, aiohttp.ContentTypeError):
            return f"{server} did not answer with a timestamp ({_short(cause)}); the record was not sealed."
        if isinstance(cause, aiohttp.ClientResponseError):
            return f"{server} answered HTTP {cause.status} {cause.message}".rstrip() + "; the record was not sealed."
        if isinstance(cause, aiohttp.ClientConnectionError | OSError) and not isinstance(cause, TimestampRequestError):
            return f"{server} could not be reached ({_short(cause)}); the record was not sealed."
    return f"{server} gave no usable timestamp ({_short(exc)}); the record was not sealed."


# --- Checking a seal --------------------------------------------------------------------------


@dataclass(frozen=True)
class SealCheck:
    """What the file's own seal says. `code` is empty when the seal is ours, intact and covers the file."""

    code: str
    message: str
    signed_at: datetime | None = None
    cert_sha256: str = ""

    @property
    def ok(self) -> bool:
        return not self.code


def inspect_seal(data: bytes, *, our_cert_sha256s: set[str]) -> SealCheck:
    """Check size, format, who sealed it, whether the sealed bytes are intact, and whether the seal
    still covers the whole file (an incremental update appended later would not be covered)."""
    if len(data) > MAX_VERIFY_BYTES:
        return SealCheck("too_large", "The file is over 20 MB; none of our records is that large.")
    if not data.startswith(b"%PDF-"):
        return SealCheck("not_pdf", "This is not a PDF file.")
    from pyhanko.pdf_utils.misc import PdfError
    from pyhanko.pdf_utils.reader import PdfFileReader

    try:
        reader = PdfFileReader(io.BytesIO(data), strict=False)
        signatures = list(reader.embedded_signatures)
    except (PdfError, ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        return SealCheck("unreadable", f"The PDF is damaged or truncated and cannot be read ({_short(exc)}).")
    except Exception as exc:  # a hostile file can trip any parser path; it is never a record of ours
        return SealCheck("unreadable", f"The PDF cannot be read ({_short(exc)}).")
    if not signatures:
        return SealCheck("no_seal", "The PDF carries no seal.")
    first: SealCheck | None = None
    for embedded in signatures:
        check = _check_signature(embedded, our_cert_sha256s)
        if not check.ok:
            return check
        first = first or check
    assert first is not None  # there was at least one signature
    return first


def _check_signature(embedded: Any, our_cert_sha256s: set[str]) -> SealCheck:
    from pyhanko.sign.validation.pdf_embedded import async_validate_pdf_signature
    from pyhanko.sign.validation.status import SignatureCoverageLevel
    from pyhanko_certvalidator import ValidationContext

    try:
        cert = embedded.signer_cert
        cert_sha256 = cert.sha256.hex()
    except Exception as exc:
        return SealCheck("seal_invalid", f"The seal cannot be read ({_short(exc)}).")
    if cert_sha256 not in our_cert_sha256s:
        return SealCheck(
            "other_key",
            f"It was sealed with a key that is not the lab's (certificate SHA-256 {cert_sha256}).",
            cert_sha256=cert_sha256,
        )
    context = ValidationContext(trust_roots=[cert], allow_fetching=False)
    try:
        status = _run(lambda: async_validate_pdf_signature(embedded, signer_validation_context=context))
    except Exception as exc:
        return SealCheck("seal_invalid", f"The seal is invalid ({_short(exc)}).", cert_sha256=cert_sha256)
    signed_at = status.signer_reported_dt
    if status.timestamp_validity is not None:
        signed_at = status.timestamp_validity.timestamp
    if not status.intact:
        return SealCheck(
            "bytes_changed",
            "Its bytes changed after sealing: the sealed content no longer matches the seal's digest.",
            signed_at,
            cert_sha256,
        )
    if not status.valid:
        return SealCheck("seal_invalid", "The seal's signature is not valid.", signed_at, cert_sha256)
    if status.coverage != SignatureCoverageLevel.ENTIRE_FILE:
        return SealCheck(
            "incremental_update",
            "Something was appended after sealing (an incremental update): the seal covers only an earlier "
            "revision of the file.",
            signed_at,
            cert_sha256,
        )
    return SealCheck("", "The seal is the lab's, intact, and covers the whole file.", signed_at, cert_sha256)


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text[:160]


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()

"""Signed checkpoints of the chain head, kept outside the database.

Whoever holds the database itself (a superuser, the owner role's password) can rewrite an
event and re-hash every later row and the head, and the chain alone would still verify. So
every hour the head's seq and hash are signed with the lab's sealing key and written as a
small JSON file under RECORDS_DIR/chain-checkpoints/. audit_verify then checks that each
signed event is still in the database with exactly that hash: a rewritten history, re-hashed
rows or a dropped tail no longer pass.

A checkpoint is only written when the chain since the previous one verifies, so a history
rewritten between two checkpoints is refused rather than signed.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from django.conf import settings
from django.utils import timezone

from audit.models import GENESIS_HASH, AuditEvent, ChainHead

CHECKPOINT_DIRNAME = "chain-checkpoints"
FORMAT = "modelpact.audit-chain-checkpoint/1"
_SIGNED_FIELDS = ("format", "seq", "hash", "time", "cert_sha256")
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_RSA_PADDING = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)


class CheckpointError(Exception):
    """A checkpoint cannot be written (no key, or a chain that does not extend the last one)."""


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint file whose signature verified with the lab's certificate."""

    path: Path
    seq: int
    hash: str
    time: datetime

    @property
    def label(self) -> str:
        """How reports name it: 'the signed checkpoint of 2026-12-01T10:00Z'."""
        return f"the signed checkpoint of {self.time.astimezone(UTC):%Y-%m-%dT%H:%MZ}"


@dataclass(frozen=True)
class CheckpointSet:
    checkpoints: list[Checkpoint] = field(default_factory=list)  # trusted ones, in seq order
    problems: list[str] = field(default_factory=list)  # files that could not be trusted, and why

    @property
    def latest(self) -> Checkpoint | None:
        return self.checkpoints[-1] if self.checkpoints else None


def checkpoint_dir() -> Path:
    return Path(settings.RECORDS_DIR) / CHECKPOINT_DIRNAME


def checkpoint_filename(seq: int) -> str:
    # One file per seq: a second write of the same head finds the file and stops.
    return f"chain-head-{seq:012d}.json"


# --- Reading and checking ---------------------------------------------------------------------


def checkpoints_load() -> CheckpointSet:
    """Every checkpoint file in the folder, checked against the lab's certificate."""
    folder = checkpoint_dir()
    files = sorted(folder.glob("chain-head-*.json")) if folder.is_dir() else []
    if not files:
        return CheckpointSet()
    try:
        public_key, cert_sha256 = _lab_certificate()
    except CheckpointError as exc:
        return CheckpointSet(problems=[f"{len(files)} signed checkpoints cannot be checked: {exc}"])
    result = CheckpointSet()
    for path in files:
        try:
            result.checkpoints.append(_checkpoint_read(path, public_key, cert_sha256))
        except CheckpointError as exc:
            result.problems.append(f"checkpoint file {path.name} {exc}")
    result.checkpoints.sort(key=lambda checkpoint: checkpoint.seq)
    return result


def _checkpoint_read(path: Path, public_key: CertificatePublicKeyTypes, cert_sha256: str) -> Checkpoint:
    try:
        document = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot be read as JSON: {exc}") from None
    if not isinstance(document, dict) or set(document) != {*_SIGNED_FIELDS, "signature"}:
        raise CheckpointError("is not a chain checkpoint (unexpected fields)")
    payload = {name: document[name] for name in _SIGNED_FIELDS}
    if payload["format"] != FORMAT:
        raise CheckpointError(f"has an unknown format {payload['format']!r}")
    if payload["cert_sha256"] != cert_sha256:
        raise CheckpointError(
            f"was signed with another certificate (SHA-256 {str(payload['cert_sha256'])[:16]}…), "
            f"not the lab's certificate in RECORDS_CERT_PATH (SHA-256 {cert_sha256[:16]}…)"
        )
    try:
        signature = base64.b64decode(document["signature"], validate=True)
    except (TypeError, ValueError):
        raise CheckpointError("has a signature that is not base64") from None
    if not _signature_valid(public_key, signature, _signed_bytes(payload)):
        raise CheckpointError("has a signature that does not verify with the lab's certificate: it was altered")
    seq, digest, stamp = payload["seq"], payload["hash"], payload["time"]
    if not isinstance(seq, int) or seq < 1 or not isinstance(digest, str) or len(digest) != 64:
        raise CheckpointError("is signed but does not name an event")
    try:
        when = datetime.strptime(stamp, _TIME_FORMAT).replace(tzinfo=UTC)
    except (TypeError, ValueError):
        raise CheckpointError(f"is signed but has a bad time {stamp!r}") from None
    return Checkpoint(path=path, seq=seq, hash=digest, time=when)


# --- Writing ----------------------------------------------------------------------------------


def checkpoint_write(*, now: datetime | None = None) -> Checkpoint | None:
    """Sign the current head and write it; None when the head has not moved since the last checkpoint.

    Refuses (CheckpointError) when the events since the last checkpoint do not extend it: signing
    that head would vouch for a rewritten history.
    """
    head_seq, head_hash = ChainHead.objects.filter(pk=1).values_list("seq", "hash").first() or (0, GENESIS_HASH)
    last = checkpoints_load().latest
    if last is None and head_seq == 0:
        return None  # an empty chain: nothing to vouch for yet
    if last is not None and (last.seq, last.hash) == (head_seq, head_hash):
        return None
    _check_extends(last, head_seq, head_hash)
    private_key, cert_sha256 = _lab_key()
    when = (now or timezone.now()).astimezone(UTC).replace(microsecond=0)
    payload = {"format": FORMAT, "seq": head_seq, "hash": head_hash, "time": when.strftime(_TIME_FORMAT)}
    payload["cert_sha256"] = cert_sha256
    signature = _sign(private_key, _signed_bytes(payload))
    document = {**payload, "signature": base64.b64encode(signature).decode()}
    path = checkpoint_dir() / checkpoint_filename(head_seq)
    if not _write_new(path, json.dumps(document, indent=2, sort_keys=True).encode() + b"\n"):
        # Another run wrote this seq first; the next verification judges that file.
        return None
    return Checkpoint(path=path, seq=head_seq, hash=head_hash, time=when)


def _check_extends(last: Checkpoint | None, head_seq: int, head_hash: str) -> None:
    """Walk the events from the last checkpoint (or the first event) up to the head."""
    if last is not None and head_seq < last.seq:
        raise CheckpointError(f"The chain head #{head_seq} is behind {last.label} (#{last.seq}); events were removed.")
    start = last.seq if last is not None else 1
    expected_seq, prev_hash = start, GENESIS_HASH
    rows = AuditEvent.objects.filter(seq__gte=start, seq__lte=head_seq).order_by("seq").iterator(chunk_size=2000)
    for event in rows:
        if event.seq != expected_seq:
            raise CheckpointError(f"Event #{expected_seq} is missing; not signing head #{head_seq}.")
        if last is not None and event.seq == last.seq:
            if event.hash != last.hash:
                raise CheckpointError(f"Event #{event.seq} differs from {last.label}; not signing head #{head_seq}.")
        elif event.prev_hash != prev_hash or event.compute_hash() != event.hash:
            raise CheckpointError(f"Event #{event.seq} does not verify; not signing head #{head_seq}.")
        prev_hash = event.hash
        expected_seq += 1
    if expected_seq - 1 != head_seq or prev_hash != head_hash:
        raise CheckpointError(f"The events do not end at the chain head #{head_seq}; not signing it.")


def _write_new(path: Path, content: bytes) -> bool:
    """Write the file whole or not at all, and never over an existing one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
    return True


# --- The lab's key and certificate ------------------------------------------------------------


SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def _signed_bytes(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _lab_certificate() -> tuple[CertificatePublicKeyTypes, str]:
    """The lab certificate's public key and SHA-256 (of its DER form)."""
    path = Path(settings.RECORDS_CERT_PATH)
    try:
        data = path.read_bytes()
        cert = x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data else x509.load_der_x509_certificate(data)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"the lab certificate {path} cannot be read: {exc}") from None
    der = cert.public_bytes(serialization.Encoding.DER)
    return cert.public_key(), hashlib.sha256(der).hexdigest()


def _lab_key() -> tuple[SigningKey, str]:
    """The lab's private sealing key, checked against the certificate it must belong to."""
    path = Path(settings.RECORDS_KEY_PATH)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise CheckpointError(f"The lab's sealing key {path} cannot be read (RECORDS_KEY_PATH): {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise CheckpointError(f"The lab's sealing key {path} is neither ECDSA nor RSA.")
    try:
        public_key, cert_sha256 = _lab_certificate()
    except CheckpointError as exc:
        raise CheckpointError(f"Cannot sign checkpoints: {exc}") from None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.DER, spki) != public_key.public_bytes(
        serialization.Encoding.DER, spki
    ):
        raise CheckpointError("RECORDS_KEY_PATH does not hold the private key of the certificate in RECORDS_CERT_PATH.")
    return key, cert_sha256


def _sign(private_key: SigningKey, message: bytes) -> bytes:
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        return private_key.sign(message, ec.ECDSA(hashes.SHA256()))
    return private_key.sign(message, _RSA_PADDING, hashes.SHA256())


def _signature_valid(public_key: CertificatePublicKeyTypes, signature: bytes, message: bytes) -> bool:
    try:
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        elif isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, message, _RSA_PADDING, hashes.SHA256())
        else:
            return False
    except InvalidSignature:
        return False
    return True

"""Signed chain-head checkpoints outside the database catch a history rewritten by whoever holds it.

The attacker here is a database superuser: triggers off, an event edited, every later row and
the head re-hashed, so the chain alone verifies. The checkpoints signed with the lab's key do not.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from django.core.management import call_command
from django.core.management.base import CommandError

from accounts import services
from audit.checkpoints import CheckpointError, checkpoint_dir, checkpoint_write, checkpoints_load
from audit.models import GENESIS_HASH, AuditEvent, ChainHead
from audit.selectors import audit_chain_verify
from audit.tasks import write_chain_checkpoint
from records.pdf import generate_seal_key
from tests.audit.test_chain import behind_the_apps_back

pytestmark = pytest.mark.django_db
SIGNED_AT = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)


@pytest.fixture
def chain(lab_admin) -> list[AuditEvent]:
    for n in range(6):
        services.organization_create(actor=lab_admin, name=f"Org {n}", legal_name=f"Org {n} Ltd")
    return list(AuditEvent.objects.order_by("seq"))


def more_events(lab_admin, count: int = 2) -> None:
    start = AuditEvent.objects.count()
    for n in range(start, start + count):
        services.organization_create(actor=lab_admin, name=f"Later {n}", legal_name=f"Later {n} Ltd")


def rewrite_history(seq: int, data: dict) -> None:
    """Edit one event and re-hash it, every later event and the head: a chain that verifies on its own."""
    events = list(AuditEvent.objects.order_by("seq"))
    prev_hash = events[seq - 2].hash if seq > 1 else GENESIS_HASH
    for event in events[seq - 1 :]:
        if event.seq == seq:
            event.data = data
        event.prev_hash = prev_hash
        event.hash = event.compute_hash()
        behind_the_apps_back(
            "UPDATE audit_auditevent SET data = %s, prev_hash = %s, hash = %s WHERE seq = %s",
            [json.dumps(event.data), event.prev_hash, event.hash, event.seq],
        )
        prev_hash = event.hash
    behind_the_apps_back("UPDATE audit_chainhead SET seq = %s, hash = %s WHERE id = 1", [events[-1].seq, prev_hash])


def verify_fails(*fragments: str) -> str:
    with pytest.raises(CommandError) as excinfo:
        call_command("audit_verify")
    assert excinfo.value.returncode == 1
    message = str(excinfo.value)
    for fragment in fragments:
        assert fragment in message
    return message


def test_a_rewritten_and_rehashed_history_is_caught_by_the_signed_checkpoint(chain, lab_admin, settings, tmp_path):
    signed = checkpoint_write(now=SIGNED_AT)
    assert signed is not None and signed.seq == chain[-1].seq
    more_events(lab_admin)
    rewrite_history(5, {"name": "forged"})

    # The database alone no longer tells: every row links and hashes.
    records_dir = settings.RECORDS_DIR
    settings.RECORDS_DIR = tmp_path / "elsewhere"
    assert audit_chain_verify().ok
    settings.RECORDS_DIR = records_dir

    verify_fails(f"seq {signed.seq}", f"event #{signed.seq} differs from the signed checkpoint of 2026-12-01T10:00Z")
    # Nor will the forged head be signed.
    with pytest.raises(CommandError, match=f"Event #{signed.seq} differs from the signed checkpoint"):
        call_command("audit_checkpoint")


def test_a_dropped_tail_with_the_head_fixed_is_caught(chain):
    signed = checkpoint_write(now=SIGNED_AT)
    keep = chain[-6]
    behind_the_apps_back("DELETE FROM audit_auditevent WHERE seq > %s", [keep.seq])
    behind_the_apps_back("UPDATE audit_chainhead SET seq = %s, hash = %s WHERE id = 1", [keep.seq, keep.hash])
    message = verify_fails(f"seq {keep.seq + 1}", f"event #{signed.seq} is missing", "2026-12-01T10:00Z")
    assert f"the chain ends at #{keep.seq}" in message


@pytest.mark.parametrize("field", ["signature", "hash", "seq"])
def test_a_checkpoint_file_that_was_altered_is_reported(chain, field):
    signed = checkpoint_write(now=SIGNED_AT)
    document = json.loads(signed.path.read_text())
    if field == "signature":
        raw = bytearray(base64.b64decode(document["signature"]))
        raw[-1] ^= 0x01
        document["signature"] = base64.b64encode(bytes(raw)).decode()
    elif field == "hash":
        document["hash"] = "f" * 64
    else:
        document["seq"] -= 1
    signed.path.write_text(json.dumps(document))
    message = verify_fails(signed.path.name, "a signature that does not verify with the lab's certificate")
    assert "cannot be trusted" in message
    assert checkpoints_load().checkpoints == []


def test_a_checkpoint_signed_with_another_key_is_reported(chain, settings, tmp_path):
    lab_key, lab_cert = settings.RECORDS_KEY_PATH, settings.RECORDS_CERT_PATH
    settings.RECORDS_KEY_PATH, settings.RECORDS_CERT_PATH = tmp_path / "other-key.pem", tmp_path / "other-cert.pem"
    generate_seal_key(settings.RECORDS_KEY_PATH, settings.RECORDS_CERT_PATH, common_name="Not the lab")
    checkpoint_write(now=SIGNED_AT)
    settings.RECORDS_KEY_PATH, settings.RECORDS_CERT_PATH = lab_key, lab_cert
    verify_fails("signed with another certificate")


def test_an_intact_chain_verifies_against_every_checkpoint(chain, lab_admin, capsys):
    first = checkpoint_write(now=SIGNED_AT)
    more_events(lab_admin)
    second = checkpoint_write(now=SIGNED_AT + timedelta(hours=1))
    assert first.seq < second.seq
    more_events(lab_admin, 1)
    call_command("audit_verify")
    out = capsys.readouterr().out
    assert "Audit chain intact" in out
    assert f"2 signed checkpoints checked; latest #{second.seq}, the signed checkpoint of 2026-12-01T11:00Z" in out
    report = audit_chain_verify()
    assert report.ok and report.checkpoints == 2


def test_no_new_checkpoint_is_written_while_the_head_stands_still(chain, lab_admin, capsys):
    call_command("audit_checkpoint")
    assert "Signed checkpoint of head" in capsys.readouterr().out
    call_command("audit_checkpoint")
    assert "No new checkpoint" in capsys.readouterr().out
    assert len(list(checkpoint_dir().glob("*.json"))) == 1
    more_events(lab_admin, 1)
    call_command("audit_checkpoint")
    assert len(list(checkpoint_dir().glob("*.json"))) == 2
    assert not list(checkpoint_dir().glob(".*"))  # no temporary files left behind


def test_the_hourly_task_writes_a_checkpoint_once(chain, settings):
    entry = settings.CELERY_BEAT_SCHEDULE["audit-chain-checkpoint"]
    assert entry["task"] == write_chain_checkpoint.name == "audit.tasks.write_chain_checkpoint"
    assert entry["schedule"] == 3600.0 and entry["options"]["queue"] == "default"
    head = ChainHead.objects.get(pk=1)
    assert write_chain_checkpoint.delay().get() == head.seq
    assert write_chain_checkpoint.delay().get() is None  # a second run finds the head signed already
    assert [c.seq for c in checkpoints_load().checkpoints] == [head.seq]


def test_checkpoints_need_the_lab_key(chain, settings, tmp_path):
    settings.RECORDS_KEY_PATH = tmp_path / "missing.pem"
    with pytest.raises(CheckpointError, match="RECORDS_KEY_PATH"):
        checkpoint_write()
    assert not checkpoint_dir().exists()


def test_an_rsa_sealing_key_signs_and_verifies_too(chain, settings, tmp_path):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Lab RSA seal")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(SIGNED_AT - timedelta(days=1))
        .not_valid_after(SIGNED_AT + timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = Path(tmp_path / "rsa-key.pem"), Path(tmp_path / "rsa-cert.pem")
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    settings.RECORDS_KEY_PATH, settings.RECORDS_CERT_PATH = key_path, cert_path
    signed = checkpoint_write(now=SIGNED_AT)
    report = audit_chain_verify()
    assert report.ok and report.checkpoints == 1
    rewrite_history(2, {"name": "forged"})
    assert (
        audit_chain_verify().problem == f"event #{signed.seq} differs from the signed checkpoint of 2026-12-01T10:00Z"
    )


def test_an_emptied_log_is_caught_and_not_signed(chain):
    signed = checkpoint_write(now=SIGNED_AT)
    behind_the_apps_back("DELETE FROM audit_auditevent")
    behind_the_apps_back("DELETE FROM audit_chainhead")
    verify_fails("seq 1", f"event #{signed.seq} is missing: the chain ends at #0")
    with pytest.raises(CheckpointError, match="behind the signed checkpoint"):
        checkpoint_write()

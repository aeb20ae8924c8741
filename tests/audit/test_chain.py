"""The audit log is a hash chain that audit_verify can check, and that nobody can quietly edit."""

from __future__ import annotations

import importlib
import itertools
import threading

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, connections, transaction
from django.test.utils import CaptureQueriesContext

from accounts import services
from audit.models import AppendOnlyError, AuditEvent, ChainHead
from audit.selectors import audit_chain_verify
from audit.services import AuditEntry, audit_append, audit_append_many

pytestmark = pytest.mark.django_db
CHAIN_TRIGGER = importlib.import_module("audit.migrations.0004_chain_head_maintained_by_the_database")


@pytest.fixture
def chain(lab_admin, partner_a, partner_b) -> list[AuditEvent]:
    """A chain of a dozen real events from services."""
    for n in range(6):
        services.organization_create(actor=lab_admin, name=f"Org {n}", legal_name=f"Org {n} Ltd")
    return list(AuditEvent.objects.order_by("seq"))


def behind_the_apps_back(sql: str, params: list | None = None) -> None:
    """Change the table directly, as someone with database access could (the triggers switched off)."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # A superuser can switch triggers off for the session: what an insider would do.
            cursor.execute("SET session_replication_role = replica")
        else:
            # SQLite cannot switch a trigger off; whoever holds the file drops it and puts it back.
            cursor.execute(CHAIN_TRIGGER.SQLITE_DROP_SQL)
        cursor.execute(sql, params or [])
        if connection.vendor == "postgresql":
            cursor.execute("SET session_replication_role = DEFAULT")
        else:
            cursor.execute(CHAIN_TRIGGER.SQLITE_TRIGGER_SQL)


def verify_fails_at(seq: int) -> str:
    with pytest.raises(CommandError) as excinfo:
        call_command("audit_verify")
    assert excinfo.value.returncode == 1
    assert f"seq {seq}" in str(excinfo.value)
    return str(excinfo.value)


def test_a_chain_written_by_services_verifies(chain, capsys):
    assert len(chain) >= 10
    assert [e.seq for e in chain] == list(range(1, len(chain) + 1))
    for before, after in itertools.pairwise(chain):
        assert after.prev_hash == before.hash
    call_command("audit_verify")
    assert "intact" in capsys.readouterr().out


def test_events_appended_together_go_in_one_insert_and_chain_in_order(chain, lab_admin, partner_a, partner_b):
    head = ChainHead.objects.get()
    organizations = [partner_a, partner_b]
    entries = [AuditEntry(action="test.noted", target=org, data={"n": n}) for n, org in enumerate(organizations)]
    with CaptureQueriesContext(connection) as appending:
        appended = audit_append_many(actor=lab_admin, entries=entries)
    inserts = [q for q in appending.captured_queries if q["sql"].startswith('INSERT INTO "audit_auditevent"')]
    assert len(inserts) == 1
    stored = list(AuditEvent.objects.filter(seq__gt=head.seq).order_by("seq"))
    assert [e.seq for e in stored] == [e.seq for e in appended] == [head.seq + 1, head.seq + 2]
    assert [(e.target_id, e.organization_id, e.data) for e in stored] == [
        (str(partner_a.pk), partner_a.pk, {"n": 0}),
        (str(partner_b.pk), partner_b.pk, {"n": 1}),
    ]
    assert stored[0].prev_hash == head.hash and stored[1].prev_hash == stored[0].hash
    assert ChainHead.objects.get().hash == stored[1].hash
    assert audit_chain_verify().ok


def test_events_appended_together_roll_back_together(chain, lab_admin, partner_a):
    head = ChainHead.objects.get()
    with pytest.raises(RuntimeError), transaction.atomic():
        audit_append_many(actor=lab_admin, entries=[AuditEntry(action="test.noted", target=partner_a)] * 3)
        raise RuntimeError("the change failed")
    assert not AuditEvent.objects.filter(seq__gt=head.seq).exists()
    assert ChainHead.objects.get().seq == head.seq


def test_every_service_event_names_actor_action_and_target(lab_admin):
    organization = services.organization_create(actor=lab_admin, name="Acme", legal_name="Acme Research Ltd")
    event = AuditEvent.objects.order_by("-seq").first()
    assert event.action == "organization.created"
    assert event.actor == lab_admin and event.actor_email == "admin@lab.example"
    assert event.organization == organization
    assert event.target_id == str(organization.pk)
    assert event.data["legal_name"] == "Acme Research Ltd"


def test_an_edited_row_is_named(chain):
    behind_the_apps_back("UPDATE audit_auditevent SET data = %s WHERE seq = 5", ['{"name": "forged"}'])
    assert "changed" in verify_fails_at(5)


def test_a_deleted_row_is_named(chain):
    behind_the_apps_back("DELETE FROM audit_auditevent WHERE seq = 4")
    verify_fails_at(4)


def test_an_inserted_row_is_named(chain):
    # seq is unique, so an insertion in the middle renumbers the tail.
    behind_the_apps_back("UPDATE audit_auditevent SET seq = seq + 1000 WHERE seq >= 3")
    behind_the_apps_back("UPDATE audit_auditevent SET seq = seq - 999 WHERE seq >= 1003")
    behind_the_apps_back(
        "INSERT INTO audit_auditevent (seq, created_at, actor_email, action, target_type, target_id, target_repr,"
        " data, prev_hash, hash) VALUES (3, %s, '', 'organization.created', '', '', '', '{}', %s, %s)",
        [chain[2].created_at, chain[1].hash, "e" * 64],
    )
    verify_fails_at(3)


def test_a_row_appended_behind_the_apps_back_is_named(chain):
    last = chain[-1]
    behind_the_apps_back(
        "INSERT INTO audit_auditevent (seq, created_at, actor_email, action, target_type, target_id, target_repr,"
        " data, prev_hash, hash) VALUES (%s, %s, '', 'organization.created', '', '', '', '{}', %s, %s)",
        [last.seq + 1, last.created_at, last.hash, "d" * 64],
    )
    verify_fails_at(last.seq + 1)


def test_reordered_rows_are_named(chain):
    behind_the_apps_back("UPDATE audit_auditevent SET seq = -1 WHERE seq = 6")
    behind_the_apps_back("UPDATE audit_auditevent SET seq = 6 WHERE seq = 7")
    behind_the_apps_back("UPDATE audit_auditevent SET seq = 7 WHERE seq = -1")
    verify_fails_at(6)


def test_a_truncated_tail_is_named(chain):
    last = chain[-1].seq
    behind_the_apps_back("DELETE FROM audit_auditevent WHERE seq >= %s", [last - 1])
    message = verify_fails_at(last - 1)
    assert "removed" in message


def test_saving_or_deleting_an_event_in_python_raises(chain):
    event = chain[0]
    event.action = "something.else"
    with pytest.raises(AppendOnlyError):
        event.save()
    with pytest.raises(AppendOnlyError):
        event.delete()
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.filter(seq=1).update(action="x")
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.all().delete()
    assert audit_chain_verify().ok


@pytest.mark.skipif("connection.vendor != 'postgresql'")
def test_postgresql_rejects_update_and_delete_on_the_audit_table(chain):
    from django.db import DatabaseError

    for sql in ("UPDATE audit_auditevent SET action = 'x' WHERE seq = 1", "DELETE FROM audit_auditevent WHERE seq = 1"):
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql)
    assert audit_chain_verify().ok


@pytest.mark.skipif("connection.vendor != 'postgresql'")
@pytest.mark.django_db(transaction=True)
def test_two_threads_writing_200_events_each_leave_one_chain_of_400():
    ChainHead.objects.get_or_create(pk=1)
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def writer(name: str) -> None:
        try:
            start.wait()
            for n in range(200):
                with transaction.atomic():
                    audit_append(actor=None, action="test.concurrent", data={"writer": name, "n": n})
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=writer, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    report = audit_chain_verify()
    assert report.ok, report.problem
    assert report.events == 400
    assert AuditEvent.objects.filter(data__writer="a").count() == 200

"""The app's own PostgreSQL role can read and append the audit log, and nothing else.

A throwaway owner role, app role and database: migrate runs as the owner (granting the app role
its privileges itself, as DATABASE_APP_ROLE asks), then everything the app role tries against
the audit tables beyond SELECT and INSERT is refused by PostgreSQL, and an INSERT that does not
extend the chain is refused by the database's own trigger.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import IntegrityError, connection, transaction

from audit.models import AuditEvent, ChainHead
from audit.selectors import audit_chain_verify
from audit.services import audit_append

psycopg = pytest.importorskip("psycopg")
from psycopg import errors, sql  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "role-test-" + secrets.token_hex(8)

needs_postgresql = pytest.mark.skipif(
    settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql", reason="database roles need PostgreSQL"
)
INSERT_EVENT = (
    "INSERT INTO audit_auditevent (seq, created_at, actor_email, action, target_type, target_id, target_repr,"
    " data, prev_hash, hash) VALUES (%s, CURRENT_TIMESTAMP, '', 'forged.event', '', '', '', '{}', %s, %s)"
)


@dataclass(frozen=True)
class Throwaway:
    owner: str
    app: str
    database: str
    migrate_output: str
    grant_output: str
    var_dir: Path
    seal: dict[str, str]  # the test run's sealing key and certificate, for checkpoints

    def url(self, role: str) -> str:
        server = settings.DATABASES["default"]
        return f"postgres://{role}:{PASSWORD}@{server['HOST'] or '127.0.0.1'}:{server['PORT'] or 5432}/{self.database}"

    def connect(self, role: str) -> psycopg.Connection:
        return psycopg.connect(self.url(role), autocommit=True)


def superuser(dbname: str = "postgres") -> psycopg.Connection:
    server = settings.DATABASES["default"]
    return psycopg.connect(
        host=server["HOST"] or "127.0.0.1",
        port=server["PORT"] or 5432,
        user=server["USER"],
        password=server["PASSWORD"],
        dbname=dbname,
        autocommit=True,
    )


def manage(*args: str, database_url: str, var_dir: Path, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in {"DJANGO_SETTINGS_MODULE", "DATABASE_APP_ROLE"}}
    clean.update(
        DATABASE_URL=database_url,
        MODELPACT_VAR_DIR=str(var_dir),
        RECORDS_DIR=str(var_dir / "records"),
        **env,
    )
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=clean, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def roles(tmp_path_factory, _seal_key) -> Iterator[Throwaway]:
    token = secrets.token_hex(4)
    owner, app, database = f"mp_test_owner_{token}", f"mp_test_app_{token}", f"mp_test_roles_{token}"
    var_dir = tmp_path_factory.mktemp("roles")
    with superuser() as admin:
        for role in (owner, app):
            admin.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), PASSWORD))
        admin.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(database), sql.Identifier(owner)))
    try:
        seal = {"RECORDS_KEY_PATH": str(_seal_key[0]), "RECORDS_CERT_PATH": str(_seal_key[1])}
        throwaway = Throwaway(owner, app, database, "", "", var_dir, seal)
        owner_url = throwaway.url(owner)
        migrated = manage("migrate", "--noinput", database_url=owner_url, var_dir=var_dir, DATABASE_APP_ROLE=app)
        assert migrated.returncode == 0, migrated.stderr
        # Something broader than the app should have, as an earlier setup might have left it.
        with throwaway.connect(owner) as conn:
            conn.execute(sql.SQL("GRANT ALL ON audit_auditevent, audit_chainhead TO {}").format(sql.Identifier(app)))
        granted = manage("grant_app_role", app, database_url=owner_url, var_dir=var_dir)
        assert granted.returncode == 0, granted.stderr
        yield Throwaway(owner, app, database, migrated.stdout, granted.stdout, var_dir, seal)
    finally:
        with superuser() as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
            for role in (app, owner):
                admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


@pytest.fixture(scope="module")
def as_app(roles) -> Iterator[psycopg.Connection]:
    with roles.connect(roles.app) as conn:
        yield conn


def privileges(conn: psycopg.Connection, role: str, table: str) -> set[str]:
    names = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")
    return {
        name
        for name in names
        if conn.execute("SELECT has_table_privilege(%s, %s, %s)", [role, table, name]).fetchone()[0]
    }


def head(conn: psycopg.Connection) -> tuple[int, str]:
    return conn.execute("SELECT seq, hash FROM audit_chainhead WHERE id = 1").fetchone()


@needs_postgresql
def test_migrate_with_database_app_role_grants_the_app_role(roles):
    assert f"Granted the app role {roles.app}" in roles.migrate_output


@needs_postgresql
def test_the_app_role_may_only_read_and_append_the_audit_tables(roles):
    assert "only SELECT, INSERT on audit_auditevent" in roles.grant_output
    with roles.connect(roles.owner) as conn:
        # The GRANT ALL made before grant_app_role is gone again.
        assert privileges(conn, roles.app, "audit_auditevent") == {"SELECT", "INSERT"}
        assert privileges(conn, roles.app, "audit_chainhead") == {"SELECT"}
        assert privileges(conn, roles.app, "accounts_organization") == {"SELECT", "INSERT", "UPDATE", "DELETE"}
        assert privileges(conn, roles.app, "audit_sealedrecord") == {"SELECT", "INSERT", "UPDATE", "DELETE"}
        owned = conn.execute(
            "SELECT count(*) FROM pg_class WHERE relowner = (SELECT oid FROM pg_roles WHERE rolname = %s)", [roles.app]
        ).fetchone()[0]
        assert owned == 0


@needs_postgresql
def test_grant_app_role_is_idempotent(roles):
    again = manage("grant_app_role", roles.app, database_url=roles.url(roles.owner), var_dir=roles.var_dir)
    assert again.returncode == 0, again.stderr
    assert again.stdout == roles.grant_output
    with roles.connect(roles.owner) as conn:
        assert privileges(conn, roles.app, "audit_auditevent") == {"SELECT", "INSERT"}


@needs_postgresql
def test_the_app_role_runs_the_app_appends_events_and_verifies(roles):
    snippet = textwrap.dedent(
        """
        import django
        django.setup()
        from django.core.management import call_command
        from django.db import transaction
        from accounts import services
        from audit.services import audit_append

        with transaction.atomic():
            services.organization_create(actor=None, name="Role Test", legal_name="Role Test Ltd")
            for n in range(3):
                audit_append(actor=None, action="test.app_role", data={"n": n})
        call_command("audit_checkpoint")
        call_command("audit_verify")
        """
    )
    app_url = roles.url(roles.app)
    result = manage("shell", "-c", snippet, database_url=app_url, var_dir=roles.var_dir, **roles.seal)
    assert result.returncode == 0, result.stderr
    assert "Signed checkpoint of head #" in result.stdout
    assert "Audit chain intact" in result.stdout
    with roles.connect(roles.owner) as conn:
        seq, _ = head(conn)
        assert seq == conn.execute("SELECT max(seq) FROM audit_auditevent").fetchone()[0] >= 4


ACCEPT_ANYTHING = "RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$"
REFUSED = [
    "TRUNCATE audit_auditevent",
    "UPDATE audit_auditevent SET action = 'forged' WHERE seq = 1",
    "DELETE FROM audit_auditevent WHERE seq = 1",
    "TRUNCATE audit_chainhead",
    "UPDATE audit_chainhead SET seq = 0, hash = repeat('0', 64)",
    "DELETE FROM audit_chainhead",
    "INSERT INTO audit_chainhead (id, seq, hash) VALUES (2, 0, repeat('0', 64))",
    "SELECT seq FROM audit_chainhead WHERE id = 1 FOR UPDATE",
    "ALTER TABLE audit_auditevent DISABLE TRIGGER audit_event_chain_append",
    "ALTER TABLE audit_auditevent DISABLE TRIGGER ALL",
    "DROP TRIGGER audit_event_chain_append ON audit_auditevent",
    "DROP TRIGGER audit_event_no_update_delete ON audit_auditevent",
    "CREATE TRIGGER sneaky BEFORE INSERT ON audit_auditevent FOR EACH ROW EXECUTE FUNCTION audit_event_append_only()",
    f"CREATE OR REPLACE FUNCTION audit_event_chain_append() {ACCEPT_ANYTHING}",
    f"CREATE OR REPLACE FUNCTION audit_event_append_only() {ACCEPT_ANYTHING}",
    "ALTER FUNCTION audit_event_chain_append() SECURITY INVOKER",
    "DROP FUNCTION audit_event_chain_append() CASCADE",
    "ALTER TABLE audit_auditevent OWNER TO CURRENT_USER",
    "SET session_replication_role = replica",
    "CREATE TABLE public.audit_shadow (id int)",
]


@needs_postgresql
@pytest.mark.parametrize("statement", REFUSED)
def test_the_app_role_cannot_rewrite_the_audit_log(roles, as_app, statement):
    before = head(as_app)
    # PostgreSQL's own privilege checks, not the append-only trigger, stop each of these.
    with pytest.raises(errors.InsufficientPrivilege, match=r"permission denied|must be owner"):
        as_app.execute(statement)
    assert head(as_app) == before


@needs_postgresql
def test_an_insert_that_does_not_extend_the_chain_is_refused_by_the_database(roles, as_app):
    seq, digest = head(as_app)
    for row in not_extending(seq, digest):
        with pytest.raises(errors.IntegrityConstraintViolation, match="audit chain"):
            as_app.execute(INSERT_EVENT, row)
    assert head(as_app) == (seq, digest)


def not_extending(seq: int, digest: str) -> list[tuple[int, str, str]]:
    return [
        (seq + 2, digest, "a" * 64),  # a gap
        (seq, digest, "b" * 64),  # a fork: the same seq again
        (seq + 1, "c" * 64, "d" * 64),  # does not link to the head
        (1, "0" * 64, "e" * 64),  # a new history from the start
    ]


# --- The head trigger, on whichever database the suite runs (SQLite has the same triggers) ------


@pytest.mark.django_db
def test_the_database_refuses_an_event_that_does_not_extend_the_head_and_moves_it_for_one_that_does():
    last = audit_append(actor=None, action="test.head", data={})
    for row in not_extending(last.seq, last.hash):
        with pytest.raises(IntegrityError, match="audit chain"), transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(INSERT_EVENT, list(row))
    assert ChainHead.objects.values_list("seq", "hash").get(pk=1) == (last.seq, last.hash)
    with connection.cursor() as cursor:
        cursor.execute(INSERT_EVENT, [last.seq + 1, last.hash, "f" * 64])
    assert ChainHead.objects.values_list("seq", "hash").get(pk=1) == (last.seq + 1, "f" * 64)


@pytest.mark.django_db
def test_a_missing_head_row_counts_as_the_empty_chain():
    assert not AuditEvent.objects.exists()
    ChainHead.objects.all().delete()  # as the test suite's flush leaves it
    first = audit_append(actor=None, action="test.first", data={})
    assert (first.seq, first.prev_hash) == (1, "0" * 64)
    assert ChainHead.objects.values_list("seq", "hash").get(pk=1) == (1, first.hash)
    assert audit_chain_verify().ok


@needs_postgresql
@pytest.mark.django_db
def test_grant_app_role_refuses_a_role_that_does_not_exist():
    with pytest.raises(CommandError, match="There is no PostgreSQL role 'no_such_role_here'"):
        call_command("grant_app_role", "no_such_role_here")


@needs_postgresql
@pytest.mark.django_db
def test_grant_app_role_refuses_the_role_running_it():
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_user")
        (current,) = cursor.fetchone()
    with pytest.raises(CommandError, match="is the role running this command"):
        call_command("grant_app_role", current)


def test_grant_app_role_refuses_on_sqlite(tmp_path):
    result = manage(
        "grant_app_role", "modelpact_app", database_url=f"sqlite:///{tmp_path / 'db.sqlite3'}", var_dir=tmp_path
    )
    assert result.returncode != 0
    assert "Database roles need PostgreSQL" in result.stderr
    assert "Traceback" not in result.stderr

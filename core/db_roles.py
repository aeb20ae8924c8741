"""The app's PostgreSQL role: ordinary privileges on every table, less on the append-only ones.

Migrations run as an owner role, which owns every table and the audit triggers; the app
connects as a separate role that owns nothing. A model that must not be changed by the
app declares what the app role may do with its table:

    class AuditEvent(models.Model):
        app_role_privileges = ("SELECT", "INSERT")

Every other table gets SELECT, INSERT, UPDATE and DELETE; every sequence USAGE and SELECT.
No table gets TRUNCATE, REFERENCES or TRIGGER. `app_role_grant` applies exactly that (revoking
anything broader first, in one transaction) and then checks the role's effective privileges,
so a privilege inherited from another role or from PUBLIC is caught, not silently kept.
Run it as the owner after `migrate`; post_migrate does so when DATABASE_APP_ROLE is set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.apps import apps
from django.db import DEFAULT_DB_ALIAS, connections, transaction

ORDINARY_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE")
SEQUENCE_PRIVILEGES = ("USAGE", "SELECT")
TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")
_COLUMN_PRIVILEGES = {"SELECT", "INSERT", "UPDATE", "REFERENCES"}


class RoleGrantError(Exception):
    """The grants cannot be applied as asked; the message says what to do instead."""


@dataclass
class GrantReport:
    role: str
    schema: str
    tables: int = 0
    sequences: int = 0
    restricted: dict[str, tuple[str, ...]] = field(default_factory=dict)  # table -> what the role may do
    not_yet_created: list[str] = field(default_factory=list)  # restricted tables migrate has not made yet


def restricted_tables() -> dict[str, tuple[str, ...]]:
    """Tables whose model declares `app_role_privileges`, with those privileges."""
    restricted = {}
    for model in apps.get_models(include_auto_created=True):
        privileges = getattr(model, "app_role_privileges", None)
        if privileges is None:
            continue
        unknown = set(privileges) - set(TABLE_PRIVILEGES)
        if unknown:
            raise RoleGrantError(f"{model._meta.label}.app_role_privileges names unknown privileges {sorted(unknown)}.")
        restricted[model._meta.db_table] = tuple(privileges)
    return restricted


def app_role_grant(role: str, *, using: str = DEFAULT_DB_ALIAS) -> GrantReport:
    """Give `role` the app's privileges on the current schema, and nothing more. Idempotent."""
    connection = connections[using]
    if connection.vendor != "postgresql":
        raise RoleGrantError(
            f"Database roles need PostgreSQL; this database is {connection.vendor}. "
            "SQLite has no roles: the one file is the whole database."
        )
    restricted = restricted_tables()
    with transaction.atomic(using=using), connection.cursor() as cursor:
        cursor.execute("SELECT current_user, current_schema()")
        current_user, schema = cursor.fetchone()
        _refuse_unsuitable_role(cursor, role, current_user, schema)
        _refuse_unless_owner(cursor, current_user, schema, restricted)
        quoted_role, quoted_schema = connection.ops.quote_name(role), connection.ops.quote_name(schema)
        report = GrantReport(role=role, schema=schema)

        cursor.execute(f"GRANT USAGE ON SCHEMA {quoted_schema} TO {quoted_role}")
        # The app creates nothing: without CREATE on the schema it cannot shadow a table or function.
        cursor.execute(f"REVOKE CREATE ON SCHEMA {quoted_schema} FROM {quoted_role}")
        ordinary = ", ".join(ORDINARY_PRIVILEGES)
        cursor.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA {quoted_schema} FROM {quoted_role}")
        cursor.execute(f"GRANT {ordinary} ON ALL TABLES IN SCHEMA {quoted_schema} TO {quoted_role}")
        cursor.execute(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA {quoted_schema} FROM {quoted_role}")
        cursor.execute(
            f"GRANT {', '.join(SEQUENCE_PRIVILEGES)} ON ALL SEQUENCES IN SCHEMA {quoted_schema} TO {quoted_role}"
        )
        existing = _relations(cursor, schema, kinds=("r", "p", "v", "m", "f"))
        for table, privileges in sorted(restricted.items()):
            if table not in existing:
                report.not_yet_created.append(table)
                continue
            quoted_table = f"{quoted_schema}.{connection.ops.quote_name(table)}"
            cursor.execute(f"REVOKE ALL ON TABLE {quoted_table} FROM {quoted_role}")
            # The role is in PUBLIC: a grant to PUBLIC would reach it too.
            cursor.execute(f"REVOKE ALL ON TABLE {quoted_table} FROM PUBLIC")
            if privileges:
                cursor.execute(f"GRANT {', '.join(privileges)} ON TABLE {quoted_table} TO {quoted_role}")
            report.restricted[table] = privileges
        report.tables = len(existing)
        report.sequences = len(_relations(cursor, schema, kinds=("S",)))
        _check_effective(cursor, role, schema, report.restricted, quote=connection.ops.quote_name)
    return report


def _refuse_unsuitable_role(cursor: Any, role: str, current_user: str, schema: str) -> None:
    cursor.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", [role])
    row = cursor.fetchone()
    if row is None:
        raise RoleGrantError(
            f"There is no PostgreSQL role {role!r}. A superuser creates it first: "
            f"CREATE ROLE {role} LOGIN PASSWORD '...';"
        )
    if role == current_user:
        raise RoleGrantError(
            f"{role!r} is the role running this command, which owns the tables. The app must connect as "
            "another role: run this as the owner and name the app's role."
        )
    if row[0]:
        raise RoleGrantError(f"{role!r} is a superuser: no grant can hold it back. Give the app an ordinary role.")
    cursor.execute("SELECT pg_has_role(%s, %s, 'MEMBER')", [role, current_user])
    if cursor.fetchone()[0]:
        raise RoleGrantError(
            f"{role!r} is a member of {current_user!r}, the owner, and so has its privileges. "
            f"A superuser removes that: REVOKE {current_user} FROM {role};"
        )
    # Owning a table, a function or the schema (or being able to become the owner) is owning the audit log.
    cursor.execute(
        """
        SELECT 'schema ' || n.nspname FROM pg_namespace n
        WHERE n.nspname = %(schema)s AND pg_has_role(%(role)s, n.nspowner, 'MEMBER')
        UNION ALL
        SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = %(schema)s AND pg_has_role(%(role)s, c.relowner, 'MEMBER')
        UNION ALL
        SELECT p.proname || '()' FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = %(schema)s AND pg_has_role(%(role)s, p.proowner, 'MEMBER')
        """,
        {"schema": schema, "role": role},
    )
    owned = sorted(name for (name,) in cursor.fetchall())
    if owned:
        raise RoleGrantError(
            f"{role!r} owns {', '.join(owned[:5])}{' and more' if len(owned) > 5 else ''}, and an owner can do "
            f"anything with what it owns. A superuser hands them to the owner first (REASSIGN OWNED BY {role} TO "
            f"{current_user};), and the database must be owned by the owner role, not by {role!r}."
        )


def _refuse_unless_owner(cursor: Any, current_user: str, schema: str, restricted: dict[str, tuple[str, ...]]) -> None:
    """Grants by anyone but the owner are silently ignored (a warning), so say so up front."""
    cursor.execute(
        """
        SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = %s AND c.relname = ANY(%s) AND NOT pg_has_role(current_user, c.relowner, 'USAGE')
        """,
        [schema, list(restricted)],
    )
    foreign = sorted(name for (name,) in cursor.fetchall())
    if foreign:
        raise RoleGrantError(
            f"{current_user!r} does not own {', '.join(foreign)}: run this as the owner role that ran migrate."
        )


def _relations(cursor: Any, schema: str, *, kinds: tuple[str, ...]) -> set[str]:
    cursor.execute(
        """
        SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = %s AND c.relkind = ANY(%s)
        """,
        [schema, list(kinds)],
    )
    return {name for (name,) in cursor.fetchall()}


def _check_effective(
    cursor: Any, role: str, schema: str, restricted: dict[str, tuple[str, ...]], *, quote: Callable[[str], str]
) -> None:
    """What the role can really do on the restricted tables, whatever it inherits, must be what was asked."""
    broader = []
    for table, allowed in restricted.items():
        qualified = f"{quote(schema)}.{quote(table)}"
        for privilege in TABLE_PRIVILEGES:
            if privilege in allowed:
                continue
            cursor.execute("SELECT has_table_privilege(%s, %s, %s)", [role, qualified, privilege])
            has = cursor.fetchone()[0]
            if not has and privilege in _COLUMN_PRIVILEGES:
                cursor.execute("SELECT has_any_column_privilege(%s, %s, %s)", [role, qualified, privilege])
                has = cursor.fetchone()[0]
            if has:
                broader.append(f"{privilege} on {table}")
    cursor.execute("SELECT has_schema_privilege(%s, %s, 'CREATE')", [role, schema])
    if cursor.fetchone()[0]:
        broader.append(
            f"CREATE on schema {schema} (the owner revokes it: REVOKE CREATE ON SCHEMA {schema} FROM PUBLIC;)"
        )
    if broader:
        raise RoleGrantError(
            f"{role!r} still has {', '.join(broader)} after the grants, through another role it belongs to. "
            "Remove that membership or grant; nothing was changed."
        )

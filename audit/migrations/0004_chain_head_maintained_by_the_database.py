"""The database itself keeps the chain head and refuses an event that does not extend it.

A BEFORE INSERT trigger on audit_auditevent locks the head row, checks that the new event's
seq is head.seq + 1 and its prev_hash is head.hash (so a forked or gapped chain is refused
whoever inserts it), and moves the head to the new event. The app's database role then needs
only SELECT on the head table: it can no longer rewrite the head to match a rewritten log.

On PostgreSQL the trigger function is SECURITY DEFINER, owned by the role that runs migrations,
with its search_path pinned so that no object the app role can create is looked up first. On
SQLite, plain triggers do the same, so audit_append follows one code path on both.

A missing head row (the test suite's flush truncates it) counts as the empty chain: the trigger
creates it. Existing databases keep their head row, which audit_append has kept up to date.
"""

from django.db import migrations

GENESIS_HASH = "0" * 64

PG_FUNCTION_SQL = """
CREATE OR REPLACE FUNCTION audit_event_chain_append() RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = {schema}, pg_temp
AS $$
DECLARE
    head_seq bigint;
    head_hash varchar(64);
BEGIN
    SELECT seq, hash INTO head_seq, head_hash FROM audit_chainhead WHERE id = 1 FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO audit_chainhead (id, seq, hash) VALUES (1, 0, '{genesis}') ON CONFLICT (id) DO NOTHING;
        SELECT seq, hash INTO head_seq, head_hash FROM audit_chainhead WHERE id = 1 FOR UPDATE;
    END IF;
    IF NEW.seq IS DISTINCT FROM head_seq + 1 THEN
        RAISE EXCEPTION 'audit chain: event #% does not follow the chain head #% (the next event is #%)',
            NEW.seq, head_seq, head_seq + 1
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    IF NEW.prev_hash IS DISTINCT FROM head_hash THEN
        RAISE EXCEPTION 'audit chain: event #% does not link to the hash of event #%', NEW.seq, head_seq
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    IF NEW.hash IS NULL OR NEW.hash !~ '^[0-9a-f]{{64}}$' THEN
        RAISE EXCEPTION 'audit chain: event #% has no SHA-256 hash', NEW.seq
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    UPDATE audit_chainhead SET seq = NEW.seq, hash = NEW.hash WHERE id = 1;
    RETURN NEW;
END;
$$;

REVOKE ALL ON FUNCTION audit_event_chain_append() FROM PUBLIC;

CREATE TRIGGER audit_event_chain_append
    BEFORE INSERT ON audit_auditevent
    FOR EACH ROW EXECUTE FUNCTION audit_event_chain_append();
"""

PG_DROP_SQL = """
DROP TRIGGER IF EXISTS audit_event_chain_append ON audit_auditevent;
DROP FUNCTION IF EXISTS audit_event_chain_append();
"""

# SQLite's RAISE takes a literal message; the two checks say which link is wrong.
SQLITE_TRIGGER_SQL = f"""
CREATE TRIGGER audit_event_chain_append BEFORE INSERT ON audit_auditevent
BEGIN
    SELECT RAISE(ABORT, 'audit chain: the event does not follow the chain head (wrong seq)')
    WHERE NEW.seq IS NOT COALESCE((SELECT seq FROM audit_chainhead WHERE id = 1), 0) + 1;
    SELECT RAISE(ABORT, 'audit chain: the event does not link to the chain head (wrong prev_hash)')
    WHERE NEW.prev_hash IS NOT COALESCE((SELECT hash FROM audit_chainhead WHERE id = 1), '{GENESIS_HASH}');
    SELECT RAISE(ABORT, 'audit chain: the event has no SHA-256 hash')
    WHERE NEW.hash IS NULL OR length(NEW.hash) != 64;
    INSERT OR IGNORE INTO audit_chainhead (id, seq, hash) VALUES (1, 0, '{GENESIS_HASH}');
    UPDATE audit_chainhead SET seq = NEW.seq, hash = NEW.hash WHERE id = 1;
END;
"""

SQLITE_DROP_SQL = "DROP TRIGGER IF EXISTS audit_event_chain_append;"


def add_trigger(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        with schema_editor.connection.cursor() as cursor:
            cursor.execute("SELECT current_schema()")
            (schema,) = cursor.fetchone()
        sql = PG_FUNCTION_SQL.format(schema=schema_editor.quote_name(schema), genesis=GENESIS_HASH)
        schema_editor.execute(sql, params=None)
    elif vendor == "sqlite":
        schema_editor.execute(SQLITE_TRIGGER_SQL, params=None)


def drop_trigger(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.execute(PG_DROP_SQL, params=None)
    elif vendor == "sqlite":
        schema_editor.execute(SQLITE_DROP_SQL, params=None)


class Migration(migrations.Migration):
    dependencies = [("audit", "0003_sealedrecord")]

    operations = [migrations.RunPython(add_trigger, drop_trigger)]

-- Objects the Rust functions need before they are created: the audit table and the admin role.

-- The schema is fixed (dbconn_guard, not relocatable). If it existed before CREATE EXTENSION,
-- its owner, or a role it lets create objects in it, could drop or replace what is created in
-- it, or have planted functions and operators there for the worker, a superuser, to run:
-- refuse unless a superuser owns it, nothing is in it yet, and no other role may create in it.
DO $$
DECLARE
    owner_is_superuser boolean;
    objects bigint;
    creators text;
BEGIN
    SELECT pg_catalog.string_agg(COALESCE(r.rolname::text, 'PUBLIC'), ', ') INTO creators
      FROM pg_catalog.pg_namespace n
     CROSS JOIN LATERAL pg_catalog.aclexplode(n.nspacl) a
      LEFT JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) a.grantee
     WHERE n.nspname OPERATOR(pg_catalog.=) 'dbconn_guard'
       AND a.privilege_type OPERATOR(pg_catalog.=) 'CREATE'
       AND NOT COALESCE(r.rolsuper, false);
    IF creators IS NOT NULL THEN
        RAISE EXCEPTION 'schema "dbconn_guard" existed before CREATE EXTENSION dbconn_guard, and is not safe to install into'
            USING ERRCODE = 'duplicate_schema',
                  DETAIL = pg_catalog.format('Roles that are not superusers may create objects in it: %s.', creators),
                  HINT = 'Drop or rename that schema, then run CREATE EXTENSION dbconn_guard again.';
    END IF;
    SELECT r.rolsuper INTO owner_is_superuser
      FROM pg_catalog.pg_namespace n JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) n.nspowner
     WHERE n.nspname OPERATOR(pg_catalog.=) 'dbconn_guard';
    SELECT (SELECT pg_catalog.count(*) FROM pg_catalog.pg_class WHERE relnamespace OPERATOR(pg_catalog.=) 'dbconn_guard'::pg_catalog.regnamespace)
         OPERATOR(pg_catalog.+) (SELECT pg_catalog.count(*) FROM pg_catalog.pg_proc WHERE pronamespace OPERATOR(pg_catalog.=) 'dbconn_guard'::pg_catalog.regnamespace)
         OPERATOR(pg_catalog.+) (SELECT pg_catalog.count(*) FROM pg_catalog.pg_operator WHERE oprnamespace OPERATOR(pg_catalog.=) 'dbconn_guard'::pg_catalog.regnamespace)
         OPERATOR(pg_catalog.+) (SELECT pg_catalog.count(*) FROM pg_catalog.pg_type WHERE typnamespace OPERATOR(pg_catalog.=) 'dbconn_guard'::pg_catalog.regnamespace)
      INTO objects;
    IF NOT owner_is_superuser OR objects OPERATOR(pg_catalog.>) 0 THEN
        RAISE EXCEPTION 'schema "dbconn_guard" existed before CREATE EXTENSION dbconn_guard, and is not safe to install into'
            USING ERRCODE = 'duplicate_schema',
                  DETAIL = pg_catalog.format('It is owned by a role that is %s and holds %s objects.',
                                             CASE WHEN owner_is_superuser THEN 'a superuser' ELSE 'not a superuser' END, objects),
                  HINT = 'Drop or rename that schema, then run CREATE EXTENSION dbconn_guard again.';
    END IF;
END
$$;

CREATE TABLE terminations (
    id bigserial PRIMARY KEY,
    terminated_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    pid integer NOT NULL,
    usename text,
    datname text,
    application_name text,
    client_addr inet,
    state text NOT NULL,
    state_age_seconds double precision NOT NULL,
    xact_age_seconds double precision,
    backend_start timestamptz,
    rule text NOT NULL CHECK (rule IN ('idle_timeout', 'idle_in_transaction_timeout', 'manual', 'transaction_timeout', 'blocker_timeout', 'blocker_cancel', 'manual_cancel', 'lock_queue_cancel', 'blocker_terminate', 'budget')),
    dry_run boolean NOT NULL,
    actor text NOT NULL,
    worker_cycle bigint,
    query text,
    query_id bigint,
    held_up integer,
    held_up_seconds double precision,
    held_up_lock text
);
CREATE INDEX terminations_terminated_at_idx ON terminations (terminated_at);
SELECT pg_catalog.pg_extension_config_dump('terminations', '');
SELECT pg_catalog.pg_extension_config_dump('terminations_id_seq', '');

COMMENT ON TABLE terminations IS
  'Every session ended (or, with dry_run, that would have been ended) by the dbconn_guard worker or by terminate_idle(): who, what state for how long, which rule, and who acted (worker, with its cycle number, or manual:<role>); what the session was doing: its last statement (query, within track_activity_query_size) and query_id (when compute_query_id computes one); and what it held up when acted on: held_up sessions waiting on it, directly or behind one that does, the longest of their waits (held_up_seconds) and the lock its longest-waiting direct waiter asked for (held_up_lock). NULL in rows written before 0.2.0.';

-- The admin role. It is handed pg_signal_backend and pg_read_all_stats, so CREATE EXTENSION
-- never hands them to a role it did not make: a dbconn_guard_admin that already exists is
-- accepted only when a superuser has already given it both (an earlier installation of this
-- extension, or a DBA) and no other role than a superuser can administer it (on PostgreSQL 16
-- and later, a CREATEROLE role keeps ADMIN OPTION on the roles it creates, and could hand them
-- to anyone). Anything else is refused, saying what to do.
DO $$
DECLARE
    admin oid;
    granted int;
    admins text;
BEGIN
    SELECT r.oid INTO admin FROM pg_catalog.pg_roles r WHERE r.rolname = 'dbconn_guard_admin';
    IF admin IS NULL THEN
        CREATE ROLE dbconn_guard_admin NOLOGIN;
        GRANT pg_signal_backend, pg_read_all_stats TO dbconn_guard_admin;
        RETURN;
    END IF;
    SELECT pg_catalog.count(DISTINCT m.roleid) INTO granted
      FROM pg_catalog.pg_auth_members m
      JOIN pg_catalog.pg_roles g ON g.oid OPERATOR(pg_catalog.=) m.grantor
     WHERE m.member OPERATOR(pg_catalog.=) admin
       AND g.rolsuper
       AND m.roleid OPERATOR(pg_catalog.=) ANY (ARRAY['pg_signal_backend'::pg_catalog.regrole, 'pg_read_all_stats'::pg_catalog.regrole]::pg_catalog.oid[]);
    SELECT pg_catalog.string_agg(a.rolname::text, ', ' ORDER BY a.rolname) INTO admins
      FROM pg_catalog.pg_auth_members m
      JOIN pg_catalog.pg_roles a ON a.oid OPERATOR(pg_catalog.=) m.member
     WHERE m.roleid OPERATOR(pg_catalog.=) admin AND m.admin_option AND NOT a.rolsuper;
    IF granted OPERATOR(pg_catalog.<>) 2 OR admins IS NOT NULL THEN
        RAISE EXCEPTION 'role "dbconn_guard_admin" already exists and was not set up by dbconn_guard'
            USING ERRCODE = 'duplicate_object',
                  DETAIL = CASE WHEN admins IS NOT NULL
                                THEN pg_catalog.format('Roles that are not superusers can administer it (%s); CREATE EXTENSION would give it pg_signal_backend and pg_read_all_stats.', admins)
                                ELSE 'It is not a member of both pg_signal_backend and pg_read_all_stats by a superuser''s grant; CREATE EXTENSION would make it one, handing those powers to whoever controls it.' END,
                  HINT = 'Drop or rename that role (ALTER ROLE dbconn_guard_admin RENAME TO ...) and run CREATE EXTENSION again; or, if you trust it, GRANT pg_signal_backend, pg_read_all_stats TO dbconn_guard_admin as a superuser (and REVOKE ADMIN OPTION from others) first.';
    END IF;
END
$$;
COMMENT ON ROLE dbconn_guard_admin IS
  'May call dbconn_guard.terminate_idle() and read dbconn_guard.terminations; member of pg_signal_backend and pg_read_all_stats.';

-- Records are written by the background worker alone: admins read them.
GRANT SELECT ON terminations TO dbconn_guard_admin, pg_read_all_stats;

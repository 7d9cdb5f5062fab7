-- dbconn_guard 0.1.0 -> 0.2.0
--
-- Needs the 0.2.0 library loaded at server start (its shared memory is laid out anew): install
-- it, restart the server, then run ALTER EXTENSION dbconn_guard UPDATE in every database that
-- has the extension. 0.2.0 is not released yet: this script grows with it.
\echo Use "ALTER EXTENSION dbconn_guard UPDATE TO '0.2.0'" to load this file. \quit

-- The background worker is the only writer of the audit: admins read it.
REVOKE INSERT, DELETE ON terminations FROM dbconn_guard_admin;
REVOKE USAGE ON SEQUENCE terminations_id_seq FROM dbconn_guard_admin;

-- An existing dbconn_guard_admin that a role other than a superuser administers could hand
-- pg_signal_backend to anyone: an update cannot undo that, but says so.
DO $$
DECLARE
    admins text;
BEGIN
    SELECT pg_catalog.string_agg(a.rolname::text, ', ' ORDER BY a.rolname) INTO admins
      FROM pg_catalog.pg_auth_members m
      JOIN pg_catalog.pg_roles a ON a.oid OPERATOR(pg_catalog.=) m.member
     WHERE m.roleid OPERATOR(pg_catalog.=) 'dbconn_guard_admin'::pg_catalog.regrole
       AND m.admin_option AND NOT a.rolsuper;
    IF admins IS NOT NULL THEN
        RAISE WARNING 'roles that are not superusers can grant dbconn_guard_admin (and with it pg_signal_backend) to anyone: %', admins
            USING HINT = 'REVOKE ADMIN OPTION FOR dbconn_guard_admin FROM them, as a superuser.';
    END IF;
END
$$;

-- recent_terminations() shows the window from the last status read to the signal
DROP FUNCTION recent_terminations();
CREATE FUNCTION "recent_terminations"() RETURNS TABLE (
	"terminated_at" timestamp with time zone,
	"pid" INT,
	"usename" TEXT,
	"datname" TEXT,
	"application_name" TEXT,
	"client_addr" TEXT,
	"state" TEXT,
	"state_age_seconds" double precision,
	"xact_age_seconds" double precision,
	"backend_start" timestamp with time zone,
	"rule" TEXT,
	"dry_run" bool,
	"actor" TEXT,
	"persisted" bool,
	"signal_window_us" bigint
)
STRICT
LANGUAGE c
AS 'MODULE_PATHNAME', 'recent_terminations_wrapper';
COMMENT ON FUNCTION recent_terminations() IS
  'The latest terminations on this server (worker and manual, newest first), kept in shared memory: on a hot standby the only record, since the terminations table cannot be written there (persisted = false). signal_window_us: microseconds from the last read of the session''s status to the signal.';
REVOKE EXECUTE ON FUNCTION recent_terminations() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION recent_terminations() TO dbconn_guard_admin, pg_read_all_stats;

-- terminate_idle() hands its sessions to the worker, and reads nothing through the caller's
-- search_path
COMMENT ON FUNCTION terminate_idle(interval, text[], text, boolean) IS
  'Ends client sessions in the given states (default: idle and both idle-in-transaction states) for at least older_than, optionally of one application_name, with the worker''s protections. The background worker records each in dbconn_guard.terminations (committed) before it signals it, whatever becomes of the calling transaction. dry_run only records and reports. Returns every matched session with what was done.';
ALTER FUNCTION terminate_idle(interval, text[], text, boolean) SET search_path = pg_catalog, pg_temp;

-- The guard's own functions: diagnose(), the worker's status and recent actions, the manual
-- terminate_idle() and cancel_statements(), the settings the reloads changed; their grants and
-- comments, and the warning about the owner of the guard's database.

COMMENT ON FUNCTION diagnose(interval) IS
  'The on-call runbook''s diagnosis decision tree, evaluated now, as the calling role sees the server: pool exhaustion (utilization, who holds the slots, oversized pools, leak suspects, idle in transaction, slow queries older than slow_query (NULL, the default: 4 times the length three separate statements reached in the history, between 1 minute and 1 hour; 5 minutes without enough history), lock pile-ups), the error pattern and recent changes over dbconn_guard.diagnose_window of the history, the configuration (timeouts, the guard, memory, pgbouncer), the worker, and what is hidden from the caller. The first row (area incident) states the most harmful finding that is warning or critical, or that nothing is wrong now; then one row per finding in the tree''s order (step), status ok, info, warning or critical, with evidence and, for every row that is not ok, one action to paste; then the row as data, for alerts and dashboards: reading (what the row reads its evidence as: leak, step, steady_rise, storm, steady_churn, root_blocker, lock_cycle, queued_statement, ...; NULL for rows that only report a state or advise), culprit_pid or culprit_application (who the row names), action_kind (what pasting the action does: look, end_session, cancel_statement, end_idle_through_guard, cancel_through_guard, signal_over_activity, setting, grant; none without an action) and see_area (the area of the row that tells the incident''s story, when this row points there).';
COMMENT ON FUNCTION worker_status() IS
  'The background worker: running, pid, last cycle (start, wall and CPU time, sessions examined, terminations), totals, next wake-up, last error, and the policy it applies (jsonb).';
COMMENT ON FUNCTION recent_terminations() IS
  'The latest terminations on this server (worker and manual, newest first), kept in shared memory: on a hot standby the only record, since the terminations table cannot be written there (persisted = false). signal_window_us: microseconds from the last read of the session''s status to the signal.';
COMMENT ON FUNCTION terminate_idle(interval, text[], text, boolean, text, text, text) IS
  'Ends client sessions in the given states (default: idle and both idle-in-transaction states) for at least older_than, optionally only those of one application_name, usename, client_addr (''local'': Unix-socket sessions) and datname, with the worker''s protections. The background worker records each in dbconn_guard.terminations (committed) before it signals it, whatever becomes of the calling transaction. dry_run only records and reports. Returns every matched session with what was done.';

-- terminate_idle() reads nothing through the caller's search_path
ALTER FUNCTION terminate_idle(interval, text[], text, boolean, text, text, text) SET search_path = pg_catalog, pg_temp;

REVOKE EXECUTE ON FUNCTION terminate_idle(interval, text[], text, boolean, text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION terminate_idle(interval, text[], text, boolean, text, text, text) TO dbconn_guard_admin;
COMMENT ON FUNCTION cancel_statements(interval, text, text, text, text, boolean) IS
  'Cancels the statements of client sessions active for at least older_than (pg_cancel_backend: the sessions stay), optionally only those of one application_name, usename, client_addr (''local'': Unix-socket sessions) and datname, with the worker''s protections; a COMMIT seen waiting for a synchronous standby right before the signal is not cancelled. The background worker records each in dbconn_guard.terminations (rule manual_cancel, committed) before it signals it. dry_run only records and reports. Returns every matched session with what was done.';

-- cancel_statements() reads nothing through the caller's search_path either
ALTER FUNCTION cancel_statements(interval, text, text, text, text, boolean) SET search_path = pg_catalog, pg_temp;
REVOKE EXECUTE ON FUNCTION cancel_statements(interval, text, text, text, text, boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION cancel_statements(interval, text, text, text, text, boolean) TO dbconn_guard_admin;
REVOKE EXECUTE ON FUNCTION recent_terminations() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION recent_terminations() TO dbconn_guard_admin, pg_read_all_stats;

-- setting values can hold what pg_settings shows only to pg_read_all_settings (a
-- primary_conninfo's password): to its members only
REVOKE EXECUTE ON FUNCTION setting_changes() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION setting_changes() TO pg_read_all_settings;
COMMENT ON FUNCTION setting_changes() IS
  'The settings the configuration reloads changed, as the background worker saw each reload (the last 64 changes, kept in shared memory, lost at a restart), newest first: when, the setting, and its value before and after as SHOW shows it ("(changed: takes effect at a restart)" for a setting that waits for one). For pg_read_all_settings members.';

-- the same as a view (psql's \dv, Grafana's table panels): the function's privileges apply
-- to whoever reads it
CREATE VIEW setting_changes AS SELECT * FROM setting_changes();
GRANT SELECT ON setting_changes TO pg_read_all_settings;
COMMENT ON VIEW setting_changes IS
  'What each configuration reload changed, newest first, as setting_changes() returns it (for pg_read_all_settings members).';

-- Said at CREATE EXTENSION (and ALTER EXTENSION UPDATE) in the guard's own database: an owner
-- that is not a superuser can hold up the guard's audit and drop the database while the worker
-- is away (the worker says so at every start too, and diagnose() in its guard row).
DO $$
DECLARE
    owner text;
BEGIN
    SELECT r.rolname INTO owner
      FROM pg_catalog.pg_database d JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) d.datdba
     WHERE d.datname OPERATOR(pg_catalog.=) pg_catalog.current_database()
       AND d.datname OPERATOR(pg_catalog.=) pg_catalog.current_setting('dbconn_guard.database', true)
       AND NOT r.rolsuper;
    IF owner IS NOT NULL THEN
        RAISE WARNING 'database "%" (dbconn_guard.database) is owned by "%", which is not a superuser', pg_catalog.current_database(), owner
            USING DETAIL = 'That role can hold up the guard''s audit table (VACUUM FULL behind ANALYZE: terminations are then recorded in shared memory and the server log until it can be written), change the database''s settings, and rename or drop it while the worker is not connected.',
                  HINT = 'Keep the guard in a database a superuser owns: ALTER SYSTEM SET dbconn_guard.database = ''postgres'', restart, and CREATE EXTENSION dbconn_guard there.';
    END IF;
END
$$;

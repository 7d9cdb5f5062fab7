-- Views and comments of dbconn_guard's read-only surface.
-- The rows come from set-returning functions written in Rust (src/views.rs), which read
-- pg_stat_activity / pg_locks once per call as the calling role.

CREATE VIEW connection_analysis AS
SELECT datname, usename, application_name, client_addr::inet AS client_addr, state,
       connection_count, avg_age_seconds, max_age_seconds, oldest_xact_age_seconds, pids
  FROM @extschema@._connection_analysis();

-- the pairs joined to what is shown of each session and each wait: a query that counts or
-- groups pairs reads the lock manager only (the joins to subqueries unique on their key are
-- removed when none of their columns is asked for), and no text is copied once per pair
CREATE VIEW blocking_pairs AS
SELECT * FROM (
  SELECT e.blocked_pid, b.usename AS blocked_user, b.application_name AS blocked_application,
         b.datname AS blocked_datname, b.state AS blocked_state,
         l.wait_seconds AS blocked_wait_seconds, b.xact_age_seconds AS blocked_xact_age_seconds,
         b.query AS blocked_query,
         e.blocking_pid, k.usename AS blocking_user, k.application_name AS blocking_application,
         k.state AS blocking_state, k.state_age_seconds AS blocking_state_age_seconds,
         k.xact_age_seconds AS blocking_xact_age_seconds, k.query AS blocking_query,
         l.locktype, l.mode, l.relation
    FROM @extschema@._blocking_edges() e
    LEFT JOIN (SELECT DISTINCT ON (pid) * FROM @extschema@._blocking_sessions()) b
           ON b.pid = e.blocked_pid
    LEFT JOIN (SELECT DISTINCT ON (pid) * FROM @extschema@._blocking_sessions()) k
           ON k.pid = e.blocking_pid
    LEFT JOIN (SELECT DISTINCT ON (wait) * FROM @extschema@._blocking_locks()) l
           ON l.wait = e.wait
) pairs
-- a fence: a filter on one side's columns must not turn a join into a nested loop over
-- every pair (the planner estimates those functions' rows blind); unused joins are still
-- left out
OFFSET 0;

CREATE VIEW utilization AS
SELECT * FROM @extschema@._utilization();

CREATE VIEW leak_suspects AS
SELECT datname, usename, application_name, client_addr::inet AS client_addr,
       idle_count, avg_idle_seconds, max_idle_seconds, pids, trend, reason
  FROM @extschema@._leak_suspects();

CREATE VIEW history AS
SELECT * FROM @extschema@._history();

CREATE VIEW history_by_group AS
SELECT * FROM @extschema@._history_by_group();

GRANT USAGE ON SCHEMA @extschema@ TO PUBLIC;
GRANT SELECT ON connection_analysis, blocking_pairs, utilization, leak_suspects TO PUBLIC;

COMMENT ON SCHEMA @extschema@ IS 'dbconn_guard: connection analysis, blocking chains, health checks and leak suspects';

COMMENT ON VIEW connection_analysis IS
  'Client backends grouped by (datname, usename, application_name, client_addr, state): count, mean and max age in the state (now - state_change, seconds), oldest open transaction age, and pids (longest in state first). Shows what pg_stat_activity shows the caller.';
COMMENT ON VIEW blocking_pairs IS
  'One row per (blocked, blocking) pair, exactly as pg_blocking_pids() reports them (soft blocks in the lock queue and parallel groups included), with both sides'' user, application, state, ages and query, and the lock waited for.';
COMMENT ON VIEW utilization IS
  'Connection slots: max_connections, reserved slots, client backends by state, other and hidden backends, slots left for ordinary roles, and client backends as a percentage of max_connections.';
COMMENT ON VIEW leak_suspects IS
  'Clients (datname, usename, application_name, client_addr) holding idle sessions older than dbconn_guard.leak_idle_age (reason idle_age), or whose idle count grew over the last dbconn_guard.leak_trend_samples samples of dbconn_guard.history_by_group for their (datname, usename, application_name) (reason growing); trend: growing, steady, shrinking or unknown.';

COMMENT ON FUNCTION blocking_chains() IS
  'Every waiting backend with each root blocker it ultimately waits for (a session that blocks others and waits for no lock), the depth and path to it, and how many sessions that root holds up. Largest pile-up first: the first row''s root_pid is the one session to look at.';
COMMENT ON FUNCTION utilization_pct() IS
  'Client backends (backend_type = ''client backend'') as a percentage of max_connections.';
COMMENT ON FUNCTION health() IS
  'Health checks (utilization, idle_sessions, idle_in_transaction, lock_waits, oldest_transaction), each ok, warning or critical, with value, threshold and detail; thresholds from the dbconn_guard.* settings.';
COMMENT ON FUNCTION health_status() IS
  'The worst status of health(): ok, warning or critical.';
COMMENT ON FUNCTION _connection_analysis() IS 'Internal: rows of the connection_analysis view.';
COMMENT ON FUNCTION _blocking_edges() IS 'Internal: the pairs of the blocking_pairs view, with the position of the wait.';
COMMENT ON FUNCTION _blocking_sessions() IS 'Internal: the sessions of the blocking_pairs view.';
COMMENT ON FUNCTION _blocking_locks() IS 'Internal: the waits of the blocking_pairs view, by position.';
COMMENT ON FUNCTION _utilization() IS 'Internal: rows of the utilization view.';
COMMENT ON FUNCTION _leak_suspects() IS 'Internal: rows of the leak_suspects view.';

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

-- the history counts every role's sessions: pg_monitor (through pg_read_all_stats) and the
-- guard's admins may read it, not PUBLIC
REVOKE EXECUTE ON FUNCTION _history(), _history_by_group() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION _history(), _history_by_group() TO dbconn_guard_admin, pg_read_all_stats;
GRANT SELECT ON history, history_by_group TO dbconn_guard_admin, pg_read_all_stats;
COMMENT ON VIEW history IS
  'One row per sample the worker took (every dbconn_guard.sample_interval, aligned to the wall clock; the last dbconn_guard.history_size kept in shared memory, lost at a restart), oldest first: client backends by state, lock waiters and the longest wait, the oldest transaction and the longest idle in transaction (seconds, 0: none), slots, utilization, sessions ended since the previous sample by rule, and leak-suspect groups.';
COMMENT ON VIEW history_by_group IS
  'Per sample, the dbconn_guard.history_groups largest (datname, usename, application_name) groups of client backends by connections, with their counts by state, and one row with other = true (names NULL) summing the rest: each sample''s rows add up to its client_backends in dbconn_guard.history.';
COMMENT ON FUNCTION _history() IS 'Internal: rows of the history view.';

-- the history over a time range, walked from the range's first sample (Grafana:
-- history_between($__timeFrom(), $__timeTo())); the views' row types, the views' grants
CREATE FUNCTION history_between(since timestamp with time zone,
                                until timestamp with time zone DEFAULT 'infinity')
RETURNS SETOF history
LANGUAGE c STRICT VOLATILE
AS 'MODULE_PATHNAME', 'dbconn_guard_history';
CREATE FUNCTION history_by_group_between(since timestamp with time zone,
                                         until timestamp with time zone DEFAULT 'infinity')
RETURNS SETOF history_by_group
LANGUAGE c STRICT VOLATILE
AS 'MODULE_PATHNAME', 'dbconn_guard_history_by_group';
REVOKE EXECUTE ON FUNCTION history_between(timestamp with time zone, timestamp with time zone),
                           history_by_group_between(timestamp with time zone, timestamp with time zone) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION history_between(timestamp with time zone, timestamp with time zone),
                          history_by_group_between(timestamp with time zone, timestamp with time zone)
   TO dbconn_guard_admin, pg_read_all_stats;
COMMENT ON FUNCTION history_between(timestamp with time zone, timestamp with time zone) IS
  'The rows of dbconn_guard.history taken from since to until (inclusive), read from the first such sample on: an hour of a full ring costs an hour''s rows, not the ring''s.';
COMMENT ON FUNCTION history_by_group_between(timestamp with time zone, timestamp with time zone) IS
  'The rows of dbconn_guard.history_by_group taken from since to until (inclusive), read from the first such sample on.';
COMMENT ON FUNCTION _history_by_group() IS 'Internal: rows of the history_by_group view.';

-- which statements keep causing pile-ups (issue 20 §4): over the audit (the sessions that held
-- others up when a rule acted on them, with their text) and the history (each sample's largest
-- pile-up's root, by query_id: pile-ups no rule acted on too), by query_id (by the statement's
-- text where none was computed); per hour as a view (Grafana: WHERE $__timeFilter(hour)), and
-- for any window as a function. The audit's and the history's readers only
CREATE VIEW top_blockers AS
WITH acted AS (
    SELECT pg_catalog.date_trunc('hour', t.terminated_at) AS hour,
           t.query_id,
           (pg_catalog.array_agg(t.query ORDER BY t.terminated_at DESC))[1] AS query,
           pg_catalog.count(*) AS acted_on,
           pg_catalog.count(*) FILTER (WHERE t.dry_run) AS dry_run,
           pg_catalog.sum(t.held_up) AS sessions_held_up,
           pg_catalog.max(t.held_up_seconds) AS longest_held_up_seconds,
           (pg_catalog.array_agg(t.held_up_lock ORDER BY t.held_up DESC, t.terminated_at DESC))[1] AS held_up_lock,
           pg_catalog.array_agg(DISTINCT t.rule) AS rules,
           pg_catalog.array_agg(DISTINCT t.application_name) AS applications,
           pg_catalog.array_agg(DISTINCT t.usename) AS users,
           pg_catalog.min(t.terminated_at) AS first_seen,
           pg_catalog.max(t.terminated_at) AS last_seen
      FROM @extschema@.terminations t
     WHERE t.held_up OPERATOR(pg_catalog.>) 0
     GROUP BY 1, t.query_id, CASE WHEN t.query_id IS NULL THEN t.query END
), seen AS (
    SELECT pg_catalog.date_trunc('hour', h."time") AS hour,
           h.top_root_query_id AS query_id,
           pg_catalog.count(*) AS samples_as_top_root,
           pg_catalog.max(h.top_root_held_up) AS most_held_up_in_a_sample,
           pg_catalog.min(h."time") AS first_seen,
           pg_catalog.max(h."time") AS last_seen
      FROM @extschema@.history h
     WHERE h.top_root_query_id IS NOT NULL
     GROUP BY 1, 2
)
SELECT COALESCE(a.hour, s.hour) AS hour,
       COALESCE(a.query_id, s.query_id) AS query_id,
       a.query,
       COALESCE(a.acted_on, 0) AS acted_on,
       COALESCE(a.dry_run, 0) AS dry_run,
       COALESCE(a.sessions_held_up, 0) AS sessions_held_up,
       a.longest_held_up_seconds,
       a.held_up_lock,
       COALESCE(s.samples_as_top_root, 0) AS samples_as_top_root,
       s.most_held_up_in_a_sample,
       a.rules,
       a.applications,
       a.users,
       LEAST(a.first_seen, s.first_seen) AS first_seen,
       GREATEST(a.last_seen, s.last_seen) AS last_seen
  FROM acted a FULL JOIN seen s
    ON s.hour OPERATOR(pg_catalog.=) a.hour AND s.query_id OPERATOR(pg_catalog.=) a.query_id;
GRANT SELECT ON top_blockers TO dbconn_guard_admin, pg_read_all_stats;
COMMENT ON VIEW top_blockers IS
  'Which statements keep causing pile-ups, per hour: from the audit (dbconn_guard.terminations), the sessions that held others up when a rule acted on them (how often, dry_run of them in a dry run, the sessions held up in all, the longest wait, the lock, the rules, applications and users); from the history, the samples in which the statement was the root of the largest pile-up (pile-ups no rule acted on too; by query_id only). Grouped by query_id, by the statement''s text where none was computed. For the audit''s and the history''s readers.';

CREATE FUNCTION top_blockers_between(since timestamp with time zone,
                                     until timestamp with time zone DEFAULT 'infinity')
RETURNS TABLE (query_id bigint, query text, acted_on bigint, dry_run bigint,
               sessions_held_up bigint, longest_held_up_seconds double precision,
               held_up_lock text, samples_as_top_root bigint, most_held_up_in_a_sample bigint,
               rules text[], applications text[], users text[],
               first_seen timestamp with time zone, last_seen timestamp with time zone)
LANGUAGE sql STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
WITH acted AS (
    SELECT t.query_id AS id,
           (pg_catalog.array_agg(t.query ORDER BY t.terminated_at DESC))[1] AS query,
           pg_catalog.count(*) AS acted_on,
           pg_catalog.count(*) FILTER (WHERE t.dry_run) AS dry_run,
           pg_catalog.sum(t.held_up) AS held,
           pg_catalog.max(t.held_up_seconds) AS longest,
           (pg_catalog.array_agg(t.held_up_lock ORDER BY t.held_up DESC, t.terminated_at DESC))[1] AS lock,
           pg_catalog.array_agg(DISTINCT t.rule) AS rules,
           pg_catalog.array_agg(DISTINCT t.application_name) AS apps,
           pg_catalog.array_agg(DISTINCT t.usename) AS users,
           pg_catalog.min(t.terminated_at) AS first_at,
           pg_catalog.max(t.terminated_at) AS last_at
      FROM dbconn_guard.terminations t
     WHERE t.held_up OPERATOR(pg_catalog.>) 0
       AND t.terminated_at OPERATOR(pg_catalog.>=) since
       AND t.terminated_at OPERATOR(pg_catalog.<=) until
     GROUP BY t.query_id, CASE WHEN t.query_id IS NULL THEN t.query END
), seen AS (
    SELECT h.top_root_query_id AS id,
           pg_catalog.count(*) AS samples,
           pg_catalog.max(h.top_root_held_up) AS most,
           pg_catalog.min(h."time") AS first_at,
           pg_catalog.max(h."time") AS last_at
      FROM dbconn_guard.history_between(since, until) h
     WHERE h.top_root_query_id IS NOT NULL
     GROUP BY 1
)
SELECT COALESCE(a.id, s.id), a.query,
       COALESCE(a.acted_on, 0), COALESCE(a.dry_run, 0), COALESCE(a.held, 0), a.longest, a.lock,
       COALESCE(s.samples, 0), s.most, a.rules, a.apps, a.users,
       LEAST(a.first_at, s.first_at), GREATEST(a.last_at, s.last_at)
  FROM acted a FULL JOIN seen s ON s.id OPERATOR(pg_catalog.=) a.id
 ORDER BY 5 DESC, 8 DESC, 14 DESC
$$;
REVOKE EXECUTE ON FUNCTION top_blockers_between(timestamp with time zone, timestamp with time zone) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION top_blockers_between(timestamp with time zone, timestamp with time zone)
   TO dbconn_guard_admin, pg_read_all_stats;
COMMENT ON FUNCTION top_blockers_between(timestamp with time zone, timestamp with time zone) IS
  'Which statements kept causing pile-ups from since to until, one row per statement (query_id, or its text where none was computed), most sessions held up first: the columns of the top_blockers view over that window. Grafana: top_blockers_between($__timeFrom(), $__timeTo()). For the audit''s and the history''s readers.';

-- the metrics, as rows (for exporters that must run SQL); pg_monitor and the guard's admins
REVOKE EXECUTE ON FUNCTION metrics() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION metrics() TO dbconn_guard_admin, pg_read_all_stats;
COMMENT ON FUNCTION metrics() IS
  'The metrics the endpoint (dbconn_guard.metrics_listen) serves at /metrics, one row per sample: metric (its full Prometheus name), labels (jsonb), value, metric_type (gauge or counter) and help. For exporters that must run SQL, such as postgres_exporter with deploy/postgres_exporter/queries.yaml. Never any query text.';

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

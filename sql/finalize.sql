-- Views and comments of dbconn_guard's read-only surface.
-- The rows come from set-returning functions written in Rust (src/views.rs), which read
-- pg_stat_activity / pg_locks once per call as the calling role.

CREATE VIEW connection_analysis AS
SELECT datname, usename, application_name, client_addr::inet AS client_addr, state,
       connection_count, avg_age_seconds, max_age_seconds, oldest_xact_age_seconds, pids
  FROM @extschema@._connection_analysis();

CREATE VIEW blocking_pairs AS
SELECT * FROM @extschema@._blocking_pairs();

CREATE VIEW utilization AS
SELECT * FROM @extschema@._utilization();

CREATE VIEW leak_suspects AS
SELECT datname, usename, application_name, client_addr::inet AS client_addr,
       idle_count, avg_idle_seconds, max_idle_seconds, pids, trend, reason
  FROM @extschema@._leak_suspects();

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
  'Clients (datname, usename, application_name, client_addr) holding idle sessions older than dbconn_guard.leak_idle_age (reason idle_age), or whose idle count grew over the worker''s last dbconn_guard.leak_trend_samples samples (reason growing); trend: growing, steady, shrinking or unknown.';

COMMENT ON FUNCTION blocking_chains() IS
  'Every waiting backend with each root blocker it ultimately waits for (a session that blocks others and waits for no lock), the depth and path to it, and how many sessions that root holds up. Largest pile-up first: the first row''s root_pid is the one session to look at.';
COMMENT ON FUNCTION utilization_pct() IS
  'Client backends (backend_type = ''client backend'') as a percentage of max_connections.';
COMMENT ON FUNCTION health() IS
  'Health checks (utilization, idle_sessions, idle_in_transaction, lock_waits, oldest_transaction), each ok, warning or critical, with value, threshold and detail; thresholds from the dbconn_guard.* settings.';
COMMENT ON FUNCTION health_status() IS
  'The worst status of health(): ok, warning or critical.';
COMMENT ON FUNCTION _connection_analysis() IS 'Internal: rows of the connection_analysis view.';
COMMENT ON FUNCTION _blocking_pairs() IS 'Internal: rows of the blocking_pairs view.';
COMMENT ON FUNCTION _utilization() IS 'Internal: rows of the utilization view.';
COMMENT ON FUNCTION _leak_suspects() IS 'Internal: rows of the leak_suspects view.';

COMMENT ON FUNCTION worker_status() IS
  'The background worker: running, pid, last cycle (start, wall and CPU time, sessions examined, terminations), totals, next wake-up, last error, and the policy it applies (jsonb).';
COMMENT ON FUNCTION recent_terminations() IS
  'The latest terminations on this server (worker and manual, newest first), kept in shared memory: on a hot standby the only record, since the terminations table cannot be written there (persisted = false). signal_window_us: microseconds from the last read of the session''s status to the signal.';
COMMENT ON FUNCTION terminate_idle(interval, text[], text, boolean) IS
  'Ends client sessions in the given states (default: idle and both idle-in-transaction states) for at least older_than, optionally of one application_name, with the worker''s protections. The background worker records each in dbconn_guard.terminations (committed) before it signals it, whatever becomes of the calling transaction. dry_run only records and reports. Returns every matched session with what was done.';

-- terminate_idle() reads nothing through the caller's search_path
ALTER FUNCTION terminate_idle(interval, text[], text, boolean) SET search_path = pg_catalog, pg_temp;

REVOKE EXECUTE ON FUNCTION terminate_idle(interval, text[], text, boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION terminate_idle(interval, text[], text, boolean) TO dbconn_guard_admin;
REVOKE EXECUTE ON FUNCTION recent_terminations() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION recent_terminations() TO dbconn_guard_admin, pg_read_all_stats;

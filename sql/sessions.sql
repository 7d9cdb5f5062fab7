-- dbconn_guard's read-only surface over the sessions and the locks: the views, their grants and
-- comments. The rows come from set-returning functions written in Rust (src/sql/views.rs), which
-- read the backend status array and the lock manager once per call as the calling role.

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

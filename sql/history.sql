-- The history: its views over the ring in shared memory, the functions that read a time range of
-- it, and top_blockers over the history and the audit; their grants and comments.

CREATE VIEW history AS
SELECT * FROM @extschema@._history();

CREATE VIEW history_by_group AS
SELECT * FROM @extschema@._history_by_group();

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

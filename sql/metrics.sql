-- What /metrics serves, as rows: grants and comment.

-- the metrics, as rows (for exporters that must run SQL); pg_monitor and the guard's admins
REVOKE EXECUTE ON FUNCTION metrics() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION metrics() TO dbconn_guard_admin, pg_read_all_stats;
COMMENT ON FUNCTION metrics() IS
  'The metrics the endpoint (dbconn_guard.metrics_listen) serves at /metrics, one row per sample: metric (its full Prometheus name), labels (jsonb), value, metric_type (gauge or counter) and help. For exporters that must run SQL, such as postgres_exporter with deploy/postgres_exporter/queries.yaml. Never any query text.';

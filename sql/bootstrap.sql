-- Objects the Rust functions need before they are created: the audit table and the admin role.

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
    rule text NOT NULL CHECK (rule IN ('idle_timeout', 'idle_in_transaction_timeout', 'manual')),
    dry_run boolean NOT NULL,
    actor text NOT NULL,
    worker_cycle bigint
);
CREATE INDEX terminations_terminated_at_idx ON terminations (terminated_at);
SELECT pg_catalog.pg_extension_config_dump('terminations', '');
SELECT pg_catalog.pg_extension_config_dump('terminations_id_seq', '');

COMMENT ON TABLE terminations IS
  'Every session ended (or, with dry_run, that would have been ended) by the dbconn_guard worker or by terminate_idle(): who, what state for how long, which rule, and who acted (worker, with its cycle number, or manual:<role>).';

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'dbconn_guard_admin') THEN
        CREATE ROLE dbconn_guard_admin NOLOGIN;
    END IF;
END
$$;
GRANT pg_signal_backend, pg_read_all_stats TO dbconn_guard_admin;
COMMENT ON ROLE dbconn_guard_admin IS
  'May call dbconn_guard.terminate_idle() and read dbconn_guard.terminations; member of pg_signal_backend and pg_read_all_stats.';

GRANT SELECT, INSERT, DELETE ON terminations TO dbconn_guard_admin;
GRANT USAGE ON SEQUENCE terminations_id_seq TO dbconn_guard_admin;
GRANT SELECT ON terminations TO pg_read_all_stats;

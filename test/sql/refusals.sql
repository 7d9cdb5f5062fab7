-- Bad input gets a clear error, with its SQLSTATE, and changes nothing.
\set SHOW_CONTEXT never
CREATE FUNCTION pg_temp.sqlstate_of(sql text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
  EXECUTE sql;
  RETURN 'ok';
EXCEPTION WHEN others THEN
  RETURN SQLSTATE;
END $$;

-- settings out of range, malformed, or of the wrong context
SET dbconn_guard.warning_pct = 1000;
SET dbconn_guard.idle_warning_age = 0;
SET dbconn_guard.lock_wait_warning_age = '31d';
SET dbconn_guard.no_such_setting = 1;
SET dbconn_guard.idle_timeout = '1min';
ALTER SYSTEM SET dbconn_guard.idle_timeout = '300ms';
ALTER SYSTEM SET dbconn_guard.idle_in_transaction_timeout = -1;
ALTER SYSTEM SET dbconn_guard.idle_in_transaction_timeout = 'soon';
ALTER SYSTEM SET dbconn_guard.exclude_applications = 'psql,,pg_dump';
ALTER SYSTEM SET dbconn_guard.exclude_users = '"unterminated';
ALTER SYSTEM SET dbconn_guard.max_terminations_per_cycle = 5000;
ALTER SYSTEM SET dbconn_guard.naptime = '10ms';
ALTER SYSTEM SET dbconn_guard.enabled = 'perhaps';
-- none of them was written
SELECT count(*) AS auto_conf_settings FROM pg_file_settings
 WHERE sourcefile LIKE '%postgresql.auto.conf' AND name LIKE 'dbconn_guard.%';
SHOW dbconn_guard.warning_pct;

-- bad arguments of terminate_idle()
SELECT * FROM dbconn_guard.terminate_idle(NULL);
SELECT * FROM dbconn_guard.terminate_idle('-1 minute');
SELECT * FROM dbconn_guard.terminate_idle('0', ARRAY['active']);
SELECT * FROM dbconn_guard.terminate_idle('0', ARRAY[]::text[]);
SELECT * FROM dbconn_guard.terminate_idle('0', NULL);
SELECT pg_temp.sqlstate_of(sql) AS sqlstate, sql FROM (VALUES
  ($$SELECT dbconn_guard.terminate_idle(NULL)$$),
  ($$SELECT dbconn_guard.terminate_idle('-1 minute')$$),
  ($$SELECT dbconn_guard.terminate_idle('0', ARRAY['active'])$$),
  ($$SELECT dbconn_guard.terminate_idle('0', ARRAY[]::text[])$$),
  ($$SET dbconn_guard.warning_pct = 1000$$),
  ($$SELECT set_config('dbconn_guard.idle_warning_age', '0', false)$$),
  ($$SET dbconn_guard.idle_timeout = '1min'$$),
  ($$SET dbconn_guard.no_such_setting = 1$$)
) AS t(sql);

-- what an ordinary role may not do
CREATE ROLE regress_dbconn_guard_nobody;
SET ROLE regress_dbconn_guard_nobody;
SELECT count(*) FROM dbconn_guard.terminations;
SELECT * FROM dbconn_guard.terminate_idle('0', dry_run => true);
SELECT count(*) FROM dbconn_guard.recent_terminations();
ALTER SYSTEM SET dbconn_guard.idle_timeout = '5min';
SET dbconn_guard.warning_pct = 50;
-- what it may: read the views, which show it no other role's sessions (here: none, since
-- this session's user is the superuser that ran SET ROLE)
SELECT count(*) AS groups_it_sees FROM dbconn_guard.connection_analysis;
SELECT count(*) AS pairs_it_sees FROM dbconn_guard.blocking_pairs;
RESET ROLE;
-- not even the admin role writes the audit table: the worker is its only writer
SET ROLE dbconn_guard_admin;
INSERT INTO dbconn_guard.terminations (pid, rule, actor) VALUES (1, 'manual', 'forged');
DELETE FROM dbconn_guard.terminations;
BEGIN;
LOCK dbconn_guard.terminations IN EXCLUSIVE MODE;
ROLLBACK;
RESET ROLE;
DROP ROLE regress_dbconn_guard_nobody;

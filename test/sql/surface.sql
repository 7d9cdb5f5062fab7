-- The SQL surface of dbconn_guard as psql shows it: objects, columns, comments, privileges.
-- A change to any of them shows here as a reviewable diff.
SET client_min_messages = warning;
CREATE EXTENSION dbconn_guard;
RESET client_min_messages;
\dx+ dbconn_guard
\d+ dbconn_guard.connection_analysis
\d+ dbconn_guard.blocking_pairs
\d+ dbconn_guard.utilization
\d+ dbconn_guard.leak_suspects
\d+ dbconn_guard.history
\d+ dbconn_guard.history_by_group
\d+ dbconn_guard.terminations
-- every function: signature, result, defaults, properties, and who may call it
\x on
SELECT p.oid::regprocedure AS function,
       pg_get_function_result(p.oid) AS result,
       pg_get_function_arguments(p.oid) AS arguments,
       p.proacl, p.prosecdef AS security_definer, p.provolatile AS volatility,
       p.proparallel AS parallel, p.proisstrict AS strict, l.lanname AS language
  FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
 WHERE p.pronamespace = 'dbconn_guard'::regnamespace
 ORDER BY p.oid::regprocedure::text;
-- every object's comment
SELECT pg_describe_object(classid, objid, objsubid) AS object,
       coalesce(obj_description(objid, classid::regclass::name), '(none)') AS comment
  FROM pg_depend
 WHERE refclassid = 'pg_extension'::regclass
   AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'dbconn_guard')
   AND deptype = 'e'
 ORDER BY 1;
\x off
-- who may read and write what
\dp dbconn_guard.*
\dn+ dbconn_guard

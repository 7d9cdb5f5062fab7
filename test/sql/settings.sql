-- The dbconn_guard.* settings as PostgreSQL registered them (the table guc::SETTINGS).
-- dbconn_guard.database exists because the library is preloaded (test/regress.conf).
SELECT name, boot_val, unit, vartype, context, min_val, max_val
  FROM pg_settings WHERE name LIKE 'dbconn_guard.%' ORDER BY name;
SELECT name, short_desc, extra_desc
  FROM pg_settings WHERE name LIKE 'dbconn_guard.%' ORDER BY name;
-- the values SHOW prints, with their units
SELECT name, current_setting(name) AS shown
  FROM pg_settings WHERE name LIKE 'dbconn_guard.%' ORDER BY name;

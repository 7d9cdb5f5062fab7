//! Upgrades: version 0.1.0, installed from its frozen script, updated with `ALTER EXTENSION
//! dbconn_guard UPDATE` while the worker guards, must end up exactly like a fresh install of
//! the current version; and the frozen scripts of released versions never change.

use dbconn_guard_integration::*;
use postgres::Client;
use std::time::Duration;

/// Everything that makes up the extension in the connected database, as comparable text:
/// its member objects, each view's definition, each function's signature and properties
/// (result, volatility, strictness, security, settings, symbol, comment, privileges), and each
/// relation's columns, constraints, privileges and comment.
fn shape(c: &mut Client) -> Vec<String> {
    let queries = [
        "SELECT pg_describe_object(d.classid, d.objid, d.objsubid) FROM pg_depend d \
           JOIN pg_extension e ON e.oid = d.refobjid \
          WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e' AND e.extname = 'dbconn_guard' \
          ORDER BY 1",
        "SELECT c.relname || ': ' || pg_get_viewdef(c.oid) FROM pg_class c \
          WHERE c.relnamespace = 'dbconn_guard'::regnamespace AND c.relkind = 'v' ORDER BY 1",
        "SELECT concat_ws(' | ', p.oid::regprocedure::text, pg_get_function_result(p.oid), \
                 p.provolatile, p.proisstrict, p.prosecdef, p.proparallel, p.proconfig::text, p.prosrc, \
                 p.probin, obj_description(p.oid, 'pg_proc'), \
                 coalesce(p.proacl, acldefault('f', p.proowner))::text) \
           FROM pg_proc p WHERE p.pronamespace = 'dbconn_guard'::regnamespace ORDER BY 1",
        "SELECT concat_ws(' | ', c.relname, c.relkind, \
                 coalesce(c.relacl, acldefault((CASE c.relkind WHEN 'S' THEN 's' ELSE 'r' END)::\"char\", c.relowner))::text, \
                 obj_description(c.oid, 'pg_class')) \
           FROM pg_class c WHERE c.relnamespace = 'dbconn_guard'::regnamespace ORDER BY 1",
        "SELECT concat_ws(' | ', c.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod), \
                 a.attnotnull, pg_get_expr(ad.adbin, ad.adrelid)) \
           FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
           LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum \
          WHERE c.relnamespace = 'dbconn_guard'::regnamespace AND c.relkind IN ('r', 'v') \
            AND a.attnum > 0 AND NOT a.attisdropped ORDER BY 1",
        "SELECT conname || ': ' || pg_get_constraintdef(oid) FROM pg_constraint \
          WHERE connamespace = 'dbconn_guard'::regnamespace ORDER BY 1",
        "SELECT concat_ws(' | ', extversion, extrelocatable, extconfig::regclass[]::text, extcondition::text) \
           FROM pg_extension WHERE extname = 'dbconn_guard'",
        "SELECT 'schema ' || obj_description('dbconn_guard'::regnamespace, 'pg_namespace') \
             || ' ' || coalesce(nspacl::text, '') FROM pg_namespace WHERE nspname = 'dbconn_guard'",
    ];
    let mut out = Vec::new();
    for q in queries {
        for r in c.query(q, &[]).unwrap_or_else(|e| panic!("{q}: {e}")) {
            out.push(r.get::<_, String>(0));
        }
    }
    out
}

#[test]
fn an_update_from_0_1_0_matches_a_fresh_install_and_keeps_guarding() {
    let cluster = Cluster::start(
        "upgrade",
        ports::UPGRADE,
        &[
            "shared_preload_libraries = 'dbconn_guard'",
            "dbconn_guard.idle_in_transaction_timeout = '1s'",
            "dbconn_guard.naptime = '1s'",
        ],
    );
    let mut su = cluster.connect("postgres", "postgres", "it_upgrade");
    su.batch_execute("CREATE ROLE it_app LOGIN").unwrap();
    su.batch_execute("CREATE EXTENSION dbconn_guard VERSION '0.1.0'")
        .unwrap();
    wait_until(
        &mut su,
        "SELECT running AND extension_ready FROM dbconn_guard.worker_status()",
        Duration::from_secs(30),
    );
    let worker: i32 = su
        .query_one("SELECT pid FROM dbconn_guard.worker_status()", &[])
        .unwrap()
        .get(0);
    // the 0.1.0 objects with the current library: the worker guards and records
    let stale = |cluster: &Cluster| {
        let mut v = cluster.connect("it_app", "postgres", "it_upgrade_victim");
        let p = pid(&mut v);
        v.batch_execute("BEGIN; SELECT 1").unwrap();
        (v, p)
    };
    let (_v1, before) = stale(&cluster);
    wait_gone(&mut su, before, Duration::from_secs(10));
    // a row an admin inserted under 0.1.0's INSERT grant, with the very id the sequence hands
    // out next (a planted future id): the update moves the sequence past it, so the worker's
    // next record does not collide with it
    su.batch_execute(
        "INSERT INTO dbconn_guard.terminations (id, pid, state, state_age_seconds, rule, dry_run, actor) \
         SELECT last_value + 1, -1, 'idle', 1, 'manual', true, 'it_before_update' \
           FROM dbconn_guard.terminations_id_seq",
    )
    .unwrap();
    // and one at the very end of the id range: the sequence does not move there (every later
    // record would then fail with the sequence exhausted)
    su.batch_execute(
        "INSERT INTO dbconn_guard.terminations (id, pid, state, state_age_seconds, rule, dry_run, actor) \
         VALUES (9223372036854775807, -1, 'idle', 1, 'manual', true, 'it_before_update')",
    )
    .unwrap();

    // between the restart onto the new library and the update, everything answers
    query_every_0_1_0_view(&mut su, "0.1.0 objects on the new library");
    // and 0.1.0's terminate_idle(interval, text[], text, boolean), whose entry point the new
    // library keeps beside the one with filters
    su.query(
        "SELECT * FROM dbconn_guard.terminate_idle('1 hour', ARRAY['idle'], 'it_nobody', true)",
        &[],
    )
    .unwrap();
    let ring: i64 = su
        .query_one(
            "SELECT count(*) FROM dbconn_guard.recent_terminations() WHERE pid = $1",
            &[&before],
        )
        .unwrap()
        .get(0);
    assert_eq!(ring, 1);
    su.query("SELECT * FROM dbconn_guard.worker_status()", &[])
        .unwrap();

    su.batch_execute("ALTER EXTENSION dbconn_guard UPDATE")
        .unwrap();
    let current: bool = su
        .query_one(
            "SELECT e.extversion = a.default_version AND e.extversion <> '0.1.0' \
               FROM pg_extension e JOIN pg_available_extensions a ON a.name = e.extname \
              WHERE e.extname = 'dbconn_guard'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(current, "updated to the current version");
    // the worker went on, and goes on
    let (_v2, after) = stale(&cluster);
    wait_gone(&mut su, after, Duration::from_secs(10));
    let now: i32 = su
        .query_one("SELECT pid FROM dbconn_guard.worker_status()", &[])
        .unwrap()
        .get(0);
    assert_eq!(now, worker, "the worker never stopped");
    let rows: i64 = su
        .query_one(
            "SELECT count(*) FROM dbconn_guard.terminations WHERE pid IN ($1, $2, -1)",
            &[&before, &after],
        )
        .unwrap()
        .get(0);
    assert_eq!(rows, 4, "the audit rows from before the update survived");

    // exactly what a fresh install makes
    su.batch_execute("CREATE DATABASE fresh").unwrap();
    let mut fresh = cluster.connect("postgres", "fresh", "it_upgrade_fresh");
    fresh
        .batch_execute("CREATE EXTENSION dbconn_guard")
        .unwrap();
    let (updated, installed) = (shape(&mut su), shape(&mut fresh));
    let only_updated: Vec<&String> = updated.iter().filter(|l| !installed.contains(l)).collect();
    let only_fresh: Vec<&String> = installed.iter().filter(|l| !updated.contains(l)).collect();
    assert!(
        only_updated.is_empty() && only_fresh.is_empty() && updated.len() == installed.len(),
        "the updated extension differs from a fresh install:\nonly after the update: {only_updated:#?}\nonly in a fresh install: {only_fresh:#?}"
    );
    assert!(updated.len() > 40, "compared {} facts", updated.len());
}

#[test]
fn the_scripts_of_released_versions_are_frozen() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../sql/released");
    let out = std::process::Command::new("sha256sum")
        .args(["--check", "--strict", "SHA256SUMS"])
        .current_dir(&dir)
        .output()
        .expect("sha256sum");
    assert!(
        out.status.success(),
        "a released install script was edited (sql/released/SHA256SUMS):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = std::fs::read_to_string(dir.join("SHA256SUMS")).unwrap();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".sql") {
            assert!(
                listed.contains(&name),
                "{name} has no checksum in SHA256SUMS"
            );
        }
    }
}

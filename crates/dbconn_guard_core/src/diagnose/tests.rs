//! The tree's unit tests, over plain data.

use super::*;
use crate::blocking::LockWait;
use crate::budgets::Budgets;
use crate::history::GroupSample;
use crate::patterns::PatternList;
use crate::session::fixtures::*;

const MB: i64 = 1024 * 1024;
const HOUR: Micros = 3600 * SECOND;

/// A client connected two hours ago (before the window), in `state` for `age_s` seconds.
fn c(pid: i32, state: &'static str, age_s: i64) -> Backend {
    let mut b = client(pid, state, age_s);
    b.backend_start = Some(NOW - 2 * HOUR - age_s * SECOND);
    if state == "active" {
        b.query_start = b.state_change;
    }
    if state.starts_with("idle in transaction") {
        b.xact_start = Some(NOW - (age_s + 5) * SECOND);
    }
    b
}

fn app(mut b: Backend, name: &str) -> Backend {
    b.application_name = Some(name.into());
    b
}

fn addr(mut b: Backend, a: &str) -> Backend {
    b.client_addr = Some(a.into());
    b
}

fn policy() -> Policy {
    Policy {
        idle_in_transaction_timeout: 300 * SECOND,
        ..Policy::default()
    }
}

fn counts(active: u32, idle: u32) -> StateCounts {
    StateCounts {
        active,
        idle,
        ..Default::default()
    }
}

/// A sample `ago_s` seconds ago with one group ("app", "web", "api").
fn sample(ago_s: i64, active: u32, idle: u32) -> Sample {
    let cl = counts(active, idle);
    Sample {
        time: NOW - ago_s * SECOND,
        clients: cl,
        max_connections: 100,
        utilization_pct: f64::from(cl.total()),
        groups: vec![GroupSample {
            name: GroupName {
                datname: Some("app".into()),
                usename: Some("web".into()),
                application_name: Some("api".into()),
            },
            counts: cl,
            other: false,
        }],
        ..Default::default()
    }
}

/// A quiet, healthy server: 2 active and 3 idle sessions, an hour of steady history.
fn input() -> Input {
    with(vec![
        c(1, "active", 1),
        c(2, "active", 2),
        c(3, "idle", 10),
        c(4, "idle", 20),
        c(5, "idle", 30),
    ])
}

fn with(backends: Vec<Backend>) -> Input {
    Input {
        snapshot: snapshot(backends),
        limits: Limits {
            max_connections: 100,
            superuser_reserved_connections: 3,
            reserved_connections: None,
        },
        lock_waits: vec![],
        history: History {
            enabled: true,
            hidden_from_caller: false,
            window: HOUR,
            samples: (0..6).rev().map(|i| sample(i * 600, 2, 3)).collect(),
        },
        server: Server {
            in_recovery: false,
            postmaster_start: Some(NOW - 240 * HOUR),
            conf_load_time: Some(NOW - 200 * HOUR),
            preloaded: true,
            shared_preload_libraries: Some("pg_stat_statements,dbconn_guard".into()),
            idle_in_transaction_session_timeout: Some(0),
            idle_session_timeout: Some(0),
            statement_timeout: Some(0),
            transaction_timeout: Some(0),
            work_mem: Some(4 * MB),
            shared_buffers: Some(128 * MB),
            setting_changes: Some(vec![]),
            settings_compared_reload: NOW - 200 * HOUR,
        },
        guard: Guard {
            policy: policy(),
            enabled: true,
            dry_run: false,
            thresholds: Thresholds::default(),
            leak_idle_age: 600.0,
            leak_trend_samples: 6,
            slow_query_age: Some(300.0),
        },
        worker: Some(WorkerInfo {
            running: true,
            pid: Some(99),
            database: "app".into(),
            last_error: None,
            last_error_at: None,
            extension_ready: true,
            database_owner_not_superuser: None,
        }),
        caller: Caller {
            pid: 1,
            role: "dba".into(),
            database: "app".into(),
            hidden_backends: 0,
            has_read_all_stats: true,
            lacks_terminate_idle: false,
            is_superuser: true,
            has_signal_backend: true,
            member_of: vec![],
        },
        guard_actions: vec![],
    }
}

fn area<'a>(fs: &'a [Finding], a: &str) -> Vec<&'a Finding> {
    fs.iter().filter(|f| f.area == a).collect()
}

fn one<'a>(fs: &'a [Finding], a: &str) -> &'a Finding {
    let rows = area(fs, a);
    assert_eq!(rows.len(), 1, "{a}: {rows:#?}");
    rows[0]
}

fn not_ok<'a>(fs: &'a [Finding], a: &str) -> Vec<&'a Finding> {
    area(fs, a)
        .into_iter()
        .filter(|f| f.status != Status::Ok)
        .collect()
}

fn action(f: &Finding) -> &str {
    f.action
        .as_deref()
        .unwrap_or_else(|| panic!("no action: {f:#?}"))
}

const ORDER: [&str; 19] = [
    "server",
    "pool",
    "consumers",
    "oversized pool",
    "leaks",
    "idle in transaction",
    "slow queries",
    "locks",
    "error pattern",
    "recent changes",
    "deployment",
    "connection storm",
    "connection churn",
    "timeouts",
    "guard",
    "memory",
    "pgbouncer",
    "pooler",
    "worker",
];

// --- shape ---------------------------------------------------------------------------

#[test]
fn a_healthy_server_is_ok_everywhere_in_the_runbooks_order() {
    let fs = diagnose(&input());
    for f in &fs {
        assert_eq!(f.status, Status::Ok, "{f:#?}");
    }
    let steps: Vec<i32> = fs.iter().map(|f| f.step).collect();
    assert_eq!(steps, (1..=fs.len() as i32).collect::<Vec<_>>());
    let mut areas: Vec<&str> = fs.iter().map(|f| f.area).collect();
    areas.dedup();
    let mut expected = vec!["incident"];
    expected.extend(ORDER);
    expected.push("visibility");
    assert_eq!(areas, expected);
    assert_eq!(fs[0].finding, "No incident: nothing is wrong now");
}

#[test]
fn the_first_row_names_the_most_harmful_finding_and_its_culprit() {
    // a leak, and an idle-in-transaction root holding up two sessions: work held up comes
    // before slots held
    let mut clients: Vec<Backend> = (0..12)
        .map(|p| app(c(10 + p, "idle", 900), "orders"))
        .collect();
    clients.push(c(7, "idle in transaction", 600));
    clients.extend((0..2).map(|p| c(30 + p, "active", 60)));
    let mut i = with(clients);
    i.lock_waits = (0..2).map(|p| wait(30 + p, &[7], 60)).collect();
    let fs = diagnose(&i);
    let first = &fs[0];
    assert_eq!(first.area, "incident");
    assert_eq!(first.status, Status::Warning, "{first:#?}");
    assert!(
        first
            .finding
            .contains("pid 7 idle in transaction for 10min holds up 2 sessions"),
        "{}",
        first.finding
    );
    assert_eq!(action(first), "SELECT pg_terminate_backend(7);");
    // one story: the locks row points to the idle-in-transaction row, which ends the root
    let l = one(&fs, "locks");
    assert_eq!(l.status, Status::Info, "{l:#?}");
    assert_eq!(l.see, Some("idle in transaction"), "{l:#?}");
    assert!(!action(l).contains("pg_terminate_backend"), "{}", action(l));
    assert!(first.evidence.contains("leaks"), "{}", first.evidence);
    // the leak alone: it is the incident, named
    let fs = diagnose(&with(
        (0..12)
            .map(|p| app(c(10 + p, "idle", 900), "orders"))
            .collect(),
    ));
    assert_eq!(
        shape(&fs[0]),
        (
            "incident",
            Status::Warning,
            application("orders"),
            ActionKind::EndIdleThroughGuard
        )
    );
    assert_eq!(fs[0].action, one(&fs, "leaks").action);
}

#[test]
fn status_names() {
    assert_eq!(
        [Status::Ok, Status::Info, Status::Warning, Status::Critical].map(Status::as_str),
        ["ok", "info", "warning", "critical"]
    );
    assert!(Status::Critical > Status::Warning && Status::Info > Status::Ok);
}

// --- server ------------------------------------------------------------------------------

#[test]
fn a_standby_says_what_differs_and_everything_else_still_runs() {
    let mut i = input();
    i.server.in_recovery = true;
    let fs = diagnose(&i);
    let s = one(&fs, "server");
    assert_eq!(s.status, Status::Info);
    assert!(s.evidence.contains("read-only"), "{}", s.evidence);
    assert_eq!(
        action(s),
        "SELECT * FROM dbconn_guard.recent_terminations();"
    );
    assert_eq!(fs.len(), diagnose(&input()).len());
}

// --- pool ---------------------------------------------------------------------------------

fn n_clients(n: i32, state: &'static str) -> Vec<Backend> {
    (1..=n).map(|p| c(p + 10, state, 5)).collect()
}

#[test]
fn pool_grades_by_the_health_thresholds_and_reserved_slots() {
    let fs = diagnose(&with(n_clients(50, "active")));
    let p = one(&fs, "pool");
    assert_eq!(p.status, Status::Ok);
    assert!(
        p.evidence.starts_with("50 of 100 slots (50.0%)"),
        "{}",
        p.evidence
    );
    assert!(p.evidence.contains("3 reserved, 47 left"), "{}", p.evidence);

    // one group holds the idle sessions: the action ends its idle sessions only, and
    // spares the bystanders
    let mut clients = n_clients(40, "active");
    clients.extend((0..40).map(|i| c(200 + i, "idle", 400)));
    clients.extend((0..5).map(|i| app(c(300 + i, "idle", 400), "billing")));
    let fs = diagnose(&with(clients.clone()));
    let p = one(&fs, "pool");
    assert_eq!(p.status, Status::Warning);
    assert_eq!(
        action(p),
        "SELECT * FROM dbconn_guard.terminate_idle('300 seconds', ARRAY['idle'], application_name => 'api', usename => 'web', client_addr => '10.0.0.1', datname => 'app');"
    );
    assert!(
        p.evidence.contains("holds 40 of the 45 idle sessions"),
        "{}",
        p.evidence
    );
    // and the finding names it
    assert!(
        p.finding
            .contains("application \"api\" holds 40 of them idle"),
        "{}",
        p.finding
    );
    // none stands out: every group's, and said to be wider
    let mut spread = n_clients(40, "active");
    spread.extend((0..40).map(|i| app(c(200 + i, "idle", 400), &format!("app{}", i % 4))));
    let fs = diagnose(&with(spread));
    let p = one(&fs, "pool");
    assert_eq!(
        action(p),
        "SELECT * FROM dbconn_guard.terminate_idle('300 seconds', ARRAY['idle']);"
    );
    assert!(p.evidence.contains("wider"), "{}", p.evidence);

    let fs = diagnose(&with(n_clients(92, "active")));
    let p = one(&fs, "pool");
    assert_eq!(p.status, Status::Critical);
    assert!(
        action(p).starts_with("ALTER SYSTEM SET max_connections = 150;"),
        "{p:#?}"
    );

    let fs = diagnose(&with(n_clients(97, "active")));
    let p = one(&fs, "pool");
    assert_eq!(p.status, Status::Critical);
    assert!(p.finding.starts_with("Pool exhausted"), "{}", p.finding);
}

#[test]
fn the_pool_row_proposes_a_budget_for_its_culprit_from_the_history() {
    // 85 idle sessions of "api" (user "web") and 10 busy: critical; the history shows "api"
    // with at most 8 busy at once: a budget of 8 + 2
    let mut clients = n_clients(10, "active");
    clients.extend((0..85).map(|i| c(200 + i, "idle", 400)));
    let mut i = with(clients);
    for (k, s) in i.history.samples.iter_mut().enumerate() {
        s.groups[0].counts.active = if k == 3 { 8 } else { 2 };
    }
    let p = one(&diagnose(&i), "pool").clone();
    assert_eq!(p.status, Status::Critical, "{p:#?}");
    let paste =
        "ALTER SYSTEM SET dbconn_guard.connection_budgets = 'app:api=10'; SELECT pg_reload_conf();";
    assert!(
        p.evidence.contains("had at most 8 sessions busy at once") && p.evidence.contains(paste),
        "{}",
        p.evidence
    );
    // the action stays the fix for now: end the culprit's idle sessions
    assert!(
        action(&p).contains("application_name => 'api'"),
        "{}",
        action(&p)
    );
    // a list in force is never replaced by a paste: what to add to it
    i.guard.policy.connection_budgets = Budgets::parse("user:etl=5").unwrap();
    let p = one(&diagnose(&i), "pool").clone();
    assert!(
        p.evidence
            .contains("add app:api=10 to dbconn_guard.connection_budgets")
            && !p
                .evidence
                .contains("ALTER SYSTEM SET dbconn_guard.connection_budgets"),
        "{}",
        p.evidence
    );
    // an item that charges it already: which one (appending would never apply)
    i.guard.policy.connection_budgets = Budgets::parse("user:etl=5, app:*=50").unwrap();
    let p = one(&diagnose(&i), "pool").clone();
    assert!(
        p.evidence
            .contains("item 2 of dbconn_guard.connection_budgets charges it now, with 50"),
        "{}",
        p.evidence
    );
    // a history of minutes sizes no budget
    i.guard.policy.connection_budgets = Budgets::default();
    i.history.samples.retain(|s| s.time >= NOW - 900 * SECOND);
    assert!(!i.history.samples.is_empty());
    let p = one(&diagnose(&i), "pool").clone();
    assert!(
        p.evidence.contains("too little to size it by")
            && !p
                .evidence
                .contains("ALTER SYSTEM SET dbconn_guard.connection_budgets"),
        "{}",
        p.evidence
    );
}

#[test]
fn a_proposed_budget_item_charges_the_application_it_names() {
    for name in ["api", "my app", "a,b=c\"d", "x:y/z", "café"] {
        let item = format!("app:{}=10", crate::quote::list_item(name));
        let budgets = Budgets::parse(&item).unwrap_or_else(|e| panic!("{item}: {e}"));
        let b = app(c(1, "idle", 10), name);
        assert_eq!(budgets.charge(&b).map(|(_, n)| n), Some(10), "{item}");
        let other = app(c(2, "idle", 10), "another");
        assert_eq!(budgets.charge(&other), None, "{item}");
    }
}

#[test]
fn pool_without_max_connections_cannot_be_checked() {
    let mut i = input();
    i.limits.max_connections = 0;
    let fs = diagnose(&i);
    let p = one(&fs, "pool");
    assert_eq!(
        (p.status, action(p)),
        (Status::Info, "SHOW max_connections;")
    );
    assert_eq!(one(&fs, "memory").status, Status::Info);
}

#[test]
fn pool_action_without_the_worker_reads_pg_stat_activity() {
    let mut clients = n_clients(10, "active");
    clients.extend((0..75).map(|i| c(200 + i, "idle", 400)));
    let mut i = with(clients);
    i.worker.as_mut().unwrap().running = false;
    let fs = diagnose(&i);
    let a = action(one(&fs, "pool"));
    assert!(
        a.starts_with("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"),
        "{a}"
    );
    assert!(
        a.contains("state_change < now() - interval '300 seconds'"),
        "{a}"
    );
    assert!(a.contains("rolsuper"), "spares superusers: {a}");
}

// --- consumers -----------------------------------------------------------------------------

#[test]
fn consumers_by_application_user_and_client_with_shares() {
    let mut clients: Vec<Backend> = (0..6).map(|p| c(10 + p, "idle", 5)).collect();
    clients.push(app(c(20, "active", 1), "batch"));
    clients.push(addr(app(c(21, "active", 1), "batch"), "10.0.0.2"));
    let fs = diagnose(&with(clients));
    let rows = area(&fs, "consumers");
    assert_eq!(rows.len(), 3);
    assert!(
        rows[0].finding.starts_with(
            "Top application: \"api\" holds 6 of 8 client sessions (75%), 100% of them idle"
        ),
        "{}",
        rows[0].finding
    );
    assert_eq!(
        rows[0].evidence,
        "by application: \"api\" 6 (75%, 100% idle), \"batch\" 2 (25%, 0% idle)"
    );
    assert!(rows[1].evidence.starts_with("by user: \"web\" 8 (100%"));
    assert!(
        rows[2].evidence.contains("\"10.0.0.2\" 1 (12%, 0% idle)"),
        "{}",
        rows[2].evidence
    );
    assert!(rows.iter().all(|r| r.status == Status::Ok));

    let fs = diagnose(&with(vec![]));
    assert_eq!(one(&fs, "consumers").finding, "No client sessions visible");
}

// --- oversized pool ------------------------------------------------------------------------

#[test]
fn a_pool_larger_than_its_work_is_named_by_client() {
    let mut clients: Vec<Backend> = (0..11)
        .map(|p| addr(c(10 + p, "idle", 400), "10.0.0.5"))
        .collect();
    clients.push(addr(c(30, "active", 1), "10.0.0.5"));
    let fs = diagnose(&with(clients.clone()));
    let o = one(&fs, "oversized pool");
    assert_eq!(o.status, Status::Warning);
    assert!(
        o.finding
            .contains("11 of 12 sessions from \"10.0.0.5\" (application \"api\")"),
        "{}",
        o.finding
    );
    // its busiest moment in the history (2 busy) plus headroom
    assert!(
        o.evidence.contains("a pool of about 4 would do"),
        "{}",
        o.evidence
    );
    assert_eq!(
        action(o),
        "SELECT * FROM dbconn_guard.terminate_idle('300 seconds', ARRAY['idle'], application_name => 'api', usename => 'web', client_addr => '10.0.0.5');"
    );
    // below the size, or not idle enough: nothing
    let fs = diagnose(&with(clients[..9].to_vec()));
    assert_eq!(one(&fs, "oversized pool").status, Status::Ok);
    let mut busy = clients.clone();
    busy.extend((0..4).map(|p| addr(c(40 + p, "active", 1), "10.0.0.5")));
    assert_eq!(
        one(&diagnose(&with(busy)), "oversized pool").status,
        Status::Ok
    );
    // a pooler's are left to the pooler row
    let pooled: Vec<Backend> = clients
        .iter()
        .cloned()
        .map(|b| app(b, "pgbouncer"))
        .collect();
    assert_eq!(
        one(&diagnose(&with(pooled)), "oversized pool").status,
        Status::Ok
    );
    // a pool whose busiest moment in the window needed most of it is sized for its peak
    let mut peaked = with(clients.clone());
    peaked.history.samples[2] = sample(1800, 8, 4);
    assert_eq!(one(&diagnose(&peaked), "oversized pool").status, Status::Ok);
}

#[test]
fn a_pool_on_several_hosts_is_judged_by_its_share_of_the_history() {
    // three pods of 12 sessions each, all unused for minutes; the history's busiest sample
    // had 12 busy in all (4 a pod): each pod's pool is three times its work
    let clients: Vec<Backend> = (0..36)
        .map(|p| addr(c(10 + p, "idle", 400), &format!("10.0.0.{}", 10 + p / 12)))
        .collect();
    let mut i = with(clients);
    i.history.samples[2] = sample(1800, 12, 24);
    let fs = diagnose(&i);
    assert_eq!(not_ok(&fs, "oversized pool").len(), 3, "{fs:#?}");
    assert!(not_ok(&fs, "oversized pool")[0]
        .evidence
        .contains("a pool of about 6 would do"));
}

#[test]
fn a_healthy_pool_that_takes_each_connection_within_seconds_is_not_oversized() {
    // ten connections, each used every half second: idle for a second at most, at any
    // instant most of them idle
    let mut clients: Vec<Backend> = (0..9)
        .map(|p| addr(c(10 + p, "idle", 1), "10.0.0.5"))
        .collect();
    clients.push(addr(c(30, "active", 0), "10.0.0.5"));
    clients.extend((0..10).map(|p| addr(c(40 + p, "idle", 0), "10.0.0.6")));
    let fs = diagnose(&with(clients));
    assert_eq!(one(&fs, "oversized pool").status, Status::Ok);
    assert!(not_ok(&fs, "oversized pool").is_empty());
}

// --- leaks -------------------------------------------------------------------------------

#[test]
fn leak_suspects_by_idle_age() {
    let mut clients = vec![c(1, "active", 1)];
    clients.extend((0..4).map(|p| app(c(10 + p, "idle", 900 + i64::from(p)), "orders")));
    let fs = diagnose(&with(clients));
    let l = one(&fs, "leaks");
    assert_eq!(l.status, Status::Warning);
    assert_eq!(l.reading, Some(Reading::Leak));
    assert!(
        l.finding.contains("4 sessions idle for up to 15min"),
        "{}",
        l.finding
    );
    assert!(
        l.evidence.contains("application \"orders\""),
        "{}",
        l.evidence
    );
    // the leaking group only: application, user, client and database
    assert_eq!(
        action(l),
        "SELECT * FROM dbconn_guard.terminate_idle('600 seconds', ARRAY['idle'], application_name => 'orders', usename => 'web', client_addr => '10.0.0.1', datname => 'app');"
    );
    assert_eq!(one(&diagnose(&input()), "leaks").status, Status::Ok);
}

#[test]
fn leak_suspects_by_a_growing_trend_from_history() {
    // one more session a minute, each idle since it came (a session that stays idle)
    let mut i = with(
        (0..6)
            .map(|p| c(10 + p, "idle", 30 + 60 * i64::from(p)))
            .collect(),
    );
    i.history.samples = (0..6)
        .map(|k| sample((5 - k) * 60, 0, k as u32 + 1))
        .collect();
    let fs = diagnose(&i);
    let l = one(&fs, "leaks");
    assert_eq!(l.status, Status::Warning);
    assert_eq!(l.reading, Some(Reading::LeakGrowing), "{}", l.finding);
    assert!(
        l.evidence.contains("trend growing (1, 2, 3, 4, 5, 6)"),
        "{}",
        l.evidence
    );
    // without history only the age is checked, and the row says so
    i.history = History {
        enabled: false,
        hidden_from_caller: false,
        window: HOUR,
        samples: vec![],
    };
    let l = diagnose(&i);
    let l = one(&l, "leaks");
    assert_eq!(l.status, Status::Ok);
    assert!(l.evidence.contains("trend not checked"), "{}", l.evidence);
}

#[test]
fn leak_rows_are_bounded() {
    let clients: Vec<Backend> = (0..18)
        .map(|p| app(c(10 + p, "idle", 900), &format!("app{}", p / 3)))
        .collect();
    let fs = diagnose(&with(clients));
    let rows = area(&fs, "leaks");
    assert_eq!(rows.len(), TOP);
    assert!(rows[2]
        .evidence
        .contains("3 more in dbconn_guard.leak_suspects"));
}

// --- idle in transaction ---------------------------------------------------------------------

#[test]
fn idle_in_transaction_names_the_guard_rule_that_ends_it() {
    let fs = diagnose(&with(vec![c(4711, "idle in transaction", 120)]));
    let f = one(&fs, "idle in transaction");
    assert_eq!(f.status, Status::Info);
    assert!(
        f.evidence
            .contains("dbconn_guard.idle_in_transaction_timeout (5min) ends it in 3min"),
        "{}",
        f.evidence
    );
    assert_eq!(action(f), "SELECT pg_terminate_backend(4711);");
    // young ones are not reported
    let fs = diagnose(&with(vec![c(4711, "idle in transaction", 30)]));
    assert_eq!(one(&fs, "idle in transaction").status, Status::Ok);
}

#[test]
fn idle_in_transaction_past_the_guards_deadline_asks_about_the_worker() {
    let fs = diagnose(&with(vec![c(4711, "idle in transaction (aborted)", 1200)]));
    let f = one(&fs, "idle in transaction");
    assert_eq!(f.status, Status::Warning);
    assert_eq!(f.reading, Some(Reading::PastGuardDeadline), "{}", f.finding);
    assert!(
        f.evidence.contains("was due to end it 15min ago"),
        "{}",
        f.evidence
    );
}

#[test]
fn idle_in_transaction_nobody_ends_gets_the_setting_to_enable() {
    let mut i = with(vec![c(4711, "idle in transaction", 120)]);
    i.guard.policy.idle_in_transaction_timeout = 0;
    let fs = diagnose(&i);
    let f = one(&fs, "idle in transaction");
    assert_eq!(f.status, Status::Warning);
    assert_eq!(
        action(f),
        "ALTER SYSTEM SET dbconn_guard.idle_in_transaction_timeout = '5min'; SELECT pg_reload_conf();"
    );
    // PostgreSQL's own timeout covers it
    i.server.idle_in_transaction_session_timeout = Some(600 * SECOND);
    let fs = diagnose(&i);
    let f = one(&fs, "idle in transaction");
    assert_eq!(f.status, Status::Info);
    assert!(
        f.evidence
            .contains("PostgreSQL's idle_in_transaction_session_timeout (10min) ends it in 8min"),
        "{}",
        f.evidence
    );
    // transaction_timeout of the guard: from the transaction's start
    i.server.idle_in_transaction_session_timeout = Some(0);
    i.guard.policy.transaction_timeout = 130 * SECOND;
    let fs = diagnose(&i);
    let f = one(&fs, "idle in transaction");
    assert!(
        f.evidence
            .contains("dbconn_guard.transaction_timeout (2min 10s) ends it in 5s"),
        "{}",
        f.evidence
    );
}

#[test]
fn idle_in_transaction_the_guard_may_not_end_is_terminated_by_pid() {
    // a superuser: protected
    let mut su = c(4711, "idle in transaction", 120);
    su.is_superuser = Some(true);
    let fs = diagnose(&with(vec![su]));
    let f = one(&fs, "idle in transaction");
    assert_eq!(f.status, Status::Warning);
    assert!(f.evidence.contains("superuser"), "{}", f.evidence);
    assert_eq!(action(f), "SELECT pg_terminate_backend(4711);");
    // an override of 0 for its application
    let mut i = with(vec![c(4712, "idle in transaction", 120)]);
    i.guard.policy.idle_in_transaction_timeout_overrides = Overrides::parse("app:api=0").unwrap();
    let fs = diagnose(&i);
    let f = one(&fs, "idle in transaction");
    assert!(f.evidence.contains("gives it 0 (never)"), "{}", f.evidence);
    assert_eq!(action(f), "SELECT pg_terminate_backend(4712);");
    // the guard in dry run ends nothing
    let mut i = with(vec![c(4713, "idle in transaction", 120)]);
    i.guard.dry_run = true;
    let fs = diagnose(&i);
    assert_eq!(
        action(one(&fs, "idle in transaction")),
        "SELECT pg_terminate_backend(4713);"
    );
}

#[test]
fn idle_in_transaction_mentions_what_it_blocks() {
    let mut i = with(vec![
        c(4711, "idle in transaction", 120),
        c(20, "active", 30),
    ]);
    i.lock_waits = vec![LockWait {
        pid: 20,
        blocked_by: vec![4711],
        ..Default::default()
    }];
    let fs = diagnose(&i);
    assert!(one(&fs, "idle in transaction")
        .evidence
        .contains("holds up 1 session"));
}

#[test]
fn a_root_idle_in_transaction_that_holds_up_work_now_is_ended_now() {
    // five sessions waiting 30 s behind it: the finding says so, and the action ends it (a
    // timeout set now would end it only later), whatever the guard's configuration
    let mut i = with(vec![
        c(4711, "idle in transaction", 120),
        c(20, "active", 30),
        c(21, "active", 30),
    ]);
    i.lock_waits = vec![wait(20, &[4711], 30), wait(21, &[4711], 30)];
    let fs = diagnose(&i);
    let row = one(&fs, "idle in transaction");
    assert_eq!(row.status, Status::Warning);
    assert!(
        row.finding.contains("holds up 2 sessions"),
        "{}",
        row.finding
    );
    assert_eq!(action(row), "SELECT pg_terminate_backend(4711);");
    // and the first row is it
    assert_eq!(
        shape(&fs[0]),
        (
            "incident",
            Status::Warning,
            Some(Culprit::Session(4711)),
            ActionKind::EndSession
        )
    );
    assert_eq!(action(&fs[0]), "SELECT pg_terminate_backend(4711);");
    // waits of a moment are ordinary contention: the timeout that will end it is enough
    i.lock_waits = vec![wait(20, &[4711], 2), wait(21, &[4711], 2)];
    let fs = diagnose(&i);
    let row = one(&fs, "idle in transaction");
    assert_eq!(row.status, Status::Info, "{row:#?}");
    assert_eq!(row.reading, None, "{row:#?}");
    // a CREATE INDEX CONCURRENTLY waiting 30 s for its snapshot (a virtualxid wait: it waits
    // for every older transaction, whoever holds it) is no pile-up to end it for now; nor an
    // advisory lock's waiter (applications wait on those on purpose)
    for locktype in ["virtualxid", "advisory"] {
        let mut w = wait(20, &[4711], 30);
        w.locktype = Some(locktype.into());
        i.lock_waits = vec![w];
        let fs = diagnose(&i);
        let row = one(&fs, "idle in transaction");
        assert_eq!(row.status, Status::Info, "{locktype}: {row:#?}");
        assert_eq!(row.reading, None, "{locktype}: {row:#?}");
    }
}

#[test]
fn a_root_the_guard_protects_gets_a_look_at_what_waits_not_an_end() {
    // a dump's leader, idle in its transaction, with an ALTER TABLE waiting 30 s behind it
    let mut i = with(vec![
        app(c(4711, "idle in transaction", 1200), "pg_dump"),
        c(20, "active", 30),
    ]);
    i.guard.policy.scope.exclude_client_tools = true;
    i.lock_waits = vec![wait(20, &[4711], 30)];
    // PostgreSQL's own timeout will end it, in an hour
    i.server.idle_in_transaction_session_timeout = Some(2 * HOUR);
    let fs = diagnose(&i);
    let row = one(&fs, "idle in transaction");
    assert_eq!(row.status, Status::Warning);
    assert_eq!(
        row.reading,
        Some(Reading::ProtectedHoldsUpWork),
        "{}",
        row.finding
    );
    assert!(
        row.finding.contains("a timeout will end it"),
        "{}",
        row.finding
    );
    assert_eq!(
        action(row),
        "SELECT pid, usename, application_name, state, wait_event_type, wait_event, now() - query_start AS waiting, query FROM pg_stat_activity WHERE 4711 = ANY (pg_blocking_pids(pid));"
    );
    // without a timeout that covers it, the same
    i.guard.policy.idle_in_transaction_timeout = 0;
    i.server.idle_in_transaction_session_timeout = Some(0);
    let fs = diagnose(&i);
    let row = one(&fs, "idle in transaction");
    assert_eq!(
        row.reading,
        Some(Reading::ProtectedHoldsUpWork),
        "{}",
        row.finding
    );
    assert!(action(row).contains("pg_blocking_pids"));
}

// --- slow queries ----------------------------------------------------------------------------

#[test]
fn slow_queries_of_one_group_are_cancelled_in_one_paste() {
    let mut mine = c(1, "active", 4000);
    mine.pid = 1; // the caller's own session
    let clients = vec![
        mine,
        c(4711, "active", 600),
        c(4712, "active", 900),
        c(3, "active", 10),
        // another application's one slow statement: its own row, by pid
        app(c(50, "active", 1200), "batch"),
    ];
    let fs = diagnose(&with(clients));
    let rows = area(&fs, "slow queries");
    assert_eq!(rows.len(), 2, "{rows:#?}");
    // the group with the most statements first, named in the finding, one paste for all
    assert_eq!(rows[0].status, Status::Warning);
    assert!(rows[0]
        .finding
        .contains("2 slow queries of application \"api\""));
    assert!(rows[0].finding.contains("15min"), "{}", rows[0].finding);
    assert_eq!(
        action(rows[0]),
        "SELECT * FROM dbconn_guard.cancel_statements('300 seconds', application_name => 'api', usename => 'web', client_addr => '10.0.0.1', datname => 'app');"
    );
    assert!(
        rows[0].evidence.contains("pids 4711, 4712"),
        "{}",
        rows[0].evidence
    );
    assert!(rows[0].evidence.contains("\"select 4712\""));
    // a statement alone in its group: its pid is the culprit, and it is cancelled by its age
    // through the guard, not by pid (a pooled connection's next statement is another client's)
    assert_eq!(
        action(rows[1]),
        "SELECT * FROM dbconn_guard.cancel_statements('300 seconds', application_name => 'batch', usename => 'web', client_addr => '10.0.0.1', datname => 'app');"
    );
    assert_eq!(rows[1].culprit, Some(Culprit::Session(50)));
    assert!(rows[1].finding.contains("\"batch\""));
    assert!(rows[1].finding.contains("pid 50"), "{}", rows[1].finding);
}

#[test]
fn slow_statements_the_dba_excluded_are_looked_at_not_cancelled() {
    // an excluded application's reports, an excluded user's statement, one outside
    // include_applications: the DBA told the guard to spare them, so they run long by the
    // DBA's own account
    type Exclude = fn(&mut Input);
    let cases: [(Exclude, &str); 4] = [
        (
            (|i: &mut Input| {
                i.guard.policy.scope.exclude_applications = PatternList::parse("api").unwrap();
            }),
            "application in dbconn_guard.exclude_applications",
        ),
        (
            (|i: &mut Input| {
                i.guard.policy.scope.exclude_users = PatternList::parse("web").unwrap()
            }),
            "user in dbconn_guard.exclude_users",
        ),
        (
            (|i: &mut Input| {
                i.guard.policy.scope.exclude_databases = PatternList::parse("app").unwrap();
            }),
            "database in dbconn_guard.exclude_databases",
        ),
        (
            (|i: &mut Input| {
                i.guard.policy.scope.include_applications = PatternList::parse("other").unwrap();
            }),
            "application not in dbconn_guard.include_applications",
        ),
    ];
    for (exclude, why) in cases {
        for clients in [
            vec![c(4711, "active", 900), c(4712, "active", 600)],
            vec![c(4711, "active", 900)],
        ] {
            let mut i = with(clients);
            exclude(&mut i);
            let fs = diagnose(&i);
            let row = one(&fs, "slow queries");
            assert_eq!(row.status, Status::Info, "{why}: {row:#?}");
            assert_eq!(
                (ActionKind::of(action(row)), row.culprit.clone()),
                (ActionKind::Look, application("api")),
                "{why}: {row:#?}"
            );
            assert!(
                action(row).contains("coalesce(application_name, '') = 'api'"),
                "{}",
                action(row)
            );
            assert!(row.evidence.contains(why), "{why}: {}", row.evidence);
            assert!(
                row.finding.contains("which the guard is told to spare"),
                "{}",
                row.finding
            );
        }
    }
}

#[test]
fn a_slow_group_without_cancel_statements_is_cancelled_over_pg_stat_activity() {
    let mut i = with(vec![c(4711, "active", 600), c(4712, "active", 900)]);
    i.caller.lacks_terminate_idle = true;
    // not a superuser: a superuser's statement would make PostgreSQL refuse the whole paste
    i.caller.is_superuser = false;
    i.caller.has_signal_backend = true;
    let fs = diagnose(&i);
    let row = one(&fs, "slow queries");
    assert_eq!(
        action(row),
        "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE backend_type = 'client backend' AND state = 'active' AND coalesce(application_name, '') = 'api' AND usename = 'web' AND client_addr = '10.0.0.1'::inet AND datname = 'app' AND query_start < now() - interval '300 seconds' AND wait_event IS DISTINCT FROM 'SyncRep' AND pid <> pg_backend_pid() AND usesysid NOT IN (SELECT oid FROM pg_roles WHERE rolsuper);"
    );
    // nor with the guard switched off: cancel_statements() obeys its gates
    let mut off = with(vec![c(4711, "active", 600), c(4712, "active", 900)]);
    off.guard.enabled = false;
    assert!(action(one(&diagnose(&off), "slow queries"))
        .starts_with("SELECT pg_cancel_backend(pid) FROM pg_stat_activity"));
}

#[test]
fn slow_queries_off_or_none() {
    let mut i = with(vec![c(4711, "active", 600)]);
    i.guard.slow_query_age = Some(0.0);
    let fs = diagnose(&i);
    assert_eq!(one(&fs, "slow queries").status, Status::Info);
    assert_eq!(one(&diagnose(&input()), "slow queries").status, Status::Ok);
}

#[test]
fn a_slow_group_the_guard_protects_is_cancelled_over_pg_stat_activity_and_says_why() {
    // an application connecting as a superuser: cancel_statements() would skip every one
    let su = |pid| {
        let mut b = c(pid, "active", 600);
        b.is_superuser = Some(true);
        b
    };
    let fs = diagnose(&with(vec![su(4711), su(4712)]));
    let row = one(&fs, "slow queries");
    assert_eq!(row.status, Status::Warning);
    assert!(
        action(row).starts_with("SELECT pg_cancel_backend(pid) FROM pg_stat_activity"),
        "{}",
        action(row)
    );
    assert!(
        row.evidence
            .contains("the guard protects these sessions (superuser"),
        "{}",
        row.evidence
    );
    // a role without a name (dropped while its sessions stayed): never a filter left out
    let anon = |pid| {
        let mut b = c(pid, "active", 600);
        b.usename = None;
        b
    };
    let fs = diagnose(&with(vec![anon(4711), anon(4712)]));
    let a = action(one(&fs, "slow queries"));
    assert!(a.contains(" AND usename IS NULL"), "{a}");
    assert!(!a.contains("cancel_statements"), "{a}");
    // with exclude_client_tools, the fallback spares the client tools
    let mut i = with(vec![c(4711, "active", 600), c(4712, "active", 600)]);
    i.caller.lacks_terminate_idle = true;
    i.guard.policy.scope.exclude_client_tools = true;
    let fs = diagnose(&i);
    let a = action(one(&fs, "slow queries"));
    assert!(a.contains("<> ALL (ARRAY['pg_dump', "), "{a}");
}

#[test]
fn a_long_dump_is_looked_at_not_cancelled() {
    let mut i = with(vec![
        app(c(4711, "active", 3 * 3600), "pg_dump"),
        app(c(4712, "active", 3 * 3600), "pg_dump"),
    ]);
    i.guard.policy.scope.exclude_client_tools = true;
    let fs = diagnose(&i);
    let row = one(&fs, "slow queries");
    assert_eq!(row.status, Status::Info, "{row:#?}");
    assert!(
        action(row).starts_with("SELECT pid, now() - query_start AS running"),
        "{}",
        action(row)
    );
    assert_eq!(
        shape(row),
        (
            "slow queries",
            Status::Info,
            application("pg_dump"),
            ActionKind::Look
        )
    );
    // nor is it the incident
    assert_eq!(fs[0].culprit, None, "{:#?}", fs[0]);
}

/// An hour of history whose samples saw statements of at most `longest_s` running.
fn with_statement_history(clients: Vec<Backend>, longest_s: &[f64]) -> Input {
    let mut i = with(clients);
    i.guard.slow_query_age = None;
    let n = 60;
    i.history.samples = (0..n)
        .rev()
        .map(|k| {
            let mut s = sample(k * 60 + 30, 2, 3);
            s.longest_statement_s = longest_s[k as usize % longest_s.len()];
            s
        })
        .collect();
    i
}

#[test]
fn the_default_slow_query_threshold_is_relative_to_this_servers_statements() {
    // an OLTP server: statements of milliseconds; a 2-minute statement is slow (1 minute)
    let oltp = with_statement_history(vec![c(4711, "active", 120)], &[0.02, 0.1, 0.3]);
    let row = one(&diagnose(&oltp), "slow queries").clone();
    assert_eq!(row.status, Status::Warning, "{row:#?}");
    assert!(row.evidence.contains("threshold 60s (the default: 4× the length 3 separate statements reached in the history, 0.3s"), "{}", row.evidence);
    // a reporting server whose statements often run 20 minutes: a 25-minute one is not slow
    // (4 × 20 min, at most 1 hour), a 2-hour one is
    let reports = [1200.0, 900.0, 1150.0, 30.0, 1200.0];
    let r = with_statement_history(vec![c(4711, "active", 1500)], &reports);
    let row = one(&diagnose(&r), "slow queries").clone();
    assert_eq!(row.status, Status::Ok, "{row:#?}");
    assert!(
        row.evidence.contains("threshold 60min (the default"),
        "{}",
        row.evidence
    );
    let stuck = with_statement_history(vec![c(4711, "active", 7200)], &reports);
    assert_eq!(
        one(&diagnose(&stuck), "slow queries").status,
        Status::Warning
    );
    // a stuck statement does not make itself usual: the samples taken while it ran (here all
    // the last 40 minutes, when it was the longest) are not read
    let mut own = with_statement_history(vec![c(4711, "active", 2400)], &[0.1]);
    for s in own.history.samples.iter_mut() {
        let since = (NOW - s.time) / SECOND;
        if since < 2400 {
            s.longest_statement_s = (2400 - since) as f64;
        }
    }
    let row = one(&diagnose(&own), "slow queries").clone();
    assert_eq!(row.status, Status::Warning, "{row:#?}");
    assert!(row.evidence.contains("threshold 60s"), "{}", row.evidence);
    // an earlier incident's stuck statement (20 minutes, cancelled) is one statement: it does
    // not make the next stuck one, running for 30 minutes now, usual
    let mut again = with_statement_history(vec![c(4711, "active", 1800)], &[0.1]);
    for s in again.history.samples.iter_mut() {
        let since = (NOW - s.time) / SECOND;
        if (2100..3300).contains(&since) {
            s.longest_statement_s = (3300 - since) as f64;
        }
    }
    let row = one(&diagnose(&again), "slow queries").clone();
    assert_eq!(row.status, Status::Warning, "{row:#?}");
    // an idle history says nothing of how long statements run: 5 minutes, not 1, for a
    // nightly job's 90-second statement
    let idle = with_statement_history(vec![c(4711, "active", 90)], &[0.0]);
    let row = one(&diagnose(&idle), "slow queries").clone();
    assert_eq!(row.status, Status::Ok, "{row:#?}");
    assert!(
        row.evidence.contains("threshold 5min (the default where"),
        "{}",
        row.evidence
    );
    // an unreadable value in the history never turns the check off
    let nan = with_statement_history(vec![c(4711, "active", 120)], &[0.1, f64::NAN, 0.2]);
    assert_eq!(one(&diagnose(&nan), "slow queries").status, Status::Warning);
    // without history: 5 minutes, said to be a default without knowledge
    let mut blind = with(vec![c(4711, "active", 200)]);
    blind.guard.slow_query_age = None;
    blind.server.preloaded = false;
    let row = one(&diagnose(&blind), "slow queries").clone();
    assert_eq!(row.status, Status::Ok);
    assert!(
        row.evidence.contains(
            "threshold 5min (the default where this server's statement times are not known"
        ),
        "{}",
        row.evidence
    );
    // a threshold given is used as given, and named
    let mut given = with_statement_history(vec![c(4711, "active", 120)], &[0.1]);
    given.guard.slow_query_age = Some(600.0);
    let row = one(&diagnose(&given), "slow queries").clone();
    assert_eq!(row.status, Status::Ok);
    assert!(
        row.evidence.contains("threshold 10min (as given)"),
        "{}",
        row.evidence
    );
}

#[test]
fn slow_query_rows_are_bounded() {
    let fs = diagnose(&with(
        (0..5)
            .map(|p| app(c(10 + p, "active", 600), &format!("app{p}")))
            .collect(),
    ));
    let rows = area(&fs, "slow queries");
    assert_eq!(rows.len(), TOP);
    assert!(
        rows[0]
            .evidence
            .contains("5 statements past 5min in all, in 5 groups"),
        "{}",
        rows[0].evidence
    );
}

// --- locks ------------------------------------------------------------------------------

fn wait(pid: i32, by: &[i32], waited_s: i64) -> LockWait {
    LockWait {
        pid,
        blocked_by: by.to_vec(),
        locktype: Some("relation".into()),
        mode: Some("RowExclusiveLock".into()),
        relation: Some("orders".into()),
        wait_start: Some(NOW - waited_s * SECOND),
        leader_pid: 0,
    }
}

#[test]
fn the_locks_row_points_away_only_to_a_row_that_ends_the_root_as_gravely() {
    // a session idle in its transaction holds an advisory lock 40 workers have queued for
    // 10 minutes: advisory waits are no pile-up for the idle-in-transaction row (it would
    // not end the root now), so the locks row keeps the story: critical, and it ends the root
    let mut clients = vec![c(7, "idle in transaction", 700)];
    clients.extend((0..40).map(|p| c(100 + p, "active", 600)));
    let mut i = with(clients);
    i.lock_waits = (0..40)
        .map(|p| {
            let mut w = wait(100 + p, &[7], 600);
            (w.locktype, w.mode, w.relation) =
                (Some("advisory".into()), Some("ExclusiveLock".into()), None);
            w
        })
        .collect();
    let fs = diagnose(&i);
    let l = one(&fs, "locks");
    assert_eq!(
        (l.status, l.see, action(l)),
        (Status::Critical, None, "SELECT pg_terminate_backend(7);"),
        "{l:#?}"
    );
}

#[test]
fn a_root_idle_in_transaction_is_terminated_and_an_active_one_cancelled() {
    let mut i = with(vec![
        c(4711, "idle in transaction", 100),
        c(21, "active", 90),
        c(22, "active", 80),
        c(5000, "active", 20),
        c(31, "active", 5),
    ]);
    i.lock_waits = vec![
        wait(21, &[4711], 90),
        wait(22, &[21], 80),
        wait(31, &[5000], 5),
    ];
    let fs = diagnose(&i);
    let rows = area(&fs, "locks");
    assert_eq!(rows.len(), 2, "{rows:#?}");
    // the idle root's story is the idle-in-transaction row's: as grave as the pile-up (a 90s
    // wait is past lock_wait_critical), and it ends the root
    let iit = one(&fs, "idle in transaction");
    assert_eq!(iit.status, Status::Critical, "{iit:#?}");
    assert_eq!(action(iit), "SELECT pg_terminate_backend(4711);");
    assert_eq!(fs[0].action, iit.action, "the incident row: {:#?}", fs[0]);
    assert_eq!(rows[0].status, Status::Info);
    assert!(
        action(rows[0]).contains("WHERE 4711 = ANY (pg_blocking_pids(pid))"),
        "{}",
        action(rows[0])
    );
    assert_eq!(
        (rows[0].culprit.clone(), rows[0].see),
        (Some(Culprit::Session(4711)), Some("idle in transaction")),
        "{:#?}",
        rows[0]
    );
    assert!(
        rows[0].finding.contains("pid 4711 holds up 2 sessions"),
        "{}",
        rows[0].finding
    );
    assert!(rows[0].evidence.contains("blocks 1 directly, 2 in all; longest wait 90s; waiting for RowExclusiveLock on relation \"orders\""), "{}", rows[0].evidence);
    assert_eq!(rows[1].status, Status::Info, "a 5s wait is ordinary");
    assert_eq!(action(rows[1]), "SELECT pg_cancel_backend(5000);");
    // an active root: what to do when a cancel does not help, and whether the guard does it
    assert!(rows[1].evidence.contains("if the pile-up comes back after the cancel (its client retries, or the statement ignores the cancel), end the session (pg_terminate_backend): dbconn_guard.blocker_terminate_after (with cancel_active_blockers) would do so by itself"), "{}", rows[1].evidence);
    assert!(
        !rows[0].evidence.contains("comes back"),
        "an idle root is ended, not cancelled"
    );
    i.guard.policy.cancel_active_blockers = true;
    i.guard.policy.blocker_terminate_after = 30 * SECOND;
    let fs = diagnose(&i);
    assert!(area(&fs, "locks")[1]
        .evidence
        .contains("dbconn_guard.blocker_terminate_after (30s) does so by itself"));
}

#[test]
fn lock_cycles_and_no_waits() {
    let mut i = with(vec![c(1, "active", 30), c(2, "active", 30)]);
    i.lock_waits = vec![wait(1, &[2], 20), wait(2, &[1], 20)];
    let fs = diagnose(&i);
    let l = one(&fs, "locks");
    assert_eq!(l.status, Status::Info);
    assert_eq!(l.reading, Some(Reading::LockCycle), "{}", l.finding);
    assert_eq!(action(l), "SELECT pg_cancel_backend(1);");
    // a cycle of a second is the deadlock detector's to break: no action
    i.lock_waits = vec![wait(1, &[2], 1), wait(2, &[1], 1)];
    assert!(not_ok(&diagnose(&i), "locks").is_empty());
    assert_eq!(one(&diagnose(&input()), "locks").status, Status::Ok);
}

#[test]
fn the_session_idle_in_transaction_that_holds_others_up_comes_first() {
    // four older sessions idle in transaction that hold up nobody, and a younger root of
    // five waiters
    let mut clients: Vec<Backend> = (0..4)
        .map(|p| c(10 + p, "idle in transaction", 3600 + i64::from(p)))
        .collect();
    clients.push(c(20, "idle in transaction", 120));
    clients.extend((0..5).map(|p| c(30 + p, "active", 60)));
    let mut i = with(clients);
    i.lock_waits = (0..5).map(|p| wait(30 + p, &[20], 60)).collect();
    let fs = diagnose(&i);
    let rows = area(&fs, "idle in transaction");
    assert!(rows[0].finding.starts_with("pid 20 "), "{rows:#?}");
    assert!(
        rows[0].evidence.contains("holds up 5 sessions"),
        "{}",
        rows[0].evidence
    );
}

#[test]
fn an_action_the_caller_may_not_run_says_who_may_and_a_hidden_root_is_looked_at_first() {
    // a pg_monitor member: sees everything, may signal nobody
    let monitor = |i: &mut Input| {
        i.caller.is_superuser = false;
        i.caller.has_signal_backend = false;
        i.caller.member_of = vec![];
    };
    let mut i = with(vec![c(1, "idle in transaction", 600), c(2, "active", 400)]);
    i.guard.policy.idle_in_transaction_timeout = 0;
    i.guard.enabled = false;
    monitor(&mut i);
    i.caller.pid = 99;
    i.guard.slow_query_age = Some(60.0);
    let fs = diagnose(&i);
    for a in ["idle in transaction", "slow queries"] {
        let rows = not_ok(&fs, a);
        assert!(!rows.is_empty(), "{a}: {fs:#?}");
        assert!(
            rows[0].evidence.contains(
                "may not signal this session: run the action as a member of pg_signal_backend"
            ),
            "{a}: {}",
            rows[0].evidence
        );
    }
    // a member of the sessions' role may: no note
    i.caller.member_of = vec!["web".into()];
    let fs = diagnose(&i);
    assert!(!not_ok(&fs, "slow queries")[0]
        .evidence
        .contains("may not signal"));

    // a plain role that cannot see the root: no cancel (it may be idle in its transaction,
    // where a cancel does nothing), a look first
    let mut root = c(1, "idle in transaction", 600);
    root.kind = Kind::Hidden;
    root.state = None;
    root.usename = None;
    let mut i = with(vec![root, c(2, "active", 30)]);
    i.lock_waits = vec![wait(2, &[1], 30)];
    monitor(&mut i);
    let l = not_ok(&diagnose(&i), "locks")[0].clone();
    assert_eq!(l.reading, Some(Reading::HiddenState), "{}", l.finding);
    assert!(!action(&l).contains("pg_cancel_backend"), "{}", action(&l));
    assert!(
        action(&l).starts_with("SELECT pid, usename"),
        "{}",
        action(&l)
    );
}

#[test]
fn a_group_action_the_caller_may_not_run_says_who_may() {
    // a pg_monitor member without dbconn_guard_admin: the leak's action falls back to
    // pg_terminate_backend() over pg_stat_activity, which PostgreSQL refuses it whole
    let leak = || {
        let mut clients = vec![c(1, "active", 1)];
        clients.extend((0..4).map(|p| app(c(10 + p, "idle", 900 + i64::from(p)), "orders")));
        let mut i = with(clients);
        i.caller.lacks_terminate_idle = true;
        i.caller.is_superuser = false;
        i.caller.has_signal_backend = false;
        i.caller.member_of = vec![];
        i
    };
    let fs = diagnose(&leak());
    let l = one(&fs, "leaks");
    assert!(
        action(l).starts_with("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"),
        "{}",
        action(l)
    );
    assert!(
        l.evidence
            .contains("may not run it (it signals other roles' sessions")
            && l.evidence
                .contains("a superuser or a member of pg_signal_backend")
            && l.evidence
                .contains("dbconn_guard_admin gets terminate_idle()"),
        "{}",
        l.evidence
    );
    // the pool row (critical: every slot nearly taken) says the same
    let mut clients = n_clients(10, "active");
    clients.extend((0..85).map(|i| c(200 + i, "idle", 400)));
    let mut i = with(clients);
    (i.caller.lacks_terminate_idle, i.caller.is_superuser) = (true, false);
    (i.caller.has_signal_backend, i.caller.member_of) = (false, vec![]);
    let p = one(&diagnose(&i), "pool").clone();
    assert_ne!(p.status, Status::Ok, "{p:#?}");
    assert!(p.evidence.contains("may not run it"), "{}", p.evidence);
    // who may: pg_signal_backend, or a member of the group's role; or terminate_idle()
    for may in [
        |i: &mut Input| i.caller.has_signal_backend = true,
        |i: &mut Input| i.caller.member_of = vec!["web".into()],
        |i: &mut Input| i.caller.lacks_terminate_idle = false,
    ] {
        let mut i = leak();
        may(&mut i);
        let fs = diagnose(&i);
        assert!(
            !one(&fs, "leaks").evidence.contains("may not run it"),
            "{}",
            one(&fs, "leaks").evidence
        );
    }
}

#[test]
fn a_root_of_brief_waits_or_idle_for_a_moment_is_ordinary_contention() {
    // pgbench: a transaction idle between two statements holds a row another waits for
    let mut i = with(vec![
        c(1, "idle in transaction", 0),
        c(2, "active", 0),
        c(3, "idle in transaction", 2),
        c(4, "active", 3),
    ]);
    i.lock_waits = vec![wait(2, &[1], 0), wait(4, &[3], 3)];
    let fs = diagnose(&i);
    assert!(not_ok(&fs, "locks").is_empty(), "{fs:#?}");
    assert!(area(&fs, "locks").iter().all(|f| f.action.is_none()));
    // nor is a session idle in transaction for a moment offered for termination, whatever
    // the warning age
    i.guard.thresholds.idle_in_transaction_age = 0.0;
    let fs = diagnose(&i);
    assert!(not_ok(&fs, "idle in transaction").is_empty(), "{fs:#?}");
    // a root idle for a minute whose waiter has waited 30 s is offered
    let mut i = with(vec![c(1, "idle in transaction", 60), c(2, "active", 30)]);
    i.lock_waits = vec![wait(2, &[1], 30)];
    let l = one(&diagnose(&i), "locks").clone();
    assert_eq!(l.status, Status::Warning);
    assert_eq!(action(&l), "SELECT pg_terminate_backend(1);");
    // a root idle for a minute whose waiter came a second ago: not yet
    i.lock_waits = vec![wait(2, &[1], 1)];
    assert!(not_ok(&diagnose(&i), "locks").is_empty());
    // a long transaction between two of its statements (idle for a moment) that has held
    // a lock for 20 minutes: a pile-up, never hidden as brief
    let mut root = c(1, "idle in transaction", 1);
    root.xact_start = Some(NOW - 1200 * SECOND);
    let mut i = with(vec![root, c(2, "active", 600)]);
    i.lock_waits = vec![wait(2, &[1], 600)];
    let l = not_ok(&diagnose(&i), "locks")[0].clone();
    assert_eq!(l.status, Status::Critical);
    // but a session idle for a moment is never offered for ending (a batch at work,
    // perhaps): a look at it and what waits
    assert_eq!(l.action_kind, ActionKind::Look, "{l:#?}");
    assert!(
        !action(&l).starts_with("SELECT pg_terminate_backend"),
        "{}",
        action(&l)
    );
    // once it has sat idle past that moment, it is
    let mut root = c(1, "idle in transaction", 30);
    root.xact_start = Some(NOW - 1200 * SECOND);
    let mut i = with(vec![root, c(2, "active", 600)]);
    i.lock_waits = vec![wait(2, &[1], 600)];
    let fs = diagnose(&i);
    let ender = fs.iter().find(|f| {
        f.area != "incident" && f.action.as_deref() == Some("SELECT pg_terminate_backend(1);")
    });
    assert!(
        ender.is_some_and(|f| f.status == Status::Critical),
        "{fs:#?}"
    );
}

// --- error pattern -------------------------------------------------------------------------

#[test]
fn classify_shapes() {
    let f = |v: &[u32]| classify(&v.iter().map(|&x| f64::from(x)).collect::<Vec<_>>());
    assert_eq!(f(&[5, 5]), None);
    assert_eq!(f(&[50, 51, 49, 50, 50, 52]), Some(Pattern::Constant));
    assert_eq!(f(&[7, 7, 7]), Some(Pattern::Constant));
    assert_eq!(f(&[40, 45, 43, 52, 58, 61, 70]), Some(Pattern::Increasing));
    assert_eq!(
        f(&[40, 41, 90, 40, 42, 95, 41]),
        Some(Pattern::Intermittent)
    );
    // a rise of 2 sessions is noise, not a leak
    assert_eq!(f(&[10, 10, 11, 11, 12]), Some(Pattern::Constant));
    // a step is not a trend: a scale-out in the middle of the window, with noise
    let mut step = vec![120u32, 122, 119, 121, 120, 118, 121];
    step.extend([300, 302, 299, 301, 300, 298, 301, 300]);
    assert_eq!(f(&step), Some(Pattern::Step(7)));
    // nor at a quarter or three quarters of it
    let early: Vec<u32> = (0..12).map(|k| if k < 3 { 120 } else { 300 }).collect();
    assert_eq!(f(&early), Some(Pattern::Step(3)));
    let late: Vec<u32> = (0..12).map(|k| if k < 9 { 120 } else { 300 }).collect();
    assert_eq!(f(&late), Some(Pattern::Step(9)));
    // a leak growing one session a sample is a trend, noisy or not
    let leak: Vec<u32> = (0..20).map(|k| 100 + 3 * k).collect();
    assert_eq!(f(&leak), Some(Pattern::Increasing));
    let noisy: Vec<u32> = (0..20).map(|k| 100 + 2 * k + (k % 3) * 3).collect();
    assert_eq!(f(&noisy), Some(Pattern::Increasing));
    // incidents come and gone one after another (sessions opened, then ended) rise overall,
    // but give back: no trend
    let staircase = [
        15u32, 15, 15, 20, 20, 60, 60, 25, 25, 56, 56, 26, 26, 70, 70, 70, 30, 75, 75, 75,
    ];
    assert_ne!(f(&staircase), Some(Pattern::Increasing));
    // but sessions that ended before a leak began take nothing from it
    let after_a_drop = [
        12u32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 20, 20,
    ];
    assert_eq!(f(&after_a_drop), Some(Pattern::Increasing));
    // nor do the sessions of an earlier incident, higher than the leak's start: it grows from
    // its last lowest point to a level not seen before (the CI run of 7 Dec: read as spikes)
    let after_an_incident = [
        3u32, 3, 9, 10, 10, 9, 4, 1, 1, 2, 4, 6, 8, 10, 12, 14, 16, 17, 17, 17,
    ];
    assert_eq!(f(&after_an_incident), Some(Pattern::Increasing));
    // a small rise after a larger spike is not: the spike stays the high
    let below_the_spike = [3u32, 3, 30, 30, 4, 1, 1, 3, 5, 7, 9, 9, 9];
    assert_ne!(f(&below_the_spike), Some(Pattern::Increasing));
    // nor sessions opened at once after an earlier bump (the incident suite's leak of 40
    // after a pgbench run): one jump is no steady rise
    let jump = [
        16u32, 40, 40, 40, 16, 16, 17, 17, 56, 56, 56, 56, 56, 56, 56,
    ];
    assert_ne!(f(&jump), Some(Pattern::Increasing));
    // nor clients that came in two or three batches (a pool filled, then a benchmark's
    // clients): a staircase of few big steps is no trend (the incident suite's pgbench run)
    let batches = [0u32, 0, 0, 10, 10, 10, 16, 16, 16, 16, 24, 24, 24, 24];
    assert_ne!(f(&batches), Some(Pattern::Increasing));
    // three equal batches are no trend either
    assert_ne!(
        f(&[0u32, 0, 0, 8, 8, 8, 16, 16, 16, 24, 24, 24]),
        Some(Pattern::Increasing)
    );
    // a noisy leak is one: its ups and downs are no jumps
    let noisy_leak: Vec<u32> = (0..60u32)
        .map(|k| 100 + k / 2 + [0, 6, 1, 7, 2, 0, 5][k as usize % 7])
        .collect();
    assert_eq!(f(&noisy_leak), Some(Pattern::Increasing));
    // but a slow leak, one session every five samples, is one
    let slow_leak: Vec<u32> = (0..60).map(|k| 10 + k / 5).collect();
    assert_eq!(f(&slow_leak), Some(Pattern::Increasing));
    // nor a rise of a few samples only
    let short = [10u32, 10, 12, 30, 2, 8, 40];
    assert_ne!(f(&short), Some(Pattern::Increasing));
    // a leak that began within the window (flat, then a ramp) is not a step either
    let hockey: Vec<u32> = (0..60)
        .map(|k| if k < 45 { 100 } else { 100 + 2 * (k - 44) })
        .collect();
    assert!(
        !matches!(f(&hockey), Some(Pattern::Step(_))),
        "{:?}",
        f(&hockey)
    );
}

#[test]
fn a_step_reads_as_a_change_of_level_with_its_time_not_as_a_leak() {
    let mut series = vec![120u32; 30];
    series.extend([300u32; 30]);
    // of 360 slots: 83% at the new level, high (warning) but not at the limit
    let mut i = with_series(&series);
    for s in &mut i.history.samples {
        s.utilization_pct = f64::from(s.clients.total()) / 3.6;
    }
    let fs = diagnose(&i);
    let e = one(&fs, "error pattern");
    assert_eq!(e.status, Status::Warning);
    assert_eq!(e.reading, Some(Reading::Step), "{}", e.finding);
    assert!(e.finding.contains("from 120 to 300"), "{}", e.finding);
    // the step's sample was taken 29 minutes ago (one a minute, the last one now)
    assert!(e.finding.contains("(29min ago)"), "{}", e.finding);
    assert!(
        action(e).contains("history_by_group_between(now() - interval '1800 seconds', now() - interval '1680 seconds')"),
        "{}",
        action(e)
    );
    // a step up to the limit is not called a change of level: a fast leak is as likely
    let mut full = vec![100u32; 30];
    full.extend([297u32; 30]);
    let mut i = with_series(&full);
    for s in &mut i.history.samples {
        s.utilization_pct = f64::from(s.clients.total()) / 3.0;
    }
    let e = one(&diagnose(&i), "error pattern").clone();
    assert_eq!(e.reading, Some(Reading::StepToLimit), "{}", e.finding);
    assert_eq!(action(&e), "SELECT * FROM dbconn_guard.leak_suspects;");
    assert_eq!(e.status, Status::Warning);
    // unless the leak suspects hold the sessions that stepped up: one story, the leaks row's
    let mut leaked = i.clone();
    leaked
        .snapshot
        .backends
        .extend((0..150).map(|p| app(c(1000 + p, "idle", 900), "orders")));
    let fs = diagnose(&leaked);
    let e = one(&fs, "error pattern");
    assert_eq!(e.status, Status::Info, "{e:#?}");
    assert_eq!(e.see, Some("leaks"), "{e:#?}");
    // below the limit too: a leak is never also "a change of level, not a leak"
    let mut below = with_series(&{
        let mut v = vec![100u32; 30];
        v.extend([160u32; 30]);
        v
    });
    below
        .snapshot
        .backends
        .extend((0..50).map(|p| app(c(1000 + p, "idle", 900), "orders")));
    let fs = diagnose(&below);
    let e = one(&fs, "error pattern");
    assert_eq!(e.status, Status::Info, "{e:#?}");
    assert_eq!(e.see, Some("leaks"), "{e:#?}");
    assert_eq!(e.reading, Some(Reading::Step), "{e:#?}");
    assert!(e.finding.contains("from 100 to 160"), "{}", e.finding);
    // and a step down is no alarm
    series.reverse();
    assert!(not_ok(&diagnose(&with_series(&series)), "error pattern").is_empty());
}

fn with_series(series: &[u32]) -> Input {
    let mut i = input();
    let n = series.len() as i64;
    i.history.samples = series
        .iter()
        .enumerate()
        .map(|(k, &v)| sample((n - 1 - k as i64) * 60, v, 0))
        .collect();
    i
}

#[test]
fn error_pattern_gives_the_runbooks_readings() {
    let fs = diagnose(&with_series(&[40, 45, 43, 52, 58, 61, 70]));
    let e = one(&fs, "error pattern");
    assert_eq!(e.status, Status::Warning);
    assert_eq!(e.reading, Some(Reading::SteadyRise), "{}", e.finding);
    assert_eq!(action(e), "SELECT * FROM dbconn_guard.leak_suspects;");

    // the same rise in seconds (a pool filling, clients back after a restart): no trend yet
    let mut brief = with_series(&[40, 45, 43, 52, 58, 61, 70]);
    let n = brief.history.samples.len() as i64;
    for (k, s) in brief.history.samples.iter_mut().enumerate() {
        s.time = NOW - (n - 1 - k as i64) * SECOND;
    }
    let fs = diagnose(&brief);
    let e = one(&fs, "error pattern");
    assert_eq!(e.status, Status::Info, "{e:#?}");
    assert_eq!(e.reading, Some(Reading::SteadyRise), "{}", e.finding);
    assert!(e.finding.contains("too short a rise"), "{}", e.finding);

    let fs = diagnose(&with_series(&[40, 41, 90, 40, 42, 95, 41]));
    let e = one(&fs, "error pattern");
    assert_eq!(e.status, Status::Warning, "peaks past 80%");
    assert_eq!(e.reading, Some(Reading::Spikes), "{}", e.finding);
    assert!(action(e).contains("client_backends >= 68"), "{}", action(e));

    let fs = diagnose(&with_series(&[85, 86, 85, 86]));
    let e = one(&fs, "error pattern");
    assert_eq!(e.status, Status::Warning);
    assert_eq!(e.reading, Some(Reading::HighLevel), "{}", e.finding);
    assert!(
        action(e).starts_with("ALTER SYSTEM SET max_connections = 120;"),
        "{}",
        action(e)
    );

    // the same high level, half of it held by leak suspects: the leaks row's story
    let mut i = with_series(&[85, 86, 85, 86]);
    i.snapshot
        .backends
        .extend((0..50).map(|p| app(c(1000 + p, "idle", 900), "orders")));
    let fs = diagnose(&i);
    let e = one(&fs, "error pattern");
    assert_eq!(e.status, Status::Info, "{e:#?}");
    assert_eq!(e.see, Some("leaks"), "{e:#?}");

    let fs = diagnose(&with_series(&[20, 21, 20, 20]));
    let e = one(&fs, "error pattern");
    assert_eq!(e.status, Status::Ok);
    assert!(e.evidence.contains("4 samples over 3min"), "{}", e.evidence);
}

#[test]
fn a_slow_rise_is_info_with_the_time_it_would_take_a_fast_one_a_warning() {
    // a morning ramp-up: 20 to 32 connections over an hour (100 slots, warning at 80%): at
    // this rate the warning share is hours away
    let ramp: Vec<u32> = (0..61).map(|k| 20 + k / 5).collect();
    let fs = diagnose(&with_series(&ramp));
    let e = one(&fs, "error pattern");
    assert_eq!(e.status, Status::Info, "{e:#?}");
    assert!(
        e.finding
            .contains("at this rate 80% of the slots (80 connections) in 3h 59min"),
        "{}",
        e.finding
    );
    assert!(
        e.evidence.contains("about 12 connections an hour"),
        "{}",
        e.evidence
    );
    // the same rise in ten minutes reaches it within the hour: a warning
    let fast: Vec<u32> = (0..11).map(|k| 20 + 3 * k).collect();
    let fs = diagnose(&with_series(&fast));
    let e = one(&fs, "error pattern");
    assert_eq!(e.status, Status::Warning, "{e:#?}");
}

#[test]
fn a_rise_the_leak_suspects_account_for_is_the_leaks_rows_story() {
    // the series rises by 30 while 30 sessions of "orders" sit idle past leak_idle_age
    let mut i = with_series(&[40, 45, 50, 55, 60, 65, 70]);
    i.snapshot
        .backends
        .extend((0..30).map(|p| app(c(100 + p, "idle", 900), "orders")));
    let fs = diagnose(&i);
    assert_eq!(not_ok(&fs, "leaks").len(), 1, "{fs:#?}");
    let e = one(&fs, "error pattern");
    assert_eq!(e.status, Status::Info, "{e:#?}");
    assert_eq!(e.see, Some("leaks"), "{e:#?}");
    // without them, the rise is the runbook's "leak or attack", a warning of its own
    let fs = diagnose(&with_series(&[40, 45, 50, 55, 60, 65, 70]));
    assert_eq!(one(&fs, "error pattern").status, Status::Warning);
}

#[test]
fn error_pattern_without_history_says_why() {
    let fs = diagnose(&with_series(&[5, 5]));
    let e = one(&fs, "error pattern");
    assert_eq!(e.status, Status::Info);
    assert!(
        e.evidence.contains("not enough history: 2 sample(s)"),
        "{}",
        e.evidence
    );

    let mut i = input();
    i.history.enabled = false;
    i.history.samples.clear();
    let fs = diagnose(&i);
    let e = one(&fs, "error pattern");
    assert!(e.evidence.contains("history_size is 0"));
    assert!(action(e).contains("history_size = 8640"));

    let mut i = input();
    i.server.preloaded = false;
    i.server.shared_preload_libraries = Some("pg_stat_statements".into());
    i.history.enabled = false;
    i.history.samples.clear();
    let fs = diagnose(&i);
    let e = one(&fs, "error pattern");
    assert_eq!(
        action(e),
        "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements', 'dbconn_guard';  -- then restart PostgreSQL",
        "one literal per library: one literal with a comma would be one library name"
    );
    i.server.shared_preload_libraries = Some("auto_explain, \"$libdir/my, lib\"".into());
    let fs = diagnose(&i);
    assert_eq!(
        action(one(&fs, "error pattern")),
        "ALTER SYSTEM SET shared_preload_libraries = 'auto_explain', '$libdir/my, lib', 'dbconn_guard';  -- then restart PostgreSQL"
    );
    // listed already, not loaded: a restart is pending, nothing to add
    i.server.shared_preload_libraries = Some("pg_stat_statements, dbconn_guard".into());
    let fs = diagnose(&i);
    assert!(action(one(&fs, "guard")).contains("listed but not loaded: restart"));
}

// --- recent changes -----------------------------------------------------------------------

#[test]
fn a_reload_or_a_start_within_the_window_means_review_settings() {
    let mut i = input();
    i.server.setting_changes = None;
    i.server.conf_load_time = Some(NOW - 720 * SECOND);
    let fs = diagnose(&i);
    let r = one(&fs, "recent changes");
    assert_eq!(r.status, Status::Info);
    assert_eq!(r.reading, Some(Reading::ReloadUnnamed), "{}", r.finding);
    assert!(r.finding.contains("12min ago"), "{}", r.finding);
    assert_eq!(action(r), REVIEW_SETTINGS);

    i.server.postmaster_start = Some(NOW - 1200 * SECOND);
    let fs = diagnose(&i);
    let r = one(&fs, "recent changes");
    assert_eq!(r.reading, Some(Reading::ServerStarted), "{}", r.finding);
    assert!(r.finding.contains("20min ago"), "{}", r.finding);
    // and new clients cannot be told apart from the restart
    assert!(area(&fs, "deployment")
        .iter()
        .any(|f| f.finding.starts_with("New clients not checked")));

    i.server.postmaster_start = None;
    i.server.conf_load_time = None;
    let fs = diagnose(&i);
    assert_eq!(one(&fs, "recent changes").status, Status::Info);
}

#[test]
fn a_reload_names_the_settings_it_changed_from_what_to_what_and_when() {
    use crate::config_changes::Change;
    let change = |ago: i64, name: &str, old: &str, new: &str| TimedChange {
        at: NOW - ago * SECOND,
        change: Change {
            name: name.into(),
            old: old.into(),
            new: new.into(),
        },
    };
    let mut i = input();
    i.server.conf_load_time = Some(NOW - 180 * SECOND);
    // one before the window, one by an earlier reload in it, one by the last
    i.server.setting_changes = Some(vec![
        change(7200, "log_min_duration_statement", "-1", "1s"),
        change(1200, "maintenance_work_mem", "64MB", "1GB"),
        change(180, "work_mem", "4MB", "64MB"),
    ]);
    let fs = diagnose(&i);
    let r = one(&fs, "recent changes");
    assert_eq!(r.status, Status::Info);
    assert_eq!(r.reading, Some(Reading::SettingsChanged), "{}", r.finding);
    assert!(r.finding.contains("work_mem 4MB → 64MB"), "{}", r.finding);
    assert!(r.finding.contains("(3min ago)"), "{}", r.finding);
    assert!(!r.finding.contains("maintenance_work_mem"), "{}", r.finding);
    assert!(
        r.evidence.starts_with("2 setting change(s)"),
        "{}",
        r.evidence
    );
    assert!(action(r).contains("dbconn_guard.setting_changes()"));
    // a start in the window before the reload: the reload's changes are the newer story
    i.server.postmaster_start = Some(NOW - 600 * SECOND);
    let r = one(&diagnose(&i), "recent changes").clone();
    assert!(r.finding.contains("work_mem 4MB → 64MB"), "{}", r.finding);
    assert!(
        r.evidence.starts_with("1 setting change(s)"),
        "{}",
        r.evidence
    );
    i.server.postmaster_start = Some(NOW - 120 * SECOND);
    let r = one(&diagnose(&i), "recent changes").clone();
    assert_eq!(r.reading, Some(Reading::ServerStarted), "{}", r.finding);
    assert!(r.finding.contains("2min ago"), "{}", r.finding);
    i.server.postmaster_start = Some(NOW - 240 * HOUR);
    // a reload that changed nothing is no finding, once the worker compared it
    i.server.setting_changes = Some(vec![change(7200, "work_mem", "4MB", "64MB")]);
    i.server.settings_compared_reload = NOW - 180 * SECOND;
    let fs = diagnose(&i);
    let r = one(&fs, "recent changes");
    assert_eq!(r.status, Status::Ok);
    assert_eq!(
        r.reading,
        Some(Reading::ReloadChangedNothing),
        "{}",
        r.finding
    );
    // a reload the worker did not compare (it was away): review settings
    i.server.settings_compared_reload = NOW - 7200 * SECOND;
    let r = one(&diagnose(&i), "recent changes").clone();
    assert_eq!(r.status, Status::Info);
    assert_eq!(r.reading, Some(Reading::ReloadUnnamed), "{}", r.finding);
    assert!(r.evidence.contains("did not compare"), "{}", r.evidence);
}

#[test]
fn a_new_application_in_the_history_means_deployment() {
    // four sessions of an application the oldest sample did not have, connected now
    let billing = |pid| app(c(pid, "active", 1), "billing-v2");
    let mut clients = input().snapshot.backends;
    clients.extend((60..64).map(billing));
    let mut i = with(clients);
    let fs = diagnose(&i);
    let d = area(&fs, "deployment");
    assert_eq!(d[0].status, Status::Info);
    assert!(
        d[0].evidence.contains("application \"billing-v2\""),
        "{}",
        d[0].evidence
    );
    assert!(action(d[0]).contains("WHERE application_name = ANY (ARRAY['billing-v2'])"));
    // a group of the newest sample that is gone now is no news
    let mut gone = input();
    let mut last = sample(0, 2, 3);
    last.groups.push(GroupSample {
        name: GroupName {
            datname: Some("app".into()),
            usename: Some("web".into()),
            application_name: Some("report".into()),
        },
        counts: counts(4, 0),
        other: false,
    });
    *gone.history.samples.last_mut().unwrap() = last;
    assert!(not_ok(&diagnose(&gone), "deployment").is_empty());
    // neither a group with no application name nor the DBA's own session is a deployment
    let mut clients = input().snapshot.backends;
    let mut dba = app(c(77, "active", 0), "psql");
    dba.usename = Some("dba".into());
    clients.push(dba);
    clients.push(app(c(78, "idle", 5), ""));
    let mut unnamed = c(79, "idle", 5);
    unnamed.application_name = None;
    clients.push(unnamed);
    let mut quiet = with(clients);
    quiet.caller.pid = 77;
    let fs = diagnose(&quiet);
    assert!(not_ok(&fs, "deployment").is_empty(), "{fs:#?}");
    // one story: a new application that leaks is the leaks row's
    let mut clients = input().snapshot.backends;
    clients.extend((80..90).map(|p| app(c(p, "idle", 900 + i64::from(p)), "leaky")));
    let fs = diagnose(&with(clients));
    assert_ne!(one(&fs, "leaks").status, Status::Ok);
    let d = area(&fs, "deployment");
    assert_eq!(d[0].see, Some("leaks"), "{d:#?}");
    assert_eq!(action(d[0]), "SELECT * FROM dbconn_guard.leak_suspects;");
    // a remainder in the oldest sample: cannot tell
    i.history.samples[0].groups.push(GroupSample {
        name: GroupName::default(),
        counts: counts(1, 0),
        other: true,
    });
    let fs = diagnose(&i);
    assert!(area(&fs, "deployment")[0].finding.contains("remainder"));
}

#[test]
fn a_client_address_with_only_young_sessions_is_new() {
    let mut b = addr(c(50, "idle", 10), "10.9.9.9");
    b.backend_start = Some(NOW - 600 * SECOND);
    let mut clients = input().snapshot.backends;
    clients.push(b);
    let fs = diagnose(&with(clients));
    let d = area(&fs, "deployment");
    assert_eq!(d.len(), 2);
    assert_eq!(d[1].status, Status::Info);
    assert!(
        d[1].evidence
            .contains("\"10.9.9.9\" (1 sessions, first 10min ago)"),
        "{}",
        d[1].evidence
    );
    assert!(action(d[1]).contains("client_addr = ANY (ARRAY['10.9.9.9']::inet[])"));
    // the DBA's own session from a new address is no new client
    let mut me = with(input().snapshot.backends);
    let mut dba = addr(c(50, "active", 0), "10.9.9.9");
    dba.backend_start = Some(NOW - 60 * SECOND);
    me.snapshot = snapshot(
        vec![dba]
            .into_iter()
            .chain(input().snapshot.backends)
            .collect(),
    );
    me.caller.pid = 50;
    assert!(not_ok(&diagnose(&me), "deployment").is_empty());
}

#[test]
fn a_leak_is_one_story_the_pool_and_storm_rows_point_to() {
    // a leak: 30 sessions of "orders" idle for 15 minutes (past leak_idle_age), all opened
    // within the last minute of the history's view... as a pool they are oversized too
    let mut clients = input().snapshot.backends;
    clients.extend((0..30).map(|p| app(addr(c(100 + p, "idle", 900), "10.0.0.9"), "orders")));
    let fs = diagnose(&with(clients.clone()));
    assert_eq!(not_ok(&fs, "leaks").len(), 1, "{fs:#?}");
    let o = one(&fs, "oversized pool");
    assert_eq!(o.status, Status::Ok);
    assert_eq!(o.see, Some("leaks"), "{o:#?}");
    // a leak opening its sessions fast: the storm row points to it
    for b in clients.iter_mut().filter(|b| b.pid >= 100) {
        b.backend_start = Some(NOW - 30 * SECOND);
        b.state_change = Some(NOW - 20 * SECOND);
    }
    let mut i = with(clients);
    i.guard.leak_idle_age = 15.0;
    let fs = diagnose(&i);
    assert!(
        not_ok(&fs, "leaks")
            .iter()
            .any(|f| f.culprit == application("orders")),
        "{fs:#?}"
    );
    let s = one(&fs, "connection storm");
    assert_eq!(s.status, Status::Ok);
    assert_eq!(s.see, Some("leaks"), "{s:#?}");
    assert!(s.finding.contains("\"orders\""), "{}", s.finding);
}

#[test]
fn a_burst_of_new_backends_is_a_connection_storm() {
    let mut clients = input().snapshot.backends;
    clients.extend((0..25).map(|p| {
        let mut b = c(100 + p, "idle", 1);
        b.backend_start = Some(NOW - 10 * SECOND);
        b
    }));
    let fs = diagnose(&with(clients));
    let s = one(&fs, "connection storm");
    assert_eq!(s.status, Status::Warning);
    assert!(
        s.finding.contains("25 new sessions in the last 60s"),
        "{}",
        s.finding
    );
    assert_eq!(s.reading, Some(Reading::Storm), "{}", s.finding);
    // the culprit is in the finding
    assert!(
        s.finding
            .contains("25 of them from application \"api\" (\"10.0.0.1\")"),
        "{}",
        s.finding
    );
    // or a jump between two samples, named by the group that rose, still there...
    let mut i = with_series(&[10, 10, 40, 40]);
    i.snapshot
        .backends
        .extend((0..35).map(|p| c(400 + p, "idle", 200)));
    let fs = diagnose(&i);
    let s = one(&fs, "connection storm");
    assert_eq!(s.status, Status::Warning);
    assert!(s.evidence.contains("+30"), "{}", s.evidence);
    assert!(
        s.finding.contains("30 of them of application \"api\""),
        "{}",
        s.finding
    );
    assert_eq!(s.culprit, application("api"));
    // ... or over (its sessions gone): info
    let fs = diagnose(&with_series(&[10, 10, 40, 40]));
    let s = one(&fs, "connection storm");
    assert_eq!(s.status, Status::Info);
    assert_eq!(s.reading, Some(Reading::StormOver), "{}", s.finding);
    assert_eq!(
        one(&diagnose(&input()), "connection storm").status,
        Status::Ok
    );
}

// --- configuration ------------------------------------------------------------------------

#[test]
fn timeouts_advise_where_neither_covers_idle_in_transaction() {
    let mut i = input();
    i.guard.policy.idle_in_transaction_timeout = 0;
    let fs = diagnose(&i);
    let t = one(&fs, "timeouts");
    // configuration advice: nothing is wrong now
    assert_eq!(t.status, Status::Info);
    assert_eq!(action(t), enable_iit_action());
    assert!(t
        .evidence
        .contains("idle_in_transaction_session_timeout 0 (off)"));
    // not preloaded: PostgreSQL's own
    i.server.preloaded = false;
    let fs = diagnose(&i);
    assert_eq!(
        action(one(&fs, "timeouts")),
        "ALTER SYSTEM SET idle_in_transaction_session_timeout = '5min'; SELECT pg_reload_conf();"
    );
    // PostgreSQL's covers it
    i.server.idle_in_transaction_session_timeout = Some(600 * SECOND);
    assert_eq!(one(&diagnose(&i), "timeouts").status, Status::Ok);
    // the guard's rule does not count while it ends nothing
    let mut i = input();
    i.guard.enabled = false;
    assert_eq!(one(&diagnose(&i), "timeouts").status, Status::Info);
    // PostgreSQL 16: no transaction_timeout
    let mut i = input();
    i.server.transaction_timeout = None;
    assert!(one(&diagnose(&i), "timeouts")
        .evidence
        .contains("n/a (before PostgreSQL 17)"));
}

#[test]
fn the_guard_not_preloaded_disabled_or_in_dry_run() {
    let mut i = input();
    i.guard.dry_run = true;
    let g = diagnose(&i);
    let g = one(&g, "guard");
    assert_eq!(
        (g.status, action(g)),
        (
            Status::Info,
            "ALTER SYSTEM SET dbconn_guard.dry_run = off; SELECT pg_reload_conf();"
        )
    );
    i.guard.enabled = false;
    let g = diagnose(&i);
    let g = one(&g, "guard");
    assert_eq!(g.status, Status::Warning);
    assert_eq!(
        action(g),
        "ALTER SYSTEM SET dbconn_guard.enabled = on; SELECT pg_reload_conf();"
    );
    i.server.preloaded = false;
    i.server.shared_preload_libraries = Some(String::new());
    let g = diagnose(&i);
    let g = one(&g, "guard");
    assert_eq!(g.reading, Some(Reading::NotPreloaded), "{}", g.finding);
    assert!(action(g).starts_with("ALTER SYSTEM SET shared_preload_libraries = 'dbconn_guard';"));
    i.server.shared_preload_libraries = None;
    let g = diagnose(&i);
    assert!(action(one(&g, "guard")).starts_with("SHOW shared_preload_libraries;"));
}

#[test]
fn a_guard_database_owned_by_a_plain_role_is_said_loudly() {
    let mut i = input();
    assert_eq!(one(&diagnose(&i), "guard").status, Status::Ok);
    i.worker.as_mut().unwrap().database_owner_not_superuser = Some("app_owner".into());
    let g = diagnose(&i);
    let g = one(&g, "guard");
    assert_eq!(g.status, Status::Warning);
    assert!(g.finding.contains("\"app_owner\""), "{}", g.finding);
    assert!(action(g).starts_with("ALTER SYSTEM SET dbconn_guard.database = 'postgres';"));
    // even in a dry run (the owner's reach does not depend on it)
    i.guard.dry_run = true;
    assert_eq!(one(&diagnose(&i), "guard").status, Status::Warning);
}

#[test]
fn memory_states_what_is_checked_and_what_is_not() {
    let fs = diagnose(&input());
    let m = one(&fs, "memory");
    assert_eq!(m.status, Status::Ok);
    assert!(
        m.evidence
            .contains("work_mem 4MB × max_connections 100 = 400MB, + shared_buffers 128MB = 528MB"),
        "{}",
        m.evidence
    );
    assert!(m
        .evidence
        .contains("available RAM is not readable from SQL"));

    let mut i = input();
    i.limits.max_connections = 1000;
    let fs = diagnose(&i);
    let m = one(&fs, "memory");
    assert_eq!(m.status, Status::Info);
    assert!(
        action(m).starts_with("ALTER SYSTEM SET max_connections = 20;"),
        "{}",
        action(m)
    );
    // a standby with a lower max_connections than its primary's does not start: work_mem
    i.server.in_recovery = true;
    let fs = diagnose(&i);
    let m = one(&fs, "memory");
    assert!(!action(m).contains("max_connections"), "{}", action(m));
    assert!(
        action(m).starts_with("ALTER SYSTEM SET work_mem"),
        "{}",
        action(m)
    );
    // every slot used: work_mem instead
    let mut i = with(n_clients(95, "active"));
    i.server.work_mem = Some(64 * MB);
    let fs = diagnose(&i);
    assert_eq!(
        action(one(&fs, "memory")),
        "ALTER SYSTEM SET work_mem = '5MB'; SELECT pg_reload_conf();"
    );
    let mut i = input();
    i.server.work_mem = None;
    assert_eq!(one(&diagnose(&i), "memory").status, Status::Info);
}

#[test]
fn pgbouncer_advice_when_most_connections_sit_idle() {
    let mut clients = n_clients(4, "active");
    clients.extend((0..26).map(|p| addr(c(100 + p, "idle", 30), &format!("10.1.0.{p}"))));
    let mut i = with(clients.clone());
    i.history.samples = vec![sample(120, 8, 20), sample(60, 11, 19), sample(0, 4, 26)];
    let fs = diagnose(&i);
    let p = one(&fs, "pgbouncer");
    assert_eq!(p.status, Status::Info);
    assert_eq!(
        action(p),
        "[pgbouncer]\npool_mode = transaction\ndefault_pool_size = 14"
    );
    assert!(
        p.evidence.contains("26 of 30 client sessions idle (87%)"),
        "{}",
        p.evidence
    );
    assert!(p
        .evidence
        .contains("11 sessions active or in a transaction"));
    // with a pooler in front: its pool size
    let behind: Vec<Backend> = clients.into_iter().map(|b| app(b, "pgbouncer")).collect();
    let fs = diagnose(&with(behind));
    assert_eq!(action(one(&fs, "pgbouncer")), "default_pool_size = 5");
    assert_eq!(one(&diagnose(&input()), "pgbouncer").status, Status::Ok);
}

fn pgbouncer_sessions() -> Vec<Backend> {
    let mut v: Vec<Backend> = (0..12)
        .map(|p| app(addr(c(100 + p, "idle", 30), "10.0.0.7"), "pgbouncer"))
        .collect();
    v.push(app(addr(c(200, "active", 1), "10.0.0.7"), "pgbouncer"));
    v
}

#[test]
fn a_poolers_connections_are_kept_from_the_idle_timeout() {
    let mut i = with(pgbouncer_sessions());
    i.guard.policy.idle_timeout = 900 * SECOND;
    i.guard.policy.idle_timeout_overrides =
        Overrides::parse("user:etl=30min, app:\"a,b\"=1500ms").unwrap();
    let fs = diagnose(&i);
    let p = one(&fs, "pooler");
    assert_eq!(p.status, Status::Warning);
    assert!(
        p.finding.contains("idle_timeout (15min) ends them"),
        "{}",
        p.finding
    );
    assert!(p.evidence.contains("server_idle_timeout = 600"));
    let a = action(p);
    assert_eq!(
        a,
        "ALTER SYSTEM SET dbconn_guard.idle_timeout_overrides = 'user:web=0, user:etl=1800s, app:\"a,b\"=1500ms'; SELECT pg_reload_conf();"
    );
    // the list it sets parses, keeps the old items, and exempts the pooler
    let list = a.split('\'').nth(1).unwrap();
    let o = Overrides::parse(list).unwrap();
    assert_eq!(o.items().len(), 3);
    assert_eq!(o.timeout_for(&pgbouncer_sessions()[0]), Some(0));
    // the idle timeout off: nothing to warn about
    let mut i = with(pgbouncer_sessions());
    i.guard.policy.idle_timeout = 0;
    assert_eq!(one(&diagnose(&i), "pooler").status, Status::Ok);
    // excluded already
    let mut i = with(pgbouncer_sessions());
    i.guard.policy.idle_timeout = 900 * SECOND;
    i.guard.policy.scope.exclude_applications = PatternList::parse("pgbouncer").unwrap();
    assert_eq!(one(&diagnose(&i), "pooler").status, Status::Ok);
    assert_eq!(one(&diagnose(&input()), "pooler").status, Status::Ok);
}

#[test]
fn a_pooler_takes_more_than_a_name_and_no_name_becomes_a_wildcard() {
    // one client that calls itself pgbouncer is no pooler
    let mut i = with(vec![app(addr(c(300, "idle", 30), "10.0.0.9"), "pgbouncer")]);
    i.guard.policy.idle_timeout = 900 * SECOND;
    let fs = diagnose(&i);
    let p = one(&fs, "pooler");
    assert_eq!(p.status, Status::Ok, "{}", p.finding);
    // a pool whose role is named `*`: `user:*=0` would exempt everyone
    let starred: Vec<Backend> = pgbouncer_sessions()
        .into_iter()
        .map(|mut b| {
            b.usename = Some("*".into());
            b.application_name = Some("pg*bouncer".into());
            b
        })
        .collect();
    let mut i = with(starred);
    i.guard.policy.idle_timeout = 900 * SECOND;
    let fs = diagnose(&i);
    let p = one(&fs, "pooler");
    let a = action(p);
    assert!(!a.contains("=0'"), "{a}");
    assert!(!a.contains("user:*"), "{a}");
    assert!(
        a.starts_with("SHOW dbconn_guard.idle_timeout_overrides;"),
        "{a}"
    );
}

#[test]
fn a_many_sessions_client_may_be_a_pooler() {
    let clients: Vec<Backend> = pgbouncer_sessions()
        .into_iter()
        .map(|b| app(b, ""))
        .collect();
    let mut i = with(clients);
    i.guard.policy.idle_timeout = 900 * SECOND;
    let fs = diagnose(&i);
    let p = one(&fs, "pooler");
    assert_eq!(p.status, Status::Info);
    // no application name to key on: the user
    assert_eq!(
        action(p),
        "ALTER SYSTEM SET dbconn_guard.idle_timeout_overrides = 'user:web=0'; SELECT pg_reload_conf();"
    );
}

// --- worker -------------------------------------------------------------------------------

#[test]
fn worker_problems_each_get_a_row() {
    let mut i = input();
    {
        let w = i.worker.as_mut().unwrap();
        w.running = false;
        w.extension_ready = false;
        w.database = "postgres".into();
        w.last_error = Some("could not connect\nto database".into());
        w.last_error_at = Some(NOW - 30 * SECOND);
    }
    let fs = diagnose(&i);
    let rows = area(&fs, "worker");
    assert_eq!(rows.len(), 3, "{rows:#?}");
    assert_eq!(rows[0].status, Status::Warning);
    assert!(
        rows[0]
            .evidence
            .contains("last error \"could not connect to database\" 30s ago"),
        "{}",
        rows[0].evidence
    );
    assert_eq!(
        action(rows[1]),
        "psql -d 'postgres' -c 'CREATE EXTENSION dbconn_guard;'"
    );
    assert_eq!(rows[2].status, Status::Info);
    assert!(rows[2]
        .finding
        .contains("attached to database \"postgres\""));

    // running, with an error in the window
    let mut i = input();
    i.worker.as_mut().unwrap().last_error = Some("boom".into());
    i.worker.as_mut().unwrap().last_error_at = Some(NOW - 60 * SECOND);
    let fs = diagnose(&i);
    assert_eq!(one(&fs, "worker").status, Status::Warning);
    // an old error: ok, said
    i.worker.as_mut().unwrap().last_error_at = Some(NOW - 3 * HOUR);
    let fs = diagnose(&i);
    let w = one(&fs, "worker");
    assert_eq!(w.status, Status::Ok);
    assert!(w.evidence.contains("outside the window"));
}

#[test]
fn no_preload_says_what_could_not_be_checked() {
    let mut i = input();
    i.server.preloaded = false;
    i.worker = None;
    i.history = History {
        enabled: false,
        window: HOUR,
        samples: vec![],
        hidden_from_caller: false,
    };
    let fs = diagnose(&i);
    let w = one(&fs, "worker");
    assert_eq!(w.status, Status::Info);
    assert_eq!(w.reading, Some(Reading::NotPreloaded), "{}", w.finding);
    assert_eq!(one(&fs, "error pattern").status, Status::Info);
    assert_eq!(area(&fs, "deployment")[0].status, Status::Info);
    assert_eq!(one(&fs, "guard").status, Status::Warning);
    // the actions that end sessions fall back to pg_stat_activity
    let mut clients = vec![c(1, "active", 1)];
    clients.extend((0..4).map(|p| c(10 + p, "idle", 900)));
    i.snapshot = snapshot(clients);
    let fs = diagnose(&i);
    assert!(action(one(&fs, "leaks"))
        .starts_with("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"));
}

// --- visibility ------------------------------------------------------------------------------

#[test]
fn hidden_sessions_say_which_role_shows_them() {
    let mut i = input();
    i.caller.has_read_all_stats = false;
    i.caller.hidden_backends = 4;
    i.caller.role = "app_ro".into();
    let fs = diagnose(&i);
    let v = one(&fs, "visibility");
    assert_eq!(v.status, Status::Warning);
    assert_eq!(action(v), "GRANT pg_read_all_stats TO \"app_ro\";");
    // a few of many: info
    let mut i = with(n_clients(60, "active"));
    i.caller.has_read_all_stats = false;
    i.caller.hidden_backends = 2;
    assert_eq!(one(&diagnose(&i), "visibility").status, Status::Info);
    // hidden backends in the snapshot count too
    let mut h = c(9, "idle", 5);
    h.kind = Kind::Hidden;
    let mut i = with(vec![h]);
    i.caller.has_read_all_stats = false;
    let fs = diagnose(&i);
    assert_eq!(one(&fs, "visibility").status, Status::Warning);
    assert!(one(&fs, "pool")
        .evidence
        .contains("1 backends hidden from this role are not counted"));
}

// --- quoting ---------------------------------------------------------------------------------

/// The statements of `sql` (split at `;` outside literals, quoted identifiers and `--`
/// comments), each with its literals and identifiers blanked to `?`.
fn statements(sql: &str) -> Vec<String> {
    let ch: Vec<char> = sql.chars().collect();
    let mut out = vec![String::new()];
    let mut i = 0;
    while i < ch.len() {
        let cur = out.last_mut().unwrap();
        match ch[i] {
            '-' if ch.get(i + 1) == Some(&'-') => {
                while i < ch.len() && ch[i] != '\n' {
                    i += 1;
                }
            }
            '\'' => {
                let escapes = cur.ends_with('E');
                if escapes {
                    cur.pop();
                }
                i += 1;
                loop {
                    assert!(i < ch.len(), "unterminated literal in {sql}");
                    match ch[i] {
                        '\\' if escapes => i += 2,
                        '\'' if ch.get(i + 1) == Some(&'\'') => i += 2,
                        '\'' => break,
                        _ => i += 1,
                    }
                }
                cur.push('?');
                i += 1;
            }
            '"' => {
                i += 1;
                loop {
                    assert!(i < ch.len(), "unterminated identifier in {sql}");
                    match ch[i] {
                        '"' if ch.get(i + 1) == Some(&'"') => i += 2,
                        '"' => break,
                        _ => i += 1,
                    }
                }
                cur.push('?');
                i += 1;
            }
            ';' => {
                out.push(String::new());
                i += 1;
            }
            c => {
                cur.push(c);
                i += 1;
            }
        }
    }
    out.into_iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

const HOSTILE: &str = "'); DROP TABLE x; --";

fn assert_single_intended(sql: &str, n: usize) {
    let st = statements(sql);
    assert_eq!(st.len(), n, "{sql} -> {st:?}");
    for s in &st {
        assert!(!s.to_uppercase().contains("DROP"), "{sql} -> {s}");
        let first = s.split_whitespace().next().unwrap_or("");
        assert!(
            ["SELECT", "ALTER", "GRANT", "SHOW"].contains(&first),
            "{sql} -> {s}"
        );
    }
}

#[test]
fn sql_quoting() {
    assert_eq!(sql_literal("api"), "'api'");
    assert_eq!(sql_literal(HOSTILE), "'''); DROP TABLE x; --'");
    assert_eq!(sql_literal("a\\'b"), "E'a\\\\''b'");
    assert_eq!(sql_literal("x\ny\u{1}"), "E'x\\ny\\u0001'");
    assert_eq!(sql_ident("a\"b"), "\"a\"\"b\"");
    assert_eq!(shell_quote("it's"), "'it'\\''s'");
    assert_eq!(
        statements(&format!("SELECT {};", sql_literal("a\\'; DROP x; --"))),
        vec!["SELECT ?"]
    );
}

#[test]
fn hostile_names_never_become_another_statement() {
    let evil = |b: Backend| app(b, HOSTILE);
    // leaks, oversized pool, pool: terminate_idle with the name as a literal
    let mut clients: Vec<Backend> = (0..12)
        .map(|p| evil(addr(c(10 + p, "idle", 900), "10.0.0.5")))
        .collect();
    // a pool larger than its work that is no leak (idle past idle_warning_age, not past
    // leak_idle_age): the leak's own sessions are the leaks row's story
    clients.extend((0..12).map(|p| evil(addr(c(60 + p, "idle", 400), "10.0.0.6"))));
    clients.push(evil(c(40, "active", 1)));
    let mut i = with(clients.clone());
    i.guard.policy.idle_timeout = 900 * SECOND;
    i.caller.role = "x\"; DROP ROLE y; --".into();
    i.caller.has_read_all_stats = false;
    i.caller.hidden_backends = 5;
    let mut last = sample(0, 2, 3);
    last.groups[0].name.application_name = Some(HOSTILE.into());
    i.history.samples.push(last);
    let fs = diagnose(&i);
    let mut checked = 0;
    for f in &fs {
        let Some(a) = f.action.as_deref() else {
            continue;
        };
        let n = match f.area {
            "pgbouncer" => continue,
            _ if a.starts_with("psql ") => continue,
            _ => a.matches("pg_reload_conf").count() + 1,
        };
        assert_single_intended(a, n);
        checked += 1;
    }
    for a in [
        "oversized pool",
        "leaks",
        "pooler",
        "deployment",
        "visibility",
    ] {
        assert!(
            !not_ok(&fs, a).is_empty(),
            "{a} should fire: {:#?}",
            area(&fs, a)
        );
    }
    // oversized pool, leaks, deployment, visibility, and a pooler row per client address
    // ... and the incident row, which repeats the most harmful one's
    assert_eq!(checked, 7, "{fs:#?}");
    // without the worker, the pg_stat_activity form too
    let mut i = with(clients);
    i.worker = None;
    for f in diagnose(&i).iter().filter(|f| f.area == "leaks") {
        assert_single_intended(action(f), 1);
    }
    // a hostile database name stays one shell word
    let mut i = input();
    i.worker.as_mut().unwrap().extension_ready = false;
    i.worker.as_mut().unwrap().database = "x'; rm -rf /; '".into();
    let fs = diagnose(&i);
    let a = action(area(&fs, "worker")[0]);
    assert_eq!(
        a,
        "psql -d 'x'\\''; rm -rf /; '\\''' -c 'CREATE EXTENSION dbconn_guard;'"
    );
}

#[test]
fn hostile_names_in_evidence_are_quoted() {
    let fs = diagnose(&with(
        (0..4)
            .map(|p| app(c(10 + p, "idle", 900), "x\"\nLOG: fake"))
            .collect(),
    ));
    let l = one(&fs, "leaks");
    assert!(
        l.evidence.contains("\"x\\\"\\nLOG: fake\""),
        "{}",
        l.evidence
    );
    assert!(!l.evidence.contains('\n'));
}

// --- every fixture ----------------------------------------------------------------------------

/// Every state the tests use, and a few odd ones: none panics, every non-ok row has one
/// action, steps ascend.
#[test]
fn every_non_ok_row_has_an_action_in_every_state() {
    let mut states: Vec<Input> = vec![
        input(),
        with(vec![]),
        with(n_clients(97, "active")),
        with(n_clients(40, "idle in transaction")),
        with(pgbouncer_sessions()),
        with_series(&[40, 45, 43, 52, 58, 61, 70]),
        with_series(&[40, 41, 90, 40, 42, 95, 41]),
        with_series(&[85, 86, 85, 86]),
        with_series(&[1]),
    ];
    let mut odd = input();
    odd.limits = Limits::default();
    odd.server = Server::default();
    odd.worker = None;
    odd.history = History::default();
    odd.caller = Caller::default();
    odd.guard.leak_trend_samples = 0;
    odd.guard.slow_query_age = Some(-1.0);
    states.push(odd);
    let mut standby = with(n_clients(30, "idle"));
    standby.server.in_recovery = true;
    standby.worker.as_mut().unwrap().running = false;
    states.push(standby);
    let mut locked = with(vec![c(4711, "idle in transaction", 100), c(2, "active", 5)]);
    locked.lock_waits = vec![
        wait(2, &[4711], 100),
        wait(3, &[2], 1),
        wait(4, &[5], 1),
        wait(5, &[4], 1),
    ];
    locked.guard.policy.idle_in_transaction_timeout = 0;
    states.push(locked);
    let mut weird_clock = input();
    weird_clock.snapshot.backends.push(Backend {
        pid: 77,
        kind: Kind::Client,
        ..Default::default()
    });
    weird_clock.history.samples.reverse();
    weird_clock.history.window = -5;
    states.push(weird_clock);
    for (n, i) in states.iter().enumerate() {
        let fs = diagnose(i);
        assert!(fs.len() >= 19, "state {n}");
        for (k, f) in fs.iter().enumerate() {
            assert_eq!(f.step, k as i32 + 1);
            assert!(
                !f.finding.is_empty() && !f.evidence.is_empty(),
                "state {n}: {f:#?}"
            );
            if f.status != Status::Ok {
                let a = f
                    .action
                    .as_deref()
                    .unwrap_or_else(|| panic!("state {n}: {f:#?}"));
                assert!(!a.trim().is_empty());
            }
        }
        let mut areas: Vec<&str> = fs.iter().map(|f| f.area).collect();
        areas.dedup();
        assert_eq!(areas[0], "incident", "state {n}");
        assert_eq!(&areas[1..=ORDER.len()], &ORDER[..], "state {n}");
    }
}

#[test]
fn text_helpers() {
    assert_eq!(dur(45.0), "45s");
    assert_eq!(dur(720.0), "12min");
    assert_eq!(dur(3.0 * 3600.0 + 300.0), "3h 5min");
    assert_eq!(dur(7200.0), "2h");
    assert_eq!(dur(2.0 * 86400.0 + 3.0 * 3600.0), "2d 3h");
    assert_eq!(dur(f64::NAN), "0s");
    assert_eq!(bytes(4 * MB), "4MB");
    assert_eq!(bytes(1536 * MB), "1.5GB");
    assert_eq!(bytes(512), "512B");
    assert_eq!(truncate("a\n  b   c", 80), "a b c");
    assert_eq!(truncate("abcdef", 3), "abc…");
}

#[test]
fn pgbouncers_session_pool_is_recognised_by_its_reset_query() {
    // what a session pool's idle server connections look like (measured with pgbouncer
    // 1.18): no application_name, last query DISCARD ALL
    let mut v: Vec<Backend> = (0..4)
        .map(|p| {
            let mut b = app(addr(c(100 + p, "idle", 30), "10.0.0.9"), "");
            b.query = Some("DISCARD ALL".into());
            b
        })
        .collect();
    v.push(app(addr(c(200, "active", 1), "10.0.0.9"), ""));
    let mut i = with(v);
    i.guard.policy.idle_timeout = 900 * SECOND;
    let fs = diagnose(&i);
    let p = one(&fs, "pooler");
    assert_eq!(p.status, Status::Warning, "{p:?}");
    assert!(p.evidence.contains("DISCARD ALL"), "{}", p.evidence);
    assert!(
        action(p).contains("'user:web=0'"),
        "the pooler's role is exempted: {}",
        action(p)
    );
}

#[test]
fn a_history_hidden_from_the_caller_is_said_to_be_hidden() {
    let mut i = input();
    i.history.samples.clear();
    i.history.hidden_from_caller = true;
    i.caller.role = "app".into();
    let fs = diagnose(&i);
    let e = one(&fs, "error pattern");
    assert!(
        e.evidence.contains("not readable by \"app\""),
        "{}",
        e.evidence
    );
    assert!(
        action(e).starts_with("GRANT pg_monitor TO \"app\";"),
        "{}",
        action(e)
    );
}

// --- structured findings ---------------------------------------------------------------------

/// (area, status, culprit, kind of action) of a finding: what the tests below assert, rather
/// than its wording.
fn shape(f: &Finding) -> (&'static str, Status, Option<Culprit>, ActionKind) {
    (f.area, f.status, f.culprit.clone(), f.action_kind)
}

fn application(name: &str) -> Option<Culprit> {
    Some(Culprit::Application(name.into()))
}

#[test]
fn the_kind_of_an_action_is_read_from_its_statement() {
    for (text, kind) in [
        ("SELECT * FROM dbconn_guard.terminate_idle('5 seconds', ARRAY['idle'])", ActionKind::EndIdleThroughGuard),
        ("SELECT * FROM dbconn_guard.cancel_statements('60 seconds')", ActionKind::CancelThroughGuard),
        ("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE state = 'idle'", ActionKind::SignalOverActivity),
        ("SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE state = 'active'", ActionKind::SignalOverActivity),
        ("SELECT pg_terminate_backend(4711);", ActionKind::EndSession),
        ("SELECT pg_cancel_backend(4711);", ActionKind::CancelStatement),
        ("ALTER SYSTEM SET dbconn_guard.idle_in_transaction_timeout = '5min'; SELECT pg_reload_conf();", ActionKind::Setting),
        ("[pgbouncer]\npool_mode = transaction", ActionKind::Setting),
        ("GRANT pg_read_all_stats TO \"x\";", ActionKind::Grant),
        ("SELECT * FROM dbconn_guard.leak_suspects;", ActionKind::Look),
    ] {
        assert_eq!(ActionKind::of(text), kind, "{text}");
    }
    // an ok row has none, every other row one
    for f in diagnose(&input()) {
        assert_eq!(
            f.action_kind == ActionKind::None,
            f.status == Status::Ok,
            "{f:#?}"
        );
    }
}

#[test]
fn each_incident_is_one_structured_finding_naming_its_culprit() {
    // a leak of 30 idle sessions of "orders"
    let mut leak = input().snapshot.backends;
    leak.extend((0..30).map(|p| app(c(100 + p, "idle", 900), "orders")));
    let fs = diagnose(&with(leak));
    assert_eq!(
        shape(one(&fs, "leaks")),
        (
            "leaks",
            Status::Warning,
            application("orders"),
            ActionKind::EndIdleThroughGuard
        )
    );
    // the first row is it
    assert_eq!(fs[0].culprit, application("orders"));

    // a pool at 92%, most of its idle slots held by one group: critical, naming the group
    let mut full = n_clients(40, "active");
    full.extend((0..52).map(|i| app(c(200 + i, "idle", 400), "orders")));
    let fs = diagnose(&with(full));
    assert_eq!(
        shape(one(&fs, "pool")),
        (
            "pool",
            Status::Critical,
            application("orders"),
            ActionKind::EndIdleThroughGuard
        )
    );
    assert_eq!(
        (fs[0].status, fs[0].culprit.clone()),
        (Status::Critical, application("orders"))
    );

    // a root idle in transaction that holds two sessions up for 30 s: ended now
    let mut i = with(vec![
        c(4711, "idle in transaction", 120),
        c(20, "active", 30),
        c(21, "active", 30),
    ]);
    i.lock_waits = vec![wait(20, &[4711], 30), wait(21, &[4711], 30)];
    let fs = diagnose(&i);
    assert_eq!(
        shape(one(&fs, "idle in transaction")),
        (
            "idle in transaction",
            Status::Warning,
            Some(Culprit::Session(4711)),
            ActionKind::EndSession
        )
    );
    assert_eq!(
        area(&fs, "locks")
            .iter()
            .map(|f| f.culprit.clone())
            .collect::<Vec<_>>(),
        vec![Some(Culprit::Session(4711))]
    );

    // a group's slow statements: one row, one paste through the guard; a lone one, by pid
    let fs = diagnose(&with(vec![
        c(4711, "active", 600),
        c(4712, "active", 900),
        app(c(50, "active", 1200), "batch"),
    ]));
    let slow: Vec<_> = area(&fs, "slow queries").into_iter().map(shape).collect();
    assert_eq!(
        slow,
        vec![
            (
                "slow queries",
                Status::Warning,
                application("api"),
                ActionKind::CancelThroughGuard
            ),
            (
                "slow queries",
                Status::Warning,
                Some(Culprit::Session(50)),
                ActionKind::CancelThroughGuard
            ),
        ]
    );

    // a storm of 25 new sessions of one application: a look, naming it
    let mut storm = input().snapshot.backends;
    storm.extend((0..25).map(|p| {
        let mut b = app(c(100 + p, "idle", 1), "deploy-v2");
        b.backend_start = Some(NOW - 10 * SECOND);
        b
    }));
    let fs = diagnose(&with(storm));
    assert_eq!(
        shape(one(&fs, "connection storm")),
        (
            "connection storm",
            Status::Warning,
            application("deploy-v2"),
            ActionKind::Look
        )
    );

    // a healthy server: no culprit anywhere, nothing to end
    let fs = diagnose(&input());
    assert!(
        fs.iter()
            .all(|f| f.culprit.is_none() && f.status < Status::Warning),
        "{fs:#?}"
    );
}

#[test]
fn a_queued_alter_table_is_named_and_cancelled_not_its_root() {
    // a 2-hour report reads orders; an ALTER TABLE queued behind it for 90 s; 40 readers
    // queued behind the ALTER for 80 s
    let mut report = app(c(4711, "active", 7200), "reports");
    report.query = Some("SELECT * FROM orders JOIN lines USING (id)".into());
    let mut alter = app(c(50, "active", 90), "psql");
    alter.query = Some("alter table orders add column note text".into());
    let mut clients = vec![report, alter];
    clients.extend((100..140).map(|p| c(p, "active", 80)));
    let mut i = with(clients);
    let mut w = wait(50, &[4711], 90);
    w.mode = Some("AccessExclusiveLock".into());
    i.lock_waits = vec![w];
    i.lock_waits.extend((100..140).map(|p| {
        let mut r = wait(p, &[50], 80);
        r.mode = Some("AccessShareLock".into());
        r
    }));
    let fs = diagnose(&i);
    let rows = area(&fs, "locks");
    assert_eq!(rows.len(), 2, "{rows:#?}");
    let q = rows[0];
    assert_eq!(
        q.finding,
        "A queued ALTER TABLE on \"orders\" holds up 40 sessions behind pid 4711 (active for 2h, application \"reports\"): cancel the ALTER (it can retry with lock_timeout)"
    );
    assert_eq!(q.status, Status::Critical);
    assert_eq!(
        action(q),
        "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE pid = 50 AND wait_event_type = 'Lock' AND wait_event = 'relation';"
    );
    assert_eq!(q.culprit, Some(Culprit::Session(50)));
    assert!(
        q.evidence
            .contains("the lock-queue rule is off (dbconn_guard.lock_queue_timeout)"),
        "{}",
        q.evidence
    );
    // the report's row points to it, as info: one story
    assert_eq!(rows[1].status, Status::Info, "{:#?}", rows[1]);
    assert!(
        rows[1]
            .finding
            .contains("40 of them queue behind the statement of pid 50"),
        "{}",
        rows[1].finding
    );
    // and the incident row is the queued ALTER
    assert_eq!(fs[0].culprit, Some(Culprit::Session(50)), "{:#?}", fs[0]);
    // a root that also holds up sessions of its own (a writer on its row, for 2 minutes)
    // keeps its own status: it is a culprit too
    let mut more = i.clone();
    more.snapshot.backends.push(c(60, "active", 120));
    more.lock_waits.push(wait(60, &[4711], 120));
    let fs = diagnose(&more);
    let root_row = area(&fs, "locks")
        .into_iter()
        .find(|r| r.finding.starts_with("Lock pile-up: pid 4711"))
        .unwrap();
    assert_eq!(root_row.status, Status::Critical, "{root_row:#?}");
    // the rule on: the row says it cancels such a statement
    i.guard.policy.lock_queue_timeout = 30 * SECOND;
    let fs = diagnose(&i);
    assert!(area(&fs, "locks")[0]
        .evidence
        .contains("dbconn_guard.lock_queue_timeout (30s) cancels such a statement"));
    // waits of a moment: ordinary contention, no row
    for w in i.lock_waits.iter_mut() {
        w.wait_start = Some(NOW - SECOND);
    }
    let fs = diagnose(&i);
    assert!(
        area(&fs, "locks")
            .iter()
            .all(|r| r.reading != Some(Reading::QueuedStatement)),
        "{fs:#?}"
    );
}

/// Samples a minute apart, the last one now, with `per_minute[k]` connections opened and as
/// many ended before sample k.
fn with_churn(per_minute: &[u32]) -> Input {
    let mut i = with_series(&vec![20; per_minute.len()]);
    for (s, &n) in i.history.samples.iter_mut().zip(per_minute) {
        s.new_connections = n;
        s.ended_sessions = n;
    }
    i
}

/// Young sessions of application `name`, started `age_s` seconds ago.
fn young(from: i32, n: i32, name: &str, age_s: i64) -> Vec<Backend> {
    (0..n)
        .map(|p| {
            let mut b = app(c(from + p, "active", 0), name);
            b.backend_start = Some(NOW - age_s * SECOND);
            b
        })
        .collect()
}

#[test]
fn steady_churn_names_the_client_that_connects_per_request() {
    // 50 connections a second open and end, sample after sample, for an hour
    let mut i = with_churn(&[3000; 60]);
    i.snapshot.backends.extend(young(500, 6, "web", 1));
    let fs = diagnose(&i);
    let ch = one(&fs, "connection churn");
    assert_eq!(ch.status, Status::Warning, "{ch:#?}");
    assert_eq!(ch.reading, Some(Reading::SteadyChurn));
    assert_eq!(ch.culprit, application("web"));
    assert_eq!(ch.action_kind, ActionKind::Look);
    assert!(
        ch.finding.contains("about 50 connections a second"),
        "{}",
        ch.finding
    );
    assert!(
        action(ch).contains("coalesce(application_name, '') = 'web'"),
        "{}",
        action(ch)
    );
    // at 10 a second, advice
    let mut i = with_churn(&[600; 60]);
    i.snapshot.backends.extend(young(500, 6, "web", 1));
    assert_eq!(one(&diagnose(&i), "connection churn").status, Status::Info);
    // the churn's young sessions are no storm: the storm row points to the churn
    let mut i = with_churn(&[3000; 60]);
    i.snapshot.backends.extend(young(500, 30, "web", 1));
    let fs = diagnose(&i);
    let s = one(&fs, "connection storm");
    assert_eq!(s.status, Status::Ok, "{s:#?}");
    assert_eq!(s.see, Some("connection churn"));
    assert_eq!(one(&fs, "connection churn").culprit, application("web"));
    // a storm of another application still is one
    let mut i = with_churn(&[3000; 60]);
    i.snapshot.backends.extend(young(500, 6, "web", 1));
    i.snapshot.backends.extend(young(600, 30, "batch", 30));
    let fs = diagnose(&i);
    let s = one(&fs, "connection storm");
    assert_eq!(s.reading, Some(Reading::Storm), "{s:#?}");
    assert_eq!(s.culprit, application("batch"));
    // a storm of the churning application itself, past what its rate opens in a minute, is
    // still one (10 a second: 600 a minute; 700 new sessions)
    let mut i = with_churn(&[600; 60]);
    i.snapshot.backends.extend(young(500, 700, "web", 1));
    let s = one(&diagnose(&i), "connection storm").clone();
    assert_eq!(s.reading, Some(Reading::Storm), "{s:#?}");
    // connections too short to be seen: the row says so, and names nobody
    let i = with_churn(&[3000; 60]);
    let ch = one(&diagnose(&i), "connection churn").clone();
    assert_eq!(ch.culprit, None);
    assert!(ch.evidence.contains("log_connections"), "{}", ch.evidence);
}

#[test]
fn a_one_off_storm_or_a_growing_count_is_no_steady_churn() {
    // one minute of 3000 connections in an hour: a storm, not churn
    let mut per_minute = vec![0; 60];
    per_minute[40] = 3000;
    let fs = diagnose(&with_churn(&per_minute));
    assert_eq!(one(&fs, "connection churn").status, Status::Ok);
    // a burst over a quarter of the window is not steady either
    let mut per_minute = vec![30; 60];
    for m in per_minute.iter_mut().skip(30).take(29) {
        *m = 3000;
    }
    assert_eq!(
        one(&diagnose(&with_churn(&per_minute)), "connection churn").status,
        Status::Ok
    );
    // connections that open and stay (a growing count) are not churn
    let mut i = with_churn(&[3000; 60]);
    for s in &mut i.history.samples {
        s.ended_sessions = 0;
    }
    assert_eq!(one(&diagnose(&i), "connection churn").status, Status::Ok);
    // below 5 a second: ok; and the caller's own young session is nobody's churn
    let mut i = with_churn(&[240; 60]);
    i.snapshot.backends.extend(young(500, 6, "web", 1));
    assert_eq!(one(&diagnose(&i), "connection churn").status, Status::Ok);
    let mut i = with_churn(&[3000; 60]);
    i.snapshot.backends.extend(young(500, 2, "psql", 1));
    i.caller.pid = 500;
    assert_eq!(one(&diagnose(&i), "connection churn").culprit, None);
    // without history, not checked
    let mut i = with_churn(&[3000; 60]);
    i.history.samples.truncate(2);
    let ch = one(&diagnose(&i), "connection churn").clone();
    assert_eq!((ch.status, ch.reading), (Status::Info, None));
    assert!(
        ch.evidence.contains("not enough history"),
        "{}",
        ch.evidence
    );
}

#[test]
fn every_reading_and_action_kind_has_a_distinct_documented_name() {
    let reference = include_str!("../../../../docs/reference.md");
    let mut seen = std::collections::BTreeSet::new();
    for r in Reading::ALL {
        assert!(seen.insert(r.as_str()), "{r:?}");
        assert!(
            reference.contains(&format!("`{}`", r.as_str())),
            "docs/reference.md names the reading {}",
            r.as_str()
        );
    }
    for k in [
        ActionKind::None,
        ActionKind::Look,
        ActionKind::EndSession,
        ActionKind::CancelStatement,
        ActionKind::EndIdleThroughGuard,
        ActionKind::CancelThroughGuard,
        ActionKind::SignalOverActivity,
        ActionKind::Setting,
        ActionKind::Grant,
    ] {
        assert!(seen.insert(k.as_str()), "{k:?}");
        assert!(
            reference.contains(&format!("`{}`", k.as_str())),
            "docs/reference.md names the action kind {}",
            k.as_str()
        );
    }
}

#[test]
fn an_active_root_back_after_the_guards_cancels_is_ended_not_cancelled_again() {
    // a client that re-issues its locking statement after every cancel: pid 4711, active,
    // holds up two sessions for 20 s; the guard cancelled it 3 and 1 minutes ago
    let mut root = c(4711, "active", 20);
    root.query_id = Some(5);
    let started = root.backend_start.unwrap();
    let mut i = with(vec![root, c(20, "active", 20), c(21, "active", 20)]);
    i.lock_waits = vec![wait(20, &[4711], 20), wait(21, &[4711], 20)];
    let cancel = |ago_s: i64| GuardAction {
        at: NOW - ago_s * SECOND,
        pid: 4711,
        backend_start: started,
        rule: "blocker_cancel".into(),
        dry_run: false,
        query_id: 0,
        query: Some("select 4711".into()),
    };
    i.guard_actions = vec![cancel(180), cancel(60)];
    let fs = diagnose(&i);
    let l = one(&fs, "locks");
    assert_eq!(l.reading, Some(Reading::RootReturns), "{l:#?}");
    assert_eq!(l.culprit, Some(Culprit::Session(4711)));
    assert_eq!(l.action_kind, ActionKind::EndSession);
    assert_eq!(action(l), "SELECT pg_terminate_backend(4711);");
    // a 20 s wait is info for a first pile-up; back after a cancel, it is a warning
    assert_eq!(l.status, Status::Warning);
    assert!(
        l.finding.contains("2 times, the last 60s ago"),
        "{}",
        l.finding
    );
    assert!(
        l.evidence.contains("blocker_terminate_after is off"),
        "{}",
        l.evidence
    );
    assert_eq!(
        fs[0].reading,
        Some(Reading::RootReturns),
        "the incident row"
    );
    // with the escalation on, the row says the guard ends it by itself
    i.guard.policy.cancel_active_blockers = true;
    i.guard.policy.blocker_terminate_after = 5 * 60 * SECOND;
    assert!(one(&diagnose(&i), "locks")
        .evidence
        .contains("blocker_terminate_after (5min) ends it by itself"));
    // the cancels must be this session's, real, within the window, and a root blocker's
    for other in [
        GuardAction {
            backend_start: started - SECOND,
            ..cancel(60)
        },
        GuardAction {
            dry_run: true,
            ..cancel(60)
        },
        GuardAction {
            rule: "manual_cancel".into(),
            ..cancel(60)
        },
        // another episode: longer ago than ROOT_RETURNS_WITHIN
        cancel(11 * 60),
        // another statement (a pooler's server connection runs other clients' statements)
        GuardAction {
            query: Some("select 1".into()),
            ..cancel(60)
        },
        GuardAction {
            query_id: 7,
            ..cancel(60)
        },
    ] {
        i.guard_actions = vec![other.clone()];
        let l = one(&diagnose(&i), "locks").clone();
        assert_eq!(l.reading, Some(Reading::RootBlocker), "{other:?}: {l:#?}");
        assert_eq!(action(&l), "SELECT pg_cancel_backend(4711);", "{other:?}");
    }
}

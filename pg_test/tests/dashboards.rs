//! Every SQL panel of deploy/grafana/dbconn_guard-postgres.json, executed against the test server
//! holding a known scenario (a leak, a three-deep lock chain, a termination), with Grafana's
//! PostgreSQL macros expanded as Grafana documents them — in both the documented forms of
//! `$__timeGroup` — and the result checked for the shape its panel needs: a time series has a
//! timestamptz `time` column first, ascending, and numeric values (and at most a text `metric`);
//! a table returns the rows the scenario puts there.

use dbconn_guard_integration::*;
use postgres::types::Type;
use postgres::Client;
use std::thread;
use std::time::Duration;

fn dashboard(name: &str) -> serde_json::Value {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/grafana")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Seconds in a Grafana interval (`10s`, `5m`, `1h`, `1d`), quotes allowed.
fn interval_seconds(s: &str) -> u64 {
    let s = s.trim().trim_matches('\'').trim_matches('"');
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n.parse().unwrap_or_else(|_| panic!("interval {s:?}"));
    n * match unit {
        "s" | "" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        other => panic!("unit {other:?}"),
    }
}

/// The two forms Grafana's documentation has given `$__timeGroup(column, '5m')`: the cast
/// (`(extract(epoch from column)/300)::bigint*300`) and `floor(extract(epoch from column)/300)*300`.
#[derive(Clone, Copy, Debug)]
enum TimeGroup {
    Cast,
    Floor,
}

/// Expands Grafana's PostgreSQL macros over the time range `from`..`to` (RFC 3339, UTC).
fn expand(sql: &str, from: &str, to: &str, interval: &str, form: TimeGroup) -> String {
    let mut s = sql.replace(
        "$__interval_ms",
        &(interval_seconds(interval) * 1000).to_string(),
    );
    s = s.replace("$__interval", interval);
    s = s.replace("$__timeFrom()", &format!("'{from}'"));
    s = s.replace("$__timeTo()", &format!("'{to}'"));
    // macros with arguments: $__name(args)
    while let Some(start) = s.find("$__") {
        let open = start + s[start..].find('(').expect("macro without (");
        let name = &s[start + 3..open];
        let mut depth = 0;
        let mut close = open;
        for (i, c) in s[open..].char_indices() {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        close = open + i;
                        break;
                    }
                }
                _ => {}
            }
        }
        let args: Vec<String> = s[open + 1..close]
            .split(',')
            .map(|a| a.trim().to_string())
            .collect();
        let group = |col: &str, iv: &str| {
            let n = interval_seconds(iv);
            match form {
                TimeGroup::Cast => format!("(extract(epoch from {col})/{n})::bigint*{n}"),
                TimeGroup::Floor => format!("floor(extract(epoch from {col})/{n})*{n}"),
            }
        };
        let replacement = match name {
            "time" => format!("{} AS \"time\"", args[0]),
            "timeEpoch" => format!("extract(epoch from {}) AS \"time\"", args[0]),
            "timeFilter" => format!("{} BETWEEN '{from}' AND '{to}'", args[0]),
            "timeGroup" => group(&args[0], &args[1]),
            "timeGroupAlias" => format!("{} AS \"time\"", group(&args[0], &args[1])),
            other => panic!("macro {other} is not expanded by this test"),
        };
        s.replace_range(start..=close, &replacement);
    }
    s
}

fn is_numeric(t: &Type) -> bool {
    [
        Type::INT2,
        Type::INT4,
        Type::INT8,
        Type::FLOAT4,
        Type::FLOAT8,
        Type::NUMERIC,
    ]
    .contains(t)
}

/// The scenario every panel is run against; the sessions live as long as the value.
struct Scenario {
    _sessions: Vec<Client>,
    _waiters: Vec<std::thread::JoinHandle<Result<(), postgres::Error>>>,
    holder: Client,
    ended_pid: i32,
}

fn scenario(a: &mut Client) -> Scenario {
    alter_system(
        a,
        &[
            ("dbconn_guard.sample_interval", "1s"),
            ("dbconn_guard.idle_in_transaction_timeout", "2s"),
            // the history names the pile-up's root statement by its query id
            ("compute_query_id", "on"),
        ],
    );
    // a leak: three idle sessions of one client
    let mut sessions: Vec<Client> = (0..3).map(|_| stale_idle("it_d_leak").0).collect();
    // a termination: a transaction left idle, ended by the guard after 2s
    let (s, ended_pid) = stale_in_transaction("it_d_ended");
    sessions.push(s);
    wait_gone(a, ended_pid, Duration::from_secs(10));
    // a three-deep chain: c waits for b, which waits for the holder (superusers: the guard
    // leaves them alone)
    a.batch_execute(
        "DROP TABLE IF EXISTS it_d_t1, it_d_t2; CREATE TABLE it_d_t1(i int); CREATE TABLE it_d_t2(i int)",
    )
    .unwrap();
    let mut holder = connect("it_d_root");
    holder
        .batch_execute("BEGIN; LOCK TABLE it_d_t1 IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    let (b, hb) = in_background(
        "it_d_middle",
        "",
        "BEGIN; LOCK TABLE it_d_t2 IN ACCESS EXCLUSIVE MODE; LOCK TABLE it_d_t1 IN ACCESS SHARE MODE; COMMIT",
    );
    thread::sleep(Duration::from_millis(300));
    let (c, hc) = in_background("it_d_tail", "", "SELECT count(*) FROM it_d_t2");
    wait_for_lock_waits(a, &[b, c]);
    // a few samples of all that
    thread::sleep(Duration::from_millis(2500));
    Scenario {
        _sessions: sessions,
        _waiters: vec![hb, hc],
        holder,
        ended_pid,
    }
}

#[test]
fn every_sql_panel_runs_and_has_the_shape_its_panel_needs() {
    let mut a = guard_admin();
    let mut sc = scenario(&mut a);
    let d = dashboard("dbconn_guard-postgres.json");

    // the datasource is a template variable, never a fixed uid
    let vars = d["templating"]["list"].as_array().unwrap();
    assert!(vars
        .iter()
        .any(|v| v["name"] == "datasource" && v["type"] == "datasource"));

    let mut r = connect("it_d_grafana");
    r.batch_execute("SET dbconn_guard.leak_idle_age = '1s'")
        .unwrap();
    let (from, to): (String, String) = {
        let row = r
            .query_one(
                "SELECT to_char((now() - interval '1 hour') AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
                        to_char((now() + interval '1 minute') AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    let mut checked = 0;
    for panel in d["panels"].as_array().unwrap() {
        let title = panel["title"].as_str().unwrap();
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "{title}: datasource must be the variable"
        );
        for t in panel["targets"].as_array().unwrap() {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
            let sql = t["rawSql"].as_str().unwrap();
            let format = t["format"].as_str().unwrap();
            for form in [TimeGroup::Cast, TimeGroup::Floor] {
                let q = expand(sql, &from, &to, "10s", form);
                assert!(!q.contains("$__"), "{title}: {q}");
                let rows = r
                    .query(q.as_str(), &[])
                    .unwrap_or_else(|e| panic!("{title} ({form:?}): {}\n{q}", db_error(&e)));
                match format {
                    "time_series" => check_time_series(title, &rows),
                    "table" => check_table(title, &rows, sc.ended_pid),
                    other => panic!("{title}: format {other}"),
                }
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 12, "every panel's query was run");

    sc.holder.batch_execute("ROLLBACK").unwrap();
    for h in sc._waiters.drain(..) {
        h.join().unwrap().unwrap();
    }
    reset_system(&mut a);
}

fn check_time_series(title: &str, rows: &[postgres::Row]) {
    assert!(!rows.is_empty(), "{title}: no rows");
    let cols = rows[0].columns();
    assert_eq!(cols[0].name(), "time", "{title}: time first");
    assert_eq!(
        *cols[0].type_(),
        Type::TIMESTAMPTZ,
        "{title}: time is timestamptz"
    );
    for c in &cols[1..] {
        assert!(
            is_numeric(c.type_()) || (c.name() == "metric" && *c.type_() == Type::TEXT),
            "{title}: column {} is {}",
            c.name(),
            c.type_()
        );
    }
    let times: Vec<std::time::SystemTime> = rows.iter().map(|r| r.get(0)).collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "{title}: time ascending"
    );
}

fn check_table(title: &str, rows: &[postgres::Row], ended_pid: i32) {
    let has = |col: &str, pred: &dyn Fn(&postgres::Row) -> bool| {
        assert!(
            rows.iter().any(pred),
            "{title}: no row with the scenario's {col} in {} rows",
            rows.len()
        )
    };
    match title {
        "Health" => assert_eq!(rows.len(), 5, "{title}"),
        "Leak suspects" => has("leak", &|r| {
            r.get::<_, Option<String>>("application_name").as_deref() == Some("it_d_leak")
                && r.get::<_, i64>("idle_count") == 3
        }),
        "Blocking chains" => has("three-deep chain", &|r| {
            r.get::<_, Option<i32>>("depth") == Some(2)
                && r.get::<_, i64>("root_blocked_count") == 2
        }),
        "Recent terminations" => has("termination", &|r| {
            r.get::<_, i32>("pid") == ended_pid
                && r.get::<_, String>("rule") == "idle_in_transaction_timeout"
        }),
        "Worker" => has("running worker", &|r| r.get::<_, bool>("running")),
        "Top blockers" => has("pile-up's root in the history", &|r| {
            r.get::<_, i64>("samples_as_top_root") >= 1
                && r.get::<_, Option<i64>>("most_held_up_in_a_sample") == Some(2)
        }),
        other => panic!("table panel {other} has no expectation in this test"),
    }
}

#[test]
fn the_macro_expansion_is_grafanas() {
    let from = "2017-04-21T05:01:17Z";
    let to = "2017-04-21T05:06:17Z";
    assert_eq!(
        expand("WHERE $__timeFilter(t)", from, to, "5m", TimeGroup::Cast),
        "WHERE t BETWEEN '2017-04-21T05:01:17Z' AND '2017-04-21T05:06:17Z'"
    );
    assert_eq!(
        expand("$__timeGroup(t, '5m')", from, to, "1m", TimeGroup::Cast),
        "(extract(epoch from t)/300)::bigint*300"
    );
    assert_eq!(
        expand(
            "$__timeGroupAlias(t, $__interval)",
            from,
            to,
            "5m",
            TimeGroup::Floor
        ),
        "floor(extract(epoch from t)/300)*300 AS \"time\""
    );
    assert_eq!(
        expand("$__timeFrom() $__timeTo()", from, to, "5m", TimeGroup::Cast),
        "'2017-04-21T05:01:17Z' '2017-04-21T05:06:17Z'"
    );
}

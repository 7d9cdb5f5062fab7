//! The Prometheus side, against real servers: `promtool` checks and unit-tests
//! deploy/prometheus/alerts.yml; then a real Prometheus scrapes a real primary and a real hot
//! standby, each with the extension's endpoint, and every PromQL expression of
//! deploy/grafana/dbconn_guard-prometheus.json and of the alert rules is executed: each returns
//! data for both instances, and the scenario (the primary's slots nearly all taken) fires an
//! alert, seen through Prometheus' HTTP API.

use dbconn_guard_integration::*;
use std::path::PathBuf;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

fn deploy(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

fn promtool(args: &[&str], dir: &std::path::Path) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool (Debian's prometheus package)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}: {text}");
    text
}

#[test]
fn promtool_checks_the_rules_and_their_unit_tests_pass() {
    let dir = deploy("prometheus");
    assert!(promtool(&["check", "rules", "alerts.yml"], &dir).contains("SUCCESS: 14 rules found"));
    promtool(&["check", "config", "prometheus.yml"], &dir);
    assert!(promtool(&["test", "rules", "alerts_test.yml"], &dir).contains("SUCCESS"));
}

/// The alert rules of alerts.yml: (name, expr).
fn alert_rules() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(deploy("prometheus/alerts.yml")).unwrap();
    let mut out = Vec::new();
    let mut name = None;
    for line in text.lines() {
        let l = line.trim();
        if let Some(n) = l.strip_prefix("- alert: ") {
            name = Some(n.to_string());
        } else if let Some(e) = l.strip_prefix("expr: ") {
            out.push((name.take().expect("expr before alert"), e.to_string()));
        }
    }
    out
}

/// What an alert looks at: its expression without the thresholds (`x > 60` → `x`).
fn subject(expr: &str) -> String {
    let mut s = String::new();
    let mut rest = expr;
    loop {
        let cut = [" >= ", " <= ", " == ", " != ", " > ", " < "]
            .iter()
            .filter_map(|op| rest.find(op).map(|i| (i, op.len())))
            .min();
        let Some((i, len)) = cut else {
            s.push_str(rest);
            break;
        };
        s.push_str(&rest[..i]);
        let after = &rest[i + len..];
        let end = after
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(after.len());
        rest = &after[end..];
    }
    s
}

fn instances(result: &[serde_json::Value]) -> Vec<String> {
    let mut v: Vec<String> = result
        .iter()
        .filter_map(|r| r["metric"]["instance"].as_str().map(str::to_string))
        .collect();
    v.sort();
    v.dedup();
    v
}

#[test]
fn every_dashboard_and_alert_expression_has_data_for_a_primary_and_a_standby() {
    let p_port = ports::port(ports::PROMETHEUS_PRIMARY_METRICS);
    let s_port = ports::port(ports::PROMETHEUS_STANDBY_METRICS);
    let primary = Cluster::start(
        "prom-primary",
        ports::PROMETHEUS_PRIMARY,
        &[
            "shared_preload_libraries = 'dbconn_guard'",
            &format!("dbconn_guard.metrics_listen = '127.0.0.1:{p_port}'"),
            "dbconn_guard.sample_interval = 1",
            "max_connections = 10",
            "superuser_reserved_connections = 1",
        ],
    );
    let mut su = primary.connect("postgres", "postgres", "it_p_admin");
    su.batch_execute("CREATE EXTENSION dbconn_guard").unwrap();
    let standby = Replica::start(
        primary.port,
        ports::port(ports::PROMETHEUS_STANDBY),
        &[&format!("dbconn_guard.metrics_listen='127.0.0.1:{s_port}'")],
    );
    let (p_addr, s_addr) = (format!("127.0.0.1:{p_port}"), format!("127.0.0.1:{s_port}"));
    wait_for_http(&p_addr, "/healthz", 200, Duration::from_secs(15));
    wait_for_http(&s_addr, "/healthz", 200, Duration::from_secs(15));
    let (_, s_metrics) = http_get(&s_addr, "/metrics");
    assert!(
        s_metrics.contains("dbconn_guard_in_recovery 1"),
        "{s_metrics}"
    );

    // the scenario: the primary's slots nearly all taken (9 of 10: critical at 90%)
    let held: Vec<_> = (0..8)
        .map(|i| primary.connect("postgres", "postgres", &format!("it_p_fill{i}")))
        .collect();

    // the rules as they are, but firing at once (their `for:` is promtool's to test)
    let rules_dir = std::env::temp_dir().join(format!("dbconn_guard-rules-{p_port}"));
    std::fs::create_dir_all(&rules_dir).unwrap();
    let rules = rules_dir.join("alerts.yml");
    let text = std::fs::read_to_string(deploy("prometheus/alerts.yml")).unwrap();
    let immediate: String = text
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("for: ") {
                l.split("for:").next().unwrap().to_string() + "for: 0s"
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&rules, immediate).unwrap();

    let prom = Prometheus::start(
        ports::port(ports::PROMETHEUS),
        &[p_addr.clone(), s_addr.clone()],
        &rules,
    );
    let both = vec![p_addr.clone(), s_addr.clone()];
    let deadline = Instant::now() + Duration::from_secs(30);
    while instances(&prom.query("dbconn_guard_worker_up")) != both
        // a counter's increase needs two scrapes of each endpoint
        || instances(&prom.query("increase(dbconn_guard_terminations_total[1m])")) != both
    {
        assert!(
            Instant::now() < deadline,
            "Prometheus never scraped both endpoints"
        );
        thread::sleep(Duration::from_millis(500));
    }

    // every dashboard expression, with Grafana's variables as "All" and a rate interval
    let d: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(deploy("grafana/dbconn_guard-prometheus.json")).unwrap(),
    )
    .unwrap();
    let vars = d["templating"]["list"].as_array().unwrap();
    assert!(vars
        .iter()
        .any(|v| v["name"] == "datasource" && v["type"] == "datasource"));
    let mut exprs = 0;
    for panel in d["panels"].as_array().unwrap() {
        let title = panel["title"].as_str().unwrap();
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        for t in panel["targets"].as_array().unwrap() {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
            let e = t["expr"]
                .as_str()
                .unwrap()
                .replace("$instance", ".*")
                .replace("$__rate_interval", "1m")
                .replace("$__interval", "15s");
            let r = prom.query(&e);
            assert_eq!(instances(&r), both, "{title}: {e} returned {r:?}");
            exprs += 1;
        }
    }
    assert!(exprs >= 14, "{exprs} expressions");
    // the fleet table: the worst instance first (the primary: utilization critical)
    let worst = prom.query("sort_desc(max by (instance) (dbconn_guard_health_status))");
    assert_eq!(worst[0]["metric"]["instance"], p_addr.as_str(), "{worst:?}");
    // the instance variable's values
    let values = prom.api(&format!(
        "label/instance/values?{}={}",
        url_encode("match[]"),
        url_encode("dbconn_guard_worker_up")
    ));
    assert_eq!(values.as_array().unwrap().len(), 2, "{values}");

    // every alert expression: what it looks at has data for both; it parses as it is
    for (name, expr) in alert_rules() {
        prom.query(&expr);
        if expr.starts_with("absent(") {
            assert!(
                prom.query(&expr).is_empty(),
                "{name}: both instances are there"
            );
            continue;
        }
        let s = subject(&expr);
        assert_eq!(instances(&prom.query(&s)), both, "{name}: {s}");
    }

    // the scenario fires the critical utilization alert on the primary, and not on the standby
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let alerts = prom.api("alerts");
        let firing: Vec<&serde_json::Value> = alerts["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| {
                a["state"] == "firing"
                    && a["labels"]["alertname"] == "DbconnGuardUtilizationCritical"
            })
            .collect();
        if !firing.is_empty() {
            assert!(
                firing
                    .iter()
                    .all(|a| a["labels"]["instance"] == p_addr.as_str()),
                "{firing:?}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "no alert fired: {alerts}");
        thread::sleep(Duration::from_millis(500));
    }
    drop(prom);
    drop(held);
    drop(standby);
    let _ = std::fs::remove_dir_all(rules_dir);
}

#[test]
fn subject_strips_thresholds() {
    assert_eq!(subject("a >= 0.8"), "a");
    assert_eq!(
        subject("a > 0 and delta(a[15m]) > 0"),
        "a and delta(a[15m])"
    );
    assert_eq!(subject("up{job=\"x\"} == 0"), "up{job=\"x\"}");
}

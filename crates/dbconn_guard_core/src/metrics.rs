//! The metrics: what `/metrics` serves in Prometheus' (OpenMetrics) text format and
//! `dbconn_guard.metrics()` returns as rows — one list, so the two never differ.
//!
//! Naming follows Prometheus: the `dbconn_guard_` prefix, base units in the name (`_seconds`,
//! `_ratio`), `_total` for counters, `_timestamp_seconds` for raw times. Label values are
//! whatever the clients call themselves; the encoder escapes them, and the connection counts are
//! bounded to the top groups plus one `other="true"` series. No query text, ever.

use super::health::Status;
use super::history::{Sample, UNIX_EPOCH};
use super::policy::{Rule, RULES};
use super::session::{Micros, SECOND};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::AtomicU64;

pub const PREFIX: &str = "dbconn_guard";

/// What the metrics are made of, read at one moment.
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    /// The live picture, in the history's shape (client backends by state, the top groups and
    /// the remainder, lock waits, slots).
    pub sample: Sample,
    pub oldest_lock_wait_start: Option<Micros>,
    pub oldest_xact_start: Option<Micros>,
    /// Sessions at the head of a lock pile-up (they block others and wait for no lock).
    pub root_blockers: u32,
    /// Waiting sessions held up by a root blocker, directly or through others.
    pub blocked_by_roots: u32,
    /// The most sessions one root holds up.
    pub largest_pileup: u32,
    pub leak_suspects: u32,
    /// Sessions ended since the server started, by rule (`Rule::index` order).
    pub terminations_by_rule: [i64; RULES],
    /// Client connections that authenticated since the server started.
    pub connections_total: u64,
    /// Client sessions that ended since the server started (counted at each sample).
    pub sessions_ended_total: i64,
    pub worker_up: bool,
    /// The extension exists in the worker's database, so it can guard.
    pub worker_extension_ready: bool,
    /// The worker can act: it runs, the extension exists, no refused configuration, and its
    /// last check recorded every session it had to end.
    pub worker_can_act: bool,
    /// Termination records kept in shared memory because the audit table could not be locked
    /// in time, not yet written to it.
    pub audit_records_in_memory: i64,
    /// Such records that found no room to wait: in the server log (and the ring) only.
    pub audit_records_lost: i64,
    pub worker_last_error: Option<Micros>,
    pub worker_last_cycle_seconds: f64,
    pub worker_last_cycle_start: Option<Micros>,
    /// Every health check and its status.
    pub health: Vec<(&'static str, Status)>,
    pub in_recovery: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Gauge,
    Counter,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
        }
    }
}

/// One metric family: its name (without prefix, unit or `_total`), unit, help, and samples.
#[derive(Clone, Debug)]
pub struct FamilyDef {
    pub name: &'static str,
    pub unit: Option<&'static str>,
    pub kind: Kind,
    pub help: &'static str,
    pub samples: Vec<(Vec<(String, String)>, f64)>,
}

impl FamilyDef {
    /// The name a sample carries in the exposition: prefix, name, unit, `_total` for counters.
    pub fn full_name(&self) -> String {
        let mut n = format!("{PREFIX}_{}", self.name);
        if let Some(u) = self.unit {
            n.push('_');
            n.push_str(u);
        }
        if self.kind == Kind::Counter {
            n.push_str("_total");
        }
        n
    }
}

/// One row of `dbconn_guard.metrics()`.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub metric: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
    pub kind: &'static str,
    pub help: &'static str,
}

fn unix_seconds(t: Micros) -> f64 {
    (t - UNIX_EPOCH) as f64 / SECOND as f64
}

fn one(v: f64) -> Vec<(Vec<(String, String)>, f64)> {
    vec![(Vec::new(), v)]
}

fn label(k: &str, v: &str) -> (String, String) {
    (k.to_string(), v.to_string())
}

const STATES: [&str; 5] = [
    "active",
    "idle",
    "idle in transaction",
    "idle in transaction (aborted)",
    "other",
];

fn by_state(c: &super::history::StateCounts) -> [u32; 5] {
    [
        c.active,
        c.idle,
        c.idle_in_transaction,
        c.idle_in_transaction_aborted,
        c.other_states,
    ]
}

/// Every metric family, in exposition order.
pub fn families(i: &Inputs) -> Vec<FamilyDef> {
    let s = &i.sample;
    let gauge = |name, unit, help, samples| FamilyDef {
        name,
        unit,
        kind: Kind::Gauge,
        help,
        samples,
    };
    let mut connections = Vec::new();
    for g in &s.groups {
        for (state, n) in STATES.iter().zip(by_state(&g.counts)) {
            if n == 0 {
                continue;
            }
            connections.push((
                vec![
                    label("datname", g.name.datname.as_deref().unwrap_or("")),
                    label("usename", g.name.usename.as_deref().unwrap_or("")),
                    label(
                        "application_name",
                        g.name.application_name.as_deref().unwrap_or(""),
                    ),
                    label("state", state),
                    label("other", if g.other { "true" } else { "false" }),
                ],
                f64::from(n),
            ));
        }
    }
    let clients = STATES
        .iter()
        .zip(by_state(&s.clients))
        .map(|(state, n)| (vec![label("state", state)], f64::from(n)))
        .collect();
    let mut out = vec![
        gauge(
            "connections",
            None,
            "Client backends by (datname, usename, application_name, state): the largest groups, and the rest summed in other=\"true\" series with empty names",
            connections,
        ),
        gauge(
            "client_backends",
            None,
            "Client backends by state (other: fastpath function call, disabled, starting)",
            clients,
        ),
        gauge(
            "max_connections",
            None,
            "The server's max_connections",
            one(f64::from(s.max_connections)),
        ),
        gauge(
            "available_connections",
            None,
            "Slots an ordinary role can still take (max_connections less reserved slots and client backends)",
            one(s.available_connections as f64),
        ),
        gauge(
            "utilization",
            Some("ratio"),
            "Client backends as a share of max_connections (0 to 1)",
            one(s.utilization_pct / 100.0),
        ),
        gauge(
            "lock_waiters",
            None,
            "Backends waiting for a heavyweight lock",
            one(f64::from(s.lock_waiters)),
        ),
        gauge(
            "longest_lock_wait",
            Some("seconds"),
            "How long the longest current lock wait has lasted (0: none)",
            one(s.longest_lock_wait_s),
        ),
        gauge(
            "root_blockers",
            None,
            "Sessions at the head of a lock pile-up: they block others and wait for no lock",
            one(f64::from(i.root_blockers)),
        ),
        gauge(
            "blocked_by_root_blockers",
            None,
            "Waiting sessions held up by a root blocker, directly or through others",
            one(f64::from(i.blocked_by_roots)),
        ),
        gauge(
            "largest_pileup",
            None,
            "The most waiting sessions one root blocker holds up",
            one(f64::from(i.largest_pileup)),
        ),
        gauge(
            "oldest_transaction_age",
            Some("seconds"),
            "Age of the oldest open transaction of a client backend (0: none)",
            one(s.oldest_xact_age_s),
        ),
        gauge(
            "longest_idle_in_transaction",
            Some("seconds"),
            "Longest time a client backend has sat idle in transaction, aborted or not (0: none)",
            one(s.longest_idle_in_xact_s),
        ),
        gauge(
            "leak_suspects",
            None,
            "Rows of dbconn_guard.leak_suspects: clients holding old idle sessions, or a growing idle count",
            one(f64::from(i.leak_suspects)),
        ),
        FamilyDef {
            name: "terminations",
            unit: None,
            kind: Kind::Counter,
            help: "Sessions the guard ended since the server started, by rule; rules blocker_cancel and manual_cancel count cancelled statements, whose sessions stayed (dry-run records are not counted)",
            samples: Rule::ALL
                .iter()
                .zip(i.terminations_by_rule)
                .map(|(r, n)| (vec![label("rule", r.as_str())], n.max(0) as f64))
                .collect(),
        },
        FamilyDef {
            name: "connections_opened",
            unit: None,
            kind: Kind::Counter,
            help: "Client connections that authenticated since the server started (replication connections aside): their rate is the connection churn",
            samples: one(i.connections_total as f64),
        },
        FamilyDef {
            name: "sessions_ended",
            unit: None,
            kind: Kind::Counter,
            help: "Client sessions that ended since the server started, by themselves or ended by anyone (counted at each sample of the history)",
            samples: one(i.sessions_ended_total.max(0) as f64),
        },
        gauge(
            "worker_up",
            None,
            "1 while the guard's background worker runs",
            one(if i.worker_up { 1.0 } else { 0.0 }),
        ),
        gauge(
            "worker_extension_ready",
            None,
            "1 when the extension exists in dbconn_guard.database, so the worker can guard (0: it waits for CREATE EXTENSION)",
            one(if i.worker_extension_ready { 1.0 } else { 0.0 }),
        ),
        gauge(
            "worker_can_act",
            None,
            "1 when the guard can act: its worker runs, the extension exists in its database, no dbconn_guard setting was refused, and its last check recorded every session it had to end (/healthz says why not)",
            one(if i.worker_can_act { 1.0 } else { 0.0 }),
        ),
        gauge(
            "audit_records_in_memory",
            None,
            "Termination records kept in shared memory (and the server log) because dbconn_guard.terminations could not be locked in time; written to it once it can be",
            one(i.audit_records_in_memory as f64),
        ),
        FamilyDef {
            name: "audit_records_lost",
            unit: None,
            kind: Kind::Counter,
            help: "Termination records that found no room in shared memory while dbconn_guard.terminations could not be locked: in the server log (and recent_terminations()) only, never in the table",
            samples: vec![(Vec::new(), i.audit_records_lost.max(0) as f64)],
        },
        gauge(
            "worker_last_cycle_duration",
            Some("seconds"),
            "Wall time of the worker's last check",
            one(i.worker_last_cycle_seconds),
        ),
        gauge(
            "health_status",
            None,
            "Each health() check: 0 ok, 1 warning, 2 critical",
            i.health
                .iter()
                .map(|(check, st)| {
                    let v = match st {
                        // a health check is never info
                        Status::Ok | Status::Info => 0.0,
                        Status::Warning => 1.0,
                        Status::Critical => 2.0,
                    };
                    (vec![label("check", check)], v)
                })
                .collect(),
        ),
        gauge(
            "in_recovery",
            None,
            "1 on a hot standby, 0 on a primary",
            one(if i.in_recovery { 1.0 } else { 0.0 }),
        ),
    ];
    let stamp = |name, help, t: Option<Micros>| FamilyDef {
        name,
        unit: Some("seconds"),
        kind: Kind::Gauge,
        help,
        samples: t.map(|t| one(unix_seconds(t))).unwrap_or_default(),
    };
    out.push(stamp(
        "oldest_lock_wait_start_timestamp",
        "When the oldest current lock wait began (Unix time; no sample when there is none)",
        i.oldest_lock_wait_start,
    ));
    out.push(stamp(
        "oldest_transaction_start_timestamp",
        "When the oldest open transaction of a client backend began (Unix time; no sample when there is none)",
        i.oldest_xact_start,
    ));
    out.push(stamp(
        "worker_last_error_timestamp",
        "When the worker last met an error (Unix time; no sample if never; worker_status().last_error says what)",
        i.worker_last_error,
    ));
    out.push(stamp(
        "worker_last_cycle_timestamp",
        "When the worker's last check began (Unix time; no sample before its first)",
        i.worker_last_cycle_start,
    ));
    out
}

/// The rows of `dbconn_guard.metrics()`.
pub fn rows(i: &Inputs) -> Vec<Row> {
    let mut out = Vec::new();
    for f in families(i) {
        let name = f.full_name();
        for (labels, value) in f.samples {
            out.push(Row {
                metric: name.clone(),
                labels,
                value,
                kind: f.kind.as_str(),
                help: f.help,
            });
        }
    }
    out
}

/// The OpenMetrics text exposition (`Content-Type: application/openmetrics-text;
/// version=1.0.0; charset=utf-8`), ending in `# EOF`.
pub fn exposition(i: &Inputs) -> String {
    let mut registry = Registry::with_prefix(PREFIX);
    for f in families(i) {
        let unit = f.unit.map(|u| match u {
            "seconds" => Unit::Seconds,
            other => Unit::Other(other.to_string()),
        });
        match f.kind {
            Kind::Gauge => {
                let fam: Family<Vec<(String, String)>, Gauge<f64, AtomicU64>> = Family::default();
                for (labels, v) in &f.samples {
                    fam.get_or_create(labels).set(*v);
                }
                match unit {
                    Some(u) => registry.register_with_unit(f.name, f.help, u, fam),
                    None => registry.register(f.name, f.help, fam),
                }
            }
            Kind::Counter => {
                let fam: Family<Vec<(String, String)>, Counter<f64, AtomicU64>> = Family::default();
                for (labels, v) in &f.samples {
                    fam.get_or_create(labels).inc_by(*v);
                }
                registry.register(f.name, f.help, fam)
            }
        }
    }
    let mut text = String::new();
    // writing into a String cannot fail
    let _ = encode(&mut text, &registry);
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{GroupName, GroupSample, StateCounts};

    fn inputs() -> Inputs {
        Inputs {
            sample: Sample {
                time: 0,
                clients: StateCounts {
                    active: 2,
                    idle: 5,
                    idle_in_transaction: 1,
                    idle_in_transaction_aborted: 0,
                    other_states: 0,
                },
                lock_waiters: 3,
                longest_lock_wait_s: 75.5,
                max_connections: 100,
                utilization_pct: 8.0,
                available_connections: 89,
                groups: vec![
                    GroupSample {
                        name: GroupName {
                            datname: Some("shop".into()),
                            usename: Some("web".into()),
                            // a hostile name: quotes, a backslash, a newline
                            application_name: Some("api\"}\n\\x".into()),
                        },
                        counts: StateCounts {
                            active: 2,
                            idle: 4,
                            ..Default::default()
                        },
                        other: false,
                    },
                    GroupSample {
                        name: GroupName::default(),
                        counts: StateCounts {
                            idle: 1,
                            idle_in_transaction: 1,
                            ..Default::default()
                        },
                        other: true,
                    },
                ],
                ..Default::default()
            },
            oldest_lock_wait_start: Some(UNIX_EPOCH + 1_700_000_000 * SECOND),
            terminations_by_rule: {
                let mut t = [0; RULES];
                t[Rule::IdleTimeout.index()] = 4;
                t[Rule::IdleInTransactionTimeout.index()] = 1;
                t[Rule::TransactionTimeout.index()] = 2;
                t
            },
            worker_up: true,
            health: vec![
                ("utilization", Status::Ok),
                ("lock_waits", Status::Critical),
            ],
            root_blockers: 1,
            blocked_by_roots: 3,
            largest_pileup: 3,
            ..Default::default()
        }
    }

    #[test]
    fn exposition_is_openmetrics_with_prometheus_names() {
        let text = exposition(&inputs());
        assert!(text.ends_with("# EOF\n"), "{text}");
        for line in [
            "# TYPE dbconn_guard_terminations counter",
            "dbconn_guard_terminations_total{rule=\"idle_timeout\"} 4.0",
            "dbconn_guard_utilization_ratio 0.08",
            "dbconn_guard_longest_lock_wait_seconds 75.5",
            "dbconn_guard_oldest_lock_wait_start_timestamp_seconds 1700000000.0",
            "dbconn_guard_health_status{check=\"lock_waits\"} 2.0",
            "dbconn_guard_worker_up 1.0",
            "dbconn_guard_client_backends{state=\"idle in transaction\"} 1.0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        // no sample for a time that does not exist
        assert!(!text.contains("dbconn_guard_oldest_transaction_start_timestamp_seconds "));
        // the hostile name is escaped: every sample line is one line, quotes balanced
        let api: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("dbconn_guard_connections{") && l.contains("shop"))
            .collect();
        assert_eq!(api.len(), 2, "{text}");
        assert!(
            api[0].contains(r#"application_name="api\"}\n\\x""#),
            "{}",
            api[0]
        );
        assert!(text
            .lines()
            .any(|l| l.starts_with("dbconn_guard_connections{") && l.contains("other=\"true\"")));
    }

    #[test]
    fn rows_carry_the_names_the_exposition_shows() {
        let i = inputs();
        let text = exposition(&i);
        let rows = rows(&i);
        assert!(rows.len() > 20);
        for r in &rows {
            assert!(
                text.lines()
                    .any(|l| l.starts_with(&format!("{}{{", r.metric))
                        || l.starts_with(&format!("{} ", r.metric))),
                "{} not in the exposition",
                r.metric
            );
        }
        // the states of one group add up to its counts; zero series are left out
        let conns: f64 = rows
            .iter()
            .filter(|r| r.metric == "dbconn_guard_connections")
            .map(|r| r.value)
            .sum();
        assert_eq!(conns, 8.0);
        assert_eq!(
            rows.iter()
                .filter(|r| r.metric == "dbconn_guard_connections")
                .count(),
            4
        );
    }
}

//! Health rules: a handful of checks a DBA looks at first, each `ok`, `warning` or `critical`.

use super::blocking::LockWait;
use super::durations::dur;
use super::session::{age_seconds, Snapshot};
use super::utilization::Utilization;

/// A check is `Ok`, `Warning` or `Critical` (never `Info`).
pub use super::status::Status;

/// Thresholds, from the `dbconn_guard.*` settings. Ages are in seconds; 0 turns an age check off.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Thresholds {
    pub warning_pct: f64,
    pub critical_pct: f64,
    pub idle_age: f64,
    pub idle_count: i64,
    pub idle_in_transaction_age: f64,
    pub lock_wait_warning: f64,
    pub lock_wait_critical: f64,
    pub xact_age_warning: f64,
    pub xact_age_critical: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            warning_pct: 80.0,
            critical_pct: 90.0,
            idle_age: 300.0,
            idle_count: 10,
            idle_in_transaction_age: 60.0,
            lock_wait_warning: 10.0,
            lock_wait_critical: 60.0,
            xact_age_warning: 300.0,
            xact_age_critical: 3600.0,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    pub value: f64,
    /// The threshold the status was judged against: the critical one once critical,
    /// otherwise the warning one.
    pub threshold: f64,
    pub detail: String,
}

/// `value` against a warning and a critical threshold (`critical <= 0` means no critical level;
/// a value must exceed a threshold, or reach it for `at_or_above`).
fn grade(value: f64, warning: f64, critical: f64, at_or_above: bool) -> (Status, f64) {
    let crosses = |t: f64| if at_or_above { value >= t } else { value > t };
    if critical > 0.0 && crosses(critical) {
        (Status::Critical, critical)
    } else if crosses(warning) {
        (Status::Warning, warning)
    } else {
        (Status::Ok, warning)
    }
}

/// Evaluates every check over one snapshot. `util` must come from the same snapshot;
/// `lock_waits` are the backends waiting for heavyweight locks.
pub fn evaluate(
    snapshot: &Snapshot,
    util: &Utilization,
    lock_waits: &[LockWait],
    t: &Thresholds,
) -> Vec<Check> {
    let now = snapshot.now;
    let mut checks = Vec::with_capacity(5);

    let (status, threshold) = grade(util.utilization_pct, t.warning_pct, t.critical_pct, true);
    checks.push(Check {
        name: "utilization",
        status,
        value: util.utilization_pct,
        threshold,
        detail: format!(
            "{} of {} connections in use ({} available to ordinary roles); warning at {}%, critical at {}%{}",
            util.client_backends,
            util.limits.max_connections,
            util.available_connections,
            t.warning_pct,
            t.critical_pct,
            hidden_note(util.hidden_backends),
        ),
    });

    let old_idle: Vec<_> = snapshot
        .clients()
        .filter(|b| b.has_state("idle") && b.state_age(now) > t.idle_age)
        .collect();
    let (status, threshold) = grade(old_idle.len() as f64, t.idle_count as f64, 0.0, false);
    checks.push(Check {
        name: "idle_sessions",
        status,
        value: old_idle.len() as f64,
        threshold,
        detail: format!(
            "{} sessions idle for more than {}; warning above {}",
            old_idle.len(),
            dur(t.idle_age),
            t.idle_count
        ),
    });

    let in_xact: Vec<_> = snapshot
        .clients()
        .filter(|b| {
            (b.has_state("idle in transaction") || b.has_state("idle in transaction (aborted)"))
                && b.state_age(now) > t.idle_in_transaction_age
        })
        .collect();
    let oldest = in_xact.iter().map(|b| b.state_age(now)).fold(0.0, f64::max);
    let status = if in_xact.is_empty() {
        Status::Ok
    } else {
        Status::Warning
    };
    checks.push(Check {
        name: "idle_in_transaction",
        status,
        value: in_xact.len() as f64,
        threshold: 0.0,
        detail: format!(
            "{} sessions idle in transaction for more than {}{}",
            in_xact.len(),
            dur(t.idle_in_transaction_age),
            if in_xact.is_empty() {
                String::new()
            } else {
                format!(
                    " (longest {}, pids {})",
                    dur(oldest),
                    pid_list(&in_xact.iter().map(|b| b.pid).collect::<Vec<_>>())
                )
            }
        ),
    });

    // how long each waiter has waited for its lock (pg_locks.waitstart; the statement's start
    // when the lock manager has not stamped it yet)
    let waits: Vec<(i32, f64)> = lock_waits
        .iter()
        .map(|w| {
            let since = w.wait_start.or_else(|| {
                snapshot
                    .backends
                    .iter()
                    .find(|b| b.pid == w.pid)
                    .and_then(|b| b.state_change)
            });
            (w.pid, age_seconds(now, since).unwrap_or(0.0))
        })
        .collect();
    let longest_wait = waits.iter().map(|w| w.1).fold(0.0, f64::max);
    let (status, threshold) = if waits.is_empty() {
        (Status::Ok, t.lock_wait_warning)
    } else {
        grade(
            longest_wait,
            t.lock_wait_warning,
            t.lock_wait_critical,
            false,
        )
    };
    let waiter_pids: Vec<i32> = waits.iter().map(|w| w.0).collect();
    checks.push(Check {
        name: "lock_waits",
        status,
        value: waits.len() as f64,
        threshold,
        detail: format!(
            "{} sessions waiting on locks, longest for {}; warning after {}, critical after {}{}",
            waits.len(),
            dur(longest_wait),
            dur(t.lock_wait_warning),
            dur(t.lock_wait_critical),
            if waits.is_empty() {
                String::new()
            } else {
                format!(
                    " (pids {}; see dbconn_guard.blocking_chains())",
                    pid_list(&waiter_pids)
                )
            }
        ),
    });

    let oldest_xact = snapshot
        .clients()
        .filter_map(|b| b.xact_age(now).map(|a| (a, b.pid)))
        .max_by(|a, b| a.0.total_cmp(&b.0));
    let age = oldest_xact.map_or(0.0, |(a, _)| a);
    let (status, threshold) = if t.xact_age_warning <= 0.0 && t.xact_age_critical <= 0.0 {
        (Status::Ok, 0.0)
    } else {
        let warning = if t.xact_age_warning > 0.0 {
            t.xact_age_warning
        } else {
            f64::INFINITY
        };
        grade(age, warning, t.xact_age_critical, false)
    };
    checks.push(Check {
        name: "oldest_transaction",
        status,
        value: age,
        threshold,
        detail: match oldest_xact {
            Some((a, pid)) => format!(
                "oldest open transaction: pid {pid}, {}; warning after {}, critical after {}",
                dur(a),
                dur(t.xact_age_warning),
                dur(t.xact_age_critical)
            ),
            None => "no open transactions".to_string(),
        },
    });
    checks
}

fn hidden_note(hidden: i64) -> String {
    if hidden > 0 {
        format!("; {hidden} backends hidden from this role (grant pg_read_all_stats or pg_monitor to count them)")
    } else {
        String::new()
    }
}

fn pid_list(all: &[i32]) -> String {
    let mut pids: Vec<String> = all.iter().take(10).map(|p| p.to_string()).collect();
    if all.len() > 10 {
        pids.push("...".into());
    }
    pids.join(",")
}

/// The worst status of all checks (`ok` when there are none).
pub fn worst(checks: &[Check]) -> Status {
    checks.iter().map(|c| c.status).max().unwrap_or(Status::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::fixtures::*;
    use crate::session::SECOND;
    use crate::utilization::{utilization, Limits};

    fn run(backends: Vec<crate::session::Backend>, max: i32, t: &Thresholds) -> Vec<Check> {
        run_waits(backends, &[], max, t)
    }

    fn run_waits(
        backends: Vec<crate::session::Backend>,
        waits: &[LockWait],
        max: i32,
        t: &Thresholds,
    ) -> Vec<Check> {
        let snap = snapshot(backends);
        let limits = Limits {
            max_connections: max,
            superuser_reserved_connections: 3,
            reserved_connections: None,
        };
        let u = utilization(&snap, limits);
        evaluate(&snap, &u, waits, t)
    }

    fn get<'a>(cs: &'a [Check], name: &str) -> &'a Check {
        cs.iter().find(|c| c.name == name).unwrap()
    }

    #[test]
    fn quiet_server_is_ok() {
        let cs = run(vec![client(1, "active", 0)], 100, &Thresholds::default());
        assert_eq!(cs.len(), 5);
        assert_eq!(worst(&cs), Status::Ok, "{cs:#?}");
        assert_eq!(get(&cs, "utilization").value, 1.0);
    }

    #[test]
    fn utilization_grades_at_thresholds() {
        let t = Thresholds::default();
        let clients = |n| (1..=n).map(|p| client(p, "active", 0)).collect::<Vec<_>>();
        assert_eq!(
            get(&run(clients(79), 100, &t), "utilization").status,
            Status::Ok
        );
        let c = run(clients(80), 100, &t);
        assert_eq!(
            (
                get(&c, "utilization").status,
                get(&c, "utilization").threshold
            ),
            (Status::Warning, 80.0)
        );
        let c = run(clients(90), 100, &t);
        assert_eq!(
            (
                get(&c, "utilization").status,
                get(&c, "utilization").threshold
            ),
            (Status::Critical, 90.0)
        );
        assert_eq!(worst(&c), Status::Critical);
    }

    #[test]
    fn idle_sessions_warn_above_count() {
        let t = Thresholds {
            idle_count: 2,
            ..Default::default()
        };
        let old = |p| client(p, "idle", 301);
        assert_eq!(
            get(
                &run(vec![old(1), old(2), client(3, "idle", 10)], 100, &t),
                "idle_sessions"
            )
            .status,
            Status::Ok
        );
        let c = run(vec![old(1), old(2), old(3)], 100, &t);
        assert_eq!(get(&c, "idle_sessions").status, Status::Warning);
        assert_eq!(get(&c, "idle_sessions").value, 3.0);
    }

    #[test]
    fn idle_in_transaction_warns_and_names_pids() {
        let t = Thresholds::default();
        let c = run(
            vec![
                client(7, "idle in transaction (aborted)", 61),
                client(8, "idle in transaction", 5),
            ],
            100,
            &t,
        );
        let check = get(&c, "idle_in_transaction");
        assert_eq!((check.status, check.value), (Status::Warning, 1.0));
        assert!(check.detail.contains("pids 7"), "{}", check.detail);
    }

    #[test]
    fn lock_waits_grade_by_longest_wait() {
        let t = Thresholds::default();
        let waiting = |pid, waited_s: i64| LockWait {
            pid,
            wait_start: Some(NOW - waited_s * SECOND),
            ..Default::default()
        };
        let status =
            |waits: &[LockWait]| get(&run_waits(vec![], waits, 100, &t), "lock_waits").status;
        assert_eq!(status(&[]), Status::Ok);
        assert_eq!(status(&[waiting(1, 5)]), Status::Ok);
        assert_eq!(status(&[waiting(1, 11)]), Status::Warning);
        let c = run_waits(vec![], &[waiting(1, 61), waiting(2, 1)], 100, &t);
        let check = get(&c, "lock_waits");
        assert_eq!((check.status, check.value), (Status::Critical, 2.0));
        assert!(check.detail.contains("pids 1,2"), "{}", check.detail);
    }

    #[test]
    fn a_wait_not_yet_stamped_counts_from_the_statement_start() {
        let t = Thresholds::default();
        let unstamped = LockWait {
            pid: 3,
            wait_start: None,
            ..Default::default()
        };
        let c = run_waits(vec![client(3, "active", 20)], &[unstamped], 100, &t);
        assert_eq!(get(&c, "lock_waits").status, Status::Warning);
    }

    #[test]
    fn oldest_transaction_grades_and_can_be_turned_off() {
        let mut b = client(4, "active", 1);
        b.xact_start = Some(NOW - 4000 * SECOND);
        let c = run(vec![b.clone()], 100, &Thresholds::default());
        let check = get(&c, "oldest_transaction");
        assert_eq!(
            (check.status, check.value, check.threshold),
            (Status::Critical, 4000.0, 3600.0)
        );
        assert!(check.detail.contains("pid 4"));
        let off = Thresholds {
            xact_age_warning: 0.0,
            xact_age_critical: 0.0,
            ..Default::default()
        };
        assert_eq!(
            get(&run(vec![b.clone()], 100, &off), "oldest_transaction").status,
            Status::Ok
        );
        let warn_only = Thresholds {
            xact_age_critical: 0.0,
            ..Default::default()
        };
        assert_eq!(
            get(&run(vec![b], 100, &warn_only), "oldest_transaction").status,
            Status::Warning
        );
    }

    #[test]
    fn statuses_order_and_names() {
        assert!(Status::Critical > Status::Warning && Status::Warning > Status::Ok);
        assert_eq!(worst(&[]), Status::Ok);
        assert_eq!(Status::Warning.as_str(), "warning");
    }
}

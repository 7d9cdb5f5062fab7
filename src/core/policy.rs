//! The termination policy: which sessions the guard ends, why, and when it must look again.
//!
//! Pure: given a snapshot, the server's utilization and the policy, `plan` returns the sessions
//! to end (most urgent first, at most `max_terminations_per_cycle`), and the earliest moment a
//! further session can cross its timeout, so the worker can sleep exactly until then.

use super::patterns::PatternList;
use super::session::{Backend, Micros, Name, Snapshot};

pub const IDLE: &str = "idle";
pub const IDLE_IN_TRANSACTION: &str = "idle in transaction";
pub const IDLE_IN_TRANSACTION_ABORTED: &str = "idle in transaction (aborted)";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rule {
    /// `idle in transaction` or `idle in transaction (aborted)` past `idle_in_transaction_timeout`.
    IdleInTransactionTimeout,
    /// `idle` past `idle_timeout` (while utilization is at or above `min_utilization_pct`).
    IdleTimeout,
    /// `dbconn_guard.terminate_idle()`, called by a DBA.
    Manual,
}

impl Rule {
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::IdleInTransactionTimeout => "idle_in_transaction_timeout",
            Rule::IdleTimeout => "idle_timeout",
            Rule::Manual => "manual",
        }
    }
}

/// Why a session is never ended, whatever its age.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protection {
    NotAClientBackend,
    OwnSession,
    Superuser,
    ExcludedDatabase,
    ExcludedUser,
    ExcludedApplication,
    NotIncludedApplication,
}

impl Protection {
    pub fn as_str(self) -> &'static str {
        match self {
            Protection::NotAClientBackend => "not a client backend",
            Protection::OwnSession => "own session",
            Protection::Superuser => "superuser (dbconn_guard.terminate_superusers is off)",
            Protection::ExcludedDatabase => "database in dbconn_guard.exclude_databases",
            Protection::ExcludedUser => "user in dbconn_guard.exclude_users",
            Protection::ExcludedApplication => "application in dbconn_guard.exclude_applications",
            Protection::NotIncludedApplication => {
                "application not in dbconn_guard.include_applications"
            }
        }
    }
}

/// Who may be ended at all: the protections shared by the worker and `terminate_idle()`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scope {
    pub include_applications: PatternList,
    pub exclude_applications: PatternList,
    pub exclude_users: PatternList,
    pub exclude_databases: PatternList,
    pub terminate_superusers: bool,
}

impl Scope {
    /// `None` when the session may be ended; otherwise the first protection that applies.
    pub fn protection(&self, b: &Backend, own_pid: i32) -> Option<Protection> {
        if !b.is_client() {
            return Some(Protection::NotAClientBackend);
        }
        if b.pid == own_pid {
            return Some(Protection::OwnSession);
        }
        if b.is_superuser != Some(false) && !self.terminate_superusers {
            return Some(Protection::Superuser);
        }
        fn s(v: &Option<Name>) -> &str {
            v.as_deref().unwrap_or("")
        }
        if !self.exclude_databases.is_empty() && self.exclude_databases.matches(s(&b.datname)) {
            return Some(Protection::ExcludedDatabase);
        }
        if !self.exclude_users.is_empty() && self.exclude_users.matches(s(&b.usename)) {
            return Some(Protection::ExcludedUser);
        }
        let app = s(&b.application_name);
        if !self.exclude_applications.is_empty() && self.exclude_applications.matches(app) {
            return Some(Protection::ExcludedApplication);
        }
        if !self.include_applications.is_empty() && !self.include_applications.matches(app) {
            return Some(Protection::NotIncludedApplication);
        }
        None
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub scope: Scope,
    /// Microseconds; 0 = plain idle sessions are never ended.
    pub idle_timeout: Micros,
    /// Microseconds; 0 = idle-in-transaction sessions are never ended.
    pub idle_in_transaction_timeout: Micros,
    /// Plain idle sessions are ended only while utilization is at or above this percentage.
    pub min_utilization_pct: f64,
    pub max_terminations_per_cycle: usize,
}

/// A session to end, with the facts the audit row and the re-check need.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    pub backend: Backend,
    pub rule: Rule,
    /// When its timeout expired.
    pub deadline: Micros,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Most urgent first: idle in transaction before idle, then longest overdue.
    pub targets: Vec<Target>,
    /// Expired sessions left for the next cycle by `max_terminations_per_cycle`.
    pub deferred: usize,
    /// Earliest future moment another session's timeout expires (`None`: nothing pending).
    /// When sessions were deferred this is `snapshot.now`: look again at once.
    pub next_deadline: Option<Micros>,
    /// Client backends examined.
    pub examined: usize,
}

/// The timeout rule that governs a session in `state`, if any, under `policy`.
fn rule_for(state: Option<&str>, policy: &Policy, idle_allowed: bool) -> Option<(Rule, Micros)> {
    match state? {
        IDLE_IN_TRANSACTION | IDLE_IN_TRANSACTION_ABORTED
            if policy.idle_in_transaction_timeout > 0 =>
        {
            Some((
                Rule::IdleInTransactionTimeout,
                policy.idle_in_transaction_timeout,
            ))
        }
        IDLE if policy.idle_timeout > 0 && idle_allowed => {
            Some((Rule::IdleTimeout, policy.idle_timeout))
        }
        _ => None,
    }
}

/// The longest the worker may sleep between checks: `naptime`, but never longer than a
/// timeout in force. A session entering a state right after a check is then seen before its
/// deadline, and the worker can wake exactly at it, however short the timeout.
pub fn longest_sleep(naptime: Micros, policy: &Policy) -> Micros {
    [policy.idle_timeout, policy.idle_in_transaction_timeout]
        .into_iter()
        .filter(|&t| t > 0)
        .fold(naptime, Micros::min)
}

pub fn plan(snapshot: &Snapshot, utilization_pct: f64, policy: &Policy, own_pid: i32) -> Plan {
    let now = snapshot.now;
    let idle_allowed = utilization_pct >= policy.min_utilization_pct;
    let mut out = Plan::default();
    let mut expired: Vec<Target> = Vec::new();
    for b in snapshot.clients() {
        out.examined += 1;
        let Some((rule, timeout)) = rule_for(b.state, policy, idle_allowed) else {
            continue;
        };
        let Some(since) = b.state_change else {
            continue;
        };
        if policy.scope.protection(b, own_pid).is_some() {
            continue;
        }
        let deadline = since.saturating_add(timeout);
        if deadline <= now {
            expired.push(Target {
                backend: b.clone(),
                rule,
                deadline,
            });
        } else {
            out.next_deadline = Some(
                out.next_deadline
                    .map_or(deadline, |d: Micros| d.min(deadline)),
            );
        }
    }
    expired.sort_by(|a, b| {
        a.rule
            .cmp(&b.rule)
            .then(a.deadline.cmp(&b.deadline))
            .then(a.backend.pid.cmp(&b.backend.pid))
    });
    if expired.len() > policy.max_terminations_per_cycle {
        out.deferred = expired.len() - policy.max_terminations_per_cycle;
        expired.truncate(policy.max_terminations_per_cycle);
        out.next_deadline = Some(now);
    }
    out.targets = expired;
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::session::fixtures::*;
    use crate::core::session::SECOND;

    fn policy() -> Policy {
        Policy {
            scope: Scope::default(),
            idle_timeout: 600 * SECOND,
            idle_in_transaction_timeout: 300 * SECOND,
            min_utilization_pct: 0.0,
            max_terminations_per_cycle: 100,
        }
    }

    fn pids(p: &Plan) -> Vec<i32> {
        p.targets.iter().map(|t| t.backend.pid).collect()
    }

    #[test]
    fn ends_only_sessions_past_their_state_timeout() {
        let snap = snapshot(vec![
            client(1, "idle", 601),
            client(2, "idle", 599),
            client(3, "idle in transaction", 300),
            client(4, "idle in transaction (aborted)", 301),
            client(5, "active", 100_000),
            client(6, "fastpath function call", 100_000),
        ]);
        let p = plan(&snap, 50.0, &policy(), 0);
        assert_eq!(
            pids(&p),
            vec![4, 3, 1],
            "idle in transaction first, then longest overdue"
        );
        assert_eq!(p.targets[0].rule, Rule::IdleInTransactionTimeout);
        assert_eq!(p.targets[2].rule, Rule::IdleTimeout);
        assert_eq!(p.examined, 6);
        assert_eq!(
            p.next_deadline,
            Some(NOW + SECOND),
            "pid 2 crosses in one second"
        );
    }

    #[test]
    fn zero_turns_a_timeout_off() {
        let snap = snapshot(vec![
            client(1, "idle", 10_000),
            client(2, "idle in transaction", 10_000),
        ]);
        let p = plan(
            &snap,
            0.0,
            &Policy {
                idle_timeout: 0,
                ..policy()
            },
            0,
        );
        assert_eq!(pids(&p), vec![2]);
        let p = plan(
            &snap,
            0.0,
            &Policy {
                idle_in_transaction_timeout: 0,
                ..policy()
            },
            0,
        );
        assert_eq!(pids(&p), vec![1]);
    }

    #[test]
    fn idle_sessions_wait_for_min_utilization_but_idle_in_transaction_does_not() {
        let snap = snapshot(vec![
            client(1, "idle", 10_000),
            client(2, "idle in transaction", 10_000),
        ]);
        let pol = Policy {
            min_utilization_pct: 80.0,
            ..policy()
        };
        assert_eq!(pids(&plan(&snap, 79.9, &pol, 0)), vec![2]);
        assert_eq!(pids(&plan(&snap, 80.0, &pol, 0)), vec![2, 1]);
    }

    #[test]
    fn protected_sessions_survive() {
        let old = |pid| client(pid, "idle in transaction", 10_000);
        let mut superuser = old(1);
        superuser.is_superuser = Some(true);
        let mut unknown_role = old(2);
        unknown_role.is_superuser = None;
        let mut walsender = old(3);
        walsender.backend_type = Some("walsender".into());
        let mut worker = old(4);
        worker.backend_type = Some("dbconn_guard".into());
        let mut hidden = old(5);
        hidden.backend_type = None;
        let mut excluded_db = old(6);
        excluded_db.datname = Some("critical_db".into());
        let mut excluded_user = old(7);
        excluded_user.usename = Some("replicator".into());
        let mut excluded_app = old(8);
        excluded_app.application_name = Some("pg_dump".into());
        let own = old(9);
        let plain = old(10);
        let snap = snapshot(vec![
            superuser,
            unknown_role,
            walsender,
            worker,
            hidden,
            excluded_db,
            excluded_user,
            excluded_app,
            own,
            plain,
        ]);
        let mut pol = policy();
        pol.scope.exclude_databases = PatternList::parse("critical_*").unwrap();
        pol.scope.exclude_users = PatternList::parse("replicator").unwrap();
        pol.scope.exclude_applications = PatternList::parse("pg_dump*, psql").unwrap();
        assert_eq!(pids(&plan(&snap, 0.0, &pol, 9)), vec![10]);
        pol.scope.terminate_superusers = true;
        assert_eq!(pids(&plan(&snap, 0.0, &pol, 9)), vec![1, 2, 10]);
    }

    #[test]
    fn include_list_limits_the_scope() {
        let mut batch = client(2, "idle", 10_000);
        batch.application_name = Some("batch-7".into());
        let mut no_app = client(3, "idle", 10_000);
        no_app.application_name = Some("".into());
        let snap = snapshot(vec![client(1, "idle", 10_000), batch, no_app]);
        let mut pol = policy();
        pol.scope.include_applications = PatternList::parse("batch-*").unwrap();
        assert_eq!(pids(&plan(&snap, 0.0, &pol, 0)), vec![2]);
        let b = &snap.backends[0];
        assert_eq!(
            pol.scope.protection(b, 0),
            Some(Protection::NotIncludedApplication)
        );
    }

    #[test]
    fn the_cap_defers_the_rest_and_asks_for_an_immediate_recheck() {
        let snap = snapshot(
            (1..=50)
                .map(|p| client(p, "idle", 1000 + i64::from(p)))
                .collect(),
        );
        let pol = Policy {
            max_terminations_per_cycle: 10,
            ..policy()
        };
        let p = plan(&snap, 0.0, &pol, 0);
        assert_eq!(p.targets.len(), 10);
        assert_eq!(p.deferred, 40);
        assert_eq!(
            pids(&p),
            (41..=50).rev().collect::<Vec<_>>(),
            "longest overdue first"
        );
        assert_eq!(p.next_deadline, Some(NOW));
    }

    #[test]
    fn sleep_never_outlasts_a_timeout() {
        let p = policy();
        assert_eq!(longest_sleep(10 * SECOND, &p), 10 * SECOND);
        let short = Policy {
            idle_in_transaction_timeout: 2 * SECOND,
            ..policy()
        };
        assert_eq!(longest_sleep(10 * SECOND, &short), 2 * SECOND);
        let off = Policy {
            idle_in_transaction_timeout: 0,
            idle_timeout: 0,
            ..policy()
        };
        assert_eq!(longest_sleep(10 * SECOND, &off), 10 * SECOND);
    }

    #[test]
    fn nothing_pending_means_no_deadline() {
        let p = plan(&snapshot(vec![client(1, "active", 5)]), 0.0, &policy(), 0);
        assert!(p.targets.is_empty());
        assert_eq!(p.next_deadline, None);
    }

    #[test]
    fn below_min_utilization_idle_sessions_set_no_deadline() {
        let p = plan(
            &snapshot(vec![client(1, "idle", 5)]),
            10.0,
            &Policy {
                min_utilization_pct: 50.0,
                ..policy()
            },
            0,
        );
        assert_eq!(p.next_deadline, None);
    }
}

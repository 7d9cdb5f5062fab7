//! The guard's rules, one row each: what a rule is called (in the audit table, the metrics and
//! the log), its slot in per-rule counters, the settings that give it a timeout, its column in
//! the history, what acting on it does, and which gates apply to it.
//!
//! Everything that lists rules derives from `RULE_TABLE`: the names, the counters (`ByRule`),
//! the metrics' `rule` labels, the worker's announcement, the short-timeout warnings, the
//! longest sleep. The audit table's `CHECK` list and the history view's columns are SQL; the
//! integration test `history.rs` (`the_audit_check_list_and_the_history_columns_are_the_rule_tables`) checks them against this table on a real server. A new rule is
//! one variant, one row here, its planning function in `policy`, and its tests.

/// A rule the guard acts by. The discriminant is the rule's row in `RULE_TABLE` and its slot in
/// per-rule counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rule {
    /// `idle` past `idle_timeout` (while utilization is at or above `min_utilization_pct`).
    IdleTimeout = 0,
    /// `idle in transaction` or `idle in transaction (aborted)` past `idle_in_transaction_timeout`.
    IdleInTransactionTimeout = 1,
    /// A transaction older than `transaction_timeout`, ended at a moment it is idle in it
    /// (never while a statement runs).
    TransactionTimeout = 2,
    /// `dbconn_guard.terminate_idle()`, called by a DBA.
    Manual = 3,
    /// The root of a lock pile-up, idle in transaction (or aborted), holding up at least
    /// `blocker_min_waiters` waits that have lasted longer than `blocker_timeout`: terminated.
    BlockerTimeout = 4,
    /// The same, for a root running a statement, while `cancel_active_blockers` is on: its
    /// statement is cancelled (never the session ended), once per statement.
    BlockerCancel = 5,
    /// `dbconn_guard.cancel_statements()`, called by a DBA: the statement cancelled, the
    /// session kept.
    ManualCancel = 6,
    /// A statement waiting in a lock queue (a relation lock: ALTER TABLE, VACUUM FULL,
    /// TRUNCATE, ... behind a long transaction) that holds up at least `lock_queue_min_waiters`
    /// sessions whose waits have lasted `lock_queue_timeout`: the statement is cancelled (the
    /// client can retry), never the session ended.
    LockQueueCancel = 7,
    /// An active root whose statement was cancelled under `blocker_cancel` and that still holds
    /// up a pile-up past `blocker_timeout` `blocker_terminate_after` after that first cancel (a
    /// client that re-issues its statement after every cancel, a statement that ignores it):
    /// the session is ended.
    BlockerTerminate = 8,
    /// An application or a role holding more sessions than its budget
    /// (`connection_budgets`): its idle sessions, longest idle first, down to the budget
    /// (idle in transaction only with `connection_budget_idle_in_transaction`; never a
    /// session idle for less than `connection_budget_min_idle`, never an active one).
    Budget = 9,
}

/// How many rules there are (per-rule counters).
pub const RULES: usize = RULE_TABLE.len();

/// What acting on a rule does to the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// `pg_terminate_backend`: the session ends.
    EndSession,
    /// `pg_cancel_backend`: the statement is cancelled, the session stays.
    CancelStatement,
}

/// What the last look before the signal checks, besides the session's own status entry (the
/// same session, in the same state since the same moment, still unprotected).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LastLook {
    /// Nothing more.
    Session,
    /// A fresh read of the lock graph: it is still the root of a pile-up past the rule.
    StillTheRoot,
    /// A fresh read of the lock graph: it still waits in a lock queue, holding up sessions
    /// past the rule.
    StillQueued,
}

/// Who sets a rule off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// The worker, by a timeout (`timeout_setting`, replaced per application or user by the
    /// first match of `overrides_setting`).
    Worker {
        timeout_setting: &'static str,
        overrides_setting: &'static str,
    },
    /// A DBA's call of a function (`terminate_idle()`, `cancel_statements()`).
    Manual,
    /// The worker, by a count: a group holding more sessions than `budgets_setting` gives it,
    /// whose sessions have been idle for `min_idle_setting`.
    Budget {
        budgets_setting: &'static str,
        min_idle_setting: &'static str,
    },
}

/// One rule.
#[derive(Clone, Copy, Debug)]
pub struct RuleRow {
    pub rule: Rule,
    /// Which goes first when a check finds more due than it may act on (lower first): a
    /// pile-up's root before a session that only wastes a slot, and a transaction before a
    /// plain idle session, whose end only frees a slot.
    pub urgency: u8,
    /// In the audit table's `rule` column, the metrics' `rule` label and the log.
    pub name: &'static str,
    /// The rule's column of the `history` view: what it did since the previous sample.
    pub history_column: &'static str,
    pub trigger: Trigger,
    pub effect: Effect,
    /// What the last look checks (the root-blocker rules: that it still blocks others).
    pub last_look: LastLook,
    /// Plain idle sessions: acted on only while utilization is at or above
    /// `min_utilization_pct`.
    pub utilization_gate: bool,
    /// The guard's protections (superusers unless allowed, client tools, the exclusion and
    /// inclusion lists, its own session, non-client backends) apply. Every rule says yes: the
    /// column is there so that a rule that would not must say so here.
    pub protections: bool,
    /// What a timeout under `SHORT_TIMEOUT` ends, for the warning (None: no warning for the
    /// plain timeout, as for the root-blocker rule, whose short timeouts are its purpose).
    pub short_timeout_ends: Option<&'static str>,
}

/// The rules, in the order of `Rule`'s discriminants.
pub const RULE_TABLE: [RuleRow; 10] = [
    RuleRow {
        rule: Rule::IdleTimeout,
        urgency: 6,
        name: "idle_timeout",
        history_column: "terminated_idle_timeout",
        trigger: Trigger::Worker {
            timeout_setting: "dbconn_guard.idle_timeout",
            overrides_setting: "dbconn_guard.idle_timeout_overrides",
        },
        effect: Effect::EndSession,
        last_look: LastLook::Session,
        utilization_gate: true,
        protections: true,
        short_timeout_ends: Some("pooled connections between two uses"),
    },
    RuleRow {
        rule: Rule::IdleInTransactionTimeout,
        urgency: 4,
        name: "idle_in_transaction_timeout",
        history_column: "terminated_idle_in_transaction_timeout",
        trigger: Trigger::Worker {
            timeout_setting: "dbconn_guard.idle_in_transaction_timeout",
            overrides_setting: "dbconn_guard.idle_in_transaction_timeout_overrides",
        },
        effect: Effect::EndSession,
        last_look: LastLook::Session,
        utilization_gate: false,
        protections: true,
        short_timeout_ends: Some("transactions that wait on their client between statements"),
    },
    RuleRow {
        rule: Rule::TransactionTimeout,
        urgency: 5,
        name: "transaction_timeout",
        history_column: "terminated_transaction_timeout",
        trigger: Trigger::Worker {
            timeout_setting: "dbconn_guard.transaction_timeout",
            overrides_setting: "dbconn_guard.transaction_timeout_overrides",
        },
        effect: Effect::EndSession,
        last_look: LastLook::Session,
        utilization_gate: false,
        protections: true,
        short_timeout_ends: Some("ordinary transactions"),
    },
    RuleRow {
        rule: Rule::Manual,
        urgency: 7,
        name: "manual",
        history_column: "terminated_manual",
        trigger: Trigger::Manual,
        effect: Effect::EndSession,
        last_look: LastLook::Session,
        utilization_gate: false,
        protections: true,
        short_timeout_ends: None,
    },
    RuleRow {
        rule: Rule::BlockerTimeout,
        urgency: 1,
        name: "blocker_timeout",
        history_column: "terminated_blocker_timeout",
        trigger: Trigger::Worker {
            timeout_setting: "dbconn_guard.blocker_timeout",
            overrides_setting: "dbconn_guard.blocker_timeout_overrides",
        },
        effect: Effect::EndSession,
        last_look: LastLook::StillTheRoot,
        utilization_gate: false,
        protections: true,
        short_timeout_ends: None,
    },
    RuleRow {
        rule: Rule::BlockerCancel,
        urgency: 3,
        name: "blocker_cancel",
        history_column: "cancelled_blocker_statements",
        // the root-blocker rule's own timeout, for a root running a statement
        trigger: Trigger::Worker {
            timeout_setting: "dbconn_guard.blocker_timeout",
            overrides_setting: "dbconn_guard.blocker_timeout_overrides",
        },
        effect: Effect::CancelStatement,
        last_look: LastLook::StillTheRoot,
        utilization_gate: false,
        protections: true,
        short_timeout_ends: None,
    },
    RuleRow {
        rule: Rule::ManualCancel,
        urgency: 8,
        name: "manual_cancel",
        history_column: "cancelled_manual_statements",
        trigger: Trigger::Manual,
        effect: Effect::CancelStatement,
        last_look: LastLook::Session,
        utilization_gate: false,
        protections: true,
        short_timeout_ends: None,
    },
    RuleRow {
        rule: Rule::LockQueueCancel,
        // a cancel that lets a queue of sessions go, before any session is ended
        urgency: 0,
        name: "lock_queue_cancel",
        history_column: "cancelled_lock_queue_statements",
        trigger: Trigger::Worker {
            timeout_setting: "dbconn_guard.lock_queue_timeout",
            overrides_setting: "dbconn_guard.lock_queue_timeout_overrides",
        },
        effect: Effect::CancelStatement,
        last_look: LastLook::StillQueued,
        utilization_gate: false,
        protections: true,
        short_timeout_ends: None,
    },
    RuleRow {
        rule: Rule::BlockerTerminate,
        urgency: 2,
        name: "blocker_terminate",
        history_column: "terminated_active_blockers",
        // the root-blocker rule's overrides: an override of 0 spares a root from the family
        trigger: Trigger::Worker {
            timeout_setting: "dbconn_guard.blocker_terminate_after",
            overrides_setting: "dbconn_guard.blocker_timeout_overrides",
        },
        effect: Effect::EndSession,
        last_look: LastLook::StillTheRoot,
        utilization_gate: false,
        protections: true,
        short_timeout_ends: None,
    },
    RuleRow {
        rule: Rule::Budget,
        // it frees slots, as the idle timeout does: after everything that holds up work
        urgency: 9,
        name: "budget",
        history_column: "terminated_budget",
        trigger: Trigger::Budget {
            budgets_setting: "dbconn_guard.connection_budgets",
            min_idle_setting: "dbconn_guard.connection_budget_min_idle",
        },
        effect: Effect::EndSession,
        last_look: LastLook::Session,
        utilization_gate: true,
        protections: true,
        short_timeout_ends: None,
    },
];

impl Rule {
    /// Every rule, in the order of `index`.
    pub const ALL: [Rule; RULES] = {
        let mut all = [Rule::IdleTimeout; RULES];
        let mut i = 0;
        while i < RULES {
            all[i] = RULE_TABLE[i].rule;
            i += 1;
        }
        all
    };

    /// Its row of `RULE_TABLE`.
    pub const fn row(self) -> &'static RuleRow {
        &RULE_TABLE[self as usize]
    }

    /// Its name: the audit table's `rule`, the metrics' label.
    pub const fn as_str(self) -> &'static str {
        self.row().name
    }

    /// Its slot in per-rule counters (`RULES` long).
    pub const fn index(self) -> usize {
        self as usize
    }

    /// A rule of the root-blocker family (acted on only while the session still blocks).
    pub fn is_blocker_rule(self) -> bool {
        self.row().last_look == LastLook::StillTheRoot
    }

    /// Whether acting on it cancels the session's statement instead of ending the session.
    pub fn cancels(self) -> bool {
        self.row().effect == Effect::CancelStatement
    }

    /// The rule named `name` (as the audit table writes it).
    pub fn named(name: &str) -> Option<Rule> {
        RULE_TABLE.iter().find(|r| r.name == name).map(|r| r.rule)
    }
}

/// The worker's timeout settings, once each (the root-blocker rule's two effects share one),
/// with the rule that carries each.
pub fn timeout_settings() -> Vec<(&'static str, &'static str, Rule)> {
    let mut out: Vec<(&'static str, &'static str, Rule)> = Vec::new();
    for r in &RULE_TABLE {
        if let Trigger::Worker {
            timeout_setting,
            overrides_setting,
        } = r.trigger
        {
            if !out.iter().any(|(t, _, _)| *t == timeout_setting) {
                out.push((timeout_setting, overrides_setting, r.rule));
            }
        }
    }
    out
}

/// The worker's overrides settings, once each, with the first rule that reads each.
pub fn overrides_settings() -> Vec<(&'static str, Rule)> {
    let mut out: Vec<(&'static str, Rule)> = Vec::new();
    for (_, o, r) in timeout_settings() {
        if !out.iter().any(|(x, _)| *x == o) {
            out.push((o, r));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_in_the_order_of_the_rules_and_names_each_once() {
        for (i, r) in RULE_TABLE.iter().enumerate() {
            assert_eq!(r.rule as usize, i, "{r:?}");
            assert_eq!(Rule::ALL[i], r.rule);
            assert_eq!(Rule::named(r.name), Some(r.rule));
        }
        let mut names: Vec<&str> = RULE_TABLE.iter().map(|r| r.name).collect();
        let mut columns: Vec<&str> = RULE_TABLE.iter().map(|r| r.history_column).collect();
        names.sort_unstable();
        names.dedup();
        columns.sort_unstable();
        columns.dedup();
        assert_eq!((names.len(), columns.len()), (RULES, RULES));
        // a column says what happened: ended sessions or cancelled statements
        for r in &RULE_TABLE {
            let prefix = match r.effect {
                Effect::EndSession => "terminated_",
                Effect::CancelStatement => "cancelled_",
            };
            assert!(r.history_column.starts_with(prefix), "{r:?}");
            assert!(r.protections, "{r:?}");
        }
        assert_eq!(Rule::named("nothing"), None);
        let mut urgencies: Vec<u8> = RULE_TABLE.iter().map(|r| r.urgency).collect();
        urgencies.sort_unstable();
        urgencies.dedup();
        assert_eq!(urgencies.len(), RULES, "one urgency per rule");
    }

    #[test]
    fn each_timeout_setting_once() {
        let s = timeout_settings();
        let names: Vec<&str> = s.iter().map(|(t, _, _)| *t).collect();
        assert_eq!(
            names,
            vec![
                "dbconn_guard.idle_timeout",
                "dbconn_guard.idle_in_transaction_timeout",
                "dbconn_guard.transaction_timeout",
                "dbconn_guard.blocker_timeout",
                "dbconn_guard.lock_queue_timeout",
                "dbconn_guard.blocker_terminate_after"
            ]
        );
        // the escalation reads the root-blocker rule's overrides; every other its own
        assert!(s
            .iter()
            .all(|(t, o, _)| *o == format!("{t}_overrides").as_str()
                || *t == "dbconn_guard.blocker_terminate_after"));
        let o: Vec<&str> = overrides_settings().iter().map(|(o, _)| *o).collect();
        assert_eq!(o.len(), 5, "{o:?}");
    }
}

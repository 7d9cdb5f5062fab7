//! Sessions idle in transaction (and what will end them) and slow queries.

use super::*;

/// A timeout that will end an idle-in-transaction session.
pub(super) struct Cover {
    pub(super) rule: String,
    pub(super) timeout: Micros,
    pub(super) deadline: Micros,
    pub(super) by_guard: bool,
}

/// The timeout `overrides` give `b` (the first item that matches), or `global`.
pub(super) fn effective(b: &Backend, global: Micros, overrides: &Overrides) -> (Micros, bool) {
    match overrides.timeout_for(b) {
        Some(t) => (t, true),
        None => (global, false),
    }
}

/// Every timeout that ends `b` (idle in transaction), earliest first.
pub(super) fn covers(c: &Ctx, b: &Backend) -> Vec<Cover> {
    let p: &Policy = &c.i.guard.policy;
    let mut out = Vec::new();
    let mut push = |rule: String, timeout: Micros, since: Option<Micros>, by_guard: bool| {
        if let (true, Some(s)) = (timeout > 0, since) {
            out.push(Cover {
                rule,
                timeout,
                deadline: s.saturating_add(timeout),
                by_guard,
            });
        }
    };
    if c.guard_ending && p.scope.protection(b, c.i.caller.pid).is_none() {
        let (t, o) = effective(
            b,
            p.idle_in_transaction_timeout,
            &p.idle_in_transaction_timeout_overrides,
        );
        let name = if o {
            "dbconn_guard.idle_in_transaction_timeout_overrides"
        } else {
            "dbconn_guard.idle_in_transaction_timeout"
        };
        push(name.into(), t, b.state_change, true);
        let (t, o) = effective(b, p.transaction_timeout, &p.transaction_timeout_overrides);
        let name = if o {
            "dbconn_guard.transaction_timeout_overrides"
        } else {
            "dbconn_guard.transaction_timeout"
        };
        push(name.into(), t, b.xact_start, true);
    }
    let s = &c.i.server;
    if let Some(t) = s.idle_in_transaction_session_timeout {
        push(
            "PostgreSQL's idle_in_transaction_session_timeout".into(),
            t,
            b.state_change,
            false,
        );
    }
    if let Some(t) = s.transaction_timeout {
        push(
            "PostgreSQL's transaction_timeout".into(),
            t,
            b.xact_start,
            false,
        );
    }
    out.sort_by_key(|cv| cv.deadline);
    out
}

/// The sessions idle in transaction past the row's age, harm first: a session that holds
/// others up before older ones that hold up nobody (all of them; the row shows `TOP`), and
/// that age.
pub(super) fn idle_in_transaction_listed<'a>(c: &Ctx<'a>) -> (Vec<&'a Backend>, f64) {
    // never younger than a healthy client's pause between two statements
    let age =
        c.i.guard
            .thresholds
            .idle_in_transaction_age
            .max(TRANSIENT_SECS);
    let mut old: Vec<&Backend> = c
        .clients
        .iter()
        .copied()
        .filter(|b| {
            (b.has_state(IDLE_IN_TRANSACTION) || b.has_state(IDLE_IN_TRANSACTION_ABORTED))
                && b.state_age(c.now) > age
        })
        .collect();
    old.sort_by(|a, b| {
        c.holds_up(b.pid)
            .cmp(&c.holds_up(a.pid))
            .then(b.state_age(c.now).total_cmp(&a.state_age(c.now)))
            .then(a.pid.cmp(&b.pid))
    });
    (old, age)
}

/// Whether the idle-in-transaction row tells root `pid`'s story: a row of it names `pid`,
/// ends it (`pg_terminate_backend`), and is at least `grave`.
pub(super) fn idle_in_transaction_ends(c: &Ctx, pid: i32, grave: Status) -> bool {
    let end = format!("SELECT pg_terminate_backend({pid});");
    idle_in_transaction(c).iter().any(|f| {
        f.culprit == Some(Culprit::Session(pid))
            && f.action.as_deref() == Some(end.as_str())
            && f.status >= grave
    })
}

pub(super) fn idle_in_transaction(c: &Ctx) -> Vec<Finding> {
    let (old, age) = idle_in_transaction_listed(c);
    if old.is_empty() {
        return vec![ok(
            "idle in transaction",
            format!("No session idle in transaction for more than {}", dur(age)),
            "dbconn_guard.idle_in_transaction_warning_age decides what counts",
        )];
    }
    let total = old.len();
    let mut rows: Vec<Finding> = old
        .iter()
        .take(TOP)
        .enumerate()
        .map(|(i, b)| {
            let mut ev = format!(
                "{} for {} (user {}, application {}, client {}); transaction open {}; last statement {}",
                b.state.unwrap_or("?"),
                dur(b.state_age(c.now)),
                quoted_or(b.usename.as_deref(), "-"),
                quoted_or(b.application_name.as_deref(), "-"),
                quoted_or(b.client_addr.as_deref(), "local"),
                b.xact_age(c.now).map_or_else(|| "?".into(), dur),
                query_text(b)
            );
            let held = c.holds_up(b.pid);
            if held > 0 {
                let _ = write!(ev, "; holds up {}", sessions(held));
            }
            if i == 0 && total > TOP {
                let _ = write!(ev, "; {} sessions in all", total);
            }
            // harm now: a root whose waiters have waited past the moment of ordinary
            // contention is ended now, whatever timeout would end it later
            let harming = held > 0 && c.longest_wait_held(b.pid) >= TRANSIENT_SECS;
            let finding = if held > 0 {
                format!(
                    "pid {} idle in transaction for {} holds up {}",
                    b.pid,
                    dur(b.state_age(c.now)),
                    sessions(held)
                )
            } else {
                format!(
                    "pid {} idle in transaction for {}",
                    b.pid,
                    dur(b.state_age(c.now))
                )
            };
            let terminate = format!("SELECT pg_terminate_backend({});", b.pid);
            let p = &c.i.guard.policy;
            let protection = p.scope.protection(b, c.i.caller.pid);
            // a root the guard protects (a client tool's dump, a superuser's session) is not
            // ended on diagnose()'s word: a look at what waits behind it (a DDL statement
            // queued behind a dump is the one to cancel)
            let waiters = format!(
                "SELECT pid, usename, application_name, state, wait_event_type, wait_event, now() - query_start AS waiting, query FROM pg_stat_activity WHERE {} = ANY (pg_blocking_pids(pid));",
                b.pid
            );
            // who may run it, when this role may not
            if let Some(note) = c.i.caller.signal_note(Some(b)) {
                let _ = write!(ev, "; {note}");
            }
            let cv = covers(c, b);
            if let Some(first) = cv.first() {
                let overdue = first.deadline < c.now.saturating_sub(OVERDUE_SLACK);
                let rule = format!("{} ({})", first.rule, dur(first.timeout as f64 / 1e6));
                let _ = if first.deadline <= c.now {
                    write!(
                        ev,
                        "; {rule} was due to end it {} ago",
                        dur(secs_between(c.now, first.deadline))
                    )
                } else {
                    write!(
                        ev,
                        "; {rule} ends it in {}",
                        dur(secs_between(first.deadline, c.now))
                    )
                };
                let (status, finding, action) = match protection {
                    Some(pr) if harming => (
                        Status::Warning,
                        format!(
                            "{finding}; a timeout will end it, but work waits now, and the guard protects it ({}): look at what waits",
                            pr.as_str()
                        ),
                        waiters,
                    ),
                    _ if overdue && first.by_guard => (
                        Status::Warning,
                        format!("{finding}, past the guard's deadline: is the worker keeping up?"),
                        terminate,
                    ),
                    _ if harming => (
                        Status::Warning,
                        format!("{finding}; a timeout will end it, but work waits now: end it"),
                        terminate,
                    ),
                    _ => (
                        Status::Info,
                        format!("{finding}; a timeout will end it"),
                        terminate,
                    ),
                };
                let reading = match protection {
                    Some(_) if harming => Some(Reading::ProtectedHoldsUpWork),
                    _ if overdue && first.by_guard => Some(Reading::PastGuardDeadline),
                    _ if harming => Some(Reading::HoldsUpWork),
                    _ => None,
                };
                let row = flag("idle in transaction", status, finding, ev, action)
                    .about(Culprit::Session(b.pid));
                return match reading {
                    Some(r) => row.reads(r),
                    None => row,
                };
            }
            let never = p.idle_in_transaction_timeout_overrides.timeout_for(b) == Some(0);
            let action = if let Some(pr) = protection {
                let _ = write!(ev, "; the guard never ends it: {}", pr.as_str());
                if harming {
                    ev.push_str("; work waits behind it: the action looks at what waits");
                    waiters
                } else {
                    terminate
                }
            } else if harming {
                // a timeout set now would end it only later: the work it holds up waits now
                ev.push_str("; no timeout ends it: end it now, then set one (the timeouts row)");
                terminate
            } else if never {
                ev.push_str("; dbconn_guard.idle_in_transaction_timeout_overrides gives it 0 (never)");
                terminate
            } else if c.guard_ending {
                ev.push_str("; no timeout ends it: the guard's idle_in_transaction_timeout and transaction_timeout are off, and PostgreSQL's too");
                enable_iit_action()
            } else {
                ev.push_str("; no timeout ends it, and the guard is not ending sessions (see the guard row)");
                terminate
            };
            let reading = match protection {
                Some(_) if harming => Some(Reading::ProtectedHoldsUpWork),
                None if harming => Some(Reading::HoldsUpWork),
                _ => None,
            };
            let row = flag(
                "idle in transaction",
                Status::Warning,
                match protection {
                    Some(pr) if harming => format!(
                        "{finding}; nothing will end it, and the guard protects it ({}): look at what waits",
                        pr.as_str()
                    ),
                    None if harming && !never => {
                        format!("{finding}: end it now (no timeout will)")
                    }
                    _ => format!("{finding}; nothing will end it"),
                },
                ev,
                action,
            )
            .about(Culprit::Session(b.pid));
            match reading {
                Some(r) => row.reads(r),
                None => row,
            }
        })
        .collect();
    // a root this row ends tells its pile-up's story (the locks row points here): as grave
    // as the pile-up's waits are long
    let t = &c.i.guard.thresholds;
    for (f, b) in rows.iter_mut().zip(old.iter()) {
        let longest = c.longest_wait_held(b.pid);
        if c.holds_up(b.pid) > 0
            && f.status >= Status::Warning
            && t.lock_wait_critical > 0.0
            && longest > t.lock_wait_critical
        {
            f.status = Status::Critical;
        }
    }
    rows
}

pub(super) fn enable_iit_action() -> String {
    format!(
        "ALTER SYSTEM SET dbconn_guard.idle_in_transaction_timeout = '{RECOMMENDED_IIT_TIMEOUT}'; SELECT pg_reload_conf();"
    )
}

/// How many times the length this server's statements usually reach a statement must run to
/// be slow, by default.
pub const SLOW_QUERY_FACTOR: f64 = 4.0;
/// The default threshold is never under this (seconds): a statement of a minute is worth a
/// look on any server.
pub const SLOW_QUERY_FLOOR: f64 = 60.0;
/// Nor over this: a statement of an hour is worth a look on any server.
pub const SLOW_QUERY_CEILING: f64 = 3600.0;
/// The default where this server's statements are not known (no history, or too little of it
/// with a statement running): 5 minutes.
pub const SLOW_QUERY_UNKNOWN: f64 = 300.0;
/// Samples that saw a statement running, at least, before the threshold is relative.
pub const SLOW_QUERY_BUSY_SAMPLES: usize = 10;
/// A length is usual once this many separate statements reached it.
pub const SLOW_QUERY_RECURRING: usize = 3;

/// The lengths of the statements the samples saw, each once: the samples' longest running
/// statement climbs while one statement runs on, so each climb counts once, at its peak (a
/// stuck statement of 20 minutes is one statement, not 120 samples). Samples with no statement
/// running (0) or an unreadable value end a climb and count for nothing.
pub(super) fn statement_lengths(longest: &[f64]) -> Vec<f64> {
    let mut out = Vec::new();
    let mut peak: Option<f64> = None;
    for &v in longest {
        if !v.is_finite() || v <= 0.0 {
            out.extend(peak.take());
            continue;
        }
        match peak {
            Some(p) if v > p => peak = Some(v),
            Some(p) => {
                out.push(p);
                peak = Some(v);
            }
            None => peak = Some(v),
        }
    }
    out.extend(peak);
    out
}

/// The threshold from which an active statement is slow, in seconds, and how it was chosen.
///
/// Given by the caller: that. By default, relative to this server: [`SLOW_QUERY_FACTOR`] ×
/// the length that [`SLOW_QUERY_RECURRING`] separate statements reached in the window's history
/// (`statement_lengths`: one incident's stuck statement does not make long statements usual;
/// recurring reports do), read from the samples taken before the oldest statement running now
/// began (a stuck statement does not make itself usual either), rounded up to a minute, between
/// [`SLOW_QUERY_FLOOR`] and [`SLOW_QUERY_CEILING`]; [`SLOW_QUERY_UNKNOWN`] with fewer than
/// [`SLOW_QUERY_BUSY_SAMPLES`] such samples that saw a statement running (an idle history
/// tells nothing of how long this server's statements run). An OLTP server whose statements
/// take milliseconds gets 1 minute; a reporting server whose reports run 20 minutes, 1 hour.
pub(super) fn slow_threshold(c: &Ctx) -> (f64, String) {
    if let Some(given) = c.i.guard.slow_query_age {
        return (given, format!("threshold {} (as given)", dur(given)));
    }
    // the samples from before the oldest statement running now (the caller's aside) began
    let oldest = c
        .clients
        .iter()
        .filter(|b| b.has_state("active") && b.pid != c.i.caller.pid)
        .filter_map(|b| b.query_start)
        .min()
        .unwrap_or(c.now);
    let longest: Vec<f64> = if c.history_missing().is_some() {
        Vec::new()
    } else {
        c.samples
            .iter()
            .filter(|s| s.time < oldest)
            .map(|s| s.longest_statement_s)
            .collect()
    };
    let busy = longest
        .iter()
        .filter(|v| v.is_finite() && **v > 0.0)
        .count();
    let mut lengths = statement_lengths(&longest);
    if busy < SLOW_QUERY_BUSY_SAMPLES || lengths.len() < SLOW_QUERY_RECURRING {
        let why = c.history_missing().unwrap_or_else(|| {
            format!(
                "{busy} sample(s) of the history that saw a statement running, from before the oldest statement running now ({SLOW_QUERY_BUSY_SAMPLES} needed)"
            )
        });
        return (
            SLOW_QUERY_UNKNOWN,
            format!(
                "threshold {} (the default where this server's statement times are not known: {why})",
                dur(SLOW_QUERY_UNKNOWN)
            ),
        );
    }
    lengths.sort_by(|a, b| b.total_cmp(a));
    let usual = lengths[SLOW_QUERY_RECURRING - 1];
    let limit = ((SLOW_QUERY_FACTOR * usual / 60.0).ceil() * 60.0)
        .clamp(SLOW_QUERY_FLOOR, SLOW_QUERY_CEILING);
    (
        limit,
        format!(
            "threshold {} (the default: {SLOW_QUERY_FACTOR}× the length {SLOW_QUERY_RECURRING} separate statements reached in the history, {}, over {} statements seen in {} samples; between {} and {})",
            dur(limit),
            if usual < 10.0 {
                format!("{usual:.1}s")
            } else {
                dur(usual)
            },
            lengths.len(),
            longest.len(),
            dur(SLOW_QUERY_FLOOR),
            dur(SLOW_QUERY_CEILING)
        ),
    )
}

pub(super) fn slow_queries(c: &Ctx) -> Vec<Finding> {
    let limit = c.slow_limit;
    if limit <= 0.0 {
        return vec![flag(
            "slow queries",
            Status::Info,
            "Slow queries not checked: the threshold is 0",
            "a threshold of 0 or less turns this check off",
            "SELECT pid, now() - query_start AS running, query FROM pg_stat_activity WHERE state = 'active' AND pid <> pg_backend_pid() ORDER BY query_start LIMIT 10;",
        )];
    }
    let running = |b: &Backend| age_seconds(c.now, b.query_start).unwrap_or(0.0);
    let mut slow: Vec<&Backend> = c
        .clients
        .iter()
        .copied()
        .filter(|b| b.has_state("active") && b.pid != c.i.caller.pid && running(b) > limit)
        .collect();
    if slow.is_empty() {
        return vec![ok(
            "slow queries",
            format!("No statement running longer than {}", dur(limit)),
            format!(
                "{} active client sessions, none past {}; {}",
                c.util.active,
                dur(limit),
                c.slow_basis
            ),
        )];
    }
    slow.sort_by(|a, b| running(b).total_cmp(&running(a)).then(a.pid.cmp(&b.pid)));
    let total = slow.len();
    // one row per group (application, user, client, database): a group's statements are
    // cancelled in one paste, through cancel_statements(); the group with the most first,
    // then the longest running
    type Key<'k> = (
        Option<&'k str>,
        Option<&'k str>,
        Option<&'k str>,
        Option<&'k str>,
    );
    fn key(b: &Backend) -> Key<'_> {
        (
            b.application_name.as_deref(),
            b.usename.as_deref(),
            b.client_addr.as_deref(),
            b.datname.as_deref(),
        )
    }
    let mut groups: Vec<(Key, Vec<&Backend>)> = Vec::new();
    for b in &slow {
        match groups.iter_mut().find(|(k, _)| *k == key(b)) {
            Some((_, v)) => v.push(b),
            None => groups.push((key(b), vec![b])),
        }
    }
    groups.sort_by(|a, b| {
        b.1.len()
            .cmp(&a.1.len())
            .then(running(b.1[0]).total_cmp(&running(a.1[0])))
    });
    let shown = groups.len().min(TOP);
    groups
        .iter()
        .take(TOP)
        .enumerate()
        .map(|(i, (k, members))| {
            let b = members[0];
            let waiting = members
                .iter()
                .filter(|m| c.i.lock_waits.iter().any(|w| w.pid == m.pid))
                .count();
            let n = members.len();
            let rest = if i == 0 && groups.len() > shown {
                format!(
                    "; {total} statements past {} in all, in {} groups",
                    dur(limit),
                    groups.len()
                )
            } else {
                String::new()
            };
            let scope = IdleScope::group(k.0, k.1, k.2, Some(k.3));
            let protection = c.i.guard.policy.scope.protection(b, c.i.caller.pid);
            // what the DBA told the guard never to touch (a client tool's dump or restore, an
            // excluded application, user or database, one outside include_applications) runs
            // long by the DBA's own account: a look, never a cancel offered as the fix. A
            // superuser's statements are protected from the worker only: they get the cancel
            let why_spared = match protection {
                Some(Protection::ClientTool) => Some(
                    "a backup or restore runs long by design, and the guard never touches it (dbconn_guard.exclude_client_tools)".to_string(),
                ),
                Some(
                    p @ (Protection::ExcludedDatabase
                    | Protection::ExcludedUser
                    | Protection::ExcludedApplication
                    | Protection::NotIncludedApplication),
                ) => Some(format!(
                    "the guard never touches these sessions ({}), so they may run long by design",
                    p.as_str()
                )),
                _ => None,
            };
            let spared = why_spared.is_some();
            let mut f = if let Some(why) = why_spared {
                let what = if n == 1 {
                    format!("A statement (pid {})", b.pid)
                } else {
                    format!("{n} statements")
                };
                let finding = if protection == Some(Protection::ClientTool) {
                    format!(
                        "{what} of PostgreSQL's client tool {} running for up to {}",
                        quoted_or(b.application_name.as_deref(), "-"),
                        dur(running(b))
                    )
                } else {
                    format!(
                        "{what} of application {}, which the guard is told to spare, running for up to {}",
                        quoted_or(b.application_name.as_deref(), "-"),
                        dur(running(b))
                    )
                };
                flag(
                    "slow queries",
                    Status::Info,
                    finding,
                    format!(
                        "{}; the longest (pid {}): {}; {why}: the action looks; cancel them yourself only to stop them{rest}",
                        scope.describe(),
                        b.pid,
                        query_text(b),
                    ),
                    format!(
                        "SELECT pid, now() - query_start AS running, wait_event_type, wait_event, query FROM pg_stat_activity WHERE backend_type = 'client backend' AND state = 'active'{} ORDER BY query_start;",
                        scope.activity_filter()
                    ),
                )
            } else {
                // a superuser's sessions: cancel_statements() would skip them all
                let (action, way) = cancel_group(c, &scope, limit, protection.is_some());
                let how = match (way, protection) {
                    (CancelWay::ThroughTheGuard, _) => {
                        " through cancel_statements(): the guard's protections and audit apply".to_string()
                    }
                    (CancelWay::OverPgStatActivity, Some(p)) => format!(
                        " over pg_stat_activity, without an audit row: the guard protects these sessions ({}), so cancel_statements() would skip them",
                        p.as_str()
                    ),
                    (CancelWay::OverPgStatActivity, None) => {
                        " over pg_stat_activity, without an audit row".to_string()
                    }
                };
                // by the statement's age, not by pid: a pooled connection's next statement is
                // another client's, and is spared unless it too runs past the threshold
                let cancels = format!(
                    "the action cancels the statements of {} running for longer than {} (and any of the group's that pass it by the time it runs; the sessions stay){how}",
                    scope.describe(),
                    dur(cancel_after(limit)),
                );
                if n == 1 {
                    flag(
                        "slow queries",
                        Status::Warning,
                        format!(
                            "Slow query: pid {} of application {} running for {}",
                            b.pid,
                            quoted_or(b.application_name.as_deref(), "-"),
                            dur(running(b))
                        ),
                        format!(
                            "user {}, application {}, client {}{}; {}; {cancels}{rest}",
                            quoted_or(b.usename.as_deref(), "-"),
                            quoted_or(b.application_name.as_deref(), "-"),
                            quoted_or(b.client_addr.as_deref(), "local"),
                            if waiting > 0 { ", waiting for a lock" } else { "" },
                            query_text(b),
                        ),
                        action,
                    )
                } else {
                    let shortest = members.iter().map(|m| running(m)).fold(f64::MAX, f64::min);
                    let mut pids: Vec<i32> = members.iter().map(|m| m.pid).collect();
                    pids.sort_unstable();
                    let (from, to) = (dur(shortest), dur(running(b)));
                    flag(
                        "slow queries",
                        Status::Warning,
                        format!(
                            "{n} slow queries of application {}: running for {}",
                            quoted_or(b.application_name.as_deref(), "-"),
                            if from == to {
                                to
                            } else {
                                format!("{from} to {to}")
                            }
                        ),
                        format!(
                            "{}{}; pids {}; the longest (pid {}): {}; {cancels}{rest}",
                            scope.describe(),
                            if waiting > 0 {
                                format!(", {waiting} of them waiting for a lock")
                            } else {
                                String::new()
                            },
                            pid_list(&pids),
                            b.pid,
                            query_text(b),
                        ),
                        action,
                    )
                }
            };
            f.culprit = Some(if n == 1 && !spared {
                Culprit::Session(b.pid)
            } else {
                Culprit::Application(k.0.unwrap_or("").to_string())
            });
            let _ = write!(f.evidence, "; {}", c.slow_basis);
            if let Some(note) = c.i.caller.signal_note(Some(b)) {
                let _ = write!(f.evidence, "; {note}");
            }
            f.reads(Reading::SlowQueries)
        })
        .collect()
}

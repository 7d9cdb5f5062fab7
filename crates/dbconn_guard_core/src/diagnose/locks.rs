//! Lock pile-ups: their roots, how many each holds up, and what to end or cancel.

use super::*;

/// Lock pile-ups from the blocking chains: the root, how many it holds up, what to end.
pub(super) fn lock_pileups(c: &Ctx) -> Vec<Finding> {
    if c.chains.is_empty() {
        return vec![ok(
            "locks",
            "No lock pile-up",
            format!("{} sessions waiting for a lock", c.i.lock_waits.len()),
        )];
    }
    let t = &c.i.guard.thresholds;
    let index = c.i.snapshot.index();
    let wait_of = |pid: i32| -> f64 {
        let since =
            c.i.lock_waits
                .iter()
                .find(|w| w.pid == pid)
                .and_then(|w| w.wait_start)
                .or_else(|| index.get(&pid).and_then(|b| b.state_change));
        age_seconds(c.now, since).unwrap_or(0.0)
    };
    let mut roots: Vec<(i32, i64)> = Vec::new();
    for ch in &c.chains {
        if let Some(r) = ch.root_pid {
            if !roots.iter().any(|(p, _)| *p == r) {
                roots.push((r, ch.root_blocked_count));
            }
        }
    }
    // a root whose waiters have waited only a moment, or that has been idle only a moment, is
    // ordinary contention: nothing to end or cancel
    let longest_of = |root: i32| {
        c.chains
            .iter()
            .filter(|ch| ch.root_pid == Some(root))
            .map(|ch| wait_of(ch.pid))
            .fold(0.0, f64::max)
    };
    // (a root between two statements of a long transaction is idle for a moment only: its
    // transaction's age, not its state's, tells ordinary contention from a long hold)
    let transient = |root: i32| {
        longest_of(root) < TRANSIENT_SECS
            || index.get(&root).is_some_and(|b| {
                !b.is_hidden()
                    && matches!(
                        b.state,
                        Some(IDLE) | Some(IDLE_IN_TRANSACTION) | Some(IDLE_IN_TRANSACTION_ABORTED)
                    )
                    && b.xact_age(c.now).unwrap_or(f64::MAX) < TRANSIENT_SECS
            })
    };
    type Roots = Vec<(i32, i64)>;
    let (brief, lasting): (Roots, Roots) = roots.into_iter().partition(|&(r, _)| transient(r));
    if lasting.is_empty() && !brief.is_empty() {
        let waiting: i64 = brief.iter().map(|&(_, n)| n).sum();
        return vec![ok(
            "locks",
            format!("Only brief lock waits: none has lasted {}", dur(TRANSIENT_SECS)),
            format!(
                "{} waiting behind {} (pids {}), each for less than {} or behind a session idle for less than that: ordinary contention",
                sessions(waiting),
                if brief.len() == 1 { "one session".to_string() } else { format!("{} sessions", brief.len()) },
                pid_list(&brief.iter().map(|&(r, _)| r).collect::<Vec<_>>()),
                dur(TRANSIENT_SECS)
            ),
        )];
    }
    let roots = lasting;
    // statements queued for a relation lock that hold up others (an ALTER TABLE behind a long
    // report, and the readers behind the ALTER): the story of their pile-up
    let queues = policy::queues_in(&c.i.lock_waits);
    let mut queue_rows: Vec<Finding> = Vec::new();
    let mut out: Vec<Finding> = roots
        .iter()
        .take(TOP)
        .map(|&(root, count)| {
            let mine: Vec<&Chain> = c
                .chains
                .iter()
                .filter(|ch| ch.root_pid == Some(root))
                .collect();
            let queued = mine
                .iter()
                .filter_map(|ch| queues.get(&ch.pid).map(|q| (ch.pid, q)))
                .max_by_key(|(p, q)| (q.wait_starts.len(), -p));
            // (and whether the queue, with the statement itself, is all it holds up)
            let queue_note = queued.and_then(|(qpid, q)| {
                let row = queued_statement(c, root, qpid, q)?;
                queue_rows.push(row);
                Some((
                    format!(
                        "; {} of them queue behind the statement of pid {qpid}, itself waiting for a lock: see that row",
                        q.wait_starts.len()
                    ),
                    q.wait_starts.len() as i64 + 1 >= count,
                ))
            });
            let direct: Vec<i32> = mine
                .iter()
                .filter(|ch| ch.depth == Some(1))
                .map(|ch| ch.pid)
                .collect();
            let longest = mine.iter().map(|ch| wait_of(ch.pid)).fold(0.0, f64::max);
            let on = direct
                .first()
                .and_then(|p| c.i.lock_waits.iter().find(|w| w.pid == *p))
                .map(|w| {
                    format!(
                        "; waiting for {} on {} {}",
                        w.mode.as_deref().unwrap_or("a lock"),
                        w.locktype.as_deref().unwrap_or("object"),
                        quoted_or(w.relation.as_deref(), "")
                    )
                })
                .unwrap_or_default();
            let b = index.get(&root).copied();
            let state = b.and_then(|b| b.state);
            let who = match b {
                Some(b) if !b.is_hidden() => format!(
                    "{} for {}, user {}, application {}",
                    state.unwrap_or("state unknown"),
                    dur(b.state_age(c.now)),
                    quoted_or(b.usename.as_deref(), "-"),
                    quoted_or(b.application_name.as_deref(), "-")
                ),
                Some(_) => "details hidden from this role".into(),
                None => "not in pg_stat_activity".into(),
            };
            let idle = matches!(
                state,
                Some(IDLE) | Some(IDLE_IN_TRANSACTION) | Some(IDLE_IN_TRANSACTION_ABORTED)
            );
            let hidden = b.is_none_or(|b| b.is_hidden());
            // how grave the pile-up is, by its longest wait
            let grave = if longest > t.lock_wait_critical && t.lock_wait_critical > 0.0 {
                Status::Critical
            } else if longest > t.lock_wait_warning {
                Status::Warning
            } else {
                Status::Info
            };
            // one story, where the idle-in-transaction row ends this root, as gravely
            let told_elsewhere =
                idle && !hidden && sessions::idle_in_transaction_ends(c, root, grave);
            // an active root the guard cancelled before, holding up a pile-up again: its client
            // retries, or its statement ignores the cancel
            let cancelled = match b {
                Some(b) if !idle && !hidden => c.guard_cancels(b),
                _ => Vec::new(),
            };
            let (verb, action) = if hidden {
                // a cancel does nothing to a session idle in its transaction, and its state
                // is not known here: look first, as a role that may see it
                (
                    "its state is hidden from this role: look at it before acting".to_string(),
                    format!(
                        "SELECT pid, usename, application_name, state, now() - state_change AS in_state, query FROM pg_stat_activity WHERE pid = {root};  -- as a member of pg_read_all_stats: cancel it if active, end it if idle"
                    ),
                )
            } else if let Some(xact) = b
                .filter(|b| idle && b.state_age(c.now) < TRANSIENT_SECS)
                .and_then(|b| b.xact_age(c.now))
            {
                // idle for a moment between two statements of a long transaction: a batch at
                // work, perhaps; never ended on diagnose()'s word (a look at it and its waiters)
                (
                    format!(
                        "it is between two statements of a transaction open for {}: look before ending it",
                        dur(xact)
                    ),
                    format!(
                        "SELECT pid, state, now() - xact_start AS in_transaction, now() - state_change AS in_state, query FROM pg_stat_activity WHERE pid = {root} OR {root} = ANY (pg_blocking_pids(pid)) ORDER BY query_start;  -- SELECT pg_terminate_backend({root}); ends it"
                    ),
                )
            } else if told_elsewhere {
                // one story: the idle-in-transaction row names this root and ends it; here,
                // what it holds up
                (
                    "it is idle in its transaction: see idle in transaction".to_string(),
                    format!(
                        "SELECT pid, usename, application_name, now() - query_start AS waiting, query FROM pg_stat_activity WHERE {root} = ANY (pg_blocking_pids(pid)) ORDER BY query_start;"
                    ),
                )
            } else if idle {
                ("end it: it runs nothing".to_string(), format!("SELECT pg_terminate_backend({root});"))
            } else if let Some(&last) = cancelled.last() {
                (
                    format!(
                        "it came back after the guard cancelled its statement {}, the last {} ago (its client retries, or the statement ignores the cancel): end the session",
                        if cancelled.len() == 1 { "once".to_string() } else { format!("{} times", cancelled.len()) },
                        dur(secs_between(c.now, last))
                    ),
                    format!("SELECT pg_terminate_backend({root});"),
                )
            } else {
                ("cancel its statement".to_string(), format!("SELECT pg_cancel_backend({root});"))
            };
            let who = match (hidden, b.and_then(|b| c.i.caller.signal_note(Some(b)))) {
                (false, Some(note)) => format!("{who}; {note}"),
                _ => who,
            };
            let status = if queue_note.as_ref().is_some_and(|(_, all)| *all) || told_elsewhere {
                // the queued statement's row, or the idle-in-transaction row, tells this
                // pile-up's story
                Status::Info
            } else if !cancelled.is_empty() {
                // a cancel did not end it: work waits again, whatever the waits' age
                grave.max(Status::Warning)
            } else {
                grave
            };
            let row = flag(
                "locks",
                status,
                format!(
                    "Lock pile-up: pid {root} holds up {}{}; {verb}",
                    sessions(count),
                    queue_note.as_ref().map_or("", |(n, _)| n.as_str())
                ),
                format!(
                    "root pid {root} ({who}) blocks {} directly, {count} in all; longest wait {}{on}{}",
                    direct.len(),
                    dur(longest),
                    if idle || hidden {
                        String::new()
                    } else if cancelled.is_empty() {
                        retry_note(c)
                    } else {
                        returns_note(c, &cancelled)
                    }
                ),
                action,
            )
            .about(Culprit::Session(root))
            .reads(if hidden {
                Reading::HiddenState
            } else if !cancelled.is_empty() {
                Reading::RootReturns
            } else {
                Reading::RootBlocker
            });
            if told_elsewhere {
                row.points_to("idle in transaction")
            } else if queue_note.is_some() {
                // the queued statement's row, in this area
                row.points_to("locks")
            } else {
                row
            }
        })
        .collect();
    // the queued statements first: cancelling one lets its queue go at once
    queue_rows.append(&mut out);
    let mut out = queue_rows;
    let cycle: Vec<i32> = c
        .chains
        .iter()
        .filter(|ch| ch.root_pid.is_none())
        .map(|ch| ch.pid)
        .collect();
    let cycle_wait = cycle.iter().map(|&p| wait_of(p)).fold(0.0, f64::max);
    if let (Some(&first), true) = (cycle.iter().min(), cycle_wait >= TRANSIENT_SECS) {
        out.push(
            flag(
                "locks",
                Status::Info,
                format!(
                    "{} sessions wait on each other in a lock cycle",
                    cycle.len()
                ),
                format!(
                "pids {}; PostgreSQL's deadlock detector ends one of them after deadlock_timeout",
                pid_list(&cycle)
            ),
                format!("SELECT pg_cancel_backend({first});"),
            )
            .reads(Reading::LockCycle),
        );
    }
    out
}

/// What a queued statement is, from its text: `ALTER TABLE`, `VACUUM`, ... (None: not known).
fn statement_kind(query: Option<&str>) -> Option<String> {
    let mut words = query?.split_whitespace().map(str::to_uppercase);
    let first = words.next()?;
    match first.as_str() {
        "ALTER" | "DROP" | "CREATE" => {
            let second = words.next()?;
            let third = words.next();
            // CREATE UNIQUE INDEX, DROP MATERIALIZED VIEW: the third word names it
            match (second.as_str(), third) {
                ("UNIQUE" | "MATERIALIZED", Some(t)) => Some(format!("{first} {second} {t}")),
                _ => Some(format!("{first} {second}")),
            }
        }
        "VACUUM" | "TRUNCATE" | "REINDEX" | "LOCK" | "CLUSTER" | "REFRESH" => Some(first),
        _ => None,
    }
    .map(|k| {
        k.chars()
            .filter(|c| c.is_ascii_alphabetic() || *c == ' ')
            .collect()
    })
}

/// The row of a statement queued for a relation lock behind `root`, holding up the sessions
/// of `q`: once its waiters have waited past ordinary contention (None before).
fn queued_statement(c: &Ctx, root: i32, qpid: i32, q: &policy::LockQueue) -> Option<Finding> {
    let longest = q
        .wait_starts
        .iter()
        .map(|s| age_seconds(c.now, *s).unwrap_or(0.0))
        .fold(0.0, f64::max);
    if longest < TRANSIENT_SECS {
        return None;
    }
    let index = c.i.snapshot.index();
    let b = index.get(&qpid).copied();
    let kind = statement_kind(b.and_then(|b| b.query.as_deref()));
    let what = kind.clone().unwrap_or_else(|| "statement".into());
    let on = q
        .queued
        .relation
        .as_deref()
        .map_or_else(String::new, |r| format!(" on {}", quoted(r)));
    let behind = match index.get(&root) {
        Some(r) if !r.is_hidden() => format!(
            "pid {root} ({} for {}, application {})",
            r.state.unwrap_or("state unknown"),
            dur(r.state_age(c.now)),
            quoted_or(r.application_name.as_deref(), "-")
        ),
        _ => format!("pid {root}"),
    };
    let t = &c.i.guard.thresholds;
    let status = if longest > t.lock_wait_critical && t.lock_wait_critical > 0.0 {
        Status::Critical
    } else if longest > t.lock_wait_warning {
        Status::Warning
    } else {
        Status::Info
    };
    let held = q.wait_starts.len() as i64;
    let rule = match c.i.guard.policy.lock_queue_timeout {
        0 => "the lock-queue rule is off (dbconn_guard.lock_queue_timeout)".to_string(),
        us => format!(
            "dbconn_guard.lock_queue_timeout ({}) cancels such a statement",
            dur(us as f64 / 1e6)
        ),
    };
    let protection = b.and_then(|b| c.i.guard.policy.scope.protection(b, c.i.caller.pid));
    let look = format!(
        "SELECT pid, usename, application_name, state, wait_event_type, wait_event, now() - query_start AS running, query FROM pg_stat_activity WHERE pid = {qpid} OR {qpid} = ANY (pg_blocking_pids(pid));"
    );
    let (finding, action) = match (b, protection) {
        (Some(b), p) if !b.is_hidden() && !matches!(p, Some(Protection::ClientTool) | Some(Protection::ExcludedApplication) | Some(Protection::ExcludedUser) | Some(Protection::ExcludedDatabase) | Some(Protection::NotIncludedApplication)) => (
            format!(
                "A queued {what}{on} holds up {} behind {behind}: cancel the {} (it can retry with lock_timeout)",
                sessions(held),
                kind.as_deref().map_or("statement", |k| k.split(' ').next().unwrap_or("statement")),
            ),
            // only while it still waits for a lock: a pid's next statement is never hit
            format!(
                "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE pid = {qpid} AND wait_event_type = 'Lock' AND wait_event = 'relation';"
            ),
        ),
        (Some(b), Some(p)) if !b.is_hidden() => (
            format!(
                "A queued {what}{on} holds up {} behind {behind}; the guard is told to spare it ({}): look at it and at what waits",
                sessions(held),
                p.as_str()
            ),
            look,
        ),
        _ => (
            format!(
                "A statement queued for a lock{on} holds up {} behind {behind}; its details are hidden from this role: look at it",
                sessions(held)
            ),
            look,
        ),
    };
    let mut f = flag(
        "locks",
        status,
        finding,
        format!(
            "pid {qpid} waits for {}{on} behind pid{} {}; {} queued behind it, longest wait {}; {}; {rule}{}",
            q.queued.mode.as_deref().unwrap_or("a lock"),
            if q.queued.behind.len() == 1 { "" } else { "s" },
            pid_list(&q.queued.behind),
            sessions(held),
            dur(longest),
            b.map_or_else(|| "query hidden".to_string(), query_text),
            b.and_then(|b| c.i.caller.signal_note(Some(b)))
                .map_or_else(String::new, |n| format!("; {n}"))
        ),
        action,
    );
    f.culprit = Some(Culprit::Session(qpid));
    Some(f.reads(Reading::QueuedStatement))
}

/// For an active root: what to do when a cancel does not help (its client re-issues the
/// statement, or the statement ignores the cancel), and whether the guard does it by itself.
fn retry_note(c: &Ctx) -> String {
    let p = &c.i.guard.policy;
    let by_guard = if p.cancel_active_blockers && p.blocker_terminate_after > 0 {
        format!(
            "dbconn_guard.blocker_terminate_after ({}) does so by itself",
            dur(p.blocker_terminate_after as f64 / 1e6)
        )
    } else {
        "dbconn_guard.blocker_terminate_after (with cancel_active_blockers) would do so by itself"
            .to_string()
    };
    format!(
        "; if the pile-up comes back after the cancel (its client retries, or the statement ignores the cancel), end the session (pg_terminate_backend): {by_guard}"
    )
}

/// The evidence of a root that came back after the guard's cancels: when, and whether the
/// guard ends it by itself.
fn returns_note(c: &Ctx, cancelled: &[Micros]) -> String {
    let p = &c.i.guard.policy;
    let at: Vec<String> = cancelled
        .iter()
        .rev()
        .take(TOP)
        .map(|&t| clock(t))
        .collect();
    let by_guard = if p.cancel_active_blockers && p.blocker_terminate_after > 0 {
        format!(
            "dbconn_guard.blocker_terminate_after ({}) ends it by itself once that long has passed since the first cancel",
            dur(p.blocker_terminate_after as f64 / 1e6)
        )
    } else {
        "dbconn_guard.blocker_terminate_after is off: set it (with cancel_active_blockers) to end such a root by itself".to_string()
    };
    format!(
        "; the guard cancelled its statement at {}{}; {by_guard}",
        at.join(", "),
        if cancelled.len() > TOP {
            " and earlier"
        } else {
            ""
        }
    )
}

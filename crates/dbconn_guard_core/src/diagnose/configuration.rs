//! The configuration: timeouts, the guard's own state, memory, pgbouncer advice, poolers.

use super::*;

/// PostgreSQL's own timeouts against the guard's: is idle in transaction covered by either?
pub(super) fn timeouts(c: &Ctx) -> Vec<Finding> {
    let s = &c.i.server;
    let p = &c.i.guard.policy;
    let overrides = |o: &Overrides| {
        if o.is_empty() {
            String::new()
        } else {
            format!(" (+{} overrides)", o.items().len())
        }
    };
    let evidence = format!(
        "PostgreSQL: idle_in_transaction_session_timeout {}, idle_session_timeout {}, statement_timeout {}, transaction_timeout {}; guard: idle_in_transaction_timeout {}{}, transaction_timeout {}{}, idle_timeout {}{}",
        setting(s.idle_in_transaction_session_timeout),
        setting(s.idle_session_timeout),
        setting(s.statement_timeout),
        s.transaction_timeout.map_or("n/a (before PostgreSQL 17)".into(), |t| setting(Some(t))),
        setting(Some(p.idle_in_transaction_timeout)),
        overrides(&p.idle_in_transaction_timeout_overrides),
        setting(Some(p.transaction_timeout)),
        overrides(&p.transaction_timeout_overrides),
        setting(Some(p.idle_timeout)),
        overrides(&p.idle_timeout_overrides),
    );
    let any_override = |o: &Overrides| o.items().iter().any(|i| i.timeout > 0);
    let guard_covers = c.guard_ending
        && (p.idle_in_transaction_timeout > 0
            || p.transaction_timeout > 0
            || any_override(&p.idle_in_transaction_timeout_overrides)
            || any_override(&p.transaction_timeout_overrides));
    let pg_covers = s.idle_in_transaction_session_timeout.unwrap_or(0) > 0
        || s.transaction_timeout.unwrap_or(0) > 0;
    if s.idle_in_transaction_session_timeout.is_none() && !guard_covers {
        return vec![flag(
            "timeouts",
            Status::Info,
            "Timeouts not fully checked: PostgreSQL's idle_in_transaction_session_timeout was not read, and the guard does not end idle transactions",
            evidence,
            "SHOW idle_in_transaction_session_timeout;",
        )];
    }
    if !guard_covers && !pg_covers {
        let action = if c.i.server.preloaded {
            enable_iit_action()
        } else {
            format!(
                "ALTER SYSTEM SET idle_in_transaction_session_timeout = '{RECOMMENDED_IIT_TIMEOUT}'; SELECT pg_reload_conf();"
            )
        };
        // advice about configuration: nothing is wrong now (a session idle in transaction
        // that is, is the idle-in-transaction row's)
        return vec![flag(
            "timeouts",
            Status::Info,
            "Nothing ends a session idle in transaction: neither PostgreSQL's timeouts nor the guard's cover it",
            evidence,
            action,
        )];
    }
    let who = match (guard_covers, pg_covers) {
        (true, true) => "both the guard and PostgreSQL",
        (true, false) => "the guard",
        _ => "PostgreSQL (without the guard's exclusions and audit)",
    };
    vec![ok(
        "timeouts",
        format!("Idle in transaction is ended by {who}"),
        evidence,
    )]
}

/// The guard not preloaded, disabled, or in dry run.
pub(super) fn guard_state(c: &Ctx) -> Vec<Finding> {
    let g = &c.i.guard;
    if !c.i.server.preloaded {
        return vec![flag(
            "guard",
            Status::Warning,
            "The guard is not preloaded: no worker ends sessions, no history is sampled",
            "dbconn_guard is not in shared_preload_libraries: only the views work; the worker, its rules, history, leak trends and terminate_idle() need the preload",
            preload_action(&c.i.server),
        )
        .reads(Reading::NotPreloaded)];
    }
    if !g.enabled {
        return vec![flag(
            "guard",
            Status::Warning,
            "The guard is disabled: it ends no session",
            format!(
                "dbconn_guard.enabled = off{}; the worker keeps sampling",
                if g.dry_run { ", dry_run = on" } else { "" }
            ),
            "ALTER SYSTEM SET dbconn_guard.enabled = on; SELECT pg_reload_conf();",
        )];
    }
    if let Some((db, owner)) = c.i.worker.as_ref().and_then(|w| {
        w.database_owner_not_superuser
            .as_ref()
            .map(|o| (&w.database, o))
    }) {
        return vec![flag(
            "guard",
            Status::Warning,
            format!(
                "The guard's database {} is owned by {}, not a superuser: that role can hold up the guard's audit and drop the database while the worker is away",
                quoted(db),
                quoted(owner)
            ),
            format!(
                "dbconn_guard.database = {}, owned by {}: the owner can VACUUM FULL the audit table (terminations are then recorded in shared memory and the server log until it can be written), change the database's settings, and rename or drop it while the worker is not connected{}",
                quoted(db),
                quoted(owner),
                if g.dry_run { "; dry_run = on" } else { "" }
            ),
            "ALTER SYSTEM SET dbconn_guard.database = 'postgres'; -- takes effect at the next restart; then CREATE EXTENSION dbconn_guard in postgres",
        )];
    }
    if g.dry_run {
        return vec![flag(
            "guard",
            Status::Info,
            "The guard is in dry run: it records what it would end, and ends nothing",
            "dbconn_guard.dry_run = on; dry-run records are in dbconn_guard.terminations with dry_run = true",
            "ALTER SYSTEM SET dbconn_guard.dry_run = off; SELECT pg_reload_conf();",
        )];
    }
    vec![ok(
        "guard",
        "The guard is preloaded, enabled and ending sessions",
        "dbconn_guard.enabled = on, dry_run = off",
    )]
}

/// `work_mem` × `max_connections` + `shared_buffers`: what is checked, and what is not.
pub(super) fn memory(c: &Ctx) -> Vec<Finding> {
    let s = &c.i.server;
    let max = i64::from(c.i.limits.max_connections);
    let (Some(wm), Some(sb), true) = (s.work_mem, s.shared_buffers, max > 0) else {
        return vec![flag(
            "memory",
            Status::Info,
            "Memory per connection not checked: work_mem, shared_buffers or max_connections was not read",
            format!(
                "work_mem {}, shared_buffers {}, max_connections {}",
                s.work_mem.map_or("?".into(), bytes),
                s.shared_buffers.map_or("?".into(), bytes),
                max
            ),
            "SHOW work_mem; SHOW shared_buffers; SHOW max_connections;",
        )];
    };
    let per = wm.saturating_mul(max);
    let total = per.saturating_add(sb);
    let evidence = format!(
        "work_mem {} × max_connections {max} = {}, + shared_buffers {} = {}, if every slot ran one sort or hash at once (a query may use several work_mem); checked against 4 × shared_buffers (shared_buffers is usually 25% of RAM); available RAM is not readable from SQL: compare with the host's memory",
        bytes(wm),
        bytes(per),
        bytes(sb),
        bytes(total)
    );
    if per <= sb.saturating_mul(4) {
        return vec![ok(
            "memory",
            "max_connections × work_mem fits beside shared_buffers",
            evidence,
        )];
    }
    let peak = c
        .samples
        .iter()
        .map(|s| i64::from(s.clients.total()))
        .max()
        .unwrap_or(0)
        .max(c.util.client_backends);
    let suggested = round_up_10(((peak as f64) * 1.5) as i64).max(20);
    // never on a standby: one whose max_connections is below its primary's does not start
    let action = if suggested < max && !c.i.server.in_recovery {
        format!("ALTER SYSTEM SET max_connections = {suggested};  -- 1.5 × the peak of {peak} clients; takes effect after a restart")
    } else {
        let mb = (sb.saturating_mul(4) / max / (1024 * 1024)).max(1);
        format!("ALTER SYSTEM SET work_mem = '{mb}MB'; SELECT pg_reload_conf();")
    };
    vec![flag(
        "memory",
        Status::Info,
        "max_connections × work_mem may exceed the server's RAM",
        evidence,
        action,
    )]
}

/// The runbook's pgbouncer advice when most connections sit idle.
pub(super) fn pgbouncer(c: &Ctx) -> Vec<Finding> {
    let u = &c.util;
    let idle_share = if u.client_backends > 0 {
        u.idle as f64 / u.client_backends as f64
    } else {
        0.0
    };
    let evidence_base = format!(
        "{} of {} client sessions idle ({:.0}%)",
        u.idle,
        u.client_backends,
        idle_share * 100.0
    );
    if u.client_backends < MOSTLY_IDLE_MIN_CLIENTS || idle_share < MOSTLY_IDLE_SHARE {
        return vec![ok(
            "pgbouncer",
            "Connections are not mostly idle: no pooler advice",
            format!(
                "{evidence_base}; advice given from {MOSTLY_IDLE_MIN_CLIENTS} sessions with {:.0}% idle",
                MOSTLY_IDLE_SHARE * 100.0
            ),
        )];
    }
    let busy = |s: &StateCounts| s.active + s.idle_in_transaction + s.idle_in_transaction_aborted;
    let (peak, from) = match c.samples.iter().map(|s| busy(&s.clients)).max() {
        Some(p) => (
            i64::from(p),
            format!(
                "the busy peak of the last {}",
                dur(c.i.history.window as f64 / 1e6)
            ),
        ),
        None => (
            u.active + u.idle_in_transaction + u.idle_in_transaction_aborted,
            "busy now (no history)".into(),
        ),
    };
    let pool_size = ((peak as f64) * 1.25).ceil().max(5.0) as i64;
    let in_front = c
        .clients
        .iter()
        .any(|b| is_pooler_name(b.application_name.as_deref()));
    let evidence = format!(
        "{evidence_base}; {peak} sessions active or in a transaction at {from}; default_pool_size is per database and user"
    );
    let action = if in_front {
        format!("default_pool_size = {pool_size}")
    } else {
        format!("[pgbouncer]\npool_mode = transaction\ndefault_pool_size = {pool_size}")
    };
    vec![flag(
        "pgbouncer",
        Status::Info,
        if in_front {
            "Most server connections sit idle behind the pooler: its pool is larger than the work"
        } else {
            "Most connections sit idle: put pgbouncer in front, in transaction pooling"
        },
        evidence,
        action,
    )]
}

/// Sessions that look like a pooler's server connections, which the guard's idle_timeout would
/// end: let the pooler close them (`server_idle_timeout`) instead.
pub(super) fn pooler(c: &Ctx) -> Vec<Finding> {
    let groups = client_groups(c);
    let looks: Vec<&ClientGroup> = groups
        .iter()
        // more than a name a client chooses: pgbouncer's reset query, or the shape of a pool
        .filter(|g| g.reset_query_seen || g.mostly_idle_pool())
        .collect();
    if looks.is_empty() {
        return vec![ok(
            "pooler",
            "No pooler's connections recognised",
            "no idle server connections that last ran a pooler's reset query (DISCARD ALL), and no client address with many mostly idle sessions of one user and application",
        )];
    }
    let p = &c.i.guard.policy;
    let ended_by_guard = |g: &ClientGroup| {
        c.guard_ending
            && p.scope.protection(g.first, c.i.caller.pid).is_none()
            && effective(g.first, p.idle_timeout, &p.idle_timeout_overrides).0 > 0
    };
    let mut out: Vec<Finding> = Vec::new();
    for g in looks.iter().take(TOP) {
        let named = is_pooler_name(g.app) || g.reset_query_seen;
        let what = if g.reset_query_seen {
            "pgbouncer's server connections (idle ones last ran its reset query DISCARD ALL)"
        } else if named {
            "a pooler's server connections"
        } else {
            "an application's pool or a pooler (pgbouncer) in front"
        };
        let ev = format!(
            "{}; one address, one user and application, mostly idle: {what}",
            g.describe()
        );
        if !ended_by_guard(g) {
            out.push(ok(
                "pooler",
                format!(
                    "Sessions from {} look like {what}; the guard's idle_timeout does not end them",
                    quoted_or(g.addr, "local")
                ),
                ev,
            ));
            continue;
        }
        let t = dur(effective(g.first, p.idle_timeout, &p.idle_timeout_overrides).0 as f64 / 1e6);
        let finding = if named {
            format!(
                "Sessions from {} are a pooler's server connections: the guard's idle_timeout ({t}) ends them",
                quoted_or(g.addr, "local")
            )
        } else {
            format!(
                "If the sessions from {} are a pooler's (pgbouncer), the guard's idle_timeout ({t}) ends its server connections",
                quoted_or(g.addr, "local")
            )
        };
        out.push(flag(
            "pooler",
            if named { Status::Warning } else { Status::Info },
            finding,
            format!(
                "{ev}; let pgbouncer close its idle server connections itself (server_idle_timeout = {RECOMMENDED_SERVER_IDLE_TIMEOUT}) and keep the guard's idle_timeout off them; its idle-in-transaction rules still apply"
            ),
            exempt_from_idle_timeout(p, g.first),
        ));
    }
    out
}

/// `ALTER SYSTEM` that puts an item giving `b`'s application (or, when that cannot be written,
/// its user) an idle timeout of 0 in front of the existing `idle_timeout_overrides`, so the
/// first match is the new one. Checked by parsing the new list back; when no such list can be
/// written, the idle rule is turned off.
pub(super) fn exempt_from_idle_timeout(p: &Policy, b: &Backend) -> String {
    let existing: Vec<String> = p
        .idle_timeout_overrides
        .items()
        .iter()
        .filter_map(|o| {
            let key = match o.key {
                Key::Application => "app",
                Key::User => "user",
            };
            let [pat] = o.pattern.patterns() else {
                return None;
            };
            Some(format!(
                "{key}:{}={}",
                list_item(pat),
                duration_text(o.timeout)
            ))
        })
        .collect();
    let complete = existing.len() == p.idle_timeout_overrides.items().len();
    // the user first: a pooler's server connections carry its clients' application_names
    // (pgbouncer sets each client's own), but always the role the pooler logs in as
    let candidates = [
        ("user", b.usename.as_deref()),
        ("app", b.application_name.as_deref()),
    ];
    for (key, name) in candidates {
        // the list syntax has no literal `*`: such a name would become a wildcard that exempts
        // everyone, so it is never written
        let Some(name) = name.filter(|n| !n.is_empty() && !n.contains('*')) else {
            continue;
        };
        if !complete {
            break;
        }
        let mut items = vec![format!("{key}:{}=0", list_item(name))];
        items.extend(existing.iter().cloned());
        let list = items.join(", ");
        let parsed = Overrides::parse(&list);
        if parsed.as_ref().is_ok_and(|o| {
            // the new item first, and every existing item back exactly as it was
            o.items().len() == items.len()
                && o.items()[1..] == *p.idle_timeout_overrides.items()
                && o.timeout_for(b) == Some(0)
        }) {
            return format!(
                "ALTER SYSTEM SET dbconn_guard.idle_timeout_overrides = {}; SELECT pg_reload_conf();",
                sql_literal(&list)
            );
        }
    }
    // the list in force cannot be written back exactly: say what to do, never turn the idle
    // rule off for everyone
    let who = b
        .usename
        .as_deref()
        .filter(|u| !u.contains('*'))
        .map(|u| format!("user:{}=0", list_item(u)))
        .unwrap_or_else(|| "user:<the pooler's role>=0".into());
    format!(
        "SHOW dbconn_guard.idle_timeout_overrides;  -- then ALTER SYSTEM SET dbconn_guard.idle_timeout_overrides to that list with {} in front, and SELECT pg_reload_conf();",
        sql_literal(&format!("{who}, "))
    )
}

//! Can the database be reached, is the pool exhausted, who holds it, pools larger than their
//! work, and leaks.

use super::*;

pub(super) fn server(c: &Ctx) -> Vec<Finding> {
    let up =
        c.i.server
            .postmaster_start
            .map(|t| format!("up for {}", dur(secs_between(c.now, t))))
            .unwrap_or_else(|| "start time unknown".into());
    if c.i.server.in_recovery {
        return vec![flag(
            "server",
            Status::Info,
            "Connected to a standby (in recovery): it is read-only",
            format!(
                "{up}; the guard's terminations here are not written to dbconn_guard.terminations (read-only), only kept in memory; lock waits may come from recovery conflicts; every other check runs on this server's sessions only"
            ),
            "SELECT * FROM dbconn_guard.recent_terminations();",
        )];
    }
    vec![ok(
        "server",
        "Connected: the database answers, so this is an application-side issue if clients cannot connect",
        format!("primary, {up}"),
    )]
}

pub(super) fn pool(c: &Ctx) -> Vec<Finding> {
    let u = &c.util;
    let l = u.limits;
    let t = &c.i.guard.thresholds;
    if l.max_connections <= 0 {
        return vec![flag(
            "pool",
            Status::Info,
            "Could not check the pool: max_connections is unknown",
            format!(
                "max_connections read as {}; {} client sessions visible",
                l.max_connections, u.client_backends
            ),
            "SHOW max_connections;",
        )];
    }
    let checks = health::evaluate(&c.i.snapshot, u, &[], t);
    let mut status = checks
        .iter()
        .find(|k| k.name == "utilization")
        .map_or(Status::Ok, |k| k.status);
    let exhausted = u.available_connections == 0;
    if exhausted {
        status = Status::Critical;
    }
    let reserved = l.superuser_reserved_connections + l.reserved_connections.unwrap_or(0);
    let hidden = if u.hidden_backends > 0 {
        format!(
            "; {} backends hidden from this role are not counted",
            u.hidden_backends
        )
    } else {
        String::new()
    };
    let evidence = format!(
        "{} of {} slots ({:.1}%): {} active, {} idle, {} idle in transaction; {} reserved, {} left for ordinary roles; warning at {}%, critical at {}%{hidden}",
        u.client_backends,
        l.max_connections,
        u.utilization_pct,
        u.active,
        u.idle,
        u.idle_in_transaction + u.idle_in_transaction_aborted,
        reserved,
        u.available_connections,
        t.warning_pct,
        t.critical_pct,
    );
    let mut finding = match (status, exhausted) {
        (Status::Ok, _) => {
            return vec![ok(
                "pool",
                format!(
                    "Pool not exhausted: {:.1}% of connection slots in use",
                    u.utilization_pct
                ),
                evidence,
            )]
        }
        (_, true) => "Pool exhausted: no connection slot left for ordinary roles".to_string(),
        (Status::Critical, _) => format!(
            "Pool nearly exhausted: {:.1}% of connection slots in use (critical)",
            u.utilization_pct
        ),
        _ => format!(
            "Pool filling up: {:.1}% of connection slots in use",
            u.utilization_pct
        ),
    };
    let mut culprit = None;
    let (action, evidence) = if u.idle > 0 {
        // the culprit: the group (application, user, client, database) holding most of the
        // idle sessions, when one does; otherwise every group's, said to be wider
        let mut idle_by: BTreeMap<IdleKey, u32> = BTreeMap::new();
        for b in c.clients.iter().filter(|b| b.has_state(IDLE)) {
            *idle_by
                .entry((
                    b.application_name.as_deref(),
                    b.usename.as_deref(),
                    b.client_addr.as_deref(),
                    b.datname.as_deref(),
                ))
                .or_default() += 1;
        }
        let total: u32 = idle_by.values().sum();
        let top = idle_by
            .iter()
            .max_by_key(|(k, n)| (**n, std::cmp::Reverse(**k)))
            .map(|(k, n)| (*k, *n));
        let scope = match top {
            Some(((app, user, client, db), n)) if n >= 2 && 2 * n >= total => {
                IdleScope::group(app, user, client, Some(db))
            }
            _ => IdleScope::default(),
        };
        let held = top.map_or(0, |(_, n)| n);
        let whose = if scope.is_everyone() {
            format!(
                "; no single group holds most of the {total} idle sessions (the largest {held})"
            )
        } else {
            // the culprit, in the finding
            let _ = write!(
                finding,
                "; application {} holds {held} of them idle",
                quoted_or(scope.app.filter(|a| !a.is_empty()), "-")
            );
            format!(
                "; {} holds {held} of the {total} idle sessions",
                scope.describe()
            )
        };
        let mut budget = String::new();
        if !scope.is_everyone() {
            culprit = Some(Culprit::Application(scope.app.unwrap_or("").to_string()));
            budget = budget_advice(c, scope.user.flatten(), scope.app);
        }
        (
            end_idle(c, &scope, t.idle_age),
            format!(
                "{evidence}{whose}{}{budget}",
                end_idle_scope(c, &scope, t.idle_age)
            ),
        )
    } else {
        (
            format!(
                "ALTER SYSTEM SET max_connections = {};  -- takes effect after a restart",
                round_up_10((f64::from(l.max_connections) * 1.5) as i64)
            ),
            evidence,
        )
    };
    let row = flag("pool", status, finding, evidence, action);
    vec![match culprit {
        Some(who) => row.about(who),
        None => row,
    }]
}

/// The history a budget is proposed from must cover at least this much (seconds): a budget
/// from a few minutes would end a pool's connections at its first busy hour.
pub const BUDGET_MIN_HISTORY: f64 = 1800.0;

/// What a budget for application `app` (of role `user`: an application's budget is per role)
/// would be, from the history: its busiest moment (sessions active or in a transaction at once)
/// over the samples, with headroom; and how to set it, where that cannot replace budgets in
/// force nor set a wildcard ("" without a busiest moment).
pub(super) fn budget_advice(c: &Ctx, user: Option<&str>, app: Option<&str>) -> String {
    let Some(peak) = peak_busy_in_history(c, user, app) else {
        return String::new();
    };
    let (Some(first), Some(last)) = (c.samples.first(), c.samples.last()) else {
        return String::new();
    };
    let span = secs_between(last.time, first.time);
    let name = app.unwrap_or("");
    if span < BUDGET_MIN_HISTORY {
        return format!(
            "; a connection budget for application {} would keep this from happening again, but the history covers only {}: too little to size it by (dbconn_guard.diagnose_window, and the history since the server started)",
            quoted(name),
            dur(span)
        );
    }
    let budget = peak + (peak / 4).max(OVERSIZED_HEADROOM);
    let why = format!(
        "; so that it cannot happen again, a budget: application {} of user {} had at most {peak} sessions busy at once over the {} of history, so {budget} with headroom",
        quoted(name),
        quoted_or(user, "-"),
        dur(span)
    );
    if name.is_empty() || name.contains('*') {
        // no name, or one the list would read as a wildcard: no item to write
        return format!("{why}: dbconn_guard.connection_budgets cannot name it (see the guide)");
    }
    let item = format!("app:{}={budget}", list_item(name));
    let in_force = &c.i.guard.policy.connection_budgets;
    if !in_force.is_empty() {
        // the first item that matches a session charges it: say which item to change, or
        // where to add one (a paste would replace the whole list)
        let probe = Backend {
            application_name: Some(name.into()),
            usename: user.map(Into::into),
            ..Backend::default()
        };
        return match in_force.charge(&probe) {
            Some((charge, n)) => format!(
                "{why}: item {} of dbconn_guard.connection_budgets charges it now, with {n} (SHOW dbconn_guard.connection_budgets)",
                charge.item + 1
            ),
            None => format!(
                "{why}: add {item} to dbconn_guard.connection_budgets, before any item that matches it (the first that matches charges a session; SHOW dbconn_guard.connection_budgets)"
            ),
        };
    }
    format!(
        "{why}: ALTER SYSTEM SET dbconn_guard.connection_budgets = {}; SELECT pg_reload_conf();",
        sql_literal(&item)
    )
}

/// How a consumer is named in the evidence.
pub(super) type NameOf = fn(&Backend) -> String;

/// (application, user, client address, database) of a client backend.
pub(super) type IdleKey<'a> = (
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
);

/// Who holds the slots: the top applications, users and client addresses.
pub(super) fn consumers(c: &Ctx) -> Vec<Finding> {
    if c.clients.is_empty() {
        return vec![ok(
            "consumers",
            "No client sessions visible",
            "0 client backends",
        )];
    }
    let total = c.clients.len();
    let dims: [(&str, NameOf); 3] = [
        ("application", |b| {
            quoted_or(b.application_name.as_deref(), "-")
        }),
        ("user", |b| quoted_or(b.usename.as_deref(), "-")),
        ("client", |b| quoted_or(b.client_addr.as_deref(), "local")),
    ];
    dims.iter()
        .map(|(dim, name_of)| {
            let mut tally: BTreeMap<String, (usize, usize)> = BTreeMap::new();
            for b in &c.clients {
                let e = tally.entry(name_of(b)).or_default();
                e.0 += 1;
                e.1 += usize::from(b.has_state(IDLE));
            }
            let mut ranked: Vec<(String, (usize, usize))> = tally.into_iter().collect();
            ranked.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then_with(|| a.0.cmp(&b.0)));
            let shown: Vec<String> = ranked
                .iter()
                .take(TOP)
                .map(|(n, (k, idle))| {
                    format!(
                        "{n} {k} ({:.0}%, {:.0}% idle)",
                        share(*k, total),
                        share(*idle, *k)
                    )
                })
                .collect();
            let more = ranked.len().saturating_sub(TOP);
            let (top_name, (top_n, top_idle)) = &ranked[0];
            ok(
                "consumers",
                format!(
                    "Top {dim}: {top_name} holds {top_n} of {total} client sessions ({:.0}%), {:.0}% of them idle",
                    share(*top_n, total),
                    share(*top_idle, *top_n)
                ),
                format!(
                    "by {dim}: {}{}",
                    shown.join(", "),
                    if more > 0 {
                        format!("; {more} more")
                    } else {
                        String::new()
                    }
                ),
            )
        })
        .collect()
}

/// Sessions of one (client address, user, application).
pub(super) struct ClientGroup<'a> {
    pub(super) addr: Option<&'a str>,
    pub(super) user: Option<&'a str>,
    pub(super) app: Option<&'a str>,
    pub(super) counts: StateCounts,
    pub(super) oldest_idle: f64,
    /// Idle sessions not used for longer than `dbconn_guard.idle_warning_age` (see
    /// [`OVERSIZED_IDLE_SHARE`]).
    pub(super) unused: u32,
    pub(super) first: &'a Backend,
    /// An idle session of the group last ran `DISCARD ALL`: pgbouncer's reset query, which a
    /// session pool runs when a client leaves (its idle server connections show it).
    pub(super) reset_query_seen: bool,
}

impl ClientGroup<'_> {
    pub(super) fn describe(&self) -> String {
        format!(
            "{} sessions from {} (user {}, application {}): {} idle, {} active, {} idle in transaction",
            self.counts.total(),
            quoted_or(self.addr, "local"),
            quoted_or(self.user, "-"),
            quoted_or(self.app, "-"),
            self.counts.idle,
            self.counts.active,
            self.counts.idle_in_transaction + self.counts.idle_in_transaction_aborted
        )
    }

    pub(super) fn mostly_idle_pool(&self) -> bool {
        let n = self.counts.total();
        n >= OVERSIZED_MIN_SESSIONS
            && f64::from(self.counts.idle) >= OVERSIZED_IDLE_SHARE * f64::from(n)
    }
}

pub(super) fn client_groups<'a>(c: &Ctx<'a>) -> Vec<ClientGroup<'a>> {
    type K<'a> = (Option<&'a str>, Option<&'a str>, Option<&'a str>);
    let mut map: BTreeMap<K<'a>, ClientGroup<'a>> = BTreeMap::new();
    for &b in &c.clients {
        let k = (
            b.client_addr.as_deref(),
            b.usename.as_deref(),
            b.application_name.as_deref(),
        );
        let g = map.entry(k).or_insert_with(|| ClientGroup {
            addr: k.0,
            user: k.1,
            app: k.2,
            counts: StateCounts::default(),
            oldest_idle: 0.0,
            unused: 0,
            first: b,
            reset_query_seen: false,
        });
        g.counts.count(b.state);
        if b.has_state(IDLE) {
            g.oldest_idle = g.oldest_idle.max(b.state_age(c.now));
            if b.state_age(c.now) > c.unused_after() {
                g.unused += 1;
            }
            g.reset_query_seen |= b
                .query
                .as_deref()
                .is_some_and(|q| q.trim().eq_ignore_ascii_case(POOLER_RESET_QUERY));
        }
    }
    let mut groups: Vec<ClientGroup<'a>> = map.into_values().collect();
    groups.sort_by_key(|g| std::cmp::Reverse(g.counts.total()));
    groups
}

/// What pgbouncer runs on a server connection when a session-pool client leaves it
/// (`server_reset_query`'s default): its idle server connections show it as their last query.
pub const POOLER_RESET_QUERY: &str = "DISCARD ALL";

pub(super) fn is_pooler_name(app: Option<&str>) -> bool {
    app.is_some_and(|a| {
        let a = a.to_ascii_lowercase();
        POOLER_NAMES.iter().any(|p| a.contains(p))
    })
}

/// The most sessions of `user` and `application` busy at once (active or idle in transaction)
/// in the samples of the window, summed over databases; `None` when no sample shows the group
/// (the history keeps the largest groups only).
pub(super) fn peak_busy_in_history(c: &Ctx, user: Option<&str>, app: Option<&str>) -> Option<u32> {
    c.samples
        .iter()
        .filter_map(|s| {
            let mine: Vec<&history::GroupSample> = s
                .groups
                .iter()
                .filter(|g| {
                    !g.other
                        && g.name.usename.as_deref() == user
                        && g.name.application_name.as_deref() == app
                })
                .collect();
            (!mine.is_empty()).then(|| {
                mine.iter()
                    .map(|g| {
                        g.counts.active
                            + g.counts.idle_in_transaction
                            + g.counts.idle_in_transaction_aborted
                    })
                    .sum::<u32>()
            })
        })
        .max()
}

/// "Pool larger than its work": one client holding many sessions, most of them unused for a
/// minute or more now, whose busiest moment over the window (now and in the history) needs at
/// most half of them. A pool that takes each of its connections within seconds is not flagged
/// however idle it looks at one instant.
pub(super) fn oversized_pool(c: &Ctx) -> Vec<Finding> {
    let t = &c.i.guard.thresholds;
    let big: Vec<(ClientGroup, u32, Option<u32>)> = client_groups(c)
        .into_iter()
        .filter(|g| {
            let n = g.counts.total();
            n >= OVERSIZED_MIN_SESSIONS
                && f64::from(g.unused) >= OVERSIZED_IDLE_SHARE * f64::from(n)
                && !is_pooler_name(g.app)
                && !g.reset_query_seen
        })
        .filter_map(|g| {
            let now = g.counts.active
                + g.counts.idle_in_transaction
                + g.counts.idle_in_transaction_aborted;
            // the history counts (user, application) over every client address: this
            // address's part of it, by its share of those sessions now
            let all_now = c
                .clients
                .iter()
                .filter(|b| {
                    b.usename.as_deref() == g.user && b.application_name.as_deref() == g.app
                })
                .count()
                .max(1) as f64;
            let share = f64::from(g.counts.total()) / all_now;
            let past = peak_busy_in_history(c, g.user, g.app)
                .map(|p| (f64::from(p) * share).ceil() as u32);
            let peak = now.max(past.unwrap_or(0));
            ((peak + OVERSIZED_HEADROOM) * 2 <= g.counts.total()).then_some((g, peak, past))
        })
        .collect();
    // a group the leaks row reports is that story, not a second one
    let (leaking, big): (Vec<_>, Vec<_>) = big
        .into_iter()
        .partition(|(g, _, _)| c.is_leak(g.addr, g.user, g.app));
    let mut big = big;
    if big.is_empty() && !leaking.is_empty() {
        let names: Vec<String> = leaking
            .iter()
            .map(|(g, _, _)| {
                format!(
                    "{} from {}",
                    quoted_or(g.app, "-"),
                    quoted_or(g.addr, "local")
                )
            })
            .collect();
        return vec![ok(
            "oversized pool",
            format!("The idle sessions of {} are a leak suspect: see leaks", names.join(", ")),
            "a pool larger than its work and a leak are one story here; the leaks row has it and its action",
        )
        .points_to("leaks")];
    }
    if big.is_empty() {
        return vec![ok(
            "oversized pool",
            "No pool larger than its work",
            format!(
                "no client address holds {OVERSIZED_MIN_SESSIONS} or more sessions of one user and application with {:.0}% or more unused for longer than {} (dbconn_guard.idle_warning_age) and at most half of them busy at its busiest",
                OVERSIZED_IDLE_SHARE * 100.0,
                dur(c.unused_after())
            ),
        )];
    }
    big.sort_by_key(|(g, _, _)| std::cmp::Reverse(g.unused));
    big.iter()
        .take(TOP)
        .map(|(g, peak, past)| {
            let scope = IdleScope::group(g.app, g.user, g.addr, None);
            let busiest = match past {
                Some(_) => format!(
                    "at most {peak} busy at once now and over the last {} of samples",
                    dur(c.i.history.window as f64 / 1e6)
                ),
                None => format!("{peak} busy now (the history does not show this group)"),
            };
            flag(
                "oversized pool",
                Status::Warning,
                format!(
                    "Pool larger than its work: {} of {} sessions from {} (application {}) unused for more than {}",
                    g.unused,
                    g.counts.total(),
                    quoted_or(g.addr, "local"),
                    quoted_or(g.app, "-"),
                    dur(c.unused_after())
                ),
                format!(
                    "{}; oldest idle {}; {busiest}, so a pool of about {} would do (if this is a pooler, see the pooler row){}",
                    g.describe(),
                    dur(g.oldest_idle),
                    peak + OVERSIZED_HEADROOM,
                    end_idle_scope(c, &scope, t.idle_age)
                ),
                end_idle(c, &scope, t.idle_age),
            )
            .about(Culprit::Application(g.app.unwrap_or("").to_string()))
        })
        .collect()
}

/// Leak suspects, by idle age and by a growing idle count (computed here from the snapshot and
/// the history with `leaks::suspects_with_trend`, as the `leak_suspects` view does).
pub(super) fn leak_suspects(c: &Ctx) -> Vec<Finding> {
    let g = &c.i.guard;
    let window = g.leak_trend_samples.max(2);
    let rows = c.leaks.clone();
    let trend_note = if c.i.history.enabled && c.samples.len() >= window {
        format!("idle counts over the last {window} samples")
    } else {
        "trend not checked: no history, or fewer samples than dbconn_guard.leak_trend_samples"
            .into()
    };
    if rows.is_empty() {
        return vec![ok(
            "leaks",
            "No connection leak suspects",
            format!(
                "no client holds {LEAK_MIN_SESSIONS} or more sessions idle longer than {} (dbconn_guard.leak_idle_age), and no client's idle count keeps growing; {trend_note}",
                dur(g.leak_idle_age)
            ),
        )];
    }
    let mut rows = rows;
    rows.sort_by(|a, b| {
        b.group
            .connection_count
            .cmp(&a.group.connection_count)
            .then(b.group.max_age_seconds.total_cmp(&a.group.max_age_seconds))
    });
    let more = rows.len().saturating_sub(TOP);
    rows.iter()
        .take(TOP)
        .enumerate()
        .map(|(i, r)| {
            let k = &r.group.key;
            let who = format!(
                "application {} (user {}, client {}, database {})",
                quoted_or(k.application_name.as_deref(), "-"),
                quoted_or(k.usename.as_deref(), "-"),
                quoted_or(k.client_addr.as_deref(), "local"),
                quoted_or(k.datname.as_deref(), "-")
            );
            let series = history::idle_series(&c.samples, &leaks::history_name(k), window);
            let trend = if series.len() >= 2 {
                format!(
                    "trend {} ({})",
                    r.trend.as_str(),
                    series
                        .iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            } else {
                format!("trend {}", r.trend.as_str())
            };
            let more = if i + 1 == TOP && more > 0 {
                format!("; {more} more in dbconn_guard.leak_suspects")
            } else {
                String::new()
            };
            let (finding, older_than) = if r.reason == "growing" {
                (
                    format!(
                        "Connection leak suspect: idle sessions of {} keep growing",
                        quoted_or(k.application_name.as_deref(), "-")
                    ),
                    g.thresholds.idle_age,
                )
            } else {
                (
                    format!(
                        "Connection leak suspect: application {} holds {} idle for up to {} ({:.0}% of the slots)",
                        quoted_or(k.application_name.as_deref(), "-"),
                        sessions(r.group.connection_count),
                        dur(r.group.max_age_seconds),
                        100.0 * r.group.connection_count as f64
                            / f64::from(c.i.limits.max_connections.max(1))
                    ),
                    g.leak_idle_age,
                )
            };
            // the leaking group only: its application, user, client and database
            let scope = IdleScope::group(
                k.application_name.as_deref(),
                k.usename.as_deref(),
                k.client_addr.as_deref(),
                Some(k.datname.as_deref()),
            );
            flag(
                "leaks",
                Status::Warning,
                finding,
                format!(
                    "{} idle sessions of {who}, oldest idle {}; {trend}{more}{}",
                    r.group.connection_count,
                    dur(r.group.max_age_seconds),
                    end_idle_scope(c, &scope, older_than)
                ),
                end_idle(c, &scope, older_than),
            )
            .reads(if r.reason == "growing" {
                Reading::LeakGrowing
            } else {
                Reading::Leak
            })
            .about(Culprit::Application(
                k.application_name.as_deref().unwrap_or("").to_string(),
            ))
        })
        .collect()
}

//! The error pattern over the history (constant, spikes, a trend, a step) and recent changes:
//! reloads and what they changed, new applications and clients, connection storms.

use super::*;

/// How the number of client backends moved over the window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pattern {
    /// Level: the runbook's "configuration issue" (when that level is high).
    Constant,
    /// Spikes well above the usual level: "resource contention".
    Intermittent,
    /// A steady rise: "leak or attack".
    Increasing,
    /// A lasting change of level (a scale-out, a deployment, a pool resized): the samples
    /// from this index on sit at another level, each level flat.
    Step(usize),
}

/// Samples on each side of a step, at least.
pub const STEP_MIN_SIDE: usize = 3;

/// Sum of squared deviations from the mean.
pub(super) fn sse_flat(v: &[f64]) -> f64 {
    let m = v.iter().sum::<f64>() / v.len().max(1) as f64;
    v.iter().map(|y| (y - m) * (y - m)).sum()
}

pub(super) fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// Where `series` steps from one flat level to another, if it does: the split into two flat
/// levels (at least [`STEP_MIN_SIDE`] samples each) that fits best, when it fits at least
/// twice as well as a straight line (residual sum of squares) and the levels differ by at
/// least 3 sessions and 20% of the mean. A steady rise fits a line better; a step fits two
/// levels.
pub(super) fn step_at(series: &[f64]) -> Option<usize> {
    let n = series.len();
    if n < 2 * STEP_MIN_SIDE {
        return None;
    }
    let nf = n as f64;
    let mean_t = (nf - 1.0) / 2.0;
    let m = mean(series);
    let (mut cov, mut var_t, mut var_y) = (0.0, 0.0, 0.0);
    for (i, y) in series.iter().enumerate() {
        let dt = i as f64 - mean_t;
        cov += dt * (y - m);
        var_t += dt * dt;
        var_y += (y - m) * (y - m);
    }
    let sse_line = var_y - cov * cov / var_t;
    let (sse, k) = (STEP_MIN_SIDE..=n - STEP_MIN_SIDE)
        .map(|k| (sse_flat(&series[..k]) + sse_flat(&series[k..]), k))
        .min_by(|a, b| a.0.total_cmp(&b.0))?;
    let jump = (mean(&series[k..]) - mean(&series[..k])).abs();
    // each level flat: a ramp (a leak that began within the window) rises inside a level
    let flat = |v: &[f64]| fitted_rise(v).abs() < 0.25 * jump;
    (jump >= 3.0_f64.max(0.2 * m)
        && sse <= 0.5 * sse_line
        && flat(&series[..k])
        && flat(&series[k..]))
    .then_some(k)
}

/// How much the least-squares line through `v` rises from its first sample to its last.
pub(super) fn fitted_rise(v: &[f64]) -> f64 {
    let n = v.len() as f64;
    if v.len() < 2 {
        return 0.0;
    }
    let mean_t = (n - 1.0) / 2.0;
    let m = mean(v);
    let (mut cov, mut var_t) = (0.0, 0.0);
    for (i, y) in v.iter().enumerate() {
        let dt = i as f64 - mean_t;
        cov += dt * (y - m);
        var_t += dt * dt;
    }
    cov / var_t * (n - 1.0)
}

/// Does `v` rise from its first sample to its last in many small steps, as a leak grows, and
/// not in a few jumps, as sessions opened in batches (a step, a storm, a benchmark's clients)
/// do? Every new high is less than a third of the whole rise above the one before (new highs,
/// not rises between two samples: a noisy leak's ups and downs are no jumps).
fn steady(v: &[f64]) -> bool {
    let total = v[v.len() - 1] - v[0];
    let mut high = v[0];
    let mut biggest: f64 = 0.0;
    for &x in &v[1..] {
        if x > high {
            biggest = biggest.max(x - high);
            high = x;
        }
    }
    total > 0.0 && biggest < total / 3.0
}

/// The index of the series' last lowest point.
fn last_lowest(series: &[f64]) -> usize {
    series
        .iter()
        .enumerate()
        .min_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(&a.0)))
        .map_or(0, |(i, _)| i)
}

/// Where a leak that began within the window starts, when what came before it (spikes, an
/// earlier incident come and gone) hides it from a line over the whole window: the series'
/// last lowest point, when from there on at least [`MIN_HISTORY_SAMPLES`] + 2 samples rise
/// steadily (Pearson r >= 0.7, a fitted rise of at least 3 sessions and 20% of their mean, no
/// drop of half that rise between two samples, `steady`) to a level no earlier sample reached.
pub(super) fn rising_since(series: &[f64]) -> Option<usize> {
    let low = last_lowest(series);
    let tail = &series[low..];
    if tail.len() < MIN_HISTORY_SAMPLES + 2 {
        return None;
    }
    let n = tail.len() as f64;
    let (mean_t, m) = ((n - 1.0) / 2.0, mean(tail));
    let (mut cov, mut var_t, mut var_y) = (0.0, 0.0, 0.0);
    for (i, y) in tail.iter().enumerate() {
        let dt = i as f64 - mean_t;
        cov += dt * (y - m);
        var_t += dt * dt;
        var_y += (y - m) * (y - m);
    }
    if var_y <= 0.0 {
        return None;
    }
    let r = cov / (var_t * var_y).sqrt();
    let rise = cov / var_t * (n - 1.0);
    let gives_back = tail.windows(2).any(|w| w[0] - w[1] >= 0.5 * rise);
    let before = series[..low].iter().copied().fold(f64::MIN, f64::max);
    let now = tail[tail.len() - 1];
    (r >= 0.7 && rise >= 3.0_f64.max(0.2 * m) && !gives_back && now > before && steady(tail))
        .then_some(low)
}

/// The pattern of `series` (oldest first); `None` with fewer than [`MIN_HISTORY_SAMPLES`].
///
/// Step: two flat levels fit far better than a line (see `step_at`). Increasing: otherwise,
/// the counts correlate with time (Pearson r >= 0.7), the fitted line rises by at least 3
/// sessions and 20% of the mean, and after its last lowest point no two samples drop by half
/// that rise or more (a leak does not give back) and it rises in small steps (`steady`); or,
/// when what came first hides it, the series rises that way from its last lowest point to a
/// new high (`rising_since`).
/// Intermittent: otherwise, a peak at least 5 sessions and 50% above the median. Constant:
/// neither.
pub fn classify(series: &[f64]) -> Option<Pattern> {
    let n = series.len();
    if n < MIN_HISTORY_SAMPLES {
        return None;
    }
    let nf = n as f64;
    let mean_t = (nf - 1.0) / 2.0;
    let mean = series.iter().sum::<f64>() / nf;
    let (mut cov, mut var_t, mut var_y) = (0.0, 0.0, 0.0);
    for (i, y) in series.iter().enumerate() {
        let dt = i as f64 - mean_t;
        let dy = y - mean;
        cov += dt * dy;
        var_t += dt * dt;
        var_y += dy * dy;
    }
    if let Some(k) = step_at(series) {
        return Some(Pattern::Step(k));
    }
    if var_y > 0.0 {
        let r = cov / (var_t * var_y).sqrt();
        let rise = cov / var_t * (nf - 1.0);
        // a leak grows and does not give back: a series that, after its last lowest point,
        // drops by half its rise or more between two samples is spikes come and gone, not a
        // trend (what dropped before the growth began says nothing of it)
        let low = last_lowest(series);
        let gives_back = series[low..].windows(2).any(|w| w[0] - w[1] >= 0.5 * rise);
        if r >= 0.7 && rise >= 3.0_f64.max(0.2 * mean) && !gives_back && steady(&series[low..]) {
            return Some(Pattern::Increasing);
        }
    }
    if rising_since(series).is_some() {
        return Some(Pattern::Increasing);
    }
    let mut sorted = series.to_vec();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[n / 2];
    let max = sorted[n - 1];
    if max - median >= 5.0_f64.max(0.5 * median) {
        return Some(Pattern::Intermittent);
    }
    Some(Pattern::Constant)
}

/// An increasing count of client connections that reaches the warning share of the slots
/// within this many seconds at its rate (or is there) is a warning; a slower one is info.
pub const INCREASING_WARNS_WITHIN: f64 = 3600.0;

/// A rise shorter than this many seconds (from its last lowest sample to now) is no trend to
/// extrapolate: info, unless the count is past the warning share already.
pub const INCREASING_MIN_SPAN: f64 = 120.0;

/// The leak suspects' idle sessions.
fn leaked(c: &Ctx) -> i64 {
    c.leaks.iter().map(|r| r.group.connection_count).sum()
}

/// Do the leak suspects' idle sessions account for at least half of the rise of `series`
/// (from its last lowest point, or its start, to its end)?
fn leaks_account_for(c: &Ctx, series: &[f64]) -> bool {
    let from = rising_since(series).map_or(series[0], |k| series[k]);
    let rise = series[series.len() - 1] - from;
    !c.leaks.is_empty() && rise > 0.0 && leaked(c) as f64 >= 0.5 * rise
}

pub(super) fn error_pattern(c: &Ctx) -> Vec<Finding> {
    if let Some(why) = c.history_missing() {
        return vec![flag(
            "error pattern",
            Status::Info,
            "Error pattern not checked: not enough history",
            why,
            c.history_action(),
        )];
    }
    let series: Vec<f64> = c
        .samples
        .iter()
        .map(|s| f64::from(s.clients.total()))
        .collect();
    let Some(pattern) = classify(&series) else {
        return vec![];
    };
    let mut sorted = series.clone();
    sorted.sort_by(f64::total_cmp);
    let (min, median, max) = (
        sorted[0],
        sorted[sorted.len() / 2],
        sorted[sorted.len() - 1],
    );
    let peak_pct = c
        .samples
        .iter()
        .map(|s| s.utilization_pct)
        .fold(0.0, f64::max);
    let warn_pct = c.i.guard.thresholds.warning_pct;
    let evidence = format!(
        "{} samples over {}: client backends min {min:.0}, median {median:.0}, max {max:.0}, first {:.0}, last {:.0}; peak utilization {peak_pct:.1}%",
        series.len(),
        dur(secs_between(c.samples[c.samples.len() - 1].time, c.samples[0].time)),
        series[0],
        series[series.len() - 1],
    );
    let high = peak_pct >= warn_pct;
    match pattern {
        Pattern::Step(k) => {
            let (before, after) = (&series[..k], &series[k..]);
            let (from, to) = (mean(before).round(), mean(after).round());
            let at = c.samples[k].time;
            let ago = secs_between(c.now, at);
            let up = to > from;
            let t = &c.i.guard.thresholds;
            let at_limit = peak_pct >= t.critical_pct || c.util.available_connections == 0;
            if up && leaks_account_for(c, &series) {
                // one story: the leak suspects hold the sessions that stepped up
                return vec![flag(
                    "error pattern",
                    Status::Info,
                    format!(
                        "Client connections stepped up from {from:.0} to {to:.0} at {} ({} ago){}, as the leak suspects grew: see leaks",
                        clock(at),
                        dur(secs_between(c.now, at)),
                        if at_limit { " to the limit" } else { "" }
                    ),
                    evidence,
                    "SELECT * FROM dbconn_guard.leak_suspects;",
                )
                .reads(Reading::Step)
                .points_to("leaks")];
            }
            if up && at_limit {
                // a level that is the limit tells no scale-out from a fast leak
                return vec![flag(
                    "error pattern",
                    Status::Warning,
                    format!(
                        "Client connections stepped up from {from:.0} to {to:.0} at {} ({} ago) and sit at the limit: a fast leak, or more clients than the server can take (see the pool and leaks rows)",
                        clock(at),
                        dur(secs_between(c.now, at))
                    ),
                    evidence,
                    "SELECT * FROM dbconn_guard.leak_suspects;",
                )
                .reads(Reading::StepToLimit)];
            }
            let finding = format!(
                "Client connections stepped {} from {from:.0} to {to:.0} at {} ({} ago) and stayed there: a change of level (a scale-out, a deployment, a pool resized), not a leak",
                if up { "up" } else { "down" },
                clock(at),
                dur(ago)
            );
            // who stepped: the groups around the step
            let action = format!(
                "SELECT time, datname, usename, application_name, connections, active, idle FROM dbconn_guard.history_by_group_between(now() - interval '{} seconds', now() - interval '{} seconds') ORDER BY time, connections DESC;",
                (ago + 60.0).ceil() as i64,
                (ago - 60.0).max(0.0).floor() as i64
            );
            let row = if up && high {
                flag("error pattern", Status::Warning, finding, evidence, action)
            } else if up {
                flag("error pattern", Status::Info, finding, evidence, action)
            } else {
                ok("error pattern", finding, evidence)
            };
            vec![row.reads(Reading::Step)]
        }
        // one story: a rise the leak suspects account for is the leaks row's
        Pattern::Increasing if leaks_account_for(c, &series) => vec![flag(
            "error pattern",
            Status::Info,
            "Client connections are increasing, as the leak suspects grow: see leaks",
            format!("{evidence}; the leak suspects hold {} idle sessions", leaked(c)),
            "SELECT * FROM dbconn_guard.leak_suspects;",
        )
        .reads(Reading::SteadyRise)
        .points_to("leaks")],
        Pattern::Increasing => {
            // since when, and at what rate: a rise that reaches the warning share soon (or is
            // there) is a warning; a slow one (a morning ramp-up, instances added one by one,
            // a pool filling) is worth knowing, with the time it would take
            let from = rising_since(&series).unwrap_or(0);
            let tail = &series[from..];
            let span = secs_between(c.samples[c.samples.len() - 1].time, c.samples[from].time);
            let per_hour = if span > 0.0 {
                fitted_rise(tail) / span * 3600.0
            } else {
                0.0
            };
            let now_count = series[series.len() - 1];
            let warn_count = warn_pct / 100.0 * f64::from(c.i.limits.max_connections);
            let eta = (per_hour > 0.0).then(|| (warn_count - now_count).max(0.0) / per_hour * 3600.0);
            // a rise of seconds (a pool filling, clients reconnecting after a restart or a
            // deployment) says nothing of the next hour: no warning from its rate
            let brief = span < INCREASING_MIN_SPAN;
            let soon = !brief && eta.is_some_and(|e| e <= INCREASING_WARNS_WITHIN);
            let mut ev = evidence;
            if from > 0 {
                let _ = write!(
                    ev,
                    "; rising since {} ({} ago), from {:.0}",
                    clock(c.samples[from].time),
                    dur(secs_between(c.now, c.samples[from].time)),
                    series[from]
                );
            }
            let _ = write!(ev, "; about {per_hour:.0} connections an hour");
            let rate = match eta {
                _ if high => format!("; past {warn_pct:.0}% of the slots already"),
                Some(_) if brief => format!(
                    " (for {} only: too short a rise to tell a trend; look again in a few minutes)",
                    dur(span)
                ),
                Some(e) => format!(
                    "; at this rate {warn_pct:.0}% of the slots ({warn_count:.0} connections) in {}",
                    dur(e)
                ),
                None => String::new(),
            };
            vec![flag(
                "error pattern",
                if high || soon {
                    Status::Warning
                } else {
                    Status::Info
                },
                format!(
                    "Client connections are increasing: the runbook reads this as a leak or an attack{rate}"
                ),
                ev,
                "SELECT * FROM dbconn_guard.leak_suspects;",
            )
            .reads(Reading::SteadyRise)]
        }
        Pattern::Intermittent => vec![flag(
            "error pattern",
            if high { Status::Warning } else { Status::Info },
            "Client connections come in spikes: the runbook reads this as resource contention",
            evidence,
            format!(
                "SELECT time, client_backends, active, idle, lock_waiters FROM dbconn_guard.history WHERE time > now() - interval '{} seconds' AND client_backends >= {} ORDER BY time;",
                c.i.history.window / SECOND,
                ((median + max) / 2.0).ceil() as i64
            ),
        )
        .reads(Reading::Spikes)],
        // one story: a high level the leak suspects hold half of is the leaks row's
        Pattern::Constant if high && 2 * leaked(c) >= median as i64 => vec![flag(
            "error pattern",
            Status::Info,
            "Client connections are constantly high, and the leak suspects hold half of them or more: see leaks",
            format!("{evidence}; the leak suspects hold {} idle sessions", leaked(c)),
            "SELECT * FROM dbconn_guard.leak_suspects;",
        )
        .reads(Reading::HighLevel)
        .points_to("leaks")],
        Pattern::Constant if high => vec![flag(
            "error pattern",
            Status::Warning,
            "Client connections are constantly high: the runbook reads this as a configuration issue (the pools ask for about as many connections as the server has)",
            evidence,
            format!(
                "ALTER SYSTEM SET max_connections = {};  -- takes effect after a restart; or put pgbouncer in front (see the pgbouncer row)",
                round_up_10((max / (warn_pct / 100.0).max(0.01)).ceil() as i64 + i64::from(reserved(&c.i.limits)))
            ),
        )
        .reads(Reading::HighLevel)],
        Pattern::Constant => vec![ok(
            "error pattern",
            "Client connections are steady, below the warning level",
            evidence,
        )],
    }
}

pub(super) const REVIEW_SETTINGS: &str = "SELECT name, setting, source, sourcefile, pending_restart FROM pg_settings WHERE source NOT IN ('default', 'override', 'client', 'session') OR pending_restart ORDER BY name;";

/// A reload at `t` whose changes cannot be named: "review settings", and `why` not.
fn review_reload(c: &Ctx, t: Micros, why: String) -> Finding {
    flag(
        "recent changes",
        Status::Info,
        format!(
            "The configuration was reloaded {} ago: review settings",
            dur(secs_between(c.now, t))
        ),
        why,
        REVIEW_SETTINGS,
    )
    .reads(Reading::ReloadUnnamed)
}

/// A configuration reload or a server start within the window: "review settings".
pub(super) fn config_changes(c: &Ctx) -> Vec<Finding> {
    let s = &c.i.server;
    let start = c.window_start();
    let window = dur(c.i.history.window as f64 / 1e6);
    // a reload after a start within the window names what it changed: the newer story
    let reloaded_since_start = s.setting_changes.as_ref().is_some_and(|all| {
        all.iter()
            .any(|ch| ch.at >= start && s.postmaster_start.is_none_or(|p| ch.at >= p))
    });
    if let Some(t) = s
        .postmaster_start
        .filter(|&t| t >= start && !reloaded_since_start)
    {
        return vec![flag(
            "recent changes",
            Status::Info,
            format!(
                "The server started {} ago: review settings",
                dur(secs_between(c.now, t))
            ),
            format!("pg_postmaster_start_time() is within the last {window}; history and counters from before the start are gone"),
            REVIEW_SETTINGS,
        )
        .reads(Reading::ServerStarted)];
    }
    match s.conf_load_time {
        None => vec![flag(
            "recent changes",
            Status::Info,
            "Configuration reloads not checked: pg_conf_load_time() was not read",
            "no configuration load time",
            "SELECT pg_conf_load_time(), pg_postmaster_start_time();",
        )],
        Some(t) if t >= start => match &s.setting_changes {
            Some(all) => {
                let recent: Vec<&TimedChange> = all
                    .iter()
                    .filter(|ch| ch.at >= start.max(s.postmaster_start.unwrap_or(0)))
                    .collect();
                let Some(last) = recent.last() else {
                    if s.settings_compared_reload < t {
                        // the worker did not compare this reload: it was away, or could not
                        // read the settings
                        return vec![review_reload(
                            c,
                            t,
                            format!("pg_conf_load_time() is within the last {window}; the worker did not compare the settings across this reload (it was not running, has not processed it yet, or could not read them)"),
                        )];
                    }
                    return vec![ok(
                        "recent changes",
                        format!(
                            "The configuration was reloaded {} ago and changed no setting",
                            dur(secs_between(c.now, t))
                        ),
                        format!("pg_conf_load_time() is within the last {window}; the worker saw no setting change in it"),
                    )
                    .reads(Reading::ReloadChangedNothing)];
                };
                // the latest reload's changes, then the window's others
                let at = last.at;
                let latest: Vec<&&TimedChange> = recent.iter().filter(|ch| ch.at == at).collect();
                let named: Vec<String> = latest
                    .iter()
                    .take(TOP)
                    .map(|ch| format!("{} {} → {}", ch.change.name, ch.change.old, ch.change.new))
                    .collect();
                let more = latest.len().saturating_sub(TOP);
                let earlier = recent.len() - latest.len();
                vec![flag(
                    "recent changes",
                    Status::Info,
                    format!(
                        "A reload changed {} at {} ({} ago): {}{}",
                        if latest.len() == 1 { "a setting".to_string() } else { format!("{} settings", latest.len()) },
                        clock(at),
                        dur(secs_between(c.now, at)),
                        named.join(", "),
                        if more > 0 { format!(" and {more} more") } else { String::new() }
                    ),
                    format!(
                        "{} setting change(s) in the last {window}{}",
                        recent.len(),
                        if earlier > 0 { format!(", {earlier} of them by earlier reloads") } else { String::new() }
                    ),
                    format!(
                        "SELECT * FROM dbconn_guard.setting_changes() WHERE changed_at > now() - interval '{} seconds';",
                        c.i.history.window / SECOND
                    ),
                )
                .reads(Reading::SettingsChanged)]
            }
            None => vec![review_reload(
                c,
                t,
                format!("pg_conf_load_time() is within the last {window}; which settings changed is shown to members of pg_read_all_settings (dbconn_guard.setting_changes()), with the library preloaded"),
            )],
        },
        Some(t) => vec![ok(
            "recent changes",
            format!("No configuration reload or restart in the last {window}"),
            format!(
                "last reload {} ago{}",
                dur(secs_between(c.now, t)),
                s.postmaster_start
                    .map(|p| format!(", up for {}", dur(secs_between(c.now, p))))
                    .unwrap_or_default()
            ),
        )],
    }
}

/// (datname, usename, application_name) groups of the newest sample that the oldest sample did
/// not have: "deployment". Only when the oldest sample has no remainder row (a name summed in
/// the remainder is not known to be absent).
pub(super) fn new_applications(c: &Ctx) -> Vec<Finding> {
    const MANUAL: &str = "SELECT application_name, usename, count(*), min(backend_start) AS first_connected FROM pg_stat_activity WHERE backend_type = 'client backend' GROUP BY 1, 2 ORDER BY 4 DESC LIMIT 10;";
    if c.history_missing().is_some() {
        return vec![flag(
            "deployment",
            Status::Info,
            "New applications not checked: not enough history",
            c.history_missing().unwrap_or_default(),
            MANUAL,
        )];
    }
    let first = &c.samples[0];
    if first.groups.iter().any(|g| g.other && g.counts.total() > 0) {
        return vec![flag(
            "deployment",
            Status::Info,
            "New applications not checked: the oldest sample sums some groups in its remainder",
            "dbconn_guard.history_groups keeps only the largest groups of a sample",
            MANUAL,
        )];
    }
    let known: Vec<&GroupName> = first
        .groups
        .iter()
        .filter(|g| !g.other)
        .map(|g| &g.name)
        .collect();
    // the groups connected now (not the newest sample's: a group of that sample may be gone,
    // and one that came after it is the news), without the calling session (a DBA's psql)
    let mut live: Vec<(GroupName, u32)> = Vec::new();
    for b in c.clients.iter().filter(|b| b.pid != c.i.caller.pid) {
        let name = GroupName {
            datname: b.datname.as_deref().map(Into::into),
            usename: b.usename.as_deref().map(Into::into),
            application_name: b.application_name.as_deref().map(Into::into),
        };
        match live.iter_mut().find(|(n, _)| *n == name) {
            Some((_, k)) => *k += 1,
            None => live.push((name, 1)),
        }
    }
    let (fresh, leaking): (Vec<&GroupName>, Vec<&GroupName>) = live
        .iter()
        .map(|(n, _)| n)
        .filter(|n| !known.contains(n))
        // no name is no application: nothing to tell a deployment by
        .filter(|n| n.application_name.as_deref().is_some_and(|a| !a.is_empty()))
        // one story: a new group that leaks is the leaks row's
        .partition(|n| !c.leaks_in(n.usename.as_deref(), n.application_name.as_deref()));
    let since = dur(secs_between(c.now, first.time));
    if fresh.is_empty() && !leaking.is_empty() {
        return vec![flag(
            "deployment",
            Status::Info,
            format!(
                "{} new application group(s) connected in the last {since}, and they are the leak suspects: see leaks",
                leaking.len()
            ),
            format!("not in the oldest sample: {}", leaking.iter().take(TOP).map(|n| describe_group(n)).collect::<Vec<_>>().join("; ")),
            "SELECT * FROM dbconn_guard.leak_suspects;",
        )
        .reads(Reading::NewApplications)
        .points_to("leaks")];
    }
    if fresh.is_empty() {
        return vec![ok(
            "deployment",
            format!("No new application in the last {since}"),
            format!(
                "every group connected now was in the oldest sample ({} groups)",
                known.len()
            ),
        )];
    }
    let mut apps: Vec<&str> = fresh
        .iter()
        .map(|n| n.application_name.as_deref().unwrap_or(""))
        .collect();
    apps.dedup();
    let shown: Vec<String> = fresh.iter().take(TOP).map(|n| describe_group(n)).collect();
    let leaks_too = if leaking.is_empty() {
        String::new()
    } else {
        format!(
            "; new too, and leak suspects (see leaks): {}",
            leaking
                .iter()
                .take(TOP)
                .map(|n| describe_group(n))
                .collect::<Vec<_>>()
                .join("; ")
        )
    };
    let list: Vec<String> = apps.iter().take(TOP).map(|a| sql_literal(a)).collect();
    vec![flag(
        "deployment",
        Status::Info,
        format!(
            "{} new application group(s) connected in the last {since}: a deployment? check its migrations",
            fresh.len()
        ),
        format!("connected now, not in the oldest sample: {}{leaks_too}", shown.join("; ")),
        format!(
            "SELECT application_name, usename, client_addr, count(*), min(backend_start) AS first_connected FROM pg_stat_activity WHERE application_name = ANY (ARRAY[{}]) GROUP BY 1, 2, 3;",
            list.join(", ")
        ),
    )
    .reads(Reading::NewApplications)]
}

/// A group as the deployment rows name it.
fn describe_group(n: &GroupName) -> String {
    format!(
        "application {} (user {}, database {})",
        quoted_or(n.application_name.as_deref(), "-"),
        quoted_or(n.usename.as_deref(), "-"),
        quoted_or(n.datname.as_deref(), "-")
    )
}

/// Client addresses whose every current session started within the window (new, or all
/// reconnected): history has no client addresses, so this reads `backend_start`.
pub(super) fn new_clients(c: &Ctx) -> Vec<Finding> {
    let start = c.window_start();
    let window = dur(c.i.history.window as f64 / 1e6);
    const MANUAL: &str = "SELECT client_addr, count(*), min(backend_start) AS first_connected FROM pg_stat_activity WHERE backend_type = 'client backend' GROUP BY 1 ORDER BY 3 DESC LIMIT 10;";
    match c.i.server.postmaster_start {
        Some(p) if p < start => {}
        Some(_) => {
            return vec![flag(
            "deployment",
            Status::Info,
            "New clients not checked: the server started within the window, so every client is new",
            format!("up for less than {window}"),
            MANUAL,
        )]
        }
        None => {
            return vec![flag(
                "deployment",
                Status::Info,
                "New clients not checked: the server's start time is unknown",
                "pg_postmaster_start_time() was not read",
                MANUAL,
            )]
        }
    }
    let mut by_addr: BTreeMap<Option<&str>, (Micros, u32)> = BTreeMap::new();
    // the calling session is no client of the incident (a DBA's psql from a new address)
    for b in c.clients.iter().filter(|b| b.pid != c.i.caller.pid) {
        let Some(bs) = b.backend_start else { continue };
        let e = by_addr
            .entry(b.client_addr.as_deref())
            .or_insert((Micros::MAX, 0));
        e.0 = e.0.min(bs);
        e.1 += 1;
    }
    let mut fresh: Vec<(Option<&str>, Micros, u32)> = by_addr
        .into_iter()
        .filter(|(_, (first, _))| *first >= start)
        .map(|(a, (f, n))| (a, f, n))
        .collect();
    if fresh.is_empty() {
        return vec![ok(
            "deployment",
            format!("No new client address in the last {window}"),
            "every client address has a session older than the window",
        )];
    }
    fresh.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)));
    let shown: Vec<String> = fresh
        .iter()
        .take(TOP)
        .map(|(a, f, n)| {
            format!(
                "{} ({n} sessions, first {} ago)",
                quoted_or(*a, "local"),
                dur(secs_between(c.now, *f))
            )
        })
        .collect();
    let addrs: Vec<String> = fresh
        .iter()
        .take(TOP)
        .filter_map(|(a, _, _)| a.map(sql_literal))
        .collect();
    let mut cond = Vec::new();
    if !addrs.is_empty() {
        cond.push(format!(
            "client_addr = ANY (ARRAY[{}]::inet[])",
            addrs.join(", ")
        ));
    }
    if fresh.iter().take(TOP).any(|(a, _, _)| a.is_none()) {
        cond.push("client_addr IS NULL".into());
    }
    vec![flag(
        "deployment",
        Status::Info,
        format!(
            "{} client address(es) connected only within the last {window}: a deployment, or clients that reconnected",
            fresh.len()
        ),
        format!(
            "all their sessions are younger than the window: {}",
            shown.join(", ")
        ),
        format!(
            "SELECT client_addr, application_name, usename, count(*), min(backend_start) AS first_connected FROM pg_stat_activity WHERE backend_type = 'client backend' AND ({}) GROUP BY 1, 2, 3;",
            cond.join(" OR ")
        ),
    )
    .reads(Reading::NewClients)]
}

/// A burst of new backends: many `backend_start`s within [`STORM_SPAN`], or a jump in client
/// backends between two consecutive samples: "traffic spike".
pub(super) fn connection_storm(c: &Ctx) -> Vec<Finding> {
    let threshold = c.storm_threshold();
    let since = c.now.saturating_sub(STORM_SPAN);
    let new_now = c
        .clients
        .iter()
        .filter(|b| b.backend_start.is_some_and(|t| t >= since))
        .count() as i64;
    // the largest rise between two samples: by how much, when, and which group rose most
    let jump = c
        .samples
        .windows(2)
        .map(|w| {
            (
                i64::from(w[1].clients.total()) - i64::from(w[0].clients.total()),
                w[1].time,
                w,
            )
        })
        .max_by_key(|(d, _, _)| *d);
    let mut evidence = format!(
        "{new_now} sessions started in the last {}s",
        STORM_SPAN / SECOND
    );
    match &jump {
        Some((d, t, _)) => {
            let _ = write!(
                evidence,
                "; largest rise between two samples +{} ({} ago)",
                (*d).max(0),
                dur(secs_between(c.now, *t))
            );
        }
        None => evidence.push_str("; no history to compare samples"),
    }
    let _ = write!(evidence, "; storm threshold {threshold}");
    let jumped = jump.as_ref().is_some_and(|(d, _, _)| *d >= threshold);
    if new_now < threshold && !jumped {
        return vec![ok("connection storm", "No connection storm", evidence)];
    }
    const LOOK: &str = "SELECT client_addr, application_name, usename, count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND backend_start > now() - interval '10 minutes' GROUP BY 1, 2, 3 ORDER BY 4 DESC LIMIT 10;";
    if new_now >= threshold {
        // who stormed: the (application, client) with the most of the new sessions
        type Who<'a> = (Option<&'a str>, Option<&'a str>, Option<&'a str>);
        let mut by_group: BTreeMap<Who, (i64, i64)> = BTreeMap::new();
        for b in c
            .clients
            .iter()
            .filter(|b| b.backend_start.is_some_and(|t| t >= since))
        {
            let e = by_group
                .entry((
                    b.application_name.as_deref(),
                    b.client_addr.as_deref(),
                    b.usename.as_deref(),
                ))
                .or_default();
            e.0 += 1;
            if b.has_state("active") {
                e.1 += 1;
            }
        }
        let culprit = by_group
            .iter()
            .max_by_key(|(k, (n, _))| (*n, std::cmp::Reverse(**k)))
            .map(|(k, n)| (*k, *n));
        if let Some(((app, addr, user), (n, active))) = culprit {
            // one story: new sessions of a client that churns steadily are no storm, as long as
            // there are no more of them than its rate opens in the span (a storm on top of the
            // churn is still one)
            if c.churn.as_ref().is_some_and(|ch| {
                ch.culprit
                    .as_ref()
                    .is_some_and(|(a, u, _, _)| a.as_deref() == app && u.as_deref() == user)
                    && (n as f64) <= ch.median * (STORM_SPAN / SECOND) as f64
            }) {
                return vec![ok(
                    "connection storm",
                    format!(
                        "The new sessions are {}'s steady churn, not a one-off storm: see connection churn",
                        quoted_or(app, "-")
                    ),
                    evidence,
                )
                .points_to("connection churn")];
            }
            // one story: the new sessions are a leak's (most of them, and idle), or slow
            // queries'
            let idle_new = c
                .clients
                .iter()
                .filter(|b| {
                    b.backend_start.is_some_and(|t| t >= since)
                        && b.application_name.as_deref() == app
                        && b.client_addr.as_deref() == addr
                        && b.usename.as_deref() == user
                        && b.has_state(IDLE)
                })
                .count() as i64;
            if c.is_leak(addr, user, app) && 2 * n >= new_now && 2 * idle_new >= n {
                return vec![ok(
                    "connection storm",
                    format!(
                        "The new sessions are mostly {}'s, a leak suspect: see leaks",
                        quoted_or(app, "-")
                    ),
                    format!("{evidence}; a leak that opens sessions fast and a storm are one story here"),
                )
                .points_to("leaks")];
            }
            let slow = c.slow_limit;
            let running_long = c
                .clients
                .iter()
                .filter(|b| {
                    b.backend_start.is_some_and(|t| t >= since)
                        && b.application_name.as_deref() == app
                        && b.client_addr.as_deref() == addr
                        && b.usename.as_deref() == user
                        && b.has_state("active")
                        && slow > 0.0
                        && age_seconds(c.now, b.query_start).unwrap_or(0.0) > slow
                })
                .count() as i64;
            if active > 0 && running_long * 2 >= n {
                return vec![ok(
                    "connection storm",
                    format!(
                        "The new sessions are mostly {}'s slow queries: see slow queries",
                        quoted_or(app, "-")
                    ),
                    format!(
                        "{evidence}; {running_long} of its {n} new sessions run statements past {}",
                        dur(slow)
                    ),
                )
                .points_to("slow queries")];
            }
            return vec![flag(
                "connection storm",
                Status::Warning,
                format!(
                    "Connection storm: {new_now} new sessions in the last {}s, {n} of them from application {} ({}): a traffic spike (scale issue)",
                    STORM_SPAN / SECOND,
                    quoted_or(app, "-"),
                    quoted_or(addr, "local")
                ),
                evidence,
                LOOK,
            )
            .reads(Reading::Storm)
            .about(Culprit::Application(app.unwrap_or("").to_string()))];
        }
    }
    // a rise between two samples: who rose most, and whether it is still there
    let Some((d, t, w)) = jump else {
        return vec![ok("connection storm", "No connection storm", evidence)];
    };
    let rose = w[1]
        .groups
        .iter()
        .filter(|g| !g.other)
        .map(|g| {
            let before = w[0]
                .groups
                .iter()
                .find(|o| !o.other && o.name == g.name)
                .map_or(0, |o| o.counts.total());
            (i64::from(g.counts.total()) - i64::from(before), &g.name)
        })
        .max_by_key(|(r, _)| *r)
        .filter(|(r, _)| *r > 0);
    let who = rose
        .map(|(r, n)| {
            format!(
                ", {r} of them of application {}",
                quoted_or(n.application_name.as_deref(), "-")
            )
        })
        .unwrap_or_default();
    let now_total = c.util.client_backends;
    let over = now_total < i64::from(w[1].clients.total()) - d / 2;
    let finding = format!(
        "Connection storm at {} ({} ago): client backends rose by {d} between two samples{who}{}",
        clock(t),
        dur(secs_between(c.now, t)),
        if over {
            "; over now (most of those sessions are gone)"
        } else {
            ": a traffic spike (scale issue)"
        }
    );
    let row = flag(
        "connection storm",
        if over { Status::Info } else { Status::Warning },
        finding,
        format!("{evidence}; {now_total} client backends now"),
        LOOK,
    )
    .reads(if over {
        Reading::StormOver
    } else {
        Reading::Storm
    });
    vec![match rose {
        Some((_, n)) => row.about(Culprit::Application(
            n.application_name.clone().unwrap_or_default(),
        )),
        None => row,
    }]
}

/// Connections that come and go, steadily over the window: a client that connects per request
/// without a pool. The rate is what opened and ended alike between two samples (a growing
/// count opens without ending; a storm lifts a few samples, not the median).
#[derive(Clone, Debug, PartialEq)]
pub(super) struct SteadyChurn {
    /// Median of the connections opened and ended a second, over the window's samples.
    pub median: f64,
    pub peak: f64,
    /// Rates measured (pairs of samples) and the span they cover, seconds.
    pub rates: usize,
    pub span: f64,
    /// The group most of whose visible sessions are younger than [`CHURN_YOUNG_SECS`]:
    /// (application, user, its young sessions, all its sessions).
    pub culprit: Option<(Option<String>, Option<String>, i64, i64)>,
}

/// Steady churn over the window's history, when there is some (`None`: below
/// [`CHURN_MIN_RATE`], or not enough history).
pub(super) fn steady_churn(c: &Ctx) -> Option<SteadyChurn> {
    if c.history_missing().is_some() {
        return None;
    }
    let rates: Vec<f64> = c
        .samples
        .windows(2)
        .filter_map(|w| {
            let dt = secs_between(w[1].time, w[0].time);
            (dt > 0.0).then(|| f64::from(w[1].new_connections.min(w[1].ended_sessions)) / dt)
        })
        .collect();
    if rates.len() < MIN_HISTORY_SAMPLES {
        return None;
    }
    let mut sorted = rates.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    // steady: the median, and three samples in four at half of it or more
    let steady = rates.iter().filter(|r| **r >= median / 2.0).count() * 4 >= rates.len() * 3;
    if median < CHURN_MIN_RATE || !steady {
        return None;
    }
    // who: the group whose sessions are mostly young now (a session per request lives for
    // well under CHURN_YOUNG_SECS), the caller's own session aside
    let young_since = c.now.saturating_sub((CHURN_YOUNG_SECS * 1e6) as Micros);
    // (application, user) -> (young sessions, all sessions)
    type AppUser<'a> = (Option<&'a str>, Option<&'a str>);
    let mut by_group: BTreeMap<AppUser, (i64, i64)> = BTreeMap::new();
    for b in c.clients.iter().filter(|b| b.pid != c.i.caller.pid) {
        let e = by_group
            .entry((b.application_name.as_deref(), b.usename.as_deref()))
            .or_default();
        e.1 += 1;
        if b.backend_start.is_some_and(|t| t >= young_since) {
            e.0 += 1;
        }
    }
    let culprit = by_group
        .into_iter()
        .filter(|(_, (young, all))| *young >= 2 && 2 * young >= *all)
        .max_by_key(|((app, user), (young, _))| (*young, std::cmp::Reverse((*app, *user))))
        .map(|((app, user), (young, all))| {
            (
                app.map(str::to_string),
                user.map(str::to_string),
                young,
                all,
            )
        });
    Some(SteadyChurn {
        median,
        peak: sorted[sorted.len() - 1],
        rates: rates.len(),
        span: secs_between(c.samples[c.samples.len() - 1].time, c.samples[0].time),
        culprit,
    })
}

/// Steady connection churn: "application "web" opens connections per request".
pub(super) fn connection_churn(c: &Ctx) -> Vec<Finding> {
    if let Some(why) = c.history_missing() {
        return vec![flag(
            "connection churn",
            Status::Info,
            "Connection churn not checked: not enough history",
            why,
            c.history_action(),
        )];
    }
    let Some(ch) = &c.churn else {
        return vec![ok(
            "connection churn",
            "No steady connection churn",
            format!(
                "fewer than {CHURN_MIN_RATE:.0} connections a second open and end, in most samples of the last {}",
                dur(c.i.history.window as f64 / 1e6)
            ),
        )];
    };
    let status = if ch.median >= CHURN_WARN_RATE {
        Status::Warning
    } else {
        Status::Info
    };
    let over = dur(ch.span);
    let mut evidence = format!(
        "median {:.1} connections opened and ended a second over {} samples ({over}), peak {:.1}; a session per connection costs a process start and an authentication",
        ch.median, ch.rates, ch.peak
    );
    let row = match &ch.culprit {
        Some((app, user, young, all)) => {
            let _ = write!(
                evidence,
                "; now {young} of the {all} sessions of application {} (user {}) are younger than {}",
                quoted_or(app.as_deref(), "-"),
                quoted_or(user.as_deref(), "-"),
                dur(CHURN_YOUNG_SECS)
            );
            flag(
                "connection churn",
                status,
                format!(
                    "Connection churn: application {} connects per request, about {:.0} connections a second steadily over the last {over} (not a one-off storm): put a pool in front of it",
                    quoted_or(app.as_deref(), "-"),
                    ch.median
                ),
                evidence,
                format!(
                    "SELECT client_addr, usename, count(*), max(now() - backend_start) AS oldest FROM pg_stat_activity WHERE backend_type = 'client backend' AND coalesce(application_name, '') = {} GROUP BY 1, 2 ORDER BY 3 DESC;",
                    sql_literal(app.as_deref().unwrap_or(""))
                ),
            )
            .about(Culprit::Application(app.clone().unwrap_or_default()))
        }
        None => {
            evidence.push_str(&format!(
                "; no group's sessions are mostly younger than {} now: the connections are too short to be seen (log_connections names who connects)",
                dur(CHURN_YOUNG_SECS)
            ));
            flag(
                "connection churn",
                status,
                format!(
                    "Connection churn: about {:.0} connections a second open and end, steadily over the last {over} (not a one-off storm): a client connects per request without a pool",
                    ch.median
                ),
                evidence,
                "SELECT application_name, usename, client_addr, count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND backend_start > now() - interval '10 seconds' GROUP BY 1, 2, 3 ORDER BY 4 DESC;",
            )
        }
    };
    vec![row.reads(Reading::SteadyChurn)]
}

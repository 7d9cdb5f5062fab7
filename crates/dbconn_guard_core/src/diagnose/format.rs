//! Numbers, durations and times as the findings show them.

use super::*;
pub use crate::durations::{dur, setting_text as duration_text};

pub(super) fn reserved(l: &Limits) -> i32 {
    l.superuser_reserved_connections + l.reserved_connections.unwrap_or(0)
}

pub(super) fn secs_between(later: Micros, earlier: Micros) -> f64 {
    later.saturating_sub(earlier).max(0) as f64 / 1e6
}

pub(super) fn share(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

pub(super) fn round_up_10(n: i64) -> i64 {
    (n.max(1) + 9) / 10 * 10
}

/// The time of day of `t` (PostgreSQL's microseconds since 2000-01-01 00:00 UTC), as
/// `14:05 UTC`.
pub(super) fn clock(t: Micros) -> String {
    let minutes = t.div_euclid(60 * SECOND).rem_euclid(24 * 60);
    format!("{:02}:{:02} UTC", minutes / 60, minutes % 60)
}

pub(super) fn setting(v: Option<Micros>) -> String {
    match v {
        None => "?".into(),
        Some(t) if t <= 0 => "0 (off)".into(),
        Some(t) => dur(t as f64 / 1e6),
    }
}

/// Bytes in PostgreSQL's units (1024-based).
pub fn bytes(b: i64) -> String {
    const K: f64 = 1024.0;
    let f = b as f64;
    if f >= K * K * K * K {
        format!("{:.1}TB", f / (K * K * K * K))
    } else if f >= K * K * K {
        format!("{:.1}GB", f / (K * K * K))
    } else if f >= K * K {
        format!("{:.0}MB", f / (K * K))
    } else if f >= K {
        format!("{:.0}kB", f / K)
    } else {
        format!("{b}B")
    }
}

pub(super) fn truncate(s: &str, max_chars: usize) -> String {
    let one_line: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= max_chars {
        one_line
    } else {
        let mut t: String = one_line.chars().take(max_chars).collect();
        t.push('…');
        t
    }
}

pub(super) fn query_text(b: &Backend) -> String {
    b.query
        .as_deref()
        .map_or_else(|| "hidden".into(), |q| quoted(&truncate(q, 80)))
}

/// `1 session`, `3 sessions`.
pub(super) fn sessions(n: i64) -> String {
    if n == 1 {
        "1 session".into()
    } else {
        format!("{n} sessions")
    }
}

pub(super) fn pid_list(pids: &[i32]) -> String {
    let mut v: Vec<String> = pids.iter().take(10).map(i32::to_string).collect();
    if pids.len() > 10 {
        v.push("...".into());
    }
    v.join(", ")
}

//! The plain-data picture of the server's backends that every view and rule works from.

use std::borrow::Cow;
use std::rc::Rc;

/// A name many sessions share (database, role, application, client address): read once per
/// distinct value and shared, so a snapshot of thousands of sessions of one pool allocates a
/// handful of strings, not thousands.
pub type Name = Rc<str>;

/// A PostgreSQL `timestamptz`: microseconds since 2000-01-01 00:00:00 UTC.
pub type Micros = i64;

/// `backend_type` of an ordinary client connection in `pg_stat_activity`.
pub const CLIENT_BACKEND: &str = "client backend";

/// What kind of process a backend is, decided from PostgreSQL's backend type (`B_BACKEND` is a
/// client connection), never from the displayed name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Kind {
    /// An ordinary client connection (`backend_type = 'client backend'`).
    Client,
    /// Anything else: background workers, autovacuum, walsenders, checkpointer, ...
    #[default]
    Background,
    /// PostgreSQL hides the backend's type (and state) from the calling role.
    Hidden,
}

/// One row of `pg_stat_activity`, as the calling role sees it.
///
/// Columns the role may not see are `None` (PostgreSQL hides state, times, query text and even
/// `backend_type` of other roles' sessions unless the caller has `pg_read_all_stats`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Backend {
    pub pid: i32,
    /// Index of the backend's entry in PostgreSQL's backend status array, for re-reading just
    /// that entry (`None` when read from a copy).
    pub slot: Option<u32>,
    pub kind: Kind,
    pub datname: Option<Name>,
    pub usename: Option<Name>,
    pub application_name: Option<Name>,
    pub client_addr: Option<Name>,
    /// `None` when hidden. Usually a static name; a background worker's type is its own.
    pub backend_type: Option<Cow<'static, str>>,
    /// One of PostgreSQL's fixed state names (`active`, `idle`, ...).
    pub state: Option<&'static str>,
    pub backend_start: Option<Micros>,
    pub xact_start: Option<Micros>,
    pub query_start: Option<Micros>,
    pub state_change: Option<Micros>,
    pub query: Option<String>,
    /// `pg_stat_activity.query_id` (PostgreSQL computes it when `compute_query_id` is on, or
    /// `auto` with a module that asks for it): `None` when 0 or not read.
    pub query_id: Option<i64>,
    /// Whether the session's role is a superuser; `None` when unknown (treated as protected).
    pub is_superuser: Option<bool>,
}

impl Backend {
    /// An ordinary client connection (not a background worker, autovacuum, walsender, ...).
    pub fn is_client(&self) -> bool {
        self.kind == Kind::Client
    }

    /// PostgreSQL hid this backend's details from the calling role.
    pub fn is_hidden(&self) -> bool {
        self.kind == Kind::Hidden
    }

    /// Seconds since the backend entered its current state (`now - state_change`), never negative.
    /// Falls back to `backend_start` for a backend that has not reported a state yet.
    pub fn state_age(&self, now: Micros) -> f64 {
        age_seconds(now, self.state_change.or(self.backend_start)).unwrap_or(0.0)
    }

    /// Seconds since the backend's current transaction started, if it has one.
    pub fn xact_age(&self, now: Micros) -> Option<f64> {
        age_seconds(now, self.xact_start)
    }

    pub fn has_state(&self, state: &str) -> bool {
        self.state == Some(state)
    }
}

/// An owned copy of a shared name, for a result row.
pub fn owned(n: &Option<Name>) -> Option<String> {
    n.as_deref().map(str::to_owned)
}

/// Every backend, read at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// When the snapshot was read; all ages are measured against it.
    pub now: Micros,
    pub backends: Vec<Backend>,
    /// Status entries that were still being rewritten after the reader's retries: their
    /// backends exist but could not be read. A snapshot with `torn > 0` is incomplete, so it
    /// is no proof that a session is gone.
    pub torn: usize,
}

impl Snapshot {
    pub fn clients(&self) -> impl Iterator<Item = &Backend> {
        self.backends.iter().filter(|b| b.is_client())
    }

    /// Backends by pid, for looking up many pids (blocking pairs) in O(1) each.
    pub fn index(&self) -> std::collections::HashMap<i32, &Backend> {
        self.backends.iter().map(|b| (b.pid, b)).collect()
    }
}

/// Seconds from `then` to `now`, clamped at zero (clocks and snapshots are read at slightly
/// different moments, so a few microseconds "in the future" must not turn into negative ages).
pub fn age_seconds(now: Micros, then: Option<Micros>) -> Option<f64> {
    then.map(|t| (now.saturating_sub(t)).max(0) as f64 / 1_000_000.0)
}

pub const SECOND: Micros = 1_000_000;

#[cfg(test)]
pub mod fixtures {
    //! Small builders for the unit tests of every core module.
    pub use super::Kind;
    use super::*;

    pub const NOW: Micros = 1_000_000 * SECOND;

    pub fn client(pid: i32, state: &'static str, age_s: i64) -> Backend {
        Backend {
            pid,
            datname: Some("app".into()),
            usename: Some("web".into()),
            application_name: Some("api".into()),
            client_addr: Some("10.0.0.1".into()),
            kind: Kind::Client,
            backend_type: Some(CLIENT_BACKEND.into()),
            state: Some(state),
            backend_start: Some(NOW - (age_s + 60) * SECOND),
            state_change: Some(NOW - age_s * SECOND),
            query: Some(format!("select {pid}")),
            is_superuser: Some(false),
            ..Default::default()
        }
    }

    pub fn snapshot(backends: Vec<Backend>) -> Snapshot {
        Snapshot {
            now: NOW,
            backends,
            torn: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;

    #[test]
    fn ages_are_seconds_and_never_negative() {
        let b = client(1, "idle", 90);
        assert_eq!(b.state_age(NOW), 90.0);
        assert_eq!(age_seconds(NOW, Some(NOW + 5)), Some(0.0));
        assert_eq!(age_seconds(NOW, None), None);
    }

    #[test]
    fn state_age_falls_back_to_backend_start() {
        let mut b = client(1, "idle", 90);
        b.state_change = None;
        assert_eq!(b.state_age(NOW), 150.0);
    }

    #[test]
    fn hidden_and_client_classification() {
        let mut b = client(1, "idle", 1);
        assert!(b.is_client() && !b.is_hidden());
        b.kind = Kind::Hidden;
        assert!(!b.is_client() && b.is_hidden());
        b.kind = Kind::Background;
        assert!(!b.is_client() && !b.is_hidden());
        // the displayed name decides nothing: a worker may call itself anything
        b.backend_type = Some(CLIENT_BACKEND.into());
        assert!(!b.is_client());
    }
}

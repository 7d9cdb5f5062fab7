//! The actions that end idle sessions or cancel a group's statements, and the preload action
//! (names become SQL through `quote`).

use super::*;

/// Whose idle sessions an action ends: one group's (every name given must match), or, with
/// none given, every client's.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct IdleScope<'a> {
    pub(super) app: Option<&'a str>,
    /// `Some(None)`: sessions whose role has no name (dropped while they stayed connected).
    pub(super) user: Option<Option<&'a str>>,
    /// `Some(None)`: local (Unix-socket) sessions.
    pub(super) client: Option<Option<&'a str>>,
    /// `Some(None)`: sessions without a database name.
    pub(super) db: Option<Option<&'a str>>,
}

impl<'a> IdleScope<'a> {
    /// A group of client backends: application (an absent one is the empty name), user
    /// (absent: a role without a name), client address (absent: local) and, when the group
    /// has one (`Some`), database (absent: none).
    pub(super) fn group(
        app: Option<&'a str>,
        user: Option<&'a str>,
        client: Option<&'a str>,
        db: Option<Option<&'a str>>,
    ) -> Self {
        IdleScope {
            app: Some(app.unwrap_or("")),
            user: Some(user),
            client: Some(client),
            db,
        }
    }

    pub(super) fn is_everyone(&self) -> bool {
        self.app.is_none() && self.user.is_none() && self.client.is_none() && self.db.is_none()
    }

    pub(super) fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(a) = self.app {
            parts.push(format!("application {}", quoted(a)));
        }
        if let Some(u) = self.user {
            parts.push(format!("user {}", quoted_or(u, "(no name)")));
        }
        if let Some(cl) = self.client {
            parts.push(format!("client {}", quoted_or(cl, "local")));
        }
        if let Some(d) = self.db {
            parts.push(format!("database {}", quoted_or(d, "(none)")));
        }
        parts.join(", ")
    }
}

/// What an `end_idle` action ends, in words, for the evidence.
pub(super) fn end_idle_scope(c: &Ctx, scope: &IdleScope, older_than: f64) -> String {
    let secs = older_than.max(TRANSIENT_SECS).ceil() as i64;
    let whose = if scope.is_everyone() {
        "of every application, user and client (wider: no single group stands out)".to_string()
    } else {
        format!("of {} only", scope.describe())
    };
    format!(
        "; the action ends the sessions {whose} idle for longer than {secs}s{}{}",
        if c.terminate_idle_works {
            " (through terminate_idle(): the guard's protections and audit apply)"
        } else {
            " (superusers and this session excepted; no audit row)"
        },
        who_may_end_idle(c, scope).unwrap_or_default()
    )
}

/// When this role may not run the `pg_terminate_backend()` form of `end_idle` (PostgreSQL
/// refuses the whole statement at the first session it may not signal): who may.
fn who_may_end_idle(c: &Ctx, scope: &IdleScope) -> Option<String> {
    let caller = &c.i.caller;
    if c.terminate_idle_works || caller.is_superuser || caller.has_signal_backend {
        return None;
    }
    // a member of the group's role may signal its sessions
    if let Some(Some(u)) = scope.user {
        if caller.member_of.iter().any(|m| m == u) {
            return None;
        }
    }
    let admin = if c.i.server.preloaded && c.i.guard.enabled {
        " (a member of dbconn_guard_admin gets terminate_idle() instead, with the guard's audit)"
    } else {
        ""
    };
    Some(format!(
        "; {} may not run it (it signals other roles' sessions, and PostgreSQL refuses the whole statement): run it as a superuser or a member of pg_signal_backend{admin}",
        quoted(&caller.role)
    ))
}

impl IdleScope<'_> {
    /// The group as named arguments of `terminate_idle()` and `cancel_statements()`; `None`
    /// when they cannot name it (a role or database without a name: leaving the filter out
    /// would take in every role's or database's sessions).
    fn named_args(&self) -> Option<String> {
        if self.user == Some(None) || self.db == Some(None) {
            return None;
        }
        let mut named = String::new();
        if let Some(a) = self.app {
            let _ = write!(named, ", application_name => {}", sql_literal(a));
        }
        if let Some(Some(u)) = self.user {
            let _ = write!(named, ", usename => {}", sql_literal(u));
        }
        if let Some(cl) = self.client {
            let _ = write!(
                named,
                ", client_addr => {}",
                sql_literal(cl.unwrap_or("local"))
            );
        }
        if let Some(Some(d)) = self.db {
            let _ = write!(named, ", datname => {}", sql_literal(d));
        }
        Some(named)
    }

    /// The group as conditions over `pg_stat_activity` (each beginning with ` AND`).
    pub(super) fn activity_filter(&self) -> String {
        let mut filter = String::new();
        if let Some(a) = self.app {
            let _ = write!(
                filter,
                " AND coalesce(application_name, '') = {}",
                sql_literal(a)
            );
        }
        match self.user {
            Some(Some(u)) => {
                let _ = write!(filter, " AND usename = {}", sql_literal(u));
            }
            Some(None) => filter.push_str(" AND usename IS NULL"),
            None => {}
        }
        match self.client {
            Some(Some(cl)) => {
                let _ = write!(filter, " AND client_addr = {}::inet", sql_literal(cl));
            }
            Some(None) => filter.push_str(" AND client_addr IS NULL"),
            None => {}
        }
        match self.db {
            Some(Some(d)) => {
                let _ = write!(filter, " AND datname = {}", sql_literal(d));
            }
            Some(None) => filter.push_str(" AND datname IS NULL"),
            None => {}
        }
        filter
    }
}

/// The statement that ends the idle sessions of `scope` idle for longer than `older_than`:
/// `terminate_idle()` with the group's names as literals, or, where it cannot work, the same
/// over `pg_stat_activity`.
/// Never younger than [`TRANSIENT_SECS`]: a healthy client's session is idle for a moment
/// between two uses.
pub(super) fn end_idle(c: &Ctx, scope: &IdleScope, older_than: f64) -> String {
    let secs = older_than.max(TRANSIENT_SECS).ceil() as i64;
    if let (true, Some(named)) = (c.terminate_idle_works, scope.named_args()) {
        format!(
            "SELECT * FROM dbconn_guard.terminate_idle('{secs} seconds', ARRAY['idle']{named});"
        )
    } else {
        format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'client backend' AND state = 'idle'{} AND state_change < now() - interval '{secs} seconds' AND pid <> pg_backend_pid() AND usesysid NOT IN (SELECT oid FROM pg_roles WHERE rolsuper);",
            scope.activity_filter()
        )
    }
}

/// How a group's statements are cancelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CancelWay {
    /// `cancel_statements()`: the guard's kill path, protections and audit.
    ThroughTheGuard,
    /// `pg_cancel_backend()` over `pg_stat_activity`: where the guard's function cannot work
    /// or cannot name the group, or where its protections cover the group.
    OverPgStatActivity,
}

/// The threshold a cancel action uses: never under [`TRANSIENT_SECS`].
pub(super) fn cancel_after(older_than: f64) -> f64 {
    older_than.max(TRANSIENT_SECS).floor()
}

/// The statement that cancels the statements of `scope` running for longer than
/// `older_than` (the sessions stay), and how: `cancel_statements()` with the group's names as
/// literals, unless `over_activity` or it cannot work or name the group; then
/// `pg_cancel_backend()` over `pg_stat_activity`, which spares a COMMIT waiting for a
/// synchronous standby (a cancel would commit it locally), PostgreSQL's client tools while
/// `dbconn_guard.exclude_client_tools` is on, and, for a caller who is not a superuser, a
/// superuser's statements (PostgreSQL would refuse the whole statement).
pub(super) fn cancel_group(
    c: &Ctx,
    scope: &IdleScope,
    older_than: f64,
    over_activity: bool,
) -> (String, CancelWay) {
    let secs = cancel_after(older_than) as i64;
    if let (true, false, Some(named)) = (c.terminate_idle_works, over_activity, scope.named_args())
    {
        return (
            format!("SELECT * FROM dbconn_guard.cancel_statements('{secs} seconds'{named});"),
            CancelWay::ThroughTheGuard,
        );
    }
    let tools = if c.i.guard.policy.scope.exclude_client_tools {
        format!(
            " AND coalesce(application_name, '') <> ALL (ARRAY[{}])",
            CLIENT_TOOLS
                .iter()
                .map(|t| sql_literal(t))
                .collect::<Vec<_>>()
                .join(", ")
        )
    } else {
        String::new()
    };
    (
        format!(
            "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE backend_type = 'client backend' AND state = 'active'{} AND query_start < now() - interval '{secs} seconds' AND wait_event IS DISTINCT FROM 'SyncRep'{tools} AND pid <> pg_backend_pid(){};",
            scope.activity_filter(),
            if c.i.caller.is_superuser {
                ""
            } else {
                " AND usesysid NOT IN (SELECT oid FROM pg_roles WHERE rolsuper)"
            }
        ),
        CancelWay::OverPgStatActivity,
    )
}

/// The names of a list setting as `SHOW` displays it (`a, "b c"`): split at commas outside
/// double quotes, each unquoted (`""` inside quotes is one quote).
pub(super) fn library_items(list: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = list.chars().peekable();
    while let Some(ch) = chars.next() {
        match ch {
            '"' if quoted && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            _ => cur.push(ch),
        }
    }
    out.push(cur);
    out.into_iter()
        .map(|x| x.trim().to_string())
        .filter(|x| !x.is_empty())
        .collect()
}

/// Adds dbconn_guard to `shared_preload_libraries`, keeping what is there.
pub(super) fn preload_action(s: &Server) -> String {
    let listed = |l: &str| {
        l.split(',')
            .any(|x| x.trim().trim_matches('"') == "dbconn_guard")
    };
    match s.shared_preload_libraries.as_deref().map(str::trim) {
        Some(l) if listed(l) => "SELECT name, setting, pending_restart FROM pg_settings WHERE name = 'shared_preload_libraries';  -- dbconn_guard is listed but not loaded: restart PostgreSQL".into(),
        Some("") => "ALTER SYSTEM SET shared_preload_libraries = 'dbconn_guard';  -- then restart PostgreSQL".into(),
        // one literal per library: a single literal holding "a, b" would be stored as ONE
        // quoted name, and the server would not start
        Some(list) => format!(
            "ALTER SYSTEM SET shared_preload_libraries = {};  -- then restart PostgreSQL",
            library_items(list)
                .iter()
                .map(String::as_str)
                .chain(["dbconn_guard"])
                .map(sql_literal)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        None => "SHOW shared_preload_libraries;  -- then ALTER SYSTEM SET shared_preload_libraries to that list plus dbconn_guard, and restart PostgreSQL".into(),
    }
}

//! The background worker, and what the calling role cannot see.

use super::*;

pub(super) fn worker(c: &Ctx) -> Vec<Finding> {
    const STATUS: &str =
        "SELECT running, pid, last_error, last_error_at, extension_ready FROM dbconn_guard.worker_status();";
    let Some(w) = &c.i.worker else {
        let (finding, action) = if c.i.server.preloaded {
            (
                "The worker could not be checked: worker_status() was not read".to_string(),
                STATUS.to_string(),
            )
        } else {
            (
                "The worker could not be checked: the library is not preloaded, so there is no worker".to_string(),
                preload_action(&c.i.server),
            )
        };
        let row = flag(
            "worker",
            Status::Info,
            finding,
            "no worker status; the rules, history and terminate_idle() need the worker",
            action,
        );
        return vec![if c.i.server.preloaded {
            row
        } else {
            row.reads(Reading::NotPreloaded)
        }];
    };
    let mut out = Vec::new();
    let err = w.last_error.as_deref().filter(|e| !e.is_empty());
    let err_text = |e: &str| {
        format!(
            "last error {}{}",
            quoted(&truncate(e, 200)),
            w.last_error_at
                .map(|t| format!(" {} ago", dur(secs_between(c.now, t))))
                .unwrap_or_default()
        )
    };
    if !w.running {
        out.push(flag(
            "worker",
            Status::Warning,
            "The guard's worker is not running: no rule ends sessions, no history is sampled",
            format!(
                "worker_status().running = false; PostgreSQL restarts it after a crash within seconds; {}",
                err.map_or_else(|| "no last error".into(), err_text)
            ),
            STATUS,
        ));
    }
    if !w.extension_ready {
        out.push(flag(
            "worker",
            Status::Warning,
            format!(
                "The extension is missing in dbconn_guard.database ({}): the worker cannot record or serve terminate_idle()",
                quoted(&w.database)
            ),
            format!(
                "worker_status().extension_ready = false in database {}",
                quoted(&w.database)
            ),
            format!(
                "psql -d {} -c 'CREATE EXTENSION dbconn_guard;'",
                shell_quote(&w.database)
            ),
        ));
    }
    if let Some(e) = err.filter(|_| w.running) {
        let recent = w.last_error_at.is_none_or(|t| t >= c.window_start());
        if recent {
            out.push(flag(
                "worker",
                Status::Warning,
                "The worker reported an error recently",
                err_text(e),
                STATUS,
            ));
        }
    }
    if w.database != c.i.caller.database {
        out.push(flag(
            "worker",
            Status::Info,
            format!(
                "The worker is attached to database {}, not this one ({}): it watches every database, but its audit rows are written there",
                quoted(&w.database),
                quoted(&c.i.caller.database)
            ),
            "dbconn_guard.terminations in this database stays empty; recent_terminations() reads shared memory from any database",
            "SELECT * FROM dbconn_guard.recent_terminations();",
        ));
    }
    if out.is_empty() {
        out.push(ok(
            "worker",
            format!(
                "The worker is running{}, in database {}",
                w.pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
                quoted(&w.database)
            ),
            err.map_or_else(
                || "no error reported".into(),
                |e| format!("{} (outside the window)", err_text(e)),
            ),
        ));
    }
    out
}

pub(super) fn visibility(c: &Ctx) -> Vec<Finding> {
    let cl = &c.i.caller;
    let hidden = cl.hidden_backends.max(c.util.hidden_backends);
    let torn = if c.i.snapshot.torn > 0 {
        format!(
            "; {} status entries could not be read (being rewritten)",
            c.i.snapshot.torn
        )
    } else {
        String::new()
    };
    if hidden == 0 || cl.has_read_all_stats {
        return vec![ok(
            "visibility",
            if cl.has_read_all_stats {
                "This role sees every session (pg_read_all_stats)"
            } else {
                "No session is hidden from this role now"
            },
            format!(
                "{} client backends visible, {hidden} hidden{torn}",
                c.util.client_backends
            ),
        )];
    }
    let seen = c.util.client_backends + c.util.other_backends;
    let status = if hidden as f64 >= 0.1 * (seen + hidden) as f64 {
        Status::Warning
    } else {
        Status::Info
    };
    vec![flag(
        "visibility",
        status,
        format!(
            "{hidden} backends of other roles are hidden from {}: the counts above leave them out",
            sql_ident(&cl.role)
        ),
        format!(
            "PostgreSQL shows other roles' state, query, times and client address only to pg_read_all_stats; {seen} backends visible, {hidden} hidden{torn}"
        ),
        format!("GRANT pg_read_all_stats TO {};", sql_ident(&cl.role)),
    )]
}

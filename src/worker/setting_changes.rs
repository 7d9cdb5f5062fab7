//! What each configuration reload changed: the worker reads every setting at its start and
//! after each reload it processes (`read`), keeps the difference from the previous reading in
//! shared memory and logs it (`record`); `setting_changes()` (`sql::admin`) shows it, and
//! `diagnose()` names it.

use crate::core::config_changes::{self, Setting, TimedChange};
use crate::core::quote::quoted;
use crate::shmem::status::{self, SettingChangeRecord, SHARED};
use crate::worker::xact;
use pgrx::prelude::*;

/// The most changes of one reload named in the server log (all are kept in shared memory, up
/// to its size).
const LOGGED: usize = 20;

/// Every setting, as the server's configuration gives it rather than as the worker's session
/// has it: `reset_val` (what a RESET returns to) where that comes from the server's own
/// sources (defaults, environment, command line, configuration files); where the worker's
/// session has it from a source above those (a database or role setting, or the worker's own
/// pins, `override`), the last line of the configuration files that sets it, or its built-in
/// default. With its unit and whether it waits for a restart; `None` when it could not be read
/// (logged).
pub fn read() -> Option<Vec<Setting>> {
    const SETTINGS: &str = "SELECT s.name, \
                CASE WHEN s.source OPERATOR(pg_catalog.=) ANY (ARRAY['default', 'environment variable', 'configuration file', 'command line']) \
                     THEN COALESCE(s.reset_val, s.setting) ELSE COALESCE(f.setting, s.boot_val) END, \
                s.unit, s.pending_restart \
           FROM pg_catalog.pg_settings s \
           LEFT JOIN (SELECT DISTINCT ON (name) name, setting FROM pg_catalog.pg_file_settings \
                       WHERE error IS NULL ORDER BY name, seqno DESC) f ON f.name OPERATOR(pg_catalog.=) s.name";
    let read = xact::transaction(c"dbconn_guard: reading the settings", || {
        Spi::connect(|client| {
            let rows = client.select(SETTINGS, None, &[])?;
            let mut out = Vec::new();
            for r in rows {
                out.push(Setting {
                    name: r.get::<String>(1)?.unwrap_or_default(),
                    value: r.get::<String>(2)?.unwrap_or_default(),
                    unit: r.get::<String>(3)?,
                    pending_restart: r.get::<bool>(4)?.unwrap_or(false),
                });
            }
            Ok::<_, pgrx::spi::Error>(out)
        })
    });
    match read {
        Ok(Ok(v)) => Some(v),
        Ok(Err(e)) => {
            log!("dbconn_guard worker: could not read the settings to see what the reload changes: {e}");
            None
        }
        Err(f) => {
            log!("dbconn_guard worker: could not read the settings to see what the reload changes: {f}");
            None
        }
    }
}

/// Keeps and logs what changed between `before` and `after` (the settings read before and
/// after one reload).
pub fn record(before: &[Setting], after: &[Setting]) {
    let changes = config_changes::diff(before, after);
    if status::available() {
        SHARED.exclusive().settings_compared_reload = unsafe { pg_sys::PgReloadTime };
    }
    if changes.is_empty() {
        log!("dbconn_guard worker: the configuration reload changed no setting");
        return;
    }
    let at = unsafe { pg_sys::GetCurrentTimestamp() };
    if status::available() {
        let mut s = SHARED.exclusive();
        for c in &changes {
            s.push_setting_change(SettingChangeRecord::new(at, c));
        }
    }
    let shown: Vec<String> = changes
        .iter()
        .take(LOGGED)
        .map(|c| format!("{} {} -> {}", c.name, quoted(&c.old), quoted(&c.new)))
        .collect();
    let more = changes.len().saturating_sub(LOGGED);
    log!(
        "dbconn_guard worker: the configuration reload changed {} setting(s): {}{}",
        changes.len(),
        shown.join(", "),
        if more > 0 {
            format!(" and {more} more (dbconn_guard.setting_changes())")
        } else {
            String::new()
        }
    );
}

/// `pg_conf_load_time()` of the last reload whose changes the worker compared (0: none).
pub fn compared_reload() -> crate::core::session::Micros {
    if !status::available() {
        return 0;
    }
    SHARED.share().settings_compared_reload
}

/// The kept changes, oldest first.
pub fn kept() -> Vec<TimedChange> {
    if !status::available() {
        return Vec::new();
    }
    SHARED
        .share()
        .setting_changes()
        .into_iter()
        .map(|r| TimedChange {
            at: r.at,
            change: config_changes::Change {
                name: r.name.get().to_string(),
                old: r.old.get().to_string(),
                new: r.new.get().to_string(),
            },
        })
        .collect()
}

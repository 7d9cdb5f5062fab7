//! dbconn_guard: an in-database guard against PostgreSQL connection trouble.
//!
//! * `core`     — the functional core: plain Rust over plain data, unit-tested without a server.
//! * `snapshot` — reads PostgreSQL state (pg_stat_activity, pg_locks, settings) into the core's structs.
//! * `views`    — the SQL functions behind the views in `sql/views.sql`.
//! * `guc`      — the `dbconn_guard.*` settings.

use pgrx::prelude::*;

pub mod core;
mod guc;
mod snapshot;
mod views;

::pgrx::pg_module_magic!();

extension_sql_file!("../sql/views.sql", name = "views", finalize);

#[allow(non_snake_case)]
#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    guc::define();
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    include!("pg_tests.rs");
}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec!["shared_preload_libraries = 'dbconn_guard'"]
    }
}

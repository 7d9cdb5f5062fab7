//! The SQL surface: the read-only views' functions (`views`), the guard's own functions
//! (`admin`), `diagnose()`, what `/metrics` and `metrics()` show (`metrics`), and the
//! materialize-mode row builder they share (`rows`).

pub mod admin;
pub mod diagnose;
pub mod metrics;
pub mod rows;
pub mod views;

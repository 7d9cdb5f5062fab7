//! The functional core of dbconn_guard.
//!
//! Everything in here is plain Rust over plain data: no PostgreSQL calls, no globals, no I/O.
//! It is a crate of its own, without pgrx among its dependencies, so the compiler keeps it that
//! way, and `cargo test -p dbconn_guard_core` needs no PostgreSQL.
//! The pgrx layer (`dbconn_guard::snapshot`, `dbconn_guard::views`) reads PostgreSQL state once per call into
//! these structs, calls a function from here, and turns the result into rows.
//! That keeps every policy decision unit-testable without a server.

pub mod analysis;
pub mod blocking;
pub mod budgets;
pub mod config_changes;
pub mod diagnose;
pub mod durations;
pub mod fasthash;
pub mod filter;
pub mod health;
pub mod history;
pub mod http;
pub mod leaks;
pub mod metrics;
pub mod overrides;
pub mod patterns;
pub mod policy;
pub mod quote;
pub mod recheck;
pub mod rules;
pub mod session;
pub mod status;
pub mod utilization;

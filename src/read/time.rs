//! Timestamps as PostgreSQL keeps them in shared memory — microseconds since 2000-01-01, where 0
//! means "none" (a status entry's unset `xact_start`, a record's unknown `backend_start`) — into
//! the core's `Micros` and SQL's `timestamptz`. The one place that says what 0 means.

use crate::core::session::Micros;
use pgrx::prelude::*;

/// A shared-memory timestamp as the core reads it: 0 is none.
pub fn micros(v: pg_sys::TimestampTz) -> Option<Micros> {
    (v != 0).then_some(v)
}

/// A shared-memory timestamp as SQL shows it: 0 is NULL, as is one out of `timestamptz`'s range.
pub fn timestamptz(v: Micros) -> Option<TimestampWithTimeZone> {
    micros(v).and_then(|v| TimestampWithTimeZone::try_from(v).ok())
}

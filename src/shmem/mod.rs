//! What lives in shared memory, allocated at server start when the library is preloaded: the
//! worker's status, counters, recent terminations and `terminate_idle()`'s mailbox slots
//! (`status`), the history ring (`history`), and the count of authenticated connections
//! (`churn`).

pub mod churn;
pub mod history;
pub mod status;

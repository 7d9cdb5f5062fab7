//! The one status of every judgement the guard shows: `health()`'s checks and `diagnose()`'s
//! rows. Ordered by harm (`Ok` < `Info` < `Warning` < `Critical`).

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    /// Nothing wrong.
    Ok,
    /// Worth knowing, nothing wrong now: advice about configuration, an incident that is
    /// over. `diagnose()` only: a health check is ok, warning or critical.
    Info,
    /// Something is wrong now.
    Warning,
    /// Something is wrong now and harms the server or its clients.
    Critical,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Info => "info",
            Status::Warning => "warning",
            Status::Critical => "critical",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordered_by_harm() {
        assert!(Status::Ok < Status::Info);
        assert!(Status::Info < Status::Warning);
        assert!(Status::Warning < Status::Critical);
        assert_eq!(Status::Info.as_str(), "info");
    }
}

//! Which sessions a manual action names: `terminate_idle()`'s filters by application, role,
//! client address and database.

use crate::session::Backend;
use std::net::IpAddr;

/// Every filter given must match; an absent one matches any session.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionFilter {
    /// An absent application name is the empty one.
    pub application_name: Option<String>,
    pub usename: Option<String>,
    /// `Some(None)`: local sessions (a Unix socket, no client address); `Some(Some(ip))`: that
    /// address.
    pub client_addr: Option<Option<IpAddr>>,
    pub datname: Option<String>,
}

impl SessionFilter {
    pub fn keep(&self, b: &Backend) -> bool {
        let same = |want: &Option<String>, have: Option<&str>| {
            want.as_deref().is_none_or(|w| have.unwrap_or("") == w)
        };
        same(&self.application_name, b.application_name.as_deref())
            && same(&self.usename, b.usename.as_deref())
            && same(&self.datname, b.datname.as_deref())
            && self.client_addr.is_none_or(|want| {
                let have = b
                    .client_addr
                    .as_deref()
                    .and_then(|a| a.parse::<IpAddr>().ok());
                have == want
            })
    }
}

/// A client address as an argument gives it: `'local'` (Unix-socket sessions), or one address
/// as `pg_stat_activity.client_addr` shows it (a host written as `/32` or `/128` is that
/// host). The error says what is allowed.
pub fn parse_client_addr(arg: &str) -> Result<Option<IpAddr>, String> {
    let a = arg.trim();
    if a.eq_ignore_ascii_case("local") {
        return Ok(None);
    }
    let host = a
        .strip_suffix("/32")
        .or_else(|| a.strip_suffix("/128"))
        .unwrap_or(a);
    host.parse::<IpAddr>()
        .map(Some)
        .map_err(|_| format!("client_addr {arg:?} is not an IP address"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::fixtures::*;

    #[test]
    fn every_filter_given_must_match() {
        let b = client(1, "idle", 10); // app "api", user "web", db "app", client 10.0.0.1
        let f = |app: Option<&str>,
                 user: Option<&str>,
                 addr: Option<Option<&str>>,
                 db: Option<&str>| SessionFilter {
            application_name: app.map(Into::into),
            usename: user.map(Into::into),
            client_addr: addr.map(|a| a.map(|a| a.parse().unwrap())),
            datname: db.map(Into::into),
        };
        assert!(SessionFilter::default().keep(&b));
        assert!(f(
            Some("api"),
            Some("web"),
            Some(Some("10.0.0.1")),
            Some("app")
        )
        .keep(&b));
        assert!(!f(Some("api"), Some("etl"), None, None).keep(&b));
        assert!(!f(None, None, Some(Some("10.0.0.2")), None).keep(&b));
        assert!(!f(None, None, Some(None), None).keep(&b), "not local");
        assert!(!f(None, None, None, Some("other")).keep(&b));
        // a local session without an application name
        let mut local = client(2, "idle", 10);
        local.client_addr = None;
        local.application_name = None;
        assert!(f(Some(""), None, Some(None), None).keep(&local));
        assert!(!f(Some("api"), None, None, None).keep(&local));
        // IPv6, however written
        let mut v6 = client(3, "idle", 10);
        v6.client_addr = Some("::1".into());
        assert!(f(None, None, Some(Some("0:0:0:0:0:0:0:1")), None).keep(&v6));
    }

    #[test]
    fn client_addresses_as_arguments() {
        assert_eq!(parse_client_addr("local"), Ok(None));
        assert_eq!(
            parse_client_addr(" 10.0.0.5 "),
            Ok(Some("10.0.0.5".parse().unwrap()))
        );
        assert_eq!(
            parse_client_addr("10.0.0.5/32"),
            Ok(Some("10.0.0.5".parse().unwrap()))
        );
        assert_eq!(
            parse_client_addr("::1/128"),
            Ok(Some("::1".parse().unwrap()))
        );
        assert!(parse_client_addr("10.0.0.0/8").is_err());
        assert!(parse_client_addr("db.example.com").is_err());
        assert!(parse_client_addr("").is_err());
    }
}
